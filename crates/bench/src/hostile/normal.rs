//! The normal clients, from 127.0.0.1, throughout the run: three people in room `normal` (so
//! that it is an SFU room under `--topology auto`, the default) chatting and pinging, and a
//! newcomer that every few seconds loads the page, connects, joins and leaves. Every answer is
//! timed; anything not answered within [`ANSWER_TIMEOUT`] is a failure.

use super::wire;
use super::Stop;
use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use huddle_protocol::{ClientMsg, ServerMsg, PROTOCOL_VERSION};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// Longest wait for any answer; a wait this long is a failure.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The room the normal clients meet in.
const ROOM: &str = "normal";
/// The size of the file the normal clients share (a photo, say).
const FILE_SIZE: usize = 256 * 1024;

/// The parts of the run, for the figures.
pub const PHASES: [&str; 4] = ["warmup", "quiet", "attack", "after"];
pub const WARMUP: usize = 0;
pub const QUIET: usize = 1;
pub const ATTACK: usize = 2;
pub const AFTER: usize = 3;

/// What the normal clients measured, by phase and by kind of answer.
#[derive(Default)]
pub struct Stats {
    phase: AtomicUsize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by: BTreeMap<(usize, &'static str), Kind>,
    /// The slowest answer (or failed wait) since the last [`Stats::take_window`].
    window_max_ms: f64,
    window_failures: u64,
    /// The first failures, for the report.
    failures: Vec<String>,
}

#[derive(Default)]
struct Kind {
    failures: u64,
    max_ms: f64,
    samples_ms: Vec<f32>,
}

impl Stats {
    pub fn set_phase(&self, phase: usize) {
        self.phase.store(phase, Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An answer of `kind` that took `took`.
    pub fn ok(&self, kind: &'static str, took: Duration) {
        let ms = took.as_secs_f64() * 1e3;
        let phase = self.phase.load(Relaxed);
        let mut g = self.lock();
        g.window_max_ms = g.window_max_ms.max(ms);
        let k = g.by.entry((phase, kind)).or_default();
        k.max_ms = k.max_ms.max(ms);
        k.samples_ms.push(ms as f32);
    }

    /// A wait of `kind` that failed after `waited`.
    pub fn fail(&self, kind: &'static str, waited: Duration, why: impl std::fmt::Display) {
        let ms = waited.as_secs_f64() * 1e3;
        let phase = self.phase.load(Relaxed);
        let mut g = self.lock();
        g.window_max_ms = g.window_max_ms.max(ms);
        g.window_failures += 1;
        let k = g.by.entry((phase, kind)).or_default();
        k.failures += 1;
        k.max_ms = k.max_ms.max(ms);
        if g.failures.len() < 20 {
            let line = format!("{} {kind} after {ms:.0} ms: {why:#}", PHASES[phase]);
            eprintln!("normal client: {line}");
            g.failures.push(line);
        }
    }

    /// The slowest answer and the failures since the last call.
    pub fn take_window(&self) -> (f64, u64) {
        let mut g = self.lock();
        let w = (g.window_max_ms, g.window_failures);
        g.window_max_ms = 0.0;
        g.window_failures = 0;
        w
    }

    /// `(answers, slowest ms, failures)` over `phases`.
    pub fn summary(&self, phases: &[usize]) -> (u64, f64, u64) {
        let g = self.lock();
        g.by.iter().filter(|((p, _), _)| phases.contains(p)).fold((0, 0.0, 0), |(n, max, f), (_, k)| {
            (n + k.samples_ms.len() as u64, f64::max(max, k.max_ms), f + k.failures)
        })
    }

    pub fn json(&self) -> serde_json::Value {
        let g = self.lock();
        let r1 = |x: f64| (x * 10.0).round() / 10.0;
        let mut out = serde_json::Map::new();
        for (p, name) in PHASES.iter().enumerate() {
            let mut kinds = serde_json::Map::new();
            let (mut worst, mut failures) = (0.0f64, 0u64);
            for ((_, kind), k) in g.by.iter().filter(|((q, _), _)| *q == p) {
                let mut s = k.samples_ms.clone();
                s.sort_by(f32::total_cmp);
                let pct = |q: f64| s.get(((q * s.len() as f64) as usize).min(s.len().saturating_sub(1))).copied();
                worst = worst.max(k.max_ms);
                failures += k.failures;
                kinds.insert(
                    kind.to_string(),
                    serde_json::json!({
                        "answers": s.len(),
                        "failures": k.failures,
                        "p50_ms": pct(0.5).map(|v| r1(v as f64)),
                        "p99_ms": pct(0.99).map(|v| r1(v as f64)),
                        "max_ms": r1(k.max_ms),
                    }),
                );
            }
            out.insert(
                name.to_string(),
                serde_json::json!({ "worst_ms": r1(worst), "failures": failures, "by_kind": kinds }),
            );
        }
        out.insert("first_failures".into(), serde_json::json!(g.failures));
        serde_json::Value::Object(out)
    }
}

/// One normal participant: a task owns its socket, reading everything (so pings are answered)
/// and writing what it is given.
struct Peer {
    name: &'static str,
    out: mpsc::Sender<ClientMsg>,
    events: mpsc::Receiver<(Instant, ServerMsg)>,
}

/// Opens a WebSocket from 127.0.0.1 and reads `welcome`.
async fn open(port: u16) -> anyhow::Result<Ws> {
    let tcp = timeout(ANSWER_TIMEOUT, TcpStream::connect((Ipv4Addr::LOCALHOST, port)))
        .await
        .context("TCP connect timed out")?
        .context("TCP connect")?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (mut ws, _) = timeout(ANSWER_TIMEOUT, tokio_tungstenite::client_async(url, tcp))
        .await
        .context("WebSocket handshake timed out")?
        .context("WebSocket handshake")?;
    match next(&mut ws, Instant::now() + ANSWER_TIMEOUT).await? {
        ServerMsg::Welcome { .. } => Ok(ws),
        other => bail!("expected welcome, got {}", type_of(&other)),
    }
}

/// The next server message, by `until`.
async fn next(ws: &mut Ws, until: Instant) -> anyhow::Result<ServerMsg> {
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => bail!("no answer within {ANSWER_TIMEOUT:?}"),
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).context("unreadable server message"),
            Ok(Some(Ok(Message::Close(f)))) => bail!("closed by the server: {f:?}"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e).context("WebSocket read"),
            Ok(None) => bail!("connection ended"),
        }
    }
}

/// The `type` of a server message, for error messages.
pub fn type_of(msg: &ServerMsg) -> String {
    serde_json::to_value(msg).ok().and_then(|v| v["type"].as_str().map(str::to_string)).unwrap_or_default()
}

fn join_msg(name: &str) -> ClientMsg {
    ClientMsg::Join {
        recording_ok: false,
        protocol: PROTOCOL_VERSION,
        room: ROOM.into(),
        name: name.into(),
        audio: false,
        video: false,
        password: None,
        token: None,
    }
}

/// Connects and joins `normal`, timing both ("connect": TCP to `welcome`; "join").
async fn connect_and_join(port: u16, name: &str, stats: &Stats) -> anyhow::Result<Ws> {
    let t = Instant::now();
    let mut ws = match open(port).await {
        Ok(ws) => ws,
        Err(e) => {
            stats.fail("connect", t.elapsed(), &e);
            return Err(e);
        }
    };
    stats.ok("connect", t.elapsed());
    let t = Instant::now();
    let joined = async {
        ws.send(Message::text(serde_json::to_string(&join_msg(name))?)).await?;
        let until = Instant::now() + ANSWER_TIMEOUT;
        loop {
            match next(&mut ws, until).await? {
                ServerMsg::Joined { .. } => return Ok::<_, anyhow::Error>(()),
                ServerMsg::Error { code, .. } => bail!("join refused: {code}"),
                _ => {}
            }
        }
    };
    match joined.await {
        Ok(()) => stats.ok("join", t.elapsed()),
        Err(e) => {
            stats.fail("join", t.elapsed(), &e);
            return Err(e);
        }
    }
    Ok(ws)
}

impl Peer {
    async fn start(port: u16, name: &'static str, stats: &Stats) -> anyhow::Result<Peer> {
        let ws = connect_and_join(port, name, stats).await?;
        let (out, out_rx) = mpsc::channel(64);
        let (ev_tx, events) = mpsc::channel(1024);
        tokio::spawn(peer_io(ws, out_rx, ev_tx));
        Ok(Peer { name, out, events })
    }

    async fn send(&self, msg: ClientMsg) -> anyhow::Result<Instant> {
        let t = Instant::now();
        self.out.send(msg).await.map_err(|_| anyhow!("{}: connection gone", self.name))?;
        Ok(t)
    }

    /// Forgets what arrived so far.
    fn drain(&mut self) {
        while self.events.try_recv().is_ok() {}
    }

    /// Waits (at most [`ANSWER_TIMEOUT`]) for a message `pick` accepts; when it arrived.
    async fn wait_for<T>(&mut self, mut pick: impl FnMut(&ServerMsg) -> Option<T>) -> anyhow::Result<(Instant, T)> {
        let until = Instant::now() + ANSWER_TIMEOUT;
        loop {
            match tokio::time::timeout_at(until, self.events.recv()).await {
                Err(_) => bail!("no answer within {ANSWER_TIMEOUT:?}"),
                Ok(None) => bail!("{}: connection lost", self.name),
                Ok(Some((at, msg))) => {
                    if let Some(t) = pick(&msg) {
                        return Ok((at, t));
                    }
                }
            }
        }
    }

    /// Leaves the room (waiting briefly for `left`) and closes the connection.
    async fn leave(mut self) {
        if self.send(ClientMsg::Leave).await.is_ok() {
            let _ = self.wait_for(|m| matches!(m, ServerMsg::Left { .. }).then_some(())).await;
        }
        drop(self.out);
        // The task closes the socket when its queue closes; wait for it to end (bounded).
        let _ = timeout(Duration::from_secs(3), async { while self.events.recv().await.is_some() {} }).await;
    }
}

/// A peer's socket: writes what it is given, reads everything, stamps what arrives.
async fn peer_io(mut ws: Ws, mut out: mpsc::Receiver<ClientMsg>, events: mpsc::Sender<(Instant, ServerMsg)>) {
    loop {
        tokio::select! {
            msg = out.recv() => {
                let Some(msg) = msg else {
                    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                    return;
                };
                let Ok(text) = serde_json::to_string(&msg) else { return };
                if timeout(ANSWER_TIMEOUT, ws.send(Message::text(text))).await.map_or(true, |r| r.is_err()) {
                    return;
                }
            }
            frame = ws.next() => {
                let at = Instant::now();
                match frame {
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(msg) = serde_json::from_str::<ServerMsg>(&t) {
                            // A full queue drops messages nobody waits for (the silent peer's).
                            let _ = events.try_send((at, msg));
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                }
            }
        }
    }
}

/// How the normal clients behave.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub port: u16,
    /// Time between two rounds (a chat and a ping).
    pub probe_every: Duration,
    /// Time between two newcomers.
    pub newcomer_every: Duration,
    /// Time between two file shares (`None`: none).
    pub file_every: Option<Duration>,
}

/// The normal clients, until `stop`: people in `normal` chatting and pinging, a newcomer coming
/// and going, a file shared now and then. Everyone leaves at the end.
pub async fn run(plan: Plan, stats: Arc<Stats>, stop: Stop) {
    let newcomer = tokio::spawn(newcomers(plan, stats.clone(), stop.clone()));
    let names = ["ana", "bo", "cyd"];
    let mut peers: Vec<Option<Peer>> = Vec::new();
    for name in names {
        peers.push(Peer::start(plan.port, name, &stats).await.ok());
    }
    let mut tick = tokio::time::interval(plan.probe_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_file = Instant::now();
    let mut round = 0u64;
    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            _ = stopping.wait() => break,
            _ = tick.tick() => {}
        }
        round += 1;
        // Whoever lost their connection comes back (a failure was recorded where it was lost).
        for (slot, name) in peers.iter_mut().zip(names) {
            if slot.as_ref().is_none_or(|p| p.out.is_closed()) {
                *slot = Peer::start(plan.port, name, &stats).await.ok();
            }
        }
        let [Some(a), Some(b), Some(c)] = &mut peers[..] else { continue };
        for p in [&mut *a, &mut *b, &mut *c] {
            p.drain();
        }
        let (from, to) = if round.is_multiple_of(2) { (&mut *a, &mut *b) } else { (&mut *b, &mut *a) };
        let text = format!("probe {round}");
        chat_round_trip(from, to, text, &stats).await;
        ping_round_trip(from, &stats).await;
        if plan.file_every.is_some_and(|every| last_file.elapsed() >= every) {
            last_file = Instant::now();
            share_file(plan.port, from, to, &stats).await;
        }
    }
    for p in peers.into_iter().flatten() {
        p.leave().await;
    }
    let _ = timeout(Duration::from_secs(10), newcomer).await;
}

/// `from` chats; `to` must receive it.
async fn chat_round_trip(from: &mut Peer, to: &mut Peer, text: String, stats: &Stats) {
    let sent = match from.send(ClientMsg::Chat { text: text.clone() }).await {
        Ok(t) => t,
        Err(e) => return stats.fail("chat", Duration::ZERO, e),
    };
    match to.wait_for(|m| matches!(m, ServerMsg::Chat { message } if message.text == text).then_some(())).await {
        Ok((at, ())) => stats.ok("chat", at - sent),
        Err(e) => stats.fail("chat", sent.elapsed(), e),
    }
}

async fn ping_round_trip(p: &mut Peer, stats: &Stats) {
    let sent = match p.send(ClientMsg::Ping).await {
        Ok(t) => t,
        Err(e) => return stats.fail("ping", Duration::ZERO, e),
    };
    match p.wait_for(|m| matches!(m, ServerMsg::Pong).then_some(())).await {
        Ok((at, ())) => stats.ok("ping", at - sent),
        Err(e) => stats.fail("ping", sent.elapsed(), e),
    }
}

/// `from` offers a file and uploads it; `to` must be told it is there.
async fn share_file(port: u16, from: &mut Peer, to: &mut Peer, stats: &Stats) {
    let bytes: Vec<u8> = (0..FILE_SIZE).map(|i| (i % 251) as u8).collect();
    let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    let offer = ClientMsg::FileOffer {
        name: "photo.jpg".into(),
        size: bytes.len() as u64,
        mime: "image/jpeg".into(),
        sha256: sha256.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
    };
    let sent = match from.send(offer).await {
        Ok(t) => t,
        Err(e) => return stats.fail("file", Duration::ZERO, e),
    };
    let shared = async {
        let (_, answer) = from
            .wait_for(|m| match m {
                ServerMsg::FileUpload { id, url } => Some(Ok((id.clone(), url.clone()))),
                ServerMsg::Error { code, request: Some(r), .. } if r == "file_offer" => Some(Err(*code)),
                _ => None,
            })
            .await?;
        let (id, url) = answer.map_err(|code| anyhow!("offer refused: {code}"))?;
        let (status, _) = timeout(ANSWER_TIMEOUT, wire::http_put(Ipv4Addr::LOCALHOST, port, &url, &bytes))
            .await
            .context("upload timed out")??;
        if status != 204 {
            bail!("upload answered {status}");
        }
        to.wait_for(|m| matches!(m, ServerMsg::File { file } if file.id == id).then_some(())).await?;
        Ok::<_, anyhow::Error>(())
    };
    match shared.await {
        Ok(()) => stats.ok("file", sent.elapsed()),
        Err(e) => stats.fail("file", sent.elapsed(), e),
    }
}

/// Every `newcomer_every`: load the page ("page"), connect ("connect"), join ("join"), leave.
async fn newcomers(plan: Plan, stats: Arc<Stats>, mut stop: Stop) {
    let mut tick = tokio::time::interval(plan.newcomer_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait() => return,
            _ = tick.tick() => {}
        }
        let t = Instant::now();
        match timeout(ANSWER_TIMEOUT, wire::http_get(Ipv4Addr::LOCALHOST, plan.port, "/", 8 << 20)).await {
            Ok(Ok((200, body))) if !body.is_empty() => stats.ok("page", t.elapsed()),
            Ok(Ok((status, _))) => stats.fail("page", t.elapsed(), format_args!("GET / answered {status}")),
            Ok(Err(e)) => stats.fail("page", t.elapsed(), e),
            Err(_) => stats.fail("page", t.elapsed(), "no answer"),
        }
        let Ok(ws) = connect_and_join(plan.port, "newcomer", &stats).await else { continue };
        let (out, out_rx) = mpsc::channel(4);
        let (ev_tx, events) = mpsc::channel(256);
        tokio::spawn(peer_io(ws, out_rx, ev_tx));
        Peer { name: "newcomer", out, events }.leave().await;
    }
}
