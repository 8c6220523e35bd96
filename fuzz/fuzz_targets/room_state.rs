//! Random command sequences against the hub, the state machine that owns every room and
//! connection, driven through `Hub::handle` exactly as the connection tasks, the SFU task, the
//! file handlers and the room-list timer drive it. The commands are built structurally from small
//! vocabularies (five connection slots, room names that trim to the same room, invalid names and
//! texts, peer ids of members, strangers and the reserved `sfu`) so short inputs reach deep
//! states: full rooms, the `auto` switch to the SFU, slow readers evicted, shutdown with people
//! still inside. Half the runs have a media channel (`Hub::with_media`), sometimes left full.
//!
//! Invariants, after every command:
//! - `Hub::check_invariants` holds (rooms, members, connections and watchers agree);
//! - every client's messages make sense in order: `welcome` first and once, no `joined` twice
//!   without a `left` between, `peer_joined`/`peer_left`/`peer_updated` keep its view of the
//!   room consistent, `chat` and `signal` only from the people in its room (or `sfu` in an `sfu`
//!   room), chat ids strictly increasing, `rooms` only while watching, nothing after `bye`;
//! - a client is disconnected (`kick`) only because its outbox was full or the server shuts down,
//!   or because its session was resumed on another connection (`replaced`, and that connection's
//!   late goodbye changes nothing), and `bye` is only ever `server_shutdown`;
//! - when every client has read its messages, each one's view of its room is exactly who the
//!   hub has there, and the hub's counters match the clients';
//! - what reaches the SFU task is about members of `sfu` rooms, and shutdown completes exactly
//!   when the last connection is gone;
//! - a restart at any point (`Hub::snapshot` restored into a second hub) keeps the same rooms and
//!   members, each session suspended, and every client in a room that has read everything takes
//!   its session back there with its secret and `seen`, with nothing to replay.
#![no_main]

use huddle_protocol::{
    ByeReason, ClientMsg, ErrorCode, IceCandidate, LeaveReason, ModAction, PeerId, Role, SdpType, ServerMsg,
    SessionDescription, SignalPayload, Topology, VideoQuality, PROTOCOL_VERSION, REACTIONS, SFU_PEER_ID,
};
use huddle_server::config::{Config, TopologyMode};
use huddle_server::files::FileCommand;
use huddle_server::hub::{Command, Connect, Hub, Resume, RESUME_BUFFER};
use huddle_server::media::{MediaCommand, MediaEvent};
use huddle_server::outbox::{outbox, Frame, OutboxReceiver};
use libfuzzer_sys::arbitrary::{self, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Connection slots; a slot that reconnects gets a fresh id, as the server never reuses one.
const SLOTS: usize = 5;
/// Commands per input at most.
const MAX_STEPS: usize = 300;
/// Messages a client remembers, for checking a replay from a stale `seen`.
const KEPT: usize = 4;

const MAX_NAME: u32 = 6;
const MAX_ROOM: u32 = 8;
const MAX_CHAT: u32 = 10;
const MAX_FILE: u64 = 1000;

/// Three real rooms (`" r "` is `"r"` once trimmed) and invalid names.
const ROOMS: &[&str] = &["r", "한국어 방", "lobby", " r ", "", "   ", "a\nb", "evil\u{202E}x", "longer than 8"];
const NAMES: &[&str] = &["Ann", " Bo ", "민지", "", "\t", "x\u{7}y", "seven c", "<b>"];
const TEXTS: &[&str] =
    &["hi", " hi ", "a\nb\tc", "", "  ", "bell\u{7}", "eleven char", "열 글자 넘는 한국어 문장", "😀"];
const FILE_NAMES: &[&str] = &["a.txt", " b ", "../x", "a/b", "c\\d", "", "\u{202E}exe"];
const SHA_OK: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const SHAS: &[&str] = &[SHA_OK, "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", "abc", ""];
const MIMES: &[&str] = &["", "text/plain", "a\u{0}b"];
const SDPS: &[&str] = &["v=0\r\n", "", "garbage"];

/// The number of `ClientMsg` variants `client_msg` generates; `covered` must agree.
const CLIENT_MSG_VARIANTS: u32 = 31;

const EMOJI_JUNK: &[&str] = &["", "x", "👍👍", "🤮"];
const PASSWORDS: &[&str] = &["secret", "wrong", ""];
const MOD_ACTIONS: &[ModAction] = &[
    ModAction::Mute,
    ModAction::StopVideo,
    ModAction::StopScreen,
    ModAction::LowerHand,
    ModAction::Remove,
    ModAction::Ban,
];
const ROLES: &[Role] = &[Role::Participant, Role::Cohost, Role::Host];

/// Makes one client message. One arm per variant, numbered as in [`covered`].
fn client_msg(u: &mut Unstructured, peers: &[PeerId], tokens: &[String]) -> arbitrary::Result<ClientMsg> {
    let password = |u: &mut Unstructured| -> arbitrary::Result<Option<String>> {
        Ok(if u.arbitrary()? { Some(u.choose(PASSWORDS)?.to_string()) } else { None })
    };
    let pick = u.int_in_range(0..=CLIENT_MSG_VARIANTS - 1)?;
    let msg = match pick {
        0 => ClientMsg::Join {
            protocol: if u.ratio(1, 16)? { PROTOCOL_VERSION + 1 } else { PROTOCOL_VERSION },
            room: u.choose(ROOMS)?.to_string(),
            name: u.choose(NAMES)?.to_string(),
            audio: u.arbitrary()?,
            video: u.arbitrary()?,
            recording_ok: u.arbitrary()?,
            password: password(u)?,
            token: match u.int_in_range(0..=3)? {
                0 | 1 => None,
                2 => Some("junk.token.here".to_string()),
                _ => u.choose(tokens).ok().cloned(),
            },
        },
        1 => ClientMsg::Leave,
        2 => ClientMsg::Signal { to: u.choose(peers)?.clone(), payload: signal_payload(u)? },
        3 => ClientMsg::Chat { text: u.choose(TEXTS)?.to_string() },
        4 => ClientMsg::Media { audio: u.arbitrary()?, video: u.arbitrary()?, screen: u.arbitrary()? },
        5 => ClientMsg::WatchRooms,
        6 => ClientMsg::UnwatchRooms,
        7 => ClientMsg::Receive {
            peer: u.choose(peers)?.clone(),
            video: *u.choose(&[VideoQuality::Off, VideoQuality::Low, VideoQuality::Medium, VideoQuality::High])?,
        },
        8 => ClientMsg::FileOffer {
            name: u.choose(FILE_NAMES)?.to_string(),
            size: *u.choose(&[0, 1, 500, MAX_FILE, MAX_FILE + 1, u64::MAX])?,
            mime: u.choose(MIMES)?.to_string(),
            sha256: u.choose(SHAS)?.to_string(),
        },
        9 => ClientMsg::Hand { raised: u.arbitrary()? },
        10 => ClientMsg::React {
            emoji: if u.ratio(3, 4)? { u.choose(REACTIONS)? } else { u.choose(EMOJI_JUNK)? }.to_string(),
        },
        11 => ClientMsg::Settings {
            locked: u.arbitrary()?,
            waiting_room: u.arbitrary()?,
            allow_unmute: u.arbitrary()?,
            password: password(u)?,
            listed: u.arbitrary()?,
        },
        12 => ClientMsg::Moderate { peer: u.choose(peers)?.clone(), action: *u.choose(MOD_ACTIONS)? },
        13 => ClientMsg::SetRole { peer: u.choose(peers)?.clone(), role: *u.choose(ROLES)? },
        14 => ClientMsg::Admit { peer: u.choose(peers)?.clone() },
        15 => ClientMsg::Deny { peer: u.choose(peers)?.clone() },
        16 => ClientMsg::AdmitAll,
        17 => ClientMsg::EndMeeting,
        18 => ClientMsg::Ping,
        19 => ClientMsg::Invite { ttl_secs: *u.choose(&[None, Some(0), Some(60), Some(u32::MAX)])? },
        20 => ClientMsg::RevokeInvites,
        21 => ClientMsg::Record,
        22 => ClientMsg::StopRecording,
        23 => ClientMsg::DeleteRecording { id: u.choose(&["r1796629712-0a1b2c3d", "../etc", ""])?.to_string() },
        25 => {
            let n = u.int_in_range(0..=3)?;
            let mut rooms = Vec::new();
            for i in 0..n {
                let mut members = Vec::new();
                for _ in 0..u.int_in_range(0..=3)? {
                    members.push(u.choose(peers)?.clone());
                }
                let name = if u.ratio(1, 8)? { "\u{202e}".to_string() } else { format!("room {}", i % 3) };
                rooms.push(huddle_protocol::BreakoutPlan { name, members });
            }
            ClientMsg::BreakoutOpen {
                rooms,
                auto_move: u.arbitrary()?,
                allow_return: u.arbitrary()?,
                choose: u.arbitrary()?,
                minutes: *u.choose(&[0, 1, 5000])?,
                close_seconds: *u.choose(&[0, 60, 601])?,
            }
        }
        26 => ClientMsg::BreakoutAssign { peer: u.choose(peers)?.clone(), room: u.int_in_range(0..=3)? },
        27 => ClientMsg::BreakoutMove { room: u.int_in_range(0..=3)? },
        28 => ClientMsg::BreakoutBroadcast { text: u.choose(TEXTS)?.to_string() },
        29 => ClientMsg::BreakoutHelp,
        30 => ClientMsg::BreakoutClose { now: u.arbitrary()? },
        _ => ClientMsg::RelayCheck {
            room: u.arbitrary::<bool>()?.then(|| "r".to_string()),
            token: match u.int_in_range(0..=2)? {
                0 => None,
                1 => Some("junk.token.here".to_string()),
                _ => u.choose(tokens).ok().cloned(),
            },
        },
    };
    assert_eq!(covered(&msg), pick, "client_msg and covered number the variants alike");
    Ok(msg)
}

/// The arm of [`client_msg`] that makes `m`. No wildcard: a new `ClientMsg` variant does not
/// compile until it is numbered here and generated there.
fn covered(m: &ClientMsg) -> u32 {
    match m {
        ClientMsg::Join { .. } => 0,
        ClientMsg::Leave => 1,
        ClientMsg::Signal { .. } => 2,
        ClientMsg::Chat { .. } => 3,
        ClientMsg::Media { .. } => 4,
        ClientMsg::WatchRooms => 5,
        ClientMsg::UnwatchRooms => 6,
        ClientMsg::Receive { .. } => 7,
        ClientMsg::FileOffer { .. } => 8,
        ClientMsg::Hand { .. } => 9,
        ClientMsg::React { .. } => 10,
        ClientMsg::Settings { .. } => 11,
        ClientMsg::Moderate { .. } => 12,
        ClientMsg::SetRole { .. } => 13,
        ClientMsg::Admit { .. } => 14,
        ClientMsg::Deny { .. } => 15,
        ClientMsg::AdmitAll => 16,
        ClientMsg::EndMeeting => 17,
        ClientMsg::Ping => 18,
        ClientMsg::Invite { .. } => 19,
        ClientMsg::RevokeInvites => 20,
        ClientMsg::Record => 21,
        ClientMsg::StopRecording => 22,
        ClientMsg::DeleteRecording { .. } => 23,
        ClientMsg::RelayCheck { .. } => 24,
        ClientMsg::BreakoutOpen { .. } => 25,
        ClientMsg::BreakoutAssign { .. } => 26,
        ClientMsg::BreakoutMove { .. } => 27,
        ClientMsg::BreakoutBroadcast { .. } => 28,
        ClientMsg::BreakoutHelp => 29,
        ClientMsg::BreakoutClose { .. } => 30,
    }
}

fn signal_payload(u: &mut Unstructured) -> arbitrary::Result<SignalPayload> {
    Ok(if u.arbitrary()? {
        let kind = *u.choose(&[SdpType::Offer, SdpType::Answer, SdpType::Pranswer, SdpType::Rollback])?;
        SignalPayload::Description { description: SessionDescription { kind, sdp: u.choose(SDPS)?.to_string() } }
    } else {
        let candidate = u.arbitrary::<bool>()?.then(|| IceCandidate {
            candidate: "candidate:1 1 udp 1 192.0.2.1 9 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        });
        SignalPayload::Candidate { candidate }
    })
}

/// One connection as its client sees it, built from the messages it read.
struct Client {
    id: PeerId,
    /// The connection number the hub knows it by.
    conn: u64,
    /// The session secret from its `welcome`.
    secret: String,
    /// Counted messages read (all but `welcome`): what a resume reports as `seen`.
    counted: u64,
    /// This connection resumed a session: its `welcome` must say so.
    resuming: bool,
    /// The last counted messages read, newest last (at most [`KEPT`]).
    last: VecDeque<Frame>,
    /// Resumed with a `seen` behind what it read: the replay starts with these again, the very
    /// messages, and then goes on with what it never read (exactly once, in order).
    again: VecDeque<Frame>,
    /// In a waiting room (answered `waiting`).
    waiting: Option<String>,
    /// Its role in its room, from `joined` and `peer_updated` about itself.
    role: Role,
    rx: OutboxReceiver,
    kick: oneshot::Receiver<ByeReason>,
    cap: usize,
    /// Not reading its outbox for now (a slow client).
    paused: bool,
    /// Connected after shutdown began: the hub turns it away at once.
    late: bool,
    /// Its connection task told the hub it ended.
    hung_up: bool,
    welcomed: bool,
    said_bye: bool,
    room: Option<String>,
    /// Which breakout room of its meeting it is in (`None`: the main room).
    breakout: Option<u32>,
    topology: Topology,
    peers: HashSet<PeerId>,
    last_chat: u64,
    watching: bool,
    /// Messages read so far.
    read_count: usize,
    /// `watch_rooms`/`unwatch_rooms` sent, with how many messages had been queued before it:
    /// they take effect at that point of the stream, not when the (maybe paused) client reads.
    watch_marks: VecDeque<(usize, bool)>,
    /// Upload ids and keys from `file_upload` messages.
    uploads: Vec<(String, String)>,
    /// Invite tokens from `invite_token` messages.
    tokens: Vec<String>,
}

impl Client {
    /// Reads and checks everything in the outbox.
    fn read(&mut self, w: &World) {
        loop {
            match self.rx.try_recv() {
                Ok(m) => {
                    self.apply_watch_marks(self.read_count);
                    if self.welcomed {
                        if let Some(again) = self.again.pop_front() {
                            assert!(again.same(&m), "{}: replayed {m:?}, not {again:?}", self.id);
                            self.read_count += 1;
                            continue;
                        }
                    }
                    let msg = m.decode().expect("the hub queues ServerMsg JSON");
                    self.check(&msg, w);
                    if !matches!(msg, ServerMsg::Welcome { .. }) {
                        if self.last.len() == KEPT {
                            self.last.pop_front();
                        }
                        self.last.push_back(m);
                    }
                    self.read_count += 1;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    // The hub closes outboxes at shutdown, and drops them with the connection.
                    let gone = w.shutdown || self.late || self.hung_up || w.evicted.contains(&self.id);
                    assert!(gone, "{} lost its outbox", self.id);
                    break;
                }
            }
        }
        self.apply_watch_marks(usize::MAX);
    }

    fn apply_watch_marks(&mut self, upto: usize) {
        while let Some(&(_, watching)) = self.watch_marks.front().filter(|(at, _)| *at <= upto) {
            self.watching = watching;
            self.watch_marks.pop_front();
        }
    }

    fn check(&mut self, m: &ServerMsg, w: &World) {
        let me = &self.id;
        assert!(!self.said_bye, "{me} got {m:?} after bye");
        assert!(!self.late, "{me}, turned away at shutdown, got {m:?}");
        if !self.welcomed {
            let ServerMsg::Welcome { id, resume, resumed, .. } = m else { panic!("{me}: the first message is {m:?}") };
            assert_eq!(id, me, "welcome to someone else");
            assert_eq!(*resumed, self.resuming, "{me}: welcome.resumed");
            self.secret = resume.clone();
            self.welcomed = true;
            return;
        }
        self.counted += 1;
        let in_room = |what: &str| assert!(self.room.is_some(), "{me} got {what} outside a room");
        match m {
            ServerMsg::Welcome { .. } => panic!("{me} welcomed twice"),
            ServerMsg::Rooms { rooms } => {
                assert!(self.watching, "{me} got the room list without watching");
                assert!(rooms.iter().all(|r| r.participants >= 1 && r.participants <= r.capacity), "{rooms:?}");
                let order = rooms.windows(2).all(|p| {
                    let (a, b) = (&p[0], &p[1]);
                    a.participants > b.participants || (a.participants == b.participants && a.name < b.name)
                });
                assert!(order, "room list out of order: {rooms:?}");
            }
            ServerMsg::Joined { room, you, peers, chat, topology, breakout, .. } => {
                // Only a move between the rooms of its meeting (breakout rooms) while in one.
                let moved = self.room.as_ref() == Some(room);
                assert!(self.room.is_none() || moved, "{me} joined {room:?} while in {:?}", self.room);
                assert!(!moved || breakout.as_ref().map(|b| b.index) != self.breakout, "{me} moved into its own room");
                self.breakout = breakout.as_ref().map(|b| b.index);
                self.waiting = None;
                self.role = you.role;
                assert_eq!(&you.id, me);
                assert!(!peers.iter().any(|p| &p.id == me), "{me} listed among the peers already there");
                assert!(chat.windows(2).all(|c| c[0].id < c[1].id), "chat history out of order");
                self.room = Some(room.clone());
                self.topology = *topology;
                self.peers = peers.iter().map(|p| p.id.clone()).collect();
                assert_eq!(self.peers.len(), peers.len(), "a peer listed twice");
                self.last_chat = chat.last().map_or(0, |c| c.id);
                self.watching = false;
            }
            ServerMsg::Left { room } => {
                // (`leave` from a waiting room answers `left` too.)
                let here = self.room.as_ref() == Some(room) || self.waiting.as_ref() == Some(room);
                assert!(here, "{me} left {room:?}, not there (in {:?})", self.room);
                self.waiting = None;
                self.room = None;
                self.breakout = None;
                self.peers.clear();
            }
            ServerMsg::PeerJoined { peer } => {
                in_room("peer_joined");
                assert!(&peer.id != me && self.peers.insert(peer.id.clone()), "{me}: {} joined twice", peer.id);
            }
            ServerMsg::PeerLeft { id, reason } => {
                in_room("peer_left");
                assert!(self.peers.remove(id), "{me}: {id} left but was not there");
                // (One evicted after leaving by itself left for that reason.)
                let evicted = w.evicted.contains(id);
                assert!(*reason != LeaveReason::TooSlow || evicted, "{me}: {id} left too slow, never evicted");
            }
            ServerMsg::PeerUpdated { peer } => {
                in_room("peer_updated");
                let known = &peer.id == me || self.peers.contains(&peer.id);
                assert!(known, "{me}: update about {}, not in the room", peer.id);
                if &peer.id == me {
                    self.role = peer.role;
                }
            }
            ServerMsg::Topology { topology, .. } => {
                in_room("topology");
                assert!(w.media, "a topology change without an SFU");
                self.topology = *topology;
            }
            ServerMsg::ActiveSpeaker { peer } => {
                in_room("active_speaker");
                assert_eq!(self.topology, Topology::Sfu, "{me}: active speaker in a p2p room");
                assert!(peer == me || self.peers.contains(peer), "{me}: active speaker {peer} is not here");
            }
            ServerMsg::Signal { from, .. } => {
                in_room("signal");
                if from.0 == SFU_PEER_ID {
                    assert_eq!(self.topology, Topology::Sfu, "{me}: signal from the SFU in a p2p room");
                } else {
                    assert!(self.peers.contains(from), "{me}: signal from {from}, not in its room");
                }
            }
            ServerMsg::Chat { message } => {
                in_room("chat");
                assert!(&message.from == me || self.peers.contains(&message.from), "{me}: chat from a stranger");
                assert!(message.id > self.last_chat, "{me}: chat id {} after {}", message.id, self.last_chat);
                assert!(message.text.chars().count() <= MAX_CHAT as usize && message.text.trim() == message.text);
                self.last_chat = message.id;
            }
            ServerMsg::FileUpload { id, url } => {
                in_room("file_upload");
                let key = url.split_once("?key=").map(|(_, k)| k.to_string());
                self.uploads.push((id.clone(), key.expect("the upload URL carries its key")));
            }
            ServerMsg::File { .. } => in_room("file"),
            ServerMsg::Error { code, request, .. } => {
                let known = request.as_deref().is_none_or(|r| ClientMsg::TYPES.contains(&r));
                assert!(known, "{me}: error about an unknown request {request:?} ({code})");
                if *code == ErrorCode::RoomClosed {
                    // Its waiting room's room emptied: nobody let it in, it is out.
                    assert!(self.room.is_none(), "{me} told its room closed while in {:?}", self.room);
                    self.waiting = None;
                }
            }
            ServerMsg::InvitesRevoked { by } => {
                in_room("invites_revoked");
                assert!(self.role.moderates(), "{me} told of a revoke as a {:?}", self.role);
                assert!(by == me || self.peers.contains(by), "{me}: invites revoked by {by}, not in its room");
            }
            ServerMsg::PasswordAttempts { .. } => {
                in_room("password_attempts");
                assert!(self.role.moderates(), "{me} told of password guesses as a {:?}", self.role);
            }
            ServerMsg::Waiting { room, .. } => {
                assert!(self.room.is_none(), "{me} waiting for {room:?} while in {:?}", self.room);
                self.waiting = Some(room.clone());
            }
            ServerMsg::WaitingList { .. } => {
                assert!(self.room.is_some(), "{me} got the waiting list outside a room");
                assert!(self.role.moderates(), "{me} got the waiting list as a {:?}", self.role);
            }
            ServerMsg::RoomSettings { .. } => {}
            ServerMsg::Moderated { by, .. } => {
                in_room("moderated");
                assert!(by == me || self.peers.contains(by), "{me} moderated by {by}, not in its room");
            }
            ServerMsg::Removed { room, .. } => {
                let here = self.room.as_ref() == Some(room) || self.waiting.as_ref() == Some(room);
                assert!(here, "{me} removed from {room:?}, not there");
                self.room = None;
                self.breakout = None;
                self.waiting = None;
                self.peers.clear();
            }
            ServerMsg::Ended { room, .. } => {
                let here = self.room.as_ref() == Some(room) || self.waiting.as_ref() == Some(room);
                assert!(here, "{me}: {room:?} ended, not there");
                self.room = None;
                self.breakout = None;
                self.waiting = None;
                self.peers.clear();
            }
            ServerMsg::Reaction { from, emoji } => {
                in_room("reaction");
                assert!(from == me || self.peers.contains(from), "{me}: reaction from a stranger");
                assert!(REACTIONS.contains(&emoji.as_str()), "{me}: reaction {emoji:?}");
            }
            ServerMsg::InviteToken { token, .. } => {
                in_room("invite_token");
                self.tokens.push(token.clone());
            }
            ServerMsg::Pong => {}
            // Relay credentials: renewals only in a room; a check's anywhere.
            ServerMsg::IceServers { .. } => in_room("ice_servers"),
            ServerMsg::CheckIceServers { .. } => {}
            ServerMsg::Bye { reason } => {
                assert!(w.shutdown && *reason == ByeReason::ServerShutdown, "{me}: bye {reason:?}");
                self.said_bye = true;
            }
            ServerMsg::Breakouts { .. } => in_room("breakouts"),
            ServerMsg::BreakoutMessage { .. } => in_room("breakout_message"),
            ServerMsg::BreakoutChat { .. } => {
                in_room("breakout_chat");
                assert_eq!(self.breakout, None, "{me}: a breakout room's chat outside the main room");
            }
            ServerMsg::BreakoutHelp { .. } => {
                in_room("breakout_help_request");
                assert!(self.role.moderates(), "{me} asked for help as a {:?}", self.role);
            }
            // This hub has no recordings store: nothing ever records, so no one hears of one.
            ServerMsg::Recording { .. } | ServerMsg::Recordings { .. } => {
                panic!("{me} told of a recording on a hub that cannot record")
            }
        }
    }
}

/// What the test knows beyond the clients: the commands it sent.
#[derive(Default)]
struct World {
    media: bool,
    shutdown: bool,
    /// Ids the hub disconnected for being too slow.
    evicted: HashSet<PeerId>,
}

struct Run {
    hub: Hub,
    config: Arc<Config>,
    world: World,
    slots: [Option<Client>; SLOTS],
    /// Every id handed out, for picking strangers and leavers too.
    ids: Vec<PeerId>,
    next_id: u32,
    media_rx: Option<mpsc::Receiver<MediaCommand>>,
    /// The SFU task is not reading its queue.
    media_stalled: bool,
    /// The SFU queue may hold commands from earlier steps, which need not match the clients now.
    media_backlog: bool,
    shutdown_done: Option<oneshot::Receiver<()>>,
    /// Upload ids and keys from `file_upload` messages.
    uploads: Vec<(String, String)>,
    /// Invite tokens hosts received.
    tokens: Vec<String>,
    /// Sessions whose connection was lost while in a room (maybe kept for a resume).
    lost: Vec<Client>,
    next_conn: u64,
    /// Virtual time: `Hub::expire` gets `base + elapsed`.
    base: Instant,
    elapsed: Duration,
    trace: bool,
}

impl Run {
    fn new(u: &mut Unstructured) -> arbitrary::Result<Run> {
        let config = Config {
            room_capacity: u.int_in_range(1..=4)?,
            max_rooms: u.int_in_range(1..=3)?,
            chat_history: u.int_in_range(0..=3)?,
            topology: *u.choose(&[TopologyMode::Auto, TopologyMode::P2p, TopologyMode::Sfu])?,
            max_name_chars: MAX_NAME,
            max_room_chars: MAX_ROOM,
            max_chat_chars: MAX_CHAT,
            max_file_bytes: MAX_FILE,
            file_storage_bytes: 2 * MAX_FILE,
            // The smallest allowed byte bound on outboxes and resume buffers, or the default.
            outbox_bytes: *u.choose(&[64 * 1024, 2 * 1024 * 1024])?,
            resume_grace: Duration::from_secs(*u.choose(&[0, 10, 30])?),
            file_dir: Some(std::env::temp_dir().join(format!("huddle-fuzz-files-{}", std::process::id()))),
            ..Config::default()
        };
        let config = Arc::new(config);
        let (hub, media_rx) = if u.arbitrary()? {
            let (tx, rx) = mpsc::channel(u.int_in_range(1..=4)?);
            (Hub::with_media(config.clone(), tx), Some(rx))
        } else {
            (Hub::new(config.clone()), None)
        };
        let world = World { media: media_rx.is_some(), ..World::default() };
        Ok(Run {
            hub,
            config,
            world,
            slots: Default::default(),
            ids: Vec::new(),
            next_id: 1,
            media_rx,
            media_stalled: false,
            media_backlog: false,
            shutdown_done: None,
            uploads: Vec::new(),
            tokens: Vec::new(),
            lost: Vec::new(),
            next_conn: 1,
            base: Instant::now(),
            elapsed: Duration::ZERO,
            trace: std::env::var_os("HUDDLE_FUZZ_TRACE").is_some(),
        })
    }

    /// Peer ids to address: everyone ever connected, a stranger, the SFU, nobody.
    fn peer_vocabulary(&self) -> Vec<PeerId> {
        let mut v = self.ids.clone();
        v.extend(["p999", SFU_PEER_ID, ""].map(|s| PeerId(s.to_string())));
        v
    }

    fn id_of(&self, u: &mut Unstructured) -> arbitrary::Result<PeerId> {
        let slot = u.choose_index(SLOTS)?;
        Ok(match &self.slots[slot] {
            Some(c) => c.id.clone(),
            // Not a session kept for a resume: its connection task has ended, and so have its
            // commands (they come before its `Disconnect`).
            None => {
                let v: Vec<PeerId> =
                    self.peer_vocabulary().into_iter().filter(|id| !self.lost.iter().any(|l| &l.id == id)).collect();
                u.choose(&v)?.clone()
            }
        })
    }

    /// Hands one command to the hub; `HUDDLE_FUZZ_TRACE=1` prints it (for reading a reproducer).
    fn handle(&mut self, cmd: Command) {
        if self.trace {
            match &cmd {
                Command::Connect(Connect { id, conn, outbox, host, resume, .. }) => {
                    eprintln!("Connect {id} #{conn} ({} slots, {host:?}, {resume:?})", outbox.max_capacity())
                }
                other => eprintln!("{other:?}"),
            }
        }
        self.hub.handle(cmd);
    }

    fn step(&mut self, u: &mut Unstructured) -> arbitrary::Result<()> {
        let evicted_before = self.hub.stats().evicted_too_slow;
        match u.int_in_range(0..=19)? {
            0..=2 => {
                let slot = u.choose_index(SLOTS)?;
                if self.slots[slot].is_some() {
                    return Ok(());
                }
                let id = PeerId(format!("p{}", self.next_id));
                self.next_id += 1;
                let conn = self.next_conn;
                self.next_conn += 1;
                let cap = u.int_in_range(1..=8)?;
                let (tx, rx) = outbox(cap, self.config.outbox_bytes);
                let (ktx, krx) = oneshot::channel();
                let (stx, mut srx) = oneshot::channel();
                let host = u.arbitrary::<bool>()?.then(|| "meet.example".to_string());
                // A session lost earlier: resumed with what it saw, a wrong secret or a `seen`
                // ahead of what the hub sent.
                let mut old = None;
                let mut resume = None;
                if !self.lost.is_empty() && u.arbitrary()? {
                    let c = self.lost.remove(u.choose_index(self.lost.len())?);
                    let mut c = c;
                    let behind = if u.ratio(1, 4)? { u.int_in_range(0..=c.last.len())? } else { 0 };
                    let secret = if u.ratio(1, 6)? { "wrong".to_string() } else { c.secret.clone() };
                    let seen = c.counted - behind as u64;
                    c.again = c.last.iter().skip(c.last.len() - behind).cloned().collect();
                    resume = Some(Resume { id: c.id.clone(), secret, seen });
                    old = Some(c);
                }
                // A session taken over while its old connection is still attached (the page saw
                // that connection die before the server did): the old one is kicked `replaced`,
                // and its late goodbye changes nothing.
                let mut replaced = None;
                if resume.is_none() && !self.world.shutdown && !self.config.resume_grace.is_zero() && u.ratio(1, 6)? {
                    let live: Vec<usize> = (0..SLOTS)
                        .filter(|&i| self.slots[i].as_ref().is_some_and(|c| c.welcomed && !c.late && c.room.is_some()))
                        .collect();
                    if let Ok(&from) = u.choose(&live) {
                        if let Some(c) = self.slots[from].as_mut() {
                            // Everything the old connection delivered is read first (it may say
                            // the room is gone: then there is nothing to take over).
                            c.read(&self.world);
                        }
                        if let Some(c) = self.slots[from].take_if(|c| c.room.is_some() && !c.said_bye) {
                            resume = Some(Resume { id: c.id.clone(), secret: c.secret.clone(), seen: c.counted });
                            replaced = Some(c.conn);
                            old = Some(c);
                        }
                    }
                }
                let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, u.int_in_range(1..=3)?));
                let connect = Connect { conn, id: id.clone(), outbox: tx, kick: ktx, host, ip, resume, session: stx };
                self.handle(Command::Connect(connect));
                let session = srx.try_recv().ok();
                if let (Some(mut c), Some(session)) = (old, session.as_ref()) {
                    if *session == c.id {
                        // Resumed: the same session on a new connection; its stream goes on.
                        if replaced.is_some() {
                            assert_eq!(c.kick.try_recv().ok(), Some(ByeReason::Replaced), "{}: old one kicked", c.id);
                        }
                        c.rx = rx;
                        c.kick = krx;
                        c.cap = cap;
                        c.conn = conn;
                        c.paused = false;
                        c.hung_up = false;
                        c.welcomed = false;
                        c.resuming = true;
                        c.read_count = 0;
                        c.watch_marks.clear();
                        let id = c.id.clone();
                        self.slots[slot] = Some(c);
                        if let Some(conn) = replaced {
                            self.handle(Command::Disconnect {
                                id,
                                conn,
                                reason: LeaveReason::Disconnected,
                                resumable: true,
                            });
                        }
                        self.after_command(evicted_before);
                        return Ok(());
                    }
                    assert!(replaced.is_none(), "{}: a live session with the right secret was not resumed", c.id);
                    // Not resumed: with a wrong secret the session is still kept.
                    c.again.clear();
                    self.lost.push(c);
                }
                assert!(self.world.shutdown || session.as_ref() == Some(&id), "the hub named no session");
                self.ids.push(id.clone());
                self.slots[slot] = Some(Client {
                    id,
                    conn,
                    secret: String::new(),
                    counted: 0,
                    resuming: false,
                    last: VecDeque::new(),
                    again: VecDeque::new(),
                    waiting: None,
                    role: Role::Participant,
                    rx,
                    kick: krx,
                    cap,
                    paused: false,
                    late: self.world.shutdown,
                    hung_up: false,
                    welcomed: false,
                    said_bye: false,
                    room: None,
                    breakout: None,
                    topology: Topology::P2p,
                    peers: HashSet::new(),
                    last_chat: 0,
                    watching: false,
                    read_count: 0,
                    watch_marks: VecDeque::new(),
                    uploads: Vec::new(),
                    tokens: Vec::new(),
                });
            }
            3..=10 => {
                let id = self.id_of(u)?;
                let msg = client_msg(u, &self.peer_vocabulary(), &self.tokens)?;
                let watch = match msg {
                    ClientMsg::WatchRooms => Some(true),
                    ClientMsg::UnwatchRooms => Some(false),
                    _ => None,
                };
                if let (Some(w), Some(c)) = (watch, self.slots.iter_mut().flatten().find(|c| c.id == id)) {
                    c.watch_marks.push_back((c.read_count + c.rx.len(), w));
                }
                self.handle(Command::Client { id, msg });
            }
            11 => {
                let slot = u.choose_index(SLOTS)?;
                let reason = *u.choose(&[LeaveReason::Left, LeaveReason::Disconnected])?;
                let resumable = u.arbitrary()?;
                let stale = u.ratio(1, 8)?;
                if let Some(c) = self.slots[slot].as_ref().filter(|_| stale) {
                    // A connection that ended after another took over its session: ignored.
                    let (id, conn) = (c.id.clone(), c.conn.saturating_sub(1));
                    self.handle(Command::Disconnect { id, conn, reason, resumable });
                } else if let Some(mut c) = self.slots[slot].take() {
                    self.handle(Command::Disconnect { id: c.id.clone(), conn: c.conn, reason, resumable });
                    // What it had not read yet was sent before it went.
                    c.hung_up = true;
                    if !c.late {
                        c.read(&self.world);
                    }
                    if c.welcomed && !c.late {
                        self.lost.push(c);
                    }
                } else {
                    // A stranger: a connection long gone, or one the hub never heard of.
                    let live: Vec<&PeerId> = self.slots.iter().flatten().map(|c| &c.id).collect();
                    let strangers: Vec<PeerId> =
                        self.peer_vocabulary().into_iter().filter(|id| !live.contains(&id)).collect();
                    let id = u.choose(&strangers)?.clone();
                    let conn = u.int_in_range(0..=self.next_conn)?;
                    self.handle(Command::Disconnect { id, conn, reason, resumable });
                }
            }
            12 => {
                let id = self.id_of(u)?;
                // What a connection task refuses before the hub sees it (ws.rs: `classify`, binary
                // frames, the rate limits); the hub passes the code on.
                const REFUSED_AT_THE_EDGE: [ErrorCode; 5] = [
                    ErrorCode::BadJson,
                    ErrorCode::BadMessage,
                    ErrorCode::UnknownType,
                    ErrorCode::BinaryFrame,
                    ErrorCode::RateLimited,
                ];
                let code = *u.choose(&REFUSED_AT_THE_EDGE)?;
                let request = if u.arbitrary()? { Some(u.choose(ClientMsg::TYPES)?.to_string()) } else { None };
                self.handle(Command::Reject { id, code, request });
            }
            13 => {
                if self.trace {
                    eprintln!("publish_rooms");
                }
                self.hub.publish_rooms();
            }
            14 => {
                let (reply, mut rx) = oneshot::channel();
                self.handle(Command::Stats { reply });
                assert_eq!(rx.try_recv().ok(), Some(self.hub.stats()), "stats answered at once");
            }
            15 => {
                if self.shutdown_done.is_none() {
                    let (done, rx) = oneshot::channel();
                    self.world.shutdown = true;
                    self.handle(Command::Shutdown { done });
                    self.shutdown_done = Some(rx);
                }
            }
            16 => {
                if let Some(c) = self.slots[u.choose_index(SLOTS)?].as_mut() {
                    c.paused = !c.paused;
                }
            }
            17 => {
                if !self.world.media {
                    return Ok(());
                }
                let peer = self.id_of(u)?;
                let event = match u.int_in_range(0..=2)? {
                    0 => MediaEvent::Signal { peer, payload: signal_payload(u)?, session: u.int_in_range(1..=4)? },
                    1 => MediaEvent::Error {
                        peer,
                        code: *u.choose(&[
                            ErrorCode::MediaRefused,
                            ErrorCode::MediaFailed,
                            ErrorCode::MediaAnswerRefused,
                            ErrorCode::MediaRetry,
                        ])?,
                        request: *u.choose(&[None, Some("signal")])?,
                        session: *u.choose(&[None, Some(1), Some(2)])?,
                        retry_after: *u.choose(&[None, Some(std::time::Duration::from_millis(1500))])?,
                    },
                    _ => MediaEvent::ActiveSpeaker { room: u.choose(ROOMS)?.to_string(), peer },
                };
                self.handle(Command::Media(event));
            }
            18 => match u.int_in_range(0..=4)? {
                0 => self.media_stalled = !self.media_stalled,
                1 => {
                    let id = self.id_of(u)?;
                    self.handle(Command::Ignored { id });
                }
                2 => self.check_restart(),
                _ => {
                    // Time passes (virtually): a little, or past the grace period.
                    self.elapsed += Duration::from_secs(*u.choose(&[1, 9, 31, 3600])?);
                    let now = self.base + self.elapsed;
                    if self.trace {
                        eprintln!("expire at +{:?}", self.elapsed);
                    }
                    self.hub.expire(now);
                    if let Some(next) = self.hub.next_expiry() {
                        assert!(next > now, "a session left unexpired");
                    }
                }
            },
            _ => {
                let (id, key) = match u.choose(&self.uploads) {
                    Ok((id, key)) => (id.clone(), if u.ratio(1, 8)? { "wrong".to_string() } else { key.clone() }),
                    Err(_) => ("nope".to_string(), "nope".to_string()),
                };
                let cmd = match u.int_in_range(0..=2)? {
                    0 => FileCommand::BeginUpload { id, key, reply: oneshot::channel().0 },
                    1 => FileCommand::EndUpload { id, ok: u.arbitrary()? },
                    _ => FileCommand::Download {
                        id,
                        ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, u.int_in_range(1..=3)?)),
                        reply: oneshot::channel().0,
                    },
                };
                self.handle(Command::Files(cmd));
            }
        }
        self.after_command(evicted_before);
        Ok(())
    }

    /// Reads what the clients and the SFU got, and checks everything.
    fn after_command(&mut self, evicted_before: u64) {
        if let Err(e) = self.hub.check_invariants() {
            panic!("hub invariant broken: {e}");
        }
        // Kicks first: the hub tells a connection to go before telling its room.
        let mut evictions = 0;
        for slot in 0..SLOTS {
            let Some(c) = self.slots[slot].as_mut() else { continue };
            match c.kick.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {}
                Ok(ByeReason::TooSlow) => {
                    assert!(!c.late);
                    // Full by count, or by bytes; an empty outbox takes any message.
                    let full = c.rx.len() == c.cap || c.rx.queued_bytes() > 0;
                    assert!(full, "{} evicted with room in its outbox", c.id);
                    self.world.evicted.insert(c.id.clone());
                    evictions += 1;
                }
                Ok(ByeReason::ServerShutdown) => {
                    assert!(c.late, "{} turned away though connected before shutdown", c.id)
                }
                Ok(other) => panic!("{} kicked for {other:?}", c.id),
                Err(oneshot::error::TryRecvError::Closed) => panic!("the hub dropped {} without a word", c.id),
            }
        }
        assert_eq!(self.hub.stats().evicted_too_slow - evicted_before, evictions, "every eviction kicked once");
        for slot in 0..SLOTS {
            let Some(c) = self.slots[slot].as_mut() else { continue };
            let gone = c.late || self.world.evicted.contains(&c.id);
            if gone || !c.paused {
                c.read(&self.world);
                self.uploads.append(&mut c.uploads);
                self.tokens.append(&mut c.tokens);
            }
            if gone {
                assert!(c.late || c.rx.is_closed() || self.world.shutdown);
                self.slots[slot] = None;
            }
        }
        self.read_media();
        if let Some(done) = self.shutdown_done.as_mut() {
            match done.try_recv() {
                Ok(()) => assert_eq!(self.hub.stats().connections, 0, "shutdown done with connections left"),
                Err(oneshot::error::TryRecvError::Empty) => assert!(self.hub.stats().connections > 0),
                Err(oneshot::error::TryRecvError::Closed) => {} // already reported
            }
        }
        self.check_views();
    }

    /// What the SFU task got must be about members of `sfu` rooms.
    fn read_media(&mut self) {
        if self.media_stalled {
            self.media_backlog = true;
            return;
        }
        let Some(rx) = self.media_rx.as_mut() else { return };
        // After shutdown the clients hear nothing more, so their view says nothing about now.
        let fresh = !std::mem::take(&mut self.media_backlog) && !self.world.shutdown;
        while let Ok(cmd) = rx.try_recv() {
            let client = |id: &PeerId| self.slots.iter().flatten().find(|c| fresh && &c.id == id && !c.paused);
            match cmd {
                MediaCommand::Offer { peer, room, .. } => {
                    if let Some(c) = client(&peer) {
                        assert_eq!(c.room.as_deref(), Some(&*room), "offer for {peer} about another room");
                        assert_eq!(c.topology, Topology::Sfu, "offer to the SFU from a p2p room");
                    }
                }
                MediaCommand::Answer { peer, .. } => {
                    if let Some(c) = client(&peer) {
                        assert_eq!(c.topology, Topology::Sfu, "answer to the SFU from a p2p room");
                    }
                }
                MediaCommand::Receive { peer, publisher, .. } => {
                    if let Some(c) = client(&peer) {
                        assert!(c.peers.contains(&publisher), "{peer} asked for {publisher}, not in its room");
                    }
                }
                MediaCommand::Hold { peer, .. } => {
                    // Only about someone in an sfu room (after its offer, a host's action, a
                    // `media` that changed what the SFU forwards).
                    if let Some(c) = client(&peer) {
                        assert!(c.room.is_some(), "media hold for {peer}, who is in no room");
                        assert_eq!(c.topology, Topology::Sfu, "media hold in a p2p room");
                    }
                }
                // No recordings store in this hub: nothing records (`record` is refused).
                MediaCommand::Record { .. } | MediaCommand::Recorder(_) => {
                    panic!("a recording started on a hub that has no recordings")
                }
                MediaCommand::Leave { .. } | MediaCommand::Stats { .. } => {}
            }
        }
    }

    /// The hub as a restart would save it, restored into a second hub: the same rooms and members,
    /// every session there suspended, and each client in a room that has read everything resumes
    /// it there (same id, `resumed`), with nothing to replay. The run goes on with the first hub.
    fn check_restart(&mut self) {
        if self.world.shutdown || self.config.resume_grace.is_zero() {
            return;
        }
        let saved = self.hub.snapshot();
        let mut next = if self.world.media {
            Hub::with_media(self.config.clone(), mpsc::channel(64).0)
        } else {
            Hub::new(self.config.clone())
        };
        let now = self.base + self.elapsed;
        if let Err(e) = next.restore(&saved, now) {
            panic!("a fresh snapshot is refused: {e}");
        }
        if let Err(e) = next.check_invariants() {
            panic!("restored hub: {e}");
        }
        let (before, after) = (self.hub.stats(), next.stats());
        assert_eq!((before.rooms, before.participants), (after.rooms, after.participants), "rooms and members kept");
        assert_eq!((after.suspended, after.connections), (after.participants, after.participants), "all suspended");
        let mut n = 0;
        for c in self.slots.iter().flatten() {
            if c.room.is_none() || c.paused || c.late || c.said_bye || !c.welcomed || !c.rx.is_empty() {
                continue;
            }
            n += 1;
            let (tx, mut rx) = outbox(RESUME_BUFFER + 1, self.config.outbox_bytes);
            let (kick, _kicked) = oneshot::channel();
            let (session, mut named) = oneshot::channel();
            let resume = Some(Resume { id: c.id.clone(), secret: c.secret.clone(), seen: c.counted });
            let id = PeerId(format!("restart{n}"));
            let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
            next.handle(Command::Connect(Connect {
                conn: u64::MAX - n,
                id,
                outbox: tx,
                kick,
                host: None,
                ip,
                resume,
                session,
            }));
            assert_eq!(named.try_recv().ok().as_ref(), Some(&c.id), "{} takes its session back after a restart", c.id);
            let welcome = rx.try_recv().map(|m| m.decode());
            assert!(matches!(welcome, Ok(Some(ServerMsg::Welcome { resumed: true, .. }))), "{}: {welcome:?}", c.id);
            assert!(rx.try_recv().is_err(), "{}: nothing to replay, it had read everything", c.id);
        }
        if let Err(e) = next.check_invariants() {
            panic!("restored hub after resumes: {e}");
        }
    }

    /// When everyone has read everything, each client's idea of its room is what the hub has.
    fn check_views(&self) {
        let live: Vec<&Client> = self.slots.iter().flatten().collect();
        if self.world.shutdown || live.iter().any(|c| c.paused) {
            return;
        }
        for c in &live {
            let Some(room) = &c.room else { continue };
            // (The same room: the same meeting, and the same breakout room of it.)
            let others: HashSet<PeerId> = live
                .iter()
                .filter(|d| d.id != c.id && d.room.as_ref() == Some(room) && d.breakout == c.breakout)
                .map(|d| d.id.clone())
                .collect();
            // Beyond the live ones: sessions whose connection was lost, kept for a resume.
            let kept = |id: &PeerId| {
                self.lost.iter().any(|l| &l.id == id && l.room.as_ref() == Some(room) && l.breakout == c.breakout)
            };
            let right = others.is_subset(&c.peers) && c.peers.iter().all(|p| others.contains(p) || kept(p));
            assert!(right, "{} sees the wrong people in {room:?}: {:?}, live {others:?}", c.id, c.peers);
        }
        let stats = self.hub.stats();
        assert_eq!(stats.connections, live.len() + stats.suspended, "connections");
        let members = live.iter().filter(|c| c.room.is_some()).count();
        assert!(stats.participants >= members && stats.participants <= members + stats.suspended, "participants");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(mut run) = Run::new(&mut u) else { return };
    for _ in 0..MAX_STEPS {
        if u.is_empty() || run.step(&mut u).is_err() {
            break;
        }
    }
});
