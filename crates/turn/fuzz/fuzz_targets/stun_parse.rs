//! Any bytes into the STUN/ChannelData parsers: never a panic, and whatever parses reads back
//! consistently.
#![no_main]

use huddle_turn::stun::{self, attr, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = stun::kind(data);
    let _ = stun::stream_frame_len(data);
    if let Some((_, payload)) = stun::parse_channel_data(data) {
        assert!(payload.len() + 4 <= data.len());
    }
    if let Ok(m) = Message::parse(data) {
        assert!(m.raw().len() <= data.len() && m.raw().len() >= stun::HEADER_LEN);
        for ty in [attr::XOR_MAPPED_ADDRESS, attr::XOR_PEER_ADDRESS, attr::XOR_RELAYED_ADDRESS] {
            let _ = m.xor_address(ty);
        }
        for ty in [attr::USERNAME, attr::REALM, attr::NONCE, attr::SOFTWARE] {
            let _ = m.text(ty);
        }
        let _ = (m.error_code(), m.u32_attr(attr::LIFETIME), m.unknown_required(), m.get_all(attr::XOR_PEER_ADDRESS).count());
        let _ = m.check_integrity(b"key");
    }
});
