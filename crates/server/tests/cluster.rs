//! Several nodes on one Redis (issue 16), against a real redis-server: one owner per room (the
//! lease and its fencing epoch), and which nodes are alive.
mod common;

use common::redis::TestRedis;
use huddle_server::cluster::lease::{state_key, Leases};
use huddle_server::cluster::nodes::{NodeInfo, Nodes};
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_millis(400);

/// Waits (bounded) until Redis itself has let the lease of `room` run out.
async fn until_expired(leases: &Leases, room: &str) {
    let deadline = Instant::now() + TTL * 10;
    while leases.owner(room).await.expect("GET").is_some() {
        assert!(Instant::now() < deadline, "the lease of {room} never ran out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn of_fifty_simultaneous_takes_by_five_nodes_exactly_one_wins() {
    let redis = TestRedis::start();
    let mut nodes = Vec::new();
    for n in 0..5 {
        nodes.push(Leases::new(redis.connect().await, format!("node{n}"), TTL));
    }
    let mut tasks = Vec::new();
    for i in 0..50u32 {
        let leases = nodes[i as usize % 5].clone();
        tasks.push(tokio::spawn(async move { leases.take("standup", i / 5).await.expect("take") }));
    }
    let mut won = Vec::new();
    let mut lost = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(held) => won.push(held),
            Err(owner) => lost.push(owner),
        }
    }
    assert_eq!(won.len(), 1, "exactly one owner");
    let winner = &won[0].owner;
    assert_eq!(winner.epoch, 1);
    assert!(lost.iter().all(|o| o == winner), "every loser is told the one owner");
    assert_eq!(nodes[0].owner("standup").await.expect("GET").as_ref(), Some(winner));
}

#[tokio::test]
async fn an_owner_paused_past_its_lease_changes_nothing_when_it_wakes() {
    let redis = TestRedis::start();
    let a = Leases::new(redis.connect().await, "a", TTL);
    let b = Leases::new(redis.connect().await, "b", TTL);
    let mut held_a = a.take("retro", 0).await.expect("take").expect("free");
    assert!(a.renew("retro", &mut held_a).await.expect("renew"), "a live owner renews");
    assert!(a.fenced_set("retro", &held_a, &state_key("retro", "settings"), b"a1").await.expect("write"));
    assert!(b.take("retro", 0).await.expect("take").is_err(), "an owned room cannot be taken");

    // A is paused: it does not renew, and Redis lets its lease run out.
    until_expired(&b, "retro").await;
    let b_took_at = Instant::now();
    let held_b = b.take("retro", 0).await.expect("take").expect("free again");
    assert_eq!(held_b.owner.epoch, held_a.owner.epoch + 1, "a new owner, a higher epoch");
    // A would have stopped acting as owner by itself before B could take the room...
    assert!(held_a.valid_until <= b_took_at, "A trusted its lease longer than Redis kept it");

    // ...and when it wakes it can neither keep the room nor write its state.
    assert!(!a.renew("retro", &mut held_a).await.expect("renew"));
    assert!(!a.fenced_set("retro", &held_a, &state_key("retro", "settings"), b"a2").await.expect("write"));
    assert!(!a.release("retro", &held_a).await.expect("release"), "nor give away what is not its own");
    assert!(b.fenced_set("retro", &held_b, &state_key("retro", "settings"), b"b1").await.expect("write"));
    let mut con = redis.connect().await;
    let settings: String =
        redis::cmd("GET").arg(state_key("retro", "settings")).query_async(&mut con).await.expect("GET");
    assert_eq!(settings, "b1");
    assert_eq!(b.owner("retro").await.expect("GET"), Some(held_b.owner));
}

#[tokio::test]
async fn a_released_room_goes_to_the_next_with_a_higher_epoch_and_an_ended_one_leaves_no_key() {
    let redis = TestRedis::start();
    let a = Leases::new(redis.connect().await, "a", TTL);
    let b = Leases::new(redis.connect().await, "b", TTL);
    let held_a = a.take("class", 2).await.expect("take").expect("free");
    assert!(a.release("class", &held_a).await.expect("release"));
    let held_b = b.take("class", 1).await.expect("take").expect("released");
    assert_eq!((held_b.owner.node.as_str(), held_b.owner.worker, held_b.owner.epoch), ("b", 1, 2));

    let chat = state_key("class", "chat");
    assert!(b.fenced_set("class", &held_b, &chat, b"[]").await.expect("write"));
    assert!(!a.end("class", &held_a, std::slice::from_ref(&chat)).await.expect("end"), "only the owner ends it");
    assert!(b.end("class", &held_b, &[chat]).await.expect("end"));
    let mut con = redis.connect().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("huddle:*").query_async(&mut con).await.expect("KEYS");
    assert!(keys.is_empty(), "Redis keeps nothing of an ended room: {keys:?}");
}

fn node(id: &str, people: u32) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        address: format!("127.0.0.1:{people}"),
        version: "test".into(),
        rooms: 1,
        people,
        cpu: 0.1,
        draining: false,
        tls: false,
    }
}

#[tokio::test]
async fn nodes_are_live_while_they_beat_gone_when_they_stop_or_leave() {
    let redis = TestRedis::start();
    let a = Nodes::new(redis.connect().await, TTL);
    let b = Nodes::new(redis.connect().await, TTL);
    let c = Nodes::new(redis.connect().await, TTL);
    a.beat(&node("a", 1)).await.expect("beat");
    b.beat(&node("b", 2)).await.expect("beat");
    c.beat(&node("c", 3)).await.expect("beat");
    let ids = |v: Vec<NodeInfo>| v.into_iter().map(|n| n.id).collect::<Vec<_>>();
    assert_eq!(ids(a.live().await.expect("live")), ["a", "b", "c"]);
    assert_eq!(a.live().await.expect("live")[1], node("b", 2), "a node's description reads back");

    // c leaves cleanly: gone at once. b stops beating (killed): gone when its beat runs out,
    // while a, which goes on beating, stays.
    c.leave("c").await.expect("leave");
    assert_eq!(ids(a.live().await.expect("live")), ["a", "b"]);
    let deadline = Instant::now() + TTL * 10;
    loop {
        a.beat(&node("a", 1)).await.expect("beat");
        let live = ids(a.live().await.expect("live"));
        if live == ["a"] {
            break;
        }
        assert_eq!(live, ["a", "b"]);
        assert!(Instant::now() < deadline, "b never went");
        tokio::time::sleep(TTL / 4).await;
    }
    a.leave("a").await.expect("leave");
    let mut con = redis.connect().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("huddle:*").query_async(&mut con).await.expect("KEYS");
    assert!(keys.is_empty(), "nothing is left of nodes that left: {keys:?}");
}
