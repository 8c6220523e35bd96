//! `huddle-bench signal`: the signalling benchmark.
//!
//! 1. Start the server (a child process) and read its resident memory (baseline).
//! 2. Connect `--clients` WebSocket clients, at most `--connect-concurrency` at a time; each
//!    reads `welcome`, joins room `i % rooms` and waits for `joined`. Once all have joined and
//!    a second has passed, the server's memory again gives the memory per idle client.
//! 3. For `--seconds`, every client that has a peer sends `signal` messages (an ICE
//!    `candidate` whose string carries a sequence number and the send time) to the peers of its
//!    room in turn, so that all clients together offer `--rate` messages a second, spread
//!    evenly. Receivers record the relay latency.
//! 4. Stop sending, wait up to `--drain-secs` for messages still under way, and print one JSON
//!    line on stdout.
//!
//! With `--nodes N` (N > 1) it starts a `redis-server` and N nodes sharing it, spreads the
//! clients over the nodes, and also reports Redis's CPU and commands per relayed message.
//!
//! Every phase is bounded in time; all traffic is on 127.0.0.1.

use crate::procfs;
use crate::server::ServerProcess;
use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use huddle_protocol::{ClientMsg, IceCandidate, PeerId, ServerMsg, SignalPayload, PROTOCOL_VERSION};
use std::ffi::OsString;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(clap::Args, Debug, Clone)]
pub struct SignalArgs {
    /// Concurrent WebSocket clients
    #[arg(long, default_value_t = 5000)]
    pub clients: usize,
    /// Rooms; client i joins room i % rooms (the room capacity is set to fit)
    #[arg(long, default_value_t = 1000)]
    pub rooms: usize,
    /// Total offered relay rate, messages per second (all clients together)
    #[arg(long, default_value_t = 60_000.0)]
    pub rate: f64,
    /// Length of the measured relay phase, in seconds
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Clients connecting and joining at the same time
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Longest time for all clients to connect and join, in seconds
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout_secs: f64,
    /// Pause between the last join and the idle-memory reading, in seconds
    #[arg(long, default_value_t = 1.0)]
    pub settle_secs: f64,
    /// Longest wait for messages still under way after sending stops, in seconds
    #[arg(long, default_value_t = 2.0)]
    pub drain_secs: f64,
    /// Load-generator threads, each running its share of the clients on its own
    /// single-threaded runtime; 0 (the default) runs all clients on one work-stealing runtime
    /// with a worker per CPU
    #[arg(long)]
    pub loadgen_threads: Option<usize>,
    /// Pin the server to CPU 0 and the load generator to the other CPUs, to tell which side
    /// runs out of CPU first (needs at least two CPUs)
    #[arg(long)]
    pub pin: bool,
    /// huddle nodes sharing one Redis (`--redis`; a `redis-server` of its own on a free port is
    /// started, and stopped after); client i connects to node i % nodes, so with two clients a
    /// room the two members of a room are on different nodes whenever the room count is not a
    /// multiple of the node count, and every message crosses Redis. 1: one plain node, no Redis
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Extra argument for the server (repeatable), e.g. --server-arg=--outbox-capacity=64
    #[arg(long = "server-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub server_args: Vec<String>,
}

impl SignalArgs {
    fn check(&self) -> anyhow::Result<()> {
        if self.clients < 2 || self.clients > 100_000 {
            bail!("--clients must be between 2 and 100000");
        }
        if self.rooms == 0 || self.rooms > self.clients {
            bail!("--rooms must be between 1 and --clients");
        }
        if !(self.rate > 0.0 && self.rate <= 10_000_000.0) {
            bail!("--rate must be above 0 and at most 10000000");
        }
        for (name, v, max) in [
            ("--seconds", self.seconds, 3600.0),
            ("--connect-timeout-secs", self.connect_timeout_secs, 3600.0),
            ("--settle-secs", self.settle_secs, 600.0),
            ("--drain-secs", self.drain_secs, 600.0),
        ] {
            if !(v >= 0.0 && v <= max) || (name == "--seconds" && v == 0.0) {
                bail!("{name} must be between 0 and {max}");
            }
        }
        if self.nodes == 0 || self.nodes > 8 {
            bail!("--nodes must be between 1 and 8");
        }
        if self.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        Ok(())
    }
}

pub fn run(args: SignalArgs) -> anyhow::Result<()> {
    args.check()?;
    let nofile = procfs::raise_nofile(args.clients as u64 + 1024)?;
    if nofile < args.clients as u64 + 64 {
        eprintln!("warning: the open-file limit is {nofile}, too low for {} clients", args.clients);
    }
    let per_room = args.clients.div_ceil(args.rooms);
    let mut server_args: Vec<OsString> = vec!["--listen".into(), "127.0.0.1:0".into()];
    let given = |flag: &str| args.server_args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    if !given("--room-capacity") {
        server_args.extend(["--room-capacity".into(), per_room.to_string().into()]);
    }
    if !given("--max-rooms") && args.rooms > 10_000 {
        server_args.extend(["--max-rooms".into(), args.rooms.to_string().into()]);
    }
    if !given("--max-connections") && args.clients > 10_000 {
        server_args.extend(["--max-connections".into(), args.clients.to_string().into()]);
    }
    // Every simulated client comes from 127.0.0.1: no per-IP limits.
    for flag in ["--max-connections-per-ip", "--max-tcp-connections-per-ip", "--ip-joins-per-minute"] {
        if !given(flag) {
            server_args.extend([flag.into(), "0".into()]);
        }
    }
    server_args.extend(args.server_args.iter().map(OsString::from));
    let redis = if args.nodes > 1 { Some(RedisProcess::start()?) } else { None };
    if let Some(redis) = &redis {
        server_args.extend(["--redis".into(), redis.url().into()]);
    }
    let mut servers = Vec::new();
    for _ in 0..args.nodes {
        servers.push(ServerProcess::start_for_bench(&server_args, args.pin)?);
    }

    let threads = args.loadgen_threads.unwrap_or(0).min(64);
    let workers = Workers::start(threads)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let result = rt.block_on(drive(&args, &mut servers, redis.as_ref(), &workers));
    drop(workers);
    drop(rt);
    drop(servers);
    drop(redis);
    let report = result?;
    println!("{report}");
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Setup,
    Relay {
        /// When the first message may be sent.
        start: Instant,
        /// When sending stops (end of the measured window).
        end: Instant,
        /// `end` in nanoseconds since [`Shared::epoch`].
        end_ns: u64,
        /// Time between two messages of one client.
        period: Duration,
    },
    Stop,
}

/// What every client task shares.
struct Shared {
    /// Send times in messages are nanoseconds since this instant.
    epoch: std::time::Instant,
    /// The nodes' ports; client i connects to `ports[i % len]`.
    ports: Vec<u16>,
    clients: usize,
    ws_config: WebSocketConfig,
    connect_slots: Semaphore,
    connect_timeout: Duration,
    joined: AtomicUsize,
    failed: AtomicUsize,
    /// Clients in each room that have joined.
    room_counts: Vec<AtomicU32>,
    sent: AtomicU64,
    received: AtomicU64,
    received_in_window: AtomicU64,
    errors: AtomicU64,
    disconnects: AtomicU64,
    /// Problems reported so far on stderr (the first few only).
    reported: AtomicU64,
}

const REPORT_MAX: u64 = 10;

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn note(&self, counter: &AtomicU64, what: &str, client: usize, detail: impl std::fmt::Display) {
        counter.fetch_add(1, Relaxed);
        let n = self.reported.fetch_add(1, Relaxed);
        if n < REPORT_MAX {
            eprintln!("client {client}: {what}: {detail}");
        } else if n == REPORT_MAX {
            eprintln!("(further client problems are counted, not shown)");
        }
    }
}

/// The load generator's threads. Each runs a single-threaded runtime, so a client's timer,
/// socket and task never wake another thread (cheaper than a work-stealing runtime when, as
/// here, the work is thousands of small independent tasks).
pub(crate) struct Workers {
    pub(crate) handles: Vec<tokio::runtime::Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    pub(crate) fn start(n: usize) -> anyhow::Result<Workers> {
        let mut w = Workers { handles: Vec::new(), stops: Vec::new(), threads: Vec::new() };
        for k in 0..n.max(1) {
            let rt = if n == 0 {
                tokio::runtime::Builder::new_multi_thread().enable_all().build()
            } else {
                tokio::runtime::Builder::new_current_thread().enable_all().build()
            }
            .context("starting a runtime")?;
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            w.handles.push(rt.handle().clone());
            w.stops.push(stop_tx);
            w.threads.push(
                std::thread::Builder::new()
                    .name(format!("loadgen-{k}"))
                    .spawn(move || {
                        let _ = rt.block_on(stop_rx);
                        // Dropping the runtime cancels the clients still running.
                        rt.shutdown_timeout(Duration::from_secs(1));
                    })
                    .context("starting a load-generator thread")?,
            );
        }
        Ok(w)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The servers' resident memory together, in KiB.
fn rss_kb(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|&pid| procfs::rss_kb(pid)).sum()
}

/// The servers' CPU time together, in seconds.
fn cpu_secs(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|&pid| procfs::cpu_secs(Some(pid))).sum()
}

async fn drive(
    args: &SignalArgs,
    servers: &mut [ServerProcess],
    redis: Option<&RedisProcess>,
    workers: &Workers,
) -> anyhow::Result<serde_json::Value> {
    let pids: Vec<u32> = servers.iter().map(ServerProcess::pid).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_baseline = rss_kb(&pids)?;
    eprintln!("server RSS baseline: {rss_baseline} KiB");

    let shared = Arc::new(Shared {
        epoch: std::time::Instant::now(),
        ports: servers.iter().map(|s| s.port).collect(),
        clients: args.clients,
        // Small buffers: tungstenite zeroes the free part of its read buffer before every read,
        // and relayed messages are about 150 bytes.
        ws_config: WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(0)
            .max_write_buffer_size(1024 * 1024)
            .max_message_size(Some(1024 * 1024))
            .max_frame_size(Some(1024 * 1024)),
        connect_slots: Semaphore::new(args.connect_concurrency),
        connect_timeout: Duration::from_secs(10),
        joined: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        room_counts: (0..args.rooms).map(|_| AtomicU32::new(0)).collect(),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        received_in_window: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
        reported: AtomicU64::new(0),
    });

    // Phase 2: connect and join.
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let connect_start = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|i| {
            workers.handles[i % workers.handles.len()].spawn(client(
                i,
                i % args.rooms,
                shared.clone(),
                phase_rx.clone(),
            ))
        })
        .collect();
    drop(phase_rx);
    let deadline = connect_start + Duration::from_secs_f64(args.connect_timeout_secs);
    let mut last_print = Instant::now();
    loop {
        let (joined, failed) = (shared.joined.load(Relaxed), shared.failed.load(Relaxed));
        if joined + failed >= args.clients {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("connect phase timed out with {joined} joined, {failed} failed");
            break;
        }
        if !servers.iter_mut().all(ServerProcess::alive) {
            bail!("a server process exited during the connect phase");
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!("connecting: {joined} joined, {failed} failed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = connect_start.elapsed().as_secs_f64();
    let joined = shared.joined.load(Relaxed);
    eprintln!("{joined} clients joined in {connect_s:.2} s ({} failed)", shared.failed.load(Relaxed));
    if joined == 0 {
        bail!("no client could join");
    }

    // Idle memory.
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let rss_idle = rss_kb(&pids)?;
    let kb_per_client = rss_idle.saturating_sub(rss_baseline) as f64 / joined as f64;
    eprintln!("server RSS idle: {rss_idle} KiB, {kb_per_client:.2} KiB per client");

    // Phase 3: relay.
    let senders: u64 = shared.room_counts.iter().map(|c| c.load(Relaxed) as u64).filter(|&n| n >= 2).sum();
    if senders == 0 {
        bail!("no room has two clients: nothing to relay");
    }
    let period = Duration::from_secs_f64(senders as f64 / args.rate);
    let start = Instant::now() + Duration::from_millis(20);
    let window = Duration::from_secs_f64(args.seconds);
    let end = start + window;
    let end_ns = shared.now_ns() + (end - Instant::now()).as_nanos() as u64;
    eprintln!(
        "relaying for {:.1} s: {senders} senders, one message every {:.2} ms each",
        args.seconds,
        period.as_secs_f64() * 1e3
    );
    let _ = phase_tx.send(Phase::Relay { start, end, end_ns, period });
    tokio::time::sleep_until(start).await;
    let (cpu0, self0, all0) = (cpu_secs(&pids)?, procfs::cpu_secs(None)?, procfs::machine_busy_secs()?);
    let redis0 = match redis {
        Some(r) => Some((procfs::cpu_secs(Some(r.pid()))?, r.commands()?)),
        None => None,
    };
    let mut prev = (shared.sent.load(Relaxed), shared.received.load(Relaxed));
    let mut next = start + Duration::from_secs(1);
    while next < end {
        tokio::time::sleep_until(next).await;
        let now = (shared.sent.load(Relaxed), shared.received.load(Relaxed));
        eprintln!(
            "t={:>4.1}s sent {:>7}/s received {:>7}/s (errors {}, disconnects {})",
            (next - start).as_secs_f64(),
            now.0 - prev.0,
            now.1 - prev.1,
            shared.errors.load(Relaxed),
            shared.disconnects.load(Relaxed)
        );
        prev = now;
        next += Duration::from_secs(1);
        if !servers.iter_mut().all(ServerProcess::alive) {
            bail!("a server process exited during the relay phase");
        }
    }
    tokio::time::sleep_until(end).await;
    let (cpu1, self1, all1) = (cpu_secs(&pids)?, procfs::cpu_secs(None)?, procfs::machine_busy_secs()?);
    let window_s = window.as_secs_f64();
    let server_cpu_pct = (cpu1 - cpu0) / window_s * 100.0;
    // Redis's CPU and the commands it ran over the same window (several nodes only).
    let redis_use = match (redis, redis0) {
        (Some(r), Some((cpu, commands))) => {
            Some(((procfs::cpu_secs(Some(r.pid()))? - cpu) / window_s * 100.0, r.commands()?.saturating_sub(commands)))
        }
        _ => None,
    };
    let loadgen_cpu_pct = (self1 - self0) / window_s * 100.0;
    // CPU used by everything else on the machine (other builds, browsers…) during the window:
    // the benchmark is only meaningful when this is small.
    let redis_cpu_pct = redis_use.map_or(0.0, |(pct, _)| pct);
    let other_cpu_pct = ((all1 - all0) / window_s * 100.0 - server_cpu_pct - loadgen_cpu_pct - redis_cpu_pct).max(0.0);
    eprintln!(
        "CPU over the window: server {server_cpu_pct:.0}%, load generator {loadgen_cpu_pct:.0}%, other processes {other_cpu_pct:.0}% (of {}00%)",
        procfs::cpus()
    );

    // Phase 4: drain.
    let drain_end = Instant::now() + Duration::from_secs_f64(args.drain_secs);
    // Let senders that are mid-send finish before comparing counts.
    tokio::time::sleep(Duration::from_millis(10)).await;
    while Instant::now() < drain_end && shared.received.load(Relaxed) < shared.sent.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rss_final = rss_kb(&pids)?;
    let _ = phase_tx.send(Phase::Stop);

    let mut latencies: Vec<u32> = Vec::new();
    let mut lags: Vec<u32> = Vec::new();
    let collect = async {
        for t in tasks {
            if let Ok(r) = t.await {
                latencies.extend_from_slice(&r.latencies);
                lags.extend_from_slice(&r.send_lags);
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), collect).await.is_err() {
        eprintln!("warning: some clients did not stop within 5 s; their latencies are left out");
    }
    latencies.sort_unstable();
    lags.sort_unstable();
    let pct_of = |v: &[u32], q: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((q * v.len() as f64) as usize).min(v.len() - 1);
        v[i] as f64 / 1000.0
    };
    let pct = |q: f64| pct_of(&latencies, q);
    let mean_ms = if latencies.is_empty() {
        f64::NAN
    } else {
        latencies.iter().map(|&l| l as f64).sum::<f64>() / latencies.len() as f64 / 1000.0
    };

    let sent = shared.sent.load(Relaxed);
    let received = shared.received.load(Relaxed);
    let in_window = shared.received_in_window.load(Relaxed);
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let per_msg =
        |cpu_pct: f64| if in_window == 0 { f64::NAN } else { cpu_pct / 100.0 * window_s / in_window as f64 * 1e6 };
    // Rooms whose two or more members are not all on one node: their messages cross Redis.
    let nodes = args.nodes;
    let cross_node_rooms = (0..args.rooms)
        .filter(|&r| {
            let mut members = (r..args.clients).step_by(args.rooms).map(|i| i % nodes);
            let first = members.next();
            members.any(|n| Some(n) != first)
        })
        .count();
    let mut report = serde_json::json!({
        "bench": "signal",
        "clients": joined,
        "clients_failed": shared.failed.load(Relaxed),
        "rooms": args.rooms,
        "room_capacity": per_room_capacity(args),
        "rate_offered": args.rate,
        "relayed_msgs_per_s": r3(in_window as f64 / window_s),
        "p50_ms": r3(pct(0.50)),
        "p90_ms": r3(pct(0.90)),
        "p99_ms": r3(pct(0.99)),
        "p999_ms": r3(pct(0.999)),
        "max_ms": r3(latencies.last().map_or(f64::NAN, |&l| l as f64 / 1000.0)),
        "mean_ms": r3(mean_ms),
        // Sends are due on tokio's 1 ms timer wheel, so up to 1 ms of this is timer rounding.
        "send_lag_p50_ms": r3(pct_of(&lags, 0.50)),
        "send_lag_p99_ms": r3(pct_of(&lags, 0.99)),
        "sent": sent,
        "received": received,
        "lost": sent.saturating_sub(received),
        "errors": shared.errors.load(Relaxed),
        "disconnects": shared.disconnects.load(Relaxed),
        "server_kb_per_client": r3(kb_per_client),
        "server_rss_baseline_kb": rss_baseline,
        "server_rss_idle_kb": rss_idle,
        "server_rss_kb": rss_final,
        "server_cpu_pct": r3(server_cpu_pct),
        "loadgen_cpu_pct": r3(loadgen_cpu_pct),
        "other_cpu_pct": r3(other_cpu_pct),
        "cpus": procfs::cpus(),
        "loadgen_threads": args.loadgen_threads.unwrap_or(0).min(64),
        "pinned": args.pin && procfs::cpus() >= 2,
        "connect_s": r3(connect_s),
        "duration_s": r3(window_s),
        "nodes": nodes,
        // All nodes together (and Redis apart), per message relayed within the window.
        "server_cpu_us_per_msg": r3(per_msg(server_cpu_pct)),
    });
    if let Some(redis) = redis {
        // Which commands Redis ran (since it started: joins and setup included).
        if let Ok(stats) = redis.cli(&["INFO", "commandstats"]) {
            for line in stats.lines().filter_map(|l| l.strip_prefix("cmdstat_")) {
                eprintln!("redis {}", line.split(",usec_per_call").next().unwrap_or(line));
            }
        }
    }
    if let Some((redis_cpu_pct, commands)) = redis_use {
        let extra = serde_json::json!({
            "cross_node_rooms": cross_node_rooms,
            "redis_cpu_pct": r3(redis_cpu_pct),
            "redis_cpu_us_per_msg": r3(per_msg(redis_cpu_pct)),
            "redis_commands_per_msg": r3(if in_window == 0 { f64::NAN } else { commands as f64 / in_window as f64 }),
        });
        if let (Some(report), serde_json::Value::Object(extra)) = (report.as_object_mut(), extra) {
            report.extend(extra);
        }
    }
    Ok(report)
}

/// A `redis-server` of the benchmark's own: a free port on 127.0.0.1, nothing saved, killed
/// when dropped.
pub(crate) struct RedisProcess {
    child: std::process::Child,
    port: u16,
}

impl RedisProcess {
    pub(crate) fn start() -> anyhow::Result<RedisProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting redis-server (Debian: apt install redis-server)")?;
        let redis = RedisProcess { child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while redis.cli(&["PING"]).map(|r| r.trim() != "PONG").unwrap_or(true) {
            if std::time::Instant::now() > deadline {
                bail!("redis-server did not answer on port {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("redis-server pid {} on 127.0.0.1:{port}", redis.pid());
        Ok(redis)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .context("running redis-cli")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Commands Redis has run since it started (`INFO stats`, `total_commands_processed`;
    /// the `INFO` asking for it counts too, one per reading).
    pub(crate) fn commands(&self) -> anyhow::Result<u64> {
        let info = self.cli(&["INFO", "stats"])?;
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("redis-cli INFO stats: no total_commands_processed"))
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn per_room_capacity(args: &SignalArgs) -> usize {
    args.clients.div_ceil(args.rooms)
}

type Ws = WebSocketStream<TcpStream>;

/// What one client measured, in µs.
#[derive(Default)]
struct ClientResult {
    /// Relay latency of each message it received.
    latencies: Vec<u32>,
    /// How late each of its sends was against its schedule (load-generator lag).
    send_lags: Vec<u32>,
}

/// One client: connect and join, then relay until told to stop.
async fn client(i: usize, room: usize, shared: Arc<Shared>, phase: watch::Receiver<Phase>) -> ClientResult {
    let mut result = ClientResult::default();
    let joined = {
        let Ok(_slot) = shared.connect_slots.acquire().await else { return result };
        tokio::time::timeout(shared.connect_timeout, connect_and_join(&shared, i, room)).await
    };
    let (mut ws, mut peers) = match joined {
        Ok(Ok(j)) => j,
        Ok(Err(e)) => {
            shared.failed.fetch_add(1, Relaxed);
            shared.note(&shared.errors, "connect/join failed", i, format!("{e:#}"));
            return result;
        }
        Err(_) => {
            shared.failed.fetch_add(1, Relaxed);
            shared.note(&shared.errors, "connect/join failed", i, "timed out");
            return result;
        }
    };
    shared.room_counts[room].fetch_add(1, Relaxed);
    shared.joined.fetch_add(1, Relaxed);

    // One pending wait for the next phase, kept across loop turns (creating a `changed()`
    // future on every turn is a measurable cost at tens of thousands of turns a second).
    let mut next_phase = Box::pin(wait_phase(phase));
    let mut ticker: Option<Interval> = None;
    let mut end: Option<(Instant, u64)> = None;
    let mut seq: u64 = 0;
    let mut next_peer = i;
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerMsg>(&text) {
                    Ok(ServerMsg::Signal { payload: SignalPayload::Candidate { candidate: Some(c) }, .. }) => {
                        let now = shared.now_ns();
                        if let Some(sent_ns) = parse_send_time(&c.candidate) {
                            result.latencies.push(micros(now.saturating_sub(sent_ns)));
                        }
                        shared.received.fetch_add(1, Relaxed);
                        if end.is_some_and(|(_, end_ns)| now <= end_ns) {
                            shared.received_in_window.fetch_add(1, Relaxed);
                        }
                    }
                    Ok(ServerMsg::PeerJoined { peer }) => peers.push(peer.id),
                    Ok(ServerMsg::PeerLeft { id, .. }) => peers.retain(|p| *p != id),
                    Ok(ServerMsg::Error { code, request, .. }) => {
                        shared.note(&shared.errors, "server error", i, format!("{code} (request {request:?})"));
                    }
                    Ok(ServerMsg::Bye { reason }) => {
                        shared.note(&shared.disconnects, "bye", i, format!("{reason:?}"));
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => shared.note(&shared.errors, "unreadable server message", i, e),
                },
                Some(Ok(Message::Close(frame))) => {
                    shared.note(&shared.disconnects, "closed by the server", i, format!("{frame:?}"));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    shared.note(&shared.disconnects, "read failed", i, e);
                    break;
                }
                None => {
                    shared.note(&shared.disconnects, "connection ended", i, "EOF");
                    break;
                }
            },
            (p, rx) = &mut next_phase => {
                let Some(p) = p else { break };
                next_phase = Box::pin(wait_phase(rx));
                match p {
                    Phase::Setup => {}
                    Phase::Relay { start, end: e, end_ns, period } => {
                        end = Some((e, end_ns));
                        if !peers.is_empty() {
                            // Stagger the clients evenly over one period.
                            let offset = period.mul_f64(i as f64 / shared.clients as f64);
                            let mut iv = tokio::time::interval_at(start + offset, period);
                            iv.set_missed_tick_behavior(MissedTickBehavior::Skip);
                            ticker = Some(iv);
                        }
                    }
                    Phase::Stop => break,
                }
            },
            scheduled = tick(&mut ticker) => {
                let now = Instant::now();
                if end.is_none_or(|(e, _)| now >= e) || peers.is_empty() {
                    ticker = None;
                    continue;
                }
                result.send_lags.push(micros(now.saturating_duration_since(scheduled).as_nanos() as u64));
                let to = peers[next_peer % peers.len()].clone();
                next_peer = next_peer.wrapping_add(1);
                let msg = ClientMsg::Signal {
                    to,
                    payload: SignalPayload::Candidate {
                        candidate: Some(IceCandidate {
                            candidate: format!("bench {seq} {}", shared.now_ns()),
                            sdp_mid: None,
                            sdp_m_line_index: None,
                            username_fragment: None,
                        }),
                    },
                };
                seq += 1;
                let text = match serde_json::to_string(&msg) {
                    Ok(t) => t,
                    Err(e) => {
                        shared.note(&shared.errors, "cannot serialise", i, e);
                        break;
                    }
                };
                if let Err(e) = ws.send(Message::text(text)).await {
                    shared.note(&shared.disconnects, "send failed", i, e);
                    break;
                }
                shared.sent.fetch_add(1, Relaxed);
            }
        }
    }
    result
}

/// The next phase (None once the benchmark is gone), and the receiver to wait for the one after.
async fn wait_phase(mut rx: watch::Receiver<Phase>) -> (Option<Phase>, watch::Receiver<Phase>) {
    let p = match rx.changed().await {
        Ok(()) => Some(*rx.borrow_and_update()),
        Err(_) => None,
    };
    (p, rx)
}

fn micros(ns: u64) -> u32 {
    (ns / 1000).min(u32::MAX as u64) as u32
}

/// Waits for the next tick and returns when it was due, or waits forever when there is no
/// ticker.
async fn tick(ticker: &mut Option<Interval>) -> Instant {
    match ticker {
        Some(t) => t.tick().await,
        None => std::future::pending().await,
    }
}

/// The send time in a candidate string `bench <seq> <ns>`.
fn parse_send_time(candidate: &str) -> Option<u64> {
    candidate.strip_prefix("bench ")?.rsplit(' ').next()?.parse().ok()
}

/// Opens the WebSocket, reads `welcome`, joins room `bench-<room>` and waits for `joined`.
/// Returns the socket and the ids of the peers already in the room.
async fn connect_and_join(shared: &Shared, i: usize, room: usize) -> anyhow::Result<(Ws, Vec<PeerId>)> {
    let port = shared.ports[i % shared.ports.len()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.context("TCP connect")?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(shared.ws_config))
        .await
        .context("WebSocket handshake")?;
    match next_msg(&mut ws).await? {
        ServerMsg::Welcome { .. } => {}
        other => bail!("expected welcome, got {other:?}"),
    }
    let join = ClientMsg::Join {
        recording_ok: false,
        protocol: PROTOCOL_VERSION,
        room: format!("bench-{room}"),
        name: format!("c{i}"),
        audio: false,
        video: false,
        password: None,
        token: None,
    };
    ws.send(Message::text(serde_json::to_string(&join)?)).await.context("sending join")?;
    loop {
        match next_msg(&mut ws).await? {
            ServerMsg::Joined { peers, .. } => return Ok((ws, peers.into_iter().map(|p| p.id).collect())),
            ServerMsg::Error { code, .. } => bail!("join refused: {code}"),
            ServerMsg::Bye { reason } => bail!("bye: {reason:?}"),
            _ => {}
        }
    }
}

/// The next server message (skipping pings and pongs).
async fn next_msg(ws: &mut Ws) -> anyhow::Result<ServerMsg> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).context("unreadable server message"),
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("WebSocket read"),
            None => bail!("connection ended"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_send_time;

    #[test]
    fn send_time_round_trips() {
        assert_eq!(parse_send_time("bench 17 123456789"), Some(123456789));
        assert_eq!(parse_send_time("candidate:1 1 udp 1 1.2.3.4 5 typ host"), None);
    }
}
