//! The real server on port 0, real WebSocket clients: joining, lists, relay, chat, leave, limits.

mod common;

use common::{join, Client, TestServer};
use huddle_protocol::{
    ClientMsg, ErrorCode, IceCandidate, LeaveReason, SdpType, ServerMsg, SessionDescription, SignalPayload,
};
use huddle_server::Config;
use std::time::Duration;

fn offer() -> SignalPayload {
    SignalPayload::Description { description: SessionDescription { kind: SdpType::Offer, sdp: "v=0\r\n".into() } }
}

#[tokio::test]
async fn welcome_carries_id_limits_and_no_default_ice_servers() {
    let server = TestServer::default().await;
    let (ws, _) = tokio_tungstenite::connect_async(server.url()).await.expect("connect");
    let mut c = Client { ws, id: huddle_protocol::PeerId(String::new()) };
    match c.recv().await {
        ServerMsg::Welcome { id, limits, ice_servers, .. } => {
            assert!(!id.0.is_empty());
            assert_eq!(limits.room_capacity, huddle_server::config::DEFAULT_SFU_CAPACITY);
            assert_eq!(limits.max_file_bytes, 100 * 1024 * 1024);
            assert!(
                ice_servers.iter().all(|s| s.urls.iter().all(|u| u.contains("127.0.0.1"))),
                "no third-party STUN by default, only our own: {ice_servers:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn join_relay_chat_media_and_leave() {
    let server = TestServer::default().await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.join("주간 회의", "Mina").await;
    match b.join("주간 회의", "Jun").await {
        ServerMsg::Joined { peers, topology, .. } => {
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].id, a.id);
            assert_eq!(peers[0].name, "Mina");
            assert_eq!(topology, huddle_protocol::Topology::P2p);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(a.recv().await, ServerMsg::PeerJoined { peer } if peer.id == b.id && peer.name == "Jun"));

    // Offer, answer and candidates go to exactly the named peer, tagged with the sender.
    b.send(&ClientMsg::Signal { to: a.id.clone(), payload: offer() }).await;
    assert_eq!(a.recv().await, ServerMsg::Signal { from: b.id.clone(), payload: offer(), session: None });
    let cand = SignalPayload::Candidate {
        candidate: Some(IceCandidate {
            candidate: "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: Some("uf".into()),
        }),
    };
    a.send(&ClientMsg::Signal { to: b.id.clone(), payload: cand.clone() }).await;
    assert_eq!(b.recv().await, ServerMsg::Signal { from: a.id.clone(), payload: cand, session: None });

    // Chat reaches everyone, the sender included.
    a.send(&ClientMsg::Chat { text: "  안녕 https://example.org  ".into() }).await;
    for c in [&mut a, &mut b] {
        match c.recv().await {
            ServerMsg::Chat { message } => {
                assert_eq!(message.text, "안녕 https://example.org");
                assert_eq!(message.name, "Mina");
            }
            other => panic!("{other:?}"),
        }
    }

    // Media state goes to the others.
    b.send(&ClientMsg::Media { audio: false, video: false, screen: false }).await;
    assert!(matches!(a.recv().await, ServerMsg::PeerUpdated { peer } if peer.id == b.id && !peer.audio && !peer.video));

    // Leave: answered, and the other sees it.
    b.send(&ClientMsg::Leave).await;
    assert!(matches!(b.recv().await, ServerMsg::Left { room } if room == "주간 회의"));
    assert_eq!(a.recv().await, ServerMsg::PeerLeft { id: b.id.clone(), reason: LeaveReason::Left });
    // The connection may join again.
    b.join("elsewhere", "Jun").await;
}

#[tokio::test]
async fn relays_never_cross_rooms() {
    let server = TestServer::default().await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    let mut c = Client::connect(&server).await;
    a.join("one", "A").await;
    b.join("one", "B").await;
    c.join("two", "C").await;
    a.recv().await; // peer_joined B
    a.send(&ClientMsg::Signal { to: c.id.clone(), payload: offer() }).await;
    a.expect_error(ErrorCode::UnknownPeer).await;
    a.send(&ClientMsg::Signal { to: a.id.clone(), payload: offer() }).await;
    a.expect_error(ErrorCode::UnknownPeer).await;
    a.barrier().await;
    c.barrier().await;
    b.barrier().await;
}

#[tokio::test]
async fn latecomers_get_recent_chat() {
    let server = TestServer::start(Config { chat_history: 2, ..Config::default() }).await;
    let mut a = Client::connect(&server).await;
    a.join("r", "A").await;
    for t in ["one", "two", "three"] {
        a.send(&ClientMsg::Chat { text: t.into() }).await;
        a.recv().await;
    }
    let mut b = Client::connect(&server).await;
    match b.join("r", "B").await {
        ServerMsg::Joined { chat, .. } => {
            assert_eq!(chat.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["two", "three"])
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn room_list_is_live_and_empty_rooms_disappear() {
    let server = TestServer::default().await;
    let mut w = Client::connect(&server).await;
    w.send(&ClientMsg::WatchRooms).await;
    assert_eq!(w.recv().await, ServerMsg::Rooms { rooms: vec![] });
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.join("방", "A").await;
    b.join("방", "B").await;
    // Updates are coalesced; wait for the list that shows both.
    loop {
        match w.recv().await {
            ServerMsg::Rooms { rooms } if rooms.first().is_some_and(|r| r.participants == 2) => {
                assert_eq!(rooms[0].name, "방");
                assert_eq!(rooms[0].capacity, huddle_server::config::DEFAULT_SFU_CAPACITY);
                break;
            }
            ServerMsg::Rooms { .. } => continue,
            other => panic!("{other:?}"),
        }
    }
    a.ws.close(None).await.expect("close");
    b.send(&ClientMsg::Leave).await;
    loop {
        match w.recv().await {
            ServerMsg::Rooms { rooms } if rooms.is_empty() => break,
            ServerMsg::Rooms { .. } => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn closing_the_socket_leaves_the_room() {
    // A WebSocket close is a goodbye: the room hears at once.
    let (_server, mut a, mut b) = two_in_a_room(Config::default()).await;
    let b_id = b.id.clone();
    b.ws.close(None).await.expect("close");
    assert!(matches!(a.recv().await, ServerMsg::PeerLeft { id, reason: LeaveReason::Left } if id == b_id));
    // A connection that just goes away (no close) keeps its place for the grace period, then leaves.
    let (_server, mut a, b) = two_in_a_room(Config { resume_grace: Duration::from_secs(1), ..Config::default() }).await;
    let b_id = b.id.clone();
    let gone = std::time::Instant::now();
    drop(b);
    match a.recv().await {
        ServerMsg::PeerLeft { id, reason } => {
            assert_eq!((id, reason), (b_id, LeaveReason::Disconnected));
            assert!(gone.elapsed() >= Duration::from_millis(900), "left only after the grace period");
        }
        other => panic!("{other:?}"),
    }
}

/// A server, and A and B in room "r" (A has read B's arrival).
async fn two_in_a_room(config: Config) -> (TestServer, Client, Client) {
    let server = TestServer::start(config).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.join("r", "A").await;
    b.join("r", "B").await;
    a.recv().await;
    (server, a, b)
}

#[tokio::test]
async fn the_room_capacity_is_enforced() {
    let server = TestServer::start(Config { room_capacity: 2, ..Config::default() }).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    let mut c = Client::connect(&server).await;
    a.join("r", "A").await;
    b.join("r", "B").await;
    c.send(&join("r", "C")).await;
    c.expect_error(ErrorCode::RoomFull).await;
    // Nobody in the room heard of C.
    a.recv().await; // peer_joined B
    a.barrier().await;
    // Another room is fine.
    c.join("r2", "C").await;
}

#[tokio::test]
async fn the_room_count_is_enforced() {
    let server = TestServer::start(Config { max_rooms: 1, ..Config::default() }).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.join("r", "A").await;
    b.send(&join("another", "B")).await;
    b.expect_error(ErrorCode::TooManyRooms).await;
    b.join("r", "B").await;
}

#[tokio::test]
async fn hostile_names_are_relayed_verbatim_for_the_page_to_show_as_text() {
    let server = TestServer::default().await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.join("r", "<img src=x onerror=alert(1)>").await;
    match b.join("r", "B").await {
        ServerMsg::Joined { peers, .. } => assert_eq!(peers[0].name, "<img src=x onerror=alert(1)>"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn graceful_shutdown_says_goodbye() {
    let server = TestServer::default().await;
    let mut a = Client::connect(&server).await;
    a.join("r", "A").await;
    let shutdown = tokio::spawn(server.shutdown());
    assert_eq!(a.recv().await, ServerMsg::Bye { reason: huddle_protocol::ByeReason::ServerShutdown });
    match a.next_frame().await {
        Some(tokio_tungstenite::tungstenite::Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    shutdown.await.expect("shutdown completes");
}

#[tokio::test]
async fn healthz_answers_and_the_page_has_a_csp() {
    let server = TestServer::default().await;
    let get = |path: &str| {
        let addr = server.addr;
        let path = path.to_string();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        }
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    for path in ["/", "/r/%EC%A3%BC%EA%B0%84%20%ED%9A%8C%EC%9D%98", "/check"] {
        let page = get(path).await;
        assert!(page.starts_with("HTTP/1.1 200"), "{path}: {page}");
        assert!(page.to_ascii_lowercase().contains("content-security-policy: default-src 'self'"), "{path}");
    }
    assert!(get("/nope.js").await.starts_with("HTTP/1.1 404"));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_the_room_carries_on() {
    // The talker chats far faster than a person: no rate limits here (tests/limits.rs has those).
    let server = TestServer::start(Config { outbox_capacity: 16, message_rate_scale: 0.0, ..Config::default() }).await;
    let mut talker = Client::connect(&server).await;
    let mut stuck = Client::connect(&server).await;
    talker.join("r", "talker").await;
    stuck.join("r", "stuck").await;
    talker.recv().await; // peer_joined
                         // `stuck` never reads again. Long chat messages fill its socket buffers, then its outbox.
    let text = "x".repeat(2000);
    let mut sent = 0;
    let evicted = loop {
        talker.send(&ClientMsg::Chat { text: text.clone() }).await;
        sent += 1;
        match talker.recv().await {
            ServerMsg::Chat { .. } => {}
            ServerMsg::PeerLeft { id, reason } => break (id, reason),
            other => panic!("{other:?}"),
        }
        assert!(sent < 20_000, "the stuck client was never disconnected");
    };
    assert_eq!(evicted, (stuck.id.clone(), LeaveReason::TooSlow));
    // The talker's own chat kept flowing the whole time, and still does.
    talker.send(&ClientMsg::Chat { text: "after".into() }).await;
    loop {
        if let ServerMsg::Chat { message } = talker.recv().await {
            if message.text == "after" {
                break;
            }
        }
    }
}
