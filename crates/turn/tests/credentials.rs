//! Whose credentials may do what (issue 15, items 6 and 7), on a virtual clock: a session's
//! relay user allocates only while the hub has granted it and loses every relay when revoked;
//! an allocation outlives the credential it was made with but a new one needs a current one; the
//! connectivity check's credential makes a few short relays that relay nothing; and relay users
//! and allocations are capped per client address.

mod common;

use common::{addr, client, client_for, world, world_with};
use huddle_turn::server::{CHECK_IP_ALLOCATIONS, CHECK_LIFETIME, CHECK_USER_ALLOCATIONS};
use huddle_turn::stun::{self, attr, method, Class, Message};
use std::time::Duration;

#[test]
fn a_session_allocates_only_while_granted_and_its_relays_close_when_revoked() {
    let mut w = world();
    let mut a = client("203.0.113.7:5000", "s.a1");
    assert_eq!(w.try_allocate(&mut a), Err(401), "never granted (an old run's, or made up)");
    w.server.grant("s.a1");
    w.server.grant("s.b2");
    let relay_a = w.allocate(&mut a);
    let mut a2 = a.again("203.0.113.7:5001");
    w.allocate(&mut a2);
    let mut b = client("203.0.113.8:5000", "s.b2");
    let relay_b = w.allocate(&mut b);
    assert_eq!(w.permit(&mut b, relay_a), None);

    w.server.revoke("s.a1", &mut w.relays);
    assert_eq!(w.server.stats().allocations, 1);
    assert_eq!(w.server.stats().revoked, 2);
    assert_eq!(w.relays.open.iter().copied().collect::<Vec<_>>(), [relay_b], "both of a's relay sockets closed");
    assert_eq!(w.refresh(&mut a, 600), Err(401), "its requests are refused");
    let mut a3 = a.again("203.0.113.7:5002");
    assert_eq!(w.try_allocate(&mut a3), Err(401), "and it allocates no more");
    // Its relay address is nobody's now: b may no longer reach it.
    assert_eq!(w.permit(&mut b, relay_a), Some(403));
    assert_eq!(w.server.stats().allocations, 1);
    // Revoking someone without allocations, or twice, is harmless.
    w.server.revoke("s.a1", &mut w.relays);
    w.server.revoke("s.nobody", &mut w.relays);
    assert_eq!(w.server.stats().allocations, 1);
}

#[test]
fn an_allocation_outlives_its_credential_but_a_new_one_needs_a_current_one() {
    let mut w = world();
    w.server.grant("s.a1");
    let mut a = client_for("203.0.113.7:5000", "s.a1", 60);
    let mut other = client_for("203.0.113.7:6000", "alice", 60);
    let mut check = client_for("203.0.113.7:7000", "c.x1", 60);
    w.allocate(&mut a);
    w.allocate(&mut other);
    w.allocate(&mut check);
    w.pass(Duration::from_secs(50));
    assert_eq!(w.refresh(&mut check, 600), Ok(CHECK_LIFETIME.as_secs() as u32), "a check's lives a minute at most");
    w.pass(Duration::from_secs(70));
    // The session's relay in use carries on with the credential it was made with.
    assert_eq!(w.refresh(&mut a, 600), Ok(600));
    assert_eq!(w.permit(&mut a, addr("93.184.216.34:1")), None);
    assert_eq!(w.bind(&mut a, 0x4000, addr("93.184.216.34:1")), None);
    // New relays need a current credential, and so does everything else's.
    let mut late = a.again("203.0.113.7:5001");
    assert_eq!(w.try_allocate(&mut late), Err(401));
    assert_eq!(w.refresh(&mut other, 600), Err(401), "another service's credential: expiry on every request");
    assert_eq!(w.server.stats().allocations, 2, "the check's relay went after its minute");
    w.pass(Duration::from_secs(500));
    assert_eq!(w.server.stats().allocations, 1, "the unrefreshed one expired; the session's lives");
}

#[test]
fn a_check_credential_makes_a_few_short_relays_that_relay_nothing() {
    let mut w = world();
    let mut c = client("203.0.113.7:5000", "c.x1");
    let answer = w.ask(&mut c, method::ALLOCATE, |b| b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]));
    let m = Message::parse(&answer).unwrap();
    assert_eq!(m.class, Class::Success, "no grant needed");
    assert_eq!(m.u32_attr(attr::LIFETIME), Some(CHECK_LIFETIME.as_secs() as u32));
    let relay = m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap();
    let peer = addr("93.184.216.34:7000");
    assert_eq!(w.permit(&mut c, peer), Some(403));
    assert_eq!(w.bind(&mut c, 0x4000, peer), Some(403));
    assert_eq!(w.send_indication(&mut c, peer, b"hi"), None);
    assert_eq!(w.peer_sends(relay, peer, b"hello"), None);
    let mut cd = Vec::new();
    stun::write_channel_data(&mut cd, 0x4000, b"media", false);
    assert_eq!(w.send(&c, &cd), None);
    let s = w.server.stats();
    assert_eq!((s.peers_denied, s.to_peer_packets, s.to_client_packets), (2, 0, 0));

    // A few per credential.
    for i in 1..CHECK_USER_ALLOCATIONS {
        w.allocate(&mut c.again(&format!("203.0.113.7:{}", 5000 + i)));
    }
    assert_eq!(w.try_allocate(&mut c.again("203.0.113.7:5999")), Err(486));
    // A few per address, whatever the credentials.
    let mut n = CHECK_USER_ALLOCATIONS;
    for k in 0.. {
        let mut more = client(&format!("203.0.113.7:{}", 6000 + k), &format!("c.more{k}"));
        match w.try_allocate(&mut more) {
            Ok(_) => n += 1,
            Err(code) => {
                assert_eq!(code, 486);
                break;
            }
        }
    }
    assert_eq!(n, CHECK_IP_ALLOCATIONS);
    w.allocate(&mut client("203.0.113.8:6000", "c.elsewhere"));
    // And they go by themselves.
    w.pass(CHECK_LIFETIME + Duration::from_secs(1));
    assert_eq!(w.server.stats().allocations, 0);
    assert!(w.relays.open.is_empty());
}

#[test]
fn relay_users_and_allocations_are_capped_per_address() {
    let mut w = world_with(|cfg| {
        cfg.ip_users = 2;
        cfg.ip_allocations = 3;
    });
    let mut u1 = client("203.0.113.7:5000", "u1");
    let mut u2 = client("203.0.113.7:5001", "u2");
    let mut u3 = client("203.0.113.7:5002", "u3");
    w.allocate(&mut u1);
    w.allocate(&mut u2);
    assert_eq!(w.try_allocate(&mut u3), Err(486), "a third user at one address");
    w.allocate(&mut u3.again("203.0.113.8:5002"));
    w.allocate(&mut u1.again("203.0.113.7:5003"));
    assert_eq!(w.try_allocate(&mut u1.again("203.0.113.7:5004")), Err(486), "a fourth allocation at one address");
    assert_eq!(w.server.stats().quota_refusals, 2);
    // Freeing makes room again: u2 leaves, u3 comes in.
    assert_eq!(w.refresh(&mut u2, 0), Ok(0));
    w.allocate(&mut u3.again("203.0.113.7:5005"));

    // 0: no limit.
    let mut w = world_with(|cfg| {
        cfg.ip_users = 0;
        cfg.ip_allocations = 0;
    });
    for i in 0..100 {
        w.allocate(&mut client(&format!("203.0.113.7:{}", 5000 + i), &format!("user{i}")));
    }
}

#[test]
fn an_unknown_session_user_is_refused_like_a_wrong_password() {
    // A session credential of an earlier run (the key survives restarts) with the same user part
    // as nothing: 401, counted, and no user or address is left behind to count against anyone.
    let mut w = world_with(|cfg| cfg.user_allocations = 1);
    let mut stale = client("203.0.113.7:5000", "s.old");
    for port in 5000..5010 {
        assert_eq!(w.try_allocate(&mut stale.again(&format!("203.0.113.7:{port}"))), Err(401));
    }
    assert!(w.server.stats().auth_failures >= 10);
    w.server.grant("s.new");
    w.allocate(&mut client("203.0.113.7:6000", "s.new"));
    assert_eq!(w.try_allocate(&mut stale), Err(401));
}
