//! huddle's SFU core: a sans-IO selective forwarding unit on [str0m].
//!
//! No tokio, no sockets, no clock reads. The caller (a thin tokio driver that owns the UDP
//! socket, or one socket per interface address on the same port: [`Sfu::with_addresses`]) feeds [`Input`]s to [`Sfu::handle_input`] — joins with SDP offers, answers,
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
//!   mutation of an `Rtc` (offer/answer, a datagram, a timeout, writing a frame, asking for a
//!   keyframe, renegotiating) runs inside it, and it polls `poll_output` until `Timeout`.
//! - `track.rs` — tracks. A published track (`TrackIn`) is owned by its publisher's `Arc`
//!   only; subscribers hold `Weak`s. Each outgoing track has an explicit state:
//!   `ToOpen → Negotiating → Open`, and once the publisher is gone
//!   `→ NegotiatingStop → (removed)`. Keyframe requests towards a publisher's track are
//!   throttled to one per [`track::KEYFRAME_REQUEST_INTERVAL`].
//! - [`speaker`] — active-speaker detection per room from the RTP audio level (RFC 6464) each
//!   publisher's packets carry: smoothed levels, a speech threshold, a margin and a minimum hold,
//!   reported as [`Event::ActiveSpeaker`] at most once per second per room.
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
//! # Forwarding: frames, not RTP (for now)
//!
//! This step forwards at frame level through str0m's sample API (`Event::MediaData` in,
//! `Writer::write` out): str0m depacketizes, reorders and handles NACK/RTX per leg, and each
//! subscriber leg gets its own sequence numbers and SSRCs for free. It costs a depacketize and
//! packetize per frame and adds up to a frame of latency; RTP mode (forwarding packets with
//! rewritten sequence numbers, needed for simulcast layer switching) is a later step.
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
mod sfu;
pub mod speaker;
pub mod track;

pub use api::{Event, Input, Output, PeerId, RemoveReason, SfuError, Signal, VideoQuality};
pub use sfu::Sfu;
/// The str0m version the core is built on, re-exported for the harness and the driver.
pub use str0m;
