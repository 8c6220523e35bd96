//! A connection the server ends is told why, as `docs/protocol.md` says: `bye` with its reason,
//! then a close frame with its code, then the end of the TCP connection (not a reset) — or, for
//! a frame that breaks the WebSocket protocol, the close code alone. Seen from a hand-written
//! client, which shows every frame and the exact code.

mod common;

use common::raw::{self, Got, RawWs};
use common::{join, Client, TestServer};
use huddle_protocol::{ByeReason, ClientMsg, LeaveReason, ServerMsg};
use huddle_server::config::TopologyMode;
use huddle_server::Config;
use std::time::Duration;

fn p2p(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config { topology: TopologyMode::P2p, turn: false, ..Config::default() };
    f(&mut c);
    c
}

/// The last frames of a connection the server ends: `bye` (if `bye`), the close code, the end.
fn assert_goodbye(got: &[Got], bye: Option<ByeReason>, code: u16) {
    // The last three, long texts cut short.
    let tail: Vec<String> = got
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(|g| match g {
            Got::Text(t) if t.len() > 80 => format!("Text({}…)", t.chars().take(80).collect::<String>()),
            other => format!("{other:?}"),
        })
        .collect();
    let n = got.len();
    assert!(n >= 2, "{} frames, ending {tail:?}", got.len());
    assert_eq!(got[n - 1], Got::Eof, "a plain close, not a reset or nothing: {tail:?}");
    assert_eq!(got[n - 2], Got::Close(Some(code)), "{tail:?}");
    match bye {
        Some(reason) => {
            assert!(n >= 3, "{tail:?}");
            assert_eq!(got[n - 3].msg(), Some(ServerMsg::Bye { reason }), "{tail:?}");
        }
        None => assert!(n < 3 || !matches!(got[n - 3].msg(), Some(ServerMsg::Bye { .. })), "{tail:?}"),
    }
}

/// A welcomed connection that has said nothing yet.
async fn welcomed(server: &TestServer) -> RawWs {
    let mut ws = RawWs::connect(server.addr, "127.0.0.1", None).await;
    assert!(matches!(ws.recv().await, ServerMsg::Welcome { .. }));
    ws
}

#[tokio::test]
async fn a_frame_over_the_limit_gets_bye_frame_too_large_and_1009_not_a_reset() {
    let server = TestServer::start(p2p(|_| {})).await;
    let max = Config { topology: TopologyMode::P2p, ..Config::default() }.max_frame_bytes as u64;
    // Just over the limit, and far over it (the old hard limit was 1 MiB): the header alone
    // decides; the client goes on sending the rest while the server says goodbye.
    for len in [max + 1, 8 * 1024 * 1024] {
        let mut ws = welcomed(&server).await;
        ws.send_frame(0x1, true, b"{}", true).await; // a frame within the limit first: fine
        assert!(matches!(ws.recv().await, ServerMsg::Error { .. }));
        tokio::io::AsyncWriteExt::write_all(&mut ws.tcp, &raw::text_header(len)).await.expect("write");
        let (tcp, mut rest) = ws.into_parts();
        let (mut rd, mut wr) = tcp.into_split();
        let sending = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < len {
                if tokio::io::AsyncWriteExt::write_all(&mut wr, &chunk).await.is_err() {
                    break;
                }
                sent += chunk.len() as u64;
            }
            wr
        });
        let read = tokio::time::timeout(raw::WAIT, tokio::io::AsyncReadExt::read_to_end(&mut rd, &mut rest)).await;
        sending.abort();
        // What came back: maybe a ping, then `bye`, the close frame, and the end.
        let mut frames = Vec::new();
        let mut at = 0;
        while at + 2 <= rest.len() {
            let (op, len7) = (rest[at] & 0x0f, (rest[at + 1] & 0x7f) as usize);
            let (len, start) = match len7 {
                126 => (u16::from_be_bytes([rest[at + 2], rest[at + 3]]) as usize, at + 4),
                127 => panic!("a huge frame from the server"),
                n => (n, at + 2),
            };
            let payload = &rest[start..start + len];
            frames.push(match op {
                0x1 => Got::Text(String::from_utf8(payload.to_vec()).expect("UTF-8")),
                0x8 => Got::Close(Some(u16::from_be_bytes([payload[0], payload[1]]))),
                0x9 => Got::Ping,
                _ => panic!("opcode {op}"),
            });
            at = start + len;
        }
        frames.retain(|f| *f != Got::Ping);
        match read {
            Ok(Ok(_)) => frames.push(Got::Eof),
            Ok(Err(_)) => frames.push(Got::Reset),
            Err(_) => {} // still open
        }
        assert_goodbye(&frames, Some(ByeReason::FrameTooLarge), 1009);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_utf8_gets_1007_and_other_protocol_errors_1002() {
    let server = TestServer::start(p2p(|_| {})).await;
    let mut ws = welcomed(&server).await;
    ws.send_frame(0x1, true, &[b'"', 0xff, 0xfe, b'"'], true).await;
    assert_goodbye(&ws.until_end(raw::WAIT).await, None, 1007);
    // A client frame without a mask.
    let mut ws = welcomed(&server).await;
    ws.send_frame(0x1, true, b"{}", false).await;
    assert_goodbye(&ws.until_end(raw::WAIT).await, None, 1002);
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_answers_gets_bye_timed_out_and_1001() {
    let server = TestServer::start(p2p(|c| {
        c.ping_interval = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(2);
    }))
    .await;
    // It answered once, then went silent: the heartbeat ends it.
    let mut ws = welcomed(&server).await;
    ws.send_pong().await;
    let started = tokio::time::Instant::now();
    let got = ws.until_end(Duration::from_secs(10)).await;
    assert_goodbye(&got, Some(ByeReason::TimedOut), 1001);
    assert!(started.elapsed() >= Duration::from_millis(1500), "closed after {:?}", started.elapsed());
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_evicted_as_too_slow_that_reads_again_gets_bye_too_slow_and_1008() {
    let server = TestServer::start(p2p(|c| {
        c.outbox_capacity = 8;
        c.outbox_bytes = 64 * 1024;
        c.message_rate_scale = 0.0;
    }))
    .await;
    let mut talker = Client::connect(&server).await;
    talker.join("r", "talker").await;
    let mut slow = RawWs::connect(server.addr, "127.0.0.1", Some(4096)).await;
    assert!(matches!(slow.recv().await, ServerMsg::Welcome { .. }));
    slow.send_msg(&join("r", "slow")).await;
    assert!(matches!(slow.recv().await, ServerMsg::Joined { .. }));
    assert!(matches!(talker.recv().await, ServerMsg::PeerJoined { .. }));
    // `slow` does not read; the talker chats until it is evicted.
    let text = "x".repeat(2000);
    let mut sent = 0;
    loop {
        talker.send(&ClientMsg::Chat { text: text.clone() }).await;
        sent += 1;
        match talker.recv().await {
            ServerMsg::Chat { .. } => {}
            ServerMsg::PeerLeft { reason: LeaveReason::TooSlow, .. } => break,
            other => panic!("{other:?}"),
        }
        assert!(sent < 20_000, "never evicted");
    }
    // It reads again at once: what the kernel holds, then the goodbye.
    let got = slow.until_end(Duration::from_secs(10)).await;
    assert_goodbye(&got, Some(ByeReason::TooSlow), 1008);
    server.shutdown().await;
}

#[tokio::test]
async fn a_connection_whose_session_resumes_elsewhere_gets_bye_replaced_and_1000() {
    let server = TestServer::start(p2p(|_| {})).await;
    let mut old = RawWs::connect(server.addr, "127.0.0.1", None).await;
    let ServerMsg::Welcome { id, resume, .. } = old.recv().await else { panic!("no welcome") };
    old.send_msg(&join("r", "Mina")).await;
    assert!(matches!(old.recv().await, ServerMsg::Joined { .. }));
    // The page saw this connection die before the server did, and resumes on a new one.
    let tcp = raw::tcp(server.addr, "127.0.0.1", None).await;
    let mut new = RawWs::open(tcp, &format!("/ws?session={id}&resume={resume}&seen=1")).await;
    assert!(matches!(new.recv().await, ServerMsg::Welcome { resumed: true, .. }));
    assert_goodbye(&old.until_end(raw::WAIT).await, Some(ByeReason::Replaced), 1000);
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_that_stops_says_bye_server_shutdown_and_1001() {
    let server = TestServer::start(p2p(|_| {})).await;
    let mut ws = welcomed(&server).await;
    let stopping = tokio::spawn(server.shutdown());
    assert_goodbye(&ws.until_end(raw::WAIT).await, Some(ByeReason::ServerShutdown), 1001);
    stopping.await.expect("stopped");
}
