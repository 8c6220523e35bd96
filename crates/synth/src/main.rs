//! huddle-synth: synthetic participants for a huddle room.
//!
//! Each participant is a str0m WebRTC client that joins through the real signalling (WebSocket
//! `join`, then `signal` to the reserved peer `sfu`), connects to the SFU over UDP, receives
//! everyone's media like a browser does, and — if it is one of the `--talkers` — sends an Opus
//! frame every 20 ms. They join with the camera off, so pages show them as named tiles with
//! initials. Used by the browser test of a 50-person room, and by hand to fill a room:
//!
//! ```sh
//! cargo run --release -p huddle-synth -- --url ws://127.0.0.1:8080/ws --room demo --count 20 --talkers 2
//! ```
//!
//! stdout gets one JSON line when every participant is connected to the SFU
//! (`{"ready":true,...}`) and one when they stop (after `--seconds`, on Ctrl-C, or when stdin
//! closes if `--until-stdin-closes`). Progress and errors go to stderr.

use anyhow::{anyhow, bail, Context as _};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use huddle_protocol::{
    ClientMsg, ErrorCode, PeerId, SdpType, ServerMsg, SessionDescription, SignalPayload, Topology, VideoQuality,
    PROTOCOL_VERSION, SFU_PEER_ID,
};
use huddle_sfu::str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use huddle_sfu::str0m::format::Codec;
use huddle_sfu::str0m::media::{Direction, MediaKind, Mid};
use huddle_sfu::str0m::net::{Protocol, Receive};
use huddle_sfu::str0m::{Candidate, Event as RtcEvent, Input as RtcInput, Output as RtcOutput, Rtc};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(name = "huddle-synth", version, about = "Synthetic participants for a huddle room")]
struct Args {
    /// The server's WebSocket URL, e.g. ws://127.0.0.1:8080/ws
    #[arg(long)]
    url: String,
    /// The room to join
    #[arg(long)]
    room: String,
    /// How many participants
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// How many of them talk (an Opus frame every 20 ms); the others are muted
    #[arg(long, default_value_t = 0)]
    talkers: usize,
    /// Name prefix; participants are called "<prefix> 1", "<prefix> 2", …
    #[arg(long, default_value = "Bot")]
    name: String,
    /// Stop after this many seconds
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Also stop when standard input closes (for test harnesses)
    #[arg(long)]
    until_stdin_closes: bool,
    /// Also receive the others' video (by default a synthetic participant asks the server for
    /// none of it with `receive off`, as a page does for tiles off screen: it renders nothing,
    /// and decrypting every camera 46 times over would starve the browsers it accompanies)
    #[arg(long)]
    watch_video: bool,
    /// Pause between two participants' arrivals, in milliseconds (people trickle into a
    /// meeting; 46 joins in the same instant make every DTLS handshake wait on the others)
    #[arg(long, default_value_t = 100)]
    join_interval_ms: u64,
    /// Give up if not every participant is connected to the SFU within this many seconds
    #[arg(long, default_value_t = 60)]
    connect_timeout_secs: u64,
}

/// Counters shared by all participants.
#[derive(Default)]
struct Totals {
    joined: AtomicUsize,
    connected: AtomicUsize,
    frames_received: AtomicU64,
    frames_sent: AtomicU64,
    /// Sessions started over after the server or str0m lost one.
    restarts: AtomicU64,
}

/// An Opus packet of 20 ms of silence (TOC byte: CELT-only, fullband, 20 ms, one frame) that
/// every decoder accepts.
const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];
const FRAME_INTERVAL: Duration = Duration::from_millis(20);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.count == 0 || args.count > 500 {
        bail!("--count must be between 1 and 500");
    }
    // One thread: synthetic participants should not compete with the browsers they accompany.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if let Err(e) = rt.block_on(run(args)) {
        // One line (no backtrace): harnesses show the last line as the verdict.
        eprintln!("huddle-synth: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let totals = Arc::new(Totals::default());
    let (stop_tx, stop) = watch::channel(false);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.count {
        if i > 0 && args.join_interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.join_interval_ms)).await;
        }
        let name = format!("{} {}", args.name, i + 1);
        let talker = i < args.talkers;
        let watch_video = args.watch_video;
        let (url, room, totals, stop) = (args.url.clone(), args.room.clone(), totals.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let r = participant(&url, &room, &name, talker, watch_video, &totals, stop).await;
            if let Err(e) = &r {
                eprintln!("huddle-synth: {name}: {e:#}");
            }
            r
        }));
    }

    let connect_deadline = started + Duration::from_secs(args.connect_timeout_secs);
    loop {
        let connected = totals.connected.load(Ordering::Relaxed);
        if connected == args.count {
            break;
        }
        if Instant::now() >= connect_deadline || tasks.iter().all(|t| t.is_finished()) {
            // Everyone leaves properly even so: a participant dropped without a goodbye keeps its
            // place for a resume, and the room stays full for whatever runs next.
            let _ = stop_tx.send(true);
            leave_all(tasks).await;
            bail!("only {connected} of {} participants connected to the SFU", args.count);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{}",
        serde_json::json!({
            "ready": true,
            "participants": args.count,
            "connected": args.count,
            "connect_ms": started.elapsed().as_millis() as u64,
        })
    );

    let stdin_closed = async {
        if args.until_stdin_closes {
            let _ = tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(args.seconds)) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = stdin_closed => {}
    }
    let _ = stop_tx.send(true);
    leave_all(tasks).await;
    println!(
        "{}",
        serde_json::json!({
            "ready": false,
            "participants": args.count,
            "joined": totals.joined.load(Ordering::Relaxed),
            "frames_received": totals.frames_received.load(Ordering::Relaxed),
            "frames_sent": totals.frames_sent.load(Ordering::Relaxed),
            "restarts": totals.restarts.load(Ordering::Relaxed),
        })
    );
    Ok(())
}

/// Waits (5 s at most, all together) for the participants told to stop to leave.
async fn leave_all(tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>) {
    let _ = tokio::time::timeout(Duration::from_secs(5), futures_util::future::join_all(tasks)).await;
}

fn signal(kind: SdpType, sdp: String) -> ClientMsg {
    ClientMsg::Signal {
        to: PeerId(SFU_PEER_ID.to_string()),
        payload: SignalPayload::Description { description: SessionDescription { kind, sdp } },
    }
}

async fn participant(
    url: &str,
    room: &str,
    name: &str,
    talker: bool,
    watch_video: bool,
    totals: &Totals,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.context("WebSocket connect")?;
    let send = |msg: &ClientMsg| Message::text(serde_json::to_string(msg).unwrap_or_default());
    let join = ClientMsg::Join {
        recording_ok: false,
        protocol: PROTOCOL_VERSION,
        room: room.to_string(),
        name: name.to_string(),
        audio: talker,
        video: false,
        password: None,
        token: None,
    };
    ws.send(send(&join)).await?;

    // Wait until the room is an SFU room (at once, or when an `auto` room switches).
    // Everyone else in the room, for `receive off`; those already told.
    let mut others: Vec<PeerId> = Vec::new();
    let mut told = 0;
    loop {
        match next_msg(&mut ws).await? {
            ServerMsg::Joined { topology, peers, .. } => {
                others.extend(peers.into_iter().map(|p| p.id));
                if topology == Topology::Sfu {
                    break;
                }
            }
            ServerMsg::PeerJoined { peer } => others.push(peer.id),
            ServerMsg::Topology { topology: Topology::Sfu, .. } => break,
            ServerMsg::Error { code, message, .. } => bail!("refused: {code} ({message})"),
            _ => {}
        }
    }
    totals.joined.fetch_add(1, Ordering::Relaxed);

    let socket = UdpSocket::bind(("127.0.0.1", 0)).await?;
    // Room for a second of everyone's audio while this thread is busy with someone's SDP.
    huddle_server::batch::grow_buffers(&socket, 1024 * 1024);
    let local = socket.local_addr()?;
    let start = Instant::now();
    let (mut rtc, mut audio, mut pending) = offer_to_sfu(&mut ws, local, start).await?;
    let mut session_started = Instant::now();
    // The SFU session our connection belongs to (from the answer); `None` until answered.
    let mut current: Option<u64> = None;
    let mut probe = SessionProbe::default();
    // Set when the session must start over (the server lost it, or our DTLS gave up): when.
    let mut restart_at: Option<Instant> = None;

    let mut ever_connected = false;
    let mut connected = false;
    let mut next_timeout = start;
    let mut next_frame = start;
    let mut buf = vec![0u8; 2048];
    let mut answer_out: Option<String> = None;
    loop {
        if let Some(at) = restart_at {
            if Instant::now() >= at {
                // Like the page: a fresh offer replaces the session (at most one per 2 s).
                restart_at = None;
                connected = false;
                (rtc, audio, pending) = offer_to_sfu(&mut ws, local, start).await?;
                session_started = Instant::now();
                current = None;
                probe = SessionProbe::default();
                totals.restarts.fetch_add(1, Ordering::Relaxed);
            }
        }
        // str0m's drain rule: after every input, poll until it asks for a timeout.
        let drained = loop {
            match rtc.poll_output() {
                Err(e) => break Err(e),
                Ok(RtcOutput::Timeout(t)) => {
                    next_timeout = t;
                    break Ok(());
                }
                Ok(RtcOutput::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Ok(RtcOutput::Event(RtcEvent::Connected)) => {
                    connected = true;
                    if !ever_connected {
                        ever_connected = true;
                        totals.connected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(RtcOutput::Event(RtcEvent::MediaData(_))) => {
                    totals.frames_received.fetch_add(1, Ordering::Relaxed);
                }
                Ok(RtcOutput::Event(RtcEvent::IceConnectionStateChange(state))) => probe.ice = Some(state),
                Ok(RtcOutput::Event(_)) => {}
            }
        };
        if let Err(e) = drained {
            eprintln!("huddle-synth: {name}: str0m: {e}; starting over");
            restart_at.get_or_insert(session_started + RESTART_MIN_INTERVAL);
            rtc.disconnect();
        }
        if !rtc.is_alive() && restart_at.is_none() {
            restart_at = Some(session_started + RESTART_MIN_INTERVAL);
        }
        // A handshake that has not finished after a while will not (str0m waits much longer
        // before it gives up): start over, as a browser's `failed` state makes the page do.
        if !connected && restart_at.is_none() && session_started.elapsed() > CONNECT_WATCHDOG {
            eprintln!("huddle-synth: {name}: not connected after {CONNECT_WATCHDOG:?} ({probe}); starting over");
            restart_at = Some(Instant::now());
        }
        // The server knows our session once it is connected; from then on, no video please.
        while connected && !watch_video && told < others.len() {
            let msg = ClientMsg::Receive { peer: others[told].clone(), video: VideoQuality::Off };
            ws.send(send(&msg)).await?;
            told += 1;
        }
        let mut wake = next_timeout.min(next_frame);
        if let Some(at) = restart_at {
            wake = wake.min(at);
        }
        let wake = wake.max(Instant::now());
        tokio::select! {
            _ = stop.changed() => {
                let _ = ws.send(send(&ClientMsg::Leave)).await;
                let _ = ws.close(None).await;
                // Read on until the server closes too (bounded): a socket closed with unread data
                // is reset, and a reset can lose the goodbye still on its way, which leaves this
                // participant's place kept for a resume instead of gone.
                let _ = tokio::time::timeout(Duration::from_secs(3), async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return Ok(());
            }
            msg = next_msg(&mut ws) => match msg? {
                ServerMsg::Signal { from, payload: SignalPayload::Description { description }, session }
                    if from.0 == SFU_PEER_ID =>
                {
                    let handled: anyhow::Result<()> = (|| {
                        match description.kind {
                            // An answer to an offer of a session we replaced since (it came
                            // after our watchdog gave up on it): not for this one, which still
                            // waits for its own. Mids are drawn afresh for each session.
                            SdpType::Answer if !answers_mid(&description.sdp, audio) => {
                                probe.stale_answers += 1;
                                Ok(())
                            }
                            SdpType::Answer => {
                                probe.answers += 1;
                                let answer = SdpAnswer::from_sdp_string(&description.sdp)?;
                                let pending = pending.take().ok_or_else(|| anyhow!("an answer with no offer"))?;
                                rtc.sdp_api().accept_answer(pending, answer)?;
                                current = session;
                                Ok(())
                            }
                            // Our own offer is outstanding (a restart), or the offer is about a
                            // session we replaced: we are the impolite side and keep ours; the
                            // server drops its offer when it takes ours.
                            SdpType::Offer if pending.is_some() || session != current => {
                                probe.offers_ignored += 1;
                                Ok(())
                            }
                            SdpType::Offer => {
                                probe.offers_taken += 1;
                                let offer = SdpOffer::from_sdp_string(&description.sdp)?;
                                let answer = rtc.sdp_api().accept_offer(offer)?;
                                answer_out = Some(answer.to_sdp_string());
                                Ok(())
                            }
                            _ => Ok(()),
                        }
                    })();
                    if let Err(e) = handled {
                        eprintln!("huddle-synth: {name}: {e:#}; starting over");
                        restart_at.get_or_insert(session_started + RESTART_MIN_INTERVAL);
                    }
                    if let Some(sdp) = answer_out.take() {
                        ws.send(send(&signal(SdpType::Answer, sdp))).await?;
                    }
                }
                ServerMsg::PeerJoined { peer } => others.push(peer.id),
                // The server dropped our session (its ICE consent timed out): offer again at
                // once. A `media_failed` about a session we replaced already is ignored.
                ServerMsg::Error { code: ErrorCode::MediaFailed, session, .. } if session == current && pending.is_none() => {
                    restart_at.get_or_insert(Instant::now());
                }
                // Our answer was refused: our connection and the SFU's view of it differ now.
                ServerMsg::Error { code: ErrorCode::MediaAnswerRefused, session, .. } if session == current => {
                    restart_at.get_or_insert(session_started + RESTART_MIN_INTERVAL);
                }
                ServerMsg::Error { code: ErrorCode::MediaRetry, retry_after_ms, .. } => {
                    // Not now (a restart too soon, or the SFU busy): start over when it says.
                    let wait = Duration::from_millis(retry_after_ms.unwrap_or(2000));
                    restart_at.get_or_insert(Instant::now() + wait);
                }
                ServerMsg::Error { code: ErrorCode::MediaRefused, .. } if pending.is_some() => {
                    bail!("the SFU cannot use our offer")
                }
                ServerMsg::Error { code, message, .. } => eprintln!("huddle-synth: {name}: server said {code}: {message}"),
                ServerMsg::Bye { reason } => bail!("server said bye ({reason:?})"),
                _ => {}
            },
            received = socket.recv_from(&mut buf) => {
                let (n, source) = received?;
                probe.datagrams += 1;
                let Ok(contents) = buf[..n].try_into() else { continue };
                let receive = Receive { proto: Protocol::Udp, source, destination: local, contents };
                if let Err(e) = rtc.handle_input(RtcInput::Receive(Instant::now(), receive)) {
                    eprintln!("huddle-synth: {name}: str0m: {e}; starting over");
                    restart_at.get_or_insert(session_started + RESTART_MIN_INTERVAL);
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if rtc.handle_input(RtcInput::Timeout(now)).is_err() {
                    restart_at.get_or_insert(session_started + RESTART_MIN_INTERVAL);
                }
                if now >= next_frame {
                    next_frame = now + FRAME_INTERVAL;
                    if talker && connected {
                        let pt = rtc.codec_config().find(|p| p.spec().codec == Codec::Opus).map(|p| p.pt());
                        if let (Some(pt), Some(w)) = (pt, rtc.writer(audio)) {
                            if w.write(pt, now, (now - start).into(), OPUS_SILENCE.to_vec()).is_ok() {
                                totals.frames_sent.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What one session got from the server, for the message when it does not connect.
#[derive(Default)]
struct SessionProbe {
    answers: u32,
    stale_answers: u32,
    offers_taken: u32,
    offers_ignored: u32,
    datagrams: u64,
    ice: Option<huddle_sfu::str0m::IceConnectionState>,
}

impl std::fmt::Display for SessionProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "answers {} (and {} to a replaced session), server offers taken {} and ignored {}, datagrams received {}, ICE {:?}",
            self.answers, self.stale_answers, self.offers_taken, self.offers_ignored, self.datagrams, self.ice
        )
    }
}

/// The server takes a new session at most this often, unless it lost the last (docs/protocol.md).
const RESTART_MIN_INTERVAL: Duration = Duration::from_millis(2100);
/// A session not connected after this long is started over, as a browser's ICE and DTLS give up
/// after about 30 s. Less makes things worse on a starved machine: a new session costs the
/// server a handshake and a renegotiation with everyone in the room.
const CONNECT_WATCHDOG: Duration = Duration::from_secs(30);

/// Whether `sdp` (an answer) answers the offer of the session whose audio m-line is `mid`.
fn answers_mid(sdp: &str, mid: Mid) -> bool {
    let wanted = format!("a=mid:{mid}");
    sdp.lines().any(|line| line.trim_end() == wanted)
}

/// A fresh str0m session publishing one audio track, offered to the SFU.
async fn offer_to_sfu(
    ws: &mut Ws,
    local: SocketAddr,
    start: Instant,
) -> anyhow::Result<(Rtc, Mid, Option<SdpPendingOffer>)> {
    let mut rtc = Rtc::builder().build(start);
    rtc.add_local_candidate(Candidate::host(local, Protocol::Udp).map_err(|e| anyhow!("candidate: {e}"))?);
    let mut change = rtc.sdp_api();
    let audio = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().ok_or_else(|| anyhow!("no offer"))?;
    let msg = signal(SdpType::Offer, offer.to_sdp_string());
    ws.send(Message::text(serde_json::to_string(&msg)?)).await?;
    Ok((rtc, audio, Some(pending)))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next protocol message; pings are answered on the way.
async fn next_msg(ws: &mut Ws) -> anyhow::Result<ServerMsg> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Message::Ping(_))) => ws.flush().await?,
            Some(Ok(Message::Close(_))) | None => bail!("the server closed the connection"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}
