//! A subscriber whose downlink loses packets steps down a simulcast layer (its browser's receiver
//! reports say so), without touching what the others get, and steps back up once the loss is gone.

mod common;

use std::time::Duration;

use common::World;
use huddle_sfu::str0m::media::MediaKind;

const TAG_Q: u8 = 1;
const TAG_F: u8 = 3;

#[test]
fn a_lossy_downlink_gets_a_lower_layer_and_the_others_keep_theirs() {
    let mut w = World::new();
    w.join_with_layers("room", 1, &[MediaKind::Audio, MediaKind::Video], &["q", "h", "f"]).expect("1 joins");
    w.join("room", 2, &[MediaKind::Audio]).expect("2 joins");
    w.join("room", 3, &[MediaKind::Audio]).expect("3 joins");
    let both_top = |w: &World| w.last_video_tag(2) == Some(TAG_F) && w.last_video_tag(3) == Some(TAG_F);
    assert!(w.run_until(Duration::from_secs(5), both_top), "both start on the top layer");

    // 2's downlink loses 20 %: within a few receiver reports it is down a layer, then another.
    let addr2 = w.client(2).addr;
    w.loss_to.insert(addr2, 0.2);
    let down = |w: &World| w.last_video_tag(2) == Some(TAG_Q);
    assert!(w.run_until(Duration::from_secs(12), down), "2 steps down to the lowest layer: {:?}", w.last_video_tag(2));
    assert_eq!(w.last_video_tag(3), Some(TAG_F), "3's clean downlink keeps the top layer");
    let before = w.frames_received(2, MediaKind::Video);
    w.run_for(Duration::from_secs(2));
    assert!(w.frames_received(2, MediaKind::Video) > before + 30, "2 keeps receiving frames (not frozen)");

    // The loss goes away: 2 climbs back to the top layer.
    w.loss_to.clear();
    let up = |w: &World| w.last_video_tag(2) == Some(TAG_F);
    assert!(w.run_until(Duration::from_secs(30), up), "2 returns to the top layer: {:?}", w.last_video_tag(2));
}
