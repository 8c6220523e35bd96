//! `huddle-bench turn`: the TURN relay benchmark.
//!
//! For each server under test — huddle's built-in TURN server (a child process, `--topology p2p`
//! so that no SFU runs), then coturn (`turnserver`, Debian's package) with one relay thread and
//! with its default — on 127.0.0.1:
//!
//! 1. `--pairs` pairs of clients each allocate a UDP relay over UDP or TCP (REST credentials minted
//!    from the shared secret), and the two clients of a pair create a permission for and bind
//!    channel 0x4000 to each other's relay address.
//! 2. For each `--rate`: the clients send ChannelData to their partner, paced so that all
//!    together offer that many packets a second, for a warm-up and `--seconds`. Each packet
//!    goes client A → A's connection on the TURN port → relay A → relay B → B's connection →
//!    client B; receivers count packets and the one-way latency (send time in the payload).
//! 3. Unless `--saturate false`: closed loop, at most `--inflight` packets under way at once,
//!    as fast as they come back: the most the server moves.
//!
//! Then the plain UDP relay ([`crate::relay`], fanout 1) for the machine's limit, and one JSON
//! line on stdout. The server's CPU is utime + stime from `/proc/<pid>/stat` over each window.
//!
//! **A relayed packet** is one pass through the server from one socket to another: a
//! ChannelData message taken from a client's connection and sent from its relay to the peer, or
//! a datagram taken in at a relay and sent to its client as ChannelData — what the plain relay
//! does once per datagram (`recv` + `send_to`). Each packet delivered client to client through
//! two relays is two relayed packets; `relayed_pps` = 2 × `delivered_pps`, and
//! `server_us_per_relayed_packet` = server CPU ÷ relayed packets.
//!
//! Every phase is bounded in time.

use crate::procfs;
use crate::recv_batch::{RecvBatch, BATCH};
use crate::relay;
use crate::server::{ServerProcess, SERVER_CPUS};
use crate::turn_client::{self, Client, Conn, Transport, CHANNEL};
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Pause after each window before its packets are counted (packets still under way).
const SETTLE: Duration = Duration::from_millis(300);
/// A paced sender more than this far behind its schedule skips ahead (and counts what it skipped).
const MAX_LAG: Duration = Duration::from_millis(100);
/// Sent later than this after its scheduled time, a packet counts as late.
const LATE: Duration = Duration::from_millis(1);
/// A closed-loop sender that saw nothing come back for this long counts what is under way as lost.
const STALL: Duration = Duration::from_millis(50);
/// Longest wait for a TURN server to answer a STUN Binding request after it started.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Latency histogram: 1 µs buckets below 10 ms, then 100 µs buckets up to 10 s.
const FINE_US: u64 = 10_000;
const COARSE_US: u64 = 100;
const HIST_BUCKETS: usize = FINE_US as usize + 100_000;
/// Times a window disturbed by other processes is measured again.
const MAX_RETRIES: usize = 2;
/// Default coturn binary (Debian's `coturn` package).
const COTURN_BIN: &str = "/usr/bin/turnserver";

#[derive(clap::Args, Debug, Clone)]
pub struct TurnArgs {
    /// Client pairs; each client allocates a relay and sends to its partner's relay
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// Packets per second all clients together offer (client → server), paced; a list
    /// (`20000,50000`) measures one window per rate
    #[arg(long, value_delimiter = ',', default_values_t = [50_000.0])]
    pub rate: Vec<f64>,
    /// ChannelData payload bytes
    #[arg(long, default_value_t = 1000)]
    pub bytes: usize,
    /// Length of each measured window, in seconds
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Load before each window, not measured, in seconds
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// How clients reach the TURN server (relays are UDP either way)
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    pub transport: Transport,
    /// After the paced windows, a closed-loop window: as fast as packets come back, at most
    /// --inflight under way
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub saturate: bool,
    /// Packets under way at once in the saturation window (all pairs together)
    #[arg(long, default_value_t = 256)]
    pub inflight: u64,
    /// Length of the saturation window, in seconds
    #[arg(long, default_value_t = 5.0)]
    pub saturation_secs: f64,
    /// A window during which other processes used more CPU than this (100 = one core) is
    /// measured again, at most twice (the quietest attempt is kept)
    #[arg(long, default_value_t = 20.0)]
    pub disturbed_cpu_pct: f64,
    /// Measure coturn the same way in the same run [default: true if --coturn-bin exists]
    #[arg(long, action = clap::ArgAction::Set)]
    pub coturn: Option<bool>,
    /// coturn's server binary
    #[arg(long, default_value = COTURN_BIN)]
    pub coturn_bin: String,
    /// coturn's relay threads (`-m`) in each coturn run; 0: its default (one per CPU). The
    /// default runs it twice: one thread (like for like with huddle's one TURN task), then its
    /// default
    #[arg(long, value_delimiter = ',', default_values_t = [1, 0])]
    pub coturn_threads: Vec<u32>,
    /// Also measure huddle (false: coturn and the plain relay only)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub huddle: bool,
    /// Length of the plain-relay measurement, in seconds (0: none)
    #[arg(long, default_value_t = 3.0)]
    pub relay_secs: f64,
    /// Pin the servers (and the plain relay) to CPU 0 and the load generator to the others
    #[arg(long)]
    pub pin: bool,
    /// Extra argument for huddle (repeatable), e.g. --server-arg=--turn-user-bandwidth=50000000
    #[arg(long = "server-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub server_args: Vec<String>,
}

impl TurnArgs {
    fn check(&self) -> anyhow::Result<()> {
        if self.pairs == 0 || self.pairs > 5000 {
            bail!("--pairs must be between 1 and 5000");
        }
        if self.rate.is_empty() || self.rate.len() > 16 || self.rate.iter().any(|r| !(*r >= 1.0 && *r <= 5e6)) {
            bail!("--rate: 1 to 16 rates between 1 and 5000000");
        }
        if !(24..=1400).contains(&self.bytes) {
            bail!("--bytes must be between 24 and 1400");
        }
        if !(1..=100_000).contains(&self.inflight) {
            bail!("--inflight must be between 1 and 100000");
        }
        if self.coturn_threads.len() > 4 || self.coturn_threads.iter().any(|&t| t > 64) {
            bail!("--coturn-threads: at most 4 runs of 0 to 64 threads");
        }
        // Permissions last 300 s and are not refreshed: every server's run must fit.
        let total = (self.seconds + self.warmup_secs) * self.rate.len() as f64
            + if self.saturate { self.saturation_secs + self.warmup_secs } else { 0.0 };
        let total = total * (MAX_RETRIES + 1) as f64;
        if total > 240.0 {
            bail!(
                "the windows of one server, with retries, must fit in 240 s (permissions are not refreshed); \
                 got {total} s"
            );
        }
        for (name, v, lo, hi) in [
            ("--seconds", self.seconds, 0.5, 200.0),
            ("--warmup-secs", self.warmup_secs, 0.0, 60.0),
            ("--saturation-secs", self.saturation_secs, 0.5, 200.0),
            ("--relay-secs", self.relay_secs, 0.0, 600.0),
        ] {
            if !(v >= lo && v <= hi) {
                bail!("{name} must be between {lo} and {hi}");
            }
        }
        Ok(())
    }
}

pub fn run(args: TurnArgs) -> anyhow::Result<()> {
    args.check()?;
    let clients = 2 * args.pairs;
    // Each client: a socket here and two on the server's side (its connection, its relay).
    let nofile = procfs::raise_nofile(3 * clients as u64 + 1024)?;
    if nofile < 3 * clients as u64 + 64 {
        eprintln!("warning: the open-file limit is {nofile}, maybe too low for {clients} clients");
    }
    let secret = format!("huddle-bench-{:016x}", rand_u64());
    let mut servers = serde_json::Map::new();
    let mut pinned = false;

    if args.huddle {
        let port = free_port()?;
        let mut server_args: Vec<OsString> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--topology".into(),
            "p2p".into(),
            "--turn-port".into(),
            port.to_string().into(),
            "--turn-secret".into(),
            secret.clone().into(),
        ];
        let given = |flag: &str| args.server_args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
        if !given("--turn-user-bandwidth") {
            server_args.extend(["--turn-user-bandwidth".into(), "0".into()]);
        }
        // Every client is on 127.0.0.1: no per-address caps.
        for flag in ["--turn-ip-users", "--turn-ip-allocations"] {
            if !given(flag) {
                server_args.extend([flag.into(), "0".into()]);
            }
        }
        server_args.extend(args.server_args.iter().map(OsString::from));
        let mut server = ServerProcess::start_for_bench(&server_args, args.pin)?;
        pinned = server.pinned;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if !turn_client::stun_ping(addr, START_TIMEOUT) {
            bail!("huddle's TURN port {addr} does not answer STUN");
        }
        let pid = server.pid();
        let mut r = measure_server("huddle", addr, pid, &args, &secret, &mut || server.alive())?;
        r["server_rss_kb"] = json!(procfs::rss_kb(pid).ok());
        drop(server);
        servers.insert("huddle".into(), r);
    }

    let coturn = args.coturn.unwrap_or_else(|| std::path::Path::new(&args.coturn_bin).exists());
    if coturn {
        if args.pin && procfs::cpus() >= 2 {
            procfs::pin_to_cpus(&(1..procfs::cpus()).collect::<Vec<_>>())?;
            pinned = true;
        }
        for &threads in &args.coturn_threads {
            let name = if threads == 0 { "coturn".to_string() } else { format!("coturn_m{threads}") };
            let mut c = Coturn::start(&args.coturn_bin, &secret, threads, pinned.then_some(&SERVER_CPUS[..]))?;
            let pid = c.pid();
            let mut r = measure_server(&name, c.addr, pid, &args, &secret, &mut || c.alive())?;
            r["relay_threads"] = if threads == 0 { json!("default") } else { json!(threads) };
            r["server_rss_kb"] = json!(procfs::rss_kb(pid).ok());
            r["version"] = json!(c.version.clone());
            drop(c);
            servers.insert(name, r);
        }
    }

    let plain = if args.relay_secs > 0.0 {
        eprintln!("plain UDP relay: fanout 1, {}-byte datagrams, {:.1} s", args.bytes + 4, args.relay_secs);
        let r = relay::measure_best(
            1,
            args.bytes + 4,
            args.relay_secs,
            pinned.then_some(&SERVER_CPUS[..]),
            args.disturbed_cpu_pct,
            MAX_RETRIES,
        )?;
        let us = r.relay_cpu_pct / 100.0 / r.in_pps * 1e6;
        Some((r, us))
    } else {
        None
    };

    let mut report = json!({
        "mode": "turn",
        "transport": args.transport,
        "pairs": args.pairs,
        "clients": clients,
        "bytes": args.bytes,
        "rates_offered": args.rate,
        "seconds": args.seconds,
        "inflight": args.saturate.then_some(args.inflight),
        "cpus": procfs::cpus(),
        "pinned": pinned,
        "relayed_packet": "one pass through the server: ChannelData from a client sent on from its relay, \
                           or a datagram at a relay sent to its client; a client-to-client delivery is 2",
    });
    // The headline figures: per server, the first paced window and the saturation window.
    for (name, r) in &servers {
        let first = &r["windows"][0];
        report[format!("{name}_us_per_relayed_packet")] = first["server_us_per_relayed_packet"].clone();
        report[format!("{name}_relayed_pps")] = first["relayed_pps"].clone();
        report[format!("{name}_saturation_relayed_pps")] = r["saturation"]["relayed_pps"].clone();
        report[format!("{name}_saturation_us_per_relayed_packet")] =
            r["saturation"]["server_us_per_relayed_packet"].clone();
    }
    if let Some((r, us)) = &plain {
        report["plain_relay_pps"] = json!(r3(r.delivered_pps));
        report["plain_relay_us_per_packet"] = json!(r3(*us));
        for (name, s) in &servers {
            if let Some(sat) = s["saturation"]["relayed_pps"].as_f64() {
                report[format!("{name}_ratio_to_plain_relay")] = json!(r3(sat / r.delivered_pps));
            }
        }
        report["plain_relay"] = serde_json::to_value(r)?;
    }
    report["servers"] = Value::Object(servers);
    println!("{report}");
    Ok(())
}

/// Sets up the clients on the TURN server at `addr` (process `pid`), measures every window and
/// returns the server's part of the report.
fn measure_server(
    name: &str,
    addr: SocketAddr,
    pid: u32,
    args: &TurnArgs,
    secret: &str,
    alive: &mut dyn FnMut() -> bool,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let fleet = Fleet::setup(addr, args, secret).with_context(|| format!("{name}: setting up the clients"))?;
    let setup_s = started.elapsed().as_secs_f64();
    eprintln!("{name}: {} clients allocated and bound in {setup_s:.2} s", fleet.conns.len());
    let shared = Arc::new(Shared::new());
    let receiver = {
        let (conns, shared, transport) = (fleet.conns.clone(), shared.clone(), args.transport);
        std::thread::Builder::new().name("turn-receiver".into()).spawn(move || receive(&conns, transport, &shared))?
    };
    let result = (|| -> anyhow::Result<Value> {
        let mut windows = Vec::new();
        let mut loads: Vec<(Load, f64)> = args.rate.iter().map(|&r| (Load::Paced(r), args.seconds)).collect();
        if args.saturate {
            loads.push((Load::Closed(args.inflight), args.saturation_secs));
        }
        for (load, seconds) in loads {
            // Other processes can only disturb a window: measure it again, keep the quietest.
            let mut best: Option<Value> = None;
            for attempt in 0..=MAX_RETRIES {
                let mut w = window(name, &fleet, &shared, pid, args, load, seconds)?;
                if !alive() {
                    bail!("{name} exited during the run");
                }
                let other = w["other_cpu_pct"].as_f64().unwrap_or(0.0);
                let disturbed = other > args.disturbed_cpu_pct;
                w["disturbed"] = json!(disturbed);
                w["attempt"] = json!(attempt + 1);
                if best.as_ref().is_none_or(|b| other < b["other_cpu_pct"].as_f64().unwrap_or(f64::MAX)) {
                    best = Some(w);
                }
                if !disturbed {
                    break;
                }
                if attempt < MAX_RETRIES {
                    eprintln!("{name}: other processes used {other:.0}% CPU during the window; measuring again");
                }
            }
            windows.extend(best);
        }
        let saturation = if args.saturate { windows.pop().unwrap_or(Value::Null) } else { Value::Null };
        Ok(json!({ "setup_s": r3(setup_s), "windows": windows, "saturation": saturation }))
    })();
    shared.stop.store(true, Relaxed);
    match receiver.join() {
        Ok(r) => r?,
        Err(_) => bail!("the receiver thread panicked"),
    }
    result
}

/// The clients' connections, ready for ChannelData to their partners (client `i`'s partner is
/// `i ^ 1`), and the ports whose kernel drops are counted.
struct Fleet {
    conns: Arc<Vec<Conn>>,
    transport: Transport,
    /// The TURN port (UDP; none over TCP) and the relay ports: the server's side.
    turn_ports: Vec<u16>,
    relay_ports: Vec<u16>,
    client_ports: Vec<u16>,
}

impl Fleet {
    fn setup(addr: SocketAddr, args: &TurnArgs, secret: &str) -> anyhow::Result<Fleet> {
        let secret = huddle_turn::Secret::new(secret.as_bytes());
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let tag = rand_u64() as u32 & 0xffff;
        let mut clients = Vec::with_capacity(2 * args.pairs);
        for i in 0..2 * args.pairs {
            let creds = secret.issue(&format!("bench-{i}"), now, 3600);
            let c = Client::allocate(addr, args.transport, &creds, (tag << 16) | i as u32)
                .with_context(|| format!("client {i}: allocating"))?;
            clients.push(c);
        }
        let relays: Vec<SocketAddr> = clients.iter().map(|c| c.relay).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            c.bind(relays[i ^ 1]).with_context(|| format!("client {i}: binding its partner's relay"))?;
        }
        let relay_ports: Vec<u16> = relays.iter().map(|r| r.port()).collect();
        let turn_ports = if args.transport == Transport::Udp { vec![addr.port()] } else { Vec::new() };
        let client_ports = clients.iter().map(|c| c.conn.local_port()).collect();
        let conns = clients.into_iter().map(Client::into_load).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Fleet { conns: Arc::new(conns), transport: args.transport, turn_ports, relay_ports, client_ports })
    }

    /// Kernel drops (receive buffer full) so far on the server's TURN port, its relays and the
    /// clients' UDP sockets.
    fn drops(&self) -> [u64; 3] {
        let Ok(table) = procfs::udp_drops_by_port() else { return [0; 3] };
        let sum = |ports: &[u16]| table.iter().filter(|(p, _)| ports.contains(p)).map(|(_, d)| d).sum::<u64>();
        [sum(&self.turn_ports), sum(&self.relay_ports), sum(&self.client_ports)]
    }
}

/// What the receiver counts, and the measured window it counts in (send times in ns since
/// `epoch`, `[win_start, win_end)`).
struct Shared {
    epoch: Instant,
    stop: AtomicBool,
    win_start: AtomicU64,
    win_end: AtomicU64,
    received: AtomicU64,
    /// Packets sent at or after `phase_start` received (the closed loop's count: packets held
    /// up from an overloaded window before must not open its window).
    phase_start: AtomicU64,
    received_in_phase: AtomicU64,
    received_in_window: AtomicU64,
    unparsed: AtomicU64,
    hist: Box<[AtomicU64]>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
            win_start: AtomicU64::new(u64::MAX),
            win_end: AtomicU64::new(u64::MAX),
            received: AtomicU64::new(0),
            phase_start: AtomicU64::new(u64::MAX),
            received_in_phase: AtomicU64::new(0),
            received_in_window: AtomicU64::new(0),
            unparsed: AtomicU64::new(0),
            hist: (0..HIST_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Counts one received payload at `now` (ns since `epoch`).
    fn count(&self, payload: &[u8], now: u64) {
        let Some(stamp) = payload.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap())) else {
            self.unparsed.fetch_add(1, Relaxed);
            return;
        };
        self.received.fetch_add(1, Relaxed);
        if stamp >= self.phase_start.load(Relaxed) {
            self.received_in_phase.fetch_add(1, Relaxed);
        }
        if stamp >= self.win_start.load(Relaxed) && stamp < self.win_end.load(Relaxed) {
            self.received_in_window.fetch_add(1, Relaxed);
            self.hist[bucket(now.saturating_sub(stamp) / 1000)].fetch_add(1, Relaxed);
        }
    }
}

fn bucket(us: u64) -> usize {
    if us < FINE_US {
        us as usize
    } else {
        (FINE_US + (us - FINE_US) / COARSE_US).min(HIST_BUCKETS as u64 - 1) as usize
    }
}

fn bucket_us(b: usize) -> u64 {
    let b = b as u64;
    if b < FINE_US {
        b
    } else {
        FINE_US + (b - FINE_US) * COARSE_US
    }
}

/// The latency (µs) below which `q` of the counts fall.
fn quantile(hist: &[u64], q: f64) -> Option<u64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let want = ((total as f64 * q).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (b, &n) in hist.iter().enumerate() {
        seen += n;
        if seen >= want {
            return Some(bucket_us(b));
        }
    }
    None
}

#[derive(Clone, Copy, Debug)]
enum Load {
    /// Packets per second, all clients together, evenly spread.
    Paced(f64),
    /// As fast as they come back, at most this many under way.
    Closed(u64),
}

#[derive(Default, Debug)]
struct SendStats {
    sent: u64,
    sent_in_window: u64,
    send_errors: u64,
    /// Paced: packets sent more than [`LATE`] after their time, and skipped for being more than
    /// [`MAX_LAG`] behind.
    late: u64,
    skipped: u64,
    max_lag_ns: u64,
    /// Closed loop: packets given up as lost after a stall.
    given_up: u64,
}

/// Sends from every client in turn from `start` to `end` (ns since the epoch) as `load` says.
fn send(
    conns: &[Conn],
    transport: Transport,
    bytes: usize,
    load: Load,
    start: u64,
    end: u64,
    sh: &Shared,
) -> SendStats {
    let mut frames: Vec<Vec<u8>> = (0..conns.len())
        .map(|i| {
            let mut payload = vec![0u8; bytes];
            payload[8..12].copy_from_slice(&(i as u32).to_le_bytes());
            let mut f = Vec::new();
            huddle_turn::stun::write_channel_data(&mut f, CHANNEL, &payload, transport == Transport::Tcp);
            f
        })
        .collect();
    let (ws, we) = (sh.win_start.load(Relaxed), sh.win_end.load(Relaxed));
    let mut st = SendStats::default();
    let n = conns.len() as u64;
    let mut send_one = |k: u64, now: u64, st: &mut SendStats| {
        let i = (k % n) as usize;
        let f = &mut frames[i];
        f[4..12].copy_from_slice(&now.to_le_bytes());
        f[16..24].copy_from_slice(&k.to_le_bytes());
        let ok = match &conns[i] {
            Conn::Udp(s) => s.send(f).is_ok(),
            Conn::Tcp(s) => (&*s).write_all(f).is_ok(),
        };
        if ok {
            st.sent += 1;
            if now >= ws && now < we {
                st.sent_in_window += 1;
            }
        } else {
            st.send_errors += 1;
        }
    };
    while sh.now_ns() < start {
        std::thread::sleep(Duration::from_micros(200));
    }
    match load {
        Load::Paced(rate) => {
            let interval = 1e9 / rate;
            let mut k = 0u64;
            loop {
                let now = sh.now_ns();
                if now >= end {
                    break;
                }
                let due = ((now - start) as f64 / interval) as u64 + 1;
                if k >= due {
                    let next = start + (k as f64 * interval) as u64;
                    std::thread::sleep(Duration::from_nanos(next.saturating_sub(now).min(1_000_000)));
                    continue;
                }
                let behind = ((due - k) as f64 * interval) as u64;
                if behind > MAX_LAG.as_nanos() as u64 {
                    let skip = due - k - 1;
                    st.skipped += skip;
                    k += skip;
                }
                // At most a short burst before looking at the clock again.
                let burst_end = due.min(k + 64);
                while k < burst_end {
                    let now = sh.now_ns();
                    let lag = now.saturating_sub(start + (k as f64 * interval) as u64);
                    st.max_lag_ns = st.max_lag_ns.max(lag);
                    if lag > LATE.as_nanos() as u64 {
                        st.late += 1;
                    }
                    send_one(k, now, &mut st);
                    k += 1;
                }
            }
        }
        Load::Closed(inflight) => {
            let base = sh.received_in_phase.load(Relaxed);
            let (mut k, mut given_up) = (0u64, 0u64);
            let (mut last_seen, mut last_change) = (base, Instant::now());
            loop {
                let now = sh.now_ns();
                if now >= end {
                    break;
                }
                let back = sh.received_in_phase.load(Relaxed) - base;
                let under_way = st.sent.saturating_sub(back + given_up);
                if under_way < inflight {
                    for _ in 0..(inflight - under_way).min(16) {
                        send_one(k, sh.now_ns(), &mut st);
                        k += 1;
                    }
                    continue;
                }
                let seen = back + base;
                if seen != last_seen {
                    (last_seen, last_change) = (seen, Instant::now());
                } else if last_change.elapsed() > STALL {
                    given_up += under_way;
                    last_change = Instant::now();
                }
                std::thread::sleep(Duration::from_micros(20));
            }
            st.given_up = given_up;
        }
    }
    st
}

/// The receiver: every client socket in one epoll set, UDP drained with `recvmmsg(2)`, TCP
/// read into per-client buffers and split into ChannelData frames.
fn receive(conns: &[Conn], transport: Transport, sh: &Shared) -> anyhow::Result<()> {
    // SAFETY: plain syscalls on descriptors we own; the buffers passed outlive the calls.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error()).context("epoll_create1");
    }
    let _close = CloseFd(ep);
    for (i, c) in conns.iter().enumerate() {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, c.fd(), &mut ev) } != 0 {
            return Err(std::io::Error::last_os_error()).context("epoll_ctl");
        }
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut batch = RecvBatch::new();
    let mut streams: Vec<Vec<u8>> = vec![Vec::new(); if transport == Transport::Tcp { conns.len() } else { 0 }];
    let mut chunk = vec![0u8; 65536];
    while !sh.stop.load(Relaxed) {
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as libc::c_int, 50) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("epoll_wait");
        }
        for ev in &events[..n as usize] {
            let i = ev.u64 as usize;
            let fd = conns[i].fd();
            match transport {
                Transport::Udp => {
                    for _ in 0..16 {
                        let got = batch.recv(fd);
                        let now = sh.now_ns();
                        for j in 0..got {
                            match huddle_turn::stun::parse_channel_data(batch.datagram(j)) {
                                Some((_, payload)) => sh.count(payload, now),
                                None => {
                                    sh.unparsed.fetch_add(1, Relaxed);
                                }
                            }
                        }
                        if got < BATCH {
                            break;
                        }
                    }
                }
                Transport::Tcp => {
                    for _ in 0..16 {
                        let r = unsafe { libc::recv(fd, chunk.as_mut_ptr().cast(), chunk.len(), libc::MSG_DONTWAIT) };
                        if r <= 0 {
                            if r == 0 {
                                bail!("the TURN server closed client {i}'s connection");
                            }
                            break;
                        }
                        let now = sh.now_ns();
                        let buf = &mut streams[i];
                        buf.extend_from_slice(&chunk[..r as usize]);
                        let mut at = 0;
                        while let Some(len) = huddle_turn::stun::stream_frame_len(&buf[at..]) {
                            if buf.len() - at < len {
                                break;
                            }
                            match huddle_turn::stun::parse_channel_data(&buf[at..at + len]) {
                                Some((_, payload)) => sh.count(payload, now),
                                None => {
                                    sh.unparsed.fetch_add(1, Relaxed);
                                }
                            }
                            at += len;
                        }
                        buf.drain(..at);
                        if (r as usize) < chunk.len() {
                            break;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

struct CloseFd(libc::c_int);

impl Drop for CloseFd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// Runs one window: warm-up, `seconds` measured, settle; returns its figures.
fn window(
    name: &str,
    fleet: &Fleet,
    sh: &Arc<Shared>,
    pid: u32,
    args: &TurnArgs,
    load: Load,
    seconds: f64,
) -> anyhow::Result<Value> {
    for b in sh.hist.iter() {
        b.store(0, Relaxed);
    }
    sh.received_in_window.store(0, Relaxed);
    let start = sh.now_ns() + 20_000_000;
    sh.phase_start.store(start, Relaxed);
    let ws = start + (args.warmup_secs * 1e9) as u64;
    let we = ws + (seconds * 1e9) as u64;
    sh.win_start.store(ws, Relaxed);
    sh.win_end.store(we, Relaxed);
    match load {
        Load::Paced(rate) => eprintln!("{name}: {rate:.0} packets/s offered for {seconds} s"),
        Load::Closed(n) => eprintln!("{name}: saturation, {n} packets under way, for {seconds} s"),
    }
    let sender: JoinHandle<SendStats> = {
        let (conns, sh, transport, bytes) = (fleet.conns.clone(), sh.clone(), fleet.transport, args.bytes);
        std::thread::Builder::new()
            .name("turn-sender".into())
            .spawn(move || send(&conns, transport, bytes, load, start, we, &sh))?
    };
    let sleep_until = |t: u64| {
        let now = sh.now_ns();
        if t > now {
            std::thread::sleep(Duration::from_nanos(t - now));
        }
    };
    let snap = || -> anyhow::Result<(Instant, f64, f64, f64)> {
        Ok((Instant::now(), procfs::cpu_secs(Some(pid))?, procfs::cpu_secs(None)?, procfs::machine_busy_secs()?))
    };
    sleep_until(ws);
    let drops_a = fleet.drops();
    let a = snap()?;
    sleep_until(we);
    let b = snap()?;
    let st = sender.join().map_err(|_| anyhow::anyhow!("the sender thread panicked"))?;
    std::thread::sleep(SETTLE);
    let drops_b = fleet.drops();
    let received = sh.received_in_window.load(Relaxed);
    let hist: Vec<u64> = sh.hist.iter().map(|b| b.load(Relaxed)).collect();

    let secs = (b.0 - a.0).as_secs_f64();
    let server_cpu = b.1 - a.1;
    let loadgen_cpu = b.2 - a.2;
    let other_cpu = ((b.3 - a.3) - server_cpu - loadgen_cpu).max(0.0);
    let relayed = 2 * received;
    let us_per = if relayed > 0 { server_cpu * 1e6 / relayed as f64 } else { f64::NAN };
    let loss = if st.sent_in_window > 0 {
        (st.sent_in_window.saturating_sub(received)) as f64 / st.sent_in_window as f64 * 100.0
    } else {
        0.0
    };
    let q = |x: f64| quantile(&hist, x);
    let w = json!({
        "load": match load { Load::Paced(_) => "paced", Load::Closed(_) => "closed_loop" },
        "rate_offered": match load { Load::Paced(r) => Some(r), Load::Closed(_) => None },
        "inflight": match load { Load::Paced(_) => None, Load::Closed(n) => Some(n) },
        "seconds": r3(secs),
        "sent": st.sent_in_window,
        "delivered": received,
        "relayed": relayed,
        "sent_pps": r3(st.sent_in_window as f64 / secs),
        "delivered_pps": r3(received as f64 / secs),
        "relayed_pps": r3(relayed as f64 / secs),
        "loss_pct": r3(loss),
        "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999),
        "max_us": hist.iter().rposition(|&n| n > 0).map(bucket_us),
        "server_cpu_pct": r3(server_cpu / secs * 100.0),
        "server_us_per_relayed_packet": r3(us_per),
        "server_us_per_delivered_packet": r3(2.0 * us_per),
        "loadgen_cpu_pct": r3(loadgen_cpu / secs * 100.0),
        "other_cpu_pct": r3(other_cpu / secs * 100.0),
        "turn_port_drops": drops_b[0].saturating_sub(drops_a[0]),
        "relay_socket_drops": drops_b[1].saturating_sub(drops_a[1]),
        "client_socket_drops": drops_b[2].saturating_sub(drops_a[2]),
        "send_errors": st.send_errors,
        "late_pct": r3(if st.sent > 0 { st.late as f64 / st.sent as f64 * 100.0 } else { 0.0 }),
        "max_send_lag_ms": r3(st.max_lag_ns as f64 / 1e6),
        "skipped": st.skipped,
        "given_up": st.given_up,
        "unparsed": sh.unparsed.load(Relaxed),
    });
    eprintln!(
        "{name}: {:.0} relayed/s ({:.0} delivered/s), loss {:.3} %, p50 {} µs, p99 {} µs, server {:.0}% CPU = {:.2} µs \
         per relayed packet, load generator {:.0}% CPU, others {:.0}%",
        relayed as f64 / secs,
        received as f64 / secs,
        loss,
        q(0.5).map_or("-".into(), |v| v.to_string()),
        q(0.99).map_or("-".into(), |v| v.to_string()),
        server_cpu / secs * 100.0,
        us_per,
        loadgen_cpu / secs * 100.0,
        other_cpu / secs * 100.0
    );
    Ok(w)
}

/// coturn's `turnserver` as a child process on 127.0.0.1, killed when dropped (and by the kernel
/// when this process dies: `PR_SET_PDEATHSIG`).
struct Coturn {
    child: Child,
    addr: SocketAddr,
    pidfile: std::path::PathBuf,
    version: Option<String>,
}

impl Coturn {
    fn start(bin: &str, secret: &str, threads: u32, cpus: Option<&[usize]>) -> anyhow::Result<Coturn> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let pidfile = std::env::temp_dir().join(format!("huddle-bench-coturn-{}-{port}.pid", std::process::id()));
        let mut cmd = Command::new(bin);
        cmd.args(["-n", "--no-cli", "--listening-ip", "127.0.0.1", "--listening-port"])
            .arg(port.to_string())
            .args(["--relay-ip", "127.0.0.1", "--min-port", "49152", "--max-port", "65535"])
            .args(["--use-auth-secret", "--static-auth-secret", secret, "--realm", "huddle"])
            .args(["--no-tls", "--no-dtls", "--allow-loopback-peers", "--simple-log", "--log-file", "stdout"])
            .arg("--pidfile")
            .arg(&pidfile);
        if threads > 0 {
            cmd.args(["-m", &threads.to_string()]);
        }
        eprintln!(
            "starting coturn: {bin} {}",
            cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ").replace(secret, "<secret>")
        );
        let cpus = cpus.map(<[usize]>::to_vec);
        // SAFETY: between fork and exec only async-signal-safe calls (prctl, sched_setaffinity).
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(cpus) = &cpus {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    for &c in cpus {
                        libc::CPU_SET(c, &mut set);
                    }
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {bin} (Debian's coturn package; --coturn false to skip)"))?;
        let mut c = Coturn { child, addr, pidfile, version: coturn_version(bin) };
        if !turn_client::stun_ping(addr, START_TIMEOUT) {
            if let Ok(Some(status)) = c.child.try_wait() {
                bail!("coturn exited at start ({status})");
            }
            bail!("coturn does not answer STUN on {addr} within {START_TIMEOUT:?}");
        }
        eprintln!("coturn pid {} on {addr}", c.pid());
        Ok(c)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.pidfile);
    }
}

/// `4.6.1` from `turnserver --version`.
fn coturn_version(bin: &str) -> Option<String> {
    let out = Command::new(bin).arg("--version").stdin(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().next()?.trim().to_string()).filter(|v| !v.is_empty())
}

/// A port free for both UDP and TCP on 127.0.0.1 (for a moment: the server binds it next).
fn free_port() -> anyhow::Result<u16> {
    for _ in 0..32 {
        let u = UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket")?;
        let port = u.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP")
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most the 8 bytes we pass.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    if n == 8 {
        u64::from_le_bytes(b)
    } else {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        t ^ ((std::process::id() as u64) << 32)
    }
}

fn r3(x: f64) -> Option<f64> {
    x.is_finite().then(|| (x * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_round_trip_and_quantiles() {
        for us in [0, 1, 999, 9_999, 10_000, 10_050, 123_456, 9_999_999] {
            let b = bucket(us);
            assert!(bucket_us(b) <= us && us - bucket_us(b) < COARSE_US, "{us}");
        }
        assert_eq!(bucket(u64::MAX), HIST_BUCKETS - 1);
        let mut hist = vec![0u64; HIST_BUCKETS];
        hist[bucket(10)] = 50;
        hist[bucket(20)] = 49;
        hist[bucket(50_000)] = 1;
        assert_eq!(quantile(&hist, 0.5), Some(10));
        assert_eq!(quantile(&hist, 0.99), Some(20));
        assert_eq!(quantile(&hist, 1.0), Some(50_000));
        assert_eq!(quantile(&[0; 4], 0.5), None);
    }

    #[test]
    fn counts_only_stamps_inside_the_window() {
        let sh = Shared::new();
        sh.win_start.store(1_000, Relaxed);
        sh.win_end.store(2_000, Relaxed);
        for stamp in [999u64, 1_000, 1_999, 2_000] {
            let mut p = vec![0u8; 24];
            p[..8].copy_from_slice(&stamp.to_le_bytes());
            sh.count(&p, 5_000);
        }
        sh.count(&[1, 2, 3], 5_000);
        assert_eq!(sh.received.load(Relaxed), 4);
        assert_eq!(sh.received_in_window.load(Relaxed), 2);
        assert_eq!(sh.unparsed.load(Relaxed), 1);
    }
}
