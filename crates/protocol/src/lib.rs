//! huddle's signalling protocol, defined once.
//!
//! Every WebSocket text frame between a page and the server is one JSON object with a `type`
//! tag. [`ClientMsg`] is what a client may send, [`ServerMsg`] what the server sends. The page
//! mirrors these types in JSDoc (`web/js/protocol.js`) and `docs/protocol.md` documents every
//! message with an example; `tests/json_shapes.rs` pins the JSON so the three cannot drift apart.
//!
//! Field names are camelCase (they are read by JavaScript); type tags and enum values are
//! snake_case. Unknown fields are ignored, so a newer client can talk to an older server within
//! the same [`PROTOCOL_VERSION`].
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::fmt;

/// The protocol version. A client states the version it speaks in [`ClientMsg::Join`]; the
/// server announces its own in [`ServerMsg::Welcome`] and refuses a mismatch with
/// [`ErrorCode::UnsupportedProtocol`].
pub const PROTOCOL_VERSION: u32 = 1;

/// A participant id, assigned by the server when a connection opens. Opaque ASCII; peers compare
/// ids as strings to decide their "perfect negotiation" role (the lower id is polite).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerId(pub String);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Messages a client sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Enter a room (created on first join). Answered by [`ServerMsg::Joined`] or an error.
    Join {
        protocol: u32,
        room: String,
        name: String,
        /// Whether the microphone starts unmuted.
        #[serde(default)]
        audio: bool,
        /// Whether the camera starts on.
        #[serde(default)]
        video: bool,
        /// The room's password, when it has one (see [`RoomSettings::has_password`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        /// A signed access token: an invite link's token (skips the password) or one issued by
        /// the operator's integration (see `docs/protocol.md`, "Tokens").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// The person knows the meeting is being recorded and joins anyway. Entering a room that
        /// records without it is refused with [`ErrorCode::RecordingConsent`] (after every other
        /// check, so that only someone who could enter learns that it records).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        recording_ok: bool,
    },
    /// Leave the current room. Answered by [`ServerMsg::Left`]; the connection stays open and
    /// may join again.
    Leave,
    /// Relay a WebRTC negotiation message to one peer of the same room.
    Signal { to: PeerId, payload: SignalPayload },
    /// Send a chat message to everyone in the room (the sender gets it back too).
    Chat { text: String },
    /// Announce this participant's media state to the room.
    Media { audio: bool, video: bool, screen: bool },
    /// Receive [`ServerMsg::Rooms`] now and whenever the public room list changes, until this
    /// connection joins a room or sends `unwatch_rooms`.
    WatchRooms,
    /// Stop receiving room list updates.
    UnwatchRooms,
    /// `sfu` rooms: how much of `peer`'s video this client wants (adaptive stream: `off` for a
    /// hidden or off-screen tile). Ignored in `p2p` rooms.
    Receive { peer: PeerId, video: VideoQuality },
    /// Share a file with the room through the server (`sfu` rooms, where there is no peer-to-peer
    /// data channel). Answered by [`ServerMsg::FileUpload`]; the bytes go over HTTP.
    FileOffer {
        name: String,
        size: u64,
        /// The declared media type, for the receivers' information only.
        #[serde(default)]
        mime: String,
        /// Lower-case hex SHA-256 of the bytes; the server checks it before anyone is told.
        sha256: String,
    },
    /// Raise or lower this participant's hand.
    Hand { raised: bool },
    /// A short-lived reaction shown on the sender's tile (one of [`REACTIONS`]).
    React { emoji: String },
    /// Hosts: change the room's settings. Absent fields stay as they are; `password: ""` removes
    /// the password.
    #[serde(rename_all = "camelCase")]
    Settings {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locked: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        waiting_room: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        allow_unmute: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        /// Whether the room is on the public room list. Only an unprotected room can be listed:
        /// a password, a lock or a waiting room turns it off.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        listed: Option<bool>,
    },
    /// Hosts: act on one participant.
    Moderate { peer: PeerId, action: ModAction },
    /// Hosts: give `peer` a role. Making someone `host` hands the role over (the giver becomes a
    /// co-host); only the host may do that.
    SetRole { peer: PeerId, role: Role },
    /// Hosts: let someone waiting in the waiting room in.
    Admit { peer: PeerId },
    /// Hosts: turn someone waiting away.
    Deny { peer: PeerId },
    /// Hosts: let everyone waiting in.
    AdmitAll,
    /// Hosts: start recording the room (a `p2p` room moves to the SFU first). Everyone gets
    /// `recording`.
    Record,
    /// Hosts: stop the room's recording.
    StopRecording,
    /// Hosts: delete one of the room's recordings (its files go at once).
    DeleteRecording { id: String },
    /// Hosts: end the meeting for everyone.
    EndMeeting,
    /// Asks for a `pong`: a page that has heard nothing for a while checks its connection is alive.
    Ping,
    /// Ask for a relay credential for the connectivity check (answered by
    /// [`ServerMsg::CheckIceServers`]): it allocates a relay, which is the test, and relays nothing.
    /// With `--require-token`, outside a room, only with a token valid for `room`.
    RelayCheck {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Hosts: ask for an invite token (answered by [`ServerMsg::InviteToken`]), for a link that lets
    /// its holder in without the password until it expires.
    #[serde(rename_all = "camelCase")]
    Invite {
        /// Lifetime in seconds; the server caps it (default one day).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u32>,
    },
    /// Hosts: void every invite link handed out so far (answered, to every host and co-host, by
    /// [`ServerMsg::InvitesRevoked`]); links made afterwards work.
    RevokeInvites,
    /// Hosts: open breakout rooms (see `docs/protocol.md`, "Breakout rooms").
    #[serde(rename_all = "camelCase")]
    BreakoutOpen {
        rooms: Vec<BreakoutPlan>,
        /// Move people at once (else each accepts with `breakout_move`).
        #[serde(default = "yes")]
        auto_move: bool,
        /// Participants may go back to the main room and return.
        #[serde(default = "yes")]
        allow_return: bool,
        /// Participants may pick any room.
        #[serde(default)]
        choose: bool,
        /// After this long the rooms start closing by themselves (0: no limit).
        #[serde(default)]
        minutes: u32,
        /// The countdown before everyone is back in the main room.
        #[serde(default = "sixty")]
        close_seconds: u32,
    },
    /// Hosts: put `peer` in breakout room `room` (0: the main room).
    BreakoutAssign { peer: PeerId, room: u32 },
    /// Go to breakout room `room` (0: back to the main room), as the options allow.
    BreakoutMove { room: u32 },
    /// Hosts: a message to every room of the meeting.
    BreakoutBroadcast { text: String },
    /// In a breakout room: ask the hosts for help.
    BreakoutHelp,
    /// Hosts: bring everyone back to the main room (after the countdown, or `now`).
    BreakoutClose {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        now: bool,
    },
}

fn yes() -> bool {
    true
}

fn sixty() -> u32 {
    60
}

/// One breakout room to open: its name and who goes there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakoutPlan {
    pub name: String,
    #[serde(default)]
    pub members: Vec<PeerId>,
}

/// A breakout room, as `joined`, `breakout_help` and `breakout_chat` name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakoutRef {
    /// From 1.
    pub index: u32,
    pub name: String,
}

/// One breakout room in [`ServerMsg::Breakouts`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakoutSummary {
    pub index: u32,
    pub name: String,
    /// How many are in it now.
    pub count: u32,
    /// Hosts and co-hosts: who is in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Person>>,
}

/// The open breakout rooms of a meeting, as one person is told ([`ServerMsg::Breakouts`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakoutsOpen {
    pub rooms: Vec<BreakoutSummary>,
    /// Hosts and co-hosts: who is in the main room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main: Option<Vec<Person>>,
    /// The receiver's room (0: the main room).
    pub assigned: u32,
    pub auto_move: bool,
    pub allow_return: bool,
    pub choose: bool,
    /// Unix ms: when the rooms start closing by themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<u64>,
    /// Unix ms: when everyone will be back in the main room (while closing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closing_at: Option<u64>,
}

/// The reactions a participant may send.
pub const REACTIONS: &[&str] = &["👍", "👏", "😂", "😮", "❤️", "🎉"];

/// What a host can do to one participant ([`ClientMsg::Moderate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModAction {
    /// Turn their microphone off; they may turn it on again only if the room allows unmuting.
    Mute,
    /// Turn their camera off (same rule).
    StopVideo,
    /// Stop their screen share (same rule).
    StopScreen,
    /// Lower their raised hand.
    LowerHand,
    /// Take them out of the room.
    Remove,
    /// Take them out of the room and refuse their return while the room lasts.
    Ban,
}

/// A participant's role in a room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Participant,
    /// May do everything the host does except hand on the host role or change co-hosts.
    Cohost,
    /// Whoever opened the room (or was handed the role). Exactly one per room.
    Host,
}

impl Role {
    pub fn is_participant(&self) -> bool {
        *self == Role::Participant
    }
    /// Host or co-host.
    pub fn moderates(self) -> bool {
        self != Role::Participant
    }
}

/// A room's settings, shown to everyone in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomSettings {
    /// Nobody new may enter (hosts and host tokens excepted).
    pub locked: bool,
    /// Newcomers knock and wait for a host to let them in.
    pub waiting_room: bool,
    /// Participants a host muted may unmute themselves.
    pub allow_unmute: bool,
    /// Entering needs the password (or an invite token).
    pub has_password: bool,
    /// The room is on the public room list (`rooms`). Never while it has a password, a lock or
    /// a waiting room.
    pub listed: bool,
}

/// Someone in the waiting room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Knocker {
    pub id: PeerId,
    pub name: String,
}

impl ClientMsg {
    /// Every `type` tag a client may send, for telling an unknown type from a malformed one.
    pub const TYPES: &'static [&'static str] = &[
        "join",
        "leave",
        "signal",
        "chat",
        "media",
        "watch_rooms",
        "unwatch_rooms",
        "receive",
        "file_offer",
        "hand",
        "react",
        "settings",
        "moderate",
        "set_role",
        "admit",
        "deny",
        "admit_all",
        "record",
        "stop_recording",
        "delete_recording",
        "end_meeting",
        "invite",
        "ping",
        "revoke_invites",
        "relay_check",
        "breakout_open",
        "breakout_assign",
        "breakout_move",
        "breakout_broadcast",
        "breakout_help",
        "breakout_close",
    ];

    /// The `type` tag of this message.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMsg::Join { .. } => "join",
            ClientMsg::Leave => "leave",
            ClientMsg::Signal { .. } => "signal",
            ClientMsg::Chat { .. } => "chat",
            ClientMsg::Media { .. } => "media",
            ClientMsg::WatchRooms => "watch_rooms",
            ClientMsg::UnwatchRooms => "unwatch_rooms",
            ClientMsg::Receive { .. } => "receive",
            ClientMsg::FileOffer { .. } => "file_offer",
            ClientMsg::Hand { .. } => "hand",
            ClientMsg::React { .. } => "react",
            ClientMsg::Settings { .. } => "settings",
            ClientMsg::Moderate { .. } => "moderate",
            ClientMsg::SetRole { .. } => "set_role",
            ClientMsg::Admit { .. } => "admit",
            ClientMsg::Deny { .. } => "deny",
            ClientMsg::AdmitAll => "admit_all",
            ClientMsg::Record => "record",
            ClientMsg::StopRecording => "stop_recording",
            ClientMsg::DeleteRecording { .. } => "delete_recording",
            ClientMsg::EndMeeting => "end_meeting",
            ClientMsg::Invite { .. } => "invite",
            ClientMsg::Ping => "ping",
            ClientMsg::RevokeInvites => "revoke_invites",
            ClientMsg::RelayCheck { .. } => "relay_check",
            ClientMsg::BreakoutOpen { .. } => "breakout_open",
            ClientMsg::BreakoutAssign { .. } => "breakout_assign",
            ClientMsg::BreakoutMove { .. } => "breakout_move",
            ClientMsg::BreakoutBroadcast { .. } => "breakout_broadcast",
            ClientMsg::BreakoutHelp => "breakout_help",
            ClientMsg::BreakoutClose { .. } => "breakout_close",
        }
    }
}

/// What a [`ClientMsg::Signal`] carries: the messages of the W3C "perfect negotiation" pattern.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SignalPayload {
    /// An SDP offer or answer (`RTCSessionDescription.toJSON()`).
    Description { description: SessionDescription },
    /// A trickled ICE candidate (`RTCIceCandidate.toJSON()`); `null` marks the end of gathering.
    Candidate { candidate: Option<IceCandidate> },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionDescription {
    #[serde(rename = "type")]
    pub kind: SdpType,
    pub sdp: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SdpType {
    Offer,
    Answer,
    Pranswer,
    Rollback,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, rename = "sdpMLineIndex", skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// Messages the server sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// First message on every connection.
    #[serde(rename_all = "camelCase")]
    Welcome {
        protocol: u32,
        /// This connection's peer id.
        id: PeerId,
        /// Server name and version, e.g. `huddle/0.1.0`.
        server: String,
        limits: Limits,
        /// Always empty: ICE servers come with [`ServerMsg::Joined`] (relay credentials are for
        /// people in a room). Kept so that older clients still parse `welcome`.
        ice_servers: Vec<IceServer>,
        /// `relay`: use only the relay candidates of the ICE servers. Absent means `all`.
        #[serde(default, skip_serializing_if = "IceTransportPolicy::is_all")]
        ice_transport_policy: IceTransportPolicy,
        /// This session's secret: after a dropped connection, reconnect to
        /// `/ws?session=<id>&resume=<resume>&seen=<messages received>` within
        /// `resumeGraceSecs` to carry on as the same participant.
        resume: String,
        resume_grace_secs: u32,
        /// `true` when this connection took over an existing session (same id, same room); the
        /// messages the page missed follow.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        resumed: bool,
        /// With `resumed`: how many messages of this session the server has taken; the client
        /// sends again, in order, those it sent after the first `received`.
        #[serde(default, skip_serializing_if = "is_zero")]
        received: u64,
    },
    /// The public room list (answer to `watch_rooms`, then on every change, at most a few times
    /// a second).
    Rooms { rooms: Vec<RoomSummary> },
    /// This connection is now in `room`.
    #[serde(rename_all = "camelCase")]
    Joined {
        room: String,
        /// This participant as the others see it.
        you: Peer,
        /// Everyone else already in the room, in joining order.
        peers: Vec<Peer>,
        /// The room's recent chat, oldest first.
        chat: Vec<ChatMessage>,
        /// How media flows in this room.
        topology: Topology,
        /// ICE servers for this room's connections, huddle's own TURN server with credentials of
        /// this session (renewed by [`ServerMsg::IceServers`] before they expire).
        ice_servers: Vec<IceServer>,
        /// As in `welcome`.
        #[serde(default, skip_serializing_if = "IceTransportPolicy::is_all")]
        ice_transport_policy: IceTransportPolicy,
        settings: RoomSettings,
        /// Hosts: who is in the waiting room.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        waiting: Vec<Knocker>,
        /// The room is being recorded (absent when not).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recording: Option<RecordingInfo>,
        /// This is one of the meeting's breakout rooms (absent in the main room); `room` is the
        /// meeting's name either way.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        breakout: Option<BreakoutRef>,
    },
    /// Answer to `join` when the room has a waiting room: wait for a host. `joined` follows when
    /// a host admits you; an `error` with code `knock_denied` when one turns you away.
    /// `recording`: the room is being recorded.
    Waiting {
        room: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        recording: bool,
    },
    /// The room's recording started (`recording`) or stopped (`recording: null`, and `stopped`
    /// says why). Sent to everyone in the room.
    Recording {
        recording: Option<RecordingInfo>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stopped: Option<RecordingStopped>,
    },
    /// Hosts and co-hosts: the room's recordings, newest first (on joining, on becoming a
    /// co-host, and whenever one changes).
    Recordings { recordings: Vec<RecordingEntry> },
    /// Hosts: the waiting room's list changed.
    WaitingList { waiting: Vec<Knocker> },
    /// The room's settings changed.
    RoomSettings { settings: RoomSettings },
    /// A host acted on you (`mute`, `stop_video`, `stop_screen`, `lower_hand`): the page turns
    /// that off. `remove`/`ban` arrive as `removed` instead.
    Moderated { action: ModAction, by: PeerId },
    /// A host took you out of the room (`ban`: you may not come back while the room lasts). The
    /// connection stays open, as after `left`.
    Removed { room: String, ban: bool },
    /// The meeting ended; you are out of the room (the connection stays open). Without
    /// `reason`, a host ended it; `server_error`: a bug in the server closed it (the server goes
    /// on, and the room can be joined again at once).
    Ended {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<EndReason>,
    },
    /// Someone reacted (sent to everyone, the sender included).
    Reaction { from: PeerId, emoji: String },
    /// Answer to `invite`.
    InviteToken { token: String, expires: u64 },
    /// Hosts: `by` revoked the room's invite links; those made before no longer work.
    InvitesRevoked { by: PeerId },
    /// Hosts: `failed` wrong passwords were tried at the room (since the last such notice), and
    /// joins with the password are paused for a moment (see `too_many_attempts`).
    PasswordAttempts { failed: u32 },
    /// In a room: fresh credentials for the same ICE servers, sent before the last ones expire
    /// and after a resume. Apply them to every connection (`RTCPeerConnection.setConfiguration`)
    /// and use them for new ones; relays already made keep working.
    #[serde(rename_all = "camelCase")]
    IceServers { ice_servers: Vec<IceServer> },
    /// Answer to `relay_check`: huddle's TURN server with a short-lived credential that allocates
    /// but relays nothing (empty: the server has no relay).
    #[serde(rename_all = "camelCase")]
    CheckIceServers { ice_servers: Vec<IceServer> },
    /// Answer to `ping`.
    Pong,
    /// Answer to `leave`.
    Left { room: String },
    /// The meeting's breakout rooms (to everyone in any room of the meeting, on every change);
    /// `open: false` and nothing else when none are open.
    Breakouts {
        open: bool,
        #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
        state: Option<BreakoutsOpen>,
    },
    /// A host's message to every room of the meeting.
    BreakoutMessage { from: Person, text: String },
    /// Hosts: someone in a breakout room asks for help.
    #[serde(rename = "breakout_help_request")]
    BreakoutHelp { from: Person, room: BreakoutRef },
    /// Back in the main room: the chat of a breakout room you were in.
    BreakoutChat { room: BreakoutRef, messages: Vec<ChatMessage> },
    /// Someone entered the room.
    PeerJoined { peer: Peer },
    /// Someone left the room.
    PeerLeft { id: PeerId, reason: LeaveReason },
    /// Someone's media state changed.
    PeerUpdated { peer: Peer },
    /// The room's topology changed (in `auto` mode, from `p2p` to `sfu` when a third person
    /// joins, or when a host starts recording: `reason`). Connect to the SFU, then close the
    /// peer-to-peer connections.
    Topology {
        topology: Topology,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<TopologyReason>,
    },
    /// `sfu` rooms: the SFU heard a new main speaker (from the RTP audio levels; at most one change
    /// a second per room). Sent to everyone in the room, the speaker included.
    ActiveSpeaker { peer: PeerId },
    /// A negotiation message relayed from another peer of the room. From the SFU (`from: "sfu"`)
    /// it carries `session`: the number of the SFU session the SDP belongs to (an answer names
    /// the session the client's offer started).
    Signal {
        from: PeerId,
        payload: SignalPayload,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<u64>,
    },
    /// A chat message.
    Chat { message: ChatMessage },
    /// Answer to `file_offer`: `PUT` the file's bytes to `url` (same origin).
    FileUpload { id: String, url: String },
    /// A file shared with the room is ready to download (sent to everyone, the sender included).
    File { file: SharedFile },
    /// A request could not be carried out. The connection stays open unless a `bye` follows.
    Error {
        code: ErrorCode,
        /// A human sentence in English; pages show their own translation of `code`.
        message: String,
        /// The `type` of the message that caused the error, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
        /// `media_failed`, `media_answer_refused`: the SFU session the error is about.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<u64>,
        /// `media_retry`: send the same signal again after this many milliseconds.
        #[serde(default, rename = "retryAfterMs", skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The server is closing this connection; the WebSocket close follows.
    Bye { reason: ByeReason },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ServerMsg {
    pub fn error(code: ErrorCode, request: Option<&str>) -> ServerMsg {
        ServerMsg::Error {
            code,
            message: code.message().to_string(),
            request: request.map(str::to_string),
            session: None,
            retry_after_ms: None,
        }
    }
}

/// Limits the server enforces, announced in `welcome` so a page can check before sending.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub max_frame_bytes: u32,
    pub max_name_chars: u32,
    pub max_room_chars: u32,
    pub max_chat_chars: u32,
    pub room_capacity: u32,
    pub chat_history: u32,
    /// The largest file a page may offer over a data channel.
    pub max_file_bytes: u64,
}

/// `RTCConfiguration.iceTransportPolicy`: `relay` when the server wants every connection to go
/// through a TURN relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IceTransportPolicy {
    #[default]
    All,
    Relay,
}

impl IceTransportPolicy {
    pub fn is_all(&self) -> bool {
        *self == IceTransportPolicy::All
    }
}

/// An `RTCIceServer` dictionary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub name: String,
    pub participants: u32,
    pub capacity: u32,
    /// The room is being recorded (absent when not): shown before anyone joins.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recording: bool,
}

/// Why a room's topology changed, when it was not someone joining.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopologyReason {
    /// A host started recording: media must pass the server to be recorded.
    Recording,
}

/// Someone, by id and by the name they had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub id: PeerId,
    pub name: String,
}

/// A recording in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingInfo {
    pub id: String,
    /// Unix milliseconds.
    pub started_at: u64,
    pub started_by: Person,
}

/// Why and by whom a recording stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingStopped {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Person>,
    pub reason: RecordingStopReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingStopReason {
    /// A host stopped it.
    Stopped,
    /// It reached the server's longest recording (`--recording-max-minutes`).
    TimeLimit,
    /// The server's recording space is full (`--recordings-max-bytes`).
    StorageFull,
    /// The server could not write the files.
    WriteError,
    /// The meeting ended.
    Ended,
    /// A fault in the server stopped it.
    ServerError,
}

/// One of a room's recordings, as its hosts see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingEntry {
    pub id: String,
    pub started_at: u64,
    pub duration_ms: u64,
    /// What it takes on the server's disk, raw tracks and the composed file together.
    pub bytes: u64,
    pub state: RecordingFileState,
    /// `composing`: how far, 0 to 1 (in hundredths).
    pub progress: f64,
    /// `ready`: where to download the one file, a link that works for hosts until it expires.
    pub url: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingFileState {
    /// Being recorded.
    Recording,
    /// Being composed into one file.
    Composing,
    /// The one file is ready (`url`).
    Ready,
    /// Only the raw tracks and the manifest (the server has no ffmpeg).
    Raw,
    /// Composing failed; the raw tracks are kept.
    Failed,
    /// The server stopped while recording; it is composed from what was written.
    Interrupted,
}

/// A participant as others see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub id: PeerId,
    pub name: String,
    /// Microphone unmuted.
    pub audio: bool,
    /// Camera on.
    pub video: bool,
    /// Sharing the screen.
    pub screen: bool,
    pub role: Role,
    /// Hand raised.
    pub hand: bool,
}

/// A file kept by the server for the room's members.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharedFile {
    pub id: String,
    pub from: PeerId,
    /// The sender's name when it was shared.
    pub sender: String,
    pub name: String,
    pub size: u64,
    pub mime: String,
    pub sha256: String,
    /// Where to `GET` it (same origin).
    pub url: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Increasing within a room.
    pub id: u64,
    pub from: PeerId,
    /// The sender's name when it was sent.
    pub name: String,
    pub text: String,
    /// Milliseconds since the Unix epoch, server clock.
    pub ts: u64,
}

/// How much of one participant's video a client wants to receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VideoQuality {
    /// Nothing (the tile is hidden or off-screen).
    Off,
    /// A small tile.
    Low,
    Medium,
    /// A large tile (the speaker, or pinned); the default.
    High,
}

/// How media flows in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topology {
    /// A full mesh: one `RTCPeerConnection` per pair of participants.
    P2p,
    /// Every participant has one `RTCPeerConnection` to the server's SFU, the peer [`SFU_PEER_ID`].
    Sfu,
}

/// The peer id of the server's own media endpoint in `sfu` rooms: `signal` messages to and from
/// it negotiate the participant's one connection to the SFU. Participant ids never take this value.
pub const SFU_PEER_ID: &str = "sfu";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// Sent `leave`, or closed the page.
    Left,
    /// The connection broke or stopped answering heartbeats.
    Disconnected,
    /// The server disconnected it because it could not keep up with its messages.
    TooSlow,
    /// A host removed them.
    Removed,
    /// They moved to another room of the meeting (breakout rooms).
    Breakout,
}

/// Why a meeting ended other than by a host (`ended.reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    ServerError,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByeReason {
    ServerShutdown,
    TooSlow,
    TimedOut,
    FrameTooLarge,
    /// The session was resumed on another connection.
    Replaced,
    /// The connection kept sending faster than the server's rate limits allow.
    Flooding,
    /// The server or this address has as many connections as it accepts.
    TooManyConnections,
}

/// Stable error codes. Pages translate these; the `message` is a fallback for other clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    BadMessage,
    UnknownType,
    BinaryFrame,
    FrameTooLarge,
    UnsupportedProtocol,
    NotInRoom,
    AlreadyInRoom,
    InvalidName,
    InvalidRoom,
    InvalidText,
    RoomFull,
    TooManyRooms,
    UnknownPeer,
    MediaRefused,
    MediaFailed,
    MediaAnswerRefused,
    MediaRetry,
    InvalidFile,
    FileStorageFull,
    FileQuota,
    NotSfuRoom,
    NotAllowed,
    PasswordRequired,
    WrongPassword,
    RoomLocked,
    KnockDenied,
    Banned,
    TokenRequired,
    InvalidToken,
    TokenExpired,
    MutedByHost,
    InvalidReaction,
    RateLimited,
    TooManyConnections,
    /// The room emptied while you waited in its waiting room: nobody is left to let you in.
    RoomClosed,
    /// The invite link no longer works: its room closed, its password changed, or a host
    /// revoked the room's invites.
    InviteRevoked,
    /// Too many wrong passwords were tried at this room; joins with the password are paused.
    TooManyAttempts,
    /// The service cannot reach the room right now (a node of several could not learn or take
    /// the room's owner); try again in a few seconds.
    Unavailable,
    /// This server does not record meetings (recordings are off, or it has no SFU).
    RecordingUnavailable,
    /// The server's space for recordings is full.
    RecordingStorageFull,
    /// No such recording in this room (it was deleted or has expired).
    UnknownRecording,
    /// A breakout request that cannot be done (see the message).
    InvalidBreakout,
    /// The meeting is being recorded: join again with `recording_ok` once the person has been
    /// told so (the consent step before joining).
    RecordingConsent,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::BadJson,
        ErrorCode::BadMessage,
        ErrorCode::UnknownType,
        ErrorCode::BinaryFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnsupportedProtocol,
        ErrorCode::NotInRoom,
        ErrorCode::AlreadyInRoom,
        ErrorCode::InvalidName,
        ErrorCode::InvalidRoom,
        ErrorCode::InvalidText,
        ErrorCode::RoomFull,
        ErrorCode::TooManyRooms,
        ErrorCode::UnknownPeer,
        ErrorCode::MediaRefused,
        ErrorCode::MediaFailed,
        ErrorCode::MediaAnswerRefused,
        ErrorCode::MediaRetry,
        ErrorCode::InvalidFile,
        ErrorCode::FileStorageFull,
        ErrorCode::FileQuota,
        ErrorCode::NotSfuRoom,
        ErrorCode::NotAllowed,
        ErrorCode::PasswordRequired,
        ErrorCode::WrongPassword,
        ErrorCode::RoomLocked,
        ErrorCode::KnockDenied,
        ErrorCode::Banned,
        ErrorCode::TokenRequired,
        ErrorCode::InvalidToken,
        ErrorCode::TokenExpired,
        ErrorCode::MutedByHost,
        ErrorCode::InvalidReaction,
        ErrorCode::RateLimited,
        ErrorCode::TooManyConnections,
        ErrorCode::RoomClosed,
        ErrorCode::InviteRevoked,
        ErrorCode::TooManyAttempts,
        ErrorCode::Unavailable,
        ErrorCode::RecordingUnavailable,
        ErrorCode::RecordingStorageFull,
        ErrorCode::UnknownRecording,
        ErrorCode::InvalidBreakout,
        ErrorCode::RecordingConsent,
    ];

    /// The English sentence sent with the code.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "The message is not valid JSON.",
            ErrorCode::BadMessage => "The message is missing a field or has a field of the wrong kind.",
            ErrorCode::UnknownType => "The server does not know this message type.",
            ErrorCode::BinaryFrame => "Only JSON text frames are accepted.",
            ErrorCode::FrameTooLarge => "The message is larger than the server accepts.",
            ErrorCode::UnsupportedProtocol => "This page is out of date: reload it to talk to this server.",
            ErrorCode::NotInRoom => "Join a room first.",
            ErrorCode::AlreadyInRoom => "You are already in a room; leave it first.",
            ErrorCode::InvalidName => "The name is empty, too long, invisible, or contains control characters.",
            ErrorCode::InvalidRoom => "The room name is empty, too long, invisible, or contains control characters.",
            ErrorCode::InvalidText => "The chat message is empty, invisible or too long.",
            ErrorCode::RoomFull => "This room is full.",
            ErrorCode::TooManyRooms => "The server has reached its limit of rooms; try an existing room.",
            ErrorCode::UnknownPeer => "That participant is not in your room.",
            ErrorCode::MediaRefused => "The media server cannot use this offer; the session you had goes on.",
            ErrorCode::MediaFailed => "The connection to the media server was lost; send a new offer to reconnect.",
            ErrorCode::MediaAnswerRefused => "The media server cannot use this answer, or was not waiting for one.",
            ErrorCode::MediaRetry => "The media server cannot take this now; send it again after retryAfterMs.",
            ErrorCode::InvalidFile => "The file name, size or checksum is not acceptable.",
            ErrorCode::FileStorageFull => "The server is holding too many files; try again later.",
            ErrorCode::FileQuota => {
                "You have shared as much as one person, one address or one room may at once; wait for your uploads to finish or for the room's files to go."
            }
            ErrorCode::NotSfuRoom => "Files go through the server only in sfu rooms; in a p2p room send them over the data channel.",
            ErrorCode::NotAllowed => "Only the room's hosts may do that.",
            ErrorCode::PasswordRequired => "This room needs a password.",
            ErrorCode::WrongPassword => "That password is not right.",
            ErrorCode::RoomLocked => "The host has locked this room.",
            ErrorCode::KnockDenied => "A host did not let you in.",
            ErrorCode::Banned => "A host removed you from this room; you cannot come back.",
            ErrorCode::TokenRequired => "This server admits only people with an access link or token.",
            ErrorCode::InvalidToken => "The access token is not valid for this room.",
            ErrorCode::TokenExpired => "The access link or token has expired.",
            ErrorCode::MutedByHost => "A host turned this off; you cannot turn it back on yourself.",
            ErrorCode::InvalidReaction => "That reaction is not one of the allowed ones.",
            ErrorCode::RateLimited => "Too many messages too quickly; this one was not sent. Slow down.",
            ErrorCode::TooManyConnections => "The server has too many connections right now; try again later.",
            ErrorCode::RoomClosed => "Everyone left before a host let you in; this meeting is over.",
            ErrorCode::InviteRevoked => {
                "This invite link no longer works: its meeting ended, its password changed or a host revoked it."
            }
            ErrorCode::TooManyAttempts => {
                "Too many wrong passwords were tried for this room; wait a few seconds, or use an invite link."
            }
            ErrorCode::Unavailable => "The meeting cannot be reached right now; try again in a few seconds.",
            ErrorCode::RecordingUnavailable => "This server does not record meetings.",
            ErrorCode::InvalidBreakout => "That breakout room request cannot be done now.",
            ErrorCode::RecordingConsent => "This meeting is being recorded; join again to accept that.",
            ErrorCode::RecordingStorageFull => "The server's space for recordings is full; delete old recordings first.",
            ErrorCode::UnknownRecording => "There is no such recording in this room; it was deleted or has expired.",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The serde name is the stable code.
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(s)) => f.write_str(&s),
            _ => write!(f, "{self:?}"),
        }
    }
}
