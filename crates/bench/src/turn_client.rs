//! A lean TURN client for the `turn` benchmark: blocking setup (Allocate with the 401/nonce
//! dance, CreatePermission, ChannelBind) over UDP or TCP, then raw ChannelData on the same
//! socket, sent and received by the load threads of [`crate::turn`].

use anyhow::{anyhow, bail, Context};
use huddle_turn::auth::long_term_key;
use huddle_turn::stun::{self, attr, method, Builder, Class, Message};
use huddle_turn::Credentials;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// The channel every client binds to its partner's relay address.
pub const CHANNEL: u16 = 0x4000;
/// Longest wait for one answer (UDP requests are sent again every [`RETRANSMIT`]).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
const RETRANSMIT: Duration = Duration::from_millis(500);
/// Receive and send buffers asked for on every client socket, so that a moment when the
/// load generator's receiver is not running does not show up as loss of the server.
const SOCKET_BUFFER_BYTES: libc::c_int = 1 << 20;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
}

/// The client's connection to the TURN server.
pub enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Conn {
    pub fn fd(&self) -> RawFd {
        match self {
            Conn::Udp(s) => s.as_raw_fd(),
            Conn::Tcp(s) => s.as_raw_fd(),
        }
    }

    pub fn local_port(&self) -> u16 {
        match self {
            Conn::Udp(s) => s.local_addr().map(|a| a.port()).unwrap_or(0),
            Conn::Tcp(s) => s.local_addr().map(|a| a.port()).unwrap_or(0),
        }
    }
}

/// One TURN client with its allocation.
pub struct Client {
    pub conn: Conn,
    /// Bytes read from a TCP connection and not yet taken as a message (setup only).
    pending: Vec<u8>,
    username: String,
    password: String,
    key: Option<[u8; 16]>,
    realm: Option<String>,
    nonce: Option<String>,
    /// Unique per client: the first 4 bytes of its transaction ids.
    id: u32,
    n: u32,
    pub relay: SocketAddr,
}

impl Client {
    /// Connects to `server` and allocates a UDP relay with `creds`.
    pub fn allocate(server: SocketAddr, transport: Transport, creds: &Credentials, id: u32) -> anyhow::Result<Client> {
        let conn = match transport {
            Transport::Udp => {
                let s = UdpSocket::bind("127.0.0.1:0").context("binding a client socket")?;
                s.connect(server).context("connecting a client socket")?;
                grow_buffers(s.as_raw_fd());
                Conn::Udp(s)
            }
            Transport::Tcp => {
                let s = TcpStream::connect_timeout(&server, ANSWER_TIMEOUT).context("connecting to the TURN port")?;
                s.set_nodelay(true)?;
                grow_buffers(s.as_raw_fd());
                Conn::Tcp(s)
            }
        };
        let mut c = Client {
            conn,
            pending: Vec::new(),
            username: creds.username.clone(),
            password: creds.password.clone(),
            key: None,
            realm: None,
            nonce: None,
            id,
            n: 0,
            relay: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let answer = c.ask(method::ALLOCATE, &|b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]))?;
        let m = Message::parse(&answer).map_err(|e| anyhow!("unparsable Allocate answer: {e:?}"))?;
        if m.class != Class::Success {
            bail!("Allocate refused: {:?} {:?}", m.error_code(), m.text(attr::ERROR_CODE));
        }
        c.relay = m.xor_address(attr::XOR_RELAYED_ADDRESS).ok_or_else(|| anyhow!("no XOR-RELAYED-ADDRESS"))?;
        Ok(c)
    }

    /// Permission and channel [`CHANNEL`] to `peer` (another client's relay address).
    pub fn bind(&mut self, peer: SocketAddr) -> anyhow::Result<()> {
        let a = self.ask(method::CREATE_PERMISSION, &|b| b.xor_address(attr::XOR_PEER_ADDRESS, peer))?;
        if let Some(code) = Message::parse(&a).ok().and_then(|m| m.error_code()) {
            bail!("CreatePermission to {peer} refused with {code}");
        }
        let a = self.ask(method::CHANNEL_BIND, &|b| {
            b.attr(attr::CHANNEL_NUMBER, &[(CHANNEL >> 8) as u8, CHANNEL as u8, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, peer)
        })?;
        if let Some(code) = Message::parse(&a).ok().and_then(|m| m.error_code()) {
            bail!("ChannelBind to {peer} refused with {code}");
        }
        Ok(())
    }

    /// Sends a request (signed once the realm and nonce are known) and returns the answer,
    /// again once after a 401 or 438 (stale nonce) with the realm and nonce it carries.
    fn ask(&mut self, m: u16, add: &dyn Fn(Builder) -> Builder) -> anyhow::Result<Vec<u8>> {
        for _ in 0..3 {
            self.n += 1;
            let mut tid = [0u8; 12];
            tid[..4].copy_from_slice(&self.id.to_be_bytes());
            tid[4..8].copy_from_slice(&self.n.to_be_bytes());
            tid[8..].copy_from_slice(b"hbch");
            let mut b = add(Builder::new(m, Class::Request, tid));
            if let (Some(realm), Some(nonce), Some(key)) = (&self.realm, &self.nonce, &self.key) {
                b = b
                    .attr(attr::USERNAME, self.username.as_bytes())
                    .attr(attr::REALM, realm.as_bytes())
                    .attr(attr::NONCE, nonce.as_bytes())
                    .integrity(key);
            }
            let req = b.fingerprint().finish();
            let answer = self.exchange(&req, &tid)?;
            let msg = Message::parse(&answer).map_err(|e| anyhow!("unparsable answer: {e:?}"))?;
            if matches!(msg.error_code(), Some(401) | Some(438)) {
                let realm = msg.text(attr::REALM).ok_or_else(|| anyhow!("401 without REALM"))?.to_string();
                let nonce = msg.text(attr::NONCE).ok_or_else(|| anyhow!("401 without NONCE"))?.to_string();
                if msg.error_code() == Some(401) && self.nonce.is_some() && self.realm.as_deref() == Some(&realm) {
                    bail!("unauthorized with the minted credentials (is the secret the same?)");
                }
                self.key = Some(long_term_key(&self.username, &realm, &self.password));
                self.realm = Some(realm);
                self.nonce = Some(nonce);
                continue;
            }
            return Ok(answer);
        }
        bail!("no answer but 401/438 to a request")
    }

    /// Sends `req` and waits for the STUN message with transaction `tid` (anything else is
    /// skipped); over UDP the request is sent again every [`RETRANSMIT`].
    fn exchange(&mut self, req: &[u8], tid: &[u8; 12]) -> anyhow::Result<Vec<u8>> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        match &mut self.conn {
            Conn::Udp(s) => {
                let mut buf = [0u8; 2048];
                let mut next_send = Instant::now();
                loop {
                    let now = Instant::now();
                    if now >= deadline {
                        bail!("no answer from the TURN server within {ANSWER_TIMEOUT:?}");
                    }
                    if now >= next_send {
                        s.send(req).context("sending a request")?;
                        next_send = now + RETRANSMIT;
                    }
                    s.set_read_timeout(Some(next_send.min(deadline).saturating_duration_since(now).max(ms(1))))?;
                    match s.recv(&mut buf) {
                        Ok(n) => {
                            if let Ok(m) = Message::parse(&buf[..n]) {
                                if &m.transaction == tid {
                                    return Ok(buf[..n].to_vec());
                                }
                            }
                        }
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        }
                        Err(e) => return Err(e).context("receiving an answer"),
                    }
                }
            }
            Conn::Tcp(s) => {
                s.write_all(req).context("sending a request")?;
                loop {
                    if let Some(len) = stun::stream_frame_len(&self.pending) {
                        if self.pending.len() >= len {
                            let frame: Vec<u8> = self.pending.drain(..len).collect();
                            if let Ok(m) = Message::parse(&frame) {
                                if &m.transaction == tid {
                                    return Ok(frame);
                                }
                            }
                            continue;
                        }
                    } else if self.pending.len() >= 4 {
                        bail!("the TURN server sent something unframed over TCP");
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        bail!("no answer from the TURN server within {ANSWER_TIMEOUT:?}");
                    }
                    s.set_read_timeout(Some(deadline - now))?;
                    let mut chunk = [0u8; 2048];
                    let n = s.read(&mut chunk).context("reading an answer")?;
                    if n == 0 {
                        bail!("the TURN server closed the connection");
                    }
                    self.pending.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    /// Puts the socket back into blocking mode without timeouts, for the load threads (the
    /// receiver reads with `MSG_DONTWAIT`).
    pub fn into_load(self) -> anyhow::Result<Conn> {
        if !self.pending.is_empty() {
            bail!("unexpected data from the TURN server after the setup");
        }
        match &self.conn {
            Conn::Udp(s) => s.set_read_timeout(None)?,
            Conn::Tcp(s) => {
                s.set_read_timeout(None)?;
                s.set_write_timeout(Some(Duration::from_secs(2)))?;
            }
        }
        Ok(self.conn)
    }
}

/// A STUN Binding request to `server` over UDP answered within `wait`: the server is up.
pub fn stun_ping(server: SocketAddr, wait: Duration) -> bool {
    let Ok(s) = UdpSocket::bind("127.0.0.1:0") else { return false };
    if s.connect(server).is_err() {
        return false;
    }
    let deadline = Instant::now() + wait;
    let req = Builder::new(method::BINDING, Class::Request, *b"huddle-bench").finish();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        let _ = s.send(&req);
        let _ = s.set_read_timeout(Some(ms(100)));
        if let Ok(n) = s.recv(&mut buf) {
            if Message::parse(&buf[..n]).is_ok_and(|m| m.class == Class::Success) {
                return true;
            }
        }
    }
    false
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Asks for [`SOCKET_BUFFER_BYTES`] of receive and send buffer: above `net.core.rmem_max` when
/// allowed (`SO_RCVBUFFORCE` needs CAP_NET_ADMIN), else as much as the limit lets.
fn grow_buffers(fd: RawFd) {
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        let set = |opt| {
            // SAFETY: setsockopt reads the int we pass; a failure only leaves the size as it was.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&SOCKET_BUFFER_BYTES as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) != 0 {
            set(plain);
        }
    }
}
