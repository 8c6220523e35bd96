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
    node_with(redis, n, &["--topology", "p2p"]).await
}

/// A node recording as the room's owner does: the SFU, recordings into `recordings` (the
/// directory every node of the test shares), no ffmpeg (the parts stay raw).
async fn recording_node(redis: &TestRedis, n: usize, recordings: &std::path::Path) -> Node {
    let dir = recordings.to_str().expect("a UTF-8 path");
    node_with(redis, n, &["--topology", "sfu", "--recordings-dir", dir, "--ffmpeg", "/nonexistent/ffmpeg"]).await
}

/// [`node`] with `args` (which must say the topology) instead of `--topology p2p`.
async fn node_with(redis: &TestRedis, n: usize, args: &[&str]) -> Node {
    // Tests run side by side in this process: every node gets a directory of its own.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("huddle-failover-{}-{n}-{unique}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_huddle"))
        .args(["--listen", "127.0.0.1:0", "--redis", &redis.url, "--turn", "false"])
        .args(args)
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

/// The owner of a room being recorded dies (SIGKILL: nothing said, nothing closed): the node
/// that takes the room over goes on with the recording, in part 2 in the directory the nodes
/// share, and nobody is told it stopped. When the host stops it, the last owner lists one
/// recording, and marks part 1 (whose node died while writing it) interrupted.
#[tokio::test]
async fn a_recording_goes_on_in_a_new_part_when_its_node_dies() {
    a_recording_follows_its_room("studio", false, 20).await;
}

/// The same on a clean stop (SIGTERM): the owner hands the room over with its recording, and
/// ends part 1 as `continued`.
#[tokio::test]
async fn a_recording_goes_on_in_a_new_part_when_its_node_stops_cleanly() {
    a_recording_follows_its_room("booth", true, 30).await;
}

/// Three nodes sharing one recordings directory; Alice (host) on node 0, which owns `room`, Bob
/// through node 1. Alice records; node 0 gets SIGTERM (`graceful`) or SIGKILL; both pages
/// resume through the other nodes; the recording goes on there, then Alice stops it.
/// `first_node`: the nodes' numbers (their data directories) start there.
async fn a_recording_follows_its_room(room: &str, graceful: bool, first_node: usize) {
    use huddle_protocol::{RecordingFileState, RecordingStopReason, Topology};
    use huddle_record::manifest::{Manifest, RecordingState};
    let started = Instant::now();
    let redis = TestRedis::start();
    let shared = TempDir(std::env::temp_dir().join(format!("huddle-failover-rec-{}-{room}", std::process::id())));
    let mut nodes = Vec::new();
    for n in 0..3 {
        nodes.push(recording_node(&redis, first_node + n, &shared.0).await);
    }
    let mut con = redis.connect().await;
    let mut alice = Page::open(nodes[0].addr).await;
    alice.client.send(&join(room, "Alice")).await;
    match alice.recv().await {
        ServerMsg::Joined { you, topology, .. } => assert_eq!((you.role, topology), (Role::Host, Topology::Sfu)),
        other => panic!("{other:?}"),
    }
    let mut bob = Page::open(nodes[1].addr).await;
    bob.client.send(&join(room, "Bob")).await;
    assert!(matches!(bob.recv().await, ServerMsg::Joined { .. }));
    assert!(matches!(alice.recv().await, ServerMsg::PeerJoined { .. }));
    let first_owner = owner_of(&mut con, room).await.expect("the room has an owner");
    assert_eq!(first_owner, node_of(&alice.client.id), "node 0 owns the room");

    // Alice records: she is told (and, a host, gets the room's list with it); so is Bob.
    alice.client.send(&ClientMsg::Record).await;
    let (mut info, mut listed) = (None, false);
    while info.is_none() || !listed {
        match alice.recv().await {
            ServerMsg::Recording { recording: Some(i), stopped: None } => info = Some(i),
            ServerMsg::Recordings { recordings } => {
                assert_eq!(recordings.len(), 1, "{recordings:?}");
                assert_eq!(recordings[0].state, RecordingFileState::Recording);
                listed = true;
            }
            other => panic!("{other:?}"),
        }
    }
    let info = info.expect("a recording");
    match bob.recv().await {
        ServerMsg::Recording { recording: Some(i), stopped: None } => assert_eq!(i, info),
        other => panic!("{other:?}"),
    }
    let rec = shared.0.join(&info.id);
    let part1 = wait_part(&rec, 1, RecordingState::Recording).await;
    assert_eq!((part1.id.as_str(), part1.room.as_str()), (info.id.as_str(), room));
    // The room's next owner learns of the recording from what this one saved.
    wait_saved(&mut con, room, &info.id).await;

    signal(&nodes[0], if graceful { "-TERM" } else { "-KILL" });
    let gone = Instant::now();
    alice.until_closed(Duration::from_secs(5)).await;
    alice.resume(nodes[2].addr, gone + RECOVERY).await;
    bob.until_closed(RECOVERY).await;
    bob.resume(nodes[1].addr, gone + RECOVERY).await;
    let status = tokio::time::timeout(Duration::from_secs(10), nodes[0].child.wait())
        .await
        .expect("node 0 exits")
        .expect("wait");
    assert_eq!(status.success(), graceful, "{status:?}");
    println!("everyone resumed {:?} after node 0 was {}", gone.elapsed(), if graceful { "stopped" } else { "killed" });
    let owner = owner_of(&mut con, room).await.expect("the room has an owner again");
    assert_ne!(owner, first_owner);

    // The new owner goes on recording: part 2, in the same directory.
    let part2 = wait_part(&rec, 2, RecordingState::Recording).await;
    assert_eq!((part2.id.as_str(), part2.room.as_str()), (info.id.as_str(), room));
    println!("part 2 is being written {:?} after node 0 went", gone.elapsed());
    // Part 1 as node 0 left it: cut short (its node died while writing it), or handed on.
    let part1 = Manifest::load(&rec).expect("part 1's manifest");
    assert_eq!(part1.state, if graceful { RecordingState::Continued } else { RecordingState::Recording });

    // Someone entering now learns that the room records; those who were there were never told
    // it stopped (not in what their resume replayed, nor since).
    let mut carol = Client::connect_to(nodes[2].addr).await;
    match carol.join_recorded(room, "Carol").await {
        ServerMsg::Joined { recording, .. } => assert_eq!(recording.as_ref(), Some(&info)),
        _ => unreachable!(),
    }
    for p in [&mut alice, &mut bob] {
        let name = until(p, "Carol", |m| match m {
            ServerMsg::PeerJoined { peer } => Some(peer.name.clone()),
            _ => None,
        })
        .await;
        assert_eq!(name, "Carol");
    }

    // Alice stops it: everyone is told; her list holds one recording, the same, raw.
    alice.client.send(&ClientMsg::StopRecording).await;
    for p in [&mut alice, &mut bob] {
        let stopped = until(p, "the stop", |m| match m {
            ServerMsg::Recording { recording: None, stopped } => Some(stopped.clone().expect("why")),
            _ => None,
        })
        .await;
        assert_eq!(stopped.reason, RecordingStopReason::Stopped);
        assert_eq!(stopped.by.map(|p| p.name).as_deref(), Some("Alice"));
    }
    let list = until(&mut alice, "the list", |m| match m {
        ServerMsg::Recordings { recordings } if recordings.iter().all(|r| r.state != RecordingFileState::Recording) => {
            Some(recordings.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(list.len(), 1, "{list:?}");
    // Raw tracks only (no ffmpeg); a part cut by its node's death makes it "interrupted".
    let listed = if graceful { RecordingFileState::Raw } else { RecordingFileState::Interrupted };
    assert_eq!((list[0].id.as_str(), list[0].state), (info.id.as_str(), listed));

    // On disk: one recording, in two parts; the first mended (interrupted) or continued.
    let dirs: Vec<_> = std::fs::read_dir(&shared.0).expect("the recordings").flatten().map(|d| d.file_name()).collect();
    assert_eq!(dirs, [std::ffi::OsString::from(&info.id)]);
    let parts = Manifest::load_parts(&rec).expect("the parts");
    let states: Vec<(u32, RecordingState)> = parts.iter().map(|m| (m.part, m.state)).collect();
    let first = if graceful { RecordingState::Continued } else { RecordingState::Interrupted };
    assert_eq!(states, [(1, first), (2, RecordingState::Stopped)]);
    assert!(parts.iter().all(|m| m.id == info.id));
    assert_eq!(parts[1].stopped_by.as_ref().map(|p| p.name.as_str()), Some("Alice"));
    let names: Vec<&str> = parts[1].participants.iter().map(|p| p.name.as_str()).collect();
    for name in ["Alice", "Bob", "Carol"] {
        assert!(names.contains(&name), "{name} is in part 2: {names:?}");
    }
    let whole = Manifest::joined(&parts).expect("joined");
    assert_eq!((whole.part, whole.state), (2, RecordingState::Stopped));
    println!("done in {:?}", started.elapsed());
}

/// Part `part` of the recording in `dir`, once its manifest says `state`. A file appearing is
/// nothing a page is told: this looks every 50 ms, for at most [`RECOVERY`].
async fn wait_part(
    dir: &std::path::Path,
    part: u32,
    state: huddle_record::manifest::RecordingState,
) -> huddle_record::manifest::Manifest {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let found = huddle_record::manifest::Manifest::load_parts(dir)
            .ok()
            .and_then(|parts| parts.into_iter().find(|m| m.part == part));
        match found {
            Some(m) if m.state == state => return m,
            other => assert!(Instant::now() < deadline, "part {part} never became {state:?}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next message of `page` that `pick` takes, skipping others; none of those may say that
/// the room's recording stopped.
async fn until<T>(page: &mut Page, what: &str, mut pick: impl FnMut(&ServerMsg) -> Option<T>) -> T {
    let deadline = Instant::now() + RECOVERY;
    loop {
        assert!(Instant::now() < deadline, "{} waited for {what}", page.client.id);
        let m = page.recv().await;
        if let Some(t) = pick(&m) {
            return t;
        }
        assert!(
            !matches!(m, ServerMsg::Recording { recording: None, .. }),
            "{} was told the recording stopped while waiting for {what}: {m:?}",
            page.client.id
        );
    }
}
