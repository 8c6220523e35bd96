//! `huddle-bench sfu-core`: the SFU core driven in-process, without sockets, one core per thread:
//! a figure of forwarding cost that does not depend on a load generator sharing the machine's
//! cores (issue 17).
//!
//! Each thread owns one [`huddle_sfu::Sfu`] and its own participants, and nothing is shared
//! between threads — the shape of a worker per core. The participants are real str0m `Rtc`
//! clients (as in the SFU's test harness): `--publishers` send audio and one video layer and
//! receive the other publishers, `--subscribers` only receive (the `sfu` benchmark's 10×10 room).
//! Their offers and answers go through the core as the signalling layer hands them over, and
//! datagrams travel between them and the core through two in-memory queues with a fixed one-way
//! delay, on a virtual clock: nothing sleeps, and `--seconds` of media take as long as the CPU
//! needs for them.
//!
//! What is timed is the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) spent inside the core —
//! `handle_input` and `poll_output` — apart from what the clients cost on the same thread (their
//! SRTP, packetising and depacketising: overhead, reported separately). The core counts the
//! packets it forwards to subscribers ([`huddle_sfu::Sfu::forwarded`]). Runs for every core count
//! given (`--cores 1,2`), one after another, the threads of a run measuring at the same time, and
//! prints one JSON line: forwarded packets per second in all (wall time), per second of core CPU,
//! and how far N cores are from N times one (`scaling`, 1.0 = perfectly even).

use crate::procfs::{round, thread_cpu_secs};
use anyhow::{anyhow, bail, Context};
use huddle_sfu::str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use huddle_sfu::str0m::format::Codec;
use huddle_sfu::str0m::media::{Direction, MediaKind, MediaTime, Mid, Pt};
use huddle_sfu::str0m::net::{Protocol, Receive};
use huddle_sfu::str0m::{Candidate, Event as RtcEvent, Input as RtcInput, Output as RtcOutput, Rtc};
use huddle_sfu::{Event, Input, Output, PeerId, Sfu, Signal, Transport};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// The core's one address.
const CORE_ADDR: &str = "10.0.0.1:3478";
/// One-way delay of every datagram, both ways.
const LATENCY: Duration = Duration::from_millis(5);
/// The clock advances at least this much per step.
const MIN_STEP: Duration = Duration::from_millis(1);
/// The core's deadlines are served at most this often, as the server's driver does.
const TIMER_TICK: Duration = huddle_server::media::TIMER_TICK;
/// Participants join this far apart (virtual time).
const JOIN_GAP: Duration = Duration::from_millis(20);
/// Longest virtual time from the first join until everyone receives every publisher.
const READY_LIMIT: Duration = Duration::from_secs(20);
/// Bytes of an audio frame, one every [`AUDIO_INTERVAL`] (as the `sfu` benchmark's).
const AUDIO_BYTES: usize = 80;
const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// Opus TOC byte: CELT-only, fullband, 20 ms, one frame.
const OPUS_TOC: u8 = 0xf8;
/// The start of a VP8 key frame (frame tag with the key-frame bit clear, start code, 320×240);
/// delta frames set the bit. The core reads only that bit.
const VP8_PREFIX: [u8; 10] = [0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00];

#[derive(clap::Args, Debug)]
pub struct SfuCoreArgs {
    /// Participants per core that publish audio and video (and receive the other publishers).
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    /// Receive-only participants per core.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Simulated seconds of media measured per run (after everyone receives and the warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Simulated seconds between everyone receiving and the measurement.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Video bitrate per publisher (one layer), kbit/s.
    #[arg(long, default_value_t = 1500.0)]
    video_kbps: f64,
    /// Video frames per second.
    #[arg(long, default_value_t = 30.0)]
    fps: f64,
    /// Publishers also send audio: an 80-byte frame every 20 ms.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    audio: bool,
    /// Seconds between periodic keyframes (besides those the core asks for).
    #[arg(long, default_value_t = 3.0)]
    keyframe_secs: f64,
    /// The core's bandwidth estimation (and with it str0m's pacer) for every subscriber.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    bwe: bool,
    /// Core counts to run, each core on a thread of its own with its own participants and
    /// nothing shared (comma-separated). More cores than CPUs measure the scheduler, not huddle.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    cores: Vec<usize>,
    /// Longest wall time for one run (setting up and measuring), in seconds: a measurement that
    /// would take longer stops there and reports the simulated time it did.
    #[arg(long, default_value_t = 30)]
    max_seconds: u64,
    /// After the measurement, record the room (issue 18: every track turned into whole frames
    /// in the core) and measure as long again on the same participants: the cost of recording
    /// per forwarded packet, against the run just before it.
    #[arg(long)]
    record: bool,
}

/// What every thread of a run does.
#[derive(Debug, Clone, Copy)]
struct Plan {
    publishers: usize,
    subscribers: usize,
    measure: Duration,
    warmup: Duration,
    frame_interval: Duration,
    frame_bytes: usize,
    audio: bool,
    keyframe_interval: Duration,
    bwe: bool,
    record: bool,
}

/// Where the core's CPU time goes, by call.
const DATAGRAMS: usize = 0;
const TIMEOUTS: usize = 1;
const DRAIN: usize = 2;
const SIGNALLING: usize = 3;
const BUCKETS: [&str; 4] = ["datagrams", "timeouts", "drain", "signalling"];

/// What one core did during its measurement.
#[derive(Debug, Default)]
struct CoreRun {
    forwarded: u64,
    forwarded_bytes: u64,
    sim_s: f64,
    wall_s: f64,
    thread_cpu_s: f64,
    core_cpu_s: [f64; 4],
    expected: u64,
    received: u64,
    removed: u64,
    setup_wall_s: f64,
    /// With `--record`: the same measurement again while the room records, then once more
    /// after it stopped (the machine's drift shows between the first and the last).
    recording: Option<Box<(CoreRun, CoreRun)>>,
    /// Frames and bytes the recording produced.
    recorded_frames: u64,
    recorded_bytes: u64,
}

impl CoreRun {
    fn core_cpu(&self) -> f64 {
        self.core_cpu_s.iter().sum()
    }
}

pub fn run(args: SfuCoreArgs) -> anyhow::Result<()> {
    if args.cores.is_empty() || args.cores.contains(&0) {
        bail!("--cores needs core counts of at least 1");
    }
    if args.publishers == 0 || args.publishers + args.subscribers < 2 {
        bail!("--publishers must be at least 1, with at least 2 participants in all");
    }
    if !(args.seconds > 0.0 && args.warmup_secs >= 0.0 && args.fps > 0.0 && args.video_kbps > 0.0) {
        bail!("--seconds, --fps and --video-kbps must be positive, --warmup-secs not negative");
    }
    let plan = Plan {
        publishers: args.publishers,
        subscribers: args.subscribers,
        measure: Duration::from_secs_f64(args.seconds),
        warmup: Duration::from_secs_f64(args.warmup_secs),
        frame_interval: Duration::from_secs_f64(1.0 / args.fps),
        frame_bytes: (args.video_kbps * 1000.0 / 8.0 / args.fps).round().max(40.0) as usize,
        audio: args.audio,
        keyframe_interval: Duration::from_secs_f64(args.keyframe_secs.max(0.1)),
        bwe: args.bwe,
        record: args.record,
    };
    let cpus = crate::procfs::cpus();
    let mut runs = Vec::new();
    let mut one = None;
    for &cores in &args.cores {
        eprintln!(
            "{cores} core(s), each with {} publishers and {} subscribers, {} s of media",
            plan.publishers, plan.subscribers, args.seconds
        );
        let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
        let barrier = Arc::new(Barrier::new(cores));
        let threads: Vec<_> = (0..cores)
            .map(|c| {
                let barrier = barrier.clone();
                std::thread::Builder::new()
                    .name(format!("sfu-core-{c}"))
                    .spawn(move || one_core(plan, &barrier, deadline))
                    .context("starting a core thread")
            })
            .collect::<anyhow::Result<_>>()?;
        let mut done = Vec::new();
        for t in threads {
            done.push(t.join().map_err(|_| anyhow!("a core thread panicked"))??);
        }
        let forwarded: u64 = done.iter().map(|r| r.forwarded).sum();
        if forwarded == 0 {
            bail!("the core forwarded nothing");
        }
        let fwd = forwarded as f64;
        let wall = done.iter().map(|r| r.wall_s).fold(0.0, f64::max);
        let sim = done.iter().map(|r| r.sim_s).fold(f64::INFINITY, f64::min);
        let core_cpu: f64 = done.iter().map(CoreRun::core_cpu).sum();
        let thread_cpu: f64 = done.iter().map(|r| r.thread_cpu_s).sum();
        let total_rate = fwd / wall;
        let cpu_rate = fwd / core_cpu;
        let scaling = one.map(|(rate, _): (f64, f64)| total_rate / (cores as f64 * rate));
        let core_scaling = one.map(|(_, cpu_rate): (f64, f64)| fwd / core_cpu / cpu_rate);
        if cores == 1 {
            one = Some((total_rate, cpu_rate));
        }
        let split: serde_json::Map<String, serde_json::Value> = BUCKETS
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let s: f64 = done.iter().map(|r| r.core_cpu_s[i]).sum();
                (name.to_string(), json!(round(s / core_cpu, 3)))
            })
            .collect();
        let expected: u64 = done.iter().map(|r| r.expected).sum();
        let received: u64 = done.iter().map(|r| r.received).sum();
        let sim_total: f64 = done.iter().map(|r| r.sim_s).sum();
        runs.push(json!({
            "cores": cores,
            "sim_s": round(sim, 3),
            "wall_s": round(wall, 3),
            "setup_wall_s": round(done.iter().map(|r| r.setup_wall_s).fold(0.0, f64::max), 3),
            "forwarded": forwarded,
            "avg_payload_bytes": round(done.iter().map(|r| r.forwarded_bytes).sum::<u64>() as f64 / fwd, 0),
            "fwd_per_s": round(total_rate, 0),
            "fwd_per_core_cpu_s": round(cpu_rate, 0),
            "fwd_per_core_cpu_s_per_core": done.iter().map(|r| round(r.forwarded as f64 / r.core_cpu(), 0)).collect::<Vec<_>>(),
            "core_cpu_ns_per_fwd": round(core_cpu * 1e9 / fwd, 0),
            "client_cpu_ns_per_fwd": round((thread_cpu - core_cpu).max(0.0) * 1e9 / fwd, 0),
            "core_cpu_split": split,
            "rooms_per_core": round(sim_total / core_cpu, 2),
            "delivery": round(if expected == 0 { 0.0 } else { received as f64 / expected as f64 }, 4),
            "removed": done.iter().map(|r| r.removed).sum::<u64>(),
            "scaling": scaling.map(|s| round(s, 3)),
            "core_cpu_scaling": core_scaling.map(|s| round(s, 3)),
            "recording": recording_summary(&done),
        }));
    }
    let out = json!({
        "bench": "sfu-core",
        "cpus": cpus,
        "publishers_per_core": plan.publishers,
        "subscribers_per_core": plan.subscribers,
        "audio": plan.audio,
        "video_kbps": args.video_kbps,
        "fps": args.fps,
        "video_frame_bytes": plan.frame_bytes,
        "bwe": plan.bwe,
        "seconds": args.seconds,
        "warmup_secs": args.warmup_secs,
        "runs": runs,
    });
    println!("{out}");
    Ok(())
}

/// With `--record`: what the second measurement of each core (the room recording) cost per
/// forwarded packet, against the third (not recording, after it) and against the first and
/// third together.
fn recording_summary(done: &[CoreRun]) -> serde_json::Value {
    let recs: Vec<&CoreRun> = done.iter().filter_map(|r| r.recording.as_deref().map(|(rec, _)| rec)).collect();
    if recs.is_empty() {
        return serde_json::Value::Null;
    }
    let afters: Vec<&CoreRun> = done.iter().filter_map(|r| r.recording.as_deref().map(|(_, a)| a)).collect();
    let base_cpu: f64 =
        done.iter().map(CoreRun::core_cpu).sum::<f64>() + afters.iter().map(|r| r.core_cpu()).sum::<f64>();
    let base_fwd: u64 = done.iter().map(|r| r.forwarded).sum::<u64>() + afters.iter().map(|r| r.forwarded).sum::<u64>();
    let base_ns = base_cpu * 1e9 / base_fwd.max(1) as f64;
    let after_cpu: f64 = afters.iter().map(|r| r.core_cpu()).sum();
    let after_fwd: u64 = afters.iter().map(|r| r.forwarded).sum();
    let fwd: u64 = recs.iter().map(|r| r.forwarded).sum();
    let cpu: f64 = recs.iter().map(|r| r.core_cpu()).sum();
    let sim: f64 = recs.iter().map(|r| r.sim_s).sum();
    let frames: u64 = recs.iter().map(|r| r.recorded_frames).sum();
    let bytes: u64 = recs.iter().map(|r| r.recorded_bytes).sum();
    let ns = cpu * 1e9 / fwd.max(1) as f64;
    json!({
        "core_cpu_ns_per_fwd": round(ns, 0),
        "base_core_cpu_ns_per_fwd": round(base_ns, 0),
        "after_core_cpu_ns_per_fwd": round(after_cpu * 1e9 / after_fwd.max(1) as f64, 0),
        // Against the measurement after it: the first of a run also pays for the warm-up (a few
        // per cent more per packet, measured), the last is the steady state.
        "overhead": round(ns / (after_cpu * 1e9 / after_fwd.max(1) as f64) - 1.0, 3),
        "overhead_vs_both": round(ns / base_ns - 1.0, 3),
        "recorded_frames_per_s": round(frames as f64 / sim.max(1e-9), 0),
        "recorded_kbit_per_s": round(bytes as f64 * 8.0 / 1000.0 / sim.max(1e-9), 0),
        "forwarded": fwd,
    })
}

/// One core's thread: set up its room, wait for the other threads, measure.
fn one_core(plan: Plan, barrier: &Barrier, deadline: Instant) -> anyhow::Result<CoreRun> {
    let started = Instant::now();
    let world = World::new(plan).and_then(|mut w| w.set_up(deadline).map(|()| w));
    // Every thread reaches the barrier, set up or not, so that none waits forever.
    barrier.wait();
    let mut world = world?;
    let setup_wall_s = started.elapsed().as_secs_f64();
    let mut run = world.measure(deadline)?;
    run.setup_wall_s = setup_wall_s;
    if plan.record {
        let t = thread_cpu_secs();
        let input = Input::Record { now: world.now, room: "bench".into(), on: true };
        world.sfu.handle_input(input).map_err(|e| anyhow!("record: {e}"))?;
        world.core_cpu[SIGNALLING] += thread_cpu_secs() - t;
        // The keyframes asked for at the start arrive within a few frames: not measured.
        let settle = world.now + Duration::from_millis(500);
        while world.now < settle {
            world.step()?;
        }
        let (frames0, bytes0) = (world.recorded_frames, world.recorded_bytes);
        let mut rec = world.measure(deadline)?;
        if world.recorded_frames == frames0 {
            bail!("the recording produced no frames");
        }
        rec.recorded_frames = world.recorded_frames - frames0;
        rec.recorded_bytes = world.recorded_bytes - bytes0;
        let input = Input::Record { now: world.now, room: "bench".into(), on: false };
        world.sfu.handle_input(input).map_err(|e| anyhow!("stop recording: {e}"))?;
        let after = world.measure(deadline)?;
        run.recording = Some(Box::new((rec, after)));
    }
    Ok(run)
}

/// A browser stand-in.
struct Client {
    id: PeerId,
    rtc: Rtc,
    next_timeout: Instant,
    connected: bool,
    /// Index among the publishers, or `None` for a subscriber.
    publisher: Option<usize>,
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
    opus_pt: Option<Pt>,
    vp8_pt: Option<Pt>,
    pending: Option<SdpPendingOffer>,
    next_audio: Instant,
    next_video: Instant,
    last_key: Instant,
    force_key: bool,
    seq_audio: u32,
    seq_video: u32,
    /// The publisher (index) and kind of each incoming mid.
    incoming: HashMap<Mid, (usize, MediaKind)>,
    /// Per publisher: bit 0 audio, bit 1 video received.
    seen: Vec<u8>,
    frames_received: u64,
}

struct Datagram {
    at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// One core and its participants, on a virtual clock.
struct World {
    plan: Plan,
    start: Instant,
    now: Instant,
    sfu: Sfu,
    core_addr: SocketAddr,
    clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Datagrams under way, in order of arrival (the delay is the same for all).
    to_core: VecDeque<Datagram>,
    to_clients: VecDeque<Datagram>,
    outputs: Vec<Output>,
    /// The core's next [`Input::Timeout`] comes no sooner than this.
    next_tick: Instant,
    /// The core's CPU time so far, by [`BUCKETS`].
    core_cpu: [f64; 4],
    /// Frames the publishers wrote times the participants that should receive each.
    expected: u64,
    removed: u64,
    /// Whole frames the core's recording produced, and their bytes (a server writes them to
    /// files on another thread).
    recorded_frames: u64,
    recorded_bytes: u64,
}

impl World {
    fn new(plan: Plan) -> anyhow::Result<World> {
        let core_addr: SocketAddr = CORE_ADDR.parse().context("the core's address")?;
        let mut sfu = Sfu::with_addresses(vec![core_addr]);
        sfu.set_bandwidth_estimation(plan.bwe);
        let now = Instant::now();
        Ok(World {
            plan,
            start: now,
            now,
            sfu,
            core_addr,
            clients: Vec::new(),
            by_addr: HashMap::new(),
            to_core: VecDeque::new(),
            to_clients: VecDeque::new(),
            outputs: Vec::new(),
            next_tick: now,
            core_cpu: [0.0; 4],
            expected: 0,
            removed: 0,
            recorded_frames: 0,
            recorded_bytes: 0,
        })
    }

    /// Everyone joins (publishers first, `JOIN_GAP` apart), then the world runs until every
    /// participant receives audio and video from every publisher but itself, then the warm-up.
    fn set_up(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let total = self.plan.publishers + self.plan.subscribers;
        for n in 0..total {
            self.join(n)?;
            self.run_for(JOIN_GAP)?;
        }
        let limit = self.now + READY_LIMIT;
        let mut steps = 0u64;
        while !self.all_ready() {
            if self.now >= limit {
                let ready = self.clients.iter().filter(|c| self.ready(c)).count();
                bail!("after {READY_LIMIT:?} (simulated) only {ready} of {total} participants receive every publisher");
            }
            steps += 1;
            if steps.is_multiple_of(256) && Instant::now() > deadline {
                bail!("--max-seconds reached while participants were joining");
            }
            self.step()?;
        }
        self.run_for(self.plan.warmup)?;
        if self.removed > 0 {
            bail!("the core removed {} participant(s) while setting up", self.removed);
        }
        Ok(())
    }

    fn measure(&mut self, deadline: Instant) -> anyhow::Result<CoreRun> {
        let (fwd0, bytes0) = self.sfu.forwarded();
        let core0 = self.core_cpu;
        let received0: u64 = self.clients.iter().map(|c| c.frames_received).sum();
        let (expected0, removed0) = (self.expected, self.removed);
        let (sim0, wall0, cpu0) = (self.now, Instant::now(), thread_cpu_secs());
        let end = self.now + self.plan.measure;
        let mut steps = 0u64;
        while self.now < end {
            self.step()?;
            steps += 1;
            if steps.is_multiple_of(64) && Instant::now() > deadline {
                eprintln!("stopped after {:?} of simulated media: --max-seconds reached", self.now - sim0);
                break;
            }
        }
        let thread_cpu_s = thread_cpu_secs() - cpu0;
        let wall_s = wall0.elapsed().as_secs_f64();
        let (fwd1, bytes1) = self.sfu.forwarded();
        let received1: u64 = self.clients.iter().map(|c| c.frames_received).sum();
        let mut core_cpu_s = [0.0; 4];
        for (i, c) in core_cpu_s.iter_mut().enumerate() {
            *c = self.core_cpu[i] - core0[i];
        }
        Ok(CoreRun {
            forwarded: fwd1 - fwd0,
            forwarded_bytes: bytes1 - bytes0,
            sim_s: (self.now - sim0).as_secs_f64(),
            wall_s,
            thread_cpu_s,
            core_cpu_s,
            expected: self.expected - expected0,
            received: received1 - received0,
            removed: self.removed - removed0,
            setup_wall_s: 0.0,
            recording: None,
            recorded_frames: 0,
            recorded_bytes: 0,
        })
    }

    fn ready(&self, c: &Client) -> bool {
        let need = if self.plan.audio { 3 } else { 2 };
        (0..self.plan.publishers).filter(|p| Some(*p) != c.publisher).all(|p| c.seen[p] & need == need)
    }

    fn all_ready(&self) -> bool {
        self.clients.iter().all(|c| self.ready(c))
    }

    /// Participant `n` (publishers first) joins with its offer: audio and video to send for a
    /// publisher, a data channel only for a subscriber (as the `sfu` benchmark's).
    fn join(&mut self, n: usize) -> anyhow::Result<()> {
        let addr: SocketAddr = format!("10.1.{}.{}:5000", n / 250, n % 250 + 1).parse()?;
        let mut rtc = Rtc::builder().build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, Protocol::Udp).map_err(|e| anyhow!("candidate: {e}"))?);
        let publisher = (n < self.plan.publishers).then_some(n);
        let mut change = rtc.sdp_api();
        let (mut audio_mid, mut video_mid) = (None, None);
        if publisher.is_some() {
            if self.plan.audio {
                audio_mid = Some(change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
            }
            video_mid = Some(change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None));
        } else {
            change.add_channel("bench".into());
        }
        let (offer, pending) = change.apply().ok_or_else(|| anyhow!("str0m made no offer"))?;
        let id = PeerId(n as u64);
        self.by_addr.insert(addr, self.clients.len());
        self.clients.push(Client {
            id,
            rtc,
            next_timeout: self.now,
            connected: false,
            publisher,
            audio_mid,
            video_mid,
            opus_pt: None,
            vp8_pt: None,
            pending: Some(pending),
            next_audio: self.now,
            next_video: self.now,
            last_key: self.now,
            force_key: true,
            seq_audio: 0,
            seq_video: 0,
            incoming: HashMap::new(),
            seen: vec![0; self.plan.publishers],
            frames_received: 0,
        });
        let input = Input::Join { now: self.now, room: "bench".into(), peer: id, offer: offer.to_sdp_string().into() };
        let t = thread_cpu_secs();
        let joined = self.sfu.handle_input(input);
        self.core_cpu[SIGNALLING] += thread_cpu_secs() - t;
        joined.with_context(|| format!("{id} joins"))?;
        self.core_outputs()
    }

    fn run_for(&mut self, d: Duration) -> anyhow::Result<()> {
        let end = self.now + d;
        while self.now < end {
            self.step()?;
        }
        Ok(())
    }

    /// One step: the core takes the datagrams due and its timeout; the clients take theirs and
    /// write the frames due; then the clock moves to the next deadline (at least [`MIN_STEP`]).
    fn step(&mut self) -> anyhow::Result<()> {
        let now = self.now;
        if self.to_core.front().is_some_and(|d| d.at <= now) {
            let t = thread_cpu_secs();
            while let Some(d) = pop_due(&mut self.to_core, now) {
                let input = Input::Packet { now, proto: Transport::Udp, from: d.from, to: d.to, bytes: d.bytes };
                // Datagrams never fail (an unclaimed one is an event).
                let _ = self.sfu.handle_input(input);
            }
            self.core_cpu[DATAGRAMS] += thread_cpu_secs() - t;
            self.core_outputs()?;
        }
        if now >= self.next_tick && self.sfu.poll_timeout().is_some_and(|t| t <= now) {
            self.next_tick = now + TIMER_TICK;
            let t = thread_cpu_secs();
            let _ = self.sfu.handle_input(Input::Timeout(now));
            self.core_cpu[TIMEOUTS] += thread_cpu_secs() - t;
            self.core_outputs()?;
        }
        while let Some(d) = pop_due(&mut self.to_clients, now) {
            let Some(&i) = self.by_addr.get(&d.to) else { continue };
            let Ok(contents) = d.bytes.as_slice().try_into() else { continue };
            let receive = Receive { proto: Protocol::Udp, source: d.from, destination: d.to, contents };
            self.clients[i].rtc.handle_input(RtcInput::Receive(now, receive)).context("a client's datagram")?;
            self.drain_client(i)?;
        }
        for i in 0..self.clients.len() {
            if self.clients[i].next_timeout <= now {
                self.clients[i].rtc.handle_input(RtcInput::Timeout(now)).context("a client's timeout")?;
                self.drain_client(i)?;
            }
            self.write_frames(i)?;
        }
        let mut next = now + Duration::from_millis(20);
        if let Some(t) = self.sfu.poll_timeout() {
            next = next.min(t.max(self.next_tick));
        }
        for c in &self.clients {
            next = next.min(c.next_timeout);
            if c.connected && c.publisher.is_some() {
                next = next.min(c.next_video);
                if c.audio_mid.is_some() {
                    next = next.min(c.next_audio);
                }
            }
        }
        for q in [&self.to_core, &self.to_clients] {
            if let Some(d) = q.front() {
                next = next.min(d.at);
            }
        }
        self.now = next.max(now + MIN_STEP);
        Ok(())
    }

    /// Takes everything the core has to say (timed), then acts on it: datagrams go on their way,
    /// SDP goes to its client (whose answer goes back into the core).
    fn core_outputs(&mut self) -> anyhow::Result<()> {
        loop {
            let t = thread_cpu_secs();
            while let Some(out) = self.sfu.poll_output() {
                self.outputs.push(out);
            }
            self.core_cpu[DRAIN] += thread_cpu_secs() - t;
            if self.outputs.is_empty() {
                return Ok(());
            }
            let at = self.now + LATENCY;
            for out in std::mem::take(&mut self.outputs) {
                match out {
                    Output::Transmit { from, to, bytes, .. } => {
                        self.to_clients.push_back(Datagram { at, from, to, bytes })
                    }
                    Output::Signal { peer, signal } => self.signal(peer, signal)?,
                    Output::Event(Event::Removed { peer, reason }) => {
                        eprintln!("the core removed {peer}: {reason:?}");
                        self.removed += 1;
                    }
                    Output::Record(huddle_sfu::Recorded::Frame { data, .. }) => {
                        self.recorded_frames += 1;
                        self.recorded_bytes += data.len() as u64;
                    }
                    Output::Event(_) | Output::Record(_) => {}
                }
            }
        }
    }

    fn signal(&mut self, peer: PeerId, signal: Signal) -> anyhow::Result<()> {
        let Some(i) = self.clients.iter().position(|c| c.id == peer) else { return Ok(()) };
        match signal {
            Signal::Answer(sdp) => {
                let answer = SdpAnswer::from_sdp_string(&sdp).map_err(|e| anyhow!("the core's answer: {e}"))?;
                let pending = self.clients[i].pending.take().context("an answer with no offer outstanding")?;
                self.clients[i].rtc.sdp_api().accept_answer(pending, answer).map_err(|e| anyhow!("answer: {e}"))?;
                self.drain_client(i)
            }
            Signal::Offer(sdp) => {
                let offer = SdpOffer::from_sdp_string(&sdp).map_err(|e| anyhow!("the core's offer: {e}"))?;
                let answer = self.clients[i].rtc.sdp_api().accept_offer(offer).map_err(|e| anyhow!("offer: {e}"))?;
                self.drain_client(i)?;
                let input = Input::Answer { now: self.now, peer, answer: answer.to_sdp_string().into() };
                let t = thread_cpu_secs();
                let accepted = self.sfu.handle_input(input);
                self.core_cpu[SIGNALLING] += thread_cpu_secs() - t;
                accepted.with_context(|| format!("the core takes {peer}'s answer"))?;
                // Its outputs are taken by the caller's loop.
                Ok(())
            }
        }
    }

    /// str0m's drain rule for a client: poll until it asks for a timeout.
    fn drain_client(&mut self, i: usize) -> anyhow::Result<()> {
        let at = self.now + LATENCY;
        let core_addr = self.core_addr;
        let plan = self.plan;
        let c = &mut self.clients[i];
        loop {
            match c.rtc.poll_output().map_err(|e| anyhow!("client {}: {e}", c.id))? {
                RtcOutput::Timeout(t) => {
                    c.next_timeout = t;
                    return Ok(());
                }
                RtcOutput::Transmit(t) => {
                    if t.destination == core_addr {
                        let d = Datagram { at, from: t.source, to: t.destination, bytes: t.contents.to_vec() };
                        self.to_core.push_back(d);
                    }
                }
                RtcOutput::Event(e) => match e {
                    RtcEvent::Connected if !c.connected => {
                        c.connected = true;
                        // Spread the publishers' frames over one frame interval.
                        let n = c.publisher.unwrap_or(0) as u32;
                        let p = plan.publishers.max(1) as u32;
                        c.next_audio = self.now + AUDIO_INTERVAL * n / p;
                        c.next_video = self.now + plan.frame_interval * n / p;
                        c.last_key = self.now;
                        c.force_key = true;
                        c.opus_pt = c.rtc.codec_config().find(|p| p.spec().codec == Codec::Opus).map(|p| p.pt());
                        c.vp8_pt = c.rtc.codec_config().find(|p| p.spec().codec == Codec::Vp8).map(|p| p.pt());
                    }
                    RtcEvent::MediaAdded(m) if m.direction.is_receiving() => {
                        // The core names each forwarded track's stream after its publisher.
                        let stream = c.rtc.media(m.mid).map(|media| media.stream_id().to_string());
                        let origin = stream.and_then(|s| s.strip_prefix('p')?.parse::<usize>().ok());
                        if let Some(p) = origin.filter(|p| *p < plan.publishers) {
                            c.incoming.insert(m.mid, (p, m.kind));
                        }
                    }
                    RtcEvent::KeyframeRequest(r) if Some(r.mid) == c.video_mid => c.force_key = true,
                    RtcEvent::MediaData(d) => {
                        c.frames_received += 1;
                        if let Some(&(p, kind)) = c.incoming.get(&d.mid) {
                            c.seen[p] |= if kind == MediaKind::Audio { 1 } else { 2 };
                        }
                    }
                    _ => {}
                },
            }
        }
    }

    /// Writes client `i`'s frames that are due (a publisher's, once connected).
    fn write_frames(&mut self, i: usize) -> anyhow::Result<()> {
        let now = self.now;
        let plan = self.plan;
        let receivers = (plan.publishers - 1 + plan.subscribers) as u64;
        let time = MediaTime::from(now - self.start);
        let c = &mut self.clients[i];
        let Some(me) = c.publisher else { return Ok(()) };
        if !c.connected {
            return Ok(());
        }
        let mut wrote = 0;
        if let (Some(mid), Some(pt)) = (c.audio_mid, c.opus_pt) {
            if now >= c.next_audio {
                c.next_audio = (c.next_audio + AUDIO_INTERVAL).max(now);
                let mut frame = vec![(me as u32 ^ c.seq_audio) as u8; AUDIO_BYTES];
                frame[0] = OPUS_TOC;
                c.seq_audio = c.seq_audio.wrapping_add(1);
                if let Some(w) = c.rtc.writer(mid) {
                    w.write(pt, now, time, frame).map_err(|e| anyhow!("audio: {e}"))?;
                    wrote += 1;
                }
            }
        }
        if let (Some(mid), Some(pt)) = (c.video_mid, c.vp8_pt) {
            if now >= c.next_video {
                c.next_video = (c.next_video + plan.frame_interval).max(now);
                if now.saturating_duration_since(c.last_key) >= plan.keyframe_interval {
                    c.force_key = true;
                }
                let key = std::mem::take(&mut c.force_key);
                if key {
                    c.last_key = now;
                }
                let mut frame = vec![(c.seq_video % 251) as u8; plan.frame_bytes.max(VP8_PREFIX.len())];
                frame[..VP8_PREFIX.len()].copy_from_slice(&VP8_PREFIX);
                if !key {
                    frame[0] |= 0x01;
                }
                c.seq_video = c.seq_video.wrapping_add(1);
                if let Some(w) = c.rtc.writer(mid) {
                    w.write(pt, now, time, frame).map_err(|e| anyhow!("video: {e}"))?;
                    wrote += 1;
                }
            }
        }
        if wrote > 0 {
            self.expected += wrote * receivers;
            self.drain_client(i)?;
        }
        Ok(())
    }
}

/// The first datagram of `q` if it is due at `now`.
fn pop_due(q: &mut VecDeque<Datagram>, now: Instant) -> Option<Datagram> {
    if q.front()?.at <= now {
        q.pop_front()
    } else {
        None
    }
}
