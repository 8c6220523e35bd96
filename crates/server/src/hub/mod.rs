//! The hub: the single owner of every connection's outbox, every room and the room list.
//!
//! Connection tasks never touch shared state; they send [`Command`]s over one bounded channel,
//! and the hub task applies them one at a time ([`Hub::handle`]) and answers through each
//! connection's bounded outbox with `try_send`. A connection whose outbox is full is evicted
//! (reason `too_slow`) instead of stalling the room. [`Hub`] itself does no I/O and reads no
//! clock but the wall-clock timestamp of chat messages, so it is unit-tested directly below.
//!
//! The hub's methods are grouped by what they touch, one file each:
//!
//! - `sessions` — node-local: connecting, resuming, expiring sessions and delivering into their
//!   outboxes;
//! - `rooms` — joining (passwords, tokens, invites, the waiting room), entering, leaving, chat,
//!   the room list; `moderation` — host commands; `bridges` — the SFU and the file store;
//! - `relay` — TURN credentials; `jobs` — password work off this task; `snapshot` — what outlives
//!   a graceful restart; `invariants` — what the tests and the fuzz target check after each step.
//!
//! The first two are the cut `docs/design/room-ownership.md` makes between what stays on the
//! node a WebSocket landed on and what moves with a room's owner (several workers, several
//! nodes); today one task still owns both.

use crate::config::{Config, TopologyMode};
use crate::files::{FileCommand, FileLimits, FileStore};
use crate::media::{MediaCommand, MediaEvent};
use crate::room::breakout::meeting_of as breakout_meeting;
use crate::room::password::PasswordHash;
use crate::room::{Held, Room, RoomError, Waiter};
use crate::tokens::Tokens;
use crate::turn::{TurnCommand, TurnHandle};
use crate::validate;
use huddle_protocol::{
    ByeReason, ClientMsg, EndReason, ErrorCode, IceServer, Knocker, LeaveReason, ModAction, Peer, PeerId, Role,
    RoomSummary, SdpType, ServerMsg, SessionDescription, SignalPayload, Topology, PROTOCOL_VERSION, REACTIONS,
    SFU_PEER_ID,
};
use membership::{Place, Rooms};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
// The runtime's clock, so that grace periods follow a paused clock in tests.
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// What a connection task receives to write to its socket (see [`crate::outbox`]).
pub use crate::outbox::{Frame, Outbox};

mod breakout;
mod bridges;
mod invariants;
mod jobs;
mod membership;
mod moderation;
mod recording;
mod relay;
mod rooms;
mod sessions;
mod snapshot;

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
    /// Hand over session `id` (attached as connection `conn`, in no room and no waiting room) to
    /// another node: it is removed here, and `reply` gets what the next home needs, with the
    /// outbox and kick of its connection; `None` when it cannot move (see [`crate::cluster`]).
    Export { id: PeerId, conn: u64, reply: oneshot::Sender<Option<Exported>> },
    /// Take in a session another node exported, attached as connection `conn`. No `welcome`:
    /// the page already has it.
    Adopt { handoff: Handoff, conn: u64, outbox: Outbox, kick: oneshot::Sender<ByeReason> },
    /// The public rooms another node owns, for the room list; kept until `until`, or until that
    /// node says again.
    RemoteRooms { node: String, rooms: Vec<RoomSummary>, until: Instant },
    /// Take over a room whose owner went away, from what it last saved ([`RoomEvent::Saved`]):
    /// its members wait for their pages to resume, as after a restart. `done` fires once it is
    /// in place (or was refused).
    RestoreRoom { saved: Vec<u8>, done: oneshot::Sender<()> },
    /// This node lost the room's lease (it was paused past it, or cut off from Redis): another
    /// node owns the room now, and this one stops acting for it at once ([`Hub::stand_down`]).
    StandDown { room: String },
    /// Save the room again (its saved state may be gone: Redis restarted).
    Resave { room: String },
    /// This node is stopping and hands its rooms to others ([`Hub::hand_over`]); `done` fires
    /// once their last state is on its way to Redis.
    HandOver { done: oneshot::Sender<()> },
    /// This node is about to take a room, perhaps with saved state to restore (`Some(until)`),
    /// or is done (`None`): meanwhile a resume of a session unknown here is not started over as
    /// a new session — the room's pages may reach it through other nodes as soon as its lease is
    /// taken, before its sessions are restored.
    Restoring { until: Option<Instant> },
    /// Whether session `id` lives on this hub (one worker of several: where a resume goes).
    Holds { id: PeerId, reply: oneshot::Sender<bool> },
    /// The list of `room`'s recordings changed (its hosts get it, if the room is here).
    RecordingsChanged { room: Arc<str> },
    /// A recording of `room` cannot go on (its writer hit a limit or an error).
    RecordingStop { room: Arc<str>, reason: huddle_protocol::RecordingStopReason },
}

/// A session in no room, as it moves from one node to another (the room it is about to join
/// lives on the other one): what its page already knows of it, and what bans look at.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Handoff {
    pub id: PeerId,
    pub secret: String,
    pub sent: u64,
    pub received: u64,
    pub ip: IpAddr,
    pub host: Option<String>,
    /// It watched the room list (`watch_rooms`): it still does where it goes.
    #[serde(default)]
    pub watching: bool,
}

/// What [`Command::Export`] gives back.
#[derive(Debug)]
pub struct Exported {
    pub handoff: Handoff,
    pub outbox: Outbox,
    pub kick: oneshot::Sender<ByeReason>,
}

/// What the hub tells the cluster layer about its rooms (only when it runs as one node of
/// several): a room began here, or ended here, and this node's public rooms changed.
#[derive(Clone, Debug, PartialEq)]
pub enum RoomEvent {
    Opened(Arc<str>),
    Closed(Arc<str>),
    Listed(Vec<RoomSummary>),
    /// The room's state changed: what the next owner would start from (see
    /// [`Hub::room_snapshot`]).
    Saved(Arc<str>, Vec<u8>),
}

/// How often a node of several saves the rooms that changed (a crash loses at most this much).
pub const ROOM_SAVE_INTERVAL: Duration = Duration::from_millis(250);
/// Rooms where only messages passed ([`Weight::Light`]) are saved every this many
/// [`ROOM_SAVE_INTERVAL`]s (every 2 s).
pub const LIGHT_SAVES_EVERY: u64 = 8;

/// Messages that pass through their room without changing it ([`Weight::Light`]).
fn changes_little(msg: &ClientMsg) -> bool {
    matches!(
        msg,
        ClientMsg::Signal { .. }
            | ClientMsg::Receive { .. }
            | ClientMsg::React { .. }
            | ClientMsg::Ping
            | ClientMsg::RelayCheck { .. }
            | ClientMsg::WatchRooms
            | ClientMsg::UnwatchRooms
    )
}

/// How much a command changes what is saved of its room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Weight {
    /// Settings, membership, roles, chat, hands...: saved within [`ROOM_SAVE_INTERVAL`].
    State,
    /// Only messages passing through (`signal` and the like): the sessions' counters and resume
    /// buffers change, nothing of the room. After a crash a page that saw more than was saved
    /// carries on from what it saw, and sends again what the save did not count; the media
    /// those messages negotiated starts over anyway when the SFU's room moves.
    Light,
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
    /// Times a bug panicked in the hub's task and its rooms were closed ([`Hub::recover`]).
    pub panics: u64,
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

impl Stats {
    /// Two workers' counters together.
    pub fn plus(self, o: &Stats) -> Stats {
        Stats {
            panics: self.panics + o.panics,
            connections: self.connections + o.connections,
            rooms: self.rooms + o.rooms,
            participants: self.participants + o.participants,
            evicted_too_slow: self.evicted_too_slow + o.evicted_too_slow,
            rejected: self.rejected + o.rejected,
            media_commands_dropped: self.media_commands_dropped + o.media_commands_dropped,
            suspended: self.suspended + o.suspended,
            waiting: self.waiting + o.waiting,
            resumed: self.resumed + o.resumed,
            resume_failed: self.resume_failed + o.resume_failed,
            memory_releases: self.memory_releases + o.memory_releases,
        }
    }
}

struct Conn {
    /// `None` once shutdown has closed it, or while the session is suspended.
    outbox: Option<Outbox>,
    kick: Option<oneshot::Sender<ByeReason>>,
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
    /// Taken over from a room's previous owner, which may have sent it more than it saved: its
    /// page's `seen` may be ahead of `sent` when it resumes.
    taken_over: bool,
    /// What would ban it from a room (`id:<peer id>`, `ip:<address>`, `sub:<token subject>`).
    keys: Vec<String>,
    /// The client's address, as of its latest connection.
    ip: IpAddr,
    /// Its join waits for a password check ([`Job::Verify`]).
    checking: bool,
    /// Its token's `rec` claim: `Some(false)` forbids it to record even as a host, `Some(true)`
    /// lets it record (start and stop) even as a participant.
    record_claim: Option<bool>,
    /// Its relay user (`s.<random>`) while it is in a room and huddle's TURN server runs: its
    /// credentials allocate from entering the room to leaving it (see [`Hub::start_relay`]).
    turn_user: Option<String>,
    /// When its relay credentials are next renewed (`ice_servers`).
    ice_renew: Option<Instant>,
}

impl Conn {
    /// Queues `msg` without waiting; `false` when the outbox is full (the client is too slow).
    /// A session in a room or waiting at one (`placed`) keeps it for a resume, at most
    /// `max_recent_bytes` of such messages.
    fn offer(&mut self, msg: Frame, placed: bool, max_recent_bytes: usize) -> bool {
        self.sent += 1;
        if placed {
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
    /// The rooms, and who is in or waits at which (see [`membership`]).
    rooms: Rooms,
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
    /// Told when rooms open and close, when this node is one of several.
    room_events: Option<mpsc::UnboundedSender<RoomEvent>>,
    /// The public rooms of the other nodes, by node, until when each list holds.
    remote_rooms: HashMap<String, (Vec<RoomSummary>, Instant)>,
    /// This node's public rooms as last told to the cluster.
    listed: Vec<RoomSummary>,
    /// Rooms changed since they were last saved (only when this node is one of several).
    unsaved: HashSet<Arc<str>>,
    /// Rooms where only messages passed since they were last saved (see [`Weight::Light`]).
    unsaved_light: HashSet<Arc<str>>,
    /// Saves so far ([`Hub::save_rooms`]), to save the lightly changed rooms every so often.
    save_ticks: u64,
    /// The rooms went to other nodes ([`Hub::hand_over`]): nothing changes here any more.
    handed_over: bool,
    /// See [`Command::Restoring`].
    restoring_until: Option<Instant>,
    /// When sessions' grace periods end and their relay credentials fall due (`Conn::suspended`,
    /// `Conn::ice_renew`), earliest first, so that the hub's loop learns its next deadline
    /// without a pass over every session. An entry may be stale (the session resumed, left, or
    /// its deadline moved): [`Hub::expire`] checks the session itself. See [`Hub::wake_at`].
    deadlines: BinaryHeap<Reverse<(Instant, PeerId)>>,
    /// The other workers of this process, when it runs several (see [`crate::workers`]).
    siblings: Option<crate::workers::Siblings>,
    /// The recordings store; `None`: this hub does not record (see [`recording`]).
    recordings: Option<Arc<crate::recording::Recordings>>,
    /// Meetings whose breakout rooms are open, and when their clock is next due (see
    /// [`breakout`]).
    breakout_due: HashMap<Arc<str>, Instant>,
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
            rooms: Rooms::default(),
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
            room_events: None,
            remote_rooms: HashMap::new(),
            listed: Vec::new(),
            unsaved: HashSet::new(),
            unsaved_light: HashSet::new(),
            save_ticks: 0,
            handed_over: false,
            restoring_until: None,
            deadlines: BinaryHeap::new(),
            siblings: None,
            recordings: None,
            breakout_due: HashMap::new(),
        }
    }

    /// A hub whose `sfu` rooms are served by the SFU task behind `media`.
    pub fn with_media(config: Arc<Config>, media: mpsc::Sender<MediaCommand>) -> Hub {
        Hub { media: Some(media), ..Hub::new(config) }
    }

    /// Applies one command. Never blocks.
    pub fn handle(&mut self, cmd: Command) {
        // One node of several saves each room that changed; a room changes through what its
        // members do.
        use Weight::{Light, State};
        let actor = match &cmd {
            _ if self.room_events.is_none() => None,
            Command::Client { id, msg } => Some((id.clone(), if changes_little(msg) { Light } else { State })),
            Command::Ignored { id }
            | Command::Reject { id, .. }
            | Command::Media(MediaEvent::Signal { peer: id, .. } | MediaEvent::Error { peer: id, .. }) => {
                Some((id.clone(), Light))
            }
            Command::Disconnect { id, .. } => Some((id.clone(), State)),
            Command::Connect(c) => c.resume.as_ref().map(|r| (r.id.clone(), State)),
            _ => None,
        };
        if let Some((id, weight)) = &actor {
            self.touched(id, *weight);
        }
        self.dispatch(cmd);
        if let Some((id, weight)) = &actor {
            self.touched(id, *weight);
        }
    }

    /// Marks the room `id` is in (or waits at) as changed, when rooms are saved.
    fn touched(&mut self, id: &PeerId, weight: Weight) {
        if self.room_events.is_none() {
            return;
        }
        if let Some(Place::In(room) | Place::Waiting(room)) = self.rooms.place(id).cloned() {
            // A breakout room is saved with its meeting (a lookup only for one of those).
            let room = match crate::room::breakout::index_of(&room) {
                Some(_) => self.meeting_key(&room).unwrap_or(room),
                None => room,
            };
            match weight {
                Weight::State => self.unsaved.insert(room),
                Weight::Light => self.unsaved_light.insert(room),
            };
        }
    }

    fn dispatch(&mut self, cmd: Command) {
        if self.handed_over {
            match cmd {
                Command::Shutdown { .. } | Command::Stats { .. } => {}
                Command::Disconnect { id, conn, .. } if self.shutdown.is_none() => {
                    // Its room is another node's now: the session waits there for its page.
                    self.detach_quietly(&id, conn);
                    return;
                }
                Command::Disconnect { .. } => {}
                // What pages send now is not taken (nor counted): they send it again to the
                // room's next owner when they resume there. Nothing else changes here either.
                _ => return,
            }
        }
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
            Command::Export { id, conn, reply } => {
                let _ = reply.send(self.export(&id, conn));
            }
            Command::Adopt { handoff, conn, outbox, kick } => self.adopt(handoff, conn, outbox, kick),
            Command::StandDown { room } => self.stand_down(&room),
            Command::Resave { room } => {
                if let Some(key) = self.rooms.get_key_value(room.as_str()).map(|(k, _)| k.clone()) {
                    self.unsaved.insert(key);
                }
            }
            Command::HandOver { done } => self.hand_over(done),
            Command::Restoring { until } => self.restoring_until = until,
            Command::RestoreRoom { saved, done } => {
                if let Err(why) = self.restore_room(&saved, Instant::now()) {
                    warn!(%why, "could not take over a room's saved state");
                }
                let _ = done.send(());
            }
            Command::Holds { id, reply } => {
                let _ = reply.send(self.conns.contains_key(&id));
            }
            Command::RecordingsChanged { room } => self.tell_recordings(&room),
            Command::RecordingStop { room, reason } => self.recording_cannot_go_on(&room, reason),
            Command::RemoteRooms { node, rooms, until } => {
                let now = Instant::now();
                self.remote_rooms.retain(|_, (_, until)| *until > now);
                if rooms.is_empty() {
                    self.remote_rooms.remove(&node);
                } else {
                    self.remote_rooms.insert(node, (rooms, until));
                }
                self.rooms_dirty = true;
            }
        }
        self.evict_overflowed();
    }

    /// Ids of files shared here start with `prefix` (a node of several: its id, so that any node
    /// knows where a file is kept, see [`crate::files::node_of_file`]).
    pub fn set_file_id_prefix(&mut self, prefix: &str) {
        self.files.set_id_prefix(prefix);
    }

    /// The server's and each address's file quotas are counted in `usage`, with the other
    /// workers' stores.
    pub fn share_file_usage(&mut self, usage: Arc<std::sync::Mutex<crate::files::ServerUsage>>) {
        self.files.share_usage(usage);
    }

    /// This hub is worker `siblings.index` of several: its public rooms are told to the others,
    /// and the cap on rooms counts theirs too.
    pub fn set_siblings(&mut self, siblings: crate::workers::Siblings) {
        self.siblings = Some(siblings);
    }

    /// Rooms open on this hub and (one worker of several) on the other workers.
    fn rooms_everywhere(&self) -> usize {
        self.rooms.len() + self.siblings.as_ref().map_or(0, |s| s.rooms.others(s.index))
    }

    /// Rooms opening and closing are told to `events` (see [`RoomEvent`]).
    pub fn set_room_events(&mut self, events: mpsc::UnboundedSender<RoomEvent>) {
        self.room_events = Some(events);
    }

    fn room_event(&self, event: RoomEvent) {
        if let Some(events) = &self.room_events {
            let _ = events.send(event);
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len(),
            rooms: self.rooms.len(),
            participants: self.rooms.values().map(Room::len).sum(),
            suspended: self.conns.values().filter(|c| c.suspended.is_some()).count(),
            waiting: self.rooms.waiting_count(),
            ..self.stats
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
        let checking = conn.checking;
        let (room, waiting) = match self.rooms.place(id) {
            Some(Place::In(room)) => (Some(room.clone()), None),
            Some(Place::Waiting(room)) => (None, Some(room.clone())),
            None => (None, None),
        };
        let result = match (msg, room) {
            (ClientMsg::Join { .. }, _) if waiting.is_some() || checking => Err(ErrorCode::AlreadyInRoom),
            (ClientMsg::Join { protocol, room, name, audio, video, password, token, recording_ok }, None) => {
                let req = JoinRequest { protocol, room, name, audio, video, password, token, recording_ok };
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
                self.send(id, ServerMsg::Left { room: breakout_meeting(&room).to_string() });
                Ok(())
            }
            (ClientMsg::Signal { to, payload }, Some(room)) if to.0 == SFU_PEER_ID => {
                self.signal_sfu(id, &room, payload)
            }
            (ClientMsg::Signal { to, payload }, Some(room)) => {
                let same_room = to != *id && self.rooms.room_of(&to) == Some(&room);
                if same_room {
                    self.send_to_member(&to, ServerMsg::Signal { from: id.clone(), payload, session: None });
                    Ok(())
                } else {
                    Err(ErrorCode::UnknownPeer)
                }
            }
            (ClientMsg::Chat { text }, Some(room)) => self.chat(id, &room, &text),
            (ClientMsg::Receive { peer, video }, Some(room)) => {
                let same_room = peer != *id && self.rooms.room_of(&peer) == Some(&room);
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
                let was = self.rooms.get(&room).and_then(|r| r.member(id)).cloned();
                match self.rooms.get_mut(&room).map(|r| r.set_media(id, audio, video, screen)) {
                    Some(Ok(Some(peer))) => {
                        self.record_media(&room, was.as_ref(), &peer);
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
            (
                msg @ (ClientMsg::BreakoutOpen { .. }
                | ClientMsg::BreakoutAssign { .. }
                | ClientMsg::BreakoutMove { .. }
                | ClientMsg::BreakoutBroadcast { .. }
                | ClientMsg::BreakoutHelp
                | ClientMsg::BreakoutClose { .. }),
                Some(room),
            ) => self.breakout_command(id, &room, msg),
            (msg, Some(room)) => self.host_command(id, &room, msg),
        };
        if let Err(code) = result {
            debug!(peer = %id, %code, request, "request refused");
            self.send(id, ServerMsg::error(code, Some(request)));
        }
    }
}

/// The hub task: applies commands in order, pushes the room list on a timer and ends the
/// sessions not resumed in time. When the last session ends, the memory freed goes back to the
/// system (see [`crate::memory`]), at most every [`MEMORY_RELEASE_INTERVAL`].
///
/// With `save_to`, shutdown first writes the sessions there for the next start
/// ([`Hub::save_for_restart`]).
///
/// A bug that panics in the hub closes this hub's rooms, with `ended {reason: "server_error"}`
/// to their people, and the hub goes on with what it holds ([`Hub::recover`]): the other
/// workers' rooms never notice, and the people of the closed rooms can join again at once.
pub async fn run(mut hub: Hub, mut commands: mpsc::Receiver<Command>, mut save_to: Option<std::path::PathBuf>) {
    use futures_util::FutureExt as _;
    // Commands taken from the queue and not yet applied: kept across a panic, so that those
    // after the one that panicked are still applied.
    let mut batch = VecDeque::with_capacity(COMMAND_BATCH);
    loop {
        let turns = std::panic::AssertUnwindSafe(turns(&mut hub, &mut commands, &mut save_to, &mut batch));
        match turns.catch_unwind().await {
            Ok(()) => return,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %what, rooms = hub.rooms.len(), "a bug panicked in the hub: its rooms are closed, and it goes on");
                hub.recover();
            }
        }
    }
}

/// [`run`]'s loop, until the queue closes (or a panic).
async fn turns(
    hub: &mut Hub,
    commands: &mut mpsc::Receiver<Command>,
    save_to: &mut Option<std::path::PathBuf>,
    batch: &mut VecDeque<Command>,
) {
    // Password hashes and checks come back here (at most MAX_JOBS_IN_FLIGHT at a time).
    let (jobs_done, mut jobs) = mpsc::unbounded_channel();
    hub.run_jobs_elsewhere(jobs_done);
    let mut tick = tokio::time::interval(ROOM_LIST_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut released: Option<Instant> = None;
    let mut save = tokio::time::interval(ROOM_SAVE_INTERVAL);
    save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One timer for the next deadline, moved when it changes (not a new one per command).
    let mut expiry = hub.next_expiry();
    let wake = tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now));
    tokio::pin!(wake);
    let mut taken = Vec::with_capacity(COMMAND_BATCH);
    // What a panic left of the last batch.
    apply(hub, batch, save_to);
    loop {
        let had_sessions = !hub.conns.is_empty();
        tokio::select! {
            // Everything already queued, up to a batch, in one go: one pass through this loop
            // (and its timers) per batch of messages, not per message.
            n = commands.recv_many(&mut taken, COMMAND_BATCH) => {
                if n == 0 {
                    break;
                }
                batch.extend(taken.drain(..));
                apply(hub, batch, save_to);
            }
            _ = tick.tick(), if hub.rooms_dirty() => hub.publish_rooms(),
            Some(done) = jobs.recv() => hub.job_done(done),
            _ = &mut wake, if expiry.is_some() => {
                hub.expire(Instant::now());
                // Set again below for whatever is due next (even at the same instant).
                expiry = None;
            }
            _ = save.tick(), if !hub.unsaved.is_empty() || !hub.unsaved_light.is_empty() => hub.save_rooms(),
        }
        if let Some(s) = &hub.siblings {
            s.rooms.set(s.index, hub.rooms.len());
        }
        let next = hub.next_expiry();
        if next != expiry {
            expiry = next;
            if let Some(t) = next {
                wake.as_mut().reset(t);
            }
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

/// Applies the commands of `batch` in order (one that panics is gone from it; the rest stay).
fn apply(hub: &mut Hub, batch: &mut VecDeque<Command>, save_to: &mut Option<std::path::PathBuf>) {
    while let Some(cmd) = batch.pop_front() {
        let path = if matches!(cmd, Command::Shutdown { .. }) { save_to.take() } else { None };
        if let Some(path) = path {
            let saved = hub.save_for_restart();
            // One write as the server stops; nothing else is waiting on the hub.
            crate::persist::save_sessions(&path, &saved);
        }
        hub.handle(cmd);
    }
}

/// Most commands the hub's loop takes from its queue at once.
const COMMAND_BATCH: usize = 64;

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
    /// The person was told the meeting records (see [`ClientMsg::Join`]).
    recording_ok: bool,
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
mod tests;
