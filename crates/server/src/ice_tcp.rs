//! ICE over TCP for the SFU (RFC 6544), for browsers whose UDP to the server is blocked.
//!
//! The SFU announces passive TCP host candidates next to its UDP ones; a browser that cannot
//! reach it over UDP opens a TCP connection to one and sends its packets framed as RFC 4571 says:
//! each preceded by its length, two bytes big-endian. By default the connections come to the HTTP
//! port itself — if the page is reachable, so is the media — so the HTTP port's accept path
//! ([`crate::accept`]) peeks at the first bytes of every new connection ([`sniff`]): an RFC 4571
//! frame holding a STUN Binding request comes here, the rest (HTTP, a TLS ClientHello) is served
//! as HTTP. `--media-tcp-port` gives ICE-TCP a listener of its own instead ([`serve_dedicated`]).
//! Both count their connections under the same caps on open TCP connections
//! ([`crate::limits::TcpAdmission`]).
//!
//! Each connection is owned by one task ([`IceTcp::take`]): it reads and deframes packets (at
//! most [`MAX_FRAME`] bytes; an empty or larger frame closes it) and hands them to the media task
//! over its bounded channel ([`TcpEvent`]), and it writes the frames the media task queues for
//! it (a bounded queue of [`OUT_QUEUE`]; a full one drops, as a full UDP socket buffer would). A
//! connection the SFU has not answered within [`ANSWER_TIMEOUT`] (a stranger, or a browser the
//! SFU does not know), or that is silent for [`IDLE_TIMEOUT`], is closed; at most
//! [`MAX_CONNECTIONS`] are open at once. Nothing here unwraps what the network sent.

use crate::limits::{TcpAdmission, TcpTicket};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The largest packet taken from an ICE-TCP connection: what the SFU takes over UDP (browsers send
/// MTU-sized packets over TCP too).
pub const MAX_FRAME: usize = 2048;
/// Frames queued towards one connection before more are dropped.
pub const OUT_QUEUE: usize = 256;
/// Packets from all connections queued for the media task before more are dropped.
pub const EVENT_QUEUE: usize = 4096;
/// ICE-TCP connections open at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// A connection must be answered by the SFU (its STUN check accepted) within this time.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with nothing from the browser for this long is closed (browsers send consent
/// checks every few seconds even without media).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the first bytes of a new connection may take to tell what it is.
pub const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// New connections being looked at at once by [`serve_dedicated`]; beyond, they wait in the
/// kernel's backlog.
pub const MAX_SNIFFS: usize = 256;
/// A write to a connection that does not finish in this time (a peer that stopped reading)
/// closes it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most written to the socket in one go (queued frames are written together).
const WRITE_BATCH: usize = 16 * 1024;

const STUN_BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_HEADER: usize = 20;

/// What the first bytes of a connection say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peeked {
    /// An RFC 4571 frame holding a STUN Binding request: ICE over TCP.
    IceTcp,
    /// Anything else (HTTP, TLS, nothing at all).
    Other,
    /// Too few bytes to tell yet.
    NeedMore,
}

/// Classifies the start of a connection: 2 bytes of frame length, then a STUN header (type
/// 0x0001, a length that fills the frame, the magic cookie). Decides as soon as a byte differs
/// from that shape: HTTP (a letter) and TLS (22) are told apart by their first byte.
pub fn classify(head: &[u8]) -> Peeked {
    const WANT: usize = 2 + 8;
    let frame_len = |h: &[u8]| u16::from_be_bytes([h[0], h[1]]) as usize;
    // The frame length's high byte: no larger than MAX_FRAME, no smaller than a STUN header.
    if head.first().is_some_and(|b| *b as usize > MAX_FRAME >> 8) {
        return Peeked::Other;
    }
    if head.len() >= 2 && !(STUN_HEADER..=MAX_FRAME).contains(&frame_len(head)) {
        return Peeked::Other;
    }
    for (i, want) in STUN_BINDING_REQUEST.iter().enumerate() {
        if head.get(2 + i).is_some_and(|b| b != want) {
            return Peeked::Other;
        }
    }
    for (i, want) in STUN_MAGIC_COOKIE.iter().enumerate() {
        if head.get(6 + i).is_some_and(|b| b != want) {
            return Peeked::Other;
        }
    }
    if head.len() < WANT {
        return Peeked::NeedMore;
    }
    let stun_len = u16::from_be_bytes([head[4], head[5]]) as usize;
    if !stun_len.is_multiple_of(4) || STUN_HEADER + stun_len != frame_len(head) {
        return Peeked::Other;
    }
    Peeked::IceTcp
}

/// Peeks at a new connection until [`classify`] decides; the caller bounds the time. A closed
/// connection is [`Peeked::Other`] (whoever serves it sees the end).
pub async fn sniff(stream: &TcpStream) -> io::Result<Peeked> {
    let mut head = [0u8; 10];
    loop {
        let n = stream.peek(&mut head).await?;
        if n == 0 {
            return Ok(Peeked::Other);
        }
        match classify(&head[..n]) {
            // Part of a frame is there: `peek` would return at once again, so wait a little.
            Peeked::NeedMore => tokio::time::sleep(Duration::from_millis(10)).await,
            decided => return Ok(decided),
        }
    }
}

/// Why a connection's stream of frames is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A frame of length 0 (RFC 4571 allows it, no ICE packet is empty).
    Empty,
    /// A frame longer than the limit.
    TooLong(usize),
}

/// RFC 4571 deframing: bytes in as they come, whole packets out.
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`.
    at: usize,
    max: usize,
}

impl Deframer {
    pub fn new(max: usize) -> Deframer {
        Deframer { buf: Vec::with_capacity(2 * (max + 2)), at: 0, max }
    }

    /// Adds bytes read from the connection. Call [`Deframer::next_frame`] until `None` after
    /// each push: the buffer then holds less than one frame.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.at > 0 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame's packet, `None` while it is incomplete, or the error that makes
    /// the connection unusable (checked as soon as the length is known, before the rest comes).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let rest = &self.buf[self.at..];
        if rest.len() < 2 {
            return Ok(None);
        }
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max {
            return Err(FrameError::TooLong(len));
        }
        if rest.len() < 2 + len {
            return Ok(None);
        }
        let start = self.at + 2;
        self.at = start + len;
        Ok(Some(&self.buf[start..start + len]))
    }
}

/// Appends `packet` to `out` as one RFC 4571 frame. Packets longer than a frame can say are
/// not written (false); the core never makes one.
pub fn frame_into(out: &mut Vec<u8>, packet: &[u8]) -> bool {
    let Ok(len) = u16::try_from(packet.len()) else { return false };
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    true
}

/// What connection tasks tell the media task, in order per connection.
#[derive(Debug)]
pub enum TcpEvent {
    /// A connection from `remote` to our `local` address is up; frames for it go to `out`.
    Open { local: SocketAddr, remote: SocketAddr, out: mpsc::Sender<Vec<u8>> },
    /// One packet from it.
    Frame { local: SocketAddr, remote: SocketAddr, bytes: Vec<u8> },
}

/// Counters of the connection tasks, read by the media task's stats.
#[derive(Debug, Default)]
pub struct TcpCounters {
    /// Connections taken (open or since closed).
    pub accepted: AtomicU64,
    /// Connections closed at once because [`MAX_CONNECTIONS`] were open.
    pub refused: AtomicU64,
    /// Connections closed for a bad frame (empty, too long).
    pub bad_frames: AtomicU64,
    /// Packets that arrived.
    pub frames_in: AtomicU64,
    /// Packets (and connection openings) dropped because the media task's queue was full.
    pub dropped_in: AtomicU64,
}

/// Hands ICE-TCP connections to their own tasks and their packets to the media task. Cheap to
/// clone (the HTTP listener and the dedicated one hold one each).
#[derive(Clone)]
pub struct IceTcp {
    /// Each worker's SFU (see [`crate::workers`]): a connection goes to the one whose ICE ufrag
    /// its first STUN request names.
    events: Arc<[mpsc::Sender<TcpEvent>]>,
    slots: Arc<Semaphore>,
    pub counters: Arc<TcpCounters>,
    /// [`ANSWER_TIMEOUT`] and [`IDLE_TIMEOUT`] (shorter in tests).
    timeouts: (Duration, Duration),
    /// The caps on open TCP connections the dedicated listener counts under ([`IceTcp::set_caps`]).
    caps: Option<Arc<TcpAdmission>>,
}

impl IceTcp {
    /// The handle, and the receiving end for the media task.
    pub fn channel() -> (IceTcp, mpsc::Receiver<TcpEvent>) {
        let (ice, mut rx) = IceTcp::channels(1);
        (ice, rx.remove(0))
    }

    /// The handle, and the receiving end for each of `workers` media tasks.
    pub fn channels(workers: usize) -> (IceTcp, Vec<mpsc::Receiver<TcpEvent>>) {
        IceTcp::with_timeouts(ANSWER_TIMEOUT, IDLE_TIMEOUT, workers)
    }

    fn with_timeouts(answer: Duration, idle: Duration, workers: usize) -> (IceTcp, Vec<mpsc::Receiver<TcpEvent>>) {
        let (events, rx): (Vec<_>, Vec<_>) = (0..workers.max(1)).map(|_| mpsc::channel(EVENT_QUEUE)).unzip();
        let handle = IceTcp {
            events: events.into(),
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            counters: Arc::new(TcpCounters::default()),
            timeouts: (answer, idle),
            caps: None,
        };
        (handle, rx)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        MAX_CONNECTIONS - self.slots.available_permits()
    }

    /// The caps on open TCP connections that the dedicated listener ([`serve_dedicated`]) applies,
    /// shared with the HTTP port's accept path.
    pub fn set_caps(&mut self, caps: Arc<TcpAdmission>) {
        self.caps = Some(caps);
    }

    /// Takes a connection whose first bytes [`sniff`] found to be ICE-TCP: it gets its own task
    /// (or is closed at once when [`MAX_CONNECTIONS`] are open). `ticket`: its place under the
    /// caps on open TCP connections, held until it closes.
    pub fn take(&self, stream: TcpStream, remote: SocketAddr, ticket: Option<TcpTicket>) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            if self.counters.refused.fetch_add(1, Ordering::Relaxed) == 0 {
                warn!(limit = MAX_CONNECTIONS, "too many ICE-TCP connections; new ones are closed");
            }
            return;
        };
        let local = match stream.local_addr() {
            Ok(a) => canonical(a),
            Err(e) => {
                debug!(error = %e, "ICE-TCP connection without a local address");
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let (events, counters, timeouts) = (self.events.clone(), self.counters.clone(), self.timeouts);
        let remote = canonical(remote);
        debug!(%remote, %local, "ICE-TCP connection");
        tokio::spawn(async move {
            let (_slot, _ticket) = (slot, ticket);
            let why = connection(stream, local, remote, events, &counters, timeouts).await;
            debug!(%remote, %local, why, "ICE-TCP connection closed");
        });
    }
}

/// IPv4 addresses as themselves, not IPv4-mapped IPv6 (a dual-stack listener's view), so they
/// match the candidates.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// One connection, until it ends; returns why, for the log.
async fn connection(
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    workers: Arc<[mpsc::Sender<TcpEvent>]>,
    counters: &TcpCounters,
    (answer_timeout, idle_timeout): (Duration, Duration),
) -> &'static str {
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    // The worker's SFU is known from the first packet (a STUN request naming its ufrag); the
    // connection opens there then.
    let mut opening = Some(out_tx);
    let mut events: Option<mpsc::Sender<TcpEvent>> = None;
    let (mut rd, mut wr) = stream.into_split();
    // Set by the writer once the SFU has sent anything: it accepted a STUN check.
    let answered = AtomicBool::new(false);
    let reader = async {
        let opened = Instant::now();
        let mut deframer = Deframer::new(MAX_FRAME);
        let mut buf = vec![0u8; 4096];
        let mut last_read = opened;
        loop {
            let mut deadline = last_read + idle_timeout;
            if !answered.load(Ordering::Relaxed) {
                deadline = deadline.min(opened + answer_timeout);
            }
            let n = match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
                Ok(Ok(0)) => return "closed by the peer",
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return "read error",
                // The answer may have come while waiting: look again.
                Err(_) if answered.load(Ordering::Relaxed) && Instant::now() < last_read + idle_timeout => continue,
                Err(_) if answered.load(Ordering::Relaxed) => return "idle",
                Err(_) => return "not answered by the SFU in time",
            };
            last_read = Instant::now();
            deframer.push(&buf[..n]);
            loop {
                match deframer.next_frame() {
                    Ok(Some(packet)) => {
                        counters.frames_in.fetch_add(1, Ordering::Relaxed);
                        if let Some(out) = opening.take() {
                            let worker = huddle_sfu::stun_local_ufrag(packet)
                                .and_then(|ufrag| crate::workers::worker_of_ufrag(ufrag, workers.len()))
                                .unwrap_or(0);
                            let to = workers[worker].clone();
                            if to.try_send(TcpEvent::Open { local, remote, out }).is_err() {
                                counters.dropped_in.fetch_add(1, Ordering::Relaxed);
                                return "the media task's queue is full";
                            }
                            events = Some(to);
                        }
                        let Some(events) = &events else { return "no media task" };
                        let event = TcpEvent::Frame { local, remote, bytes: packet.to_vec() };
                        match events.try_send(event) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                counters.dropped_in.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return "the media task is gone",
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                        debug!(%remote, error = ?e, "bad ICE-TCP frame");
                        return "bad frame";
                    }
                }
            }
        }
    };
    let writer = async {
        let mut out = Vec::with_capacity(WRITE_BATCH + MAX_FRAME);
        while let Some(packet) = out_rx.recv().await {
            answered.store(true, Ordering::Relaxed);
            out.clear();
            frame_into(&mut out, &packet);
            // Whatever else is queued goes out in the same write.
            while out.len() < WRITE_BATCH {
                let Ok(packet) = out_rx.try_recv() else { break };
                frame_into(&mut out, &packet);
            }
            match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return "write error",
                Err(_) => return "the peer stopped reading",
            }
        }
        "the media task is gone"
    };
    tokio::select! {
        why = reader => why,
        why = writer => why,
    }
}

/// A listener for ICE-TCP only (`--media-tcp-port`): connections that do not start with an
/// ICE-TCP frame are closed, and so are those over the caps on open TCP connections. Runs until
/// the task is aborted.
pub async fn serve_dedicated(tcp: TcpListener, ice: IceTcp) {
    if let Ok(addr) = tcp.local_addr() {
        info!(%addr, "SFU listening for ICE over TCP");
    }
    let slots = Arc::new(Semaphore::new(MAX_SNIFFS));
    loop {
        // Here nobody else needs the connections: beyond the limit, wait in the backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (stream, from) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "cannot accept an ICE-TCP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ticket = match ice.caps.as_ref().map(|caps| caps.admit(from.ip())) {
            Some(Err(cap)) => {
                debug!(?cap, "refused an ICE-TCP connection over a cap");
                continue;
            }
            Some(Ok(ticket)) => Some(ticket),
            None => None,
        };
        let ice = ice.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(SNIFF_TIMEOUT, sniff(&stream)).await {
                Ok(Ok(Peeked::IceTcp)) => ice.take(stream, from, ticket),
                _ => debug!(%from, "not ICE over TCP; closed"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RFC 4571 frame holding a STUN Binding request with `attrs` bytes of attributes.
    fn stun_frame(attrs: usize) -> Vec<u8> {
        let mut stun = vec![0x00, 0x01];
        stun.extend_from_slice(&(attrs as u16).to_be_bytes());
        stun.extend_from_slice(&STUN_MAGIC_COOKIE);
        stun.extend_from_slice(&[7; 12]);
        stun.resize(STUN_HEADER + attrs, 0);
        let mut out = Vec::new();
        assert!(frame_into(&mut out, &stun));
        out
    }

    #[test]
    fn an_ice_tcp_frame_is_told_from_http_and_tls() {
        let frame = stun_frame(80);
        assert_eq!(classify(&frame), Peeked::IceTcp);
        assert_eq!(classify(&frame[..10]), Peeked::IceTcp, "ten bytes decide");
        for n in 0..10 {
            assert_eq!(classify(&frame[..n]), Peeked::NeedMore, "{n} bytes of a frame");
        }
        // The first byte decides for HTTP and TLS.
        assert_eq!(classify(b"G"), Peeked::Other);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Peeked::Other);
        assert_eq!(classify(b"PRI * HTTP/2.0"), Peeked::Other);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), Peeked::Other, "a TLS ClientHello");
    }

    #[test]
    fn near_misses_are_not_ice_tcp() {
        let good = stun_frame(8);
        let spoil = |i: usize, b: u8| {
            let mut f = good.clone();
            f[i] = b;
            classify(&f)
        };
        assert_eq!(spoil(3, 0x11), Peeked::Other, "a Binding response, not a request");
        assert_eq!(spoil(2, 0x01), Peeked::Other, "another STUN method");
        assert_eq!(spoil(9, 0x43), Peeked::Other, "no magic cookie");
        assert_eq!(spoil(1, good[1] + 4), Peeked::Other, "the frame and STUN lengths disagree");
        assert_eq!(spoil(5, 9), Peeked::Other, "a STUN length that is not a multiple of 4");
        // Frame lengths too small for a STUN header, or larger than MAX_FRAME.
        assert_eq!(classify(&[0x00, 0x05]), Peeked::Other);
        assert_eq!(classify(&[0x00, 0x00]), Peeked::Other);
        assert_eq!(classify(&[0x09]), Peeked::Other);
        assert_eq!(classify(&[0xff, 0xff, 0x00, 0x01]), Peeked::Other);
        // Partial input that already differs is decided at once.
        assert_eq!(classify(&[0x00, 0x1c, 0x01]), Peeked::Other);
        assert_eq!(classify(&[0x00, 0x1c, 0x00, 0x01, 0x00, 0x08, 0x21, 0x13]), Peeked::Other);
    }

    #[test]
    fn frames_come_out_whole_however_the_bytes_arrive() {
        let packets: Vec<Vec<u8>> = vec![vec![1; 1], vec![2; 300], vec![3; MAX_FRAME], vec![4; 20]];
        let mut wire = Vec::new();
        for p in &packets {
            assert!(frame_into(&mut wire, p));
        }
        // Every chunk size: one byte at a time, odd sizes, everything at once.
        for chunk in [1, 2, 3, 7, 500, 2049, wire.len()] {
            let mut d = Deframer::new(MAX_FRAME);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                d.push(piece);
                while let Some(p) = d.next_frame().expect("valid frames") {
                    got.push(p.to_vec());
                }
                assert!(d.buf.len() - d.at < 2 + MAX_FRAME, "what is left is less than a frame");
            }
            assert_eq!(got, packets, "chunks of {chunk}");
        }
    }

    #[test]
    fn empty_and_oversized_frames_break_the_connection_before_their_bytes_come() {
        let mut d = Deframer::new(MAX_FRAME);
        d.push(&[0x00, 0x03, 1, 2, 3, 0x00, 0x00]);
        assert_eq!(d.next_frame(), Ok(Some(&[1u8, 2, 3][..])));
        assert_eq!(d.next_frame(), Err(FrameError::Empty));

        let mut d = Deframer::new(MAX_FRAME);
        d.push(&((MAX_FRAME + 1) as u16).to_be_bytes());
        assert_eq!(d.next_frame(), Err(FrameError::TooLong(MAX_FRAME + 1)), "known from the length alone");
        let mut d = Deframer::new(MAX_FRAME);
        d.push(&[0xff]);
        assert_eq!(d.next_frame(), Ok(None), "half a length");
        d.push(&[0xff]);
        assert_eq!(d.next_frame(), Err(FrameError::TooLong(0xffff)));
        // Garbage is only frames of garbage: the core drops what it cannot use.
        let mut d = Deframer::new(MAX_FRAME);
        d.push(b"\x00\x04junk\x00\x02");
        assert_eq!(d.next_frame(), Ok(Some(&b"junk"[..])));
        assert_eq!(d.next_frame(), Ok(None));
    }

    #[test]
    fn packets_too_long_for_a_frame_are_not_written() {
        let mut out = Vec::new();
        assert!(!frame_into(&mut out, &vec![0; 70_000]));
        assert!(out.is_empty());
        assert!(frame_into(&mut out, &[9; 3]));
        assert_eq!(out, [0, 3, 9, 9, 9]);
    }

    /// A connected pair on loopback: (the client's end, the server's end, the client's address).
    async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, from) = listener.accept().await.expect("accept");
        (client, server, from)
    }

    #[tokio::test]
    async fn a_connection_the_sfu_never_answers_is_closed_and_an_answered_one_lives_until_idle() {
        // The real timeouts, shorter: 10 s becomes 300 ms, 30 s becomes 600 ms.
        let (answer_timeout, idle_timeout) = (Duration::from_millis(300), Duration::from_millis(600));
        let (ice, mut events) = IceTcp::with_timeouts(answer_timeout, idle_timeout, 1);
        let mut events = events.remove(0);
        let (mut client, server, from) = pair().await;
        let started = Instant::now();
        ice.take(server, from, None);
        client.write_all(&stun_frame(4)).await.expect("write");
        // The media task keeps the queue (dropping it would close the connection) and never
        // answers.
        let Some(TcpEvent::Open { out: _kept, .. }) = events.recv().await else { panic!("no Open") };
        assert!(matches!(events.recv().await, Some(TcpEvent::Frame { bytes, .. }) if bytes.len() == 24));
        assert_eq!(ice.open(), 1);
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.expect("closed"), 0, "nothing was sent");
        let closed = started.elapsed();
        assert!(closed >= answer_timeout && closed < idle_timeout, "closed after {closed:?}");
        tokio::task::yield_now().await;
        assert_eq!(ice.open(), 0, "its slot is free again");

        // Answered (the media task queues a frame for it): it stays open while the browser talks,
        // and closes once it has been silent for IDLE_TIMEOUT.
        let (mut client, server, from) = pair().await;
        ice.take(server, from, None);
        client.write_all(&stun_frame(4)).await.expect("write");
        let Some(TcpEvent::Open { out, .. }) = events.recv().await else { panic!("no Open") };
        out.try_send(vec![5; 10]).expect("queued");
        let mut got = [0u8; 12];
        client.read_exact(&mut got).await.expect("the answer");
        assert_eq!(got, [0, 10, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5], "framed");
        let talking = Instant::now();
        for _ in 0..3 {
            tokio::time::sleep(idle_timeout / 2).await;
            client.write_all(&stun_frame(4)).await.expect("still open");
        }
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        let closed = talking.elapsed();
        assert!(closed >= idle_timeout * 2, "closed after {closed:?}: it was talking");
        assert!(out.is_closed(), "its queue is gone with it");
    }

    #[tokio::test]
    async fn at_most_max_connections_are_open() {
        let (ice, _events) = IceTcp::channel();
        let held: Vec<_> =
            (0..MAX_CONNECTIONS).map(|_| ice.slots.clone().try_acquire_owned().expect("a slot")).collect();
        let (mut client, server, from) = pair().await;
        ice.take(server, from, None);
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.expect("closed at once"), 0);
        assert_eq!(ice.counters.refused.load(Ordering::Relaxed), 1);
        drop(held);
        assert_eq!(ice.open(), 0);
    }

    #[tokio::test]
    async fn sniffing_waits_for_a_split_header_and_decides_http_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // A frame whose header arrives in two pieces.
        let frame = stun_frame(4);
        let (head, tail) = frame.split_at(5);
        let (head, tail) = (head.to_vec(), tail.to_vec());
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(&head).await.expect("write");
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.write_all(&tail).await.expect("write");
            c
        });
        let (server, _) = listener.accept().await.expect("accept");
        let peeked = tokio::time::timeout(Duration::from_secs(5), sniff(&server)).await.expect("in time");
        assert_eq!(peeked.expect("peek"), Peeked::IceTcp);
        let _c = client.await.expect("client");
        // Peeking took nothing: the frame is all still there.
        let mut server = server;
        let mut got = vec![0u8; frame.len()];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(got, frame);

        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"GET /healthz HTTP/1.1\r\n").await.expect("write");
            c
        });
        let (server, _) = listener.accept().await.expect("accept");
        let peeked = tokio::time::timeout(Duration::from_secs(5), sniff(&server)).await.expect("in time");
        assert_eq!(peeked.expect("peek"), Peeked::Other);
        let _c = client.await.expect("client");
        // A connection closed without a byte is not ICE-TCP.
        let client = tokio::spawn(async move { drop(TcpStream::connect(addr).await.expect("connect")) });
        let (server, _) = listener.accept().await.expect("accept");
        client.await.expect("client");
        let peeked = tokio::time::timeout(Duration::from_secs(5), sniff(&server)).await.expect("in time");
        assert_eq!(peeked.expect("peek"), Peeked::Other);
    }
}
