//! One WebSocket connection: one task that parses and validates incoming frames, applies the rate
//! limits ([`crate::limits`]) and hands them to the hub, drains the connection's bounded outbox
//! into the socket, and keeps the heartbeat. It owns no room state.

use crate::client_ip::{client_ip, PeerAddr};
use crate::hub::{Command, Connect, Resume};
use crate::limits::{class_of, Class, ConnLimiter, Refused, Verdict};
use crate::AppState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use huddle_protocol::{ByeReason, ClientMsg, ErrorCode, LeaveReason, PeerId, ServerMsg};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

/// Frames above this close the connection (1009). Frames between `max_frame_bytes` and this are
/// answered with `frame_too_large` and the connection stays.
pub const HARD_MAX_FRAME_BYTES: usize = 1024 * 1024;
/// The close code a page sends when it drops a connection to resume on a new one.
pub const RECONNECTING: u16 = 4000;
/// Messages written before flushing the socket once.
const WRITE_BATCH: usize = 64;
/// How often a connection checks its heartbeat: a silent connection is dropped at most this long
/// after `idle_timeout`.
const HEARTBEAT_CHECK: Duration = Duration::from_secs(5);

/// Close code for `bye` `flooding` (policy violation).
const CLOSE_POLICY: u16 = 1008;
/// Close code for `bye` `too_many_connections` ("try again later").
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(app): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if !origin_allowed(&headers, &app.config.allowed_origins) {
        info!("refused a cross-origin WebSocket");
        return (StatusCode::FORBIDDEN, "This server does not accept WebSocket connections from that site.")
            .into_response();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).and_then(crate::turn::host_of);
    let ip = client_ip(peer.ip(), &headers, &app.config.trusted_proxies);
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(2 * HARD_MAX_FRAME_BYTES)
        .max_message_size(HARD_MAX_FRAME_BYTES)
        .max_frame_size(HARD_MAX_FRAME_BYTES)
        .on_upgrade(move |socket| {
            let n = app.next_id.fetch_add(1, Ordering::Relaxed);
            let resume = query.as_deref().and_then(parse_resume);
            let span = info_span!("conn", n);
            connection(socket, app, n, host, ip, resume).instrument(span)
        })
}
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

/// One task per connection: a single loop over the socket, the outbox, the kick signal and the
/// heartbeat tick (no split socket, no second task).
async fn connection(
    mut socket: WebSocket,
    app: AppState,
    n: u64,
    host: Option<String>,
    ip: IpAddr,
    resume: Option<Resume>,
) {
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
            let error = ServerMsg::error(ErrorCode::TooManyConnections, None);
            let bye = ServerMsg::Bye { reason: ByeReason::TooManyConnections };
            say_goodbye(&mut socket, &[error, bye], CLOSE_TRY_AGAIN_LATER, "too many connections").await;
            return;
        }
    };
    let (outbox, mut outbox_rx) = mpsc::channel(app.config.outbox_capacity);
    let (kick_tx, mut kick_rx) = oneshot::channel();
    let (session_tx, session_rx) = oneshot::channel();
    let connect =
        Connect { conn: n, id: PeerId(format!("p{n}")), outbox, kick: kick_tx, host, ip, resume, session: session_tx };
    if app.hub.send(Command::Connect(connect)).await.is_err() {
        return;
    }
    // The hub answers with the session this connection speaks for (a resumed one, or its own);
    // no answer means it refused the connection (shutting down).
    let Ok(id) = session_rx.await else {
        let close = CloseFrame { code: 1001, reason: Utf8Bytes::from_static("server shutting down") };
        let _ = socket.send(Message::Close(Some(close))).await;
        return;
    };
    debug!(peer = %id, %ip, "connected");
    let mut limiter = ConnLimiter::new(app.config.message_rates(), std::time::Instant::now());
    let cfg = &app.config;
    let max_frame = cfg.max_frame_bytes as usize;
    // Liveness is a timestamp checked on a coarse tick, not a timer re-armed for every frame.
    let check_every = HEARTBEAT_CHECK.min(cfg.ping_interval);
    let mut tick = tokio::time::interval_at(Instant::now() + check_every, check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    let mut last_ping = Instant::now();
    // Whether the session may be resumed after this connection ends.
    let mut resumable = true;
    let reason = loop {
        tokio::select! {
            kicked = &mut kick_rx => {
                // The hub has already taken us out of our room; just drop the socket.
                info!(bye = ?kicked.unwrap_or(ByeReason::ServerShutdown), "disconnected by the server");
                return;
            }
            msg = outbox_rx.recv() => {
                let Some(msg) = msg else {
                    // The hub closed our outbox after queueing `bye`: the server is shutting down.
                    let close = CloseFrame { code: 1001, reason: Utf8Bytes::from_static("server shutting down") };
                    let _ = socket.send(Message::Close(Some(close))).await;
                    break LeaveReason::Left;
                };
                match write_batch(&mut socket, &msg, &mut outbox_rx).await {
                    Ok(n) => {
                        app.counters.messages_out.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(_) => break LeaveReason::Disconnected,
                }
            }
            frame = socket.recv() => {
                last_seen = Instant::now();
                let parsed = match frame {
                    None => break LeaveReason::Left,
                    Some(Err(e)) => {
                        debug!(error = %e, "WebSocket read failed");
                        // A broken network may be resumed from; a broken protocol (a frame over
                        // the hard limit, bad framing) ends the session now.
                        resumable = is_io_error(&e);
                        break LeaveReason::Disconnected;
                    }
                    // The page closes with RECONNECTING when it starts over on a new connection
                    // (a network change): keep its place as for a lost connection.
                    Some(Ok(Message::Close(Some(frame)))) if frame.code == RECONNECTING => break LeaveReason::Disconnected,
                    Some(Ok(Message::Close(_))) => break LeaveReason::Left,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Binary(_))) => Err((ErrorCode::BinaryFrame, None)),
                    Some(Ok(Message::Text(text))) if text.len() > max_frame => Err((ErrorCode::FrameTooLarge, None)),
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
                let cmd = match verdict {
                    Verdict::Pass => match parsed {
                        Ok(msg) => Command::Client { id: id.clone(), msg },
                        Err((code, request)) => {
                            app.counters.refused(code);
                            reject(&id, code, request)
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
                        app.counters.closed_flooding.fetch_add(1, Ordering::Relaxed);
                        info!("closing a connection that keeps flooding");
                        let bye = ServerMsg::Bye { reason: ByeReason::Flooding };
                        say_goodbye(&mut socket, &[bye], CLOSE_POLICY, "flooding").await;
                        resumable = false;
                        break LeaveReason::Disconnected;
                    }
                };
                // If the hub is busy this waits, which pauses reading from this socket only.
                if app.hub.send(cmd).await.is_err() {
                    break LeaveReason::Disconnected;
                }
            }
            _ = tick.tick() => {
                if last_seen.elapsed() >= cfg.idle_timeout {
                    info!("no heartbeat; dropping the connection");
                    break LeaveReason::Disconnected;
                }
                if last_ping.elapsed() >= cfg.ping_interval {
                    last_ping = Instant::now();
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        break LeaveReason::Disconnected;
                    }
                }
            }
        }
    };
    let _ = app.hub.send(Command::Disconnect { id, conn: n, reason, resumable }).await;
    debug!(?reason, "closed");
}

/// Whether a WebSocket error came from the network — a reset, a timeout, or a TCP close without
/// a WebSocket close (a device dropping its connections on a network change) — as opposed to the
/// peer breaking the protocol. (tungstenite's error types are not ours to name, hence the text;
/// `tests/enforcement.rs` pins it.)
fn is_io_error(e: &axum::Error) -> bool {
    if e.to_string().contains("without closing handshake") {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if err.is::<std::io::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Sends `first` and whatever else is already queued (up to [`WRITE_BATCH`]) with one flush;
/// how many it sent.
async fn write_batch(
    socket: &mut WebSocket,
    first: &ServerMsg,
    outbox: &mut mpsc::Receiver<Arc<ServerMsg>>,
) -> Result<u64, axum::Error> {
    feed(socket, first).await?;
    let mut sent = 1;
    for _ in 1..WRITE_BATCH {
        let Ok(msg) = outbox.try_recv() else { break };
        feed(socket, &msg).await?;
        sent += 1;
    }
    socket.flush().await?;
    Ok(sent)
}

/// Writes `msgs` and a close frame straight to the socket (bounded in time: the client may not
/// be reading), for a connection the server ends by itself.
async fn say_goodbye(socket: &mut WebSocket, msgs: &[ServerMsg], code: u16, reason: &'static str) {
    let write = async {
        for msg in msgs {
            feed(socket, msg).await?;
        }
        let close = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
        socket.send(Message::Close(Some(close))).await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
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

async fn feed(socket: &mut WebSocket, msg: &ServerMsg) -> Result<(), axum::Error> {
    match serde_json::to_string(msg) {
        Ok(text) => socket.feed(Message::Text(text.into())).await,
        Err(e) => {
            // Our own types always serialise; this would be a bug, not bad input.
            warn!(error = %e, "could not serialise a message");
            Ok(())
        }
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
