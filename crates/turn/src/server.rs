//! The TURN server's state machine: allocations, permissions, channels, credentials and quotas.
//! No sockets, no clock: the driver hands in packets with the time, and asks a [`Relays`] to open
//! and close relay sockets.
//!
//! Credentials ([`UserKind`]): a session's may allocate only while the hub has granted its user
//! ([`Server::grant`]) and lose every allocation when it is revoked ([`Server::revoke`]); their
//! expiry is checked when an allocation is made, not on the refreshes of one in use. A
//! connectivity check's allocates a few short relays that relay nothing. Quotas count per user
//! (the part after the colon, which huddle never hands out twice) and per client address.

use crate::auth::{Nonces, Secret, UserKind, MAX_TEXT};
use crate::policy::PeerPolicy;
use crate::stun::{self, attr, method, Builder, Class, Message};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::debug;

/// How a client reaches the server.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Streams carry ChannelData padded to 4 bytes (RFC 8656 §12.5).
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// A client's 5-tuple: the server address it talks to and its own address, plus the connection
/// for streams (a new TCP connection from the same address is a new client).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ClientKey {
    pub transport: Transport,
    /// The stream connection's number (0 for UDP).
    pub conn: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl ClientKey {
    pub fn udp(local: SocketAddr, remote: SocketAddr) -> ClientKey {
        ClientKey { transport: Transport::Udp, conn: 0, local, remote }
    }
}

/// Opens and closes relay sockets for the core.
pub trait Relays {
    /// A new relay socket on `ip` (the address the client reached the server at), on an even port
    /// when asked. Returns the bound address and the address to announce (they differ behind 1:1
    /// NAT).
    fn open(&mut self, ip: IpAddr, even_port: bool) -> io::Result<(SocketAddr, SocketAddr)>;
    fn close(&mut self, bound: SocketAddr);
}

#[derive(Clone, Debug)]
pub struct Config {
    pub realm: String,
    pub secret: Secret,
    /// Random per process: keys the nonces.
    pub nonce_seed: Vec<u8>,
    pub policy: PeerPolicy,
    /// Peers allowed whatever the policy says (huddle's own SFU).
    pub trusted_peers: Vec<SocketAddr>,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    pub nonce_lifetime: Duration,
    pub max_allocations: usize,
    /// Allocations one user (the part of a REST username after the colon) may hold.
    pub user_allocations: u32,
    /// Allocations clients at one IP address may hold together; 0: no limit.
    pub ip_allocations: u32,
    /// Users with allocations from one IP address; 0: no limit.
    pub ip_users: u32,
    /// Bytes per second one user may relay, both directions together; 0: no limit.
    pub user_bytes_per_sec: u64,
    pub max_permissions: usize,
    pub max_channels: usize,
}

impl Config {
    pub fn new(realm: &str, secret: Secret, nonce_seed: Vec<u8>) -> Config {
        Config {
            realm: realm.to_string(),
            secret,
            nonce_seed,
            policy: PeerPolicy::default(),
            trusted_peers: Vec::new(),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            max_allocations: 10_000,
            user_allocations: 64,
            ip_allocations: 1024,
            ip_users: 64,
            user_bytes_per_sec: 0,
            max_permissions: 128,
            max_channels: 128,
        }
    }
}

/// A datagram or stream message for a client.
#[derive(Debug)]
pub struct Transmit {
    pub to: ClientKey,
    pub data: Vec<u8>,
}

/// Client data to relay: send `payload` (a range of the packet handed in) from `relay` (a bound
/// address) to `peer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub relay: SocketAddr,
    pub peer: SocketAddr,
    pub payload: Range<usize>,
}

/// Allocations one connectivity-check credential may make (one per way it tests: UDP, TCP,
/// TLS, with room for a second network interface).
pub const CHECK_USER_ALLOCATIONS: u32 = 6;
/// Check allocations clients at one IP address may hold together.
pub const CHECK_IP_ALLOCATIONS: u32 = 16;
/// A check allocation's lifetime (a check takes seconds, and closes what it made).
pub const CHECK_LIFETIME: Duration = Duration::from_secs(60);
/// Session users granted at once, at most (the hub grants one per session in a room).
pub const MAX_GRANTS: usize = 1 << 18;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub allocations: usize,
    /// Allocations closed because their session ended ([`Server::revoke`]).
    pub revoked: u64,
    pub allocations_total: u64,
    pub binding_requests: u64,
    /// Requests refused for missing or wrong credentials (401/438/441), not counting the first
    /// 401 that every client gets to learn the realm and nonce.
    pub auth_failures: u64,
    pub quota_refusals: u64,
    pub peers_denied: u64,
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    /// Packets dropped for want of a permission or channel (either direction).
    pub dropped_no_permission: u64,
    /// Packets dropped by the user's bandwidth quota.
    pub dropped_quota: u64,
    pub malformed: u64,
}

#[derive(Debug)]
struct Permission {
    expires: Instant,
    /// `None`: any port of the address. `Some`: only these ports — an address the policy refuses
    /// but that is one of our own relays or the SFU is reachable at exactly those, nothing else.
    ports: Option<Vec<u16>>,
}

#[derive(Debug)]
struct Channel {
    peer: SocketAddr,
    expires: Instant,
}

#[derive(Debug)]
struct Allocation {
    client: ClientKey,
    relay: SocketAddr,
    announced: SocketAddr,
    username: Box<str>,
    user: usize,
    kind: UserKind,
    expires: Instant,
    permissions: HashMap<IpAddr, Permission>,
    channels: HashMap<u16, Channel>,
    channel_of: HashMap<SocketAddr, u16>,
    /// The Allocate transaction and its success response, for a retransmitted request.
    created_by: [u8; 12],
    created_response: Vec<u8>,
}

#[derive(Debug)]
struct User {
    name: Arc<str>,
    allocations: u32,
    tokens: f64,
    last: Instant,
}

/// What the clients at one IP address hold.
#[derive(Debug, Default)]
struct Address {
    allocations: u32,
    /// Of them, the connectivity check's.
    checks: u32,
    /// Allocations by user slot.
    users: HashMap<usize, u32>,
}

/// The TURN server core.
pub struct Server {
    cfg: Config,
    nonces: Nonces,
    start: Instant,
    start_unix: u64,
    next_id: u64,
    allocs: HashMap<u64, Allocation>,
    by_client: HashMap<ClientKey, u64>,
    by_relay: HashMap<SocketAddr, u64>,
    by_announced: HashMap<SocketAddr, u64>,
    users: Vec<Option<User>>,
    user_ids: HashMap<Arc<str>, usize>,
    /// Session users the hub has let in (see [`UserKind::Session`]).
    granted: HashSet<Box<str>>,
    addresses: HashMap<IpAddr, Address>,
    out: VecDeque<Transmit>,
    stats: Stats,
    indications: u64,
}

/// Why a request failed: the code, its reason phrase, and whether the answer carries
/// MESSAGE-INTEGRITY (only when the client proved its key).
struct Refusal {
    code: u16,
    reason: &'static str,
}

const fn refuse(code: u16, reason: &'static str) -> Refusal {
    Refusal { code, reason }
}

impl Server {
    /// `now`/`unix_now`: the same moment on the driver's monotonic clock and in unix seconds (REST
    /// usernames carry unix expiry times).
    pub fn new(cfg: Config, now: Instant, unix_now: u64) -> Server {
        let nonces = Nonces::new(&cfg.nonce_seed);
        Server {
            cfg,
            nonces,
            start: now,
            start_unix: unix_now,
            next_id: 1,
            allocs: HashMap::new(),
            by_client: HashMap::new(),
            by_relay: HashMap::new(),
            by_announced: HashMap::new(),
            users: Vec::new(),
            user_ids: HashMap::new(),
            granted: HashSet::new(),
            addresses: HashMap::new(),
            out: VecDeque::new(),
            stats: Stats::default(),
            indications: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> Stats {
        Stats { allocations: self.allocs.len(), ..self.stats }
    }

    /// Lets session user `user` (`s.…`) allocate, until [`Server::revoke`].
    pub fn grant(&mut self, user: &str) {
        if self.granted.len() >= MAX_GRANTS {
            debug!("too many relay users granted; one refused");
            return;
        }
        self.granted.insert(user.into());
    }

    /// Ends session user `user`: its allocations close now and its credentials allocate no more.
    pub fn revoke(&mut self, user: &str, relays: &mut impl Relays) {
        self.granted.remove(user);
        let Some(&slot) = self.user_ids.get(user) else { return };
        let ids: Vec<u64> = self.allocs.iter().filter(|(_, a)| a.user == slot).map(|(id, _)| *id).collect();
        for id in ids {
            debug!(id, "allocation revoked");
            self.stats.revoked += 1;
            self.remove(id, relays);
        }
    }

    /// Every address of this host (it changes: DHCP, IPv6 privacy addresses). A permission for a
    /// whole address that is now the host's is dropped.
    pub fn set_host_addresses(&mut self, host: Vec<IpAddr>) {
        if host == self.cfg.policy.host {
            return;
        }
        self.cfg.policy.host = host;
        let policy = &self.cfg.policy;
        for a in self.allocs.values_mut() {
            a.permissions.retain(|ip, p| p.ports.is_some() || !policy.is_host(ip));
        }
    }

    /// Responses and indications for clients, in order.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    fn unix(&self, now: Instant) -> u64 {
        self.start_unix + now.saturating_duration_since(self.start).as_secs()
    }

    /// A packet from a client. Returns what to relay to a peer, if anything; answers go to
    /// [`Server::poll_transmit`].
    pub fn from_client(
        &mut self,
        now: Instant,
        client: ClientKey,
        data: &[u8],
        relays: &mut impl Relays,
    ) -> Option<Forward> {
        match stun::kind(data) {
            stun::Kind::ChannelData => self.channel_data(now, client, data),
            stun::Kind::Stun => match Message::parse(data) {
                Ok(msg) => self.stun(now, client, &msg, data, relays),
                Err(e) => {
                    self.stats.malformed += 1;
                    debug!(?e, remote = %client.remote, "malformed STUN message dropped");
                    None
                }
            },
            stun::Kind::Other => {
                self.stats.malformed += 1;
                None
            }
        }
    }

    fn channel_data(&mut self, now: Instant, client: ClientKey, data: &[u8]) -> Option<Forward> {
        let Some((number, payload)) = stun::parse_channel_data(data) else {
            self.stats.malformed += 1;
            return None;
        };
        let id = *self.by_client.get(&client)?;
        let alloc = self.allocs.get(&id)?;
        let peer = match alloc.channels.get(&number) {
            Some(c) if c.expires > now && self.may_send(alloc, &c.peer, now) => c.peer,
            _ => {
                self.stats.dropped_no_permission += 1;
                return None;
            }
        };
        let (relay, user) = (alloc.relay, alloc.user);
        if !self.spend(user, now, payload.len()) {
            return None;
        }
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += payload.len() as u64;
        Some(Forward { relay, peer, payload: 4..4 + payload.len() })
    }

    /// A datagram that reached relay socket `relay` (bound address) from `peer`. Writes the
    /// message for the client into `out` and returns who gets it.
    pub fn from_peer(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<ClientKey> {
        let id = *self.by_relay.get(&relay)?;
        let alloc = self.allocs.get(&id)?;
        if alloc.expires <= now || permission(alloc, &peer, now).is_none() {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        let client = alloc.client;
        let channel =
            alloc.channel_of.get(&peer).copied().filter(|c| alloc.channels.get(c).is_some_and(|c| c.expires > now));
        let user = alloc.user;
        if data.len() > u16::MAX as usize - 64 || !self.spend(user, now, data.len()) {
            return None;
        }
        match channel {
            Some(number) => stun::write_channel_data(out, number, data, client.transport.is_stream()),
            None => {
                self.indications += 1;
                let tid = self.transaction_id();
                let buf = std::mem::take(out);
                *out = Builder::reuse(buf, method::DATA, Class::Indication, tid)
                    .xor_address(attr::XOR_PEER_ADDRESS, peer)
                    .attr(attr::DATA, data)
                    .finish();
            }
        }
        self.stats.to_client_packets += 1;
        self.stats.to_client_bytes += data.len() as u64;
        Some(client)
    }

    /// A stream client went away: its allocation goes with it.
    pub fn client_gone(&mut self, client: &ClientKey, relays: &mut impl Relays) {
        if let Some(id) = self.by_client.get(client).copied() {
            self.remove(id, relays);
        }
    }

    /// Expires allocations, permissions and channels. Call about once a second.
    pub fn handle_timeout(&mut self, now: Instant, relays: &mut impl Relays) {
        let expired: Vec<u64> = self.allocs.iter().filter(|(_, a)| a.expires <= now).map(|(id, _)| *id).collect();
        for id in expired {
            debug!(id, "allocation expired");
            self.remove(id, relays);
        }
        for a in self.allocs.values_mut() {
            a.permissions.retain(|_, p| p.expires > now);
            a.channels.retain(|_, c| c.expires > now);
            let channels = &a.channels;
            a.channel_of.retain(|_, n| channels.contains_key(n));
        }
    }

    /// The next moment [`Server::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.allocs.values().map(|a| a.expires).min()
    }

    fn remove(&mut self, id: u64, relays: &mut impl Relays) {
        let Some(a) = self.allocs.remove(&id) else { return };
        self.by_client.remove(&a.client);
        self.by_relay.remove(&a.relay);
        self.by_announced.remove(&a.announced);
        relays.close(a.relay);
        let ip = a.client.remote.ip();
        if let Some(addr) = self.addresses.get_mut(&ip) {
            addr.allocations = addr.allocations.saturating_sub(1);
            if a.kind == UserKind::Check {
                addr.checks = addr.checks.saturating_sub(1);
            }
            if let Some(n) = addr.users.get_mut(&a.user) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    addr.users.remove(&a.user);
                }
            }
            if addr.allocations == 0 {
                self.addresses.remove(&ip);
            }
        }
        if let Some(Some(u)) = self.users.get_mut(a.user) {
            u.allocations = u.allocations.saturating_sub(1);
            if u.allocations == 0 {
                let name = u.name.clone();
                self.users[a.user] = None;
                self.user_ids.remove(&name);
            }
        }
    }

    fn transaction_id(&mut self) -> [u8; 12] {
        let mut tid = [0u8; 12];
        tid[..8].copy_from_slice(&self.indications.to_be_bytes());
        let seed = &self.cfg.nonce_seed;
        for (i, b) in tid.iter_mut().enumerate() {
            *b ^= seed.get(i).copied().unwrap_or(0x5a);
        }
        tid
    }

    /// Takes `bytes` from the user's budget; false (and counted) when it is spent.
    fn spend(&mut self, user: usize, now: Instant, bytes: usize) -> bool {
        let rate = self.cfg.user_bytes_per_sec;
        if rate == 0 {
            return true;
        }
        let Some(Some(u)) = self.users.get_mut(user) else { return true };
        let elapsed = now.saturating_duration_since(u.last).as_secs_f64();
        u.last = now;
        // A second's worth of burst.
        u.tokens = (u.tokens + elapsed * rate as f64).min(rate as f64);
        if u.tokens < bytes as f64 {
            self.stats.dropped_quota += 1;
            return false;
        }
        u.tokens -= bytes as f64;
        true
    }

    fn stun(
        &mut self,
        now: Instant,
        client: ClientKey,
        msg: &Message,
        data: &[u8],
        relays: &mut impl Relays,
    ) -> Option<Forward> {
        match msg.class {
            Class::Indication if msg.method == method::SEND => self.send_indication(now, client, msg, data),
            Class::Request => {
                if msg.method == method::BINDING {
                    self.stats.binding_requests += 1;
                    let mut b = Builder::new(method::BINDING, Class::Success, msg.transaction)
                        .xor_address(attr::XOR_MAPPED_ADDRESS, client.remote)
                        .address(attr::MAPPED_ADDRESS, client.remote);
                    if msg.has_fingerprint() {
                        b = b.fingerprint();
                    }
                    self.out.push_back(Transmit { to: client, data: b.finish() });
                    return None;
                }
                let unknown = msg.unknown_required();
                if !unknown.is_empty() {
                    debug!(?unknown, method = msg.method, "request with unknown comprehension-required attributes");
                    let list: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
                    let b = Builder::new(msg.method, Class::Error, msg.transaction)
                        .error(420, "Unknown Attribute")
                        .attr(attr::UNKNOWN_ATTRIBUTES, &list);
                    self.out.push_back(Transmit { to: client, data: b.finish() });
                    return None;
                }
                self.request(now, client, msg, relays);
                None
            }
            // Responses and other indications are not for a server.
            _ => None,
        }
    }

    fn send_indication(&mut self, now: Instant, client: ClientKey, msg: &Message, data: &[u8]) -> Option<Forward> {
        let id = *self.by_client.get(&client)?;
        let (peer, payload) = match (msg.xor_address(attr::XOR_PEER_ADDRESS), msg.get(attr::DATA)) {
            (Some(p), Some(d)) => (p, d),
            _ => {
                self.stats.malformed += 1;
                return None;
            }
        };
        let alloc = self.allocs.get(&id)?;
        if !self.may_send(alloc, &peer, now) {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        let (relay, user) = (alloc.relay, alloc.user);
        if !self.spend(user, now, payload.len()) {
            return None;
        }
        let start = payload.as_ptr() as usize - data.as_ptr() as usize;
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += payload.len() as u64;
        Some(Forward { relay, peer, payload: start..start + payload.len() })
    }

    /// An authenticated request: checks the credentials, then carries it out.
    fn request(&mut self, now: Instant, client: ClientKey, msg: &Message, relays: &mut impl Relays) {
        let (key, username) = match self.authenticate(now, client, msg) {
            Ok(k) => k,
            Err(answer) => {
                self.out.push_back(Transmit { to: client, data: answer });
                return;
            }
        };
        if msg.method == method::ALLOCATE {
            if let Some(a) = self.by_client.get(&client).and_then(|id| self.allocs.get(id)) {
                if a.created_by == msg.transaction && !a.created_response.is_empty() {
                    // A retransmission (the answer was lost): the same answer again.
                    self.out.push_back(Transmit { to: client, data: a.created_response.clone() });
                    return;
                }
            }
        }
        let result = match msg.method {
            method::ALLOCATE => self.allocate(now, client, msg, username, relays),
            method::REFRESH => self.refresh(now, client, msg, username, relays),
            method::CREATE_PERMISSION => self.create_permission(now, client, msg, username),
            method::CHANNEL_BIND => self.channel_bind(now, client, msg, username),
            _ => Err(refuse(400, "Bad Request")),
        };
        let fingerprint = msg.has_fingerprint();
        let data = match result {
            Ok(b) => b,
            Err(r) => {
                debug!(code = r.code, method = msg.method, remote = %client.remote, "TURN request refused");
                Builder::new(msg.method, Class::Error, msg.transaction).error(r.code, r.reason)
            }
        };
        let mut data = data.integrity(&key);
        if fingerprint {
            data = data.fingerprint();
        }
        let data = data.finish();
        if msg.method == method::ALLOCATE {
            if let Some(a) = self.by_client.get(&client).and_then(|id| self.allocs.get_mut(id)) {
                if a.created_by == msg.transaction && a.created_response.is_empty() {
                    a.created_response = data.clone();
                }
            }
        }
        self.out.push_back(Transmit { to: client, data });
    }

    /// The long-term credential check (RFC 8489 §9.2.4). Ok: the key and the username; Err: the
    /// error response to send.
    fn authenticate<'m>(
        &mut self,
        now: Instant,
        client: ClientKey,
        msg: &Message<'m>,
    ) -> Result<([u8; 16], &'m str), Vec<u8>> {
        let unix = self.unix(now);
        let challenge = |s: &mut Server, code: u16, reason: &str| {
            let nonce = s.nonces.make(&client.remote.ip(), unix + s.cfg.nonce_lifetime.as_secs());
            Builder::new(msg.method, Class::Error, msg.transaction)
                .error(code, reason)
                .attr(attr::REALM, s.cfg.realm.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes())
                .finish()
        };
        if !msg.has_integrity() {
            return Err(challenge(self, 401, "Unauthorized"));
        }
        let (Some(username), Some(realm), Some(nonce)) =
            (msg.text(attr::USERNAME), msg.text(attr::REALM), msg.text(attr::NONCE))
        else {
            self.stats.auth_failures += 1;
            return Err(Builder::new(msg.method, Class::Error, msg.transaction).error(400, "Bad Request").finish());
        };
        if username.len() > MAX_TEXT || realm.len() > MAX_TEXT || nonce.len() > MAX_TEXT {
            self.stats.auth_failures += 1;
            return Err(Builder::new(msg.method, Class::Error, msg.transaction).error(400, "Bad Request").finish());
        }
        match self.nonces.check(nonce, &client.remote.ip(), unix) {
            Ok(()) => {}
            Err(stale) => {
                self.stats.auth_failures += u64::from(!stale);
                return Err(challenge(self, 438, "Stale Nonce"));
            }
        }
        if realm != self.cfg.realm {
            self.stats.auth_failures += 1;
            return Err(challenge(self, 401, "Unauthorized"));
        }
        let Some(v) = self.cfg.secret.verify(username, realm) else {
            self.stats.auth_failures += 1;
            return Err(challenge(self, 401, "Unauthorized"));
        };
        if !msg.check_integrity(&v.key) {
            self.stats.auth_failures += 1;
            return Err(challenge(self, 401, "Unauthorized"));
        }
        let own = self.by_client.get(&client).and_then(|id| self.allocs.get(id));
        let on_own_allocation = msg.method != method::ALLOCATE && own.is_some_and(|a| &*a.username == username);
        let live = match UserKind::of(v.user) {
            // From join to leave; the allocation a browser uses lives on past the credential it
            // was made with (browsers refresh with that one), new ones need a current one.
            UserKind::Session => self.granted.contains(v.user) && (v.expires > unix || on_own_allocation),
            UserKind::Check | UserKind::Other => v.expires > unix,
        };
        if !live {
            self.stats.auth_failures += 1;
            return Err(challenge(self, 401, "Unauthorized"));
        }
        // The allocation's requests must all come from the user who made it (441).
        if let Some(a) = own {
            if &*a.username != username && msg.method != method::ALLOCATE {
                self.stats.auth_failures += 1;
                return Err(Builder::new(msg.method, Class::Error, msg.transaction)
                    .error(441, "Wrong Credentials")
                    .finish());
            }
        }
        Ok((v.key, username))
    }

    fn lifetime(&self, msg: &Message, kind: UserKind) -> Duration {
        let asked = msg.u32_attr(attr::LIFETIME).map(|s| Duration::from_secs(u64::from(s)));
        let lifetime =
            asked.unwrap_or(self.cfg.default_lifetime).clamp(self.cfg.default_lifetime, self.cfg.max_lifetime);
        if kind == UserKind::Check {
            lifetime.min(CHECK_LIFETIME)
        } else {
            lifetime
        }
    }

    /// Whether the clients at `ip` may hold one more allocation of `user` (its slot, if it has
    /// one) of `kind`.
    fn address_has_room(&self, ip: IpAddr, user: Option<usize>, kind: UserKind) -> bool {
        let Some(a) = self.addresses.get(&ip) else { return true };
        let cfg = &self.cfg;
        let known = user.is_some_and(|u| a.users.contains_key(&u));
        (cfg.ip_allocations == 0 || a.allocations < cfg.ip_allocations)
            && (cfg.ip_users == 0 || known || a.users.len() < cfg.ip_users as usize)
            && (kind != UserKind::Check || a.checks < CHECK_IP_ALLOCATIONS)
    }

    /// The slot of user `name`, made if it has none.
    fn user_slot(&mut self, name: &str, now: Instant) -> usize {
        if let Some(&u) = self.user_ids.get(name) {
            return u;
        }
        let name: Arc<str> = name.into();
        let u = User { name: name.clone(), allocations: 0, tokens: self.cfg.user_bytes_per_sec as f64, last: now };
        let slot = match self.users.iter().position(Option::is_none) {
            Some(i) => {
                self.users[i] = Some(u);
                i
            }
            None => {
                self.users.push(Some(u));
                self.users.len() - 1
            }
        };
        self.user_ids.insert(name, slot);
        slot
    }

    fn allocate(
        &mut self,
        now: Instant,
        client: ClientKey,
        msg: &Message,
        username: &str,
        relays: &mut impl Relays,
    ) -> Result<Builder, Refusal> {
        if self.by_client.contains_key(&client) {
            return Err(refuse(437, "Allocation Mismatch"));
        }
        match msg.get(attr::REQUESTED_TRANSPORT) {
            Some(v) if v.len() == 4 && v[0] == 17 => {}
            Some(_) => return Err(refuse(442, "Unsupported Transport Protocol")),
            None => return Err(refuse(400, "Bad Request")),
        }
        if let Some(v) = msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            let want_v6 = match v.first() {
                Some(0x01) => false,
                Some(0x02) => true,
                _ => return Err(refuse(400, "Bad Request")),
            };
            if want_v6 != client.local.is_ipv6() {
                return Err(refuse(440, "Address Family not Supported"));
            }
        }
        if self.allocs.len() >= self.cfg.max_allocations {
            self.stats.quota_refusals += 1;
            return Err(refuse(508, "Insufficient Capacity"));
        }
        let user_name = username.split_once(':').map_or(username, |(_, u)| u);
        let kind = UserKind::of(user_name);
        let slot = self.user_ids.get(user_name).copied();
        let held = slot.and_then(|u| self.users.get(u)?.as_ref()).map_or(0, |u| u.allocations);
        let quota = match kind {
            UserKind::Check => self.cfg.user_allocations.min(CHECK_USER_ALLOCATIONS),
            UserKind::Session | UserKind::Other => self.cfg.user_allocations,
        };
        let ip = client.remote.ip();
        if held >= quota || !self.address_has_room(ip, slot, kind) {
            self.stats.quota_refusals += 1;
            return Err(refuse(486, "Allocation Quota Reached"));
        }
        let even = msg.get(attr::EVEN_PORT).is_some();
        let (relay, announced) = match relays.open(client.local.ip(), even) {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "no relay socket");
                return Err(refuse(508, "Insufficient Capacity"));
            }
        };
        let user = self.user_slot(user_name, now);
        if let Some(Some(u)) = self.users.get_mut(user) {
            u.allocations += 1;
        }
        let addr = self.addresses.entry(ip).or_default();
        addr.allocations += 1;
        addr.checks += u32::from(kind == UserKind::Check);
        *addr.users.entry(user).or_insert(0) += 1;
        let lifetime = self.lifetime(msg, kind);
        let id = self.next_id;
        self.next_id += 1;
        self.allocs.insert(
            id,
            Allocation {
                client,
                relay,
                announced,
                username: username.into(),
                user,
                kind,
                expires: now + lifetime,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                channel_of: HashMap::new(),
                created_by: msg.transaction,
                created_response: Vec::new(),
            },
        );
        self.by_client.insert(client, id);
        self.by_relay.insert(relay, id);
        self.by_announced.insert(announced, id);
        self.stats.allocations_total += 1;
        debug!(id, %relay, "allocation made");
        Ok(Builder::new(method::ALLOCATE, Class::Success, msg.transaction)
            .xor_address(attr::XOR_RELAYED_ADDRESS, announced)
            .u32_attr(attr::LIFETIME, lifetime.as_secs() as u32)
            .xor_address(attr::XOR_MAPPED_ADDRESS, client.remote))
    }

    fn refresh(
        &mut self,
        now: Instant,
        client: ClientKey,
        msg: &Message,
        _username: &str,
        relays: &mut impl Relays,
    ) -> Result<Builder, Refusal> {
        let Some(&id) = self.by_client.get(&client) else {
            return Err(refuse(437, "Allocation Mismatch"));
        };
        let b = Builder::new(method::REFRESH, Class::Success, msg.transaction);
        if msg.u32_attr(attr::LIFETIME) == Some(0) {
            self.remove(id, relays);
            return Ok(b.u32_attr(attr::LIFETIME, 0));
        }
        let kind = self.allocs.get(&id).map_or(UserKind::Other, |a| a.kind);
        let lifetime = self.lifetime(msg, kind);
        if let Some(a) = self.allocs.get_mut(&id) {
            a.expires = now + lifetime;
        }
        Ok(b.u32_attr(attr::LIFETIME, lifetime.as_secs() as u32))
    }

    /// Whether data may go from `a`'s relay to `peer`: a live permission, and for an exception to
    /// the peer policy, the peer is still one of our relays or the SFU (a closed relay's port may
    /// since belong to something else).
    fn may_send(&self, a: &Allocation, peer: &SocketAddr, now: Instant) -> bool {
        match permission(a, peer, now) {
            Some(false) => true,
            Some(true) => self.by_announced.contains_key(peer) || self.cfg.trusted_peers.contains(peer),
            None => false,
        }
    }

    /// Whether `peer` may be reached: `Some(None)` any port of its address, `Some(Some(port))`
    /// only that port (one of our relays, or the SFU), `None` refused. This host's own
    /// addresses are never reached but at exactly those ports, whatever ranges are allowed.
    fn peer_rule(&self, peer: &SocketAddr) -> Option<Option<u16>> {
        if peer.port() == 0 {
            return None;
        }
        let ours = self.by_announced.contains_key(peer) || self.cfg.trusted_peers.contains(peer);
        if !self.cfg.policy.is_host(&peer.ip()) && self.cfg.policy.allows(&peer.ip()) {
            Some(None)
        } else if ours {
            Some(Some(peer.port()))
        } else {
            None
        }
    }

    /// The allocation of `client`, unless it is a connectivity check's (which relays nothing:
    /// 403 to every peer).
    fn relaying(&mut self, client: &ClientKey) -> Result<u64, Refusal> {
        let Some(&id) = self.by_client.get(client) else {
            return Err(refuse(437, "Allocation Mismatch"));
        };
        if self.allocs.get(&id).is_some_and(|a| a.kind == UserKind::Check) {
            self.stats.peers_denied += 1;
            return Err(refuse(403, "Forbidden"));
        }
        Ok(id)
    }

    fn create_permission(
        &mut self,
        now: Instant,
        client: ClientKey,
        msg: &Message,
        _u: &str,
    ) -> Result<Builder, Refusal> {
        let id = self.relaying(&client)?;
        let mut rules = Vec::new();
        for raw in msg.get_all(attr::XOR_PEER_ADDRESS) {
            let Some(peer) = decode_peer(raw, msg) else {
                return Err(refuse(400, "Bad Request"));
            };
            if peer.is_ipv6() != client.local.is_ipv6() {
                return Err(refuse(443, "Peer Address Family Mismatch"));
            }
            match self.peer_rule(&peer) {
                Some(rule) => rules.push((peer, rule)),
                None => {
                    self.stats.peers_denied += 1;
                    debug!(peer = %peer.ip(), "relay to a refused address");
                    return Err(refuse(403, "Forbidden"));
                }
            }
        }
        if rules.is_empty() {
            return Err(refuse(400, "Bad Request"));
        }
        let until = now + self.cfg.permission_lifetime;
        let max = self.cfg.max_permissions;
        let a = self.allocs.get_mut(&id).ok_or(refuse(437, "Allocation Mismatch"))?;
        for (peer, rule) in rules {
            install_permission(a, peer, rule, until, max)?;
        }
        Ok(Builder::new(method::CREATE_PERMISSION, Class::Success, msg.transaction))
    }

    fn channel_bind(&mut self, now: Instant, client: ClientKey, msg: &Message, _u: &str) -> Result<Builder, Refusal> {
        let id = self.relaying(&client)?;
        let number = match msg.get(attr::CHANNEL_NUMBER) {
            Some(v) if v.len() == 4 => u16::from_be_bytes([v[0], v[1]]),
            _ => return Err(refuse(400, "Bad Request")),
        };
        // RFC 8656 narrowed the range to 0x4000-0x4FFF; RFC 5766 clients (coturn's) use up to 0x7FFE.
        if !(0x4000..=0x7FFE).contains(&number) {
            return Err(refuse(400, "Bad Request"));
        }
        let Some(peer) = msg.get(attr::XOR_PEER_ADDRESS).and_then(|raw| decode_peer(raw, msg)) else {
            return Err(refuse(400, "Bad Request"));
        };
        if peer.is_ipv6() != client.local.is_ipv6() {
            return Err(refuse(443, "Peer Address Family Mismatch"));
        }
        let Some(rule) = self.peer_rule(&peer) else {
            self.stats.peers_denied += 1;
            return Err(refuse(403, "Forbidden"));
        };
        let (perm_until, chan_until) = (now + self.cfg.permission_lifetime, now + self.cfg.channel_lifetime);
        let (max_perm, max_chan) = (self.cfg.max_permissions, self.cfg.max_channels);
        let a = self.allocs.get_mut(&id).ok_or(refuse(437, "Allocation Mismatch"))?;
        // A channel stays with its peer, and a peer with its channel, for the binding's life.
        if let Some(c) = a.channels.get(&number) {
            if c.peer != peer && c.expires > now {
                return Err(refuse(400, "Bad Request"));
            }
        }
        if let Some(&n) = a.channel_of.get(&peer) {
            if n != number && a.channels.get(&n).is_some_and(|c| c.expires > now) {
                return Err(refuse(400, "Bad Request"));
            }
        }
        if !a.channels.contains_key(&number) && a.channels.len() >= max_chan {
            return Err(refuse(508, "Insufficient Capacity"));
        }
        install_permission(a, peer, rule, perm_until, max_perm)?;
        if let Some(old) = a.channels.insert(number, Channel { peer, expires: chan_until }) {
            if old.peer != peer {
                a.channel_of.remove(&old.peer);
            }
        }
        a.channel_of.insert(peer, number);
        Ok(Builder::new(method::CHANNEL_BIND, Class::Success, msg.transaction))
    }
}

fn decode_peer(raw: &[u8], msg: &Message) -> Option<SocketAddr> {
    stun::decode_xor_address(raw, &msg.transaction)
}

fn install_permission(
    a: &mut Allocation,
    peer: SocketAddr,
    rule: Option<u16>,
    until: Instant,
    max: usize,
) -> Result<(), Refusal> {
    if !a.permissions.contains_key(&peer.ip()) && a.permissions.len() >= max {
        return Err(refuse(508, "Insufficient Capacity"));
    }
    let p = a.permissions.entry(peer.ip()).or_insert(Permission { expires: until, ports: Some(Vec::new()) });
    p.expires = until;
    match (rule, &mut p.ports) {
        (None, ports) => *ports = None,
        (Some(port), Some(ports)) => {
            if !ports.contains(&port) {
                if ports.len() >= max {
                    return Err(refuse(508, "Insufficient Capacity"));
                }
                ports.push(port);
            }
        }
        (Some(_), None) => {}
    }
    Ok(())
}

/// Whether `a` has a live permission for `peer`; `Some(true)` when it is one of the exceptions
/// to the peer policy (to be checked again before anything is sent there).
fn permission(a: &Allocation, peer: &SocketAddr, now: Instant) -> Option<bool> {
    match a.permissions.get(&peer.ip()) {
        Some(p) if p.expires > now => match &p.ports {
            None => Some(false),
            Some(ports) => ports.contains(&peer.port()).then_some(true),
        },
        _ => None,
    }
}
