//! The rules of roles, waiting rooms, tokens and sessions, enforced by the real server over real
//! WebSockets: a client that breaks them is refused with a clear code, and nobody else notices.

mod common;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use common::{join, Client, TestServer};
use huddle_protocol::{ClientMsg, ErrorCode, ModAction, PeerId, Role, ServerMsg};
use huddle_server::Config;
use std::time::{SystemTime, UNIX_EPOCH};

fn settings(waiting_room: Option<bool>, password: Option<&str>) -> ClientMsg {
    ClientMsg::Settings {
        locked: None,
        waiting_room,
        allow_unmute: None,
        password: password.map(str::to_string),
        listed: None,
    }
}

/// Joins `room` with a password and/or token; returns the answer.
async fn join_with(c: &mut Client, room: &str, password: Option<&str>, token: Option<&str>) -> ServerMsg {
    let ClientMsg::Join { protocol, room, name, audio, video, .. } = join(room, "Guest") else { unreachable!() };
    let msg = ClientMsg::Join {
        recording_ok: false,
        protocol,
        room,
        name,
        audio,
        video,
        password: password.map(str::to_string),
        token: token.map(str::to_string),
    };
    c.send(&msg).await;
    c.recv().await
}

fn code(m: ServerMsg) -> ErrorCode {
    match m {
        ServerMsg::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn host_commands_from_a_participant_are_refused_and_change_nothing() {
    let server = TestServer::default().await;
    let mut host = Client::connect(&server).await;
    let mut guest = Client::connect(&server).await;
    match host.join("r", "Host").await {
        ServerMsg::Joined { you, .. } => assert_eq!(you.role, Role::Host, "the opener hosts"),
        other => panic!("{other:?}"),
    }
    guest.join("r", "Guest").await;
    host.recv().await; // peer_joined
    let host_id = host.id.clone();
    for msg in [
        settings(Some(true), Some("mine now")),
        ClientMsg::Moderate { peer: host_id.clone(), action: ModAction::Mute },
        ClientMsg::Moderate { peer: host_id.clone(), action: ModAction::Ban },
        ClientMsg::SetRole { peer: guest.id.clone(), role: Role::Host },
        ClientMsg::Admit { peer: guest.id.clone() },
        ClientMsg::Deny { peer: host_id.clone() },
        ClientMsg::AdmitAll,
        ClientMsg::EndMeeting,
        ClientMsg::Invite { ttl_secs: Some(60) },
    ] {
        guest.send(&msg).await;
        guest.expect_error(ErrorCode::NotAllowed).await;
    }
    host.barrier().await;
    // Still open, no password: a newcomer walks in.
    let mut late = Client::connect(&server).await;
    late.join("r", "Late").await;
    server.shutdown().await;
}

#[tokio::test]
async fn nobody_knocks_past_the_waiting_room() {
    let server = TestServer::default().await;
    let mut host = Client::connect(&server).await;
    host.join("r", "Host").await;
    host.send(&settings(Some(true), None)).await;
    assert!(matches!(host.recv().await, ServerMsg::RoomSettings { settings } if settings.waiting_room));
    let mut knocker = Client::connect(&server).await;
    knocker.send(&join("r", "Knocker")).await;
    assert!(matches!(knocker.recv().await, ServerMsg::Waiting { .. }));
    assert!(matches!(host.recv().await, ServerMsg::WaitingList { waiting } if waiting.len() == 1));
    for msg in [
        ClientMsg::Chat { text: "hello?".into() },
        ClientMsg::Media { audio: true, video: true, screen: false },
        ClientMsg::Hand { raised: true },
        ClientMsg::React { emoji: "👍".into() },
        ClientMsg::Signal {
            to: host.id.clone(),
            payload: huddle_protocol::SignalPayload::Candidate { candidate: None },
        },
        ClientMsg::AdmitAll,
    ] {
        knocker.send(&msg).await;
        knocker.expect_error(ErrorCode::NotInRoom).await;
    }
    knocker.send(&join("r", "Knocker")).await;
    knocker.expect_error(ErrorCode::AlreadyInRoom).await;
    host.barrier().await;
    // Giving up leaves the waiting room; the host sees the list empty.
    knocker.send(&ClientMsg::Leave).await;
    assert!(matches!(knocker.recv().await, ServerMsg::Left { .. }));
    assert!(matches!(host.recv().await, ServerMsg::WaitingList { waiting } if waiting.is_empty()));
    server.shutdown().await;
}

#[tokio::test]
async fn forged_ids_reach_nobody() {
    let server = TestServer::default().await;
    let mut host = Client::connect(&server).await;
    let mut other = Client::connect(&server).await;
    host.join("r", "Host").await;
    other.join("elsewhere", "Other").await;
    // A host's power stops at its room, and at people who are not waiting.
    for msg in [
        ClientMsg::Moderate { peer: other.id.clone(), action: ModAction::Remove },
        ClientMsg::SetRole { peer: other.id.clone(), role: Role::Cohost },
        ClientMsg::Admit { peer: other.id.clone() },
        ClientMsg::Moderate { peer: PeerId("p999".into()), action: ModAction::Mute },
    ] {
        host.send(&msg).await;
        host.expect_error(ErrorCode::UnknownPeer).await;
    }
    other.barrier().await;
    // Taking over someone's session needs its secret: a guess gets a session of its own.
    let url = format!("{}?session={}&resume={}&seen=0", server.url(), other.id, "ab".repeat(16));
    let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("handshake");
    let mut thief = Client { ws, id: PeerId(String::new()) };
    match thief.recv().await {
        ServerMsg::Welcome { id, resumed, .. } => {
            assert_ne!(id, other.id);
            assert!(!resumed);
        }
        m => panic!("{m:?}"),
    }
    other.send(&ClientMsg::Chat { text: "still me".into() }).await;
    assert!(matches!(other.recv().await, ServerMsg::Chat { message } if message.from == other.id));
    server.shutdown().await;
}

/// An HS256 JWT over `claims`, as an operator's service would sign it.
fn jwt(secret: &[u8], alg: &str, claims: serde_json::Value) -> String {
    let header = B64.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
    let signed = format!("{header}.{}", B64.encode(claims.to_string()));
    let sig = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), signed.as_bytes());
    format!("{signed}.{}", B64.encode(sig.as_ref()))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

#[tokio::test]
async fn tokens_are_required_checked_and_honoured() {
    const SECRET: &[u8] = b"the operator's secret, 32 bytes or more";
    let config = Config {
        token_secret: Some(String::from_utf8(SECRET.to_vec()).expect("utf-8")),
        require_token: true,
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let mut c = Client::connect(&server).await;
    assert_eq!(code(join_with(&mut c, "r", None, None).await), ErrorCode::TokenRequired);
    let claims = |exp: u64| serde_json::json!({"room": "r", "exp": exp, "name": "Dana", "role": "host", "sub": "u1"});
    let expired = jwt(SECRET, "HS256", claims(now() - 3600));
    assert_eq!(code(join_with(&mut c, "r", None, Some(&expired)).await), ErrorCode::TokenExpired);
    let missigned = jwt(b"somebody else's secret, also long", "HS256", claims(now() + 600));
    assert_eq!(code(join_with(&mut c, "r", None, Some(&missigned)).await), ErrorCode::InvalidToken);
    let good = jwt(SECRET, "HS256", claims(now() + 600));
    let parts: Vec<&str> = good.split('.').collect();
    let unsigned = format!("{}.{}.", B64.encode(r#"{"alg":"none"}"#), parts[1]);
    assert_eq!(code(join_with(&mut c, "r", None, Some(&unsigned)).await), ErrorCode::InvalidToken);
    assert_eq!(code(join_with(&mut c, "other room", None, Some(&good)).await), ErrorCode::InvalidToken);
    match join_with(&mut c, "r", None, Some(&good)).await {
        ServerMsg::Joined { you, .. } => assert_eq!((you.name.as_str(), you.role), ("Dana", Role::Host)),
        other => panic!("{other:?}"),
    }
    // The host's invite lets someone in without an operator token (and past the password).
    c.send(&settings(None, Some("s3cret"))).await;
    assert!(matches!(c.recv().await, ServerMsg::RoomSettings { .. }));
    c.send(&ClientMsg::Invite { ttl_secs: None }).await;
    let ServerMsg::InviteToken { token, .. } = c.recv().await else { panic!("an invite") };
    let mut guest = Client::connect(&server).await;
    assert!(matches!(join_with(&mut guest, "r", None, Some(&token)).await, ServerMsg::Joined { .. }));
    server.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_resumes_with_what_it_missed_and_nobody_sees_it_leave() {
    let server = TestServer::default().await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    // a's secret, from a welcome read by hand.
    let (ws, _) = tokio_tungstenite::connect_async(server.url()).await.expect("handshake");
    drop(ws);
    let (ws, _) = tokio_tungstenite::connect_async(server.url()).await.expect("handshake");
    a.ws = ws;
    let secret = match a.recv().await {
        ServerMsg::Welcome { id, resume, .. } => {
            a.id = id;
            resume
        }
        m => panic!("{m:?}"),
    };
    a.join("r", "A").await;
    b.join("r", "B").await;
    assert!(matches!(a.recv().await, ServerMsg::PeerJoined { .. }));
    let seen = 2; // joined, peer_joined
                  // The connection breaks without a goodbye; b keeps talking.
    drop(a.ws);
    for i in 0..3 {
        b.send(&ClientMsg::Chat { text: format!("gap {i}") }).await;
        assert!(matches!(b.recv().await, ServerMsg::Chat { .. }));
    }
    b.barrier().await; // no peer_left
    let url = format!("{}?session={}&resume={secret}&seen={seen}", server.url(), a.id);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("handshake");
    let mut a2 = Client { ws, id: a.id.clone() };
    assert!(matches!(a2.recv().await, ServerMsg::Welcome { resumed: true, received: 1, ref id, .. } if *id == a.id));
    for i in 0..3 {
        assert!(matches!(a2.recv().await, ServerMsg::Chat { message } if message.text == format!("gap {i}")));
    }
    a2.barrier().await; // each exactly once
    a2.send(&ClientMsg::Chat { text: "back".into() }).await;
    assert!(matches!(b.recv().await, ServerMsg::Chat { message } if message.from == a.id));
    server.shutdown().await;
}
