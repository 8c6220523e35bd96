//! huddle's SFU core: a sans-IO selective forwarding unit on [str0m].
//!
//! No tokio, no sockets, no clock reads. The caller (a thin tokio driver that owns the UDP
//! socket, or one socket per interface address on the same port: [`Sfu::with_addresses`], and
//! the ICE-TCP connections, if any: [`Sfu::set_tcp_addresses`], each datagram tagged with its
//! [`Transport`]) feeds [`Input`]s to [`Sfu::handle_input`] — joins with SDP offers, answers,
//! datagrams and the current time — then takes [`Output`]s from [`Sfu::poll_output`]
//! (datagrams to send, SDP for a participant, events) until `None`, and sleeps until
//! [`Sfu::poll_timeout`] or the next datagram or command.
//!
//! # Layout
//!
//! - [`api`] — the inputs, outputs and errors: plain values, no serde, no `huddle-protocol`.
//! - `sfu.rs` — [`Sfu`], the one owner of everything: participants by [`PeerId`], rooms (sets
//!   of participants), the demux table and the output queue. After each input it *settles*:
//!   delivers what participants produced for each other, removes failed participants and
//!   renegotiates where tracks changed.
//! - `peer.rs` — one participant: its str0m `Rtc`, the tracks it publishes and those it
//!   receives. Its `Peer::mutate` is **the drain rule**, in exactly one function: every
//!   mutation of an `Rtc` (offer/answer, a datagram, a timeout, asking for a keyframe,
//!   renegotiating) runs inside it, and it polls `poll_output` until `Timeout`. Forwarded
//!   packets are the exception: written at once, drained once per batch of inputs, when the
//!   driver polls [`Sfu::poll_output`] (a drain visits every stream of the session, so one per
//!   packet made forwarding cost O(room size) per packet and subscriber).
//! - `track.rs` — tracks. A published track (`TrackIn`) is owned by its publisher's `Arc`
//!   only; subscribers hold `Weak`s. Each outgoing track has an explicit state:
//!   `ToOpen → Negotiating → Open`, and once the publisher is gone
//!   `→ NegotiatingStop → (removed)`. Keyframe requests towards a publisher's track are
//!   throttled to one per [`track::KEYFRAME_REQUEST_INTERVAL`].
//! - `rtp.rs` — what forwarding needs of a packet (`RtpIn`) and the per-subscriber header
//!   rewriting that keeps a track continuous (`Continuity`).
//! - [`speaker`] — active-speaker detection per room from the RTP audio level (RFC 6464) each
//!   publisher's packets carry: smoothed levels, a speech threshold, a margin and a minimum hold,
//!   reported as [`Event::ActiveSpeaker`] at most once per second per room.
//! - [`record`] — recording a room ([`Input::Record`]): each published track's packets, as
//!   forwarded, turned into whole frames in order ([`Recorded`] outputs; the driver writes the
//!   files): a reorder buffer, str0m's depacketisers, video only from a keyframe (asked for at
//!   the start and after a loss), the best simulcast layer. No decoding, no I/O.
//! - `demux.rs` — which participant a datagram is for: by remote address, else (a STUN
//!   binding request from a new address) by our ICE ufrag in its USERNAME. Hash lookups; no
//!   scan of all participants per packet. An address changes hands only on a request that
//!   passes that participant's STUN integrity check.
//!
//! # Roles
//!
//! The core is ICE-lite and the answerer of each participant's first offer, so it is the DTLS
//! server (`a=setup:passive`): browsers run the ICE checks and the DTLS client. Tracks of others
//! are added by the core's own renegotiation offers ([`Signal::Offer`]), which the participant
//! answers ([`Input::Answer`]); one offer is outstanding per participant at a time.
//!
//! # Forwarding: RTP packets, not frames
//!
//! Every `Rtc` runs in str0m's RTP mode: a publisher's packets arrive as `Event::RtpPacket`
//! (SRTP removed, RTX repairs already turned back into the packet they repair), are tagged with
//! their track, layer and codec once (`rtp.rs`: `RtpIn`, with the keyframe test and VP8's
//! payload descriptor parsed once for everyone), and each subscriber writes the same payload —
//! shared by reference, never depacketised or repacketised — with `StreamTx::write_rtp`. Only
//! the header changes per subscriber: its own SSRC and payload type, and a sequence number,
//! timestamp and VP8 picture id kept continuous across layer switches and pauses
//! (`rtp::Continuity`). Video starts, and changes simulcast layer, only at the first packet of a
//! keyframe. str0m answers each subscriber's NACKs from that subscriber's own history
//! (`SEND_BUFFER_VIDEO` packets, sharing the payloads) and sends its receiver reports; a
//! subscriber's PLI/FIR goes to the publisher of the layer it receives, throttled per layer.
//!
//! # Which layer a subscriber gets
//!
//! The quality it asked for per publisher (its tile size), within two caps: the loss its
//! browser's receiver reports show (`PeerState::congestion`), and — unless
//! [`Sfu::set_bandwidth_estimation`] turned it off — str0m's estimate of its downlink from the
//! browser's transport-wide congestion feedback (`PeerState::fit_bandwidth`, against each layer's
//! measured bitrate). With the estimate comes str0m's pacer, which releases one packet per
//! timeout: `Peer::mutate` then handles a timeout that is due at once, after every write.
//!
//! # Failure containment
//!
//! Nothing in the core unwraps remote input: malformed SDP is an [`SfuError`] for that
//! participant only; a str0m error on a participant's datagram or timeout removes that
//! participant ([`Event::Removed`]). Each participant's handling runs under `catch_unwind`, so
//! a panic inside str0m on one participant's input removes that participant, not the process.

#![forbid(unsafe_code)]

pub mod api;
mod demux;
mod peer;
pub mod record;
mod rtp;
mod sfu;
pub mod speaker;
pub mod track;

pub use api::{
    Answer, Event, Input, Offer, Output, PeerId, Recorded, RecordedCodec, RecordedKind, RemoveReason, SfuError, Signal,
    Transport, VideoQuality,
};
pub use demux::stun_local_ufrag;
pub use sfu::Sfu;
/// The str0m version the core is built on, re-exported for the harness and the driver.
pub use str0m;
