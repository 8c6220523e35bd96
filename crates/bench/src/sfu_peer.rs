//! One synthetic participant of the `sfu` benchmark: a str0m client that joins through the real
//! signalling (WebSocket `join`, then SDP with the reserved peer `sfu`), connects to the SFU over
//! its own UDP socket on 127.0.0.1, and either publishes (audio, and video in up to three simulcast
//! layers, and receives the other publishers like any meeting participant) or only receives (a
//! data-channel-only offer, like a page with neither microphone nor camera).
//!
//! Every frame a publisher writes starts with a codec-looking prefix (an Opus TOC byte, or a
//! VP8 frame tag: str0m's VP8 depacketizer and the SFU's simulcast switching read its keyframe
//! bit) followed by a [`Stamp`]: who sent it, which track, which measurement window, a sequence
//! number and the send time. The SFU forwards frames byte for byte, so receivers read the stamp
//! back from each frame they get.

use crate::sfu::{Live, Plan, MAX_WINDOWS};
use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use huddle_protocol::{
    ClientMsg, ErrorCode, PeerId, RecordingStopReason, SdpType, ServerMsg, SessionDescription, SignalPayload, Topology,
    VideoQuality, PROTOCOL_VERSION, SFU_PEER_ID,
};
use huddle_sfu::str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use huddle_sfu::str0m::format::Codec;
use huddle_sfu::str0m::media::{Direction, MediaKind, MediaTime, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use huddle_sfu::str0m::net::{Protocol, Receive};
use huddle_sfu::str0m::{Candidate, Event as RtcEvent, Input as RtcInput, Output as RtcOutput, Rtc};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Marks a benchmark frame.
const MAGIC: [u8; 4] = *b"HUDB";
/// Bytes of a [`Stamp`] in a frame.
const STAMP_LEN: usize = 20;
/// The start of a VP8 key frame (frame tag with the key-frame bit clear, start code, 320×240).
/// Delta frames use the same bytes with the bit set (0x11): the SFU only reads that bit.
const VP8_PREFIX: [u8; 10] = [0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00];
/// Opus TOC byte: CELT-only, fullband, 20 ms, one frame.
const OPUS_TOC: u8 = 0xf8;
/// Audio frame interval (Opus's usual 20 ms).
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// Longest a participant sleeps without looking at the stop flag.
const MAX_SLEEP: Duration = Duration::from_millis(50);
/// A send more than this late is skipped (counted in `late_frames`) instead of caught up.
const MAX_LAG: Duration = Duration::from_millis(100);
/// Datagrams taken from the socket per wake-up before timers get a look in.
const RECV_BATCH: usize = 64;
/// Receive buffer asked for each participant's socket (the kernel caps it at `net.core.rmem_max`):
/// room for a few hundred datagrams, so that a moment when the load generator's thread is not
/// running does not show up as loss of the SFU.
const RECV_BUFFER_BYTES: usize = 1 << 20;
/// New sessions a participant may start after its session with the SFU failed.
const MAX_RESTARTS: u32 = 5;
/// The server refuses a new session sooner than 2 s after the last (a little more, for safety).
const RESTART_INTERVAL: Duration = Duration::from_millis(2100);
/// Problems shown on stderr; more are only counted.
const REPORT_MAX: u64 = 10;

/// What every benchmark frame carries after its codec prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the publisher (0-based).
    pub publisher: u16,
    /// 0 audio, 1 + layer index for video (1 is the lowest simulcast layer).
    pub kind: u8,
    /// Measurement window the frame was sent in (1-based; 0: not measured).
    pub window: u8,
    /// Per publisher: audio frames, or video frame times (every layer's frame of one moment has
    /// the same number).
    pub seq: u32,
    /// Nanoseconds since [`Plan::epoch`].
    pub send_ns: u64,
}

impl Stamp {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.publisher.to_le_bytes());
        out.push(self.kind);
        out.push(self.window);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.send_ns.to_le_bytes());
    }

    /// The stamp in a frame written by [`audio_frame`] or [`video_frame`].
    pub fn read(frame: &[u8]) -> Option<Stamp> {
        let at = |offset: usize| -> Option<Stamp> {
            let s = frame.get(offset..offset + STAMP_LEN)?;
            if s[..4] != MAGIC {
                return None;
            }
            Some(Stamp {
                publisher: u16::from_le_bytes([s[4], s[5]]),
                kind: s[6],
                window: s[7],
                seq: u32::from_le_bytes(s[8..12].try_into().ok()?),
                send_ns: u64::from_le_bytes(s[12..20].try_into().ok()?),
            })
        };
        at(1).or_else(|| at(VP8_PREFIX.len()))
    }
}

/// An Opus-looking frame of `size` bytes (at least the prefix and stamp).
pub fn audio_frame(stamp: &Stamp, size: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(size.max(1 + STAMP_LEN));
    f.push(OPUS_TOC);
    stamp.write(&mut f);
    f.resize(size.max(f.len()), 0x55);
    f
}

/// A VP8-looking frame of `size` bytes (at least the prefix and stamp).
pub fn video_frame(stamp: &Stamp, key: bool, size: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(size.max(VP8_PREFIX.len() + STAMP_LEN));
    f.extend_from_slice(&VP8_PREFIX);
    if !key {
        f[0] |= 0x01;
    }
    stamp.write(&mut f);
    f.resize(size.max(f.len()), (stamp.seq % 251) as u8);
    f
}

/// An RTP (not RTCP, STUN or DTLS) datagram. The RTP header stays in the clear under SRTP.
pub fn is_rtp(b: &[u8]) -> bool {
    // RFC 5761: RTCP packet types 192..=223 in the second byte; RTP version 2.
    b.len() >= 12 && b[0] >> 6 == 2 && !(192..=223).contains(&b[1])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher(usize),
    Subscriber(usize),
}

impl Role {
    pub fn name(&self) -> String {
        match self {
            Role::Publisher(i) => format!("pub-{i}"),
            Role::Subscriber(i) => format!("sub-{i}"),
        }
    }
}

/// What a participant hands back when it stops.
#[derive(Default)]
pub struct PeerResult {
    /// Added latency of every measured frame it received (µs), per window (index 0 unused).
    pub latencies: Vec<Vec<u32>>,
    /// The same, of audio frames only.
    pub audio_latencies: Vec<Vec<u32>>,
}

type Ws = WebSocketStream<TcpStream>;

/// Runs one participant until [`Live::stop`]. Errors are counted in [`Live::failed`] and shown.
pub async fn run(role: Role, plan: Arc<Plan>, live: Arc<Live>) -> PeerResult {
    match participant(role, &plan, &live).await {
        Ok(r) => r,
        Err(e) => {
            live.failed.fetch_add(1, Relaxed);
            note(&live, &role.name(), format!("{e:#}"));
            PeerResult::default()
        }
    }
}

fn note(live: &Live, who: &str, what: impl std::fmt::Display) {
    let n = live.reported.fetch_add(1, Relaxed);
    if n < REPORT_MAX {
        eprintln!("{who}: {what}");
    } else if n == REPORT_MAX {
        eprintln!("(further participant problems are counted, not shown)");
    }
}

fn text(msg: &ClientMsg) -> anyhow::Result<Message> {
    Ok(Message::text(serde_json::to_string(msg)?))
}

fn sdp_msg(kind: SdpType, sdp: String) -> ClientMsg {
    ClientMsg::Signal {
        to: PeerId(SFU_PEER_ID.to_string()),
        payload: SignalPayload::Description { description: SessionDescription { kind, sdp } },
    }
}

/// The next protocol message (pings are answered on the way).
async fn next_msg(ws: &mut Ws) -> anyhow::Result<ServerMsg> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).context("unreadable server message"),
            Some(Ok(Message::Ping(_))) => ws.flush().await?,
            Some(Ok(Message::Close(_))) | None => bail!("the server closed the connection"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("WebSocket read"),
        }
    }
}

/// Connects, joins the benchmark room and waits for `joined` (the room must be an `sfu` room).
/// Returns the socket, the publishers already in the room, and whether this participant hosts
/// the room (whoever opens a room hosts it).
async fn join(plan: &Plan, role: Role) -> anyhow::Result<(Ws, Vec<(PeerId, String)>, bool)> {
    let tcp = TcpStream::connect(("127.0.0.1", plan.port)).await.context("TCP connect")?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://127.0.0.1:{}/ws", plan.port);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.context("WebSocket handshake")?;
    let publisher = matches!(role, Role::Publisher(_));
    let join = ClientMsg::Join {
        recording_ok: false,
        protocol: PROTOCOL_VERSION,
        room: plan.room.clone(),
        name: role.name(),
        audio: publisher && plan.audio,
        video: publisher,
        password: None,
        token: None,
    };
    ws.send(text(&join)?).await.context("sending join")?;
    loop {
        match next_msg(&mut ws).await? {
            ServerMsg::Joined { topology: Topology::Sfu, peers, you, .. } => {
                let host = you.role == huddle_protocol::Role::Host;
                return Ok((ws, peers.into_iter().map(|p| (p.id, p.name)).collect(), host));
            }
            ServerMsg::Joined { topology, .. } => bail!("the room's topology is {topology:?}, not sfu"),
            ServerMsg::Error { code, message, .. } => bail!("join refused: {code} ({message})"),
            ServerMsg::Bye { reason } => bail!("bye: {reason:?}"),
            _ => {}
        }
    }
}

struct Participant<'a> {
    role: Role,
    plan: &'a Plan,
    live: &'a Live,
    /// The publishers in the room, whose video quality it asks for (`--quality`).
    publishers_seen: Vec<PeerId>,
    rtc: Rtc,
    start: Instant,
    /// When the current session's offer went out.
    session_started: Instant,
    /// False from a failure of the session until the next one starts.
    alive: bool,
    /// When to start a new session.
    restart_at: Option<Instant>,
    restarts: u32,
    local: SocketAddr,
    socket: UdpSocket,
    next_timeout: Instant,
    connected: bool,
    ever_connected: bool,
    pending: Option<SdpPendingOffer>,
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
    rids: Vec<Rid>,
    opus_pt: Option<Pt>,
    vp8_pt: Option<Pt>,
    /// Per video layer: the next frame is a keyframe (asked for, or due).
    force_key: Vec<bool>,
    last_key: Instant,
    next_audio: Instant,
    next_video: Instant,
    seq_audio: u32,
    seq_video: u32,
    /// Per publisher: bit 0 audio seen, bit 1 wanted video layer seen (for readiness).
    seen: Vec<u8>,
    /// Per publisher: audio and video frames received (video by frame time, whatever the layer).
    arrivals: Vec<[Arrivals; 2]>,
    ready: bool,
    result: PeerResult,
    /// It hosts its room: it starts and stops the room's recording as [`Live::record`] says.
    host: bool,
    /// What it last asked the server (`record` or `stop_recording`).
    record_asked: bool,
    /// What the server last said (`recording`).
    recording: bool,
}

/// A str0m session with the SFU, and our offer for it.
struct Session {
    rtc: Rtc,
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
    pending: SdpPendingOffer,
    offer: String,
}

/// A new session: audio and (simulcast) video to send for a publisher, a data channel only for a
/// subscriber (an offer needs something, and a data channel adds no track for the SFU to forward
/// to everyone else).
fn new_session(role: Role, plan: &Plan, local: SocketAddr, rids: &[Rid]) -> anyhow::Result<Session> {
    let mut rtc = Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, Protocol::Udp).map_err(|e| anyhow!("candidate: {e}"))?);
    let mut change = rtc.sdp_api();
    let (mut audio_mid, mut video_mid) = (None, None);
    match role {
        Role::Publisher(_) => {
            if plan.audio {
                audio_mid = Some(change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
            }
            let simulcast = (!rids.is_empty()).then(|| {
                let mut s = Simulcast::new();
                for rid in rids {
                    s.add_send_layer(SimulcastLayer::new(rid));
                }
                s
            });
            video_mid = Some(change.add_media(MediaKind::Video, Direction::SendOnly, None, None, simulcast));
        }
        Role::Subscriber(_) => {
            change.add_channel("bench".into());
        }
    }
    let (offer, pending) = change.apply().ok_or_else(|| anyhow!("str0m made no offer"))?;
    Ok(Session { rtc, audio_mid, video_mid, pending, offer: offer.to_sdp_string() })
}

async fn participant(role: Role, plan: &Plan, live: &Live) -> anyhow::Result<PeerResult> {
    let (mut ws, peers, host) =
        tokio::time::timeout(plan.connect_timeout, join(plan, role)).await.map_err(|_| anyhow!("join timed out"))??;
    live.joined.fetch_add(1, Relaxed);
    if host {
        live.hosts.fetch_add(1, Relaxed);
    }
    // Everyone receives the publishers' video at the quality asked for (`high` is the default),
    // said once the SFU has answered (before, it does not know us yet and drops it, as a page
    // would find).
    let publishers_seen: Vec<PeerId> =
        peers.iter().filter(|(_, name)| name.starts_with("pub-")).map(|(id, _)| id.clone()).collect();

    let std_socket = std::net::UdpSocket::bind(("127.0.0.1", 0)).context("binding a UDP socket")?;
    std_socket.set_nonblocking(true)?;
    set_recv_buffer(&std_socket, RECV_BUFFER_BYTES);
    let socket = UdpSocket::from_std(std_socket)?;
    let local = socket.local_addr()?;
    let rids: Vec<Rid> = plan.layers.iter().filter_map(|l| l.rid.as_deref()).map(Rid::from).collect();
    let session = new_session(role, plan, local, &rids)?;
    ws.send(text(&sdp_msg(SdpType::Offer, session.offer))?).await?;

    let start = Instant::now();
    let layers = plan.layers.len();
    let mut p = Participant {
        role,
        plan,
        live,
        publishers_seen,
        rtc: session.rtc,
        start,
        session_started: start,
        alive: true,
        restart_at: None,
        restarts: 0,
        local,
        socket,
        next_timeout: start,
        connected: false,
        ever_connected: false,
        pending: Some(session.pending),
        audio_mid: session.audio_mid,
        video_mid: session.video_mid,
        rids,
        opus_pt: None,
        vp8_pt: None,
        force_key: vec![true; layers],
        last_key: start,
        next_audio: start,
        next_video: start,
        seq_audio: 0,
        seq_video: 0,
        seen: vec![0; plan.publishers],
        arrivals: vec![[Arrivals::default(); 2]; plan.publishers],
        ready: false,
        result: PeerResult {
            latencies: vec![Vec::new(); MAX_WINDOWS + 1],
            audio_latencies: vec![Vec::new(); MAX_WINDOWS + 1],
        },
        host,
        record_asked: false,
        recording: false,
    };
    p.check_ready();
    if let Err(e) = p.drain() {
        p.media_failed(e)?;
    }
    p.run(&mut ws).await?;
    let _ = tokio::time::timeout(Duration::from_millis(200), ws.send(text(&ClientMsg::Leave)?)).await;
    Ok(p.result)
}

impl Participant<'_> {
    fn publisher(&self) -> Option<usize> {
        match self.role {
            Role::Publisher(i) => Some(i),
            Role::Subscriber(_) => None,
        }
    }

    /// The session with the SFU failed (str0m gave up, or the server said `media_failed`):
    /// start a new one, as a page does, once the server's restart interval has passed. Gives up
    /// after [`MAX_RESTARTS`].
    fn media_failed(&mut self, e: anyhow::Error) -> anyhow::Result<()> {
        if !self.alive {
            return Ok(());
        }
        if self.restarts >= MAX_RESTARTS {
            return Err(e.context(format!("giving up after {MAX_RESTARTS} new sessions")));
        }
        note(self.live, &self.role.name(), format!("{e:#}; starting a new session"));
        self.restarts += 1;
        self.live.restarts.fetch_add(1, Relaxed);
        self.alive = false;
        self.connected = false;
        self.restart_at = Some((self.session_started + RESTART_INTERVAL).max(Instant::now()));
        Ok(())
    }

    async fn restart(&mut self, ws: &mut Ws) -> anyhow::Result<()> {
        let session = new_session(self.role, self.plan, self.local, &self.rids)?;
        ws.send(text(&sdp_msg(SdpType::Offer, session.offer))?).await?;
        self.rtc = session.rtc;
        self.audio_mid = session.audio_mid;
        self.video_mid = session.video_mid;
        self.pending = Some(session.pending);
        self.session_started = Instant::now();
        self.next_timeout = self.session_started;
        self.alive = true;
        self.restart_at = None;
        self.force_key.iter_mut().for_each(|k| *k = true);
        if let Err(e) = self.drain() {
            self.media_failed(e)?;
        }
        Ok(())
    }

    /// Timers: str0m's, and the frames due.
    fn tick(&mut self, now: Instant) -> anyhow::Result<()> {
        if now >= self.next_timeout {
            self.rtc.handle_input(RtcInput::Timeout(now)).map_err(|e| anyhow!("str0m timeout: {e}"))?;
            self.drain()?;
        }
        self.publish(now)?;
        if !self.rtc.is_alive() {
            bail!("the SFU connection closed");
        }
        Ok(())
    }

    async fn run(&mut self, ws: &mut Ws) -> anyhow::Result<()> {
        let mut buf = vec![0u8; 2048];
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        loop {
            if self.live.stop.load(Relaxed) {
                return Ok(());
            }
            let now = Instant::now();
            if self.restart_at.is_some_and(|t| now >= t) {
                self.restart(ws).await?;
            }
            let record = self.live.record.load(Relaxed);
            if self.host && record != self.record_asked {
                self.record_asked = record;
                let msg = if record { ClientMsg::Record } else { ClientMsg::StopRecording };
                ws.send(text(&msg)?).await.context("sending record")?;
            }
            if self.alive {
                if let Err(e) = self.tick(now) {
                    self.media_failed(e)?;
                }
            }
            let mut wake = now + MAX_SLEEP;
            if self.alive {
                wake = wake.min(self.next_timeout);
            }
            if let Some(t) = self.restart_at {
                wake = wake.min(t);
            }
            if self.connected && self.publisher().is_some() {
                if self.audio_mid.is_some() {
                    wake = wake.min(self.next_audio);
                }
                wake = wake.min(self.next_video);
            }
            sleep.as_mut().reset(tokio::time::Instant::from_std(wake.max(now)));
            tokio::select! {
                biased;
                r = self.socket.readable() => {
                    r.context("UDP socket")?;
                    for _ in 0..RECV_BATCH {
                        match self.socket.try_recv_from(&mut buf) {
                            Ok((n, source)) => {
                                if !self.alive {
                                    continue;
                                }
                                if let Err(e) = self.datagram(&buf[..n], source) {
                                    self.media_failed(e)?;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e).context("UDP receive"),
                        }
                    }
                }
                msg = next_msg(ws) => self.server_msg(ws, msg?).await?,
                _ = &mut sleep => {}
            }
        }
    }

    async fn server_msg(&mut self, ws: &mut Ws, msg: ServerMsg) -> anyhow::Result<()> {
        match msg {
            ServerMsg::Signal { from, payload: SignalPayload::Description { description }, .. }
                if from.0 == SFU_PEER_ID && self.alive =>
            {
                if let Err(e) = self.description(ws, description).await {
                    self.media_failed(e)?;
                }
            }
            ServerMsg::PeerJoined { peer } if peer.name.starts_with("pub-") => {
                // Once the SFU has answered, say it now; else with the answer.
                if self.pending.is_none() {
                    self.ask_quality(ws, &peer.id).await?;
                }
                self.publishers_seen.push(peer.id);
            }
            // Everyone hears it; the host counts it for its room.
            ServerMsg::Recording { recording, stopped } if self.host => {
                let on = recording.is_some();
                if on && !self.recording {
                    self.live.recording_rooms.fetch_add(1, Relaxed);
                } else if !on && self.recording {
                    self.live.recording_rooms.fetch_sub(1, Relaxed);
                    if let Some(s) = stopped.filter(|s| s.reason != RecordingStopReason::Stopped) {
                        self.live.recording_stopped_early.fetch_add(1, Relaxed);
                        note(self.live, &self.role.name(), format!("the recording stopped: {:?}", s.reason));
                    }
                }
                self.recording = on;
            }
            ServerMsg::Error {
                code: code @ (ErrorCode::RecordingUnavailable | ErrorCode::RecordingStorageFull | ErrorCode::NotAllowed),
                message,
                ..
            } if self.host => {
                self.live.record_refused.fetch_add(1, Relaxed);
                note(self.live, &self.role.name(), format!("record refused: {code} ({message})"));
            }
            ServerMsg::Error {
                code:
                    code @ (ErrorCode::MediaFailed
                    | ErrorCode::MediaRefused
                    | ErrorCode::MediaAnswerRefused
                    | ErrorCode::MediaRetry),
                ..
            } => {
                self.media_failed(anyhow!("the server said {code}"))?;
            }
            ServerMsg::Error { code, message, .. } => {
                self.live.errors.fetch_add(1, Relaxed);
                note(self.live, &self.role.name(), format!("server error {code}: {message}"));
            }
            ServerMsg::Bye { reason } => bail!("the server said bye ({reason:?})"),
            _ => {}
        }
        Ok(())
    }

    /// Asks for `--quality` of `publisher`'s video (nothing to say for the default, `high`).
    async fn ask_quality(&self, ws: &mut Ws, publisher: &PeerId) -> anyhow::Result<()> {
        if self.plan.quality != VideoQuality::High {
            ws.send(text(&ClientMsg::Receive { peer: publisher.clone(), video: self.plan.quality })?).await?;
        }
        Ok(())
    }

    /// SDP from the SFU: the answer to our offer, or a renegotiation offer to answer.
    async fn description(&mut self, ws: &mut Ws, description: SessionDescription) -> anyhow::Result<()> {
        match description.kind {
            SdpType::Answer => {
                if let Some(port) = candidate_port(&description.sdp) {
                    self.live.sfu_port_seen(port);
                }
                let answer = SdpAnswer::from_sdp_string(&description.sdp).context("the SFU's answer")?;
                let pending = self.pending.take().ok_or_else(|| anyhow!("an answer with no offer"))?;
                self.rtc.sdp_api().accept_answer(pending, answer).context("accepting the SFU's answer")?;
                self.drain()?;
                for id in self.publishers_seen.clone() {
                    self.ask_quality(ws, &id).await?;
                }
            }
            // While our own offer is outstanding we are the polite side: the server drops its
            // offer when it takes ours.
            SdpType::Offer if self.pending.is_none() => {
                let offer = SdpOffer::from_sdp_string(&description.sdp).context("the SFU's offer")?;
                let answer = self.rtc.sdp_api().accept_offer(offer).context("accepting the SFU's offer")?;
                self.drain()?;
                ws.send(text(&sdp_msg(SdpType::Answer, answer.to_sdp_string()))?).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// One datagram from the network.
    fn datagram(&mut self, bytes: &[u8], source: SocketAddr) -> anyhow::Result<()> {
        if is_rtp(bytes) {
            self.live.forwarded_rtp.fetch_add(1, Relaxed);
            self.live.forwarded_bytes.fetch_add(bytes.len() as u64, Relaxed);
        }
        let Ok(contents) = bytes.try_into() else { return Ok(()) };
        let receive = Receive { proto: Protocol::Udp, source, destination: self.local, contents };
        self.rtc.handle_input(RtcInput::Receive(Instant::now(), receive)).map_err(|e| anyhow!("str0m receive: {e}"))?;
        self.drain()
    }

    /// str0m's drain rule: after every input, poll until it asks for a timeout.
    fn drain(&mut self) -> anyhow::Result<()> {
        loop {
            match self.rtc.poll_output().map_err(|e| anyhow!("str0m: {e}"))? {
                RtcOutput::Timeout(t) => {
                    self.next_timeout = t;
                    return Ok(());
                }
                RtcOutput::Transmit(t) => {
                    if is_rtp(&t.contents) {
                        self.live.published_rtp.fetch_add(1, Relaxed);
                    }
                    match self.socket.try_send_to(&t.contents, t.destination) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            self.live.send_dropped.fetch_add(1, Relaxed);
                        }
                        Err(e) => return Err(e).context("UDP send"),
                    }
                }
                RtcOutput::Event(e) => self.event(e),
            }
        }
    }

    fn event(&mut self, e: RtcEvent) {
        match e {
            RtcEvent::Connected if !self.connected => {
                self.connected = true;
                if !self.ever_connected {
                    self.ever_connected = true;
                    self.live.connected.fetch_add(1, Relaxed);
                }
                let now = Instant::now();
                // Spread the publishers' frames (of every room) over one frame interval.
                let all = (self.plan.publishers * self.plan.rooms).max(1);
                let stagger = |i: usize, d: Duration| d.mul_f64(i as f64 / all as f64);
                let i = self.publisher().unwrap_or(0) * self.plan.rooms + self.plan.room_index;
                self.next_audio = now + stagger(i, AUDIO_INTERVAL);
                self.next_video = now + stagger(i, self.plan.frame_interval);
                self.last_key = now;
                self.opus_pt = self.rtc.codec_config().find(|p| p.spec().codec == Codec::Opus).map(|p| p.pt());
                self.vp8_pt = self.rtc.codec_config().find(|p| p.spec().codec == Codec::Vp8).map(|p| p.pt());
            }
            RtcEvent::MediaData(d) => self.frame(&d.data),
            RtcEvent::KeyframeRequest(r) if Some(r.mid) == self.video_mid => {
                match r.rid.and_then(|rid| self.rids.iter().position(|x| *x == rid)) {
                    Some(i) => self.force_key[i] = true,
                    None => self.force_key.iter_mut().for_each(|k| *k = true),
                }
            }
            _ => {}
        }
    }

    /// A frame received from the SFU.
    fn frame(&mut self, data: &[u8]) {
        let now_ns = self.plan.now_ns();
        self.live.frames_received.fetch_add(1, Relaxed);
        let Some(s) = Stamp::read(data) else {
            self.live.unparsed_frames.fetch_add(1, Relaxed);
            return;
        };
        let publisher = s.publisher as usize;
        if publisher >= self.plan.publishers || Some(publisher) == self.publisher() {
            self.live.unparsed_frames.fetch_add(1, Relaxed);
            return;
        }
        // A receiver gets one video layer per publisher, the one it asked for unless the SFU
        // falls back to another (when the wanted one stops arriving). A frame time counts once,
        // in whatever layer it came; a repeat (around a layer switch) does not count again.
        let video = s.kind > 0;
        let arrival = self.arrivals[publisher][usize::from(video)].record(s.seq);
        let measured = s.window > 0;
        match arrival {
            Arrival::Repeat => {
                if measured {
                    self.live.repeated_frames.fetch_add(1, Relaxed);
                }
                return;
            }
            Arrival::Late if measured => {
                self.live.out_of_order_frames.fetch_add(1, Relaxed);
            }
            _ => {}
        }
        if video && s.kind as usize != 1 + self.plan.wanted_layer {
            self.live.other_layer_frames_any.fetch_add(1, Relaxed);
            if measured {
                self.live.other_layer_frames.fetch_add(1, Relaxed);
            }
        } else if !self.ready {
            self.seen[publisher] |= if video { 2 } else { 1 };
            self.check_ready();
        }
        let w = s.window as usize;
        if w == 0 || w > MAX_WINDOWS {
            return;
        }
        self.live.windows[w].received.fetch_add(1, Relaxed);
        let us = (now_ns.saturating_sub(s.send_ns) / 1000).min(u32::MAX as u64) as u32;
        self.result.latencies[w].push(us);
        if s.kind == 0 {
            self.result.audio_latencies[w].push(us);
        }
    }

    fn check_ready(&mut self) {
        if self.ready {
            return;
        }
        let need = if self.plan.audio { 3 } else { 2 };
        let me = self.publisher();
        let all = (0..self.plan.publishers).filter(|p| Some(*p) != me).all(|p| self.seen[p] & need == need);
        if all {
            self.ready = true;
            self.live.ready.fetch_add(1, Relaxed);
        }
    }

    /// Writes the frames that are due.
    fn publish(&mut self, now: Instant) -> anyhow::Result<()> {
        let Some(me) = self.publisher() else { return Ok(()) };
        if !self.connected {
            return Ok(());
        }
        let sending = self.live.sending.load(Relaxed);
        let window = self.live.window.load(Relaxed);
        // Every other participant should get each audio frame and each video frame time (in one layer).
        let receivers = (self.plan.publishers - 1 + self.plan.subscribers) as u64;
        if self.audio_mid.is_some() && now >= self.next_audio {
            self.next_audio += AUDIO_INTERVAL;
            if now.saturating_duration_since(self.next_audio) > MAX_LAG {
                self.live.late_frames.fetch_add(1, Relaxed);
                self.next_audio = now + AUDIO_INTERVAL;
            }
            if sending {
                self.write_audio(me, window, receivers)?;
            }
        }
        if now >= self.next_video {
            let mult = self.live.mult();
            self.next_video += self.plan.frame_interval.div_f64(mult);
            if now.saturating_duration_since(self.next_video) > MAX_LAG {
                self.live.late_frames.fetch_add(1, Relaxed);
                self.next_video = now + self.plan.frame_interval.div_f64(mult);
            }
            if sending {
                self.write_video(me, window, receivers, now)?;
            }
        }
        Ok(())
    }

    fn write_audio(&mut self, me: usize, window: u8, receivers: u64) -> anyhow::Result<()> {
        let (Some(mid), Some(pt)) = (self.audio_mid, self.opus_pt) else { return Ok(()) };
        let stamp = Stamp { publisher: me as u16, kind: 0, window, seq: self.seq_audio, send_ns: self.plan.now_ns() };
        self.seq_audio = self.seq_audio.wrapping_add(1);
        let data = audio_frame(&stamp, self.plan.audio_bytes);
        let now = Instant::now();
        let time = MediaTime::from(now - self.start);
        if let Some(w) = self.rtc.writer(mid) {
            w.write(pt, now, time, data).map_err(|e| anyhow!("writing audio: {e}"))?;
            self.count_sent(window, receivers);
        }
        self.drain()
    }

    fn write_video(&mut self, me: usize, window: u8, receivers: u64, now: Instant) -> anyhow::Result<()> {
        let (Some(mid), Some(pt)) = (self.video_mid, self.vp8_pt) else { return Ok(()) };
        if now.saturating_duration_since(self.last_key) >= self.plan.keyframe_interval {
            self.force_key.iter_mut().for_each(|k| *k = true);
            self.last_key = now;
        }
        let seq = self.seq_video;
        self.seq_video = self.seq_video.wrapping_add(1);
        for l in 0..self.plan.layers.len() {
            let stamp = Stamp { publisher: me as u16, kind: 1 + l as u8, window, seq, send_ns: self.plan.now_ns() };
            let data = video_frame(&stamp, self.force_key[l], self.plan.layers[l].frame_bytes);
            self.force_key[l] = false;
            let now = Instant::now();
            let time = MediaTime::from(now - self.start);
            let Some(mut w) = self.rtc.writer(mid) else { return Ok(()) };
            if let Some(rid) = self.rids.get(l) {
                w = w.rid(*rid);
            }
            w.write(pt, now, time, data).map_err(|e| anyhow!("writing video: {e}"))?;
            self.drain()?;
        }
        // One frame time, which each receiver should get in one layer.
        self.count_sent(window, receivers);
        Ok(())
    }

    /// One frame every other participant should receive went out.
    fn count_sent(&self, window: u8, receivers: u64) {
        self.live.frames_sent.fetch_add(1, Relaxed);
        let w = window as usize;
        if w > 0 && w <= MAX_WINDOWS {
            self.live.windows[w].expected.fetch_add(receivers, Relaxed);
        }
    }
}

/// How a frame arrived, by its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// Newer than any before.
    New,
    /// Older than one already received, but not received before.
    Late,
    /// Received before.
    Repeat,
}

/// The sequence numbers received lately from one track (the last 128).
#[derive(Debug, Clone, Copy, Default)]
struct Arrivals {
    last: Option<u32>,
    /// Bit i: `last - i` was received.
    seen: u128,
}

impl Arrivals {
    fn record(&mut self, seq: u32) -> Arrival {
        let Some(last) = self.last else {
            self.last = Some(seq);
            self.seen = 1;
            return Arrival::New;
        };
        let ahead = seq.wrapping_sub(last) as i32;
        if ahead > 0 {
            self.seen = if ahead >= 128 { 1 } else { (self.seen << ahead) | 1 };
            self.last = Some(seq);
            return Arrival::New;
        }
        let behind = ahead.unsigned_abs();
        if behind >= 128 {
            return Arrival::Late;
        }
        if self.seen & (1u128 << behind) != 0 {
            return Arrival::Repeat;
        }
        self.seen |= 1u128 << behind;
        Arrival::Late
    }
}

/// The port of the first host candidate in an SDP (the SFU's UDP port).
fn candidate_port(sdp: &str) -> Option<u16> {
    // a=candidate:<foundation> <component> udp <priority> <address> <port> typ host
    let line = sdp.lines().find(|l| l.starts_with("a=candidate:") && l.contains(" typ host"))?;
    line.split_whitespace().nth(5)?.parse().ok()
}

/// Asks for a larger receive buffer; the kernel may grant less (no error then).
fn set_recv_buffer(socket: &std::net::UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from the pointer we pass, which points at `v`.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_in_both_kinds_of_frame() {
        let s = Stamp { publisher: 7, kind: 3, window: 2, seq: 123_456, send_ns: 9_876_543_210 };
        let v = video_frame(&s, true, 6000);
        assert_eq!(v.len(), 6000);
        assert_eq!(v[0] & 1, 0, "a key frame");
        assert_eq!(Stamp::read(&v), Some(s));
        assert_eq!(video_frame(&s, false, 100)[0] & 1, 1, "a delta frame");
        let a = audio_frame(&Stamp { kind: 0, ..s }, 80);
        assert_eq!(a.len(), 80);
        assert_eq!(Stamp::read(&a), Some(Stamp { kind: 0, ..s }));
        assert_eq!(Stamp::read(&a[..10]), None);
        assert_eq!(Stamp::read(b"garbage garbage garbage garbage"), None);
    }

    #[test]
    fn rtp_is_told_from_rtcp_stun_and_dtls() {
        let mut rtp = [0u8; 20];
        rtp[0] = 0x80;
        rtp[1] = 96;
        assert!(is_rtp(&rtp));
        rtp[1] = 0x80 | 111; // marker bit set
        assert!(is_rtp(&rtp));
        rtp[1] = 200; // sender report
        assert!(!is_rtp(&rtp));
        assert!(!is_rtp(&[0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])); // STUN
        assert!(!is_rtp(&[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0])); // DTLS
    }

    #[test]
    fn arrivals_tell_new_late_and_repeated_frames() {
        let mut a = Arrivals::default();
        assert_eq!(a.record(10), Arrival::New);
        assert_eq!(a.record(10), Arrival::Repeat);
        assert_eq!(a.record(13), Arrival::New);
        assert_eq!(a.record(11), Arrival::Late);
        assert_eq!(a.record(11), Arrival::Repeat);
        assert_eq!(a.record(12), Arrival::Late);
        assert_eq!(a.record(13), Arrival::Repeat);
        assert_eq!(a.record(1000), Arrival::New);
        assert_eq!(a.record(13), Arrival::Late, "too old to tell");
        assert_eq!(a.record(999), Arrival::Late);
        assert_eq!(a.record(u32::MAX), Arrival::Late);
        let mut w = Arrivals::default();
        assert_eq!(w.record(u32::MAX), Arrival::New);
        assert_eq!(w.record(0), Arrival::New, "wraps");
        assert_eq!(w.record(u32::MAX), Arrival::Repeat);
    }

    #[test]
    fn finds_the_sfu_port_in_an_answer() {
        let sdp =
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=candidate:1 1 udp 2130706175 127.0.0.1 40123 typ host\r\n";
        assert_eq!(candidate_port(sdp), Some(40123));
        assert_eq!(candidate_port("v=0\r\n"), None);
    }
}
