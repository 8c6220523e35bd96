//! Two participants publish audio and video; each receives the other's media through the core.

mod common;

use std::time::Duration;

use common::World;
use huddle_sfu::str0m::media::MediaKind;
use huddle_sfu::Event;

#[test]
fn two_publishers_receive_each_others_audio_and_video() {
    let mut w = World::new();
    w.join("lobby", 1, &[MediaKind::Audio, MediaKind::Video]).expect("1 joins");
    w.join("lobby", 2, &[MediaKind::Audio, MediaKind::Video]).expect("2 joins");

    let flowing = |w: &World| {
        [1, 2]
            .iter()
            .all(|id| w.frames_received(*id, MediaKind::Audio) >= 20 && w.frames_received(*id, MediaKind::Video) >= 20)
    };
    assert!(w.run_until(Duration::from_secs(5), flowing), "media flows both ways; events: {:?}", w.events);

    for id in [1, 2] {
        let c = w.client(id);
        assert!(c.connected);
        assert_eq!(c.incoming.len(), 2, "{id} receives exactly the other's two tracks");
    }
    assert!(w.events.contains(&Event::Connected(huddle_sfu::PeerId(1))));
    assert!(!w.events.iter().any(|e| matches!(e, Event::Removed { .. })));
    // The core counts what it forwarded (for the server's /metrics): at least the 80 frames above.
    let (packets, bytes) = w.sfu.forwarded();
    assert!(packets >= 80 && bytes > packets, "forwarded {packets} packets, {bytes} bytes");
}

#[test]
fn media_still_flows_with_five_percent_loss() {
    let mut w = World::new();
    w.loss = 0.05;
    w.join("lobby", 1, &[MediaKind::Audio, MediaKind::Video]).expect("1 joins");
    w.join("lobby", 2, &[MediaKind::Audio]).expect("2 joins");
    let flowing =
        |w: &World| w.frames_received(1, MediaKind::Audio) >= 20 && w.frames_received(2, MediaKind::Video) >= 20;
    assert!(w.run_until(Duration::from_secs(10), flowing), "media flows despite loss; events: {:?}", w.events);
}

#[test]
fn rooms_are_separate() {
    let mut w = World::new();
    w.join("a", 1, &[MediaKind::Audio]).expect("1 joins");
    w.join("b", 2, &[MediaKind::Audio]).expect("2 joins");
    w.run_for(Duration::from_secs(2));
    assert!(w.client(1).connected && w.client(2).connected);
    assert_eq!(w.client(1).incoming.len(), 0);
    assert_eq!(w.client(2).incoming.len(), 0);
}
