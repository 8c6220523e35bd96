//! The core's inputs and outputs: plain Rust values, independent of any transport or protocol.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;
use str0m::change::{SdpAnswer, SdpOffer};

/// A participant, as the caller names it (the server will use its signalling peer id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// A participant's SDP offer, parsed when this value is made ([`Offer::parse`], or `from` the
/// text). Parsing is the costliest step of a negotiation (a 50-person room's SDP has 150
/// m-lines), so a driver that forwards packets on the core's thread makes this value on
/// another thread; a malformed offer becomes [`SfuError::BadSdp`] when the core takes it.
#[derive(Debug)]
pub struct Offer(pub(crate) Result<SdpOffer, String>);

impl Offer {
    pub fn parse(sdp: &str) -> Offer {
        Offer(parse_sdp(|| SdpOffer::from_sdp_string(sdp).map_err(|e| e.to_string())))
    }
}

impl From<String> for Offer {
    fn from(sdp: String) -> Offer {
        Offer::parse(&sdp)
    }
}

/// A participant's SDP answer to an offer of the core, parsed when made; as [`Offer`].
#[derive(Debug)]
pub struct Answer(pub(crate) Result<SdpAnswer, String>);

impl Answer {
    pub fn parse(sdp: &str) -> Answer {
        Answer(parse_sdp(|| SdpAnswer::from_sdp_string(sdp).map_err(|e| e.to_string())))
    }
}

impl From<String> for Answer {
    fn from(sdp: String) -> Answer {
        Answer::parse(&sdp)
    }
}

/// A parser's panic (str0m's rule is "a panic is a bug") is one more malformed SDP here: the
/// caller's thread, whatever it serves, carries on.
fn parse_sdp<T>(parse: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(parse)).unwrap_or_else(|_| Err("the SDP parser panicked".into()))
}

/// How a datagram travels between a participant and the core: a UDP datagram, or one frame of
/// an ICE-TCP connection (RFC 6544, framed as RFC 4571: the driver adds and removes the 2-byte
/// length; the core sees the same packets either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
}

/// Everything the core reacts to. Time only ever comes in through these values.
#[derive(Debug)]
pub enum Input {
    /// A participant enters `room` with its first SDP offer; the core answers with
    /// [`Signal::Answer`]. A participant already in the core starts over: [`Input::Restart`].
    Join { now: Instant, room: String, peer: PeerId, offer: Offer },
    /// A participant's new offer replaces its session (as [`Input::Leave`] then [`Input::Join`],
    /// or a plain join when it has none). The new session is set up before the old one goes:
    /// if the offer is refused, the old session carries on untouched.
    Restart { now: Instant, room: String, peer: PeerId, offer: Offer },
    /// A participant leaves (its signalling connection ended, or it said so).
    Leave { now: Instant, peer: PeerId },
    /// The participant's answer to an offer the core sent it ([`Signal::Offer`]).
    Answer { now: Instant, peer: PeerId, answer: Answer },
    /// One datagram that arrived at the core's address `to` (one of those given to
    /// [`crate::Sfu::with_addresses`], or for [`Transport::Tcp`] to
    /// [`crate::Sfu::set_tcp_addresses`]) from `from`: a UDP datagram, or one deframed packet of
    /// the ICE-TCP connection between `from` and `to`.
    Packet { now: Instant, proto: Transport, from: SocketAddr, to: SocketAddr, bytes: Vec<u8> },
    /// The deadline from [`crate::Sfu::poll_timeout`] has passed.
    Timeout(Instant),
    /// How much of `publisher`'s video the participant `peer` wants (its tile is hidden, small or
    /// large). Kept even before the publisher's tracks exist; `High` until said otherwise.
    Receive { now: Instant, peer: PeerId, publisher: PeerId, video: VideoQuality },
    /// What of the participant's media is forwarded to no one, whatever its browser sends:
    /// `audio` while held (a host muted it), `video` while held (the signalling layer does not
    /// have its camera or screen on). While its video is held, its video packets go nowhere and
    /// do not count as its layers arriving. When the video hold lifts, its browser is asked for a
    /// keyframe of every layer at once, and each subscriber restarts its video at the next
    /// keyframe (a browser's first keyframe may have come, and been dropped, before the lift).
    /// Kept only while it is in the core: a new session starts with nothing held (the signalling
    /// layer says it again).
    Hold { now: Instant, peer: PeerId, audio: bool, video: bool },
    /// Start (`on`) or stop recording `room`: from now on every track published in it comes out
    /// as whole frames ([`Output::Record`], see [`crate::record`]), each publisher is asked for a
    /// keyframe of its video, and participants who join later are recorded too. Stopping ends
    /// every track and says [`Recorded::Stopped`]. Starting a room that records, or stopping one
    /// that does not, changes nothing. Independent of who is in the room: a room with nobody in
    /// it records nothing until someone publishes.
    Record { now: Instant, room: String, on: bool },
}

impl Input {
    /// The time this input carries.
    pub fn now(&self) -> Instant {
        match self {
            Input::Join { now, .. }
            | Input::Restart { now, .. }
            | Input::Leave { now, .. }
            | Input::Answer { now, .. }
            | Input::Packet { now, .. }
            | Input::Receive { now, .. }
            | Input::Hold { now, .. }
            | Input::Record { now, .. }
            | Input::Timeout(now) => *now,
        }
    }
}

/// How much of one publisher's video a subscriber wants. With one layer per track, `Off` pauses
/// forwarding and the others all mean "forward"; with simulcast they choose the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum VideoQuality {
    /// Not shown (off-screen, minimised): nothing is forwarded.
    Off,
    Low,
    Medium,
    #[default]
    High,
}

/// SDP the core hands to one participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The answer to the participant's join offer.
    Answer(String),
    /// A renegotiation from the core (tracks added or removed); the participant must reply with
    /// [`Input::Answer`].
    Offer(String),
}

/// Things worth telling the caller about (for logs, metrics and the signalling layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// ICE and DTLS are up for this participant.
    Connected(PeerId),
    /// The participant is gone from the core: it left, its connection failed, or handling its
    /// input failed. The signalling layer should tell its page.
    Removed { peer: PeerId, reason: RemoveReason },
    /// A datagram nobody claimed (garbage, or from an unknown address with no known ufrag).
    Dropped { proto: Transport, from: SocketAddr },
    /// The active speaker of `room` changed to `peer`: the loudest one by the audio level its
    /// packets carry, smoothed, with hysteresis; at most one change per second per room, and
    /// silence keeps the last speaker (see [`crate::speaker`]).
    ActiveSpeaker { room: String, peer: PeerId },
}

/// Why a participant was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveReason {
    /// [`Input::Leave`].
    Left,
    /// ICE disconnected or str0m closed the connection.
    Disconnected,
    /// The participant's side closed the connection (DTLS close_notify, as
    /// `RTCPeerConnection.close()` sends): it ended the session itself, typically to start a
    /// new one.
    Closed,
    /// str0m returned an error on this participant's input (the text is for logs).
    Failed(String),
    /// Handling this participant's input panicked; the panic was contained to it.
    Panicked,
}

/// What the core asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `bytes` from the core's address `from` (the one `to` sent its datagrams to) to `to`,
    /// over `proto`: a UDP datagram, or a frame on the ICE-TCP connection between `from` and `to`
    /// (the driver drops it when there is no such connection).
    Transmit { proto: Transport, from: SocketAddr, to: SocketAddr, bytes: Vec<u8> },
    /// Send this SDP to the participant over signalling.
    Signal { peer: PeerId, signal: Signal },
    /// See [`Event`].
    Event(Event),
    /// What a recording room's tracks carry; see [`Input::Record`].
    Record(Recorded),
}

/// A recorded track's media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordedKind {
    Audio,
    /// A participant's one video track: its camera or, while it shares it, its screen (a browser
    /// swaps the picture on the same track; the signalling layer knows which it is when).
    Video,
}

/// A recorded track's codec, as its frames come: an Opus packet, a VP8 frame, an H.264 access
/// unit in Annex-B form (start codes before each NAL unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordedCodec {
    Opus,
    Vp8,
    H264,
}

/// A recording's output. `track` numbers are unique within the core; times (`at_ms`) are
/// milliseconds since the room's recording started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// `peer`'s track starts in `room`'s recording (at its first whole frame; video at a
    /// keyframe). A participant who publishes again (left and came back, or a new session) has
    /// new tracks.
    TrackStarted { room: String, track: u64, peer: PeerId, kind: RecordedKind, codec: RecordedCodec, at_ms: u64 },
    /// One whole frame, in order; times never go backwards within a track. Video after a loss
    /// resumes at a keyframe: what is written always decodes.
    Frame { track: u64, at_ms: u64, keyframe: bool, data: Vec<u8> },
    /// The track ended: its publisher left, or the recording stopped.
    TrackEnded { track: u64, at_ms: u64 },
    /// `room`'s recording stopped; every one of its tracks ended before this.
    Stopped { room: String, at_ms: u64 },
}

/// Errors the caller gets back for one input; they concern only the participant named.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// The SDP could not be parsed.
    #[error("malformed SDP from {peer}: {reason}")]
    BadSdp { peer: PeerId, reason: String },
    /// str0m refused the offer or answer.
    #[error("SDP from {peer} refused: {reason}")]
    SdpRefused { peer: PeerId, reason: String },
    /// `Join` for a peer that is already in a room.
    #[error("{0} has already joined")]
    AlreadyJoined(PeerId),
    /// The participant is not (or no longer) known to the core.
    #[error("unknown participant {0}")]
    UnknownPeer(PeerId),
    /// An `Answer` arrived while no offer was outstanding.
    #[error("{0} answered but no offer was outstanding")]
    UnexpectedAnswer(PeerId),
}
