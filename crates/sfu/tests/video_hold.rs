//! A participant whose video is held (its camera and screen are off as far as the room knows, or
//! a host stopped them) is not forwarded, whatever its browser sends; when the hold lifts, its
//! browser is asked for a keyframe at once and every subscriber restarts on it.

mod common;

use std::time::{Duration, Instant};

use common::{World, FRAME_INTERVAL, LATENCY};
use huddle_sfu::str0m::media::{MediaKind, Mid};
use huddle_sfu::{Input, PeerId, SfuError};

const AV: &[MediaKind] = &[MediaKind::Audio, MediaKind::Video];

fn hold(w: &mut World, peer: u64, audio: bool, video: bool) -> Result<(), SfuError> {
    let r = w.core(Input::Hold { now: w.now, peer: PeerId(peer), audio, video });
    w.drain_sfu();
    r
}

/// Keyframe requests publisher `id` received on its video since `since`.
fn requests_since(w: &World, id: u64, since: Instant) -> usize {
    let c = w.client(id);
    let mid: Mid = c.sending.iter().find(|(_, k)| *k == MediaKind::Video).map(|(m, _)| *m).expect("sends video");
    c.keyframe_requests.iter().filter(|(t, m, _)| *m == mid && *t >= since).count()
}

#[test]
fn held_video_goes_nowhere_and_comes_back_at_a_keyframe_asked_for_when_the_hold_lifts() {
    let mut w = World::new();
    w.join("room", 1, AV).expect("1 joins");
    w.join("room", 2, &[MediaKind::Audio]).expect("2 joins");
    let flowing = |w: &World| w.frames_from(2, 1, MediaKind::Video) >= 20;
    assert!(w.run_until(Duration::from_secs(5), flowing), "video flows; events: {:?}", w.events);

    // Its page stopped the camera but keeps sending (a modified client): nothing goes through.
    hold(&mut w, 1, false, true).expect("1 is a participant");
    w.run_for(Duration::from_millis(100));
    let quiet_from = w.now;
    let (video, audio) = (w.frames_from(2, 1, MediaKind::Video), w.frames_from(2, 1, MediaKind::Audio));
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.frames_from(2, 1, MediaKind::Video), video, "held video forwarded");
    assert!(w.frames_from(2, 1, MediaKind::Audio) >= audio + 80, "its audio is not held");
    assert_eq!(requests_since(&w, 1, quiet_from), 0, "nobody asks for a keyframe of held video");

    // Lifted: the publisher is asked for a keyframe at once (the request only has to cross the
    // link), and the subscriber's video resumes on it, seamlessly numbered.
    let lifted = w.now;
    let keyframes = w.client(2).keyframes_received;
    let (gaps, backwards) = (w.client(2).video_gaps, w.client(2).time_backwards);
    hold(&mut w, 1, false, false).expect("1 is a participant");
    assert!(w.run_until(LATENCY + Duration::from_millis(1), |w| requests_since(w, 1, lifted) > 0), "asked at once");
    let resumed = |w: &World| w.frames_from(2, 1, MediaKind::Video) > video;
    assert!(w.run_until(FRAME_INTERVAL * 3, resumed), "video resumes within a few frames");
    assert_eq!(w.client(2).keyframes_received, keyframes + 1, "the first frame after the hold is a keyframe");
    w.run_for(Duration::from_secs(1));
    assert!(w.frames_from(2, 1, MediaKind::Video) >= video + 45, "video flows again");
    assert_eq!((w.client(2).video_gaps, w.client(2).time_backwards), (gaps, backwards), "no gap, no time going back");
}

#[test]
fn a_camera_switched_on_before_the_room_hears_of_it_shows_at_once_when_it_does() {
    let mut w = World::new();
    // 1 joins with its camera off as far as the room knows, yet its browser sends video from the
    // start (as a page that enables its camera just before saying so: its first keyframe comes
    // while the video is still held).
    w.join("room", 1, AV).expect("1 joins");
    hold(&mut w, 1, false, true).expect("1 is a participant");
    w.join("room", 2, &[MediaKind::Audio]).expect("2 joins");
    let hearing = |w: &World| w.frames_from(2, 1, MediaKind::Audio) >= 50;
    assert!(w.run_until(Duration::from_secs(5), hearing), "audio flows; events: {:?}", w.events);
    assert_eq!(w.frames_from(2, 1, MediaKind::Video), 0, "held video forwarded");

    // Natural keyframes come once a second here; the one asked for on lifting comes at once.
    hold(&mut w, 1, false, false).expect("1 is a participant");
    let shown = |w: &World| w.frames_from(2, 1, MediaKind::Video) > 0;
    assert!(w.run_until(FRAME_INTERVAL * 3, shown), "video shows within a few frames");
    assert_eq!(w.client(2).keyframes_received, 1, "starting with a keyframe");
}

#[test]
fn audio_and_video_holds_are_apart() {
    let mut w = World::new();
    w.join("room", 1, AV).expect("1 joins");
    w.join("room", 2, &[MediaKind::Audio]).expect("2 joins");
    let flowing =
        |w: &World| w.frames_from(2, 1, MediaKind::Video) >= 20 && w.frames_from(2, 1, MediaKind::Audio) >= 20;
    assert!(w.run_until(Duration::from_secs(5), flowing), "media flows; events: {:?}", w.events);

    hold(&mut w, 1, true, true).expect("1 is a participant");
    w.run_for(Duration::from_millis(100));
    let (video, audio) = (w.frames_from(2, 1, MediaKind::Video), w.frames_from(2, 1, MediaKind::Audio));
    let other = w.frames_from(1, 2, MediaKind::Audio);
    w.run_for(Duration::from_secs(1));
    assert_eq!((w.frames_from(2, 1, MediaKind::Video), w.frames_from(2, 1, MediaKind::Audio)), (video, audio));
    assert!(w.frames_from(1, 2, MediaKind::Audio) >= other + 40, "the other participant is not held");

    // The video hold lifts, the audio one stays.
    hold(&mut w, 1, true, false).expect("1 is a participant");
    w.run_for(Duration::from_secs(1));
    assert!(w.frames_from(2, 1, MediaKind::Video) >= video + 40, "video flows again");
    assert_eq!(w.frames_from(2, 1, MediaKind::Audio), audio, "audio still held");

    assert!(matches!(hold(&mut w, 9, false, true), Err(SfuError::UnknownPeer(_))));
}
