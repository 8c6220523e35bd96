//! The built-in STUN/TURN server's driver: one task owns the core ([`huddle_turn::Server`]), the
//! UDP sockets of the TURN port and every relay socket; stream clients (TCP, and TLS when a
//! certificate is configured) each have a small task that frames messages and hands them over a
//! bounded channel. All of them run on a thread of their own ([`start`]).
//!
//! The hot paths stay in that one task without copies or hand-offs: a client's ChannelData
//! arrives on a TURN socket, the core finds the channel and its peer, and the payload goes out
//! of the relay socket straight from the receive buffer; a peer's datagram arrives on a relay
//! socket (each is polled through its own readiness future in a `FuturesUnordered`, so only
//! sockets with data are looked at), the core frames it, and it goes out of the TURN socket.
//!
//! Credentials are the TURN REST API's, made with the same secret (see [`TurnHandle`]): the hub
//! hands each session in a room `<expiry>:s.<random>` and its HMAC, grants that relay user to
//! the core when the session enters a room and revokes it when it leaves
//! ([`TurnCommand::Grant`], [`TurnCommand::Revoke`]); the connectivity check gets a `c.<random>`
//! one that relays nothing. The core refuses every address of this host as a peer (but the
//! relays and the SFU): the driver lists them at start and every [`HOST_ADDRESSES_EVERY`].

use crate::config::Config;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::{FuturesUnordered, StreamExt};
use huddle_protocol::IceServer;
use huddle_turn::{ClientKey, Relays, Secret, Server, Transport};
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, info, warn};

/// The TURN port when none is configured (IANA's STUN/TURN port).
pub const DEFAULT_PORT: u16 = 3478;
/// The TURN-over-TLS port when none is configured.
pub const DEFAULT_TLS_PORT: u16 = 5349;
/// The realm in every challenge.
pub const REALM: &str = "huddle";
/// Datagrams taken from one socket before looking at the others.
const RECV_BATCH: usize = 64;
/// Larger than any datagram a TURN client or peer sends over UDP.
const RECV_BUFFER: usize = 2048;
/// Largest framed message accepted from a stream client (a ChannelData of a full-size datagram
/// plus headers; STUN requests are far smaller).
const MAX_STREAM_FRAME: usize = 4096;
/// Stream connections at once; more are closed on accept.
const MAX_STREAM_CLIENTS: usize = 1024;
/// A stream client that sends nothing for this long is closed (clients refresh every few minutes).
const STREAM_IDLE: Duration = Duration::from_secs(600);
/// The TLS handshake and the first message must come within this.
const STREAM_FIRST_MESSAGE: Duration = Duration::from_secs(10);
/// Messages queued for one stream client; beyond, they are dropped (it is too slow).
const STREAM_OUTBOX: usize = 256;
/// Frames from all stream clients queued for the TURN task.
const STREAM_EVENTS: usize = 4096;
/// Commands queued for the TURN task (grants and revocations come one per join and leave).
pub(crate) const COMMANDS: usize = 4096;
/// How often the host's own addresses are listed again (DHCP, IPv6 privacy addresses).
pub const HOST_ADDRESSES_EVERY: Duration = Duration::from_secs(30);
/// How long the connectivity check's credential may make relays (a check takes seconds).
pub const CHECK_CREDENTIAL_TTL: Duration = Duration::from_secs(60);
/// Relay sockets' buffers (a relay carries one client's media). Small on purpose: under
/// overload, what cannot be relayed soon should be dropped, not queued for seconds
/// (`huddle-bench turn` saw 1 MiB relay buffers hold up to 1.8 s of traffic).
const RELAY_BUFFER_BYTES: usize = 256 * 1024;

/// What the hub needs to hand out credentials, and the addresses to announce.
#[derive(Clone, Debug)]
pub struct TurnHandle {
    pub secret: Secret,
    pub port: u16,
    pub tls_port: Option<u16>,
    /// Announced instead of the host the page was loaded from (`--turn-host`, else the first
    /// `--media-public-ip`).
    pub host: Option<String>,
    pub credential_ttl: Duration,
}

impl TurnHandle {
    /// The ICE servers for relay user `user` (a session's, [`session_user`]), reaching us at
    /// `host` (the page's `Host` header without the port; `None`: the listen address).
    pub fn ice_servers(&self, user: &str, host: Option<&str>, fallback: IpAddr) -> IceServer {
        self.with_credentials(user, self.credential_ttl, host, fallback)
    }

    /// The ICE servers for one connectivity check: a fresh `c.` user, valid for a minute, whose
    /// relays relay nothing (the core refuses them every peer).
    pub fn check_servers(&self, host: Option<&str>, fallback: IpAddr) -> IceServer {
        let user = format!("{}{}", huddle_turn::UserKind::CHECK_PREFIX, random_hex());
        self.with_credentials(&user, CHECK_CREDENTIAL_TTL, host, fallback)
    }

    fn with_credentials(&self, user: &str, ttl: Duration, host: Option<&str>, fallback: IpAddr) -> IceServer {
        let host = match (&self.host, host) {
            (Some(h), _) => h.clone(),
            (None, Some(h)) => h.to_string(),
            (None, None) => fallback.to_string(),
        };
        let host = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => host,
        };
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let creds = self.secret.issue(user, now, ttl.as_secs());
        let mut urls = vec![
            format!("stun:{host}:{}", self.port),
            format!("turn:{host}:{}?transport=udp", self.port),
            format!("turn:{host}:{}?transport=tcp", self.port),
        ];
        if let Some(p) = self.tls_port {
            urls.push(format!("turns:{host}:{p}?transport=tcp"));
        }
        IceServer { urls, username: Some(creds.username), credential: Some(creds.password) }
    }
}

/// A new relay user for a session: `s.` and 64 random bits, never handed out twice (not after a
/// restart either, unlike peer ids), so that quotas counted by user are that session's alone.
pub fn session_user() -> String {
    format!("{}{}", huddle_turn::UserKind::SESSION_PREFIX, random_hex())
}

fn random_hex() -> String {
    random_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The host part of a `Host` header, if it is a plain name or address (anything else is not
/// put into a URL).
pub fn host_of(header: &str) -> Option<String> {
    if let Some(rest) = header.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port_ok =
            after.is_empty() || after.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
        return (port_ok && v6.parse::<std::net::Ipv6Addr>().is_ok()).then(|| v6.to_ascii_lowercase());
    }
    let host = match header.split_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some(_) => return None,
        None => header,
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    ok.then(|| host.to_ascii_lowercase())
}

/// Counters for tests and monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnStats {
    pub core: huddle_turn::Stats,
    /// Datagrams dropped because a socket's send buffer was full.
    pub send_dropped: u64,
    /// Messages for stream clients dropped because their queue was full.
    pub stream_dropped: u64,
    /// Stream frames dropped because the TURN task's queue was full.
    pub events_dropped: u64,
    pub stream_clients: usize,
}

/// Asks of the TURN task.
#[derive(Debug)]
pub enum TurnCommand {
    Stats {
        reply: oneshot::Sender<TurnStats>,
    },
    /// These sessions' relay users may allocate (they entered a room, or came back with a
    /// restart).
    Grant {
        users: Vec<String>,
    },
    /// This session's relay user is done (it left its room): its relays close now.
    Revoke {
        user: String,
    },
}

/// From stream client tasks to the TURN task.
enum StreamEvent {
    Opened { key: ClientKey, outbox: mpsc::Sender<Vec<u8>> },
    Frame { key: ClientKey, data: Vec<u8> },
    Closed { key: ClientKey },
}

struct Listener {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
}

/// A TURN server running on its own thread.
pub struct Running {
    pub handle: TurnHandle,
    /// The UDP addresses it listens on.
    pub addresses: Vec<SocketAddr>,
    /// Dropping it stops the server.
    pub commands: mpsc::Sender<TurnCommand>,
    pub thread: std::thread::JoinHandle<()>,
}

/// Binds and runs the TURN server on a thread of its own with a single-threaded runtime, which
/// also runs its stream clients' tasks. On the server's shared multi-threaded runtime every
/// datagram sent woke another worker (write readiness) and each TCP frame crossed threads twice:
/// `huddle-bench turn` measured 22 % more relayed packets per second at saturation, 25 % less CPU
/// per packet and p99 at 100k relayed/s down from 87–187 ms to about 1 ms on one thread.
pub async fn start(
    config: Arc<Config>,
    http: SocketAddr,
    sfu: Vec<SocketAddr>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    shared_key: Option<Vec<u8>>,
) -> anyhow::Result<Running> {
    let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<(TurnHandle, Vec<SocketAddr>)>>();
    let (commands, rx) = mpsc::channel(COMMANDS);
    let thread = std::thread::Builder::new().name("huddle-turn".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(anyhow::anyhow!("cannot start the TURN thread's runtime: {e}")));
                return;
            }
        };
        rt.block_on(async move {
            match Turn::bind(&config, http, sfu, tls, shared_key).await {
                Ok(turn) => {
                    let _ = ready_tx.send(Ok((turn.handle(), turn.addresses())));
                    turn.run(rx).await;
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
    })?;
    let (handle, addresses) =
        ready_rx.await.map_err(|_| anyhow::anyhow!("the TURN thread ended before it was ready"))??;
    Ok(Running { handle, addresses, commands, thread })
}

/// The TURN server, bound and ready to run.
pub struct Turn {
    udp: Vec<Listener>,
    tcp: Vec<TcpListener>,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    core: Server,
    relays: RelayTable,
    handle: TurnHandle,
    /// For listing the host's addresses again.
    config: Arc<Config>,
}

impl Turn {
    /// Binds the TURN port (UDP and TCP, same number) on the HTTP listen address (every
    /// interface address for a wildcard), and the TLS port when `tls` is a real certificate.
    /// `sfu`: the SFU's addresses, which relays may always reach.
    pub async fn bind(
        config: &Config,
        http: SocketAddr,
        sfu: Vec<SocketAddr>,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
        shared_key: Option<Vec<u8>>,
    ) -> anyhow::Result<Turn> {
        let ips = crate::media::interface_ips(http.ip());
        let first = *ips.first().ok_or_else(|| anyhow::anyhow!("no network interface address for TURN"))?;
        let (udp, tcp) = bind_pair(config.turn_port, first, &ips).await?;
        let port = udp[0].local.port();
        let tls = match tls {
            Some(cfg) => {
                let want = config.turn_tls_port.unwrap_or(DEFAULT_TLS_PORT);
                let listener = match TcpListener::bind((http.ip(), want)).await {
                    Ok(l) => l,
                    Err(e) if config.turn_tls_port.is_none() && e.kind() == io::ErrorKind::AddrInUse => {
                        TcpListener::bind((http.ip(), 0)).await?
                    }
                    Err(e) => anyhow::bail!("cannot bind the TURN TLS port {want}: {e}"),
                };
                let mut cfg = (*cfg).clone();
                // TURN clients send no ALPN, or "stun.turn"; accept either.
                cfg.alpn_protocols = vec![b"stun.turn".to_vec()];
                Some((listener, tokio_rustls::TlsAcceptor::from(Arc::new(cfg))))
            }
            None => None,
        };
        let tls_port = match &tls {
            Some((l, _)) => Some(l.local_addr()?.port()),
            None => None,
        };
        // Kept in the data directory, so that credentials handed out outlive a restart; one
        // node of several uses the cluster's (`cluster::shared_keys`).
        let secret = match (&config.turn_secret, shared_key) {
            (Some(s), _) => Secret::new(s.as_bytes()),
            (None, Some(key)) => Secret::new(&key),
            (None, None) => match crate::persist::key(config.data_dir.as_deref(), "turn.key") {
                Some(key) => Secret::new(&key),
                None => Secret::new(&random_bytes()),
            },
        };
        let mut cfg = huddle_turn::Config::new(REALM, secret.clone(), random_bytes().to_vec());
        cfg.policy.allow = config.turn_allow_peers.clone();
        // Loopback and unspecified addresses are the host's anyway.
        cfg.policy.host = host_addresses(config).unwrap_or_else(|| config.media_public_ips.clone());
        cfg.trusted_peers = sfu;
        cfg.user_allocations = config.turn_user_quota;
        cfg.ip_users = config.turn_ip_users;
        cfg.ip_allocations = config.turn_ip_allocations;
        cfg.user_bytes_per_sec = config.turn_user_bandwidth / 8;
        let now = Instant::now();
        let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let host = config.turn_host.clone().or_else(|| config.media_public_ips.first().map(|ip| ip.to_string()));
        let handle = TurnHandle { secret, port, tls_port, host, credential_ttl: config.turn_credential_ttl };
        Ok(Turn {
            udp,
            tcp,
            tls,
            core: Server::new(cfg, now, unix),
            relays: RelayTable::new(config.turn_relay_ports, config.media_public_ips.clone()),
            handle,
            config: Arc::new(config.clone()),
        })
    }

    pub fn handle(&self) -> TurnHandle {
        self.handle.clone()
    }

    /// The UDP addresses it listens on.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.udp.iter().map(|l| l.local).collect()
    }

    /// Runs until `commands` closes.
    pub async fn run(mut self, mut commands: mpsc::Receiver<TurnCommand>) {
        let (events_tx, mut events) = mpsc::channel(STREAM_EVENTS);
        let events_dropped = Arc::new(AtomicU64::new(0));
        let limit = Arc::new(Semaphore::new(MAX_STREAM_CLIENTS));
        let mut acceptors = Vec::new();
        for l in std::mem::take(&mut self.tcp) {
            acceptors.push(tokio::spawn(accept(l, None, events_tx.clone(), limit.clone(), events_dropped.clone())));
        }
        if let Some((l, acceptor)) = self.tls.take() {
            acceptors.push(tokio::spawn(accept(
                l,
                Some(acceptor),
                events_tx.clone(),
                limit.clone(),
                events_dropped.clone(),
            )));
        }
        drop(events_tx);
        info!(addresses = ?self.addresses(), tls_port = ?self.handle.tls_port, "TURN ready");
        let mut d = Driver {
            core: self.core,
            udp: self.udp,
            relays: self.relays,
            streams: HashMap::new(),
            stats: TurnStats::default(),
            events_dropped,
            out: Vec::with_capacity(RECV_BUFFER),
        };
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut host_listed = Instant::now();
        loop {
            tokio::select! {
                biased;
                // Commands first: a revocation the hub sent before telling the room is in effect
                // before anything that follows from it reaches the TURN port.
                cmd = commands.recv() => match cmd {
                    Some(TurnCommand::Stats { reply }) => {
                        let _ = reply.send(d.stats());
                    }
                    Some(TurnCommand::Grant { users }) => {
                        for user in users {
                            d.core.grant(&user);
                        }
                    }
                    Some(TurnCommand::Revoke { user }) => d.core.revoke(&user, &mut d.relays),
                    None => break,
                },
                _ = tick.tick() => {
                    d.core.handle_timeout(Instant::now(), &mut d.relays);
                    if host_listed.elapsed() >= HOST_ADDRESSES_EVERY {
                        host_listed = Instant::now();
                        if let Some(ips) = host_addresses(&self.config) {
                            d.core.set_host_addresses(ips);
                        }
                    }
                }
                ev = events.recv() => {
                    if let Some(ev) = ev {
                        d.stream_event(ev);
                    }
                }
                // Relays before the TURN port: what was taken in is sent on before more comes in,
                // so an overload drops at the door instead of after half the work.
                Some(ready) = d.relays.ready.next() => {
                    if let Ok(relay) = ready {
                        d.drain_relay(relay, &mut buf);
                    }
                }
                i = ready_any(&d.udp) => d.drain_client_socket(i, &mut buf),
            }
            d.flush();
        }
        for a in acceptors {
            a.abort();
        }
        info!(stats = ?d.stats(), "TURN stopped");
    }
}

/// Binds UDP and TCP on the same port number: the configured one, or the default if free, else
/// any port free for both.
async fn bind_pair(
    configured: Option<u16>,
    first: IpAddr,
    ips: &[IpAddr],
) -> anyhow::Result<(Vec<Listener>, Vec<TcpListener>)> {
    let wanted = configured.unwrap_or(DEFAULT_PORT);
    let mut attempt = 0;
    loop {
        let port = if attempt == 0 { wanted } else { 0 };
        attempt += 1;
        let result: io::Result<(Vec<Listener>, Vec<TcpListener>)> = async {
            let first_udp = UdpSocket::bind((first, port)).await?;
            let port = first_udp.local_addr()?.port();
            let mut udp = vec![first_udp];
            for ip in &ips[1..] {
                match UdpSocket::bind((*ip, port)).await {
                    Ok(s) => udp.push(s),
                    Err(e) => warn!(%ip, port, error = %e, "cannot bind the TURN port on this address; skipped"),
                }
            }
            let mut tcp = Vec::new();
            for s in &udp {
                tcp.push(TcpListener::bind(s.local_addr()?).await?);
            }
            let udp = udp
                .into_iter()
                .map(|s| {
                    crate::batch::grow_buffers(&s, crate::media::SOCKET_BUFFER_BYTES);
                    let local = s.local_addr()?;
                    Ok(Listener { socket: Arc::new(s), local })
                })
                .collect::<io::Result<Vec<_>>>()?;
            Ok((udp, tcp))
        }
        .await;
        match result {
            Ok(pair) => return Ok(pair),
            Err(e) if configured.is_none() && e.kind() == io::ErrorKind::AddrInUse && attempt < 8 => {
                if attempt == 1 {
                    info!(port = wanted, "the TURN port is taken; using another");
                }
            }
            Err(e) => anyhow::bail!("cannot bind the TURN port {first}:{port}: {e}"),
        }
    }
}

/// Every address of this host, which no relay may reach (but at its relays and the SFU): each
/// interface's (every family, link-local too), the public addresses it is announced at, and
/// `--turn-host` when that is an address. Loopback and unspecified addresses count anyway.
/// `None` when the interfaces cannot be listed.
fn host_addresses(config: &Config) -> Option<Vec<IpAddr>> {
    let mut ips: Vec<IpAddr> = match if_addrs::get_if_addrs() {
        Ok(ifs) => ifs.into_iter().map(|i| i.ip()).collect(),
        Err(e) => {
            warn!(error = %e, "cannot list network interfaces for the relay's peer rule");
            return None;
        }
    };
    ips.extend(config.media_public_ips.iter().copied());
    ips.extend(config.turn_host.as_deref().and_then(|h| h.parse::<IpAddr>().ok()));
    if !config.listen.ip().is_unspecified() {
        ips.push(config.listen.ip());
    }
    ips.sort();
    ips.dedup();
    Some(ips)
}

fn random_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).expect("the system random number generator works");
    b
}

/// The relay sockets, opened and closed at the core's request.
struct RelayTable {
    socks: HashMap<SocketAddr, (Arc<UdpSocket>, AbortHandle)>,
    ready: FuturesUnordered<Abortable<Pin<Box<dyn Future<Output = SocketAddr> + Send>>>>,
    range: (u16, u16),
    public_ips: Vec<IpAddr>,
    seed: u32,
}

impl RelayTable {
    fn new(range: (u16, u16), public_ips: Vec<IpAddr>) -> RelayTable {
        let seed = u32::from_le_bytes(random_bytes()[..4].try_into().expect("4 bytes")) | 1;
        RelayTable { socks: HashMap::new(), ready: FuturesUnordered::new(), range, public_ips, seed }
    }

    fn next_random(&mut self) -> u32 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 17;
        self.seed ^= self.seed << 5;
        self.seed
    }

    /// Waits (once) for `addr`'s socket to become readable.
    fn arm(&mut self, addr: SocketAddr) {
        let Some((sock, _)) = self.socks.get(&addr) else { return };
        let sock = sock.clone();
        let (handle, registration) = AbortHandle::new_pair();
        let fut: Pin<Box<dyn Future<Output = SocketAddr> + Send>> = Box::pin(async move {
            let _ = sock.readable().await;
            addr
        });
        self.ready.push(Abortable::new(fut, registration));
        if let Some(entry) = self.socks.get_mut(&addr) {
            entry.1 = handle;
        }
    }
}

impl Relays for RelayTable {
    fn open(&mut self, ip: IpAddr, even_port: bool) -> io::Result<(SocketAddr, SocketAddr)> {
        let (lo, hi) = self.range;
        let span = u32::from(hi - lo) + 1;
        for _ in 0..64 {
            let mut port = lo as u32 + self.next_random() % span;
            if even_port && port % 2 == 1 {
                port = if port > lo as u32 { port - 1 } else { port + 1 };
            }
            let Ok(port) = u16::try_from(port) else { continue };
            let std = match std::net::UdpSocket::bind((ip, port)) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            };
            std.set_nonblocking(true)?;
            let sock = UdpSocket::from_std(std)?;
            crate::batch::grow_buffers(&sock, RELAY_BUFFER_BYTES);
            let bound = sock.local_addr()?;
            let announced = crate::media::public_alias(&self.public_ips, bound).unwrap_or(bound);
            let (placeholder, _) = AbortHandle::new_pair();
            self.socks.insert(bound, (Arc::new(sock), placeholder));
            self.arm(bound);
            return Ok((bound, announced));
        }
        Err(io::Error::new(io::ErrorKind::AddrInUse, "no free relay port"))
    }

    fn close(&mut self, bound: SocketAddr) {
        if let Some((_, handle)) = self.socks.remove(&bound) {
            handle.abort();
        }
    }
}

struct Driver {
    core: Server,
    udp: Vec<Listener>,
    relays: RelayTable,
    /// Stream clients by connection number: their outbox.
    streams: HashMap<u64, mpsc::Sender<Vec<u8>>>,
    stats: TurnStats,
    /// Stream frames the stream tasks could not queue (shared with them).
    events_dropped: Arc<AtomicU64>,
    /// Scratch buffer for messages to clients.
    out: Vec<u8>,
}

impl Driver {
    fn stats(&self) -> TurnStats {
        TurnStats {
            core: self.core.stats(),
            stream_clients: self.streams.len(),
            events_dropped: self.events_dropped.load(Ordering::Relaxed),
            ..self.stats
        }
    }

    fn drain_client_socket(&mut self, i: usize, buf: &mut [u8]) {
        let now = Instant::now();
        for _ in 0..RECV_BATCH {
            let Some(l) = self.udp.get(i) else { return };
            let (n, from) = match l.socket.try_recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // ICMP errors of earlier sends surface here; nothing to do.
                    debug!(error = %e, "TURN receive error");
                    continue;
                }
            };
            let key = ClientKey::udp(l.local, from);
            if let Some(f) = self.core.from_client(now, key, &buf[..n], &mut self.relays) {
                self.send_to_peer(f.relay, f.peer, &buf[f.payload]);
            }
        }
    }

    fn drain_relay(&mut self, relay: SocketAddr, buf: &mut [u8]) {
        let Some((sock, _)) = self.relays.socks.get(&relay) else { return };
        let sock = sock.clone();
        let now = Instant::now();
        for _ in 0..RECV_BATCH {
            let (n, peer) = match sock.try_recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!(error = %e, "relay receive error");
                    continue;
                }
            };
            let mut out = std::mem::take(&mut self.out);
            if let Some(to) = self.core.from_peer(now, relay, peer, &buf[..n], &mut out) {
                self.send_to_client(to, &out);
            }
            self.out = out;
        }
        self.relays.arm(relay);
    }

    fn send_to_peer(&mut self, relay: SocketAddr, peer: SocketAddr, payload: &[u8]) {
        let Some((sock, _)) = self.relays.socks.get(&relay) else { return };
        match sock.try_send_to(payload, peer) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.stats.send_dropped += 1,
            Err(e) => debug!(error = %e, "relay send error"),
        }
    }

    fn send_to_client(&mut self, to: ClientKey, data: &[u8]) {
        match to.transport {
            Transport::Udp => {
                let Some(l) = self.udp.iter().find(|l| l.local == to.local) else { return };
                match l.socket.try_send_to(data, to.remote) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.stats.send_dropped += 1,
                    Err(e) => debug!(error = %e, "TURN send error"),
                }
            }
            Transport::Tcp | Transport::Tls => {
                let Some(tx) = self.streams.get(&to.conn) else { return };
                if tx.try_send(data.to_vec()).is_err() {
                    self.stats.stream_dropped += 1;
                }
            }
        }
    }

    fn stream_event(&mut self, ev: StreamEvent) {
        match ev {
            StreamEvent::Opened { key, outbox } => {
                self.streams.insert(key.conn, outbox);
            }
            StreamEvent::Frame { key, data } => {
                if let Some(f) = self.core.from_client(Instant::now(), key, &data, &mut self.relays) {
                    self.send_to_peer(f.relay, f.peer, &data[f.payload]);
                }
            }
            StreamEvent::Closed { key } => {
                self.streams.remove(&key.conn);
                self.core.client_gone(&key, &mut self.relays);
            }
        }
    }

    /// Sends the core's answers.
    fn flush(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            self.send_to_client(t.to, &t.data);
        }
    }
}

/// Waits until a TURN UDP socket is readable; returns its index.
async fn ready_any(socks: &[Listener]) -> usize {
    poll_fn(|cx| {
        for (i, l) in socks.iter().enumerate() {
            if l.socket.poll_recv_ready(cx).is_ready() {
                return Poll::Ready(i);
            }
        }
        Poll::Pending
    })
    .await
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Accepts stream clients on `listener` (TLS with `acceptor`), one task each.
async fn accept(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    events: mpsc::Sender<StreamEvent>,
    limit: Arc<Semaphore>,
    dropped: Arc<AtomicU64>,
) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "TURN accept error");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!("too many TURN stream clients; closed one");
            continue;
        };
        let Ok(local) = tcp.local_addr() else { continue };
        let _ = tcp.set_nodelay(true);
        let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let events = events.clone();
        let acceptor = acceptor.clone();
        let dropped = dropped.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                None => {
                    let key = ClientKey { transport: Transport::Tcp, conn, local, remote };
                    stream_client(tcp, key, events, dropped).await;
                }
                Some(acceptor) => {
                    let key = ClientKey { transport: Transport::Tls, conn, local, remote };
                    match tokio::time::timeout(STREAM_FIRST_MESSAGE, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => stream_client(tls, key, events, dropped).await,
                        _ => debug!(%remote, "TURN TLS handshake failed"),
                    }
                }
            }
        });
    }
}

/// One stream client: splits the byte stream into STUN and ChannelData messages for the TURN
/// task and writes what it sends back. Ends on EOF, an error, a malformed or oversized frame, or
/// silence.
async fn stream_client<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    key: ClientKey,
    events: mpsc::Sender<StreamEvent>,
    dropped: Arc<AtomicU64>,
) {
    let (outbox, mut outbox_rx) = mpsc::channel::<Vec<u8>>(STREAM_OUTBOX);
    if events.send(StreamEvent::Opened { key, outbox }).await.is_err() {
        return;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_STREAM_FRAME);
    let mut chunk = [0u8; MAX_STREAM_FRAME];
    let mut deadline = tokio::time::Instant::now() + STREAM_FIRST_MESSAGE;
    loop {
        tokio::select! {
            read = stream.read(&mut chunk) => {
                let n = match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut bad = false;
                while buf.len() >= 4 {
                    let Some(len) = huddle_turn::stun::stream_frame_len(&buf) else {
                        bad = true;
                        break;
                    };
                    if len > MAX_STREAM_FRAME {
                        bad = true;
                        break;
                    }
                    if buf.len() < len {
                        break;
                    }
                    let data: Vec<u8> = buf.drain(..len).collect();
                    deadline = tokio::time::Instant::now() + STREAM_IDLE;
                    if events.try_send(StreamEvent::Frame { key, data }).is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if bad {
                    debug!(remote = %key.remote, "TURN stream client sent a malformed frame; closed");
                    break;
                }
            }
            msg = outbox_rx.recv() => {
                let Some(msg) = msg else { break };
                if stream.write_all(&msg).await.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let _ = stream.shutdown().await;
    let _ = events.send(StreamEvent::Closed { key }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_become_url_hosts_or_nothing() {
        assert_eq!(host_of("meet.example.org"), Some("meet.example.org".into()));
        assert_eq!(host_of("Meet.Example.org:8443"), Some("meet.example.org".into()));
        assert_eq!(host_of("192.168.1.5:8080"), Some("192.168.1.5".into()));
        assert_eq!(host_of("[::1]:8080"), Some("::1".into()));
        assert_eq!(host_of("[fe80::1]"), Some("fe80::1".into()));
        for bad in ["", "a b", "x/y", "evil?transport=tcp", "[::1", "a@b", "host:80:90x"] {
            assert_eq!(host_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ice_servers_carry_rest_credentials_the_core_accepts() {
        let secret = Secret::new(b"s");
        let h = TurnHandle {
            secret: secret.clone(),
            port: 3478,
            tls_port: Some(5349),
            host: None,
            credential_ttl: Duration::from_secs(60),
        };
        let user = session_user();
        assert!(user.starts_with("s.") && user.len() == 18, "{user}");
        assert_ne!(user, session_user(), "never the same twice");
        let s = h.ice_servers(&user, Some("::1"), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(
            s.urls,
            [
                "stun:[::1]:3478",
                "turn:[::1]:3478?transport=udp",
                "turn:[::1]:3478?transport=tcp",
                "turns:[::1]:5349?transport=tcp"
            ]
        );
        let username = s.username.expect("a username");
        assert!(username.ends_with(&format!(":{user}")));
        assert_eq!(s.credential.as_deref(), Some(secret.password(&username).as_str()));
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert!(secret.key_for(&username, REALM, now).is_some(), "valid now");
        assert!(secret.key_for(&username, REALM, now + 61).is_none(), "expires with the TTL");
        // The check's: a user of its own, a minute.
        let check = h.check_servers(None, IpAddr::from([127, 0, 0, 1]));
        let check_user = check.username.expect("a username");
        assert!(check_user.split_once(':').is_some_and(|(_, u)| u.starts_with("c.")), "{check_user}");
        assert!(secret.key_for(&check_user, REALM, now + 59).is_some());
        assert!(secret.key_for(&check_user, REALM, now + 61).is_none());
        let fixed = TurnHandle { host: Some("turn.example.org".into()), tls_port: None, ..h };
        assert_eq!(
            fixed.ice_servers("p1", Some("other"), IpAddr::from([127, 0, 0, 1])).urls[0],
            "stun:turn.example.org:3478"
        );
    }
}
