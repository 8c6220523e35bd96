//! A subscriber whose downlink narrows gets the simulcast layer that fits its bandwidth estimate
//! (str0m's, from the browser's transport-wide congestion feedback), without touching what the
//! others get, and the top layer again once the link widens.

mod common;

use std::time::Duration;

use common::World;
use huddle_sfu::str0m::media::MediaKind;
use huddle_sfu::PeerId;

const TAG_H: u8 = 2;
const TAG_F: u8 = 3;

#[test]
fn a_narrow_downlink_gets_the_layer_that_fits_and_the_top_one_back_when_it_widens() {
    let mut w = World::new();
    w.join_with_layers("room", 1, &[MediaKind::Audio, MediaKind::Video], &["q", "h", "f"]).expect("1 joins");
    // Layers like a browser's: about 80 kbit/s, 320 kbit/s and 1.2 Mbit/s at 50 frames a second.
    w.client_mut(1).layer_bytes = vec![200, 800, 3000];
    w.join("room", 2, &[MediaKind::Audio]).expect("2 joins");
    w.join("room", 3, &[MediaKind::Audio]).expect("3 joins");
    let both_top = |w: &World| w.last_video_tag(2) == Some(TAG_F) && w.last_video_tag(3) == Some(TAG_F);
    assert!(w.run_until(Duration::from_secs(5), both_top), "both start on the top layer");
    w.run_for(Duration::from_secs(2));
    let wide = w.sfu.downlink_estimate(PeerId(2)).expect("an estimate from 2's feedback");
    assert!(wide > 1_300_000, "the estimate covers the top layer: {wide}");

    // 2's downlink narrows to 600 kbit/s: the top layer no longer fits, the middle one does.
    let addr2 = w.client(2).addr;
    w.rate_to.insert(addr2, 600_000);
    let middle = |w: &World| w.last_video_tag(2) == Some(TAG_H);
    assert!(w.run_until(Duration::from_secs(10), middle), "2 gets the middle layer: {:?}", w.last_video_tag(2));
    assert_eq!(w.last_video_tag(3), Some(TAG_F), "3's wide downlink keeps the top layer");
    // Found by the delay the queue adds, before the link had to drop much.
    assert!(w.link_drops < 10, "{} datagrams dropped by the narrow link", w.link_drops);

    // It stays there, receiving every frame of it (not frozen, not flapping back up).
    let before = w.frames_received(2, MediaKind::Video);
    w.run_for(Duration::from_secs(5));
    assert_eq!(w.last_video_tag(2), Some(TAG_H), "2 stays on the middle layer");
    let got = w.frames_received(2, MediaKind::Video) - before;
    assert!(got >= 240, "2 receives the middle layer's frames: {got} of 250");
    let narrow = w.sfu.downlink_estimate(PeerId(2)).expect("an estimate");
    // Below what the top layer needs (about 1.3 Mbit/s with audio), near the link's 600 kbit/s
    // (the middle layer alone does not fill the link to show exactly where it ends).
    assert!(narrow < 1_000_000, "the estimate follows the link down: {narrow}");

    // The link widens again: 2 is back on the top layer.
    w.rate_to.clear();
    let up = |w: &World| w.last_video_tag(2) == Some(TAG_F);
    assert!(w.run_until(Duration::from_secs(30), up), "2 returns to the top layer: {:?}", w.last_video_tag(2));
}
