//! Simulcast: a publisher sends three layers; each subscriber gets exactly one, chosen by the
//! quality it asks for, switching only at a keyframe of the new layer, with timestamps that never
//! jump backwards.

mod common;

use std::time::Duration;

use common::World;
use huddle_sfu::str0m::media::{MediaKind, Mid};
use huddle_sfu::{Input, PeerId, VideoQuality};

fn receive(w: &mut World, peer: u64, publisher: u64, video: VideoQuality) {
    let input = Input::Receive { now: w.now, peer: PeerId(peer), publisher: PeerId(publisher), video };
    w.sfu.handle_input(input).expect("a participant");
    w.drain_sfu();
}

fn video_mid(w: &World, id: u64) -> Option<Mid> {
    w.client(id).incoming.iter().find(|(_, k)| **k == MediaKind::Video).map(|(m, _)| *m)
}

/// Frames of each layer tag the subscriber has received on the publisher's video.
fn tags(w: &World, id: u64) -> [usize; 4] {
    let mut out = [0; 4];
    if let Some(mid) = video_mid(w, id) {
        for ((m, tag), n) in &w.client(id).video_tags {
            if *m == mid && (*tag as usize) < 4 {
                out[*tag as usize] += n;
            }
        }
    }
    out
}

#[test]
fn each_subscriber_gets_one_layer_and_switches_at_keyframes() {
    let mut w = World::new();
    w.join_with_layers("room", 1, &[MediaKind::Audio, MediaKind::Video], &["q", "h", "f"]).expect("1 joins");
    w.join("room", 2, &[MediaKind::Audio]).expect("2 joins");
    w.join("room", 3, &[MediaKind::Audio]).expect("3 joins");
    receive(&mut w, 3, 1, VideoQuality::Low);

    let started = |w: &World| tags(w, 2)[3] >= 20 && tags(w, 3)[1] >= 20;
    assert!(w.run_until(Duration::from_secs(5), started), "layers flow: {:?} {:?}", tags(&w, 2), tags(&w, 3));
    // Until the top layer's first keyframe arrives the best layer already arriving stands in (a
    // picture sooner); from then on only the top layer.
    let (start2, start3) = (tags(&w, 2), tags(&w, 3));
    assert!(start2[1] + start2[2] <= 3, "at most the first frames before the top layer came: {start2:?}");
    w.run_for(Duration::from_secs(1));
    let (now2, now3) = (tags(&w, 2), tags(&w, 3));
    assert_eq!((now2[1], now2[2]), (start2[1], start2[2]), "the high-quality subscriber gets only the top layer");
    assert!(now2[3] > start2[3] + 20, "top-layer frames flow: {now2:?}");
    assert_eq!(start3[2] + start3[3] + now3[2] + now3[3], 0, "the small tile gets only the bottom layer");

    // Subscriber 2's tile shrinks: the low layer takes over at its next keyframe, never mixed.
    let before = tags(&w, 2);
    receive(&mut w, 2, 1, VideoQuality::Low);
    let switched = |w: &World| {
        let mid = video_mid(w, 2).expect("video");
        w.client(2).last_tag.get(&mid) == Some(&1)
    };
    assert!(w.run_until(Duration::from_secs(3), switched), "switched to the low layer");
    w.run_for(Duration::from_millis(500));
    let after = tags(&w, 2);
    assert!(after[1] > before[1] + 10, "low-layer frames flow after the switch: {after:?}");
    let top_after_switch = after[3] - before[3];
    assert!(top_after_switch <= 50, "the top layer stopped at the switch ({top_after_switch} more frames)");
    assert_eq!(after[2], start2[2], "the middle layer was not forwarded after the start");

    // And up to the middle one.
    receive(&mut w, 2, 1, VideoQuality::Medium);
    let medium = |w: &World| {
        let mid = video_mid(w, 2).expect("video");
        w.client(2).last_tag.get(&mid) == Some(&2)
    };
    assert!(w.run_until(Duration::from_secs(3), medium), "switched to the middle layer");
    for id in [2, 3] {
        let c = w.client(id);
        assert_eq!(c.time_backwards, 0, "{id}: timestamps never went backwards across switches");
        // Each layer has its own sequence numbers; the core renumbers them so that a subscriber's
        // depacketizer sees one stream. (VP8 picture ids, which str0m's packetizer leaves out,
        // are covered by the unit tests of `rtp::Continuity` and by Chromium in e2e/sfu.test.js.)
        assert_eq!(c.video_gaps, 0, "{id}: no gap in the sequence numbers across switches");
    }
}
