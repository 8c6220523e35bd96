//! Bad input never takes the core or anyone else down: malformed or useless SDP, answers out of
//! turn, repeated joins, leaves of strangers and garbage datagrams are errors (or drops) for
//! whoever sent them, and the others' media keeps flowing.

mod common;

use std::time::Duration;

use common::{offer_sdp, World};
use huddle_sfu::str0m::media::MediaKind;
use huddle_sfu::{Input, PeerId, SfuError};

const AV: &[MediaKind] = &[MediaKind::Audio, MediaKind::Video];

fn two_talking() -> World {
    let mut w = World::new();
    w.join("room", 1, AV).expect("1 joins");
    w.join("room", 2, AV).expect("2 joins");
    assert!(w.run_until(Duration::from_secs(5), |w| both_flowing(w, 20)), "media flows; events: {:?}", w.events);
    w
}

fn both_flowing(w: &World, n: usize) -> bool {
    w.frames_from(1, 2, MediaKind::Video) >= n && w.frames_from(2, 1, MediaKind::Video) >= n
}

/// One more second of media between 1 and 2, both ways, and nobody removed.
fn assert_undisturbed(w: &mut World) {
    let before = (w.frames_from(1, 2, MediaKind::Video), w.frames_from(2, 1, MediaKind::Video));
    let audio = (w.frames_from(1, 2, MediaKind::Audio), w.frames_from(2, 1, MediaKind::Audio));
    w.run_for(Duration::from_secs(1));
    assert!(w.frames_from(1, 2, MediaKind::Video) >= before.0 + 40, "2's video still reaches 1");
    assert!(w.frames_from(2, 1, MediaKind::Video) >= before.1 + 40, "1's video still reaches 2");
    assert!(w.frames_from(1, 2, MediaKind::Audio) >= audio.0 + 40, "2's audio still reaches 1");
    assert!(w.frames_from(2, 1, MediaKind::Audio) >= audio.1 + 40, "1's audio still reaches 2");
    assert!(!w.removed(1) && !w.removed(2), "nobody was removed: {:?}", w.events);
}

#[test]
fn malformed_offer_sdp_is_refused_for_that_peer_only() {
    let mut w = two_talking();
    let good = offer_sdp(AV);
    let cases = [
        String::new(),
        "hello".to_string(),
        "v=0\r\n".to_string(),
        good[..good.len() / 2].to_string(),
        good.replace("m=audio", "m=audio x"),
        good.replace("a=fingerprint:sha-256 ", "a=fingerprint:sha-256 zz"),
        "\u{0}\u{ff}é\r\n".repeat(100),
    ];
    for (i, sdp) in cases.into_iter().enumerate() {
        let id = 10 + i as u64;
        let r = w.join_sdp("room", id, sdp);
        assert!(
            matches!(r, Err(SfuError::BadSdp { peer, .. } | SfuError::SdpRefused { peer, .. }) if peer == PeerId(id)),
            "case {i}: refused for {id}: {r:?}"
        );
    }
    // The most blatant ones are BadSdp specifically.
    assert!(matches!(w.join_sdp("room", 30, "hello".into()), Err(SfuError::BadSdp { .. })));
    assert_eq!(w.sfu.peer_count(), 2, "none of them was let in");
    assert_undisturbed(&mut w);
    // A refused participant may try again with a good offer.
    w.join("room", 3, AV).expect("3 joins after refused attempts under other ids");
}

#[test]
fn an_offer_with_no_usable_codec_is_refused() {
    let mut w = two_talking();
    // Every payload type renamed to a codec nobody knows.
    let sdp: String = offer_sdp(AV)
        .lines()
        .map(|l| {
            if let Some(rest) = l.strip_prefix("a=rtpmap:") {
                let pt = rest.split(' ').next().unwrap_or("96");
                format!("a=rtpmap:{pt} X-NOPE/90000\r\n")
            } else {
                format!("{l}\r\n")
            }
        })
        .collect();
    let r = w.join_sdp("room", 10, sdp);
    assert!(matches!(r, Err(SfuError::SdpRefused { peer: PeerId(10), .. })), "no usable codec: {r:?}");
    assert_eq!(w.sfu.peer_count(), 2);
    assert_undisturbed(&mut w);
}

#[test]
fn an_answer_with_no_outstanding_offer_is_unexpected() {
    let mut w = two_talking();
    // Everything is negotiated by now: nothing is outstanding for 1.
    let sdp = offer_sdp(AV);
    let r = w.sfu.handle_input(Input::Answer {
        now: w.now,
        peer: PeerId(1),
        answer: sdp.replace("offer", "answer").into(),
    });
    w.drain_sfu();
    assert!(matches!(r, Err(SfuError::UnexpectedAnswer(PeerId(1)))), "{r:?}");
    let r = w.sfu.handle_input(Input::Answer { now: w.now, peer: PeerId(9), answer: sdp.into() });
    w.drain_sfu();
    assert!(matches!(r, Err(SfuError::UnknownPeer(PeerId(9)))), "{r:?}");
    assert_undisturbed(&mut w);
}

#[test]
fn a_second_join_for_the_same_peer_is_refused_and_the_first_session_kept() {
    let mut w = two_talking();
    let r = w.join_sdp("room", 1, offer_sdp(AV));
    assert!(matches!(r, Err(SfuError::AlreadyJoined(PeerId(1)))), "{r:?}");
    let r = w.join_sdp("elsewhere", 2, offer_sdp(AV));
    assert!(matches!(r, Err(SfuError::AlreadyJoined(PeerId(2)))), "{r:?}");
    assert_eq!(w.sfu.peer_count(), 2);
    assert_undisturbed(&mut w);
}

#[test]
fn leaving_is_refused_for_a_stranger() {
    let mut w = two_talking();
    let r = w.sfu.handle_input(Input::Leave { now: w.now, peer: PeerId(77) });
    w.drain_sfu();
    assert!(matches!(r, Err(SfuError::UnknownPeer(PeerId(77)))), "{r:?}");
    assert_undisturbed(&mut w);
}

/// Deterministic junk.
fn junk(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

/// A STUN binding request header with a USERNAME attribute, cut short at `cut` bytes.
fn truncated_stun(username: &str, cut: usize) -> Vec<u8> {
    let mut attr = vec![0x00, 0x06];
    attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attr.extend_from_slice(username.as_bytes());
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&((attr.len() + 64) as u16).to_be_bytes()); // claims more than there is
    m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m.extend_from_slice(&[3; 12]);
    m.extend_from_slice(&attr);
    m.truncate(cut);
    m
}

/// A DTLS 1.2 record header (`content_type`, epoch 1) around junk.
fn dtls_record(content_type: u8, body: &[u8]) -> Vec<u8> {
    let mut r = vec![content_type, 0xfe, 0xfd, 0x00, 0x01, 0, 0, 0, 0, 0, 7];
    r.extend_from_slice(&(body.len() as u16).to_be_bytes());
    r.extend_from_slice(body);
    r
}

#[test]
fn garbage_datagrams_never_panic_nor_disturb_anyone() {
    let mut w = two_talking();
    let stranger = "10.9.9.9:1234".parse().expect("literal");
    let known = w.client(1).addr;
    let mut seed = 0x1234_5678_9abc_def0;
    let mut garbage: Vec<Vec<u8>> = Vec::new();
    for len in [0, 1, 2, 3, 4, 12, 19, 20, 21, 100, 1200, 1500, 9000] {
        garbage.push(junk(&mut seed, len));
    }
    for first in [0u8, 1, 3, 19, 20, 22, 23, 63, 64, 79, 127, 128, 191, 255] {
        let mut g = junk(&mut seed, 60);
        g[0] = first;
        garbage.push(g);
    }
    for cut in [0, 1, 4, 8, 20, 22, 24, 30] {
        garbage.push(truncated_stun("nope:them", cut));
    }
    for ct in [20, 21, 22, 23] {
        garbage.push(dtls_record(ct, &junk(&mut seed, 80)));
    }
    // An RTP and an RTCP header with nothing after them.
    garbage.push(vec![0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
    garbage.push(vec![0x81, 200, 0, 6, 0, 0, 0, 1]);

    for _ in 0..3 {
        for g in &garbage {
            w.inject(stranger, g.clone());
            w.inject(known, g.clone());
        }
        w.run_for(Duration::from_millis(200));
    }
    // A truncated STUN message naming 2's real ufrag, from a stranger: str0m's integrity check
    // must refuse it, and the address must not steal 2's traffic.
    let ufrag = w.client(2).sfu_ufrag.clone();
    assert!(!ufrag.is_empty());
    for cut in [20, 24, 28, 40] {
        w.inject(stranger, truncated_stun(&format!("{ufrag}:them"), cut));
    }
    assert!(
        w.events.iter().any(|e| matches!(e, huddle_sfu::Event::Dropped { from, .. } if *from == stranger)),
        "the stranger's datagrams were dropped"
    );
    assert_eq!(w.sfu.peer_count(), 2);
    assert_undisturbed(&mut w);
}

/// A well-formed binding request for `username`, padded, with no MESSAGE-INTEGRITY.
fn unsigned_stun(username: &str) -> Vec<u8> {
    let mut attr = vec![0x00, 0x06];
    attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attr.extend_from_slice(username.as_bytes());
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m.extend_from_slice(&[5; 12]);
    m.extend_from_slice(&attr);
    m
}

#[test]
fn a_stun_message_naming_someone_else_does_not_divert_a_known_address() {
    let mut w = two_talking();
    let one = w.client(1).addr;
    let ufrag2 = w.client(2).sfu_ufrag.clone();
    // From 1's address (spoofed, or a confused NAT): requests naming 2's ufrag that cannot
    // prove they know 2's password — whole but unsigned, and truncated.
    w.inject(one, unsigned_stun(&format!("{ufrag2}:them")));
    for cut in [20, 24, 28, 40] {
        w.inject(one, truncated_stun(&format!("{ufrag2}:them"), cut));
    }
    // 1's media keeps reaching 2 without a gap (it would wait for 1's next consent check if
    // 1's address had been handed to 2).
    let before = w.frames_from(2, 1, MediaKind::Audio);
    w.run_for(Duration::from_millis(300));
    let got = w.frames_from(2, 1, MediaKind::Audio) - before;
    assert!(got >= 12, "1's audio reaches 2 right after ({got} frames in 300 ms)");
    assert_undisturbed(&mut w);
}

#[test]
fn a_new_offer_the_core_cannot_use_leaves_the_session_running() {
    let mut w = two_talking();
    for sdp in [String::from("hello"), offer_sdp(AV).replace("a=fingerprint:sha-256 ", "a=fingerprint:sha-256 zz")] {
        let r = w.core(Input::Restart { now: w.now, room: "room".into(), peer: PeerId(1), offer: sdp.into() });
        w.drain_sfu();
        assert!(matches!(r, Err(SfuError::BadSdp { .. } | SfuError::SdpRefused { .. })), "{r:?}");
    }
    assert_eq!(w.sfu.peer_count(), 2);
    assert_undisturbed(&mut w);
}
