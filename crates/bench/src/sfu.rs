//! `huddle-bench sfu`: the SFU benchmark.
//!
//! 1. Start the server (a child process, `--topology sfu`) on 127.0.0.1.
//! 2. Join `--publishers` synthetic str0m participants that publish audio and simulcast video
//!    (and receive the other publishers, like any meeting participant), wait until each is
//!    connected to the SFU; then join `--subscribers` receive-only participants. Wait until every
//!    participant receives audio and the wanted video layer from every publisher but itself.
//!    With `--rooms N`, N such rooms at once, named so that room i belongs to the server's
//!    worker i mod W ([`room_names`]); every figure is then a total over the rooms.
//! 3. Warm up, then measure one window of `--seconds` at the configured rate.
//! 4. Unless `--saturate false`: raise the video frame rate step by step (`--step-secs` each)
//!    until the loss goes above `--saturation-loss-pct` or the forwarded rate stops growing.
//! 5. Stop the server and measure the plain UDP relay ([`crate::relay`]) with the same fanout
//!    and packet size (one relay thread per worker the rooms are on, all at once), and print one
//!    JSON line on stdout.
//!
//! Every phase is bounded in time; all traffic is on 127.0.0.1.

use crate::procfs;
use crate::relay;
use crate::server::{ServerProcess, SERVER_CPUS};
use crate::sfu_peer::{self, PeerResult, Role};
use crate::signal::Workers;
use crate::tempdir::TempDir;
use anyhow::{bail, Context};
use huddle_protocol::VideoQuality;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Measurement windows at most (the main one and the saturation steps).
pub const MAX_WINDOWS: usize = 16;
/// Frame-rate multipliers of the saturation steps.
const STEPS: [f64; 7] = [1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0];
/// Pause at the base rate after a disturbed window, before measuring again.
const RECOVER: Duration = Duration::from_secs(2);
/// Times a window disturbed by other processes is measured again.
const MAX_RETRIES: usize = 2;
/// Subscribers joining at once.
const JOIN_BATCH: usize = 25;
/// Progress lines while waiting for everyone to receive every publisher.
const PROGRESS: Duration = Duration::from_secs(5);
/// Pause after each window before its loss is read (frames still under way).
const SETTLE: Duration = Duration::from_millis(400);
/// Before measuring, no participant may have received a frame of a layer it did not ask for
/// during this long (with the server's bandwidth estimate on, a subscriber may start above what
/// its estimate carries, step down, and climb back as str0m probes).
const LAYERS_STEADY: Duration = Duration::from_secs(2);
/// Simulcast layers (lowest first) and their bitrates as a share of `--video-kbps`, roughly
/// what a browser sends for a 720p camera with `scaleResolutionDownBy` 4, 2, 1.
const SIMULCAST: [(&str, f64); 3] = [("q", 0.1), ("h", 0.3), ("f", 1.0)];
/// Most rooms, and most participants over all rooms (each a TCP connection, a UDP socket and a
/// str0m session on the load generator).
const MAX_ROOMS: usize = 256;
const MAX_PARTICIPANTS: usize = 5000;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quality {
    Low,
    Medium,
    High,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SfuArgs {
    /// Participants that publish audio and video (and receive the other publishers) [default: 10, 1 with --webinar]
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Receive-only participants [default: 10, 200 with --webinar]
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// The webinar preset: 1 publisher, 200 subscribers (unless given)
    #[arg(long)]
    pub webinar: bool,
    /// Identical rooms, each with --publishers and --subscribers, spread over the server's
    /// workers (room i on worker i mod W); figures are totals over the rooms
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Length of the measured window at the configured rate, in seconds
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Time between everyone receiving and the measured window, in seconds
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Bitrate of the top video layer (the only layer without simulcast), kbit/s
    #[arg(long, default_value_t = 1500.0)]
    pub video_kbps: f64,
    /// Video frames per second (every layer)
    #[arg(long, default_value_t = 30.0)]
    pub fps: f64,
    /// Publishers also send audio: an 80-byte Opus-like frame every 20 ms
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub audio: bool,
    /// Three simulcast layers (rids q, h, f at 10 %, 30 % and 100 % of --video-kbps); false: one layer
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub simulcast: bool,
    /// The video quality every participant asks for (`receive`): with simulcast, the layer it gets
    #[arg(long, value_enum, default_value_t = Quality::High)]
    pub quality: Quality,
    /// Seconds between periodic keyframes (besides those the SFU asks for)
    #[arg(long, default_value_t = 3.0)]
    pub keyframe_secs: f64,
    /// After the measured window, raise the frame rate step by step to find the saturation point
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub saturate: bool,
    /// Length of each saturation step, in seconds
    #[arg(long, default_value_t = 3.0)]
    pub step_secs: f64,
    /// A step with more loss than this (percent) is past saturation
    #[arg(long, default_value_t = 1.0)]
    pub saturation_loss_pct: f64,
    /// A window whose p99 latency is above this (ms) does not count as keeping up, whatever its loss
    #[arg(long, default_value_t = 100.0)]
    pub saturation_p99_ms: f64,
    /// A window during which other processes used more CPU than this (100 = one core) is measured
    /// again, at most twice (the plain relay too)
    #[arg(long, default_value_t = 20.0)]
    pub disturbed_cpu_pct: f64,
    /// Length of the plain-relay measurement, in seconds
    #[arg(long, default_value_t = 3.0)]
    pub relay_secs: f64,
    /// Longest time for everyone to join and receive every publisher, in seconds
    #[arg(long, default_value_t = 60.0)]
    pub connect_timeout_secs: f64,
    /// Load-generator threads, each running its share of the participants on its own
    /// single-threaded runtime
    #[arg(long, default_value_t = 1)]
    pub loadgen_threads: usize,
    /// Pin the server (and later the plain relay) to CPU 0 and the load generator to the others
    #[arg(long)]
    pub pin: bool,
    /// Extra argument for the server (repeatable), e.g. --server-arg=--outbox-capacity=64
    #[arg(long = "server-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub server_args: Vec<String>,
    /// The cost of recording (issue 18): the server records into a new temporary directory
    /// (`--recordings-dir`, removed at the end; no composite: `--ffmpeg /nonexistent`), each
    /// room's host starts and stops the recording through its WebSocket (`record`,
    /// `stop_recording`), and windows of `--seconds` not recording and recording alternate
    /// (`--record-rounds` of each, in the order off on on off off on …). No saturation steps
    #[arg(long)]
    pub record: bool,
    /// With --record: windows of each kind (recording, not recording), 1 to 8
    #[arg(long, default_value_t = 2)]
    pub record_rounds: usize,
    /// With --record: where to make the temporary recordings directory [default: the system's
    /// temporary directory]
    #[arg(long, value_name = "DIR")]
    pub record_dir: Option<std::path::PathBuf>,
}

impl SfuArgs {
    fn counts(&self) -> (usize, usize) {
        let (p, s) = if self.webinar { (1, 200) } else { (10, 10) };
        (self.publishers.unwrap_or(p), self.subscribers.unwrap_or(s))
    }

    /// The server's workers as its command line (`--server-arg=--workers=N` or
    /// `--server-arg=--workers --server-arg=N`) or its environment (`HUDDLE_WORKERS`) sets
    /// them, else its default: one per CPU it may run on (one when `pinned` to
    /// [`SERVER_CPUS`]). The count the server reports on `/metrics` wins over this
    /// ([`worker_metrics`]).
    fn expected_workers(&self, pinned: bool) -> usize {
        let mut given: Option<String> = None;
        let mut args = self.server_args.iter();
        while let Some(a) = args.next() {
            if let Some(v) = a.strip_prefix("--workers=") {
                given = Some(v.to_string());
            } else if a == "--workers" {
                given = args.next().cloned();
            }
        }
        let given = given.or_else(|| std::env::var("HUDDLE_WORKERS").ok());
        let n = match given.as_deref().map(str::trim).map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            // The server refuses it; it does not start.
            Some(Err(_)) => 1,
            None if pinned => SERVER_CPUS.len(),
            None => procfs::cpus(),
        };
        n.clamp(1, huddle_server::workers::MAX_WORKERS)
    }

    fn check(&self) -> anyhow::Result<()> {
        let (p, s) = self.counts();
        if p == 0 || p > 200 {
            bail!("--publishers must be between 1 and 200");
        }
        if s > 2000 {
            bail!("--subscribers must be at most 2000");
        }
        if p + s < 2 {
            bail!("nobody would receive anything: add a publisher or a subscriber");
        }
        if self.rooms == 0 || self.rooms > MAX_ROOMS {
            bail!("--rooms must be between 1 and {MAX_ROOMS}");
        }
        if self.rooms > 1 && self.rooms * (p + s) > MAX_PARTICIPANTS {
            bail!(
                "{} rooms of {} participants make {}: at most {MAX_PARTICIPANTS} in all",
                self.rooms,
                p + s,
                self.rooms * (p + s)
            );
        }
        for (name, v, lo, hi) in [
            ("--seconds", self.seconds, 0.5, 3600.0),
            ("--warmup-secs", self.warmup_secs, 0.0, 600.0),
            ("--video-kbps", self.video_kbps, 10.0, 50_000.0),
            ("--fps", self.fps, 1.0, 120.0),
            ("--keyframe-secs", self.keyframe_secs, 0.1, 3600.0),
            ("--step-secs", self.step_secs, 0.5, 600.0),
            ("--saturation-loss-pct", self.saturation_loss_pct, 0.0, 100.0),
            ("--disturbed-cpu-pct", self.disturbed_cpu_pct, 0.0, 10_000.0),
            ("--saturation-p99-ms", self.saturation_p99_ms, 1.0, 100_000.0),
            ("--relay-secs", self.relay_secs, 0.5, 600.0),
            ("--connect-timeout-secs", self.connect_timeout_secs, 1.0, 3600.0),
        ] {
            if !(v >= lo && v <= hi) {
                bail!("{name} must be between {lo} and {hi}");
            }
        }
        if self.loadgen_threads == 0 || self.loadgen_threads > 64 {
            bail!("--loadgen-threads must be between 1 and 64");
        }
        if self.record_rounds == 0 || 2 * self.record_rounds > MAX_WINDOWS {
            bail!("--record-rounds must be between 1 and {}", MAX_WINDOWS / 2);
        }
        Ok(())
    }
}

/// One video layer as the publishers send it.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The simulcast rid; `None` without simulcast.
    pub rid: Option<String>,
    pub kbps: f64,
    pub frame_bytes: usize,
}

/// What every participant knows, fixed before they start (one per room; they differ only in
/// the room).
#[derive(Clone)]
pub struct Plan {
    /// Send times in frames are nanoseconds since this instant.
    pub epoch: Instant,
    pub port: u16,
    pub room: String,
    /// This room's index among `rooms` (publishers' frames are spread over a frame interval
    /// across all rooms' publishers).
    pub room_index: usize,
    pub rooms: usize,
    /// In this room.
    pub publishers: usize,
    pub subscribers: usize,
    pub audio: bool,
    pub audio_bytes: usize,
    /// Lowest first.
    pub layers: Vec<Layer>,
    /// The layer every receiver should get (index into `layers`).
    pub wanted_layer: usize,
    pub quality: VideoQuality,
    pub frame_interval: Duration,
    pub keyframe_interval: Duration,
    pub connect_timeout: Duration,
}

impl Plan {
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// Frames of one measurement window.
#[derive(Default)]
pub struct WindowCounts {
    /// Frames that should arrive: each audio frame and each video frame time (all layers of one
    /// moment count once) sent in the window, once per participant that should receive it.
    pub expected: AtomicU64,
    /// Of those, frames that did arrive.
    pub received: AtomicU64,
}

/// What the participants and the benchmark share while running.
#[derive(Default)]
pub struct Live {
    pub stop: AtomicBool,
    /// Publishers send while set.
    pub sending: AtomicBool,
    /// The measurement window frames are sent in now (0: none).
    pub window: AtomicU8,
    /// Video frame-rate multiplier, in thousandths.
    mult_milli: AtomicU32,
    /// The SFUs' UDP ports (one per worker the rooms are on), from their answers.
    sfu_ports: Mutex<Vec<u16>>,
    pub joined: AtomicUsize,
    pub connected: AtomicUsize,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    pub errors: AtomicU64,
    /// New sessions started after a session with the SFU failed.
    pub restarts: AtomicU64,
    pub reported: AtomicU64,
    /// RTP datagrams (and their bytes) that reached a participant: what the SFU forwarded.
    pub forwarded_rtp: AtomicU64,
    pub forwarded_bytes: AtomicU64,
    /// RTP datagrams the publishers sent.
    pub published_rtp: AtomicU64,
    /// Datagrams participants could not send (socket buffer full).
    pub send_dropped: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub unparsed_frames: AtomicU64,
    /// Video frames received in another simulcast layer than the one asked for (counted, for
    /// the SFU may fall back to a layer that arrives), and repeats of a frame time already
    /// received in another layer (not counted).
    pub other_layer_frames: AtomicU64,
    /// The same, counted outside the measured windows too (for the wait before measuring).
    pub other_layer_frames_any: AtomicU64,
    pub repeated_frames: AtomicU64,
    /// Frames that arrived after a newer one of the same track (counted as received).
    pub out_of_order_frames: AtomicU64,
    /// Frames a publisher skipped because it was more than 100 ms behind its schedule.
    pub late_frames: AtomicU64,
    /// Indexed by window (0 unused).
    pub windows: [WindowCounts; MAX_WINDOWS + 1],
    /// With `--record`: the rooms' hosts record while set.
    pub record: AtomicBool,
    /// Participants that host their room (one per room).
    pub hosts: AtomicUsize,
    /// Rooms whose host was told that the recording is on (`recording`).
    pub recording_rooms: AtomicUsize,
    /// Recordings that stopped for another reason than the host's `stop_recording`.
    pub recording_stopped_early: AtomicU64,
    /// `record` refused (`recording_unavailable`, `recording_storage_full`, `not_allowed`).
    pub record_refused: AtomicU64,
}

impl Live {
    pub fn mult(&self) -> f64 {
        (self.mult_milli.load(Relaxed) as f64 / 1000.0).max(0.001)
    }

    fn set_mult(&self, m: f64) {
        self.mult_milli.store((m * 1000.0).round() as u32, Relaxed);
    }

    /// An SFU's UDP port, from the candidate in its answer.
    pub fn sfu_port_seen(&self, port: u16) {
        let mut ports = self.sfu_ports.lock().unwrap_or_else(|e| e.into_inner());
        if !ports.contains(&port) {
            ports.push(port);
        }
    }

    fn sfu_ports(&self) -> Vec<u16> {
        self.sfu_ports.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub fn run(args: SfuArgs) -> anyhow::Result<()> {
    args.check()?;
    let (publishers, subscribers) = args.counts();
    // In one room (its capacity), and in all.
    let participants = publishers + subscribers;
    let everyone = participants * args.rooms;
    // Each participant: a TCP connection and a UDP socket; the server has the other ends.
    let nofile = procfs::raise_nofile(4 * everyone as u64 + 1024)?;
    if nofile < 4 * everyone as u64 + 64 {
        eprintln!("warning: the open-file limit is {nofile}, maybe too low for {everyone} participants");
    }
    // Read before this process pins itself (the server's default is one worker per CPU it may use).
    let expected_workers = args.expected_workers(args.pin && procfs::cpus() >= 2);
    let mut server_args: Vec<OsString> =
        vec!["--listen".into(), "127.0.0.1:0".into(), "--topology".into(), "sfu".into()];
    let given = |flag: &str| args.server_args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    if !given("--room-capacity") {
        server_args.extend(["--room-capacity".into(), participants.to_string().into()]);
    }
    // Every simulated client comes from 127.0.0.1: no per-IP limits.
    for flag in ["--max-connections-per-ip", "--max-tcp-connections-per-ip", "--ip-joins-per-minute"] {
        if !given(flag) {
            server_args.extend([flag.into(), "0".into()]);
        }
    }
    // With --record: a fresh recordings directory, removed at the end (also on error: dropped
    // after the server), and no composite (the synthetic frames do not decode; and ffmpeg must
    // not run while the media path is measured).
    let rec_dir = if args.record {
        for flag in ["--recordings-dir", "--recordings"] {
            if given(flag) {
                bail!("--record makes the recordings directory and turns recordings on itself: no --server-arg={flag}");
            }
        }
        let dir = TempDir::new(args.record_dir.as_deref(), "huddle-bench-recordings")?;
        server_args.extend(["--recordings".into(), "true".into(), "--recordings-dir".into(), dir.path.clone().into()]);
        if !given("--ffmpeg") {
            server_args.extend(["--ffmpeg".into(), "/nonexistent".into()]);
        }
        Some(dir)
    } else {
        None
    };
    server_args.extend(args.server_args.iter().map(OsString::from));
    let mut server = ServerProcess::start_for_bench(&server_args, args.pin)?;
    let pinned = server.pinned;

    // The server's own count, when its /metrics says it, places the rooms.
    let workers_count = match worker_metrics(server.port) {
        Some(each) if !each.is_empty() => {
            if each.len() != expected_workers {
                eprintln!("the server runs {} workers (expected {expected_workers})", each.len());
            }
            each.len()
        }
        _ => expected_workers,
    };
    let names = room_names(args.rooms, workers_count);
    let room_workers: Vec<usize> =
        names.iter().map(|n| huddle_server::workers::worker_of_room(n, workers_count)).collect();
    if args.rooms > 1 {
        eprintln!(
            "{} rooms of {participants} ({everyone} participants) over {workers_count} workers: {}",
            args.rooms,
            names.iter().zip(&room_workers).map(|(n, w)| format!("{n} on {w}")).collect::<Vec<_>>().join(", ")
        );
    }
    let base = make_plan(&args, server.port);
    let plans: Vec<Arc<Plan>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| Arc::new(Plan { room: name.clone(), room_index: i, ..base.clone() }))
        .collect();
    let live = Arc::new(Live::default());
    live.set_mult(1.0);
    live.sending.store(true, Relaxed);
    let workers = Workers::start(args.loadgen_threads)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let rec_path = rec_dir.as_ref().map(|d| d.path.clone());
    let result = rt.block_on(drive(&args, &plans, &live, &mut server, &workers, rec_path.as_deref()));
    live.stop.store(true, Relaxed);
    drop(workers);
    drop(rt);
    drop(server);
    drop(rec_dir);
    let mut report = result?;
    report["rooms"] = json!(args.rooms);
    report["workers"] = json!(workers_count);
    report["room_workers"] = json!(room_workers);

    // The plain relay, with the server gone: the same fanout and packet size as the SFU's, one
    // relay thread per worker the rooms are on (the SFU's threads that had work), all at once.
    let fanout = publishers - 1 + subscribers;
    let bytes = report["forwarded_packet_bytes"].as_f64().filter(|b| b.is_finite() && *b > 0.0).unwrap_or(1100.0);
    let mut busy_workers = room_workers.clone();
    busy_workers.sort_unstable();
    busy_workers.dedup();
    let threads = busy_workers.len().max(1);
    let relay_cpus = pinned.then_some(&SERVER_CPUS[..]);
    let saturation_pps = report["saturation_forwarded_pps"].as_f64().unwrap_or(f64::NAN);
    report["plain_relay_threads"] = json!(threads);
    if threads == 1 {
        eprintln!("plain UDP relay: fanout {fanout}, {bytes:.0}-byte datagrams, {:.1} s", args.relay_secs);
        let r = relay::measure_best(
            fanout,
            bytes.round() as usize,
            args.relay_secs,
            relay_cpus,
            args.disturbed_cpu_pct,
            MAX_RETRIES,
        )?;
        report["plain_relay_pps"] = json!(r3(r.delivered_pps));
        report["ratio_to_plain_relay"] = json!(r3(saturation_pps / r.delivered_pps));
        report["plain_relay"] = serde_json::to_value(&r)?;
    } else {
        eprintln!(
            "plain UDP relay: {threads} relays at once, each fanout {fanout}, {bytes:.0}-byte datagrams, {:.1} s",
            args.relay_secs
        );
        let each = relays_at_once(threads, fanout, bytes.round() as usize, &args, relay_cpus)?;
        let sum = |f: fn(&relay::RelayResult) -> f64| each.iter().map(f).sum::<f64>();
        let (delivered, sent) = (sum(|r| r.delivered_pps), sum(|r| r.sent_pps));
        report["plain_relay_pps"] = json!(r3(delivered));
        report["ratio_to_plain_relay"] = json!(r3(saturation_pps / delivered));
        report["plain_relay"] = json!({
            "delivered_pps": delivered,
            "sent_pps": sent,
            "in_pps": sum(|r| r.in_pps),
            "loss_pct": if sent > 0.0 { ((sent - delivered) / sent * 100.0).max(0.0) } else { 0.0 },
            "fanout": fanout,
            "bytes": each[0].bytes,
            "seconds": sum(|r| r.seconds) / threads as f64,
            "relay_cpu_pct": sum(|r| r.relay_cpu_pct),
            "other_cpu_pct": each.iter().map(|r| r.other_cpu_pct).fold(0.0, f64::max),
            "threads": threads,
            "each": each,
        });
    }
    println!("{report}");
    Ok(())
}

/// Names for `rooms` rooms such that room i belongs to worker i mod `workers`: `bench-sfu` for
/// one room (as before there were several), else the first free `bench-sfu-<k>` of the wanted
/// worker ([`huddle_server::workers::worker_of_room`]).
fn room_names(rooms: usize, workers: usize) -> Vec<String> {
    if rooms == 1 {
        return vec!["bench-sfu".to_string()];
    }
    let workers = workers.max(1);
    // Per worker: the next k to try (names before it are taken or another worker's).
    let mut next = vec![0usize; workers];
    (0..rooms)
        .map(|i| {
            let want = i % workers;
            loop {
                let name = format!("bench-sfu-{}", next[want]);
                next[want] += 1;
                if huddle_server::workers::worker_of_room(&name, workers) == want {
                    return name;
                }
            }
        })
        .collect()
}

/// `threads` plain relays ([`relay::measure`]) at once, each with `fanout` and `bytes`: measured
/// again (at most [`MAX_RETRIES`] more times) while other processes used more than
/// `--disturbed-cpu-pct`; the attempt that delivered the most in all counts.
fn relays_at_once(
    threads: usize,
    fanout: usize,
    bytes: usize,
    args: &SfuArgs,
    cpus: Option<&[usize]>,
) -> anyhow::Result<Vec<relay::RelayResult>> {
    let mut best: Option<(f64, Vec<relay::RelayResult>)> = None;
    for attempt in 0..=MAX_RETRIES {
        let each: Vec<relay::RelayResult> = std::thread::scope(|s| {
            let runs: Vec<_> =
                (0..threads).map(|_| s.spawn(|| relay::measure(fanout, bytes, args.relay_secs, cpus))).collect();
            runs.into_iter()
                .map(|r| r.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a relay panicked"))))
                .collect::<anyhow::Result<_>>()
        })?;
        let delivered: f64 = each.iter().map(|r| r.delivered_pps).sum();
        let relay_cpu: f64 = each.iter().map(|r| r.relay_cpu_pct).sum();
        // All relays run in this process: each one's "other processes" is the same figure.
        let other = each.iter().map(|r| r.other_cpu_pct).fold(0.0, f64::max);
        eprintln!(
            "plain relays: {delivered:.0} datagrams/s delivered in all ({}), relay threads at {relay_cpu:.0}% CPU in \
             all, other processes {other:.0}% CPU",
            each.iter().map(|r| format!("{:.0}", r.delivered_pps)).collect::<Vec<_>>().join(" + ")
        );
        if best.as_ref().is_none_or(|(b, _)| delivered > *b) {
            best = Some((delivered, each));
        }
        if other <= args.disturbed_cpu_pct {
            break;
        }
        if attempt < MAX_RETRIES {
            eprintln!("plain relays: disturbed by other processes; measuring again");
        }
    }
    best.map(|(_, each)| each).context("no plain relay measurement")
}

/// The server's `/metrics` page; `None` when it does not answer it within 2 s.
fn metrics_text(port: u16) -> Option<String> {
    let timeout = Some(Duration::from_secs(2));
    let mut tcp = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .ok()?;
    tcp.set_read_timeout(timeout).ok()?;
    tcp.set_write_timeout(timeout).ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = Vec::new();
    tcp.take(4 << 20).read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    if text.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    Some(text)
}

/// Each worker's rooms and (with an SFU) the packets it forwarded so far, from the server's
/// `/metrics` (`huddle_worker_rooms`, `huddle_worker_forwarded_packets_total`), indexed by
/// worker; `None` when it does not answer them within 2 s.
fn worker_metrics(port: u16) -> Option<Vec<(u64, Option<u64>)>> {
    let text = metrics_text(port)?;
    let mut each: Vec<(u64, Option<u64>)> = Vec::new();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let Some((family, labels)) = name.split_once("{worker=\"") else { continue };
        let (Some(Ok(i)), Ok(v)) = (labels.strip_suffix("\"}").map(str::parse::<usize>), value.trim().parse::<f64>())
        else {
            continue;
        };
        if i >= huddle_server::workers::MAX_WORKERS {
            continue;
        }
        if each.len() <= i {
            each.resize(i + 1, (0, None));
        }
        match family {
            "huddle_worker_rooms" => each[i].0 = v as u64,
            "huddle_worker_forwarded_packets_total" => each[i].1 = Some(v as u64),
            _ => {}
        }
    }
    Some(each)
}

/// Longest wait for every room's host to hear that the recording started or stopped.
const RECORD_SWITCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after the recording starts or stops, before the next window: the keyframes the
/// recorder asks for at its start, the files finished (fsync) at its stop.
const RECORD_SETTLE: Duration = Duration::from_millis(1500);
/// Longest wait, after the last stop, for every recording's manifest to say it stopped.
const RECORD_FILES_TIMEOUT: Duration = Duration::from_secs(10);

/// The windows of `--record` (positions in the list of windows) and what was recorded.
#[derive(Default)]
struct RecordRun {
    base: Vec<usize>,
    rec: Vec<usize>,
    /// Recordings made (each start .. stop), from their manifests.
    recordings: usize,
    /// Every manifest said `stopped` (and every track had an end) in time.
    files_final: bool,
    recorded_ms: u64,
    recorded_frames: u64,
    /// Bytes of every file in the recordings directory (tracks and manifests).
    recorded_bytes: u64,
    tracks: usize,
    /// Frames the recordings should hold: every publisher's audio frames and top-layer video
    /// frames over each recording's length.
    expected_frames: f64,
    /// Frames the server's media task dropped because its writer's queue was full, when its
    /// `/metrics` says so (a family named `*record*drop*`); `None` when it does not.
    writer_dropped: Option<u64>,
}

/// Starts (`on`) or stops the recording in every room (the hosts send `record` or
/// `stop_recording`) and waits until every host heard so, then [`RECORD_SETTLE`].
async fn set_recording(on: bool, rooms: usize, live: &Live, server: &mut ServerProcess) -> anyhow::Result<()> {
    live.record.store(on, Relaxed);
    let want = if on { rooms } else { 0 };
    let deadline = Instant::now() + RECORD_SWITCH_TIMEOUT;
    loop {
        if live.record_refused.load(Relaxed) > 0 {
            bail!("the server refused to record (see above)");
        }
        if live.recording_rooms.load(Relaxed) == want {
            break;
        }
        if !server.alive() {
            bail!("the server process exited");
        }
        if Instant::now() >= deadline {
            bail!(
                "{} of {rooms} rooms recording {:.0} s after the hosts were told to {}",
                live.recording_rooms.load(Relaxed),
                RECORD_SWITCH_TIMEOUT.as_secs_f64(),
                if on { "record" } else { "stop" }
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "recording {} in {} room(s); {:.1} s before the next window",
        if on { "started" } else { "stopped" },
        rooms,
        RECORD_SETTLE.as_secs_f64()
    );
    tokio::time::sleep(RECORD_SETTLE).await;
    Ok(())
}

/// `--record`: windows of `--seconds` at the configured rate, not recording and recording in
/// turn (off on, then on off, …: each kind has as many windows early as late), every room
/// recording at once. Disturbed windows are kept and marked (both kinds see the disturbance
/// alike over the rounds). Ends with every recording stopped and its files final.
async fn record_windows(
    args: &SfuArgs,
    rooms: usize,
    pid: u32,
    live: &Live,
    server: &mut ServerProcess,
    dir: &Path,
    windows: &mut Vec<Window>,
) -> anyhow::Result<RecordRun> {
    if live.hosts.load(Relaxed) < rooms {
        bail!("only {} of {rooms} rooms have their host among the participants", live.hosts.load(Relaxed));
    }
    let order: Vec<bool> =
        (0..args.record_rounds).flat_map(|k| if k % 2 == 0 { [false, true] } else { [true, false] }).collect();
    let mut run = RecordRun::default();
    for (i, &on) in order.iter().enumerate() {
        if on != live.record.load(Relaxed) {
            set_recording(on, rooms, live, server).await?;
        }
        let index = windows.len() + 1;
        eprintln!("window {index}: {}", if on { "RECORDING" } else { "not recording" });
        let mut w = measure_window(index, 1.0, args.seconds, args.fps, pid, live, server).await?;
        let other = w.other_cpu_pct();
        w.disturbed = other > args.disturbed_cpu_pct;
        if w.disturbed {
            eprintln!("window {index}: other processes used {other:.0}% CPU meanwhile (kept, marked disturbed)");
        }
        if on { &mut run.rec } else { &mut run.base }.push(windows.len());
        windows.push(w);
        if live.recording_rooms.load(Relaxed) != if on { rooms } else { 0 } {
            bail!("window {} of {}: a recording stopped by itself (see above)", i + 1, order.len());
        }
    }
    if live.record.load(Relaxed) {
        set_recording(false, rooms, live, server).await?;
    }
    if live.recording_stopped_early.load(Relaxed) > 0 {
        bail!("a recording stopped by itself (see above)");
    }
    // The files: every manifest says stopped once the writer has closed the tracks.
    let deadline = Instant::now() + RECORD_FILES_TIMEOUT;
    let manifests = loop {
        let manifests = recordings_in(dir);
        let settled = manifests
            .iter()
            .all(|m| m.state != huddle_record::RecordingState::Recording && m.tracks.iter().all(|t| t.end.is_some()));
        if (settled && !manifests.is_empty()) || Instant::now() >= deadline {
            run.files_final = settled && !manifests.is_empty();
            break manifests;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !run.files_final {
        eprintln!("warning: not every recording's manifest said it stopped within {RECORD_FILES_TIMEOUT:?}");
    }
    let plan_audio = if args.audio { 1000.0 / sfu_peer::AUDIO_INTERVAL.as_millis() as f64 } else { 0.0 };
    let (publishers, _) = args.counts();
    let per_s = (plan_audio + args.fps) * (publishers * rooms) as f64;
    run.recordings = manifests.len();
    for m in &manifests {
        let ms = m.duration_ms();
        run.recorded_ms += ms;
        run.expected_frames += per_s * ms as f64 / 1000.0;
        run.recorded_frames += m.tracks.iter().map(|t| t.frames).sum::<u64>();
        run.tracks += m.tracks.len();
    }
    run.recorded_bytes = crate::tempdir::dir_bytes(dir);
    run.writer_dropped = metrics_text(server.port).and_then(|text| {
        let values: Vec<u64> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(name, _)| {
                let family = name.split('{').next().unwrap_or(name);
                family.contains("record") && family.contains("drop")
            })
            .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    });
    eprintln!(
        "recorded: {} recording(s), {} tracks, {:.1} s, {} frames ({:.1} % of those sent), {:.1} MB",
        run.recordings,
        run.tracks,
        run.recorded_ms as f64 / 1000.0,
        run.recorded_frames,
        run.recorded_frames as f64 / run.expected_frames.max(1.0) * 100.0,
        run.recorded_bytes as f64 / 1e6
    );
    Ok(run)
}

/// The manifests of the recordings in `dir` (one directory each); unreadable ones are skipped.
fn recordings_in(dir: &Path) -> Vec<huddle_record::Manifest> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> =
        entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect();
    dirs.sort();
    dirs.iter().filter_map(|d| huddle_record::Manifest::load(d).ok()).collect()
}

impl RecordRun {
    /// The `recording` object of the report: server CPU per forwarded packet recording against
    /// not recording, over all windows of each kind, and per round.
    fn summary(&self, windows: &[Window], live: &Live, lat: &[Vec<u32>], args: &SfuArgs) -> Value {
        struct Side {
            cpu_s: f64,
            forwarded: u64,
            secs: f64,
            expected: u64,
            received: u64,
            lat: Vec<u32>,
            disturbed: usize,
        }
        let side = |idx: &[usize]| {
            let mut s =
                Side { cpu_s: 0.0, forwarded: 0, secs: 0.0, expected: 0, received: 0, lat: Vec::new(), disturbed: 0 };
            for &i in idx {
                let w = &windows[i];
                s.cpu_s += w.b.server_cpu - w.a.server_cpu;
                s.forwarded += w.forwarded();
                s.secs += w.secs();
                s.expected += live.windows[w.index].expected.load(Relaxed);
                s.received += live.windows[w.index].received.load(Relaxed);
                s.lat.extend_from_slice(&lat[w.index]);
                s.disturbed += usize::from(w.disturbed);
            }
            s.lat.sort_unstable();
            s
        };
        let (rec, base) = (side(&self.rec), side(&self.base));
        let us = |s: &Side| s.cpu_s * 1e6 / s.forwarded.max(1) as f64;
        let loss = |s: &Side| {
            if s.expected == 0 {
                f64::NAN
            } else {
                s.expected.saturating_sub(s.received) as f64 / s.expected as f64 * 100.0
            }
        };
        let overhead = us(&rec) / us(&base) - 1.0;
        let rounds: Vec<Value> = self
            .base
            .iter()
            .zip(&self.rec)
            .map(|(&b, &r)| {
                let (b, r) = (&windows[b], &windows[r]);
                json!({
                    "base_window": b.index,
                    "rec_window": r.index,
                    "base_server_cpu_us_per_fwd": r3(b.server_us_per_packet()),
                    "server_cpu_us_per_fwd": r3(r.server_us_per_packet()),
                    "overhead": r3(r.server_us_per_packet() / b.server_us_per_packet() - 1.0),
                    "disturbed": b.disturbed || r.disturbed,
                })
            })
            .collect();
        json!({
            "server_cpu_us_per_fwd": r3(us(&rec)),
            "base_server_cpu_us_per_fwd": r3(us(&base)),
            "overhead": r3(overhead),
            "target_overhead": 0.2,
            "met": overhead <= 0.2,
            "rounds": rounds,
            "server_cpu_pct": r3(rec.cpu_s / rec.secs * 100.0),
            "base_server_cpu_pct": r3(base.cpu_s / base.secs * 100.0),
            "forwarded_pps": r3(rec.forwarded as f64 / rec.secs),
            "base_forwarded_pps": r3(base.forwarded as f64 / base.secs),
            "loss_pct": r3(loss(&rec)),
            "base_loss_pct": r3(loss(&base)),
            "p50_ms": r3(pct(&rec.lat, 0.5)),
            "base_p50_ms": r3(pct(&base.lat, 0.5)),
            "p99_ms": r3(pct(&rec.lat, 0.99)),
            "base_p99_ms": r3(pct(&base.lat, 0.99)),
            "disturbed_windows": rec.disturbed + base.disturbed,
            "recordings": self.recordings,
            "tracks": self.tracks,
            "recorded_s": r3(self.recorded_ms as f64 / 1000.0),
            "recorded_bytes": self.recorded_bytes,
            "recorded_kbit_per_s": r3(self.recorded_bytes as f64 * 8.0 / 1000.0 / (self.recorded_ms as f64 / 1000.0).max(1e-9)),
            "recorded_frames": self.recorded_frames,
            "expected_frames": self.expected_frames.round(),
            "recorded_share": r3(self.recorded_frames as f64 / self.expected_frames.max(1.0)),
            "files_final": self.files_final,
            "writer_dropped": self.writer_dropped,
            "record_rounds": args.record_rounds,
        })
    }
}

fn make_plan(args: &SfuArgs, port: u16) -> Plan {
    let (publishers, subscribers) = args.counts();
    let layer = |rid: Option<&str>, share: f64| {
        let kbps = args.video_kbps * share;
        Layer { rid: rid.map(str::to_string), kbps, frame_bytes: (kbps * 1000.0 / 8.0 / args.fps).round() as usize }
    };
    let layers: Vec<Layer> = if args.simulcast {
        SIMULCAST.iter().map(|(rid, share)| layer(Some(rid), *share)).collect()
    } else {
        vec![layer(None, 1.0)]
    };
    // As the core chooses (huddle_sfu::track::TrackIn::layer_for).
    let n = layers.len();
    let wanted_layer = match args.quality {
        Quality::Low => 0,
        Quality::Medium => ((n - 1) / 2 + usize::from(n == 2)).min(n - 1),
        Quality::High => n - 1,
    };
    Plan {
        epoch: Instant::now(),
        port,
        room: "bench-sfu".to_string(),
        room_index: 0,
        rooms: args.rooms,
        publishers,
        subscribers,
        audio: args.audio,
        audio_bytes: 80,
        layers,
        wanted_layer,
        quality: match args.quality {
            Quality::Low => VideoQuality::Low,
            Quality::Medium => VideoQuality::Medium,
            Quality::High => VideoQuality::High,
        },
        frame_interval: Duration::from_secs_f64(1.0 / args.fps),
        keyframe_interval: Duration::from_secs_f64(args.keyframe_secs),
        connect_timeout: Duration::from_secs_f64(args.connect_timeout_secs),
    }
}

/// Readings at one instant.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    server_cpu: f64,
    self_cpu: f64,
    machine_busy: f64,
    forwarded: u64,
    forwarded_bytes: u64,
    published: u64,
    /// Datagrams dropped by the kernel for want of receive-buffer room: on the SFUs' sockets,
    /// and on all UDP sockets (the participants' are the others).
    server_drops: u64,
    all_drops: u64,
}

fn sample(pid: u32, live: &Live) -> anyhow::Result<Sample> {
    let drops = procfs::udp_drops_by_port()?;
    let sfu_ports = live.sfu_ports();
    Ok(Sample {
        server_drops: drops.iter().filter(|(p, _)| sfu_ports.contains(p)).map(|(_, d)| d).sum(),
        all_drops: drops.iter().map(|(_, d)| d).sum(),
        at: Instant::now(),
        server_cpu: procfs::cpu_secs(Some(pid))?,
        self_cpu: procfs::cpu_secs(None)?,
        machine_busy: procfs::machine_busy_secs()?,
        forwarded: live.forwarded_rtp.load(Relaxed),
        forwarded_bytes: live.forwarded_bytes.load(Relaxed),
        published: live.published_rtp.load(Relaxed),
    })
}

/// One measured window.
struct Window {
    index: usize,
    mult: f64,
    a: Sample,
    b: Sample,
    /// Other processes used more than `--disturbed-cpu-pct` of the CPU meanwhile.
    disturbed: bool,
}

impl Window {
    fn secs(&self) -> f64 {
        (self.b.at - self.a.at).as_secs_f64()
    }
    fn forwarded(&self) -> u64 {
        self.b.forwarded - self.a.forwarded
    }
    fn forwarded_pps(&self) -> f64 {
        self.forwarded() as f64 / self.secs()
    }
    fn server_cpu_pct(&self) -> f64 {
        (self.b.server_cpu - self.a.server_cpu) / self.secs() * 100.0
    }
    fn loadgen_cpu_pct(&self) -> f64 {
        (self.b.self_cpu - self.a.self_cpu) / self.secs() * 100.0
    }
    fn other_cpu_pct(&self) -> f64 {
        let all = (self.b.machine_busy - self.a.machine_busy) / self.secs() * 100.0;
        (all - self.server_cpu_pct() - self.loadgen_cpu_pct()).max(0.0)
    }
    fn server_us_per_packet(&self) -> f64 {
        (self.b.server_cpu - self.a.server_cpu) * 1e6 / self.forwarded() as f64
    }
    fn server_drops(&self) -> u64 {
        self.b.server_drops.saturating_sub(self.a.server_drops)
    }
    fn participant_drops(&self) -> u64 {
        self.b.all_drops.saturating_sub(self.a.all_drops).saturating_sub(self.server_drops())
    }
    fn loss_pct(&self, live: &Live) -> f64 {
        let c = &live.windows[self.index];
        let (e, r) = (c.expected.load(Relaxed), c.received.load(Relaxed));
        if e == 0 {
            return f64::NAN;
        }
        (e.saturating_sub(r)) as f64 / e as f64 * 100.0
    }
    fn report(&self, live: &Live, lat: &[u32], fps: f64) -> Value {
        let c = &live.windows[self.index];
        json!({
            "window": self.index,
            "disturbed": self.disturbed,
            "mult": self.mult,
            "fps": r3(fps * self.mult),
            "seconds": r3(self.secs()),
            "forwarded_pps": r3(self.forwarded_pps()),
            "published_pps": r3((self.b.published - self.a.published) as f64 / self.secs()),
            "loss_pct": r3(self.loss_pct(live)),
            "frames_expected": c.expected.load(Relaxed),
            "frames_received": c.received.load(Relaxed),
            "p50_ms": r3(pct(lat, 0.50)),
            "p99_ms": r3(pct(lat, 0.99)),
            "server_cpu_pct": r3(self.server_cpu_pct()),
            "server_cpu_us_per_packet": r3(self.server_us_per_packet()),
            "loadgen_cpu_pct": r3(self.loadgen_cpu_pct()),
            "other_cpu_pct": r3(self.other_cpu_pct()),
            "server_socket_drops": self.server_drops(),
            "participant_socket_drops": self.participant_drops(),
        })
    }
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Percentile of sorted µs values, in ms.
fn pct(v: &[u32], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((q * v.len() as f64) as usize).min(v.len() - 1);
    v[i] as f64 / 1000.0
}

/// Waits until `done` holds or `deadline` passes (or every task ended); false on the latter.
async fn wait_for(deadline: Instant, tasks: &[JoinHandle<PeerResult>], done: impl Fn() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline || tasks.iter().all(|t| t.is_finished()) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Measures one window of `secs` at `mult` times the configured frame rate.
async fn measure_window(
    index: usize,
    mult: f64,
    secs: f64,
    fps: f64,
    pid: u32,
    live: &Live,
    server: &mut ServerProcess,
) -> anyhow::Result<Window> {
    live.set_mult(mult);
    live.window.store(index as u8, Relaxed);
    let a = sample(pid, live)?;
    let end = a.at + Duration::from_secs_f64(secs);
    let mut prev = a;
    eprintln!("window {index}: video at {:.0} fps for {secs:.1} s", fps * mult);
    loop {
        let next = (prev.at + Duration::from_secs(1)).min(end);
        tokio::time::sleep_until(next.into()).await;
        let s = sample(pid, live)?;
        let w = Window { index, mult, a: prev, b: s, disturbed: false };
        eprintln!(
            "  {:>5.1}s forwarded {:>7.0} pkt/s, published {:>6.0} pkt/s, CPU: server {:>3.0}%, load generator {:>3.0}%, others {:>3.0}%",
            (s.at - a.at).as_secs_f64(),
            w.forwarded_pps(),
            (s.published - prev.published) as f64 / w.secs(),
            w.server_cpu_pct(),
            w.loadgen_cpu_pct(),
            w.other_cpu_pct()
        );
        prev = s;
        if !server.alive() {
            bail!("the server process exited during the measurement");
        }
        if s.at >= end {
            break;
        }
    }
    live.window.store(0, Relaxed);
    let w = Window { index, mult, a, b: prev, disturbed: false };
    tokio::time::sleep(SETTLE).await;
    eprintln!(
        "window {index}: {:.0} pkt/s forwarded, loss {:.3}%, server {:.2} µs CPU per forwarded packet, \
         datagrams dropped by full socket buffers: {} at the SFU, {} at participants",
        w.forwarded_pps(),
        w.loss_pct(live),
        w.server_us_per_packet(),
        w.server_drops(),
        w.participant_drops()
    );
    Ok(w)
}

async fn drive(
    args: &SfuArgs,
    plans: &[Arc<Plan>],
    live: &Arc<Live>,
    server: &mut ServerProcess,
    workers: &Workers,
    rec_dir: Option<&Path>,
) -> anyhow::Result<Value> {
    let pid = server.pid();
    let plan = &plans[0];
    let rooms = plans.len();
    // In each room, and in all.
    let (room_np, room_ns) = (plan.publishers, plan.subscribers);
    let (np, ns) = (room_np * rooms, room_ns * rooms);
    let started = Instant::now();
    let deadline = started + plan.connect_timeout;
    let mut tasks: Vec<JoinHandle<PeerResult>> = Vec::new();
    let mut next_worker = 0usize;
    let mut spawn = |role: Role, room: usize, tasks: &mut Vec<JoinHandle<PeerResult>>| {
        let h = &workers.handles[next_worker % workers.handles.len()];
        next_worker += 1;
        tasks.push(h.spawn(sfu_peer::run(role, plans[room].clone(), live.clone())));
    };
    let in_rooms = |n: usize, all: usize| {
        if rooms == 1 {
            format!("{n}")
        } else {
            format!("{n} (in each of {rooms} rooms: {all} in all)")
        }
    };

    // Publishers first, all connected, then the subscribers in batches.
    eprintln!("joining {} publishers", in_rooms(room_np, np));
    for room in 0..rooms {
        for i in 0..room_np {
            spawn(Role::Publisher(i), room, &mut tasks);
        }
    }
    if !wait_for(deadline, &tasks, || live.connected.load(Relaxed) >= np).await {
        bail!(
            "only {} of {np} publishers connected to the SFU ({} failed)",
            live.connected.load(Relaxed),
            live.failed.load(Relaxed)
        );
    }
    eprintln!("joining {} subscribers", in_rooms(room_ns, ns));
    let mut spawned = 0;
    for j in 0..room_ns {
        for room in 0..rooms {
            spawn(Role::Subscriber(j), room, &mut tasks);
            spawned += 1;
            if spawned % JOIN_BATCH == 0 || spawned == ns {
                let want = np + spawned;
                if !wait_for(deadline, &tasks, || live.connected.load(Relaxed) >= want).await {
                    bail!(
                        "only {} of {} participants connected to the SFU ({} failed)",
                        live.connected.load(Relaxed),
                        want,
                        live.failed.load(Relaxed)
                    );
                }
            }
        }
    }
    // Until everyone receives every publisher (with the bandwidth estimate, receivers climb to
    // the top layer as str0m probes: seconds, longer when the machine is short of CPU), with the
    // CPU every 5 s: the participants' work is on the load generator, which N rooms multiply.
    let mut before = sample(pid, live)?;
    loop {
        let next = (Instant::now() + PROGRESS).min(deadline);
        if wait_for(next, &tasks, || live.ready.load(Relaxed) >= np + ns).await {
            break;
        }
        let now = sample(pid, live)?;
        let w = Window { index: 0, mult: 1.0, a: before, b: now, disturbed: false };
        before = now;
        let (server_pct, loadgen_pct, other_pct) = (w.server_cpu_pct(), w.loadgen_cpu_pct(), w.other_cpu_pct());
        let cpu = format!("CPU: server {server_pct:.0}%, load generator {loadgen_pct:.0}%, others {other_pct:.0}%");
        if Instant::now() >= deadline || tasks.iter().all(|t| t.is_finished()) {
            let busy = server_pct + loadgen_pct + other_pct;
            let short = busy >= 90.0 * procfs::cpus() as f64
                || loadgen_pct >= 90.0 * args.loadgen_threads.min(procfs::cpus()) as f64;
            bail!(
                "only {} of {} participants receive every publisher ({} failed); {cpu}{}",
                live.ready.load(Relaxed),
                np + ns,
                live.failed.load(Relaxed),
                if short {
                    " — out of CPU: the bandwidth estimate keeps some receivers below the layer they ask for; \
                     try fewer participants (--publishers, --subscribers, --rooms)"
                } else {
                    ""
                }
            );
        }
        eprintln!("  {} of {} participants receive every publisher; {cpu}", live.ready.load(Relaxed), np + ns);
    }
    let mut other = live.other_layer_frames_any.load(Relaxed);
    let mut steady_since = Instant::now();
    while steady_since.elapsed() < LAYERS_STEADY {
        if Instant::now() >= deadline {
            bail!("participants still receive layers they did not ask for ({other} frames so far)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = live.other_layer_frames_any.load(Relaxed);
        if now != other {
            other = now;
            steady_since = Instant::now();
        }
    }
    let connect_s = started.elapsed().as_secs_f64() - LAYERS_STEADY.as_secs_f64();
    eprintln!(
        "all {} participants receive every publisher in the layer they asked for after {connect_s:.1} s; warming up",
        np + ns
    );
    // Where the rooms are, as the server counts them.
    let worker_rooms = worker_metrics(server.port).map(|each| each.iter().map(|(r, _)| *r).collect::<Vec<_>>());
    if rooms > 1 {
        if let Some(w) = &worker_rooms {
            eprintln!("rooms per worker: {w:?}");
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_secs)).await;
    let rss_idle = procfs::rss_kb(pid)?;

    let mut windows: Vec<Window> = Vec::new();
    let mut saturation_reached = false;
    let mut main_at: Option<usize> = None;
    let mut index = 0;
    // With --record: the windows alternate between recording and not; no saturation steps.
    let mut record_run: Option<RecordRun> = None;
    if let Some(dir) = rec_dir {
        let run = record_windows(args, rooms, pid, live, server, dir, &mut windows).await?;
        main_at = run.base.first().copied();
        record_run = Some(run);
    }
    let mults: Vec<f64> = if record_run.is_some() {
        Vec::new()
    } else {
        std::iter::once(1.0).chain(if args.saturate { STEPS.to_vec() } else { Vec::new() }).collect()
    };
    'steps: for (k, &mult) in mults.iter().enumerate() {
        for attempt in 0..=MAX_RETRIES {
            if index >= MAX_WINDOWS {
                break 'steps;
            }
            index += 1;
            let secs = if k == 0 { args.seconds } else { args.step_secs };
            let mut w = measure_window(index, mult, secs, args.fps, pid, live, server).await?;
            let loss = w.loss_pct(live);
            let other = w.other_cpu_pct();
            w.disturbed = other > args.disturbed_cpu_pct;
            windows.push(w);
            if windows[windows.len() - 1].disturbed {
                if attempt < MAX_RETRIES {
                    eprintln!("window {index}: other processes used {other:.0}% CPU meanwhile; measuring again");
                    // Let what piled up meanwhile drain first, at the base rate.
                    live.set_mult(1.0);
                    tokio::time::sleep(RECOVER).await;
                    continue;
                }
                if k > 0 {
                    eprintln!("window {index}: still disturbed by other processes; the saturation search stops here");
                    break 'steps;
                }
            }
            let w = &windows[windows.len() - 1];
            if k == 0 {
                main_at = Some(windows.len() - 1);
                break;
            }
            let before = windows[..windows.len() - 1].iter().rev().find(|p| !p.disturbed);
            let grew = before.is_none_or(|p| w.forwarded_pps() > p.forwarded_pps() * 1.02);
            if loss > args.saturation_loss_pct || !grew {
                saturation_reached = true;
                break 'steps;
            }
            break;
        }
    }
    live.sending.store(false, Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_final = procfs::rss_kb(pid)?;
    let worker_forwarded = worker_metrics(server.port).map(|each| each.iter().map(|(_, f)| *f).collect::<Vec<_>>());
    live.stop.store(true, Relaxed);

    let mut lat: Vec<Vec<u32>> = vec![Vec::new(); MAX_WINDOWS + 1];
    let mut audio_lat: Vec<Vec<u32>> = vec![Vec::new(); MAX_WINDOWS + 1];
    let collect = async {
        for t in tasks {
            if let Ok(r) = t.await {
                for (w, l) in r.latencies.into_iter().enumerate() {
                    lat[w].extend_from_slice(&l);
                }
                for (w, l) in r.audio_latencies.into_iter().enumerate() {
                    audio_lat[w].extend_from_slice(&l);
                }
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), collect).await.is_err() {
        eprintln!("warning: some participants did not stop within 5 s; their latencies are left out");
    }
    for l in lat.iter_mut().chain(audio_lat.iter_mut()) {
        l.sort_unstable();
    }

    let main = &windows[main_at.unwrap_or(0)];
    let main_lat = &lat[main.index];
    let loadgen_cores = args.loadgen_threads.min(procfs::cpus()) as f64;
    if main.loadgen_cpu_pct() >= 90.0 * loadgen_cores {
        eprintln!(
            "warning: the load generator used {:.0}% CPU in the measured window ({} threads): it, not the server, \
             may be the limit (see late_frames, p50_ms); fewer participants or more --loadgen-threads",
            main.loadgen_cpu_pct(),
            args.loadgen_threads
        );
    }
    // Saturation: the most forwarded among the windows whose loss stayed within the threshold.
    // Windows disturbed by other processes only count when every window was.
    let all_disturbed = windows.iter().all(|w| w.disturbed);
    let clean = windows.iter().filter(|w| {
        w.loss_pct(live) <= args.saturation_loss_pct
            && pct(&lat[w.index], 0.99) <= args.saturation_p99_ms
            && (all_disturbed || !w.disturbed)
    });
    let best = clean.max_by(|a, b| a.forwarded_pps().total_cmp(&b.forwarded_pps()));
    let saturation_pps = best.map_or(f64::NAN, |w| w.forwarded_pps());
    let steps: Vec<Value> = windows.iter().map(|w| w.report(live, &lat[w.index], args.fps)).collect();
    let fwd = main.forwarded();
    let fwd_bytes = main.b.forwarded_bytes - main.a.forwarded_bytes;
    let mut report = json!({
        "bench": "sfu",
        "publishers": np,
        "subscribers": ns,
        "receivers_per_publisher": room_np - 1 + room_ns,
        "failed": live.failed.load(Relaxed),
        "audio": plan.audio,
        "simulcast": plan.layers.iter().filter_map(|l| l.rid.clone()).collect::<Vec<_>>(),
        "layer_kbps": plan.layers.iter().map(|l| r3(l.kbps)).collect::<Vec<_>>(),
        "layer_frame_bytes": plan.layers.iter().map(|l| l.frame_bytes).collect::<Vec<_>>(),
        "received_layer": plan.layers[plan.wanted_layer].rid.clone(),
        "fps": args.fps,
        "seconds": r3(main.secs()),
        "forwarded_pps": r3(main.forwarded_pps()),
        "forwarded_packets": fwd,
        "forwarded_packet_bytes": r3(fwd_bytes as f64 / fwd.max(1) as f64),
        "forwarded_mbps": r3(fwd_bytes as f64 * 8.0 / 1e6 / main.secs()),
        "published_pps": r3((main.b.published - main.a.published) as f64 / main.secs()),
        "server_cpu_us_per_packet": r3(main.server_us_per_packet()),
        "server_cpu_pct": r3(main.server_cpu_pct()),
        "loadgen_cpu_pct": r3(main.loadgen_cpu_pct()),
        "other_cpu_pct": r3(main.other_cpu_pct()),
        "loss_pct": r3(main.loss_pct(live)),
        "frames_expected": live.windows[main.index].expected.load(Relaxed),
        "frames_received": live.windows[main.index].received.load(Relaxed),
        "p50_ms": r3(pct(main_lat, 0.50)),
        "p90_ms": r3(pct(main_lat, 0.90)),
        "p99_ms": r3(pct(main_lat, 0.99)),
        "max_ms": r3(main_lat.last().map_or(f64::NAN, |&l| l as f64 / 1000.0)),
        "audio_p50_ms": r3(pct(&audio_lat[main.index], 0.50)),
        "audio_p99_ms": r3(pct(&audio_lat[main.index], 0.99)),
        "saturation_forwarded_pps": r3(saturation_pps),
        "saturation_reached": saturation_reached,
        "windows": steps,
        "other_layer_frames": live.other_layer_frames.load(Relaxed),
        "repeated_frames": live.repeated_frames.load(Relaxed),
        "out_of_order_frames": live.out_of_order_frames.load(Relaxed),
        "unparsed_frames": live.unparsed_frames.load(Relaxed),
        "late_frames": live.late_frames.load(Relaxed),
        "server_socket_drops": main.server_drops(),
        "participant_socket_drops": main.participant_drops(),
        "send_dropped": live.send_dropped.load(Relaxed),
        "errors": live.errors.load(Relaxed),
        "restarts": live.restarts.load(Relaxed),
        "server_rss_idle_kb": rss_idle,
        "server_rss_kb": rss_final,
        "cpus": procfs::cpus(),
        "pinned": args.pin && procfs::cpus() >= 2,
        "loadgen_threads": args.loadgen_threads,
        "connect_s": r3(connect_s),
    });
    // Added here: one more field in the literal above passes the macro's recursion limit.
    report["worker_rooms"] = json!(worker_rooms);
    report["worker_forwarded_packets"] = json!(worker_forwarded);
    if let Some(run) = &record_run {
        for &i in &run.rec {
            report["windows"][i]["recording"] = json!(true);
        }
        for &i in &run.base {
            report["windows"][i]["recording"] = json!(false);
        }
        report["recording"] = run.summary(&windows, live, &lat, args);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn rooms_spread_over_the_workers() {
        assert_eq!(room_names(1, 4), ["bench-sfu"]);
        for workers in 1..=8 {
            for rooms in 2..=20 {
                let names = room_names(rooms, workers);
                assert_eq!(names.len(), rooms);
                for (i, name) in names.iter().enumerate() {
                    assert_eq!(huddle_server::workers::worker_of_room(name, workers), i % workers, "{name}");
                    assert!(!names[..i].contains(name), "{name} twice");
                }
            }
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sfu: SfuArgs,
    }

    #[test]
    fn the_servers_workers_are_read_from_its_arguments() {
        let args = |a: &[&str]| Cli::parse_from(std::iter::once("sfu").chain(a.iter().copied())).sfu;
        assert_eq!(args(&["--server-arg=--workers=3"]).expected_workers(false), 3);
        assert_eq!(args(&["--server-arg=--workers", "--server-arg=5"]).expected_workers(true), 5);
        assert_eq!(args(&["--server-arg=--workers=1000"]).expected_workers(false), huddle_server::workers::MAX_WORKERS);
        if std::env::var_os("HUDDLE_WORKERS").is_none() {
            assert_eq!(args(&[]).expected_workers(true), SERVER_CPUS.len());
            assert_eq!(args(&[]).expected_workers(false), procfs::cpus().min(huddle_server::workers::MAX_WORKERS));
        }
        assert!(args(&["--rooms", "0"]).check().is_err());
        assert!(args(&["--rooms", "251"]).check().is_err());
        assert!(args(&["--rooms", "4"]).check().is_ok());
    }
}
