//! ICE over TCP (RFC 6544): the core announces passive TCP candidates next to its UDP ones, and a
//! participant whose UDP is blocked connects and exchanges media over TCP only. (The driver does
//! the RFC 4571 framing; in the core a TCP frame is a datagram tagged [`Transport::Tcp`].)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::World;
use huddle_sfu::str0m::media::MediaKind;

#[test]
fn a_participant_with_only_a_tcp_candidate_exchanges_media_over_tcp() {
    let udp: SocketAddr = common::SFU_ADDR.parse().expect("literal address");
    let tcp: SocketAddr = "10.0.0.1:443".parse().expect("literal address");
    let mut w = World::with_addresses(vec![udp]).with_tcp(vec![tcp]);
    w.tcp_clients = vec![1];
    w.join("room", 1, &[MediaKind::Audio, MediaKind::Video]).expect("1 joins");
    w.join("room", 2, &[MediaKind::Audio, MediaKind::Video]).expect("2 joins");

    let flowing = |w: &World| [1, 2].iter().all(|id| w.frames_received(*id, MediaKind::Video) >= 20);
    assert!(w.run_until(Duration::from_secs(5), flowing), "media flows both ways; events: {:?}", w.events);
    let c1: SocketAddr = "10.0.1.1:5000".parse().expect("literal address");
    let c2: SocketAddr = "10.0.1.2:5000".parse().expect("literal address");
    let sent = |from: SocketAddr, to: SocketAddr| w.sfu_sent.get(&(from, to)).copied().unwrap_or(0);
    assert!(sent(tcp, c1) > 40, "1 is served over TCP");
    assert_eq!(sent(udp, c1), 0, "never over UDP to the TCP-only participant");
    assert!(sent(udp, c2) > 40, "2 keeps UDP");
    assert!(w.sfu_sent_tcp >= sent(tcp, c1));
}

#[test]
fn tcp_candidates_are_passive_and_rank_below_udp() {
    let udp: SocketAddr = common::SFU_ADDR.parse().expect("literal address");
    let tcp: SocketAddr = "10.0.0.1:443".parse().expect("literal address");
    let mut w = World::with_addresses(vec![udp]).with_tcp(vec![tcp, tcp]);
    w.join("room", 1, &[MediaKind::Audio]).expect("1 joins");
    let answer = w.client(1).sfu_answer.clone();
    let candidates: Vec<&str> = answer.lines().filter(|l| l.starts_with("a=candidate:")).collect();
    let prio = |l: &str| l.split(' ').nth(3).and_then(|p| p.parse::<u32>().ok()).expect("a priority");
    let udp_line = candidates.iter().find(|l| l.contains(" udp ") || l.contains(" UDP ")).expect("a UDP candidate");
    let tcp_lines: Vec<_> = candidates.iter().filter(|l| l.contains(" tcp ") || l.contains(" TCP ")).collect();
    assert_eq!(tcp_lines.len(), 1, "duplicates are ignored: {candidates:?}");
    let tcp_line = tcp_lines[0];
    assert!(tcp_line.contains("10.0.0.1 443 typ host tcptype passive"), "{tcp_line}");
    assert!(prio(tcp_line) < prio(udp_line), "UDP is preferred: {candidates:?}");

    // Without TCP addresses, no TCP candidate (the default).
    let mut plain = World::with_addresses(vec![udp]);
    plain.join("room", 1, &[MediaKind::Audio]).expect("1 joins");
    let answer = plain.client(1).sfu_answer.clone();
    assert!(!answer.to_lowercase().contains(" tcp "), "{answer}");
}
