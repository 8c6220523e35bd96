//! Every stage of a connection has a deadline, and no address holds more connections than its
//! share: slowloris (half-sent requests), idle keep-alive connections, silent WebSockets, stalled
//! TLS handshakes and silent connections on the port ICE over TCP shares, all against the real
//! server, with short deadlines so that it takes seconds; while a normal client from another
//! address is served throughout. Last, the `huddle` binary itself under a low open-file limit.

mod common;

use common::raw::{self, Got, RawWs};
use common::{Client, TestServer};
use huddle_protocol::{ByeReason, ClientMsg, ServerMsg};
use huddle_server::config::{Tls, TopologyMode};
use huddle_server::Config;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The deadline of every stage in these tests.
const DEADLINE: Duration = Duration::from_secs(1);

fn config(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config { topology: TopologyMode::P2p, turn: false, ..Config::default() };
    c.handshake_timeout = DEADLINE;
    f(&mut c);
    c
}

/// Whether `tcp` has been closed by the server (EOF or reset) — without waiting.
fn is_closed(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tcp.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// A normal client from 127.0.0.1 is served: the page, and a WebSocket that joins a room.
async fn served(server: &TestServer, room: &str) {
    let mut tcp = raw::tcp(server.addr, "127.0.0.1", None).await;
    assert_eq!(raw::get(&mut tcp, "/").await, 200);
    let mut c = Client::connect(server).await;
    c.join(room, "Mina").await;
}

#[tokio::test]
async fn half_sent_requests_from_one_address_are_capped_then_timed_out_while_others_are_served() {
    const CAP: usize = 8;
    const EXTRA: usize = 4;
    let server = TestServer::start(config(|c| c.max_tcp_connections_per_ip = CAP as u32)).await;
    served(&server, "before").await;
    let mut attack = Vec::new();
    for _ in 0..CAP + EXTRA {
        let mut tcp = raw::tcp(server.addr, "127.0.0.2", None).await;
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\n").await.expect("write");
        attack.push(tcp);
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let closed = attack.iter().filter(|t| is_closed(t)).count();
    assert_eq!(closed, EXTRA, "the connections over the per-IP cap are closed at once, the others not yet");
    // Another address is served meanwhile.
    served(&server, "during").await;
    // The rest are closed when their header deadline passes.
    let mut open: Vec<TcpStream> = attack.into_iter().filter(|t| !is_closed(t)).collect();
    for tcp in &mut open {
        assert!(raw::closed_within(tcp, Duration::from_secs(5)).await, "a half-sent request still open");
    }
    let took = started.elapsed();
    assert!(took >= DEADLINE - Duration::from_millis(300) && took < DEADLINE * 3, "closed after {took:?}");
    let m = raw::metrics(server.addr).await;
    assert!(m["huddle_tcp_connections_refused_total{cap=\"ip\"}"] >= EXTRA as f64, "{m:?}");
    assert!(m["huddle_tcp_timeouts_total{stage=\"headers\"}"] >= CAP as f64, "{m:?}");
    // The address may connect again, and the other is still served.
    let mut again = raw::tcp(server.addr, "127.0.0.2", None).await;
    assert_eq!(raw::get(&mut again, "/healthz").await, 200);
    served(&server, "after").await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_deadline() {
    let server = TestServer::start(config(|_| {})).await;
    let mut tcp = raw::tcp(server.addr, "127.0.0.1", None).await;
    assert_eq!(raw::get(&mut tcp, "/healthz").await, 200);
    assert_eq!(raw::get(&mut tcp, "/healthz").await, 200, "kept alive between requests");
    let idle = Instant::now();
    assert!(raw::closed_within(&mut tcp, Duration::from_secs(5)).await, "an idle keep-alive connection stays open");
    let took = idle.elapsed();
    assert!(took >= DEADLINE - Duration::from_millis(300), "closed after {took:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_websocket_that_never_speaks_is_closed_and_one_that_answers_pings_stays() {
    let server = TestServer::start(config(|_| {})).await;
    // Answers pings (tungstenite does it while reading) and says nothing else, like a page on
    // its connectivity check: it stays.
    let mut quiet = Client::connect(&server).await;
    let reader = tokio::spawn(async move {
        let _ = tokio::time::timeout(DEADLINE * 3, quiet.next_frame()).await;
        quiet
    });
    // Never sends a frame, not even a pong.
    let mut mute = RawWs::connect(server.addr, "127.0.0.1", None).await;
    let opened = Instant::now();
    assert!(matches!(mute.recv().await, ServerMsg::Welcome { .. }));
    let got = mute.until_end(Duration::from_secs(5)).await;
    let took = opened.elapsed();
    let n = got.len();
    let bye = Some(ServerMsg::Bye { reason: ByeReason::TimedOut });
    assert!(
        n >= 3 && got[n - 1] == Got::Eof && got[n - 2] == Got::Close(Some(1001)) && got[n - 3].msg() == bye,
        "{got:?}"
    );
    assert!(took >= DEADLINE - Duration::from_millis(300) && took < DEADLINE * 3, "closed after {took:?}");
    let mut quiet = reader.await.expect("reader");
    quiet.send(&ClientMsg::WatchRooms).await;
    assert!(matches!(quiet.recv().await, ServerMsg::Rooms { .. }), "the quiet one is still connected");
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_or_stalled_tls_handshake_is_closed_at_the_deadline() {
    let server = TestServer::start(config(|c| c.tls = Tls::SelfSigned)).await;
    let mut silent = raw::tcp(server.addr, "127.0.0.1", None).await;
    let mut stalled = raw::tcp(server.addr, "127.0.0.1", None).await;
    // The start of a ClientHello, and no more.
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.expect("write");
    let started = Instant::now();
    for tcp in [&mut silent, &mut stalled] {
        assert!(raw::closed_within(tcp, Duration::from_secs(5)).await, "a stalled TLS handshake is still open");
    }
    let took = started.elapsed();
    assert!(took >= DEADLINE - Duration::from_millis(300), "closed after {took:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_connection_on_the_port_ice_over_tcp_shares_is_closed_at_the_deadline() {
    let server = TestServer::start(config(|c| c.topology = TopologyMode::Sfu)).await;
    let mut silent = raw::tcp(server.addr, "127.0.0.1", None).await;
    let mut partial = raw::tcp(server.addr, "127.0.0.1", None).await;
    // The first bytes of an ICE-TCP frame (a length, then a STUN Binding request), and no more.
    partial.write_all(&[0x00, 0x1c, 0x00, 0x01, 0x00]).await.expect("write");
    let started = Instant::now();
    for tcp in [&mut silent, &mut partial] {
        assert!(raw::closed_within(tcp, Duration::from_secs(5)).await, "a silent connection is still open");
    }
    let took = started.elapsed();
    assert!(took >= DEADLINE - Duration::from_millis(300), "closed after {took:?}");
    served(&server, "r").await;
    server.shutdown().await;
}

/// The `huddle` binary under `RLIMIT_NOFILE` `soft`/`hard`, with `args`; its address and its
/// log (stderr) so far, read as lines arrive.
mod process {
    use std::io::{BufRead, BufReader};
    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex};

    pub struct Huddle {
        pub child: Child,
        pub addr: SocketAddr,
        pub log: Arc<Mutex<String>>,
        _dir: TempDir,
    }

    impl Drop for Huddle {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    struct TempDir(std::path::PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub fn start(soft: u64, hard: u64, args: &[&str]) -> Huddle {
        let dir = std::env::temp_dir().join(format!("huddle-fd-test-{}-{soft}-{hard}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_huddle"));
        cmd.args(["--listen", "127.0.0.1:0", "--topology", "p2p", "--turn", "false", "--data-dir"])
            .arg(&dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: between fork and exec this only calls `setrlimit`, which is async-signal-safe,
        // on a value on the stack.
        #[allow(unsafe_code)]
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                let limit = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start huddle");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut addr = None;
        for line in stdout.lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("huddle listening on http://") {
                addr = url.trim_end_matches('/').parse().ok();
                break;
            }
        }
        let addr = addr.unwrap_or_else(|| panic!("huddle did not start: {}", log.lock().expect("log")));
        Huddle { child, addr, log, _dir: TempDir(dir) }
    }

    impl Huddle {
        pub fn log(&self) -> String {
            self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
    }
}

#[tokio::test]
async fn huddle_raises_its_open_file_limit_and_says_so() {
    let huddle = process::start(256, 4096, &[]);
    let said = async {
        while !huddle.log().contains("raised the limit on open files") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(raw::WAIT, said).await.unwrap_or_else(|_| panic!("nothing said: {}", huddle.log()));
    let log = huddle.log();
    let line = log.lines().find(|l| l.contains("raised the limit on open files")).expect("the line");
    assert!(line.contains("256") && line.contains("4096"), "{line}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", huddle.child.id())).expect("its limits");
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).expect("a line");
    assert_eq!(open_files.split_whitespace().nth(3), Some("4096"), "{open_files}");
}

/// The probe's case: `ulimit -n` low (here 256, soft and hard: nothing to raise), and one address
/// opening more half-sent requests than that. Before, accepting failed with "Too many open files"
/// for as long as they were held, and every new client timed out. Now that address gets its
/// share, the rest are closed at once, and a client from another address is served throughout.
#[tokio::test]
async fn under_a_low_open_file_limit_a_flood_from_one_address_leaves_others_served() {
    let huddle = process::start(256, 256, &["--max-tcp-connections-per-ip", "32", "--handshake-timeout-secs", "5"]);
    let addr = huddle.addr;
    let mut attack = Vec::new();
    for _ in 0..400 {
        let Ok(mut tcp) = tokio::time::timeout(Duration::from_secs(2), raw::try_tcp(addr, "127.0.0.2")).await else {
            panic!("connecting from 127.0.0.2 hung: {}", huddle.log())
        };
        if let Ok(tcp) = tcp.as_mut() {
            let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\n").await;
        }
        attack.push(tcp);
    }
    for round in 0..3 {
        let page = async {
            let mut tcp = raw::tcp(addr, "127.0.0.1", None).await;
            raw::get(&mut tcp, "/").await
        };
        let status = tokio::time::timeout(Duration::from_secs(3), page).await;
        assert_eq!(status.ok(), Some(200), "round {round}: the page was not served: {}", huddle.log());
        let ws = async {
            let mut ws = RawWs::connect(addr, "127.0.0.1", None).await;
            ws.recv().await
        };
        let welcome = tokio::time::timeout(Duration::from_secs(3), ws).await;
        assert!(matches!(welcome, Ok(ServerMsg::Welcome { .. })), "round {round}: no WebSocket: {}", huddle.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let open = attack.iter().filter(|t| t.as_ref().is_ok_and(|t| !is_closed(t))).count();
    assert!(open <= 32, "{open} connections from one address are open");
    assert!(!huddle.log().contains("Too many open files"), "{}", huddle.log());
}
