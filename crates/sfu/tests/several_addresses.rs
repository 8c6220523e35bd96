//! A server bound on several interfaces (same port) announces one host candidate per address;
//! each participant is answered from the address it talks to.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::World;
use huddle_sfu::str0m::media::MediaKind;

#[test]
fn each_participant_is_answered_from_the_address_it_reaches() {
    let lan: SocketAddr = "10.0.0.1:3478".parse().expect("literal address");
    let other: SocketAddr = "192.168.7.1:3478".parse().expect("literal address");
    let mut w = World::with_addresses(vec![lan, other]);
    // Client 1 reaches the server only on `lan`, client 2 only on `other`.
    let (c1, c2): (SocketAddr, SocketAddr) =
        ("10.0.1.1:5000".parse().expect("literal"), "10.0.1.2:5000".parse().expect("literal"));
    w.blocked = vec![(c1, other), (c2, lan)];
    w.join("room", 1, &[MediaKind::Audio, MediaKind::Video]).expect("1 joins");
    w.join("room", 2, &[MediaKind::Audio, MediaKind::Video]).expect("2 joins");

    let flowing = |w: &World| [1, 2].iter().all(|id| w.frames_received(*id, MediaKind::Video) >= 20);
    assert!(w.run_until(Duration::from_secs(5), flowing), "media flows both ways; events: {:?}", w.events);

    let sent = |from: SocketAddr, to: SocketAddr| w.sfu_sent.get(&(from, to)).copied().unwrap_or(0);
    assert!(sent(lan, c1) > 40, "1 is served from the address it talks to");
    assert!(sent(other, c2) > 40, "2 is served from the address it talks to");
    // ICE-lite sends nothing unasked, so nothing ever goes out from an address a client cannot use.
    assert_eq!(sent(other, c1), 0, "nothing to 1 from the address it cannot reach");
    assert_eq!(sent(lan, c2), 0, "nothing to 2 from the address it cannot reach");
}

#[test]
fn both_addresses_are_announced_and_either_one_works() {
    let a: SocketAddr = "10.0.0.1:3478".parse().expect("literal address");
    let b: SocketAddr = "[fd00::1]:3478".parse().expect("literal address");
    let mut w = World::with_addresses(vec![a, b, a]);
    w.join("room", 1, &[MediaKind::Audio]).expect("1 joins");
    w.join("room", 2, &[MediaKind::Audio]).expect("2 joins");
    let flowing = |w: &World| [1, 2].iter().all(|id| w.frames_received(*id, MediaKind::Audio) >= 20);
    assert!(w.run_until(Duration::from_secs(5), flowing), "media flows; events: {:?}", w.events);
}
