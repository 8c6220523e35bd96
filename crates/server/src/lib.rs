//! The huddle server: one binary serving the page, WebSocket signalling and the SFU's media.
//!
//! # Layout
//! - [`config`] — flags, environment and TOML file resolved once into a [`Config`].
//! - [`http`] — the HTTP edge: embedded page, `/r/<room>`, `/healthz`, `/ws`.
//! - [`ws`] — one task per WebSocket: validates incoming frames, drains the connection's
//!   bounded outbox into the socket, and keeps the heartbeat.
//! - [`hub`] — the single owner of all rooms and outboxes, reached over a channel.
//! - [`media`] — the SFU driver: one task owning the media UDP socket(s) and the sans-IO core
//!   (`huddle-sfu`), reached from the hub over a channel.
//! - [`batch`] — many datagrams per system call (`sendmmsg`), for the driver.
//! - [`room`] — one room's members and chat history (plain data, owned by the hub).
//! - [`files`] — files shared through the server (sfu rooms): the store the hub owns, and the
//!   HTTP upload/download handlers.
//! - [`validate`] — checks for names, room names and chat text.
//!
//! `docs/architecture.md` explains how a message flows through these.
#![deny(unsafe_code)] // one exception: `batch`, the `sendmmsg` call

pub mod batch;
pub mod config;
pub mod files;
pub mod http;
pub mod hub;
pub mod media;
pub mod room;
pub mod validate;
pub mod ws;

pub use config::{Cli, Config};

use clap::Parser;
use std::ffi::OsString;
use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::info;

/// Commands queued for the hub before connection tasks wait.
const HUB_QUEUE: usize = 8192;
/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every request handler gets.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub hub: mpsc::Sender<hub::Command>,
    pub next_id: Arc<AtomicU64>,
}

/// Serves until `shutdown` completes, then tells every client and waits (briefly) for them.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let (hub_tx, hub_rx) = mpsc::channel(HUB_QUEUE);
    let mut media_task = None;
    let hub = if config.topology == config::TopologyMode::P2p {
        hub::Hub::new(config.clone())
    } else {
        let media = media::Media::bind(&config, listener.local_addr()?).await?;
        info!(addresses = ?media.addresses(), "SFU listening on UDP");
        let (media_tx, media_rx) = mpsc::channel(media::MEDIA_QUEUE);
        media_task = Some(tokio::spawn(media.run(media_rx, hub_tx.clone())));
        hub::Hub::with_media(config.clone(), media_tx)
    };
    let hub_task = tokio::spawn(hub::run(hub, hub_rx));
    let state = AppState { config, hub: hub_tx.clone(), next_id: Arc::new(AtomicU64::new(1)) };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let hub_for_shutdown = hub_tx.clone();
    let farewell = tokio::spawn(async move {
        shutdown.await;
        let (done_tx, done_rx) = oneshot::channel();
        if hub_for_shutdown.send(hub::Command::Shutdown { done: done_tx }).await.is_ok() {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, done_rx).await;
        }
        let _ = stop_tx.send(());
    });
    // Signalling messages are small and latency-sensitive: no Nagle delay.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(async move {
            let _ = stop_rx.await;
        })
        .await?;
    let _ = farewell.await;
    drop(hub_tx);
    hub_task.abort();
    if let Some(task) = media_task {
        task.abort();
    }
    info!("stopped");
    Ok(())
}

/// The `huddle` command: parses `args` (without the program name), binds, prints the URL and
/// serves until SIGINT or SIGTERM.
pub async fn run_cli(args: Vec<OsString>) -> anyhow::Result<()> {
    let cli = Cli::parse_from(std::iter::once(OsString::from("huddle")).chain(args));
    let config = Config::from_cli(cli)?;
    init_tracing();
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let shown = if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "huddle listening on http://{shown}/")?;
        out.flush()?;
    }
    info!(%addr, "listening");
    serve(config, listener, shutdown_signal()).await
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    info!("shutting down");
}
