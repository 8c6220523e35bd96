//! The one accept path of the HTTP port: every TCP connection comes through [`serve`], whatever it
//! turns out to be (HTTP, HTTPS, ICE over TCP), and every stage of its life has a deadline.
//!
//! ```text
//! accept ─ caps: open TCP connections server-wide and per IP address (over a cap: closed at once)
//!   ├─ ICE over TCP on this port: its first bytes tell (handshake_timeout) ─▶ crate::ice_tcp
//!   ├─ HTTPS: the TLS handshake, or a redirect for plain HTTP (handshake_timeout)
//!   └─ HTTP/1.1 (hyper): each request's headers within handshake_timeout of the connection
//!      opening or its previous response (so an idle keep-alive connection closes then too)
//!        └─ /ws: the upgrade (handshake_timeout), then crate::ws: the first frame within
//!           handshake_timeout (the server pings at once: a pong counts), the heartbeat, and a
//!           deadline on every write
//! ```
//!
//! Who owns what: [`serve`] owns the listener and spawns one task per connection, which owns the
//! socket. The connection's place under the caps (a [`TcpTicket`]) is inside the IO that hyper
//! serves ([`Counted`]), so it goes wherever the socket goes (through a WebSocket upgrade, to the
//! ICE-TCP task) and is given back when the socket closes, whoever closes it.
//!
//! It also raises the process's open file limit ([`raise_fd_limit`]): the server-wide cap is
//! derived from it, so that huddle never runs itself out of file descriptors.

use crate::client_ip::PeerAddr;
use crate::ice_tcp::{self, IceTcp, Peeked};
use crate::limits::{Refused, TcpTicket};
use crate::AppState;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// The most of a request's head (request line and headers) read before it is refused: browsers
/// send a few KiB; a client may not make the server buffer more.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// After a failed `accept` (out of file descriptors and the like): wait this long, not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long stopping waits for HTTP requests under way to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the accept path serves connections with.
pub struct Edge {
    pub state: AppState,
    pub router: Router,
    /// HTTPS; `None`: plain HTTP.
    pub tls: Option<TlsAcceptor>,
    /// Where ICE-TCP connections on this port go; `None`: not on this port.
    pub ice: Option<IceTcp>,
}

/// Accepts connections on `listener` until `stop` completes; then stops accepting, lets requests
/// under way finish (briefly) and returns. WebSockets are not waited for: the hub says goodbye
/// to them before `stop` completes.
pub async fn serve(listener: TcpListener, edge: Edge, stop: impl Future<Output = ()>) {
    let edge = Arc::new(edge);
    let (stopping, stop_rx) = watch::channel(false);
    // Each HTTP connection task holds a sender; all gone: all finished.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    let mut stop = std::pin::pin!(stop);
    let mut failures: u64 = 0;
    loop {
        let (stream, from) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        warn!(error = %e, failures, "cannot accept a connection");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        match edge.state.tcp.admit(from.ip()) {
            Ok(ticket) => {
                let (edge, stop_rx, alive) = (edge.clone(), stop_rx.clone(), alive.clone());
                tokio::spawn(async move {
                    connection(stream, from, ticket, &edge, stop_rx).await;
                    drop(alive);
                });
            }
            Err(cap) => {
                // Closed at once: no byte read, nothing held.
                let counter = match cap {
                    Refused::Server => &edge.state.counters.tcp_refused_server,
                    Refused::Ip => &edge.state.counters.tcp_refused_ip,
                };
                if counter.fetch_add(1, Relaxed) == 0 && cap == Refused::Server {
                    warn!(
                        limit = edge.state.tcp.max(),
                        "as many TCP connections are open as allowed; new ones are closed"
                    );
                }
                debug!(?cap, ip = %from.ip(), "refused a TCP connection over a cap");
            }
        }
    }
    drop(listener);
    let _ = stopping.send(true);
    drop(alive);
    let _ = tokio::time::timeout(STOP_GRACE, all_done.recv()).await;
}

/// One connection from accept to the end of its HTTP life (an upgraded WebSocket and an ICE-TCP
/// connection live on in tasks of their own, with the ticket).
async fn connection(stream: TcpStream, from: SocketAddr, ticket: TcpTicket, edge: &Edge, stop: watch::Receiver<bool>) {
    // Signalling messages are small and latency-sensitive: no Nagle delay.
    let _ = stream.set_nodelay(true);
    let deadline = edge.state.config.handshake_timeout;
    let counters = &edge.state.counters;
    if let Some(ice) = &edge.ice {
        match tokio::time::timeout(deadline, ice_tcp::sniff(&stream)).await {
            Ok(Ok(Peeked::IceTcp)) => return ice.take(stream, from, Some(ticket)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return debug!(error = %e, "connection failed before its first bytes"),
            Err(_) => {
                counters.timeouts_sniff.fetch_add(1, Relaxed);
                return debug!("nothing said in time; closed");
            }
        }
    }
    let Some(acceptor) = &edge.tls else {
        return serve_http(stream, from, ticket, edge, stop).await;
    };
    match tokio::time::timeout(deadline, crate::tls::accept(stream, acceptor)).await {
        Ok(Ok(Some(tls))) => serve_http(tls, from, ticket, edge, stop).await,
        // Plain HTTP, answered with a redirect.
        Ok(Ok(None)) => {}
        // A browser refusing our certificate, a scanner, a closed connection.
        Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
        Err(_) => {
            counters.timeouts_tls.fetch_add(1, Relaxed);
            debug!("TLS handshake timed out");
        }
    }
}

/// HTTP/1.1 on `io` until the connection closes, times out, or is upgraded (then the WebSocket
/// task has the socket). Each request gets the client's address as [`ConnectInfo<PeerAddr>`].
async fn serve_http<IO>(io: IO, from: SocketAddr, ticket: TcpTicket, edge: &Edge, mut stop: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Counted { io, _ticket: ticket });
    let router = edge.router.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(PeerAddr(from)));
        // A `Router` is always ready, and cloning it clones a pointer.
        tower_service::Service::call(&mut router.clone(), req)
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // Without a timer hyper applies no header timeout at all.
    http.timer(TokioTimer::new())
        .header_read_timeout(edge.state.config.handshake_timeout)
        .max_buf_size(MAX_REQUEST_HEAD.max(8192));
    let conn = http.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    // (The guard `wait_for` returns must not live across an await.)
    let stopping = async move { stop.wait_for(|stopping| *stopping).await.is_ok() };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            edge.state.counters.timeouts_headers.fetch_add(1, Relaxed);
            debug!("request headers not sent in time; closed");
        } else {
            debug!(error = %e, "HTTP connection ended with an error");
        }
    }
}

/// A connection's IO together with its place under the caps, given back when the IO is dropped.
pub struct Counted<IO> {
    io: IO,
    _ticket: TcpTicket,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The process's limit on open files (and sockets): what it was at start, and what it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

/// Raises the soft limit on open files to the hard limit (systemd and shells often start
/// services at 1024 while allowing far more) and says so in the log. `None` where the platform
/// does not tell.
pub fn raise_fd_limit() -> Option<FdLimit> {
    let (before, hard) = nofile()?;
    let now = if before < hard && set_nofile(hard, hard) { hard } else { before };
    let limit = FdLimit { before, now, hard };
    if now > before {
        info!(from = before, to = now, "raised the limit on open files to the hard limit");
    } else {
        info!(limit = now, hard, "limit on open files");
    }
    if now < 4096 {
        warn!(
            limit = now,
            "few open files allowed: connections beyond three quarters of this are closed at once; \
             raise it (systemd: LimitNOFILE=65536)"
        );
    }
    Some(limit)
}

/// The soft limit on open files now, for the server-wide connection cap (a generous guess where
/// the platform does not tell).
pub fn fd_limit() -> u64 {
    nofile().map_or(65_536, |(soft, _)| soft)
}

/// `(soft, hard)` of `RLIMIT_NOFILE`; "unlimited" counts as `u64::MAX`.
#[cfg(unix)]
#[allow(unsafe_code)] // the one call below
fn nofile() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` only writes the `rlimit` we pass, which is plain data of the right type.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    // `rlim_t` is not `u64` on every platform.
    #[allow(clippy::unnecessary_cast)]
    let (soft, hard) = (limit.rlim_cur as u64, limit.rlim_max as u64);
    (rc == 0).then_some((soft, hard))
}

#[cfg(unix)]
#[allow(unsafe_code)] // the one call below
fn set_nofile(soft: u64, hard: u64) -> bool {
    let limit = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
    // SAFETY: `setrlimit` only reads the `rlimit` we pass; a value it refuses is an error, not UB.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 }
}

#[cfg(not(unix))]
fn nofile() -> Option<(u64, u64)> {
    None
}

#[cfg(not(unix))]
fn set_nofile(_soft: u64, _hard: u64) -> bool {
    false
}
