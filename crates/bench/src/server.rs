//! The server under test, in its own process so that its memory and CPU can be read from
//! `/proc/<pid>`: this binary re-executed as `huddle-bench serve <huddle args…>`.

use anyhow::{anyhow, bail, Context};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Set in the child's environment: exit when standard input closes, i.e. when the benchmark
/// that started us is gone, even if it was killed before it could kill us.
const PARENT_PIPE_ENV: &str = "HUDDLE_BENCH_PARENT_PIPE";
/// Set in the child's environment: the CPUs the server may run on (e.g. `0`).
const CPUS_ENV: &str = "HUDDLE_BENCH_SERVER_CPUS";

/// `huddle-bench serve …`: runs the huddle server with these arguments.
pub fn serve(args: Vec<OsString>) -> anyhow::Result<()> {
    if std::env::var_os(PARENT_PIPE_ENV).is_some() {
        std::thread::spawn(|| {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            std::process::exit(0);
        });
    }
    if let Some(cpus) = std::env::var_os(CPUS_ENV) {
        crate::procfs::pin_to_cpus(&crate::procfs::parse_cpu_list(&cpus.to_string_lossy())?)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(huddle_server::run_cli(args))
}

/// A running server child. Killed when dropped (also on error or panic).
pub struct ServerProcess {
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// Pinned to CPU 0, the load generator to the others ([`ServerProcess::start_for_bench`]).
    pub pinned: bool,
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
        let mut cmd = Command::new(exe);
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
        if let Some(cpus) = cpus {
            cmd.env(CPUS_ENV, cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(","));
        }
        let child = cmd
            .arg("serve")
            .args(args)
            .env(PARENT_PIPE_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the server process")?;
        let mut server = ServerProcess { child, port: 0, pinned: false };
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
