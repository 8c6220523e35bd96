//! Rate limits and connection caps on the real server: a flooder is refused (`rate_limited`) and
//! then closed (`flooding`) while the rest of its room goes on undisturbed; joins per IP address;
//! the server-wide and per-IP connection caps; and `X-Forwarded-For` believed only from trusted
//! proxies. Other client addresses than 127.0.0.1 come from binding to 127.0.0.2 (all of 127/8 is
//! loopback on Linux).

mod common;

use common::{join, Client, TestServer, WAIT};
use futures_util::SinkExt;
use huddle_protocol::{ByeReason, ClientMsg, ErrorCode, LeaveReason, PeerId, ServerMsg};
use huddle_server::config::TopologyMode;
use huddle_server::Config;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderName;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

fn p2p(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config { topology: TopologyMode::P2p, turn: false, ..Config::default() };
    f(&mut c);
    c
}

/// A WebSocket from `local` (a loopback address) with extra request headers; not yet read from.
async fn open(server: &TestServer, local: &str, headers: &[(&str, &str)]) -> Client {
    let mut req = server.url().into_client_request().expect("a request");
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).expect("header name");
        req.headers_mut().insert(name, v.parse().expect("header value"));
    }
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{local}:0").parse().expect("address")).expect("bind a loopback address");
    let tcp = sock.connect(server.addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)).await.expect("WebSocket handshake");
    Client { ws, id: PeerId(String::new()) }
}

/// [`open`], then `welcome`.
async fn connect(server: &TestServer, local: &str, headers: &[(&str, &str)]) -> Client {
    let mut c = open(server, local, headers).await;
    match c.recv().await {
        ServerMsg::Welcome { id, .. } => c.id = id,
        other => panic!("expected welcome, got {other:?}"),
    }
    c
}

/// A connection over a cap: upgraded, then `error`, `bye` and a close, never `welcome`.
async fn expect_refused(server: &TestServer, local: &str, headers: &[(&str, &str)]) {
    let mut c = open(server, local, headers).await;
    match c.recv().await {
        ServerMsg::Error { code: ErrorCode::TooManyConnections, request: None, .. } => {}
        other => panic!("expected too_many_connections, got {other:?}"),
    }
    assert!(matches!(c.recv().await, ServerMsg::Bye { reason: ByeReason::TooManyConnections }));
    match c.next_frame().await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Again),
        other => panic!("expected a close, got {other:?}"),
    }
}

fn chat(text: &str) -> ClientMsg {
    ClientMsg::Chat { text: text.into() }
}

/// Sends `n` chat messages without waiting for anything in between.
async fn flood(c: &mut Client, n: usize) {
    for i in 0..n {
        let text = serde_json::to_string(&chat(&format!("flood {i}"))).expect("serialise");
        // The server may close the connection before the last ones are written.
        if c.ws.feed(Message::text(text)).await.is_err() {
            break;
        }
    }
    let _ = c.ws.flush().await;
}

/// Everything that arrives before the answer to a message the server refuses (the hub answers
/// in order, so that is everything queued before it).
async fn until_barrier(c: &mut Client) -> Vec<ServerMsg> {
    c.send_raw(Message::text(r#"{"type":"barrier"}"#)).await;
    let mut got = Vec::new();
    for _ in 0..1000 {
        match c.recv().await {
            ServerMsg::Error { code: ErrorCode::UnknownType, .. } => return got,
            m => got.push(m),
        }
    }
    panic!("no answer to the barrier");
}

fn chat_text(m: &ServerMsg) -> Option<&str> {
    match m {
        ServerMsg::Chat { message } => Some(&message.text),
        _ => None,
    }
}

#[tokio::test]
async fn a_chat_flood_is_refused_and_the_rest_of_the_room_is_unaffected() {
    let server = TestServer::start(p2p(|_| {})).await;
    let mut flooder = Client::connect(&server).await;
    let mut other = Client::connect(&server).await;
    flooder.join("r", "Flooder").await;
    other.join("r", "Jun").await;
    assert!(matches!(flooder.recv().await, ServerMsg::PeerJoined { .. }));

    flood(&mut flooder, 100).await;
    let answers = until_barrier(&mut flooder).await;
    let echoed: Vec<&str> = answers.iter().filter_map(chat_text).collect();
    let refusals: Vec<&ServerMsg> = answers.iter().filter(|m| matches!(m, ServerMsg::Error { .. })).collect();
    // The burst of 20 passes, then 2 a second: the rest is refused, with about one answer a second.
    assert!((20..60).contains(&echoed.len()), "the burst passed, the rest did not: {}", echoed.len());
    assert!((1..=5).contains(&refusals.len()), "about one answer a second: {refusals:?}");
    for r in refusals {
        assert!(
            matches!(r, ServerMsg::Error { code: ErrorCode::RateLimited, request: Some(t), .. } if t == "chat"),
            "{r:?}"
        );
    }

    // The other participant got exactly what passed, in order, and its own chat still works.
    for text in ["one", "two", "three"] {
        other.send(&chat(text)).await;
    }
    let mut got = Vec::new();
    for _ in 0..(echoed.len() + 3) {
        let m = other.recv().await;
        got.push(chat_text(&m).unwrap_or_else(|| panic!("only chat arrives, got {m:?}")).to_string());
    }
    let mut expected: Vec<String> = echoed.iter().map(|s| s.to_string()).collect();
    expected.extend(["one", "two", "three"].map(String::from));
    assert_eq!(got, expected);
    other.barrier().await;
    // The flooder is still connected, and gets the others' chat.
    for text in ["one", "two", "three"] {
        assert_eq!(chat_text(&flooder.recv().await), Some(text));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_keeps_flooding_is_closed_and_its_room_sees_it_leave() {
    let server = TestServer::start(p2p(|_| {})).await;
    let mut flooder = Client::connect(&server).await;
    let mut other = Client::connect(&server).await;
    flooder.join("r", "Flooder").await;
    other.join("r", "Jun").await;
    let flooder_id = flooder.id.clone();

    flood(&mut flooder, 600).await;
    let mut bye = None;
    for _ in 0..700 {
        match flooder.next_frame().await {
            Some(Message::Text(t)) => {
                if let Ok(ServerMsg::Bye { reason }) = serde_json::from_str::<ServerMsg>(&t) {
                    bye = Some(reason);
                }
            }
            Some(Message::Close(frame)) => {
                assert_eq!(frame.map(|f| f.code), Some(CloseCode::Policy));
                break;
            }
            None => break,
            Some(other) => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(bye, Some(ByeReason::Flooding));
    // The room saw some chat, then the flooder leave; nothing else.
    let mut chats = 0;
    loop {
        match other.recv().await {
            ServerMsg::Chat { .. } => chats += 1,
            ServerMsg::PeerLeft { id, reason: LeaveReason::Disconnected } if id == flooder_id => break,
            m => panic!("unexpected {m:?}"),
        }
    }
    assert!(chats < 60, "{chats} flood messages reached the room");
    // The flooder opened the room: Jun is its host now.
    assert!(matches!(other.recv().await, ServerMsg::PeerUpdated { peer } if peer.role == huddle_protocol::Role::Host));
    other.barrier().await;
    server.shutdown().await;
}

#[tokio::test]
async fn joins_are_limited_per_ip_address_across_its_connections() {
    let server = TestServer::start(p2p(|c| c.ip_joins_per_minute = 3)).await;
    let mut here = Vec::new();
    for i in 0..3 {
        let mut c = Client::connect(&server).await;
        c.join(&format!("room {i}"), "Mina").await;
        here.push(c);
    }
    let mut fourth = Client::connect(&server).await;
    fourth.send(&join("room 3", "Mina")).await;
    match fourth.recv().await {
        ServerMsg::Error { code: ErrorCode::RateLimited, request: Some(t), .. } => assert_eq!(t, "join"),
        other => panic!("expected rate_limited, got {other:?}"),
    }
    // Another address is not affected.
    let mut elsewhere = connect(&server, "127.0.0.2", &[]).await;
    elsewhere.join("room 3", "Jun").await;
    server.shutdown().await;
}

#[tokio::test]
async fn over_the_server_wide_cap_a_connection_is_told_and_closed() {
    let server = TestServer::start(p2p(|c| c.max_connections = 2)).await;
    let mut a = Client::connect(&server).await;
    let _b = connect(&server, "127.0.0.2", &[]).await;
    expect_refused(&server, "127.0.0.1", &[]).await;
    // Those admitted are not affected.
    a.join("r", "Mina").await;
    server.shutdown().await;
}

#[tokio::test]
async fn over_the_per_ip_cap_a_connection_is_told_and_closed() {
    let server = TestServer::start(p2p(|c| c.max_connections_per_ip = 2)).await;
    let _a = Client::connect(&server).await;
    let _b = Client::connect(&server).await;
    expect_refused(&server, "127.0.0.1", &[]).await;
    let _c = connect(&server, "127.0.0.2", &[]).await;
    server.shutdown().await;
}

#[tokio::test]
async fn x_forwarded_for_counts_only_from_a_trusted_proxy() {
    // Trusted: each forwarded address is a client of its own.
    let trusting = TestServer::start(p2p(|c| {
        c.max_connections_per_ip = 1;
        c.trusted_proxies = vec!["127.0.0.1".parse().expect("range")];
    }))
    .await;
    let _a = connect(&trusting, "127.0.0.1", &[("x-forwarded-for", "203.0.113.1")]).await;
    let _b = connect(&trusting, "127.0.0.1", &[("x-forwarded-for", "203.0.113.2")]).await;
    // The client's own claim left of what the proxy appended does not count.
    expect_refused(&trusting, "127.0.0.1", &[("x-forwarded-for", "198.51.100.9, 203.0.113.1")]).await;
    // 127.0.0.2 is no trusted proxy: its header is ignored, and it is a client of its own.
    let _c = connect(&trusting, "127.0.0.2", &[("x-forwarded-for", "203.0.113.3")]).await;
    expect_refused(&trusting, "127.0.0.2", &[("x-forwarded-for", "203.0.113.4")]).await;
    trusting.shutdown().await;

    // Not trusted (the default): the header changes nothing.
    let plain = TestServer::start(p2p(|c| c.max_connections_per_ip = 1)).await;
    let _d = connect(&plain, "127.0.0.1", &[("x-forwarded-for", "203.0.113.1")]).await;
    expect_refused(&plain, "127.0.0.1", &[("x-forwarded-for", "203.0.113.2")]).await;
    plain.shutdown().await;
}

#[tokio::test]
async fn a_browser_burst_of_signalling_passes() {
    // A page trickling candidates to five peers at once, and more.
    let server = TestServer::start(p2p(|_| {})).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.join("r", "Mina").await;
    b.join("r", "Jun").await;
    assert!(matches!(a.recv().await, ServerMsg::PeerJoined { .. }));
    let candidate = |i: usize| huddle_protocol::SignalPayload::Candidate {
        candidate: Some(huddle_protocol::IceCandidate {
            candidate: format!("candidate:{i} 1 udp 2122260223 192.0.2.1 5000{} typ host", i % 10),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        }),
    };
    for i in 0..150 {
        a.send(&ClientMsg::Signal { to: b.id.clone(), payload: candidate(i) }).await;
    }
    for i in 0..150 {
        match tokio::time::timeout(WAIT, b.recv()).await.expect("in time") {
            ServerMsg::Signal { payload, .. } => assert_eq!(payload, candidate(i)),
            other => panic!("expected signal {i}, got {other:?}"),
        }
    }
    a.barrier().await;
    server.shutdown().await;
}
