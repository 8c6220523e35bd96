//! Random sequences of client and peer traffic against the TURN state machine: raw bytes, and
//! correctly signed requests with fuzzed methods and attributes (so the authenticated paths are
//! reached) by a session's, a check's and another service's credentials, ChannelData, Send
//! indications, peer datagrams, time passing, TCP clients leaving, the hub granting and revoking
//! the session's relay user, the host's addresses changing.
//! Invariants: no panic; every answer is a well-formed STUN message; the allocations the core
//! counts are exactly the relay sockets it holds open; no relay is closed twice.
#![no_main]

use huddle_turn::auth::long_term_key;
use huddle_turn::stun::{self, attr, method, Builder, Class, Message};
use huddle_turn::{ClientKey, Config, Relays, Secret, Server, Transport};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

#[derive(Default)]
struct FakeRelays {
    open: HashSet<SocketAddr>,
    next: u16,
}

impl Relays for FakeRelays {
    fn open(&mut self, ip: IpAddr, _even: bool) -> io::Result<(SocketAddr, SocketAddr)> {
        if self.next == 40 {
            return Err(io::Error::other("no ports left"));
        }
        self.next += 1;
        let a = SocketAddr::new(ip, 40_000 + self.next);
        assert!(self.open.insert(a), "port handed out twice");
        Ok((a, a))
    }
    fn close(&mut self, bound: SocketAddr) {
        assert!(self.open.remove(&bound), "relay {bound} closed twice or never opened");
    }
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        a
    }
}

const UNIX: u64 = 1_800_000_000;
const METHODS: [u16; 7] = [
    method::BINDING,
    method::ALLOCATE,
    method::REFRESH,
    method::CREATE_PERMISSION,
    method::CHANNEL_BIND,
    method::SEND,
    0x0ABC,
];

fuzz_target!(|data: &[u8]| {
    let mut cfg = Config::new("huddle", Secret::new(b"fuzz secret"), b"seed".to_vec());
    cfg.user_allocations = 3;
    cfg.max_allocations = 5;
    cfg.max_permissions = 4;
    cfg.max_channels = 4;
    cfg.user_bytes_per_sec = 50_000;
    let sfu: SocketAddr = "192.0.2.1:8080".parse().unwrap();
    cfg.trusted_peers.push(sfu);
    let start = Instant::now();
    let mut server = Server::new(cfg, start, UNIX);
    let mut relays = FakeRelays::default();
    let mut now = start;
    let local: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let clients = [
        ClientKey::udp(local, "203.0.113.5:5000".parse().unwrap()),
        ClientKey::udp(local, "203.0.113.6:5000".parse().unwrap()),
        ClientKey { transport: Transport::Tcp, conn: 7, local, remote: "203.0.113.7:6000".parse().unwrap() },
    ];
    let secret = Secret::new(b"fuzz secret");
    // A session's (granted and revoked below), a check's, another service's; each expires in an hour.
    let creds: Vec<_> = ["s.a", "c.b", "a"].iter().map(|u| secret.issue(u, UNIX, 3600)).collect();
    let mut nonce: Option<String> = None;
    let mut seen_relays: Vec<SocketAddr> = Vec::new();
    let mut b = Bytes(data);
    let mut tid = 0u32;
    let mut out = Vec::new();
    while let Some(op) = b.byte() {
        let who = (b.byte().unwrap_or(0) % 3) as usize;
        let client = clients[who];
        let peers = |b: &mut Bytes, seen: &[SocketAddr]| -> SocketAddr {
            let pick = b.byte().unwrap_or(0);
            match pick % 5 {
                0 if !seen.is_empty() => seen[pick as usize % seen.len()],
                1 => sfu,
                2 => SocketAddr::new("127.0.0.1".parse().unwrap(), u16::from(pick)),
                3 => SocketAddr::new("10.1.2.3".parse().unwrap(), 9),
                _ => SocketAddr::new("93.184.216.34".parse().unwrap(), 1000 + u16::from(pick)),
            }
        };
        match op % 9 {
            0 => {
                let n = b.byte().unwrap_or(0) as usize;
                let raw = b.take(n).to_vec();
                let _ = server.from_client(now, client, &raw, &mut relays);
            }
            1 | 7 => {
                tid += 1;
                let mut t = [0u8; 12];
                t[..4].copy_from_slice(&tid.to_be_bytes());
                let m = METHODS[b.byte().unwrap_or(0) as usize % METHODS.len()];
                let mut req = Builder::new(m, Class::Request, t);
                for _ in 0..(b.byte().unwrap_or(0) % 4) {
                    req = match b.byte().unwrap_or(0) % 8 {
                        0 => req.attr(attr::REQUESTED_TRANSPORT, &[b.byte().unwrap_or(17), 0, 0, 0]),
                        1 => req.u32_attr(attr::LIFETIME, u32::from(b.byte().unwrap_or(0)) * 60),
                        2 => req.xor_address(attr::XOR_PEER_ADDRESS, peers(&mut b, &seen_relays)),
                        3 => req.attr(attr::CHANNEL_NUMBER, &[0x40 | (b.byte().unwrap_or(0) & 0x3f), 1, 0, 0]),
                        4 => req.attr(attr::EVEN_PORT, &[0x80]),
                        5 => req.attr(attr::REQUESTED_ADDRESS_FAMILY, &[b.byte().unwrap_or(1) % 3, 0, 0, 0]),
                        6 => {
                            let ty = u16::from_be_bytes([b.byte().unwrap_or(0), b.byte().unwrap_or(0)]);
                            let n = b.byte().unwrap_or(0) as usize % 16;
                            let v = b.take(n).to_vec();
                            req.attr(ty, &v)
                        }
                        _ => req.attr(attr::DONT_FRAGMENT, &[]),
                    };
                }
                if let (1, Some(n)) = (op % 9, &nonce) {
                    let c = &creds[who];
                    let wrong = b.byte().unwrap_or(0) == 0xff;
                    let password = if wrong { "wrong" } else { c.password.as_str() };
                    req = req
                        .attr(attr::USERNAME, c.username.as_bytes())
                        .attr(attr::REALM, b"huddle")
                        .attr(attr::NONCE, n.as_bytes())
                        .integrity(&long_term_key(&c.username, "huddle", password));
                }
                let req = req.fingerprint().finish();
                let _ = server.from_client(now, client, &req, &mut relays);
            }
            2 => {
                let channel = 0x4000 | u16::from(b.byte().unwrap_or(0) & 0x3f);
                let n = b.byte().unwrap_or(0) as usize;
                let payload = b.take(n).to_vec();
                stun::write_channel_data(&mut out, channel, &payload, client.transport.is_stream());
                if let Some(f) = server.from_client(now, client, &out, &mut relays) {
                    assert!(f.payload.end <= out.len());
                }
            }
            3 => {
                let peer = peers(&mut b, &seen_relays);
                let n = b.byte().unwrap_or(0) as usize;
                let payload = b.take(n).to_vec();
                let ind = Builder::new(method::SEND, Class::Indication, [3; 12])
                    .xor_address(attr::XOR_PEER_ADDRESS, peer)
                    .attr(attr::DATA, &payload)
                    .finish();
                if let Some(f) = server.from_client(now, client, &ind, &mut relays) {
                    assert_eq!(&ind[f.payload], &payload[..]);
                    assert_eq!(f.peer, peer);
                }
            }
            4 => {
                let relay = if seen_relays.is_empty() { local } else { seen_relays[b.byte().unwrap_or(0) as usize % seen_relays.len()] };
                let peer = peers(&mut b, &seen_relays);
                let n = b.byte().unwrap_or(0) as usize;
                let payload = b.take(n).to_vec();
                if server.from_peer(now, relay, peer, &payload, &mut out).is_some() {
                    match stun::kind(&out) {
                        stun::Kind::ChannelData => assert_eq!(stun::parse_channel_data(&out).map(|(_, p)| p), Some(&payload[..])),
                        _ => assert_eq!(Message::parse(&out).expect("a Data indication").get(attr::DATA), Some(&payload[..])),
                    }
                }
            }
            5 => {
                now += Duration::from_secs(u64::from(b.byte().unwrap_or(0)) * 10);
                server.handle_timeout(now, &mut relays);
            }
            6 => server.client_gone(&clients[2], &mut relays),
            _ => match b.byte().unwrap_or(0) % 3 {
                0 => server.grant("s.a"),
                1 => server.revoke("s.a", &mut relays),
                _ => server.set_host_addresses(vec![local.ip(), "93.184.216.34".parse().unwrap()]),
            },
        }
        while let Some(t) = server.poll_transmit() {
            let m = Message::parse(&t.data).expect("every answer is a well-formed STUN message");
            if matches!(m.error_code(), Some(401) | Some(438)) {
                if let Some(n) = m.text(attr::NONCE) {
                    nonce = Some(n.to_string());
                }
            }
            if let Some(r) = m.xor_address(attr::XOR_RELAYED_ADDRESS) {
                seen_relays.push(r);
            }
        }
        assert_eq!(server.stats().allocations, relays.open.len(), "allocations and open relays agree");
    }
});
