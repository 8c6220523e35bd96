//! Which participant a datagram belongs to: first by its remote address, then, for a STUN
//! binding request from an address not seen yet, by the core's ICE ufrag in its USERNAME.
//! Both are hash lookups; nothing scans all participants per packet.
//!
//! An address is (re)assigned to a participant only by a STUN request that passes that
//! participant's MESSAGE-INTEGRITY check (HMAC-SHA1 with our ICE password, the check str0m makes
//! too). Otherwise one forged or broken datagram naming someone's ufrag, sent from a third
//! participant's address, would divert that participant's media until its next consent check.

use std::collections::HashMap;
use std::net::SocketAddr;

use str0m::crypto::Sha1HmacProvider;
use str0m::ice::StunMessage;

use crate::api::{PeerId, Transport};

const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_HEADER_LEN: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;

/// The demux table. Addresses are learnt from STUN requests that named a known ufrag and
/// passed its integrity check.
pub(crate) struct Demux {
    /// By transport too: a participant's UDP and TCP ports may have the same number.
    by_addr: HashMap<(Transport, SocketAddr), PeerId>,
    /// Our ufrag → the participant, and our ICE password for it.
    by_ufrag: HashMap<String, (PeerId, String)>,
    hmac: &'static dyn Sha1HmacProvider,
}

impl std::fmt::Debug for Demux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demux").field("addresses", &self.by_addr.len()).field("ufrags", &self.by_ufrag.len()).finish()
    }
}

impl Default for Demux {
    fn default() -> Self {
        Demux {
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            // The provider str0m itself uses (chosen by its crypto feature).
            hmac: str0m::crypto::from_feature_flags().sha1_hmac_provider,
        }
    }
}

impl Demux {
    pub(crate) fn add_ufrag(&mut self, ufrag: String, pass: String, peer: PeerId) {
        self.by_ufrag.insert(ufrag, (peer, pass));
    }

    /// Forget everything that points at `peer`.
    pub(crate) fn remove_peer(&mut self, peer: PeerId) {
        self.by_addr.retain(|_, p| *p != peer);
        self.by_ufrag.retain(|_, (p, _)| *p != peer);
    }

    /// The participant this datagram is for, learning `from` when a STUN request names a ufrag.
    pub(crate) fn route(&mut self, proto: Transport, from: SocketAddr, bytes: &[u8]) -> Option<PeerId> {
        let known = self.by_addr.get(&(proto, from)).copied();
        let Some(ufrag) = stun_local_ufrag(bytes) else { return known };
        let (peer, pass) = self.by_ufrag.get(ufrag)?;
        if known == Some(*peer) {
            // Its usual address: str0m checks the integrity as for any request.
            return known;
        }
        // A new address for this participant (a new candidate pair, a moved client), or an
        // address that belongs to someone else: only a request that proves it knows the
        // participant's password may claim it.
        let hmac = self.hmac;
        let verified = StunMessage::parse(bytes)
            .is_ok_and(|m| m.is_binding_request() && m.verify(pass.as_bytes(), |k, d| hmac.sha1_hmac(k, d)));
        if !verified {
            return None;
        }
        let peer = *peer;
        self.by_addr.insert((proto, from), peer);
        Some(peer)
    }
}

/// For a STUN message, the local (our) part of its `USERNAME` attribute `ours:theirs`.
pub fn stun_local_ufrag(bytes: &[u8]) -> Option<&str> {
    if bytes.len() < STUN_HEADER_LEN || bytes[0] & 0xC0 != 0 || bytes[4..8] != STUN_MAGIC_COOKIE {
        return None;
    }
    let declared = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
    let end = (STUN_HEADER_LEN + declared).min(bytes.len());
    let mut at = STUN_HEADER_LEN;
    while at + 4 <= end {
        let kind = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        let value = bytes.get(at + 4..at + 4 + len)?;
        if kind == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::ice::{StunMessage, TransId};

    fn stun_with_username(username: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        msg.extend_from_slice(&STUN_MAGIC_COOKIE);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attr);
        msg
    }

    /// A binding request as a browser sends it, signed with `pass`.
    fn signed_request(username: &str, pass: &str) -> Vec<u8> {
        let hmac = str0m::crypto::from_feature_flags().sha1_hmac_provider;
        let msg = StunMessage::binding_request(username, TransId::new(), true, 1, 100, false);
        let mut buf = vec![0; 1500];
        let n = msg.to_bytes(Some(pass.as_bytes()), &mut buf, |k, d| hmac.sha1_hmac(k, d)).expect("fits");
        buf.truncate(n);
        buf
    }

    #[test]
    fn reads_our_ufrag_from_a_binding_request() {
        assert_eq!(stun_local_ufrag(&stun_with_username("abcd:wxyz")), Some("abcd"));
        assert_eq!(stun_local_ufrag(&signed_request("abcd:wxyz", "secret")), Some("abcd"));
    }

    #[test]
    fn ignores_garbage_and_truncated_messages() {
        assert_eq!(stun_local_ufrag(b"hello"), None);
        assert_eq!(stun_local_ufrag(&[0u8; 40]), None);
        let mut msg = stun_with_username("abcd:wxyz");
        msg.truncate(26);
        assert_eq!(stun_local_ufrag(&msg), None);
    }

    #[test]
    fn learns_the_address_from_a_signed_request_then_routes_by_address() {
        let mut demux = Demux::default();
        demux.add_ufrag("abcd".into(), "secret".into(), PeerId(1));
        let from: SocketAddr = "10.0.0.1:5000".parse().expect("literal address");
        assert_eq!(demux.route(Transport::Udp, from, b"\x80rtp"), None);
        assert_eq!(demux.route(Transport::Udp, from, &stun_with_username("abcd:wxyz")), None, "unsigned: not learnt");
        assert_eq!(demux.route(Transport::Udp, from, &signed_request("abcd:wxyz", "wrong")), None, "wrong password");
        assert_eq!(demux.route(Transport::Udp, from, b"\x80rtp"), None);
        assert_eq!(demux.route(Transport::Udp, from, &signed_request("abcd:wxyz", "secret")), Some(PeerId(1)));
        assert_eq!(demux.route(Transport::Udp, from, b"\x80rtp"), Some(PeerId(1)));
        assert_eq!(demux.route(Transport::Udp, from, &stun_with_username("nope:wxyz")), None);
        demux.remove_peer(PeerId(1));
        assert_eq!(demux.route(Transport::Udp, from, b"\x80rtp"), None);
    }

    #[test]
    fn an_address_is_not_taken_from_its_participant_without_the_password() {
        let mut demux = Demux::default();
        demux.add_ufrag("aaaa".into(), "pass-a".into(), PeerId(1));
        demux.add_ufrag("bbbb".into(), "pass-b".into(), PeerId(2));
        let one: SocketAddr = "10.0.0.1:5000".parse().expect("literal address");
        assert_eq!(demux.route(Transport::Udp, one, &signed_request("aaaa:x", "pass-a")), Some(PeerId(1)));
        // Forged or broken requests naming 2 from 1's address: dropped, 1 keeps its address.
        assert_eq!(demux.route(Transport::Udp, one, &stun_with_username("bbbb:x")), None);
        assert_eq!(demux.route(Transport::Udp, one, &signed_request("bbbb:x", "pass-a")), None);
        assert_eq!(demux.route(Transport::Udp, one, b"\x80rtp"), Some(PeerId(1)));
        // 1's own unsigned-looking requests still reach its str0m, which checks them.
        assert_eq!(demux.route(Transport::Udp, one, &stun_with_username("aaaa:x")), Some(PeerId(1)));
        // A genuine move (the address now used by 2, proven by its password) is followed.
        assert_eq!(demux.route(Transport::Udp, one, &signed_request("bbbb:x", "pass-b")), Some(PeerId(2)));
        assert_eq!(demux.route(Transport::Udp, one, b"\x80rtp"), Some(PeerId(2)));
    }

    #[test]
    fn udp_and_tcp_addresses_are_told_apart() {
        let mut demux = Demux::default();
        demux.add_ufrag("aaaa".into(), "pass-a".into(), PeerId(1));
        let same: SocketAddr = "10.0.0.1:5000".parse().expect("literal address");
        assert_eq!(demux.route(Transport::Tcp, same, &signed_request("aaaa:x", "pass-a")), Some(PeerId(1)));
        assert_eq!(demux.route(Transport::Tcp, same, b"\x80rtp"), Some(PeerId(1)));
        // The same address and port over UDP is another path, not yet proven.
        assert_eq!(demux.route(Transport::Udp, same, b"\x80rtp"), None);
    }
}
