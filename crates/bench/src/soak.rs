//! `huddle-bench soak`: a bounded load run that checks that nothing leaks and that no chat
//! message is lost or delivered twice, across leaves, rejoins and resumed sessions.
//!
//! 1. Start the server (a child process). Warm up: the same life as the run (below) for a fifth
//!    of `--duration-secs` (at most 60 s), then everyone leaves; once the grace period is over
//!    and the room list is empty the server is read at rest: the baseline.
//! 2. Waves (`--waves`, 2 by default, sharing `--duration-secs`): every client lives a seeded
//!    random life, the same in every wave: it joins a room, chats (each text unique:
//!    `c<client>-<seq>`), raises and lowers its hand, reacts, leaves and joins another room, and
//!    drops its connection abruptly (TCP reset, or close code 4000) to resume the session on a
//!    new one with `session`/`resume`/`seen`. A few drop and come back after the grace period or
//!    with a wrong secret: they must get a new session and join again.
//! 3. After each wave every client has left and closed; after the grace period the room list
//!    must be empty and the `/metrics` gauges (when the server has them) zero, and the server is
//!    read at rest again.
//!
//! "Read at rest" asks the server process itself (see [`crate::server::Probe`]) for its tasks
//! and glibc's count of heap bytes in use, then reads `VmRSS`, open files and threads, then has
//! it trim its allocator and reads `VmRSS` again. A leak is heap still in use after a wave (the
//! check against the baseline), or memory that grows with every wave (the check of the last
//! wave against the first); memory the allocator keeps for reuse does neither.
//!
//! The delivery check, per membership (one session's stay in one room, from `joined` to
//! `left` or to giving the session up; a resume within the grace period does not end it):
//! chat ids are per room and increase by one per message, so the chats a member receives must
//! be exactly the ids following the last one in `joined.chat`, each once, in order. A gap is
//! *lost* (unless the missing id turns up later: *out of order*), a repeat *duplicated*. And
//! when a member leaves, every other member that sees its `peer_left` records the last chat id
//! it had itself received by then: the one who left must have received at least that far
//! (anything short is lost too). Seeing `peer_left` or `peer_joined` for a session whose owner
//! did not leave, give up or join that room (e.g. one that resumed in time) is
//! `unexpected_leave_join`.
//!
//! Every phase is bounded in time; all traffic is on 127.0.0.1.

use crate::procfs;
use crate::server::{Prober, ServerProcess};
use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use huddle_protocol::{ClientMsg, LeaveReason, ServerMsg, PROTOCOL_VERSION};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// WebSocket clients living at the same time
    #[arg(long, default_value_t = 2000)]
    pub clients: usize,
    /// Rooms the clients move between (`soak-0` … `soak-<R-1>`)
    #[arg(long, default_value_t = 200)]
    pub rooms: usize,
    /// Length of the run, in seconds, shared equally by the waves (the warm-up and the checks
    /// after each wave come on top)
    #[arg(long, default_value_t = 600.0)]
    pub duration_secs: f64,
    /// Waves: each is the same life (the same seed) and ends with everyone gone and the server
    /// read at rest. A leak grows with every wave; allocator retention does not grow after the
    /// first
    #[arg(long, default_value_t = 2)]
    pub waves: u32,
    /// Seed of every client's random life (the same seed gives the same plan)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Mean time between two actions of one client, in seconds
    #[arg(long, default_value_t = 3.0)]
    pub action_secs: f64,
    /// The server's resume grace period (`--resume-grace-secs`), unless given in --server-arg
    #[arg(long, default_value_t = 10)]
    pub resume_grace_secs: u64,
    /// Clients connecting at the same time
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Allowed growth of the server's resident memory from the end of the first wave to the end
    /// of the last, in percent (plus --rss-slack-kb)
    #[arg(long, default_value_t = 5.0)]
    pub rss_slack_pct: f64,
    /// Allowed growth of the server's resident memory after the first wave, in KiB (plus
    /// --rss-slack-pct)
    #[arg(long, default_value_t = 4096)]
    pub rss_slack_kb: u64,
    /// Allowed growth of the server's heap in use (glibc's count of bytes allocated and not
    /// freed) from the baseline to the end of any wave, in percent (plus --heap-slack-kb)
    #[arg(long, default_value_t = 10.0)]
    pub heap_slack_pct: f64,
    /// Allowed growth of the server's heap in use, in KiB (plus --heap-slack-pct)
    #[arg(long, default_value_t = 2048)]
    pub heap_slack_kb: u64,
    /// Also drop connections with a plain TCP close (FIN) and no close frame, and expect those
    /// to resume too
    #[arg(long)]
    pub fin_drops: bool,
    /// Extra argument for the server (repeatable), e.g. --server-arg=--outbox-capacity=64
    #[arg(long = "server-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub server_args: Vec<String>,
}

impl SoakArgs {
    fn check(&self) -> anyhow::Result<()> {
        if self.clients < 2 || self.clients > 50_000 {
            bail!("--clients must be between 2 and 50000");
        }
        if self.rooms < 2 || self.rooms > self.clients {
            bail!("--rooms must be between 2 and --clients");
        }
        if !(self.duration_secs >= 1.0 && self.duration_secs <= 86_400.0) {
            bail!("--duration-secs must be between 1 and 86400");
        }
        if !(self.action_secs >= 0.01 && self.action_secs <= 3600.0) {
            bail!("--action-secs must be between 0.01 and 3600");
        }
        if self.waves == 0 || self.waves > 10 {
            bail!("--waves must be between 1 and 10");
        }
        if self.resume_grace_secs == 0 || self.resume_grace_secs > 600 {
            bail!("--resume-grace-secs must be between 1 and 600");
        }
        if self.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        Ok(())
    }
}

/// A small seeded generator (SplitMix64): the same seed gives every client the same life.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Counters every client adds to.
#[derive(Default)]
struct Counts {
    joins: AtomicU64,
    leaves: AtomicU64,
    chats: AtomicU64,
    hands: AtomicU64,
    reacts: AtomicU64,
    reconnects: AtomicU64,
    resumes: AtomicU64,
    /// New sessions that joined again after a resume was (rightly) refused.
    rejoins: AtomicU64,
    expired: AtomicU64,
    wrong_secret: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    out_of_order: AtomicU64,
    unexpected_leave_join: AtomicU64,
    /// Resumes within the grace period that the server refused, or late ones it accepted.
    resume_wrong: AtomicU64,
    /// Chats posted while their receiver was disconnected and replayed on its resume.
    gap_chats: AtomicU64,
    server_errors: AtomicU64,
    client_failures: AtomicU64,
}

/// What every client shares.
struct Shared {
    port: u16,
    rooms: usize,
    grace: Duration,
    action_secs: f64,
    fin_drops: bool,
    end: Instant,
    ws_config: WebSocketConfig,
    connect_slots: Semaphore,
    c: Counts,
    /// Memberships `(session, room)` whose owner said it joins.
    joining: Mutex<HashSet<(String, usize)>>,
    /// Memberships `(session, room)` whose owner left or gave the session up.
    ended: Mutex<HashSet<(String, usize)>>,
    /// `(session, room) → the last chat id it had` when it got `left`.
    left_at: Mutex<HashMap<(String, usize), u64>>,
    /// `(session, room, the last chat id a witness had)` when the witness saw its `peer_left`.
    witnessed: Mutex<Vec<(String, usize, u64)>>,
    reported: AtomicU64,
    /// Only the warm-up: its figures are not checked.
    warmup: bool,
    /// The server process, and its memory sampled every 10 s of the run: `(seconds, VmRSS in
    /// KiB, heap in use in KiB)`.
    prober: Arc<Prober>,
    memory: Mutex<Vec<(f64, u64, Option<u64>)>>,
}

const REPORT_MAX: u64 = 12;
/// Longest wait for one answer from the server.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

impl Shared {
    fn note(&self, counter: &AtomicU64, client: usize, detail: impl std::fmt::Display) {
        self.note_n(counter, 1, client, detail);
    }

    fn note_n(&self, counter: &AtomicU64, n: u64, client: usize, detail: impl std::fmt::Display) {
        counter.fetch_add(n, Relaxed);
        if self.warmup {
            return;
        }
        let n = self.reported.fetch_add(1, Relaxed);
        if n < REPORT_MAX {
            eprintln!("client {client}: {detail}");
        } else if n == REPORT_MAX {
            eprintln!("(further problems are counted, not shown)");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Session {
    id: String,
    secret: String,
    /// Messages received on this session, `welcome`s not counted.
    seen: u64,
}

/// One session's stay in one room.
struct Membership {
    room: usize,
    /// The last chat id received (at first the last one of `joined.chat`, or 0).
    last: u64,
    /// Ids skipped over, in case they arrive late.
    gaps: BTreeSet<u64>,
    /// The other members, as this client sees them.
    members: HashSet<String>,
    /// Wall-clock milliseconds when the last resume's `welcome` arrived.
    resumed_ms: Option<u64>,
}

struct Client {
    i: usize,
    sh: Arc<Shared>,
    rng: Rng,
    ws: Option<Ws>,
    session: Option<Session>,
    member: Option<Membership>,
    /// Rooms this session has been in: a session never goes back to one (so that a
    /// `(session, room)` pair names one membership).
    visited: HashSet<usize>,
    /// The room of the `join` under way.
    pending_room: Option<usize>,
    chat_seq: u64,
    hand: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Client {
    async fn send(&mut self, msg: &ClientMsg) -> anyhow::Result<()> {
        let ws = self.ws.as_mut().ok_or_else(|| anyhow!("not connected"))?;
        ws.send(Message::text(serde_json::to_string(msg)?)).await.context("WebSocket send")?;
        self.sh.c.sent.fetch_add(1, Relaxed);
        Ok(())
    }

    /// The next server message, handled (counted and checked); `None` at `until`.
    async fn recv(&mut self, until: Instant) -> anyhow::Result<Option<ServerMsg>> {
        loop {
            let ws = self.ws.as_mut().ok_or_else(|| anyhow!("not connected"))?;
            let frame = match tokio::time::timeout_at(until, ws.next()).await {
                Err(_) => return Ok(None),
                Ok(f) => f,
            };
            let text = match frame {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e).context("WebSocket read"),
                None => bail!("connection ended"),
            };
            let msg: ServerMsg = serde_json::from_str(&text).context("unreadable server message")?;
            self.sh.c.received.fetch_add(1, Relaxed);
            self.handle(&msg);
            return Ok(Some(msg));
        }
    }

    /// Reads until `pick` accepts a message (handling everything before it), for at most
    /// [`ANSWER_TIMEOUT`].
    async fn answer<T>(&mut self, what: &str, mut pick: impl FnMut(&ServerMsg) -> Option<T>) -> anyhow::Result<T> {
        let until = Instant::now() + ANSWER_TIMEOUT;
        loop {
            match self.recv(until).await? {
                Some(msg) => {
                    if let Some(t) = pick(&msg) {
                        return Ok(t);
                    }
                    if let ServerMsg::Error { code, request, .. } = &msg {
                        bail!("error {code} (request {request:?}) while waiting for {what}");
                    }
                }
                None => bail!("no {what} within {ANSWER_TIMEOUT:?}"),
            }
        }
    }

    fn handle(&mut self, msg: &ServerMsg) {
        if matches!(msg, ServerMsg::Welcome { .. }) {
            return;
        }
        if let Some(s) = &mut self.session {
            s.seen += 1;
        }
        let me = self.session.as_ref().map(|s| s.id.clone()).unwrap_or_default();
        match msg {
            ServerMsg::Joined { chat, peers, .. } => {
                self.member = None;
                if let Some(room) = self.pending_room.take() {
                    self.member = Some(Membership {
                        room,
                        last: chat.last().map_or(0, |m| m.id),
                        gaps: BTreeSet::new(),
                        members: peers.iter().map(|p| p.id.0.clone()).collect(),
                        resumed_ms: None,
                    });
                }
            }
            ServerMsg::Chat { message } => {
                let Some(m) = &mut self.member else {
                    self.sh.note(&self.sh.c.server_errors, self.i, format_args!("chat outside a room: {message:?}"));
                    return;
                };
                let c = &self.sh.c;
                let id = message.id;
                if id == m.last + 1 {
                    m.last = id;
                } else if id > m.last {
                    let missing = id - m.last - 1;
                    if m.gaps.len() < 10_000 {
                        m.gaps.extend(m.last + 1..id);
                    }
                    self.sh.note_n(
                        &c.lost,
                        missing,
                        self.i,
                        format_args!("{me} in soak-{}: chat {id} after {} ({missing} lost)", m.room, m.last),
                    );
                    m.last = id;
                } else if m.gaps.remove(&id) {
                    c.lost.fetch_sub(1, Relaxed);
                    self.sh.note(&c.out_of_order, self.i, format_args!("{me}: chat {id} after {}", m.last));
                } else {
                    self.sh.note(&c.duplicated, self.i, format_args!("{me}: chat {id} again (last {})", m.last));
                }
                if m.resumed_ms.is_some_and(|t| message.ts <= t) && message.from.0 != me {
                    c.gap_chats.fetch_add(1, Relaxed);
                }
            }
            ServerMsg::PeerJoined { peer } => {
                let Some(m) = &mut self.member else { return };
                let declared = lock(&self.sh.joining).contains(&(peer.id.0.clone(), m.room));
                if !m.members.insert(peer.id.0.clone()) || !declared {
                    self.sh.note(
                        &self.sh.c.unexpected_leave_join,
                        self.i,
                        format_args!("{me} in soak-{}: unexpected peer_joined {}", m.room, peer.id),
                    );
                }
            }
            ServerMsg::PeerLeft { id, reason } => {
                let Some(m) = &mut self.member else { return };
                let key = (id.0.clone(), m.room);
                let declared = lock(&self.sh.ended).contains(&key);
                if !m.members.remove(&id.0) || !declared {
                    self.sh.note(
                        &self.sh.c.unexpected_leave_join,
                        self.i,
                        format_args!("{me} in soak-{}: unexpected peer_left {id} ({reason:?})", m.room),
                    );
                }
                if *reason == LeaveReason::Left {
                    lock(&self.sh.witnessed).push((key.0, key.1, m.last));
                }
            }
            ServerMsg::Left { .. } => {
                if let (Some(m), Some(s)) = (self.member.take(), &self.session) {
                    lock(&self.sh.left_at).insert((s.id.clone(), m.room), m.last);
                }
            }
            ServerMsg::Error { code, request, .. } => {
                self.sh.note(&self.sh.c.server_errors, self.i, format_args!("{me}: error {code} ({request:?})"));
            }
            ServerMsg::Bye { reason } => {
                self.sh.note(&self.sh.c.server_errors, self.i, format_args!("{me}: bye {reason:?}"));
            }
            _ => {}
        }
    }
}

/// How a client drops its connection to resume later.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// A TCP reset (`SO_LINGER` 0): no close frame.
    Reset,
    /// A close frame with code 4000 ("reconnecting, keep my place").
    Close4000,
    /// The TCP connection closed normally (FIN) with no close frame, as when a process dies.
    Fin,
}

impl Client {
    fn new(i: usize, sh: Arc<Shared>, seed: u64) -> Client {
        let rng = Rng(seed ^ (i as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        Client {
            i,
            sh,
            rng,
            ws: None,
            session: None,
            member: None,
            visited: HashSet::new(),
            pending_room: None,
            chat_seq: 0,
            hand: false,
        }
    }

    /// Opens a WebSocket (with `query`, to resume) and reads `welcome`: `(id, secret, resumed)`.
    async fn open(&mut self, query: Option<String>) -> anyhow::Result<(String, String, bool)> {
        let sh = self.sh.clone();
        let _slot = sh.connect_slots.acquire().await.context("connect slots")?;
        let tcp = timeout(ANSWER_TIMEOUT, TcpStream::connect(("127.0.0.1", sh.port)))
            .await
            .context("TCP connect timed out")?
            .context("TCP connect")?;
        tcp.set_nodelay(true)?;
        let url = format!("ws://127.0.0.1:{}/ws{}", sh.port, query.map(|q| format!("?{q}")).unwrap_or_default());
        let (ws, _) =
            timeout(ANSWER_TIMEOUT, tokio_tungstenite::client_async_with_config(url, tcp, Some(sh.ws_config)))
                .await
                .context("WebSocket handshake timed out")?
                .context("WebSocket handshake")?;
        self.ws = Some(ws);
        match self.recv(Instant::now() + ANSWER_TIMEOUT).await? {
            Some(ServerMsg::Welcome { id, resume, resumed, .. }) => Ok((id.0, resume, resumed)),
            other => bail!("expected welcome, got {other:?}"),
        }
    }

    /// A new session.
    async fn connect_new(&mut self) -> anyhow::Result<()> {
        let (id, secret, _) = self.open(None).await?;
        self.new_session(id, secret);
        Ok(())
    }

    fn new_session(&mut self, id: String, secret: String) {
        self.session = Some(Session { id, secret, seen: 0 });
        self.member = None;
        self.visited.clear();
        self.hand = false;
    }

    fn session_id(&self) -> anyhow::Result<String> {
        self.session.as_ref().map(|s| s.id.clone()).ok_or_else(|| anyhow!("no session"))
    }

    /// Joins a room this session has not been in.
    async fn join(&mut self, room: Option<usize>) -> anyhow::Result<()> {
        let rooms = self.sh.rooms;
        if self.visited.len() >= rooms {
            // Been everywhere: start over with a new session.
            self.close().await;
            self.connect_new().await?;
        }
        let mut room = room.unwrap_or_else(|| self.rng.below(rooms as u64) as usize) % rooms;
        for _ in 0..rooms {
            if !self.visited.contains(&room) {
                break;
            }
            room = (room + 1) % rooms;
        }
        self.visited.insert(room);
        let id = self.session_id()?;
        lock(&self.sh.joining).insert((id, room));
        self.pending_room = Some(room);
        let join = ClientMsg::Join {
            recording_ok: false,
            protocol: PROTOCOL_VERSION,
            room: format!("soak-{room}"),
            name: format!("c{}", self.i),
            audio: false,
            video: false,
            password: None,
            token: None,
        };
        self.send(&join).await?;
        self.answer("joined", |m| matches!(m, ServerMsg::Joined { .. }).then_some(())).await?;
        self.sh.c.joins.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Declares that this session's current membership ends (before it does).
    fn declare_end(&self) {
        if let (Some(s), Some(m)) = (&self.session, &self.member) {
            lock(&self.sh.ended).insert((s.id.clone(), m.room));
        }
    }

    async fn leave(&mut self) -> anyhow::Result<()> {
        self.declare_end();
        self.send(&ClientMsg::Leave).await?;
        self.answer("left", |m| matches!(m, ServerMsg::Left { .. }).then_some(())).await?;
        self.sh.c.leaves.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Closes the connection politely (close code 1000), waiting a little for the answer.
    async fn close(&mut self) {
        if let Some(mut ws) = self.ws.take() {
            let _ = timeout(Duration::from_secs(2), async {
                ws.close(None).await?;
                while ws.next().await.is_some() {}
                Ok::<_, tokio_tungstenite::tungstenite::Error>(())
            })
            .await;
        }
    }

    /// Drops the connection abruptly.
    async fn drop_connection(&mut self, how: Cut) {
        let Some(mut ws) = self.ws.take() else { return };
        self.sh.c.reconnects.fetch_add(1, Relaxed);
        match how {
            Cut::Reset => {
                let _ = ws.get_ref().set_zero_linger();
            }
            Cut::Fin => {}
            Cut::Close4000 => {
                let frame = CloseFrame { code: CloseCode::from(4000), reason: "reconnecting".into() };
                let _ = timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
            }
        }
    }

    /// Reconnects asking to resume the session with `secret`; true when it was resumed, else
    /// the client now has a new session (not in a room).
    async fn resume(&mut self, secret: String) -> anyhow::Result<bool> {
        let s = self.session.as_ref().ok_or_else(|| anyhow!("no session"))?;
        let old = s.id.clone();
        let query = format!("session={}&resume={secret}&seen={}", s.id, s.seen);
        let (id, secret, resumed) = self.open(Some(query)).await?;
        if resumed && id == old {
            if let Some(m) = &mut self.member {
                m.resumed_ms = Some(now_ms());
            }
            return Ok(true);
        }
        self.new_session(id, secret);
        Ok(false)
    }

    async fn act(&mut self) -> anyhow::Result<()> {
        if self.member.is_none() {
            return self.join(None).await;
        }
        let r = self.rng.unit();
        if r < 0.55 {
            self.chat_seq += 1;
            let text = format!("c{}-{}", self.i, self.chat_seq);
            self.send(&ClientMsg::Chat { text }).await?;
            self.sh.c.chats.fetch_add(1, Relaxed);
        } else if r < 0.70 {
            self.hand = !self.hand;
            self.send(&ClientMsg::Hand { raised: self.hand }).await?;
            self.sh.c.hands.fetch_add(1, Relaxed);
        } else if r < 0.82 {
            const EMOJI: [&str; 3] = ["👍", "👏", "🎉"];
            let emoji = EMOJI[self.rng.below(3) as usize].to_string();
            self.send(&ClientMsg::React { emoji }).await?;
            self.sh.c.reacts.fetch_add(1, Relaxed);
        } else if r < 0.88 {
            self.leave().await?;
            self.join(None).await?;
        } else if r < 0.97 {
            // Drop and resume within the grace period.
            let how = match self.rng.below(if self.sh.fin_drops { 3 } else { 2 }) {
                0 => Cut::Reset,
                1 => Cut::Close4000,
                _ => Cut::Fin,
            };
            self.drop_connection(how).await;
            let gap_ms = self.rng.below((self.sh.grace.as_millis() as u64 / 3).clamp(1, 1500));
            tokio::time::sleep(Duration::from_millis(gap_ms)).await;
            let secret = self.session.as_ref().map(|s| s.secret.clone()).unwrap_or_default();
            let old = self.session_id()?;
            if self.resume(secret).await? {
                self.sh.c.resumes.fetch_add(1, Relaxed);
            } else {
                let c = &self.sh.c.resume_wrong;
                self.sh.note(c, self.i, format_args!("{old}: resume after {gap_ms} ms ({how:?}) refused"));
                self.join(None).await?;
                self.sh.c.rejoins.fetch_add(1, Relaxed);
            }
        } else {
            // Give the session up: come back after the grace period, or with a wrong secret.
            let late = r < 0.985;
            self.declare_end();
            self.drop_connection(Cut::Reset).await;
            let mut secret = self.session.as_ref().map(|s| s.secret.clone()).unwrap_or_default();
            if late {
                self.sh.c.expired.fetch_add(1, Relaxed);
                tokio::time::sleep(self.sh.grace + Duration::from_millis(1500)).await;
            } else {
                self.sh.c.wrong_secret.fetch_add(1, Relaxed);
                secret = secret.chars().map(|c| if c == '0' { '1' } else { '0' }).collect();
            }
            let old = self.session_id()?;
            if self.resume(secret).await? {
                let c = &self.sh.c.resume_wrong;
                self.sh.note(
                    c,
                    self.i,
                    format_args!("{old}: resumed {}", if late { "late" } else { "with a wrong secret" }),
                );
                self.leave().await?;
            }
            self.join(None).await?;
            self.sh.c.rejoins.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    async fn live(&mut self, start: Instant) -> anyhow::Result<()> {
        tokio::time::sleep_until(start).await;
        self.connect_new().await?;
        self.join(None).await?;
        let end = self.sh.end;
        loop {
            let wait = Duration::from_secs_f64(self.sh.action_secs * (0.5 + self.rng.unit()));
            let next = Instant::now() + wait;
            if next >= end {
                break;
            }
            while self.recv(next).await?.is_some() {}
            self.act().await?;
        }
        while self.recv(end).await?.is_some() {}
        if self.member.is_some() {
            self.leave().await?;
        }
        self.close().await;
        Ok(())
    }

    async fn run(mut self, start: Instant) {
        if let Err(e) = self.live(start).await {
            self.declare_end();
            let id = self.session.as_ref().map(|s| s.id.clone()).unwrap_or_default();
            self.sh.note(&self.sh.c.client_failures, self.i, format_args!("{id}: failed: {e:#}"));
        }
    }
}

pub fn run(args: SoakArgs) -> anyhow::Result<()> {
    args.check()?;
    let nofile = procfs::raise_nofile(args.clients as u64 + 1024)?;
    if nofile < args.clients as u64 + 64 {
        eprintln!("warning: the open-file limit is {nofile}, too low for {} clients", args.clients);
    }
    let given = |flag: &str| args.server_args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    let mut server_args: Vec<OsString> = vec!["--listen".into(), "127.0.0.1:0".into()];
    // Moving clients crowd some rooms for a while: room for four times the average.
    if !given("--room-capacity") {
        let cap = (args.clients.div_ceil(args.rooms) * 4).max(16);
        server_args.extend(["--room-capacity".into(), cap.to_string().into()]);
    }
    if !given("--resume-grace-secs") {
        server_args.extend(["--resume-grace-secs".into(), args.resume_grace_secs.to_string().into()]);
    }
    // Every simulated client comes from 127.0.0.1: no per-IP limits (per-connection ones stay).
    for flag in ["--max-connections-per-ip", "--max-tcp-connections-per-ip", "--ip-joins-per-minute"] {
        if !given(flag) {
            server_args.extend([flag.into(), "0".into()]);
        }
    }
    if !given("--max-connections") && args.clients > 10_000 {
        server_args.extend(["--max-connections".into(), args.clients.to_string().into()]);
    }
    server_args.extend(args.server_args.iter().map(OsString::from));
    let mut server = ServerProcess::start_for_bench(&server_args, false)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let result = rt.block_on(drive(&args, &mut server));
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(server);
    let report = result?;
    println!("{report}");
    if report["ok"] != serde_json::Value::Bool(true) {
        bail!("the soak run found problems: {}", report["reasons"]);
    }
    Ok(())
}

fn shared(args: &SoakArgs, server: &ServerProcess, end: Instant, warmup: bool) -> Arc<Shared> {
    Arc::new(Shared {
        port: server.port,
        rooms: args.rooms,
        grace: Duration::from_secs(args.resume_grace_secs),
        action_secs: args.action_secs,
        fin_drops: args.fin_drops,
        end,
        ws_config: WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(1024 * 1024))
            .max_frame_size(Some(1024 * 1024)),
        connect_slots: Semaphore::new(args.connect_concurrency),
        c: Counts::default(),
        joining: Mutex::new(HashSet::new()),
        ended: Mutex::new(HashSet::new()),
        left_at: Mutex::new(HashMap::new()),
        witnessed: Mutex::new(Vec::new()),
        reported: AtomicU64::new(0),
        warmup,
        prober: server.prober(),
        memory: Mutex::new(Vec::new()),
    })
}

/// Runs every client of `sh` to its end, for at most `limit`; returns how many did not finish.
async fn run_clients(sh: &Arc<Shared>, clients: usize, seed: u64, stagger: Duration, limit: Duration) -> usize {
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let start = t0 + stagger.mul_f64(i as f64 / clients as f64);
        tasks.spawn(Client::new(i, sh.clone(), seed).run(start));
    }
    let deadline = t0 + limit;
    let mut last_print = Instant::now();
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline.min(Instant::now() + Duration::from_secs(1)), tasks.join_next()).await {
            Ok(_) => {}
            Err(_) if Instant::now() >= deadline => {
                let left = tasks.len();
                eprintln!("{left} clients still running after {limit:?}; stopping them");
                tasks.abort_all();
                return left;
            }
            Err(_) => {}
        }
        if !sh.warmup && last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            let c = &sh.c;
            let probe = tokio::task::block_in_place(|| sh.prober.probe(false)).unwrap_or_default();
            let (rss, heap) = (probe.rss_kb, probe.heap_in_use_kb);
            lock(&sh.memory).push((t0.elapsed().as_secs_f64().round(), rss, heap));
            eprintln!(
                "t={:>5.0}s RSS {rss} KiB heap in use {} KiB running {} chats {} reconnects {} resumes {} rejoins {} lost {} dup {} unexpected {} failures {}",
                t0.elapsed().as_secs_f64(),
                heap.unwrap_or(0),
                tasks.len(),
                c.chats.load(Relaxed),
                c.reconnects.load(Relaxed),
                c.resumes.load(Relaxed),
                c.rejoins.load(Relaxed),
                c.lost.load(Relaxed),
                c.duplicated.load(Relaxed),
                c.unexpected_leave_join.load(Relaxed),
                c.client_failures.load(Relaxed),
            );
        }
    }
    0
}

/// Watches the room list until it is empty (or `limit` passes); the number of rooms last seen.
async fn rooms_left(sh: &Arc<Shared>, limit: Duration) -> anyhow::Result<usize> {
    let mut c = Client::new(usize::MAX, sh.clone(), 0);
    c.connect_new().await?;
    c.send(&ClientMsg::WatchRooms).await?;
    let deadline = Instant::now() + limit;
    let mut last = usize::MAX;
    while let Some(msg) = c.recv(deadline).await? {
        if let ServerMsg::Rooms { rooms } = msg {
            last = rooms.len();
            if last == 0 {
                break;
            }
        }
    }
    c.close().await;
    Ok(last)
}

/// `GET /metrics`: `None` when the server has none (404), else its gauges by name.
async fn metrics(port: u16) -> anyhow::Result<Option<HashMap<String, f64>>> {
    let mut tcp = timeout(Duration::from_secs(5), TcpStream::connect(("127.0.0.1", port))).await??;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await?;
    let mut body = Vec::new();
    timeout(Duration::from_secs(5), (&mut tcp).take(4 << 20).read_to_end(&mut body)).await??;
    let text = String::from_utf8_lossy(&body);
    let status = text.split_whitespace().nth(1).unwrap_or("");
    if status == "404" {
        return Ok(None);
    }
    if status != "200" {
        bail!("GET /metrics answered {status}");
    }
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.trim().to_string(), value.trim().parse().ok()?))
            })
            .collect(),
    ))
}

/// The gauges that must be at rest ([`crate::server::gauge_at_rest`]) when nobody is connected.
fn nonzero_gauges(m: &HashMap<String, f64>) -> Vec<String> {
    m.iter()
        .filter(|(name, v)| {
            let base = name.split('{').next().unwrap_or(name);
            ["connections", "rooms", "participants", "suspended"].iter().any(|g| base.ends_with(&format!("_{g}")))
                && **v > crate::server::gauge_at_rest(base)
        })
        .map(|(n, v)| format!("{n}={v}"))
        .collect()
}

/// At most `n` of `samples`, evenly spread, the last one included.
fn thin<T: Copy>(samples: &[T], n: usize) -> Vec<T> {
    let step = samples.len().div_ceil(n.max(1)).max(1);
    let mut out: Vec<_> = samples.iter().rev().step_by(step).copied().collect();
    out.reverse();
    out
}

/// The server at rest (nobody connected, grace periods over): the baseline after the warm-up,
/// and again after each wave.
#[derive(Clone, Copy, Debug)]
struct Rest {
    rss_kb: u64,
    /// `VmRSS` once the allocator has given its free memory back to the system (`malloc_trim`):
    /// what the process really holds, retention aside.
    rss_trimmed_kb: u64,
    /// Heap handed out and not freed, and free heap the allocator keeps track of (glibc only;
    /// free pages it gave back to the system still count here).
    heap_in_use_kb: Option<u64>,
    heap_free_kb: Option<u64>,
    tasks: usize,
    fds: usize,
    threads: u64,
}

impl Rest {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "rss_kb": self.rss_kb,
            "rss_trimmed_kb": self.rss_trimmed_kb,
            "heap_in_use_kb": self.heap_in_use_kb,
            "heap_free_kb": self.heap_free_kb,
            "tasks": self.tasks,
            "fds": self.fds,
            "threads": self.threads,
        })
    }
}

/// Reads the server at rest. Connection tasks of clients that just closed may take a moment to
/// end: with `tasks_at_most`, waits (up to 5 s) for the task count to come down to it.
async fn at_rest(server: &ServerProcess, tasks_at_most: Option<usize>) -> anyhow::Result<Rest> {
    let pid = server.pid();
    let prober = server.prober();
    let deadline = Instant::now() + Duration::from_secs(5);
    let probe = loop {
        let p = tokio::task::block_in_place(|| prober.probe(false))?;
        if tasks_at_most.is_none_or(|t| p.tasks <= t) || Instant::now() >= deadline {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (fds, threads) = (procfs::fd_count(pid)?, procfs::threads(pid)?);
    let trimmed = tokio::task::block_in_place(|| prober.probe(true))?;
    Ok(Rest {
        rss_kb: probe.rss_kb,
        rss_trimmed_kb: trimmed.rss_kb,
        heap_in_use_kb: probe.heap_in_use_kb,
        heap_free_kb: probe.heap_free_kb,
        tasks: probe.tasks,
        fds,
        threads,
    })
}

/// What one wave found at its end, besides its counters.
struct WaveEnd {
    secs: f64,
    unfinished: usize,
    rooms: usize,
    /// The `/metrics` gauges that were not 0 (`null`: the server has no `/metrics`).
    gauges: serde_json::Value,
    rest: Rest,
}

/// One wave: every client lives its life (from `args.seed`) for `secs`, then everyone has left;
/// after the grace period the server must have no rooms, its gauges must be 0, and it is read
/// at rest.
async fn wave(
    args: &SoakArgs,
    server: &mut ServerProcess,
    sh: &Arc<Shared>,
    t0: Instant,
    stagger: Duration,
    tasks_at_most: usize,
) -> anyhow::Result<WaveEnd> {
    let grace = Duration::from_secs(args.resume_grace_secs);
    let connect_limit = Duration::from_secs(60) + Duration::from_millis(20 * args.clients as u64);
    let limit = (sh.end - t0) + grace * 2 + connect_limit;
    let unfinished = run_clients(sh, args.clients, args.seed, stagger, limit).await;
    let secs = t0.elapsed().as_secs_f64();
    if !server.alive() {
        bail!("the server process exited during the run");
    }
    // Sessions given up at the end of the wave end after the grace period.
    tokio::time::sleep(grace + Duration::from_secs(1)).await;
    let rooms = rooms_left(sh, Duration::from_secs(10)).await?;
    let mut gauges = serde_json::Value::Null;
    for _ in 0..10 {
        match metrics(server.port).await {
            Ok(None) => break,
            Ok(Some(m)) => {
                let bad = nonzero_gauges(&m);
                gauges = serde_json::json!(bad);
                if bad.is_empty() {
                    break;
                }
            }
            Err(e) => {
                gauges = serde_json::json!([format!("GET /metrics failed: {e:#}")]);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rest = at_rest(server, Some(tasks_at_most)).await?;
    Ok(WaveEnd { secs, unfinished, rooms, gauges, rest })
}

/// The tail check of one wave: whoever left had every chat its witnesses saw before its
/// `peer_left`. `(chats lost, checks made)`.
fn tail_check(sh: &Shared) -> (u64, u64) {
    let (mut lost, mut checked) = (0u64, 0u64);
    let left_at = lock(&sh.left_at);
    for (session, room, k) in lock(&sh.witnessed).iter() {
        if let Some(&had) = left_at.get(&(session.clone(), *room)) {
            checked += 1;
            if had < *k {
                lost += k - had;
                sh.note_n(
                    &AtomicU64::new(0),
                    0,
                    usize::MAX,
                    format_args!("{session} left soak-{room} with chat {had}, a witness had {k}"),
                );
            }
        }
    }
    (lost, checked)
}

/// Allowed growth over `base`: `pct` percent of it plus `kb`.
fn allowed(base: u64, pct: f64, kb: u64) -> u64 {
    base + (base as f64 * pct / 100.0) as u64 + kb
}

async fn drive(args: &SoakArgs, server: &mut ServerProcess) -> anyhow::Result<serde_json::Value> {
    let pid = server.pid();
    let grace = Duration::from_secs(args.resume_grace_secs);
    let mut reasons: Vec<String> = Vec::new();
    let connect_limit = Duration::from_secs(60) + Duration::from_millis(20 * args.clients as u64);

    // 1. Warm-up (the same life, shorter) and baseline.
    let warm_secs = (args.duration_secs / 5.0).min(60.0);
    let warm_stagger = Duration::from_secs_f64(warm_secs / 4.0);
    let t = Instant::now();
    let warm_end = t + warm_stagger + Duration::from_secs_f64(warm_secs);
    let warm = shared(args, server, warm_end, true);
    let limit = (warm_end - t) + grace * 2 + connect_limit;
    let unfinished = run_clients(&warm, args.clients, args.seed ^ 0x5EED, warm_stagger, limit).await;
    let warm_failed = warm.c.client_failures.load(Relaxed) as usize + unfinished;
    eprintln!("warm-up: {} clients in {:.1} s, {warm_failed} failed", args.clients, t.elapsed().as_secs_f64());
    if warm_failed > 0 {
        reasons.push(format!("{warm_failed} clients failed in the warm-up"));
    }
    // Sessions given up in the warm-up end after the grace period.
    tokio::time::sleep(grace + Duration::from_secs(1)).await;
    let rooms = rooms_left(&warm, Duration::from_secs(10)).await?;
    if rooms != 0 {
        reasons.push(format!("{rooms} rooms left after the warm-up"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = at_rest(server, None).await?;
    eprintln!("baseline: {base:?}");

    // 2. The waves, each the same life (the same seed) for an equal share of the run.
    let wave_secs = args.duration_secs / args.waves as f64;
    let stagger = Duration::from_secs_f64((wave_secs / 4.0).min(10.0));
    eprintln!(
        "soak: {} clients in {} rooms for {:.0} s in {} waves (seed {}, an action every {:.1} s, grace {} s)",
        args.clients, args.rooms, args.duration_secs, args.waves, args.seed, args.action_secs, args.resume_grace_secs
    );
    let mut waves: Vec<(Arc<Shared>, WaveEnd)> = Vec::new();
    for w in 1..=args.waves {
        let t0 = Instant::now();
        let sh = shared(args, server, t0 + stagger + Duration::from_secs_f64(wave_secs), false);
        eprintln!("wave {w} of {}", args.waves);
        let end = wave(args, server, &sh, t0, stagger, base.tasks).await?;
        eprintln!("after wave {w}: {:?}", end.rest);
        waves.push((sh, end));
    }

    // 3. The checks: nothing lost, nothing left; what each wave kept.
    let total = |f: fn(&Counts) -> &AtomicU64| waves.iter().map(|(sh, _)| f(&sh.c).load(Relaxed)).sum::<u64>();
    let (mut tail_lost, mut tail_checked) = (0, 0);
    for (sh, _) in &waves {
        let (lost, checked) = tail_check(sh);
        tail_lost += lost;
        tail_checked += checked;
    }
    let unfinished: u64 = waves.iter().map(|(_, e)| e.unfinished as u64).sum();
    let lost = total(|c| &c.lost) + tail_lost;
    let client_failures = total(|c| &c.client_failures) + unfinished;
    for (what, v) in [
        ("lost", lost),
        ("duplicated", total(|c| &c.duplicated)),
        ("out_of_order", total(|c| &c.out_of_order)),
        ("unexpected_leave_join", total(|c| &c.unexpected_leave_join)),
        ("resume_wrong", total(|c| &c.resume_wrong)),
        ("server_errors", total(|c| &c.server_errors)),
        ("client_failures", client_failures),
    ] {
        if v > 0 {
            reasons.push(format!("{what}: {v}"));
        }
    }
    for (w, (_, end)) in waves.iter().enumerate() {
        let w = w + 1;
        if end.rooms != 0 {
            reasons.push(format!("{} rooms after wave {w}", end.rooms));
        }
        if let Some(bad) = end.gauges.as_array().filter(|b| !b.is_empty()) {
            reasons.push(format!("/metrics after wave {w}: {bad:?}"));
        }
        let rest = &end.rest;
        if rest.tasks > base.tasks {
            reasons.push(format!("tasks grew from {} to {} (wave {w})", base.tasks, rest.tasks));
        }
        if rest.fds > base.fds + 2 {
            reasons.push(format!("open files grew from {} to {} (wave {w})", base.fds, rest.fds));
        }
        if rest.threads > base.threads + 8 {
            reasons.push(format!("threads grew from {} to {} (wave {w})", base.threads, rest.threads));
        }
        // A leak: heap still in use when everyone has gone.
        if let (Some(b), Some(e)) = (base.heap_in_use_kb, rest.heap_in_use_kb) {
            let max = allowed(b, args.heap_slack_pct, args.heap_slack_kb);
            if e > max {
                reasons.push(format!("heap in use grew from {b} KiB to {e} KiB (wave {w}, allowed {max})"));
            }
        }
    }
    // Retention levels off; a leak grows with every wave: after the first wave, memory is reused.
    let first = &waves[0].1.rest;
    let last = &waves[waves.len() - 1].1.rest;
    let rss_max = allowed(first.rss_kb, args.rss_slack_pct, args.rss_slack_kb);
    if last.rss_kb > rss_max {
        reasons.push(format!(
            "RSS grew from {} KiB after the first wave to {} KiB after the last (allowed {rss_max})",
            first.rss_kb, last.rss_kb
        ));
    }
    let rss_peak_kb = procfs::rss_peak_kb(pid)?;
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let ok = reasons.is_empty();
    let wave_json: Vec<serde_json::Value> = waves
        .iter()
        .map(|(sh, end)| {
            let mut v = end.rest.json();
            v["run_secs"] = serde_json::json!((end.secs * 10.0).round() / 10.0);
            v["rooms_end"] = serde_json::json!(end.rooms);
            v["metrics_nonzero"] = end.gauges.clone();
            v["during_run"] = serde_json::json!(thin(&lock(&sh.memory), 6));
            v
        })
        .collect();
    let diff = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| a as i64 - b as i64);
    Ok(serde_json::json!({
        "mode": "soak",
        "clients": args.clients,
        "rooms": args.rooms,
        "duration_secs": args.duration_secs,
        "waves": args.waves,
        "run_secs": (waves.iter().map(|(_, e)| e.secs).sum::<f64>() * 10.0).round() / 10.0,
        "seed": args.seed,
        "resume_grace_secs": args.resume_grace_secs,
        "joins": total(|c| &c.joins),
        "leaves": total(|c| &c.leaves),
        "chats": total(|c| &c.chats),
        "hands": total(|c| &c.hands),
        "reacts": total(|c| &c.reacts),
        "reconnects": total(|c| &c.reconnects),
        "resumes": total(|c| &c.resumes),
        "rejoins": total(|c| &c.rejoins),
        "expired": total(|c| &c.expired),
        "wrong_secret": total(|c| &c.wrong_secret),
        "messages_sent": total(|c| &c.sent),
        "messages_received": total(|c| &c.received),
        "gap_chats_replayed": total(|c| &c.gap_chats),
        "lost": lost,
        "duplicated": total(|c| &c.duplicated),
        "out_of_order": total(|c| &c.out_of_order),
        "unexpected_leave_join": total(|c| &c.unexpected_leave_join),
        "resume_wrong": total(|c| &c.resume_wrong),
        "tail_checks": tail_checked,
        "server_errors": total(|c| &c.server_errors),
        "client_failures": client_failures,
        "rooms_end": waves.iter().map(|(_, e)| e.rooms).max().unwrap_or(0),
        "baseline": base.json(),
        "after_wave": wave_json,
        "rss_baseline_kb": base.rss_kb,
        "rss_end_kb": last.rss_kb,
        "rss_peak_kb": rss_peak_kb,
        "rss_growth_after_first_wave_kb": last.rss_kb as i64 - first.rss_kb as i64,
        "heap_in_use_growth_kb": diff(last.heap_in_use_kb, base.heap_in_use_kb),
        "loadavg": loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "ok": ok,
        "reasons": reasons,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_seeded() {
        let (mut a, mut b) = (Rng(7), Rng(7));
        assert_eq!((a.next(), a.next()), (b.next(), b.next()));
        assert!((0..1000).all(|_| a.unit() < 1.0 && a.below(5) < 5));
    }

    #[test]
    fn gauges_that_must_be_zero() {
        let m: HashMap<String, f64> = [
            ("huddle_connections".to_string(), 0.0),
            ("huddle_rooms".to_string(), 2.0),
            ("huddle_messages_total".to_string(), 9.0),
            ("huddle_tcp_connections".to_string(), 1.0),
        ]
        .into_iter()
        .collect();
        assert_eq!(nonzero_gauges(&m), vec!["huddle_rooms=2".to_string()]);
    }
}
