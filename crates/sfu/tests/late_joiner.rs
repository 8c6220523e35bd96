//! A and B are already talking when C joins: C receives A's and B's audio and video, and A and
//! B receive C's, through renegotiations the core starts.

mod common;

use std::time::Duration;

use common::World;
use huddle_sfu::str0m::media::MediaKind;

const AV: &[MediaKind] = &[MediaKind::Audio, MediaKind::Video];

fn from(w: &World, id: u64, publisher: u64, kind: MediaKind) -> usize {
    w.frames_from(id, publisher, kind)
}

#[test]
fn a_late_joiner_receives_everyone_and_everyone_receives_it() {
    let mut w = World::new();
    w.join("room", 1, AV).expect("A joins");
    w.join("room", 2, AV).expect("B joins");
    let ab = |w: &World| from(w, 1, 2, MediaKind::Video) >= 25 && from(w, 2, 1, MediaKind::Video) >= 25;
    assert!(w.run_until(Duration::from_secs(5), ab), "A and B exchange media; events: {:?}", w.events);
    w.run_for(Duration::from_secs(3));

    let c_joins = w.now;
    w.join("room", 3, AV).expect("C joins late");
    let all = |w: &World| {
        [(3, 1), (3, 2), (1, 3), (2, 3)]
            .iter()
            .all(|(id, p)| from(w, *id, *p, MediaKind::Audio) >= 25 && from(w, *id, *p, MediaKind::Video) >= 25)
    };
    assert!(w.run_until(Duration::from_secs(5), all), "C gets A and B, and they get C; events: {:?}", w.events);
    eprintln!("C and the others receive each other {:?} (virtual) after C's join", w.now - c_joins);
    for id in 1..=3 {
        assert_eq!(w.client(id).incoming.len(), 4, "{id} receives the two others' audio and video");
    }

    // And it keeps flowing, every way.
    let before: Vec<usize> = [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)]
        .iter()
        .map(|(i, p)| from(&w, *i, *p, MediaKind::Video))
        .collect();
    w.run_for(Duration::from_secs(1));
    for (k, (i, p)) in [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)].iter().enumerate() {
        assert!(from(&w, *i, *p, MediaKind::Video) >= before[k] + 40, "{p}'s video keeps reaching {i}");
    }
}
