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
    // (A bot accepts that the room may be recording.)
    match ws.join_recorded(room, &format!("bot {tag}")).await {
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
                    ServerMsg::Signal { from, payload: SignalPayload::Description { description: desc }, .. } => {
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

/// The first name `stem-<n>` whose room worker `worker` of `workers` owns.
fn room_on(worker: usize, workers: usize, stem: &str) -> String {
    (0..1000)
        .map(|n| format!("{stem}-{n}"))
        .find(|room| huddle_server::workers::worker_of_room(room, workers) == worker)
        .expect("a name for every worker among 1000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_two_workers_forward_media_side_by_side_over_udp_and_ice_tcp() {
    let server = TestServer::start(Config { workers: 2, ..sfu_config(TopologyMode::Sfu) }).await;
    // The participants' tasks take `&'static str` rooms.
    let rooms: [&'static str; 2] = [room_on(0, 2, "w").leak(), room_on(1, 2, "w").leak()];
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    // Room 0: tags 11 and 12; room 1: tags 21 and 22. 11 and 21 reach their SFU only over
    // ICE-TCP on the shared HTTP port, which must hand each connection to its room's worker.
    for (room, tags) in rooms.iter().zip([[11u8, 12], [21, 22]]) {
        for tag in tags {
            let ws = Client::connect(&server).await;
            let link = if tag % 10 == 1 { Link::tcp(server.addr).await } else { Link::udp().await };
            tasks.push(tokio::spawn(media_participant(ws, room, tag, link, tx.clone(), stop.clone())));
        }
    }
    let mut got = HashSet::new();
    let mut want = everyone_sees_everyone(&[11, 12]);
    want.extend(everyone_sees_everyone(&[21, 22]));
    wait_for(&mut rx, &mut got, &want).await;
    let crossed: Vec<_> = got.iter().filter(|(r, s, _)| r / 10 != s / 10).collect();
    assert!(crossed.is_empty(), "media crossed between the rooms: {crossed:?}");

    // Each worker holds one room and forwarded its packets.
    let m = common::raw::metrics(server.addr).await;
    for worker in ["0", "1"] {
        assert_eq!(m.get(&format!("huddle_worker_rooms{{worker=\"{worker}\"}}")), Some(&1.0), "{m:?}");
        let forwarded = m.get(&format!("huddle_worker_forwarded_packets_total{{worker=\"{worker}\"}}"));
        assert!(forwarded.is_some_and(|f| *f > 0.0), "worker {worker} forwarded nothing: {m:?}");
    }
    assert_eq!(m.get("huddle_rooms"), Some(&2.0));
    assert_eq!(m.get("huddle_sfu_participants"), Some(&4.0));
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
        assert_eq!(
            x.recv().await,
            ServerMsg::Topology { topology: Topology::Sfu, reason: None },
            "topology comes first"
        );
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
    for (payload, code) in cases.into_iter().zip(["media_refused", "media_refused", "media_answer_refused"]) {
        a.send(&ClientMsg::Signal { to: sfu(), payload }).await;
        let error = recv_json(&mut a).await;
        assert_eq!((&error["code"], &error["request"]), (&code.into(), &"signal".into()), "{error:#?}");
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
    // A second offer at once would restart the session (and renegotiate the whole room): not
    // now, and the refusal says when.
    let again = offer();
    a.send(&again).await;
    let refused = recv_json(&mut a).await;
    assert_eq!(refused["code"], "media_retry", "{refused:#?}");
    assert_eq!(refused["request"], "signal");
    let wait = refused["retryAfterMs"].as_u64().expect("retryAfterMs");
    assert!((1..=2000).contains(&wait), "{wait} ms");
    // Sent again after that, the same offer is taken.
    tokio::time::sleep(Duration::from_millis(wait)).await;
    a.send(&again).await;
    let answer = recv_json(&mut a).await;
    assert_eq!(answer.pointer("/payload/description/type"), Some(&"answer".into()), "{answer:#?}");
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

// ------------------------------------------------------------------ restarts, step by step

/// One media session of a [`Stepper`]: a str0m connection on a UDP socket of its own, like a
/// browser's `RTCPeerConnection`.
struct Session {
    rtc: Rtc,
    link: Link,
    /// Our offer, until the server answers it.
    pending: Option<SdpPendingOffer>,
    sending: Vec<(Mid, MediaKind)>,
    incoming: HashMap<Mid, MediaKind>,
    connected: bool,
    next_timeout: Instant,
    next_frame: Instant,
    frames: u64,
    /// The `session` the server's answer named (`None`: not answered yet, or no number given).
    number: Option<u64>,
}

/// A participant driven step by step, as the restart tests need: the test says when to start
/// a new session, close one, or stop reading the WebSocket; every message from the server is
/// kept as JSON. It follows the client's rules of docs/protocol.md ("Sessions and restarts"):
/// it answers the SFU's offers only while none of its own is outstanding, acts on a
/// `media_failed` only when it names no session or the current one, and then starts over at
/// once (as a client that trusts the message would).
struct Stepper {
    ws: Client,
    tag: u8,
    start: Instant,
    s: Session,
    /// Every message from the server, as JSON (SDP left out), in order.
    said: Vec<serde_json::Value>,
    /// Keep the SFU's offers unanswered in `held` (a slow page).
    hold_offers: bool,
    held: Vec<(Option<u64>, String)>,
    /// Every SDP the SFU sent: (answer or offer, session, SDP).
    sdp: Vec<(SdpType, Option<u64>, String)>,
    /// Sessions started in response to `media_failed`.
    restarts: u32,
    /// When the last offer went out.
    offered_at: Instant,
}

impl Stepper {
    /// Connects, joins `room` (an sfu room) and offers.
    async fn join(server: &TestServer, room: &str, tag: u8) -> Stepper {
        let mut ws = Client::connect(server).await;
        match ws.join(room, &format!("stepper {tag}")).await {
            ServerMsg::Joined { topology: Topology::Sfu, .. } => {}
            other => panic!("expected an sfu room, got {other:?}"),
        }
        let s = Stepper::session().await;
        let mut me = Stepper {
            ws,
            tag,
            start: Instant::now(),
            s,
            said: Vec::new(),
            hold_offers: false,
            held: Vec::new(),
            sdp: Vec::new(),
            restarts: 0,
            offered_at: Instant::now(),
        };
        me.offer().await;
        me
    }

    /// A fresh connection with a sendonly audio and video m-line, not offered yet.
    async fn session() -> Session {
        let link = Link::udp().await;
        let now = Instant::now();
        let mut rtc = Rtc::builder().build(now);
        rtc.add_local_candidate(link.candidate());
        Session {
            rtc,
            link,
            pending: None,
            sending: Vec::new(),
            incoming: HashMap::new(),
            connected: false,
            next_timeout: now,
            next_frame: now,
            frames: 0,
            number: None,
        }
    }

    /// Offers the current session to the SFU.
    async fn offer(&mut self) {
        self.offer_with(|sdp| sdp).await;
    }

    /// Offers the current session, its SDP changed by `edit` on the way.
    async fn offer_with(&mut self, edit: impl FnOnce(String) -> String) {
        self.offered_at = Instant::now();
        let mut change = self.s.rtc.sdp_api();
        let sending: Vec<(Mid, MediaKind)> = [MediaKind::Audio, MediaKind::Video]
            .into_iter()
            .map(|k| (change.add_media(k, Direction::SendOnly, None, None, None), k))
            .collect();
        let (offer, pending) = change.apply().expect("an offer with two m-lines");
        self.s.sending = sending;
        self.s.pending = Some(pending);
        let sdp = edit(offer.to_sdp_string());
        self.ws.send(&ClientMsg::Signal { to: sfu(), payload: description(SdpType::Offer, sdp) }).await;
    }

    /// Runs until a new session may be started (2 s after the last offer).
    async fn wait_restart_interval(&mut self) {
        let at = self.offered_at + Duration::from_millis(2100);
        self.run_until("the restart interval", Duration::from_secs(3), |_| Instant::now() >= at).await;
    }

    /// Starts over as the document says: a new connection and its offer (the old one is
    /// dropped without a word, unless [`Stepper::close`] closed it first).
    async fn restart(&mut self) {
        self.s = Stepper::session().await;
        self.offer().await;
    }

    /// Closes the current connection as `RTCPeerConnection.close()` does: DTLS close_notify
    /// (and RTCP BYE) go out, then it is dead.
    async fn close(&mut self) {
        self.s.rtc.close().expect("close");
        self.drain().await;
    }

    /// str0m's drain rule.
    async fn drain(&mut self) {
        loop {
            let out = match self.s.rtc.poll_output() {
                Ok(out) => out,
                Err(e) => panic!("stepper {}: client poll_output: {e}", self.tag),
            };
            match out {
                RtcOutput::Timeout(t) => {
                    self.s.next_timeout = t;
                    return;
                }
                RtcOutput::Transmit(t) => self.s.link.send(t.proto, t.destination, &t.contents).await,
                RtcOutput::Event(RtcEvent::Connected) => self.s.connected = true,
                RtcOutput::Event(RtcEvent::MediaAdded(m)) => {
                    self.s.incoming.insert(m.mid, m.kind);
                }
                RtcOutput::Event(RtcEvent::MediaData(d)) => {
                    let kind = self.s.incoming.get(&d.mid).copied().unwrap_or(MediaKind::Audio);
                    if let Some(&from) = d.data.last() {
                        let count = if kind == MediaKind::Audio { &HEARD } else { &SAW };
                        *count.lock().expect("not poisoned").entry((self.tag, from)).or_default() += 1;
                    }
                }
                RtcOutput::Event(_) => {}
            }
            if !self.s.rtc.is_alive() {
                return;
            }
        }
    }

    /// Runs the participant (media both ways, signalling) until `done`, or fails after `limit`
    /// saying `what` and what the server said.
    async fn run_until(&mut self, what: &str, limit: Duration, done: impl Fn(&Stepper) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut buf = vec![0u8; 2048];
        loop {
            self.drain().await;
            if done(self) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("stepper {}: {what}: not within {limit:?}; the server said {:#?}", self.tag, self.said);
            }
            let wake = self.s.next_timeout.min(self.s.next_frame).max(Instant::now());
            let wake = tokio::time::Instant::from_std(wake).min(deadline);
            tokio::select! {
                frame = self.ws.ws.next() => {
                    let Some(Ok(frame)) = frame else { panic!("stepper {}: signalling closed", self.tag) };
                    match frame {
                        Message::Text(t) => self.message(&t).await,
                        Message::Ping(_) => self.ws.ws.flush().await.expect("pong"),
                        _ => {}
                    }
                }
                (proto, n, source) = self.s.link.recv(&mut buf) => {
                    let destination = self.s.link.local();
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    let receive = Receive { proto, source, destination, contents };
                    let _ = self.s.rtc.handle_input(RtcInput::Receive(Instant::now(), receive));
                }
                _ = tokio::time::sleep_until(wake) => self.tick(),
            }
        }
    }

    /// A timeout for str0m, and a frame of audio and video every 20 ms once connected.
    fn tick(&mut self) {
        let now = Instant::now();
        if !self.s.rtc.is_alive() {
            self.s.next_timeout = now + Duration::from_secs(3600);
            return;
        }
        let _ = self.s.rtc.handle_input(RtcInput::Timeout(now));
        if now < self.s.next_frame {
            return;
        }
        self.s.next_frame = now + FRAME_INTERVAL;
        if !self.s.connected {
            return;
        }
        self.s.frames += 1;
        for (mid, kind) in self.s.sending.clone() {
            let codec = if kind == MediaKind::Audio { Codec::Opus } else { Codec::Vp8 };
            let Some(pt) = self.s.rtc.codec_config().find(|p| p.spec().codec == codec).map(|p| p.pt()) else {
                continue;
            };
            let data = frame(kind, self.s.frames, self.tag);
            if let Some(mut w) = self.s.rtc.writer(mid) {
                if kind == MediaKind::Audio {
                    w = w.audio_level(AUDIO_LEVEL, true);
                }
                let _ = w.write(pt, now, (now - self.start).into(), data);
            }
        }
    }

    /// One message from the server, following the client's rules.
    async fn message(&mut self, text: &str) {
        let mut json: serde_json::Value = serde_json::from_str(text).expect("server JSON");
        let session = json.get("session").and_then(|s| s.as_u64());
        let sdp = json.pointer("/payload/description/sdp").and_then(|s| s.as_str()).map(str::to_string);
        if let Some(d) = json.pointer_mut("/payload/description") {
            d["sdp"] = "…".into();
        }
        self.said.push(json.clone());
        let kind = json.pointer("/payload/description/type").and_then(|t| t.as_str());
        match (json["type"].as_str(), kind, sdp) {
            (Some("signal"), Some("answer"), Some(sdp)) => {
                assert_eq!(json["from"], SFU_PEER_ID, "stepper {}: only the SFU signals", self.tag);
                assert_candidates_in_the_first_section(&sdp);
                self.sdp.push((SdpType::Answer, session, sdp.clone()));
                let pending = self.s.pending.take().expect("an answer comes only to our outstanding offer");
                let answer = SdpAnswer::from_sdp_string(&sdp).expect("SFU answer parses");
                if let Err(e) = self.s.rtc.sdp_api().accept_answer(pending, answer) {
                    // The answer to an earlier connection's offer (one it replaced).
                    panic!(
                        "stepper {}: the answer does not fit this connection ({e}); the server said {:#?}",
                        self.tag, self.said
                    );
                }
                self.s.number = session;
            }
            (Some("signal"), Some("offer"), Some(sdp)) => {
                assert_candidates_in_the_first_section(&sdp);
                self.sdp.push((SdpType::Offer, session, sdp.clone()));
                // Our own offer is outstanding: we are the impolite side and ignore theirs; an
                // offer for another session than ours is about one we replaced.
                if self.s.pending.is_some() || session.is_some_and(|n| Some(n) != self.s.number) {
                    return;
                }
                if self.hold_offers {
                    self.held.push((session, sdp));
                    return;
                }
                self.answer(&sdp).await;
            }
            (Some("error"), _, _)
                if json["code"] == "media_failed" && (session.is_none() || session == self.s.number) =>
            {
                self.restarts += 1;
                self.restart().await;
            }
            _ => {}
        }
    }

    async fn answer(&mut self, sdp: &str) {
        let offer = SdpOffer::from_sdp_string(sdp).expect("SFU offer parses");
        let answer = self.s.rtc.sdp_api().accept_offer(offer).expect("client accepts the offer");
        self.ws
            .send(&ClientMsg::Signal { to: sfu(), payload: description(SdpType::Answer, answer.to_sdp_string()) })
            .await;
    }

    /// The errors the server sent, as (code, session).
    fn errors(&self) -> Vec<(String, Option<u64>)> {
        self.said
            .iter()
            .filter(|m| m["type"] == "error")
            .map(|m| (m["code"].as_str().unwrap_or_default().to_string(), m["session"].as_u64()))
            .collect()
    }
}

/// `GET /metrics`: `huddle_sfu_participants`.
async fn sfu_participants(server: &TestServer) -> u64 {
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.addr);
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw)).await.expect("answered in time").expect("read");
    let text = String::from_utf8(raw).expect("UTF-8");
    let line = text.lines().find_map(|l| l.strip_prefix("huddle_sfu_participants ")).expect("the gauge is there");
    line.trim().parse().expect("a number")
}

/// Waits until the SFU holds `n` sessions (it dropped one the test ended).
async fn until_sfu_holds(server: &TestServer, n: u64, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let now = sfu_participants(server).await;
        if now == n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the SFU still holds {now} sessions after {limit:?}, not {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A room with a [`Stepper`] (tag `tag`) and a [`media_participant`] (tag `tag + 1`), media
/// flowing both ways.
async fn stepper_and_bot(
    server: &TestServer,
    room: &'static str,
    tag: u8,
) -> (Stepper, watch::Sender<bool>, tokio::task::JoinHandle<Client>) {
    let mut me = Stepper::join(server, room, tag).await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let ws = Client::connect(server).await;
    let link = Link::udp().await;
    let bot = tokio::spawn(media_participant(ws, room, tag + 1, link, tx, stop));
    me.run_until("media both ways", MEDIA_WAIT, |_| heard(tag, tag + 1) > 10 && heard(tag + 1, tag) > 10).await;
    (me, stop_tx, bot)
}

async fn stop_bot(stop_tx: watch::Sender<bool>, bot: tokio::task::JoinHandle<Client>) {
    stop_tx.send(true).expect("the bot listens");
    let mut ws = tokio::time::timeout(WAIT, bot).await.expect("the bot stops").expect("no panic");
    ws.send(&ClientMsg::Leave).await;
}

/// Media flows again both ways between `a` and `b`: each hears `n` more frames of the other.
fn flowing_again(a: u8, b: u8, n: u64) -> impl Fn(&Stepper) -> bool {
    let (ab, ba) = (heard(a, b), heard(b, a));
    move |_| heard(a, b) > ab + n && heard(b, a) > ba + n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_old_connection_to_restart_brings_no_media_failed_and_media_flows_again() {
    let server = TestServer::start(sfu_config(TopologyMode::Sfu)).await;
    let (mut a, stop_tx, bot) = stepper_and_bot(&server, "close and restart", 61).await;
    for round in 1..=2 {
        // The session may be started over once every 2 s: wait that out with media flowing.
        a.wait_restart_interval().await;
        // As the document says: close the connection (a browser sends DTLS close_notify), open
        // a new one and offer. The SFU sees the close before the offer: by the time the offer
        // goes out the old session is gone, and whatever the server said about it is on its way.
        let said = a.said.len();
        a.close().await;
        until_sfu_holds(&server, 1, WAIT).await;
        a.restart().await;
        a.run_until(&format!("round {round}: media again"), MEDIA_WAIT, flowing_again(61, 62, 25)).await;
        let errors: Vec<_> = a.said[said..].iter().filter(|m| m["type"] == "error").collect();
        assert!(errors.is_empty(), "round {round}: errors about the session the client closed itself: {errors:?}");
        assert_eq!(a.restarts, 0, "no second restart");
    }
    stop_bot(stop_tx, bot).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_failed_that_crosses_a_restart_names_the_old_session_and_is_ignored() {
    let server = TestServer::start(sfu_config(TopologyMode::Sfu)).await;
    let (mut a, stop_tx, bot) = stepper_and_bot(&server, "crossing", 63).await;
    let old = a.s.number;
    // The network drops (nothing more from this connection, not even ICE consent checks) and
    // the client is not reading its WebSocket either. The SFU gives up on the session (ICE-lite
    // consent: 15 s) and says `media_failed`; it is still unread when the client, which found
    // its connection dead by itself, starts over: the two cross.
    until_sfu_holds(&server, 1, Duration::from_secs(30)).await;
    let said = a.said.len();
    a.restart().await;
    a.run_until("media again after the restart", MEDIA_WAIT, flowing_again(63, 64, 25)).await;
    let after: Vec<_> = a.said[said..].to_vec();
    let failed = after.iter().position(|m| m["code"] == "media_failed");
    let answer = after.iter().position(|m| m.pointer("/payload/description/type") == Some(&"answer".into()));
    let (Some(failed), Some(answer)) = (failed, answer) else { panic!("a media_failed and an answer: {after:#?}") };
    assert!(failed < answer, "what concerns the old session comes before the answer: {after:#?}");
    assert!(old.is_some(), "answers name their session");
    assert_eq!(after[failed]["session"].as_u64(), old, "media_failed names the session it is about");
    assert_ne!(after[answer]["session"].as_u64(), old, "the new session has a number of its own");
    assert_eq!(a.restarts, 0, "the crossing media_failed was recognised as the old session's");
    assert_eq!(a.errors().len(), 1, "nothing else went wrong: {:?}", a.errors());
    stop_bot(stop_tx, bot).await;
    server.shutdown().await;
}

/// `offer` with every codec renamed to one nobody knows: it parses, but nothing in it is usable.
fn unusable(offer: &str) -> String {
    offer
        .lines()
        .map(|l| match l.strip_prefix("a=rtpmap:") {
            Some(rest) => format!("a=rtpmap:{} X-NOPE/90000\r\n", rest.split(' ').next().unwrap_or("96")),
            None => format!("{l}\r\n"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_offer_leaves_the_session_running() {
    let server = TestServer::start(sfu_config(TopologyMode::Sfu)).await;
    let (mut a, stop_tx, bot) = stepper_and_bot(&server, "refused offer", 65).await;
    a.wait_restart_interval().await;
    // A second connection's offer the SFU cannot use (the client keeps the first open).
    let mut other = Stepper::session().await;
    let mut change = other.rtc.sdp_api();
    change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, _) = change.apply().expect("an offer");
    let sdp = unusable(&offer.to_sdp_string());
    let said = a.said.len();
    a.ws.send(&ClientMsg::Signal { to: sfu(), payload: description(SdpType::Offer, sdp) }).await;
    a.run_until("the refusal", WAIT, |a| a.said.len() > said).await;
    assert_eq!(a.said[said]["code"], "media_refused", "{:#?}", a.said[said]);
    assert_eq!(a.said[said]["request"], "signal");
    // The session that was there goes on, both ways.
    a.run_until("media on the old session", MEDIA_WAIT, flowing_again(65, 66, 25)).await;
    assert_eq!(sfu_participants(&server).await, 2);
    stop_bot(stop_tx, bot).await;
    server.shutdown().await;
}

/// The media sections' `a=mid`s, in order.
fn mids(sdp: &str) -> Vec<String> {
    sdp.lines().filter_map(|l| l.strip_prefix("a=mid:")).map(|m| m.trim().to_string()).collect()
}

/// The SFU's SDP bundles every section on one transport and names its candidates in the first
/// section only (docs/protocol.md, "ICE").
fn assert_candidates_in_the_first_section(sdp: &str) {
    let sections: Vec<&str> = sdp.split("\r\nm=").skip(1).collect();
    assert!(!sections.is_empty(), "media sections: {sdp}");
    assert!(sections[0].contains("a=candidate:"), "candidates in the first section: {sdp}");
    assert!(sections[1..].iter().all(|s| !s.contains("a=candidate:")), "candidates only in the first section: {sdp}");
    let group = sdp.lines().find_map(|l| l.strip_prefix("a=group:BUNDLE ")).expect("a BUNDLE group");
    assert_eq!(group.split(' ').map(str::trim).collect::<Vec<_>>(), mids(sdp), "every section in the bundle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_answer_is_followed_by_an_offer_of_the_same_tracks_in_new_sections() {
    let server = TestServer::start(sfu_config(TopologyMode::Sfu)).await;
    let mut a = Stepper::join(&server, "refused answer", 67).await;
    a.run_until("the answer", WAIT, |a| a.s.pending.is_none()).await;
    a.hold_offers = true;
    let (tx, _rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let ws = Client::connect(&server).await;
    // The SFU names a participant's tracks' stream after its peer id (the client's own streams
    // have random ids, which may begin with "p" too).
    let bot_msid = format!("a=msid:{} ", ws.id);
    let bot = tokio::spawn(media_participant(ws, "refused answer", 68, Link::udp().await, tx, stop));
    a.run_until("an offer of 68's tracks", MEDIA_WAIT, |a| !a.held.is_empty()).await;
    let (session, refused) = a.held.remove(0);
    assert_eq!(session, a.s.number, "the offer names the session");
    // An answer that fits no offer: ours, with its last media section cut off.
    let offer = SdpOffer::from_sdp_string(&refused).expect("SFU offer parses");
    let answer = a.s.rtc.sdp_api().accept_offer(offer).expect("client accepts the offer").to_sdp_string();
    let cut = answer[..answer.rfind("\r\nm=").expect("sections") + 2].to_string();
    let said = a.said.len();
    a.ws.send(&ClientMsg::Signal { to: sfu(), payload: description(SdpType::Answer, cut) }).await;
    a.run_until("the refusal and the next offer", WAIT, |a| !a.held.is_empty()).await;
    let error = a.said[said..].iter().find(|m| m["type"] == "error").expect("an error");
    assert_eq!(error["code"], "media_answer_refused", "{error:#?}");
    assert_eq!(error["session"].as_u64(), a.s.number, "{error:#?}");
    // The refused offer never took effect on the server: the next one carries the same tracks
    // (68's audio and video) in new sections, and the refused offer's sections are not in it.
    let (_, next) = a.held.remove(0);
    let (old, new) = (mids(&refused), mids(&next));
    assert_eq!(old.len(), 4, "our two sections and 68's two: {old:?}");
    assert_eq!(new.len(), 4, "{new:?}");
    assert_eq!(old[..2], new[..2], "our own sections stay");
    assert!(new[2..].iter().all(|m| !old.contains(m)), "68's tracks in new sections: {old:?} → {new:?}");
    assert_eq!(next.matches(&bot_msid).count(), 2, "68's two tracks: {next}");
    // A client that applied its answer (a browser always does) cannot take that offer…
    let taken = a.s.rtc.sdp_api().accept_offer(SdpOffer::from_sdp_string(&next).expect("parses"));
    assert!(taken.is_err(), "the client's connection and the SFU's view differ now");
    // …and starts over, as the document says.
    a.hold_offers = false;
    a.wait_restart_interval().await;
    a.restart().await;
    a.run_until("media after starting over", MEDIA_WAIT, flowing_again(67, 68, 25)).await;
    stop_bot(stop_tx, bot).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_sfu_lost_may_be_started_over_at_once() {
    let server = TestServer::start(sfu_config(TopologyMode::Sfu)).await;
    let mut a = Stepper::join(&server, "lost early", 69).await;
    // A second session whose DTLS the SFU rejects (the certificate is not the one the offer
    // announced): the SFU loses it within moments of its start, and says so.
    a.run_until("the answer", WAIT, |a| a.s.pending.is_none()).await;
    a.wait_restart_interval().await;
    a.s = Stepper::session().await;
    a.offer_with(|sdp| {
        let at = sdp.find("a=fingerprint:sha-256 ").expect("a fingerprint") + "a=fingerprint:sha-256 ".len();
        let flipped = if &sdp[at..at + 2] == "00" { "11" } else { "00" };
        format!("{}{flipped}{}", &sdp[..at], &sdp[at + 2..])
    })
    .await;
    a.run_until("the SFU gives the session up", MEDIA_WAIT, |a| a.restarts > 0).await;
    let lost = a.said.iter().find(|m| m["code"] == "media_failed").expect("media_failed");
    assert!(lost["session"].as_u64().is_some(), "it names the session: {lost:#?}");
    // The stepper started over at once (its rule): well within 2 s of the lost session's offer,
    // and still the SFU takes it.
    assert!(a.offered_at.elapsed() < Duration::from_millis(2000));
    let bot_ws = Client::connect(&server).await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let bot = tokio::spawn(media_participant(bot_ws, "lost early", 70, Link::udp().await, tx, stop));
    a.run_until("media on the new session", MEDIA_WAIT, flowing_again(69, 70, 25)).await;
    assert_eq!(a.errors().len(), 1, "{:?}", a.errors());
    stop_bot(stop_tx, bot).await;
    server.shutdown().await;
}

/// The next message as JSON (pings answered on the way).
async fn recv_json(c: &mut Client) -> serde_json::Value {
    loop {
        match tokio::time::timeout(WAIT, c.ws.next()).await.expect("a message in time") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("server JSON"),
            Some(Ok(Message::Ping(_))) => c.ws.flush().await.expect("pong"),
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_connection_does_not_skip_the_restart_interval() {
    let server = TestServer::start(sfu_config(TopologyMode::Sfu)).await;
    // An attacker's loop: connect, close, offer again at once. Each round needs the close to land
    // well within 2 s of the offer; a machine too busy for that tries again.
    for attempt in 1..=3 {
        let mut a = Stepper::join(&server, &format!("close loop {attempt}"), 71).await;
        a.run_until("connected", MEDIA_WAIT, |a| a.s.connected).await;
        a.close().await;
        until_sfu_holds(&server, 0, WAIT).await;
        let first = a.offered_at;
        a.restart().await;
        if first.elapsed() > Duration::from_millis(1500) {
            continue;
        }
        let said = a.said.len();
        a.run_until("an answer to the new offer", WAIT, |a| a.said.len() > said).await;
        let refused = &a.said[said];
        assert_eq!(refused["code"], "media_retry", "a closed session still counts: {refused:#?}");
        assert!(refused["retryAfterMs"].as_u64().is_some_and(|ms| (1..=2000).contains(&ms)), "{refused:#?}");
        assert!(refused.get("session").is_none(), "{refused:#?}");
        server.shutdown().await;
        return;
    }
    panic!("three attempts could not close and offer again within 1.5 s");
}

// ---- Recording (issue 18): the server records what it forwards. ----

/// A fresh directory for one test's recordings.
fn recordings_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("huddle-rec-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("make a recordings directory");
    dir
}

/// An SFU server recording into `dir`, without ffmpeg (so the raw tracks are what there is).
fn recording_config(dir: &std::path::Path) -> Config {
    Config {
        topology: TopologyMode::Sfu,
        recordings_dir: Some(dir.to_path_buf()),
        ffmpeg: Some("/nonexistent/ffmpeg".into()),
        ..Config::default()
    }
}

/// The next error, skipping other messages.
async fn next_error(c: &mut Client) -> ErrorCode {
    until(c, "an error", |m| match m {
        ServerMsg::Error { code, .. } => Some(code),
        _ => None,
    })
    .await
}

/// The next message that `pick` takes, skipping the others.
async fn until<T>(c: &mut Client, what: &str, mut pick: impl FnMut(ServerMsg) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + MEDIA_WAIT;
    loop {
        let msg =
            tokio::time::timeout_at(deadline, c.recv()).await.unwrap_or_else(|_| panic!("{} waited for {what}", c.id));
        if let Some(t) = pick(msg) {
            return t;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_records_the_sfu_room_into_one_file_per_track_and_a_manifest() {
    use huddle_protocol::{RecordingFileState, RecordingStopReason};
    let dir = recordings_dir("basic");
    let server = TestServer::start(recording_config(&dir)).await;
    let mut host = Client::connect(&server).await;
    host.join("rec room", "Dana").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for tag in [1u8, 2] {
        let ws = Client::connect(&server).await;
        tasks.push(tokio::spawn(media_participant(ws, "rec room", tag, Link::udp().await, tx.clone(), stop.clone())));
    }
    let mut got = HashSet::new();
    wait_for(&mut rx, &mut got, &everyone_sees_everyone(&[1, 2])).await;

    // A participant may not record, nor delete.
    let mut guest = Client::connect(&server).await;
    guest.join("rec room", "Guest").await;
    guest.send(&ClientMsg::Record).await;
    assert_eq!(next_error(&mut guest).await, ErrorCode::NotAllowed);

    host.send(&ClientMsg::Record).await;
    let info = until(&mut host, "recording", |m| match m {
        ServerMsg::Recording { recording: Some(info), .. } => Some(info),
        _ => None,
    })
    .await;
    assert_eq!(info.started_by.name, "Dana");
    let seen_by_guest = until(&mut guest, "recording", |m| match m {
        ServerMsg::Recording { recording, .. } => Some(recording),
        _ => None,
    })
    .await;
    assert_eq!(seen_by_guest.as_ref(), Some(&info), "everyone is told, with who started it");
    // Someone entering is told first, and enters only once they accept (`recording_ok`): then
    // `joined` says it too. The public list says so before anyone enters.
    let mut late = Client::connect(&server).await;
    late.send(&common::join("rec room", "Late")).await;
    assert_eq!(next_error(&mut late).await, ErrorCode::RecordingConsent);
    match late.join_recorded("rec room", "Late").await {
        ServerMsg::Joined { recording, .. } => assert_eq!(recording.as_ref(), Some(&info)),
        _ => unreachable!(),
    }
    let mut lobby = Client::connect(&server).await;
    lobby.send(&ClientMsg::WatchRooms).await;
    let listed = until(&mut lobby, "rooms", |m| match m {
        ServerMsg::Rooms { rooms } => rooms.into_iter().find(|r| r.name == "rec room"),
        _ => None,
    })
    .await;
    assert!(listed.recording, "the room list shows the recording");

    // Three seconds of media, then the host stops it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    host.send(&ClientMsg::StopRecording).await;
    let stopped = until(&mut host, "recording stopped", |m| match m {
        ServerMsg::Recording { recording: None, stopped } => stopped,
        _ => None,
    })
    .await;
    assert_eq!(stopped.reason, RecordingStopReason::Stopped);
    assert_eq!(stopped.by.map(|p| p.name).as_deref(), Some("Dana"));
    // Without ffmpeg the recording is kept raw; the host's list says so.
    let entry = until(&mut host, "recordings", |m| match m {
        ServerMsg::Recordings { recordings } => {
            recordings.into_iter().find(|r| r.id == info.id && r.state == RecordingFileState::Raw)
        }
        _ => None,
    })
    .await;
    assert!(entry.url.is_none(), "no single file without ffmpeg");
    assert!((2_500..=4_500).contains(&entry.duration_ms), "duration {}", entry.duration_ms);
    assert!(entry.bytes > 10_000, "{} bytes", entry.bytes);

    // The files: a manifest, and one file per published track, holding ~3 s of frames.
    let rec_dir = dir.join(&info.id);
    let manifest = huddle_record::Manifest::load(&rec_dir).expect("the manifest reads");
    assert_eq!(manifest.room, "rec room");
    assert_eq!(manifest.state, huddle_record::manifest::RecordingState::Stopped);
    assert_eq!(manifest.stopped_by.as_ref().map(|p| p.name.as_str()), Some("Dana"));
    assert_eq!(manifest.tracks.len(), 4, "two publishers, audio and video each: {:?}", manifest.tracks);
    let names: HashSet<&str> = manifest.participants.iter().map(|p| p.name.as_str()).collect();
    for n in ["Dana", "bot 1", "bot 2", "Guest", "Late"] {
        assert!(names.contains(n), "{n} is in the manifest's participants: {names:?}");
    }
    for t in &manifest.tracks {
        let scan = huddle_record::writer::scan(&rec_dir.join(&t.file)).expect("a track file reads");
        assert!(scan.complete, "{} was closed cleanly", t.file);
        let length = t.end.expect("ended") - t.start;
        assert!((2_300..=3_700).contains(&length), "{}: {length} ms", t.file);
        assert!(scan.frames >= 100, "{}: {} frames", t.file, scan.frames);
        if t.kind == huddle_record::manifest::TrackKind::Video {
            assert!(scan.keyframes >= 1, "video starts at a keyframe");
            assert_eq!((t.width, t.height), (Some(320), Some(240)), "the size from the first keyframe");
        }
        if let Some(probe) = ffprobe(&rec_dir.join(&t.file)) {
            let want = if t.kind == huddle_record::manifest::TrackKind::Audio { "opus" } else { "vp8" };
            assert_eq!(probe.0, want, "{}: ffprobe reads the codec", t.file);
        }
    }

    // Deleting: not another room's (nor a made-up) recording; the host's own goes with its files.
    host.send(&ClientMsg::DeleteRecording { id: "r1-00000000".into() }).await;
    assert_eq!(next_error(&mut host).await, ErrorCode::UnknownRecording);
    guest.send(&ClientMsg::DeleteRecording { id: info.id.clone() }).await;
    assert_eq!(next_error(&mut guest).await, ErrorCode::NotAllowed);
    // A made-up download link finds nothing.
    let forged = format!("/recordings/{}/composite.webm?exp=99999999999&sig=00112233445566778899aabbccddeeff", info.id);
    assert_eq!(common::http::http(server.addr, "GET", &forged, b"").await.status, 404);
    host.send(&ClientMsg::DeleteRecording { id: info.id.clone() }).await;
    until(&mut host, "the list without it", |m| match m {
        ServerMsg::Recordings { recordings } => recordings.iter().all(|r| r.id != info.id).then_some(()),
        _ => None,
    })
    .await;
    assert!(!rec_dir.exists(), "its files are gone");

    stop_all(stop_tx, tasks, server).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `(codec name, duration s)` as ffprobe reads them, when ffprobe is installed.
fn ffprobe(file: &std::path::Path) -> Option<(String, f64)> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_name:format=duration", "-of", "json"])
        .arg(file)
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let codec = v["streams"][0]["codec_name"].as_str()?.to_string();
    let duration = v["format"]["duration"].as_str().and_then(|d| d.parse().ok()).unwrap_or(0.0);
    Some((codec, duration))
}

#[tokio::test]
async fn recording_is_refused_where_it_cannot_happen() {
    // Recordings off.
    let dir = recordings_dir("off");
    let server = TestServer::start(Config { recordings: false, ..recording_config(&dir) }).await;
    let mut host = Client::connect(&server).await;
    host.join("r", "Dana").await;
    host.send(&ClientMsg::Record).await;
    host.expect_error(ErrorCode::RecordingUnavailable).await;
    server.shutdown().await;
    // No SFU: media never passes the server.
    let server = TestServer::start(Config { topology: TopologyMode::P2p, ..recording_config(&dir) }).await;
    let mut host = Client::connect(&server).await;
    host.join("r", "Dana").await;
    host.send(&ClientMsg::Record).await;
    host.expect_error(ErrorCode::RecordingUnavailable).await;
    server.shutdown().await;
    // The space for recordings is full.
    let server = TestServer::start(Config { recordings_max_bytes: 0, ..recording_config(&dir) }).await;
    let mut host = Client::connect(&server).await;
    host.join("r", "Dana").await;
    host.send(&ClientMsg::Record).await;
    host.expect_error(ErrorCode::RecordingStorageFull).await;
    // Stopping a room that does not record changes nothing.
    host.send(&ClientMsg::StopRecording).await;
    host.barrier().await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn recording_a_peer_to_peer_room_moves_it_to_the_sfu_first() {
    let dir = recordings_dir("p2p");
    let server = TestServer::start(Config { topology: TopologyMode::Auto, ..recording_config(&dir) }).await;
    let mut host = Client::connect(&server).await;
    match host.join("pair", "Dana").await {
        ServerMsg::Joined { topology, .. } => assert_eq!(topology, Topology::P2p),
        _ => unreachable!(),
    }
    let mut other = Client::connect(&server).await;
    other.join("pair", "Jun").await;
    host.send(&ClientMsg::Record).await;
    // The topology change comes first, then the recording.
    assert!(matches!(
        until(&mut other, "topology", |m| match m {
            ServerMsg::Topology { topology, reason } => {
                assert_eq!(reason, Some(huddle_protocol::TopologyReason::Recording), "the page can say why");
                Some(topology)
            }
            ServerMsg::Recording { .. } => panic!("recording announced before the move to the SFU"),
            _ => None,
        })
        .await,
        Topology::Sfu
    ));
    until(&mut other, "recording", |m| match m {
        ServerMsg::Recording { recording: Some(_), .. } => Some(()),
        _ => None,
    })
    .await;
    // The meeting ends: the recording stops with it.
    host.send(&ClientMsg::EndMeeting).await;
    until(&mut other, "ended", |m| match m {
        ServerMsg::Ended { .. } => Some(()),
        _ => None,
    })
    .await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_that_fills_the_quota_stops_and_says_so() {
    use huddle_protocol::RecordingStopReason;
    let dir = recordings_dir("quota");
    let server = TestServer::start(Config { recordings_max_bytes: 30_000, ..recording_config(&dir) }).await;
    let mut host = Client::connect(&server).await;
    host.join("full", "Dana").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let ws = Client::connect(&server).await;
    let mut tasks = vec![tokio::spawn(media_participant(ws, "full", 1, Link::udp().await, tx.clone(), stop.clone()))];
    let ws = Client::connect(&server).await;
    tasks.push(tokio::spawn(media_participant(ws, "full", 2, Link::udp().await, tx.clone(), stop.clone())));
    let mut got = HashSet::new();
    wait_for(&mut rx, &mut got, &everyone_sees_everyone(&[1, 2])).await;
    host.send(&ClientMsg::Record).await;
    // ~30 kB of video and audio is about a second: then it stops by itself.
    let stopped = until(&mut host, "recording stopped", |m| match m {
        ServerMsg::Recording { recording: None, stopped } => stopped,
        _ => None,
    })
    .await;
    assert_eq!(stopped.reason, RecordingStopReason::StorageFull);
    assert!(stopped.by.is_none());
    // A new one is refused while the space is full; the call goes on.
    host.send(&ClientMsg::Record).await;
    assert_eq!(next_error(&mut host).await, ErrorCode::RecordingStorageFull);
    let before = saw(1, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(saw(1, 2) > before, "media flows on");
    stop_all(stop_tx, tasks, server).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_that_reaches_the_time_limit_stops_and_says_so_and_keeps_what_it_recorded() {
    use huddle_protocol::{RecordingFileState, RecordingStopReason};
    let dir = recordings_dir("time-limit");
    // (`--recording-max-minutes` is at least 1; the configuration itself takes any length.)
    let limit = Duration::from_secs(2);
    let server = TestServer::start(Config { recording_max: limit, ..recording_config(&dir) }).await;
    let mut host = Client::connect(&server).await;
    host.join("long", "Dana").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for tag in [1u8, 2] {
        let ws = Client::connect(&server).await;
        tasks.push(tokio::spawn(media_participant(ws, "long", tag, Link::udp().await, tx.clone(), stop.clone())));
    }
    let mut got = HashSet::new();
    wait_for(&mut rx, &mut got, &everyone_sees_everyone(&[1, 2])).await;
    host.send(&ClientMsg::Record).await;
    let info = until(&mut host, "recording", |m| match m {
        ServerMsg::Recording { recording: Some(info), .. } => Some(info),
        _ => None,
    })
    .await;
    let stopped = until(&mut host, "recording stopped", |m| match m {
        ServerMsg::Recording { recording: None, stopped } => stopped,
        _ => None,
    })
    .await;
    assert_eq!(stopped.reason, RecordingStopReason::TimeLimit);
    assert!(stopped.by.is_none());
    let entry = until(&mut host, "recordings", |m| match m {
        ServerMsg::Recordings { recordings } => {
            recordings.into_iter().find(|r| r.id == info.id && r.state == RecordingFileState::Raw)
        }
        _ => None,
    })
    .await;
    // It stops at the first frame past the limit, give or take the stop's way to the SFU.
    let ms = u64::try_from(limit.as_millis()).expect("small");
    assert!((ms..ms + 1_500).contains(&entry.duration_ms), "{} ms", entry.duration_ms);
    let manifest = huddle_record::Manifest::load(&dir.join(&info.id)).expect("the manifest reads");
    assert_eq!(manifest.state, huddle_record::manifest::RecordingState::Stopped);
    assert_eq!(manifest.tracks.len(), 4, "{:?}", manifest.tracks);
    // The call goes on; a new recording may start (and is limited the same way).
    let before = saw(1, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(saw(1, 2) > before, "media flows on");
    host.send(&ClientMsg::Record).await;
    until(&mut host, "recording again", |m| matches!(m, ServerMsg::Recording { recording: Some(_), .. }).then_some(()))
        .await;
    stop_all(stop_tx, tasks, server).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_recording_cut_by_a_crash_is_listed_as_interrupted_at_the_next_start_and_its_files_mended() {
    use huddle_protocol::RecordingFileState;
    use huddle_record::manifest::{RecordingState, TrackKind};
    // What a server killed mid-recording leaves: a manifest that says "recording", a track file
    // whose last block was cut in the middle, and no end.
    let dir = recordings_dir("crash");
    let id = "r1796629712-0a1b2c3d";
    let rec = dir.join(id);
    std::fs::create_dir_all(&rec).expect("mkdir");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let info = huddle_protocol::RecordingInfo {
        id: id.into(),
        started_at: now_ms - 60_000,
        started_by: huddle_protocol::Person { id: PeerId("p1".into()), name: "Dana".into() },
    };
    let mut manifest = huddle_server::recording::first_manifest(&info, "crashed", &[]);
    let file = "p2-video-1.webm";
    let mut w = huddle_record::TrackWriter::create(&rec.join(file), huddle_record::Codec::Vp8).expect("create");
    for n in 0..100u64 {
        w.write_frame(n * 33, n % 30 == 0, &frame(MediaKind::Video, if n % 30 == 0 { 1 } else { 2 }, 7))
            .expect("write");
    }
    let full = w.finish().expect("finish");
    // Cut mid-block, as a kill -9 between two writes would.
    std::fs::OpenOptions::new().write(true).open(rec.join(file)).expect("open").set_len(full - 100).expect("cut");
    manifest.tracks.push(huddle_record::TrackInfo {
        file: file.into(),
        peer: "p2".into(),
        kind: TrackKind::Video,
        codec: huddle_record::Codec::Vp8,
        start: 0,
        end: None,
        bytes: 0,
        frames: 0,
        width: None,
        height: None,
    });
    manifest.save(&rec).expect("save");

    let server = TestServer::start(recording_config(&dir)).await;
    let mut host = Client::connect(&server).await;
    host.join("crashed", "Dana").await;
    // A host of the room learns of it on joining: interrupted, kept (no ffmpeg here).
    let listed = until(&mut host, "recordings", |m| match m {
        ServerMsg::Recordings { recordings } => recordings.into_iter().find(|r| r.id == id),
        _ => None,
    })
    .await;
    assert_eq!(listed.state, RecordingFileState::Interrupted);
    let mended = huddle_record::Manifest::load(&rec).expect("manifest");
    assert_eq!(mended.state, RecordingState::Interrupted);
    let track = &mended.tracks[0];
    assert!(track.end.is_some_and(|e| e >= 3_000), "the end is what was written: {:?}", track.end);
    let scan = huddle_record::writer::scan(&rec.join(file)).expect("reads");
    assert!(scan.complete && scan.frames >= 98, "the torn block is cut off, the rest kept: {scan:?}");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_that_cannot_be_written_stops_and_says_so_and_the_call_goes_on() {
    use huddle_protocol::RecordingStopReason;
    let dir = recordings_dir("unwritable");
    let server = TestServer::start(recording_config(&dir)).await;
    let mut host = Client::connect(&server).await;
    host.join("disk", "Dana").await;
    host.send(&ClientMsg::Record).await;
    let info = until(&mut host, "recording", |m| match m {
        ServerMsg::Recording { recording: Some(info), .. } => Some(info),
        _ => None,
    })
    .await;
    // The disk goes away under it (here: its directory), before anyone publishes.
    std::fs::remove_dir_all(dir.join(&info.id)).expect("remove the recording's directory");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for tag in [1u8, 2] {
        let ws = Client::connect(&server).await;
        tasks.push(tokio::spawn(media_participant(ws, "disk", tag, Link::udp().await, tx.clone(), stop.clone())));
    }
    let stopped = until(&mut host, "recording stopped", |m| match m {
        ServerMsg::Recording { recording: None, stopped } => stopped,
        _ => None,
    })
    .await;
    assert_eq!(stopped.reason, RecordingStopReason::WriteError);
    let mut got = HashSet::new();
    wait_for(&mut rx, &mut got, &everyone_sees_everyone(&[1, 2])).await;
    stop_all(stop_tx, tasks, server).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A signalling client that can take its session back after a restart: its secret, and how many
/// messages it received other than `welcome` and `bye` (docs/protocol.md, "Resuming a session").
struct Resumable {
    c: Client,
    secret: String,
    seen: u64,
}

impl Resumable {
    async fn connect(server: &TestServer) -> Resumable {
        Resumable::open(server.url()).await.0
    }

    /// Resumes the session on a new connection: the `welcome` names the same session, resumed.
    async fn resume(self, server: &TestServer) -> Resumable {
        let url = format!("{}?session={}&resume={}&seen={}", server.url(), self.c.id, self.secret, self.seen);
        let (again, resumed) = Resumable::open(url).await;
        assert!(resumed && again.c.id == self.c.id, "{} resumed as {} (resumed: {resumed})", self.c.id, again.c.id);
        Resumable { seen: self.seen, ..again }
    }

    /// A connection to `url`, and whether its `welcome` says it resumed a session.
    async fn open(url: String) -> (Resumable, bool) {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("handshake");
        let mut c = Client { ws, id: PeerId(String::new()) };
        let ServerMsg::Welcome { id, resume, resumed, .. } = c.recv().await else { panic!("welcome first") };
        c.id = id;
        (Resumable { c, secret: resume, seen: 0 }, resumed)
    }

    async fn recv(&mut self) -> ServerMsg {
        let m = self.c.recv().await;
        if !matches!(m, ServerMsg::Welcome { .. } | ServerMsg::Bye { .. }) {
            self.seen += 1;
        }
        m
    }

    /// [`until`], counting what it reads.
    async fn until<T>(&mut self, what: &str, mut pick: impl FnMut(ServerMsg) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + MEDIA_WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.recv())
                .await
                .unwrap_or_else(|_| panic!("{} waited for {what}", self.c.id));
            if let Some(t) = pick(msg) {
                return t;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_goes_on_over_a_graceful_restart_in_a_second_part() {
    use huddle_protocol::{RecordingFileState, RecordingStopReason};
    use huddle_record::manifest::{RecordingState, TrackKind};
    use huddle_record::Manifest;
    const ROOM: &str = "rec restart";
    const MEDIA: Duration = Duration::from_secs(2);
    let dir = recordings_dir("restart");
    let data = recordings_dir("restart-data");
    let config = || Config { data_dir: Some(data.clone()), ..recording_config(&dir) };
    let started = Instant::now();

    // Part 1: the host records two publishers.
    let server = TestServer::start(config()).await;
    let addr = server.addr;
    let mut host = Resumable::connect(&server).await;
    host.c.send(&join(ROOM, "Dana")).await;
    host.until("joined", |m| matches!(m, ServerMsg::Joined { .. }).then_some(())).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut publishers = Vec::new();
    for tag in [1u8, 2] {
        let ws = Client::connect(&server).await;
        publishers.push(ws.id.0.clone());
        tasks.push(tokio::spawn(media_participant(ws, ROOM, tag, Link::udp().await, tx.clone(), stop.clone())));
    }
    let mut got = HashSet::new();
    wait_for(&mut rx, &mut got, &everyone_sees_everyone(&[1, 2])).await;
    let asked = Instant::now();
    host.c.send(&ClientMsg::Record).await;
    let info = host
        .until("recording", |m| match m {
            ServerMsg::Recording { recording: Some(info), .. } => Some(info),
            _ => None,
        })
        .await;
    tokio::time::sleep(MEDIA).await;

    // The publishers leave; the server stops gracefully, saving the room with its recording.
    stop_tx.send(true).expect("participants listen");
    for t in tasks {
        let mut ws = tokio::time::timeout(WAIT, t).await.expect("participant stops").expect("no panic");
        ws.send(&ClientMsg::Leave).await;
    }
    for _ in 0..2 {
        host.until("peer left", |m| matches!(m, ServerMsg::PeerLeft { .. }).then_some(())).await;
    }
    host.c.barrier().await;
    host.seen += 1;
    let stopping = tokio::spawn(server.shutdown());
    host.until("bye", |m| matches!(m, ServerMsg::Bye { .. }).then_some(())).await;
    stopping.await.expect("shut down");
    let rec = dir.join(&info.id);
    // A server that stopped has closed its recordings' files and manifests (it waits for its
    // writer threads).
    let one = Manifest::load(&rec).expect("part 1's manifest reads");
    assert_eq!(one.state, RecordingState::Continued, "part 1 ends as continued");
    assert_eq!((one.id.as_str(), one.part), (info.id.as_str(), 1));
    assert_eq!(one.tracks.len(), 4, "two publishers, audio and video each: {:?}", one.tracks);
    assert!(one.tracks.iter().all(|t| t.end.is_some()), "every track of part 1 ended: {:?}", one.tracks);

    // Part 2: the same port and data directory. The host takes its session back; two others
    // come and publish; the host stops the recording.
    let server = TestServer::start_on(config(), addr).await;
    let mut host = host.resume(&server).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for tag in [3u8, 4] {
        let ws = Client::connect(&server).await;
        publishers.push(ws.id.0.clone());
        tasks.push(tokio::spawn(media_participant(ws, ROOM, tag, Link::udp().await, tx.clone(), stop.clone())));
    }
    let mut got = HashSet::new();
    wait_for(&mut rx, &mut got, &everyone_sees_everyone(&[3, 4])).await;
    tokio::time::sleep(MEDIA).await;
    host.c.send(&ClientMsg::StopRecording).await;
    let stopped = host
        .until("recording stopped", |m| match m {
            ServerMsg::Recording { recording: None, stopped } => stopped,
            _ => None,
        })
        .await;
    let wall = asked.elapsed();
    assert_eq!(stopped.reason, RecordingStopReason::Stopped);
    assert_eq!(stopped.by.map(|p| p.name).as_deref(), Some("Dana"));
    let listed = host
        .until("recordings", |m| match m {
            ServerMsg::Recordings { recordings } => {
                recordings.iter().any(|r| r.id == info.id && r.state == RecordingFileState::Raw).then_some(recordings)
            }
            _ => None,
        })
        .await;
    assert_eq!(listed.len(), 1, "one recording, not one per part: {listed:?}");
    let entry = &listed[0];

    // On disk: two parts, on their own clocks, joined into one.
    let parts = Manifest::load_parts(&rec).expect("the parts read");
    assert_eq!(parts.iter().map(|m| m.part).collect::<Vec<_>>(), vec![1, 2]);
    let two = &parts[1];
    assert_eq!(parts[0].state, RecordingState::Continued);
    assert_eq!(two.state, RecordingState::Stopped);
    assert_eq!(two.id, info.id);
    assert_eq!(two.stopped_by.as_ref().map(|p| p.name.as_str()), Some("Dana"));
    assert!(two.started_at >= one.stopped_at.expect("part 1 has its stop"), "part 2 starts after part 1 stopped");
    assert!(rec.join(huddle_record::manifest::manifest_file(2)).is_file());
    assert_eq!(two.tracks.len(), 4, "two publishers, audio and video each: {:?}", two.tracks);
    for (part, m) in parts.iter().enumerate() {
        for t in &m.tracks {
            let prefix = huddle_record::manifest::track_prefix(part as u32 + 1);
            assert!(t.file.starts_with(&prefix) && (part > 0 || !t.file.starts_with("part")), "{}", t.file);
            let scan = huddle_record::writer::scan(&rec.join(&t.file)).expect("a track file reads");
            assert!(scan.complete, "{} was closed cleanly", t.file);
            assert!(scan.frames >= 50, "{}: {} frames", t.file, scan.frames);
            assert!(t.end.is_some(), "{} ended", t.file);
            if t.kind == TrackKind::Video {
                assert!(scan.keyframes >= 1, "{}: video starts at a keyframe", t.file);
                assert_eq!((t.width, t.height), (Some(320), Some(240)), "{}: the size from the first keyframe", t.file);
            }
        }
    }
    let joined = Manifest::joined(&parts).expect("joins");
    let peers: HashSet<&str> = joined.tracks.iter().map(|t| t.peer.as_str()).collect();
    assert_eq!(peers, publishers.iter().map(String::as_str).collect(), "the tracks of all four publishers");
    let (first, second) = joined.tracks.split_at(one.tracks.len());
    let part1_end = first.iter().filter_map(|t| t.end).max().expect("ends");
    let part2_start = second.iter().map(|t| t.start).min().expect("starts");
    assert!(part2_start > part1_end, "part 2 ({part2_start} ms) after part 1 ({part1_end} ms) on the joined clock");
    // The store lists the joined length: both parts' media (and the restart between), no more
    // than from asking to record to being told it stopped.
    assert_eq!(entry.duration_ms, joined.duration_ms());
    let media_ms = parts.iter().map(|m| m.duration_ms()).sum::<u64>();
    assert!(media_ms >= 2 * MEDIA.as_millis() as u64, "{media_ms} ms of parts");
    assert!(entry.duration_ms >= media_ms, "{} ms listed, {media_ms} ms in the parts", entry.duration_ms);
    assert!(entry.duration_ms <= wall.as_millis() as u64 + 1000, "{} ms listed in {wall:?}", entry.duration_ms);
    eprintln!(
        "listed {} ms: parts {} + {} ms; {wall:?} between record and stop",
        entry.duration_ms,
        one.duration_ms(),
        two.duration_ms()
    );

    stop_all(stop_tx, tasks, server).await;
    eprintln!("the test took {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&data);
}

/// Waits until the room's settings, as the host is told them, satisfy `ok`.
async fn room_settings(host: &mut Client, ok: impl Fn(&huddle_protocol::RoomSettings) -> bool) {
    until(host, "room settings", |m| match m {
        ServerMsg::RoomSettings { settings } => ok(&settings).then_some(()),
        _ => None,
    })
    .await;
}

/// `join` of `room` with a password, accepting the recording or not.
fn join_with(room: &str, password: Option<&str>, recording_ok: bool) -> ClientMsg {
    let ClientMsg::Join { protocol, room, name, audio, video, token, .. } = join(room, "Stranger") else {
        unreachable!()
    };
    ClientMsg::Join { protocol, room, name, audio, video, password: password.map(str::to_string), token, recording_ok }
}

/// Consent before entering a recording room is asked only of someone who could enter: a room's
/// lock, password and bans answer first, so nobody else learns that it records (and an unlisted
/// room's state stays its own). Someone who accepts enters; the waiting room says it itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_to_a_recording_is_asked_only_of_someone_who_could_enter() {
    let dir = recordings_dir("consent");
    let server = TestServer::start(recording_config(&dir)).await;
    let mut host = Client::connect(&server).await;
    host.join("secret plans", "Dana").await;
    let settings = |locked, waiting_room, password: Option<&str>| ClientMsg::Settings {
        locked,
        waiting_room,
        allow_unmute: None,
        password: password.map(str::to_string),
        listed: Some(false),
    };
    host.send(&settings(None, None, Some("hunter22"))).await;
    // (The password is hashed off the hub's task: it is on once the room's settings say so.)
    until(&mut host, "the password on", |m| match m {
        ServerMsg::RoomSettings { settings } => settings.has_password.then_some(()),
        _ => None,
    })
    .await;
    host.send(&ClientMsg::Record).await;
    let info = until(&mut host, "recording", |m| match m {
        ServerMsg::Recording { recording: Some(info), .. } => Some(info),
        _ => None,
    })
    .await;

    let mut stranger = Client::connect(&server).await;
    // Without the password, or with a wrong one, the answer is about the password, even when the
    // stranger says it accepts a recording.
    for (password, ok, code) in [
        (None, false, ErrorCode::PasswordRequired),
        (None, true, ErrorCode::PasswordRequired),
        (Some("guess"), true, ErrorCode::WrongPassword),
    ] {
        stranger.send(&join_with("secret plans", password, ok)).await;
        assert_eq!(next_error(&mut stranger).await, code, "{password:?} {ok}");
    }
    // With the password: told it records, and not let in until accepting.
    stranger.send(&join_with("secret plans", Some("hunter22"), false)).await;
    assert_eq!(next_error(&mut stranger).await, ErrorCode::RecordingConsent);
    // Locked meanwhile: the lock answers, not the recording.
    host.send(&settings(Some(true), None, None)).await;
    room_settings(&mut host, |s| s.locked).await;
    stranger.send(&join_with("secret plans", Some("hunter22"), true)).await;
    assert_eq!(next_error(&mut stranger).await, ErrorCode::RoomLocked);
    host.send(&settings(Some(false), None, None)).await;
    room_settings(&mut host, |s| !s.locked).await;
    stranger.send(&join_with("secret plans", Some("hunter22"), true)).await;
    match stranger.recv().await {
        ServerMsg::Joined { recording, .. } => assert_eq!(recording, Some(info.clone())),
        other => panic!("expected joined, got {other:?}"),
    }
    stranger.send(&ClientMsg::Leave).await;

    // With a waiting room, a knock is let in line and told there (no consent step before it).
    host.send(&settings(None, Some(true), None)).await;
    room_settings(&mut host, |s| s.waiting_room).await;
    let mut knocker = Client::connect(&server).await;
    knocker.send(&join_with("secret plans", Some("hunter22"), false)).await;
    let waiting = until(&mut knocker, "waiting", |m| match m {
        ServerMsg::Waiting { recording, .. } => Some(recording),
        _ => None,
    })
    .await;
    assert!(waiting, "the waiting room says the meeting is being recorded");

    // Once it stopped, nobody is asked.
    host.send(&ClientMsg::StopRecording).await;
    until(&mut host, "stopped", |m| matches!(m, ServerMsg::Recording { recording: None, .. }).then_some(())).await;
    host.send(&settings(None, Some(false), None)).await;
    room_settings(&mut host, |s| !s.waiting_room).await;
    let mut later = Client::connect(&server).await;
    later.send(&join_with("secret plans", Some("hunter22"), false)).await;
    match later.recv().await {
        ServerMsg::Joined { recording, .. } => assert_eq!(recording, None),
        other => panic!("expected joined, got {other:?}"),
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
