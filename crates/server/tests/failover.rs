//! A node killed or stopped in the middle of a meeting (issue 16): three real `huddle`
//! processes on one real redis-server. The room's owner gets SIGKILL, or SIGSTOP past its
//! lease, or every node in turn gets SIGTERM and is replaced (a rolling restart); everyone
//! resumes through the other nodes as the same people, with the host, a raised hand and the
//! chat kept, and nobody is told that anyone left or joined.
mod common;

use common::page::Page;
use common::redis::TestRedis;
use common::{join, Client};
use huddle_protocol::{ClientMsg, PeerId, Role, ServerMsg};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The bar for everyone to be back after a node dies.
const RECOVERY: Duration = Duration::from_secs(20);

struct Node {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn node(redis: &TestRedis, n: usize) -> Node {
    let dir = std::env::temp_dir().join(format!("huddle-failover-{}-{n}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_huddle"))
        .args(["--listen", "127.0.0.1:0", "--redis", &redis.url, "--topology", "p2p", "--turn", "false"])
        .args(["--ip-joins-per-minute", "0", "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(if std::env::var_os("HUDDLE_TEST_LOGS").is_some() { Stdio::inherit() } else { Stdio::null() })
        .kill_on_drop(true)
        .spawn()
        .expect("start huddle");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = stdout.next_line().await.expect("read stdout") {
            if let Some(url) = line.strip_prefix("huddle listening on http://") {
                return url.trim_end_matches('/').parse().expect("an address");
            }
        }
        panic!("huddle exited before listening");
    })
    .await
    .expect("huddle starts in time");
    // Its stdout must not fill up and block it.
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    Node { child, addr, _dir: TempDir(dir) }
}

#[tokio::test]
async fn killing_the_owner_loses_no_one_and_nothing() {
    let redis = TestRedis::start();
    let mut nodes = Vec::new();
    for n in 0..3 {
        nodes.push(node(&redis, n).await);
    }
    // Alice's page is on node 0, which takes the room; Bob's on node 1 (relayed to node 0).
    let mut alice = Page::open(nodes[0].addr).await;
    alice.client.send(&join("board", "Alice")).await;
    assert!(matches!(alice.recv().await, ServerMsg::Joined { .. }));
    let mut bob = Page::open(nodes[1].addr).await;
    bob.client.send(&join("board", "Bob")).await;
    assert!(matches!(bob.recv().await, ServerMsg::Joined { .. }));
    assert!(matches!(alice.recv().await, ServerMsg::PeerJoined { .. }));
    bob.client.send(&ClientMsg::Hand { raised: true }).await;
    for p in [&mut alice, &mut bob] {
        assert!(matches!(p.recv().await, ServerMsg::PeerUpdated { .. }));
    }
    alice.client.send(&ClientMsg::Chat { text: "before the crash".into() }).await;
    for p in [&mut alice, &mut bob] {
        assert!(matches!(p.recv().await, ServerMsg::Chat { .. }));
    }
    // What the owner saved (it saves every 250 ms what changed) is what the next owner gets.
    let mut con = redis.connect().await;
    wait_saved(&mut con, "board", "before the crash").await;

    // SIGKILL: nothing said, nothing saved on the way out.
    nodes[0].child.start_kill().expect("kill node 0");
    nodes[0].child.wait().await.expect("node 0 gone");
    let killed = Instant::now();
    let deadline = killed + RECOVERY;
    // Alice's connection died with the node; Bob's node closes his when it sees the owner gone.
    alice.until_closed(Duration::from_secs(5)).await;
    alice.resume(nodes[2].addr, deadline).await;
    bob.until_closed(RECOVERY).await;
    bob.resume(nodes[1].addr, deadline).await;
    println!("everyone resumed {:?} after the owner was killed", killed.elapsed());

    // The same meeting: the same people, the host still host, the hand still up, the chat kept.
    let mut carol = Client::connect_to(nodes[2].addr).await;
    match carol.join("board", "Carol").await {
        ServerMsg::Joined { peers, chat, .. } => {
            let alice_peer = peers.iter().find(|p| p.id == alice.client.id).expect("Alice is still there");
            let bob_peer = peers.iter().find(|p| p.id == bob.client.id).expect("Bob is still there");
            assert_eq!((alice_peer.name.as_str(), alice_peer.role), ("Alice", Role::Host));
            assert_eq!((bob_peer.name.as_str(), bob_peer.hand), ("Bob", true));
            assert_eq!(peers.len(), 2);
            assert!(chat.iter().any(|m| m.text == "before the crash"), "{chat:?}");
        }
        other => panic!("{other:?}"),
    }
    // Nobody was told anyone left or came back: the next thing each sees is Carol arriving.
    for p in [&mut alice, &mut bob] {
        match p.recv().await {
            ServerMsg::PeerJoined { peer } => assert_eq!(peer.name, "Carol"),
            other => panic!("{} saw {other:?} first", p.client.id),
        }
    }
    bob.client.send(&ClientMsg::Chat { text: "after".into() }).await;
    for p in [&mut alice, &mut bob] {
        match p.recv().await {
            ServerMsg::Chat { message } => assert_eq!(message.text, "after"),
            other => panic!("{other:?}"),
        }
    }
}

/// Waits (at most 5 s) until the state saved of `room` in Redis contains `text`.
async fn wait_saved(con: &mut redis::aio::ConnectionManager, room: &str, text: &str) {
    let key = format!("huddle:room:{{{room}}}:state");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state: Option<String> = redis::cmd("GET").arg(&key).query_async(con).await.expect("GET");
        if state.is_some_and(|s| s.contains(text)) {
            return;
        }
        assert!(Instant::now() < deadline, "{room}'s saved state never had {text:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(node: &Node, sig: &str) {
    let pid = node.child.id().expect("running").to_string();
    let status = std::process::Command::new("kill").args([sig, &pid]).status().expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// The node that owns `room` now (its id), if any.
async fn owner_of(con: &mut redis::aio::ConnectionManager, room: &str) -> Option<String> {
    let key = format!("huddle:room:{{{room}}}:owner");
    let v: Option<String> = redis::cmd("GET").arg(key).query_async(con).await.expect("GET");
    v.and_then(|v| v.split('/').next().map(str::to_string))
}

/// The id node `node` gives itself (the one in the peer ids it hands out).
async fn node_id(node: &Node) -> String {
    let probe = Page::open(node.addr).await;
    node_of(&probe.client.id)
}

/// A rolling restart: each node in turn gets SIGTERM and is replaced by a new one. The node
/// that owns the room hands it over as it stops (saved, lease given up) instead of letting its
/// lease run out, so the pages it says goodbye to are back well within a lease; a page whose
/// connection was on a stopping node that does not own the room comes back through another
/// node without being told anything. Through all of it the meeting is the same one.
#[tokio::test]
async fn a_rolling_restart_of_every_node_is_invisible_to_the_meeting() {
    let redis = TestRedis::start();
    let mut con = redis.connect().await;
    let mut nodes = Vec::new();
    let mut ids = Vec::new();
    for n in 0..3 {
        let node = node(&redis, n).await;
        ids.push(node_id(&node).await);
        nodes.push(node);
    }
    // Alice on node 0 (which takes the room), Bob on node 1 (relayed to node 0).
    let mut pages = [(Page::open(nodes[0].addr).await, 0usize), (Page::open(nodes[1].addr).await, 1usize)];
    pages[0].0.client.send(&join("standup", "Alice")).await;
    assert!(matches!(pages[0].0.recv().await, ServerMsg::Joined { .. }));
    pages[1].0.client.send(&join("standup", "Bob")).await;
    assert!(matches!(pages[1].0.recv().await, ServerMsg::Joined { .. }));
    assert!(matches!(pages[0].0.recv().await, ServerMsg::PeerJoined { .. }));
    pages[1].0.client.send(&ClientMsg::Hand { raised: true }).await;
    for (p, _) in pages.iter_mut() {
        assert!(matches!(p.recv().await, ServerMsg::PeerUpdated { .. }));
    }

    for step in 0..3 {
        let owner = owner_of(&mut con, "standup").await.expect("the room has an owner");
        let stopping = ids[step].clone();
        signal(&nodes[step], "-TERM");
        let stopped = Instant::now();
        // Pages whose connection or whose room was on the stopping node come back; the others
        // are not disturbed.
        for (page, at) in pages.iter_mut() {
            if *at != step && owner != stopping {
                continue;
            }
            page.until_closed(Duration::from_secs(5)).await;
            if *at == step {
                // The load balancer sends it to another node: at step 1 that makes Bob's
                // connection one of a stopping node whose room lives elsewhere.
                *at = (step + 2) % 3;
            }
            page.resume(nodes[*at].addr, stopped + RECOVERY).await;
        }
        let back = stopped.elapsed();
        println!("step {step}: node {stopping} stopped (owner: {owner}); everyone back after {back:?}");
        // Not the crash path: nobody waited for a lease to run out.
        assert!(back < Duration::from_secs(8), "{back:?}: as slow as a crash");
        let status = tokio::time::timeout(Duration::from_secs(10), nodes[step].child.wait())
            .await
            .expect("the stopped node exits")
            .expect("wait");
        assert!(status.success(), "{status:?}");
        assert_ne!(owner_of(&mut con, "standup").await.as_deref(), Some(stopping.as_str()));
        // Its replacement.
        nodes[step] = node(&redis, 10 + step).await;
        ids[step] = node_id(&nodes[step]).await;

        // The same meeting, with nothing missed or repeated: the next thing each page sees is
        // this step's chat message.
        let text = format!("after step {step}");
        pages[step % 2].0.client.send(&ClientMsg::Chat { text: text.clone() }).await;
        for (p, _) in pages.iter_mut() {
            match p.recv().await {
                ServerMsg::Chat { message } => assert_eq!(message.text, text),
                other => panic!("{} saw {other:?} first", p.client.id),
            }
        }
    }

    let newest = nodes[2].addr;
    let mut carol = Client::connect_to(newest).await;
    match carol.join("standup", "Carol").await {
        ServerMsg::Joined { peers, chat, .. } => {
            let mut names: Vec<(&str, Role, bool)> = peers.iter().map(|p| (p.name.as_str(), p.role, p.hand)).collect();
            names.sort();
            assert_eq!(names, [("Alice", Role::Host, false), ("Bob", Role::Participant, true)]);
            let texts: Vec<&str> = chat.iter().map(|m| m.text.as_str()).collect();
            assert_eq!(texts, ["after step 0", "after step 1", "after step 2"]);
        }
        other => panic!("{other:?}"),
    }
    let keys: Vec<String> =
        redis::cmd("KEYS").arg("huddle:room:{standup}:owner").query_async(&mut con).await.expect("KEYS");
    assert_eq!(keys.len(), 1, "one owner");
}

/// The node that handed out a peer id.
fn node_of(id: &PeerId) -> String {
    huddle_server::cluster::node_of_peer(id).expect("a cluster peer id")
}

#[tokio::test]
async fn an_owner_paused_past_its_lease_changes_nothing_and_stands_down_when_it_wakes() {
    let redis = TestRedis::start();
    let mut nodes = Vec::new();
    for n in 0..3 {
        nodes.push(node(&redis, n).await);
    }
    let mut alice = Page::open(nodes[0].addr).await;
    alice.client.send(&join("desk", "Alice")).await;
    assert!(matches!(alice.recv().await, ServerMsg::Joined { .. }));
    let mut bob = Page::open(nodes[1].addr).await;
    bob.client.send(&join("desk", "Bob")).await;
    assert!(matches!(bob.recv().await, ServerMsg::Joined { .. }));
    assert!(matches!(alice.recv().await, ServerMsg::PeerJoined { .. }));
    let mut con = redis.connect().await;
    let owner = async |con: &mut redis::aio::ConnectionManager| -> String {
        let v: Option<String> = redis::cmd("GET").arg("huddle:room:{desk}:owner").query_async(con).await.expect("GET");
        v.expect("the room has an owner").split('/').next().expect("a node").to_string()
    };
    assert_eq!(owner(&mut con).await, node_of(&alice.client.id), "the room is node 0's");
    wait_saved(&mut con, "desk", "Bob").await;

    // Node 0 freezes (as in a long stall): it neither beats nor renews. Bob's node sees it gone
    // and closes his connection; his page comes back once another node has taken the room.
    signal(&nodes[0], "-STOP");
    let stopped = Instant::now();
    bob.until_closed(RECOVERY).await;
    bob.resume(nodes[1].addr, stopped + RECOVERY).await;
    assert_eq!(owner(&mut con).await, node_of(&bob.client.id), "node 1 took the room over");
    bob.client.send(&ClientMsg::Chat { text: "while it slept".into() }).await;
    assert!(matches!(bob.recv().await, ServerMsg::Chat { .. }));

    // Node 0 wakes. Its lease is gone: it changes nothing, and closes Alice's connection so that
    // her page resumes with the room's new owner, where what she missed waits for her.
    signal(&nodes[0], "-CONT");
    alice.until_closed(Duration::from_secs(10)).await;
    alice.resume(nodes[2].addr, Instant::now() + RECOVERY).await;
    match alice.recv().await {
        ServerMsg::Chat { message } => assert_eq!(message.text, "while it slept"),
        other => panic!("{other:?}"),
    }
    assert_eq!(owner(&mut con).await, node_of(&bob.client.id), "still node 1's");
    wait_saved(&mut con, "desk", "while it slept").await;
    let mut carol = Client::connect_to(nodes[0].addr).await;
    match carol.join("desk", "Carol").await {
        ServerMsg::Joined { peers, .. } => {
            let mut names: Vec<(&str, Role)> = peers.iter().map(|p| (p.name.as_str(), p.role)).collect();
            names.sort();
            assert_eq!(names, [("Alice", Role::Host), ("Bob", Role::Participant)]);
        }
        other => panic!("{other:?}"),
    }
}
