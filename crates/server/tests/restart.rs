//! A server that stops gracefully hands its sessions to the next start on the same port (in the
//! data directory): pages resume them as after a lost connection — same ids, roles, room
//! settings and password, what they missed replayed exactly once — and invite links still work.

mod common;

use common::{join, Client, TestServer};
use huddle_protocol::{ByeReason, ClientMsg, ErrorCode, PeerId, Role, ServerMsg};
use huddle_server::Config;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A client that remembers what it needs to resume: its secret and how many messages it saw.
struct Session {
    c: Client,
    secret: String,
    seen: u64,
}

impl Session {
    async fn connect(server: &TestServer) -> Session {
        let (ws, _) = tokio_tungstenite::connect_async(server.url()).await.expect("handshake");
        let mut c = Client { ws, id: PeerId(String::new()) };
        let ServerMsg::Welcome { id, resume, .. } = c.recv().await else { panic!("welcome first") };
        c.id = id;
        Session { c, secret: resume, seen: 0 }
    }

    /// Takes the session over on a new connection; returns the `welcome`.
    async fn resume(server: &TestServer, id: &PeerId, secret: &str, seen: u64) -> (Session, ServerMsg) {
        let url = format!("{}?session={id}&resume={secret}&seen={seen}", server.url());
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("handshake");
        let mut c = Client { ws, id: id.clone() };
        let welcome = c.recv().await;
        (Session { c, secret: secret.to_string(), seen }, welcome)
    }

    async fn recv(&mut self) -> ServerMsg {
        let m = self.c.recv().await;
        if !matches!(m, ServerMsg::Welcome { .. } | ServerMsg::Bye { .. }) {
            self.seen += 1;
        }
        m
    }

    async fn send(&mut self, msg: &ClientMsg) {
        self.c.send(msg).await;
    }

    /// Nothing else is on its way (the barrier's answer counts as seen).
    async fn barrier(&mut self) {
        self.c.barrier().await;
        self.seen += 1;
    }
}

/// The room's password: distinctive, so that finding it in the sessions file means it was kept.
const PASSWORD: &str = "correct horse battery";

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("huddle-restart-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &Path) -> Config {
    Config { data_dir: Some(dir.to_path_buf()), resume_grace: Duration::from_secs(30), ..Config::default() }
}

fn chat_text(m: &ServerMsg) -> Option<&str> {
    match m {
        ServerMsg::Chat { message } => Some(&message.text),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_hands_every_session_back_with_its_room_role_password_and_missed_messages() {
    let dir = data_dir("sessions");
    let server = TestServer::start(config(&dir)).await;
    let addr = server.addr;
    let mut a = Session::connect(&server).await;
    let mut b = Session::connect(&server).await;
    a.send(&join("r", "Alice")).await;
    assert!(matches!(a.recv().await, ServerMsg::Joined { ref you, .. } if you.role == Role::Host));
    b.send(&join("r", "Bob")).await;
    assert!(matches!(b.recv().await, ServerMsg::Joined { .. }));
    assert!(matches!(a.recv().await, ServerMsg::PeerJoined { .. }));
    let lock = ClientMsg::Settings {
        locked: None,
        waiting_room: None,
        allow_unmute: None,
        password: Some(PASSWORD.into()),
        listed: None,
    };
    a.send(&lock).await;
    assert!(matches!(a.recv().await, ServerMsg::RoomSettings { .. }));
    assert!(matches!(b.recv().await, ServerMsg::RoomSettings { .. }));
    a.send(&ClientMsg::Invite { ttl_secs: None }).await;
    let ServerMsg::InviteToken { token, .. } = a.recv().await else { panic!("an invite") };

    // Alice's connection breaks; Bob chats while she is away; then the server stops.
    let (a_id, a_secret, a_seen) = (a.c.id.clone(), a.secret.clone(), a.seen);
    drop(a);
    for text in ["while away 1", "while away 2"] {
        b.send(&ClientMsg::Chat { text: text.into() }).await;
        assert_eq!(chat_text(&b.recv().await), Some(text));
    }
    b.barrier().await;
    let stopping = tokio::spawn(server.shutdown());
    assert!(matches!(b.c.recv().await, ServerMsg::Bye { reason: ByeReason::ServerShutdown }));
    stopping.await.expect("shut down");
    let saved = std::fs::read_dir(&dir).expect("data dir").flatten().map(|e| e.file_name()).collect::<Vec<_>>();
    assert!(saved.iter().any(|n| n.to_string_lossy() == format!("sessions-{}.json", addr.port())), "{saved:?}");
    // The room's password is not in the file (a salted hash is), nor in the server's memory.
    let file = std::fs::read(dir.join(format!("sessions-{}.json", addr.port()))).expect("the sessions file");
    let clear = file.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes());
    assert!(!clear, "the sessions file holds the room password in clear");

    // The next start on the same port: both pages take their sessions back.
    let server = TestServer::start_on(config(&dir), addr).await;
    let (b_id, b_secret, b_seen) = (b.c.id.clone(), b.secret.clone(), b.seen);
    let (mut b, welcome) = Session::resume(&server, &b_id, &b_secret, b_seen).await;
    assert!(
        matches!(welcome, ServerMsg::Welcome { resumed: true, received: 4, ref id, .. } if *id == b_id),
        "Bob resumed, and the server knows it took his four messages (join, two chats, barrier): {welcome:?}"
    );
    let (mut a, welcome) = Session::resume(&server, &a_id, &a_secret, a_seen).await;
    assert!(matches!(welcome, ServerMsg::Welcome { resumed: true, ref id, .. } if *id == a_id), "{welcome:?}");
    // What Alice missed before the restart comes now, once, in order; then each gets current
    // relay credentials (for the ICE restart its page makes).
    assert_eq!(chat_text(&a.recv().await), Some("while away 1"));
    assert_eq!(chat_text(&a.recv().await), Some("while away 2"));
    for s in [&mut a, &mut b] {
        let m = s.recv().await;
        assert!(
            matches!(m, ServerMsg::IceServers { ref ice_servers } if ice_servers.iter().any(|i| i.username.is_some())),
            "{m:?}"
        );
    }
    a.barrier().await;
    b.barrier().await;
    assert_eq!(
        std::fs::read_dir(&dir)
            .expect("data dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("sessions-"))
            .count(),
        0,
        "the saved sessions are used once"
    );

    // The room kept its password; the invite from before the restart still opens it.
    let mut c = Session::connect(&server).await;
    assert!(c.c.id != a_id && c.c.id != b_id, "new connections get new ids: {}", c.c.id);
    c.send(&join("r", "Carol")).await;
    assert!(matches!(c.recv().await, ServerMsg::Error { code: ErrorCode::PasswordRequired, .. }));
    let ClientMsg::Join { protocol, room, name, audio, video, .. } = join("r", "Carol") else { unreachable!() };
    let with_invite =
        ClientMsg::Join { recording_ok: false, protocol, room, name, audio, video, password: None, token: Some(token) };
    c.send(&with_invite).await;
    match c.recv().await {
        ServerMsg::Joined { peers, chat, settings, .. } => {
            let roles: Vec<(PeerId, Role)> = peers.iter().map(|p| (p.id.clone(), p.role)).collect();
            assert_eq!(roles, vec![(a_id.clone(), Role::Host), (b_id.clone(), Role::Participant)]);
            assert!(settings.has_password);
            let texts: Vec<&str> = chat.iter().map(|m| m.text.as_str()).collect();
            assert_eq!(texts, ["while away 1", "while away 2"], "the chat history stayed");
        }
        other => panic!("expected joined, got {other:?}"),
    }
    // Nobody saw anyone leave: the next thing both hear is Carol (and the room moving to the
    // SFU at its third person).
    for s in [&mut a, &mut b] {
        let mut m = s.recv().await;
        if matches!(m, ServerMsg::Topology { .. }) {
            m = s.recv().await;
        }
        assert!(matches!(m, ServerMsg::PeerJoined { ref peer } if peer.name == "Carol"), "{m:?}");
    }
    // Still the host.
    a.send(&ClientMsg::EndMeeting).await;
    assert!(matches!(c.recv().await, ServerMsg::Ended { .. }));
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_a_data_directory_nothing_is_kept() {
    let server = TestServer::start(Config { data_dir: None, ..Config::default() }).await;
    let addr = server.addr;
    let mut a = Session::connect(&server).await;
    a.send(&join("r", "Alice")).await;
    assert!(matches!(a.recv().await, ServerMsg::Joined { .. }));
    let stopping = tokio::spawn(server.shutdown());
    assert!(matches!(a.c.recv().await, ServerMsg::Bye { .. }));
    stopping.await.expect("shut down");
    let server = TestServer::start_on(Config::default(), addr).await;
    let (_, welcome) = Session::resume(&server, &a.c.id, &a.secret, a.seen).await;
    assert!(matches!(welcome, ServerMsg::Welcome { resumed: false, .. }), "{welcome:?}");
    server.shutdown().await;
}

/// A WebSocket session from another address of this machine (all of 127/8 is loopback).
async fn connect_from(server: &TestServer, local: &str) -> Session {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{local}:0").parse().expect("address")).expect("bind a loopback address");
    let tcp = sock.connect(server.addr).await.expect("connect");
    let plain = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let (ws, _) = tokio_tungstenite::client_async(server.url(), plain).await.expect("handshake");
    let mut c = Client { ws, id: PeerId(String::new()) };
    let ServerMsg::Welcome { id, resume, .. } = c.recv().await else { panic!("welcome first") };
    c.id = id;
    Session { c, secret: resume, seen: 0 }
}

/// Issue 15, item 7, the same class: peer ids after a restart were numbered above the highest
/// *restored* session, so the id of someone who was not restored (banned, here) went to a
/// newcomer, who was then refused as banned (bans hold `id:<peer id>`). Ids are never reused.
#[tokio::test]
async fn after_a_restart_no_peer_id_is_handed_out_again() {
    let dir = data_dir("ids");
    let server = TestServer::start(config(&dir)).await;
    let addr = server.addr;
    let mut host = Session::connect(&server).await;
    host.send(&join("r", "Host")).await;
    assert!(matches!(host.recv().await, ServerMsg::Joined { .. }));
    let mut banned = connect_from(&server, "127.0.0.2").await;
    banned.send(&join("r", "Troll")).await;
    assert!(matches!(banned.recv().await, ServerMsg::Joined { .. }));
    assert!(matches!(host.recv().await, ServerMsg::PeerJoined { .. }));
    host.send(&ClientMsg::Moderate { peer: banned.c.id.clone(), action: huddle_protocol::ModAction::Ban }).await;
    assert!(matches!(banned.recv().await, ServerMsg::Removed { ban: true, .. }));
    assert!(matches!(host.recv().await, ServerMsg::PeerLeft { .. }));
    let stopping = tokio::spawn(server.shutdown());
    assert!(matches!(host.recv().await, ServerMsg::Bye { reason: ByeReason::ServerShutdown }));
    stopping.await.expect("shut down");

    let server = TestServer::start_on(config(&dir), addr).await;
    let mut newcomer = connect_from(&server, "127.0.0.3").await;
    assert_ne!(newcomer.c.id, banned.c.id, "the banned session's id went to someone else");
    assert_ne!(newcomer.c.id, host.c.id);
    newcomer.send(&join("r", "Newcomer")).await;
    let m = newcomer.recv().await;
    assert!(matches!(m, ServerMsg::Joined { .. }), "someone new is not banned: {m:?}");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
