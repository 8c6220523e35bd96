//! Real media through the writer and the composer, checked with ffprobe/ffmpeg. Every test
//! skips (with a notice) when ffmpeg or ffprobe is missing; CI installs them.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use huddle_record::compose::{self, ComposeError};
use huddle_record::manifest::{track_prefix, VERSION};
use huddle_record::writer::{repair, scan};
use huddle_record::{
    Codec, EventKind, Manifest, Participant, Person, RecordingState, TimelineEvent, TrackInfo, TrackKind, TrackWriter,
};
use webm_iterable::matroska_spec::{Master, MatroskaSpec, SimpleBlock};
use webm_iterable::WebmIterator;

macro_rules! need_ffmpeg {
    ($test:literal) => {
        if compose::find_ffmpeg(None).is_none() || which("ffprobe").is_none() {
            eprintln!("NOTICE: ffmpeg/ffprobe not installed: {} skipped", $test);
            return;
        }
    };
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("huddle-record-media-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn run<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(program: &str, args: I) -> Output {
    let out = Command::new(program).args(args).output().expect("runs");
    assert!(out.status.success(), "{program} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn ffmpeg(args: &[&str]) {
    let mut all = vec!["-hide_banner", "-nostdin", "-v", "error", "-y"];
    all.extend_from_slice(args);
    run("ffmpeg", all);
}

fn probe(path: &Path) -> serde_json::Value {
    let out = run(
        "ffprobe",
        [
            OsStr::new("-v"),
            OsStr::new("error"),
            OsStr::new("-count_frames"),
            OsStr::new("-show_entries"),
            OsStr::new("stream=codec_name,width,height,nb_read_frames:format=duration"),
            OsStr::new("-of"),
            OsStr::new("json"),
            path.as_os_str(),
        ],
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe's json")
}

fn probe_duration(v: &serde_json::Value) -> f64 {
    v["format"]["duration"].as_str().and_then(|d| d.parse().ok()).expect("a duration")
}

fn frames_read(v: &serde_json::Value) -> u64 {
    v["streams"][0]["nb_read_frames"].as_str().and_then(|d| d.parse().ok()).expect("a frame count")
}

/// Decodes everything; returns ffmpeg's error output.
fn decode_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args([OsStr::new("-nostdin"), OsStr::new("-v"), OsStr::new("error"), OsStr::new("-i")])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("runs");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// VP8 frames of an IVF file: (pts in frames, data). 32-byte header, then per frame a 12-byte
/// header (u32 size, u64 pts, little endian).
fn ivf_frames(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let data = fs::read(path).expect("reads");
    let mut out = Vec::new();
    let mut i = 32;
    while i + 12 <= data.len() {
        let size = u32::from_le_bytes(data[i..i + 4].try_into().expect("4 bytes")) as usize;
        let pts = u64::from_le_bytes(data[i + 4..i + 12].try_into().expect("8 bytes"));
        out.push((pts, data[i + 12..i + 12 + size].to_vec()));
        i += 12 + size;
    }
    out
}

/// The blocks of a WebM with one track: (ms, data).
fn webm_blocks(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut cluster = 0u64;
    for tag in WebmIterator::new(fs::File::open(path).expect("opens"), &[]) {
        match tag.expect("valid") {
            MatroskaSpec::Cluster(Master::Start) => cluster = 0,
            MatroskaSpec::Timestamp(t) => cluster = t,
            MatroskaSpec::SimpleBlock(data) => {
                let b = SimpleBlock::try_from(&data).expect("block");
                out.push((cluster.saturating_add_signed(b.timestamp.into()), b.raw_frame_data().to_vec()));
            }
            _ => {}
        }
    }
    out
}

/// VP8 frames of a colour or test pattern, via IVF (25 fps, a keyframe every second).
fn vp8_source(dir: &Path, name: &str, source: &str, secs: f64) -> Vec<(u64, Vec<u8>)> {
    let ivf = dir.join(format!("{name}.ivf"));
    let input = format!("{source}:rate=25");
    let t = secs.to_string();
    let ivf_s = ivf.to_str().expect("utf-8 path");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &input,
        "-t",
        &t,
        "-c:v",
        "libvpx",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-threads",
        "1",
        "-g",
        "25",
        "-b:v",
        "300k",
        ivf_s,
    ]);
    ivf_frames(&ivf).into_iter().map(|(pts, f)| (pts * 40, f)).collect()
}

/// Opus packets of a tone, via WebM.
fn opus_source(dir: &Path, name: &str, freq: u32, secs: f64) -> Vec<(u64, Vec<u8>)> {
    let webm = dir.join(format!("{name}.src.webm"));
    let input = format!("sine=frequency={freq}:sample_rate=48000");
    let t = secs.to_string();
    ffmpeg(&["-f", "lavfi", "-i", &input, "-t", &t, "-c:a", "libopus", "-b:a", "48k", webm.to_str().expect("utf-8")]);
    webm_blocks(&webm)
}

fn write_track(path: &Path, codec: Codec, offset_ms: u64, frames: &[(u64, Vec<u8>)]) -> TrackWriter {
    let mut w = TrackWriter::create(path, codec).expect("creates");
    for (t, f) in frames {
        w.write_frame(offset_ms + t, false, f).expect("writes");
    }
    w
}

#[test]
fn vp8_track_plays() {
    need_ffmpeg!("vp8_track_plays");
    let dir = temp("vp8");
    let frames = vp8_source(&dir, "src", "testsrc=size=320x240", 3.0);
    assert_eq!(frames.len(), 75);
    let path = dir.join("v.webm");
    let w = write_track(&path, Codec::Vp8, 1_500, &frames);
    assert_eq!((w.start_ms(), w.end_ms(), w.size()), (Some(1_500), Some(4_500), Some((320, 240))));
    let bytes = w.finish().expect("finishes");
    assert_eq!(bytes, fs::metadata(&path).expect("exists").len());

    let p = probe(&path);
    assert_eq!(p["streams"][0]["codec_name"], "vp8");
    assert_eq!((p["streams"][0]["width"].as_u64(), p["streams"][0]["height"].as_u64()), (Some(320), Some(240)));
    assert!((probe_duration(&p) - 3.0).abs() <= 0.2, "{p}");
    assert_eq!(frames_read(&p), 75);
    assert_eq!(decode_errors(&path), "");
    fs::remove_dir_all(&dir).expect("cleans up");
}

#[test]
fn opus_track_plays() {
    need_ffmpeg!("opus_track_plays");
    let dir = temp("opus");
    let packets = opus_source(&dir, "tone", 440, 3.0);
    assert!(packets.len() >= 140, "{}", packets.len());
    let path = dir.join("a.webm");
    let w = write_track(&path, Codec::Opus, 250, &packets);
    assert_eq!(w.start_ms(), Some(250));
    w.finish().expect("finishes");
    let p = probe(&path);
    assert_eq!(p["streams"][0]["codec_name"], "opus");
    assert!((probe_duration(&p) - 3.0).abs() <= 0.2, "{p}");
    assert_eq!(decode_errors(&path), "");
    fs::remove_dir_all(&dir).expect("cleans up");
}

#[test]
fn h264_track_plays() {
    need_ffmpeg!("h264_track_plays");
    let dir = temp("h264");
    let src = dir.join("src.h264");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=25",
        "-t",
        "2",
        "-pix_fmt",
        "yuv420p",
        "-c:v",
        "libx264",
        "-profile:v",
        "baseline",
        "-bf",
        "0",
        "-g",
        "25",
        "-x264-params",
        "aud=1",
        "-f",
        "h264",
        src.to_str().expect("utf-8"),
    ]);
    // Access units, split at the access unit delimiters (NAL type 9).
    let data = fs::read(&src).expect("reads");
    let mut starts: Vec<usize> = (0..data.len().saturating_sub(4))
        .filter(|&i| data[i..i + 4] == [0, 0, 0, 1] && data[i + 4] & 0x1f == 9)
        .collect();
    starts.push(data.len());
    let units: Vec<&[u8]> = starts.windows(2).map(|w| &data[w[0]..w[1]]).collect();
    assert_eq!(units.len(), 50);
    let path = dir.join("v.mkv");
    let mut w = TrackWriter::create(&path, Codec::H264).expect("creates");
    for (i, unit) in units.iter().enumerate() {
        let key = unit.windows(4).any(|x| x[..3] == [0, 0, 1] && x[3] & 0x1f == 5);
        w.write_frame(i as u64 * 40, key, unit).expect("writes");
    }
    assert_eq!(w.size(), Some((320, 240)));
    w.finish().expect("finishes");
    let p = probe(&path);
    assert_eq!(p["streams"][0]["codec_name"], "h264");
    assert_eq!((p["streams"][0]["width"].as_u64(), p["streams"][0]["height"].as_u64()), (Some(320), Some(240)));
    assert!((probe_duration(&p) - 2.0).abs() <= 0.2, "{p}");
    assert_eq!(frames_read(&p), 50);
    assert_eq!(decode_errors(&path), "");
    fs::remove_dir_all(&dir).expect("cleans up");
}

#[test]
fn killed_and_truncated_files_still_play() {
    need_ffmpeg!("killed_and_truncated_files_still_play");
    let dir = temp("crash");
    let frames = vp8_source(&dir, "src", "testsrc=size=320x240", 4.0);
    // kill -9 while writing: the writer is never finished and its buffer is lost.
    let path = dir.join("killed.webm");
    let w = write_track(&path, Codec::Vp8, 0, &frames[..90]);
    std::mem::forget(w);
    let on_disk = scan(&path).expect("scans");
    assert!(on_disk.frames >= 75, "at most about a second lost: {on_disk:?}");
    let p = probe(&path);
    assert_eq!(frames_read(&p), on_disk.frames);
    assert_eq!(decode_errors(&path), "");

    // A cut at an arbitrary byte in the middle of the stream.
    let full = dir.join("full.webm");
    write_track(&full, Codec::Vp8, 0, &frames).finish().expect("finishes");
    let bytes = fs::read(&full).expect("reads");
    for cut in [bytes.len() * 37 / 100, bytes.len() * 61 / 100 + 7, bytes.len() - 5] {
        let torn = dir.join(format!("torn-{cut}.webm"));
        fs::write(&torn, &bytes[..cut]).expect("writes");
        let s = scan(&torn).expect("scans");
        assert!(s.frames > 0 && !s.complete, "{s:?}");
        let p = probe(&torn);
        assert!(frames_read(&p) >= s.frames, "ffmpeg decodes every complete frame: {p} vs {s:?}");
        let repaired = repair(&torn).expect("repairs");
        assert_eq!(repaired.frames, s.frames);
        assert_eq!(frames_read(&probe(&torn)), s.frames);
        assert_eq!(decode_errors(&torn), "", "a repaired file decodes cleanly");
    }
    fs::remove_dir_all(&dir).expect("cleans up");
}

// ---------------------------------------------------------------------------------------------
// The composite.

const TONES: [f64; 3] = [500.0, 1_100.0, 1_900.0];

fn person(id: &str, name: &str) -> Participant {
    Participant { id: id.into(), name: name.into() }
}

fn track_info(w: TrackWriter, file: &str, peer: &str, kind: TrackKind, codec: Codec) -> TrackInfo {
    let (start, end, frames, size) = (w.start_ms(), w.end_ms(), w.frames(), w.size());
    let bytes = w.finish().expect("finishes");
    TrackInfo {
        file: file.into(),
        peer: peer.into(),
        kind,
        codec,
        start: start.expect("written"),
        end,
        bytes,
        frames,
        width: size.map(|s| s.0),
        height: size.map(|s| s.1),
    }
}

/// A track written at `offset_ms` into `dir/file`, as the manifest lists it.
fn recorded(
    dir: &Path,
    file: &str,
    peer: &str,
    kind: TrackKind,
    offset_ms: u64,
    frames: &[(u64, Vec<u8>)],
) -> TrackInfo {
    let codec = if kind == TrackKind::Video { Codec::Vp8 } else { Codec::Opus };
    track_info(write_track(&dir.join(file), codec, offset_ms, frames), file, peer, kind, codec)
}

/// Three participants, 8 s: A (red, then a yellow 640x360 "screen" shared from 6 s, 500 Hz)
/// all along; B (green, 1100 Hz, a Korean name) from 2 s; C (blue, 1900 Hz, a name full of
/// filtergraph syntax) until 4 s.
fn three_people(dir: &Path) -> Manifest {
    let src = dir.join("src");
    fs::create_dir_all(&src).expect("dir");
    let red = vp8_source(&src, "red", "color=c=red:size=320x240", 6.0);
    let yellow = vp8_source(&src, "yellow", "color=c=yellow:size=640x360", 2.0);
    let green = vp8_source(&src, "green", "color=c=lime:size=320x240", 6.0);
    let blue = vp8_source(&src, "blue", "color=c=blue:size=320x240", 4.0);
    let tone = |name: &str, i: usize, secs: f64| opus_source(&src, name, TONES[i] as u32, secs);

    let mut a = write_track(&dir.join("a-video-1.webm"), Codec::Vp8, 0, &red);
    for (t, f) in &yellow {
        a.write_frame(6_000 + t, false, f).expect("writes"); // the screen: a new size at a keyframe
    }
    let tracks = vec![
        track_info(a, "a-video-1.webm", "a", TrackKind::Video, Codec::Vp8),
        recorded(dir, "a-audio-1.webm", "a", TrackKind::Audio, 0, &tone("a", 0, 8.0)),
        recorded(dir, "b-video-1.webm", "b", TrackKind::Video, 2_000, &green),
        recorded(dir, "b-audio-1.webm", "b", TrackKind::Audio, 2_000, &tone("b", 1, 6.0)),
        recorded(dir, "c-video-1.webm", "c", TrackKind::Video, 0, &blue),
        recorded(dir, "c-audio-1.webm", "c", TrackKind::Audio, 0, &tone("c", 2, 4.0)),
    ];
    let ev = |at, peer: &str, event| TimelineEvent { at, peer: peer.into(), event };
    let m = Manifest {
        version: VERSION,
        part: 1,
        id: "20261207T073512-k3j9".into(),
        room: "test".into(),
        started_at: 1_796_629_712_000,
        started_by: Person { id: "a".into(), name: "Ana".into() },
        stopped_at: Some(1_796_629_712_000 + 8_000),
        stopped_by: Some(Person { id: "a".into(), name: "Ana".into() }),
        state: RecordingState::Stopped,
        participants: vec![person("a", "Ana"), person("c", "C':,;[]\\%{n}=\"x"), person("b", "김비")],
        tracks,
        events: vec![
            ev(0, "a", EventKind::Joined),
            ev(0, "c", EventKind::Joined),
            ev(2_000, "b", EventKind::Joined),
            ev(4_000, "c", EventKind::Left),
            ev(6_000, "a", EventKind::ScreenOn),
        ],
    };
    m.save(dir).expect("saves");
    m
}

/// One RGB frame of the composite at `t` seconds.
fn frame_at(path: &Path, t: f64) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-ss", &t.to_string(), "-i"])
        .arg(path)
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), 1280 * 720 * 3);
    out.stdout
}

fn pixel(frame: &[u8], x: usize, y: usize) -> (u8, u8, u8) {
    let i = (y * 1280 + x) * 3;
    (frame[i], frame[i + 1], frame[i + 2])
}

fn looks_like(p: (u8, u8, u8), want: (u8, u8, u8)) -> bool {
    let d = |a: u8, b: u8| (i32::from(a) - i32::from(b)).abs();
    d(p.0, want.0) < 48 && d(p.1, want.1) < 48 && d(p.2, want.2) < 48
}

/// The power of `freq` in `samples` (Goertzel), normalized by the window's length.
fn goertzel(samples: &[f64], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / 48_000.0;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s = x + c * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - c * s1 * s2) / (samples.len() as f64).powi(2)
}

/// The composite's audio as mono 48 kHz samples in -1..1.
fn mix(path: &Path) -> Vec<f64> {
    let pcm = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:a", "-ac", "1", "-ar", "48000", "-f", "s16le", "-"])
        .output()
        .expect("runs");
    assert!(pcm.status.success(), "{}", String::from_utf8_lossy(&pcm.stderr));
    pcm.stdout.chunks_exact(2).map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0).collect()
}

/// The samples from `from` to `to` seconds.
fn window(samples: &[f64], from: f64, to: f64) -> &[f64] {
    &samples[(from * 48_000.0) as usize..(to * 48_000.0) as usize]
}

/// Which of `tones` stand out of `w` (100 times the power of frequencies none of them is near).
fn heard(w: &[f64], tones: &[f64]) -> Vec<bool> {
    let noise = [700.0, 1_400.0, 2_500.0].iter().map(|&f| goertzel(w, f)).fold(0.0, f64::max);
    tones.iter().map(|&f| goertzel(w, f) > 100.0 * noise.max(1e-9)).collect()
}

/// Composes `manifest` into `out` with the real ffmpeg; returns the progress reports, checked.
fn compose_checked(manifest: &Manifest, dir: &Path, out: &Path) -> Vec<f32> {
    let plan = compose::plan(manifest, dir, out).expect("plans");
    let ffmpeg = compose::find_ffmpeg(None).expect("found");
    let mut progress = Vec::new();
    let started = Instant::now();
    compose::run(&ffmpeg, &plan, |p| progress.push(p), &AtomicBool::new(false)).expect("composes");
    eprintln!("composite of {} ms took {:?}", plan.duration_ms, started.elapsed());
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "monotonic: {progress:?}");
    assert!(progress.len() >= 2 && *progress.last().expect("some") >= 0.999, "{progress:?}");
    progress
}

#[test]
fn composite_shows_everyone_and_mixes_everyone() {
    need_ffmpeg!("composite_shows_everyone_and_mixes_everyone");
    let dir = temp("compose");
    let manifest = three_people(&dir);
    assert_eq!(manifest.duration_ms(), 8_000);
    let loaded = Manifest::load(&dir).expect("loads");
    let out = dir.join("composite.webm");
    compose_checked(&loaded, &dir, &out);

    let p = probe(&out);
    assert!((probe_duration(&p) - 8.0).abs() <= 0.5, "{p}");
    let codecs: Vec<&str> =
        p["streams"].as_array().expect("streams").iter().filter_map(|s| s["codec_name"].as_str()).collect();
    assert_eq!(codecs, vec!["vp8", "opus"]);

    // 2 x 2 grid, 640 x 360 cells, the last row centred: Ana, C, B (order of first sight).
    let (red, green, blue, yellow, black) = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 0, 0));
    let (ana, c, b) = ((320, 170), (960, 170), (640, 530));
    for (t, expected) in [
        (1.0, [(ana, red), (c, blue), (b, black)]),
        (3.0, [(ana, red), (c, blue), (b, green)]),
        (5.0, [(ana, red), (c, black), (b, green)]),
        // Ana shares her screen: large on the left; the others in a strip on the right (C, then B).
        (7.0, [((480, 340), yellow), ((1120, 530), green), ((1120, 170), black)]),
    ] {
        let frame = frame_at(&out, t);
        for ((x, y), want) in expected {
            let got = pixel(&frame, x, y);
            assert!(looks_like(got, want), "at {t} s, ({x}, {y}) is {got:?}, not {want:?}");
        }
    }

    let samples = mix(&out);
    let heard = |from, to| heard(window(&samples, from, to), &TONES);
    assert_eq!(heard(2.3, 3.7), vec![true, true, true], "everyone while everyone talks");
    assert_eq!(heard(0.3, 1.7), vec![true, false, true], "B is not there yet");
    assert_eq!(heard(4.3, 5.7), vec![true, true, false], "C has left");
    fs::remove_dir_all(&dir).expect("cleans up");
}

/// One participant, Ana, recorded in two parts in one directory: part 1 (red camera, 500 Hz,
/// 3 s) ends because the room moves; part 2 starts 5 s after part 1 did, on another server's
/// clock, with the same peer id (blue camera, 1100 Hz, 3 s). Joined, they compose into one
/// 8 s file: part 1, 2 s of black silence, part 2.
#[test]
fn a_recording_in_two_parts_composes_into_one_file_on_one_clock() {
    need_ffmpeg!("a_recording_in_two_parts_composes_into_one_file_on_one_clock");
    let dir = temp("parts");
    let src = dir.join("src");
    fs::create_dir_all(&src).expect("dir");
    let started_at = 1_796_629_712_000;
    let part = |n: u32, started_at: u64, state, colour: &str, tone: f64| {
        let prefix = track_prefix(n);
        let video = vp8_source(&src, &format!("{colour}-{n}"), &format!("color=c={colour}:size=320x240"), 3.0);
        let audio = opus_source(&src, &format!("tone-{n}"), tone as u32, 3.0);
        Manifest {
            version: VERSION,
            part: n,
            id: "20261207T073512-k3j9".into(),
            room: "test".into(),
            started_at,
            started_by: Person { id: "a".into(), name: "Ana".into() },
            stopped_at: Some(started_at + 3_000),
            stopped_by: None,
            state,
            participants: vec![person("a", "Ana")],
            // Each part's times on its own clock: both start at its 0.
            tracks: vec![
                recorded(&dir, &format!("{prefix}a-video-1.webm"), "a", TrackKind::Video, 0, &video),
                recorded(&dir, &format!("{prefix}a-audio-1.webm"), "a", TrackKind::Audio, 0, &audio),
            ],
            events: vec![TimelineEvent { at: 0, peer: "a".into(), event: EventKind::Joined }],
        }
    };
    let (one, two) = (TONES[0], TONES[1]);
    part(1, started_at, RecordingState::Continued, "red", one).save(&dir).expect("saves part 1");
    part(2, started_at + 5_000, RecordingState::Stopped, "blue", two).save(&dir).expect("saves part 2");
    assert!(dir.join("manifest.json").is_file() && dir.join("manifest-2.json").is_file());
    assert!(dir.join("part2-a-video-1.webm").is_file() && dir.join("part2-a-audio-1.webm").is_file());

    // What the server does.
    let parts = Manifest::load_parts(&dir).expect("loads the parts");
    assert_eq!(parts.iter().map(|m| m.part).collect::<Vec<_>>(), vec![1, 2]);
    let joined = Manifest::joined(&parts).expect("joins");
    assert_eq!((joined.duration_ms(), joined.state), (8_000, RecordingState::Stopped));
    // Part 2's tracks moved by the 5 s between the starts; each lasts its 3 s (an Opus track may
    // end a ms late: its last packet's length).
    let placed: Vec<_> = joined.tracks.iter().map(|t| (t.file.as_str(), t.start)).collect();
    assert_eq!(
        placed,
        [
            ("a-video-1.webm", 0),
            ("a-audio-1.webm", 0),
            ("part2-a-video-1.webm", 5_000),
            ("part2-a-audio-1.webm", 5_000)
        ]
    );
    assert!(joined.tracks.iter().all(|t| t.end.is_some_and(|e| e.abs_diff(t.start + 3_000) <= 20)), "{joined:?}");
    let out = dir.join("composite.webm");
    compose_checked(&joined, &dir, &out);

    let p = probe(&out);
    assert!((probe_duration(&p) - 8.0).abs() <= 0.5, "{p}");
    // One tile: the whole canvas; the 4:3 picture is centred across, above the name.
    let centre = (640, 340);
    for (t, want, what) in
        [(1.5, (255, 0, 0), "part 1: red"), (4.0, (0, 0, 0), "the move: black"), (6.5, (0, 0, 255), "part 2: blue")]
    {
        let got = pixel(&frame_at(&out, t), centre.0, centre.1);
        assert!(looks_like(got, want), "at {t} s ({what}) the tile's centre is {got:?}");
    }

    let samples = mix(&out);
    let tones = [one, two];
    assert_eq!(heard(window(&samples, 0.3, 2.7), &tones), vec![true, false], "part 1's sound in part 1");
    assert_eq!(heard(window(&samples, 5.3, 7.7), &tones), vec![false, true], "part 2's sound in part 2");
    let gap = window(&samples, 3.3, 4.7);
    let rms = (gap.iter().map(|x| x * x).sum::<f64>() / gap.len() as f64).sqrt();
    let loud = |from, to| {
        let w = window(&samples, from, to);
        (w.iter().map(|x| x * x).sum::<f64>() / w.len() as f64).sqrt()
    };
    eprintln!("rms: part 1 {:.4}, gap {rms:.6}, part 2 {:.4}", loud(0.3, 2.7), loud(5.3, 7.7));
    assert!(rms < 1e-3, "near-silence while the room moves: rms {rms}");
    fs::remove_dir_all(&dir).expect("cleans up");
}

/// Opus packets of a tone at nearly full scale (`amplitude` of 1), via WebM.
fn loud_source(dir: &Path, name: &str, freq: u32, secs: f64) -> Vec<(u64, Vec<u8>)> {
    let webm = dir.join(format!("{name}.src.webm"));
    let input = format!("aevalsrc=0.9*sin(2*PI*{freq}*t):sample_rate=48000:channel_layout=mono");
    let t = secs.to_string();
    ffmpeg(&["-f", "lavfi", "-i", &input, "-t", &t, "-c:a", "libopus", "-b:a", "64k", webm.to_str().expect("utf-8")]);
    webm_blocks(&webm)
}

#[test]
fn three_loud_voices_at_once_are_mixed_without_clipping() {
    need_ffmpeg!("three_loud_voices_at_once_are_mixed_without_clipping");
    let dir = temp("loud");
    let freqs = [500u32, 1_100, 1_900];
    let mut tracks = Vec::new();
    for (i, f) in freqs.iter().enumerate() {
        let packets = loud_source(&dir, &format!("t{i}"), *f, 2.0);
        tracks.push(recorded(&dir, &format!("p{i}-audio.webm"), &format!("p{i}"), TrackKind::Audio, 0, &packets));
    }
    let m = Manifest {
        version: VERSION,
        part: 1,
        id: "x".into(),
        room: "r".into(),
        started_at: 0,
        started_by: Person { id: "p0".into(), name: "A".into() },
        stopped_at: Some(2_000),
        stopped_by: None,
        state: RecordingState::Stopped,
        participants: (0..3).map(|i| person(&format!("p{i}"), "P")).collect(),
        tracks,
        events: vec![],
    };
    let out = dir.join("loud.webm");
    compose_checked(&m, &dir, &out);
    let samples = mix(&out);
    let w = window(&samples, 0.3, 1.7);
    let peak = w.iter().fold(0.0f64, |a, s| a.max(s.abs()));
    let at_full_scale = w.iter().filter(|s| s.abs() >= 0.999).count();
    // Summed as they are, the three would reach 2.7 times full scale.
    assert_eq!(at_full_scale, 0, "no sample clipped (peak {peak:.3})");
    assert!(peak > 0.5, "still loud: peak {peak:.3}");
    let tones: Vec<f64> = freqs.iter().map(|&f| f64::from(f)).collect();
    assert_eq!(heard(w, &tones), vec![true; 3], "every voice is in the mix");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn composite_of_audio_only_and_cancel() {
    need_ffmpeg!("composite_of_audio_only_and_cancel");
    let dir = temp("cancel");
    let packets = opus_source(&dir, "tone", 440, 2.0);
    let w = write_track(&dir.join("a.webm"), Codec::Opus, 500, &packets);
    let track = track_info(w, "a.webm", "a", TrackKind::Audio, Codec::Opus);
    let mut m = Manifest {
        version: VERSION,
        part: 1,
        id: "x".into(),
        room: "r".into(),
        started_at: 0,
        started_by: Person { id: "a".into(), name: "A".into() },
        stopped_at: Some(3_000),
        stopped_by: None,
        state: RecordingState::Stopped,
        participants: vec![person("a", "A")],
        tracks: vec![track],
        events: vec![],
    };
    let ffmpeg = compose::find_ffmpeg(None).expect("found");
    // Audio only: a black canvas with the sound.
    let out = dir.join("audio-only.webm");
    let plan = compose::plan(&m, &dir, &out).expect("plans");
    compose::run(&ffmpeg, &plan, |_| {}, &AtomicBool::new(false)).expect("composes");
    let p = probe(&out);
    assert!((probe_duration(&p) - 3.0).abs() <= 0.5, "{p}");
    assert_eq!(p["streams"].as_array().map(Vec::len), Some(2));

    // Cancelled: a long one (ten minutes of canvas), stopped after its first progress report.
    m.stopped_at = Some(600_000);
    let out = dir.join("cancelled.webm");
    let plan = compose::plan(&m, &dir, &out).expect("plans");
    let cancel = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let result = compose::run(
        &ffmpeg,
        &plan,
        |p| {
            assert!(p < 0.5, "cancelled well before the end");
            cancel.store(true, Ordering::Relaxed);
        },
        &cancel,
    );
    assert!(matches!(result, Err(ComposeError::Cancelled)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!out.exists(), "the partial output is removed");
    // No ffmpeg left writing it.
    let alive = fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
        fs::read(e.path().join("cmdline")).map(|c| c.windows(15).any(|w| w == b"cancelled.webm\0")).unwrap_or(false)
    });
    assert!(!alive, "ffmpeg was killed");

    // A broken input: ffmpeg's own error comes back.
    fs::write(dir.join("a.webm"), b"\x1a\x45\xdf\xa3 and then no Matroska at all").expect("writes");
    m.stopped_at = Some(3_000);
    let plan = compose::plan(&m, &dir, &dir.join("broken.webm")).expect("plans");
    match compose::run(&ffmpeg, &plan, |_| {}, &AtomicBool::new(false)) {
        Err(ComposeError::Failed { stderr, .. }) => assert!(!stderr.is_empty()),
        other => panic!("expected a failure, got {other:?}"),
    }
    // Not Matroska at all (or empty: never written): left out, and then there is nothing.
    fs::write(dir.join("a.webm"), b"").expect("writes");
    let nothing = compose::plan(&m, &dir, &dir.join("nothing.webm"));
    assert!(matches!(nothing, Err(ComposeError::Nothing(_))), "{nothing:?}");
    fs::remove_dir_all(&dir).expect("cleans up");
}
