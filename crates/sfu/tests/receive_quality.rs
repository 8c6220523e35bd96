//! Adaptive stream: a subscriber that hides a publisher's tile gets none of its video (its audio
//! keeps flowing), and gets it back when the tile shows again.

mod common;

use std::time::Duration;

use common::World;
use huddle_sfu::str0m::media::MediaKind;
use huddle_sfu::{Input, PeerId, SfuError, VideoQuality};

fn receive(w: &mut World, peer: u64, publisher: u64, video: VideoQuality) -> Result<(), SfuError> {
    let input = Input::Receive { now: w.now, peer: PeerId(peer), publisher: PeerId(publisher), video };
    let r = w.sfu.handle_input(input);
    w.drain_sfu();
    r
}

#[test]
fn hidden_tiles_receive_no_video_until_shown_again() {
    let mut w = World::new();
    w.join("room", 1, &[MediaKind::Audio, MediaKind::Video]).expect("1 joins");
    w.join("room", 2, &[MediaKind::Audio, MediaKind::Video]).expect("2 joins");
    let flowing =
        |w: &World| w.frames_received(2, MediaKind::Video) >= 10 && w.frames_received(1, MediaKind::Video) >= 10;
    assert!(w.run_until(Duration::from_secs(5), flowing), "video flows; events: {:?}", w.events);

    receive(&mut w, 2, 1, VideoQuality::Off).expect("2 is a participant");
    // Frames already in flight may still land; after that, nothing more.
    w.run_for(Duration::from_millis(100));
    let (video_before, audio_before) = (w.frames_received(2, MediaKind::Video), w.frames_received(2, MediaKind::Audio));
    let other_before = w.frames_received(1, MediaKind::Video);
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.frames_received(2, MediaKind::Video), video_before, "no video for a hidden tile");
    assert!(w.frames_received(2, MediaKind::Audio) >= audio_before + 40, "its audio keeps flowing");
    assert!(w.frames_received(1, MediaKind::Video) >= other_before + 40, "the other direction is untouched");

    receive(&mut w, 2, 1, VideoQuality::High).expect("2 is a participant");
    let resumed = |w: &World| w.frames_received(2, MediaKind::Video) >= video_before + 20;
    assert!(w.run_until(Duration::from_secs(3), resumed), "video comes back when the tile shows");

    assert!(matches!(receive(&mut w, 9, 1, VideoQuality::Off), Err(SfuError::UnknownPeer(_))));
}
