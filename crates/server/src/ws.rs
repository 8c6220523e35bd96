//! One WebSocket connection, from the upgrade to the close. It owns no room state.
//!
//! Its task reads and writes at the same time. A reader half parses and validates incoming
//! frames, applies the rate limits ([`crate::limits`]), hands them to the hub and watches the
//! heartbeat; a writer half drains the connection's outbox ([`crate::outbox`]) into the socket
//! and pings. The two halves and the hub's kick are raced in one `select!`: whichever ends first
//! ends the connection, and dropping the others cancels them. So a write blocked on a client
//! that stopped reading hides neither a kick nor a silent client (the single loop this replaced
//! awaited the write inside its `select!` and saw neither), and dropping the outbox at once frees
//! what was queued. (One task rather than axum's chat example's two: nothing to abort, no channel
//! between them, and the halves are reunited for the goodbye.)
//!
//! Every wait on the client has a deadline: the upgrade and the first frame
//! (`handshake_timeout`; the server pings at once, and a pong counts), the heartbeat
//! (`idle_timeout`), every write (`idle_timeout` too), the goodbye ([`GOODBYE_TIMEOUT`]) and the
//! lingering close ([`LINGER`]). What a connection holds is bounded in bytes: its outbox
//! (`outbox_bytes`), its read buffer (one frame, at most `max_frame_bytes`: larger frames are
//! refused from their header, before any byte of them is buffered), its write buffer (long
//! messages go out in fragments of [`FRAGMENT`] bytes).
//!
//! A connection the server ends says why: `bye` with a reason and a close code
//! (`docs/protocol.md`, "Transport" and `bye`), then lingers to read what the client still sends
//! until it closes too, so that closing with unread bytes does not turn into a TCP reset that
//! could destroy the close frame before the client reads it.

use crate::client_ip::{client_ip, PeerAddr};
use crate::cluster::relay::{Body as Relayed, Envelope, RelayCmd, WireResume};
use crate::cluster::{Cluster, ASK_TIMEOUT};
use crate::hub::{Command, Connect, Resume};
use crate::limits::{class_of, Class, ConnLimiter, Refused, Verdict};
use crate::outbox::{self, Frame, Outbox, OutboxReceiver};
use crate::AppState;
use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use huddle_protocol::{ByeReason, ClientMsg, ErrorCode, LeaveReason, PeerId, ServerMsg};
use hyper_util::rt::TokioIo;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame as WsFrame, Utf8Bytes};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, info_span, Instrument};

/// The largest `max_frame_bytes` an operator may configure. Frames above `max_frame_bytes` close
/// the connection (`bye` `frame_too_large`, close code 1009).
pub const HARD_MAX_FRAME_BYTES: usize = 1024 * 1024;
/// The close code a page sends when it drops a connection to resume on a new one.
pub const RECONNECTING: u16 = 4000;
/// Messages written before flushing the socket once, at most.
const WRITE_BATCH: usize = 64;
/// Bytes written before flushing the socket once: a batch stops growing past this.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Messages longer than this go out in fragments of this size (browsers put them together), so
/// that the socket's write buffer, which never shrinks, holds a fragment or two, not the largest
/// message ever sent.
pub const FRAGMENT: usize = 16 * 1024;
/// How often a connection checks its heartbeat: a silent connection is dropped at most this long
/// after `idle_timeout`.
const HEARTBEAT_CHECK: Duration = Duration::from_secs(5);
/// How long the server tries to write its goodbye (`bye` and the close frame) to a connection it
/// ends: a client that stopped reading never takes it.
pub const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a closing connection reads (and drops) what the client still sends, waiting for it
/// to close too.
pub const LINGER: Duration = Duration::from_secs(2);

/// Close codes (RFC 6455, 7.4.1).
const CLOSE_NORMAL: u16 = 1000;
/// `bye` `server_shutdown` and `timed_out`.
const CLOSE_GOING_AWAY: u16 = 1001;
/// A frame that breaks the WebSocket protocol.
const CLOSE_PROTOCOL: u16 = 1002;
/// A text frame that is not UTF-8.
const CLOSE_INVALID_DATA: u16 = 1007;
/// `bye` `flooding` and `too_slow` (policy violation).
const CLOSE_POLICY: u16 = 1008;
/// `bye` `frame_too_large`.
const CLOSE_TOO_BIG: u16 = 1009;
/// `bye` `too_many_connections` ("try again later").
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// The WebSocket as this module drives it: tungstenite on the upgraded HTTP connection.
type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// `GET /ws`: checks the request, answers `101 Switching Protocols` and hands the upgraded
/// connection to its own task.
pub async fn upgrade(
    State(app): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    RawQuery(query): RawQuery,
    mut req: Request,
) -> Response {
    let headers = req.headers();
    if !origin_allowed(headers, &app.config.allowed_origins) {
        info!("refused a cross-origin WebSocket");
        return (StatusCode::FORBIDDEN, "This server does not accept WebSocket connections from that site.")
            .into_response();
    }
    let Some(accept) = websocket_accept(headers) else {
        return (StatusCode::BAD_REQUEST, "This address takes WebSocket connections (version 13) only.")
            .into_response();
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).and_then(crate::turn::host_of);
    let ip = client_ip(peer.ip(), headers, &app.config.trusted_proxies);
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return (StatusCode::UPGRADE_REQUIRED, "This address takes WebSocket connections only.").into_response();
    };
    let n = app.next_id.fetch_add(1, Ordering::Relaxed);
    let resume = query.as_deref().and_then(parse_resume).map(Box::new);
    let task = connection(Box::new(Opening { on_upgrade, app, n, host, ip, resume }));
    tokio::spawn(task.instrument(info_span!("conn", n)));
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    res
}

/// `Sec-WebSocket-Accept` for a WebSocket upgrade request (RFC 6455, 4.2.1); `None` when the
/// request is not one.
fn websocket_accept(headers: &HeaderMap) -> Option<HeaderValue> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let version = headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes);
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") || version != Some(b"13") {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    HeaderValue::from_str(&tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())).ok()
}

/// Buffers bounded by bytes: frames (and messages) up to `max_frame` bytes, refused from their
/// header beyond; a write buffer of a fragment or two; reads of [`READ_BUFFER`].
fn socket_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(FRAGMENT)
        .max_write_buffer_size(4 * FRAGMENT)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// The read buffer every connection keeps, and the most one read takes from the socket. Most
/// messages (signals, chat, pings) are a few hundred bytes, so 1 KiB takes several at once; an
/// SDP of a few KiB grows the buffer to its frame for the time it takes and costs a few reads
/// more. Each read also zeroes what it may fill, so a smaller buffer is cheaper per read, and
/// every idle connection holds 3 KiB less than with 4 KiB.
const READ_BUFFER: usize = 1024;

/// `session=<id>&resume=<secret>&seen=<n>` (see [`Resume`]); anything malformed is ignored (the
/// connection then starts a new session).
pub fn parse_resume(query: &str) -> Option<Resume> {
    if query.len() > 256 {
        return None;
    }
    let (mut id, mut secret, mut seen) = (None, None, None);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("session", v)) => id = Some(v),
            Some(("resume", v)) => secret = Some(v),
            Some(("seen", v)) => seen = v.parse::<u64>().ok(),
            _ => {}
        }
    }
    let id = id.filter(|v| v.len() <= 24 && v.bytes().all(|b| b.is_ascii_alphanumeric()))?;
    let secret = secret.filter(|v| v.len() <= 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))?;
    Some(Resume { id: PeerId(id.to_string()), secret: secret.to_string(), seen: seen? })
}

/// A browser must come from our own origin (or one the operator allowed); this stops other
/// sites from opening a WebSocket with the user's cookies (cross-site WebSocket hijacking).
/// Clients without an `Origin` header are not browsers and are let through.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    if allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    // Origin is "scheme://host[:port]"; same origin when its authority equals Host.
    origin.split_once("://").is_some_and(|(scheme, authority)| {
        (scheme == "http" || scheme == "https") && authority.eq_ignore_ascii_case(host)
    })
}

/// Why a connection ended, and so what it is told and what the hub hears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The hub ended it (`too_slow`, `replaced`, turned away at shutdown).
    Kicked(ByeReason),
    /// The hub forgot the session without a word (its page started over elsewhere).
    Forgotten,
    /// The hub closed the outbox after queueing `bye` (the server is shutting down).
    ShutDown,
    /// This node is stopping, and the session lives on another node (of several): the page
    /// resumes through a node that stays, with the same home.
    EdgeClosed,
    /// The client closed; `reconnecting`: with [`RECONNECTING`], to resume elsewhere.
    ClientClosed { reconnecting: bool },
    /// The network broke: a reset, an error, a TCP close without a WebSocket close.
    Broken,
    /// Nothing from the client in time: no first frame, or no heartbeat.
    TimedOut,
    /// A write did not finish in time: the client is not taking what it is sent.
    WriteTimedOut,
    /// A frame over `max_frame_bytes`.
    FrameTooLarge,
    /// A text frame that is not UTF-8.
    BadUtf8,
    /// Another break of the WebSocket protocol (unmasked or reserved bits, a bad close frame...).
    ProtocolError,
    /// It kept sending over its rate limits.
    Flooding,
    /// The hub is gone.
    HubGone,
}

/// What the client and the hub are told when a connection ends.
struct Farewell {
    /// `bye` with this reason, then a close frame with `code`; `code` `None`: nothing (the client
    /// closed, or the network is gone).
    bye: Option<ByeReason>,
    code: Option<(u16, &'static str)>,
    /// Tell the hub: how the participant left, and whether it may resume.
    hub: Option<(LeaveReason, bool)>,
}

impl Ending {
    fn farewell(self) -> Farewell {
        use Ending::*;
        let (bye, code, hub) = match self {
            Kicked(reason) => (Some(reason), Some(close_code(reason)), None),
            Forgotten => (None, Some((CLOSE_NORMAL, "session ended")), None),
            ShutDown => (None, Some((CLOSE_GOING_AWAY, "server shutting down")), Some((LeaveReason::Left, true))),
            EdgeClosed => {
                (None, Some((CLOSE_GOING_AWAY, "server shutting down")), Some((LeaveReason::Disconnected, true)))
            }
            ClientClosed { reconnecting: true } => (None, None, Some((LeaveReason::Disconnected, true))),
            ClientClosed { reconnecting: false } => (None, None, Some((LeaveReason::Left, true))),
            Broken => (None, None, Some((LeaveReason::Disconnected, true))),
            TimedOut => (
                Some(ByeReason::TimedOut),
                Some(close_code(ByeReason::TimedOut)),
                Some((LeaveReason::Disconnected, true)),
            ),
            // Like a dead network: its place is kept for a resume.
            WriteTimedOut => (
                Some(ByeReason::TooSlow),
                Some(close_code(ByeReason::TooSlow)),
                Some((LeaveReason::Disconnected, true)),
            ),
            // The frame counts as taken (the hub is told `Ignored`), so a resume does not send it
            // again.
            FrameTooLarge => {
                let code = close_code(ByeReason::FrameTooLarge);
                (Some(ByeReason::FrameTooLarge), Some(code), Some((LeaveReason::Disconnected, true)))
            }
            // A broken protocol ends the session now.
            BadUtf8 => (None, Some((CLOSE_INVALID_DATA, "not UTF-8")), Some((LeaveReason::Disconnected, false))),
            ProtocolError => (None, Some((CLOSE_PROTOCOL, "protocol error")), Some((LeaveReason::Disconnected, false))),
            Flooding => (
                Some(ByeReason::Flooding),
                Some(close_code(ByeReason::Flooding)),
                Some((LeaveReason::Disconnected, false)),
            ),
            HubGone => (None, Some((CLOSE_GOING_AWAY, "server shutting down")), None),
        };
        Farewell { bye, code, hub }
    }
}

/// The close code that follows `bye` with `reason`.
fn close_code(reason: ByeReason) -> (u16, &'static str) {
    match reason {
        ByeReason::ServerShutdown => (CLOSE_GOING_AWAY, "server shutting down"),
        ByeReason::TimedOut => (CLOSE_GOING_AWAY, "timed out"),
        ByeReason::TooSlow => (CLOSE_POLICY, "too slow"),
        ByeReason::FrameTooLarge => (CLOSE_TOO_BIG, "frame too large"),
        ByeReason::Flooding => (CLOSE_POLICY, "flooding"),
        ByeReason::TooManyConnections => (CLOSE_TRY_AGAIN_LATER, "too many connections"),
        ByeReason::Replaced => (CLOSE_NORMAL, "replaced"),
    }
}

/// What a connection's task starts from: the upgrade to wait for, and what the request said.
struct Opening {
    on_upgrade: hyper::upgrade::OnUpgrade,
    app: AppState,
    n: u64,
    host: Option<String>,
    ip: IpAddr,
    resume: Option<Box<Resume>>,
}

/// One connection's task, from the upgrade on.
///
/// An async fn's future is as large as its largest await, and every idle connection carries it,
/// so: its awaits that happen once per connection or never (goodbyes, the close, a resume through
/// another node, a hub too busy to take a message at once) are boxed; its arguments come in one
/// box (an async fn keeps its arguments for its whole life beside the locals made from them, the
/// socket's 328 bytes among them); and the socket is made here, a local that is gone once split.
/// (5.7 KiB of future once, 2.7 KiB before these last steps, 1.3 KiB now;
/// `connection_memory::an_idle_participant_costs_a_few_kib`.)
async fn connection(opening: Box<Opening>) {
    let Opening { on_upgrade, app, n, host, ip, resume } = *opening;
    // (In a block: a local moved out of still takes room in the future until its scope ends.)
    let (sink, mut stream) = {
        // hyper hands the connection over once it has written the 101.
        let upgraded = match tokio::time::timeout(app.config.handshake_timeout, on_upgrade).await {
            Ok(Ok(upgraded)) => upgraded,
            Ok(Err(e)) => return debug!(error = %e, "the upgrade failed"),
            Err(_) => return debug!("the upgrade timed out"),
        };
        let config = socket_config(app.config.max_frame_bytes as usize);
        let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        socket.split()
    };
    let mut w = Writer { sink, mid_message: false };
    // Held until the connection ends: its place under the caps.
    let _ticket = match app.admission.admit(ip, std::time::Instant::now()) {
        Ok(ticket) => ticket,
        Err(cap) => {
            let counter = match cap {
                Refused::Server => &app.counters.refused_server_cap,
                Refused::Ip => &app.counters.refused_ip_cap,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            debug!(?cap, %ip, "refused a connection over the cap");
            let error = Frame::new(&ServerMsg::error(ErrorCode::TooManyConnections, None));
            let (code, why) = close_code(ByeReason::TooManyConnections);
            Box::pin(w.goodbye(&[error], Some(ByeReason::TooManyConnections), code, why)).await;
            return Box::pin(close(w, stream)).await;
        }
    };
    let cfg = &app.config;
    let (outbox, mut outbox_rx) = outbox::outbox(cfg.outbox_capacity, cfg.outbox_bytes);
    let (kick_tx, mut kick_rx) = oneshot::channel();
    let mut route = Route { home: None, seq: 0, worker: app.workers.for_connection(n) };
    // Boxed: what it holds is needed only until the session is found or made.
    let id = match Box::pin(begin(&app, n, host, ip, resume, outbox, kick_tx, &mut route)).await {
        Ok(id) => id,
        Err(Unbegun::TryAgain) => {
            // Its room's owner went away and no node has taken the room over yet (its lease has
            // not run out), or that node does not answer: the page tries again a moment later,
            // as after any close.
            debug!("the session's node is gone or silent, its room not yet taken over; try again");
            Box::pin(w.goodbye(&[], None, CLOSE_TRY_AGAIN_LATER, "meeting moving, try again")).await;
            return Box::pin(close(w, stream)).await;
        }
        Err(Unbegun::Refused) => {
            let (code, why) = close_code(ByeReason::ServerShutdown);
            Box::pin(w.goodbye(&[], Some(ByeReason::ServerShutdown), code, why)).await;
            return Box::pin(close(w, stream)).await;
        }
        Err(Unbegun::HubGone) => return,
    };
    debug!(peer = %id, %ip, "connected");
    let ending = {
        let reading = read_loop(&mut stream, &app, &id, ip, n, &mut route);
        let writing = write_loop(&mut w, &mut outbox_rx, &app);
        tokio::select! {
            biased;
            kicked = &mut kick_rx => match kicked {
                Ok(reason) => Ending::Kicked(reason),
                Err(_) => Ending::Forgotten,
            },
            ending = writing => ending,
            ending = reading => ending,
        }
    };
    // The outbox of a session living on another node closes when this node stops (or when its
    // home says goodbye, after `bye`): its place there is kept for the page's resume.
    let ending = if ending == Ending::ShutDown && route.home.is_some() { Ending::EdgeClosed } else { ending };
    // What was queued and will never be written goes now.
    outbox_rx.close();
    count(&app, ending);
    if matches!(ending, Ending::Kicked(_)) {
        info!(?ending, "disconnected by the server");
    } else {
        debug!(?ending, "closing");
    }
    let farewell = ending.farewell();
    if let Some((code, why)) = farewell.code {
        Box::pin(w.goodbye(&[], farewell.bye, code, why)).await;
    }
    if ending == Ending::FrameTooLarge {
        let _ = Box::pin(route.deliver(&app, n, Command::Ignored { id: id.clone() })).await;
    }
    if let Some((reason, resumable)) = farewell.hub {
        let _ = Box::pin(route.deliver(&app, n, Command::Disconnect { id, conn: n, reason, resumable })).await;
    }
    if let (Some(cluster), Some(_)) = (&app.cluster, &route.home) {
        Box::pin(cluster.relay(RelayCmd::EdgeGone { conn: n })).await;
    }
    drop(_ticket);
    Box::pin(close(w, stream)).await;
}

fn count(app: &AppState, ending: Ending) {
    let c = &app.counters;
    let counter = match ending {
        Ending::TimedOut => &c.closed_timed_out,
        Ending::WriteTimedOut => &c.closed_write_timeout,
        Ending::FrameTooLarge => {
            c.refused(ErrorCode::FrameTooLarge);
            &c.closed_frame_too_large
        }
        Ending::BadUtf8 | Ending::ProtocolError => &c.closed_protocol_error,
        Ending::Flooding => &c.closed_flooding,
        _ => return,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Reads frames until the connection ends; returns why.
async fn read_loop(
    stream: &mut SplitStream<Socket>,
    app: &AppState,
    id: &PeerId,
    ip: IpAddr,
    n: u64,
    route: &mut Route,
) -> Ending {
    let cfg = &app.config;
    let mut limiter = ConnLimiter::new(cfg.message_rates(), std::time::Instant::now());
    // Liveness is a timestamp checked on a coarse tick, not a timer re-armed for every frame.
    let check_every = HEARTBEAT_CHECK.min(cfg.ping_interval);
    let mut tick = tokio::time::interval_at(Instant::now() + check_every, check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first frame (a pong to the ping sent at once counts) has its own, shorter deadline
    // (boxed, and gone once heard: a timer is 112 bytes every idle connection would carry).
    let mut first_frame = Some(Box::pin(tokio::time::sleep(cfg.handshake_timeout)));
    let mut last_seen = Instant::now();
    loop {
        // In a block: what it makes is gone by the time a busy hub is waited for.
        let cmd = {
            let frame = tokio::select! {
                frame = stream.next() => frame,
                _ = async {
                    match first_frame.as_mut() {
                        Some(deadline) => deadline.await,
                        None => std::future::pending().await,
                    }
                }, if first_frame.is_some() => return Ending::TimedOut,
                _ = tick.tick() => {
                    if last_seen.elapsed() >= cfg.idle_timeout {
                        return Ending::TimedOut;
                    }
                    continue;
                }
            };
            first_frame = None;
            last_seen = Instant::now();
            let parsed = match frame {
                None => return Ending::ClientClosed { reconnecting: false },
                Some(Err(e)) => {
                    debug!(error = %e, "WebSocket read failed");
                    return ending_of(&e);
                }
                // The page closes with RECONNECTING when it starts over on a new connection (a network
                // change): keep its place as for a lost connection.
                Some(Ok(Message::Close(Some(frame)))) if u16::from(frame.code) == RECONNECTING => {
                    return Ending::ClientClosed { reconnecting: true }
                }
                Some(Ok(Message::Close(_))) => return Ending::ClientClosed { reconnecting: false },
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => Err((ErrorCode::BinaryFrame, None)),
                Some(Ok(Message::Text(text))) => serde_json::from_str::<ClientMsg>(&text).map_err(|_| classify(&text)),
            };
            let now = std::time::Instant::now();
            let class = match &parsed {
                Ok(msg) => {
                    app.counters.message_in(msg);
                    class_of(msg)
                }
                Err(_) => Class::Other,
            };
            let mut verdict = limiter.check(class, now);
            if verdict == Verdict::Pass && class == Class::Join && !app.admission.join(ip, now) {
                verdict = limiter.refuse(now);
            }
            // Several nodes: a join goes to the room's owner, and the session with it.
            let mut unavailable = false;
            if let (Verdict::Pass, Some(cluster), Ok(ClientMsg::Join { room, .. })) = (verdict, &app.cluster, &parsed) {
                unavailable = !Box::pin(route.follow_room(app, cluster, room, id, n)).await;
            }
            // Several workers: the same, to the room's worker.
            if let (Verdict::Pass, true, Ok(ClientMsg::Join { room, .. })) = (verdict, app.workers.len() > 1, &parsed) {
                Box::pin(route.follow_worker(app, room, id, n)).await;
            }
            match verdict {
                Verdict::Pass if unavailable => {
                    app.counters.refused(ErrorCode::Unavailable);
                    reject(id, ErrorCode::Unavailable, Some("join".into()))
                }
                Verdict::Pass => match parsed {
                    Ok(msg) => Command::Client { id: id.clone(), msg },
                    Err((code, request)) => {
                        app.counters.refused(code);
                        reject(id, code, request)
                    }
                },
                Verdict::Refuse { reply } => {
                    app.counters.refused(ErrorCode::RateLimited);
                    if !reply {
                        app.counters.replies_suppressed.fetch_add(1, Ordering::Relaxed);
                        // Still counted as taken, for a resume (`welcome.received`).
                        Command::Ignored { id: id.clone() }
                    } else {
                        let request = match parsed {
                            Ok(msg) => Some(msg.type_name().to_string()),
                            Err((_, request)) => request,
                        };
                        debug!(request = request.as_deref().unwrap_or("-"), "rate limited");
                        Command::Reject { id: id.clone(), code: ErrorCode::RateLimited, request }
                    }
                }
                Verdict::Flooding => {
                    app.counters.refused(ErrorCode::RateLimited);
                    info!("closing a connection that keeps flooding");
                    return Ending::Flooding;
                }
            }
        };
        // If the hub is busy this waits, which pauses reading from this socket only.
        let busy = match route.deliver_now(app, n, cmd) {
            Ok(()) => continue,
            Err(Undelivered::Busy(cmd)) => cmd,
            Err(Undelivered::Gone) => return Ending::HubGone,
        };
        if Box::pin(route.hub(app).send(busy)).await.is_err() {
            return Ending::HubGone;
        }
    }
}

/// How a read error ends the connection: a broken network may be resumed from; a broken
/// protocol (a frame over the limit, bad framing, bad UTF-8) is said so and ends the session.
fn ending_of(e: &WsError) -> Ending {
    match e {
        WsError::Capacity(_) => Ending::FrameTooLarge,
        WsError::Utf8(_) => Ending::BadUtf8,
        WsError::Io(_)
        | WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Ending::Broken,
        _ => Ending::ProtocolError,
    }
}

/// Writes what the hub queues, and pings, until the connection ends; returns why. Every write
/// (a batch, a ping) must finish within `idle_timeout`.
async fn write_loop(w: &mut Writer, outbox: &mut OutboxReceiver, app: &AppState) -> Ending {
    let deadline = app.config.idle_timeout;
    // The first tick is at once: a live client answers, and that is its first frame.
    let mut ping = tokio::time::interval(app.config.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let written = tokio::select! {
            biased;
            frame = outbox.recv() => {
                // The hub closed the outbox after queueing `bye`: the server is shutting down.
                let Some(frame) = frame else { return Ending::ShutDown };
                // Boxed: a write and its deadline take 376 bytes for the moment they run, which
                // every idle connection would carry otherwise.
                Box::pin(tokio::time::timeout(deadline, w.write_batch(frame, outbox))).await
            }
            _ = ping.tick() => {
                Box::pin(tokio::time::timeout(deadline, w.ping())).await.map(|r| r.map(|()| 0))
            }
        };
        match written {
            Ok(Ok(n)) => {
                app.counters.messages_out.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                debug!(error = %e, "WebSocket write failed");
                return Ending::Broken;
            }
            Err(_) => {
                info!("a write did not finish in time; dropping the connection");
                return Ending::WriteTimedOut;
            }
        }
    }
}

/// The writing half of a connection.
struct Writer {
    sink: SplitSink<Socket, Message>,
    /// A message went out in part (some of its fragments): until the rest follows, only control
    /// frames (ping, close) may be written.
    mid_message: bool,
}

impl Writer {
    /// Sends `first` and whatever else is already queued (up to [`WRITE_BATCH`] messages and
    /// about [`WRITE_BATCH_BYTES`]) with one flush; how many it sent.
    async fn write_batch(&mut self, first: Frame, outbox: &mut OutboxReceiver) -> Result<u64, WsError> {
        let mut bytes = first.len();
        self.feed(&first).await?;
        let mut sent = 1;
        while sent < WRITE_BATCH && bytes < WRITE_BATCH_BYTES {
            let Ok(frame) = outbox.try_recv() else { break };
            bytes += frame.len();
            self.feed(&frame).await?;
            sent += 1;
        }
        self.sink.flush().await?;
        Ok(sent as u64)
    }

    /// Queues `frame` as one text message, in fragments of [`FRAGMENT`] bytes when longer.
    async fn feed(&mut self, frame: &Frame) -> Result<(), WsError> {
        let text = frame.bytes();
        let mut at = 0;
        loop {
            let end = (at + FRAGMENT).min(text.len());
            let kind = if at == 0 { Data::Text } else { Data::Continue };
            let fin = end == text.len();
            self.sink.feed(Message::Frame(WsFrame::message(text.slice(at..end), OpCode::Data(kind), fin))).await?;
            self.mid_message = !fin;
            if fin {
                return Ok(());
            }
            at = end;
        }
    }

    async fn ping(&mut self) -> Result<(), WsError> {
        self.sink.send(Message::Ping(Default::default())).await
    }

    /// Writes `before`, `bye` (if any) and a close frame with `code`, bounded in time: the
    /// client may not be reading. In the middle of a fragmented message only the close frame
    /// can go.
    async fn goodbye(&mut self, before: &[Frame], bye: Option<ByeReason>, code: u16, why: &'static str) {
        let write = async {
            if !self.mid_message {
                for frame in before {
                    self.feed(frame).await?;
                }
                if let Some(reason) = bye {
                    self.feed(&Frame::new(&ServerMsg::Bye { reason })).await?;
                }
            }
            let close = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from_static(why) };
            self.sink.send(Message::Close(Some(close))).await
        };
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, write).await;
    }
}

/// Closes the socket: the WebSocket's buffers go at once; the connection then says it is done
/// sending and reads (and drops) what the client still sends until it closes too, for at most
/// [`LINGER`]. Closing a socket with unread bytes sends a reset, which can destroy the close
/// frame before the client reads it (a client still sending an oversized frame, say).
async fn close(w: Writer, stream: SplitStream<Socket>) {
    let Ok(socket) = stream.reunite(w.sink) else { return };
    let mut io = socket.into_inner();
    let linger = async {
        let _ = io.shutdown().await;
        let mut buf = [0u8; 4096];
        while io.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    };
    let _ = tokio::time::timeout(LINGER, linger).await;
}

/// Why [`Route::deliver_now`] did not deliver.
enum Undelivered {
    /// This node's hub's queue is full: here is the command back.
    Busy(Command),
    /// The hub is gone (the server is stopping).
    Gone,
}

/// Where a connection's session lives (see [`crate::cluster`]): one of this node's workers'
/// hubs, or another node reached through the relay, with the number of the last message sent
/// there.
struct Route {
    home: Option<String>,
    seq: u64,
    /// The worker whose hub holds the session (see [`crate::workers`]): its room's, once it
    /// joined one.
    worker: usize,
}

impl Route {
    /// The hub of the session's worker on this node.
    fn hub<'a>(&self, app: &'a AppState) -> &'a mpsc::Sender<Command> {
        app.workers.hub(self.worker)
    }

    /// Before a join of `room`: moves the session to the worker that owns the room, with its
    /// outbox (the page sees nothing of it). A session in a room (or waiting at one's door)
    /// stays: its worker refuses the join as for one worker.
    async fn follow_worker(&mut self, app: &AppState, room: &str, id: &PeerId, n: u64) {
        let Some(target) = app.workers.of_room(room, app.config.max_room_chars) else { return };
        if target == self.worker {
            return;
        }
        let (reply, answer) = oneshot::channel();
        if self.hub(app).send(Command::Export { id: id.clone(), conn: n, reply }).await.is_err() {
            return;
        }
        let Some(exported) = answer.await.ok().flatten() else { return };
        let adopt = Command::Adopt { handoff: exported.handoff, conn: n, outbox: exported.outbox, kick: exported.kick };
        // The target's queue is gone only as the server stops: the join then goes nowhere and
        // the connection ends as every other does.
        let _ = app.workers.hub(target).send(adopt).await;
        debug!(peer = %id, from = self.worker, to = target, "the session moved to its room's worker");
        self.worker = target;
    }

    /// Hands `cmd` to the session's home, waiting while this node's hub is busy.
    async fn deliver(&mut self, app: &AppState, n: u64, cmd: Command) -> Result<(), ()> {
        match self.deliver_now(app, n, cmd) {
            Ok(()) => Ok(()),
            Err(Undelivered::Busy(cmd)) => self.hub(app).send(cmd).await.map_err(|_| ()),
            Err(Undelivered::Gone) => Err(()),
        }
    }

    /// Hands `cmd` to the session's home without waiting: the common case, with no future to
    /// keep in the connection's task (whose size every idle connection pays). A busy hub hands
    /// the command back, to be waited for.
    // The command comes back by value, as `try_send` hands it back: no allocation on any path.
    #[allow(clippy::result_large_err)]
    fn deliver_now(&mut self, app: &AppState, n: u64, cmd: Command) -> Result<(), Undelivered> {
        let (Some(home), Some(cluster)) = (&self.home, &app.cluster) else {
            return self.hub(app).try_send(cmd).map_err(|e| match e {
                mpsc::error::TrySendError::Full(cmd) => Undelivered::Busy(cmd),
                mpsc::error::TrySendError::Closed(_) => Undelivered::Gone,
            });
        };
        let body = match cmd {
            Command::Client { msg, .. } => Relayed::Client { msg },
            Command::Ignored { .. } => Relayed::Ignored,
            Command::Reject { code, request, .. } => Relayed::Reject { code, request },
            Command::Disconnect { reason, resumable, .. } => Relayed::Gone { reason, resumable },
            // A connection sends nothing else.
            _ => return Ok(()),
        };
        self.seq += 1;
        cluster.publish(home, Envelope { from: cluster.node.clone(), conn: n, seq: self.seq, body });
        Ok(())
    }

    /// Before a join of `room`: moves the session to the node that owns the room (taking the
    /// room for this node if nobody owns it). `false`: the owner cannot be learned now.
    async fn follow_room(&mut self, app: &AppState, cluster: &Arc<Cluster>, room: &str, id: &PeerId, n: u64) -> bool {
        let Ok(owner) = cluster.home_for_room(room).await else { return false };
        let target = (owner != cluster.node).then_some(owner.clone());
        if target != self.home {
            // Out of its current home (which says no if the session is in a room there: the
            // join then goes there and is refused as `already_in_room`).
            let exported = match &self.home {
                None => {
                    let (reply, answer) = oneshot::channel();
                    if self.hub(app).send(Command::Export { id: id.clone(), conn: n, reply }).await.is_err() {
                        return true;
                    }
                    answer.await.ok().flatten().map(|x| (x.handoff, x.outbox, x.kick))
                }
                Some(_) => {
                    let (reply, answer) = oneshot::channel();
                    cluster.relay(RelayCmd::Export { conn: n, reply }).await;
                    tokio::time::timeout(ASK_TIMEOUT, answer).await.ok().and_then(Result::ok).flatten()
                }
            };
            let Some((handoff, outbox, kick)) = exported else { return true };
            match &target {
                None => {
                    let adopt = Command::Adopt { handoff, conn: n, outbox, kick };
                    if self.hub(app).send(adopt).await.is_err() {
                        return true;
                    }
                }
                Some(home) => {
                    let (ip, host) = (handoff.ip, handoff.host.clone());
                    let edge = RelayCmd::Edge { conn: n, home: home.clone(), outbox, kick, session: None };
                    cluster.relay(edge).await;
                    let open = Relayed::Open { handoff: Some(handoff), resume: None, ip, host };
                    cluster.publish(home, Envelope { from: cluster.node.clone(), conn: n, seq: 0, body: open });
                }
            }
            debug!(peer = %id, from = ?self.home, to = ?target, "the session moved to its room's node");
            self.home = target;
            self.seq = 0;
        }
        if let Some(room) = crate::validate::label(room, app.config.max_room_chars) {
            cluster.set_session_home(id, &owner, &room).await;
        }
        true
    }
}

/// Why a connection did not get a session.
enum Unbegun {
    /// Its session's room is moving between nodes: the page tries again.
    TryAgain,
    /// The hub refused it (the server is shutting down).
    Refused,
    /// The hub is gone.
    HubGone,
}

/// Finds or makes the session a new connection speaks for: resumed on the worker or node that
/// holds it, or new on this connection's worker. `route` ends where the session lives.
#[allow(clippy::too_many_arguments)]
async fn begin(
    app: &AppState,
    n: u64,
    host: Option<String>,
    ip: IpAddr,
    resume: Option<Box<Resume>>,
    outbox: Outbox,
    kick_tx: oneshot::Sender<ByeReason>,
    route: &mut Route,
) -> Result<PeerId, Unbegun> {
    let resume = resume.map(|r| *r);
    // A session to resume that lives on another worker is resumed there.
    if let (Some(resume), true) = (&resume, app.workers.len() > 1) {
        if let Some(worker) = app.workers.holding(&resume.id).await {
            route.worker = worker;
        }
    }
    // A session to resume that lives on another node (of several) is resumed there.
    let start = match (&app.cluster, resume) {
        (Some(cluster), Some(resume)) => match resume_home(cluster, &resume).await {
            ResumeAt::Here => Start::Here(outbox, kick_tx, Some(resume)),
            ResumeAt::There(home) => {
                match Box::pin(resume_remote(cluster, n, home, outbox, kick_tx, resume, ip, host.clone(), route)).await
                {
                    Some(id) => Start::There(id),
                    None => Start::TryAgain,
                }
            }
            ResumeAt::NotYet => Start::TryAgain,
        },
        (_, resume) => Start::Here(outbox, kick_tx, resume),
    };
    match start {
        Start::There(id) => Ok(id),
        Start::TryAgain => Err(Unbegun::TryAgain),
        Start::Here(outbox, kick, resume) => {
            let (session_tx, session_rx) = oneshot::channel();
            let id = app.cluster.as_ref().map_or_else(|| PeerId(format!("p{n}")), |c| c.peer_id(n));
            let connect = Connect { conn: n, id, outbox, kick, host, ip, resume, session: session_tx };
            if route.hub(app).send(Command::Connect(connect)).await.is_err() {
                return Err(Unbegun::HubGone);
            }
            // The hub answers with the session this connection speaks for (a resumed one, or its
            // own); no answer means it refused the connection (shutting down).
            session_rx.await.map_err(|_| Unbegun::Refused)
        }
    }
}

/// How a connection starts: a session of this node's hub (new, or resumed here), a session
/// resumed on another node, or not yet.
enum Start {
    Here(Outbox, oneshot::Sender<ByeReason>, Option<Resume>),
    There(PeerId),
    TryAgain,
}

/// Where a session asked to be resumed lives.
enum ResumeAt {
    /// On this node (or nowhere known: this node's hub says whether it can be resumed).
    Here,
    There(String),
    /// Its node is gone, and its room not yet taken over by another.
    NotYet,
}

async fn resume_home(cluster: &Arc<Cluster>, resume: &Resume) -> ResumeAt {
    let Some((node, room)) = cluster.session_home(&resume.id).await else { return ResumeAt::Here };
    // The room may have moved since the session joined it (its node stopped, or stood down
    // after a stall): the session is where the room is now.
    let node = match cluster.owner_of(&room).await {
        Some(owner) if owner != node && cluster.is_live(&owner).await => owner,
        _ => node,
    };
    if node == cluster.node {
        return ResumeAt::Here;
    }
    if cluster.is_live(&node).await {
        return ResumeAt::There(node);
    }
    // Its home is gone: whoever owns the room now resumes it — this node, if it takes the room
    // over now (from the state its owner saved).
    match cluster.home_for_room(&room).await {
        Ok(owner) if owner == cluster.node => ResumeAt::Here,
        Ok(owner) if owner != node && cluster.is_live(&owner).await => ResumeAt::There(owner),
        _ => ResumeAt::NotYet,
    }
}

/// How long a node waits for another to answer a resume before the page is told to try again.
const RESUME_ANSWER: Duration = Duration::from_secs(2);

/// Resumes `resume` on `home`, another node: the session this connection speaks for from now
/// on, or `None` when that node does not answer (it may have just died: the page tries again,
/// and by then the room will have been taken over or the node be known as gone).
#[allow(clippy::too_many_arguments)]
async fn resume_remote(
    cluster: &Arc<Cluster>,
    n: u64,
    home: String,
    outbox: Outbox,
    kick: oneshot::Sender<ByeReason>,
    resume: Resume,
    ip: IpAddr,
    host: Option<String>,
    route: &mut Route,
) -> Option<PeerId> {
    let (session, answer) = oneshot::channel();
    cluster.relay(RelayCmd::Edge { conn: n, home: home.clone(), outbox, kick, session: Some(session) }).await;
    let wire = WireResume { id: resume.id.clone(), secret: resume.secret.clone(), seen: resume.seen };
    let open = Relayed::Open { handoff: None, resume: Some(wire), ip, host };
    cluster.publish(&home, Envelope { from: cluster.node.clone(), conn: n, seq: 0, body: open });
    if let Ok(Ok(id)) = tokio::time::timeout(RESUME_ANSWER, answer).await {
        route.home = Some(home);
        return Some(id);
    }
    info!(node = %home, "the node of the session to resume does not answer; the page tries again");
    cluster.relay(RelayCmd::EdgeGone { conn: n }).await;
    None
}

fn reject(id: &PeerId, code: ErrorCode, request: Option<String>) -> Command {
    info!(%code, request = request.as_deref().unwrap_or("-"), "refused a message");
    Command::Reject { id: id.clone(), code, request }
}

/// Tells apart why a frame did not parse as a [`ClientMsg`].
pub fn classify(text: &str) -> (ErrorCode, Option<String>) {
    match serde_json::from_str::<serde_json::Value>(text) {
        Err(_) => (ErrorCode::BadJson, None),
        Ok(serde_json::Value::Object(fields)) => match fields.get("type").and_then(|t| t.as_str()) {
            Some(t) if ClientMsg::TYPES.contains(&t) => (ErrorCode::BadMessage, Some(t.to_string())),
            _ => (ErrorCode::UnknownType, None),
        },
        Ok(_) => (ErrorCode::BadMessage, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).expect("valid header"));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).expect("valid header"));
        }
        h
    }

    #[test]
    fn same_origin_allowed_cross_site_refused() {
        assert!(origin_allowed(&headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"), &[]));
        assert!(origin_allowed(&headers(None, "127.0.0.1:8080"), &[]));
        assert!(!origin_allowed(&headers(Some("https://evil.example"), "127.0.0.1:8080"), &[]));
        assert!(!origin_allowed(&headers(Some("http://127.0.0.1:9999"), "127.0.0.1:8080"), &[]));
        assert!(origin_allowed(
            &headers(Some("https://meet.example.org"), "10.0.0.2:8080"),
            &["https://meet.example.org".into()]
        ));
    }

    #[test]
    fn classify_tells_errors_apart() {
        assert_eq!(classify("{nope").0, ErrorCode::BadJson);
        assert_eq!(classify(r#"{"type":"dance"}"#).0, ErrorCode::UnknownType);
        assert_eq!(classify(r#"{"x":1}"#).0, ErrorCode::UnknownType);
        assert_eq!(classify(r#"{"type":"chat"}"#), (ErrorCode::BadMessage, Some("chat".into())));
        assert_eq!(classify("[1,2]").0, ErrorCode::BadMessage);
    }
}
