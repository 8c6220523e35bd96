//! A publisher goes away: everyone else's session stops its tracks in a renegotiation the core
//! starts, and media between those who stay keeps flowing. It may say so (`Input::Leave`), or its
//! connection may just go silent, in which case the core notices by itself (ICE timeout), or it may
//! close its connection (DTLS close_notify).

mod common;

use std::time::Duration;

use common::World;
use huddle_sfu::str0m::media::{Direction, MediaKind, Mid};
use huddle_sfu::{Event, PeerId, RemoveReason};

const AV: &[MediaKind] = &[MediaKind::Audio, MediaKind::Video];

/// Three participants, everyone receiving everyone.
fn three_talking() -> World {
    let mut w = World::new();
    for id in 1..=3 {
        w.join("room", id, AV).expect("joins");
    }
    let all_in = |w: &World| (1..=3).all(|id| w.client(id).incoming.len() == 4);
    assert!(w.run_until(Duration::from_secs(5), all_in), "everyone receives the two others' tracks");
    let flowing = |w: &World| (1..=3).all(|id| w.frames_received(id, MediaKind::Video) >= 20);
    assert!(w.run_until(Duration::from_secs(5), flowing), "media flows");
    w
}

/// The mids on which `id` receives `publisher`'s tracks.
fn mids_from(w: &World, id: u64, publisher: u64) -> Vec<Mid> {
    w.client(id).origin.iter().filter(|(_, p)| **p == publisher).map(|(m, _)| *m).collect()
}

/// After 1 is gone: 2 and 3 see 1's m-lines stopped, and keep exchanging media.
fn assert_gone_for_the_others(w: &mut World, a_mids: &[(u64, Vec<Mid>)]) {
    let stopped = |w: &World| [2, 3].iter().all(|id| w.client(*id).incoming.len() == 2);
    assert!(w.run_until(Duration::from_secs(2), stopped), "the tracks of 1 are stopped for 2 and 3");
    for (id, mids) in a_mids {
        assert_eq!(mids.len(), 2, "{id} had 1's audio and video");
        for mid in mids {
            let media = w.client(*id).rtc.media(*mid).expect("a stopped m-line stays in the SDP");
            assert_eq!(media.direction(), Direction::Inactive, "{id}: 1's m-line {mid} is inactive");
        }
    }
    let before = (w.frames_received(2, MediaKind::Video), w.frames_received(3, MediaKind::Video));
    w.run_for(Duration::from_secs(1));
    assert!(w.frames_received(2, MediaKind::Video) >= before.0 + 40, "3's video still reaches 2");
    assert!(w.frames_received(3, MediaKind::Video) >= before.1 + 40, "2's video still reaches 3");
    assert_eq!(w.sfu.peer_count(), 2);
}

#[test]
fn the_others_stop_the_tracks_of_someone_who_left() {
    let mut w = three_talking();
    let a_mids = vec![(2, mids_from(&w, 2, 1)), (3, mids_from(&w, 3, 1))];
    w.leave(1);
    assert!(w.events.contains(&Event::Removed { peer: PeerId(1), reason: RemoveReason::Left }));
    assert_gone_for_the_others(&mut w, &a_mids);
}

#[test]
fn a_participant_that_goes_silent_is_removed_and_its_tracks_stopped() {
    let mut w = three_talking();
    let a_mids = vec![(2, mids_from(&w, 2, 1)), (3, mids_from(&w, 3, 1))];
    // 1's machine drops off the network: nothing from it reaches the core any more (its
    // signalling connection, as far as the core knows, is still there: no Leave).
    let silent_at = w.now;
    w.go_silent(1);
    let removed = |w: &World| w.removed(1);
    assert!(w.run_until(Duration::from_secs(60), removed), "the core notices 1 is gone; events: {:?}", w.events);
    let after = w.now - silent_at;
    assert!(
        w.events.contains(&Event::Removed { peer: PeerId(1), reason: RemoveReason::Disconnected }),
        "removed as disconnected: {:?}",
        w.events
    );
    eprintln!("1 removed {after:?} (virtual) after going silent");
    assert_gone_for_the_others(&mut w, &a_mids);
}

#[test]
fn a_participant_that_closes_its_connection_is_removed_as_closed_not_lost() {
    let mut w = World::new();
    w.join("room", 1, AV).expect("1 joins");
    w.join("room", 2, AV).expect("2 joins");
    assert!(w.run_until(Duration::from_secs(5), |w| w.frames_from(2, 1, MediaKind::Audio) > 10), "media flows");
    // As `RTCPeerConnection.close()`: DTLS close_notify, then nothing.
    w.client_mut(1).rtc.close().expect("close");
    assert!(w.run_until(Duration::from_secs(2), |w| w.removed(1)), "removed; events: {:?}", w.events);
    assert!(w.events.contains(&Event::Removed { peer: PeerId(1), reason: RemoveReason::Closed }), "{:?}", w.events);
}
