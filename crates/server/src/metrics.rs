//! `/metrics`: Prometheus text format 0.0.4.
//!
//! Who owns what: the connection tasks count WebSocket traffic and refusals in [`Counters`]
//! (relaxed atomics in `AppState`, no lock per message); the hub, the media task and the TURN
//! task keep their own counters and hand a copy over when asked (`Command::Stats`,
//! `MediaCommand::Stats`, `TurnCommand::Stats`), each with a [`STATS_TIMEOUT`]. A subsystem that
//! is not running (`--topology p2p`, `--turn false`) or does not answer in time is left out.
//! Nothing is labelled by room or participant (privacy and cardinality).

use crate::hub;
use crate::media::MediaStats;
use crate::turn::{TurnCommand, TurnStats};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use huddle_protocol::{ClientMsg, ErrorCode};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long one subsystem may take to answer.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(2);
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The codes a connection task refuses frames with (the rest come from the hub).
const EDGE_CODES: &[ErrorCode] = &[
    ErrorCode::BadJson,
    ErrorCode::BadMessage,
    ErrorCode::UnknownType,
    ErrorCode::BinaryFrame,
    ErrorCode::FrameTooLarge,
    ErrorCode::RateLimited,
];

/// What the connection tasks count (shared, relaxed atomics).
#[derive(Debug)]
pub struct Counters {
    /// Parsed client messages, by index in [`ClientMsg::TYPES`].
    messages_in: Box<[AtomicU64]>,
    /// Messages written to WebSockets.
    pub messages_out: AtomicU64,
    /// Frames refused before the hub, by index in [`ErrorCode::ALL`] (bad input, `rate_limited`).
    refused: Box<[AtomicU64]>,
    /// `rate_limited` answers left out (at most one a second per connection).
    pub replies_suppressed: AtomicU64,
    /// Connections closed with `bye` `flooding`.
    pub closed_flooding: AtomicU64,
    /// Connections refused at the server-wide cap, and at the per-IP cap.
    pub refused_server_cap: AtomicU64,
    pub refused_ip_cap: AtomicU64,
    /// WebSockets closed with `bye` `timed_out` (no first frame, or no heartbeat, in time).
    pub closed_timed_out: AtomicU64,
    /// WebSockets closed because a write to them did not finish in time.
    pub closed_write_timeout: AtomicU64,
    /// WebSockets closed for a frame over `max_frame_bytes`.
    pub closed_frame_too_large: AtomicU64,
    /// WebSockets closed for breaking the WebSocket protocol (invalid UTF-8 included).
    pub closed_protocol_error: AtomicU64,
    /// TCP connections closed at accept: over the server-wide cap, over the per-IP cap.
    pub tcp_refused_server: AtomicU64,
    pub tcp_refused_ip: AtomicU64,
    /// Connections closed because a stage of opening them took too long: telling ICE-TCP from
    /// HTTP, the TLS handshake, a request's headers (or keep-alive idle).
    pub timeouts_sniff: AtomicU64,
    pub timeouts_tls: AtomicU64,
    pub timeouts_headers: AtomicU64,
}

impl Default for Counters {
    fn default() -> Counters {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Counters {
            messages_in: zeros(ClientMsg::TYPES.len()),
            messages_out: AtomicU64::new(0),
            refused: zeros(ErrorCode::ALL.len()),
            replies_suppressed: AtomicU64::new(0),
            closed_flooding: AtomicU64::new(0),
            refused_server_cap: AtomicU64::new(0),
            refused_ip_cap: AtomicU64::new(0),
            closed_timed_out: AtomicU64::new(0),
            closed_write_timeout: AtomicU64::new(0),
            closed_frame_too_large: AtomicU64::new(0),
            closed_protocol_error: AtomicU64::new(0),
            tcp_refused_server: AtomicU64::new(0),
            tcp_refused_ip: AtomicU64::new(0),
            timeouts_sniff: AtomicU64::new(0),
            timeouts_tls: AtomicU64::new(0),
            timeouts_headers: AtomicU64::new(0),
        }
    }
}

impl Counters {
    pub fn message_in(&self, msg: &ClientMsg) {
        let name = msg.type_name();
        if let Some(c) = ClientMsg::TYPES.iter().position(|t| *t == name).and_then(|i| self.messages_in.get(i)) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn refused(&self, code: ErrorCode) {
        if let Some(c) = ErrorCode::ALL.iter().position(|c| *c == code).and_then(|i| self.refused.get(i)) {
            c.fetch_add(1, Relaxed);
        }
    }
}

/// The process's CPU time and resident memory, where the platform tells.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Process {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
}

impl Process {
    pub fn now() -> Process {
        Process { cpu_seconds: cpu_seconds(), resident_bytes: resident_bytes() }
    }
}

/// User plus system CPU time of the whole process (every thread), from `getrusage`.
#[cfg(unix)]
#[allow(unsafe_code)] // the one call below
fn cpu_seconds() -> Option<f64> {
    // SAFETY: `getrusage` only writes the `rusage` we pass, which is plain data of the right type.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (rc == 0).then(|| secs(usage.ru_utime) + secs(usage.ru_stime))
}

#[cfg(not(unix))]
fn cpu_seconds() -> Option<f64> {
    None
}

/// `VmRSS` of `/proc/self/status` (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

/// Everything one scrape reports; `None`: that part is not running or did not answer.
#[derive(Debug, Default)]
pub struct Snapshot<'a> {
    pub counters: Option<&'a Counters>,
    pub ws_connections: usize,
    /// Open TCP connections counted by the accept path.
    pub tcp_connections: usize,
    pub hub: Option<hub::Stats>,
    pub media: Option<MediaStats>,
    pub turn: Option<TurnStats>,
    /// Each worker's rooms, and the packets its SFU forwarded (`None`: no SFU).
    pub workers: Vec<(usize, Option<u64>)>,
    /// This node's part in a cluster (`--redis`).
    pub cluster: Option<&'a crate::cluster::ClusterStats>,
    pub process: Process,
}

/// Prometheus text: `# HELP` and `# TYPE` once per family, then its samples.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                // Label values here are our own identifiers, never user input: no escaping needed.
                let _ = write!(self.0, "{}{k}=\"{v}\"", if i > 0 { "," } else { "" });
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

pub fn render(s: &Snapshot) -> String {
    let mut t = Text(String::with_capacity(8192));
    t.one("huddle_ws_connections", "gauge", "WebSocket connections open (counted at the edge).", s.ws_connections);
    t.one(
        "huddle_tcp_connections",
        "gauge",
        "TCP connections open on the HTTP and ICE-TCP ports (counted from accept to close).",
        s.tcp_connections,
    );
    if let Some(h) = &s.hub {
        t.one("huddle_connections", "gauge", "Connections the hub knows.", h.connections);
        t.one("huddle_rooms", "gauge", "Rooms open.", h.rooms);
        t.one("huddle_participants", "gauge", "Participants in rooms.", h.participants);
        t.one(
            "huddle_hub_refused_messages_total",
            "counter",
            "Error answers for frames the connection tasks refused (bad input, rate_limited).",
            h.rejected,
        );
        t.one(
            "huddle_media_commands_dropped_total",
            "counter",
            "Commands for the SFU dropped because its queue was full.",
            h.media_commands_dropped,
        );
        t.one("huddle_waiting", "gauge", "People in waiting rooms.", h.waiting);
        t.one(
            "huddle_suspended_sessions",
            "gauge",
            "Sessions whose connection dropped, kept for a resume.",
            h.suspended,
        );
        t.one("huddle_resumed_total", "counter", "Sessions resumed on a new connection.", h.resumed);
        t.one(
            "huddle_resume_failed_total",
            "counter",
            "Resumes refused (unknown session, wrong secret, too much missed); the page starts over.",
            h.resume_failed,
        );
        t.one(
            "huddle_memory_releases_total",
            "counter",
            "Times the last session ended and the allocator's free memory went back to the system.",
            h.memory_releases,
        );
        t.one(
            "huddle_hub_panics_total",
            "counter",
            "Bugs that panicked in a worker's hub: its rooms were closed (ended, server_error) and it went on.",
            h.panics,
        );
    }
    if let Some(c) = s.counters {
        t.family("huddle_ws_messages_in_total", "counter", "Client messages received, by type.");
        for (name, n) in ClientMsg::TYPES.iter().zip(c.messages_in.iter()) {
            t.sample("huddle_ws_messages_in_total", &[("type", name)], n.load(Relaxed));
        }
        t.one("huddle_ws_messages_out_total", "counter", "Messages sent to clients.", c.messages_out.load(Relaxed));
        t.family(
            "huddle_ws_refused_messages_total",
            "counter",
            "Frames refused before reaching the hub, by error code (bad input, rate_limited).",
        );
        for (code, n) in ErrorCode::ALL.iter().zip(c.refused.iter()) {
            if EDGE_CODES.contains(code) {
                t.sample("huddle_ws_refused_messages_total", &[("reason", &code.to_string())], n.load(Relaxed));
            }
        }
        t.one(
            "huddle_ws_error_replies_suppressed_total",
            "counter",
            "rate_limited answers not sent (at most one a second per connection).",
            c.replies_suppressed.load(Relaxed),
        );
        t.family("huddle_ws_disconnects_total", "counter", "Connections the server closed, by reason.");
        t.sample("huddle_ws_disconnects_total", &[("reason", "flooding")], c.closed_flooding.load(Relaxed));
        if let Some(h) = &s.hub {
            t.sample("huddle_ws_disconnects_total", &[("reason", "too_slow")], h.evicted_too_slow);
        }
        for (reason, n) in [
            ("timed_out", &c.closed_timed_out),
            ("write_timed_out", &c.closed_write_timeout),
            ("frame_too_large", &c.closed_frame_too_large),
            ("protocol_error", &c.closed_protocol_error),
        ] {
            t.sample("huddle_ws_disconnects_total", &[("reason", reason)], n.load(Relaxed));
        }
        t.family("huddle_ws_connections_refused_total", "counter", "Connections refused at a cap.");
        t.sample("huddle_ws_connections_refused_total", &[("cap", "server")], c.refused_server_cap.load(Relaxed));
        t.sample("huddle_ws_connections_refused_total", &[("cap", "ip")], c.refused_ip_cap.load(Relaxed));
        t.family("huddle_tcp_connections_refused_total", "counter", "TCP connections closed at accept, by cap.");
        t.sample("huddle_tcp_connections_refused_total", &[("cap", "server")], c.tcp_refused_server.load(Relaxed));
        t.sample("huddle_tcp_connections_refused_total", &[("cap", "ip")], c.tcp_refused_ip.load(Relaxed));
        t.family(
            "huddle_tcp_timeouts_total",
            "counter",
            "Connections closed because a stage of opening them took too long, by stage.",
        );
        t.sample("huddle_tcp_timeouts_total", &[("stage", "sniff")], c.timeouts_sniff.load(Relaxed));
        t.sample("huddle_tcp_timeouts_total", &[("stage", "tls")], c.timeouts_tls.load(Relaxed));
        t.sample("huddle_tcp_timeouts_total", &[("stage", "headers")], c.timeouts_headers.load(Relaxed));
    }
    if !s.workers.is_empty() {
        t.family("huddle_worker_rooms", "gauge", "Rooms each worker holds (a room belongs to one worker).");
        for (i, (rooms, _)) in s.workers.iter().enumerate() {
            t.sample("huddle_worker_rooms", &[("worker", &i.to_string())], rooms);
        }
    }
    if s.workers.iter().any(|(_, f)| f.is_some()) {
        t.family(
            "huddle_worker_forwarded_packets_total",
            "counter",
            "RTP packets each worker's SFU forwarded (one per subscriber).",
        );
        for (i, (_, forwarded)) in s.workers.iter().enumerate() {
            if let Some(f) = forwarded {
                t.sample("huddle_worker_forwarded_packets_total", &[("worker", &i.to_string())], f);
            }
        }
    }
    if let Some(m) = &s.media {
        t.one("huddle_sfu_participants", "gauge", "Participants with a session on the SFU.", m.participants);
        t.one(
            "huddle_sfu_forwarded_packets_total",
            "counter",
            "RTP packets the SFU forwarded (one per subscriber).",
            m.forwarded_packets,
        );
        t.one(
            "huddle_sfu_forwarded_bytes_total",
            "counter",
            "RTP payload bytes the SFU forwarded (one per subscriber).",
            m.forwarded_bytes,
        );
        t.one("huddle_sfu_datagrams_in_total", "counter", "Datagrams the SFU received.", m.datagrams_in);
        t.one("huddle_sfu_datagrams_out_total", "counter", "Datagrams the SFU sent.", m.datagrams_out);
        t.family("huddle_sfu_dropped_total", "counter", "Packets the SFU dropped, by reason.");
        t.sample("huddle_sfu_dropped_total", &[("reason", "unclaimed")], m.datagrams_unclaimed);
        t.sample("huddle_sfu_dropped_total", &[("reason", "send_buffer_full")], m.send_dropped);
        t.sample("huddle_sfu_dropped_total", &[("reason", "ice_tcp")], m.tcp_dropped);
        t.sample("huddle_sfu_dropped_total", &[("reason", "hub_queue_full")], m.events_dropped);
        t.one("huddle_sfu_ice_tcp_connections", "gauge", "ICE-TCP connections open.", m.tcp_connections);
        t.one(
            "huddle_recording_frames_dropped_total",
            "counter",
            "Recorded frames dropped because a recording writer's queue was full (the track resumes at its next keyframe).",
            m.recorded_dropped,
        );
    }
    if let Some(tu) = &s.turn {
        let c = &tu.core;
        t.one("huddle_turn_allocations", "gauge", "TURN allocations open.", c.allocations);
        t.one("huddle_turn_allocations_total", "counter", "TURN allocations made.", c.allocations_total);
        t.one(
            "huddle_turn_allocations_revoked_total",
            "counter",
            "TURN allocations closed because their session left its room.",
            c.revoked,
        );
        t.family("huddle_turn_relayed_packets_total", "counter", "Packets relayed, by direction.");
        t.sample("huddle_turn_relayed_packets_total", &[("direction", "to_peer")], c.to_peer_packets);
        t.sample("huddle_turn_relayed_packets_total", &[("direction", "to_client")], c.to_client_packets);
        t.family("huddle_turn_relayed_bytes_total", "counter", "Payload bytes relayed, by direction.");
        t.sample("huddle_turn_relayed_bytes_total", &[("direction", "to_peer")], c.to_peer_bytes);
        t.sample("huddle_turn_relayed_bytes_total", &[("direction", "to_client")], c.to_client_bytes);
        t.family("huddle_turn_dropped_total", "counter", "Packets and messages TURN dropped, by reason.");
        t.sample("huddle_turn_dropped_total", &[("reason", "no_permission")], c.dropped_no_permission);
        t.sample("huddle_turn_dropped_total", &[("reason", "quota")], c.dropped_quota);
        t.sample("huddle_turn_dropped_total", &[("reason", "malformed")], c.malformed);
        t.sample("huddle_turn_dropped_total", &[("reason", "send_buffer_full")], tu.send_dropped);
        t.sample("huddle_turn_dropped_total", &[("reason", "stream_queue_full")], tu.stream_dropped);
        t.sample("huddle_turn_dropped_total", &[("reason", "turn_queue_full")], tu.events_dropped);
        t.family("huddle_turn_refused_total", "counter", "TURN requests refused, by reason.");
        t.sample("huddle_turn_refused_total", &[("reason", "auth")], c.auth_failures);
        t.sample("huddle_turn_refused_total", &[("reason", "quota")], c.quota_refusals);
        t.sample("huddle_turn_refused_total", &[("reason", "peer_denied")], c.peers_denied);
        t.one("huddle_turn_binding_requests_total", "counter", "STUN Binding requests answered.", c.binding_requests);
        t.one("huddle_turn_stream_clients", "gauge", "TURN clients on TCP or TLS.", tu.stream_clients);
    }
    if let Some(c) = s.cluster {
        t.one("huddle_rooms_owned", "gauge", "Rooms this node owns (holds the lease of).", c.rooms_owned.load(Relaxed));
        t.one(
            "huddle_cluster_nodes",
            "gauge",
            "Live nodes this node sees (itself included).",
            c.nodes_live.load(Relaxed),
        );
        t.family("huddle_cluster_relayed_total", "counter", "Messages relayed between nodes, by direction.");
        t.sample("huddle_cluster_relayed_total", &[("direction", "in")], c.relayed_in.load(Relaxed));
        t.sample("huddle_cluster_relayed_total", &[("direction", "out")], c.relayed_out.load(Relaxed));
        t.one(
            "huddle_cluster_relay_dropped_total",
            "counter",
            "Relayed messages not published (queue full or Redis error).",
            c.relay_dropped.load(Relaxed),
        );
        t.one(
            "huddle_cluster_relay_gaps_total",
            "counter",
            "Connections closed for a resume because relayed messages went missing.",
            c.relay_gaps.load(Relaxed),
        );
        t.family("huddle_cluster_leases_total", "counter", "Room leases taken, renewed and lost.");
        t.sample("huddle_cluster_leases_total", &[("event", "taken")], c.lease_takes.load(Relaxed));
        t.sample("huddle_cluster_leases_total", &[("event", "renewed")], c.lease_renewals.load(Relaxed));
        t.sample("huddle_cluster_leases_total", &[("event", "lost")], c.lease_losses.load(Relaxed));
        t.one("huddle_redis_errors_total", "counter", "Redis commands that failed.", c.redis_errors.load(Relaxed));
        t.one(
            "huddle_redis_rtt_seconds",
            "gauge",
            "The latest round trip of a relay publish to Redis, seconds.",
            c.redis_rtt_us.load(Relaxed) as f64 / 1e6,
        );
    }
    if let Some(cpu) = s.process.cpu_seconds {
        t.one("process_cpu_seconds_total", "counter", "User and system CPU time of the process, seconds.", cpu);
        if let Some(m) = s.media.filter(|m| m.forwarded_packets > 0) {
            t.one(
                "huddle_sfu_cpu_seconds_per_forwarded_packet",
                "gauge",
                "Process CPU seconds since start divided by packets forwarded since start (over an \
                 interval: rate(process_cpu_seconds_total[1m]) / rate(huddle_sfu_forwarded_packets_total[1m])).",
                cpu / m.forwarded_packets as f64,
            );
        }
    }
    if let Some(rss) = s.process.resident_bytes {
        t.one("process_resident_memory_bytes", "gauge", "Resident memory of the process, bytes.", rss);
    }
    t.0
}

/// Asks a task for its stats; `None` if it is gone or slow.
async fn ask<C, S>(to: &mpsc::Sender<C>, make: impl FnOnce(oneshot::Sender<S>) -> C) -> Option<S> {
    let (reply, answer) = oneshot::channel();
    tokio::time::timeout(STATS_TIMEOUT, async {
        to.send(make(reply)).await.ok()?;
        answer.await.ok()
    })
    .await
    .ok()
    .flatten()
}

/// `GET /metrics`.
pub async fn handler(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = &app.config.metrics_token {
        if !authorized(&headers, token) {
            let mut res = (StatusCode::UNAUTHORIZED, "A bearer token is required.\n").into_response();
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return res;
        }
    }
    let hubs = app.workers.stats();
    let media = app.workers.media_stats();
    let turn = async {
        let tx = app.turn.as_ref()?.upgrade()?;
        ask(&tx, |reply| TurnCommand::Stats { reply }).await
    };
    let (hubs, each_media, turn) = tokio::join!(hubs, media, turn);
    let media =
        each_media.iter().flatten().fold(None, |sum: Option<MediaStats>, m| Some(sum.unwrap_or_default().plus(m)));
    let (hub, each_hub) = match hubs {
        Some((total, each)) => (Some(total), each),
        None => (None, Vec::new()),
    };
    let workers =
        each_hub.iter().zip(each_media.iter()).map(|(h, m)| (h.rooms, m.map(|m| m.forwarded_packets))).collect();
    let body = render(&Snapshot {
        workers,
        counters: Some(&app.counters),
        ws_connections: app.admission.connections(),
        tcp_connections: app.tcp.open(),
        hub,
        media,
        turn,
        cluster: app.cluster.as_deref().map(|c| &c.stats),
        process: Process::now(),
    });
    ([(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], body).into_response()
}

/// `Authorization: Bearer <token>`, compared in constant time.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    let Some(given) = given.strip_prefix("Bearer ").map(str::trim) else { return false };
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_declared_once_and_samples_follow_it() {
        let counters = Counters::default();
        counters.message_in(&ClientMsg::Chat { text: "x".into() });
        counters.refused(ErrorCode::RateLimited);
        let snap = Snapshot {
            counters: Some(&counters),
            ws_connections: 3,
            tcp_connections: 5,
            hub: Some(hub::Stats { connections: 3, rooms: 1, participants: 2, ..Default::default() }),
            media: Some(MediaStats { forwarded_packets: 10, forwarded_bytes: 9000, ..Default::default() }),
            turn: Some(TurnStats::default()),
            workers: vec![(1, Some(10)), (0, Some(0))],
            cluster: Some(&crate::cluster::ClusterStats::default()),
            process: Process { cpu_seconds: Some(0.5), resident_bytes: Some(1 << 20) },
        };
        let text = render(&snap);
        let mut declared = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().expect("a name");
                assert!(declared.insert(name.to_string()), "{name} declared twice");
                current = name.to_string();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("a name");
                assert_eq!(name, current, "sample outside its family: {line}");
                let value = line.rsplit(' ').next().expect("a value");
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert!(text.contains("huddle_ws_messages_in_total{type=\"chat\"} 1\n"));
        assert!(text.contains("huddle_ws_refused_messages_total{reason=\"rate_limited\"} 1\n"));
        assert!(text.contains("huddle_participants 2\n"));
        assert!(text.contains("huddle_suspended_sessions 0\n"));
        assert!(text.contains("huddle_memory_releases_total 0\n"));
        assert!(text.contains("huddle_sfu_cpu_seconds_per_forwarded_packet 0.05\n"));
        assert!(text.contains("process_resident_memory_bytes 1048576\n"));
    }

    #[test]
    fn missing_subsystems_are_left_out() {
        let text = render(&Snapshot::default());
        assert!(!text.contains("huddle_sfu_") && !text.contains("huddle_turn_") && !text.contains("huddle_rooms"));
        assert!(text.contains("huddle_ws_connections 0\n"));
    }

    #[test]
    fn the_process_reports_cpu_and_memory_on_linux() {
        if cfg!(target_os = "linux") {
            let p = Process::now();
            assert!(p.cpu_seconds.is_some_and(|s| s > 0.0));
            assert!(p.resident_bytes.is_some_and(|b| b > 1 << 20));
        }
    }

    #[test]
    fn the_token_is_checked() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "0123456789abcdef"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer 0123456789abcdef"));
        assert!(authorized(&h, "0123456789abcdef"));
        assert!(!authorized(&h, "0123456789abcdeF"));
        assert!(!authorized(&h, "0123456789abcdef0"));
    }
}
