//! The SFU driver: one task owns the media UDP socket(s) and the sans-IO core ([`huddle_sfu::Sfu`]).
//!
//! The hub talks to it over a bounded channel of [`MediaCommand`]s (offers, answers and leaves
//! from participants of `sfu` rooms) and hears back through its own command channel
//! ([`crate::hub::Command::Media`]): SDP for a participant, or an error to show it. Everything in
//! between — ICE, DTLS, SRTP, forwarding — is the core's; this module only moves datagrams and
//! time in and out of it:
//!
//! 1. wait for the first of: a command, a datagram on any socket, the core's next deadline
//!    (coalesced to a [`TIMER_TICK`]);
//! 2. feed it to the core (datagrams in a batch of up to [`RECV_BATCH`] without waiting again);
//! 3. drain the core's outputs: datagrams go out with `try_send_to` (a full socket buffer drops
//!    the datagram and counts it, as any UDP forwarder must), SDP and errors go to the hub with
//!    `try_send`.
//!
//! All participants share one UDP port. On a wildcard listen address the port is bound once per
//! interface address, so every datagram's destination is known without `IP_PKTINFO`; the core
//! announces each address as a host candidate (or the configured public addresses instead).
//!
//! ICE over TCP (on by default, [`crate::ice_tcp`]): the core also announces a passive TCP
//! candidate per address, on the HTTP port (or `--media-tcp-port`). Each connection has its own
//! task; their packets come in over one more bounded channel ([`TcpEvent`]) and go to the core
//! tagged [`Transport::Tcp`], and the core's TCP transmits go to the queue of the connection with
//! the same (local, remote) addresses — dropped and counted when there is none or it is full.

use crate::batch;
use crate::config::Config;
use crate::hub;
use crate::ice_tcp::{IceTcp, TcpEvent};
use crate::recording::{WriterMsg, WriterTx};
use huddle_protocol::{ErrorCode, PeerId, SdpType, SessionDescription, SignalPayload, VideoQuality};
use huddle_sfu::{Event, Input, Output, RemoveReason, Sfu, SfuError, Signal, Transport};
use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::ReadBuf;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// Commands queued for the media task.
pub const MEDIA_QUEUE: usize = 4096;
/// Datagrams taken from the sockets in one go before outputs are flushed and commands looked at.
pub const RECV_BATCH: usize = 64;
/// Larger than any datagram a browser sends (MTU-sized SRTP, DTLS handshake records).
const RECV_BUFFER: usize = 2048;
/// Timer coalescing: the core's deadlines are served at most this often. Every str0m session
/// asks for a wake-up about every 9 ms (measured: RTCP feedback, NACK, TWCC, reordering), each at
/// its own moment, and each wake-up costs a pass over all the session's streams (~30 µs with 46
/// streams). Served on a shared tick, each pass covers everything due by then. Measured with 46
/// participants and 4 talkers: server CPU 151 → 141 → 114 ticks per 4 s with no tick, 5 ms and
/// 20 ms. 10 ms keeps the added delay for a reordered or lost packet below a video frame time.
/// It also delays forwarding: str0m sends a written packet at its next timeout, so a packet
/// waits up to one tick — unless the bandwidth estimate is on (the default), whose pacer makes the
/// core release what is due after every write (`Peer::mutate` in huddle-sfu), at a CPU cost. Measured with `huddle-bench sfu` (10×10 video): p50/p99 added latency
/// 7.7/16 ms at 10 ms, 5.8/10.5 ms at 5 ms, 3.6/7.5 ms at 2 ms, for the same CPU per packet; but
/// with 46 participants and 4 talkers a 2 ms tick costs 20–30 % more CPU (28.8–32.7 against
/// 23.9–24.7 µs per forwarded packet). CPU per packet is the target we are furthest from, so 10 ms.
pub const TIMER_TICK: Duration = Duration::from_millis(10);
/// The shortest time between two sessions of one participant: a new offer restarts its session,
/// which renegotiates with everyone in the room, so a page must not be able to loop on it. An
/// offer sooner than that is refused with `media_retry` and the time left.
pub const RESTART_MIN_INTERVAL: Duration = Duration::from_secs(2);
/// What `media_retry` asks for when the SFU's queue was full (the hub could not pass a signal on).
pub const BUSY_RETRY: Duration = Duration::from_secs(1);

/// What the hub asks of the SFU, for one participant (its signalling id).
#[derive(Debug)]
pub enum MediaCommand {
    /// The participant's offer: joins `room` on the SFU, or starts its session over.
    Offer { peer: PeerId, room: Arc<str>, offer: huddle_sfu::Offer },
    /// The participant's answer to the SFU's renegotiation offer.
    Answer { peer: PeerId, answer: huddle_sfu::Answer },
    /// The participant left its room or disconnected.
    Leave { peer: PeerId },
    /// How much of `publisher`'s video `peer` wants.
    Receive { peer: PeerId, publisher: PeerId, video: VideoQuality },
    /// What of `peer`'s media the SFU forwards to no one: `audio` while a host has it muted,
    /// `video` while its room has its camera and screen off ([`huddle_sfu::Input::Hold`]).
    Hold { peer: PeerId, audio: bool, video: bool },
    /// Counters, for tests and monitoring.
    Stats { reply: oneshot::Sender<MediaStats> },
    /// Start (`on`) or stop recording `room` in the core ([`huddle_sfu::Input::Record`]).
    Record { room: Arc<str>, on: bool },
    /// For this worker's recording writer, in order with the core's frames.
    Recorder(WriterMsg),
}

/// What the SFU tells the hub to pass on to one participant.
#[derive(Debug)]
pub enum MediaEvent {
    /// SDP from the SFU: `signal {from: "sfu", payload, session}`.
    Signal { peer: PeerId, payload: SignalPayload, session: u64 },
    /// An error for the participant: `media_refused`, `media_answer_refused` or `media_retry`
    /// for a `signal` it sent, `media_failed` when the SFU lost its session. `session`: the
    /// session it is about; `retry_after`: for `media_retry`, when to send the signal again.
    Error {
        peer: PeerId,
        code: ErrorCode,
        request: Option<&'static str>,
        session: Option<u64>,
        retry_after: Option<Duration>,
    },
    /// The SFU heard a new main speaker in `room`: `active_speaker` to everyone there.
    ActiveSpeaker { room: String, peer: PeerId },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MediaStats {
    pub participants: usize,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Datagrams nobody claimed (garbage, strangers).
    pub datagrams_unclaimed: u64,
    /// Datagrams dropped because the socket's send buffer was full.
    pub send_dropped: u64,
    /// Events for the hub dropped because its queue was full.
    pub events_dropped: u64,
    /// ICE-TCP connections open.
    pub tcp_connections: usize,
    /// Packets that arrived over ICE-TCP (counted in `datagrams_in` too once the core has them).
    pub tcp_frames_in: u64,
    /// Packets queued to ICE-TCP connections (counted in `datagrams_out` too).
    pub tcp_frames_out: u64,
    /// ICE-TCP packets dropped: the media task's queue or a connection's queue was full, or the
    /// core sent to a connection that is gone.
    pub tcp_dropped: u64,
    /// RTP packets forwarded to subscribers (one per subscriber), and their payload bytes.
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    /// Recorded frames dropped because the recording writer's queue was full.
    pub recorded_dropped: u64,
}

impl MediaStats {
    /// Two workers' SFU counters together.
    pub fn plus(self, o: &MediaStats) -> MediaStats {
        MediaStats {
            participants: self.participants + o.participants,
            datagrams_in: self.datagrams_in + o.datagrams_in,
            datagrams_out: self.datagrams_out + o.datagrams_out,
            datagrams_unclaimed: self.datagrams_unclaimed + o.datagrams_unclaimed,
            send_dropped: self.send_dropped + o.send_dropped,
            events_dropped: self.events_dropped + o.events_dropped,
            tcp_connections: self.tcp_connections + o.tcp_connections,
            tcp_frames_in: self.tcp_frames_in + o.tcp_frames_in,
            tcp_frames_out: self.tcp_frames_out + o.tcp_frames_out,
            tcp_dropped: self.tcp_dropped + o.tcp_dropped,
            forwarded_packets: self.forwarded_packets + o.forwarded_packets,
            forwarded_bytes: self.forwarded_bytes + o.forwarded_bytes,
            recorded_dropped: self.recorded_dropped + o.recorded_dropped,
        }
    }
}

/// One bound socket and the address the core knows it by (its candidate address).
struct Sock {
    socket: UdpSocket,
    alias: SocketAddr,
}

/// ICE over TCP, set up.
struct TcpSetup {
    ice: IceTcp,
    events: mpsc::Receiver<TcpEvent>,
    /// `--media-tcp-port`'s listener (the first worker's only); `None`: ICE-TCP shares the HTTP
    /// port, or another worker serves the listener.
    dedicated: Option<TcpListener>,
    /// ICE-TCP comes to the HTTP port (no `--media-tcp-port`).
    on_http_port: bool,
    /// The passive candidates announced (public aliases applied).
    addresses: Vec<SocketAddr>,
}

/// The media endpoint, bound and ready to run.
pub struct Media {
    /// Its worker (see [`crate::workers`]): its ICE ufrags start with that worker's prefix.
    worker: usize,
    socks: Vec<Sock>,
    tcp: Option<TcpSetup>,
    public_ips: Vec<IpAddr>,
    bandwidth_estimation: bool,
    /// This worker's recording writer thread (`None`: recordings are off).
    recorder: Option<WriterTx>,
}

impl Media {
    /// Binds the SFU's UDP port on the listen address of the HTTP server (`http`), or on every
    /// interface address when that is a wildcard.
    pub async fn bind(config: &Config, http: SocketAddr) -> anyhow::Result<Media> {
        let mut one = Media::bind_workers(config, http, 1).await?;
        Ok(one.remove(0))
    }

    /// [`Media::bind`] for each of `workers` workers: worker N's UDP port is `--media-port` + N
    /// (by default the HTTP port's number + N, or any free port when that one is taken), and
    /// ICE-TCP connections (one listener, shared) go to the worker their ufrag names.
    pub async fn bind_workers(config: &Config, http: SocketAddr, workers: usize) -> anyhow::Result<Vec<Media>> {
        let ips = interface_ips(http.ip());
        // The first worker's setup holds the listener; the others' receive their connections.
        let (mut first_tcp, mut tcp_events) = match config.ice_tcp {
            true => {
                let (setup, events) = bind_tcp(config, http, &ips, workers).await?;
                (Some(setup), events.into_iter())
            }
            false => (None, Vec::new().into_iter()),
        };
        let shared = first_tcp.as_ref().map(|t| (t.ice.clone(), t.on_http_port, t.addresses.clone()));
        let mut out = Vec::with_capacity(workers);
        for worker in 0..workers {
            let socks = bind_udp(config, http, &ips, worker).await?;
            let tcp = match (worker, &shared) {
                (0, _) => first_tcp.take(),
                (_, Some((ice, on_http_port, addresses))) => tcp_events.next().map(|events| TcpSetup {
                    ice: ice.clone(),
                    events,
                    dedicated: None,
                    on_http_port: *on_http_port,
                    addresses: addresses.clone(),
                }),
                _ => None,
            };
            let public_ips = config.media_public_ips.clone();
            out.push(Media {
                worker,
                socks,
                tcp,
                public_ips,
                bandwidth_estimation: config.bandwidth_estimation,
                recorder: None,
            });
        }
        Ok(out)
    }
}

/// Worker `worker`'s UDP sockets: one per address in `ips`, all on one port.
async fn bind_udp(config: &Config, http: SocketAddr, ips: &[IpAddr], worker: usize) -> anyhow::Result<Vec<Sock>> {
    let Some(first) = ips.first().copied() else {
        anyhow::bail!("no network interface address to bind the SFU's UDP port on");
    };
    let base = config.media_port.unwrap_or(http.port());
    // `--media-port 0` (any port) stays 0 for every worker; the check of the configuration
    // keeps base + worker within range.
    let port = if base == 0 { 0 } else { base.saturating_add(worker as u16) };
    let first_socket = match UdpSocket::bind((first, port)).await {
        Ok(s) => s,
        // The default port (the HTTP port's number) is only a preference.
        Err(e) if config.media_port.is_none() && e.kind() == io::ErrorKind::AddrInUse => {
            UdpSocket::bind((first, 0)).await?
        }
        Err(e) => anyhow::bail!("cannot bind the SFU's UDP port {first}:{port}: {e}"),
    };
    let port = first_socket.local_addr()?.port();
    let mut sockets = vec![first_socket];
    for ip in &ips[1..] {
        match UdpSocket::bind((*ip, port)).await {
            Ok(s) => sockets.push(s),
            Err(e) => warn!(%ip, port, error = %e, "cannot bind the SFU's UDP port on this address; skipped"),
        }
    }
    let mut socks = Vec::new();
    for socket in sockets {
        grow_buffers(&socket);
        let local = socket.local_addr()?;
        let alias = public_alias(&config.media_public_ips, local).unwrap_or(local);
        socks.push(Sock { socket, alias });
    }
    Ok(socks)
}

impl Media {
    /// The caps on open TCP connections that ICE-TCP connections count under (the HTTP port's;
    /// see [`crate::limits::TcpAdmission`]).
    /// Recorded frames go to this writer thread (see [`crate::recording`]).
    pub fn set_recorder(&mut self, writer: WriterTx) {
        self.recorder = Some(writer);
    }

    pub fn set_tcp_caps(&mut self, caps: Arc<crate::limits::TcpAdmission>) {
        if let Some(tcp) = self.tcp.as_mut() {
            tcp.ice.set_caps(caps);
        }
    }

    /// Where the HTTP listener sends the ICE-TCP connections it finds: `Some` when ICE-TCP is on
    /// and shares the HTTP port (no `--media-tcp-port`).
    pub fn http_ice_tcp(&self) -> Option<IceTcp> {
        self.tcp.as_ref().filter(|t| t.on_http_port).map(|t| t.ice.clone())
    }

    /// The addresses announced for ICE over TCP (one passive candidate each); empty when off.
    pub fn tcp_addresses(&self) -> Vec<SocketAddr> {
        self.tcp.as_ref().map(|t| t.addresses.clone()).unwrap_or_default()
    }

    /// The addresses announced to browsers (one host candidate each).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for s in &self.socks {
            if !out.contains(&s.alias) {
                out.push(s.alias);
            }
        }
        out
    }

    /// Every address the SFU can be reached at: bound and announced (TURN relays may send there).
    pub fn local_and_announced(&self) -> Vec<SocketAddr> {
        let mut out = self.addresses();
        for s in &self.socks {
            if let Ok(local) = s.socket.local_addr() {
                if !out.contains(&local) {
                    out.push(local);
                }
            }
        }
        out
    }

    /// Starts the SFU on a thread of its own with a single-threaded runtime (as TURN does), until
    /// the hub drops its command sender. On the shared runtime the media task waited behind
    /// whatever the hub and the connections were doing: in a 50-person room's join storm on a
    /// busy machine it left its socket unread for seconds and the kernel dropped thousands of
    /// datagrams (ICE checks and DTLS among them). ICE-TCP connections stay on the shared
    /// runtime (they are the HTTP port's) and reach the thread by channel.
    pub fn start(
        self,
        commands: mpsc::Receiver<MediaCommand>,
        hub: mpsc::Sender<hub::Command>,
    ) -> io::Result<MediaThread> {
        let Media { worker, socks, tcp, public_ips, bandwidth_estimation, recorder } = self;
        // Sockets move to the thread's runtime as std sockets (still non-blocking).
        let socks = socks.into_iter().map(|s| Ok((s.socket.into_std()?, s.alias))).collect::<io::Result<Vec<_>>>()?;
        let (mut tcp_events, mut ice, mut dedicated) = (None, None, None);
        let mut tcp_addresses = Vec::new();
        if let Some(tcp) = tcp {
            if let Some(listener) = tcp.dedicated {
                dedicated = Some(AbortOnDrop(tokio::spawn(crate::ice_tcp::serve_dedicated(listener, tcp.ice.clone()))));
            }
            tcp_addresses = tcp.addresses;
            tcp_events = Some(tcp.events);
            ice = Some(tcp.ice);
        }
        let thread = std::thread::Builder::new().name(format!("huddle-media-{worker}")).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return warn!(error = %e, "cannot start the SFU thread's runtime; the SFU is off"),
            };
            rt.block_on(async move {
                let mut bound = Vec::new();
                for (std, alias) in socks {
                    match UdpSocket::from_std(std) {
                        Ok(socket) => bound.push(Sock { socket, alias }),
                        Err(e) => warn!(%alias, error = %e, "cannot use the SFU's socket; skipped"),
                    }
                }
                let media = Media { worker, socks: bound, tcp: None, public_ips, bandwidth_estimation, recorder };
                media.run(commands, hub, tcp_addresses, tcp_events, ice).await;
            });
        })?;
        Ok(MediaThread { thread, _dedicated: dedicated })
    }

    async fn run(
        self,
        commands: mpsc::Receiver<MediaCommand>,
        hub: mpsc::Sender<hub::Command>,
        tcp_addresses: Vec<SocketAddr>,
        tcp_events: Option<mpsc::Receiver<TcpEvent>>,
        ice: Option<IceTcp>,
    ) {
        let mut sfu = Sfu::with_addresses(self.addresses());
        sfu.set_ufrag_prefix(&crate::workers::ufrag_prefix(self.worker));
        sfu.set_tcp_addresses(tcp_addresses);
        sfu.set_bandwidth_estimation(self.bandwidth_estimation);
        let outgoing = self.socks.iter().map(|_| Vec::new()).collect();
        let batch = std::env::var("HUDDLE_SFU_SENDMMSG").map_or(true, |v| v != "0");
        let mut driver = Driver {
            sfu,
            socks: self.socks,
            hub,
            stats: MediaStats::default(),
            sessions: HashMap::new(),
            last_session: 0,
            lost: HashSet::new(),
            outgoing,
            batch,
            tcp_events,
            ice,
            tcp_conns: HashMap::new(),
            public_ips: self.public_ips,
            recorder: self.recorder,
            record_skip: HashSet::new(),
        };
        driver.run(commands).await;
    }
}

/// The SFU's thread, and the dedicated ICE-TCP listener's task (on the shared runtime), which
/// ends when this is dropped.
pub struct MediaThread {
    pub thread: std::thread::JoinHandle<()>,
    _dedicated: Option<AbortOnDrop>,
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// ICE over TCP: the channel for the connection tasks, the dedicated listener if
/// `--media-tcp-port` is set, and the candidate addresses (every address `ips` of the HTTP
/// listener, on the TCP port, with public aliases applied like UDP's).
async fn bind_tcp(
    config: &Config,
    http: SocketAddr,
    ips: &[IpAddr],
    workers: usize,
) -> anyhow::Result<(TcpSetup, Vec<mpsc::Receiver<TcpEvent>>)> {
    let (ice, mut events) = IceTcp::channels(workers);
    let (dedicated, port) = match config.media_tcp_port {
        Some(port) => {
            let listener = TcpListener::bind((http.ip(), port))
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen for ICE over TCP on {}:{port}: {e}", http.ip()))?;
            let port = listener.local_addr()?.port();
            (Some(listener), port)
        }
        None => (None, http.port()),
    };
    let mut addresses = Vec::new();
    for ip in ips {
        let local = SocketAddr::new(*ip, port);
        let alias = public_alias(&config.media_public_ips, local).unwrap_or(local);
        if !addresses.contains(&alias) {
            addresses.push(alias);
        }
    }
    let on_http_port = dedicated.is_none();
    let first = events.remove(0);
    Ok((TcpSetup { ice, events: first, dedicated, on_http_port, addresses }, events))
}

impl Media {}

/// Socket buffers for the SFU's port. The kernel's default (about 208 KiB) holds a few hundred
/// datagrams; one busy moment of the driver (a join renegotiating a room of 50) is enough to
/// overflow it and lose media and ICE checks. Linux caps the request at `net.core.rmem_max` /
/// `wmem_max` unless the process may force it (`CAP_NET_ADMIN`); a smaller grant is warned about.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

fn grow_buffers(socket: &UdpSocket) {
    batch::grow_buffers(socket, SOCKET_BUFFER_BYTES);
    let s = socket2::SockRef::from(socket);
    let (recv, send) = (s.recv_buffer_size().unwrap_or(0), s.send_buffer_size().unwrap_or(0));
    // Linux reports twice what was granted (the other half is its bookkeeping).
    if recv < SOCKET_BUFFER_BYTES {
        warn!(
            recv,
            send,
            "the SFU's socket buffers are smaller than asked for; raise net.core.rmem_max and wmem_max for big rooms"
        );
    } else {
        debug!(recv, send, "SFU socket buffers");
    }
}

/// Addresses to bind on: `ip` itself, or every usable interface address of its family when it
/// is a wildcard (loopback included, for browsers on the same machine).
pub(crate) fn interface_ips(ip: IpAddr) -> Vec<IpAddr> {
    if !ip.is_unspecified() {
        return vec![ip];
    }
    let mut ips: Vec<IpAddr> = match if_addrs::get_if_addrs() {
        Ok(ifs) => ifs
            .into_iter()
            .map(|i| i.ip())
            .filter(|a| match (ip, a) {
                (IpAddr::V4(_), IpAddr::V4(_)) => true,
                // IPv6 link-local addresses need a scope id browsers rarely get right.
                (IpAddr::V6(_), IpAddr::V6(v6)) => (v6.segments()[0] & 0xffc0) != 0xfe80,
                (IpAddr::V6(_), IpAddr::V4(_)) => true,
                _ => false,
            })
            .collect(),
        Err(e) => {
            warn!(error = %e, "cannot list network interfaces; the SFU listens on loopback only");
            Vec::new()
        }
    };
    if ips.is_empty() {
        ips.push(if ip.is_ipv4() { IpAddr::from([127, 0, 0, 1]) } else { IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]) });
    }
    // Non-loopback first, so the first (preferred) candidate is the one other machines can reach.
    ips.sort_by_key(|a| a.is_loopback());
    ips.dedup();
    ips
}

/// The configured public address of the same family, for a socket on a non-loopback address.
pub(crate) fn public_alias(public: &[IpAddr], local: SocketAddr) -> Option<SocketAddr> {
    if local.ip().is_loopback() {
        return None;
    }
    public.iter().find(|p| p.is_ipv4() == local.is_ipv4()).map(|ip| SocketAddr::new(*ip, local.port()))
}

/// The core's participant id for a signalling id (`p12` → 12). Ids are assigned by the server,
/// so this only fails for ids the server did not make.
fn core_id(peer: &PeerId) -> Option<huddle_sfu::PeerId> {
    peer.0.strip_prefix('p')?.parse().ok().map(huddle_sfu::PeerId)
}

pub(crate) fn signal_id(peer: huddle_sfu::PeerId) -> PeerId {
    PeerId(peer.to_string())
}

/// One participant's session on the SFU, as the signalling layer names it.
#[derive(Clone, Copy, Debug)]
struct SessionInfo {
    /// The `session` of the `signal`s and errors about it.
    number: u64,
    started: Instant,
    /// Still in the core: false once the participant closed it.
    live: bool,
}

struct Driver {
    sfu: Sfu,
    socks: Vec<Sock>,
    hub: mpsc::Sender<hub::Command>,
    stats: MediaStats,
    /// Each participant's current session: its number and when it started (for
    /// [`RESTART_MIN_INTERVAL`]). Kept after the participant closed the session itself, so that
    /// closing does not skip the interval; dropped when the SFU lost the session (its next
    /// offer is taken at once) or the participant left.
    sessions: HashMap<huddle_sfu::PeerId, SessionInfo>,
    /// The number of the last session started; numbers are never reused while the server runs.
    last_session: u64,
    /// Participants whose session ended without their offer or leave (the SFU lost it, or they
    /// closed it) and who have not offered again or left since: their late answers are ignored,
    /// not refused.
    lost: HashSet<huddle_sfu::PeerId>,
    /// Datagrams of one flush, per socket, handed to the kernel together.
    outgoing: Vec<Vec<(SocketAddr, Vec<u8>)>>,
    /// `sendmmsg` (default) or one `send_to` per datagram (`HUDDLE_SFU_SENDMMSG=0`, to measure
    /// the difference).
    batch: bool,
    /// Packets from the ICE-TCP connection tasks (`None`: ICE-TCP is off).
    tcp_events: Option<mpsc::Receiver<TcpEvent>>,
    /// The handle the listeners hold too (for its counters).
    ice: Option<IceTcp>,
    /// Each ICE-TCP connection's queue, by (our candidate address, the browser's address).
    tcp_conns: HashMap<(SocketAddr, SocketAddr), mpsc::Sender<Vec<u8>>>,
    /// `--media-public-ip`: the candidate address of a connection to a LAN address.
    public_ips: Vec<IpAddr>,
    /// This worker's recording writer (see [`crate::recording`]).
    recorder: Option<WriterTx>,
    /// Recorded video tracks that lost a frame on the way to the writer (its queue was full):
    /// their frames are dropped until the next keyframe, so that what is written decodes.
    record_skip: HashSet<u64>,
}

impl Driver {
    async fn run(&mut self, mut commands: mpsc::Receiver<MediaCommand>) {
        let mut buf = vec![0u8; RECV_BUFFER];
        info!(addresses = ?self.addresses_for_log(), "SFU ready");
        let mut next_tick = Instant::now();
        loop {
            let deadline = self
                .sfu
                .poll_timeout()
                .map(|t| tokio::time::Instant::from_std(t.max(next_tick)))
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                (i, received) = recv_any(&self.socks, &mut buf) => {
                    self.datagram(i, received, &buf);
                    // More may be waiting: take them without another trip through the scheduler.
                    for _ in 1..RECV_BATCH {
                        let Some((i, received)) = try_recv_any(&self.socks, &mut buf) else { break };
                        self.datagram(i, received, &buf);
                    }
                }
                event = recv_tcp(&mut self.tcp_events) => match event {
                    Some(event) => {
                        self.tcp_event(event);
                        for _ in 1..RECV_BATCH {
                            let Some(event) = self.tcp_events.as_mut().and_then(|rx| rx.try_recv().ok()) else { break };
                            self.tcp_event(event);
                        }
                    }
                    // Every listener is gone (shutting down): nothing more comes.
                    None => self.tcp_events = None,
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
            // Under a steady stream of datagrams the sleep branch may never win: check the
            // deadline on every turn.
            let now = Instant::now();
            if now >= next_tick && self.sfu.poll_timeout().is_some_and(|t| t <= now) {
                let _ = self.sfu.handle_input(Input::Timeout(now));
                next_tick = now + TIMER_TICK;
            }
            self.flush();
        }
        debug!("SFU stopped");
    }

    fn addresses_for_log(&self) -> Vec<String> {
        self.socks.iter().map(|s| s.alias.to_string()).collect()
    }

    fn datagram(&mut self, i: usize, received: io::Result<(usize, SocketAddr)>, buf: &[u8]) {
        match received {
            Ok((n, from)) => {
                self.stats.datagrams_in += 1;
                let (proto, to, bytes) = (Transport::Udp, self.socks[i].alias, buf[..n].to_vec());
                let input = Input::Packet { now: Instant::now(), proto, from, to, bytes };
                // Datagram errors concern one participant and are already events.
                let _ = self.sfu.handle_input(input);
            }
            Err(e) => debug!(error = %e, "UDP receive error"),
        }
    }

    /// A connection opened, or a packet from one.
    fn tcp_event(&mut self, event: TcpEvent) {
        match event {
            TcpEvent::Open { local, remote, out } => {
                // Closed connections leave their queue behind: sweep them out now and then.
                if self.tcp_conns.len() >= 64 && self.tcp_conns.len().is_power_of_two() {
                    self.tcp_conns.retain(|_, q| !q.is_closed());
                }
                let local = public_alias(&self.public_ips, local).unwrap_or(local);
                self.tcp_conns.insert((local, remote), out);
            }
            TcpEvent::Frame { local, remote, bytes } => {
                self.stats.datagrams_in += 1;
                let to = public_alias(&self.public_ips, local).unwrap_or(local);
                let input = Input::Packet { now: Instant::now(), proto: Transport::Tcp, from: remote, to, bytes };
                let _ = self.sfu.handle_input(input);
            }
        }
    }

    /// A packet for an ICE-TCP connection: into its queue, or dropped.
    fn transmit_tcp(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        let Some(queue) = self.tcp_conns.get(&(from, to)) else {
            self.stats.tcp_dropped += 1;
            return;
        };
        match queue.try_send(bytes) {
            Ok(()) => {
                self.stats.tcp_frames_out += 1;
                self.stats.datagrams_out += 1;
            }
            Err(mpsc::error::TrySendError::Full(_)) => self.stats.tcp_dropped += 1,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.stats.tcp_dropped += 1;
                self.tcp_conns.remove(&(from, to));
            }
        }
    }

    fn command(&mut self, cmd: MediaCommand) {
        let now = Instant::now();
        match cmd {
            MediaCommand::Offer { peer, room, offer } => {
                let Some(id) = core_id(&peer) else {
                    return self.tell_error(peer, ErrorCode::MediaRefused, None, None);
                };
                let since = |s: &SessionInfo| now.saturating_duration_since(s.started);
                let left = self.sessions.get(&id).and_then(|s| RESTART_MIN_INTERVAL.checked_sub(since(s)));
                if let Some(left) = left.filter(|l| !l.is_zero()) {
                    info!(%peer, "SFU refused a restart that came too soon");
                    return self.tell_error(peer, ErrorCode::MediaRetry, None, Some(left));
                }
                // A new offer starts the participant's session over; refused, it changes nothing.
                let input = Input::Restart { now, room: room.to_string(), peer: id, offer };
                match self.sfu.handle_input(input) {
                    Ok(()) => {
                        self.last_session += 1;
                        let info = SessionInfo { number: self.last_session, started: now, live: true };
                        self.sessions.insert(id, info);
                        self.lost.remove(&id);
                    }
                    Err(e) => {
                        // The error may quote the SDP, which holds the client's addresses: debug only.
                        info!(%peer, "SFU refused an offer");
                        debug!(%peer, error = %e, "SFU refused an offer");
                        self.tell_error(peer, ErrorCode::MediaRefused, None, None);
                    }
                }
            }
            MediaCommand::Answer { peer, answer } => {
                let Some(id) = core_id(&peer) else { return self.refuse_answer(peer) };
                match self.sfu.handle_input(Input::Answer { now, peer: id, answer }) {
                    Ok(()) => {}
                    // An answer to an offer of a session that has ended since (the SFU lost it,
                    // or the participant closed it): the participant starts over, and a refusal
                    // now would only be noise.
                    Err(SfuError::UnknownPeer(_)) if self.lost.contains(&id) => {
                        debug!(%peer, "an answer for a session that ended")
                    }
                    Err(e) => {
                        info!(%peer, "SFU refused an answer");
                        debug!(%peer, error = %e, "SFU refused an answer");
                        self.refuse_answer(peer);
                    }
                }
            }
            MediaCommand::Leave { peer } => {
                if let Some(id) = core_id(&peer) {
                    // Unknown to the core is fine: it may never have offered.
                    let _ = self.sfu.handle_input(Input::Leave { now, peer: id });
                    self.sessions.remove(&id);
                    self.lost.remove(&id);
                }
            }
            MediaCommand::Receive { peer, publisher, video } => {
                let (Some(id), Some(publisher)) = (core_id(&peer), core_id(&publisher)) else { return };
                let video = match video {
                    VideoQuality::Off => huddle_sfu::VideoQuality::Off,
                    VideoQuality::Low => huddle_sfu::VideoQuality::Low,
                    VideoQuality::Medium => huddle_sfu::VideoQuality::Medium,
                    VideoQuality::High => huddle_sfu::VideoQuality::High,
                };
                // Unknown to the core: the page said it before offering; it will say it again.
                let _ = self.sfu.handle_input(Input::Receive { now, peer: id, publisher, video });
            }
            MediaCommand::Hold { peer, audio, video } => {
                // Unknown to the core: it has not offered yet; the hub says it again after the offer.
                if let Some(id) = core_id(&peer) {
                    let _ = self.sfu.handle_input(Input::Hold { now, peer: id, audio, video });
                }
            }
            MediaCommand::Stats { reply } => {
                let (forwarded_packets, forwarded_bytes) = self.sfu.forwarded();
                let mut stats = MediaStats {
                    participants: self.sfu.peer_count(),
                    forwarded_packets,
                    forwarded_bytes,
                    ..self.stats
                };
                if let Some(ice) = &self.ice {
                    use std::sync::atomic::Ordering::Relaxed;
                    stats.tcp_connections = ice.open();
                    stats.tcp_frames_in = ice.counters.frames_in.load(Relaxed);
                    stats.tcp_dropped += ice.counters.dropped_in.load(Relaxed);
                }
                let _ = reply.send(stats);
            }
            MediaCommand::Record { room, on } => {
                let input = Input::Record { now: Instant::now(), room: room.to_string(), on };
                if let Err(e) = self.sfu.handle_input(input) {
                    warn!(error = %e, "the SFU refused to record");
                }
            }
            MediaCommand::Recorder(msg) => {
                if let Some(writer) = &self.recorder {
                    writer.send(msg);
                }
            }
        }
    }

    /// Refuses the participant's answer, naming the session it was for.
    fn refuse_answer(&mut self, peer: PeerId) {
        let session = self.session_of(&peer);
        self.tell_error(peer, ErrorCode::MediaAnswerRefused, session, None);
    }

    /// An error about the participant's last `signal`.
    fn tell_error(&mut self, peer: PeerId, code: ErrorCode, session: Option<u64>, retry_after: Option<Duration>) {
        self.tell_hub(MediaEvent::Error { peer, code, request: Some("signal"), session, retry_after });
    }

    /// The number of the participant's live session; `None` when it has none.
    fn session_of(&self, peer: &PeerId) -> Option<u64> {
        let id = core_id(peer)?;
        self.sessions.get(&id).filter(|s| s.live).map(|s| s.number)
    }

    /// What the core recorded goes to the writer thread. A frame the writer's queue cannot take
    /// is dropped and counted; its video track skips to its next keyframe.
    fn recorded(&mut self, r: huddle_sfu::Recorded) {
        let Some(writer) = &self.recorder else { return };
        if let huddle_sfu::Recorded::Frame { track, keyframe, .. } = &r {
            if self.record_skip.contains(track) {
                if !keyframe {
                    self.stats.recorded_dropped += 1;
                    return;
                }
                self.record_skip.remove(track);
            }
            let track = *track;
            if !writer.send(WriterMsg::Core(r)) {
                self.stats.recorded_dropped += 1;
                self.record_skip.insert(track);
            }
            return;
        }
        if let huddle_sfu::Recorded::TrackEnded { track, .. } = &r {
            self.record_skip.remove(track);
        }
        writer.send(WriterMsg::Core(r));
    }

    fn tell_hub(&mut self, event: MediaEvent) {
        if self.hub.try_send(hub::Command::Media(event)).is_err() {
            self.stats.events_dropped += 1;
            warn!("hub queue full; an SFU message for a participant was dropped");
        }
    }

    /// Drains the core: datagrams to the network, SDP and failures to the hub.
    fn flush(&mut self) {
        while let Some(out) = self.sfu.poll_output() {
            match out {
                Output::Transmit { proto: Transport::Tcp, from, to, bytes } => self.transmit_tcp(from, to, bytes),
                Output::Transmit { proto: Transport::Udp, from, to, bytes } => {
                    let Some(i) = self.socks.iter().position(|s| s.alias == from) else {
                        debug!(%from, "no socket for a transmit address");
                        continue;
                    };
                    self.outgoing[i].push((to, bytes));
                }
                Output::Signal { peer, signal } => {
                    let (kind, sdp) = match signal {
                        Signal::Answer(sdp) => (SdpType::Answer, sdp),
                        Signal::Offer(sdp) => (SdpType::Offer, sdp),
                    };
                    let payload = SignalPayload::Description { description: SessionDescription { kind, sdp } };
                    // The core's outputs are drained after every input, so what comes out now
                    // concerns the session that is current now (a new offer's session is
                    // recorded before its answer is drained).
                    let Some(session) = self.sessions.get(&peer).map(|s| s.number) else {
                        debug!(%peer, "SDP for a participant with no session");
                        continue;
                    };
                    self.tell_hub(MediaEvent::Signal { peer: signal_id(peer), payload, session });
                }
                Output::Event(Event::Connected(peer)) => debug!(%peer, "SFU connected"),
                Output::Event(Event::Removed { peer, reason: RemoveReason::Left }) => debug!(%peer, "SFU session left"),
                Output::Event(Event::Removed { peer, reason: RemoveReason::Closed }) => {
                    // The participant closed it itself, most likely to start a new one: nothing
                    // to tell it. Its restart interval still counts from this session's start.
                    debug!(%peer, "SFU session closed by the participant");
                    if let Some(s) = self.sessions.get_mut(&peer) {
                        s.live = false;
                    }
                    self.lost.insert(peer);
                }
                Output::Event(Event::Removed { peer, reason }) => {
                    let session = self.sessions.remove(&peer).map(|s| s.number);
                    self.lost.insert(peer);
                    // A str0m error's text may hold addresses: debug only.
                    info!(%peer, "SFU lost a participant");
                    debug!(%peer, ?reason, "SFU lost a participant");
                    let event = MediaEvent::Error {
                        peer: signal_id(peer),
                        code: ErrorCode::MediaFailed,
                        request: None,
                        session,
                        retry_after: None,
                    };
                    self.tell_hub(event);
                }
                Output::Event(Event::Dropped { .. }) => self.stats.datagrams_unclaimed += 1,
                Output::Event(Event::ActiveSpeaker { room, peer }) => {
                    self.tell_hub(MediaEvent::ActiveSpeaker { room, peer: signal_id(peer) });
                }
                #[allow(unreachable_patterns)]
                Output::Event(_) => {}
                Output::Record(r) => self.recorded(r),
            }
        }
        for (sock, datagrams) in self.socks.iter().zip(self.outgoing.iter_mut()) {
            if datagrams.is_empty() {
                continue;
            }
            let sent = if self.batch {
                batch::send_all(&sock.socket, datagrams)
            } else {
                batch::one_by_one(&sock.socket, datagrams)
            };
            self.stats.datagrams_out += sent.sent;
            self.stats.send_dropped += sent.dropped;
            datagrams.clear();
        }
    }
}

/// Waits for an ICE-TCP event; never, when ICE-TCP is off.
async fn recv_tcp(events: &mut Option<mpsc::Receiver<TcpEvent>>) -> Option<TcpEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits for a datagram on any socket.
async fn recv_any(socks: &[Sock], buf: &mut [u8]) -> (usize, io::Result<(usize, SocketAddr)>) {
    poll_fn(|cx| {
        for (i, s) in socks.iter().enumerate() {
            let mut rb = ReadBuf::new(buf);
            if let Poll::Ready(r) = s.socket.poll_recv_from(cx, &mut rb) {
                let n = rb.filled().len();
                return Poll::Ready((i, r.map(|from| (n, from))));
            }
        }
        Poll::Pending
    })
    .await
}

/// A datagram already waiting on any socket, without waiting.
fn try_recv_any(socks: &[Sock], buf: &mut [u8]) -> Option<(usize, io::Result<(usize, SocketAddr)>)> {
    for (i, s) in socks.iter().enumerate() {
        match s.socket.try_recv_from(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return Some((i, r)),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signalling_ids_map_to_core_ids_and_back() {
        let id = core_id(&PeerId("p42".into())).expect("server-made id");
        assert_eq!(id, huddle_sfu::PeerId(42));
        assert_eq!(signal_id(id), PeerId("p42".into()));
        assert_eq!(core_id(&PeerId("sfu".into())), None);
        assert_eq!(core_id(&PeerId("p".into())), None);
        assert_eq!(core_id(&PeerId("p-1".into())), None);
    }

    #[test]
    fn public_addresses_replace_lan_addresses_of_the_same_family() {
        let public = [IpAddr::from([203, 0, 113, 7])];
        let lan: SocketAddr = "192.168.1.20:8080".parse().expect("addr");
        let lo: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let v6: SocketAddr = "[2001:db8::1]:8080".parse().expect("addr");
        assert_eq!(public_alias(&public, lan), Some("203.0.113.7:8080".parse().expect("addr")));
        assert_eq!(public_alias(&public, lo), None, "loopback stays loopback");
        assert_eq!(public_alias(&public, v6), None);
    }

    #[test]
    fn a_specific_listen_address_is_used_as_is() {
        assert_eq!(interface_ips(IpAddr::from([127, 0, 0, 1])), vec![IpAddr::from([127, 0, 0, 1])]);
        let all = interface_ips(IpAddr::from([0, 0, 0, 0]));
        assert!(all.iter().all(|ip| ip.is_ipv4()));
        assert!(all.iter().any(|ip| ip.is_loopback()), "loopback is always there: {all:?}");
    }
}
