//! The server under test, in its own process so that its memory and CPU can be read from
//! `/proc/<pid>`: this binary re-executed as `huddle-bench serve <huddle args…>`.

use anyhow::{anyhow, bail, Context};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Set in the child's environment: exit when standard input closes, i.e. when the benchmark
/// that started us is gone, even if it was killed before it could kill us.
const PARENT_PIPE_ENV: &str = "HUDDLE_BENCH_PARENT_PIPE";
/// Set in the child's environment: the CPUs the server may run on (e.g. `0`).
const CPUS_ENV: &str = "HUDDLE_BENCH_SERVER_CPUS";

/// The start of a line the child writes on its standard output to answer a probe.
const PROBE_REPLY: &str = "huddle-bench-probe ";

/// What a `/metrics` gauge of the server reads when nobody is connected: 0, but for
/// `huddle_tcp_connections`, which counts the `GET /metrics` that reads it.
pub fn gauge_at_rest(name: &str) -> f64 {
    if name == "huddle_tcp_connections" {
        1.0
    } else {
        0.0
    }
}

/// `huddle-bench serve …`: runs the huddle server with these arguments.
///
/// With [`PARENT_PIPE_ENV`] set it reads its standard input line by line: `probe <n>` and
/// `trim <n>` (which first hands the allocator's free memory back to the system) are answered on
/// standard output with `huddle-bench-probe <n> <JSON of Probe>`; end of input ends the process.
pub fn serve(args: Vec<OsString>) -> anyhow::Result<()> {
    if let Some(cpus) = std::env::var_os(CPUS_ENV) {
        crate::procfs::pin_to_cpus(&crate::procfs::parse_cpu_list(&cpus.to_string_lossy())?)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    if std::env::var_os(PARENT_PIPE_ENV).is_some() {
        let handle = rt.handle().clone();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            let mut line = String::new();
            // Lines are short; a longer one is not a probe and is skipped.
            while matches!(stdin.lock().take(256).read_line(&mut line), Ok(n) if n > 0) {
                answer_probe(line.trim(), &handle);
                line.clear();
            }
            std::process::exit(0);
        });
    }
    rt.block_on(huddle_server::run_cli(args))
}

/// What the server process says about itself when probed (see [`ServerProcess::probe`]).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    /// Tasks alive in the server's runtime (connections, the hub, the media and TURN drivers…).
    pub tasks: usize,
    /// glibc's `mallinfo2`, in KiB (absent with another C library): bytes handed out and not
    /// freed yet (`uordblks` + `hblkhd`), and free bytes in its arenas (`fordblks`; whole free
    /// pages given back to the system by a trim still count).
    pub heap_in_use_kb: Option<u64>,
    pub heap_free_kb: Option<u64>,
    /// `VmRSS`, read right after the rest (after the trim, for `trim`).
    pub rss_kb: u64,
}

fn answer_probe(line: &str, rt: &tokio::runtime::Handle) {
    let (trim, n) = match line.split_once(' ') {
        Some(("probe", n)) => (false, n),
        Some(("trim", n)) => (true, n),
        _ => return,
    };
    let Ok(n) = n.parse::<u64>() else { return };
    if trim {
        heap::trim();
    }
    let (heap_in_use_kb, heap_free_kb) = heap::stats().unzip();
    let probe = Probe {
        tasks: rt.metrics().num_alive_tasks(),
        heap_in_use_kb,
        heap_free_kb,
        rss_kb: crate::procfs::rss_kb(std::process::id()).unwrap_or(0),
    };
    if let Ok(json) = serde_json::to_string(&probe) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{PROBE_REPLY}{n} {json}");
        let _ = out.flush();
    }
}

/// The C library's allocator, where it can be asked (glibc).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod heap {
    /// `(in use, free in its arenas)`, in KiB.
    pub fn stats() -> Option<(u64, u64)> {
        // SAFETY: mallinfo2 only reads the allocator's counters (taking its arena locks).
        let m = unsafe { libc::mallinfo2() };
        Some((((m.uordblks + m.hblkhd) / 1024) as u64, (m.fordblks / 1024) as u64))
    }

    /// Gives the free memory of every arena back to the system (`malloc_trim(0)`).
    pub fn trim() {
        // SAFETY: malloc_trim takes the arena locks itself; it frees nothing in use.
        unsafe { libc::malloc_trim(0) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod heap {
    pub fn stats() -> Option<(u64, u64)> {
        None
    }
    pub fn trim() {}
}

/// A running server child. Killed when dropped (also on error or panic).
pub struct ServerProcess {
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// Pinned to CPU 0, the load generator to the others ([`ServerProcess::start_for_bench`]).
    pub pinned: bool,
    prober: Arc<Prober>,
}

/// Asks the server process about itself (see [`Probe`]), over its standard input.
pub struct Prober(Mutex<ProberState>);

struct ProberState {
    stdin: ChildStdin,
    /// Answers, `<n> <JSON>`, from the thread reading the child's output.
    replies: mpsc::Receiver<String>,
    last: u64,
}

impl Prober {
    /// The server's tasks, heap and memory; with `trim`, after it gave its allocator's free
    /// memory back to the system. Blocks for at most 5 s.
    pub fn probe(&self, trim: bool) -> anyhow::Result<Probe> {
        let mut st = self.0.lock().unwrap_or_else(|e| e.into_inner());
        st.last += 1;
        let n = st.last;
        writeln!(st.stdin, "{} {n}", if trim { "trim" } else { "probe" }).context("probing the server")?;
        st.stdin.flush().context("probing the server")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let reply = st.replies.recv_timeout(left).map_err(|_| anyhow!("the server did not answer a probe"))?;
            // A late answer to an earlier probe is skipped.
            if let Some(json) = reply.strip_prefix(&format!("{n} ")) {
                return serde_json::from_str(json).context("the server's probe answer");
            }
        }
    }
}

/// The CPUs a pinned server runs on.
pub const SERVER_CPUS: [usize; 1] = [0];

impl ServerProcess {
    /// Logs and starts the server with `args`; with `pin` (and two CPUs or more) the server runs
    /// on CPU 0 and this process, the load generator, on the others.
    pub fn start_for_bench(args: &[OsString], pin: bool) -> anyhow::Result<ServerProcess> {
        eprintln!(
            "starting the server: serve {}",
            args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
        );
        let ncpu = crate::procfs::cpus();
        let pin_now = pin && ncpu >= 2;
        if pin && !pin_now {
            eprintln!("warning: --pin needs at least two CPUs; not pinning");
        }
        let mut server = ServerProcess::start(args, pin_now.then_some(&SERVER_CPUS[..]), Duration::from_secs(30))?;
        server.pinned = pin_now;
        eprintln!("server pid {} on 127.0.0.1:{}", server.pid(), server.port);
        if pin_now {
            crate::procfs::pin_to_cpus(&(1..ncpu).collect::<Vec<_>>())?;
            eprintln!("server pinned to CPU 0, load generator to CPUs 1..{}", ncpu - 1);
        }
        Ok(server)
    }

    /// Starts `huddle-bench serve <args>` and waits (up to `timeout`) for the line announcing
    /// `http://127.0.0.1:PORT/` on its standard output. Its later output goes to our stderr.
    pub fn start(args: &[OsString], cpus: Option<&[usize]>, timeout: Duration) -> anyhow::Result<ServerProcess> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut cmd = server_command(&exe);
        if let Some(cpus) = cpus {
            cmd.env(CPUS_ENV, cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(","));
        }
        cmd.arg("serve").args(args);
        ServerProcess::launch(cmd, timeout)
    }

    /// Starts the server as an operator would run it under systemd: the `huddle` binary at `bin`
    /// (`None`: this executable's `serve`, the same server code) with `args`, its soft limit on
    /// open files set to `nofile_soft` before it runs (the hard limit stays, as systemd's
    /// `LimitNOFILE=1024:524288` leaves it). It is killed when this process dies, even by a
    /// signal that runs no destructor (`PR_SET_PDEATHSIG`), so a benchmark killed by a CI
    /// timeout leaves no server behind.
    pub fn start_limited(
        bin: Option<&std::path::Path>,
        args: &[OsString],
        nofile_soft: u64,
        timeout: Duration,
    ) -> anyhow::Result<ServerProcess> {
        let mut cmd = match bin {
            Some(bin) => server_command(bin),
            None => {
                let mut cmd = server_command(&std::env::current_exe().context("finding this executable")?);
                cmd.arg("serve");
                cmd
            }
        };
        cmd.args(args);
        let parent = std::process::id();
        // SAFETY: between fork and exec the closure only makes system calls that are
        // async-signal-safe (setrlimit, prctl, getppid, _exit) on plain data it owns.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                lim.rlim_cur = nofile_soft.min(lim.rlim_max);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the line above: then nobody would kill us.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        ServerProcess::launch(cmd, timeout)
    }

    /// Spawns `cmd` (a server command from [`server_command`] with its arguments) and waits (up
    /// to `timeout`) for it to announce its port.
    fn launch(mut cmd: Command, timeout: Duration) -> anyhow::Result<ServerProcess> {
        let child = cmd
            .env(PARENT_PIPE_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the server process")?;
        let mut child = child;
        let (probe_tx, replies) = mpsc::channel::<String>();
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin to the server"))?;
        let prober = Arc::new(Prober(Mutex::new(ProberState { stdin, replies, last: 0 })));
        let mut server = ServerProcess { child, port: 0, pinned: false, prober };
        let stdout = server.child.stdout.take().ok_or_else(|| anyhow!("no stdout from the server"))?;
        let (tx, rx) = mpsc::channel::<u16>();
        std::thread::spawn(move || {
            let mut announced = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !announced {
                    if let Some(port) = parse_port(&line) {
                        announced = true;
                        let _ = tx.send(port);
                        continue;
                    }
                }
                if let Some(reply) = line.strip_prefix(PROBE_REPLY) {
                    let _ = probe_tx.send(reply.to_string());
                    continue;
                }
                eprintln!("[server] {line}");
            }
        });
        server.port = match rx.recv_timeout(timeout) {
            Ok(port) => port,
            Err(_) => {
                if let Ok(Some(status)) = server.child.try_wait() {
                    bail!("the server exited before listening ({status})");
                }
                bail!("the server did not announce `http://127.0.0.1:PORT/` within {timeout:?}");
            }
        };
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the server process about itself; shared, for sampling while clients run.
    pub fn prober(&self) -> Arc<Prober> {
        self.prober.clone()
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command running `program` with the environment every server under test gets.
fn server_command(program: &std::path::Path) -> Command {
    let mut cmd = Command::new(program);
    // Only the arguments configure the server: no HUDDLE_* setting from our environment.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HUDDLE_") {
            cmd.env_remove(key);
        }
    }
    // One log line per join and leave of thousands of clients is noise here.
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    cmd
}

/// The port in a line such as `huddle listening on http://127.0.0.1:PORT/`.
fn parse_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("http://127.0.0.1:")? + "http://127.0.0.1:".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if !rest[digits.len()..].starts_with('/') {
        return None;
    }
    digits.parse().ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::parse_port;

    #[test]
    fn finds_the_port() {
        assert_eq!(parse_port("huddle listening on http://127.0.0.1:41234/"), Some(41234));
        assert_eq!(
            parse_port("\x1b[2m..\x1b[0m huddle listening on http://127.0.0.1:8080/ (ctrl-c to stop)"),
            Some(8080)
        );
        assert_eq!(parse_port("http://127.0.0.1:80"), None);
        assert_eq!(parse_port("listening on http://0.0.0.0:80/"), None);
    }
}
