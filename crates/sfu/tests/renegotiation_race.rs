//! Tracks keep appearing (and disappearing) while a participant has not answered the core's last
//! offer yet: the core never has more than one offer outstanding per participant, gathers what
//! changed meanwhile into the next one, and every track arrives once the answers are in.

mod common;

use std::time::Duration;

use common::World;
use huddle_sfu::str0m::media::MediaKind;

const AV: &[MediaKind] = &[MediaKind::Audio, MediaKind::Video];

#[test]
fn tracks_that_appear_during_an_offer_wait_for_the_next_one() {
    let mut w = World::new();
    w.join("room", 1, AV).expect("1 joins");
    w.clients[0].hold_offers = true; // a slow page: it answers only when told to

    w.join("room", 2, AV).expect("2 joins");
    // (str0m reports a publisher's tracks once its connection is up.)
    assert!(w.run_until(Duration::from_secs(2), |w| w.client(1).held.len() == 1), "1 is offered 2's tracks");
    // More tracks appear while that offer is outstanding, at once and later.
    w.join("room", 3, AV).expect("3 joins");
    w.run_for(Duration::from_millis(300));
    w.join("room", 4, &[MediaKind::Audio]).expect("4 joins");
    w.run_for(Duration::from_millis(300));
    assert_eq!(w.client(1).held.len(), 1, "still only one offer outstanding for 1");

    // Meanwhile the others, who answer at once, already have each other's and 1's tracks.
    let others = |w: &World| {
        [(2, 3), (3, 2), (2, 1), (3, 1), (4, 1), (4, 2)]
            .iter()
            .all(|(i, p)| w.frames_from(*i, *p, MediaKind::Audio) >= 10)
    };
    assert!(w.run_until(Duration::from_secs(5), others), "the others are not held up by 1");

    // 1 answers the first offer: the core follows with exactly one more, carrying 3's and 4's.
    assert!(w.answer_held(1));
    assert_eq!(w.client(1).held.len(), 1, "one new offer for what appeared meanwhile");
    assert_eq!(w.client(1).incoming.len(), 2, "2's audio and video are in");
    assert!(w.answer_held(1));
    assert!(w.client(1).held.is_empty(), "nothing left to offer");
    assert_eq!(w.client(1).incoming.len(), 5, "2's, 3's and 4's tracks are all in");

    let all = |w: &World| {
        [2, 3].iter().all(|p| w.frames_from(1, *p, MediaKind::Video) >= 20)
            && [2, 3, 4].iter().all(|p| w.frames_from(1, *p, MediaKind::Audio) >= 20)
    };
    assert!(w.run_until(Duration::from_secs(5), all), "1 receives everyone's media after its answers");
    let c = w.client(1);
    assert_eq!(c.most_held, 1, "never more than one offer outstanding");
    assert_eq!(c.offers_received, 2, "two offers in all");
}

#[test]
fn a_publisher_leaving_during_an_offer_is_stopped_in_the_next_one() {
    let mut w = World::new();
    w.join("room", 1, AV).expect("1 joins");
    w.clients[0].hold_offers = true;
    w.join("room", 2, AV).expect("2 joins");
    assert!(w.run_until(Duration::from_secs(2), |w| w.client(1).held.len() == 1), "1 is offered 2's tracks");
    w.join("room", 3, AV).expect("3 joins");

    // 2 leaves while the offer with its tracks is outstanding; 3's tracks wait for the next.
    w.run_for(Duration::from_millis(200));
    w.leave(2);
    w.run_for(Duration::from_millis(200));
    assert_eq!(w.client(1).held.len(), 1, "still one offer outstanding");

    assert!(w.answer_held(1));
    // The next offer stops 2's m-lines and opens 3's, or opens 3's with 2's stopped after.
    while w.answer_held(1) {
        assert!(w.client(1).held.len() <= 1);
    }
    let only_three = |w: &World| {
        let c = w.client(1);
        c.incoming.len() == 2 && c.incoming.keys().all(|m| c.origin.get(m) == Some(&3))
    };
    assert!(
        w.run_until(Duration::from_secs(2), |w| { only_three(w) && w.frames_from(1, 3, MediaKind::Video) >= 20 }),
        "1 ends with 3's tracks only, and they flow: {:?}",
        w.client(1).incoming
    );
    assert_eq!(w.client(1).most_held, 1);
    assert!(w.client(1).held.is_empty());
}

/// An answer that parses but does not fit the offer (it answers some other session's offer).
fn unfitting_answer() -> String {
    use huddle_sfu::str0m::change::SdpOffer;
    use huddle_sfu::str0m::Rtc;
    let offer = SdpOffer::from_sdp_string(&common::offer_sdp(&[MediaKind::Audio])).expect("parses");
    let mut other = Rtc::builder().build(std::time::Instant::now());
    other.sdp_api().accept_offer(offer).expect("a stranger answers").to_sdp_string()
}

#[test]
fn a_refused_answer_strands_no_track() {
    let mut w = World::new();
    w.join("room", 1, AV).expect("1 joins");
    w.clients[0].hold_offers = true;
    w.join("room", 2, AV).expect("2 joins");
    assert!(w.run_until(Duration::from_secs(2), |w| w.client(1).held.len() == 1), "1 is offered 2's tracks");

    // 1's page answers with something that does not fit (and then answers the next offer at once);
    // the core refuses it...
    w.clients[0].held.clear();
    w.clients[0].hold_offers = false;
    let r = w.core(huddle_sfu::Input::Answer {
        now: w.now,
        peer: huddle_sfu::PeerId(1),
        answer: unfitting_answer().into(),
    });
    w.drain_sfu();
    assert!(matches!(r, Err(huddle_sfu::SfuError::SdpRefused { .. })), "{r:?}");
    // ...and offers 2's tracks again, so that a good answer still brings them.
    assert_eq!(w.client(1).offers_received, 2, "a fresh offer followed the refusal");
    let flowing =
        |w: &World| w.frames_from(1, 2, MediaKind::Video) >= 20 && w.frames_from(1, 2, MediaKind::Audio) >= 20;
    assert!(
        w.run_until(Duration::from_secs(3), flowing),
        "2s media reaches 1 after all: {:?} events {:?}",
        w.client(1).incoming,
        w.events
    );
    assert!(!w.removed(1));
}
