//! Several real huddle nodes on one real redis-server (issue 16): a room joined through
//! different nodes is one meeting, a session moves to its room's node and resumes through any
//! node, and simultaneous first joins through several nodes open one room, not several.
mod common;

use common::page::Page;
use common::redis::TestRedis;
use common::{join, Client, TestServer};
use futures_util::StreamExt;
use huddle_protocol::{ClientMsg, LeaveReason, ServerMsg, SignalPayload};
use huddle_server::config::TopologyMode;
use huddle_server::Config;
use std::time::Duration;

fn node_config(redis: &TestRedis) -> Config {
    Config {
        redis: Some(redis.url.clone()),
        topology: TopologyMode::P2p,
        turn: false,
        ip_joins_per_minute: 0,
        ..Config::default()
    }
}

async fn nodes(redis: &TestRedis, n: usize) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(TestServer::start(node_config(redis)).await);
    }
    nodes
}

/// The next message that is not a `rooms` list or a `peer_updated`.
async fn next(c: &mut Client) -> ServerMsg {
    loop {
        match c.recv().await {
            ServerMsg::Rooms { .. } => continue,
            m => return m,
        }
    }
}

/// Every key Redis holds that matches `pattern`.
async fn keys(redis: &TestRedis, pattern: &str) -> Vec<String> {
    let mut con = redis.connect().await;
    redis::cmd("KEYS").arg(pattern).query_async(&mut con).await.expect("KEYS")
}

#[tokio::test]
async fn a_room_joined_through_two_nodes_is_one_meeting() {
    let redis = TestRedis::start();
    let nodes = nodes(&redis, 2).await;
    let mut alice = Client::connect(&nodes[0]).await;
    let mut bob = Client::connect(&nodes[1]).await;
    assert_ne!(alice.id, bob.id, "peer ids are unique across nodes");
    alice.join("standup", "Alice").await;
    // Bob's page is on the other node: his session moves to the room's node.
    match bob.join("standup", "Bob").await {
        ServerMsg::Joined { peers, .. } => {
            assert_eq!(peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["Alice"]);
        }
        other => panic!("{other:?}"),
    }
    match next(&mut alice).await {
        ServerMsg::PeerJoined { peer } => assert_eq!((peer.id, peer.name.as_str()), (bob.id.clone(), "Bob")),
        other => panic!("{other:?}"),
    }

    // Chat both ways, and a signal to a peer whose page is on the other node.
    bob.send(&ClientMsg::Chat { text: "hello from node two".into() }).await;
    for c in [&mut alice, &mut bob] {
        match next(c).await {
            ServerMsg::Chat { message } => assert_eq!(message.text, "hello from node two"),
            other => panic!("{other:?}"),
        }
    }
    let payload = SignalPayload::Candidate { candidate: None };
    alice.send(&ClientMsg::Signal { to: bob.id.clone(), payload: payload.clone() }).await;
    match next(&mut bob).await {
        ServerMsg::Signal { from, payload: got, .. } => assert_eq!((from, got), (alice.id.clone(), payload)),
        other => panic!("{other:?}"),
    }

    // Bob leaves: Alice is told, and when she leaves too Redis keeps nothing of the room.
    bob.send(&ClientMsg::Leave).await;
    assert!(matches!(next(&mut bob).await, ServerMsg::Left { .. }));
    match next(&mut alice).await {
        ServerMsg::PeerLeft { id, reason } => assert_eq!((id, reason), (bob.id.clone(), LeaveReason::Left)),
        other => panic!("{other:?}"),
    }
    assert!(!keys(&redis, "huddle:room:*").await.is_empty(), "the room is owned while it lasts");
    alice.send(&ClientMsg::Leave).await;
    assert!(matches!(next(&mut alice).await, ServerMsg::Left { .. }));
    // The owner releases the room as it closes; wait (bounded) for that round trip.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !keys(&redis, "huddle:room:*").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "Redis still holds {:?}", keys(&redis, "huddle:room:*").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Bob's session, now in no room, follows him to the next room, wherever it lives.
    bob.join("retro", "Bob").await;
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_session_whose_room_is_on_another_node_resumes_through_any_node() {
    let redis = TestRedis::start();
    let nodes = nodes(&redis, 3).await;
    let mut alice = Client::connect(&nodes[0]).await;
    alice.join("standup", "Alice").await;
    let mut bob = Page::open(nodes[1].addr).await;
    bob.client.send(&join("standup", "Bob")).await;
    assert!(matches!(bob.recv().await, ServerMsg::Joined { .. }));
    assert!(matches!(next(&mut alice).await, ServerMsg::PeerJoined { .. }));

    // Bob's network drops (no close); meanwhile Alice says something.
    drop(bob.client.ws);
    alice.send(&ClientMsg::Chat { text: "while you were away".into() }).await;
    assert!(matches!(next(&mut alice).await, ServerMsg::Chat { .. }));

    // His page comes back through the third node, and carries on as the same person.
    let url = format!("{}?session={}&resume={}&seen={}", nodes[2].url(), bob.client.id, bob.secret, bob.seen);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("handshake");
    let mut again = Client { ws, id: bob.client.id.clone() };
    match again.recv().await {
        ServerMsg::Welcome { id, resumed, .. } => assert_eq!((id, resumed), (bob.client.id.clone(), true)),
        other => panic!("{other:?}"),
    }
    match next(&mut again).await {
        ServerMsg::Chat { message } => assert_eq!(message.text, "while you were away", "what it missed is replayed"),
        other => panic!("{other:?}"),
    }
    again.send(&ClientMsg::Chat { text: "back".into() }).await;
    for c in [&mut alice, &mut again] {
        match next(c).await {
            ServerMsg::Chat { message } => assert_eq!(message.text, "back"),
            other => panic!("Alice saw no leave or join, only the chat; got {other:?}"),
        }
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn fifty_simultaneous_first_joins_through_three_nodes_open_one_room() {
    let redis = TestRedis::start();
    let nodes = nodes(&redis, 3).await;
    let mut clients = Vec::new();
    for i in 0..50 {
        clients.push(Client::connect(&nodes[i % 3]).await);
    }
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            c.send(&join("all-hands", &format!("P{i}"))).await;
            loop {
                match c.recv().await {
                    ServerMsg::Joined { peers, .. } => return (c, peers.len()),
                    ServerMsg::Rooms { .. } | ServerMsg::PeerJoined { .. } => continue,
                    other => panic!("P{i} got {other:?}"),
                }
            }
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("joined"));
    }
    assert_eq!(keys(&redis, "huddle:room:{all-hands}:owner").await.len(), 1);
    // One room of fifty, whatever node each page is on: each one sees the others already there
    // when it enters, and then every later one arrive.
    let (first, before) = &mut clients[0];
    let mut seen = *before;
    while seen < 49 {
        match tokio::time::timeout(Duration::from_secs(5), first.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                if let Ok(ServerMsg::PeerJoined { .. }) = serde_json::from_str(&t) {
                    seen += 1;
                }
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("P0 saw {seen} of 49 others, then {other:?}"),
        }
    }
    for n in nodes {
        n.shutdown().await;
    }
}

/// Waits (bounded by the client's own timeout per message) for a room list that `ok` accepts.
async fn rooms_until(c: &mut Client, ok: impl Fn(&[huddle_protocol::RoomSummary]) -> bool) {
    loop {
        if let ServerMsg::Rooms { rooms } = c.recv().await {
            if ok(&rooms) {
                return;
            }
        }
    }
}

#[tokio::test]
async fn every_node_lists_the_public_rooms_of_every_node_with_live_counts() {
    let redis = TestRedis::start();
    let nodes = nodes(&redis, 2).await;
    let mut watcher = Client::connect(&nodes[1]).await;
    watcher.send(&ClientMsg::WatchRooms).await;
    rooms_until(&mut watcher, |r| r.is_empty()).await;

    let mut alice = Client::connect(&nodes[0]).await;
    alice.join("town-hall", "Alice").await;
    let started = std::time::Instant::now();
    rooms_until(&mut watcher, |r| r.iter().any(|s| s.name == "town-hall" && s.participants == 1)).await;
    let mut bob = Client::connect(&nodes[0]).await;
    bob.join("town-hall", "Bob").await;
    rooms_until(&mut watcher, |r| r.iter().any(|s| s.name == "town-hall" && s.participants == 2)).await;
    println!("a room on another node listed after {:?}", started.elapsed());

    // A room on the watcher's own node is listed beside it.
    let mut carol = Client::connect(&nodes[1]).await;
    carol.join("quiet-corner", "Carol").await;
    rooms_until(&mut watcher, |r| r.len() == 2).await;

    for c in [&mut alice, &mut bob] {
        c.send(&ClientMsg::Leave).await;
    }
    rooms_until(&mut watcher, |r| r.iter().map(|s| s.name.as_str()).collect::<Vec<_>>() == ["quiet-corner"]).await;
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_redis_restart_mid_meeting_owns_no_room_twice_and_everything_recovers() {
    let mut redis = TestRedis::start();
    let nodes = nodes(&redis, 2).await;
    let mut alice = Client::connect(&nodes[0]).await;
    alice.join("ops", "Alice").await;
    let mut bob = Client::connect(&nodes[1]).await;
    bob.join("ops", "Bob").await;
    assert!(matches!(next(&mut alice).await, ServerMsg::PeerJoined { .. }));

    // Redis dies and comes back empty (no persistence): leases, saved state, everything gone.
    redis.restart();
    let mut con = redis.connect().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        // Both nodes subscribed again, and the room's owner took its lease back.
        let (_, subscribers): (String, u32) =
            redis::cmd("PUBSUB").arg("NUMSUB").arg("huddle:rooms").query_async(&mut con).await.expect("PUBSUB");
        let owner: Option<String> =
            redis::cmd("GET").arg("huddle:room:{ops}:owner").query_async(&mut con).await.expect("GET");
        if subscribers == 2 && owner.is_some() {
            let owner = owner.unwrap_or_default();
            assert!(
                owner.starts_with(&huddle_server::cluster::node_of_peer(&alice.id).expect("a cluster id")),
                "the same node owns it again, not another: {owner}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the cluster did not recover from the Redis restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The meeting went on: Bob (relayed) and Alice still talk, and a newcomer through the other
    // node lands in the same meeting, not a second one.
    bob.send(&ClientMsg::Chat { text: "still here".into() }).await;
    for c in [&mut alice, &mut bob] {
        match next(c).await {
            ServerMsg::Chat { message } => assert_eq!(message.text, "still here"),
            other => panic!("{other:?}"),
        }
    }
    let mut carol = Client::connect(&nodes[1]).await;
    match carol.join("ops", "Carol").await {
        ServerMsg::Joined { peers, .. } => assert_eq!(peers.len(), 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(keys(&redis, "huddle:room:{ops}:owner").await.len(), 1);
    // Its state is saved again (a takeover would find it).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while keys(&redis, "huddle:room:{ops}:state").await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the room was not saved again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_room_taken_for_a_join_that_was_refused_is_given_up() {
    let redis = TestRedis::start();
    let nodes = nodes(&redis, 1).await;
    let mut alice = Client::connect(&nodes[0]).await;
    alice.join("first", "Alice").await;
    // Already in a room: the node takes the new room's lease as it routes the join, and the hub
    // refuses the join. Nobody is in that room, so its lease must not stay.
    alice.send(&join("second", "Alice")).await;
    match next(&mut alice).await {
        ServerMsg::Error { code, .. } => assert_eq!(code, huddle_protocol::ErrorCode::AlreadyInRoom),
        other => panic!("{other:?}"),
    }
    let deadline = std::time::Instant::now() + huddle_server::cluster::UNOPENED_GRACE + Duration::from_secs(10);
    while !keys(&redis, "huddle:room:{second}:*").await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the lease of a room nobody entered stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(keys(&redis, "huddle:room:{first}:owner").await.len(), 1, "the room in use keeps its lease");
    for n in nodes {
        n.shutdown().await;
    }
}

/// Invite links are signed with the cluster's key (made in Redis by the first node), so a link
/// made by the room's owner still works after the room moved to another node: here the owner
/// stops and the holder comes in through the other node, which takes the room over.
#[tokio::test]
async fn an_invite_link_made_on_one_node_works_after_the_room_moved_to_another() {
    let redis = TestRedis::start();
    let mut nodes = nodes(&redis, 2).await;
    let mut alice = Client::connect(&nodes[0]).await;
    alice.join("private", "Alice").await;
    let password = Some("blue whale".to_string());
    let settings = ClientMsg::Settings { locked: None, waiting_room: None, allow_unmute: None, password, listed: None };
    alice.send(&settings).await;
    while !matches!(next(&mut alice).await, ServerMsg::RoomSettings { .. }) {}
    alice.send(&ClientMsg::Invite { ttl_secs: None }).await;
    let token = loop {
        if let ServerMsg::InviteToken { token, .. } = next(&mut alice).await {
            break token;
        }
    };
    // Node 0 stops and hands the room over; node 1 takes it when Carol comes.
    nodes.remove(0).shutdown().await;
    let with = |token: Option<String>| match join("private", "Carol") {
        ClientMsg::Join { protocol, room, name, audio, video, .. } => {
            ClientMsg::Join { recording_ok: false, protocol, room, name, audio, video, password: None, token }
        }
        other => other,
    };
    let mut carol = Client::connect(&nodes[0]).await;
    carol.send(&with(None)).await;
    match next(&mut carol).await {
        ServerMsg::Error { code, .. } => assert_eq!(code, huddle_protocol::ErrorCode::PasswordRequired),
        other => panic!("without the link: {other:?}"),
    }
    carol.send(&with(Some(token))).await;
    match next(&mut carol).await {
        ServerMsg::Joined { peers, .. } => {
            assert_eq!(peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["Alice"])
        }
        other => panic!("with the link: {other:?}"),
    }
    assert_eq!(keys(&redis, "huddle:key:*").await.len(), 3, "the invite, TURN and node keys");
}

/// A new room goes to a live, less loaded node (the better of two drawn at random), not to the
/// node the first page landed on: with six people on node 0 and nobody on the others, rooms
/// opened through node 0 go elsewhere — all but those where both draws fell on node 0 itself
/// (one in nine; at most 10 of 20 here fails with a probability below one in ten million).
#[tokio::test]
async fn a_new_room_goes_to_a_less_loaded_node() {
    let redis = TestRedis::start();
    let nodes = nodes(&redis, 3).await;
    let mut crowd = Vec::new();
    for i in 0..6 {
        let mut c = Client::connect(&nodes[0]).await;
        c.join("busy", &format!("P{i}")).await;
        crowd.push(c);
    }
    let busy = huddle_server::cluster::node_of_peer(&crowd[0].id).expect("a cluster id");
    let mut con = redis.connect().await;
    // Until node 0's beat says how loaded it is, and every node's beat lists three nodes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info: Option<String> =
            redis::cmd("GET").arg(format!("huddle:node:{busy}")).query_async(&mut con).await.expect("GET");
        let people =
            info.and_then(|i| serde_json::from_str::<serde_json::Value>(&i).ok()).and_then(|v| v["people"].as_u64());
        if people == Some(6) && keys(&redis, "huddle:node:*").await.len() == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "node 0 never said it holds six people");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Beats every 2 s: let every node's view of the others catch up.
    tokio::time::sleep(huddle_server::cluster::BEAT_EVERY + Duration::from_millis(500)).await;
    let mut here = 0;
    let mut newcomers = Vec::new();
    for i in 0..20 {
        let room = format!("new-{i}");
        let mut c = Client::connect(&nodes[0]).await;
        assert!(matches!(c.join(&room, "N").await, ServerMsg::Joined { .. }));
        let owner: String =
            redis::cmd("GET").arg(format!("huddle:room:{{{room}}}:owner")).query_async(&mut con).await.expect("GET");
        if owner.starts_with(&busy) {
            here += 1;
        }
        newcomers.push(c);
    }
    println!("{here} of 20 new rooms stayed on the busy node");
    assert!(here <= 10, "{here} of 20 new rooms stayed on the busy node");
}

/// A file shared in an SFU room is kept by the room's owner; its upload and download through
/// another node are passed on to the owner (the file's id names it), and the answers come back.
#[tokio::test]
async fn a_file_shared_in_a_room_of_another_node_goes_up_and_down_through_any_node() {
    use common::http::{http, offer};
    let redis = TestRedis::start();
    let config = || Config { topology: TopologyMode::Sfu, ..node_config(&redis) };
    let nodes = [TestServer::start(config()).await, TestServer::start(config()).await];
    let mut alice = Client::connect(&nodes[0]).await;
    alice.join("files", "Alice").await;
    let mut bob = Client::connect(&nodes[1]).await;
    bob.join("files", "Bob").await;
    assert!(matches!(next(&mut alice).await, ServerMsg::PeerJoined { .. }));
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    bob.send(&offer("notes.txt", &bytes)).await;
    let url = match next(&mut bob).await {
        ServerMsg::FileUpload { url, .. } => url,
        other => panic!("{other:?}"),
    };
    let owner = huddle_server::cluster::node_of_peer(&alice.id).expect("a cluster id");
    assert!(url.starts_with(&format!("/files/{owner}-")), "the file's id names its node: {url}");
    // Bob's page uploads through its own node, which is not the room's.
    let res = http(nodes[1].addr, "PUT", &url, &bytes).await;
    assert_eq!(res.status, 204, "{}", String::from_utf8_lossy(&res.body));
    for c in [&mut alice, &mut bob] {
        match next(c).await {
            ServerMsg::File { file } => assert_eq!((file.name.as_str(), file.size), ("notes.txt", bytes.len() as u64)),
            other => panic!("{other:?}"),
        }
    }
    let download = url.split('?').next().expect("a path").to_string();
    for node in &nodes {
        let res = http(node.addr, "GET", &download, b"").await;
        assert_eq!(res.status, 200);
        assert_eq!(res.body, bytes, "the same bytes through {}", node.addr);
        assert_eq!(res.header("content-type"), Some("application/octet-stream"));
    }
    // A file of a node that does not exist is no file; an upload is taken once, whichever node
    // passes it.
    assert_eq!(http(nodes[1].addr, "GET", "/files/0badc0de-00112233445566778899aabbccddeeff", b"").await.status, 404);
    assert_eq!(http(nodes[0].addr, "PUT", &url, &bytes).await.status, 409, "uploaded once, whichever node");
}

#[tokio::test]
async fn breakout_rooms_of_a_meeting_whose_people_are_on_two_nodes() {
    let redis = TestRedis::start();
    let nodes = nodes(&redis, 2).await;
    let mut host = Client::connect(&nodes[0]).await;
    host.join("workshop", "Host").await;
    let mut a = Client::connect(&nodes[1]).await;
    a.join("workshop", "A").await;
    let mut b = Client::connect(&nodes[0]).await;
    b.join("workshop", "B").await;
    let plan = huddle_protocol::BreakoutPlan { name: "Pair".into(), members: vec![a.id.clone(), b.id.clone()] };
    let open = ClientMsg::BreakoutOpen {
        rooms: vec![plan],
        auto_move: true,
        allow_return: true,
        choose: false,
        minutes: 0,
        close_seconds: 0,
    };
    host.send(&open).await;
    // A's page is on the other node: it is moved all the same, and the pair talks across nodes.
    for c in [&mut a, &mut b] {
        loop {
            match next(c).await {
                ServerMsg::Joined { breakout: Some(room), .. } => {
                    assert_eq!((room.index, room.name.as_str()), (1, "Pair"));
                    break;
                }
                _ => continue,
            }
        }
    }
    a.send(&ClientMsg::Chat { text: "across nodes".into() }).await;
    loop {
        match next(&mut b).await {
            ServerMsg::Chat { message } if message.text == "across nodes" => break,
            _ => continue,
        }
    }
    host.send(&ClientMsg::BreakoutClose { now: true }).await;
    for c in [&mut a, &mut b] {
        loop {
            match next(c).await {
                ServerMsg::Joined { breakout: None, .. } => break,
                _ => continue,
            }
        }
    }
}
