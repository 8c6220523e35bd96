//! A publisher leaves: everyone else's session stops its tracks in a renegotiation, and media
//! between those who stay keeps flowing.

mod common;

use std::time::Duration;

use common::World;
use huddle_sfu::str0m::media::MediaKind;

#[test]
fn the_others_stop_the_tracks_of_someone_who_left() {
    let mut w = World::new();
    for id in 1..=3 {
        w.join("room", id, &[MediaKind::Audio, MediaKind::Video]).expect("joins");
    }
    let all_in = |w: &World| (1..=3).all(|id| w.client(id).incoming.len() == 4);
    assert!(w.run_until(Duration::from_secs(5), all_in), "everyone receives the two others' tracks");
    let flowing = |w: &World| (1..=3).all(|id| w.frames_received(id, MediaKind::Video) >= 20);
    assert!(w.run_until(Duration::from_secs(5), flowing), "media flows");

    w.leave(1);
    let stopped = |w: &World| [2, 3].iter().all(|id| w.client(*id).incoming.len() == 2);
    assert!(w.run_until(Duration::from_secs(2), stopped), "the tracks of 1 are stopped for 2 and 3");
    let before = (w.frames_received(2, MediaKind::Video), w.frames_received(3, MediaKind::Video));
    w.run_for(Duration::from_secs(1));
    assert!(w.frames_received(2, MediaKind::Video) >= before.0 + 40, "3's video still reaches 2");
    assert!(w.frames_received(3, MediaKind::Video) >= before.1 + 40, "2's video still reaches 3");
}
