//! Loss on a subscriber's downlink breaks its picture; its decoder asks for a keyframe (PLI), the
//! core passes that on to the publisher, and the subscriber's video recovers. However many
//! subscribers ask, the publisher gets at most one request per `KEYFRAME_REQUEST_INTERVAL` for
//! its track.

mod common;

use std::time::{Duration, Instant};

use common::World;
use huddle_sfu::str0m::media::{KeyframeRequestKind, MediaKind, Mid};
use huddle_sfu::track::KEYFRAME_REQUEST_INTERVAL;

const AV: &[MediaKind] = &[MediaKind::Audio, MediaKind::Video];

/// The publisher's own video mid.
fn video_mid(w: &World, id: u64) -> Mid {
    w.client(id).sending.iter().find(|(_, k)| *k == MediaKind::Video).map(|(m, _)| *m).expect("sends video")
}

/// Keyframe requests the publisher `id` received on its video since `since`.
fn requests_since(w: &World, id: u64, since: Instant) -> Vec<(Instant, KeyframeRequestKind)> {
    let mid = video_mid(w, id);
    w.client(id)
        .keyframe_requests
        .iter()
        .filter(|(t, m, _)| *m == mid && *t >= since)
        .map(|(t, _, k)| (*t, *k))
        .collect()
}

#[test]
fn loss_on_a_subscribers_leg_brings_the_publisher_a_keyframe_request() {
    let mut w = World::new();
    w.join("room", 1, AV).expect("1 joins");
    w.join("room", 2, &[MediaKind::Audio]).expect("2 joins");
    w.clients[1].asks_keyframes = true;
    assert!(w.run_until(Duration::from_secs(5), |w| w.frames_from(2, 1, MediaKind::Video) >= 50), "video flows");
    // The subscription's first keyframe request is long done; quiet from here on without loss.
    w.run_for(Duration::from_secs(2));
    let quiet_from = w.now;
    w.run_for(Duration::from_secs(2));
    assert!(requests_since(&w, 1, quiet_from).is_empty(), "no requests without loss");

    let sub = w.client(2).addr;
    w.loss_to.insert(sub, 0.4);
    let lossy_from = w.now;
    let keyframes_before = w.client(2).keyframes_received;
    let asked = |w: &World| !requests_since(w, 1, lossy_from).is_empty();
    assert!(w.run_until(Duration::from_secs(10), asked), "the publisher is asked for a keyframe");
    assert!(w.client(2).keyframe_requests_sent > 0, "the subscriber asked first");

    // The publisher answers with a keyframe, which reaches the subscriber once the loss ends.
    w.loss_to.clear();
    let recovered = |w: &World| w.client(2).keyframes_received > keyframes_before;
    assert!(w.run_until(Duration::from_secs(3), recovered), "a keyframe reaches the subscriber");
    let before = w.frames_from(2, 1, MediaKind::Video);
    w.run_for(Duration::from_secs(1));
    assert!(w.frames_from(2, 1, MediaKind::Video) >= before + 40, "video flows again");
}

#[test]
fn keyframe_requests_are_throttled_however_many_subscribers_ask() {
    let mut w = World::new();
    w.join("room", 1, AV).expect("publisher joins");
    for id in 2..=9 {
        w.join("room", id, &[MediaKind::Audio]).expect("a subscriber joins");
    }
    for c in &mut w.clients[1..] {
        c.asks_keyframes = true;
    }
    let all = |w: &World| (2..=9).all(|id| w.frames_from(id, 1, MediaKind::Video) >= 20);
    assert!(w.run_until(Duration::from_secs(5), all), "everyone gets the video; events: {:?}", w.events);

    let subs: Vec<_> = (2..=9).map(|id| w.client(id).addr).collect();
    for a in &subs {
        w.loss_to.insert(*a, 0.3);
    }
    let start = w.now;
    let sent_before: usize = (2..=9).map(|id| w.client(id).keyframe_requests_sent).sum();
    w.run_for(Duration::from_secs(10));
    let sent: usize = (2..=9).map(|id| w.client(id).keyframe_requests_sent).sum::<usize>() - sent_before;
    let got = requests_since(&w, 1, start);
    let at: Vec<u128> = got.iter().map(|(t, _)| (*t - start).as_millis()).collect();
    eprintln!("subscribers asked {sent} times in 10 s; the publisher got {} requests, at ms {at:?}", got.len());

    assert!(!got.is_empty(), "the publisher was asked");
    assert!(
        sent > got.len() * 2,
        "the subscribers asked far more often ({sent}) than the publisher was ({})",
        got.len()
    );
    for pair in got.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= KEYFRAME_REQUEST_INTERVAL, "requests {gap:?} apart: {got:?}");
    }
    let most = (10 * 1000 / KEYFRAME_REQUEST_INTERVAL.as_millis() as usize) + 1;
    assert!(got.len() <= most, "at most {most} requests in 10 s, got {}", got.len());
}
