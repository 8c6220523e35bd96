//! Several workers in one process (issue 17): each room belongs to one worker, chosen by its
//! name, and a connection's session moves to its room's worker when it joins. Pages see one
//! server: the room list has every worker's rooms, the cap on rooms counts them all, a resume
//! finds its session wherever it lives, a bug in one worker closes only that worker's rooms, and
//! a restart hands every room back to the worker that owns it in the next run.

mod common;

use common::{join, Client, TestServer};
use huddle_protocol::{ClientMsg, EndReason, ErrorCode, PeerId, ServerMsg};
use huddle_server::workers::worker_of_room;
use huddle_server::Config;
use std::time::Duration;

/// The first name `stem-<n>` whose room worker `worker` of `workers` owns.
fn room_on(worker: usize, workers: usize, stem: &str) -> String {
    (0..1000)
        .map(|n| format!("{stem}-{n}"))
        .find(|room| worker_of_room(room, workers) == worker)
        .expect("a name for every worker among 1000")
}

fn workers(n: usize) -> Config {
    Config { workers: n, ..Config::default() }
}

fn chat(text: &str) -> ClientMsg {
    ClientMsg::Chat { text: text.into() }
}

/// The next message that is not about who joined or how they are.
async fn next_chat(c: &mut Client) -> String {
    loop {
        match c.recv().await {
            ServerMsg::Chat { message } => return message.text,
            ServerMsg::PeerJoined { .. }
            | ServerMsg::PeerUpdated { .. }
            | ServerMsg::Rooms { .. }
            | ServerMsg::IceServers { .. } => continue,
            other => panic!("{} expected chat, got {other:?}", c.id),
        }
    }
}

/// Waits for a room list in which `want` (room, people) all show.
async fn until_listed(c: &mut Client, want: &[(&str, u32)]) {
    loop {
        if let ServerMsg::Rooms { rooms } = c.recv().await {
            if want.iter().all(|(name, n)| rooms.iter().any(|r| r.name == *name && r.participants == *n)) {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_two_workers_keep_to_themselves_and_show_in_one_room_list() {
    let server = TestServer::start(workers(2)).await;
    let rooms = [room_on(0, 2, "team"), room_on(1, 2, "team")];
    // Four sessions: connections are spread over the workers by number, so some start on the
    // worker of their room and some move there as they join.
    let mut people = Vec::new();
    for (i, room) in [&rooms[0], &rooms[0], &rooms[1], &rooms[1]].into_iter().enumerate() {
        let mut c = Client::connect(&server).await;
        c.join(room, &format!("p{i}")).await;
        people.push(c);
    }
    people[0].send(&chat("in room zero")).await;
    people[2].send(&chat("in room one")).await;
    assert_eq!(next_chat(&mut people[1]).await, "in room zero");
    assert_eq!(next_chat(&mut people[3]).await, "in room one");
    assert_eq!(next_chat(&mut people[0]).await, "in room zero", "the sender gets its own message");
    assert_eq!(next_chat(&mut people[2]).await, "in room one");
    for c in &mut people {
        // Nothing from the other room came before the barrier's answer.
        c.barrier().await;
    }
    // A page in the lobby (on either worker) lists both rooms with their head counts.
    for _ in 0..2 {
        let mut lobby = Client::connect(&server).await;
        lobby.send(&ClientMsg::WatchRooms).await;
        until_listed(&mut lobby, &[(&rooms[0], 2), (&rooms[1], 2)]).await;
    }
    let m = common::raw::metrics(server.addr).await;
    assert_eq!(m.get("huddle_worker_rooms{worker=\"0\"}"), Some(&1.0), "{m:?}");
    assert_eq!(m.get("huddle_worker_rooms{worker=\"1\"}"), Some(&1.0), "{m:?}");
    assert_eq!(m.get("huddle_participants"), Some(&4.0));
    // A participant leaves one room for one on the other worker.
    people[1].send(&ClientMsg::Leave).await;
    assert!(matches!(people[1].recv().await, ServerMsg::Left { .. }));
    people[1].join(&rooms[1], "p1 again").await;
    people[2].send(&chat("welcome")).await;
    assert_eq!(next_chat(&mut people[1]).await, "welcome");
    server.shutdown().await;
}

#[tokio::test]
async fn the_cap_on_rooms_counts_every_workers_rooms() {
    let server = TestServer::start(Config { max_rooms: 2, ..workers(2) }).await;
    let (r0, r1) = (room_on(0, 2, "cap"), room_on(1, 2, "cap"));
    let mut a = Client::connect(&server).await;
    a.join(&r0, "a").await;
    let mut b = Client::connect(&server).await;
    b.join(&r1, "b").await;
    // Each worker holds one room: a third, on either, is over the cap of two.
    for worker in 0..2 {
        let mut c = Client::connect(&server).await;
        c.send(&join(&room_on(worker, 2, "third"), "c")).await;
        c.expect_error(ErrorCode::TooManyRooms).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_resume_finds_its_session_on_its_rooms_worker() {
    let server = TestServer::start(Config { resume_grace: Duration::from_secs(30), ..workers(2) }).await;
    for worker in 0..2 {
        let room = room_on(worker, 2, "resume");
        let (ws, _) = tokio_tungstenite::connect_async(server.url()).await.expect("handshake");
        let mut a = Client { ws, id: PeerId(String::new()) };
        let ServerMsg::Welcome { id, resume, .. } = a.recv().await else { panic!("welcome first") };
        a.id = id.clone();
        a.join(&room, "a").await;
        let mut b = Client::connect(&server).await;
        b.join(&room, "b").await;
        // a's connection breaks; b says something meanwhile; a's page resumes on a new one.
        drop(a);
        b.send(&chat("while you were away")).await;
        assert_eq!(next_chat(&mut b).await, "while you were away");
        // a saw `joined` and b's `peer_joined`.
        let url = format!("{}?session={id}&resume={resume}&seen=2", server.url());
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("handshake");
        let mut a = Client { ws, id: id.clone() };
        match a.recv().await {
            ServerMsg::Welcome { id: resumed, resumed: true, .. } => assert_eq!(resumed, id),
            other => panic!("worker {worker}: expected the session resumed, got {other:?}"),
        }
        assert_eq!(next_chat(&mut a).await, "while you were away", "the missed message, replayed");
        a.send(&chat("back")).await;
        assert_eq!(next_chat(&mut b).await, "back");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bug_in_one_worker_closes_its_rooms_only_and_they_can_be_joined_again() {
    let boom = room_on(0, 2, "boom");
    let server = TestServer::start(Config { test_panic_room: Some(boom.clone()), ..workers(2) }).await;
    let (r0, r1) = (room_on(0, 2, "calm"), room_on(1, 2, "calm"));
    let (mut a, mut b, mut c, mut d) = (
        Client::connect(&server).await,
        Client::connect(&server).await,
        Client::connect(&server).await,
        Client::connect(&server).await,
    );
    a.join(&r0, "a").await;
    b.join(&r0, "b").await;
    c.join(&r1, "c").await;
    d.join(&r1, "d").await;
    while !matches!(a.recv().await, ServerMsg::PeerJoined { .. }) {}
    while !matches!(c.recv().await, ServerMsg::PeerJoined { .. }) {}
    // Joining `boom` panics in worker 0's hub.
    let mut e = Client::connect(&server).await;
    e.send(&join(&boom, "e")).await;
    for x in [&mut a, &mut b] {
        loop {
            match x.recv().await {
                ServerMsg::Ended { room, reason } => {
                    assert_eq!((room.as_str(), reason), (r0.as_str(), Some(EndReason::ServerError)));
                    break;
                }
                ServerMsg::PeerJoined { .. } | ServerMsg::PeerUpdated { .. } => continue,
                other => panic!("expected ended, got {other:?}"),
            }
        }
    }
    // Worker 1's room never noticed.
    c.send(&chat("still here")).await;
    assert_eq!(next_chat(&mut d).await, "still here");
    assert_eq!(next_chat(&mut c).await, "still here");
    c.barrier().await;
    // The people of the closed room are still connected, and can meet again at once.
    a.join(&r0, "a").await;
    b.join(&r0, "b").await;
    b.send(&chat("again")).await;
    assert_eq!(next_chat(&mut a).await, "again");
    let m = common::raw::metrics(server.addr).await;
    assert_eq!(m.get("huddle_hub_panics_total"), Some(&1.0), "{m:?}");
    assert_eq!(m.get("huddle_rooms"), Some(&2.0));
    server.shutdown().await;
}

fn data_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("huddle-workers-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_hands_every_workers_rooms_back_even_to_another_count_of_workers() {
    let dir = data_dir("restart");
    let config = |n| Config { data_dir: Some(dir.clone()), resume_grace: Duration::from_secs(30), ..workers(n) };
    let server = TestServer::start(config(2)).await;
    // Rooms on both workers of the first run; in the second run (three workers) each goes to
    // whichever worker owns its name then.
    let rooms: Vec<String> = (0..4).map(|i| room_on(i % 2, 2, &format!("kept{i}"))).collect();
    let mut sessions = Vec::new();
    for room in &rooms {
        let (ws, _) = tokio_tungstenite::connect_async(server.url()).await.expect("handshake");
        let mut c = Client { ws, id: PeerId(String::new()) };
        let ServerMsg::Welcome { id, resume, .. } = c.recv().await else { panic!("welcome first") };
        c.id = id.clone();
        c.join(room, "someone").await;
        sessions.push((c, id, resume));
    }
    let addr = server.addr;
    server.shutdown().await;
    let files = std::fs::read_dir(&dir).expect("the data directory").count();
    assert!(files >= 2, "each worker saved its rooms");

    let server = TestServer::start_on(config(3), addr).await;
    let placed: std::collections::HashSet<usize> = rooms.iter().map(|r| worker_of_room(r, 3)).collect();
    for ((_, id, secret), room) in sessions.iter().zip(&rooms) {
        // `joined` was the one message seen.
        let url = format!("{}?session={id}&resume={secret}&seen=1", server.url());
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("handshake");
        let mut c = Client { ws, id: id.clone() };
        match c.recv().await {
            ServerMsg::Welcome { resumed: true, .. } => {}
            other => panic!("{room}: expected the session resumed, got {other:?}"),
        }
        c.send(&chat("after the restart")).await;
        assert_eq!(next_chat(&mut c).await, "after the restart", "{room}: in its room again");
    }
    let m = common::raw::metrics(server.addr).await;
    for w in 0..3 {
        let want = rooms.iter().filter(|r| worker_of_room(r, 3) == w).count() as f64;
        assert_eq!(m.get(&format!("huddle_worker_rooms{{worker=\"{w}\"}}")), Some(&want), "{m:?}");
    }
    assert!(placed.len() >= 2, "the rooms are spread over the new workers too");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_page_watching_the_room_list_keeps_watching_after_a_refused_join_on_another_worker() {
    let server = TestServer::start(Config { room_capacity: 1, ..workers(2) }).await;
    let mut watcher = Client::connect(&server).await;
    // Connections start on the worker of their number (`p<n>`): the full room is on the other.
    let n: usize = watcher.id.0.trim_start_matches('p').parse().expect("p<number>");
    let other = (n + 1) % 2;
    let full = room_on(other, 2, "full");
    let mut first = Client::connect(&server).await;
    first.join(&full, "first").await;
    watcher.send(&ClientMsg::WatchRooms).await;
    until_listed(&mut watcher, &[(&full, 1)]).await;
    // The session moves to the full room's worker, which refuses the join.
    watcher.send(&join(&full, "watcher")).await;
    loop {
        match watcher.recv().await {
            ServerMsg::Error { code, .. } => {
                assert_eq!(code, ErrorCode::RoomFull);
                break;
            }
            ServerMsg::Rooms { .. } => continue,
            other => panic!("expected room_full, got {other:?}"),
        }
    }
    // A room opening on either worker still reaches its list.
    let mut second = Client::connect(&server).await;
    let fresh = room_on(n % 2, 2, "fresh");
    second.join(&fresh, "second").await;
    until_listed(&mut watcher, &[(&full, 1), (&fresh, 1)]).await;
    server.shutdown().await;
}

#[tokio::test]
async fn one_worker_is_the_server_as_it_was_and_shows_in_the_metrics() {
    let server = TestServer::start(workers(1)).await;
    let mut a = Client::connect(&server).await;
    a.join("solo", "a").await;
    let mut b = Client::connect(&server).await;
    b.join("solo", "b").await;
    b.send(&chat("hi")).await;
    assert_eq!(next_chat(&mut a).await, "hi");
    let m = common::raw::metrics(server.addr).await;
    assert_eq!(m.get("huddle_worker_rooms{worker=\"0\"}"), Some(&1.0), "{m:?}");
    assert!(!m.contains_key("huddle_worker_rooms{worker=\"1\"}"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_member_cannot_slip_into_a_room_on_another_worker_and_stays_where_it_is() {
    let server = TestServer::start(workers(2)).await;
    let (r0, r1) = (room_on(0, 2, "stay"), room_on(1, 2, "stay"));
    let mut a = Client::connect(&server).await;
    a.join(&r0, "a").await;
    let mut b = Client::connect(&server).await;
    b.join(&r0, "b").await;
    // Joining a room its worker does not own, while in a room: refused where the session is,
    // and no room opens on the other worker.
    a.send(&join(&r1, "a")).await;
    loop {
        match a.recv().await {
            ServerMsg::Error { code, .. } => {
                assert_eq!(code, ErrorCode::AlreadyInRoom);
                break;
            }
            ServerMsg::PeerJoined { .. } | ServerMsg::PeerUpdated { .. } => continue,
            other => panic!("expected already_in_room, got {other:?}"),
        }
    }
    a.send(&chat("still in room zero")).await;
    assert_eq!(next_chat(&mut b).await, "still in room zero");
    let m = common::raw::metrics(server.addr).await;
    assert_eq!(m.get("huddle_worker_rooms{worker=\"1\"}"), Some(&0.0), "{m:?}");
    server.shutdown().await;
}
