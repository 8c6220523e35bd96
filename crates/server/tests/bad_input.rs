//! Every kind of bad input gets a clear error code, and nobody else notices.

mod common;

use common::{join, Client, TestServer};
use huddle_protocol::{ClientMsg, ErrorCode, PeerId, ServerMsg};
use huddle_server::Config;
use tokio_tungstenite::tungstenite::Message;

/// Two participants: `bad` misbehaves, `good` must see nothing but the normal conversation.
async fn pair(server: &TestServer) -> (Client, Client) {
    let mut good = Client::connect(server).await;
    let mut bad = Client::connect(server).await;
    good.join("r", "good").await;
    bad.join("r", "bad").await;
    good.recv().await; // peer_joined
    (good, bad)
}

/// `good` still works: it can chat with `bad`, and saw nothing else before that.
async fn still_fine(good: &mut Client, bad: &mut Client) {
    good.send(&ClientMsg::Chat { text: "still here".into() }).await;
    for c in [good, bad] {
        assert!(matches!(c.recv().await, ServerMsg::Chat { message } if message.text == "still here"));
    }
}

#[tokio::test]
async fn malformed_frames_get_an_error_and_the_room_carries_on() {
    let server = TestServer::default().await;
    let (mut good, mut bad) = pair(&server).await;
    let cases: Vec<(Message, ErrorCode)> = vec![
        (Message::text("{not json"), ErrorCode::BadJson),
        (Message::text("[]"), ErrorCode::BadMessage),
        (Message::text(r#"{"type":"teleport"}"#), ErrorCode::UnknownType),
        (Message::text(r#"{"no_type":1}"#), ErrorCode::UnknownType),
        (Message::text(r#"{"type":"chat"}"#), ErrorCode::BadMessage),
        (Message::text(r#"{"type":"chat","text":42}"#), ErrorCode::BadMessage),
        (Message::text(r#"{"type":"signal","to":"p1","payload":{"kind":"teleport"}}"#), ErrorCode::BadMessage),
        (
            Message::text(
                r#"{"type":"signal","to":"p1","payload":{"kind":"description","description":{"type":"bogus","sdp":""}}}"#,
            ),
            ErrorCode::BadMessage,
        ),
        (Message::binary(vec![1u8, 2, 3]), ErrorCode::BinaryFrame),
    ];
    for (frame, code) in cases {
        bad.send_raw(frame).await;
        bad.expect_error(code).await;
    }
    still_fine(&mut good, &mut bad).await;
}

#[tokio::test]
async fn the_error_names_the_request_when_it_can() {
    let server = TestServer::default().await;
    let mut c = Client::connect(&server).await;
    c.send_raw(Message::text(r#"{"type":"join","room":"r"}"#)).await;
    match c.recv().await {
        ServerMsg::Error { code, request, .. } => {
            assert_eq!(code, ErrorCode::BadMessage);
            assert_eq!(request.as_deref(), Some("join"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn messages_before_joining_are_refused() {
    let server = TestServer::default().await;
    let mut c = Client::connect(&server).await;
    for msg in [
        ClientMsg::Leave,
        ClientMsg::Chat { text: "hi".into() },
        ClientMsg::Media { audio: true, video: true, screen: false },
        ClientMsg::Signal {
            to: PeerId("p1".into()),
            payload: huddle_protocol::SignalPayload::Candidate { candidate: None },
        },
    ] {
        c.send(&msg).await;
        c.expect_error(ErrorCode::NotInRoom).await;
    }
}

#[tokio::test]
async fn joining_twice_wrong_version_and_bad_names_are_refused() {
    let server = TestServer::default().await;
    let (mut good, mut bad) = pair(&server).await;
    bad.send(&join("other", "x")).await;
    bad.expect_error(ErrorCode::AlreadyInRoom).await;

    let mut c = Client::connect(&server).await;
    c.send(&ClientMsg::Join {
        recording_ok: false,
        protocol: 99,
        room: "r".into(),
        name: "n".into(),
        audio: false,
        video: false,
        password: None,
        token: None,
    })
    .await;
    c.expect_error(ErrorCode::UnsupportedProtocol).await;
    for (room, name, code) in [
        ("r", "", ErrorCode::InvalidName),
        ("r", "   ", ErrorCode::InvalidName),
        ("r", &"n".repeat(33), ErrorCode::InvalidName),
        ("r", "a\u{7}b", ErrorCode::InvalidName),
        ("", "n", ErrorCode::InvalidRoom),
        (&"가".repeat(65), "n", ErrorCode::InvalidRoom),
        ("a\nb", "n", ErrorCode::InvalidRoom),
        ("a\u{202E}b", "n", ErrorCode::InvalidRoom),
    ] {
        c.send(&join(room, name)).await;
        c.expect_error(code).await;
    }
    good.barrier().await;
    still_fine(&mut good, &mut bad).await;
}

#[tokio::test]
async fn chat_limits_are_enforced() {
    let server = TestServer::start(Config { max_chat_chars: 10, ..Config::default() }).await;
    let (mut good, mut bad) = pair(&server).await;
    for text in ["", "   ", "01234567890", "bell\u{7}"] {
        bad.send(&ClientMsg::Chat { text: text.into() }).await;
        bad.expect_error(ErrorCode::InvalidText).await;
    }
    still_fine(&mut good, &mut bad).await;
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_only_that_connection() {
    let server = TestServer::default().await;
    let (mut good, mut bad) = pair(&server).await;
    // Over the configured limit: `bye` `frame_too_large`, close 1009 (tests/goodbyes.rs has the
    // exact frames); nobody else notices.
    let limit = Config::default().max_frame_bytes as usize;
    let big = format!(r#"{{"type":"chat","text":"{}"}}"#, "x".repeat(limit + 1024));
    let _ = futures_util::SinkExt::send(&mut bad.ws, Message::text(big)).await;
    let mut bye = None;
    while let Some(frame) = bad.next_frame().await {
        if let Message::Text(t) = frame {
            if let Ok(ServerMsg::Bye { reason }) = serde_json::from_str(&t) {
                bye = Some(reason);
            }
        }
    }
    assert_eq!(bye, Some(huddle_protocol::ByeReason::FrameTooLarge));
    good.barrier().await;
    let mut c = Client::connect(&server).await;
    c.join("r", "newcomer").await;
    // (A third member, with `bad` still holding its place for a resume: the room moves to the SFU.)
    let mut m = good.recv().await;
    if matches!(m, ServerMsg::Topology { .. }) {
        m = good.recv().await;
    }
    assert!(matches!(m, ServerMsg::PeerJoined { .. }), "{m:?}");
}

#[tokio::test]
async fn cross_site_websockets_are_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::default().await;
    let mut req = server.url().into_client_request().expect("request");
    req.headers_mut().insert("Origin", "https://evil.example".parse().expect("header"));
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    let mut same = server.url().into_client_request().expect("request");
    same.headers_mut().insert("Origin", format!("http://{}", server.addr).parse().expect("header"));
    assert!(tokio_tungstenite::connect_async(same).await.is_ok());
}
