//! The SFU through the real server: WebSocket signalling to the reserved peer `sfu`, media over
//! real UDP on loopback — or ICE over TCP to the HTTP port — and str0m clients standing in for
//! browsers.

mod common;

use common::{join, Client, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use huddle_protocol::{
    ClientMsg, ErrorCode, PeerId, SdpType, ServerMsg, SessionDescription, SignalPayload, Topology, SFU_PEER_ID,
};
use huddle_server::config::TopologyMode;
use huddle_server::ice_tcp::{frame_into, Deframer, MAX_FRAME};
use huddle_server::Config;
use huddle_sfu::str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use huddle_sfu::str0m::format::Codec;
use huddle_sfu::str0m::media::{Direction, MediaKind, Mid};
use huddle_sfu::str0m::net::{Protocol, Receive};
use huddle_sfu::str0m::{Candidate, Event as RtcEvent, Input as RtcInput, Output as RtcOutput, Rtc};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// The audio level every participant's audio carries (-dBov).
const AUDIO_LEVEL: i8 = -25;
/// How long media may take to show up everywhere (ICE, DTLS, renegotiation, first keyframe).
const MEDIA_WAIT: Duration = Duration::from_secs(15);

fn sfu_config(topology: TopologyMode) -> Config {
    Config { topology, ..Config::default() }
}

fn sfu() -> PeerId {
    PeerId(SFU_PEER_ID.to_string())
}

fn description(kind: SdpType, sdp: String) -> SignalPayload {
    SignalPayload::Description { description: SessionDescription { kind, sdp } }
}

/// "`receiver` got `kind` media carrying `sender`'s tag".
type Sighting = (u8, u8, MediaKind);

/// How a participant's packets travel: UDP, or ICE over TCP only (a browser whose UDP is
/// blocked), on one connection to the server's HTTP port, framed as RFC 4571 says.
enum Link {
    Udp(UdpSocket),
    Tcp { rd: OwnedReadHalf, wr: OwnedWriteHalf, server: SocketAddr, deframer: Deframer, buf: Vec<u8> },
}

impl Link {
    async fn udp() -> Link {
        Link::Udp(UdpSocket::bind("127.0.0.1:0").await.expect("bind a client UDP port"))
    }

    /// A TCP connection to the server's port (the HTTP port: ICE-TCP shares it).
    async fn tcp(server: SocketAddr) -> Link {
        let stream = TcpStream::connect(server).await.expect("connect over TCP");
        stream.set_nodelay(true).expect("nodelay");
        let (rd, wr) = stream.into_split();
        Link::Tcp { rd, wr, server, deframer: Deframer::new(MAX_FRAME), buf: vec![0; 4096] }
    }

    fn local(&self) -> SocketAddr {
        match self {
            Link::Udp(s) => s.local_addr(),
            Link::Tcp { wr, .. } => wr.local_addr(),
        }
        .expect("bound address")
    }

    /// The client's only candidate.
    fn candidate(&self) -> Candidate {
        let proto = if matches!(self, Link::Udp(_)) { Protocol::Udp } else { Protocol::Tcp };
        Candidate::host(self.local(), proto).expect("host candidate")
    }

    async fn send(&mut self, proto: Protocol, to: SocketAddr, bytes: &[u8]) {
        match self {
            Link::Udp(s) => {
                assert_eq!(proto, Protocol::Udp);
                let _ = s.send_to(bytes, to).await;
            }
            Link::Tcp { wr, server, .. } => {
                assert_eq!((proto, to), (Protocol::Tcp, *server), "a TCP-only client sends only on its connection");
                let mut frame = Vec::new();
                assert!(frame_into(&mut frame, bytes));
                wr.write_all(&frame).await.expect("write a frame");
            }
        }
    }

    /// The next packet and where it came from (cancel-safe: partial frames stay in the deframer).
    async fn recv(&mut self, buf: &mut [u8]) -> (Protocol, usize, SocketAddr) {
        match self {
            Link::Udp(s) => {
                let (n, from) = s.recv_from(buf).await.expect("UDP receive");
                (Protocol::Udp, n, from)
            }
            Link::Tcp { rd, server, deframer, buf: chunk, .. } => loop {
                if let Some(packet) = deframer.next_frame().expect("the server sends valid frames") {
                    buf[..packet.len()].copy_from_slice(packet);
                    return (Protocol::Tcp, packet.len(), *server);
                }
                let n = rd.read(chunk).await.expect("TCP receive");
                assert!(n > 0, "the server closed the ICE-TCP connection");
                deframer.push(&chunk[..n]);
            },
        }
    }
}

/// Audio frames each (receiver tag, sender tag) has received so far, over every test of this file
/// (tests that read it use tags of their own).
static HEARD: std::sync::Mutex<std::collections::BTreeMap<(u8, u8), u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn heard(receiver: u8, sender: u8) -> u64 {
    HEARD.lock().expect("not poisoned").get(&(receiver, sender)).copied().unwrap_or(0)
}

/// The same for video frames.
static SAW: std::sync::Mutex<std::collections::BTreeMap<(u8, u8), u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn saw(receiver: u8, sender: u8) -> u64 {
    SAW.lock().expect("not poisoned").get(&(receiver, sender)).copied().unwrap_or(0)
}

/// A str0m participant: joins over the WebSocket, offers to the SFU, answers its offers, sends
/// an audio (with an audio level) and a video frame every 20 ms whose last byte is its `tag`,
/// and reports every (sender tag, kind) it receives once.
async fn media_participant(
    ws: Client,
    room: &str,
    tag: u8,
    link: Link,
    sightings: mpsc::UnboundedSender<Sighting>,
    stop: watch::Receiver<bool>,
) -> Client {
    let (_, nothing) = mpsc::unbounded_channel();
    saying_participant(ws, room, tag, link, sightings, stop, nothing).await
}

/// [`media_participant`], which also sends what comes on `say` over its WebSocket (what is
/// there when it has joined, before its offer), whatever it actually sends as media.
async fn saying_participant(
    mut ws: Client,
    room: &str,
    tag: u8,
    mut link: Link,
    sightings: mpsc::UnboundedSender<Sighting>,
    mut stop: watch::Receiver<bool>,
    mut say: mpsc::UnboundedReceiver<ClientMsg>,
) -> Client {
    match ws.join(room, &format!("bot {tag}")).await {
        ServerMsg::Joined { topology: Topology::Sfu, .. } => {}
        other => panic!("expected an sfu room, got {other:?}"),
    }
    while let Ok(msg) = say.try_recv() {
        ws.send(&msg).await;
    }
    let local = link.local();
    let start = Instant::now();
    let mut rtc = Rtc::builder().build(start);
    rtc.add_local_candidate(link.candidate());
    let mut change = rtc.sdp_api();
    let sending: Vec<(Mid, MediaKind)> = [MediaKind::Audio, MediaKind::Video]
        .into_iter()
        .map(|k| (change.add_media(k, Direction::SendOnly, None, None, None), k))
        .collect();
    let (offer, pending) = change.apply().expect("an offer with two m-lines");
    let mut pending: Option<SdpPendingOffer> = Some(pending);
    ws.send(&ClientMsg::Signal { to: sfu(), payload: description(SdpType::Offer, offer.to_sdp_string()) }).await;

    let mut connected = false;
    let mut seen: HashSet<(u8, MediaKind)> = HashSet::new();
    let mut incoming: HashMap<Mid, MediaKind> = HashMap::new();
    let mut next_timeout;
    let mut next_frame = start;
    let mut frames = 0u64;
    let mut buf = vec![0u8; 2048];
    loop {
        // Drain str0m after every input (its drain rule).
        loop {
            match rtc.poll_output().expect("client poll_output") {
                RtcOutput::Timeout(t) => {
                    next_timeout = t;
                    break;
                }
                RtcOutput::Transmit(t) => link.send(t.proto, t.destination, &t.contents).await,
                RtcOutput::Event(RtcEvent::Connected) => connected = true,
                RtcOutput::Event(RtcEvent::MediaAdded(m)) => {
                    incoming.insert(m.mid, m.kind);
                }
                RtcOutput::Event(RtcEvent::MediaData(d)) => {
                    let kind = incoming.get(&d.mid).copied().unwrap_or(MediaKind::Audio);
                    // Audio counts only with the publisher's audio level passed on (browsers
                    // read it for the speaking indicator).
                    let level_ok = kind != MediaKind::Audio || d.ext_vals.audio_level == Some(AUDIO_LEVEL);
                    if let Some(&from) = d.data.last().filter(|_| level_ok) {
                        let count = if kind == MediaKind::Audio { &HEARD } else { &SAW };
                        *count.lock().expect("not poisoned").entry((tag, from)).or_default() += 1;
                        if from != tag && seen.insert((from, kind)) {
                            let _ = sightings.send((tag, from, kind));
                        }
                    }
                }
                RtcOutput::Event(_) => {}
            }
        }
        let wake = next_timeout.min(next_frame).max(Instant::now());
        tokio::select! {
            _ = stop.changed() => return ws,
            // (Once `say` is closed this branch is off for each turn.)
            Some(msg) = say.recv() => ws.send(&msg).await,
            frame = ws.ws.next() => {
                let Some(Ok(frame)) = frame else { panic!("bot {tag}: signalling closed") };
                let text = match frame {
                    Message::Text(t) => t,
                    Message::Ping(_) => { ws.ws.flush().await.expect("pong"); continue }
                    _ => continue,
                };
                let msg: ServerMsg = serde_json::from_str(&text).expect("server JSON");
                match msg {
                    ServerMsg::Signal { from, payload: SignalPayload::Description { description: desc } } => {
                        assert_eq!(from, sfu(), "bot {tag}: only the SFU signals in an sfu room");
                        match desc.kind {
                            SdpType::Answer => {
                                let answer = SdpAnswer::from_sdp_string(&desc.sdp).expect("SFU answer parses");
                                let pending = pending.take().expect("an offer was outstanding");
                                rtc.sdp_api().accept_answer(pending, answer).expect("client accepts the answer");
                            }
                            SdpType::Offer => {
                                let offer = SdpOffer::from_sdp_string(&desc.sdp).expect("SFU offer parses");
                                let answer = rtc.sdp_api().accept_offer(offer).expect("client accepts the offer");
                                let payload = description(SdpType::Answer, answer.to_sdp_string());
                                let reply = ClientMsg::Signal { to: sfu(), payload };
                                ws.send(&reply).await;
                            }
                            other => panic!("bot {tag}: unexpected {other:?} from the SFU"),
                        }
                    }
                    ServerMsg::Error { code, .. } => panic!("bot {tag}: server error {code}"),
                    _ => {}
                }
            }
            (proto, n, source) = link.recv(&mut buf) => {
                let contents = buf[..n].try_into().expect("the SFU sends only WebRTC datagrams");
                let receive = Receive { proto, source, destination: local, contents };
                rtc.handle_input(RtcInput::Receive(Instant::now(), receive)).expect("client takes the datagram");
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                rtc.handle_input(RtcInput::Timeout(now)).expect("client timeout");
                if connected && now >= next_frame {
                    next_frame = now + FRAME_INTERVAL;
                    frames += 1;
                    for (mid, kind) in &sending {
                        let codec = if *kind == MediaKind::Audio { Codec::Opus } else { Codec::Vp8 };
                        let Some(pt) = rtc.codec_config().find(|p| p.spec().codec == codec).map(|p| p.pt()) else {
                            continue;
                        };
                        let data = frame(*kind, frames, tag);
                        if let Some(mut w) = rtc.writer(*mid) {
                            if *kind == MediaKind::Audio {
                                w = w.audio_level(AUDIO_LEVEL, true);
                            }
                            w.write(pt, now, (now - start).into(), data).expect("client writes a frame");
                        }
                    }
                } else if now >= next_frame {
                    next_frame = now + FRAME_INTERVAL;
                }
            }
        }
    }
}

/// A synthetic frame whose last byte is the sender's tag; VP8 key frames every 25 frames.
fn frame(kind: MediaKind, n: u64, tag: u8) -> Vec<u8> {
    let mut f = match kind {
        MediaKind::Audio => vec![0xfc; 80],
        MediaKind::Video => {
            let key = n % 25 == 1;
            let mut f = vec![if key { 0x10 } else { 0x11 }, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00];
            f.resize(600, (n % 251) as u8);
            f
        }
    };
    f.push(tag);
    f
}

/// Waits until every (receiver, sender, kind) in `want` has been reported.
async fn wait_for(rx: &mut mpsc::UnboundedReceiver<Sighting>, got: &mut HashSet<Sighting>, want: &[Sighting]) {
    let deadline = tokio::time::Instant::now() + MEDIA_WAIT;
    while !want.iter().all(|w| got.contains(w)) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(s)) => {
                got.insert(s);
            }
            _ => {
                let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).collect();
                panic!("media did not arrive within {MEDIA_WAIT:?}; missing (receiver, sender, kind): {missing:?}");
            }
        }
    }
}

fn everyone_sees_everyone(tags: &[u8]) -> Vec<Sighting> {
    let mut want = Vec::new();
    for &r in tags {
        for &s in tags.iter().filter(|&&s| s != r) {
            want.push((r, s, MediaKind::Audio));
            want.push((r, s, MediaKind::Video));
        }
    }
    want
}

/// Stops every media participant, has each leave, and shuts the server down.
async fn stop_all(stop_tx: watch::Sender<bool>, tasks: Vec<tokio::task::JoinHandle<Client>>, server: TestServer) {
    stop_tx.send(true).expect("participants listen");
    for t in tasks {
        let mut ws = tokio::time::timeout(WAIT, t).await.expect("participant stops").expect("no panic");
        ws.send(&ClientMsg::Leave).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_of_an_sfu_room_receive_each_other_through_the_server_including_a_late_joiner() {
    let server = TestServer::start(sfu_config(TopologyMode::Sfu)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for tag in [1u8, 2] {
        let ws = Client::connect(&server).await;
        let link = Link::udp().await;
        tasks.push(tokio::spawn(media_participant(ws, "sfu room", tag, link, tx.clone(), stop.clone())));
    }
    let mut got = HashSet::new();
    wait_for(&mut rx, &mut got, &everyone_sees_everyone(&[1, 2])).await;

    // A late joiner: the server renegotiates with the two already there, and the newcomer gets
    // their tracks in its own renegotiation.
    let ws = Client::connect(&server).await;
    let link = Link::udp().await;
    tasks.push(tokio::spawn(media_participant(ws, "sfu room", 3, link, tx.clone(), stop.clone())));
    wait_for(&mut rx, &mut got, &everyone_sees_everyone(&[1, 2, 3])).await;

    stop_all(stop_tx, tasks, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_without_udp_reach_the_sfu_over_tcp_on_the_http_port() {
    let server = TestServer::start(sfu_config(TopologyMode::Sfu)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    // 1 and 3 have only a TCP candidate and a TCP connection to the HTTP port; 2 has UDP.
    let started = Instant::now();
    for tag in [1u8, 2, 3] {
        let ws = Client::connect(&server).await;
        let link = if tag == 2 { Link::udp().await } else { Link::tcp(server.addr).await };
        tasks.push(tokio::spawn(media_participant(ws, "tcp room", tag, link, tx.clone(), stop.clone())));
    }
    let mut got = HashSet::new();
    wait_for(&mut rx, &mut got, &everyone_sees_everyone(&[1, 2, 3])).await;
    eprintln!("media between TCP and UDP participants in {:?}", started.elapsed());

    // The HTTP port still serves HTTP, and the WebSocket connections carry on.
    let mut http = TcpStream::connect(server.addr).await.expect("connect");
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, http.read_to_end(&mut answer)).await.expect("in time").expect("read");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));

    stop_all(stop_tx, tasks, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_media_tcp_port_ice_tcp_has_a_port_of_its_own() {
    // A port that was free a moment ago.
    let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").port();
    let config = Config { media_tcp_port: Some(port), ..sfu_config(TopologyMode::Sfu) };
    let server = TestServer::start(config).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for tag in [1u8, 2] {
        let ws = Client::connect(&server).await;
        let link = if tag == 1 { Link::tcp(SocketAddr::from(([127, 0, 0, 1], port))).await } else { Link::udp().await };
        tasks.push(tokio::spawn(media_participant(ws, "own port", tag, link, tx.clone(), stop.clone())));
    }
    let mut got = HashSet::new();
    wait_for(&mut rx, &mut got, &everyone_sees_everyone(&[1, 2])).await;
    // The HTTP port is HTTP only now (hyper answers the bytes with 400), and the ICE-TCP port
    // closes what is not ICE-TCP without a word.
    for (addr, http) in [(server.addr, true), (SocketAddr::from(([127, 0, 0, 1], port)), false)] {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        let bytes: &[u8] = if http { &stranger_stun_frame() } else { b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" };
        c.write_all(bytes).await.expect("write");
        c.shutdown().await.expect("half-close");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(WAIT, c.read_to_end(&mut answer)).await.expect("in time");
        assert_eq!(answer.starts_with(b"HTTP/1.1 400"), http, "{addr}: {}", String::from_utf8_lossy(&answer));
    }
    stop_all(stop_tx, tasks, server).await;
}

/// A frame that looks like ICE-TCP (a STUN Binding request) naming nobody the SFU knows.
fn stranger_stun_frame() -> Vec<u8> {
    let mut stun = vec![0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xA4, 0x42];
    stun.extend_from_slice(&[9; 12]);
    // USERNAME "nobody:x" (8 bytes).
    stun.extend_from_slice(&[0x00, 0x06, 0x00, 0x08]);
    stun.extend_from_slice(b"nobody:x");
    let mut frame = Vec::new();
    assert!(frame_into(&mut frame, &stun));
    frame
}

#[tokio::test]
async fn broken_or_unknown_ice_tcp_connections_are_closed_and_the_server_carries_on() {
    let server = TestServer::start(sfu_config(TopologyMode::Sfu)).await;
    let mut a = Client::connect(&server).await;
    a.join("tcp garbage", "A").await;
    // An oversized frame after a valid first one: closed at once, nothing answered.
    let mut c = TcpStream::connect(server.addr).await.expect("connect");
    c.write_all(&stranger_stun_frame()).await.expect("write");
    c.write_all(&[0xff, 0xff, 1, 2, 3]).await.expect("write");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, c.read_to_end(&mut rest)).await.expect("closed in time");
    assert!(read.map_or(true, |n| n == 0), "nothing is answered: {rest:?}");
    // An empty frame: the same.
    let mut c = TcpStream::connect(server.addr).await.expect("connect");
    c.write_all(&stranger_stun_frame()).await.expect("write");
    c.write_all(&[0x00, 0x00]).await.expect("write");
    let read = tokio::time::timeout(WAIT, c.read_to_end(&mut rest)).await.expect("closed in time");
    assert!(read.map_or(true, |n| n == 0), "nothing is answered: {rest:?}");
    // A stranger's well-formed check is not answered (str0m knows no such ufrag).
    let mut c = TcpStream::connect(server.addr).await.expect("connect");
    c.write_all(&stranger_stun_frame()).await.expect("write");
    let mut one = [0u8; 1];
    let silent = tokio::time::timeout(Duration::from_millis(500), c.read(&mut one)).await;
    assert!(silent.is_err(), "a stranger gets no answer: {silent:?}");
    // The page's connection and the HTTP port are fine.
    a.send(&ClientMsg::Chat { text: "still here".into() }).await;
    assert!(matches!(a.recv().await, ServerMsg::Chat { .. }));
    Client::connect(&server).await;
    server.shutdown().await;
}

#[tokio::test]
async fn with_ice_tcp_off_the_http_port_is_http_only() {
    let server = TestServer::start(Config { ice_tcp: false, ..sfu_config(TopologyMode::Sfu) }).await;
    let mut c = TcpStream::connect(server.addr).await.expect("connect");
    c.write_all(&stranger_stun_frame()).await.expect("write");
    c.shutdown().await.expect("half-close");
    // HTTP's answer to bytes that are no request (hyper: 400), where ICE-TCP would say nothing.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, c.read_to_end(&mut answer)).await.expect("in time");
    assert!(answer.starts_with(b"HTTP/1.1 400"), "{}", String::from_utf8_lossy(&answer));
    // With ICE-TCP on, the same bytes get no HTTP answer.
    let on = TestServer::start(sfu_config(TopologyMode::Sfu)).await;
    let mut c = TcpStream::connect(on.addr).await.expect("connect");
    c.write_all(&stranger_stun_frame()).await.expect("write");
    c.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, c.read_to_end(&mut answer)).await.expect("in time");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    server.shutdown().await;
    on.shutdown().await;
}

#[tokio::test]
async fn auto_rooms_switch_to_the_sfu_at_the_third_person() {
    let server = TestServer::start(sfu_config(TopologyMode::Auto)).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    let mut c = Client::connect(&server).await;
    assert!(matches!(a.join("auto", "A").await, ServerMsg::Joined { topology: Topology::P2p, .. }));
    assert!(matches!(b.join("auto", "B").await, ServerMsg::Joined { topology: Topology::P2p, .. }));
    assert!(matches!(a.recv().await, ServerMsg::PeerJoined { .. }));
    // While peer-to-peer there is no SFU to talk to.
    let offer = ClientMsg::Signal { to: sfu(), payload: description(SdpType::Offer, "v=0".into()) };
    a.send(&offer).await;
    a.expect_error(ErrorCode::UnknownPeer).await;

    assert!(matches!(c.join("auto", "C").await, ServerMsg::Joined { topology: Topology::Sfu, .. }));
    for x in [&mut a, &mut b] {
        assert_eq!(x.recv().await, ServerMsg::Topology { topology: Topology::Sfu }, "topology comes first");
        assert!(matches!(x.recv().await, ServerMsg::PeerJoined { .. }));
    }
    // The room stays on the SFU when it shrinks back to two.
    c.send(&ClientMsg::Leave).await;
    assert!(matches!(c.recv().await, ServerMsg::Left { .. }));
    assert!(matches!(a.recv().await, ServerMsg::PeerLeft { .. }));
    let mut d = Client::connect(&server).await;
    assert!(matches!(d.join("auto", "D").await, ServerMsg::Joined { topology: Topology::Sfu, .. }));
    // A fresh room starts peer-to-peer again.
    assert!(matches!(c.join("another", "C").await, ServerMsg::Joined { topology: Topology::P2p, .. }));
    server.shutdown().await;
}

#[tokio::test]
async fn p2p_servers_never_offer_the_sfu() {
    let server = TestServer::start(sfu_config(TopologyMode::P2p)).await;
    let mut clients = Vec::new();
    for n in 0..3 {
        let mut c = Client::connect(&server).await;
        assert!(matches!(c.join("mesh", &format!("n{n}")).await, ServerMsg::Joined { topology: Topology::P2p, .. }));
        clients.push(c);
    }
    let offer = ClientMsg::Signal { to: sfu(), payload: description(SdpType::Offer, "v=0".into()) };
    clients[0].send(&offer).await;
    // Drain the peer_joined messages first.
    loop {
        match clients[0].recv().await {
            ServerMsg::PeerJoined { .. } => continue,
            ServerMsg::Error { code, .. } => {
                assert_eq!(code, ErrorCode::UnknownPeer);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn bad_sdp_for_the_sfu_is_refused_and_the_connection_carries_on() {
    let server = TestServer::start(sfu_config(TopologyMode::Sfu)).await;
    let mut a = Client::connect(&server).await;
    a.send(&join("sfu bad", "A")).await;
    assert!(matches!(a.recv().await, ServerMsg::Joined { topology: Topology::Sfu, .. }));
    let cases = [
        description(SdpType::Offer, "not sdp at all".into()),
        description(SdpType::Offer, "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n".into()),
        // An answer when the SFU has no offer outstanding (and no session at all).
        description(SdpType::Answer, "v=0\r\n".into()),
    ];
    for payload in cases {
        a.send(&ClientMsg::Signal { to: sfu(), payload }).await;
        match a.recv().await {
            ServerMsg::Error { code: ErrorCode::MediaRefused, request, .. } => {
                assert_eq!(request.as_deref(), Some("signal"))
            }
            other => panic!("expected media_refused, got {other:?}"),
        }
    }
    // Candidates for the SFU are accepted and ignored (it is ICE-lite).
    a.send(&ClientMsg::Signal { to: sfu(), payload: SignalPayload::Candidate { candidate: None } }).await;
    a.barrier().await;
    // The connection and the room still work.
    a.send(&ClientMsg::Chat { text: "still here".into() }).await;
    assert!(matches!(a.recv().await, ServerMsg::Chat { .. }));
    server.shutdown().await;
}

#[tokio::test]
async fn a_page_cannot_loop_on_restarting_its_session() {
    let server = TestServer::start(sfu_config(TopologyMode::Sfu)).await;
    let mut a = Client::connect(&server).await;
    a.send(&join("restarts", "A")).await;
    assert!(matches!(a.recv().await, ServerMsg::Joined { topology: Topology::Sfu, .. }));
    let offer = || {
        let mut rtc = Rtc::builder().build(Instant::now());
        let mut change = rtc.sdp_api();
        change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, _) = change.apply().expect("an offer");
        ClientMsg::Signal { to: sfu(), payload: description(SdpType::Offer, offer.to_sdp_string()) }
    };
    a.send(&offer()).await;
    assert!(matches!(a.recv().await, ServerMsg::Signal { payload: SignalPayload::Description { .. }, .. }));
    // A second offer at once would restart the session (and renegotiate the whole room).
    a.send(&offer()).await;
    a.expect_error(ErrorCode::MediaRefused).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_the_host_muted_is_not_heard_through_the_sfu_whatever_it_sends() {
    let server = TestServer::start(sfu_config(TopologyMode::Sfu)).await;
    // The host opens the room (signalling only); bot 41 talks, bot 42 listens.
    let mut host = Client::connect(&server).await;
    host.join("mute room", "Host").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for tag in [41u8, 42] {
        let ws = Client::connect(&server).await;
        let link = Link::udp().await;
        tasks.push(tokio::spawn(media_participant(ws, "mute room", tag, link, tx.clone(), stop.clone())));
    }
    let mut got = HashSet::new();
    wait_for(&mut rx, &mut got, &everyone_sees_everyone(&[41, 42])).await;
    let talker = loop {
        match host.recv().await {
            ServerMsg::PeerJoined { peer } if peer.name == "bot 41" => break peer.id,
            _ => continue,
        }
    };
    host.send(&ClientMsg::Moderate { peer: talker, action: huddle_protocol::ModAction::Mute }).await;
    // The bot's page ignores `moderated` and keeps sending: the SFU drops its audio. (Packets
    // already on their way may still land: let them, then count.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = heard(42, 41);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(heard(42, 41), before, "muted audio still forwarded");
    // Video still flows, and the listener's own audio still reaches the talker.
    let talker_hears = heard(41, 42);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(heard(41, 42) > talker_hears, "the other direction goes on");
    stop_all(stop_tx, tasks, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_goes_through_the_sfu_only_while_the_room_has_the_camera_or_screen_on_whatever_is_sent() {
    let server = TestServer::start(sfu_config(TopologyMode::Sfu)).await;
    // The host opens the room (signalling only); bots 51 and 52 send audio and video all along,
    // but 51 says, before its offer, that its camera and screen are off.
    let mut host = Client::connect(&server).await;
    host.join("video room", "Host").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let (say, said) = mpsc::unbounded_channel();
    let media = |video| ClientMsg::Media { audio: true, video, screen: false };
    say.send(media(false)).expect("bot 51 listens");
    let mut tasks = Vec::new();
    let ws = Client::connect(&server).await;
    let link = Link::udp().await;
    tasks.push(tokio::spawn(saying_participant(ws, "video room", 51, link, tx.clone(), stop.clone(), said)));
    let ws = Client::connect(&server).await;
    let link = Link::udp().await;
    tasks.push(tokio::spawn(media_participant(ws, "video room", 52, link, tx.clone(), stop.clone())));
    let mut got = HashSet::new();
    let want = [(51, 52, MediaKind::Audio), (51, 52, MediaKind::Video), (52, 51, MediaKind::Audio)];
    wait_for(&mut rx, &mut got, &want).await;
    // 52 hears 51 and 51 sees 52, so 51's video has had every chance: none of it got through.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(saw(52, 51), 0, "video forwarded while its camera and screen are off");

    // Its camera is on as far as the room knows: its video shows.
    let announced = Instant::now();
    say.send(media(true)).expect("bot 51 listens");
    wait_for(&mut rx, &mut got, &[(52, 51, MediaKind::Video)]).await;
    eprintln!("video arrived {:?} after announcing the camera", announced.elapsed());

    // A host stops its camera; the bot ignores `moderated` and keeps sending: the SFU drops its
    // video (packets already on their way may still land: let them, then count) but not its audio.
    let bot = loop {
        match host.recv().await {
            ServerMsg::PeerJoined { peer } if peer.name == "bot 51" => break peer.id,
            _ => continue,
        }
    };
    host.send(&ClientMsg::Moderate { peer: bot, action: huddle_protocol::ModAction::StopVideo }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (video, audio) = (saw(52, 51), heard(52, 51));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(saw(52, 51), video, "video a host stopped still forwarded");
    assert!(heard(52, 51) >= audio + 25, "its audio is not held");
    stop_all(stop_tx, tasks, server).await;
}
