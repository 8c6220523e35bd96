//! What a relay may reach (issue 15, item 8), on a virtual clock: nothing of this host — not
//! its listed addresses, not loopback, not `0.0.0.0` — even where the operator allowed a range
//! that covers it, except exactly our own relays and the SFU's port; and no IPv4 address the
//! policy denies wrapped in IPv6 (IPv4-mapped or -compatible, NAT64, 6to4, Teredo).

mod common;

use common::{addr, client, world_with, World};
use huddle_turn::ClientKey;

/// The server at 198.51.100.1:3478, also reachable at public address 203.0.113.50, with its SFU
/// at 198.51.100.1:8080, and an operator who allowed everything.
fn host_world() -> World {
    world_with(|cfg| {
        cfg.policy.allow = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        cfg.policy.host = vec!["198.51.100.1".parse().unwrap(), "203.0.113.50".parse().unwrap()];
        cfg.trusted_peers = vec![addr("198.51.100.1:8080")];
    })
}

#[test]
fn nothing_of_this_host_is_reached_but_our_relays_and_the_sfu_even_where_allowed() {
    let mut w = host_world();
    let mut c = client("192.0.2.7:5000", "p1");
    let mut d = client("192.0.2.8:5000", "p2");
    let relay_c = w.allocate(&mut c);
    let relay_d = w.allocate(&mut d);
    assert_eq!(relay_d.ip(), addr("198.51.100.1:0").ip(), "relays are on the host");
    for peer in [
        "198.51.100.1:3478", // the TURN port: a relayed Binding would be answered by ourselves
        "198.51.100.1:22",
        "203.0.113.50:53", // the public address
        "127.0.0.1:8080",
        "127.0.0.53:53",
        "0.0.0.0:9",
    ] {
        assert_eq!(w.permit(&mut c, addr(peer)), Some(403), "{peer}");
        assert_eq!(w.bind(&mut c, 0x4000, addr(peer)), Some(403), "{peer}");
    }
    assert_eq!(w.send_indication(&mut c, addr("198.51.100.1:3478"), b"binding"), None);
    // The exceptions, at exactly their ports.
    assert_eq!(w.permit(&mut c, relay_d), None, "another relay");
    assert_eq!(w.permit(&mut c, addr("198.51.100.1:8080")), None, "the SFU");
    assert!(w.send_indication(&mut c, relay_d, b"x").is_some());
    let mut next_port = relay_d;
    next_port.set_port(relay_d.port() + 1);
    assert_eq!(w.send_indication(&mut c, next_port, b"x"), None, "not the port beside it");
    assert!(w.peer_sends(relay_c, relay_d, b"y").is_some());
    assert_eq!(w.peer_sends(relay_c, addr("198.51.100.1:3478"), b"y"), None, "nor data from the host elsewhere");
    // What the operator allowed that is not this host is reached as a whole address.
    assert_eq!(w.permit(&mut c, addr("10.1.2.3:9")), None);
    assert!(w.send_indication(&mut c, addr("10.1.2.3:10"), b"z").is_some());
    assert_eq!(w.server.stats().peers_denied, 12);
}

#[test]
fn an_address_that_becomes_the_hosts_is_reached_no_more() {
    let mut w = host_world();
    let mut c = client("192.0.2.7:5000", "p1");
    let relay = w.allocate(&mut c);
    let peer = addr("93.184.216.34:7000");
    assert_eq!(w.permit(&mut c, peer), None);
    assert!(w.peer_sends(relay, peer, b"hi").is_some());
    // A new address on an interface (DHCP, an IPv6 privacy address).
    w.server.set_host_addresses(vec!["198.51.100.1".parse().unwrap(), "203.0.113.50".parse().unwrap(), peer.ip()]);
    assert_eq!(w.peer_sends(relay, peer, b"hi"), None);
    assert_eq!(w.send_indication(&mut c, peer, b"x"), None);
    assert_eq!(w.permit(&mut c, peer), Some(403));
}

#[test]
fn ipv4_addresses_wrapped_in_ipv6_are_judged_as_ipv4() {
    let mut w = world_with(|cfg| cfg.policy.host = vec!["2a00:1450::1".parse().unwrap()]);
    let mut c = client("[2a00:1450::99]:5000", "p1");
    c.key = ClientKey { local: addr("[2a00:1450::1]:3478"), ..c.key };
    w.allocate(&mut c);
    for peer in [
        "[::ffff:127.0.0.1]:80",
        "[::127.0.0.1]:80",
        "[::ffff:0:169.254.169.254]:80",
        "[64:ff9b::a9fe:a9fe]:80", // NAT64 to 169.254.169.254
        "[64:ff9b::808:808]:53",   // NAT64 at all
        "[64:ff9b:1::1]:53",
        "[2002:7f00:1::1]:80",                       // 6to4 of 127.0.0.1
        "[2002:808:808::1]:53",                      // 6to4 at all
        "[2001:0:4136:e378:8000:63bf:3fff:fdd2]:80", // Teredo
        "[2a00:1450::1]:3478",                       // this host
    ] {
        assert_eq!(w.permit(&mut c, addr(peer)), Some(403), "{peer}");
    }
    assert_eq!(w.permit(&mut c, addr("[2a00:1450::2]:53")), None, "a public IPv6 address");

    // An operator who opens 6to4 and NAT64 still reaches no denied IPv4 address through them.
    let mut w =
        world_with(|cfg| cfg.policy.allow = vec!["2002::/16".parse().unwrap(), "64:ff9b::/96".parse().unwrap()]);
    let mut c = client("[2a00:1450::99]:5000", "p1");
    c.key = ClientKey { local: addr("[2a00:1450::1]:3478"), ..c.key };
    w.allocate(&mut c);
    assert_eq!(w.permit(&mut c, addr("[2002:808:808::1]:53")), None);
    assert_eq!(w.permit(&mut c, addr("[64:ff9b::808:808]:53")), None);
    assert_eq!(w.permit(&mut c, addr("[2002:c0a8:101::1]:80")), Some(403), "192.168.1.1");
    assert_eq!(w.permit(&mut c, addr("[64:ff9b::7f00:1]:80")), Some(403), "127.0.0.1");
}
