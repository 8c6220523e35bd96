//! `manifest.json`: what a recording holds. Written by the server whenever something changes,
//! read by the composer, the host's list and start-up recovery.
//!
//! Times: `startedAt`/`stoppedAt` are unix milliseconds; every other time (a track's `start`
//! and `end`, an event's `at`) is milliseconds since `startedAt`.
//!
//! ```json
//! {
//!   "version": 1,
//!   "id": "20261207T073512-k3j9",
//!   "part": 1,
//!   "room": "standup",
//!   "startedAt": 1796629712000,
//!   "startedBy": { "id": "p1", "name": "Ana" },
//!   "stoppedAt": 1796630312000,
//!   "stoppedBy": null,
//!   "state": "stopped",
//!   "participants": [{ "id": "p1", "name": "Ana" }],
//!   "tracks": [
//!     { "file": "p1-video-1.webm", "peer": "p1", "kind": "video", "codec": "vp8",
//!       "start": 420, "end": 600000, "bytes": 31457280, "frames": 14980,
//!       "width": 640, "height": 360 }
//!   ],
//!   "events": [
//!     { "at": 0, "peer": "p1", "event": "joined" },
//!     { "at": 90000, "peer": "p1", "event": "screen_on" },
//!     { "at": 95000, "peer": "p1", "event": "renamed", "name": "Ana B." }
//!   ]
//! }
//! ```
//!
//! A participant has **one** video track at a time, whose content is their camera or their
//! screen (the page swaps the track's source): `screen_on`/`screen_off` say when it shows a
//! screen, `video_off`/`video_on` when it shows nothing. A person who leaves and comes back
//! gets new track files (new entries with a later `start`).
//!
//! # Parts
//!
//! A recording goes on when its room moves to another server (a graceful restart, another node
//! of several taking the room over): the new owner writes a **part** of its own into the same
//! directory, with its own manifest (`manifest.json` for part 1, `manifest-<n>.json` for part
//! `n`) and track files whose names start with `part<n>-`. Each part's times are on its own
//! clock (0 at its `startedAt`); [`Manifest::joined`] puts the parts on the first one's clock, as
//! the composer reads them. A part that ended because the room moved on has the state
//! `continued`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::writer::Codec;

/// The file name in a recording's directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The manifest format this crate writes.
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`VERSION`].
    pub version: u32,
    /// The recording's id, e.g. `20261207T073512-k3j9`.
    pub id: String,
    /// Which part of the recording this is, from 1 (see [Parts](self#parts)).
    #[serde(default = "first_part")]
    pub part: u32,
    pub room: String,
    /// Unix ms.
    pub started_at: u64,
    pub started_by: Person,
    /// Unix ms.
    #[serde(default)]
    pub stopped_at: Option<u64>,
    /// `None` when the meeting ended, the time limit was reached, or the server stopped.
    #[serde(default)]
    pub stopped_by: Option<Person>,
    pub state: RecordingState,
    /// Everyone seen during the recording, in the order first seen, with the name they had
    /// then (later names are `renamed` events).
    #[serde(default)]
    pub participants: Vec<Participant>,
    #[serde(default)]
    pub tracks: Vec<TrackInfo>,
    #[serde(default)]
    pub events: Vec<TimelineEvent>,
}

fn first_part() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingState {
    Recording,
    Stopped,
    /// The server crashed or was killed while recording: tracks may lack `end`, files may end
    /// in a torn block ([`crate::writer::repair`]).
    Interrupted,
    /// This part ended because the room moved to another server, which goes on with the next
    /// part (the recording is not over).
    Continued,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    Audio,
    Video,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackInfo {
    /// The file's name in the recording's directory (a plain name, no directories).
    pub file: String,
    /// The participant's id.
    pub peer: String,
    pub kind: TrackKind,
    pub codec: Codec,
    /// Ms since the recording started: the file's time 0 ([`crate::TrackWriter::start_ms`]).
    pub start: u64,
    /// Ms since the recording started ([`crate::TrackWriter::end_ms`]); `None` while recording.
    #[serde(default)]
    pub end: Option<u64>,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub frames: u64,
    /// Video: the first keyframe's size.
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// Ms since the recording started.
    pub at: u64,
    /// The participant's id.
    pub peer: String,
    #[serde(flatten)]
    pub event: EventKind,
}

/// What happened, serialized as `"event": "<snake_case name>"` beside `at` and `peer` (and
/// `"name"` for `renamed`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    Joined,
    Left,
    Muted,
    Unmuted,
    /// The video track shows the camera again.
    VideoOn,
    /// The video track shows nothing (camera off).
    VideoOff,
    /// The video track shows the participant's screen from now on.
    ScreenOn,
    /// The video track shows the camera again (or nothing, if the camera is off).
    ScreenOff,
    Renamed {
        name: String,
    },
    /// The participant became the active speaker.
    Speaker,
    /// An event this version does not know (a newer server's); read, never written.
    #[serde(other)]
    Other,
}

/// The file name of part `part`'s manifest: `manifest.json` for the first, `manifest-<n>.json`
/// after it.
pub fn manifest_file(part: u32) -> String {
    if part <= 1 {
        MANIFEST_FILE.to_string()
    } else {
        format!("manifest-{part}.json")
    }
}

/// The part a manifest's file name belongs to (`None`: not a manifest's name).
fn part_of_file(name: &str) -> Option<u32> {
    if name == MANIFEST_FILE {
        return Some(1);
    }
    let n: u32 = name.strip_prefix("manifest-")?.strip_suffix(".json")?.parse().ok()?;
    (n >= 2 && name == manifest_file(n)).then_some(n)
}

/// The prefix of part `part`'s track file names: none for the first, `part<n>-` after it.
pub fn track_prefix(part: u32) -> String {
    if part <= 1 {
        String::new()
    } else {
        format!("part{part}-")
    }
}

impl Manifest {
    /// Reads `dir/manifest.json` (the first part's).
    pub fn load(dir: &Path) -> io::Result<Manifest> {
        Self::load_file(&dir.join(MANIFEST_FILE))
    }

    fn load_file(path: &Path) -> io::Result<Manifest> {
        let bytes = fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Every part's manifest in `dir`, in the order of their parts (a recording that never moved
    /// has one). Unreadable ones are left out; an error only when none reads (or the directory
    /// does not). A manifest whose `part` differs from its file name's is left out too.
    pub fn load_parts(dir: &Path) -> io::Result<Vec<Manifest>> {
        let mut parts = Vec::new();
        let mut last_error = None;
        for entry in fs::read_dir(dir)?.flatten() {
            let name = entry.file_name();
            let Some(part) = name.to_str().and_then(part_of_file) else { continue };
            match Self::load_file(&entry.path()) {
                Ok(m) if m.part.max(1) == part => parts.push(m),
                Ok(_) => last_error = Some(io::Error::new(io::ErrorKind::InvalidData, "a manifest of another part")),
                Err(e) => last_error = Some(e),
            }
        }
        parts.sort_by_key(|m| m.part);
        if parts.is_empty() {
            return Err(last_error.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no manifest")));
        }
        Ok(parts)
    }

    /// The parts of one recording as one manifest on the first part's clock (what the
    /// composer reads): each later part's tracks and events moved by the time between the
    /// starts, everyone seen in any part, the state and the stop of the last part. The time
    /// between one part's end and the next one's start (the room moving) stays in, empty.
    /// `None` when `parts` is empty.
    pub fn joined(parts: &[Manifest]) -> Option<Manifest> {
        let (first, rest) = parts.split_first()?;
        let mut all = first.clone();
        for p in rest {
            let shift = p.started_at.saturating_sub(first.started_at);
            for t in &p.tracks {
                let mut t = t.clone();
                t.start = t.start.saturating_add(shift);
                t.end = t.end.map(|e| e.saturating_add(shift));
                all.tracks.push(t);
            }
            for e in &p.events {
                all.events.push(TimelineEvent { at: e.at.saturating_add(shift), ..e.clone() });
            }
            for who in &p.participants {
                if !all.participants.iter().any(|q| q.id == who.id) {
                    all.participants.push(who.clone());
                }
            }
            all.stopped_at = p.stopped_at;
            all.stopped_by = p.stopped_by.clone();
            all.state = p.state;
        }
        if let Some(last) = rest.last() {
            if last.stopped_at.is_none() {
                // Its length is its tracks' and events' (see `duration_ms`), now on this clock.
                all.stopped_at = None;
            }
        }
        all.part = parts.last().map_or(1, |p| p.part);
        Some(all)
    }

    /// Writes this part's manifest into `dir` ([`manifest_file`]) atomically: a temporary
    /// file, fsync, rename, fsync of the directory. A crash leaves the old manifest or the new
    /// one, never half of one.
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let name = manifest_file(self.part);
        let tmp = dir.join(format!("{name}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(&json)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, dir.join(&name))?;
        // The rename is durable once the directory is; not every platform can open one.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The recording's length in ms: `stoppedAt - startedAt` once stopped; before that (or for
    /// an interrupted recording) the latest track end (a track without one counts from its
    /// start) or event.
    pub fn duration_ms(&self) -> u64 {
        if let Some(stopped) = self.stopped_at {
            return stopped.saturating_sub(self.started_at);
        }
        let tracks = self.tracks.iter().map(|t| t.end.unwrap_or(t.start));
        let events = self.events.iter().map(|e| e.at);
        tracks.chain(events).max().unwrap_or(0)
    }

    /// The participant's current name: the last `renamed` event's, else the first one.
    pub fn name_of(&self, peer: &str) -> Option<&str> {
        let renamed = self.events.iter().rev().find_map(|e| match &e.event {
            EventKind::Renamed { name } if e.peer == peer => Some(name.as_str()),
            _ => None,
        });
        renamed.or_else(|| self.participants.iter().find(|p| p.id == peer).map(|p| p.name.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            version: VERSION,
            id: "20261207T073512-k3j9".into(),
            part: 1,
            room: "standup".into(),
            started_at: 1_796_629_712_000,
            started_by: Person { id: "p1".into(), name: "Ana".into() },
            stopped_at: Some(1_796_629_722_000),
            stopped_by: None,
            state: RecordingState::Stopped,
            participants: vec![
                Participant { id: "p1".into(), name: "Ana".into() },
                Participant { id: "p2".into(), name: "Bo".into() },
            ],
            tracks: vec![
                TrackInfo {
                    file: "p1-video-1.webm".into(),
                    peer: "p1".into(),
                    kind: TrackKind::Video,
                    codec: Codec::Vp8,
                    start: 420,
                    end: Some(10_000),
                    bytes: 123_456,
                    frames: 240,
                    width: Some(640),
                    height: Some(360),
                },
                TrackInfo {
                    file: "p2-audio-1.webm".into(),
                    peer: "p2".into(),
                    kind: TrackKind::Audio,
                    codec: Codec::Opus,
                    start: 0,
                    end: None,
                    bytes: 4_000,
                    frames: 500,
                    width: None,
                    height: None,
                },
            ],
            events: vec![
                TimelineEvent { at: 0, peer: "p1".into(), event: EventKind::Joined },
                TimelineEvent { at: 3_000, peer: "p1".into(), event: EventKind::ScreenOn },
                TimelineEvent { at: 4_000, peer: "p2".into(), event: EventKind::Renamed { name: "Bob".into() } },
                TimelineEvent { at: 5_000, peer: "p2".into(), event: EventKind::VideoOff },
            ],
        }
    }

    #[test]
    fn json_shape_is_pinned() {
        let json = serde_json::to_value(sample()).expect("serializes");
        let expected = serde_json::json!({
            "version": 1,
            "id": "20261207T073512-k3j9",
            "part": 1,
            "room": "standup",
            "startedAt": 1_796_629_712_000u64,
            "startedBy": { "id": "p1", "name": "Ana" },
            "stoppedAt": 1_796_629_722_000u64,
            "stoppedBy": null,
            "state": "stopped",
            "participants": [{ "id": "p1", "name": "Ana" }, { "id": "p2", "name": "Bo" }],
            "tracks": [
                { "file": "p1-video-1.webm", "peer": "p1", "kind": "video", "codec": "vp8", "start": 420,
                  "end": 10_000, "bytes": 123_456, "frames": 240, "width": 640, "height": 360 },
                { "file": "p2-audio-1.webm", "peer": "p2", "kind": "audio", "codec": "opus", "start": 0,
                  "end": null, "bytes": 4_000, "frames": 500, "width": null, "height": null }
            ],
            "events": [
                { "at": 0, "peer": "p1", "event": "joined" },
                { "at": 3_000, "peer": "p1", "event": "screen_on" },
                { "at": 4_000, "peer": "p2", "event": "renamed", "name": "Bob" },
                { "at": 5_000, "peer": "p2", "event": "video_off" }
            ]
        });
        assert_eq!(json, expected);
        let names = ["recording", "stopped", "interrupted", "continued"];
        let states = [
            RecordingState::Recording,
            RecordingState::Stopped,
            RecordingState::Interrupted,
            RecordingState::Continued,
        ];
        for (state, name) in states.into_iter().zip(names) {
            assert_eq!(serde_json::to_value(state).expect("serializes"), serde_json::json!(name));
        }
        let kinds = [
            (EventKind::Left, "left"),
            (EventKind::Muted, "muted"),
            (EventKind::Unmuted, "unmuted"),
            (EventKind::VideoOn, "video_on"),
            (EventKind::ScreenOff, "screen_off"),
            (EventKind::Speaker, "speaker"),
        ];
        for (kind, name) in kinds {
            let e = TimelineEvent { at: 1, peer: "p".into(), event: kind };
            let v = serde_json::to_value(&e).expect("serializes");
            assert_eq!(v, serde_json::json!({ "at": 1, "peer": "p", "event": name }));
            assert_eq!(serde_json::from_value::<TimelineEvent>(v).expect("parses"), e);
        }
        assert_eq!(serde_json::to_value(Codec::H264).expect("serializes"), serde_json::json!("h264"));
    }

    #[test]
    fn lenient_reading() {
        // Optional fields may be missing, unknown fields and events are tolerated.
        let json = r#"{"version":1,"id":"x","room":"r","startedAt":5,"startedBy":{"id":"p","name":"P"},
            "state":"recording","future":true,
            "events":[{"at":7,"peer":"p","event":"hand_raised","extra":1}]}"#;
        let m: Manifest = serde_json::from_str(json).expect("parses");
        assert_eq!(m.part, 1, "a manifest from before parts is the first part");
        assert_eq!(m.stopped_at, None);
        assert!(m.tracks.is_empty());
        assert_eq!(m.events[0].event, EventKind::Other);
        assert_eq!(m.duration_ms(), 7);
    }

    #[test]
    fn round_trip_and_atomic_save() {
        let dir = std::env::temp_dir().join(format!("huddle-record-manifest-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let mut m = sample();
        m.save(&dir).expect("saves");
        assert_eq!(Manifest::load(&dir).expect("loads"), m);
        m.state = RecordingState::Interrupted;
        m.save(&dir).expect("saves again");
        assert_eq!(Manifest::load(&dir).expect("loads"), m);
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("lists")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![MANIFEST_FILE.to_string()], "no temporary file left");
        fs::remove_dir_all(&dir).expect("cleans up");
    }

    #[test]
    fn durations_and_names() {
        let mut m = sample();
        assert_eq!(m.duration_ms(), 10_000);
        m.stopped_at = None;
        assert_eq!(m.duration_ms(), 10_000); // the video's end
        m.tracks[0].end = None;
        assert_eq!(m.duration_ms(), 5_000); // the last event
        m.stopped_at = Some(m.started_at - 1);
        assert_eq!(m.duration_ms(), 0);
        assert_eq!(m.name_of("p1"), Some("Ana"));
        assert_eq!(m.name_of("p2"), Some("Bob"));
        assert_eq!(m.name_of("p3"), None);
    }

    #[test]
    fn parts_are_found_by_their_file_names_and_joined_on_the_first_clock() {
        assert_eq!(manifest_file(1), "manifest.json");
        assert_eq!(manifest_file(3), "manifest-3.json");
        assert_eq!(track_prefix(1), "");
        assert_eq!(track_prefix(2), "part2-");
        for (name, part) in [("manifest.json", Some(1)), ("manifest-2.json", Some(2)), ("manifest-12.json", Some(12))] {
            assert_eq!(part_of_file(name), part, "{name}");
        }
        for name in ["manifest-1.json", "manifest-02.json", "manifest-x.json", "manifest-2.json.tmp", "other.json"] {
            assert_eq!(part_of_file(name), None, "{name}");
        }

        let dir = std::env::temp_dir().join(format!("huddle-record-parts-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let mut one = sample();
        one.state = RecordingState::Continued;
        one.save(&dir).expect("saves part 1");
        // Part 2 starts 15 s after part 1 (5 s after its end: the room moving), lasts 8 s.
        let mut two = sample();
        two.part = 2;
        two.started_at = one.started_at + 15_000;
        two.stopped_at = Some(two.started_at + 8_000);
        two.stopped_by = Some(Person { id: "p3".into(), name: "Cy".into() });
        two.participants.push(Participant { id: "p3".into(), name: "Cy".into() });
        two.tracks.truncate(1);
        two.tracks[0].file = format!("{}p1-video-9.webm", track_prefix(2));
        two.tracks[0].start = 100;
        two.tracks[0].end = Some(8_000);
        two.events = vec![TimelineEvent { at: 50, peer: "p3".into(), event: EventKind::Joined }];
        two.state = RecordingState::Stopped;
        two.save(&dir).expect("saves part 2");
        // A stray file, and a manifest claiming a part its name does not: neither is a part.
        fs::write(dir.join("manifest-7.json.tmp"), b"{").expect("writes");
        let mut liar = two.clone();
        liar.part = 5;
        fs::write(dir.join("manifest-3.json"), serde_json::to_vec(&liar).expect("json")).expect("writes");

        let parts = Manifest::load_parts(&dir).expect("loads the parts");
        assert_eq!(parts.iter().map(|m| m.part).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(parts[1], two);
        let all = Manifest::joined(&parts).expect("joins");
        assert_eq!(all.started_at, one.started_at);
        assert_eq!(all.duration_ms(), 23_000, "from the first start to the last stop");
        assert_eq!(all.state, RecordingState::Stopped);
        assert_eq!(all.stopped_by, two.stopped_by);
        assert_eq!(all.tracks.len(), 3);
        let moved = &all.tracks[2];
        assert_eq!((moved.file.as_str(), moved.start, moved.end), ("part2-p1-video-9.webm", 15_100, Some(23_000)));
        assert_eq!(all.events.last().map(|e| e.at), Some(15_050));
        assert_eq!(all.participants.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), vec!["p1", "p2", "p3"]);

        // The last part cut by a crash: its length is what it wrote, on the joined clock.
        let mut cut = two.clone();
        cut.stopped_at = None;
        cut.state = RecordingState::Interrupted;
        let all = Manifest::joined(&[one.clone(), cut]).expect("joins");
        assert_eq!(all.stopped_at, None);
        assert_eq!(all.duration_ms(), 23_000, "the moved track's end");
        assert_eq!(Manifest::joined(&[]), None);
        fs::remove_dir_all(&dir).expect("cleans up");
        assert!(Manifest::load_parts(&dir).is_err());
    }
}
