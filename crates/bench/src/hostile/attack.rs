//! The attackers. Each kind comes from its own client addresses, `127.0.K.2` … `127.0.K.(ips+1)`
//! for kind number K (so that one kind's use of a per-IP budget does not blunt another), and
//! every attacker runs until told to stop. Then it **abandons** its connections: it stops
//! sending and reading but keeps them open, as a client that vanished from the network would
//! (no FIN, no reset) — so whatever the server still holds afterwards, it holds because it did
//! not let go by itself. The orchestrator closes them at the very end.
//!
//! Everything is bounded: the number of connections of each kind ([`Mix`]), the rate of every
//! sender, every connect and handshake ([`wire::CONNECT_TIMEOUT`]), and each retry (an attacker
//! whose connection the server closed opens a new one after a pause).

use super::wire::{self, frame, header, OP_BINARY, OP_CONTINUATION, OP_PING, OP_TEXT};
use super::Stop;
use futures_util::{SinkExt, StreamExt};
use huddle_protocol::{ClientMsg, IceCandidate, PeerId, ServerMsg, SignalPayload, PROTOCOL_VERSION};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// The frame size above which the server closes the connection (`HARD_MAX_FRAME_BYTES`).
const HARD_MAX_FRAME: usize = 1024 * 1024;
/// The receive buffer non-readers and slow readers ask for (the kernel doubles it, and keeps a
/// floor of a few KiB).
const TINY_RCVBUF: u32 = 4096;
/// Pause before an attacker whose connection ended opens another.
const RETRY: Duration = Duration::from_secs(1);

/// The kinds of attack, with the third byte of their addresses.
pub const KINDS: [(&str, u8); 7] = [
    ("big_frames", 1),
    ("slowloris", 2),
    ("idle_upgrades", 3),
    ("floods", 4),
    ("malformed", 5),
    ("buffer_holders", 6),
    ("file_offers", 7),
];

/// The `i`-th client address of attack kind `kind` (see [`KINDS`]).
pub fn addr(kind: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, kind, 2 + i as u8)
}

/// How many attackers of each kind, per address, and how hard they push.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    pub ips: usize,
    pub nonreaders: usize,
    pub slow_readers: usize,
    /// Non-readers and slow readers started again after the server got rid of one, per slot.
    pub victim_respawns: usize,
    pub feed_rate: f64,
    pub loris: usize,
    pub loris_dribble: Duration,
    pub idle_upgrades: usize,
    pub flooders: usize,
    pub flood_rate: f64,
    pub malformed: usize,
    pub malformed_rate: f64,
    pub buffer_holders: usize,
    pub file_rooms: usize,
}

/// What every attacker shares.
pub struct Ctx {
    pub port: u16,
    pub mix: Mix,
    /// `limits.maxFrameBytes` and `limits.maxFileBytes` from the server's `welcome`.
    pub max_frame: usize,
    pub max_file: u64,
    pub stop: Stop,
    pub tally: Tally,
    /// Connections abandoned at the stop, closed by the orchestrator at the very end.
    parked: Mutex<Vec<Box<dyn Any + Send>>>,
}

impl Ctx {
    pub fn new(port: u16, mix: Mix, max_frame: usize, max_file: u64, stop: Stop) -> Ctx {
        Ctx { port, mix, max_frame, max_file, stop, tally: Tally::default(), parked: Mutex::new(Vec::new()) }
    }

    /// Keeps `conn` open, untouched, until [`Ctx::close_abandoned`].
    fn park<T: Send + 'static>(&self, conn: T) {
        self.parked.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(conn));
    }

    /// Closes every abandoned connection; how many there were.
    pub fn close_abandoned(&self) -> usize {
        let conns = std::mem::take(&mut *self.parked.lock().unwrap_or_else(|e| e.into_inner()));
        conns.len()
    }

    fn stopped(&self) -> bool {
        self.stop.is_set()
    }
}

/// Counters by attack kind and event.
#[derive(Default)]
pub struct Tally(Mutex<BTreeMap<&'static str, BTreeMap<String, u64>>>);

impl Tally {
    pub fn add(&self, kind: &'static str, event: &str, n: u64) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *g.entry(kind).or_default().entry(event.to_string()).or_default() += n;
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!(*self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Starts every attacker on the current runtime.
pub fn launch(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let m = ctx.mix;
    let mut tasks = Vec::new();
    let mut spawn = |f: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| tasks.push(tokio::spawn(f));
    for i in 0..m.ips {
        spawn(Box::pin(feeder(ctx.clone(), i)));
        for slot in 0..m.loris {
            spawn(Box::pin(slowloris(ctx.clone(), i, slot)));
        }
        for slot in 0..m.idle_upgrades {
            spawn(Box::pin(idle_upgrade(ctx.clone(), i, slot)));
        }
        for slot in 0..m.flooders {
            spawn(Box::pin(flooder(ctx.clone(), i, slot)));
        }
        for slot in 0..m.malformed {
            spawn(Box::pin(malformed(ctx.clone(), i, slot)));
        }
        for slot in 0..m.buffer_holders {
            spawn(Box::pin(buffer_holder(ctx.clone(), i, slot)));
        }
        for room in 0..m.file_rooms {
            // Three to a room: under `--topology auto` the third makes it an SFU room, where
            // files go through the server.
            for member in 0..3 {
                spawn(Box::pin(file_offerer(ctx.clone(), i, room, member)));
            }
        }
    }
    tasks
}

/// A tungstenite client configuration that takes what the server sends.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(4 << 20)).max_frame_size(Some(4 << 20))
}

fn join_text(room: &str, name: &str) -> String {
    let join = ClientMsg::Join {
        recording_ok: false,
        protocol: PROTOCOL_VERSION,
        room: room.into(),
        name: name.into(),
        audio: false,
        video: false,
        password: None,
        token: None,
    };
    serde_json::to_string(&join).expect("a join serialises")
}

/// Waits for `welcome` and joins `room`; false if that failed (counted).
async fn welcome_and_join(ws: &mut Ws, room: &str, name: &str, ctx: &Ctx, kind: &'static str) -> bool {
    let r = async {
        let until = Instant::now() + wire::CONNECT_TIMEOUT;
        let mut welcomed = false;
        ws.send(Message::text(join_text(room, name))).await?;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(until, ws.next()).await {
            let Message::Text(t) = frame else { continue };
            match serde_json::from_str::<ServerMsg>(&t) {
                Ok(ServerMsg::Welcome { .. }) => welcomed = true,
                Ok(ServerMsg::Joined { .. }) => return Ok(welcomed),
                Ok(ServerMsg::Error { code, .. }) => {
                    ctx.tally.add(kind, &format!("join_refused_{code}"), 1);
                    return Ok(false);
                }
                Ok(ServerMsg::Bye { reason }) => {
                    ctx.tally.add(kind, &format!("bye_{}", json_name(&reason)), 1);
                    return Ok(false);
                }
                _ => {}
            }
        }
        Ok::<_, anyhow::Error>(false)
    };
    matches!(r.await, Ok(true))
}

/// A serde enum value as its JSON string (`too_slow`).
fn json_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// Counts what a server message says about the attack (errors, byes, evictions).
/// What an attacker's WebSocket read.
enum Reply {
    /// The connection ended (or broke).
    Closed,
    /// A server message, already tallied ([`note_reply`]).
    Msg(Box<ServerMsg>),
    /// Anything else: a control frame, a binary frame, text that is not a server message.
    Other,
}

fn reply<E>(ctx: &Ctx, kind: &'static str, frame: Option<Result<Message, E>>) -> Reply {
    let Some(Ok(frame)) = frame else { return Reply::Closed };
    let Message::Text(t) = frame else { return Reply::Other };
    let Ok(msg) = serde_json::from_str::<ServerMsg>(&t) else { return Reply::Other };
    note_reply(ctx, kind, &msg);
    Reply::Msg(Box::new(msg))
}

fn note_reply(ctx: &Ctx, kind: &'static str, msg: &ServerMsg) {
    match msg {
        ServerMsg::Error { code, .. } => ctx.tally.add(kind, &format!("error_{code}"), 1),
        ServerMsg::Bye { reason } => ctx.tally.add(kind, &format!("bye_{}", json_name(reason)), 1),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Non-readers and slow readers, fed large `signal` frames.

/// One room per address: a feeder that sends the largest `signal` frames the server takes to
/// the other members, in turn, at `feed_rate` a second (within the signalling budget); the
/// others are non-readers (never read after the upgrade) and slow readers (1 KiB every 100 ms),
/// all with tiny receive buffers. When the server evicts one (`peer_left`), another takes its
/// place, `victim_respawns` times per slot.
async fn feeder(ctx: Arc<Ctx>, i: usize) {
    const KIND: &str = "big_frames";
    let m = ctx.mix;
    if m.nonreaders + m.slow_readers == 0 {
        return;
    }
    let ip = addr(KINDS[0].1, i);
    let room = format!("hostile-big-{i}");
    for _ in 0..m.nonreaders {
        tokio::spawn(victim(ctx.clone(), ip, room.clone(), false));
    }
    for _ in 0..m.slow_readers {
        tokio::spawn(victim(ctx.clone(), ip, room.clone(), true));
    }
    let mut respawns = [m.nonreaders * m.victim_respawns, m.slow_readers * m.victim_respawns];
    // The candidate that makes the largest frame the server accepts.
    let big = "a".repeat(ctx.max_frame.saturating_sub(300).max(1));
    let mut frames: HashMap<String, Utf8Bytes> = HashMap::new();
    while !ctx.stopped() {
        let Ok(mut ws) = wire::ws_from(ip, ctx.port, ws_config()).await else {
            ctx.tally.add(KIND, "feeder_connect_failed", 1);
            sleep(RETRY).await;
            continue;
        };
        ctx.tally.add(KIND, "feeder_connected", 1);
        ws.send(Message::text(join_text(&room, "feeder"))).await.ok();
        // Victims by id: slow or not.
        let mut victims: Vec<(String, bool)> = Vec::new();
        let mut next = 0usize;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / m.feed_rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = ctx.stop.clone();
        loop {
            tokio::select! {
                _ = stop.wait() => {
                    ctx.park(ws);
                    return;
                }
                frame = ws.next() => {
                    let msg = match reply(&ctx, KIND, frame) {
                        Reply::Closed => {
                            ctx.tally.add(KIND, "feeder_closed_by_server", 1);
                            break;
                        }
                        Reply::Other => continue,
                        Reply::Msg(msg) => *msg,
                    };
                    match msg {
                        ServerMsg::Joined { peers, .. } => {
                            victims = peers.into_iter().map(|p| (p.id.0, p.name == "slow")).collect();
                        }
                        ServerMsg::PeerJoined { peer } => victims.push((peer.id.0, peer.name == "slow")),
                        ServerMsg::PeerLeft { id, reason } => {
                            let Some(at) = victims.iter().position(|(v, _)| *v == id.0) else { continue };
                            let (_, slow) = victims.remove(at);
                            frames.remove(&id.0);
                            ctx.tally.add(KIND, &format!("victim_left_{}", json_name(&reason)), 1);
                            if respawns[slow as usize] > 0 {
                                respawns[slow as usize] -= 1;
                                tokio::spawn(victim(ctx.clone(), ip, room.clone(), slow));
                            }
                        }
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    if victims.is_empty() {
                        continue;
                    }
                    next = (next + 1) % victims.len();
                    let to = victims[next].0.clone();
                    let text = frames.entry(to.clone()).or_insert_with(|| big_signal(&to, &big)).clone();
                    let len = text.len() as u64;
                    if ws.send(Message::Text(text)).await.is_err() {
                        ctx.tally.add(KIND, "feeder_closed_by_server", 1);
                        break;
                    }
                    ctx.tally.add(KIND, "big_frames_sent", 1);
                    ctx.tally.add(KIND, "big_bytes_sent", len);
                }
            }
        }
        sleep(RETRY).await;
    }
}

fn big_signal(to: &str, candidate: &str) -> Utf8Bytes {
    let msg = ClientMsg::Signal {
        to: PeerId(to.to_string()),
        payload: SignalPayload::Candidate {
            candidate: Some(IceCandidate {
                candidate: candidate.to_string(),
                sdp_mid: None,
                sdp_m_line_index: None,
                username_fragment: None,
            }),
        },
    };
    Utf8Bytes::from(serde_json::to_string(&msg).expect("a signal serialises"))
}

/// A non-reader (joins, then never reads) or a slow reader (reads 1 KiB every 100 ms), with a
/// tiny receive buffer; joins as `nr` or `slow` so the feeder tells them apart.
async fn victim(ctx: Arc<Ctx>, ip: Ipv4Addr, room: String, slow: bool) {
    const KIND: &str = "big_frames";
    let opened = async {
        let mut tcp = wire::connect_from(ip, ctx.port, Some(TINY_RCVBUF)).await?;
        wire::raw_upgrade(&mut tcp, ctx.port).await?;
        tcp.write_all(&frame(OP_TEXT, true, join_text(&room, if slow { "slow" } else { "nr" }).as_bytes())).await?;
        Ok::<_, anyhow::Error>(tcp)
    };
    let mut tcp = match opened.await {
        Ok(tcp) => tcp,
        Err(_) => {
            ctx.tally.add(KIND, "victim_connect_failed", 1);
            return;
        }
    };
    ctx.tally.add(KIND, if slow { "slow_readers" } else { "nonreaders" }, 1);
    if !slow {
        ctx.park(tcp);
        return;
    }
    let mut buf = [0u8; 1024];
    let mut stop = ctx.stop.clone();
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            _ = sleep(Duration::from_millis(100)) => {}
        }
        match timeout(Duration::from_millis(50), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                ctx.tally.add(KIND, "slow_reader_closed_by_server", 1);
                return;
            }
            Ok(Ok(n)) => ctx.tally.add(KIND, "slow_reader_bytes_read", n as u64),
            Err(_) => {}
        }
    }
    ctx.park(tcp);
}

// ---------------------------------------------------------------------------------------------
// Slowloris.

/// A request that never ends: the request line and a header name, then one more byte of the
/// header's value every `loris_dribble`. Opens another when the server closes it.
async fn slowloris(ctx: Arc<Ctx>, i: usize, slot: usize) {
    const KIND: &str = "slowloris";
    let ip = addr(KINDS[1].1, i);
    // Not all in the same millisecond.
    sleep(Duration::from_millis(slot as u64 * 3)).await;
    let mut stop = ctx.stop.clone();
    while !ctx.stopped() {
        let mut tcp = match wire::connect_from(ip, ctx.port, None).await {
            Ok(tcp) => tcp,
            Err(_) => {
                ctx.tally.add(KIND, "connect_failed", 1);
                sleep(RETRY).await;
                continue;
            }
        };
        ctx.tally.add(KIND, "opened", 1);
        let opened = Instant::now();
        if tcp.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.is_err() {
            ctx.tally.add(KIND, "closed_by_server", 1);
            sleep(RETRY).await;
            continue;
        }
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                _ = stop.wait() => {
                    ctx.park(tcp);
                    return;
                }
                _ = sleep(ctx.mix.loris_dribble) => {
                    if tcp.write_all(b"a").await.is_err() {
                        ctx.tally.add(KIND, "closed_by_server", 1);
                        break;
                    }
                }
                n = tcp.read(&mut buf) => match n {
                    Ok(n) if n > 0 => ctx.tally.add(KIND, "answered", 1),
                    _ => {
                        ctx.tally.add(KIND, "closed_by_server", 1);
                        ctx.tally.add(KIND, "held_ms_total", opened.elapsed().as_millis() as u64);
                        break;
                    }
                }
            }
        }
        sleep(RETRY).await;
    }
}

/// A WebSocket upgrade that never sends a first message (nor a pong: what arrives is read and
/// dropped, only to notice the close). Opens another when the server closes it.
async fn idle_upgrade(ctx: Arc<Ctx>, i: usize, slot: usize) {
    const KIND: &str = "idle_upgrades";
    let ip = addr(KINDS[2].1, i);
    sleep(Duration::from_millis(slot as u64 * 5)).await;
    let mut stop = ctx.stop.clone();
    while !ctx.stopped() {
        let opened = async {
            let mut tcp = wire::connect_from(ip, ctx.port, None).await?;
            wire::raw_upgrade(&mut tcp, ctx.port).await?;
            Ok::<_, anyhow::Error>(tcp)
        };
        let mut tcp = match opened.await {
            Ok(tcp) => tcp,
            Err(_) => {
                ctx.tally.add(KIND, "connect_failed", 1);
                sleep(RETRY).await;
                continue;
            }
        };
        ctx.tally.add(KIND, "upgraded", 1);
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            tokio::select! {
                _ = stop.wait() => {
                    ctx.park(tcp);
                    return;
                }
                n = tcp.read(&mut buf) => match n {
                    Ok(n) if n > 0 => {
                        if seen.len() < 4096 {
                            seen.extend_from_slice(&buf[..n]);
                        }
                    }
                    _ => {
                        let capped = seen.windows(20).any(|w| w == b"too_many_connections");
                        ctx.tally.add(KIND, if capped { "refused_over_cap" } else { "closed_by_server" }, 1);
                        break;
                    }
                }
            }
        }
        sleep(RETRY).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Floods.

/// A connection sending valid messages far over the rate limits: chat, signal, hand, react,
/// ping, leave/join, watch_rooms, media, in turn, at `flood_rate` a second, reading everything.
/// Opens another when the server closes it (`flooding`).
async fn flooder(ctx: Arc<Ctx>, i: usize, slot: usize) {
    const KIND: &str = "floods";
    let ip = addr(KINDS[3].1, i);
    let room = format!("hostile-flood-{i}");
    let mut stop = ctx.stop.clone();
    while !ctx.stopped() {
        let Ok(mut ws) = wire::ws_from(ip, ctx.port, ws_config()).await else {
            ctx.tally.add(KIND, "connect_failed", 1);
            sleep(RETRY).await;
            continue;
        };
        ctx.tally.add(KIND, "connected", 1);
        let mut in_room = welcome_and_join(&mut ws, &room, &format!("flood{slot}"), &ctx, KIND).await;
        let mut others: Vec<String> = Vec::new();
        let mut n = 0u64;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / ctx.mix.flood_rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait() => {
                    ctx.park(ws);
                    return;
                }
                frame = ws.next() => {
                    let msg = match reply(&ctx, KIND, frame) {
                        Reply::Closed => {
                            ctx.tally.add(KIND, "closed_by_server", 1);
                            break;
                        }
                        Reply::Other => continue,
                        Reply::Msg(msg) => *msg,
                    };
                    match msg {
                        ServerMsg::Joined { peers, .. } => {
                            in_room = true;
                            others = peers.into_iter().map(|p| p.id.0).collect();
                        }
                        ServerMsg::Left { .. } => in_room = false,
                        ServerMsg::PeerJoined { peer } => others.push(peer.id.0),
                        ServerMsg::PeerLeft { id, .. } => others.retain(|o| *o != id.0),
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    n += 1;
                    let to = others.first().cloned().unwrap_or_else(|| "p1".into());
                    let msg = match n % 8 {
                        0 => ClientMsg::Chat { text: format!("flood {n}") },
                        1 => ClientMsg::Signal { to: PeerId(to), payload: SignalPayload::Candidate { candidate: None } },
                        2 => ClientMsg::Hand { raised: n % 16 == 2 },
                        3 => ClientMsg::React { emoji: "👍".into() },
                        4 => ClientMsg::Ping,
                        5 if in_room => ClientMsg::Leave,
                        5 => serde_json::from_str(&join_text(&room, &format!("flood{slot}"))).expect("a join parses"),
                        6 => ClientMsg::WatchRooms,
                        _ => ClientMsg::Media { audio: n % 16 == 7, video: false, screen: false },
                    };
                    let Ok(text) = serde_json::to_string(&msg) else { continue };
                    if ws.send(Message::text(text)).await.is_err() {
                        ctx.tally.add(KIND, "closed_by_server", 1);
                        break;
                    }
                    ctx.tally.add(KIND, "sent", 1);
                }
            }
        }
        sleep(RETRY).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed and oversized frames.

/// Frames the server must refuse and survive, the connection staying open.
fn bad_frames(max_frame: usize) -> Vec<(&'static str, Vec<u8>)> {
    let fill = |n: usize| "x".repeat(n);
    let huge = max_frame.saturating_sub(200).max(1);
    vec![
        ("bad_json", frame(OP_TEXT, true, b"{nope")),
        ("binary", frame(OP_BINARY, true, &[0, 1, 2, 3])),
        ("unknown_type", frame(OP_TEXT, true, br#"{"type":"dance"}"#)),
        ("missing_fields", frame(OP_TEXT, true, br#"{"type":"chat"}"#)),
        ("not_an_object", frame(OP_TEXT, true, b"[1,2,3]")),
        ("deep_nesting", frame(OP_TEXT, true, format!("{}{}", "[".repeat(5000), "]".repeat(5000)).as_bytes())),
        (
            "huge_name",
            frame(
                OP_TEXT,
                true,
                format!(r#"{{"type":"join","protocol":1,"room":"r","name":"{}"}}"#, fill(huge)).as_bytes(),
            ),
        ),
        ("huge_chat", frame(OP_TEXT, true, format!(r#"{{"type":"chat","text":"{}"}}"#, fill(huge)).as_bytes())),
        (
            "huge_peer_id",
            frame(
                OP_TEXT,
                true,
                format!(
                    r#"{{"type":"signal","to":"{}","payload":{{"kind":"candidate","candidate":null}}}}"#,
                    fill(huge)
                )
                .as_bytes(),
            ),
        ),
        ("over_max_frame", frame(OP_TEXT, true, fill(max_frame + 1).as_bytes())),
        ("full_ping", frame(OP_PING, true, &[b'p'; 125])),
    ]
}

/// Frames after which the server should close the connection.
fn closing_frames() -> Vec<(&'static str, Vec<u8>)> {
    let mut fragmented = frame(OP_TEXT, false, &[b'x'; 64 * 1024]);
    for k in 0..20 {
        fragmented.extend(frame(OP_CONTINUATION, k == 19, &[b'x'; 64 * 1024]));
    }
    let mut lying = header(OP_TEXT, true, 1 << 40, true);
    lying.extend_from_slice(&[b'x'; 1024]);
    let mut unmasked = header(OP_TEXT, true, 2, false);
    unmasked.extend_from_slice(b"{}");
    vec![
        ("invalid_utf8", frame(OP_TEXT, true, &[b'{', 0xFF, 0xFE, b'}'])),
        ("over_1mib", frame(OP_TEXT, true, "y".repeat(HARD_MAX_FRAME + HARD_MAX_FRAME / 2).as_bytes())),
        ("length_2pow40", lying),
        ("fragments_over_1mib", fragmented),
        ("unmasked", unmasked),
        ("long_control_frame", frame(OP_PING, true, &[b'p'; 200])),
        ("reserved_opcode", frame(0x3, true, b"?")),
        ("stray_continuation", frame(OP_CONTINUATION, true, b"x")),
    ]
}

/// Sends every frame of [`bad_frames`] at `malformed_rate` a second, then one of
/// [`closing_frames`] (a different one each time), and checks the server closes the
/// connection within 5 s; then starts over on a new connection.
async fn malformed(ctx: Arc<Ctx>, i: usize, slot: usize) {
    const KIND: &str = "malformed";
    let ip = addr(KINDS[4].1, i);
    let bad = bad_frames(ctx.max_frame);
    let closing = closing_frames();
    let mut next_closing = slot;
    let period = Duration::from_secs_f64(1.0 / ctx.mix.malformed_rate);
    let mut stop = ctx.stop.clone();
    while !ctx.stopped() {
        let opened = async {
            let mut tcp = wire::connect_from(ip, ctx.port, None).await?;
            wire::raw_upgrade(&mut tcp, ctx.port).await?;
            Ok::<_, anyhow::Error>(tcp)
        };
        let Ok(mut tcp) = opened.await else {
            ctx.tally.add(KIND, "connect_failed", 1);
            sleep(RETRY).await;
            continue;
        };
        ctx.tally.add(KIND, "connected", 1);
        let (what, bytes) = &closing[next_closing % closing.len()];
        next_closing += 1;
        let plan = bad.iter().map(|(n, b)| (*n, b, false)).chain([(*what, bytes, true)]);
        let mut buf = vec![0u8; 16 * 1024];
        let mut closed = false;
        for (name, bytes, last) in plan {
            let (mut rd, mut wr) = tcp.split();
            let deadline = sleep(if last { Duration::from_secs(5) } else { period });
            tokio::pin!(deadline);
            // One write for the whole frame, kept across turns of the loop (a write dropped
            // half-way would leave half a frame on the wire).
            let write = wr.write_all(bytes);
            tokio::pin!(write);
            let mut written = false;
            loop {
                tokio::select! {
                    _ = stop.wait() => break,
                    r = &mut write, if !written => {
                        if r.is_err() {
                            closed = true;
                            break;
                        }
                        written = true;
                        ctx.tally.add(KIND, &format!("sent_{name}"), 1);
                    }
                    n = rd.read(&mut buf) => {
                        if matches!(n, Ok(0) | Err(_)) {
                            closed = true;
                            break;
                        }
                    }
                    _ = &mut deadline, if written => break,
                }
            }
            if ctx.stopped() {
                ctx.park(tcp);
                return;
            }
            if closed {
                let event = if last { format!("closed_after_{name}") } else { format!("closed_early_after_{name}") };
                ctx.tally.add(KIND, &event, 1);
                break;
            }
            if last {
                ctx.tally.add(KIND, &format!("left_open_after_{name}"), 1);
            }
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// A client that sends one text frame just under the hard limit (refused as `frame_too_large`,
/// the connection stays) and then stays, reading and answering pings: whatever buffer the
/// server grew for that frame, it may keep.
async fn buffer_holder(ctx: Arc<Ctx>, i: usize, slot: usize) {
    const KIND: &str = "buffer_holders";
    let ip = addr(KINDS[5].1, i);
    sleep(Duration::from_millis(slot as u64 * 20)).await;
    let text: Utf8Bytes = "z".repeat(HARD_MAX_FRAME - 4096).into();
    let mut stop = ctx.stop.clone();
    while !ctx.stopped() {
        let Ok(mut ws) = wire::ws_from(ip, ctx.port, ws_config()).await else {
            ctx.tally.add(KIND, "connect_failed", 1);
            sleep(RETRY).await;
            continue;
        };
        ctx.tally.add(KIND, "connected", 1);
        if ws.send(Message::Text(text.clone())).await.is_ok() {
            ctx.tally.add(KIND, "big_frames_sent", 1);
        }
        loop {
            tokio::select! {
                _ = stop.wait() => {
                    ctx.park(ws);
                    return;
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(msg) = serde_json::from_str::<ServerMsg>(&t) {
                            note_reply(&ctx, KIND, &msg);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        ctx.tally.add(KIND, "closed_by_server", 1);
                        break;
                    }
                }
            }
        }
        sleep(RETRY).await;
    }
}

// ---------------------------------------------------------------------------------------------
// File offers.

/// Joins a room of three and offers the largest file allowed, two offers every 6 s (within the
/// `file_offer` budget), never uploading — except the first offer, whose upload starts and then
/// stalls (1 KiB, then a byte every 5 s). An offer refused for want of room (the store's, or a
/// quota's) is made again at once at half the size, so that together they fill whatever is
/// left. Reads everything, so it looks alive.
async fn file_offerer(ctx: Arc<Ctx>, i: usize, room: usize, member: usize) {
    const KIND: &str = "file_offers";
    let ip = addr(KINDS[6].1, i);
    let room = format!("hostile-files-{i}-{room}");
    let mut stalled = false;
    let mut size = ctx.max_file;
    let mut stop = ctx.stop.clone();
    let mut n = 0u64;
    while !ctx.stopped() {
        let Ok(mut ws) = wire::ws_from(ip, ctx.port, ws_config()).await else {
            ctx.tally.add(KIND, "connect_failed", 1);
            sleep(RETRY).await;
            continue;
        };
        ctx.tally.add(KIND, "connected", 1);
        welcome_and_join(&mut ws, &room, &format!("files{member}"), &ctx, KIND).await;
        let mut offer_tick = tokio::time::interval(Duration::from_secs(6));
        // Offers to make now.
        let mut due = 0u32;
        loop {
            while due > 0 {
                due -= 1;
                n += 1;
                let offer = ClientMsg::FileOffer {
                    name: format!("big-{member}-{n}.bin"),
                    size,
                    mime: "application/octet-stream".into(),
                    sha256: "0".repeat(64),
                };
                let Ok(text) = serde_json::to_string(&offer) else { continue };
                if ws.send(Message::text(text)).await.is_err() {
                    break;
                }
                ctx.tally.add(KIND, "offers_sent", 1);
            }
            tokio::select! {
                _ = stop.wait() => {
                    ctx.park(ws);
                    return;
                }
                _ = offer_tick.tick() => due = 2,
                frame = ws.next() => {
                    let msg = match reply(&ctx, KIND, frame) {
                        Reply::Closed => {
                            ctx.tally.add(KIND, "closed_by_server", 1);
                            break;
                        }
                        Reply::Other => continue,
                        Reply::Msg(msg) => *msg,
                    };
                    match msg {
                        ServerMsg::FileUpload { url, .. } => {
                            ctx.tally.add(KIND, "offers_accepted", 1);
                            ctx.tally.add(KIND, "bytes_reserved", size);
                            if !stalled {
                                stalled = true;
                                tokio::spawn(stalled_upload(ctx.clone(), ip, url, size));
                            }
                        }
                        ServerMsg::Error { code, request: Some(r), .. } if r == "file_offer" => {
                            let code = json_name(&code);
                            let no_room = code.contains("storage") || code.contains("quota");
                            if no_room && size > 1 {
                                size /= 2;
                                due = 1;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        sleep(RETRY).await;
    }
}

/// `PUT url` announcing the offered size, 1 KiB of it, then a byte every 5 s.
async fn stalled_upload(ctx: Arc<Ctx>, ip: Ipv4Addr, url: String, size: u64) {
    const KIND: &str = "file_offers";
    let Ok(mut tcp) = wire::connect_from(ip, ctx.port, None).await else {
        ctx.tally.add(KIND, "upload_connect_failed", 1);
        return;
    };
    let head = format!("PUT {url} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n\r\n", ctx.port, size);
    let start = vec![0u8; size.min(1024) as usize];
    if tcp.write_all(head.as_bytes()).await.is_err() || tcp.write_all(&start).await.is_err() {
        ctx.tally.add(KIND, "upload_closed_by_server", 1);
        return;
    }
    ctx.tally.add(KIND, "uploads_stalled", 1);
    let mut buf = [0u8; 1024];
    let mut stop = ctx.stop.clone();
    loop {
        tokio::select! {
            _ = stop.wait() => {
                ctx.park(tcp);
                return;
            }
            _ = sleep(Duration::from_secs(5)) => {
                if tcp.write_all(&[0]).await.is_err() {
                    ctx.tally.add(KIND, "upload_closed_by_server", 1);
                    return;
                }
            }
            n = tcp.read(&mut buf) => {
                if matches!(n, Ok(0) | Err(_)) {
                    ctx.tally.add(KIND, "upload_closed_by_server", 1);
                    return;
                }
            }
        }
    }
}
