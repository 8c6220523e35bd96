//! `huddle-bench hostile`: the server under attack from many sides at once, while normal
//! people use it; the proof that what an outside probe found stays fixed.
//!
//! 1. Start the real `huddle` binary (beside this executable, or `--server-bin`) on
//!    `127.0.0.1:0` with its defaults, its soft limit on open files at `--server-nofile` (1024,
//!    systemd's default) before it runs. Warm up: the normal clients (below) for a few
//!    seconds, then they leave; once the server is at rest (no connection, every `/metrics`
//!    gauge 0, its memory handed back as it does when its last session ends) it is read: the
//!    **rest baseline**.
//! 2. The normal clients come back and run to the end ([`normal`]): from 127.0.0.1, three
//!    people in a room chat and ping (every round trip timed), share a small file now and
//!    then, and a newcomer loads the page, connects, joins and leaves every few seconds. After
//!    `--quiet-secs` the server is read again: the **live baseline**.
//! 3. For `--seconds`, the attackers ([`attack`]), each kind from its own addresses, all at
//!    once: non-readers and slow readers fed the largest `signal` frames, slowloris requests,
//!    WebSocket upgrades that never speak, floods of valid messages over the rate limits,
//!    malformed and oversized frames, clients holding a buffer grown by a frame just under
//!    1 MiB, and file offers never uploaded (one upload started and stalled). The server is
//!    sampled every 2 s (memory, open files, connections, the normal clients' slowest answer).
//! 4. The attackers stop and **abandon** their connections (open, silent, unread). Within
//!    `--cleanup-secs` the server must have closed every one of them by itself: no attacker
//!    connection ESTABLISHED on its side, `huddle_ws_connections` and its open files back to the
//!    live baseline. The normal clients carry on meanwhile.
//! 5. The normal clients leave; within `--rest-secs` the server must be at rest again, and then
//!    its memory near the rest baseline, its open files back, no connection, every gauge 0.
//! 6. The abandoned connections are closed, and the server read once more (for the record).
//!
//! One JSON line on stdout; `ok` is false (and the exit status 1, unless `--report-only`) when
//! a normal answer took `--max-rtt-ms` or more, a normal request failed, or the server did not
//! come back. The whole run is bounded: a watchdog ends it (exit status 3) if it overruns its
//! plan by 90 s, and the server dies with this process.

mod attack;
mod normal;
mod wire;

use crate::procfs;
use crate::server::ServerProcess;
use crate::signal::Workers;
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct HostileArgs {
    /// Length of the attack, in seconds
    #[arg(long, env = "HUDDLE_HOSTILE_SECONDS", default_value_t = 60.0)]
    pub seconds: f64,
    /// The huddle binary to attack (default: `huddle` beside this executable; if there is none,
    /// this executable's hidden `serve`, the same server code)
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// The server's soft limit on open files, set before it starts (its hard limit stays)
    #[arg(long, default_value_t = 1024)]
    pub server_nofile: u64,
    /// Client addresses per kind of attack (kind K comes from 127.0.K.2, 127.0.K.3, …)
    #[arg(long, default_value_t = 4)]
    pub ips: usize,
    /// Non-readers per address: join, then never read (tiny receive buffer)
    #[arg(long, default_value_t = 1)]
    pub nonreaders_per_ip: usize,
    /// Slow readers per address: read 1 KiB every 100 ms
    #[arg(long, default_value_t = 1)]
    pub slow_readers_per_ip: usize,
    /// How many times each non-reader or slow reader is replaced once the server got rid of it
    #[arg(long, default_value_t = 10)]
    pub victim_respawns: usize,
    /// Largest-size `signal` frames a second one feeder sends to its address's non-readers and
    /// slow readers (the signalling budget is 100 a second)
    #[arg(long, default_value_t = 90.0)]
    pub feed_rate: f64,
    /// Slowloris requests per address (a header byte every --loris-dribble-secs)
    #[arg(long, default_value_t = 300)]
    pub loris_per_ip: usize,
    #[arg(long, default_value_t = 5.0)]
    pub loris_dribble_secs: f64,
    /// WebSocket upgrades per address that never send a message nor answer a ping
    #[arg(long, default_value_t = 80)]
    pub idle_upgrades_per_ip: usize,
    /// Connections per address flooding valid messages (chat, signal, join/leave, …)
    #[arg(long, default_value_t = 2)]
    pub flooders_per_ip: usize,
    /// Messages a second each flooder sends
    #[arg(long, default_value_t = 300.0)]
    pub flood_rate: f64,
    /// Connections per address sending malformed and oversized frames
    #[arg(long, default_value_t = 2)]
    pub malformed_per_ip: usize,
    /// Malformed frames a second each of them sends
    #[arg(long, default_value_t = 20.0)]
    pub malformed_rate: f64,
    /// Connections per address that send one frame just under 1 MiB and then stay
    #[arg(long, default_value_t = 16)]
    pub buffer_holders_per_ip: usize,
    /// Rooms of three per address offering the largest files and never uploading them
    #[arg(long, default_value_t = 1)]
    pub file_rooms_per_ip: usize,
    /// Normal traffic before the attack, in seconds
    #[arg(long, default_value_t = 5.0)]
    pub quiet_secs: f64,
    /// Longest wait after the attack for the server to close the abandoned connections
    #[arg(long, default_value_t = 60.0)]
    pub cleanup_secs: f64,
    /// Longest wait, once everyone has gone, for the server to be at rest (sessions of dropped
    /// connections are kept for the resume grace period, 30 s by default)
    #[arg(long, default_value_t = 45.0)]
    pub rest_secs: f64,
    /// Time between two rounds of the normal clients (a chat and a ping), in ms
    #[arg(long, default_value_t = 500)]
    pub probe_ms: u64,
    /// Time between two newcomers (page, connect, join, leave), in seconds
    #[arg(long, default_value_t = 2.0)]
    pub newcomer_secs: f64,
    /// Time between two files shared by the normal clients, in seconds (0: none)
    #[arg(long, default_value_t = 10.0)]
    pub file_secs: f64,
    /// Every normal answer must come faster than this, in ms
    #[arg(long, default_value_t = 1000.0)]
    pub max_rtt_ms: f64,
    /// Allowed resident memory at rest after the attack, over the rest baseline: percent …
    #[arg(long, default_value_t = 25.0)]
    pub rss_slack_pct: f64,
    /// … plus KiB
    #[arg(long, default_value_t = 16384)]
    pub rss_slack_kb: u64,
    /// Allowed extra open files of the server after the attack
    #[arg(long, default_value_t = 4)]
    pub fd_slack: usize,
    /// Peak resident memory allowed during the attack, in MiB (0: not checked)
    #[arg(long, default_value_t = 0)]
    pub max_peak_rss_mb: u64,
    /// The attack stops early when the server's resident memory passes this, in MiB (a
    /// failure: it protects the machine, not the server)
    #[arg(long, default_value_t = 1536)]
    pub max_server_rss_mb: u64,
    /// Print the verdicts, but exit 0 even when they fail
    #[arg(long)]
    pub report_only: bool,
    /// Extra argument for the server (repeatable), e.g. --server-arg=--idle-timeout-secs=20
    #[arg(long = "server-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub server_args: Vec<String>,
}

impl HostileArgs {
    fn check(&self) -> anyhow::Result<()> {
        for (name, v, min, max) in [
            ("--seconds", self.seconds, 1.0, 3600.0),
            ("--quiet-secs", self.quiet_secs, 0.0, 600.0),
            ("--cleanup-secs", self.cleanup_secs, 0.0, 600.0),
            ("--rest-secs", self.rest_secs, 1.0, 600.0),
            ("--loris-dribble-secs", self.loris_dribble_secs, 0.1, 600.0),
            ("--newcomer-secs", self.newcomer_secs, 0.1, 600.0),
            ("--file-secs", self.file_secs, 0.0, 3600.0),
            ("--feed-rate", self.feed_rate, 0.1, 10_000.0),
            ("--flood-rate", self.flood_rate, 0.1, 100_000.0),
            ("--malformed-rate", self.malformed_rate, 0.1, 10_000.0),
            ("--max-rtt-ms", self.max_rtt_ms, 1.0, 60_000.0),
        ] {
            if !(v >= min && v <= max) {
                bail!("{name} must be between {min} and {max}");
            }
        }
        if self.ips == 0 || self.ips > 200 {
            bail!("--ips must be between 1 and 200");
        }
        let per_ip = self.loris_per_ip
            + self.idle_upgrades_per_ip
            + self.buffer_holders_per_ip
            + 3 * self.file_rooms_per_ip
            + self.flooders_per_ip
            + self.malformed_per_ip;
        if per_ip > 5000 {
            bail!("at most 5000 attacker connections per address");
        }
        if !(50..=60_000).contains(&self.probe_ms) {
            bail!("--probe-ms must be between 50 and 60000");
        }
        if self.server_nofile < 64 {
            bail!("--server-nofile must be at least 64");
        }
        Ok(())
    }

    fn mix(&self) -> attack::Mix {
        attack::Mix {
            ips: self.ips,
            nonreaders: self.nonreaders_per_ip,
            slow_readers: self.slow_readers_per_ip,
            victim_respawns: self.victim_respawns,
            feed_rate: self.feed_rate,
            loris: self.loris_per_ip,
            loris_dribble: Duration::from_secs_f64(self.loris_dribble_secs),
            idle_upgrades: self.idle_upgrades_per_ip,
            flooders: self.flooders_per_ip,
            flood_rate: self.flood_rate,
            malformed: self.malformed_per_ip,
            malformed_rate: self.malformed_rate,
            buffer_holders: self.buffer_holders_per_ip,
            file_rooms: self.file_rooms_per_ip,
        }
    }
}

/// A stop signal every attacker and normal client watches.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    fn new() -> (watch::Sender<bool>, Stop) {
        let (tx, rx) = watch::channel(false);
        (tx, Stop(rx))
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once stopped (or once nobody can stop us any more).
    pub async fn wait(&mut self) {
        while !*self.0.borrow_and_update() {
            if self.0.changed().await.is_err() {
                return;
            }
        }
    }
}

pub fn run(args: HostileArgs) -> anyhow::Result<()> {
    args.check()?;
    // Our side of every attacker connection is a file too.
    procfs::raise_nofile(65_536)?;
    let beside = std::env::current_exe().context("finding this executable")?.with_file_name("huddle");
    let bin = match &args.server_bin {
        Some(bin) => Some(bin.clone()),
        None if beside.is_file() => Some(beside),
        None => {
            eprintln!(
                "warning: no `huddle` binary beside this one (cargo build --release -p huddle-server); \
                 attacking this executable's `serve`, the same server code"
            );
            None
        }
    };
    let mut server_args: Vec<OsString> = vec!["--listen".into(), "127.0.0.1:0".into()];
    server_args.extend(args.server_args.iter().map(OsString::from));
    eprintln!(
        "starting the server: {} {} (soft open-file limit {})",
        bin.as_ref().map_or("huddle-bench serve".into(), |b| b.display().to_string()),
        server_args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
        args.server_nofile
    );
    let mut server =
        ServerProcess::start_limited(bin.as_deref(), &server_args, args.server_nofile, Duration::from_secs(30))?;
    eprintln!("server pid {} on 127.0.0.1:{}", server.pid(), server.port);
    watchdog(Duration::from_secs_f64(
        10.0 + args.quiet_secs + args.seconds + args.cleanup_secs + args.rest_secs + 90.0,
    ));
    let attackers = Workers::start(1)?;
    let normals = Workers::start(1)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let bin_name = bin.as_ref().map_or("huddle-bench serve".to_string(), |b| b.display().to_string());
    let result = rt.block_on(drive(&args, &mut server, &attackers, &normals, bin_name));
    drop(attackers);
    drop(normals);
    drop(rt);
    drop(server);
    let report = result?;
    println!("{report}");
    if report["ok"] != serde_json::Value::Bool(true) && !args.report_only {
        bail!("the server did not hold: {}", report["reasons"]);
    }
    Ok(())
}

/// Ends the process if the run overruns `limit` (a stuck server must not hang CI); the server
/// dies with us (see [`ServerProcess::start_limited`]).
fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("hostile: the run did not end within {limit:?}; giving up");
        let report = serde_json::json!({
            "bench": "hostile",
            "ok": false,
            "reasons": [format!("the run did not end within {} s", limit.as_secs())],
        });
        println!("{report}");
        std::process::exit(3);
    });
}

/// The server as read from outside at one moment.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    at_s: f64,
    rss_kb: u64,
    fds: usize,
    /// ESTABLISHED TCP connections on the server's port (its side, accept queue included), all
    /// and those from an attacker's address (not 127.0.0.1).
    established: usize,
    established_attackers: usize,
    metrics: Option<Metrics>,
    metrics_error: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct Metrics {
    /// Every sample, by name with labels.
    samples: BTreeMap<String, f64>,
    /// The names declared `# TYPE … gauge`.
    gauges: Vec<String>,
}

/// Gauges that need not be 0 when nobody is connected (process figures, ratios, settings).
fn gauge_may_stay(name: &str) -> bool {
    name.starts_with("process_")
        || ["_per_", "limit", "capacity", "_max", "_info", "_start_time", "_seconds"].iter().any(|p| name.contains(p))
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut m = Metrics::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some((name, "gauge")) = rest.trim().split_once(' ') {
                    m.gauges.push(name.to_string());
                }
            } else if !line.starts_with('#') {
                if let Some((name, value)) = line.rsplit_once(' ') {
                    if let Ok(v) = value.trim().parse() {
                        m.samples.insert(name.trim().to_string(), v);
                    }
                }
            }
        }
        m
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.samples.get(name).copied()
    }

    /// Gauges above 0 that should be 0 when nobody is connected.
    fn nonzero_gauges(&self) -> Vec<String> {
        self.samples
            .iter()
            .filter(|(name, v)| {
                let base = name.split('{').next().unwrap_or(name);
                **v > crate::server::gauge_at_rest(base)
                    && self.gauges.iter().any(|g| g == base)
                    && !gauge_may_stay(base)
            })
            .map(|(n, v)| format!("{n}={v}"))
            .collect()
    }

    /// The counters of what the server refused and closed (`huddle_ws_*_total`), non-zero.
    fn defence_counters(&self) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|(n, v)| {
                **v != 0.0
                    && (n.starts_with("huddle_ws_refused")
                        || n.starts_with("huddle_ws_disconnects")
                        || n.starts_with("huddle_ws_connections_refused")
                        || n.starts_with("huddle_ws_error_replies")
                        || (n.starts_with("huddle_") && n.contains("refused") && n.contains("_total")))
            })
            .map(|(n, v)| (n.clone(), *v))
            .collect()
    }
}

async fn metrics(port: u16, limit: Duration) -> anyhow::Result<Metrics> {
    let (status, body) =
        timeout(limit, wire::http_get(Ipv4Addr::LOCALHOST, port, "/metrics", 4 << 20)).await.context("no answer")??;
    if status != 200 {
        bail!("answered {status}");
    }
    Ok(Metrics::parse(&String::from_utf8_lossy(&body)))
}

async fn snapshot(pid: u32, port: u16, t0: Instant, metrics_limit: Duration) -> Snapshot {
    let (metrics, metrics_error) = match metrics(port, metrics_limit).await {
        Ok(m) => (Some(m), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let sockets = procfs::tcp_sockets_on_port(port).unwrap_or_default();
    let established: Vec<_> = sockets.iter().filter(|s| s.state == procfs::TCP_ESTABLISHED).collect();
    Snapshot {
        at_s: t0.elapsed().as_secs_f64(),
        rss_kb: procfs::rss_kb(pid).unwrap_or(0),
        fds: procfs::fd_count(pid).unwrap_or(0),
        established: established.len(),
        established_attackers: established.iter().filter(|s| s.remote != Ipv4Addr::LOCALHOST).count(),
        metrics,
        metrics_error,
    }
}

impl Snapshot {
    fn ws_connections(&self) -> Option<f64> {
        self.metrics.as_ref().and_then(|m| m.get("huddle_ws_connections"))
    }

    fn releases(&self) -> Option<f64> {
        self.metrics.as_ref().and_then(|m| m.get("huddle_memory_releases_total"))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "at_s": (self.at_s * 10.0).round() / 10.0,
            "rss_kb": self.rss_kb,
            "fds": self.fds,
            "established": self.established,
            "established_from_attackers": self.established_attackers,
            "ws_connections": self.ws_connections(),
            "metrics_nonzero_gauges": self.metrics.as_ref().map(Metrics::nonzero_gauges),
            "metrics_error": self.metrics_error,
        })
    }
}

/// Waits (up to `limit`) until the server is at rest — no connection on its port, `/metrics`
/// answering with every gauge at 0, and its memory handed back (`huddle_memory_releases_total`
/// above `releases_before`, or 5 s after the rest) — and reads it then (or at `limit`).
async fn at_rest(pid: u32, port: u16, t0: Instant, releases_before: f64, limit: Duration) -> (Snapshot, f64) {
    let start = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    loop {
        let s = snapshot(pid, port, t0, Duration::from_secs(2)).await;
        let quiet = s.established == 0 && s.metrics.as_ref().is_some_and(|m| m.nonzero_gauges().is_empty());
        let released = s.releases().is_some_and(|r| r > releases_before);
        quiet_since = if quiet { quiet_since.or(Some(Instant::now())) } else { None };
        let settled = quiet_since.is_some_and(|t| released || t.elapsed() >= Duration::from_secs(5));
        if settled || start.elapsed() >= limit {
            // The trim follows the last session's end within the hub's turn; read after it.
            sleep(Duration::from_millis(300)).await;
            let s = snapshot(pid, port, t0, Duration::from_secs(2)).await;
            return (s, start.elapsed().as_secs_f64());
        }
        sleep(Duration::from_millis(500)).await;
    }
}

/// `(limits.maxFrameBytes, limits.maxFileBytes)` from a `welcome`.
async fn server_limits(port: u16) -> anyhow::Result<(usize, u64)> {
    let mut ws = wire::ws_from(Ipv4Addr::LOCALHOST, port, Default::default()).await?;
    use futures_util::StreamExt;
    let until = Instant::now() + wire::CONNECT_TIMEOUT;
    let limits = loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                if let Ok(huddle_protocol::ServerMsg::Welcome { limits, .. }) = serde_json::from_str(&t) {
                    break limits;
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => bail!("no welcome from the server"),
        }
    };
    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
    Ok((limits.max_frame_bytes as usize, limits.max_file_bytes))
}

/// One line of the timeline: the server every 2 s during the attack and the cleanup.
fn timeline_row(s: &Snapshot, normal: (f64, u64)) -> serde_json::Value {
    serde_json::json!([
        (s.at_s * 10.0).round() / 10.0,
        s.rss_kb / 1024,
        s.fds,
        s.established_attackers,
        s.ws_connections(),
        normal.0.round(),
        normal.1,
    ])
}

/// Allowed memory over `base`: `pct` percent of it plus `kb`.
fn allowed(base: u64, pct: f64, kb: u64) -> u64 {
    base + (base as f64 * pct / 100.0) as u64 + kb
}

async fn drive(
    args: &HostileArgs,
    server: &mut ServerProcess,
    attackers: &Workers,
    normals: &Workers,
    bin: String,
) -> anyhow::Result<serde_json::Value> {
    let (pid, port) = (server.pid(), server.port);
    let t0 = Instant::now();
    let nofile_at_start = procfs::nofile_limits(pid)?;
    let (max_frame, max_file) = server_limits(port).await?;
    eprintln!("server limits: maxFrameBytes {max_frame}, maxFileBytes {max_file}; open files {nofile_at_start:?}");
    let mut reasons: Vec<String> = Vec::new();
    let stats = Arc::new(normal::Stats::default());
    let plan = normal::Plan {
        port,
        probe_every: Duration::from_millis(args.probe_ms),
        newcomer_every: Duration::from_secs_f64(args.newcomer_secs),
        file_every: (args.file_secs > 0.0).then(|| Duration::from_secs_f64(args.file_secs)),
    };

    // 1. Warm-up, then the rest baseline.
    stats.set_phase(normal::WARMUP);
    let (warm_stop, stop) = Stop::new();
    let warm = normals.handles[0].spawn(normal::run(plan, stats.clone(), stop));
    sleep(Duration::from_secs(3)).await;
    let _ = warm_stop.send(true);
    let _ = timeout(Duration::from_secs(20), warm).await;
    let releases = snapshot(pid, port, t0, Duration::from_secs(2)).await.releases().unwrap_or(0.0);
    let (rest_base, _) = at_rest(pid, port, t0, releases - 1.0, Duration::from_secs_f64(args.rest_secs)).await;
    eprintln!("rest baseline: {:?}", rest_base.json());

    // 2. The normal clients for the rest of the run; the live baseline.
    stats.set_phase(normal::QUIET);
    let (normal_stop, stop) = Stop::new();
    let normal_task = normals.handles[0].spawn(normal::run(plan, stats.clone(), stop));
    sleep(Duration::from_secs_f64(args.quiet_secs.max(2.0))).await;
    let live_base = snapshot(pid, port, t0, Duration::from_secs(2)).await;
    stats.take_window();
    eprintln!("live baseline: {:?}", live_base.json());

    // 3. The attack.
    stats.set_phase(normal::ATTACK);
    let (attack_stop, stop) = Stop::new();
    let ctx = Arc::new(attack::Ctx::new(port, args.mix(), max_frame, max_file, stop));
    let launched = {
        let ctx = ctx.clone();
        attackers.handles[0].spawn(async move { attack::launch(&ctx) }).await.context("starting the attackers")?
    };
    eprintln!("attack: {} attackers from {} addresses per kind, for {} s", launched.len(), args.ips, args.seconds);
    let attack_start = Instant::now();
    let attack_end = attack_start + Duration::from_secs_f64(args.seconds);
    let mut timeline = Vec::new();
    let mut rss_max_kb = 0u64;
    let mut safety_stop = None;
    let mut died = false;
    while Instant::now() < attack_end {
        sleep(Duration::from_secs(2).min(attack_end - Instant::now())).await;
        let s = snapshot(pid, port, t0, Duration::from_millis(1500)).await;
        let window = stats.take_window();
        rss_max_kb = rss_max_kb.max(s.rss_kb);
        eprintln!(
            "t={:>5.1}s server RSS {} MiB, {} files, {} attacker connections, ws {:?}; normal slowest {:.0} ms, {} failed",
            attack_start.elapsed().as_secs_f64(),
            s.rss_kb / 1024,
            s.fds,
            s.established_attackers,
            s.ws_connections(),
            window.0,
            window.1
        );
        timeline.push(timeline_row(&s, window));
        if !server.alive() {
            died = true;
            break;
        }
        if s.rss_kb / 1024 > args.max_server_rss_mb {
            safety_stop = Some(s.rss_kb / 1024);
            eprintln!("the server's memory passed {} MiB: stopping the attack early", args.max_server_rss_mb);
            break;
        }
    }
    let _ = attack_stop.send(true);
    let attack_secs = attack_start.elapsed().as_secs_f64();
    let mut stopped = 0;
    for t in launched {
        if timeout(Duration::from_secs(10), t).await.is_ok() {
            stopped += 1;
        }
    }
    stats.set_phase(normal::AFTER);
    if died {
        bail!("the server process exited during the attack");
    }

    // 4. The attackers have gone silent: the server must let go of them by itself.
    let cleanup_start = Instant::now();
    let mut after_attack;
    loop {
        sleep(Duration::from_secs(1)).await;
        after_attack = snapshot(pid, port, t0, Duration::from_millis(1500)).await;
        rss_max_kb = rss_max_kb.max(after_attack.rss_kb);
        let window = stats.take_window();
        timeline.push(timeline_row(&after_attack, window));
        // Let go of means closed: the sockets too, not only the sessions (a connection the
        // server ends says goodbye and lingers for a few seconds before its socket goes).
        let done = after_attack.established_attackers == 0
            && after_attack.ws_connections().is_some_and(|w| Some(w) <= live_base.ws_connections())
            && after_attack.fds <= live_base.fds + args.fd_slack;
        if done || cleanup_start.elapsed().as_secs_f64() >= args.cleanup_secs {
            break;
        }
        if !server.alive() {
            bail!("the server process exited after the attack");
        }
    }
    let cleanup_took = cleanup_start.elapsed().as_secs_f64();
    eprintln!("after the attack ({cleanup_took:.0} s): {:?}", after_attack.json());

    // 5. Everyone leaves: the server at rest again.
    let releases = after_attack.releases().unwrap_or(0.0);
    let _ = normal_stop.send(true);
    let _ = timeout(Duration::from_secs(20), normal_task).await;
    let (rest_end, rest_took) = at_rest(pid, port, t0, releases, Duration::from_secs_f64(args.rest_secs)).await;
    eprintln!("at rest after everyone left ({rest_took:.0} s): {:?}", rest_end.json());

    // 6. The attackers' abandoned connections close.
    let abandoned = attackers.handles[0].spawn({
        let ctx = ctx.clone();
        async move { ctx.close_abandoned() }
    });
    let abandoned = abandoned.await.unwrap_or(0);
    let mut after_close = snapshot(pid, port, t0, Duration::from_secs(2)).await;
    for _ in 0..20 {
        if after_close.established == 0 && after_close.metrics.is_some() {
            break;
        }
        sleep(Duration::from_millis(500)).await;
        after_close = snapshot(pid, port, t0, Duration::from_secs(2)).await;
    }
    let alive = server.alive();

    // The verdicts.
    let (answers, worst_ms, failures) = stats.summary(&[normal::QUIET, normal::ATTACK, normal::AFTER]);
    if answers == 0 {
        reasons.push("the normal clients got no answer at all".into());
    }
    if worst_ms >= args.max_rtt_ms {
        reasons.push(format!("a normal client waited {worst_ms:.0} ms for an answer (limit {} ms)", args.max_rtt_ms));
    }
    if failures > 0 {
        reasons.push(format!("{failures} normal requests failed (connect, page, join, chat, ping or file)"));
    }
    if let Some(mb) = safety_stop {
        reasons.push(format!("the server's memory reached {mb} MiB: the attack was stopped early"));
    }
    if after_attack.established_attackers > 0 {
        reasons.push(format!(
            "{} attacker connections still ESTABLISHED on the server {cleanup_took:.0} s after the attack",
            after_attack.established_attackers
        ));
    }
    match (after_attack.ws_connections(), live_base.ws_connections()) {
        (Some(a), Some(b)) if a > b => {
            reasons.push(format!("huddle_ws_connections {a} {cleanup_took:.0} s after the attack, {b} before it"))
        }
        (None, _) => reasons.push(format!(
            "/metrics did not answer {cleanup_took:.0} s after the attack: {}",
            after_attack.metrics_error.as_deref().unwrap_or("?")
        )),
        _ => {}
    }
    if after_attack.fds > live_base.fds + args.fd_slack {
        reasons.push(format!(
            "the server held {} open files {cleanup_took:.0} s after the attack, {} before it",
            after_attack.fds, live_base.fds
        ));
    }
    let rss_max = allowed(rest_base.rss_kb, args.rss_slack_pct, args.rss_slack_kb);
    if rest_end.rss_kb > rss_max {
        reasons.push(format!(
            "resident memory at rest {} KiB after the attack, {} KiB before it (allowed {rss_max})",
            rest_end.rss_kb, rest_base.rss_kb
        ));
    }
    if rest_end.fds > rest_base.fds + args.fd_slack {
        reasons.push(format!("{} open files at rest after the attack, {} before it", rest_end.fds, rest_base.fds));
    }
    if rest_end.established > 0 {
        reasons.push(format!("{} connections ESTABLISHED on the server once everyone had gone", rest_end.established));
    }
    match &rest_end.metrics {
        None => reasons.push(format!(
            "/metrics did not answer once everyone had gone: {}",
            rest_end.metrics_error.as_deref().unwrap_or("?")
        )),
        Some(m) if !m.nonzero_gauges().is_empty() => {
            reasons.push(format!("gauges not 0 once everyone had gone: {}", m.nonzero_gauges().join(", ")))
        }
        _ => {}
    }
    if !alive {
        reasons.push("the server process exited".into());
    }
    let rss_peak_kb = procfs::rss_peak_kb(pid).unwrap_or(rss_max_kb).max(rss_max_kb);
    if args.max_peak_rss_mb > 0 && rss_peak_kb / 1024 > args.max_peak_rss_mb {
        reasons.push(format!("peak resident memory {} MiB (limit {} MiB)", rss_peak_kb / 1024, args.max_peak_rss_mb));
    }
    let defence = [&after_attack, &after_close, &rest_end]
        .iter()
        .find_map(|s| s.metrics.as_ref())
        .map(Metrics::defence_counters)
        .unwrap_or_default();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let r1 = |x: f64| (x * 10.0).round() / 10.0;
    let ok = reasons.is_empty();
    Ok(serde_json::json!({
        "bench": "hostile",
        "ok": ok,
        "reasons": reasons,
        "normal_worst_ms": r1(worst_ms),
        "normal_answers": answers,
        "normal_failures": failures,
        "rss_baseline_kb": rest_base.rss_kb,
        "rss_peak_kb": rss_peak_kb,
        "rss_after_kb": rest_end.rss_kb,
        "server": {
            "bin": bin,
            "nofile_soft_hard": [nofile_at_start.0, nofile_at_start.1],
            "max_frame_bytes": max_frame,
            "max_file_bytes": max_file,
            "rest_baseline": rest_base.json(),
            "live_baseline": live_base.json(),
            "after_attack": after_attack.json(),
            "cleanup_secs": r1(cleanup_took),
            "at_rest_after": rest_end.json(),
            "rest_secs": r1(rest_took),
            "after_abandoned_closed": after_close.json(),
            "defence_counters": defence,
        },
        "normal": stats.json(),
        "attack": {
            "seconds": r1(attack_secs),
            "ips_per_kind": args.ips,
            "addresses": attack::KINDS.iter().map(|(k, b)| (k.to_string(), format!("127.0.{b}.2-{}", args.ips + 1))).collect::<BTreeMap<_, _>>(),
            "attackers": stopped,
            "abandoned_connections": abandoned,
            "events": ctx.tally.json(),
        },
        "timeline_columns": ["t_s", "rss_mib", "fds", "attacker_conns", "ws_connections", "normal_slowest_ms", "normal_failures"],
        "timeline": timeline,
        "loadavg": loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_gauges_and_their_types() {
        let text = "# TYPE huddle_ws_connections gauge\nhuddle_ws_connections 3\n\
                    # TYPE huddle_resumed_total counter\nhuddle_resumed_total 9\n\
                    # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 1e7\n\
                    # TYPE huddle_ws_refused_messages_total counter\nhuddle_ws_refused_messages_total{reason=\"bad_json\"} 4\n";
        let m = Metrics::parse(text);
        assert_eq!(m.get("huddle_ws_connections"), Some(3.0));
        assert_eq!(m.nonzero_gauges(), vec!["huddle_ws_connections=3".to_string()]);
        assert_eq!(m.defence_counters().len(), 1);
    }
}
