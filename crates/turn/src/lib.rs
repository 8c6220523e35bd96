//! huddle's STUN and TURN server core, sans-IO: the driver (`huddle-server`'s `turn` module)
//! owns the sockets and the clock and feeds packets and time in; the core answers requests,
//! keeps allocations, permissions and channels, and says where relayed data goes.
//!
//! - [`stun`] — STUN messages and ChannelData: parsing (zero-copy, bounded) and building,
//!   MESSAGE-INTEGRITY (HMAC-SHA1) and FINGERPRINT (CRC-32).
//! - [`auth`] — coturn-compatible time-limited credentials ("TURN REST API"), what each kind of
//!   credential is for ([`UserKind`]: a session's, the connectivity check's, another service's),
//!   the long-term credential key, stateless nonces.
//! - [`policy`] — which peer addresses a relay may reach (special-purpose ranges refused, IPv4
//!   wrapped in IPv6 judged as IPv4, this host's own addresses never).
//! - [`server`] — the state machine: Binding, Allocate, Refresh, CreatePermission, ChannelBind,
//!   Send/Data indications and ChannelData (RFC 8489, RFC 8656), with quotas per user and per
//!   client address, and the hub's grants and revocations of session users.
//!
//! Every packet is untrusted: parsing never panics, every count and length is bounded, and a
//! refused request gets the RFC's error code.
#![forbid(unsafe_code)]

pub mod auth;
pub mod policy;
pub mod server;
pub mod stun;

pub use auth::{Credentials, Secret, UserKind};
pub use policy::{IpNet, PeerPolicy};
pub use server::{ClientKey, Config, Forward, Relays, Server, Stats, Transmit, Transport};
