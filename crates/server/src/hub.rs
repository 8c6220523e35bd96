//! The hub: the single owner of every connection's outbox, every room and the room list.
//!
//! Connection tasks never touch shared state; they send [`Command`]s over one bounded channel,
//! and the hub task applies them one at a time ([`Hub::handle`]) and answers through each
//! connection's bounded outbox with `try_send`. A connection whose outbox is full is evicted
//! (reason `too_slow`) instead of stalling the room. [`Hub`] itself does no I/O and reads no
//! clock but the wall-clock timestamp of chat messages, so it is unit-tested directly below.
//!
//! This is the seam for scale-out: a Redis-backed implementation would replace this task,
//! behind the same `Command` interface, without touching the connection code.

use crate::config::{Config, TopologyMode};
use crate::files::{FileCommand, FileLimits, FileStore};
use crate::media::{MediaCommand, MediaEvent};
use crate::room::password::PasswordHash;
use crate::room::{Held, Room, Waiter};
use crate::tokens::Tokens;
use crate::turn::{TurnCommand, TurnHandle};
use crate::validate;
use huddle_protocol::{
    ByeReason, ClientMsg, ErrorCode, IceServer, Knocker, LeaveReason, ModAction, Peer, PeerId, Role, RoomSummary,
    SdpType, ServerMsg, SessionDescription, SignalPayload, Topology, PROTOCOL_VERSION, REACTIONS, SFU_PEER_ID,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
// The runtime's clock, so that grace periods follow a paused clock in tests.
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// What a connection task receives to write to its socket (see [`crate::outbox`]).
pub use crate::outbox::{Frame, Outbox};

/// Most rooms listed in one `rooms` message.
pub const ROOM_LIST_MAX: usize = 100;
/// How often the room list is pushed to watchers at most.
pub const ROOM_LIST_INTERVAL: Duration = Duration::from_millis(200);
/// In `auto` mode, the head count at which a room moves from peer-to-peer to the SFU.
pub const AUTO_SFU_FROM: usize = 3;

/// Messages kept per in-room session for replay when it resumes on a new connection.
pub const RESUME_BUFFER: usize = 128;
/// At most one release of freed memory this often (see [`run`]): the first one after a crowd has
/// left gives back nearly everything; a lone visitor coming and going does not trim every time.
pub const MEMORY_RELEASE_INTERVAL: Duration = Duration::from_secs(10);
/// The longest invite a host may ask for.
pub const MAX_INVITE_SECS: u32 = 7 * 86_400;
/// The default lifetime of an invite.
pub const DEFAULT_INVITE_SECS: u32 = 86_400;
/// Password hashes and checks queued or running at once (see [`Job`]); beyond, a join with a
/// password or a new password is refused with `rate_limited`.
pub const MAX_JOBS_IN_FLIGHT: usize = 64;

/// Work too slow for the hub task, which runs every room: hashing a new room password and
/// checking one a join gives (PBKDF2, milliseconds each; see [`crate::room::password`]). In the
/// server they run one at a time on a blocking thread and come back to the hub as [`JobDone`]
/// ([`run`]); a hub that was not given a place to run them ([`Hub::run_jobs_elsewhere`]: unit
/// tests, the fuzz target) runs them at once, in the same order of events.
enum Job {
    /// Whether `req.password` is the password of `room` (opened as `instance`, at password
    /// generation `gen`), for session `id`'s join.
    Verify { id: PeerId, req: JoinRequest, room: Arc<str>, instance: String, gen: u32, hash: PasswordHash },
    /// A host's new password for `room`, the `seq`-th change asked for.
    Hash { room: Arc<str>, instance: String, seq: u64, password: String },
}

impl Job {
    fn run(self) -> Done {
        match self {
            Job::Verify { id, req, room, instance, gen, hash } => {
                let ok = hash.verify(req.password.as_deref().map(str::trim).unwrap_or_default());
                Done::Verified { id, req, room, instance, gen, ok }
            }
            Job::Hash { room, instance, seq, password } => {
                Done::Hashed { room, instance, seq, hash: PasswordHash::new(&password) }
            }
        }
    }
}

/// A [`Job`] done, for [`Hub::job_done`].
pub struct JobDone(Done);

enum Done {
    Verified { id: PeerId, req: JoinRequest, room: Arc<str>, instance: String, gen: u32, ok: bool },
    Hashed { room: Arc<str>, instance: String, seq: u64, hash: PasswordHash },
}

/// Where the hub's [`Job`]s run: one at a time, each on a blocking thread.
struct Jobs {
    done: mpsc::UnboundedSender<JobDone>,
    one_at_a_time: Arc<tokio::sync::Semaphore>,
}

/// Requests to the hub.
#[derive(Debug)]
pub enum Command {
    /// A connection opened (see [`Connect`]).
    Connect(Connect),
    /// A connection ended. `conn` tells a stale connection of a resumed session from the current;
    /// `resumable: false` (the peer broke the protocol) ends the session without a grace period.
    Disconnect { id: PeerId, conn: u64, reason: LeaveReason, resumable: bool },
    /// A valid message from a connection.
    Client { id: PeerId, msg: ClientMsg },
    /// A connection sent something the rate limits dropped without an answer (counted for
    /// `welcome.received`).
    Ignored { id: PeerId },
    /// A connection sent something unacceptable; answer with this error.
    Reject { id: PeerId, code: ErrorCode, request: Option<String> },
    /// Say goodbye to everyone and close all outboxes; `done` fires when every connection is gone.
    Shutdown { done: oneshot::Sender<()> },
    /// Counters, for tests and monitoring.
    Stats { reply: oneshot::Sender<Stats> },
    /// Something the SFU has for a participant.
    Media(MediaEvent),
    /// From the file upload and download handlers.
    Files(FileCommand),
}

/// A connection opened.
#[derive(Debug)]
pub struct Connect {
    /// A number unique to this connection.
    pub conn: u64,
    /// The id it gets unless it resumes a session.
    pub id: PeerId,
    pub outbox: Outbox,
    /// Fires if the hub disconnects it.
    pub kick: oneshot::Sender<ByeReason>,
    /// The host name the page reached the server by (from `Host`, checked), for TURN URLs.
    pub host: Option<String>,
    /// The client's address (behind a trusted proxy, the one it names); for bans, never logged
    /// above debug.
    pub ip: IpAddr,
    /// The session it asks to take over.
    pub resume: Option<Resume>,
    /// Answered with the session id the connection speaks for from now on.
    pub session: oneshot::Sender<PeerId>,
}

/// `/ws?session=<id>&resume=<secret>&seen=<n>`: carry on session `id`, whose page has received
/// `seen` messages (not counting `welcome`s).
#[derive(Clone, Debug)]
pub struct Resume {
    pub id: PeerId,
    pub secret: String,
    pub seen: u64,
}

/// The format of [`Hub::save_for_restart`]; a file of another version is not read. (2: room
/// passwords as hashes, room instances and invite generations, `listed`.)
const SNAPSHOT_VERSION: u32 = 2;

/// What a restart hands over: rooms (`R`: the room, or a reference to it while saving) and the
/// sessions in them.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedHub<R> {
    version: u32,
    /// Seconds since the epoch.
    saved_at: u64,
    /// The highest connection number handed out: the next start numbers its peer ids above it,
    /// so that no id (which bans and chat history name) goes to someone else.
    #[serde(default)]
    last_conn: u64,
    sessions: Vec<SavedSession>,
    rooms: Vec<(String, R)>,
}

/// One in-room session as [`Conn`] holds it, less its connection.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedSession {
    id: PeerId,
    secret: String,
    room: String,
    sent: u64,
    received: u64,
    recent: Vec<ServerMsg>,
    keys: Vec<String>,
    ip: IpAddr,
    host: Option<String>,
    /// Its relay user, granted again by the next start (older files have none: a resume makes one).
    #[serde(default)]
    turn_user: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: usize,
    pub rooms: usize,
    pub participants: usize,
    pub evicted_too_slow: u64,
    pub rejected: u64,
    /// Commands for the SFU dropped because its queue was full.
    pub media_commands_dropped: u64,
    /// Sessions without a connection, waiting to be resumed.
    pub suspended: usize,
    /// People in waiting rooms.
    pub waiting: usize,
    pub resumed: u64,
    /// Resumes refused (unknown session, wrong secret, too much missed).
    pub resume_failed: u64,
    /// Times the last session ended and the allocator's free memory went back to the system.
    pub memory_releases: u64,
}

struct Conn {
    /// `None` once shutdown has closed it, or while the session is suspended.
    outbox: Option<Outbox>,
    kick: Option<oneshot::Sender<ByeReason>>,
    /// Shared with the `rooms` key, so the per-message room check clones a pointer, not a string.
    room: Option<Arc<str>>,
    /// The room whose waiting room it is in.
    waiting_in: Option<Arc<str>>,
    host: Option<String>,
    /// The attached connection's number.
    conn: u64,
    /// The secret that resumes this session.
    secret: String,
    /// Messages offered to this session, `welcome`s not counted.
    sent: u64,
    /// Messages taken from this session's connections (valid or refused).
    received: u64,
    /// The last messages offered while in a room (at most [`RESUME_BUFFER`], and at most
    /// `outbox_bytes` of them: a client cannot make the server keep more for it by being sent
    /// large messages).
    recent: VecDeque<Frame>,
    /// The bytes of `recent`.
    recent_bytes: usize,
    /// While the session has no connection: when it gives up its place.
    suspended: Option<Instant>,
    /// What would ban it from a room (`id:<peer id>`, `ip:<address>`, `sub:<token subject>`).
    keys: Vec<String>,
    /// The client's address, as of its latest connection.
    ip: IpAddr,
    /// Its join waits for a password check ([`Job::Verify`]).
    checking: bool,
    /// Its relay user (`s.<random>`) while it is in a room and huddle's TURN server runs: its
    /// credentials allocate from entering the room to leaving it (see [`Hub::start_relay`]).
    turn_user: Option<String>,
    /// When its relay credentials are next renewed (`ice_servers`).
    ice_renew: Option<Instant>,
}

impl Conn {
    /// Queues `msg` without waiting; `false` when the outbox is full (the client is too slow).
    /// `max_recent_bytes` bounds the resume buffer.
    fn offer(&mut self, msg: Frame, max_recent_bytes: usize) -> bool {
        self.sent += 1;
        if self.room.is_some() || self.waiting_in.is_some() {
            self.recent_bytes += msg.len();
            self.recent.push_back(msg.clone());
            while self.recent.len() > RESUME_BUFFER || self.recent_bytes > max_recent_bytes {
                let Some(old) = self.recent.pop_front() else { break };
                self.recent_bytes -= old.len();
            }
        }
        match &self.outbox {
            Some(outbox) => outbox.try_send(msg) != Err(crate::outbox::Refused::Full),
            None => true,
        }
    }

    fn forget_recent(&mut self) {
        self.recent.clear();
        self.recent_bytes = 0;
    }
}

pub struct Hub {
    config: Arc<Config>,
    conns: HashMap<PeerId, Conn>,
    rooms: HashMap<Arc<str>, Room>,
    watchers: HashSet<PeerId>,
    rooms_dirty: bool,
    /// Connections whose outbox overflowed during the current command; evicted after it.
    overflowed: Vec<PeerId>,
    shutdown: Option<oneshot::Sender<()>>,
    /// Set by `Shutdown` for good: connections opening afterwards are turned away, even once
    /// `shutdown` has fired and is gone.
    closing: bool,
    stats: Stats,
    /// The SFU task; `None` when media never goes through the server (`--topology p2p`).
    media: Option<mpsc::Sender<MediaCommand>>,
    /// Files shared through the server.
    files: FileStore,
    /// The built-in TURN server, whose credentials every session in a room gets, and its task
    /// (weak: it stops when its owner drops it), told whose credentials are live.
    turn: Option<(TurnHandle, mpsc::WeakSender<TurnCommand>)>,
    /// The highest connection number seen (saved for a restart, see [`SavedHub::last_conn`]).
    last_conn: u64,
    tokens: Tokens,
    rng: aws_lc_rs::rand::SystemRandom,
    /// The sessions were saved for a restart ([`Hub::save_for_restart`]).
    saved: bool,
    /// Where password hashes and checks run; `None`: at once, on this task.
    jobs: Option<Jobs>,
    jobs_in_flight: usize,
}

impl Hub {
    /// A hub without an SFU: every room is peer-to-peer, whatever the configured topology.
    pub fn new(config: Arc<Config>) -> Hub {
        let dir = crate::files::hub_dir(config.file_dir.as_deref());
        Hub {
            media: None,
            files: FileStore::new(dir, FileLimits::from(&*config)),
            tokens: Tokens::new(config.token_secret.as_deref().map(str::as_bytes), config.token_public_key.clone()),
            config,
            conns: HashMap::new(),
            rooms: HashMap::new(),
            watchers: HashSet::new(),
            rooms_dirty: false,
            overflowed: Vec::new(),
            shutdown: None,
            closing: false,
            stats: Stats::default(),
            turn: None,
            last_conn: 0,
            rng: aws_lc_rs::rand::SystemRandom::new(),
            saved: false,
            jobs: None,
            jobs_in_flight: 0,
        }
    }

    /// Runs password hashes and checks on blocking threads, one at a time, and sends them back
    /// through `done` (which [`run`] reads), instead of on the hub's own task.
    pub fn run_jobs_elsewhere(&mut self, done: mpsc::UnboundedSender<JobDone>) {
        self.jobs = Some(Jobs { done, one_at_a_time: Arc::new(tokio::sync::Semaphore::new(1)) });
    }

    /// Starts `job`, or runs it now when the hub has nowhere else to run it.
    fn start_job(&mut self, job: Job) -> Result<(), ErrorCode> {
        let Some(jobs) = &self.jobs else {
            let done = job.run();
            self.apply_job(done);
            return Ok(());
        };
        if self.jobs_in_flight >= MAX_JOBS_IN_FLIGHT {
            return Err(ErrorCode::RateLimited);
        }
        self.jobs_in_flight += 1;
        let (done, one_at_a_time) = (jobs.done.clone(), jobs.one_at_a_time.clone());
        tokio::spawn(async move {
            // The semaphore is never closed; the permit only orders the jobs.
            let _permit = one_at_a_time.acquire_owned().await;
            if let Ok(result) = tokio::task::spawn_blocking(move || job.run()).await {
                let _ = done.send(JobDone(result));
            }
        });
        Ok(())
    }

    /// A job started elsewhere is done.
    pub fn job_done(&mut self, done: JobDone) {
        self.jobs_in_flight = self.jobs_in_flight.saturating_sub(1);
        self.apply_job(done.0);
        self.evict_overflowed();
    }

    fn apply_job(&mut self, done: Done) {
        match done {
            Done::Verified { id, req, room, instance, gen, ok } => {
                let Some(conn) = self.conns.get_mut(&id) else { return };
                conn.checking = false;
                if let Err(code) = self.password_checked(&id, req, &room, &instance, gen, ok) {
                    debug!(peer = %id, %code, "join refused after the password check");
                    self.send(&id, ServerMsg::error(code, Some("join")));
                }
            }
            Done::Hashed { room, instance, seq, hash } => {
                let Some(r) = self.rooms.get_mut(&room) else { return };
                if r.instance() != instance || r.password_seq() != seq {
                    // The room closed, or the password was changed again since.
                    return;
                }
                r.set_password(Some(hash));
                let settings = r.settings();
                info!("room password set");
                self.rooms_dirty = true;
                self.broadcast(&room, None, Arc::new(ServerMsg::RoomSettings { settings }));
            }
        }
    }

    /// Carries on a join whose password was checked: in if it was right and everything else
    /// still allows it; checked again if the password changed meanwhile.
    fn password_checked(
        &mut self,
        id: &PeerId,
        req: JoinRequest,
        room: &Arc<str>,
        instance: &str,
        gen: u32,
        ok: bool,
    ) -> Result<(), ErrorCode> {
        let Some(r) = self.rooms.get_mut(room).filter(|r| r.instance() == instance) else {
            // The meeting ended while the password was being checked.
            return Err(ErrorCode::RoomClosed);
        };
        if r.password_gen() != gen {
            r.guesses().refund();
            return self.join(id, req);
        }
        if ok {
            r.guesses().refund();
            return self.join_checked(id, req, Some(gen));
        }
        if let Some(failed) = r.guesses().failed(Instant::now()) {
            warn!(failed, "wrong passwords keep coming at a room; joins with a password are paused");
            self.tell_moderators(room, Arc::new(ServerMsg::PasswordAttempts { failed }));
        }
        Err(ErrorCode::WrongPassword)
    }

    /// Hands out credentials of the built-in TURN server (whose task `commands` reaches) with the
    /// ICE servers of everyone in a room.
    pub fn set_turn(&mut self, turn: TurnHandle, commands: mpsc::WeakSender<TurnCommand>) {
        self.turn = Some((turn, commands));
    }

    /// The configured ICE servers, then the built-in STUN/TURN server with the credentials of
    /// `id`'s relay user (if it has one: it is in a room).
    fn ice_servers(&self, id: &PeerId) -> Vec<IceServer> {
        let mut out = self.config.ice_servers.clone();
        let conn = self.conns.get(id);
        if let (Some((turn, _)), Some(user)) = (&self.turn, conn.and_then(|c| c.turn_user.as_deref())) {
            out.push(turn.ice_servers(user, conn.and_then(|c| c.host.as_deref()), self.turn_fallback_host()));
        }
        out
    }

    /// Where pages reach the TURN server when their `Host` header named nothing usable.
    fn turn_fallback_host(&self) -> IpAddr {
        let listen = self.config.listen.ip();
        if listen.is_unspecified() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            listen
        }
    }

    fn tell_turn(&mut self, cmd: TurnCommand) {
        let Some(tx) = self.turn.as_ref().and_then(|(_, tx)| tx.upgrade()) else { return };
        if let Err(e) = tx.try_send(cmd) {
            // Sized for every join and leave at once; a lost grant refuses that session the relay
            // (401), a lost revocation leaves its relays until their lifetime or its next session.
            warn!(cmd = ?e.into_inner(), "TURN command queue full; a command was dropped");
        }
    }

    /// Gives `id` (entering a room) a relay user of its own, granted to the TURN server until it
    /// leaves ([`Hub::end_relay`]), and the time to renew its credentials.
    fn start_relay(&mut self, id: &PeerId) {
        let Some((turn, _)) = &self.turn else { return };
        let renew = Instant::now() + turn.credential_ttl / 2;
        let Some(conn) = self.conns.get_mut(id) else { return };
        conn.ice_renew = Some(renew);
        if conn.turn_user.is_some() {
            return;
        }
        let user = crate::turn::session_user();
        conn.turn_user = Some(user.clone());
        self.tell_turn(TurnCommand::Grant { users: vec![user] });
    }

    /// `id` left its room: its relay credentials are dead and its relays close.
    fn end_relay(&mut self, id: &PeerId) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        conn.ice_renew = None;
        if let Some(user) = conn.turn_user.take() {
            self.tell_turn(TurnCommand::Revoke { user });
        }
    }

    /// Sends `id` fresh credentials for its ICE servers (`ice_servers`) and sets the next renewal.
    fn renew_relay(&mut self, id: &PeerId, now: Instant) {
        let Some((turn, _)) = &self.turn else { return };
        let next = now + turn.credential_ttl / 2;
        let ice_servers = self.ice_servers(id);
        if let Some(conn) = self.conns.get_mut(id) {
            conn.ice_renew = Some(next);
        }
        self.send(id, ServerMsg::IceServers { ice_servers });
    }

    /// A hub whose `sfu` rooms are served by the SFU task behind `media`.
    pub fn with_media(config: Arc<Config>, media: mpsc::Sender<MediaCommand>) -> Hub {
        Hub { media: Some(media), ..Hub::new(config) }
    }

    /// Applies one command. Never blocks.
    pub fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Connect(c) => self.connect(c),
            Command::Disconnect { id, conn, reason, resumable } => {
                if self.conns.get(&id).is_some_and(|c| c.conn == conn) {
                    if resumable {
                        self.disconnected(&id, reason);
                    } else {
                        self.disconnect(&id, reason);
                    }
                }
            }
            Command::Client { id, msg } => self.client(&id, msg),
            Command::Ignored { id } => self.count_received(&id),
            Command::Reject { id, code, request } => {
                self.count_received(&id);
                self.stats.rejected += 1;
                self.send(&id, ServerMsg::error(code, request.as_deref()));
            }
            Command::Shutdown { done } => self.begin_shutdown(done),
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::Media(event) => self.media_event(event),
            Command::Files(cmd) => self.file_command(cmd),
        }
        self.evict_overflowed();
    }

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len(),
            rooms: self.rooms.len(),
            participants: self.rooms.values().map(Room::len).sum(),
            suspended: self.conns.values().filter(|c| c.suspended.is_some()).count(),
            waiting: self.conns.values().filter(|c| c.waiting_in.is_some()).count(),
            ..self.stats
        }
    }

    fn count_received(&mut self, id: &PeerId) {
        if let Some(c) = self.conns.get_mut(id) {
            c.received += 1;
        }
    }

    fn new_secret(&self) -> String {
        let mut bytes = [0u8; 16];
        // The system's random source does not fail on the platforms huddle runs on.
        aws_lc_rs::rand::SecureRandom::fill(&self.rng, &mut bytes).expect("the system's random source works");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn welcome(&self, id: &PeerId, resumed: bool) -> Arc<ServerMsg> {
        Arc::new(ServerMsg::Welcome {
            protocol: PROTOCOL_VERSION,
            id: id.clone(),
            server: concat!("huddle/", env!("CARGO_PKG_VERSION")).to_string(),
            limits: self.config.limits(),
            // Relay credentials are for people in a room: `joined` and `ice_servers` carry them.
            ice_servers: Vec::new(),
            ice_transport_policy: self.config.ice_transport_policy,
            resume: self.conns.get(id).map(|c| c.secret.clone()).unwrap_or_default(),
            resume_grace_secs: self.config.resume_grace.as_secs() as u32,
            resumed,
            received: if resumed { self.conns.get(id).map_or(0, |c| c.received) } else { 0 },
        })
    }

    fn connect(&mut self, c: Connect) {
        if self.closing {
            let _ = c.kick.send(ByeReason::ServerShutdown);
            return;
        }
        if let Some(resume) = &c.resume {
            match self.can_resume(resume) {
                Ok(missed) => return self.resume(c, missed),
                Err(give_up) => {
                    self.stats.resume_failed += 1;
                    info!(session = %resume.id, "could not resume a session; starting a new one");
                    if give_up {
                        // Its page starts over: its old place must not linger as a ghost.
                        self.disconnect(&resume.id.clone(), LeaveReason::Disconnected);
                    }
                }
            }
        }
        self.last_conn = self.last_conn.max(c.conn);
        let secret = self.new_secret();
        let id = c.id.clone();
        self.conns.insert(
            id.clone(),
            Conn {
                outbox: Some(c.outbox),
                kick: Some(c.kick),
                room: None,
                waiting_in: None,
                host: c.host,
                conn: c.conn,
                secret,
                sent: 0,
                received: 0,
                recent: VecDeque::new(),
                recent_bytes: 0,
                suspended: None,
                keys: Vec::new(),
                ip: c.ip,
                checking: false,
                turn_user: None,
                ice_renew: None,
            },
        );
        let _ = c.session.send(id.clone());
        let welcome = self.welcome(&id, false);
        self.send_uncounted(&id, welcome);
    }

    /// How many kept messages a resume replays; `Err(true)` when the session exists but cannot be
    /// resumed (its page will start over), `Err(false)` when there is nothing to resume.
    fn can_resume(&self, r: &Resume) -> Result<usize, bool> {
        let Some(conn) = self.conns.get(&r.id) else { return Err(false) };
        let secret_ok =
            aws_lc_rs::constant_time::verify_slices_are_equal(conn.secret.as_bytes(), r.secret.as_bytes()).is_ok();
        if !secret_ok || self.config.resume_grace.is_zero() || conn.outbox.is_none() && conn.suspended.is_none() {
            // A wrong secret says nothing about the session (and must not end it).
            return Err(false);
        }
        let missed = conn.sent.checked_sub(r.seen).ok_or(true)?;
        if missed as usize > conn.recent.len() || (conn.room.is_none() && conn.waiting_in.is_none()) {
            return Err(true);
        }
        Ok(missed as usize)
    }

    /// Attaches connection `c` to the existing session `c.resume.id`, replaying what it missed.
    fn resume(&mut self, c: Connect, missed: usize) {
        let Some(resume) = c.resume else { return };
        self.last_conn = self.last_conn.max(c.conn);
        let id = resume.id;
        let welcome;
        {
            let Some(conn) = self.conns.get_mut(&id) else { return };
            if let Some(old) = conn.kick.take() {
                // A connection the server still thought alive (the page saw it die first).
                let _ = old.send(ByeReason::Replaced);
            }
            conn.outbox = Some(c.outbox);
            conn.kick = Some(c.kick);
            conn.conn = c.conn;
            conn.host = c.host;
            conn.ip = c.ip;
            conn.suspended = None;
            welcome = self.welcome(&id, true);
        }
        self.stats.resumed += 1;
        let _ = c.session.send(id.clone());
        info!(peer = %id, missed, "resumed a session");
        self.send_uncounted(&id, welcome);
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let from = conn.recent.len() - missed;
        let replay: Vec<Frame> = conn.recent.iter().skip(from).cloned().collect();
        if let Some(outbox) = &conn.outbox {
            for msg in replay {
                if outbox.try_send(msg).is_err() {
                    self.overflowed.push(id.clone());
                    break;
                }
            }
        }
        // A renewal that fell due while it was away (or it comes back from a restart, or from
        // an older server without a relay user): current credentials, after what it missed.
        let now = Instant::now();
        if conn.room.is_some() && (conn.turn_user.is_none() || conn.ice_renew.is_none_or(|t| t <= now)) {
            self.start_relay(&id);
            self.renew_relay(&id, now);
        }
    }

    /// The connection of `id` ended: a participant in a room keeps its place for the grace
    /// period (unless it said goodbye); everyone else leaves now.
    fn disconnected(&mut self, id: &PeerId, reason: LeaveReason) {
        let grace = self.config.resume_grace;
        let keep = reason == LeaveReason::Disconnected
            && !grace.is_zero()
            && self.shutdown.is_none()
            && self.conns.get(id).is_some_and(|c| c.room.is_some());
        if keep {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.outbox = None;
                conn.kick = None;
                conn.suspended = Some(Instant::now() + grace);
                info!(peer = %id, "connection lost; keeping the place for a resume");
            }
            return;
        }
        self.disconnect(id, reason);
    }

    /// Ends the sessions whose grace period is over, and renews the relay credentials that are
    /// due (a session without a connection gets them when it resumes).
    pub fn expire(&mut self, now: Instant) {
        self.files.expire(now);
        let due: Vec<PeerId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.ice_renew.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            match self.conns.get_mut(&id) {
                Some(c) if c.outbox.is_none() => c.ice_renew = None,
                Some(_) => self.renew_relay(&id, now),
                None => {}
            }
        }
        let expired: Vec<PeerId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.suspended.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            info!(peer = %id, "not resumed in time");
            self.disconnect(&id, LeaveReason::Disconnected);
        }
        self.evict_overflowed();
    }

    /// When the next suspended session, file offer or upload expires, or relay credentials are due.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.conns.values().flat_map(|c| [c.suspended, c.ice_renew]).flatten().chain(self.files.next_deadline()).min()
    }

    /// Everything a restart needs to hand every in-room session back to its page: the rooms
    /// (settings, password, bans, roles, chat) and each session's secret, counters and replay
    /// buffer. Sessions outside rooms are not kept (their pages start over cheaply). From now
    /// on shutdown tells nobody that anyone left, so that what the pages received is exactly
    /// what was saved.
    pub fn save_for_restart(&mut self) -> Vec<u8> {
        self.saved = true;
        self.snapshot()
    }

    /// What [`Hub::save_for_restart`] saves, without changing how shutdown goes (the
    /// `room_state` fuzz target restores it into a second hub at any point and compares).
    pub fn snapshot(&self) -> Vec<u8> {
        let sessions = self
            .conns
            .iter()
            .filter_map(|(id, c)| {
                Some(SavedSession {
                    id: id.clone(),
                    secret: c.secret.clone(),
                    room: c.room.as_deref()?.to_string(),
                    sent: c.sent,
                    received: c.received,
                    // Kept as the messages they are: the file's format does not depend on how
                    // the hub holds them.
                    recent: c.recent.iter().filter_map(Frame::decode).collect(),
                    keys: c.keys.clone(),
                    ip: c.ip,
                    host: c.host.clone(),
                    turn_user: c.turn_user.clone(),
                })
            })
            .collect();
        let rooms = self.rooms.iter().map(|(name, r)| (name.to_string(), r)).collect();
        let saved =
            SavedHub { version: SNAPSHOT_VERSION, saved_at: unix_secs(), last_conn: self.last_conn, sessions, rooms };
        // Plain data with string keys only: serialising it cannot fail.
        serde_json::to_vec(&saved).expect("the hub's saved state serialises")
    }

    /// Takes back what [`Hub::save_for_restart`] kept (ignored if it is older than the grace
    /// period, or from another version): every session waits for its page to resume it, as
    /// after a lost connection, for the grace period from `now`. Members without a session, and
    /// rooms left empty, are dropped. Returns the highest connection number the previous run
    /// handed out, so that new connections are numbered above it (no peer id is reused).
    pub fn restore(&mut self, saved: &[u8], now: Instant) -> Result<u64, String> {
        let saved: SavedHub<Room> = serde_json::from_slice(saved).map_err(|e| e.to_string())?;
        let grace = self.config.resume_grace;
        if saved.version != SNAPSHOT_VERSION {
            return Err(format!("saved by another version ({})", saved.version));
        }
        let age = unix_secs().saturating_sub(saved.saved_at);
        if grace.is_zero() || age > grace.as_secs() {
            return Err(format!("saved {age} s ago, longer than the grace period"));
        }
        let SavedHub { sessions, rooms, last_conn, .. } = saved;
        let sessions: HashMap<PeerId, SavedSession> = sessions.into_iter().map(|s| (s.id.clone(), s)).collect();
        let mut highest = 0;
        for (name, mut room) in rooms {
            if self.rooms.len() >= self.config.max_rooms as usize {
                break;
            }
            let name: Arc<str> = name.into();
            let in_room = |id: &PeerId| sessions.get(id).is_some_and(|s| *s.room == *name);
            room.restored(self.config.room_capacity as usize, self.config.chat_history as usize, in_room);
            if room.is_empty() {
                continue;
            }
            if room.topology() == Topology::Sfu && self.media.is_none() {
                room.set_topology(Topology::P2p);
            }
            room.ensure_host();
            for peer in room.members() {
                let Some(s) = sessions.get(&peer.id) else { continue };
                highest = highest.max(s.id.0.strip_prefix('p').and_then(|n| n.parse().ok()).unwrap_or(0));
                let (recent, recent_bytes) = kept_for_resume(&s.recent, self.config.outbox_bytes);
                let conn = Conn {
                    outbox: None,
                    kick: None,
                    room: Some(name.clone()),
                    waiting_in: None,
                    host: s.host.clone(),
                    conn: 0,
                    secret: s.secret.clone(),
                    sent: s.sent,
                    received: s.received,
                    recent,
                    recent_bytes,
                    suspended: Some(now + grace),
                    keys: s.keys.clone(),
                    ip: s.ip,
                    checking: false,
                    turn_user: s.turn_user.clone(),
                    // Renewed when it resumes (its page's may be as old as the restart is long).
                    ice_renew: None,
                };
                self.conns.insert(peer.id.clone(), conn);
            }
            self.rooms.insert(name, room);
        }
        self.rooms_dirty = true;
        // Their relay credentials work again (only theirs: nobody else's from before).
        let users: Vec<String> = self.conns.values().filter_map(|c| c.turn_user.clone()).collect();
        if !users.is_empty() {
            self.tell_turn(TurnCommand::Grant { users });
        }
        self.last_conn = self.last_conn.max(last_conn).max(highest);
        info!(
            rooms = self.rooms.len(),
            sessions = self.conns.len(),
            "sessions kept over the restart wait for their pages"
        );
        Ok(self.last_conn)
    }

    /// Uses `key` for invite links, so that links handed out survive a restart.
    pub fn set_invite_key(&mut self, key: &[u8]) {
        self.tokens.set_invite_key(key);
    }

    fn disconnect(&mut self, id: &PeerId, reason: LeaveReason) {
        self.leave_room(id, reason);
        self.leave_waiting_room(id);
        self.watchers.remove(id);
        self.conns.remove(id);
        if self.conns.is_empty() {
            if let Some(done) = self.shutdown.take() {
                let _ = done.send(());
            }
        }
    }

    fn client(&mut self, id: &PeerId, msg: ClientMsg) {
        let Some(conn) = self.conns.get_mut(id) else {
            // A message racing its own disconnect; nothing to answer.
            return;
        };
        // Taken, for `welcome.received` (one lookup per message, shared with the checks below).
        conn.received += 1;
        if conn.suspended.is_some() {
            // From a connection already gone (its session waits for a resume): nobody speaks for
            // the session until one takes it over.
            return;
        }
        let request = msg.type_name();
        let waiting = conn.waiting_in.clone();
        let checking = conn.checking;
        let result = match (msg, conn.room.clone()) {
            (ClientMsg::Join { .. }, _) if waiting.is_some() || checking => Err(ErrorCode::AlreadyInRoom),
            (ClientMsg::Join { protocol, room, name, audio, video, password, token }, None) => {
                let req = JoinRequest { protocol, room, name, audio, video, password, token };
                self.join(id, req)
            }
            (ClientMsg::Join { .. }, Some(_)) => Err(ErrorCode::AlreadyInRoom),
            // Where only token holders may enter, nobody without one learns which rooms exist.
            (ClientMsg::WatchRooms, _) if self.config.require_token => Err(ErrorCode::TokenRequired),
            (ClientMsg::WatchRooms, _) => {
                self.watchers.insert(id.clone());
                let list = self.room_list();
                self.send(id, list);
                Ok(())
            }
            (ClientMsg::UnwatchRooms, _) => {
                self.watchers.remove(id);
                Ok(())
            }
            (ClientMsg::Ping, _) => {
                self.send(id, ServerMsg::Pong);
                Ok(())
            }
            (ClientMsg::RelayCheck { room, token }, _) => self.relay_check(id, room.as_deref(), token.as_deref()),
            (ClientMsg::Leave, None) if waiting.is_some() => {
                self.leave_waiting_room(id);
                let room = waiting.map(|r| r.to_string()).unwrap_or_default();
                self.send(id, ServerMsg::Left { room });
                Ok(())
            }
            (_, None) => Err(ErrorCode::NotInRoom),
            (ClientMsg::Leave, Some(room)) => {
                self.leave_room(id, LeaveReason::Left);
                self.send(id, ServerMsg::Left { room: room.to_string() });
                Ok(())
            }
            (ClientMsg::Signal { to, payload }, Some(room)) if to.0 == SFU_PEER_ID => {
                self.signal_sfu(id, &room, payload)
            }
            (ClientMsg::Signal { to, payload }, Some(room)) => {
                let same_room = to != *id && self.conns.get(&to).is_some_and(|c| c.room.as_ref() == Some(&room));
                if same_room {
                    self.send(&to, ServerMsg::Signal { from: id.clone(), payload, session: None });
                    Ok(())
                } else {
                    Err(ErrorCode::UnknownPeer)
                }
            }
            (ClientMsg::Chat { text }, Some(room)) => self.chat(id, &room, &text),
            (ClientMsg::Receive { peer, video }, Some(room)) => {
                let same_room = peer != *id && self.conns.get(&peer).is_some_and(|c| c.room.as_ref() == Some(&room));
                if !same_room {
                    Err(ErrorCode::UnknownPeer)
                } else {
                    let sfu_room = self.rooms.get(&room).is_some_and(|r| r.topology() == Topology::Sfu);
                    if let Some(media) = self.media.as_ref().filter(|_| sfu_room) {
                        if media.try_send(MediaCommand::Receive { peer: id.clone(), publisher: peer, video }).is_err() {
                            self.stats.media_commands_dropped += 1;
                        }
                    }
                    Ok(())
                }
            }
            (ClientMsg::FileOffer { name, size, mime, sha256 }, Some(room)) => {
                self.file_offer(id, &room, &name, size, &mime, &sha256)
            }
            (ClientMsg::Media { audio, video, screen }, Some(room)) => {
                let before = self.sfu_hold(id);
                match self.rooms.get_mut(&room).map(|r| r.set_media(id, audio, video, screen)) {
                    Some(Ok(Some(peer))) => {
                        // An allowed unmute, a camera or screen on or off: the SFU follows.
                        self.tell_sfu_hold(id, before);
                        let msg = Arc::new(ServerMsg::PeerUpdated { peer });
                        self.broadcast(&room, Some(id), msg);
                        Ok(())
                    }
                    Some(Err(_)) => Err(ErrorCode::MutedByHost),
                    _ => Ok(()),
                }
            }
            (ClientMsg::Hand { raised }, Some(room)) => {
                if let Some(peer) = self.rooms.get_mut(&room).and_then(|r| r.set_hand(id, raised)) {
                    self.broadcast(&room, None, Arc::new(ServerMsg::PeerUpdated { peer }));
                }
                Ok(())
            }
            (ClientMsg::React { emoji }, Some(room)) => {
                if REACTIONS.contains(&emoji.as_str()) {
                    self.broadcast(&room, None, Arc::new(ServerMsg::Reaction { from: id.clone(), emoji }));
                    Ok(())
                } else {
                    Err(ErrorCode::InvalidReaction)
                }
            }
            (msg, Some(room)) => self.host_command(id, &room, msg),
        };
        if let Err(code) = result {
            debug!(peer = %id, %code, request, "request refused");
            self.send(id, ServerMsg::error(code, Some(request)));
        }
    }

    fn join(&mut self, id: &PeerId, req: JoinRequest) -> Result<(), ErrorCode> {
        self.join_checked(id, req, None)
    }

    /// `join`, with the room's password already found right at password generation `verified`.
    fn join_checked(&mut self, id: &PeerId, req: JoinRequest, verified: Option<u32>) -> Result<(), ErrorCode> {
        if req.protocol != PROTOCOL_VERSION {
            return Err(ErrorCode::UnsupportedProtocol);
        }
        let room = validate::label(&req.room, self.config.max_room_chars).ok_or(ErrorCode::InvalidRoom)?;
        let grant = match &req.token {
            Some(token) if !token.is_empty() => Some(self.tokens.verify(token, &room, unix_secs())?),
            _ => None,
        };
        if self.config.require_token && grant.is_none() {
            return Err(ErrorCode::TokenRequired);
        }
        let grant = grant.unwrap_or_default();
        let name = grant.name.as_deref().unwrap_or(&req.name);
        let name = validate::label(name, self.config.max_name_chars).ok_or(ErrorCode::InvalidName)?;
        let mut keys: Vec<String> = grant.sub.iter().map(|s| format!("sub:{s}")).collect();
        keys.push(format!("id:{id}"));
        if let Some(ip) = self.conns.get(id).map(|c| c.ip) {
            // Everyone from the address of someone banned: without accounts, the best handle
            // there is (people behind one NAT share it; the host can lift nothing but the room
            // ends with its last member).
            keys.push(format!("ip:{ip}"));
        }
        if let Some(conn) = self.conns.get_mut(id) {
            conn.keys = keys.clone();
        }
        let room_key: Arc<str> = match self.rooms.get_key_value(room.as_str()) {
            Some((key, r)) => {
                let key = key.clone();
                let role = grant.role.unwrap_or(Role::Participant);
                if r.is_banned(&keys) {
                    return Err(ErrorCode::Banned);
                }
                if let Some((rid, gen)) = &grant.invite_for {
                    // Made in another opening of the room, before a new password, or revoked.
                    if r.invite_key() != (rid.as_str(), *gen) {
                        return Err(ErrorCode::InviteRevoked);
                    }
                }
                if !role.moderates() {
                    if r.settings().locked {
                        return Err(ErrorCode::RoomLocked);
                    }
                    let needs_password = !grant.invite && !grant.operator;
                    if let Some((hash, gen)) = r.password().filter(|(_, gen)| needs_password && verified != Some(*gen))
                    {
                        let job = Job::Verify {
                            id: id.clone(),
                            room: key.clone(),
                            instance: r.instance().to_string(),
                            gen,
                            hash: hash.clone(),
                            req,
                        };
                        return self.check_password(id, &key, job);
                    }
                }
                if r.settings().waiting_room && !role.moderates() {
                    return self.knock(id, &key, name, req.audio, req.video, keys);
                }
                if r.is_full() {
                    return Err(ErrorCode::RoomFull);
                }
                key
            }
            None => {
                if grant.invite {
                    // Its room is gone: a room of that name opened now is another meeting.
                    return Err(ErrorCode::InviteRevoked);
                }
                if self.rooms.len() >= self.config.max_rooms as usize {
                    return Err(ErrorCode::TooManyRooms);
                }
                let key: Arc<str> = Arc::from(room.as_str());
                let has_sfu = self.media.is_some();
                let initial =
                    if has_sfu && self.config.topology == TopologyMode::Sfu { Topology::Sfu } else { Topology::P2p };
                let capacity = self.config.room_capacity as usize;
                let room = Room::new(capacity, self.config.chat_history as usize, initial, self.new_secret());
                self.rooms.insert(key.clone(), room);
                key
            }
        };
        // Whoever opens a room hosts it, unless their token says otherwise.
        let opening = self.rooms.get(&room_key).is_some_and(Room::is_empty);
        let role = grant.role.unwrap_or(if opening { Role::Host } else { Role::Participant });
        self.enter(id, &room_key, name, req.audio, req.video, role);
        Ok(())
    }

    /// Starts checking a join's password (`job`), if the room's budget of guesses allows one
    /// more now; the join carries on when the check is done ([`Hub::password_checked`]).
    fn check_password(&mut self, id: &PeerId, room: &Arc<str>, job: Job) -> Result<(), ErrorCode> {
        let Job::Verify { req, .. } = &job else { return Err(ErrorCode::BadMessage) };
        if req.password.as_deref().is_none_or(|p| p.trim().is_empty()) {
            return Err(ErrorCode::PasswordRequired);
        }
        let r = self.rooms.get_mut(room).ok_or(ErrorCode::NotInRoom)?;
        if !r.guesses().reserve(Instant::now()) {
            debug!(peer = %id, "join with a password during a pause");
            return Err(ErrorCode::TooManyAttempts);
        }
        if let Some(conn) = self.conns.get_mut(id) {
            conn.checking = true;
        }
        let started = self.start_job(job);
        if started.is_err() {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.checking = false;
            }
            if let Some(r) = self.rooms.get_mut(room) {
                r.guesses().refund();
            }
        }
        started
    }

    /// A credential for the connectivity check: huddle's TURN server with a `c.` user that
    /// allocates and relays nothing (an empty list without a TURN server). With
    /// `--require-token`, outside a room, only for a token valid for `room`.
    fn relay_check(&mut self, id: &PeerId, room: Option<&str>, token: Option<&str>) -> Result<(), ErrorCode> {
        let in_room = self.conns.get(id).is_some_and(|c| c.room.is_some());
        if self.config.require_token && !in_room {
            let room =
                room.and_then(|r| validate::label(r, self.config.max_room_chars)).ok_or(ErrorCode::TokenRequired)?;
            let token = token.filter(|t| !t.is_empty()).ok_or(ErrorCode::TokenRequired)?;
            self.tokens.verify(token, &room, unix_secs())?;
        }
        let ice_servers = match &self.turn {
            Some((turn, _)) => {
                let host = self.conns.get(id).and_then(|c| c.host.as_deref());
                vec![turn.check_servers(host, self.turn_fallback_host())]
            }
            None => Vec::new(),
        };
        self.send(id, ServerMsg::CheckIceServers { ice_servers });
        Ok(())
    }

    /// Puts `id` in the waiting room of `room` and tells the hosts.
    fn knock(
        &mut self,
        id: &PeerId,
        room: &Arc<str>,
        name: String,
        audio: bool,
        video: bool,
        keys: Vec<String>,
    ) -> Result<(), ErrorCode> {
        let waiter = Waiter { knocker: Knocker { id: id.clone(), name }, audio, video, keys };
        let r = self.rooms.get_mut(room).ok_or(ErrorCode::NotInRoom)?;
        r.knock(waiter).map_err(|_| ErrorCode::RoomFull)?;
        if let Some(conn) = self.conns.get_mut(id) {
            conn.waiting_in = Some(room.clone());
        }
        self.watchers.remove(id);
        info!(peer = %id, "knocked at a waiting room");
        self.send(id, ServerMsg::Waiting { room: room.to_string() });
        self.tell_hosts_waiting(room);
        Ok(())
    }

    fn tell_hosts_waiting(&mut self, room: &str) {
        let Some(r) = self.rooms.get(room) else { return };
        let msg = Arc::new(ServerMsg::WaitingList { waiting: r.waiting() });
        self.tell_moderators(room, msg);
    }

    /// Sends `msg` to the room's hosts and co-hosts.
    fn tell_moderators(&mut self, room: &str, msg: Arc<ServerMsg>) {
        let Some(r) = self.rooms.get(room) else { return };
        let hosts: Vec<PeerId> = r.members().filter(|p| p.role.moderates()).map(|p| p.id.clone()).collect();
        for h in hosts {
            self.send_arc(&h, msg.clone());
        }
    }

    /// Takes `id` out of the waiting room it is in, if any, and tells the hosts.
    fn leave_waiting_room(&mut self, id: &PeerId) -> Option<Waiter> {
        let room = self.conns.get_mut(id).and_then(|c| c.waiting_in.take())?;
        let waiter = self.rooms.get_mut(&room).and_then(|r| r.unknock(id));
        self.tell_hosts_waiting(&room);
        waiter
    }

    /// Adds `id` to `room` (which exists and has space) and tells everyone.
    fn enter(&mut self, id: &PeerId, room: &Arc<str>, name: String, audio: bool, video: bool, role: Role) {
        self.start_relay(id);
        let ice_servers = self.ice_servers(id);
        let has_sfu = self.media.is_some();
        let Some(r) = self.rooms.get_mut(room) else { return };
        let me = Peer { id: id.clone(), name, audio, video, screen: false, role, hand: false };
        let Ok(peers) = r.add(me.clone()) else {
            self.end_relay(id);
            self.send(id, ServerMsg::error(ErrorCode::RoomFull, Some("join")));
            return;
        };
        let switched = has_sfu
            && self.config.topology == TopologyMode::Auto
            && r.topology() == Topology::P2p
            && r.len() >= AUTO_SFU_FROM;
        if switched {
            r.set_topology(Topology::Sfu);
        }
        let joined = ServerMsg::Joined {
            room: room.to_string(),
            you: me.clone(),
            peers,
            chat: r.chat_history(),
            topology: r.topology(),
            ice_servers,
            ice_transport_policy: self.config.ice_transport_policy,
            settings: r.settings(),
            waiting: if role.moderates() { r.waiting() } else { Vec::new() },
        };
        let participants = r.len();
        if let Some(conn) = self.conns.get_mut(id) {
            conn.room = Some(room.clone());
        }
        self.watchers.remove(id);
        self.rooms_dirty = true;
        info!(peer = %id, participants, ?role, "joined a room");
        self.send(id, joined);
        if switched {
            info!(participants = AUTO_SFU_FROM, "room switched to the SFU");
            self.broadcast(room, Some(id), Arc::new(ServerMsg::Topology { topology: Topology::Sfu }));
        }
        self.broadcast(room, Some(id), Arc::new(ServerMsg::PeerJoined { peer: me }));
    }

    /// Commands only hosts (and co-hosts) may give.
    fn host_command(&mut self, id: &PeerId, room: &Arc<str>, msg: ClientMsg) -> Result<(), ErrorCode> {
        let me = self.rooms.get(room).and_then(|r| r.role(id)).ok_or(ErrorCode::NotInRoom)?;
        if !me.moderates() {
            return Err(ErrorCode::NotAllowed);
        }
        match msg {
            ClientMsg::Settings { locked, waiting_room, allow_unmute, password, listed } => {
                let password = match password {
                    None => None,
                    Some(p) if p.is_empty() => Some(None),
                    Some(p) => {
                        let p = validate::password(&p, PASSWORD_MAX_CHARS).ok_or(ErrorCode::BadMessage)?;
                        Some(Some(p.to_string()))
                    }
                };
                let r = self.rooms.get_mut(room).ok_or(ErrorCode::NotInRoom)?;
                r.set_flags(|s| {
                    if let Some(v) = locked {
                        s.locked = v;
                    }
                    if let Some(v) = waiting_room {
                        s.waiting_room = v;
                    }
                    if let Some(v) = allow_unmute {
                        s.allow_unmute = v;
                    }
                    if let Some(v) = listed {
                        // Stays off for a protected room (see `Room::set_flags`).
                        s.listed = v;
                    }
                    if matches!(password, Some(Some(_))) {
                        // Off the list at once, not when the hash is ready.
                        s.listed = false;
                    }
                });
                let seq = password.is_some().then(|| r.begin_password_change());
                if password == Some(None) {
                    r.set_password(None);
                }
                let settings = r.settings();
                let instance = r.instance().to_string();
                self.rooms_dirty = true;
                info!(peer = %id, ?settings, "room settings changed");
                let only_new_password = matches!(password, Some(Some(_)))
                    && locked.is_none()
                    && waiting_room.is_none()
                    && allow_unmute.is_none()
                    && listed.is_none();
                if !only_new_password {
                    self.broadcast(room, None, Arc::new(ServerMsg::RoomSettings { settings }));
                }
                if !settings.waiting_room {
                    if settings.locked {
                        // A lock lets nobody in, the people waiting neither.
                        self.turn_away_waiters(room, ErrorCode::RoomLocked);
                    } else {
                        self.admit_all(room);
                    }
                }
                if let (Some(Some(password)), Some(seq)) = (password, seq) {
                    // Set (and announced) once hashed; the old password holds until then.
                    self.start_job(Job::Hash { room: room.clone(), instance, seq, password })?;
                }
                Ok(())
            }
            ClientMsg::Moderate { peer, action } => self.moderate(id, me, room, &peer, action),
            ClientMsg::SetRole { peer, role } => {
                // Only the host hands on the host role or changes co-hosts.
                if me != Role::Host {
                    return Err(ErrorCode::NotAllowed);
                }
                if peer == *id {
                    return Err(ErrorCode::NotAllowed);
                }
                let r = self.rooms.get_mut(room).ok_or(ErrorCode::NotInRoom)?;
                let target = r.set_role(&peer, role).ok_or(ErrorCode::UnknownPeer)?;
                let mut changed = vec![target];
                if role == Role::Host {
                    changed.extend(r.set_role(id, Role::Cohost));
                }
                info!(peer = %id, target = %peer, ?role, "role changed");
                for p in changed {
                    self.broadcast(room, None, Arc::new(ServerMsg::PeerUpdated { peer: p }));
                }
                self.tell_hosts_waiting(room);
                Ok(())
            }
            ClientMsg::Admit { peer } => {
                let waiting_here = self.conns.get(&peer).is_some_and(|c| c.waiting_in.as_ref() == Some(room));
                if !waiting_here {
                    return Err(ErrorCode::UnknownPeer);
                }
                self.admit(room, &peer);
                Ok(())
            }
            ClientMsg::Deny { peer } => {
                let waiting_here = self.conns.get(&peer).is_some_and(|c| c.waiting_in.as_ref() == Some(room));
                if !waiting_here {
                    return Err(ErrorCode::UnknownPeer);
                }
                self.leave_waiting_room(&peer);
                info!(peer = %id, target = %peer, "turned away from the waiting room");
                self.send(&peer, ServerMsg::error(ErrorCode::KnockDenied, Some("join")));
                Ok(())
            }
            ClientMsg::AdmitAll => {
                self.admit_all(room);
                Ok(())
            }
            ClientMsg::EndMeeting => {
                if me != Role::Host {
                    return Err(ErrorCode::NotAllowed);
                }
                info!(peer = %id, "meeting ended by the host");
                self.end_meeting(room);
                Ok(())
            }
            ClientMsg::Invite { ttl_secs } => {
                let ttl = ttl_secs.unwrap_or(DEFAULT_INVITE_SECS).clamp(60, MAX_INVITE_SECS);
                let expires = unix_secs() + u64::from(ttl);
                let r = self.rooms.get(room).ok_or(ErrorCode::NotInRoom)?;
                let (rid, gen) = r.invite_key();
                let token = self.tokens.invite(room, rid, gen, expires);
                self.send(id, ServerMsg::InviteToken { token, expires });
                Ok(())
            }
            ClientMsg::RevokeInvites => {
                self.rooms.get_mut(room).ok_or(ErrorCode::NotInRoom)?.revoke_invites();
                info!(peer = %id, "invites revoked");
                self.tell_moderators(room, Arc::new(ServerMsg::InvitesRevoked { by: id.clone() }));
                Ok(())
            }
            // Everything else is handled before this is called.
            _ => Err(ErrorCode::BadMessage),
        }
    }

    fn moderate(
        &mut self,
        id: &PeerId,
        me: Role,
        room: &Arc<str>,
        peer: &PeerId,
        action: ModAction,
    ) -> Result<(), ErrorCode> {
        let before = self.sfu_hold(peer);
        let r = self.rooms.get_mut(room).ok_or(ErrorCode::NotInRoom)?;
        let target = r.role(peer).ok_or(ErrorCode::UnknownPeer)?;
        // Nobody acts on someone above them; nobody removes themselves this way.
        if target > me || (peer == id && matches!(action, ModAction::Remove | ModAction::Ban)) {
            return Err(ErrorCode::NotAllowed);
        }
        info!(peer = %id, target = %peer, ?action, "host action");
        let updated = match action {
            ModAction::Mute => r.hold(peer, Held { audio: true, ..Held::default() }),
            ModAction::StopVideo => r.hold(peer, Held { video: true, ..Held::default() }),
            ModAction::StopScreen => r.hold(peer, Held { screen: true, ..Held::default() }),
            ModAction::LowerHand => r.set_hand(peer, false),
            ModAction::Remove | ModAction::Ban => {
                if action == ModAction::Ban {
                    let keys = self.conns.get(peer).map(|c| c.keys.clone()).unwrap_or_default();
                    if let Some(r) = self.rooms.get_mut(room) {
                        r.ban(&keys);
                    }
                }
                self.leave_room(peer, LeaveReason::Removed);
                self.send(peer, ServerMsg::Removed { room: room.to_string(), ban: action == ModAction::Ban });
                self.end_if_suspended(peer);
                return Ok(());
            }
        };
        if let Some(p) = updated {
            // What a host turned off, the SFU no longer forwards, whatever the page sends.
            self.tell_sfu_hold(peer, before);
            self.broadcast(room, Some(peer), Arc::new(ServerMsg::PeerUpdated { peer: p }));
            self.send(peer, ServerMsg::Moderated { action, by: id.clone() });
        }
        Ok(())
    }

    /// What the SFU must not forward of `peer`'s media: its audio while a host has it muted, its
    /// video while the room has neither its camera nor its screen on. `None` outside `sfu` rooms.
    fn sfu_hold(&self, peer: &PeerId) -> Option<SfuHold> {
        let room = self.conns.get(peer)?.room.as_ref()?;
        let r = self.rooms.get(room).filter(|r| r.topology() == Topology::Sfu)?;
        let p = r.member(peer)?;
        Some(SfuHold { audio: r.held(peer).audio, video: !(p.video || p.screen) })
    }

    /// Tells the SFU what it must not forward of `peer`'s media, in `sfu` rooms, when that is not
    /// `before` (what it was before a change; nothing held for a new SFU session).
    fn tell_sfu_hold(&mut self, peer: &PeerId, before: Option<SfuHold>) {
        let Some(hold) = self.sfu_hold(peer).filter(|h| Some(*h) != before) else { return };
        if let Some(media) = &self.media {
            let cmd = MediaCommand::Hold { peer: peer.clone(), audio: hold.audio, video: hold.video };
            if media.try_send(cmd).is_err() {
                self.stats.media_commands_dropped += 1;
            }
        }
    }

    /// A host lets `peer` in from the waiting room, as a participant: the waiting room never
    /// makes anyone a host.
    fn admit(&mut self, room: &Arc<str>, peer: &PeerId) {
        let Some(w) = self.leave_waiting_room(peer) else { return };
        let refused = match self.rooms.get(room) {
            Some(r) if r.is_full() => Some(ErrorCode::RoomFull),
            // Nobody is left who could have let them in (not reached: an empty room closes).
            None => Some(ErrorCode::RoomClosed),
            Some(r) if r.is_empty() => Some(ErrorCode::RoomClosed),
            Some(_) => None,
        };
        if let Some(code) = refused {
            self.send(peer, ServerMsg::error(code, Some("join")));
            return;
        }
        info!(target = %peer, "admitted from the waiting room");
        self.enter(peer, room, w.knocker.name, w.audio, w.video, Role::Participant);
    }

    /// Everyone waiting at `room` is turned away with `code`.
    fn turn_away_waiters(&mut self, room: &Arc<str>, code: ErrorCode) {
        let waiting: Vec<PeerId> =
            self.rooms.get(room.as_ref()).map(|r| r.waiting().into_iter().map(|k| k.id).collect()).unwrap_or_default();
        for peer in waiting {
            self.leave_waiting_room(&peer);
            self.send(&peer, ServerMsg::error(code, Some("join")));
        }
    }

    /// The room's last member is gone: the room closes, and whoever still waits in its waiting
    /// room is told (`room_closed`) — nobody is left to let them in.
    fn close_room(&mut self, room: &Arc<str>) {
        let Some(mut r) = self.rooms.remove(room) else { return };
        for w in r.take_waiters() {
            if let Some(conn) = self.conns.get_mut(&w.knocker.id) {
                conn.waiting_in = None;
            }
            self.send(&w.knocker.id, ServerMsg::error(ErrorCode::RoomClosed, Some("join")));
        }
        self.files.room_closed(room);
        self.rooms_dirty = true;
        debug!("room closed");
    }

    fn admit_all(&mut self, room: &Arc<str>) {
        let waiting: Vec<PeerId> =
            self.rooms.get(room.as_ref()).map(|r| r.waiting().into_iter().map(|k| k.id).collect()).unwrap_or_default();
        for peer in waiting {
            self.admit(room, &peer);
        }
    }

    /// Everyone out, the waiting room too; the room closes.
    fn end_meeting(&mut self, room: &Arc<str>) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        let waiters = r.take_waiters();
        let members: Vec<PeerId> = r.members().map(|p| p.id.clone()).collect();
        for w in waiters {
            if let Some(conn) = self.conns.get_mut(&w.knocker.id) {
                conn.waiting_in = None;
            }
            self.send(&w.knocker.id, ServerMsg::Ended { room: room.to_string() });
        }
        let ended = Arc::new(ServerMsg::Ended { room: room.to_string() });
        for m in &members {
            self.send_arc(m, ended.clone());
        }
        for m in &members {
            // Quietly: everyone is told `ended`, not who left.
            self.leave_room_quietly(m);
            self.end_if_suspended(m);
        }
    }

    /// A session kept for a resume that is out of its room now can never resume: it ends.
    fn end_if_suspended(&mut self, id: &PeerId) {
        if self.conns.get(id).is_some_and(|c| c.suspended.is_some()) {
            self.disconnect(id, LeaveReason::Disconnected);
        }
    }

    /// A `signal` to the reserved peer `sfu`: offers and answers go to the SFU task; candidates
    /// are not needed (the SFU is ICE-lite and learns addresses from the browser's checks).
    fn signal_sfu(&mut self, id: &PeerId, room: &Arc<str>, payload: SignalPayload) -> Result<(), ErrorCode> {
        let sfu_room = self.rooms.get(room).is_some_and(|r| r.topology() == Topology::Sfu);
        let Some(media) = self.media.as_ref().filter(|_| sfu_room) else {
            return Err(ErrorCode::UnknownPeer);
        };
        let mut offer = false;
        let cmd = match payload {
            SignalPayload::Description { description: SessionDescription { kind: SdpType::Offer, sdp } } => {
                offer = true;
                MediaCommand::Offer { peer: id.clone(), room: room.clone(), sdp }
            }
            SignalPayload::Description { description: SessionDescription { kind: SdpType::Answer, sdp } } => {
                MediaCommand::Answer { peer: id.clone(), sdp }
            }
            // Candidates, and rollbacks/pranswers the SFU never asks for.
            _ => return Ok(()),
        };
        if media.try_send(cmd).is_err() {
            self.stats.media_commands_dropped += 1;
            warn!(peer = %id, "SFU queue full; refusing a signal");
            // Nothing changed: the same signal may be sent again in a moment.
            let mut msg = ServerMsg::error(ErrorCode::MediaRetry, Some("signal"));
            if let ServerMsg::Error { retry_after_ms, .. } = &mut msg {
                *retry_after_ms = Some(crate::media::BUSY_RETRY.as_millis() as u64);
            }
            self.send(id, msg);
            return Ok(());
        }
        // A (new) SFU session starts with nothing held: a muted participant stays muted on it,
        // and one whose camera and screen are off stays unseen.
        if offer {
            self.tell_sfu_hold(id, Some(SfuHold::default()));
        }
        Ok(())
    }

    fn file_offer(
        &mut self,
        id: &PeerId,
        room: &Arc<str>,
        name: &str,
        size: u64,
        mime: &str,
        sha256: &str,
    ) -> Result<(), ErrorCode> {
        let sender = self.rooms.get(room).and_then(|r| r.member(id)).map(|p| p.name.clone());
        let sender = sender.ok_or(ErrorCode::NotInRoom)?;
        if self.rooms.get(room).is_none_or(|r| r.topology() != Topology::Sfu) {
            // Pages in p2p rooms send files over their data channels: the server stores none.
            return Err(ErrorCode::NotSfuRoom);
        }
        let ip = self.conns.get(id).map(|c| c.ip).ok_or(ErrorCode::NotInRoom)?;
        let now = Instant::now();
        let (file_id, url) = self.files.offer(room, id, ip, &sender, name, size, mime, sha256, now)?;
        self.send(id, ServerMsg::FileUpload { id: file_id, url });
        Ok(())
    }

    fn file_command(&mut self, cmd: FileCommand) {
        match cmd {
            FileCommand::BeginUpload { id, key, reply } => {
                let _ = reply.send(self.files.begin_upload(&id, &key, Instant::now()));
            }
            FileCommand::EndUpload { id, ok } => {
                if let Some((room, file)) = self.files.end_upload(&id, ok) {
                    if self.rooms.contains_key(&room) {
                        self.broadcast(&room, None, Arc::new(ServerMsg::File { file }));
                    } else {
                        // The room emptied during the upload.
                        self.files.room_closed(&room);
                    }
                }
            }
            FileCommand::Download { id, ip, reply } => {
                let _ = reply.send(self.files.download(&id, ip, Instant::now()));
            }
        }
    }

    /// Passes the SFU's SDP or error on, if the participant is still in an `sfu` room.
    fn media_event(&mut self, event: MediaEvent) {
        let (peer, msg) = match event {
            MediaEvent::Signal { peer, payload, session } => {
                (peer, ServerMsg::Signal { from: PeerId(SFU_PEER_ID.to_string()), payload, session: Some(session) })
            }
            MediaEvent::Error { peer, code, request, session, retry_after } => {
                let mut msg = ServerMsg::error(code, request);
                if let ServerMsg::Error { session: s, retry_after_ms, .. } = &mut msg {
                    *s = session;
                    // Rounded up: sent again after this long, the signal is in time.
                    *retry_after_ms = retry_after.map(|d| d.as_micros().div_ceil(1000) as u64);
                }
                (peer, msg)
            }
            MediaEvent::ActiveSpeaker { room, peer } => {
                // Only while the speaker is still there (the event may trail a leave).
                let here = self
                    .rooms
                    .get(room.as_str())
                    .is_some_and(|r| r.topology() == Topology::Sfu && r.member(&peer).is_some());
                if here {
                    self.broadcast(&room, None, Arc::new(ServerMsg::ActiveSpeaker { peer }));
                }
                return;
            }
        };
        let room = self.conns.get(&peer).and_then(|c| c.room.as_ref());
        if room.and_then(|r| self.rooms.get(r)).is_some_and(|r| r.topology() == Topology::Sfu) {
            self.send(&peer, msg);
        }
    }

    fn chat(&mut self, id: &PeerId, room: &str, text: &str) -> Result<(), ErrorCode> {
        let text = validate::chat_text(text, self.config.max_chat_chars).ok_or(ErrorCode::InvalidText)?;
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let message = self.rooms.get_mut(room).and_then(|r| r.post_chat(id, &text, ts)).ok_or(ErrorCode::NotInRoom)?;
        self.broadcast(room, None, Arc::new(ServerMsg::Chat { message }));
        Ok(())
    }

    /// Takes `id` out of its room, tells the others, and drops the room when it empties.
    fn leave_room(&mut self, id: &PeerId, reason: LeaveReason) {
        let Some(room) = self.take_out(id) else { return };
        let Some(r) = self.rooms.get_mut(&room) else { return };
        if r.is_empty() {
            self.close_room(&room);
        } else {
            let new_host = r.ensure_host();
            self.broadcast(&room, None, Arc::new(ServerMsg::PeerLeft { id: id.clone(), reason }));
            if let Some(peer) = new_host {
                info!(peer = %peer.id, "became the host");
                self.broadcast(&room, None, Arc::new(ServerMsg::PeerUpdated { peer }));
                if self.rooms.get(&room).is_some_and(Room::has_waiters) {
                    self.tell_hosts_waiting(&room);
                }
            }
        }
        info!(peer = %id, ?reason, "left a room");
    }

    /// Takes `id` out of its room without telling anyone (the meeting ended); closes the room
    /// after the last one.
    fn leave_room_quietly(&mut self, id: &PeerId) {
        let Some(room) = self.take_out(id) else { return };
        if self.rooms.get(&room).is_some_and(Room::is_empty) {
            self.close_room(&room);
        }
    }

    /// The part of leaving every way shares: out of the room's list, the SFU told.
    fn take_out(&mut self, id: &PeerId) -> Option<Arc<str>> {
        let conn = self.conns.get_mut(id)?;
        let room = conn.room.take()?;
        conn.forget_recent();
        // Before anyone is told: the relay is closed by the time they act on it.
        self.end_relay(id);
        // Offers it never started uploading go with it.
        self.files.owner_left(id);
        let r = self.rooms.get_mut(&room)?;
        r.remove(id);
        if r.topology() == Topology::Sfu {
            if let Some(media) = &self.media {
                if media.try_send(MediaCommand::Leave { peer: id.clone() }).is_err() {
                    // Its SFU session then ends when its connection times out.
                    self.stats.media_commands_dropped += 1;
                    warn!(peer = %id, "SFU queue full; a leave was dropped");
                }
            }
        }
        self.rooms_dirty = true;
        Some(room)
    }

    /// Sends `msg` to every member of `room` but `except`, serialised once for all of them.
    fn broadcast(&mut self, room: &str, except: Option<&PeerId>, msg: Arc<ServerMsg>) {
        let Some(r) = self.rooms.get(room) else { return };
        let frame = Frame::new(&msg);
        let max = self.config.outbox_bytes;
        for peer in r.members() {
            if Some(&peer.id) == except {
                continue;
            }
            if self.conns.get_mut(&peer.id).is_some_and(|conn| !conn.offer(frame.clone(), max)) {
                self.overflowed.push(peer.id.clone());
            }
        }
    }

    fn send(&mut self, id: &PeerId, msg: ServerMsg) {
        self.send_frame(id, Frame::new(&msg));
    }

    fn send_arc(&mut self, id: &PeerId, msg: Arc<ServerMsg>) {
        self.send_frame(id, Frame::new(&msg));
    }

    fn send_frame(&mut self, id: &PeerId, frame: Frame) {
        let max = self.config.outbox_bytes;
        if self.conns.get_mut(id).is_some_and(|conn| !conn.offer(frame, max)) {
            self.overflowed.push(id.clone());
        }
    }

    /// Sends a `welcome`, which resumes do not count or replay.
    fn send_uncounted(&mut self, id: &PeerId, msg: Arc<ServerMsg>) {
        let Some(outbox) = self.conns.get(id).and_then(|c| c.outbox.as_ref()) else { return };
        if outbox.try_send(Frame::new(&msg)).is_err() {
            self.overflowed.push(id.clone());
        }
    }

    /// Disconnects every connection that could not take a message. Evicting tells the rest of
    /// its room, which may overflow further outboxes, hence the loop.
    fn evict_overflowed(&mut self) {
        while let Some(id) = self.overflowed.pop() {
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            if let Some(kick) = conn.kick.take() {
                self.stats.evicted_too_slow += 1;
                warn!(peer = %id, "disconnecting a connection that cannot keep up");
                let _ = kick.send(ByeReason::TooSlow);
            }
            self.disconnect(&id, LeaveReason::TooSlow);
        }
    }

    /// Whether watchers are owed a fresh room list.
    pub fn rooms_dirty(&self) -> bool {
        self.rooms_dirty
    }

    /// Sends the list of public rooms to every watcher (called at most every
    /// [`ROOM_LIST_INTERVAL`]). It is made afresh each time from the rooms as they are: a room
    /// that stopped being public (settings mark the list dirty) is not in the next one.
    pub fn publish_rooms(&mut self) {
        self.rooms_dirty = false;
        if self.watchers.is_empty() {
            return;
        }
        let msg = Frame::new(&self.room_list());
        let (conns, max) = (&mut self.conns, self.config.outbox_bytes);
        let slow =
            self.watchers.iter().filter(|id| conns.get_mut(*id).is_some_and(|conn| !conn.offer(msg.clone(), max)));
        self.overflowed.extend(slow.cloned());
        self.evict_overflowed();
    }

    fn room_list(&self) -> ServerMsg {
        let mut rooms: Vec<RoomSummary> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.is_listed())
            .map(|(name, r)| RoomSummary {
                name: name.to_string(),
                participants: r.len() as u32,
                capacity: self.config.room_capacity,
            })
            .collect();
        rooms.sort_by(|a, b| b.participants.cmp(&a.participants).then_with(|| a.name.cmp(&b.name)));
        rooms.truncate(ROOM_LIST_MAX);
        ServerMsg::Rooms { rooms }
    }

    fn begin_shutdown(&mut self, done: oneshot::Sender<()>) {
        info!(connections = self.conns.len(), "saying goodbye to every connection");
        let bye = Frame::new(&ServerMsg::Bye { reason: ByeReason::ServerShutdown });
        self.closing = true;
        self.files.clear();
        // Sessions without a connection have nobody to say goodbye to; they leave their rooms
        // (and waiting rooms) as a lost connection would, so no member is left without one.
        let suspended: Vec<PeerId> =
            self.conns.iter().filter(|(_, c)| c.suspended.is_some()).map(|(id, _)| id.clone()).collect();
        for id in suspended {
            if self.saved {
                // Saved for the restart: its room must not hear it left.
                self.leave_room_quietly(&id);
                self.leave_waiting_room(&id);
                self.conns.remove(&id);
            } else {
                self.disconnect(&id, LeaveReason::Disconnected);
            }
        }
        for conn in self.conns.values_mut() {
            // Dropping the outbox after `bye` lets the connection task write it, then close.
            if let Some(outbox) = conn.outbox.take() {
                let _ = outbox.try_send(bye.clone());
            }
        }
        if self.conns.is_empty() {
            let _ = done.send(());
        } else {
            self.shutdown = Some(done);
        }
    }

    /// Checks that the hub's tables agree with each other, and says what is wrong if not. Cheap
    /// enough to call after every command; the `room_state` fuzz target (`fuzz/`) does. Holds
    /// between commands: no room is empty or over capacity; a connection's room and that room's
    /// member list agree both ways, and every member and every watcher is a live connection;
    /// the participant count is the number of connections in a room; no eviction is left
    /// pending; a room uses the SFU only when there is one; a pending shutdown has connections
    /// left to wait for.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.rooms.len() > self.config.max_rooms as usize {
            return Err(format!("{} rooms, more than the limit of {}", self.rooms.len(), self.config.max_rooms));
        }
        for (name, room) in &self.rooms {
            if room.is_empty() {
                return Err(format!("room {name:?} is empty but still listed"));
            }
            if room.len() > self.config.room_capacity as usize {
                return Err(format!("room {name:?} holds {} people, over its capacity", room.len()));
            }
            if room.topology() == Topology::Sfu && self.media.is_none() {
                return Err(format!("room {name:?} uses the SFU but the hub has none"));
            }
            let s = room.settings();
            if s.listed && (s.locked || s.waiting_room || s.has_password) {
                return Err(format!("room {name:?} is protected but listed: {s:?}"));
            }
            if s.has_password != room.password().is_some() {
                return Err(format!("room {name:?} says has_password {} but has no hash", s.has_password));
            }
            let mut seen = HashSet::new();
            for peer in room.members() {
                if !seen.insert(&peer.id) {
                    return Err(format!("{} is listed twice in room {name:?}", peer.id));
                }
                match self.conns.get(&peer.id) {
                    None => return Err(format!("{} is in room {name:?} but not connected", peer.id)),
                    Some(conn) if conn.room.as_ref() != Some(name) => {
                        return Err(format!("{} is in room {name:?} but its connection says {:?}", peer.id, conn.room));
                    }
                    Some(_) => {}
                }
            }
        }
        for (id, conn) in &self.conns {
            if let Some(room) = &conn.room {
                if self.rooms.get(room).is_none_or(|r| r.member(id).is_none()) {
                    return Err(format!("{id} thinks it is in room {room:?}, which does not list it"));
                }
            }
        }
        if let Some(id) = self.watchers.iter().find(|id| !self.conns.contains_key(*id)) {
            return Err(format!("watcher {id} is not connected"));
        }
        let tokens_may_set_roles = self.config.token_secret.is_some() || self.config.token_public_key.is_some();
        for (name, room) in &self.rooms {
            let hosts = room.members().filter(|p| p.role == Role::Host).count();
            // Operator tokens may make everyone a participant, or bring a second host.
            if !tokens_may_set_roles && hosts != 1 {
                return Err(format!("room {name:?} has {hosts} hosts"));
            }
            for k in room.waiting() {
                match self.conns.get(&k.id) {
                    Some(c) if c.waiting_in.as_ref() == Some(name) && c.room.is_none() => {}
                    other => {
                        return Err(format!(
                            "{} waits in {name:?} but its connection is {:?}",
                            k.id,
                            other.map(|c| (&c.room, &c.waiting_in))
                        ))
                    }
                }
            }
        }
        for (id, conn) in &self.conns {
            if let Some(room) = &conn.waiting_in {
                if self.rooms.get(room).is_none_or(|r| !r.waiting().iter().any(|k| &k.id == id)) {
                    return Err(format!("{id} thinks it waits at {room:?}, which does not list it"));
                }
            }
            if conn.suspended.is_some() && (conn.outbox.is_some() || conn.room.is_none()) {
                return Err(format!("{id} is suspended but has a connection or no room"));
            }
            if conn.room.is_none() && (conn.turn_user.is_some() || conn.ice_renew.is_some()) {
                return Err(format!("{id} holds relay credentials outside a room"));
            }
            if conn.recent.len() > RESUME_BUFFER {
                return Err(format!("{id} keeps {} messages for a resume", conn.recent.len()));
            }
            let bytes: usize = conn.recent.iter().map(Frame::len).sum();
            if bytes != conn.recent_bytes || bytes > self.config.outbox_bytes {
                return Err(format!("{id} keeps {bytes} bytes for a resume (counted {})", conn.recent_bytes));
            }
        }
        let in_rooms = self.conns.values().filter(|c| c.room.is_some()).count();
        if self.stats().participants != in_rooms {
            return Err(format!(
                "{} participants counted, {in_rooms} connections in a room",
                self.stats().participants
            ));
        }
        if !self.overflowed.is_empty() {
            return Err(format!("evictions left pending: {:?}", self.overflowed));
        }
        if self.shutdown.is_some() && self.conns.is_empty() {
            return Err("shutdown still waits though every connection is gone".to_string());
        }
        Ok(())
    }
}

/// The hub task: applies commands in order, pushes the room list on a timer and ends the
/// sessions not resumed in time. When the last session ends, the memory freed goes back to the
/// system (see [`crate::memory`]), at most every [`MEMORY_RELEASE_INTERVAL`].
///
/// With `save_to`, shutdown first writes the sessions there for the next start
/// ([`Hub::save_for_restart`]).
pub async fn run(mut hub: Hub, mut commands: mpsc::Receiver<Command>, mut save_to: Option<std::path::PathBuf>) {
    // Password hashes and checks come back here (at most MAX_JOBS_IN_FLIGHT at a time).
    let (jobs_done, mut jobs) = mpsc::unbounded_channel();
    hub.run_jobs_elsewhere(jobs_done);
    let mut tick = tokio::time::interval(ROOM_LIST_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut released: Option<Instant> = None;
    loop {
        let expiry = hub.next_expiry();
        let had_sessions = !hub.conns.is_empty();
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(cmd @ Command::Shutdown { .. }) => {
                    if let Some(path) = save_to.take() {
                        let saved = hub.save_for_restart();
                        // One write as the server stops; nothing else is waiting on the hub.
                        crate::persist::save_sessions(&path, &saved);
                    }
                    hub.handle(cmd);
                }
                Some(cmd) => hub.handle(cmd),
                None => break,
            },
            _ = tick.tick(), if hub.rooms_dirty() => hub.publish_rooms(),
            Some(done) = jobs.recv() => hub.job_done(done),
            _ = sleep_until(expiry), if expiry.is_some() => hub.expire(Instant::now()),
        }
        let due = released.is_none_or(|t| t.elapsed() >= MEMORY_RELEASE_INTERVAL);
        if had_sessions && hub.conns.is_empty() && due {
            released = Some(Instant::now());
            if let Some(took) = crate::memory::release_free_memory() {
                hub.stats.memory_releases += 1;
                debug!(?took, "nobody left: gave the allocator's free memory back");
            }
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t).await;
    }
}

/// Longest room password, in characters.
pub const PASSWORD_MAX_CHARS: u32 = 64;

/// What the SFU forwards to no one of a participant's media ([`MediaCommand::Hold`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SfuHold {
    audio: bool,
    video: bool,
}

/// A `join`'s fields.
struct JoinRequest {
    protocol: u32,
    room: String,
    name: String,
    audio: bool,
    video: bool,
    password: Option<String>,
    token: Option<String>,
}

/// The newest of `saved` that a resume buffer keeps (at most [`RESUME_BUFFER`] messages and
/// `max_bytes`), as frames, with their bytes.
fn kept_for_resume(saved: &[ServerMsg], max_bytes: usize) -> (VecDeque<Frame>, usize) {
    let mut kept = VecDeque::new();
    let mut bytes = 0;
    for msg in saved.iter().rev().take(RESUME_BUFFER) {
        let frame = Frame::new(msg);
        if bytes + frame.len() > max_bytes {
            break;
        }
        bytes += frame.len();
        kept.push_front(frame);
    }
    (kept, bytes)
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use huddle_protocol::{IceCandidate, SignalPayload};

    struct Client {
        id: PeerId,
        rx: crate::outbox::OutboxReceiver,
        kick: oneshot::Receiver<ByeReason>,
    }

    impl Client {
        fn next(&mut self) -> ServerMsg {
            self.rx.try_recv().expect("a message is waiting").decode().expect("a ServerMsg")
        }
        fn drain(&mut self) -> Vec<ServerMsg> {
            std::iter::from_fn(|| self.rx.try_recv().ok().and_then(|m| m.decode())).collect()
        }
    }

    fn hub_with(f: impl FnOnce(&mut Config)) -> Hub {
        let mut c = Config::default();
        f(&mut c);
        Hub::new(Arc::new(c))
    }

    fn connect(hub: &mut Hub, n: u32, cap: usize) -> Client {
        connect_as(hub, n, cap, None).0
    }

    /// Connection number `n`, optionally resuming; returns the client and its `welcome`.
    fn connect_as(hub: &mut Hub, n: u32, cap: usize, resume: Option<Resume>) -> (Client, ServerMsg) {
        let (tx, rx) = crate::outbox::outbox(cap, Config::default().outbox_bytes);
        let (ktx, krx) = oneshot::channel();
        let (stx, mut srx) = oneshot::channel();
        let id = PeerId(format!("p{n}"));
        let ip = std::net::Ipv4Addr::new(10, 0, 0, n as u8).into();
        let c = Connect { conn: n.into(), id, outbox: tx, kick: ktx, host: None, ip, resume, session: stx };
        hub.handle(Command::Connect(c));
        let id = srx.try_recv().expect("the hub names the session");
        let mut c = Client { id, rx, kick: krx };
        let welcome = c.next();
        assert!(matches!(welcome, ServerMsg::Welcome { .. }));
        (c, welcome)
    }

    #[test]
    fn sfu_rooms_pass_offers_and_tile_preferences_to_the_media_task() {
        let c = Config { topology: TopologyMode::Sfu, ..Config::default() };
        let (media_tx, mut media_rx) = mpsc::channel(16);
        let mut hub = Hub::with_media(Arc::new(c), media_tx);
        let mut a = connect(&mut hub, 1, 16);
        let mut b = connect(&mut hub, 2, 16);
        assert!(matches!(join(&mut hub, &mut a, "r"), ServerMsg::Joined { topology: Topology::Sfu, .. }));
        assert!(matches!(join(&mut hub, &mut b, "r"), ServerMsg::Joined { topology: Topology::Sfu, .. }));
        let offer =
            SignalPayload::Description { description: SessionDescription { kind: SdpType::Offer, sdp: "v=0".into() } };
        let to_sfu = ClientMsg::Signal { to: PeerId(SFU_PEER_ID.into()), payload: offer };
        hub.handle(Command::Client { id: a.id.clone(), msg: to_sfu });
        assert!(matches!(media_rx.try_recv(), Ok(MediaCommand::Offer { peer, .. }) if peer == a.id));
        let hide = ClientMsg::Receive { peer: b.id.clone(), video: huddle_protocol::VideoQuality::Off };
        hub.handle(Command::Client { id: a.id.clone(), msg: hide });
        assert!(matches!(
            media_rx.try_recv(),
            Ok(MediaCommand::Receive { peer, publisher, video: huddle_protocol::VideoQuality::Off })
                if peer == a.id && publisher == b.id
        ));
        // Not about yourself, nor about strangers.
        for target in [a.id.clone(), PeerId("p99".into())] {
            let msg = ClientMsg::Receive { peer: target, video: huddle_protocol::VideoQuality::High };
            hub.handle(Command::Client { id: a.id.clone(), msg });
            assert!(matches!(a.drain().last(), Some(ServerMsg::Error { code: ErrorCode::UnknownPeer, .. })));
        }
        assert!(media_rx.try_recv().is_err(), "nothing else reached the media task");
        // Leaving tells the SFU.
        hub.handle(Command::Client { id: a.id.clone(), msg: ClientMsg::Leave });
        assert!(matches!(media_rx.try_recv(), Ok(MediaCommand::Leave { peer }) if peer == a.id));
    }

    #[test]
    fn the_sfu_is_told_what_it_must_not_forward_when_that_changes_and_after_each_offer() {
        let c = Config { topology: TopologyMode::Sfu, ..Config::default() };
        let (media_tx, mut media_rx) = mpsc::channel(16);
        let mut hub = Hub::with_media(Arc::new(c), media_tx);
        let (mut host, mut b) = (connect(&mut hub, 1, 64), connect(&mut hub, 2, 64));
        join(&mut hub, &mut host, "r");
        join(&mut hub, &mut b, "r");
        let say = |hub: &mut Hub, id: &PeerId, msg| hub.handle(Command::Client { id: id.clone(), msg });
        // (audio, video) held, in every `Hold` sent since the last look.
        let mut holds = || -> Vec<(bool, bool)> {
            std::iter::from_fn(|| media_rx.try_recv().ok())
                .filter_map(|c| match c {
                    MediaCommand::Hold { audio, video, .. } => Some((audio, video)),
                    _ => None,
                })
                .collect()
        };
        let media = |audio, video, screen| ClientMsg::Media { audio, video, screen };
        say(&mut hub, &b.id, media(true, true, false));
        assert_eq!(holds(), [], "nothing changed");
        say(&mut hub, &b.id, media(true, false, true));
        assert_eq!(holds(), [], "its screen is on instead of its camera: still seen");
        say(&mut hub, &b.id, media(true, false, false));
        assert_eq!(holds(), [(false, true)]);
        let offer =
            SignalPayload::Description { description: SessionDescription { kind: SdpType::Offer, sdp: "v=0".into() } };
        say(&mut hub, &b.id, ClientMsg::Signal { to: PeerId(SFU_PEER_ID.into()), payload: offer });
        assert_eq!(holds(), [(false, true)], "a new session is told again");
        say(&mut hub, &b.id, media(true, true, false));
        assert_eq!(holds(), [(false, false)]);
        let moderate = |action| ClientMsg::Moderate { peer: b.id.clone(), action };
        say(&mut hub, &host.id, moderate(ModAction::StopVideo));
        assert_eq!(holds(), [(false, true)], "a host stopped its camera");
        say(&mut hub, &host.id, moderate(ModAction::Mute));
        assert_eq!(holds(), [(true, true)]);
        say(&mut hub, &b.id, media(false, true, false));
        assert!(matches!(b.drain().last(), Some(ServerMsg::Error { code: ErrorCode::MutedByHost, .. })));
        assert_eq!(holds(), [], "refused: nothing changes");
    }

    #[test]
    fn the_sfu_names_the_active_speaker_to_the_whole_room_only_while_they_are_in_it() {
        let c = Config { topology: TopologyMode::Sfu, ..Config::default() };
        let (media_tx, _media_rx) = mpsc::channel(16);
        let mut hub = Hub::with_media(Arc::new(c), media_tx);
        let mut a = connect(&mut hub, 1, 16);
        let mut b = connect(&mut hub, 2, 16);
        let mut x = connect(&mut hub, 3, 16);
        join(&mut hub, &mut a, "r");
        join(&mut hub, &mut b, "r");
        join(&mut hub, &mut x, "elsewhere");
        a.drain();
        let speaker = |peer: &PeerId| MediaEvent::ActiveSpeaker { room: "r".into(), peer: peer.clone() };
        hub.handle(Command::Media(speaker(&b.id)));
        let b_id = b.id.clone();
        for c in [&mut a, &mut b] {
            assert!(matches!(c.drain().as_slice(), [ServerMsg::ActiveSpeaker { peer }] if *peer == b_id));
        }
        assert!(x.drain().is_empty(), "other rooms hear nothing");
        // An event that trails the speaker's leave is dropped.
        hub.handle(Command::Client { id: b.id.clone(), msg: ClientMsg::Leave });
        a.drain();
        hub.handle(Command::Media(speaker(&b.id)));
        assert!(a.drain().is_empty());
    }

    fn join(hub: &mut Hub, c: &mut Client, room: &str) -> ServerMsg {
        join_with(hub, c, room, None, None)
    }

    fn error_code(m: ServerMsg) -> ErrorCode {
        match m {
            ServerMsg::Error { code, .. } => code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn join_lists_existing_peers_and_tells_them() {
        let mut hub = hub_with(|_| {});
        let mut a = connect(&mut hub, 1, 16);
        let mut b = connect(&mut hub, 2, 16);
        assert!(matches!(join(&mut hub, &mut a, "r"), ServerMsg::Joined { ref peers, .. } if peers.is_empty()));
        match join(&mut hub, &mut b, " r ") {
            ServerMsg::Joined { room, peers, .. } => {
                assert_eq!(room, "r", "room names are trimmed");
                assert_eq!(peers.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), vec![a.id.clone()]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(a.next(), ServerMsg::PeerJoined { peer } if peer.id == b.id));
        assert_eq!(hub.stats().participants, 2);
    }

    #[test]
    fn room_full_is_refused_and_changes_nothing() {
        let mut hub = hub_with(|c| c.room_capacity = 2);
        let mut cs: Vec<Client> = (1..=3).map(|n| connect(&mut hub, n, 16)).collect();
        for c in cs.iter_mut().take(2) {
            join(&mut hub, c, "r");
        }
        assert_eq!(error_code(join(&mut hub, &mut cs[2], "r")), ErrorCode::RoomFull);
        assert_eq!(hub.stats().participants, 2);
        assert!(cs[0].drain().iter().all(|m| !matches!(m, ServerMsg::PeerJoined { peer } if peer.id.0 == "p3")));
    }

    #[test]
    fn signal_goes_to_one_peer_of_the_same_room_only() {
        let mut hub = hub_with(|_| {});
        let mut a = connect(&mut hub, 1, 16);
        let mut b = connect(&mut hub, 2, 16);
        let mut c = connect(&mut hub, 3, 16);
        let mut d = connect(&mut hub, 4, 16);
        join(&mut hub, &mut a, "one");
        join(&mut hub, &mut b, "one");
        join(&mut hub, &mut c, "one");
        join(&mut hub, &mut d, "two");
        for x in [&mut a, &mut b, &mut c] {
            x.drain();
        }
        let payload = SignalPayload::Candidate {
            candidate: Some(IceCandidate {
                candidate: "candidate:1".into(),
                sdp_mid: None,
                sdp_m_line_index: Some(0),
                username_fragment: None,
            }),
        };
        hub.handle(Command::Client {
            id: a.id.clone(),
            msg: ClientMsg::Signal { to: b.id.clone(), payload: payload.clone() },
        });
        assert!(matches!(b.next(), ServerMsg::Signal { ref from, .. } if *from == a.id));
        assert!(c.drain().is_empty(), "never broadcast");
        hub.handle(Command::Client {
            id: a.id.clone(),
            msg: ClientMsg::Signal { to: d.id.clone(), payload: payload.clone() },
        });
        assert_eq!(error_code(a.next()), ErrorCode::UnknownPeer, "other room");
        assert!(d.drain().is_empty());
        hub.handle(Command::Client { id: a.id.clone(), msg: ClientMsg::Signal { to: a.id.clone(), payload } });
        assert_eq!(error_code(a.next()), ErrorCode::UnknownPeer, "self");
    }

    #[test]
    fn chat_history_is_bounded_and_handed_to_latecomers() {
        let mut hub = hub_with(|c| c.chat_history = 3);
        let mut a = connect(&mut hub, 1, 64);
        join(&mut hub, &mut a, "r");
        for i in 0..5 {
            hub.handle(Command::Client { id: a.id.clone(), msg: ClientMsg::Chat { text: format!("m{i}") } });
        }
        assert_eq!(a.drain().len(), 5, "the sender gets its own messages");
        let mut b = connect(&mut hub, 2, 64);
        match join(&mut hub, &mut b, "r") {
            ServerMsg::Joined { chat, .. } => {
                assert_eq!(chat.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["m2", "m3", "m4"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn messages_before_joining_are_refused() {
        let mut hub = hub_with(|_| {});
        let mut a = connect(&mut hub, 1, 16);
        for msg in [
            ClientMsg::Leave,
            ClientMsg::Chat { text: "x".into() },
            ClientMsg::Media { audio: true, video: true, screen: false },
        ] {
            hub.handle(Command::Client { id: a.id.clone(), msg });
            assert_eq!(error_code(a.next()), ErrorCode::NotInRoom);
        }
    }

    #[test]
    fn empty_rooms_disappear_and_watchers_see_it() {
        let mut hub = hub_with(|_| {});
        let mut w = connect(&mut hub, 9, 16);
        hub.handle(Command::Client { id: w.id.clone(), msg: ClientMsg::WatchRooms });
        assert!(matches!(w.next(), ServerMsg::Rooms { rooms } if rooms.is_empty()));
        let mut a = connect(&mut hub, 1, 16);
        join(&mut hub, &mut a, "한국어 방");
        hub.publish_rooms();
        match w.next() {
            ServerMsg::Rooms { rooms } => assert_eq!((rooms[0].name.as_str(), rooms[0].participants), ("한국어 방", 1)),
            other => panic!("{other:?}"),
        }
        hub.handle(Command::Disconnect { id: a.id.clone(), conn: 1, reason: LeaveReason::Left, resumable: true });
        assert_eq!(hub.stats().rooms, 0);
        assert!(hub.rooms_dirty());
        hub.publish_rooms();
        assert!(matches!(w.next(), ServerMsg::Rooms { rooms } if rooms.is_empty()));
    }

    #[test]
    fn a_slow_client_is_evicted_without_stalling_others() {
        let mut hub = hub_with(|_| {});
        let mut fast = connect(&mut hub, 1, 1024);
        let mut slow = connect(&mut hub, 2, 8);
        join(&mut hub, &mut fast, "r");
        join(&mut hub, &mut slow, "r");
        fast.drain();
        // `slow` never reads: its queue of 8 fills up.
        for i in 0..20 {
            hub.handle(Command::Client { id: fast.id.clone(), msg: ClientMsg::Chat { text: format!("{i}") } });
        }
        assert_eq!(slow.kick.try_recv(), Ok(ByeReason::TooSlow));
        let got = fast.drain();
        assert_eq!(
            got.iter().filter(|m| matches!(m, ServerMsg::Chat { .. })).count(),
            20,
            "the fast client got everything"
        );
        assert!(got.iter().any(|m| matches!(m, ServerMsg::PeerLeft { reason: LeaveReason::TooSlow, .. })));
        assert_eq!(hub.stats().evicted_too_slow, 1);
        assert_eq!(hub.stats().participants, 1);
    }

    #[test]
    fn shutdown_says_bye_and_completes_when_all_are_gone() {
        let mut hub = hub_with(|_| {});
        let mut a = connect(&mut hub, 1, 16);
        let (done_tx, mut done_rx) = oneshot::channel();
        hub.handle(Command::Shutdown { done: done_tx });
        assert!(matches!(a.next(), ServerMsg::Bye { reason: ByeReason::ServerShutdown }));
        assert!(matches!(a.rx.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)), "outbox closed");
        assert!(done_rx.try_recv().is_err());
        hub.handle(Command::Disconnect { id: a.id.clone(), conn: 1, reason: LeaveReason::Left, resumable: true });
        assert_eq!(done_rx.try_recv(), Ok(()));
    }
    fn send(hub: &mut Hub, c: &Client, msg: ClientMsg) {
        hub.handle(Command::Client { id: c.id.clone(), msg });
    }

    fn join_with(hub: &mut Hub, c: &mut Client, room: &str, password: Option<&str>, token: Option<&str>) -> ServerMsg {
        let msg = ClientMsg::Join {
            protocol: 1,
            room: room.into(),
            name: format!("name {}", c.id),
            audio: true,
            video: true,
            password: password.map(str::to_string),
            token: token.map(str::to_string),
        };
        hub.handle(Command::Client { id: c.id.clone(), msg });
        c.next()
    }

    fn role_of(m: &ServerMsg) -> Role {
        match m {
            ServerMsg::Joined { you, .. } => you.role,
            other => panic!("expected joined, got {other:?}"),
        }
    }

    #[test]
    fn the_opener_hosts_and_participants_cannot_give_host_commands() {
        let mut hub = hub_with(|_| {});
        let mut host = connect(&mut hub, 1, 64);
        let mut guest = connect(&mut hub, 2, 64);
        assert_eq!(role_of(&join(&mut hub, &mut host, "r")), Role::Host);
        assert_eq!(role_of(&join(&mut hub, &mut guest, "r")), Role::Participant);
        host.drain();
        let host_id = host.id.clone();
        let forbidden = [
            ClientMsg::Settings {
                locked: Some(true),
                waiting_room: None,
                allow_unmute: None,
                password: None,
                listed: None,
            },
            ClientMsg::Moderate { peer: host_id.clone(), action: ModAction::Mute },
            ClientMsg::Moderate { peer: host_id.clone(), action: ModAction::Remove },
            ClientMsg::SetRole { peer: guest.id.clone(), role: Role::Host },
            ClientMsg::Admit { peer: PeerId("p9".into()) },
            ClientMsg::AdmitAll,
            ClientMsg::EndMeeting,
            ClientMsg::Invite { ttl_secs: None },
        ];
        for msg in forbidden {
            send(&mut hub, &guest, msg);
            assert_eq!(error_code(guest.next()), ErrorCode::NotAllowed);
        }
        assert!(host.drain().is_empty(), "nothing reached the host");
        let fresh = huddle_protocol::RoomSettings { listed: true, ..Default::default() };
        assert_eq!(hub.rooms.get("r").map(|r| r.settings()), Some(fresh), "nothing changed");
        assert_eq!(hub.rooms.get("r").and_then(|r| r.role(&host_id)), Some(Role::Host));
    }

    #[test]
    fn the_waiting_room_holds_newcomers_until_a_host_decides() {
        let mut hub = hub_with(|_| {});
        let mut host = connect(&mut hub, 1, 64);
        join(&mut hub, &mut host, "r");
        let on = ClientMsg::Settings {
            locked: None,
            waiting_room: Some(true),
            allow_unmute: None,
            password: None,
            listed: None,
        };
        send(&mut hub, &host, on);
        assert!(matches!(host.next(), ServerMsg::RoomSettings { settings } if settings.waiting_room));
        let mut a = connect(&mut hub, 2, 64);
        let mut b = connect(&mut hub, 3, 64);
        assert!(matches!(join(&mut hub, &mut a, "r"), ServerMsg::Waiting { .. }));
        assert!(matches!(host.next(), ServerMsg::WaitingList { waiting } if waiting.len() == 1));
        // Waiting is not being in: no chat, no signalling, no second knock.
        send(&mut hub, &a, ClientMsg::Chat { text: "let me in".into() });
        assert_eq!(error_code(a.next()), ErrorCode::NotInRoom);
        send(
            &mut hub,
            &a,
            ClientMsg::Signal { to: host.id.clone(), payload: SignalPayload::Candidate { candidate: None } },
        );
        assert_eq!(error_code(a.next()), ErrorCode::NotInRoom);
        assert_eq!(error_code(join(&mut hub, &mut a, "r")), ErrorCode::AlreadyInRoom);
        assert!(host.drain().is_empty());
        assert!(matches!(join(&mut hub, &mut b, "r"), ServerMsg::Waiting { .. }));
        assert!(matches!(host.next(), ServerMsg::WaitingList { waiting } if waiting.len() == 2));
        // Deny b, admit a.
        send(&mut hub, &host, ClientMsg::Deny { peer: b.id.clone() });
        assert_eq!(error_code(b.next()), ErrorCode::KnockDenied);
        send(&mut hub, &host, ClientMsg::Admit { peer: a.id.clone() });
        assert!(matches!(a.next(), ServerMsg::Joined { .. }));
        let got = host.drain();
        assert!(got.iter().any(|m| matches!(m, ServerMsg::PeerJoined { peer } if peer.id == a.id)));
        assert_eq!(hub.stats().participants, 2);
        assert_eq!(hub.stats().waiting, 0);
        // Admitting someone who is not waiting is refused.
        send(&mut hub, &host, ClientMsg::Admit { peer: b.id.clone() });
        assert_eq!(error_code(host.drain().pop().expect("an answer")), ErrorCode::UnknownPeer);
    }

    #[test]
    fn passwords_invites_and_tokens() {
        let mut hub = hub_with(|_| {});
        let mut host = connect(&mut hub, 1, 64);
        join(&mut hub, &mut host, "r");
        let set = ClientMsg::Settings {
            locked: None,
            waiting_room: None,
            allow_unmute: None,
            password: Some("open sesame".into()),
            listed: None,
        };
        send(&mut hub, &host, set);
        assert!(matches!(host.next(), ServerMsg::RoomSettings { settings } if settings.has_password));
        let mut g = connect(&mut hub, 2, 64);
        assert_eq!(error_code(join_with(&mut hub, &mut g, "r", None, None)), ErrorCode::PasswordRequired);
        assert_eq!(error_code(join_with(&mut hub, &mut g, "r", Some("open"), None)), ErrorCode::WrongPassword);
        // Tokens: mis-signed, and a real invite.
        let forged = "eyJhbGciOiJIUzI1NiJ9.eyJyb29tIjoiciIsImV4cCI6OTk5OTk5OTk5OSwiaW52Ijp0cnVlfQ.AAAA";
        assert_eq!(error_code(join_with(&mut hub, &mut g, "r", None, Some(forged))), ErrorCode::InvalidToken);
        send(&mut hub, &host, ClientMsg::Invite { ttl_secs: Some(600) });
        let ServerMsg::InviteToken { token, .. } = host.next() else { panic!("an invite") };
        assert_eq!(error_code(join_with(&mut hub, &mut g, "other room", None, Some(&token))), ErrorCode::InvalidToken);
        assert_eq!(hub.stats().participants, 1, "nobody got in");
        assert!(matches!(join_with(&mut hub, &mut g, "r", None, Some(&token)), ServerMsg::Joined { .. }));
        let mut h = connect(&mut hub, 3, 64);
        assert!(matches!(join_with(&mut hub, &mut h, "r", Some("open sesame"), None), ServerMsg::Joined { .. }));
        // Locked: even the password does not help.
        let lock = ClientMsg::Settings {
            locked: Some(true),
            waiting_room: None,
            allow_unmute: None,
            password: None,
            listed: None,
        };
        send(&mut hub, &host, lock);
        let mut late = connect(&mut hub, 4, 64);
        assert_eq!(error_code(join_with(&mut hub, &mut late, "r", Some("open sesame"), None)), ErrorCode::RoomLocked);
    }

    /// With password checks on other threads, a join's check can end after the room changed: a
    /// check begun before a new password does not let the old one in, a second join waits for
    /// the first, and a room that closed meanwhile answers `room_closed`.
    #[tokio::test]
    async fn a_password_check_counts_only_for_the_room_and_password_it_began_with() {
        let mut hub = hub_with(|_| {});
        let (tx, mut done) = mpsc::unbounded_channel();
        hub.run_jobs_elsewhere(tx);
        let mut host = connect(&mut hub, 1, 64);
        join(&mut hub, &mut host, "r");
        let set = |p: &str| ClientMsg::Settings {
            locked: None,
            waiting_room: None,
            allow_unmute: None,
            password: Some(p.into()),
            listed: None,
        };
        send(&mut hub, &host, set("old"));
        assert!(host.drain().is_empty(), "announced once hashed");
        let hashed = done.recv().await.expect("hashed");
        hub.job_done(hashed);
        assert!(matches!(host.next(), ServerMsg::RoomSettings { settings } if settings.has_password));
        let mut g = connect(&mut hub, 2, 64);
        let old = ClientMsg::Join {
            protocol: 1,
            room: "r".into(),
            name: "G".into(),
            audio: false,
            video: false,
            password: Some("old".into()),
            token: None,
        };
        send(&mut hub, &g, old.clone());
        assert!(g.drain().is_empty(), "the answer waits for the check");
        send(&mut hub, &g, old.clone());
        assert_eq!(error_code(g.next()), ErrorCode::AlreadyInRoom, "one join at a time");
        // The host changes the password while the check runs; the check ends after that.
        send(&mut hub, &host, set("new"));
        let (first, second) = (done.recv().await.expect("checked"), done.recv().await.expect("hashed"));
        let (check, hash) = if matches!(first.0, Done::Verified { .. }) { (first, second) } else { (second, first) };
        hub.job_done(hash);
        hub.job_done(check);
        // Checked again against the new password, which "old" is not.
        let again = done.recv().await.expect("checked again");
        hub.job_done(again);
        assert_eq!(error_code(g.next()), ErrorCode::WrongPassword);
        assert_eq!(hub.stats().participants, 1);
        // The room closes while a check runs.
        let mut new = old;
        if let ClientMsg::Join { password, .. } = &mut new {
            *password = Some("new".into());
        }
        send(&mut hub, &g, new);
        send(&mut hub, &host, ClientMsg::Leave);
        let check = done.recv().await.expect("checked");
        hub.job_done(check);
        assert_eq!(error_code(g.next()), ErrorCode::RoomClosed);
        assert_eq!(hub.stats().rooms, 0);
        hub.check_invariants().expect("consistent");
    }

    #[test]
    fn operator_tokens_are_required_when_configured_and_give_their_role() {
        let secret = "an operator secret of enough length!";
        let mut hub = hub_with(|c| {
            c.token_secret = Some(secret.into());
            c.require_token = true;
        });
        let mut a = connect(&mut hub, 1, 64);
        assert_eq!(error_code(join(&mut hub, &mut a, "r")), ErrorCode::TokenRequired);
        let claims = |role: &str, exp: u64| serde_json::json!({"room": "r", "exp": exp, "role": role, "name": "Ops"});
        let expired = crate::tokens::tests::operator_hs256(secret.as_bytes(), &claims("host", 1000));
        assert_eq!(error_code(join_with(&mut hub, &mut a, "r", None, Some(&expired))), ErrorCode::TokenExpired);
        let guest = crate::tokens::tests::operator_hs256(secret.as_bytes(), &claims("participant", unix_secs() + 60));
        match join_with(&mut hub, &mut a, "r", None, Some(&guest)) {
            ServerMsg::Joined { you, .. } => assert_eq!((you.role, you.name.as_str()), (Role::Participant, "Ops")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hosts_mute_remove_and_ban_and_the_role_passes_on() {
        let mut hub = hub_with(|_| {});
        let mut host = connect(&mut hub, 1, 64);
        let mut co = connect(&mut hub, 2, 64);
        let mut g = connect(&mut hub, 3, 64);
        join(&mut hub, &mut host, "r");
        join(&mut hub, &mut co, "r");
        join(&mut hub, &mut g, "r");
        send(&mut hub, &host, ClientMsg::SetRole { peer: co.id.clone(), role: Role::Cohost });
        co.drain();
        g.drain();
        // A co-host mutes g; g may not unmute until the room allows it.
        send(&mut hub, &co, ClientMsg::Moderate { peer: g.id.clone(), action: ModAction::Mute });
        assert!(matches!(g.next(), ServerMsg::Moderated { action: ModAction::Mute, .. }));
        send(&mut hub, &g, ClientMsg::Media { audio: true, video: true, screen: false });
        assert_eq!(error_code(g.next()), ErrorCode::MutedByHost);
        assert!(!hub.rooms["r"].member(&g.id).expect("member").audio);
        // A co-host cannot act on the host.
        send(&mut hub, &co, ClientMsg::Moderate { peer: host.id.clone(), action: ModAction::Remove });
        assert!(matches!(co.drain().last(), Some(ServerMsg::Error { code: ErrorCode::NotAllowed, .. })));
        // Ban g: out, and not back in.
        send(&mut hub, &host, ClientMsg::Moderate { peer: g.id.clone(), action: ModAction::Ban });
        assert!(matches!(g.drain().last(), Some(ServerMsg::Removed { ban: true, .. })));
        assert!(co.drain().iter().any(|m| matches!(m, ServerMsg::PeerLeft { reason: LeaveReason::Removed, .. })));
        assert_eq!(error_code(join(&mut hub, &mut g, "r")), ErrorCode::Banned);
        // The host leaves: the co-host becomes host.
        send(&mut hub, &host, ClientMsg::Leave);
        let co_id = co.id.clone();
        assert!(co
            .drain()
            .iter()
            .any(|m| matches!(m, ServerMsg::PeerUpdated { peer } if peer.id == co_id && peer.role == Role::Host)));
    }

    #[test]
    fn ending_the_meeting_empties_the_room() {
        let mut hub = hub_with(|_| {});
        let mut host = connect(&mut hub, 1, 64);
        let mut g = connect(&mut hub, 2, 64);
        join(&mut hub, &mut host, "r");
        join(&mut hub, &mut g, "r");
        g.drain();
        send(&mut hub, &host, ClientMsg::EndMeeting);
        assert!(matches!(g.drain().as_slice(), [ServerMsg::Ended { .. }]), "ended, without a stream of leaves");
        assert_eq!((hub.stats().rooms, hub.stats().participants), (0, 0));
        send(&mut hub, &g, ClientMsg::Chat { text: "x".into() });
        assert_eq!(error_code(g.next()), ErrorCode::NotInRoom);
    }

    #[test]
    fn hands_and_reactions_reach_everyone() {
        let mut hub = hub_with(|_| {});
        let mut a = connect(&mut hub, 1, 64);
        let mut b = connect(&mut hub, 2, 64);
        join(&mut hub, &mut a, "r");
        join(&mut hub, &mut b, "r");
        a.drain();
        send(&mut hub, &b, ClientMsg::Hand { raised: true });
        assert!(matches!(a.next(), ServerMsg::PeerUpdated { peer } if peer.hand));
        send(&mut hub, &b, ClientMsg::React { emoji: "🎉".into() });
        assert!(matches!(a.next(), ServerMsg::Reaction { emoji, .. } if emoji == "🎉"));
        send(&mut hub, &b, ClientMsg::React { emoji: "<script>".into() });
        assert!(matches!(b.drain().last(), Some(ServerMsg::Error { code: ErrorCode::InvalidReaction, .. })));
        // A latecomer sees the raised hand.
        let mut c = connect(&mut hub, 3, 64);
        match join(&mut hub, &mut c, "r") {
            ServerMsg::Joined { peers, .. } => assert!(peers.iter().any(|p| p.hand)),
            other => panic!("{other:?}"),
        }
    }

    fn resume_of(welcome: &ServerMsg, id: &PeerId, seen: u64) -> Resume {
        match welcome {
            ServerMsg::Welcome { resume, .. } => Resume { id: id.clone(), secret: resume.clone(), seen },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn saved_sessions_come_back_suspended_and_those_not_resumed_leave_after_the_grace_period() {
        let mut hub = hub_with(|_| {});
        let (mut a, wa) = connect_as(&mut hub, 1, 64, None);
        let (mut b, _) = connect_as(&mut hub, 2, 64, None);
        // Someone outside any room: not kept (its page starts over cheaply).
        let _lobby = connect(&mut hub, 3, 64);
        join(&mut hub, &mut a, "r");
        join(&mut hub, &mut b, "r");
        send(&mut hub, &b, ClientMsg::Hand { raised: true });
        let seen = 1 + a.drain().len() as u64;
        let saved = hub.save_for_restart();
        let (done, _) = oneshot::channel();
        hub.handle(Command::Shutdown { done });
        assert!(!a.drain().iter().any(|m| matches!(m, ServerMsg::PeerLeft { .. })), "nobody is told of a leave");

        let mut next = hub_with(|_| {});
        let now = Instant::now();
        assert_eq!(next.restore(&saved, now), Ok(3), "new connections are numbered above p3, the last handed out");
        next.check_invariants().expect("consistent after a restore");
        assert_eq!((next.stats().suspended, next.stats().participants, next.stats().connections), (2, 2, 2));
        // Alice comes back; Bob never does.
        let (mut a2, w) = connect_as(&mut next, 4, 64, Some(resume_of(&wa, &a.id, seen)));
        assert!(matches!(w, ServerMsg::Welcome { resumed: true, .. }), "{w:?}");
        assert_eq!(next.rooms["r"].role(&a.id), Some(Role::Host));
        assert!(next.rooms["r"].member(&b.id).expect("kept").hand, "Bob's hand was kept");
        assert!(a2.drain().is_empty(), "nothing missed");
        next.expire(now + next.config.resume_grace - Duration::from_millis(1));
        assert!(a2.drain().is_empty(), "not before the grace period ends");
        next.expire(now + next.config.resume_grace);
        assert!(matches!(&a2.drain()[..], [ServerMsg::PeerLeft { id, .. }] if *id == b.id));
        next.check_invariants().expect("consistent");
        // Something that is not a saved hub, or kept while resuming is off, is refused.
        assert!(hub_with(|_| {}).restore(b"{}", now).is_err());
        assert!(hub_with(|c| c.resume_grace = Duration::ZERO).restore(&saved, now).is_err());
    }

    /// A hub with huddle's TURN server, whose commands come out of the returned receiver (the
    /// sender keeps the hub's weak one alive).
    fn hub_with_turn(f: impl FnOnce(&mut Config)) -> (Hub, mpsc::Sender<TurnCommand>, mpsc::Receiver<TurnCommand>) {
        let mut hub = hub_with(f);
        let handle = TurnHandle {
            secret: huddle_turn::Secret::new(b"turn secret"),
            port: 3478,
            tls_port: None,
            host: None,
            credential_ttl: hub.config.turn_credential_ttl,
        };
        let (tx, rx) = mpsc::channel(64);
        hub.set_turn(handle, tx.downgrade());
        (hub, tx, rx)
    }

    /// The relay user of huddle's TURN server among `servers` (the part after the colon).
    fn relay_user(servers: &[IceServer]) -> Option<String> {
        servers.iter().find_map(|s| s.username.as_deref()?.split_once(':').map(|(_, u)| u.to_string()))
    }

    #[test]
    fn relay_credentials_come_with_joined_are_renewed_in_the_room_and_end_with_it() {
        let (mut hub, _turn, mut commands) = hub_with_turn(|_| {});
        let ttl = hub.config.turn_credential_ttl;
        let (mut a, welcome) = connect_as(&mut hub, 1, 64, None);
        assert!(matches!(welcome, ServerMsg::Welcome { ref ice_servers, .. } if ice_servers.is_empty()));
        assert_eq!(hub.next_expiry(), None, "nothing to renew outside a room");
        let ServerMsg::Joined { ice_servers, .. } = join(&mut hub, &mut a, "r") else { panic!("joined") };
        let user = relay_user(&ice_servers).expect("joined carries relay credentials");
        assert!(user.starts_with("s."), "{user}");
        assert!(matches!(commands.try_recv(), Ok(TurnCommand::Grant { users }) if users == [user.clone()]));
        // Renewed at half the TTL, for the same relay user, and again after that.
        let renew = hub.next_expiry().expect("a renewal is due");
        assert!(renew <= Instant::now() + ttl / 2);
        hub.expire(renew);
        match &a.drain()[..] {
            [ServerMsg::IceServers { ice_servers }] => assert_eq!(relay_user(ice_servers).as_ref(), Some(&user)),
            other => panic!("expected ice_servers, got {other:?}"),
        }
        assert!(hub.next_expiry().is_some_and(|t| t >= renew + ttl / 2));
        // Leaving ends it; coming back is another relay user.
        send(&mut hub, &a, ClientMsg::Leave);
        assert!(matches!(commands.try_recv(), Ok(TurnCommand::Revoke { user: u }) if u == user));
        assert_eq!(hub.next_expiry(), None);
        hub.check_invariants().expect("consistent");
        a.drain();
        let ServerMsg::Joined { ice_servers, .. } = join(&mut hub, &mut a, "r") else { panic!("joined") };
        assert_ne!(relay_user(&ice_servers), Some(user), "never the same relay user twice");
        // A disconnect without a resume ends it too.
        let mut b = connect(&mut hub, 2, 64);
        join(&mut hub, &mut b, "r");
        let mut granted = std::iter::from_fn(|| commands.try_recv().ok()).filter_map(|c| match c {
            TurnCommand::Grant { mut users } => users.pop(),
            _ => None,
        });
        let (_, b_user) = (granted.next(), granted.next().expect("b's"));
        hub.handle(Command::Disconnect { id: b.id.clone(), conn: 2, reason: LeaveReason::Left, resumable: true });
        assert!(matches!(commands.try_recv(), Ok(TurnCommand::Revoke { user: u }) if u == b_user));
    }

    #[test]
    fn a_restart_grants_the_kept_sessions_relay_users_again_and_renews_them_on_resume() {
        let (mut hub, _turn, mut commands) = hub_with_turn(|_| {});
        let (mut a, wa) = connect_as(&mut hub, 1, 64, None);
        let ServerMsg::Joined { ice_servers, .. } = join(&mut hub, &mut a, "r") else { panic!("joined") };
        let user = relay_user(&ice_servers).expect("credentials");
        let _lobby = connect(&mut hub, 7, 64);
        let saved = hub.save_for_restart();
        let (done, _) = oneshot::channel();
        hub.handle(Command::Shutdown { done });
        while commands.try_recv().is_ok() {}

        let (mut next, _turn, mut commands) = hub_with_turn(|_| {});
        let now = Instant::now();
        assert_eq!(next.restore(&saved, now), Ok(7), "above every id handed out, the lobby's too");
        assert!(matches!(commands.try_recv(), Ok(TurnCommand::Grant { users }) if users == [user.clone()]));
        assert_eq!(next.next_expiry(), Some(now + next.config.resume_grace), "no renewal while away");
        let (mut a2, _) = connect_as(&mut next, 8, 64, Some(resume_of(&wa, &a.id, 1)));
        match &a2.drain()[..] {
            [ServerMsg::IceServers { ice_servers }] => assert_eq!(relay_user(ice_servers), Some(user)),
            other => panic!("expected fresh credentials after the resume, got {other:?}"),
        }
        next.check_invariants().expect("consistent");
    }

    #[test]
    fn a_lost_connection_resumes_the_same_session_with_what_it_missed() {
        let mut hub = hub_with(|_| {});
        let (mut a, welcome) = connect_as(&mut hub, 1, 64, None);
        let mut b = connect(&mut hub, 2, 64);
        join(&mut hub, &mut a, "r");
        join(&mut hub, &mut b, "r");
        send(&mut hub, &a, ClientMsg::Hand { raised: true });
        let seen = 1 + a.drain().len() as u64; // joined, then the rest
        hub.handle(Command::Disconnect {
            id: a.id.clone(),
            conn: 1,
            reason: LeaveReason::Disconnected,
            resumable: true,
        });
        assert_eq!(hub.stats().suspended, 1);
        for i in 0..3 {
            send(&mut hub, &b, ClientMsg::Chat { text: format!("while away {i}") });
        }
        assert!(!b.drain().iter().any(|m| matches!(m, ServerMsg::PeerLeft { .. })), "no leave seen");
        // A wrong secret gets a new session and leaves the old one alone.
        let mut wrong = resume_of(&welcome, &a.id, seen);
        wrong.secret = "00".repeat(16);
        let (x, _) = connect_as(&mut hub, 5, 64, Some(wrong));
        assert_ne!(x.id, a.id);
        assert_eq!(hub.stats().suspended, 1);
        // The right one: same id, welcome says resumed, then the three chats, once each.
        let (mut a2, w2) = connect_as(&mut hub, 6, 64, Some(resume_of(&welcome, &a.id, seen)));
        assert_eq!(a2.id, a.id);
        // The server took a's join and hand: the page resends nothing older.
        assert!(matches!(w2, ServerMsg::Welcome { resumed: true, received: 2, .. }));
        let replay = a2.drain();
        assert_eq!(replay.len(), 3, "{replay:?}");
        assert!(replay.iter().all(|m| matches!(m, ServerMsg::Chat { .. })));
        assert!(hub.rooms["r"].member(&a.id).expect("still in").hand, "hand kept");
        // The old connection's late disconnect does not end the resumed session.
        hub.handle(Command::Disconnect {
            id: a.id.clone(),
            conn: 1,
            reason: LeaveReason::Disconnected,
            resumable: true,
        });
        assert_eq!((hub.stats().suspended, hub.stats().participants), (0, 2));
    }

    #[test]
    fn a_session_not_resumed_in_time_leaves() {
        let mut hub = hub_with(|c| c.resume_grace = Duration::from_secs(5));
        let mut a = connect(&mut hub, 1, 64);
        let mut b = connect(&mut hub, 2, 64);
        join(&mut hub, &mut a, "r");
        join(&mut hub, &mut b, "r");
        b.drain();
        hub.handle(Command::Disconnect {
            id: a.id.clone(),
            conn: 1,
            reason: LeaveReason::Disconnected,
            resumable: true,
        });
        hub.expire(Instant::now());
        assert!(b.drain().is_empty(), "not yet");
        hub.expire(Instant::now() + Duration::from_secs(6));
        assert!(matches!(b.drain().first(), Some(ServerMsg::PeerLeft { reason: LeaveReason::Disconnected, .. })));
        assert_eq!((hub.stats().connections, hub.stats().suspended), (1, 0));
        // A page that said goodbye leaves at once.
        hub.handle(Command::Disconnect { id: b.id.clone(), conn: 2, reason: LeaveReason::Left, resumable: true });
        assert_eq!(hub.stats().rooms, 0);
    }

    /// Found by the `room_state` fuzz target: once shutdown had completed (at once when nobody
    /// was connected, or when the last connection left) the hub forgot it and welcomed new
    /// connections into a server about to stop.
    #[test]
    fn connections_after_shutdown_are_turned_away_even_once_it_completed() {
        for connected_before in [false, true] {
            let mut hub = hub_with(|_| {});
            let a = connected_before.then(|| connect(&mut hub, 1, 16));
            let (done_tx, mut done_rx) = oneshot::channel();
            hub.handle(Command::Shutdown { done: done_tx });
            if let Some(a) = a {
                hub.handle(Command::Disconnect { id: a.id, conn: 1, reason: LeaveReason::Left, resumable: true });
            }
            assert_eq!(done_rx.try_recv(), Ok(()));
            let (tx, mut rx) = crate::outbox::outbox(16, 1 << 20);
            let (ktx, mut krx) = oneshot::channel();
            let (stx, _srx) = oneshot::channel();
            let ip = std::net::Ipv4Addr::LOCALHOST.into();
            let c = Connect {
                conn: 2,
                id: PeerId("p2".into()),
                outbox: tx,
                kick: ktx,
                host: None,
                ip,
                resume: None,
                session: stx,
            };
            hub.handle(Command::Connect(c));
            assert_eq!(krx.try_recv(), Ok(ByeReason::ServerShutdown));
            assert!(rx.try_recv().is_err(), "no welcome");
            assert_eq!(hub.stats().connections, 0);
        }
    }

    #[test]
    fn shutdown_with_a_session_kept_for_a_resume_leaves_no_ghost_in_its_room() {
        let mut hub = hub_with(|_| {});
        let mut a = connect(&mut hub, 1, 64);
        let mut b = connect(&mut hub, 2, 64);
        join(&mut hub, &mut a, "r");
        join(&mut hub, &mut b, "r");
        b.drain();
        let (id, reason) = (a.id.clone(), LeaveReason::Disconnected);
        hub.handle(Command::Disconnect { id, conn: 1, reason, resumable: true });
        assert_eq!(hub.stats().suspended, 1);
        let (done, mut done_rx) = oneshot::channel();
        hub.handle(Command::Shutdown { done });
        hub.check_invariants().expect("no member without a connection");
        assert_eq!((hub.stats().connections, hub.stats().participants), (1, 1));
        let to_b = b.drain();
        assert!(to_b.iter().any(|m| matches!(m, ServerMsg::PeerLeft { id, .. } if *id == a.id)), "{to_b:?}");
        assert!(matches!(to_b.last(), Some(ServerMsg::Bye { .. })), "{to_b:?}");
        let (id, reason) = (b.id.clone(), LeaveReason::Disconnected);
        hub.handle(Command::Disconnect { id, conn: 2, reason, resumable: true });
        assert_eq!(done_rx.try_recv(), Ok(()));
        assert_eq!((hub.stats().connections, hub.stats().rooms), (0, 0));
    }

    #[test]
    fn a_session_kept_for_a_resume_ends_with_its_meeting() {
        let mut hub = hub_with(|_| {});
        let mut host = connect(&mut hub, 1, 64);
        let mut a = connect(&mut hub, 2, 64);
        join(&mut hub, &mut host, "r");
        join(&mut hub, &mut a, "r");
        let (id, reason) = (a.id.clone(), LeaveReason::Disconnected);
        hub.handle(Command::Disconnect { id, conn: 2, reason, resumable: true });
        assert_eq!(hub.stats().suspended, 1);
        send(&mut hub, &host, ClientMsg::EndMeeting);
        hub.check_invariants().expect("no suspended session outside a room");
        assert_eq!((hub.stats().suspended, hub.stats().connections), (0, 1));
    }

    /// The hub task, not just the hub: once the last session has ended (here one kept for a
    /// resume, at the end of its grace period) the allocator's free memory goes back to the
    /// system; not while any session remains, and not again within [`MEMORY_RELEASE_INTERVAL`].
    #[tokio::test(start_paused = true)]
    async fn the_hub_task_gives_freed_memory_back_when_the_last_session_ends() {
        let hub = hub_with(|_| {});
        let grace = hub.config.resume_grace;
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(run(hub, rx, None));
        let stats = || async {
            let (reply, answer) = oneshot::channel();
            tx.send(Command::Stats { reply }).await.expect("the hub runs");
            answer.await.expect("the hub answers")
        };
        // Session `n`, in room `r`; its receivers are kept open.
        let mut open = Vec::new();
        let mut enter = async |n: u32| {
            let (outbox, messages) = crate::outbox::outbox(64, 1 << 20);
            let (kick, kicked) = oneshot::channel();
            let (session, named) = oneshot::channel();
            let ip = std::net::Ipv4Addr::LOCALHOST.into();
            let id = PeerId(format!("p{n}"));
            let c = Connect { conn: n.into(), id, outbox, kick, host: None, ip, resume: None, session };
            tx.send(Command::Connect(c)).await.expect("the hub runs");
            let id = named.await.expect("the hub names the session");
            let join = ClientMsg::Join {
                protocol: PROTOCOL_VERSION,
                room: "r".into(),
                name: format!("n{n}"),
                audio: false,
                video: false,
                password: None,
                token: None,
            };
            tx.send(Command::Client { id: id.clone(), msg: join }).await.expect("the hub runs");
            open.push((messages, kicked));
            id
        };
        let (a, b) = (enter(1).await, enter(2).await);
        assert_eq!((stats().await.participants, stats().await.memory_releases), (2, 0));
        let leave =
            |id: PeerId, conn: u64, reason: LeaveReason| Command::Disconnect { id, conn, reason, resumable: true };
        tx.send(leave(b, 2, LeaveReason::Left)).await.expect("the hub runs");
        tx.send(leave(a, 1, LeaveReason::Disconnected)).await.expect("the hub runs");
        let s = stats().await;
        assert_eq!((s.connections, s.suspended, s.memory_releases), (1, 1, 0));
        // The paused clock jumps to the end of the grace period.
        tokio::time::sleep(grace + Duration::from_secs(1)).await;
        let s = stats().await;
        let on_glibc = u64::from(cfg!(all(target_os = "linux", target_env = "gnu")));
        assert_eq!((s.connections, s.rooms, s.memory_releases), (0, 0, on_glibc));
        // Someone comes and goes at once: too soon for another release; later, one more.
        let c = enter(3).await;
        tx.send(leave(c, 3, LeaveReason::Left)).await.expect("the hub runs");
        assert_eq!(stats().await.memory_releases, on_glibc);
        tokio::time::sleep(MEMORY_RELEASE_INTERVAL).await;
        let d = enter(4).await;
        tx.send(leave(d, 4, LeaveReason::Left)).await.expect("the hub runs");
        assert_eq!((stats().await.connections, stats().await.memory_releases), (0, 2 * on_glibc));
        drop(tx);
        task.await.expect("the hub task ends when its channel closes");
    }
}
