//! Recording a room in the core: every published track comes out as whole frames, in order,
//! timed on the recording's clock; video only from a keyframe, never a broken frame, and a lost
//! packet brings the publisher a keyframe request; tracks end when their publisher leaves and
//! when the recording stops; simulcast records the best layer.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::World;
use huddle_sfu::str0m::media::MediaKind;
use huddle_sfu::{Input, PeerId, Recorded, RecordedCodec, RecordedKind};

const AV: &[MediaKind] = &[MediaKind::Audio, MediaKind::Video];

fn record(w: &mut World, room: &str, on: bool) {
    w.core(Input::Record { now: w.now, room: room.into(), on }).expect("record is never refused");
    w.drain_sfu();
}

/// Per track: (peer, kind, codec) and its frames (ms, keyframe, bytes).
#[derive(Default, Debug)]
struct Track {
    peer: u64,
    kind: Option<RecordedKind>,
    codec: Option<RecordedCodec>,
    started: Option<u64>,
    frames: Vec<(u64, bool, Vec<u8>)>,
    ended: Option<u64>,
}

fn tracks(w: &World) -> (Vec<u64>, HashMap<u64, Track>, Option<u64>) {
    let mut order = Vec::new();
    let mut map: HashMap<u64, Track> = HashMap::new();
    let mut stopped = None;
    for r in &w.recorded {
        match r {
            Recorded::TrackStarted { track, peer, kind, codec, at_ms, room } => {
                assert_eq!(room, "room");
                assert!(!map.contains_key(track), "a track starts once");
                order.push(*track);
                let t = map.entry(*track).or_default();
                t.peer = peer.0;
                t.kind = Some(*kind);
                t.codec = Some(*codec);
                t.started = Some(*at_ms);
            }
            Recorded::Frame { track, at_ms, keyframe, data } => {
                let t = map.get_mut(track).expect("frames only after the track started");
                assert!(t.ended.is_none(), "no frame after the track ended");
                t.frames.push((*at_ms, *keyframe, data.clone()));
            }
            Recorded::TrackEnded { track, at_ms } => {
                let t = map.get_mut(track).expect("a track that started");
                assert!(t.ended.replace(*at_ms).is_none(), "a track ends once");
            }
            Recorded::Stopped { room, at_ms } => {
                assert_eq!(room, "room");
                stopped = Some(*at_ms);
            }
        }
    }
    (order, map, stopped)
}

/// The frame counter the test clients write into every byte after the 10th (mod 251).
fn frame_no(data: &[u8]) -> u8 {
    data[20]
}

fn assert_well_formed(t: &Track) {
    let mut last = 0;
    for (i, (ms, key, data)) in t.frames.iter().enumerate() {
        assert!(*ms >= last, "times never go backwards");
        last = *ms;
        match t.kind {
            Some(RecordedKind::Audio) => assert_eq!(data.len(), 80, "an Opus packet is a frame"),
            Some(RecordedKind::Video) => {
                assert!(data.len() >= 1000, "a whole VP8 frame, never a part: {}", data.len());
                assert_eq!(*key, data[0] & 1 == 0, "the keyframe flag is the frame's own");
                if i == 0 {
                    assert!(*key, "video starts at a keyframe");
                    assert_eq!(&data[3..6], &[0x9d, 0x01, 0x2a], "with the VP8 keyframe header");
                }
            }
            None => unreachable!(),
        }
    }
}

#[test]
fn a_recorded_room_gives_every_track_as_whole_ordered_frames() {
    let mut w = World::new();
    w.join("room", 1, AV).expect("1 joins");
    w.join("room", 2, AV).expect("2 joins");
    w.join("elsewhere", 3, AV).expect("3 joins another room");
    assert!(w.run_until(Duration::from_secs(5), |w| w.frames_from(1, 2, MediaKind::Video) >= 20), "media flows");

    record(&mut w, "room", true);
    w.run_for(Duration::from_secs(3));
    record(&mut w, "room", false);
    let (order, map, stopped) = tracks(&w);

    assert_eq!(order.len(), 4, "two participants, audio and video each (not the other room's)");
    for id in &order {
        let t = &map[id];
        assert!([1, 2].contains(&t.peer));
        assert_well_formed(t);
        let n = t.frames.len();
        // 3 s at 50 frames a second; video starts at the keyframe asked for at the start.
        assert!((140..=152).contains(&n), "{:?} of {}: {n} frames", t.kind, t.peer);
        let (first, _, _) = t.frames[0];
        let (last, _, _) = t.frames[n - 1];
        assert!(first < 100, "the first frame comes at once: {first} ms");
        assert!((2_850..=3_000).contains(&last), "the last frame near the stop: {last} ms");
        // Consecutive frames, none missing (no loss here).
        for pair in t.frames.windows(2) {
            assert_eq!(frame_no(&pair[1].2), (frame_no(&pair[0].2) + 1) % 251, "no frame skipped");
            let step = pair[1].0 - pair[0].0;
            assert!((19..=21).contains(&step), "frames 20 ms apart on the RTP clock: {step}");
        }
        assert!(t.ended.is_some(), "every track ends");
    }
    assert!(stopped.is_some(), "the recording says it stopped");
    assert!(matches!(w.recorded.last(), Some(Recorded::Stopped { .. })), "after every track ended");
    // Forwarding went on all along.
    let before = w.frames_from(1, 2, MediaKind::Video);
    w.run_for(Duration::from_secs(1));
    assert!(w.frames_from(1, 2, MediaKind::Video) >= before + 40, "forwarding is untouched");
    let after_stop = w.recorded.len();
    assert_eq!(after_stop, w.recorded.len(), "nothing recorded after the stop");
}

#[test]
fn loss_on_the_way_in_never_writes_a_broken_frame_and_brings_a_keyframe() {
    let mut w = World::new();
    w.join("room", 1, AV).expect("1 joins");
    w.join("room", 2, &[MediaKind::Audio]).expect("2 joins");
    assert!(w.run_until(Duration::from_secs(5), |w| w.frames_from(2, 1, MediaKind::Video) >= 20), "media flows");
    record(&mut w, "room", true);
    w.run_for(Duration::from_secs(1));
    let requests_before = w.client(1).keyframe_requests.len();
    let sfu = w.sfu_addr;
    w.loss_to.insert(sfu, 0.3);
    w.run_for(Duration::from_secs(4));
    w.loss_to.clear();
    w.run_for(Duration::from_secs(2));
    record(&mut w, "room", false);

    let (order, map, _) = tracks(&w);
    let video = order.iter().map(|id| &map[id]).find(|t| t.kind == Some(RecordedKind::Video)).expect("video");
    assert_well_formed(video);
    let mut gaps = 0;
    for pair in video.frames.windows(2) {
        if frame_no(&pair[1].2) != (frame_no(&pair[0].2) + 1) % 251 {
            gaps += 1;
            assert!(pair[1].1, "after a lost frame, video resumes at a keyframe");
        }
    }
    assert!(gaps > 0, "30 % loss lost some frames for good (or this test proves nothing)");
    assert!(w.client(1).keyframe_requests.len() > requests_before, "the publisher was asked for keyframes");
    // Back to whole video once the loss ended: the last second has every frame.
    let tail: Vec<_> = video.frames.iter().rev().take(45).collect();
    for pair in tail.windows(2) {
        assert_eq!(frame_no(&pair[0].2), (frame_no(&pair[1].2) + 1) % 251, "whole again after the loss");
    }
    let audio = order.iter().map(|id| &map[id]).find(|t| t.kind == Some(RecordedKind::Audio)).expect("audio");
    assert_well_formed(audio);
}

#[test]
fn a_participant_who_leaves_ends_its_tracks_and_comes_back_with_new_ones() {
    let mut w = World::new();
    w.join("room", 1, AV).expect("1 joins");
    w.join("room", 2, AV).expect("2 joins");
    assert!(w.run_until(Duration::from_secs(5), |w| w.frames_from(1, 2, MediaKind::Video) >= 20), "media flows");
    record(&mut w, "room", true);
    w.run_for(Duration::from_secs(1));
    w.leave(2);
    w.run_for(Duration::from_secs(1));
    let (_, map, _) = tracks(&w);
    let twos: Vec<&Track> = map.values().filter(|t| t.peer == 2).collect();
    assert_eq!(twos.len(), 2);
    assert!(twos.iter().all(|t| t.ended.is_some_and(|e| (950..1_100).contains(&e))), "2's tracks ended when it left");
    assert!(map.values().filter(|t| t.peer == 1).all(|t| t.ended.is_none()), "1 goes on");

    w.join("room", 2, AV).expect("2 comes back");
    w.run_for(Duration::from_secs(2));
    record(&mut w, "room", false);
    let (order, map, _) = tracks(&w);
    assert_eq!(order.len(), 6, "2's second stay has tracks of its own");
    let second: Vec<&Track> = order[4..].iter().map(|id| &map[id]).collect();
    assert!(second.iter().all(|t| t.peer == 2 && t.started.is_some_and(|s| s > 2_000)));
    for t in map.values() {
        assert_well_formed(t);
    }
}

#[test]
fn simulcast_records_the_best_layer() {
    let mut w = World::new();
    w.join_with_layers("room", 1, AV, &["q", "h", "f"]).expect("1 joins");
    w.join("room", 2, &[MediaKind::Audio]).expect("2 joins");
    assert!(w.run_until(Duration::from_secs(5), |w| w.frames_from(2, 1, MediaKind::Video) >= 20), "media flows");
    record(&mut w, "room", true);
    w.run_for(Duration::from_secs(2));
    record(&mut w, "room", false);
    let (order, map, _) = tracks(&w);
    let video = order.iter().map(|id| &map[id]).find(|t| t.kind == Some(RecordedKind::Video)).expect("video");
    assert!(video.frames.len() >= 90, "{} frames", video.frames.len());
    // The test publisher tags each layer's frames with its index + 1 in the last byte: 3 is "f".
    let tags: Vec<u8> = video.frames.iter().map(|(_, _, d)| d[d.len() - 1]).collect();
    assert!(tags.iter().all(|t| *t == 3), "only the top layer: {tags:?}");
    assert!(video.frames[0].1, "from a keyframe");
}

#[test]
fn starting_twice_or_stopping_a_room_that_does_not_record_changes_nothing() {
    let mut w = World::new();
    w.join("room", 1, AV).expect("1 joins");
    record(&mut w, "room", false);
    assert!(w.recorded.is_empty());
    record(&mut w, "room", true);
    w.run_for(Duration::from_secs(1));
    record(&mut w, "room", true);
    w.run_for(Duration::from_secs(1));
    record(&mut w, "room", false);
    let (order, map, _) = tracks(&w);
    assert_eq!(order.len(), 2);
    let audio = order.iter().map(|id| &map[id]).find(|t| t.kind == Some(RecordedKind::Audio)).expect("audio");
    assert!(audio.frames.len() >= 95, "one recording across both starts: {}", audio.frames.len());
    let _ = PeerId(1);
}
