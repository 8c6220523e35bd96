//! One WebSocket connection: a reader that parses and validates frames and hands them to the
//! hub, and a writer that drains the connection's bounded outbox and pings. Neither owns any
//! room state.

use crate::hub::{Command, Outbox};
use crate::AppState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use huddle_protocol::{ByeReason, ClientMsg, ErrorCode, LeaveReason, PeerId, ServerMsg};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, info_span, warn, Instrument};

/// Frames above this close the connection (1009). Frames between `max_frame_bytes` and this are
/// answered with `frame_too_large` and the connection stays.
pub const HARD_MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Messages the writer sends before flushing the socket once.
const WRITE_BATCH: usize = 64;

pub async fn upgrade(ws: WebSocketUpgrade, State(app): State<AppState>, headers: HeaderMap) -> Response {
    if !origin_allowed(&headers, &app.config.allowed_origins) {
        info!("refused a cross-origin WebSocket");
        return (StatusCode::FORBIDDEN, "This server does not accept WebSocket connections from that site.").into_response();
    }
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(2 * HARD_MAX_FRAME_BYTES)
        .max_message_size(HARD_MAX_FRAME_BYTES)
        .max_frame_size(HARD_MAX_FRAME_BYTES)
        .on_upgrade(move |socket| {
            let n = app.next_id.fetch_add(1, Ordering::Relaxed);
            let id = PeerId(format!("p{n}"));
            let span = info_span!("conn", peer = %id);
            connection(socket, app, id).instrument(span)
        })
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
    origin
        .split_once("://")
        .is_some_and(|(scheme, authority)| (scheme == "http" || scheme == "https") && authority.eq_ignore_ascii_case(host))
}

async fn connection(socket: WebSocket, app: AppState, id: PeerId) {
    let (outbox, outbox_rx) = mpsc::channel(app.config.outbox_capacity);
    let (kick_tx, kick_rx) = oneshot::channel();
    if app.hub.send(Command::Connect { id: id.clone(), outbox: outbox.clone(), kick: kick_tx }).await.is_err() {
        return;
    }
    drop::<Outbox>(outbox);
    debug!("connected");
    let (sink, stream) = socket.split();
    let mut writer = tokio::spawn(write_loop(sink, outbox_rx, app.config.ping_interval).in_current_span());
    let reason = tokio::select! {
        reason = read_loop(stream, &app, &id) => reason,
        kicked = kick_rx => {
            // The hub has already taken us out of our room.
            let bye = kicked.unwrap_or(ByeReason::ServerShutdown);
            info!(?bye, "disconnected by the server");
            writer.abort();
            return;
        }
        _ = &mut writer => LeaveReason::Disconnected,
    };
    let _ = app.hub.send(Command::Disconnect { id, reason }).await;
    // The hub has dropped our outbox: the writer flushes what is queued and ends; do not wait
    // long for a peer that does not read.
    if tokio::time::timeout(Duration::from_secs(2), &mut writer).await.is_err() {
        writer.abort();
    }
    debug!(?reason, "closed");
}

async fn read_loop(mut stream: SplitStream<WebSocket>, app: &AppState, id: &PeerId) -> LeaveReason {
    let max = app.config.max_frame_bytes as usize;
    loop {
        let frame = match tokio::time::timeout(app.config.idle_timeout, stream.next()).await {
            Err(_) => {
                info!("no heartbeat; dropping the connection");
                return LeaveReason::Disconnected;
            }
            Ok(None) => return LeaveReason::Left,
            Ok(Some(Err(e))) => {
                debug!(error = %e, "WebSocket read failed");
                return LeaveReason::Disconnected;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let cmd = match frame {
            Message::Text(text) if text.len() > max => reject(id, ErrorCode::FrameTooLarge, None),
            Message::Text(text) => match serde_json::from_str::<ClientMsg>(&text) {
                Ok(msg) => Command::Client { id: id.clone(), msg },
                Err(_) => {
                    let (code, request) = classify(&text);
                    reject(id, code, request)
                }
            },
            Message::Binary(_) => reject(id, ErrorCode::BinaryFrame, None),
            Message::Close(_) => return LeaveReason::Left,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if app.hub.send(cmd).await.is_err() {
            return LeaveReason::Disconnected;
        }
    }
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

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut outbox: mpsc::Receiver<Arc<ServerMsg>>,
    ping_every: Duration,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = outbox.recv() => {
                let Some(msg) = msg else { break };
                if feed(&mut sink, &msg).await.is_err() {
                    return;
                }
                // Batch whatever else is already queued into one flush.
                let mut n = 1;
                while n < WRITE_BATCH {
                    let Ok(msg) = outbox.try_recv() else { break };
                    if feed(&mut sink, &msg).await.is_err() {
                        return;
                    }
                    n += 1;
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
    // The hub closed our outbox: the server is shutting down (or we were removed).
    let _ = sink.send(Message::Close(Some(CloseFrame { code: 1001, reason: Utf8Bytes::from_static("goodbye") }))).await;
}

async fn feed(sink: &mut SplitSink<WebSocket, Message>, msg: &ServerMsg) -> Result<(), axum::Error> {
    match serde_json::to_string(msg) {
        Ok(text) => sink.feed(Message::Text(text.into())).await,
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
        assert!(origin_allowed(&headers(Some("https://meet.example.org"), "10.0.0.2:8080"), &["https://meet.example.org".into()]));
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
