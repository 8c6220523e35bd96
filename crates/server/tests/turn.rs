//! The built-in STUN/TURN server, end to end, and the attacks on it. Relay credentials come
//! with `joined` only (never in `welcome`), are renewed while the session lives and die with it;
//! an old credential does not survive a restart into another session's quota; relay users and
//! allocations are capped per client address; the connectivity check's credential allocates but
//! relays nothing; and the relay reaches huddle's own relays and SFU port but nothing else on
//! this host, even where an allowed range covers it. Data is relayed over UDP, TCP and TLS
//! between two allocations (on one machine every other address is the host itself), and coturn's
//! own test clients (`turnutils_*`, TURN clients nobody here wrote) allocate and relay through
//! huddle too.

mod common;

use common::redis::TestRedis;
use common::{join, Client, TestServer, WAIT};
use huddle_protocol::{ClientMsg, IceServer, ModAction, PeerId, ServerMsg};
use huddle_server::Config;
use huddle_turn::auth::long_term_key;
use huddle_turn::stun::{self, attr, method, Builder, Class, Message};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// huddle's own TURN server among `servers` (the one with a `turn:` URL and credentials): its
/// port, username and password.
fn builtin_turn(servers: &[IceServer]) -> Option<(u16, String, String, IceServer)> {
    let turn = servers.iter().find(|s| s.urls.iter().any(|u| u.starts_with("turn:")) && s.username.is_some())?;
    let url = turn.urls.iter().find(|u| u.starts_with("turn:") && u.ends_with("?transport=udp"))?;
    let (_, port) = url.trim_end_matches("?transport=udp").rsplit_once(':')?;
    let port = port.parse().ok()?;
    Some((port, turn.username.clone()?, turn.credential.clone()?, turn.clone()))
}

/// A fresh room name, so that every participant of a test opens its own room.
fn room() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("turn-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Joins `room` and returns the relay credentials `joined` carried.
async fn join_for_turn(c: &mut Client, room: &str) -> (u16, String, String, IceServer) {
    let ServerMsg::Joined { ice_servers, .. } = c.join(room, "Relayed").await else { unreachable!() };
    builtin_turn(&ice_servers).unwrap_or_else(|| panic!("joined names huddle's TURN server: {ice_servers:?}"))
}

/// A participant alone in a room of its own, and its relay credentials (the session, and with it
/// the credentials, lives as long as the returned client).
async fn turn_from_joined(server: &TestServer) -> (Client, u16, String, String, IceServer) {
    let mut c = Client::connect(server).await;
    let (port, user, pass, turn) = join_for_turn(&mut c, &room()).await;
    (c, port, user, pass, turn)
}

/// The next protocol message as plain JSON (for messages this test pins by their wire form).
async fn next_json(c: &mut Client) -> serde_json::Value {
    loop {
        match c.next_frame().await.expect("connection open") {
            WsMessage::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            WsMessage::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// A UDP socket on `local` talking to the TURN port.
async fn udp_to(local: &str, port: u16) -> Link {
    let sock = UdpSocket::bind(format!("{local}:0")).await.unwrap();
    sock.connect(("127.0.0.1", port)).await.unwrap();
    Link::Udp(sock)
}

/// One side of a TURN client's transport: UDP datagrams or framed TCP.
enum Link {
    Udp(UdpSocket),
    /// TCP or TLS, with the bytes read but not yet framed.
    Stream(Box<dyn ByteStream>, Vec<u8>),
}

trait ByteStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ByteStream for T {}

fn stream(s: impl ByteStream + 'static) -> Link {
    Link::Stream(Box::new(s), Vec::new())
}

impl Link {
    async fn send(&mut self, data: &[u8]) {
        match self {
            Link::Udp(s) => {
                s.send(data).await.expect("send");
            }
            Link::Stream(s, _) => s.write_all(data).await.expect("write"),
        }
    }

    async fn recv(&mut self) -> Vec<u8> {
        match self {
            Link::Udp(s) => {
                let mut buf = vec![0u8; 2048];
                let n = timeout(WAIT, s.recv(&mut buf)).await.expect("an answer in time").expect("recv");
                buf.truncate(n);
                buf
            }
            Link::Stream(s, pending) => loop {
                if let Some(len) = stun::stream_frame_len(pending) {
                    if pending.len() >= len {
                        return pending.drain(..len).collect();
                    }
                }
                let mut chunk = [0u8; 2048];
                let n = timeout(WAIT, s.read(&mut chunk)).await.expect("an answer in time").expect("read");
                assert!(n > 0, "the server closed the TCP connection");
                pending.extend_from_slice(&chunk[..n]);
            },
        }
    }
}

/// A minimal TURN client: long-term credentials with the nonce dance, as a browser does it.
struct TurnClient {
    link: Link,
    username: String,
    key: [u8; 16],
    realm: Option<String>,
    nonce: Option<String>,
    n: u8,
}

impl TurnClient {
    fn new(link: Link, username: &str, password: &str) -> TurnClient {
        TurnClient {
            link,
            username: username.into(),
            key: long_term_key(username, "huddle", password),
            realm: None,
            nonce: None,
            n: 0,
        }
    }

    /// Sends a request (signed once the nonce is known) and returns the answer, retrying once
    /// after the first 401.
    async fn ask(&mut self, m: u16, add: impl Fn(Builder) -> Builder) -> Vec<u8> {
        for _ in 0..2 {
            self.n += 1;
            let tid = [self.n; 12];
            let mut b = add(Builder::new(m, Class::Request, tid));
            if let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
                b = b
                    .attr(attr::USERNAME, self.username.as_bytes())
                    .attr(attr::REALM, realm.as_bytes())
                    .attr(attr::NONCE, nonce.as_bytes())
                    .integrity(&self.key);
            }
            let req = b.fingerprint().finish();
            self.link.send(&req).await;
            let answer = self.link.recv().await;
            let msg = Message::parse(&answer).expect("a STUN answer");
            assert_eq!(msg.transaction, tid);
            if msg.error_code() == Some(401) && self.nonce.is_none() {
                self.realm = msg.text(attr::REALM).map(str::to_string);
                self.nonce = msg.text(attr::NONCE).map(str::to_string);
                continue;
            }
            return answer;
        }
        panic!("still unauthorized after the nonce");
    }

    /// Asks for a relay: its address, or the error code.
    async fn try_allocate(&mut self) -> Result<SocketAddr, u16> {
        let a = self.ask(method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])).await;
        let m = Message::parse(&a).unwrap();
        match m.error_code() {
            Some(code) => Err(code),
            None => {
                assert!(m.check_integrity(&self.key));
                Ok(m.xor_address(attr::XOR_RELAYED_ADDRESS).expect("relayed address"))
            }
        }
    }

    async fn allocate(&mut self) -> SocketAddr {
        self.try_allocate().await.unwrap_or_else(|code| panic!("allocate refused with {code}"))
    }

    /// Refreshes the allocation for `lifetime` seconds: `None` when granted, else the error code.
    async fn refresh(&mut self, lifetime: u32) -> Option<u16> {
        let a = self.ask(method::REFRESH, |b| b.u32_attr(attr::LIFETIME, lifetime)).await;
        Message::parse(&a).unwrap().error_code()
    }

    async fn permit(&mut self, peer: SocketAddr) -> Option<u16> {
        let a = self.ask(method::CREATE_PERMISSION, |b| b.xor_address(attr::XOR_PEER_ADDRESS, peer)).await;
        Message::parse(&a).unwrap().error_code()
    }

    async fn bind(&mut self, channel: u16, peer: SocketAddr) -> Option<u16> {
        let a = self
            .ask(method::CHANNEL_BIND, |b| {
                b.attr(attr::CHANNEL_NUMBER, &[(channel >> 8) as u8, channel as u8, 0, 0])
                    .xor_address(attr::XOR_PEER_ADDRESS, peer)
            })
            .await;
        Message::parse(&a).unwrap().error_code()
    }

    /// A Send indication: `data` to `peer` through the relay.
    async fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let ind = Builder::new(method::SEND, Class::Indication, [9; 12])
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, data)
            .finish();
        self.link.send(&ind).await;
    }

    /// The next Data indication: who sent it through the relay, and what.
    async fn data_indication(&mut self) -> (SocketAddr, Vec<u8>) {
        let data = self.link.recv().await;
        let m = Message::parse(&data).expect("a Data indication");
        assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
        (m.xor_address(attr::XOR_PEER_ADDRESS).expect("its peer"), m.get(attr::DATA).expect("its data").to_vec())
    }
}

/// Relays data both ways between `client` and `peer`, another TURN client (over UDP) whose relay
/// is the peer address: huddle's relays reach each other, and on one machine every other
/// address is the host itself, which the relay must not reach. Send indications first, then
/// ChannelData on channels both ends bound.
async fn relay_round_trip(mut client: TurnClient, mut peer: TurnClient, stream: bool) {
    let relay = client.allocate().await;
    let peer_relay = peer.allocate().await;
    assert!(relay.ip().is_loopback() && peer_relay.ip().is_loopback());
    assert_eq!(client.permit(peer_relay).await, None, "another allocation's relay is reachable");
    assert_eq!(peer.permit(relay).await, None);

    // Send indication → the peer's relay → a Data indication to the peer, and back.
    client.send_indication(peer_relay, b"over an indication").await;
    assert_eq!(peer.data_indication().await, (relay, b"over an indication".to_vec()));
    peer.send_indication(relay, b"reply one").await;
    assert_eq!(client.data_indication().await, (peer_relay, b"reply one".to_vec()));

    // Channels: ChannelData both ways, many packets.
    assert_eq!(client.bind(0x4000, peer_relay).await, None);
    assert_eq!(peer.bind(0x4001, relay).await, None);
    let mut cd = Vec::new();
    for i in 0..50u32 {
        stun::write_channel_data(&mut cd, 0x4000, &i.to_be_bytes(), stream);
        client.link.send(&cd).await;
        let there = peer.link.recv().await;
        assert_eq!(stun::parse_channel_data(&there), Some((0x4001, &i.to_be_bytes()[..])));
        stun::write_channel_data(&mut cd, 0x4001, &(i + 1000).to_be_bytes(), false);
        peer.link.send(&cd).await;
        let back = client.link.recv().await;
        assert_eq!(stun::parse_channel_data(&back), Some((0x4000, &(i + 1000).to_be_bytes()[..])));
        if stream {
            assert_eq!(back.len() % 4, 0, "padded on streams");
        }
    }
}

#[tokio::test]
async fn joined_credentials_allocate_and_relay_over_udp() {
    let server = TestServer::default().await;
    let (_c, port, user, pass, _) = turn_from_joined(&server).await;
    let client = TurnClient::new(udp_to("127.0.0.1", port).await, &user, &pass);
    let peer = TurnClient::new(udp_to("127.0.0.1", port).await, &user, &pass);
    relay_round_trip(client, peer, false).await;
    server.shutdown().await;
}

#[tokio::test]
async fn joined_credentials_allocate_and_relay_over_tcp() {
    let server = TestServer::default().await;
    let (_c, port, user, pass, turn) = turn_from_joined(&server).await;
    assert!(turn.urls.contains(&format!("turn:127.0.0.1:{port}?transport=tcp")), "{:?}", turn.urls);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let peer = TurnClient::new(udp_to("127.0.0.1", port).await, &user, &pass);
    relay_round_trip(TurnClient::new(stream(tcp), &user, &pass), peer, true).await;
    server.shutdown().await;
}

#[tokio::test]
async fn stun_binding_tells_the_mapped_address_and_credentials_are_needed() {
    let server = TestServer::default().await;
    let (_c, port, user, _pass, _) = turn_from_joined(&server).await;
    let mut link = udp_to("127.0.0.1", port).await;
    link.send(&Builder::new(method::BINDING, Class::Request, [1; 12]).finish()).await;
    let m = link.recv().await;
    let Link::Udp(sock) = &link else { unreachable!() };
    assert_eq!(Message::parse(&m).unwrap().xor_address(attr::XOR_MAPPED_ADDRESS), Some(sock.local_addr().unwrap()));
    // A wrong password never gets an allocation.
    let mut c = TurnClient::new(link, &user, "wrong password");
    assert_eq!(c.try_allocate().await, Err(401));
    server.shutdown().await;
}

/// Issue 15, item 6: the relay was open to anyone who opened the WebSocket.
#[tokio::test]
async fn welcome_hands_out_no_relay_credentials_even_without_a_token_requirement() {
    const SECRET: &str = "the operator's secret, 32 bytes or more";
    for config in
        [Config::default(), Config { token_secret: Some(SECRET.into()), require_token: true, ..Config::default() }]
    {
        let server = TestServer::start(config).await;
        let (ws, _) = tokio_tungstenite::connect_async(server.url()).await.expect("connect");
        let mut c = Client { ws, id: PeerId(String::new()) };
        let ServerMsg::Welcome { ice_servers, .. } = c.recv().await else { panic!("welcome first") };
        assert!(
            ice_servers.iter().all(|s| s.username.is_none() && s.credential.is_none()),
            "welcome must carry no relay credentials: {ice_servers:?}"
        );
        server.shutdown().await;
    }
}

/// Issue 15, item 6: a credential outlived its holder's place in the room (by a day). It dies
/// with the session's place: removed, banned, left or gone — its relays close at once.
#[tokio::test]
async fn a_relay_credential_dies_with_its_place_in_the_room() {
    let server = TestServer::start(Config { resume_grace: Duration::ZERO, ..Config::default() }).await;
    let r = room();
    let mut host = Client::connect(&server).await;
    let (port, host_user, host_pass, _) = join_for_turn(&mut host, &r).await;
    let mut host_turn = TurnClient::new(udp_to("127.0.0.1", port).await, &host_user, &host_pass);
    host_turn.allocate().await;
    // A ban also bans the address (everyone here is 127.0.0.1): last.
    for how in ["leave", "disconnect", "ban"] {
        let mut guest = Client::connect(&server).await;
        let (_, user, pass, _) = join_for_turn(&mut guest, &r).await;
        assert!(matches!(host.recv().await, ServerMsg::PeerJoined { .. }));
        let mut relayed = TurnClient::new(udp_to("127.0.0.1", port).await, &user, &pass);
        let relay = relayed.allocate().await;
        assert_eq!(host_turn.permit(relay).await, None, "{how}: the guest's relay is reachable while it is in");
        match how {
            "ban" => {
                host.send(&ClientMsg::Moderate { peer: guest.id.clone(), action: ModAction::Ban }).await;
                assert!(matches!(guest.recv().await, ServerMsg::Removed { ban: true, .. }));
            }
            "leave" => {
                guest.send(&ClientMsg::Leave).await;
                assert!(matches!(guest.recv().await, ServerMsg::Left { .. }));
            }
            _ => drop(guest),
        }
        assert!(matches!(host.recv().await, ServerMsg::PeerLeft { .. }));
        // The hub tells the TURN task before it tells the room, and the TURN task takes its
        // commands before its sockets: by now the guest's relay is closed.
        assert_eq!(host_turn.permit(relay).await, Some(403), "{how}: the guest's relay is closed");
        assert_eq!(relayed.refresh(600).await, Some(401), "{how}: its allocation is refused a refresh");
        let mut again = TurnClient::new(udp_to("127.0.0.1", port).await, &user, &pass);
        assert_eq!(again.try_allocate().await, Err(401), "{how}: the credential is dead");
    }
    server.shutdown().await;
}

/// Issue 15, item 6: credentials are short-lived and renewed (`ice_servers`) while the session
/// lives; a relay made with one that expired since keeps working (browsers refresh with the
/// credential they allocated with); an expired one makes no new relay.
#[tokio::test]
async fn credentials_are_renewed_and_an_allocation_outlives_the_one_it_was_made_with() {
    let server = TestServer::start(Config { turn_credential_ttl: Duration::from_secs(2), ..Config::default() }).await;
    let (mut c, port, user, pass, _) = turn_from_joined(&server).await;
    let mut first = TurnClient::new(udp_to("127.0.0.1", port).await, &user, &pass);
    first.allocate().await;
    // Renewed every half TTL; after three renewals (3 s) the first credential has expired.
    let mut latest = None;
    for _ in 0..3 {
        let m = next_json(&mut c).await;
        assert_eq!(m["type"], "ice_servers", "{m}");
        let servers: Vec<IceServer> = serde_json::from_value(m["iceServers"].clone()).expect("RTCIceServer list");
        let (p, u, pw, _) = builtin_turn(&servers).expect("huddle's TURN server");
        assert_eq!(p, port);
        assert_eq!(u.split_once(':').map(|x| x.1), user.split_once(':').map(|x| x.1), "the same relay user");
        latest = Some((u, pw));
    }
    let (u, pw) = latest.expect("renewed");
    assert_ne!(u, user, "a later expiry");
    assert_eq!(first.refresh(600).await, None, "the relay in use lives on");
    let mut late = TurnClient::new(udp_to("127.0.0.1", port).await, &user, &pass);
    assert_eq!(late.try_allocate().await, Err(401), "an expired credential makes no new relay");
    let mut fresh = TurnClient::new(udp_to("127.0.0.1", port).await, &u, &pw);
    fresh.allocate().await;
    server.shutdown().await;
}

/// Issue 15, item 6: the connectivity check gets a credential of its own on request: it
/// allocates (that is the test) but relays nothing, and with `--require-token` only for a token.
#[tokio::test]
async fn the_check_credential_allocates_but_relays_nothing() {
    let server = TestServer::default().await;
    let (_member, port, user, pass, _) = turn_from_joined(&server).await;
    let mut member = TurnClient::new(udp_to("127.0.0.1", port).await, &user, &pass);
    let member_relay = member.allocate().await;
    let mut c = Client::connect(&server).await;
    c.send_raw(WsMessage::text(r#"{"type":"relay_check"}"#)).await;
    let m = next_json(&mut c).await;
    assert_eq!(m["type"], "check_ice_servers", "{m}");
    let servers: Vec<IceServer> = serde_json::from_value(m["iceServers"].clone()).expect("RTCIceServer list");
    let (p, cu, cp, _) = builtin_turn(&servers).expect("huddle's TURN server with a check credential");
    assert_eq!(p, port);
    let mut check = TurnClient::new(udp_to("127.0.0.1", port).await, &cu, &cp);
    check.allocate().await;
    let sfu: SocketAddr = format!("127.0.0.1:{}", server.addr.port()).parse().unwrap();
    assert_eq!(check.permit(member_relay).await, Some(403), "no relaying, not even to our own relays");
    assert_eq!(check.permit(sfu).await, Some(403), "nor to the SFU");
    assert_eq!(check.bind(0x4000, member_relay).await, Some(403));
    server.shutdown().await;

    const SECRET: &[u8] = b"the operator's secret, 32 bytes or more";
    let config = Config {
        token_secret: Some(String::from_utf8(SECRET.to_vec()).unwrap()),
        require_token: true,
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let mut c = Client::connect(&server).await;
    c.send_raw(WsMessage::text(r#"{"type":"relay_check"}"#)).await;
    let m = next_json(&mut c).await;
    assert_eq!(
        (&m["type"], &m["code"], &m["request"]),
        (&"error".into(), &"token_required".into(), &"relay_check".into())
    );
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let token = hs256(SECRET, &serde_json::json!({"room": "r", "exp": exp}));
    c.send_raw(WsMessage::text(serde_json::json!({"type": "relay_check", "room": "r", "token": token}).to_string()))
        .await;
    let m = next_json(&mut c).await;
    assert_eq!(m["type"], "check_ice_servers", "a token holder may check: {m}");
    server.shutdown().await;
}

/// An HS256 JWT over `claims`, as an operator's service would sign it.
fn hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    let signed = format!("{}.{}", B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#), B64.encode(claims.to_string()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    format!("{signed}.{}", B64.encode(aws_lc_rs::hmac::sign(&key, signed.as_bytes()).as_ref()))
}

/// Issue 15, item 6: relay users and allocations are capped per client address.
#[tokio::test]
async fn relay_users_and_allocations_are_capped_per_address() {
    let server = TestServer::start(Config { turn_ip_users: 2, turn_ip_allocations: 3, ..Config::default() }).await;
    let mut sessions = Vec::new();
    let mut creds = Vec::new();
    for _ in 0..3 {
        let (c, port, user, pass, _) = turn_from_joined(&server).await;
        sessions.push(c);
        creds.push((port, user, pass));
    }
    let port = creds[0].0;
    let client = |local: &'static str, i: usize| {
        let (user, pass) = (creds[i].1.clone(), creds[i].2.clone());
        async move { TurnClient::new(udp_to(local, port).await, &user, &pass) }
    };
    // Users: two from 127.0.0.5, the third refused there and welcome from another address.
    client("127.0.0.5", 0).await.allocate().await;
    client("127.0.0.5", 1).await.allocate().await;
    assert_eq!(client("127.0.0.5", 2).await.try_allocate().await, Err(486), "a third user from one address");
    client("127.0.0.6", 2).await.allocate().await;
    // Allocations: the first user's third from 127.0.0.5 fills the address's three.
    client("127.0.0.5", 0).await.allocate().await;
    assert_eq!(client("127.0.0.5", 0).await.try_allocate().await, Err(486), "a fourth allocation from one address");
    client("127.0.0.7", 0).await.allocate().await;
    server.shutdown().await;
}

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("huddle-turn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Issue 15, item 7: peer ids started again at `p1` after a restart while the TURN key
/// survived, and quotas counted by the id in the username: a credential of the old `p1` filled
/// the new `p1`'s quota (486). Credentials of sessions the restart did not keep are dead.
#[tokio::test]
async fn an_old_credential_after_a_restart_neither_relays_nor_eats_a_new_quota() {
    let dir = data_dir("quota");
    let config = || Config { data_dir: Some(dir.clone()), turn_user_quota: 2, ..Config::default() };
    let server = TestServer::start(config()).await;
    let addr = server.addr;
    let (mut old, _, old_user, old_pass, _) = turn_from_joined(&server).await;
    old.send(&ClientMsg::Leave).await;
    assert!(matches!(old.recv().await, ServerMsg::Left { .. }));
    server.shutdown().await;

    let server = TestServer::start_on(config(), addr).await;
    let mut fresh = Client::connect(&server).await;
    let (port, user, pass, _) = join_for_turn(&mut fresh, &room()).await;
    // Someone who kept the old credential tries to fill the quota first.
    let mut stale = Vec::new();
    for _ in 0..2 {
        stale.push(TurnClient::new(udp_to("127.0.0.1", port).await, &old_user, &old_pass).try_allocate().await);
    }
    let mut new = TurnClient::new(udp_to("127.0.0.1", port).await, &user, &pass);
    assert_eq!(new.try_allocate().await.err(), None, "the new session's relay ({user} after {old_user})");
    assert_eq!(stale, [Err(401), Err(401)], "the old credential is dead after the restart");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 15, item 8: on a host whose own address is public (simulated by allowing loopback and
/// a documentation range), the relay answered from huddle's own TURN port and reached any UDP
/// service on 0.0.0.0. Every address of the host is refused, except exactly the relays and the
/// SFU's port.
#[tokio::test]
async fn the_relay_reaches_nothing_on_this_host_but_the_relays_and_the_sfu() {
    let public: std::net::IpAddr = "198.51.100.7".parse().unwrap();
    let config = Config {
        turn_allow_peers: vec!["127.0.0.0/8".parse().unwrap(), "198.51.100.0/24".parse().unwrap()],
        media_public_ips: vec![public],
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let (_c, port, user, pass, _) = turn_from_joined(&server).await;
    let mut c = TurnClient::new(udp_to("127.0.0.1", port).await, &user, &pass);
    c.allocate().await;
    let service = UdpSocket::bind("0.0.0.0:0").await.unwrap();
    let service = service.local_addr().unwrap().port();
    for peer in [
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{service}"),
        format!("127.0.0.2:{service}"),
        format!("127.9.9.9:{port}"),
        format!("198.51.100.7:{service}"),
        format!("198.51.100.7:{port}"),
        "0.0.0.0:9".to_string(),
    ] {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(c.permit(peer).await, Some(403), "{peer} is this host");
        assert_eq!(c.bind(0x4000, peer).await, Some(403), "{peer} is this host");
    }
    // What the operator allowed that is not this host stays allowed.
    assert_eq!(c.permit("198.51.100.8:9".parse().unwrap()).await, None);
    // The exceptions: huddle's own relays (relay to relay) and the SFU's port.
    let mut other = TurnClient::new(udp_to("127.0.0.1", port).await, &user, &pass);
    let other_relay = other.allocate().await;
    assert_eq!(c.permit(other_relay).await, None, "another relay");
    let sfu: SocketAddr = format!("127.0.0.1:{}", server.addr.port()).parse().unwrap();
    assert_eq!(c.permit(sfu).await, None, "the SFU");
    server.shutdown().await;
}

#[tokio::test]
async fn garbage_on_the_tcp_port_closes_that_connection_only() {
    let server = TestServer::default().await;
    let (_c, port, user, pass, _) = turn_from_joined(&server).await;
    let mut junk = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = timeout(WAIT, junk.read(&mut buf)).await.expect("closed in time").unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let mut big = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // A ChannelData header announcing 65535 bytes: over the frame limit.
    big.write_all(&[0x40, 0x00, 0xff, 0xff]).await.unwrap();
    let n = timeout(WAIT, big.read(&mut buf)).await.expect("closed in time").unwrap_or(0);
    assert_eq!(n, 0);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let peer = TurnClient::new(udp_to("127.0.0.1", port).await, &user, &pass);
    relay_round_trip(TurnClient::new(stream(tcp), &user, &pass), peer, true).await;
    server.shutdown().await;
}

/// Runs one of coturn's test tools and returns what it printed; a missing tool is a failure
/// with the way to get it (`scripts/test` installs it).
async fn coturn_tool(tool: &str, args: &[String]) -> String {
    let out = coturn_run(tool, args).await;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

async fn coturn_run(tool: &str, args: &[String]) -> std::process::Output {
    let child = tokio::process::Command::new(tool)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool} ({e}): install Debian's `coturn` package (scripts/test does)"));
    timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{tool} did not finish in 60 s"))
        .expect("tool output")
}

/// `tot_send_msgs=N, tot_recv_msgs=M` from uclient's last summary line.
fn uclient_totals(out: &str) -> (u64, u64) {
    let line = out.lines().rev().find(|l| l.contains("tot_send_msgs=") && !l.contains("msz=")).expect("a summary");
    let num = |key: &str| -> u64 {
        let rest = &line[line.find(key).expect(key) + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    (num("tot_send_msgs="), num("tot_recv_msgs="))
}

/// `turnutils_uclient` arguments: `extra`, then a short run against huddle's TURN port.
fn uclient_args(port: u16, user: &str, pass: &str, extra: &[&str]) -> Vec<String> {
    let port = port.to_string();
    // -c: no RTCP allocation (it would ask for an even/odd port pair, RESERVATION-TOKEN, which
    // browsers never use and huddle does not offer).
    let base = ["-c", "-n", "40", "-m", "2", "-l", "160", "-z", "5", "-p", &port, "-u", user, "-w", pass, "127.0.0.1"];
    extra.iter().chain(base.iter()).map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn coturn_uclient_allocates_and_relays_through_huddle() {
    let server = TestServer::default().await;
    let (_c, port, user, pass, _) = turn_from_joined(&server).await;
    // Client to client through two relays (our own relays are reachable from each other) over
    // UDP with channels, over UDP with Send/Data indications, and over TCP.
    for (what, flags) in
        [("udp, channels", vec!["-y"]), ("udp, indications", vec!["-y", "-s"]), ("tcp", vec!["-y", "-t"])]
    {
        let out = coturn_tool("turnutils_uclient", &uclient_args(port, &user, &pass, &flags)).await;
        let (sent, received) = uclient_totals(&out);
        assert_eq!(sent, 2 * 40, "{what}: two clients, 40 messages each\n{out}");
        assert_eq!(received, sent, "{what}: every message came back\n{out}");
        assert!(out.contains("Total lost packets 0 "), "{what}: {out}");
    }
    // coturn's STUN client gets its mapped address.
    let out = coturn_tool("turnutils_stunclient", &["-p".into(), port.to_string(), "127.0.0.1".into()]).await;
    assert!(out.contains("127.0.0.1"), "{out}");
    server.shutdown().await;
}

/// coturn's client against a real echo peer (`turnutils_peer`) on this host: refused with 403
/// by default, and still refused where the operator allowed the range (issue 15, item 8: the
/// host's own addresses are never a relay's peer).
#[tokio::test]
async fn coturn_uclient_is_refused_a_peer_on_this_host() {
    let peer_port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let mut peer = tokio::process::Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("turnutils_peer (Debian's coturn package) runs");
    let allowed = Config { turn_allow_peers: vec!["127.0.0.1".parse().unwrap()], ..Config::default() };
    for (what, config) in [("by default", Config::default()), ("with 127.0.0.1 allowed", allowed)] {
        let server = TestServer::start(config).await;
        let (_c, port, user, pass, _) = turn_from_joined(&server).await;
        let args = uclient_args(port, &user, &pass, &["-e", "127.0.0.1", "-r", &peer_port.to_string()]);
        let out = coturn_run("turnutils_uclient", &args).await;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("403"), "{what}: uclient must be refused with 403 Forbidden:\n{text}");
        server.shutdown().await;
    }
    let _ = peer.kill().await;
}

#[tokio::test]
async fn with_a_real_certificate_turn_also_runs_over_tls() {
    use huddle_server::config::Tls;
    let dir = std::env::temp_dir().join(format!("huddle-turn-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let config = Config { tls: Tls::Files { cert, key }, ..Config::default() };
    let setup = huddle_server::tls::setup(&config.tls, &[], None).expect("certificate files").expect("TLS on");
    let connector = common::tls::pinned(&setup.fingerprint);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(huddle_server::serve_with(config, listener, Some(setup), async move {
        let _ = stopped.await;
    }));

    // joined over wss names a turns: URL (the page's host, the TLS port) with the credentials.
    let tls = common::tls::tls_to(addr, &connector).await.expect("TLS to the page's port");
    let (ws, _) = tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", addr.port()), tls).await.unwrap();
    let mut ws = ws;
    // The server's first ping may come before `welcome`, or between it and `joined`.
    let msg = next_text(&mut ws).await;
    assert!(matches!(msg, ServerMsg::Welcome { .. }), "{msg:?}");
    let text = serde_json::to_string(&join(&room(), "Secure")).unwrap();
    futures_util::SinkExt::send(&mut ws, WsMessage::text(text)).await.unwrap();
    let msg = next_text(&mut ws).await;
    let ServerMsg::Joined { ice_servers, .. } = msg else { panic!("expected joined, got {msg:?}") };
    let (udp_port, user, pass, turn) = builtin_turn(&ice_servers).expect("huddle's TURN server");
    let url = turn.urls.iter().find(|u| u.starts_with("turns:")).expect("a turns: URL");
    let port: u16 = url
        .trim_start_matches("turns:localhost:")
        .trim_end_matches("?transport=tcp")
        .parse()
        .unwrap_or_else(|_| panic!("turns:localhost:<port>?transport=tcp, not {url}"));
    assert_ne!(port, addr.port());

    // Allocate and relay over TLS to that port, trusting only that certificate.
    let tls = common::tls::tls_to(SocketAddr::from(([127, 0, 0, 1], port)), &connector).await.expect("TLS to TURN");
    let peer = TurnClient::new(udp_to("127.0.0.1", udp_port).await, &user, &pass);
    relay_round_trip(TurnClient::new(stream(tls), &user, &pass), peer, true).await;

    let _ = stop.send(());
    timeout(Duration::from_secs(10), server).await.expect("stops").expect("no panic").expect("Ok");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The next text frame as a server message, skipping pings.
async fn next_text<S, E>(ws: &mut S) -> ServerMsg
where
    S: futures_util::Stream<Item = Result<WsMessage, E>> + Unpin,
    E: std::fmt::Debug,
{
    loop {
        let frame =
            timeout(WAIT, futures_util::StreamExt::next(ws)).await.expect("a message in time").unwrap().unwrap();
        if let WsMessage::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Issue 16: in a cluster, a page's relay credential works on every node's TURN server (each
/// node's grants reach the others through Redis; the TURN secret is the cluster's), and dies on
/// all of them when its session leaves the room.
#[tokio::test]
async fn in_a_cluster_a_relay_credential_works_on_every_nodes_turn_server() {
    let redis = TestRedis::start();
    let config = || Config {
        redis: Some(redis.url.clone()),
        resume_grace: Duration::ZERO,
        ip_joins_per_minute: 0,
        ..Config::default()
    };
    let (a, b) = (TestServer::start(config()).await, TestServer::start(config()).await);
    let mut alice = Client::connect(&a).await;
    let (a_port, user, pass, _) = join_for_turn(&mut alice, &room()).await;
    let (_bob, b_port, bob_user, bob_pass, _) = turn_from_joined(&b).await;
    assert_ne!(a_port, b_port, "two TURN servers");
    // Alice's credential names node A's TURN server; node B's takes it too, once A's grant has
    // reached it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (mut elsewhere, relay) = loop {
        let mut c = TurnClient::new(udp_to("127.0.0.1", b_port).await, &user, &pass);
        match c.try_allocate().await {
            Ok(relay) => break (c, relay),
            Err(code) => {
                assert!(tokio::time::Instant::now() < deadline, "node B's TURN server still refuses ({code})");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut witness = TurnClient::new(udp_to("127.0.0.1", b_port).await, &bob_user, &bob_pass);
    witness.allocate().await;
    assert_eq!(witness.permit(relay).await, None, "Alice's relay on node B is reachable");
    // Alice leaves: node A revokes her relay user, and so does node B.
    alice.send(&ClientMsg::Leave).await;
    assert!(matches!(alice.recv().await, ServerMsg::Left { .. }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while witness.permit(relay).await != Some(403) {
        assert!(tokio::time::Instant::now() < deadline, "Alice's relay on node B outlived her place in the room");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(elsewhere.refresh(600).await, Some(401), "her allocation on node B is refused a refresh");
}
