//! The built-in STUN/TURN server, end to end: the credentials a page gets in `welcome` are
//! accepted by the TURN port; data is relayed over UDP and TCP to a real UDP peer; peers in
//! special-purpose ranges are refused; and coturn's own test client (`turnutils_uclient`, a TURN
//! client nobody here wrote) allocates and relays through huddle.

mod common;

use common::{Client, TestServer, WAIT};
use huddle_protocol::{IceServer, ServerMsg};
use huddle_server::Config;
use huddle_turn::auth::long_term_key;
use huddle_turn::stun::{self, attr, method, Builder, Class, Message};
use std::net::SocketAddr;
use std::process::Stdio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

/// The built-in TURN server's entry in `welcome`: its port, username and password.
async fn turn_from_welcome(server: &TestServer) -> (u16, String, String, IceServer) {
    let (ws, _) = tokio_tungstenite::connect_async(server.url()).await.expect("connect");
    let mut c = Client { ws, id: huddle_protocol::PeerId(String::new()) };
    let msg = c.recv().await;
    let ServerMsg::Welcome { ice_servers, .. } = msg else { panic!("expected welcome, got {msg:?}") };
    let turn = ice_servers
        .into_iter()
        .find(|s| s.urls.iter().any(|u| u.starts_with("turn:")))
        .expect("the built-in TURN server is announced");
    let url = turn.urls.iter().find(|u| u.starts_with("turn:") && u.ends_with("transport=udp")).expect("a UDP URL");
    let port: u16 = url
        .trim_start_matches("turn:127.0.0.1:")
        .trim_end_matches("?transport=udp")
        .parse()
        .unwrap_or_else(|_| panic!("a port in {url}"));
    (port, turn.username.clone().expect("username"), turn.credential.clone().expect("credential"), turn)
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
        panic!("still unauthorized with the credentials from welcome");
    }

    async fn allocate(&mut self) -> SocketAddr {
        let a = self.ask(method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])).await;
        let m = Message::parse(&a).unwrap();
        assert_eq!(m.class, Class::Success, "allocate refused with {:?}", m.error_code());
        assert!(m.check_integrity(&self.key));
        m.xor_address(attr::XOR_RELAYED_ADDRESS).expect("relayed address")
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
}

fn relaying_to_loopback() -> Config {
    Config { turn_allow_peers: vec!["127.0.0.1".parse().unwrap()], ..Config::default() }
}

/// Relays data both ways between `client` and a UDP peer on this machine.
async fn relay_round_trip(mut client: TurnClient, stream: bool) {
    let relay = client.allocate().await;
    assert!(relay.ip().is_loopback());
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();

    // Send indication → the peer; the peer's answer comes back as a Data indication.
    assert_eq!(client.permit(peer_addr).await, None);
    let ind = Builder::new(method::SEND, Class::Indication, [9; 12])
        .xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
        .attr(attr::DATA, b"over an indication")
        .finish();
    client.link.send(&ind).await;
    let mut buf = [0u8; 2048];
    let (n, from) = timeout(WAIT, peer.recv_from(&mut buf)).await.expect("relayed in time").unwrap();
    assert_eq!((&buf[..n], from), (&b"over an indication"[..], relay));
    peer.send_to(b"reply one", relay).await.unwrap();
    let data = client.link.recv().await;
    let m = Message::parse(&data).expect("a Data indication");
    assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
    assert_eq!(m.get(attr::DATA), Some(&b"reply one"[..]));
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Some(peer_addr));

    // A channel: ChannelData both ways, many packets.
    assert_eq!(client.bind(0x4000, peer_addr).await, None);
    let mut cd = Vec::new();
    for i in 0..50u32 {
        stun::write_channel_data(&mut cd, 0x4000, &i.to_be_bytes(), stream);
        client.link.send(&cd).await;
        let (n, _) = timeout(WAIT, peer.recv_from(&mut buf)).await.expect("relayed in time").unwrap();
        assert_eq!(&buf[..n], &i.to_be_bytes());
        peer.send_to(&(i + 1000).to_be_bytes(), relay).await.unwrap();
        let back = client.link.recv().await;
        assert_eq!(stun::parse_channel_data(&back), Some((0x4000, &(i + 1000).to_be_bytes()[..])));
        if stream {
            assert_eq!(back.len() % 4, 0, "padded on streams");
        }
    }
}

#[tokio::test]
async fn welcome_credentials_allocate_and_relay_over_udp() {
    let server = TestServer::start(relaying_to_loopback()).await;
    let (port, user, pass, _) = turn_from_welcome(&server).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(("127.0.0.1", port)).await.unwrap();
    relay_round_trip(TurnClient::new(Link::Udp(sock), &user, &pass), false).await;
    server.shutdown().await;
}

#[tokio::test]
async fn welcome_credentials_allocate_and_relay_over_tcp() {
    let server = TestServer::start(relaying_to_loopback()).await;
    let (port, user, pass, turn) = turn_from_welcome(&server).await;
    assert!(turn.urls.contains(&format!("turn:127.0.0.1:{port}?transport=tcp")), "{:?}", turn.urls);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    relay_round_trip(TurnClient::new(stream(tcp), &user, &pass), true).await;
    server.shutdown().await;
}

#[tokio::test]
async fn stun_binding_tells_the_mapped_address_and_credentials_are_needed() {
    let server = TestServer::default().await;
    let (port, user, _pass, _) = turn_from_welcome(&server).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(("127.0.0.1", port)).await.unwrap();
    let mut link = Link::Udp(sock);
    link.send(&Builder::new(method::BINDING, Class::Request, [1; 12]).finish()).await;
    let m = link.recv().await;
    let Link::Udp(sock) = &link else { unreachable!() };
    assert_eq!(Message::parse(&m).unwrap().xor_address(attr::XOR_MAPPED_ADDRESS), Some(sock.local_addr().unwrap()));
    // A wrong password never gets an allocation.
    let mut c = TurnClient::new(link, &user, "wrong password");
    let a = c.ask(method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])).await;
    assert_eq!(Message::parse(&a).unwrap().error_code(), Some(401));
    server.shutdown().await;
}

#[tokio::test]
async fn relaying_into_loopback_or_private_networks_is_refused_by_default() {
    let server = TestServer::default().await;
    let (port, user, pass, _) = turn_from_welcome(&server).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(("127.0.0.1", port)).await.unwrap();
    let mut c = TurnClient::new(Link::Udp(sock), &user, &pass);
    c.allocate().await;
    for peer in ["127.0.0.1:22", "127.0.0.1:8080", "10.0.0.1:80", "192.168.0.1:80", "169.254.169.254:80", "[::1]:80"] {
        let peer: SocketAddr = peer.parse().unwrap();
        let want = if peer.is_ipv6() { 443 } else { 403 };
        assert_eq!(c.permit(peer).await, Some(want), "{peer}");
        if peer.is_ipv4() {
            assert_eq!(c.bind(0x4001, peer).await, Some(403), "{peer}");
        }
    }
    // The SFU's own port is the exception (its address is loopback here).
    let sfu: SocketAddr = format!("127.0.0.1:{}", server.addr.port()).parse().unwrap();
    assert_eq!(c.permit(sfu).await, None, "huddle's own SFU is reachable through the relay");
    server.shutdown().await;
}

#[tokio::test]
async fn garbage_on_the_tcp_port_closes_that_connection_only() {
    let server = TestServer::start(relaying_to_loopback()).await;
    let (port, user, pass, _) = turn_from_welcome(&server).await;
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
    relay_round_trip(TurnClient::new(stream(tcp), &user, &pass), true).await;
    server.shutdown().await;
}

/// Runs one of coturn's test tools and returns what it printed; a missing tool is a failure
/// with the way to get it (`scripts/test` installs it).
async fn coturn_tool(tool: &str, args: &[String]) -> String {
    let child = tokio::process::Command::new(tool)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool} ({e}): install Debian's `coturn` package (scripts/test does)"));
    let out = timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{tool} did not finish in 60 s"))
        .expect("tool output");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
    text
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

#[tokio::test]
async fn coturn_uclient_allocates_and_relays_through_huddle() {
    let server = TestServer::start(relaying_to_loopback()).await;
    let (port, user, pass, _) = turn_from_welcome(&server).await;
    let base = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // -c: no RTCP allocation (it would ask for an even/odd port pair, RESERVATION-TOKEN,
        // which browsers never use and huddle does not offer).
        for s in [
            "-c",
            "-n",
            "40",
            "-m",
            "2",
            "-l",
            "160",
            "-z",
            "5",
            "-p",
            &port.to_string(),
            "-u",
            &user,
            "-w",
            &pass,
            "127.0.0.1",
        ] {
            a.push(s.to_string());
        }
        a
    };
    // Client to client through two relays (our own relays are reachable from each other) over
    // UDP with channels, over UDP with Send/Data indications, and over TCP.
    for (what, flags) in
        [("udp, channels", vec!["-y"]), ("udp, indications", vec!["-y", "-s"]), ("tcp", vec!["-y", "-t"])]
    {
        let out = coturn_tool("turnutils_uclient", &base(&flags)).await;
        let (sent, received) = uclient_totals(&out);
        assert_eq!(sent, 2 * 40, "{what}: two clients, 40 messages each\n{out}");
        assert_eq!(received, sent, "{what}: every message came back\n{out}");
        assert!(out.contains("Total lost packets 0 "), "{what}: {out}");
    }
    // To a peer outside huddle (coturn's echo peer), allowed here by --turn-allow-peer.
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
    let out = coturn_tool("turnutils_uclient", &base(&["-e", "127.0.0.1", "-r", &peer_port.to_string()])).await;
    let (sent, received) = uclient_totals(&out);
    assert!(sent == 2 * 40 && received == sent, "echo peer: {sent} sent, {received} back\n{out}");
    let _ = peer.kill().await;
    // coturn's STUN client gets its mapped address.
    let out = coturn_tool("turnutils_stunclient", &["-p".into(), port.to_string(), "127.0.0.1".into()]).await;
    assert!(out.contains("127.0.0.1"), "{out}");
    server.shutdown().await;
}

#[tokio::test]
async fn coturn_uclient_is_refused_a_loopback_peer_without_permission() {
    let server = TestServer::default().await;
    let (port, user, pass, _) = turn_from_welcome(&server).await;
    let args: Vec<String> = [
        "-c",
        "-n",
        "5",
        "-e",
        "127.0.0.1",
        "-r",
        "3480",
        "-p",
        &port.to_string(),
        "-u",
        &user,
        "-w",
        &pass,
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let child = tokio::process::Command::new("turnutils_uclient")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("turnutils_uclient (Debian's coturn package) runs");
    let out = timeout(std::time::Duration::from_secs(30), child.wait_with_output()).await.expect("in time").unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("403"), "uclient must be refused with 403 Forbidden:\n{text}");
    server.shutdown().await;
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
    let config = Config { tls: Tls::Files { cert, key }, ..relaying_to_loopback() };
    let setup = huddle_server::tls::setup(&config.tls, &[], None).expect("certificate files").expect("TLS on");
    let connector = common::tls::pinned(&setup.fingerprint);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(huddle_server::serve_with(config, listener, Some(setup), async move {
        let _ = stopped.await;
    }));

    // welcome over wss names a turns: URL (the page's host, the TLS port) with the credentials.
    let tls = common::tls::tls_to(addr, &connector).await.expect("TLS to the page's port");
    let (ws, _) = tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", addr.port()), tls).await.unwrap();
    let mut ws = ws;
    let first = timeout(WAIT, futures_util::StreamExt::next(&mut ws)).await.expect("welcome in time").unwrap().unwrap();
    let msg: ServerMsg = serde_json::from_str(first.to_text().unwrap()).unwrap();
    let ServerMsg::Welcome { ice_servers, .. } = msg else { panic!("expected welcome, got {msg:?}") };
    let turn = ice_servers.iter().find(|s| s.urls.iter().any(|u| u.starts_with("turns:"))).expect("a turns: URL");
    let url = turn.urls.iter().find(|u| u.starts_with("turns:")).unwrap();
    let port: u16 = url
        .trim_start_matches("turns:localhost:")
        .trim_end_matches("?transport=tcp")
        .parse()
        .unwrap_or_else(|_| panic!("turns:localhost:<port>?transport=tcp, not {url}"));
    assert_ne!(port, addr.port());

    // Allocate and relay over TLS to that port, trusting only that certificate.
    let tls = common::tls::tls_to(SocketAddr::from(([127, 0, 0, 1], port)), &connector).await.expect("TLS to TURN");
    let client = TurnClient::new(stream(tls), turn.username.as_deref().unwrap(), turn.credential.as_deref().unwrap());
    relay_round_trip(client, true).await;

    let _ = stop.send(());
    timeout(std::time::Duration::from_secs(10), server).await.expect("stops").expect("no panic").expect("Ok");
    let _ = std::fs::remove_dir_all(&dir);
}
