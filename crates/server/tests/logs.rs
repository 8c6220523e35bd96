//! The logs keep clients' IP addresses out of info level: the real `huddle` binary, with
//! `--log-format json` and debug logs of huddle itself on, serves two clients connecting from
//! 127.0.0.2 (the server listens on 127.0.0.1) through connect, join, chat, a refused frame and a
//! TURN allocation; no line at info level or above may name 127.0.0.2, while a debug line does
//! (so the test would see it if it leaked).

mod common;

use common::{Client, WAIT};
use huddle_protocol::{ClientMsg, PeerId, ServerMsg};
use huddle_turn::auth::long_term_key;
use huddle_turn::stun::{attr, method, Builder, Class, Message};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::process::Command;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::MaybeTlsStream;

const CLIENT_IP: &str = "127.0.0.2";

async fn connect_from(addr: std::net::SocketAddr) -> Client {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{CLIENT_IP}:0").parse().expect("address")).expect("bind 127.0.0.2");
    let tcp = sock.connect(addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), MaybeTlsStream::Plain(tcp))
        .await
        .expect("WebSocket handshake");
    Client { ws, id: PeerId(String::new()) }
}

/// Allocates a TURN relay over UDP from 127.0.0.2 with the credentials of `welcome`.
async fn allocate(port: u16, username: &str, password: &str) {
    let sock = UdpSocket::bind(format!("{CLIENT_IP}:0")).await.expect("bind 127.0.0.2");
    sock.connect(("127.0.0.1", port)).await.expect("connect");
    let key = long_term_key(username, "huddle", password);
    let mut buf = vec![0u8; 2048];
    let ask = |tid: u8, auth: Option<(&str, &str)>| {
        let mut b =
            Builder::new(method::ALLOCATE, Class::Request, [tid; 12]).attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        if let Some((realm, nonce)) = auth {
            b = b
                .attr(attr::USERNAME, username.as_bytes())
                .attr(attr::REALM, realm.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes())
                .integrity(&key);
        }
        b.fingerprint().finish()
    };
    sock.send(&ask(1, None)).await.expect("send");
    let n = timeout(WAIT, sock.recv(&mut buf)).await.expect("an answer").expect("recv");
    let first = Message::parse(&buf[..n]).expect("STUN");
    assert_eq!(first.error_code(), Some(401));
    let (realm, nonce) = (first.text(attr::REALM).expect("realm"), first.text(attr::NONCE).expect("nonce"));
    let signed = ask(2, Some((realm, nonce)));
    sock.send(&signed).await.expect("send");
    let mut buf2 = vec![0u8; 2048];
    let n = timeout(WAIT, sock.recv(&mut buf2)).await.expect("an answer").expect("recv");
    let m = Message::parse(&buf2[..n]).expect("STUN");
    assert_eq!(m.class, Class::Success, "allocation refused: {:?}", m.error_code());
}

#[tokio::test]
async fn no_client_address_is_logged_at_info_level() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_huddle"))
        .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--turn-allow-peer", "127.0.0.1"])
        .env("RUST_LOG", "info,huddle_server=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start huddle");
    let mut stderr = child.stderr.take().expect("stderr");
    let logs = tokio::spawn(async move {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all).await;
        all
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr: std::net::SocketAddr = timeout(WAIT, async {
        while let Some(line) = stdout.next_line().await.expect("read stdout") {
            if let Some(url) = line.strip_prefix("huddle listening on http://") {
                return url.trim_end_matches('/').parse().expect("an address");
            }
        }
        panic!("huddle exited before listening");
    })
    .await
    .expect("huddle starts in time");

    let mut a = connect_from(addr).await;
    assert!(matches!(a.recv().await, ServerMsg::Welcome { .. }));
    let mut b = connect_from(addr).await;
    assert!(matches!(b.recv().await, ServerMsg::Welcome { .. }));
    let ServerMsg::Joined { ice_servers, .. } = a.join("r", "Mina").await else { panic!("expected joined") };
    b.join("r", "Jun").await;
    a.send(&ClientMsg::Chat { text: "hello".into() }).await;
    assert!(matches!(b.recv().await, ServerMsg::PeerJoined { .. } | ServerMsg::Chat { .. }));
    a.send_raw(WsMessage::text("{not json")).await;
    // Everything so far has been handled once its answer is here (the hub answers in order).
    for _ in 0..3 {
        if matches!(a.recv().await, ServerMsg::Error { .. }) {
            break;
        }
    }
    let turn = ice_servers.iter().find(|s| s.urls.iter().any(|u| u.starts_with("turn:"))).expect("TURN in joined");
    let url = turn.urls.iter().find(|u| u.ends_with("transport=udp")).expect("a UDP URL");
    let port: u16 =
        url.trim_start_matches("turn:127.0.0.1:").trim_end_matches("?transport=udp").parse().expect("a port");
    allocate(port, turn.username.as_deref().expect("username"), turn.credential.as_deref().expect("password")).await;
    a.send(&ClientMsg::Leave).await;
    assert!(matches!(a.recv().await, ServerMsg::Left { .. }));
    let _ = a.ws.close(None).await;
    drop((a, b));

    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(killed.success());
    timeout(std::time::Duration::from_secs(15), child.wait()).await.expect("huddle stops in time").expect("wait");
    let logs = logs.await.expect("the log reader");

    let mut info_lines = 0;
    let mut debug_names_client = false;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("--log-format json writes JSON lines ({e}): {line}"));
        let level = v["level"].as_str().expect("a level");
        if level == "DEBUG" || level == "TRACE" {
            debug_names_client |= line.contains(CLIENT_IP);
            continue;
        }
        info_lines += 1;
        assert!(!line.contains(CLIENT_IP), "a client address at {level}: {line}");
    }
    assert!(logs.contains("joined a room") && logs.contains("refused a message"), "{logs}");
    assert!(info_lines >= 5, "{logs}");
    assert!(debug_names_client, "the control: debug logs name the client\n{logs}");
}
