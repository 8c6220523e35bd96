//! Which participant a datagram belongs to: first by its remote address, then, for a STUN
//! binding request from an address not seen yet, by the core's ICE ufrag in its USERNAME.
//! Both are hash lookups; nothing scans all participants per packet.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::api::PeerId;

const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_HEADER_LEN: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;

/// The demux table. Addresses are learnt from STUN requests that named a known ufrag.
#[derive(Debug, Default)]
pub(crate) struct Demux {
    by_addr: HashMap<SocketAddr, PeerId>,
    by_ufrag: HashMap<String, PeerId>,
}

impl Demux {
    pub(crate) fn add_ufrag(&mut self, ufrag: String, peer: PeerId) {
        self.by_ufrag.insert(ufrag, peer);
    }

    /// Forget everything that points at `peer`.
    pub(crate) fn remove_peer(&mut self, peer: PeerId) {
        self.by_addr.retain(|_, p| *p != peer);
        self.by_ufrag.retain(|_, p| *p != peer);
    }

    /// The participant this datagram is for, learning `from` when a STUN request names a ufrag.
    pub(crate) fn route(&mut self, from: SocketAddr, bytes: &[u8]) -> Option<PeerId> {
        if let Some(ufrag) = stun_local_ufrag(bytes) {
            let peer = *self.by_ufrag.get(ufrag)?;
            // A known ufrag from a new address (a new candidate pair or a moved client): the
            // address now belongs to this participant. str0m still checks the STUN integrity.
            self.by_addr.insert(from, peer);
            return Some(peer);
        }
        self.by_addr.get(&from).copied()
    }
}

/// For a STUN message, the local (our) part of its `USERNAME` attribute `ours:theirs`.
pub(crate) fn stun_local_ufrag(bytes: &[u8]) -> Option<&str> {
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

    #[test]
    fn reads_our_ufrag_from_a_binding_request() {
        assert_eq!(stun_local_ufrag(&stun_with_username("abcd:wxyz")), Some("abcd"));
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
    fn learns_the_address_from_stun_then_routes_by_address() {
        let mut demux = Demux::default();
        demux.add_ufrag("abcd".into(), PeerId(1));
        let from: SocketAddr = "10.0.0.1:5000".parse().expect("literal address");
        assert_eq!(demux.route(from, b"\x80rtp"), None);
        assert_eq!(demux.route(from, &stun_with_username("abcd:wxyz")), Some(PeerId(1)));
        assert_eq!(demux.route(from, b"\x80rtp"), Some(PeerId(1)));
        assert_eq!(demux.route(from, &stun_with_username("nope:wxyz")), None);
        demux.remove_peer(PeerId(1));
        assert_eq!(demux.route(from, b"\x80rtp"), None);
    }
}
