//! Who may enter a room and what the room list shows, attacked on the real server over real
//! WebSockets: the waiting room never hands a room over (issue 15, item 3), invites open only the
//! room instance and password generation they were made for and can be revoked (4), protected
//! rooms are never listed and `--require-token` lists nothing to anonymous connections (5), one
//! failure budget per room for password guesses from any number of addresses (10), invisible
//! names and a chat history bounded by bytes (12). Other client addresses than 127.0.0.1 come
//! from binding to 127.0.0.2, 127.0.0.3, … (all of 127/8 is loopback on Linux).

mod common;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use common::{join, Client, TestServer};
use huddle_protocol::{ClientMsg, ErrorCode, PeerId, Role, RoomSummary, ServerMsg};
use huddle_server::config::TopologyMode;
use huddle_server::Config;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpSocket;
use tokio_tungstenite::MaybeTlsStream;

fn p2p(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config { topology: TopologyMode::P2p, turn: false, ..Config::default() };
    f(&mut c);
    c
}

/// A connection from `local` (a loopback address), past its `welcome`.
async fn connect_from(server: &TestServer, local: &str) -> Client {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{local}:0").parse().expect("address")).expect("bind a loopback address");
    let tcp = sock.connect(server.addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(server.url(), MaybeTlsStream::Plain(tcp)).await.expect("handshake");
    let mut c = Client { ws, id: PeerId(String::new()) };
    match c.recv().await {
        ServerMsg::Welcome { id, .. } => c.id = id,
        other => panic!("expected welcome, got {other:?}"),
    }
    c
}

/// A `settings` message changing only what is given.
#[derive(Default)]
struct Set {
    locked: Option<bool>,
    waiting_room: Option<bool>,
    password: Option<&'static str>,
    listed: Option<bool>,
}

impl Set {
    fn msg(self) -> ClientMsg {
        ClientMsg::Settings {
            locked: self.locked,
            waiting_room: self.waiting_room,
            allow_unmute: None,
            password: self.password.map(str::to_string),
            listed: self.listed,
        }
    }
}

/// Sends `settings` and reads the host's `room_settings`.
async fn set(host: &mut Client, s: Set) -> huddle_protocol::RoomSettings {
    host.send(&s.msg()).await;
    match host.recv().await {
        ServerMsg::RoomSettings { settings } => settings,
        other => panic!("expected room_settings, got {other:?}"),
    }
}

/// `join` with a name, a password and a token.
fn join_as(room: &str, name: &str, password: Option<&str>, token: Option<&str>) -> ClientMsg {
    let ClientMsg::Join { protocol, room, name, audio, video, .. } = join(room, name) else { unreachable!() };
    ClientMsg::Join {
        recording_ok: false,
        protocol,
        room,
        name,
        audio,
        video,
        password: password.map(str::to_string),
        token: token.map(str::to_string),
    }
}

fn code_of(m: &ServerMsg) -> Option<ErrorCode> {
    match m {
        ServerMsg::Error { code, .. } => Some(*code),
        _ => None,
    }
}

async fn invite(host: &mut Client) -> String {
    host.send(&ClientMsg::Invite { ttl_secs: None }).await;
    match host.recv().await {
        ServerMsg::InviteToken { token, .. } => token,
        other => panic!("expected an invite, got {other:?}"),
    }
}

/// Knocks at `room` (which has a waiting room): `waiting` for the knocker, the list for the host.
async fn knock(host: &mut Client, knocker: &mut Client, room: &str, password: Option<&str>) {
    knocker.send(&join_as(room, "Knocker", password, None)).await;
    let m = knocker.recv().await;
    assert!(matches!(m, ServerMsg::Waiting { .. }), "expected waiting, got {m:?}");
    assert!(matches!(host.recv().await, ServerMsg::WaitingList { waiting } if waiting.len() == 1));
}

// ---------------------------------------------------------------- item 3: the waiting room

/// The probe's attack: a host with a waiting room and a password posts chat, someone knocks,
/// the host locks the room and leaves. The knocker must not come in (before the fix it was
/// `joined` as host, with the chat history, in the still-locked room): the room ends for them.
#[tokio::test]
async fn a_knocker_never_takes_over_the_room_its_last_member_left() {
    let server = TestServer::start(p2p(|_| {})).await;
    let mut host = Client::connect(&server).await;
    host.join("r", "Host").await;
    // One at a time: a password is announced once hashed, in a `room_settings` of its own.
    set(&mut host, Set { waiting_room: Some(true), ..Set::default() }).await;
    set(&mut host, Set { password: Some("sesame"), ..Set::default() }).await;
    host.send(&ClientMsg::Chat { text: "the secret plan".into() }).await;
    assert!(matches!(host.recv().await, ServerMsg::Chat { .. }));
    let mut knocker = connect_from(&server, "127.0.0.2").await;
    knock(&mut host, &mut knocker, "r", Some("sesame")).await;
    set(&mut host, Set { locked: Some(true), ..Set::default() }).await;
    host.send(&ClientMsg::Leave).await;
    let m = host.recv().await;
    assert!(matches!(m, ServerMsg::Left { .. }), "expected left, got {m:?}");
    match knocker.recv().await {
        ServerMsg::Error { code: ErrorCode::RoomClosed, request, .. } => assert_eq!(request.as_deref(), Some("join")),
        other => panic!("the knocker should be told the room closed, got {other:?}"),
    }
    knocker.barrier().await;
    // The room is gone with its chat, lock and password: the name opens a new, empty room.
    match knocker.join("r", "Knocker").await {
        ServerMsg::Joined { chat, settings, you, .. } => {
            assert!(chat.is_empty(), "the old room's chat leaked: {chat:?}");
            assert!(!settings.locked && !settings.has_password && !settings.waiting_room);
            assert_eq!(you.role, Role::Host);
        }
        _ => unreachable!(),
    }
    server.shutdown().await;
}

/// Turning the waiting room off lets the people waiting in, but not into a locked room.
#[tokio::test]
async fn turning_the_waiting_room_off_while_locked_lets_nobody_in() {
    let server = TestServer::start(p2p(|_| {})).await;
    let mut host = Client::connect(&server).await;
    host.join("r", "Host").await;
    set(&mut host, Set { waiting_room: Some(true), ..Set::default() }).await;
    let mut knocker = connect_from(&server, "127.0.0.2").await;
    knock(&mut host, &mut knocker, "r", None).await;
    set(&mut host, Set { locked: Some(true), ..Set::default() }).await;
    let s = set(&mut host, Set { waiting_room: Some(false), ..Set::default() }).await;
    assert!(s.locked && !s.waiting_room);
    let m = knocker.recv().await;
    assert_eq!(code_of(&m), Some(ErrorCode::RoomLocked), "the knocker got {m:?}");
    assert!(matches!(host.recv().await, ServerMsg::WaitingList { waiting } if waiting.is_empty()));
    host.barrier().await; // nobody joined
    server.shutdown().await;
}

/// A host whose connection dropped is still a member for the grace period; when it ends and the
/// room is empty, the waiting room ends too (before the fix the knocker became host).
#[tokio::test]
async fn a_suspended_host_who_never_comes_back_hands_nobody_the_room() {
    let server = TestServer::start(p2p(|c| c.resume_grace = Duration::from_secs(1))).await;
    let mut host = Client::connect(&server).await;
    host.join("r", "Host").await;
    set(&mut host, Set { waiting_room: Some(true), ..Set::default() }).await;
    let mut knocker = connect_from(&server, "127.0.0.2").await;
    knock(&mut host, &mut knocker, "r", None).await;
    drop(host); // the connection breaks: no goodbye, the place is kept for a second
    let m = knocker.recv().await;
    assert_eq!(code_of(&m), Some(ErrorCode::RoomClosed), "the knocker got {m:?}");
    server.shutdown().await;
}

/// Admitting is a host's decision at the moment it is made: a co-host demoted a moment ago
/// cannot, and whoever is admitted comes in as a participant.
#[tokio::test]
async fn only_a_current_host_admits_and_the_admitted_are_participants() {
    let server = TestServer::start(p2p(|_| {})).await;
    let mut host = Client::connect(&server).await;
    let mut co = Client::connect(&server).await;
    host.join("r", "Host").await;
    co.join("r", "Co").await;
    assert!(matches!(host.recv().await, ServerMsg::PeerJoined { .. }));
    host.send(&ClientMsg::SetRole { peer: co.id.clone(), role: Role::Cohost }).await;
    for c in [&mut host, &mut co] {
        assert!(matches!(c.recv().await, ServerMsg::PeerUpdated { .. }));
        assert!(matches!(c.recv().await, ServerMsg::WaitingList { .. }));
    }
    set(&mut host, Set { waiting_room: Some(true), ..Set::default() }).await;
    assert!(matches!(co.recv().await, ServerMsg::RoomSettings { .. }));
    let mut knocker = connect_from(&server, "127.0.0.2").await;
    knock(&mut host, &mut knocker, "r", None).await;
    assert!(matches!(co.recv().await, ServerMsg::WaitingList { .. }));
    host.send(&ClientMsg::SetRole { peer: co.id.clone(), role: Role::Participant }).await;
    assert!(matches!(host.recv().await, ServerMsg::PeerUpdated { .. }));
    assert!(matches!(host.recv().await, ServerMsg::WaitingList { .. }));
    assert!(matches!(co.recv().await, ServerMsg::PeerUpdated { .. }));
    co.send(&ClientMsg::Admit { peer: knocker.id.clone() }).await;
    co.expect_error(ErrorCode::NotAllowed).await;
    knocker.barrier().await;
    host.send(&ClientMsg::Admit { peer: knocker.id.clone() }).await;
    match knocker.recv().await {
        ServerMsg::Joined { you, .. } => assert_eq!(you.role, Role::Participant),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------- item 4: invites

/// The probe's attack: an invite for a room that closed, used at a new room of the same name
/// that someone else opened with another password (before the fix it let its holder in).
#[tokio::test]
async fn an_invite_does_not_open_a_later_room_of_the_same_name() {
    let server = TestServer::start(p2p(|_| {})).await;
    let mut a = Client::connect(&server).await;
    a.join("r", "A").await;
    set(&mut a, Set { password: Some("a's password"), ..Set::default() }).await;
    let old = invite(&mut a).await;
    a.send(&ClientMsg::Leave).await;
    assert!(matches!(a.recv().await, ServerMsg::Left { .. }));
    let mut b = connect_from(&server, "127.0.0.2").await;
    b.join("r", "B").await;
    set(&mut b, Set { password: Some("b's password"), ..Set::default() }).await;
    let mut holder = connect_from(&server, "127.0.0.3").await;
    holder.send(&join_as("r", "Holder", None, Some(&old))).await;
    let m = holder.recv().await;
    assert_eq!(code_of(&m), Some(ErrorCode::InviteRevoked), "the old invite's holder got {m:?}");
    b.barrier().await; // nobody joined
    server.shutdown().await;
}

/// A new password voids the invites made before it; `revoke_invites` voids all so far and tells
/// every host and co-host; invites made afterwards work.
#[tokio::test]
async fn a_new_password_or_a_revoke_voids_the_invites_made_before() {
    let server = TestServer::start(p2p(|_| {})).await;
    let mut host = Client::connect(&server).await;
    host.join("r", "Host").await;
    set(&mut host, Set { password: Some("first"), ..Set::default() }).await;
    let first = invite(&mut host).await;
    set(&mut host, Set { password: Some("second"), ..Set::default() }).await;
    let mut g = connect_from(&server, "127.0.0.2").await;
    g.send(&join_as("r", "G", None, Some(&first))).await;
    assert_eq!(code_of(&g.recv().await), Some(ErrorCode::InviteRevoked), "an invite from before the new password");
    let second = invite(&mut host).await;
    g.send(&join_as("r", "G", None, Some(&second))).await;
    assert!(matches!(g.recv().await, ServerMsg::Joined { .. }));
    assert!(matches!(host.recv().await, ServerMsg::PeerJoined { .. }));
    host.send(&ClientMsg::SetRole { peer: g.id.clone(), role: Role::Cohost }).await;
    for c in [&mut host, &mut g] {
        assert!(matches!(c.recv().await, ServerMsg::PeerUpdated { .. }));
        assert!(matches!(c.recv().await, ServerMsg::WaitingList { .. }));
    }
    host.send(&ClientMsg::RevokeInvites).await;
    let host_id = host.id.clone();
    for c in [&mut host, &mut g] {
        let m = c.recv().await;
        assert!(matches!(m, ServerMsg::InvitesRevoked { ref by } if *by == host_id), "{m:?}");
    }
    let mut late = connect_from(&server, "127.0.0.3").await;
    late.send(&join_as("r", "Late", None, Some(&second))).await;
    assert_eq!(code_of(&late.recv().await), Some(ErrorCode::InviteRevoked), "a revoked invite");
    let third = invite(&mut host).await;
    late.send(&join_as("r", "Late", None, Some(&third))).await;
    assert!(matches!(late.recv().await, ServerMsg::Joined { .. }));
    // A participant may not revoke.
    late.send(&ClientMsg::RevokeInvites).await;
    late.expect_error(ErrorCode::NotAllowed).await;
    server.shutdown().await;
}

// ---------------------------------------------------------------- item 5: the room list

/// The next `rooms` message.
async fn next_rooms(c: &mut Client) -> Vec<RoomSummary> {
    loop {
        if let ServerMsg::Rooms { rooms } = c.recv().await {
            return rooms;
        }
    }
}

/// Reads room lists until `open` shows `n` people; returns that list.
async fn rooms_once(c: &mut Client, open: &str, n: u32) -> Vec<RoomSummary> {
    for _ in 0..50 {
        let rooms = next_rooms(c).await;
        if rooms.iter().any(|r| r.name == open && r.participants == n) {
            return rooms;
        }
    }
    panic!("{open} never showed {n} people");
}

fn names(rooms: &[RoomSummary]) -> Vec<&str> {
    rooms.iter().map(|r| r.name.as_str()).collect()
}

/// Rooms with a password, a lock or a waiting room, or that a host unlisted, are not listed;
/// a room that stops being public is gone from the first list pushed after the change.
#[tokio::test]
async fn only_public_rooms_are_listed() {
    let server = TestServer::start(p2p(|_| {})).await;
    let mut watcher = connect_from(&server, "127.0.0.2").await;
    watcher.send(&ClientMsg::WatchRooms).await;
    assert!(next_rooms(&mut watcher).await.is_empty());
    let mut open = Client::connect(&server).await;
    open.join("open", "O").await;
    let mut hosts = Vec::new();
    for (room, s) in [
        ("with password", Set { password: Some("pw"), ..Set::default() }),
        ("locked", Set { locked: Some(true), ..Set::default() }),
        ("waiting", Set { waiting_room: Some(true), ..Set::default() }),
        ("unlisted", Set { listed: Some(false), ..Set::default() }),
    ] {
        let mut h = Client::connect(&server).await;
        match h.join(room, "H").await {
            ServerMsg::Joined { settings, .. } => assert!(settings.listed, "an unprotected room starts listed"),
            _ => unreachable!(),
        }
        let settings = set(&mut h, s).await;
        assert!(!settings.listed, "{room}: {settings:?}");
        hosts.push(h);
    }
    // A change after all of them: the list that shows it is pushed after every change above.
    let mut second = Client::connect(&server).await;
    second.join("open", "O2").await;
    let rooms = rooms_once(&mut watcher, "open", 2).await;
    assert_eq!(names(&rooms), ["open"], "only the public room is listed");
    // Listing again: only where nothing protects the room.
    let [with_password, _, _, unlisted] = &mut hosts[..] else { unreachable!() };
    let s = set(with_password, Set { listed: Some(true), ..Set::default() }).await;
    assert!(!s.listed, "a room with a password cannot be listed: {s:?}");
    let s = set(unlisted, Set { listed: Some(true), ..Set::default() }).await;
    assert!(s.listed);
    let mut third = Client::connect(&server).await;
    third.join("open", "O3").await;
    let rooms = rooms_once(&mut watcher, "open", 3).await;
    assert_eq!(names(&rooms), ["open", "unlisted"]);
    server.shutdown().await;
}

fn jwt(secret: &[u8], claims: serde_json::Value) -> String {
    let header = B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let signed = format!("{header}.{}", B64.encode(claims.to_string()));
    let sig = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), signed.as_bytes());
    format!("{signed}.{}", B64.encode(sig.as_ref()))
}

/// With `--require-token` a connection that has shown no token gets no room list: `watch_rooms`
/// is answered `token_required`, and nothing follows.
#[tokio::test]
async fn with_tokens_required_an_anonymous_connection_gets_no_room_list() {
    const SECRET: &[u8] = b"the operator's secret, 32 bytes or more";
    let server = TestServer::start(p2p(|c| {
        c.token_secret = Some(String::from_utf8(SECRET.to_vec()).expect("utf-8"));
        c.require_token = true;
    }))
    .await;
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs() + 600;
    let token = jwt(SECRET, serde_json::json!({"room": "board meeting", "exp": exp}));
    let mut member = Client::connect(&server).await;
    member.send(&join_as("board meeting", "M", None, Some(&token))).await;
    assert!(matches!(member.recv().await, ServerMsg::Joined { .. }));
    let mut anonymous = connect_from(&server, "127.0.0.2").await;
    anonymous.send(&ClientMsg::WatchRooms).await;
    match anonymous.recv().await {
        ServerMsg::Error { code: ErrorCode::TokenRequired, request, .. } => {
            assert_eq!(request.as_deref(), Some("watch_rooms"));
        }
        other => panic!("an anonymous connection got {other:?}"),
    }
    // Another change to the list: still nothing for it.
    let mut other = Client::connect(&server).await;
    other.send(&join_as("board meeting", "N", None, Some(&token))).await;
    assert!(matches!(other.recv().await, ServerMsg::Joined { .. }));
    tokio::time::sleep(huddle_server::hub::ROOM_LIST_INTERVAL * 2).await; // a push would be due by now
    anonymous.barrier().await;
    server.shutdown().await;
}

// ---------------------------------------------------------------- item 10: password guesses

/// Wrong passwords from five addresses draw on one budget of the room: after it, every join with
/// a password is paused (the right one too, from a new address), the hosts are told, and an
/// invite still works. Before the fix each guess was simply answered `wrong_password`.
#[tokio::test]
async fn password_guesses_from_many_addresses_share_one_budget() {
    let server = TestServer::start(p2p(|_| {})).await;
    let mut host = Client::connect(&server).await;
    host.join("r", "Host").await;
    set(&mut host, Set { password: Some("the right one"), ..Set::default() }).await;
    let ok = invite(&mut host).await;
    let mut guessers = Vec::new();
    for n in 2..=6 {
        guessers.push(connect_from(&server, &format!("127.0.0.{n}")).await);
    }
    let (mut wrong, mut paused) = (0, 0);
    for round in 0..4 {
        for (i, g) in guessers.iter_mut().enumerate() {
            g.send(&join_as("r", "Guesser", Some(&format!("guess {round} {i}")), None)).await;
            match code_of(&g.recv().await) {
                Some(ErrorCode::WrongPassword) => {
                    assert_eq!(paused, 0, "a guess was checked after the pause began");
                    wrong += 1;
                }
                Some(ErrorCode::TooManyAttempts) => paused += 1,
                other => panic!("a guess was answered {other:?}"),
            }
        }
    }
    assert_eq!((wrong, paused), (10, 10), "ten guesses per room, whatever the addresses");
    let mut rightful = connect_from(&server, "127.0.0.7").await;
    rightful.send(&join_as("r", "Rightful", Some("the right one"), None)).await;
    assert_eq!(code_of(&rightful.recv().await), Some(ErrorCode::TooManyAttempts), "paused for everyone");
    match host.recv().await {
        ServerMsg::PasswordAttempts { failed } => assert_eq!(failed, 10),
        other => panic!("the host should hear of the guesses, got {other:?}"),
    }
    rightful.send(&join_as("r", "Rightful", None, Some(&ok))).await;
    assert!(matches!(rightful.recv().await, ServerMsg::Joined { .. }), "an invite still works");
    server.shutdown().await;
}

// ---------------------------------------------------------------- item 12: names and chat

/// Names and room names made only of invisible characters are refused; invisible characters that
/// only change identity are stripped; chat must show something, and keeps emoji sequences.
#[tokio::test]
async fn invisible_names_are_refused_and_invisible_padding_is_stripped() {
    // Twenty joins in a row: more than one connection's join budget.
    let server = TestServer::start(p2p(|c| c.message_rate_scale = 0.0)).await;
    let mut c = Client::connect(&server).await;
    for name in [
        "\u{200B}",
        "\u{3164}",
        "\u{2800}",
        "\u{00AD}",
        "\u{FE0F}",
        "\u{0301}\u{0301}",
        "\u{115F}\u{1160}",
        "\u{FFA0}",
        "\u{E0041}",
        "\u{200B}\u{3164} \u{2800}\u{2060}",
    ] {
        c.send(&join_as("r", name, None, None)).await;
        assert_eq!(code_of(&c.recv().await), Some(ErrorCode::InvalidName), "{:?} was accepted", name);
        c.send(&join_as(name, "Dana", None, None)).await;
        assert_eq!(code_of(&c.recv().await), Some(ErrorCode::InvalidRoom), "room {:?} was accepted", name);
    }
    let mut dana = Client::connect(&server).await;
    dana.join("r", "Dana").await;
    match c.join("r\u{200B}", "Dana\u{200B}\u{3164}").await {
        ServerMsg::Joined { room, you, peers, .. } => {
            assert_eq!((room.as_str(), you.name.as_str()), ("r", "Dana"), "stripped to what shows");
            assert_eq!(peers.len(), 1, "the same room as \"r\"");
        }
        _ => unreachable!(),
    }
    for text in ["\u{200B}", "\u{3164}\u{2800}", " \u{FE0F} "] {
        c.send(&ClientMsg::Chat { text: text.into() }).await;
        c.expect_error(ErrorCode::InvalidText).await;
    }
    for (sent, kept) in [("👩‍💻 on it", "👩‍💻 on it"), ("a\u{200B}b", "ab"), ("1️⃣ ❤️ 🏳️‍🌈", "1️⃣ ❤️ 🏳️‍🌈")]
    {
        c.send(&ClientMsg::Chat { text: sent.into() }).await;
        match c.recv().await {
            ServerMsg::Chat { message } => assert_eq!(message.text, kept),
            other => panic!("{other:?}"),
        }
    }
    server.shutdown().await;
}

/// A room's chat history is bounded by bytes too: a hundred messages at the length limit in
/// three-byte characters (about 600 KB) leave a latecomer only the newest that fit.
#[tokio::test]
async fn the_chat_history_is_bounded_by_bytes() {
    let server = TestServer::start(p2p(|c| c.message_rate_scale = 0.0)).await;
    let mut a = Client::connect(&server).await;
    a.join("r", "A").await;
    for i in 0..100 {
        let text = format!("{i:03}{}", "가".repeat(1997));
        a.send(&ClientMsg::Chat { text }).await;
        assert!(matches!(a.recv().await, ServerMsg::Chat { .. }));
    }
    let mut late = Client::connect(&server).await;
    match late.join("r", "Late").await {
        ServerMsg::Joined { chat, .. } => {
            let bytes: usize = chat.iter().map(|m| m.text.len() + m.name.len()).sum();
            assert!(bytes <= huddle_server::room::CHAT_HISTORY_BYTES, "{} messages, {bytes} bytes", chat.len());
            assert!(!chat.is_empty() && chat.len() < 100, "{} messages kept", chat.len());
            assert!(chat.last().is_some_and(|m| m.text.starts_with("099")), "the newest is kept");
        }
        _ => unreachable!(),
    }
    server.shutdown().await;
}

/// Password checks are slow on purpose (PBKDF2) and run off the hub's task: while fifty wrong
/// guesses at ten rooms wait for their checks, everyone else is answered at once. Prints what it
/// measured (`--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_of_password_checks_does_not_hold_up_the_hub() {
    let server = TestServer::start(p2p(|_| {})).await;
    let mut hosts = Vec::new();
    for n in 0..10 {
        let mut h = Client::connect(&server).await;
        h.join(&format!("room {n}"), "Host").await;
        set(&mut h, Set { password: Some("right"), ..Set::default() }).await;
        hosts.push(h);
    }
    let mut guessers = Vec::new();
    for n in 0..50 {
        guessers.push(connect_from(&server, &format!("127.0.0.{}", 2 + n % 5)).await);
    }
    let mut bystander = Client::connect(&server).await;
    let start = std::time::Instant::now();
    for (n, g) in guessers.iter_mut().enumerate() {
        g.send(&join_as(&format!("room {}", n % 10), "G", Some("wrong"), None)).await;
    }
    bystander.send(&ClientMsg::Ping).await;
    assert!(matches!(bystander.recv().await, ServerMsg::Pong));
    let pong = start.elapsed();
    for g in &mut guessers {
        assert_eq!(code_of(&g.recv().await), Some(ErrorCode::WrongPassword));
    }
    let all = start.elapsed();
    println!("50 password checks answered in {all:?} ({:?} each); a ping meanwhile in {pong:?}", all / 50);
    assert!(pong < all / 4, "the hub waited for the checks: ping {pong:?}, checks {all:?}");
    server.shutdown().await;
}

/// The `rec` claim: `false` keeps a host's token from recording, `true` lets a participant's
/// token record; neither lets anyone else do more (an anonymous participant may not, a
/// participant with `rec: true` may not delete).
#[tokio::test]
async fn a_tokens_rec_claim_forbids_or_allows_recording() {
    const SECRET: &[u8] = b"the operator's secret, 32 bytes or more";
    let dir = std::env::temp_dir().join(format!("huddle-rec-claim-{}", std::process::id()));
    let server = TestServer::start(Config {
        topology: huddle_server::config::TopologyMode::Sfu,
        token_secret: Some(String::from_utf8(SECRET.to_vec()).expect("utf-8")),
        recordings_dir: Some(dir.clone()),
        ffmpeg: Some("/nonexistent/ffmpeg".into()),
        ..Config::default()
    })
    .await;
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs() + 600;
    let no_rec = jwt(SECRET, serde_json::json!({"room": "r", "exp": exp, "role": "host", "rec": false}));
    let mut host = Client::connect(&server).await;
    host.send(&join_as("r", "H", None, Some(&no_rec))).await;
    assert!(matches!(host.recv().await, ServerMsg::Joined { .. }));
    host.send(&ClientMsg::Record).await;
    host.expect_error(ErrorCode::NotAllowed).await;

    let mut anonymous = connect_from(&server, "127.0.0.2").await;
    anonymous.join("r", "A").await;
    anonymous.send(&ClientMsg::Record).await;
    anonymous.expect_error(ErrorCode::NotAllowed).await;

    let rec = jwt(SECRET, serde_json::json!({"room": "r", "exp": exp, "role": "participant", "rec": true}));
    let mut recorder = connect_from(&server, "127.0.0.3").await;
    recorder.send(&join_as("r", "R", None, Some(&rec))).await;
    assert!(matches!(recorder.recv().await, ServerMsg::Joined { .. }));
    recorder.send(&ClientMsg::Record).await;
    let id = loop {
        match recorder.recv().await {
            ServerMsg::Recording { recording: Some(info), .. } => break info.id,
            ServerMsg::Error { code, .. } => panic!("refused: {code}"),
            _ => {}
        }
    };
    recorder.send(&ClientMsg::StopRecording).await;
    loop {
        if let ServerMsg::Recording { recording: None, .. } = recorder.recv().await {
            break;
        }
    }
    recorder.send(&ClientMsg::DeleteRecording { id }).await;
    loop {
        match recorder.recv().await {
            ServerMsg::Error { code, .. } => break assert_eq!(code, ErrorCode::NotAllowed),
            ServerMsg::Recordings { .. } => panic!("a participant got the recordings list"),
            _ => {}
        }
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
