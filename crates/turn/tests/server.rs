//! The TURN core on a virtual clock: allocations, permissions, channels, expiry, quotas and
//! malformed input, spoken to in real STUN/TURN messages (`common`).

mod common;

use common::{addr, client, world, world_with, Client, UNIX};
use huddle_turn::stun::{self, attr, method, Builder, Class, Message};
use huddle_turn::{Secret, Transport};
use std::time::Duration;

const REALM: &str = common::REALM;

#[test]
fn binding_requests_get_the_mapped_address_without_credentials() {
    let mut w = world();
    let c = client("203.0.113.7:5000", "p1");
    let req = Builder::new(method::BINDING, Class::Request, [1; 12]).finish();
    assert_eq!(w.send(&c, &req), None);
    let answer = w.replies(&c).remove(0);
    let m = Message::parse(&answer).unwrap();
    assert_eq!((m.method, m.class), (method::BINDING, Class::Success));
    assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(c.key.remote));
    assert_eq!(w.server.stats().binding_requests, 1);
}

#[test]
fn allocate_needs_valid_time_limited_credentials() {
    let mut w = world();
    let mut c = client("203.0.113.7:5000", "p1");
    // First request: no credentials → 401 with realm and nonce.
    let tid = c.tid();
    let req = c.request(method::ALLOCATE, tid, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]));
    w.send(&c, &req);
    let answer = w.replies(&c).remove(0);
    let m = Message::parse(&answer).unwrap();
    assert_eq!(m.error_code(), Some(401));
    assert_eq!(m.text(attr::REALM), Some(REALM));
    assert!(m.get(attr::NONCE).is_some());

    // A wrong password, and an expired username, are refused.
    let mut bad = client("203.0.113.7:5001", "p1");
    bad.password = "not it".into();
    let a = w.ask(&mut bad, method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]));
    assert_eq!(Message::parse(&a).unwrap().error_code(), Some(401));
    let mut old = client("203.0.113.7:5002", "p1");
    let creds = Secret::new(b"shared secret").issue("p1", UNIX - 7200, 3600);
    (old.username, old.password) = (creds.username, creds.password);
    let a = w.ask(&mut old, method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]));
    assert_eq!(Message::parse(&a).unwrap().error_code(), Some(401), "expired REST username");
    // Another server's secret.
    let mut foreign = client("203.0.113.7:5003", "p1");
    foreign.password = Secret::new(b"other").password(&foreign.username);
    let a = w.ask(&mut foreign, method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]));
    assert_eq!(Message::parse(&a).unwrap().error_code(), Some(401));
    assert!(w.server.stats().auth_failures >= 3);
    assert_eq!(w.server.stats().allocations, 0);

    let relayed = w.allocate(&mut c);
    assert_eq!(relayed.ip(), c.key.local.ip(), "relay on the address the client reached");
    assert_eq!(w.server.stats().allocations, 1);
}

#[test]
fn a_retransmitted_allocate_gets_the_same_answer_and_a_new_one_a_mismatch() {
    let mut w = world();
    let mut c = client("203.0.113.7:5000", "p1");
    w.allocate(&mut c);
    let tid = [7u8, 7, 7, 7, 7, 7, 7, 7, 0, 0, 0, 2];
    let again = c.request(method::ALLOCATE, tid, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]));
    w.send(&c, &again);
    let answer = w.replies(&c).remove(0);
    assert_eq!(Message::parse(&answer).unwrap().class, Class::Success, "same transaction: same answer");
    let a = w.ask(&mut c, method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]));
    assert_eq!(Message::parse(&a).unwrap().error_code(), Some(437));
    assert_eq!(w.relays.open.len(), 1);
}

#[test]
fn stale_nonces_are_refused_with_438_and_the_client_recovers() {
    let mut w = world();
    let mut c = client("203.0.113.7:5000", "p1");
    w.allocate(&mut c);
    let a = w.ask(&mut c, method::REFRESH, |b| b.u32_attr(attr::LIFETIME, 3600));
    assert_eq!(Message::parse(&a).unwrap().class, Class::Success);
    w.pass(Duration::from_secs(601));
    let tid = c.tid();
    let req = c.request(method::REFRESH, tid, |b| b);
    w.send(&c, &req);
    let m = w.replies(&c).remove(0);
    assert_eq!(Message::parse(&m).unwrap().error_code(), Some(438));
    let a = w.ask(&mut c, method::REFRESH, |b| b);
    assert_eq!(Message::parse(&a).unwrap().class, Class::Success);
}

#[test]
fn wrong_transport_family_and_unknown_attributes_are_refused_with_their_codes() {
    let mut w = world();
    let mut c = client("203.0.113.7:5000", "p1");
    let a = w.ask(&mut c, method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]));
    assert_eq!(Message::parse(&a).unwrap().error_code(), Some(442));
    let a = w.ask(&mut c, method::ALLOCATE, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
    });
    assert_eq!(Message::parse(&a).unwrap().error_code(), Some(440));
    let a = w.ask(&mut c, method::ALLOCATE, |b| b);
    assert_eq!(Message::parse(&a).unwrap().error_code(), Some(400), "no REQUESTED-TRANSPORT");
    let a = w.ask(&mut c, method::ALLOCATE, |b| b.attr(0x0022, &[0; 8]));
    let m = Message::parse(&a).unwrap();
    assert_eq!(m.error_code(), Some(420));
    assert_eq!(m.get(attr::UNKNOWN_ATTRIBUTES), Some(&[0x00, 0x22][..]));
    let a = w.ask(&mut c, method::CREATE_PERMISSION, |b| b.xor_address(attr::XOR_PEER_ADDRESS, addr("8.8.8.8:1")));
    assert_eq!(Message::parse(&a).unwrap().error_code(), Some(437), "no allocation yet");
    assert_eq!(w.relays.open.len(), 0);
}

#[test]
fn data_flows_only_to_permitted_peers_by_indication_and_channel() {
    let mut w = world();
    let mut c = client("203.0.113.7:5000", "p1");
    let relay = w.allocate(&mut c);
    let peer = addr("93.184.216.34:7000");

    // Nothing without a permission, either way.
    assert_eq!(w.send_indication(&mut c, peer, b"hi"), None);
    assert_eq!(w.peer_sends(relay, peer, b"hello"), None);
    assert_eq!(w.server.stats().dropped_no_permission, 2);

    assert_eq!(w.permit(&mut c, peer), None);
    assert_eq!(w.send_indication(&mut c, peer, b"hi").as_deref(), Some(&b"hi"[..]));
    // Permissions are per address: another port of the same peer is fine.
    let other_port = addr("93.184.216.34:7001");
    let (to, ind) = w.peer_sends(relay, other_port, b"hello").expect("permitted address");
    assert_eq!(to, c.key);
    let m = Message::parse(&ind).unwrap();
    assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Some(other_port));
    assert_eq!(m.get(attr::DATA), Some(&b"hello"[..]));

    // A channel: ChannelData both ways.
    assert_eq!(w.bind(&mut c, 0x4001, peer), None);
    let mut cd = Vec::new();
    stun::write_channel_data(&mut cd, 0x4001, b"media", false);
    let f = w.send(&c, &cd).expect("relayed");
    assert_eq!((f.peer, f.relay, &cd[f.payload.clone()]), (peer, relay, &b"media"[..]));
    let (_, back) = w.peer_sends(relay, peer, b"reply").unwrap();
    assert_eq!(stun::parse_channel_data(&back), Some((0x4001, &b"reply"[..])));
    // Unbound channel numbers relay nothing.
    stun::write_channel_data(&mut cd, 0x4002, b"media", false);
    assert_eq!(w.send(&c, &cd), None);

    // Rules of binding: range, one peer per channel, one channel per peer.
    assert_eq!(w.bind(&mut c, 0x3fff, peer), Some(400));
    assert_eq!(w.bind(&mut c, 0x7fff, peer), Some(400));
    assert_eq!(w.bind(&mut c, 0x4001, other_port), Some(400));
    assert_eq!(w.bind(&mut c, 0x4003, peer), Some(400));
    assert_eq!(w.bind(&mut c, 0x4001, peer), None, "refreshing the same binding is fine");
    let s = w.server.stats();
    assert_eq!((s.to_peer_packets, s.to_client_packets), (2, 2));
}

#[test]
fn stream_clients_get_padded_channel_data() {
    let mut w = world();
    let mut c = client("203.0.113.7:5000", "p1");
    c.key.transport = Transport::Tcp;
    c.key.conn = 9;
    let relay = w.allocate(&mut c);
    let peer = addr("93.184.216.34:7000");
    assert_eq!(w.bind(&mut c, 0x4000, peer), None);
    let (_, back) = w.peer_sends(relay, peer, b"12345").unwrap();
    assert_eq!(back.len(), 12, "4 + 5 bytes rounded up to 4");
    assert_eq!(stun::stream_frame_len(&back), Some(12));
    w.server.client_gone(&c.key, &mut w.relays);
    assert_eq!(w.server.stats().allocations, 0);
    assert!(w.relays.open.is_empty(), "the relay socket goes with the connection");
}

#[test]
fn special_addresses_are_refused_unless_allowed() {
    let mut w = world();
    let mut c = client("203.0.113.7:5000", "p1");
    w.allocate(&mut c);
    for peer in ["127.0.0.1:22", "10.0.0.1:80", "192.168.1.1:53", "169.254.169.254:80", "172.16.5.4:3306"] {
        assert_eq!(w.permit(&mut c, addr(peer)), Some(403), "{peer}");
        assert_eq!(w.bind(&mut c, 0x4000, addr(peer)), Some(403), "{peer}");
    }
    // One refused address refuses the whole request.
    let a = w.ask(&mut c, method::CREATE_PERMISSION, |b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, addr("8.8.8.8:1")).xor_address(attr::XOR_PEER_ADDRESS, addr("10.0.0.1:1"))
    });
    assert_eq!(Message::parse(&a).unwrap().error_code(), Some(403));
    assert_eq!(w.send_indication(&mut c, addr("8.8.8.8:1"), b"x"), None);
    assert_eq!(w.server.stats().peers_denied, 11);

    let mut w = world_with(|cfg| cfg.policy.allow.push("10.0.0.0/8".parse().unwrap()));
    let mut c = client("203.0.113.7:5000", "p1");
    w.allocate(&mut c);
    assert_eq!(w.permit(&mut c, addr("10.1.2.3:9")), None, "allowed range");
    assert_eq!(w.permit(&mut c, addr("127.0.0.1:9")), Some(403));
}

#[test]
fn our_own_relays_and_the_sfu_are_reachable_at_exactly_their_addresses() {
    let sfu = addr("127.0.0.1:8080");
    let mut w = world_with(|cfg| cfg.trusted_peers.push(sfu));
    // Two clients on this machine: their relays are on loopback.
    let mut a = client("127.0.0.1:40000", "pa");
    a.key.local = addr("127.0.0.1:3478");
    let mut b = client("127.0.0.1:40001", "pb");
    b.key.local = addr("127.0.0.1:3478");
    let relay_a = w.allocate(&mut a);
    let relay_b = w.allocate(&mut b);
    assert!(relay_a.ip().is_loopback());
    assert_eq!(w.permit(&mut a, relay_b), None, "another allocation's relay");
    assert_eq!(w.permit(&mut b, relay_a), None);
    assert_eq!(w.permit(&mut a, sfu), None, "the SFU");
    assert_eq!(w.permit(&mut a, addr("127.0.0.1:22")), Some(403), "but nothing else on loopback");
    // The permission covers those ports only.
    assert!(w.send_indication(&mut a, relay_b, b"x").is_some());
    assert!(w.send_indication(&mut a, sfu, b"x").is_some());
    assert_eq!(w.send_indication(&mut a, addr("127.0.0.1:22"), b"x"), None);
    assert!(w.peer_sends(relay_a, relay_b, b"y").is_some());
    assert_eq!(w.peer_sends(relay_a, addr("127.0.0.1:22"), b"y"), None);
    // When b's allocation goes, its old address is no longer reachable through a's permission.
    let a2 = w.ask(&mut b, method::REFRESH, |x| x.u32_attr(attr::LIFETIME, 0));
    assert_eq!(Message::parse(&a2).unwrap().class, Class::Success);
    assert_eq!(w.send_indication(&mut a, relay_b, b"x"), None);
}

#[test]
fn permissions_channels_and_allocations_expire() {
    let mut w = world();
    let mut c = client("203.0.113.7:5000", "p1");
    let relay = w.allocate(&mut c);
    let (p1, p2) = (addr("93.184.216.34:1"), addr("93.184.216.35:1"));
    assert_eq!(w.permit(&mut c, p1), None);
    assert_eq!(w.bind(&mut c, 0x4000, p2), None);
    w.pass(Duration::from_secs(299));
    assert!(w.peer_sends(relay, p1, b"x").is_some());
    w.pass(Duration::from_secs(2));
    assert_eq!(w.peer_sends(relay, p1, b"x"), None, "permission lifetime is 300 s");
    // The channel's permission lapsed too (a channel does not refresh it): nothing flows, though
    // the binding itself lives 600 s.
    assert_eq!(w.peer_sends(relay, p2, b"x"), None);
    // Refresh keeps the allocation; without it, it goes after its lifetime.
    let a = w.ask(&mut c, method::REFRESH, |b| b.u32_attr(attr::LIFETIME, 60));
    let m = Message::parse(&a).unwrap();
    assert_eq!(m.u32_attr(attr::LIFETIME), Some(600), "never below the default");
    w.pass(Duration::from_secs(599));
    assert_eq!(w.server.stats().allocations, 1);
    w.pass(Duration::from_secs(2));
    assert_eq!(w.server.stats().allocations, 0);
    assert!(w.relays.open.is_empty());
    let a = w.ask(&mut c, method::REFRESH, |b| b);
    assert_eq!(Message::parse(&a).unwrap().error_code(), Some(437));
}

#[test]
fn lifetimes_are_capped_and_zero_deletes() {
    let mut w = world();
    let mut c = client("203.0.113.7:5000", "p1");
    let answer = w.ask(&mut c, method::ALLOCATE, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).u32_attr(attr::LIFETIME, 86_400)
    });
    assert_eq!(Message::parse(&answer).unwrap().u32_attr(attr::LIFETIME), Some(3600));
    let a = w.ask(&mut c, method::REFRESH, |b| b.u32_attr(attr::LIFETIME, 0));
    assert_eq!(Message::parse(&a).unwrap().u32_attr(attr::LIFETIME), Some(0));
    assert_eq!(w.server.stats().allocations, 0);
    assert!(w.relays.open.is_empty());
}

#[test]
fn quotas_per_user_and_in_total() {
    let mut w = world_with(|cfg| {
        cfg.user_allocations = 2;
        cfg.max_allocations = 3;
    });
    let mut clients: Vec<Client> = (0..3).map(|i| client(&format!("203.0.113.7:{}", 6000 + i), "same")).collect();
    w.allocate(&mut clients[0]);
    w.allocate(&mut clients[1]);
    let a = w.ask(&mut clients[2], method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]));
    assert_eq!(Message::parse(&a).unwrap().error_code(), Some(486));
    let mut other = client("203.0.113.8:6000", "other");
    w.allocate(&mut other);
    let mut fourth = client("203.0.113.9:6000", "fourth");
    let a = w.ask(&mut fourth, method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]));
    assert_eq!(Message::parse(&a).unwrap().error_code(), Some(508));
    assert_eq!(w.server.stats().quota_refusals, 2);
    // Freeing one lets the user allocate again.
    let a = w.ask(&mut clients[0], method::REFRESH, |b| b.u32_attr(attr::LIFETIME, 0));
    assert_eq!(Message::parse(&a).unwrap().class, Class::Success);
    w.allocate(&mut clients[2]);
}

#[test]
fn a_user_bandwidth_quota_drops_what_exceeds_it() {
    let mut w = world_with(|cfg| cfg.user_bytes_per_sec = 10_000);
    let mut c = client("203.0.113.7:5000", "p1");
    let relay = w.allocate(&mut c);
    let peer = addr("93.184.216.34:1");
    assert_eq!(w.bind(&mut c, 0x4000, peer), None);
    let mut cd = Vec::new();
    stun::write_channel_data(&mut cd, 0x4000, &[0u8; 1000], false);
    let sent = (0..20).filter(|_| w.send(&c, &cd).is_some()).count();
    assert_eq!(sent, 10, "a second's worth of burst");
    assert!(w.peer_sends(relay, peer, &[0u8; 1000]).is_none(), "both directions count");
    w.now += Duration::from_millis(500);
    let sent = (0..20).filter(|_| w.send(&c, &cd).is_some()).count();
    assert_eq!(sent, 5, "refilled at the rate");
    assert_eq!(w.server.stats().dropped_quota, 10 + 1 + 15);
}

#[test]
fn another_users_requests_on_an_allocation_are_refused() {
    let mut w = world();
    let mut c = client("203.0.113.7:5000", "p1");
    w.allocate(&mut c);
    let mut intruder = client("203.0.113.7:5000", "p2");
    let a =
        w.ask(&mut intruder, method::CREATE_PERMISSION, |b| b.xor_address(attr::XOR_PEER_ADDRESS, addr("8.8.8.8:1")));
    assert_eq!(Message::parse(&a).unwrap().error_code(), Some(441));
}

#[test]
fn no_relay_port_means_508_and_nothing_half_made() {
    let mut w = world();
    w.relays.fail = true;
    let mut c = client("203.0.113.7:5000", "p1");
    let a = w.ask(&mut c, method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]));
    assert_eq!(Message::parse(&a).unwrap().error_code(), Some(508));
    w.relays.fail = false;
    w.allocate(&mut c);
}

#[test]
fn garbage_from_clients_and_peers_is_counted_and_dropped() {
    let mut w = world();
    let mut c = client("203.0.113.7:5000", "p1");
    let relay = w.allocate(&mut c);
    let mut seed = 0x1234_5678u32;
    for n in 0..2000usize {
        let len = n % 120;
        let mut pkt = Vec::with_capacity(len);
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            pkt.push(seed as u8);
        }
        if n % 3 == 0 && len >= 20 {
            // Look like STUN to get past the first checks.
            pkt[0] &= 0x01;
            pkt[4..8].copy_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
        }
        let _ = w.send(&c, &pkt);
        while w.server.poll_transmit().is_some() {}
        let _ = w.peer_sends(relay, addr("93.184.216.34:1"), &pkt);
    }
    assert!(w.server.stats().malformed > 0);
    assert_eq!(w.server.stats().allocations, 1, "still serving");
}
