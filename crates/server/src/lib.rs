//! The huddle server: one binary serving the page, WebSocket signalling and the SFU's media.
//!
//! # Layout
//! - [`config`] — flags, environment and TOML file resolved once into a [`Config`].
//! - [`accept`] — the one accept path of the HTTP port: caps on open TCP connections, then each
//!   stage (ICE-TCP sniffing, TLS, request headers, upgrade) under a deadline; raises the open
//!   file limit.
//! - [`http`] — the HTTP edge: embedded page, `/r/<room>`, `/healthz`, `/ws`.
//! - [`ws`] — one task per WebSocket: validates incoming frames, drains the connection's
//!   bounded outbox into the socket, and keeps the heartbeat; every wait has a deadline.
//! - [`outbox`] — what the hub queues for a connection: messages serialised once, bounded by
//!   count and bytes.
//! - [`workers`] — rooms spread over the cores: a room belongs to one worker (a hub with its
//!   own SFU), chosen by its name; a connection's session lives on its room's worker.
//! - [`hub`] — the single owner of a worker's rooms and of its sessions' outboxes, reached over
//!   a channel.
//! - [`media`] — the SFU driver: one thread per worker owning its media UDP socket(s) and its
//!   sans-IO core (`huddle-sfu`), reached from its hub over a channel.
//! - [`batch`] — many datagrams per system call (`sendmmsg`), for the driver.
//! - [`ice_tcp`] — ICE over TCP for the SFU: telling ICE-TCP connections on the HTTP port from
//!   HTTP, RFC 4571 framing, one task per connection.
//! - [`room`] — one room's members and chat history (plain data, owned by the hub).
//! - [`files`] — files shared through the server (sfu rooms): the store the hub owns, and the
//!   HTTP upload/download handlers.
//! - [`validate`] — checks for names, room names and chat text.
//! - [`tokens`] — signed access tokens: hosts' invite links and the operator's JWTs.
//! - [`tls`] — HTTPS: the certificate (files or self-signed) and the TLS listener.
//! - [`turn`] — the built-in STUN/TURN server's driver: one task owning its sockets and the
//!   sans-IO core (`huddle-turn`); the hub hands out its credentials.
//! - [`limits`] — rate limits and connection caps, applied by the connection tasks.
//! - [`client_ip`] — the client's IP address (the TCP peer, or a trusted proxy's
//!   `X-Forwarded-For`).
//! - [`metrics`] — `/metrics` (Prometheus): the edge's counters and each task's stats.
//! - [`memory`] — giving freed memory back to the system when the last session ends.
//!
//! `docs/architecture.md` explains how a message flows through these.
// Four exceptions: `batch`, the `sendmmsg` call; `metrics`, the `getrusage` call; `memory`, the
// `malloc_trim` call; `accept`, the `getrlimit`/`setrlimit` calls.
#![deny(unsafe_code)]

pub mod accept;
pub mod batch;
pub mod client_ip;
pub mod cluster;
pub mod config;
pub mod files;
pub mod http;
pub mod hub;
pub mod ice_tcp;
pub mod limits;
pub mod media;
pub mod memory;
pub mod metrics;
pub mod outbox;
pub mod persist;
pub mod recording;
pub mod room;
pub mod tls;
pub mod tokens;
pub mod turn;
pub mod validate;
pub mod workers;
pub mod ws;

pub use config::{Cli, Config};

use clap::{CommandFactory, FromArgMatches};
use std::ffi::OsString;
use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Commands queued for the hub before connection tasks wait.
const HUB_QUEUE: usize = 8192;
/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every request handler gets.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// Every worker's hub (and SFU, for its stats).
    pub workers: Arc<workers::Workers>,
    pub next_id: Arc<AtomicU64>,
    /// What the connection tasks count, for `/metrics`.
    pub counters: Arc<metrics::Counters>,
    /// Connection caps and per-IP joins, shared by the connection tasks.
    pub admission: Arc<limits::Admission>,
    /// Caps on open TCP connections, shared by the accept path and the ICE-TCP listener.
    pub tcp: Arc<limits::TcpAdmission>,
    /// The TURN task, for its stats (weak: it stops when its owner drops it).
    pub turn: Option<mpsc::WeakSender<turn::TurnCommand>>,
    /// This node's part in a cluster (`--redis`); `None`: a single node.
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// Recordings (`None`: off, or no SFU).
    pub recordings: Option<Arc<recording::Recordings>>,
}

/// Serves until `shutdown` completes, then tells every client and waits (briefly) for them.
/// HTTPS when the configuration says so, with a certificate made or loaded here.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let names = certificate_names(listener.local_addr()?);
    let tls = tls::setup(&config.tls, &names, config.data_dir.as_deref())?;
    serve_with(config, listener, tls, shutdown).await
}

/// [`serve`] with the TLS setup already made (`None`: plain HTTP).
pub async fn serve_with(
    config: Config,
    listener: TcpListener,
    tls: Option<tls::TlsSetup>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    // One node of several signs invite links and TURN credentials with the cluster's keys.
    let shared_keys = match config.redis.as_deref() {
        Some(url) => Some(cluster::shared_keys(url).await?),
        None => None,
    };
    let tcp_caps = Arc::new(limits::TcpAdmission::new(config.tcp_limits(accept::fd_limit())));
    // One node of several runs one worker: the cluster layer drives its hub.
    let n = if config.redis.is_some() { 1 } else { config.workers.clamp(1, workers::MAX_WORKERS) };
    let (hub_txs, hub_rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel(HUB_QUEUE)).unzip();
    let mut media_threads = Vec::new();
    let mut writer_threads = Vec::new();
    let mut media_stats = Vec::new();
    // Where the HTTP listener sends ICE-TCP connections (`None`: not on this port).
    let mut http_ice = None;
    let mut sfu_addresses = Vec::new();
    // What a server that did not stop cleanly left of its shared files.
    files::remove_stale_dirs(config.file_dir.as_deref());
    let mut hubs: Vec<hub::Hub> = Vec::with_capacity(n);
    // Recording needs the SFU: media must pass the server.
    let recordings =
        if config.topology == config::TopologyMode::P2p { None } else { recording::Recordings::open(&config) };
    if config.topology == config::TopologyMode::P2p {
        for _ in 0..n {
            hubs.push(hub::Hub::new(config.clone()));
            media_stats.push(None);
        }
    } else {
        let medias = media::Media::bind_workers(&config, listener.local_addr()?, n).await?;
        for (i, mut media) in medias.into_iter().enumerate() {
            media.set_tcp_caps(tcp_caps.clone());
            info!(worker = i, udp = ?media.addresses(), ice_tcp = ?media.tcp_addresses(), "SFU listening");
            sfu_addresses.extend(media.local_and_announced());
            if i == 0 {
                http_ice = media.http_ice_tcp();
            }
            let (media_tx, media_rx) = mpsc::channel(media::MEDIA_QUEUE);
            media_stats.push(Some(media_tx.downgrade()));
            let mut hub = hub::Hub::with_media(config.clone(), media_tx);
            if let Some(store) = &recordings {
                let (writer, thread) =
                    recording::spawn_writer(i, store.clone(), hub_txs[i].clone(), config.recording_max)?;
                media.set_recorder(writer);
                writer_threads.push(thread);
                hub.set_recordings(store.clone());
            }
            media_threads.push(media.start(media_rx, hub_txs[i].clone())?);
            hubs.push(hub);
        }
    }
    let workers = Arc::new(workers::Workers::new(hub_txs.clone(), media_stats));
    if let Some(store) = &recordings {
        store.set_hubs(hub_txs.iter().map(mpsc::Sender::downgrade).collect());
        // A download link made by one node of several works on every node.
        if let Some(keys) = &shared_keys {
            store.share_link_key(&keys.invite);
        }
    }
    if n > 1 {
        let weak: Vec<_> = hub_txs.iter().map(mpsc::Sender::downgrade).collect();
        let file_usage = files::ServerUsage::shared();
        for (index, hub) in hubs.iter_mut().enumerate() {
            hub.share_file_usage(file_usage.clone());
            hub.set_siblings(workers::Siblings { index, hubs: weak.clone(), rooms: workers.rooms.clone() });
            if let Some(prefix) = workers::file_id_prefix(index, n) {
                hub.set_file_id_prefix(&prefix);
            }
        }
    }
    // One node of several runs one worker (the configuration sees to it): its hub.
    let hub_tx = hub_txs[0].clone();
    // TURN over TLS only with a certificate browsers trust without being asked.
    let turn_tls = match (&config.tls, &tls) {
        (config::Tls::Files { .. }, Some(setup)) => Some(setup.config.clone()),
        _ => None,
    };
    let mut turn_task = None;
    if config.turn {
        let shared = shared_keys.as_ref().map(|k| k.turn.clone());
        let turn = turn::start(config.clone(), listener.local_addr()?, sfu_addresses, turn_tls, shared).await?;
        info!(addresses = ?turn.addresses, "STUN/TURN listening on UDP and TCP");
        for hub in &mut hubs {
            hub.set_turn(turn.handle.clone(), turn.commands.downgrade());
        }
        turn_task = Some(turn);
    }
    // What the previous run on this port handed over (sessions to resume), and invite links
    // that outlive restarts.
    // (One node of several hands its rooms to the other nodes through Redis instead.)
    let sessions_file = persist::sessions_file(
        config.data_dir.as_deref().filter(|_| config.redis.is_none()),
        listener.local_addr()?.port(),
        config.resume_grace.as_secs(),
    );
    let mut first_id = 1;
    if let Some(file) = sessions_file.as_deref() {
        // Each worker saved its own rooms; each room goes back to the worker that owns it now
        // (the count of workers may have changed).
        let now = tokio::time::Instant::now();
        for saved in (0..workers::MAX_WORKERS).filter_map(|i| persist::take_sessions(&persist::worker_file(file, i))) {
            for (index, hub) in hubs.iter_mut().enumerate() {
                match hub.restore_only(&saved, now, &|room: &str| workers::worker_of_room(room, n) == index) {
                    Ok(highest) => first_id = first_id.max(highest + 1),
                    Err(why) => {
                        info!(%why, "saved sessions not used");
                        break;
                    }
                }
            }
        }
    }
    let invite_key = match &shared_keys {
        Some(keys) => Some(keys.invite.clone()),
        None => persist::key(config.data_dir.as_deref(), "invite.key"),
    };
    if let Some(key) = invite_key {
        for hub in &mut hubs {
            hub.set_invite_key(&key);
        }
    }
    let next_id = Arc::new(AtomicU64::new(first_id));
    let cluster = match config.redis.as_deref() {
        Some(url) => {
            let (events_tx, events_rx) = mpsc::unbounded_channel();
            hubs[0].set_room_events(events_tx);
            let keys = shared_keys.as_ref().ok_or_else(|| anyhow::anyhow!("the cluster's keys"))?;
            let address = node_address(listener.local_addr()?).to_string();
            let serves_tls = tls.is_some();
            let cluster = cluster::Cluster::start(
                config.clone(),
                url,
                hub_tx.clone(),
                next_id.clone(),
                events_rx,
                address,
                serves_tls,
                keys,
            )
            .await?;
            // Where each file is kept shows in its id.
            hubs[0].set_file_id_prefix(&format!("{}-", cluster.node));
            Some(cluster)
        }
        None => None,
    };
    // One node of several shares its hub's relay grants with every node's TURN server.
    let _turn_news = match (&cluster, &turn_task) {
        (Some(cluster), Some(turn)) => {
            let shared = cluster.share_turn(turn.commands.downgrade());
            hubs[0].set_turn(turn.handle.clone(), shared.downgrade());
            Some(shared)
        }
        _ => None,
    };
    let hub_tasks: Vec<_> = hubs
        .into_iter()
        .zip(hub_rxs)
        .enumerate()
        .map(|(i, (hub, rx))| {
            let save_to = sessions_file.as_deref().map(|f| persist::worker_file(f, i));
            // Its log lines say which worker (with several).
            let span = if n > 1 { tracing::info_span!("worker", n = i) } else { tracing::Span::none() };
            tokio::spawn(tracing::Instrument::instrument(hub::run(hub, rx, save_to), span))
        })
        .collect();
    let state = AppState {
        admission: Arc::new(limits::Admission::new(config.admission_limits())),
        tcp: tcp_caps,
        config,
        workers: workers.clone(),
        next_id,
        counters: Arc::new(metrics::Counters::default()),
        turn: turn_task.as_ref().map(|t: &turn::Running| t.commands.downgrade()),
        cluster: cluster.clone(),
        recordings,
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let cluster_for_shutdown = cluster.clone();
    let farewell = tokio::spawn(async move {
        shutdown.await;
        // One node of several first gives its rooms to the others (saved, leases given up),
        // so that the pages told goodbye below find their meeting on another node.
        if let Some(cluster) = &cluster_for_shutdown {
            cluster.hand_over().await;
        }
        // Every worker says goodbye (and saves its rooms) at once.
        let goodbyes = workers.hubs().iter().map(|hub| async move {
            let (done_tx, done_rx) = oneshot::channel();
            if hub.send(hub::Command::Shutdown { done: done_tx }).await.is_ok() {
                let _ = done_rx.await;
            }
        });
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, futures_util::future::join_all(goodbyes)).await;
        if let Some(cluster) = &cluster_for_shutdown {
            cluster.close_edges().await;
        }
        let _ = stop_tx.send(());
    });
    let stopped = async move {
        let _ = stop_rx.await;
    };
    let edge = accept::Edge {
        router: http::router(state.clone()),
        state,
        tls: tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config)),
        ice: http_ice,
    };
    accept::serve(listener, edge, stopped).await;
    let _ = farewell.await;
    drop(hub_txs);
    drop(hub_tx);
    for task in &hub_tasks {
        task.abort();
    }
    for media in media_threads {
        // The hub's end of its command channel went with the hub: the thread is on its way out.
        let _ = tokio::time::timeout(Duration::from_secs(1), tokio::task::spawn_blocking(move || media.thread.join()))
            .await;
    }
    for writer in writer_threads {
        // The media thread held its only sender: the writer closes its files and manifests (a
        // recording's part that goes on after the restart says so) and ends.
        let _ = tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || writer.join())).await;
    }
    if let Some(turn) = turn_task {
        // Closing its command channel stops it (it logs its counters on the way out).
        drop(turn.commands);
        let _ =
            tokio::time::timeout(Duration::from_secs(1), tokio::task::spawn_blocking(move || turn.thread.join())).await;
    }
    info!("stopped");
    Ok(())
}

/// Where the other nodes of a cluster reach this one: the listening address, or for a wildcard
/// one, this host's first address on the network (loopback when it has none).
fn node_address(listening: std::net::SocketAddr) -> std::net::SocketAddr {
    if !listening.ip().is_unspecified() {
        return listening;
    }
    let ips = media::interface_ips(listening.ip());
    let ip = ips.iter().find(|ip| !ip.is_loopback()).or(ips.first()).copied();
    std::net::SocketAddr::new(ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()), listening.port())
}

/// The `huddle` command: parses `args` (without the program name), binds, prints the URL and
/// serves until SIGINT or SIGTERM.
pub async fn run_cli(args: Vec<OsString>) -> anyhow::Result<()> {
    if args.first().is_some_and(|a| a == "recordings") {
        return recording::run_cli(args[1..].to_vec(), &mut std::io::stdout().lock());
    }
    let matches = Cli::command().get_matches_from(std::iter::once(OsString::from("huddle")).chain(args));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let config = Config::from_cli(cli)?;
    init_tracing(config.log_format);
    // Before anything is opened: the caps on connections are derived from it.
    accept::raise_fd_limit();
    for name in config::secrets_on_command_line(&matches) {
        let flag = name.replace('_', "-");
        warn!("--{flag} on the command line can be read by every user of this machine (ps); use --{flag}-file or HUDDLE_{} instead", name.to_ascii_uppercase());
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let tls = tls::setup(&config.tls, &certificate_names(addr), config.data_dir.as_deref())?;
    {
        let mut out = std::io::stdout().lock();
        out.write_all(banner(addr, tls.as_ref()).as_bytes())?;
        out.flush()?;
    }
    info!(%addr, "listening");
    serve_with(config, listener, tls, shutdown_signal()).await
}

/// What a self-signed certificate is made for: `localhost` and every address huddle can be
/// reached at on `addr` (all interface addresses for a wildcard).
fn certificate_names(addr: std::net::SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    for ip in media::interface_ips(addr.ip()) {
        let ip = ip.to_string();
        if !names.contains(&ip) {
            names.push(ip);
        }
    }
    names
}

/// The startup text: the URL on this machine first (tests and tools read that line), then the
/// URLs other devices on the network can use with a QR code of the first, and for HTTPS the
/// certificate's fingerprint.
pub fn banner(addr: std::net::SocketAddr, tls: Option<&tls::TlsSetup>) -> String {
    use std::fmt::Write as _;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = |ip: std::net::IpAddr| format!("{scheme}://{}/", std::net::SocketAddr::new(ip, addr.port()));
    let here = if addr.ip().is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { addr.ip() };
    let mut out = format!("huddle listening on {}\n", url(here));
    let lan: Vec<String> = if addr.ip().is_unspecified() {
        media::interface_ips(addr.ip()).into_iter().filter(|ip| !ip.is_loopback()).map(url).collect()
    } else if !addr.ip().is_loopback() {
        vec![url(addr.ip())]
    } else {
        Vec::new()
    };
    if lan.is_empty() && !addr.ip().is_unspecified() {
        let _ =
            writeln!(out, "  only this machine can connect; --listen 0.0.0.0:{} opens it to the network", addr.port());
    }
    for u in &lan {
        let _ = writeln!(out, "  on your network: {u}");
    }
    if let Some(first) = lan.first() {
        if let Ok(code) = qrcode::QrCode::new(first.as_bytes()) {
            // Light modules drawn, dark ones blank: right on the usual dark terminal.
            let qr = code
                .render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build();
            let _ = writeln!(out, "  scan to join from a phone:");
            for line in qr.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        if tls.is_none() {
            let _ = writeln!(
                out,
                "  phones and other computers get the camera only over HTTPS: add --tls self-signed (or --tls-cert/--tls-key)"
            );
        }
    }
    if let Some(tls) = tls {
        let _ = writeln!(out, "  certificate SHA-256 fingerprint: {}", tls.fingerprint);
        if let Some(spki) = &tls.spki_sha256 {
            let _ = writeln!(out, "  its public key's SHA-256 (base64, for pinning): {spki}");
            let _ = writeln!(
                out,
                "  self-signed: browsers warn that they do not know who signed it; check the fingerprint above in the browser's certificate view, then continue"
            );
            match &tls.kept_in {
                Some(dir) => {
                    let _ = writeln!(
                        out,
                        "  kept in {} for the next start: browsers that accepted it keep accepting it",
                        dir.display()
                    );
                }
                None => {
                    let _ = writeln!(out, "  made for this run only: browsers ask again after a restart");
                }
            }
        }
    }
    out
}

fn init_tracing(format: config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        config::LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
        config::LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
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
