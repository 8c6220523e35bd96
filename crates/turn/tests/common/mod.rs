//! The harness of the TURN core's tests: a virtual clock, a test client that speaks real
//! STUN/TURN messages (built and parsed with the crate's codec, checked against RFC 5769's
//! vectors in its unit tests) to the state machine, and a fake relay-socket table.
#![allow(dead_code)]

use huddle_turn::auth::long_term_key;
use huddle_turn::stun::{attr, method, Builder, Class, Message};
use huddle_turn::{ClientKey, Config, Forward, Relays, Secret, Server};
use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub const REALM: &str = "huddle";
pub const UNIX: u64 = 1_800_000_000;

#[derive(Default)]
pub struct FakeRelays {
    pub next_port: u16,
    pub open: HashSet<SocketAddr>,
    pub fail: bool,
}

impl Relays for FakeRelays {
    fn open(&mut self, ip: IpAddr, even: bool) -> io::Result<(SocketAddr, SocketAddr)> {
        if self.fail {
            return Err(io::Error::other("no ports"));
        }
        self.next_port += if even && self.next_port % 2 == 1 { 1 } else { 2 };
        let a = SocketAddr::new(ip, 50_000 + self.next_port);
        self.open.insert(a);
        Ok((a, a))
    }
    fn close(&mut self, bound: SocketAddr) {
        assert!(self.open.remove(&bound), "closed twice or never opened: {bound}");
    }
}

pub struct World {
    pub server: Server,
    pub relays: FakeRelays,
    pub now: Instant,
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn world_with(f: impl FnOnce(&mut Config)) -> World {
    let mut cfg = Config::new(REALM, Secret::new(b"shared secret"), b"nonce seed".to_vec());
    f(&mut cfg);
    let now = Instant::now();
    World { server: Server::new(cfg, now, UNIX), relays: FakeRelays::default(), now }
}

pub fn world() -> World {
    world_with(|_| {})
}

/// A client with REST credentials, doing what a browser's TURN client does.
pub struct Client {
    pub key: ClientKey,
    pub username: String,
    pub password: String,
    pub nonce: Option<String>,
    pub tid: u32,
}

/// A client at `remote` reaching the server at 198.51.100.1:3478, with credentials for `user`
/// valid an hour from the start.
pub fn client(remote: &str, user: &str) -> Client {
    client_for(remote, user, 3600)
}

/// [`client`] with credentials valid `ttl_secs` from the start.
pub fn client_for(remote: &str, user: &str, ttl_secs: u64) -> Client {
    let creds = Secret::new(b"shared secret").issue(user, UNIX, ttl_secs);
    Client {
        key: ClientKey::udp(addr("198.51.100.1:3478"), addr(remote)),
        username: creds.username,
        password: creds.password,
        nonce: None,
        tid: 0,
    }
}

impl Client {
    /// Another client (another 5-tuple, from `remote`) with the same credentials.
    pub fn again(&self, remote: &str) -> Client {
        Client {
            key: ClientKey { remote: addr(remote), ..self.key },
            username: self.username.clone(),
            password: self.password.clone(),
            nonce: None,
            tid: 0,
        }
    }

    pub fn tid(&mut self) -> [u8; 12] {
        self.tid += 1;
        let mut t = [7u8; 12];
        t[8..].copy_from_slice(&self.tid.to_be_bytes());
        t
    }

    /// A signed request (after a first unsigned one has fetched the nonce).
    pub fn request(&mut self, m: u16, tid: [u8; 12], add: impl FnOnce(Builder) -> Builder) -> Vec<u8> {
        let b = add(Builder::new(m, Class::Request, tid));
        match &self.nonce {
            None => b.finish(),
            Some(nonce) => b
                .attr(attr::USERNAME, self.username.as_bytes())
                .attr(attr::REALM, REALM.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes())
                .integrity(&long_term_key(&self.username, REALM, &self.password))
                .fingerprint()
                .finish(),
        }
    }
}

impl World {
    pub fn send(&mut self, c: &Client, data: &[u8]) -> Option<Forward> {
        self.server.from_client(self.now, c.key, data, &mut self.relays)
    }

    pub fn replies(&mut self, c: &Client) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(t) = self.server.poll_transmit() {
            assert_eq!(t.to, c.key, "answers go to whoever asked");
            out.push(t.data);
        }
        out
    }

    /// Sends a request and returns the one answer, re-trying once with the nonce from a 401/438
    /// as clients do.
    pub fn ask(&mut self, c: &mut Client, m: u16, add: impl Fn(Builder) -> Builder) -> Vec<u8> {
        let tid = c.tid();
        let req = c.request(m, tid, &add);
        assert_eq!(self.send(c, &req), None);
        let mut answers = self.replies(c);
        assert_eq!(answers.len(), 1);
        let first = answers.remove(0);
        let msg = Message::parse(&first).expect("the server's answer parses");
        assert_eq!(msg.transaction, tid);
        if matches!(msg.error_code(), Some(401) | Some(438)) && msg.get(attr::NONCE).is_some() {
            let fresh = msg.text(attr::NONCE).unwrap().to_string();
            if c.nonce.as_deref() != Some(&fresh) {
                c.nonce = Some(fresh);
                let tid = c.tid();
                let req = c.request(m, tid, &add);
                assert_eq!(self.send(c, &req), None);
                let mut answers = self.replies(c);
                assert_eq!(answers.len(), 1);
                return answers.remove(0);
            }
        }
        first
    }

    /// Asks for an allocation: its relayed address, or the error code.
    pub fn try_allocate(&mut self, c: &mut Client) -> Result<SocketAddr, u16> {
        let answer = self.ask(c, method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]));
        let m = Message::parse(&answer).unwrap();
        match m.error_code() {
            Some(code) => Err(code),
            None => Ok(m.xor_address(attr::XOR_RELAYED_ADDRESS).expect("a relayed address")),
        }
    }

    /// The lifetime a Refresh got, or its error code.
    pub fn refresh(&mut self, c: &mut Client, lifetime: u32) -> Result<u32, u16> {
        let answer = self.ask(c, method::REFRESH, |b| b.u32_attr(attr::LIFETIME, lifetime));
        let m = Message::parse(&answer).unwrap();
        m.error_code().map_or_else(|| Ok(m.u32_attr(attr::LIFETIME).expect("a lifetime")), Err)
    }

    pub fn allocate(&mut self, c: &mut Client) -> SocketAddr {
        let answer = self.ask(c, method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]));
        let m = Message::parse(&answer).unwrap();
        assert_eq!(m.class, Class::Success, "allocate refused: {:?}", m.error_code());
        assert!(m.check_integrity(&long_term_key(&c.username, REALM, &c.password)), "answers are signed");
        assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(c.key.remote));
        m.xor_address(attr::XOR_RELAYED_ADDRESS).expect("a relayed address")
    }

    pub fn permit(&mut self, c: &mut Client, peer: SocketAddr) -> Option<u16> {
        let answer = self.ask(c, method::CREATE_PERMISSION, |b| b.xor_address(attr::XOR_PEER_ADDRESS, peer));
        Message::parse(&answer).unwrap().error_code()
    }

    pub fn bind(&mut self, c: &mut Client, number: u16, peer: SocketAddr) -> Option<u16> {
        let answer = self.ask(c, method::CHANNEL_BIND, |b| {
            b.attr(attr::CHANNEL_NUMBER, &[(number >> 8) as u8, number as u8, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, peer)
        });
        Message::parse(&answer).unwrap().error_code()
    }

    pub fn send_indication(&mut self, c: &mut Client, peer: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
        let tid = c.tid();
        let ind = Builder::new(method::SEND, Class::Indication, tid)
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, data)
            .finish();
        let f = self.send(c, &ind)?;
        assert_eq!(f.peer, peer);
        Some(ind[f.payload].to_vec())
    }

    pub fn peer_sends(&mut self, relay: SocketAddr, peer: SocketAddr, data: &[u8]) -> Option<(ClientKey, Vec<u8>)> {
        let mut out = Vec::new();
        let to = self.server.from_peer(self.now, relay, peer, data, &mut out)?;
        Some((to, out))
    }

    pub fn pass(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now, &mut self.relays);
    }
}
