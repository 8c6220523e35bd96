//! Fifty people in one room, as many as a room holds (`--room-capacity` defaults to 50): everyone
//! publishes audio, ten of them also video, and everyone receives everyone else's tracks.
//!
//! Why ten cameras: every video frame here is a 1000-byte packet that str0m encrypts once per
//! subscriber (49 times) and the in-memory clients decrypt and depacketize, all on one thread of
//! a 2-core CI machine. Fifty cameras would multiply the video work by five without exercising
//! anything in the core that ten do not (the per-track fan-out is the same code); ten keeps the
//! test at about 13-20 s of wall time in `cargo test --release` on that machine, more than half
//! of it in the simulated clients. It prints where the time went, including the core's share.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant as WallClock};

use common::World;
use huddle_sfu::str0m::media::MediaKind;

const PEOPLE: u64 = 50;
const CAMERAS: u64 = 10;

/// Per receiver: frames received from each publisher, (audio, video).
fn tally(w: &World) -> HashMap<u64, HashMap<u64, (usize, usize)>> {
    let mut out: HashMap<u64, HashMap<u64, (usize, usize)>> = HashMap::new();
    for c in &w.clients {
        let per = out.entry(c.id.0).or_default();
        for (mid, n) in &c.received {
            let (Some(kind), Some(origin)) = (c.incoming.get(mid), c.origin.get(mid)) else { continue };
            let e = per.entry(*origin).or_default();
            match kind {
                MediaKind::Audio => e.0 += n,
                MediaKind::Video => e.1 += n,
            }
        }
    }
    out
}

/// Whether everyone got at least `n` frames of every track of everyone else.
fn everyone_receives_everyone(w: &World, n: usize) -> bool {
    let t = tally(w);
    (1..=PEOPLE).all(|id| {
        let per = t.get(&id);
        (1..=PEOPLE).filter(|p| *p != id).all(|p| {
            let (a, v) = per.and_then(|m| m.get(&p)).copied().unwrap_or((0, 0));
            a >= n && (p > CAMERAS || v >= n)
        })
    })
}

#[test]
#[cfg_attr(debug_assertions, ignore = "minutes in a debug build; scripts/test runs it with --release")]
fn fifty_people_each_receive_everyone_else() {
    let wall = WallClock::now();
    let mut w = World::new();
    for id in 1..=PEOPLE {
        let publish: &[MediaKind] =
            if id <= CAMERAS { &[MediaKind::Audio, MediaKind::Video] } else { &[MediaKind::Audio] };
        w.join("big room", id, publish).expect("joins");
        // People arrive 40 ms apart: a meeting filling at its start time, with everyone already
        // in being renegotiated while media flows.
        w.run_for(Duration::from_millis(40));
    }
    let joined = w.now - w.start;
    let joined_wall = wall.elapsed();
    eprintln!(
        "joining: {joined_wall:?} of wall time, {:?} of it in the core: {:?} in {} joins and answers, {:?} in {} \
         datagrams, {:?} in {} timeouts, {:?} in {} polls for output",
        w.core_wall,
        w.core_wall_by[2],
        w.core_calls_by[2],
        w.core_wall_by[1],
        w.core_calls_by[1],
        w.core_wall_by[0],
        w.core_calls_by[0],
        w.core_wall_by[3],
        w.core_calls_by[3]
    );

    // Virtual time bound: from the last join, everyone has everyone's first 10 frames within 5 s.
    let mut waited = Duration::ZERO;
    while !everyone_receives_everyone(&w, 10) {
        assert!(waited < Duration::from_secs(5), "not everyone receives everyone after 5 s: {:?}", w.events);
        w.run_for(Duration::from_millis(100));
        waited += Duration::from_millis(100);
    }
    let all_flowing = w.now - w.start;
    let flowing_wall = wall.elapsed();

    for c in &w.clients {
        let expected = (PEOPLE - 1) + CAMERAS - u64::from(c.id.0 <= CAMERAS);
        assert_eq!(c.incoming.len() as u64, expected, "{} receives exactly everyone else's tracks", c.id);
    }
    assert_eq!(w.sfu.peer_count(), PEOPLE as usize);
    assert!(!w.events.iter().any(|e| matches!(e, huddle_sfu::Event::Removed { .. })), "nobody dropped");

    // Then two more seconds of the full room: everyone keeps receiving everyone, at frame rate.
    let before = tally(&w);
    let (core_before, wall_before) = (w.core_wall, wall.elapsed());
    let (by, calls) = (w.core_wall_by, w.core_calls_by);
    w.run_for(Duration::from_secs(2));
    eprintln!(
        "steady state: 2 s (virtual) of the full room took {:?} of wall time, {:?} of it in the core: \
         {:?} in {} timeouts, {:?} in {} datagrams, {:?} in {} polls for output",
        wall.elapsed() - wall_before,
        w.core_wall - core_before,
        w.core_wall_by[0] - by[0],
        w.core_calls_by[0] - calls[0],
        w.core_wall_by[1] - by[1],
        w.core_calls_by[1] - calls[1],
        w.core_wall_by[3] - by[3],
        w.core_calls_by[3] - calls[3],
    );
    let after = tally(&w);
    for id in 1..=PEOPLE {
        for p in (1..=PEOPLE).filter(|p| *p != id) {
            let (a0, v0) = before[&id][&p];
            let (a1, v1) = after[&id][&p];
            assert!(a1 - a0 >= 90, "{p}'s audio reaches {id} at frame rate ({} in 2 s)", a1 - a0);
            if p <= CAMERAS {
                assert!(v1 - v0 >= 90, "{p}'s video reaches {id} at frame rate ({} in 2 s)", v1 - v0);
            }
        }
    }
    let total = wall.elapsed();
    eprintln!(
        "{PEOPLE} people ({CAMERAS} cameras): all joined at {joined:?} virtual ({joined_wall:?} wall), everyone \
         receiving everyone at {all_flowing:?} virtual ({flowing_wall:?} wall); with 2 s more of the full room, \
         {:?} virtual in {total:?} wall, of which {:?} in the core",
        w.now - w.start,
        w.core_wall
    );
    // Wall-time bound, generous for a loaded 2-core machine (about 13-20 s when it is quiet).
    assert!(total < Duration::from_secs(60), "took {total:?} of wall time");
}
