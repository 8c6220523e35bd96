//! Rate limits and connection caps, applied by the connection tasks ([`crate::ws`]) before a
//! message reaches the hub. Pure: every check takes the time as an argument, so the tests below
//! run on explicit `Instant`s without sleeping.
//!
//! - [`ConnLimiter`] — one per connection, owned by its task: a token bucket per message
//!   [`Class`], the "at most one `rate_limited` reply a second" rule, and flood detection.
//! - [`Admission`] — shared by all connection tasks (in `AppState`): the server-wide count of
//!   WebSocket connections, and per IP address the open connections and a bucket of joins. Its
//!   table sits behind a `std::sync::Mutex` held only for a lookup and never across `.await`.
//! - [`TcpAdmission`] — shared by the accept path ([`crate::accept`]) and the ICE-TCP listener:
//!   open TCP connections server-wide and per IP address, counted from accept to close (before
//!   any HTTP, TLS or WebSocket), so that no address can hold more of the server's file
//!   descriptors than its share, and the server never runs out of them.

use huddle_protocol::ClientMsg;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket: holds up to `burst` tokens and gains `per_sec` a second; each message takes one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub burst: f64,
    pub per_sec: f64,
}

impl Rate {
    pub const fn new(burst: f64, per_sec: f64) -> Rate {
        Rate { burst, per_sec }
    }

    /// The same bucket `factor` times larger and faster.
    pub fn scaled(self, factor: f64) -> Rate {
        Rate { burst: (self.burst * factor).max(1.0), per_sec: self.per_sec * factor }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> Bucket {
        Bucket { tokens: rate.burst, last: now }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.last = self.last.max(now);
    }

    /// Whether the bucket would be full at `now` (nothing to remember about it).
    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * rate.per_sec >= rate.burst
    }
}

/// Which budget a client message is taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Join,
    Chat,
    /// WebRTC negotiation and what drives the SFU: `signal`, `receive`, `media`.
    Signal,
    File,
    /// Everything else, and frames that did not parse.
    Other,
}

impl Class {
    const COUNT: usize = 5;

    fn index(self) -> usize {
        match self {
            Class::Join => 0,
            Class::Chat => 1,
            Class::Signal => 2,
            Class::File => 3,
            Class::Other => 4,
        }
    }
}

/// The budget a message is taken from. New message types fall into `Other` until they are
/// given a class here.
pub fn class_of(msg: &ClientMsg) -> Class {
    match msg.type_name() {
        "join" => Class::Join,
        // Reactions and hands reach the whole room, as chat does.
        "chat" | "react" | "hand" => Class::Chat,
        "signal" | "receive" | "media" => Class::Signal,
        "file_offer" => Class::File,
        _ => Class::Other,
    }
}

/// Per-connection budgets, by class.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MessageRates {
    rates: [Rate; Class::COUNT],
    /// `false`: no per-connection limit (`--message-rate-scale 0`).
    pub enabled: bool,
}

impl MessageRates {
    /// The defaults times `scale` (0: off).
    ///
    /// - `join`: 10 at once, then one every 2 s (joining and leaving in a loop costs the room
    ///   two broadcasts each).
    /// - `chat`: 20 at once, then 2 a second (fast typists send one every second or two).
    /// - `signal`/`receive`/`media`: 300 at once, then 100 a second. A browser trickles about 20
    ///   candidates per connection, a page in a full `p2p` room negotiates with 5 others at once,
    ///   and a page entering a full `sfu` room sends a `receive` for each of 49 tiles and answers
    ///   renegotiations as people come and go.
    /// - `file_offer`: 10 at once, then one every 5 s.
    /// - others (`leave`, `watch_rooms`, … and malformed frames): 50 at once, then 10 a second.
    pub fn scaled(scale: f64) -> MessageRates {
        let base = [
            Rate::new(10.0, 0.5),
            Rate::new(20.0, 2.0),
            Rate::new(300.0, 100.0),
            Rate::new(10.0, 0.2),
            Rate::new(50.0, 10.0),
        ];
        MessageRates { rates: base.map(|r| r.scaled(scale.max(0.0))), enabled: scale > 0.0 }
    }

    pub fn of(&self, class: Class) -> Rate {
        self.rates[class.index()]
    }
}

impl Default for MessageRates {
    fn default() -> MessageRates {
        MessageRates::scaled(1.0)
    }
}

/// A connection refused more messages than this within [`FLOOD_WINDOW`] is closed (`flooding`).
/// A page that merely overshoots (a burst of candidates above its budget) is refused a few
/// dozen at most; only a client that ignores `rate_limited` gets here.
pub const FLOOD_REFUSALS: u32 = 300;
pub const FLOOD_WINDOW: Duration = Duration::from_secs(10);
/// At most one `rate_limited` reply per connection this often; the rest are dropped silently.
pub const REPLY_INTERVAL: Duration = Duration::from_secs(1);

/// What to do with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Refused; `reply`: answer with `rate_limited` (else drop it silently).
    Refuse {
        reply: bool,
    },
    /// Refused, and the connection has been refused too often: close it.
    Flooding,
}

/// One connection's budgets. Owned by its connection task.
#[derive(Debug)]
pub struct ConnLimiter {
    rates: MessageRates,
    buckets: [Bucket; Class::COUNT],
    last_reply: Option<Instant>,
    window_start: Instant,
    refusals: u32,
}

impl ConnLimiter {
    pub fn new(rates: MessageRates, now: Instant) -> ConnLimiter {
        let buckets =
            [Class::Join, Class::Chat, Class::Signal, Class::File, Class::Other].map(|c| Bucket::new(rates.of(c), now));
        ConnLimiter { rates, buckets, last_reply: None, window_start: now, refusals: 0 }
    }

    /// Takes a message of `class` from its budget.
    pub fn check(&mut self, class: Class, now: Instant) -> Verdict {
        if !self.rates.enabled || self.buckets[class.index()].take(self.rates.of(class), now) {
            return Verdict::Pass;
        }
        self.refuse(now)
    }

    /// Records a refusal decided elsewhere (a per-IP limit) or here.
    pub fn refuse(&mut self, now: Instant) -> Verdict {
        if now.saturating_duration_since(self.window_start) >= FLOOD_WINDOW {
            self.window_start = now;
            self.refusals = 0;
        }
        self.refusals += 1;
        if self.refusals > FLOOD_REFUSALS {
            return Verdict::Flooding;
        }
        let reply = self.last_reply.is_none_or(|t| now.saturating_duration_since(t) >= REPLY_INTERVAL);
        if reply {
            self.last_reply = Some(now);
        }
        Verdict::Refuse { reply }
    }
}

/// Limits shared by every connection: see [`Admission`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdmissionLimits {
    /// WebSocket connections at once, server-wide.
    pub max_connections: usize,
    /// Per IP address; 0: no limit.
    pub max_connections_per_ip: u32,
    /// Joins per IP address; `None`: no limit.
    pub ip_joins: Option<Rate>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Server,
    Ip,
}

#[derive(Debug)]
struct IpEntry {
    connections: u32,
    joins: Bucket,
}

/// The server-wide connection count and the per-IP table.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    connections: AtomicUsize,
    /// Bounded: an entry with open connections stays (there are at most `max_connections` of
    /// those); idle entries only remember joins and are dropped when the table is full.
    ips: Mutex<HashMap<IpAddr, IpEntry>>,
    max_entries: usize,
}

/// Idle IP entries kept beyond the ones with open connections.
const IDLE_IP_ENTRIES: usize = 4096;

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission::with_table_size(limits, limits.max_connections + IDLE_IP_ENTRIES)
    }

    fn with_table_size(limits: AdmissionLimits, max_entries: usize) -> Admission {
        Admission { limits, connections: AtomicUsize::new(0), ips: Mutex::new(HashMap::new()), max_entries }
    }

    /// Counts a new connection from `ip`, unless it is over a cap. The [`Ticket`] gives it back
    /// when dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Ticket, Refused> {
        let over = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.limits.max_connections).then_some(n + 1));
        if over.is_err() {
            return Err(Refused::Server);
        }
        let admitted = {
            let mut ips = self.table();
            if !ips.contains_key(&ip) && ips.len() >= self.max_entries {
                evict_idle(&mut ips, self.limits.ip_joins, now);
            }
            let joins = self.limits.ip_joins.unwrap_or(Rate::new(1.0, 1.0));
            let entry = ips.entry(ip).or_insert_with(|| IpEntry { connections: 0, joins: Bucket::new(joins, now) });
            let cap = self.limits.max_connections_per_ip;
            let admitted = cap == 0 || entry.connections < cap;
            if admitted {
                entry.connections += 1;
            }
            admitted
        };
        if !admitted {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Ip);
        }
        Ok(Ticket { admission: self.clone(), ip })
    }

    /// Takes a join from `ip`'s budget.
    pub fn join(&self, ip: IpAddr, now: Instant) -> bool {
        let Some(rate) = self.limits.ip_joins else { return true };
        // A connection from `ip` is open, so its entry exists; `true` if it somehow does not.
        self.table().get_mut(&ip).is_none_or(|e| e.joins.take(rate, now))
    }

    /// WebSocket connections counted now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, IpEntry>> {
        // A panic while holding it cannot leave the map half-changed in a way that matters.
        self.ips.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.table().len()
    }
}

/// Drops idle entries: first those that remember nothing (their join bucket has refilled), then,
/// if that was not enough, every idle one (forgetting a partly used join budget).
fn evict_idle(ips: &mut HashMap<IpAddr, IpEntry>, joins: Option<Rate>, now: Instant) {
    let before = ips.len();
    let rate = joins.unwrap_or(Rate::new(1.0, 1.0));
    ips.retain(|_, e| e.connections > 0 || !e.joins.is_full(rate, now));
    if ips.len() > before / 2 {
        ips.retain(|_, e| e.connections > 0);
    }
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(e) = self.admission.table().get_mut(&self.ip) {
            e.connections = e.connections.saturating_sub(1);
        }
    }
}

/// Limits on open TCP connections: see [`TcpAdmission`].
#[derive(Clone, Debug, PartialEq)]
pub struct TcpLimits {
    /// Server-wide.
    pub max: usize,
    /// Per IP address; 0: no limit.
    pub per_ip: u32,
    /// Addresses not capped per IP (trusted reverse proxies: everyone comes through them).
    pub exempt: Vec<huddle_turn::IpNet>,
}

/// Open TCP connections, server-wide and per IP address. The per-IP table only holds addresses
/// with open connections, so it is bounded by [`TcpLimits::max`].
#[derive(Debug)]
pub struct TcpAdmission {
    limits: TcpLimits,
    open: AtomicUsize,
    ips: Mutex<HashMap<IpAddr, u32>>,
}

impl TcpAdmission {
    pub fn new(limits: TcpLimits) -> TcpAdmission {
        TcpAdmission { limits, open: AtomicUsize::new(0), ips: Mutex::new(HashMap::new()) }
    }

    /// Counts a new connection from `ip` unless it is over a cap; the [`TcpTicket`] gives its
    /// place back when dropped (when the connection closes, whoever holds it by then).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<TcpTicket, Refused> {
        let ip = ip.to_canonical();
        let over =
            self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.limits.max).then_some(n + 1));
        if over.is_err() {
            return Err(Refused::Server);
        }
        let capped = self.limits.per_ip > 0 && !self.limits.exempt.iter().any(|net| net.contains(&ip));
        let admitted = {
            let mut ips = self.table();
            let n = ips.entry(ip).or_insert(0);
            let admitted = !capped || *n < self.limits.per_ip;
            if admitted {
                *n += 1;
            } else if *n == 0 {
                ips.remove(&ip);
            }
            admitted
        };
        if !admitted {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Ip);
        }
        Ok(TcpTicket { admission: self.clone(), ip })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The server-wide cap.
    pub fn max(&self) -> usize {
        self.limits.max
    }

    /// Connections open now from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        self.table().get(&ip.to_canonical()).copied().unwrap_or(0)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        // A panic while holding it cannot leave the map half-changed in a way that matters.
        self.ips.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One open TCP connection; dropping it gives its place back.
#[derive(Debug)]
pub struct TcpTicket {
    admission: Arc<TcpAdmission>,
    ip: IpAddr,
}

impl Drop for TcpTicket {
    fn drop(&mut self) {
        self.admission.open.fetch_sub(1, Ordering::AcqRel);
        let mut ips = self.admission.table();
        if let Some(n) = ips.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                ips.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use huddle_protocol::{PeerId, SignalPayload};

    #[test]
    fn tcp_connections_are_capped_server_wide_and_per_ip_and_proxies_only_server_wide() {
        let limits = TcpLimits { max: 4, per_ip: 2, exempt: vec!["10.0.0.0/8".parse().expect("range")] };
        let a = Arc::new(TcpAdmission::new(limits));
        let one = a.admit(ip(1)).expect("first");
        let _two = a.admit(ip(1)).expect("second");
        assert_eq!(a.admit(ip(1)).err(), Some(Refused::Ip));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("address");
        assert_eq!(a.admit(mapped).err(), Some(Refused::Ip), "an IPv4-mapped address is that address");
        assert_eq!((a.open(), a.open_from(ip(1))), (2, 2), "refusals give their place back");
        let proxy: IpAddr = "10.1.2.3".parse().expect("address");
        let _p1 = a.admit(proxy).expect("a proxy is not capped per IP");
        let _p2 = a.admit(proxy).expect("a proxy is not capped per IP");
        assert_eq!(a.admit(ip(2)).err(), Some(Refused::Server));
        drop(one);
        let _again = a.admit(ip(2)).expect("a place came free");
        assert_eq!(a.table().len(), 3, "only addresses with open connections are kept");
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let rate = Rate::new(3.0, 2.0);
        let mut b = Bucket::new(rate, t0);
        assert!((0..3).all(|_| b.take(rate, t0)));
        assert!(!b.take(rate, t0));
        assert!(!b.take(rate, ms(t0, 400)), "0.8 of a token");
        assert!(b.take(rate, ms(t0, 500)));
        assert!(!b.take(rate, ms(t0, 500)));
        // A long pause refills to the burst, no further.
        let later = ms(t0, 60_000);
        assert!((0..3).all(|_| b.take(rate, later)));
        assert!(!b.take(rate, later));
        // A clock that seems to go back takes nothing away.
        assert!(!b.take(rate, t0));
    }

    #[test]
    fn messages_are_classed_by_type() {
        let signal =
            ClientMsg::Signal { to: PeerId("p2".into()), payload: SignalPayload::Candidate { candidate: None } };
        assert_eq!(class_of(&signal), Class::Signal);
        assert_eq!(class_of(&ClientMsg::Chat { text: "hi".into() }), Class::Chat);
        assert_eq!(class_of(&ClientMsg::Media { audio: true, video: true, screen: false }), Class::Signal);
        let join = ClientMsg::Join {
            recording_ok: false,
            protocol: 1,
            room: "r".into(),
            name: "n".into(),
            audio: true,
            video: true,
            password: None,
            token: None,
        };
        assert_eq!(class_of(&join), Class::Join);
        assert_eq!(class_of(&ClientMsg::Leave), Class::Other);
        assert_eq!(class_of(&ClientMsg::WatchRooms), Class::Other);
        assert_eq!(class_of(&ClientMsg::React { emoji: "👍".into() }), Class::Chat);
        assert_eq!(class_of(&ClientMsg::AdmitAll), Class::Other);
    }

    #[test]
    fn a_browser_burst_of_candidates_and_tiles_passes() {
        let t0 = Instant::now();
        let mut l = ConnLimiter::new(MessageRates::default(), t0);
        // Entering a full sfu room: an offer, 20 candidates, 49 tiles' `receive`, an answer per
        // renegotiation as 49 others' tracks arrive, within a second.
        for i in 0..150 {
            assert_eq!(l.check(Class::Signal, ms(t0, i * 5)), Verdict::Pass, "message {i}");
        }
        // Typing: a message a second for a minute, after a burst of 10.
        for i in 0..10 {
            assert_eq!(l.check(Class::Chat, ms(t0, i)), Verdict::Pass);
        }
        for s in 1..60 {
            assert_eq!(l.check(Class::Chat, ms(t0, s * 1000)), Verdict::Pass);
        }
    }

    #[test]
    fn a_flood_is_refused_with_one_reply_a_second_then_closed() {
        let t0 = Instant::now();
        let mut l = ConnLimiter::new(MessageRates::default(), t0);
        let mut passed = 0;
        let mut replies = 0;
        let mut verdict = Verdict::Pass;
        // 100 chat messages a second (one every 10 ms).
        for i in 0..1000 {
            verdict = l.check(Class::Chat, ms(t0, i * 10));
            match verdict {
                Verdict::Pass => passed += 1,
                Verdict::Refuse { reply: true } => replies += 1,
                Verdict::Refuse { reply: false } => {}
                Verdict::Flooding => break,
            }
        }
        assert_eq!(verdict, Verdict::Flooding, "closed within 10 s of flooding");
        assert!((20..=30).contains(&passed), "the burst and the refill passed: {passed}");
        assert!((2..=4).contains(&replies), "about one reply a second: {replies}");
        // Another class is not affected by the chat flood.
        assert_eq!(l.check(Class::Signal, ms(t0, 3000)), Verdict::Pass);
    }

    #[test]
    fn refusals_are_forgiven_after_the_window() {
        let t0 = Instant::now();
        let mut l = ConnLimiter::new(MessageRates::default(), t0);
        for i in 0..FLOOD_REFUSALS {
            assert_ne!(l.refuse(ms(t0, u64::from(i))), Verdict::Flooding);
        }
        assert!(matches!(l.refuse(ms(t0, 10_000)), Verdict::Refuse { .. }), "a new window");
    }

    #[test]
    fn scale_zero_turns_message_limits_off() {
        let t0 = Instant::now();
        let mut l = ConnLimiter::new(MessageRates::scaled(0.0), t0);
        assert!((0..10_000).all(|_| l.check(Class::Chat, t0) == Verdict::Pass));
        let double = MessageRates::scaled(2.0);
        assert_eq!(double.of(Class::Chat), Rate::new(40.0, 4.0));
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn connections_are_capped_server_wide_and_per_ip() {
        let t0 = Instant::now();
        let a =
            Arc::new(Admission::new(AdmissionLimits { max_connections: 3, max_connections_per_ip: 2, ip_joins: None }));
        let one = a.admit(ip(1), t0).expect("first");
        let two = a.admit(ip(1), t0).expect("second from the same address");
        assert_eq!(a.admit(ip(1), t0).err(), Some(Refused::Ip));
        assert_eq!(a.connections(), 2, "a refused connection gives its place back");
        let three = a.admit(ip(2), t0).expect("another address");
        assert_eq!(a.admit(ip(3), t0).err(), Some(Refused::Server));
        drop(one);
        let again = a.admit(ip(1), t0).expect("a place came free");
        drop((two, three, again));
        assert_eq!(a.connections(), 0);
    }

    #[test]
    fn joins_per_ip_are_shared_by_its_connections() {
        let t0 = Instant::now();
        let a = Arc::new(Admission::new(AdmissionLimits {
            max_connections: 100,
            max_connections_per_ip: 0,
            ip_joins: Some(Rate::new(3.0, 1.0 / 60.0)),
        }));
        let _c1 = a.admit(ip(1), t0).expect("admitted");
        let _c2 = a.admit(ip(1), t0).expect("admitted");
        let _other = a.admit(ip(2), t0).expect("admitted");
        assert!(a.join(ip(1), t0) && a.join(ip(1), t0) && a.join(ip(1), t0));
        assert!(!a.join(ip(1), t0), "the address's fourth join in the same minute");
        assert!(a.join(ip(2), t0), "another address is not affected");
        assert!(a.join(ip(1), ms(t0, 60_000)), "one more a minute later");
    }

    #[test]
    fn the_ip_table_stays_bounded() {
        let t0 = Instant::now();
        let limits =
            AdmissionLimits { max_connections: 10, max_connections_per_ip: 0, ip_joins: Some(Rate::new(2.0, 1.0)) };
        let a = Arc::new(Admission::with_table_size(limits, 16));
        let held: Vec<Ticket> = (0..4).map(|n| a.admit(ip(n), t0).expect("admitted")).collect();
        for n in 4..200u8 {
            let t = a.admit(ip(n), ms(t0, u64::from(n))).expect("admitted");
            assert!(a.join(ip(n), ms(t0, u64::from(n))));
            drop(t);
            assert!(a.entries() <= 16, "{} entries", a.entries());
        }
        // Entries with open connections survive every sweep.
        drop(held);
        assert_eq!(a.connections(), 0);
    }
}
