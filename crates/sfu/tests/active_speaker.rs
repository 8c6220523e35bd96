//! Active speaker: the core reads the audio level each participant's packets carry and tells the
//! caller who has the floor in each room (`Event::ActiveSpeaker`), without flapping; the level
//! itself still reaches the other participants with every frame.

mod common;

use std::time::Duration;

use common::World;
use huddle_sfu::str0m::media::MediaKind;
use huddle_sfu::{Event, PeerId};

const SILENT: i8 = -127;

fn speakers(w: &World, room: &str) -> Vec<PeerId> {
    w.events
        .iter()
        .filter_map(|e| match e {
            Event::ActiveSpeaker { room: r, peer } if r == room => Some(*peer),
            _ => None,
        })
        .collect()
}

fn set_level(w: &mut World, id: u64, level: i8) {
    let i = w.clients.iter().position(|c| c.id == PeerId(id)).expect("a client");
    w.clients[i].audio_level = Some(level);
}

#[test]
fn the_floor_follows_whoever_talks_and_does_not_flap() {
    let mut w = World::new();
    for id in 1..=4 {
        w.join("room", id, &[MediaKind::Audio]).expect("joins");
        set_level(&mut w, id, SILENT);
    }
    w.join("elsewhere", 9, &[MediaKind::Audio]).expect("joins another room");
    set_level(&mut w, 9, -10);
    let flowing = |w: &World| (1..=4).all(|id| w.frames_received(id, MediaKind::Audio) >= 60);
    assert!(w.run_until(Duration::from_secs(5), flowing), "audio flows");
    let other_room = |w: &World| speakers(w, "elsewhere") == vec![PeerId(9)];
    assert!(w.run_until(Duration::from_secs(2), other_room), "9 has the floor in its own room");
    assert!(speakers(&w, "room").is_empty(), "nobody has spoken in the room (rooms are apart)");

    // 2 talks.
    set_level(&mut w, 2, -25);
    let t = w.now;
    assert!(w.run_until(Duration::from_secs(2), |w| speakers(w, "room") == vec![PeerId(2)]), "2 gets the floor");
    let took = w.now - t;
    assert!(took <= Duration::from_secs(1), "within a second ({took:?})");
    // Its level reaches the others with its frames.
    let c1 = w.client(1);
    let mid2 = c1.origin.iter().find(|(_, p)| **p == 2).map(|(m, _)| *m).expect("1 receives 2");
    assert_eq!(c1.levels_received.get(&mid2), Some(&-25), "1 sees 2's level");

    // 3 chimes in at about the same level: no flapping for 3 s.
    set_level(&mut w, 3, -23);
    w.run_for(Duration::from_secs(3));
    assert_eq!(speakers(&w, "room"), vec![PeerId(2)], "2 keeps the floor against a close second");

    // 2 stops; 3 carries on: 3 gets the floor.
    set_level(&mut w, 2, SILENT);
    assert!(
        w.run_until(Duration::from_secs(2), |w| speakers(w, "room").last() == Some(&PeerId(3))),
        "3 gets the floor: {:?}",
        speakers(&w, "room")
    );
    // Everyone silent: the last speaker stays, no event.
    set_level(&mut w, 3, SILENT);
    let before = speakers(&w, "room").len();
    w.run_for(Duration::from_secs(3));
    assert_eq!(speakers(&w, "room").len(), before, "silence changes nothing");

    // Fast turns (every 300 ms) between 1 and 4 for 4 s: at most one change a second.
    let before = speakers(&w, "room").len();
    for round in 0..13 {
        let (a, b) = if round % 2 == 0 { (1, 4) } else { (4, 1) };
        set_level(&mut w, a, -20);
        set_level(&mut w, b, SILENT);
        w.run_for(Duration::from_millis(300));
    }
    let changes = speakers(&w, "room").len() - before;
    assert!(changes <= 4, "{changes} changes in 3.9 s");
}

#[test]
fn the_speaker_leaving_hands_the_floor_on() {
    let mut w = World::new();
    for id in 1..=3 {
        w.join("room", id, &[MediaKind::Audio]).expect("joins");
        set_level(&mut w, id, SILENT);
    }
    set_level(&mut w, 1, -20);
    set_level(&mut w, 2, -35);
    assert!(w.run_until(Duration::from_secs(3), |w| speakers(w, "room") == vec![PeerId(1)]), "1 has the floor");
    w.leave(1);
    assert!(
        w.run_until(Duration::from_secs(3), |w| speakers(w, "room") == vec![PeerId(1), PeerId(2)]),
        "2, still talking, gets it: {:?}",
        speakers(&w, "room")
    );
}
