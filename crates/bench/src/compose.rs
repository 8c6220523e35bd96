//! `huddle-bench compose`: how fast a recording becomes the one file a host downloads (issue 18:
//! "seconds of composite per second of meeting for a 10-person recording").
//!
//! 1. Encode real media with ffmpeg, once per participant: a coloured camera picture with a
//!    moving test pattern on it (VP8, libvpx, one thread, to IVF) and a sine tone (Opus, to Ogg).
//! 2. Read the frames back (small IVF and Ogg readers below) and write each participant's two
//!    tracks with [`huddle_record::TrackWriter`], as the server's writer thread does, with a
//!    [`huddle_record::Manifest`] beside them.
//! 3. Time [`huddle_record::compose::run`] on [`huddle_record::compose::plan`]'s arguments, as
//!    the server runs it (ffmpeg under `nice -n 19`, one thread): wall time, and ffmpeg's CPU
//!    time from `getrusage(RUSAGE_CHILDREN)`. One JSON line on stdout; progress on stderr.
//!
//! Everything is in a temporary directory, removed at the end (`--keep` keeps it). Every ffmpeg
//! run is bounded: a composite is cancelled after `--max-compose-secs`.

use crate::procfs;
use crate::tempdir::TempDir;
use anyhow::{anyhow, bail, Context};
use huddle_record::manifest::VERSION;
use huddle_record::opus_packet_us;
use huddle_record::{
    Codec, EventKind, Manifest, Participant, Person, RecordingState, TimelineEvent, TrackInfo, TrackKind, TrackWriter,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Camera colours, one per participant (then again).
const COLOURS: [&str; 16] = [
    "red", "lime", "blue", "yellow", "magenta", "cyan", "orange", "purple", "white", "gray", "brown", "pink", "navy",
    "olive", "teal", "maroon",
];
/// Strength of the camera noise (ffmpeg's `noise` filter, temporal).
const NOISE: u32 = 8;
/// When the recording "started" (unix ms; any fixed time).
const STARTED_AT: u64 = 1_796_629_712_000;

#[derive(clap::Args, Debug, Clone)]
pub struct ComposeArgs {
    /// Participants, each with a camera (VP8) and a microphone (Opus) track for the whole meeting
    #[arg(long, default_value_t = 10)]
    pub people: usize,
    /// Length of the meeting (the recording), in seconds
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Composites of the same recording, one after the other (the report's figures are the
    /// median run's; every run is listed)
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Camera picture width
    #[arg(long, default_value_t = 320)]
    pub width: u32,
    /// Camera picture height
    #[arg(long, default_value_t = 240)]
    pub height: u32,
    /// Camera frames per second
    #[arg(long, default_value_t = 20)]
    pub fps: u32,
    /// Camera bitrate asked of libvpx, kbit/s
    #[arg(long, default_value_t = 300)]
    pub video_kbps: u32,
    /// Seconds between camera keyframes
    #[arg(long, default_value_t = 5.0)]
    pub keyframe_secs: f64,
    /// Microphone bitrate asked of libopus, kbit/s
    #[arg(long, default_value_t = 32)]
    pub audio_kbps: u32,
    /// The ffmpeg to use [default: `ffmpeg` on the PATH]
    #[arg(long, value_name = "FILE")]
    pub ffmpeg: Option<PathBuf>,
    /// A composite still running after this many seconds is cancelled (the run fails)
    #[arg(long, default_value_t = 900.0)]
    pub max_compose_secs: f64,
    /// Where to make the temporary directory [default: the system's temporary directory]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the temporary directory (the tracks, the manifest and the composite) and print its path
    #[arg(long)]
    pub keep: bool,
}

impl ComposeArgs {
    fn check(&self) -> anyhow::Result<()> {
        if self.people == 0 || self.people > 32 {
            bail!("--people must be between 1 and 32");
        }
        if self.runs == 0 || self.runs > 10 {
            bail!("--runs must be between 1 and 10");
        }
        for (name, v, lo, hi) in [
            ("--seconds", self.seconds, 1.0, 3600.0),
            ("--keyframe-secs", self.keyframe_secs, 0.1, 3600.0),
            ("--max-compose-secs", self.max_compose_secs, 1.0, 86_400.0),
        ] {
            if !(v >= lo && v <= hi) {
                bail!("{name} must be between {lo} and {hi}");
            }
        }
        for (name, v, lo, hi) in [
            ("--width", self.width, 16, 1920),
            ("--height", self.height, 16, 1080),
            ("--fps", self.fps, 1, 60),
            ("--video-kbps", self.video_kbps, 10, 10_000),
            ("--audio-kbps", self.audio_kbps, 6, 510),
        ] {
            if v < lo || v > hi {
                bail!("{name} must be between {lo} and {hi}");
            }
        }
        Ok(())
    }
}

pub fn run(args: ComposeArgs) -> anyhow::Result<()> {
    args.check()?;
    let ffmpeg = huddle_record::compose::find_ffmpeg(args.ffmpeg.as_deref()).ok_or_else(|| {
        anyhow!(
            "ffmpeg not found ({}): the composite needs it (Debian: apt install ffmpeg, with libvpx and libopus)",
            args.ffmpeg
                .as_ref()
                .map_or("not on the PATH".to_string(), |p| format!("{} is not executable", p.display()))
        )
    })?;
    let tmp = TempDir::new(args.dir.as_deref(), "huddle-bench-compose")?;
    let result = bench(&args, &ffmpeg, &tmp.path);
    if args.keep {
        let kept = tmp.path.clone();
        std::mem::forget(tmp);
        eprintln!("kept {}", kept.display());
    }
    let report = result?;
    println!("{report}");
    Ok(())
}

fn bench(args: &ComposeArgs, ffmpeg: &Path, dir: &Path) -> anyhow::Result<Value> {
    let setup = Instant::now();
    let src = dir.join("src");
    let rec = dir.join("recording");
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(&rec)?;
    let meeting_ms = (args.seconds * 1000.0).round() as u64;

    // 1 and 2: media, then tracks.
    eprintln!(
        "encoding {} cameras ({}x{} at {} fps, {} kbit/s VP8) and microphones ({} kbit/s Opus), {} s each",
        args.people, args.width, args.height, args.fps, args.video_kbps, args.audio_kbps, args.seconds
    );
    let mut tracks = Vec::new();
    let mut participants = Vec::new();
    let mut events = Vec::new();
    let (mut video_bytes, mut audio_bytes) = (0u64, 0u64);
    for i in 0..args.people {
        let id = format!("p{}", i + 1);
        let name = format!("Person {}", i + 1);
        let video = encode_video(ffmpeg, &src, i, args)?;
        let audio = encode_audio(ffmpeg, &src, i, args)?;
        if video.is_empty() || audio.is_empty() {
            bail!("ffmpeg made no frames for participant {}", i + 1);
        }
        let v = write_track(&rec, &format!("{id}-video-1.webm"), &id, TrackKind::Video, Codec::Vp8, &video)?;
        let a = write_track(&rec, &format!("{id}-audio-1.webm"), &id, TrackKind::Audio, Codec::Opus, &audio)?;
        video_bytes += v.bytes;
        audio_bytes += a.bytes;
        tracks.extend([v, a]);
        participants.push(Participant { id: id.clone(), name });
        events.push(TimelineEvent { at: 0, peer: id, event: EventKind::Joined });
    }
    let first =
        participants.first().map_or_else(|| ("p1".into(), "Person 1".into()), |p| (p.id.clone(), p.name.clone()));
    let manifest = Manifest {
        version: VERSION,
        part: 1,
        id: "bench-compose".into(),
        room: "bench-compose".into(),
        started_at: STARTED_AT,
        started_by: Person { id: first.0.clone(), name: first.1.clone() },
        stopped_at: Some(STARTED_AT + meeting_ms),
        stopped_by: Some(Person { id: first.0, name: first.1 }),
        state: RecordingState::Stopped,
        participants,
        tracks,
        events,
    };
    manifest.save(&rec).context("writing the manifest")?;
    let raw_bytes = crate::tempdir::dir_bytes(&rec);
    let setup_s = setup.elapsed().as_secs_f64();
    eprintln!(
        "{} tracks written ({:.1} MB: video {:.0} kbit/s, audio {:.0} kbit/s per person) in {setup_s:.1} s",
        manifest.tracks.len(),
        raw_bytes as f64 / 1e6,
        video_bytes as f64 * 8.0 / 1000.0 / args.seconds / args.people as f64,
        audio_bytes as f64 * 8.0 / 1000.0 / args.seconds / args.people as f64,
    );

    // 3: the composite, as the server makes it.
    let out = rec.join("composite.webm");
    let plan = huddle_record::compose::plan(&manifest, &rec, &out).context("planning the composite")?;
    let opts = huddle_record::compose::Options::default();
    let mut runs: Vec<Value> = Vec::new();
    let mut walls: Vec<(f64, usize)> = Vec::new();
    for r in 0..args.runs {
        let _ = std::fs::remove_file(&out);
        eprintln!("composing ({} of {}): {} people, {} s", r + 1, args.runs, args.people, args.seconds);
        let one = compose_once(ffmpeg, &plan, args)?;
        let bytes = std::fs::metadata(&out).map(|m| m.len()).context("no composite was written")?;
        let duration = probe_duration(ffmpeg, &out);
        eprintln!(
            "  {:.1} s wall, {:.1} s of ffmpeg's CPU: {:.2} s per second of meeting; other processes {:.0}% CPU",
            one.wall_s,
            one.cpu_s,
            one.wall_s / args.seconds,
            one.other_cpu_pct
        );
        walls.push((one.wall_s, runs.len()));
        runs.push(json!({
            "compose_wall_s": r3(one.wall_s),
            "compose_cpu_s": r3(one.cpu_s),
            "ratio": r3(one.wall_s / args.seconds),
            "cpu_ratio": r3(one.cpu_s / args.seconds),
            "cpu_pct": r3(one.cpu_s / one.wall_s * 100.0),
            "other_cpu_pct": r3(one.other_cpu_pct),
            "composite_bytes": bytes,
            "composite_duration_s": duration.map(r3),
            "progress_reports": one.progress_reports,
        }));
    }
    walls.sort_by(|a, b| a.0.total_cmp(&b.0));
    let median = &runs[walls[walls.len() / 2].1];
    let mut report = json!({
        "bench": "compose",
        "people": args.people,
        "meeting_s": args.seconds,
        "compose_wall_s": median["compose_wall_s"],
        "compose_cpu_s": median["compose_cpu_s"],
        "ratio": median["ratio"],
        "cpu_ratio": median["cpu_ratio"],
        "cpu_pct": median["cpu_pct"],
        "other_cpu_pct": median["other_cpu_pct"],
        "runs": runs,
        "camera": {
            "width": args.width,
            "height": args.height,
            "fps": args.fps,
            "kbps": r3(video_bytes as f64 * 8.0 / 1000.0 / args.seconds / args.people as f64),
        },
        "microphone_kbps": r3(audio_bytes as f64 * 8.0 / 1000.0 / args.seconds / args.people as f64),
        "tracks": manifest.tracks.len(),
        "raw_bytes": raw_bytes,
        "composite": {
            "width": opts.width,
            "height": opts.height,
            "fps": opts.fps,
            "video_kbps": opts.video_kbps,
            "audio_kbps": opts.audio_kbps,
            "bytes": median["composite_bytes"],
            "duration_s": median["composite_duration_s"],
        },
        "ffmpeg": ffmpeg.display().to_string(),
        "ffmpeg_max_rss_kb": children_max_rss_kb(),
        "setup_s": r3(setup_s),
        "cpus": procfs::cpus(),
        "loadavg": loadavg(),
    });
    report["ffmpeg_version"] = json!(ffmpeg_version(ffmpeg));
    Ok(report)
}

struct Once {
    wall_s: f64,
    cpu_s: f64,
    other_cpu_pct: f64,
    progress_reports: usize,
}

/// One [`huddle_record::compose::run`], timed; cancelled after `--max-compose-secs`.
fn compose_once(ffmpeg: &Path, plan: &huddle_record::compose::Plan, args: &ComposeArgs) -> anyhow::Result<Once> {
    let cancel = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let limit = Duration::from_secs_f64(args.max_compose_secs);
    let cpu0 = children_cpu_s();
    let self0 = procfs::cpu_secs(None)?;
    let busy0 = procfs::machine_busy_secs()?;
    let started = Instant::now();
    let mut reports = 0usize;
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Relaxed) {
                if started.elapsed() >= limit {
                    cancel.store(true, Relaxed);
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = huddle_record::compose::run(ffmpeg, plan, |_| reports += 1, &cancel);
        done.store(true, Relaxed);
        r
    });
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_s = children_cpu_s() - cpu0;
    let self_s = procfs::cpu_secs(None)? - self0;
    let busy_s = procfs::machine_busy_secs()? - busy0;
    match result {
        Ok(()) => {}
        Err(huddle_record::ComposeError::Cancelled) => {
            bail!("the composite took longer than --max-compose-secs ({} s); cancelled", args.max_compose_secs)
        }
        Err(e) => return Err(e).context("composing"),
    }
    Ok(Once {
        wall_s,
        cpu_s,
        other_cpu_pct: ((busy_s - cpu_s - self_s) / wall_s * 100.0).max(0.0),
        progress_reports: reports,
    })
}

/// A participant's camera: `COLOURS[i]` with a quarter-size test pattern moving over it, VP8 in
/// IVF. Returns (ms, frame).
fn encode_video(ffmpeg: &Path, dir: &Path, i: usize, args: &ComposeArgs) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
    let ivf = dir.join(format!("p{}.ivf", i + 1));
    let (w, h, fps) = (args.width, args.height, args.fps);
    let colour = format!("color=c={}:size={w}x{h}:rate={fps}", COLOURS[i % COLOURS.len()]);
    let pattern = format!("testsrc=size={}x{}:rate={fps}", (w / 4).max(8) & !1, (h / 4).max(8) & !1);
    // Each participant's pattern moves on its own path (no commas: they would end the filter),
    // and a camera's sensor noise changes every frame (without it a flat colour takes libvpx a
    // fraction of the bitrate asked for, and decodes faster than a camera's picture would).
    let (a, b) = (0.7 + 0.13 * i as f64, 0.4 + 0.11 * i as f64);
    let overlay = format!(
        "[0:v][1:v]overlay=x='(W-w)*(0.5+0.5*sin(t*{a:.2}+{i}))':y='(H-h)*(0.5+0.5*cos(t*{b:.2}+{i}))',\
         noise=alls={NOISE}:allf=t,format=yuv420p"
    );
    let gop = ((args.keyframe_secs * fps as f64).round() as u64).max(1).to_string();
    let kbps = format!("{}k", args.video_kbps);
    let t = args.seconds.to_string();
    ffmpeg_run(
        ffmpeg,
        &[
            "-f",
            "lavfi",
            "-i",
            &colour,
            "-f",
            "lavfi",
            "-i",
            &pattern,
            "-filter_complex",
            &overlay,
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
            &gop,
            "-b:v",
            &kbps,
            "-f",
            "ivf",
        ],
        &ivf,
    )?;
    ivf_frames(&std::fs::read(&ivf)?)
}

/// A participant's microphone: a sine tone of its own, Opus (20 ms packets) in Ogg.
fn encode_audio(ffmpeg: &Path, dir: &Path, i: usize, args: &ComposeArgs) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
    let ogg = dir.join(format!("p{}.ogg", i + 1));
    let tone = format!("sine=frequency={}:sample_rate=48000", 300 + 170 * i);
    let kbps = format!("{}k", args.audio_kbps);
    let t = args.seconds.to_string();
    ffmpeg_run(
        ffmpeg,
        &["-f", "lavfi", "-i", &tone, "-t", &t, "-c:a", "libopus", "-b:a", &kbps, "-frame_duration", "20", "-f", "ogg"],
        &ogg,
    )?;
    let packets = ogg_packets(&std::fs::read(&ogg)?)?;
    // The first two packets are OpusHead and OpusTags.
    let mut at_us = 0u64;
    let mut out = Vec::new();
    for p in packets.into_iter().skip(2).filter(|p| !p.is_empty()) {
        let d = opus_packet_us(&p).ok_or_else(|| anyhow!("an Opus packet without a valid TOC"))?;
        out.push((at_us / 1000, p));
        at_us += d;
    }
    Ok(out)
}

fn ffmpeg_run(ffmpeg: &Path, args: &[&str], out: &Path) -> anyhow::Result<()> {
    let o = Command::new(ffmpeg)
        .args(["-hide_banner", "-nostdin", "-v", "error", "-y"])
        .args(args)
        .arg(out)
        .output()
        .with_context(|| format!("running {}", ffmpeg.display()))?;
    if !o.status.success() {
        bail!("ffmpeg {} failed: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

/// Writes `frames` into `dir/file` as the server's writer does, and describes the track.
fn write_track(
    dir: &Path,
    file: &str,
    peer: &str,
    kind: TrackKind,
    codec: Codec,
    frames: &[(u64, Vec<u8>)],
) -> anyhow::Result<TrackInfo> {
    let mut w = TrackWriter::create(&dir.join(file), codec).with_context(|| format!("creating {file}"))?;
    for (t, f) in frames {
        w.write_frame(*t, false, f).with_context(|| format!("writing {file}"))?;
    }
    let (start, end, frames, size) = (w.start_ms(), w.end_ms(), w.frames(), w.size());
    let bytes = w.finish().with_context(|| format!("finishing {file}"))?;
    Ok(TrackInfo {
        file: file.into(),
        peer: peer.into(),
        kind,
        codec,
        start: start.ok_or_else(|| anyhow!("{file}: no frame could start the file (no keyframe?)"))?,
        end,
        bytes,
        frames,
        width: size.map(|s| s.0),
        height: size.map(|s| s.1),
    })
}

/// The frames of an IVF file, with their times in ms: a 32-byte header (`DKIF`, …, the time
/// base's denominator and numerator at bytes 16 and 20), then per frame a 12-byte header (u32
/// size, u64 timestamp, little endian) and the frame.
fn ivf_frames(data: &[u8]) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
    if data.len() < 32 || &data[..4] != b"DKIF" {
        bail!("not an IVF file");
    }
    let u32_at = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    let header_len = usize::from(u16::from_le_bytes([data[6], data[7]])).max(32);
    let (den, num) = (u64::from(u32_at(16)).max(1), u64::from(u32_at(20)).max(1));
    let mut out = Vec::new();
    let mut i = header_len;
    while i + 12 <= data.len() {
        let size = u32_at(i) as usize;
        let pts = u64::from_le_bytes(data[i + 4..i + 12].try_into()?);
        let frame = data.get(i + 12..i + 12 + size).ok_or_else(|| anyhow!("a truncated IVF frame"))?;
        out.push((pts * num * 1000 / den, frame.to_vec()));
        i += 12 + size;
    }
    Ok(out)
}

/// The packets of an Ogg stream with one logical stream (RFC 3533): each page is `OggS`, a
/// 27-byte header whose last byte is the number of segments, the segment table, then the data;
/// a packet is a run of segments ending with one shorter than 255 bytes (it may go on in the
/// next page).
fn ogg_packets(data: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut packets = Vec::new();
    let mut packet = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if data.len() < i + 27 || &data[i..i + 4] != b"OggS" {
            bail!("not an Ogg page at byte {i}");
        }
        let segments = usize::from(data[i + 26]);
        let table = data.get(i + 27..i + 27 + segments).ok_or_else(|| anyhow!("a truncated Ogg page"))?;
        let mut at = i + 27 + segments;
        for &len in table {
            let len = usize::from(len);
            packet.extend_from_slice(data.get(at..at + len).ok_or_else(|| anyhow!("a truncated Ogg page"))?);
            at += len;
            if len < 255 {
                packets.push(std::mem::take(&mut packet));
            }
        }
        i = at;
    }
    Ok(packets)
}

/// CPU time (user + system) of this process's children that ended and were waited for, in s.
fn children_cpu_s() -> f64 {
    let u = children_usage();
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The largest resident set of any child waited for (the composite's ffmpeg, which is larger
/// than the small encodes before it), in KiB.
fn children_max_rss_kb() -> i64 {
    children_usage().ru_maxrss
}

fn children_usage() -> libc::rusage {
    // SAFETY: rusage is plain old data; getrusage fills it and only reads the flag.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u
    }
}

/// The composite's length by ffprobe (beside ffmpeg, or on the PATH); `None` without ffprobe.
fn probe_duration(ffmpeg: &Path, file: &Path) -> Option<f64> {
    let beside = ffmpeg.with_file_name("ffprobe");
    let ffprobe =
        if beside.is_file() { beside } else { huddle_record::compose::find_ffmpeg(Some(Path::new("ffprobe")))? };
    let o = Command::new(ffprobe)
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "default=nw=1:nk=1"])
        .arg(file)
        .output()
        .ok()?;
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

fn ffmpeg_version(ffmpeg: &Path) -> Option<String> {
    let o = Command::new(ffmpeg).arg("-version").output().ok()?;
    String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.split(" Copyright").next().unwrap_or(l).to_string())
}

fn loadavg() -> Option<Vec<f64>> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).filter_map(|v| v.parse().ok()).collect())
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ivf_frames_with_their_times() {
        let mut f = b"DKIF".to_vec();
        f.extend_from_slice(&0u16.to_le_bytes()); // version
        f.extend_from_slice(&32u16.to_le_bytes()); // header length
        f.extend_from_slice(b"VP80");
        f.extend_from_slice(&320u16.to_le_bytes());
        f.extend_from_slice(&240u16.to_le_bytes());
        f.extend_from_slice(&20u32.to_le_bytes()); // time base 1/20
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&2u32.to_le_bytes()); // frames
        f.extend_from_slice(&0u32.to_le_bytes());
        for (pts, data) in [(0u64, &b"abc"[..]), (3, &b"de"[..])] {
            f.extend_from_slice(&(data.len() as u32).to_le_bytes());
            f.extend_from_slice(&pts.to_le_bytes());
            f.extend_from_slice(data);
        }
        assert_eq!(ivf_frames(&f).expect("reads"), vec![(0, b"abc".to_vec()), (150, b"de".to_vec())]);
        assert!(ivf_frames(b"RIFF").is_err());
    }

    #[test]
    fn reads_ogg_packets_across_pages() {
        let page = |segments: &[u8], data: &[u8]| {
            let mut p = b"OggS".to_vec();
            p.extend_from_slice(&[0u8; 22]);
            p.push(segments.len() as u8);
            p.extend_from_slice(segments);
            p.extend_from_slice(data);
            p
        };
        let long = vec![7u8; 300];
        let mut data = page(&[3, 255], &[&[1, 2, 3][..], &long[..255]].concat());
        data.extend(page(&[45, 0], &long[255..]));
        let packets = ogg_packets(&data).expect("reads");
        assert_eq!(packets, vec![vec![1, 2, 3], long, vec![]]);
        assert!(ogg_packets(b"OggS").is_err());
    }
}
