//! Simulcast layers that do not arrive: a browser declares three layers but sends only those its
//! camera picture, CPU and bandwidth allow (Chromium sends one for a 320×240 camera). A subscriber
//! wanting a missing layer gets the best one that arrives instead of a frozen picture, moves up
//! when the layer it wants starts, and down when it stops.

mod common;

use std::time::Duration;

use common::World;
use huddle_sfu::str0m::media::{MediaKind, Rid};

const TAG_Q: u8 = 1;
const TAG_H: u8 = 2;
const TAG_F: u8 = 3;

fn send_layers(w: &mut World, id: u64, layers: &[&str]) {
    w.client_mut(id).layers = layers.iter().map(|l| Rid::from(*l)).collect();
}

#[test]
fn a_subscriber_gets_the_best_layer_that_arrives() {
    let mut w = World::new();
    w.join_with_layers("room", 1, &[MediaKind::Audio, MediaKind::Video], &["q", "h", "f"]).expect("1 joins");
    // Declared three, sends only the lowest (tags follow the position in the list: q stays 1).
    send_layers(&mut w, 1, &["q"]);
    w.join("room", 2, &[MediaKind::Audio]).expect("2 joins");

    // 2 wants `high` (the default); only `q` comes: it gets `q`, not nothing.
    let got_q = |w: &World| w.last_video_tag(2) == Some(TAG_Q) && w.frames_received(2, MediaKind::Video) >= 20;
    assert!(w.run_until(Duration::from_secs(5), got_q), "2 receives the only layer there is");

    // The publisher's picture grows and all three layers come: 2 moves up to the top one.
    send_layers(&mut w, 1, &["q", "h", "f"]);
    let got_f = |w: &World| w.last_video_tag(2) == Some(TAG_F);
    assert!(w.run_until(Duration::from_secs(3), got_f), "2 moves up to the top layer once it arrives");

    // The top layer stops (bandwidth, CPU): after the activity window 2 falls back to the middle one.
    send_layers(&mut w, 1, &["q", "h"]);
    let got_h = |w: &World| w.last_video_tag(2) == Some(TAG_H);
    assert!(w.run_until(Duration::from_secs(4), got_h), "2 falls back to the middle layer when the top one stops");
    let before = w.frames_received(2, MediaKind::Video);
    w.run_for(Duration::from_secs(1));
    assert!(w.frames_received(2, MediaKind::Video) >= before + 20, "and keeps receiving at frame rate");
}
