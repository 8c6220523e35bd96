//! A redis-server of the test's own: a free port on 127.0.0.1, no persistence, stopped (killed)
//! when dropped. `scripts/test` installs Debian's `redis-server` when it is missing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestRedis {
    pub url: String,
    port: u16,
    child: Child,
}

impl TestRedis {
    pub fn start() -> TestRedis {
        // A free port can be taken between our look and redis's bind: try a few.
        for _ in 0..5 {
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
            if let Some(child) = spawn(port) {
                return TestRedis { url: format!("redis://127.0.0.1:{port}/"), port, child };
            }
        }
        panic!("redis-server did not start");
    }

    /// Kills the server (SIGKILL: it saves nothing) and starts an empty one on the same port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = spawn(self.port) {
                self.child = child;
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start again on port {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub async fn connect(&self) -> redis::aio::ConnectionManager {
        let client = redis::Client::open(self.url.as_str()).expect("a redis URL");
        redis::aio::ConnectionManager::new(client).await.expect("connect to the test's redis-server")
    }
}

/// A redis-server on `port`, once it says it is ready; `None` if it did not start.
fn spawn(port: u16) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server not found: install Debian's redis-server (scripts/test does)");
    let stdout = child.stdout.take().expect("piped stdout");
    // Ready when it says so (it prints the line once it listens), or gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take_while(|_| Instant::now() < deadline)
        .any(|line| line.contains("Ready to accept connections"));
    if ready {
        return Some(child);
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
