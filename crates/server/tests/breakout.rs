//! Breakout rooms (issue 19) through the real server and real WebSockets: fifty people split into
//! twenty-five rooms and brought back, closing while moves are asked for, and the host's
//! connection lost while the rooms are open.

mod common;

use common::{Client, TestServer};
use huddle_protocol::{BreakoutPlan, ClientMsg, ErrorCode, LeaveReason, PeerId, Role, ServerMsg};
use huddle_server::config::TopologyMode;
use huddle_server::Config;
use std::time::Duration;

fn config() -> Config {
    Config {
        topology: TopologyMode::P2p,
        turn: false,
        room_capacity: 64,
        max_connections_per_ip: 1_000,
        max_tcp_connections_per_ip: 1_000,
        ip_joins_per_minute: 0,
        ..Config::default()
    }
}

/// The next message `pick` takes, skipping the others (within the tests' wait).
async fn until<T>(c: &mut Client, what: &str, mut pick: impl FnMut(ServerMsg) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg =
            tokio::time::timeout_at(deadline, c.recv()).await.unwrap_or_else(|_| panic!("{} waited for {what}", c.id));
        if let Some(t) = pick(msg) {
            return t;
        }
    }
}

/// The next `joined`: its breakout room's index (`None`: the main room) and the others there.
async fn next_joined(c: &mut Client) -> (Option<u32>, Vec<PeerId>) {
    until(c, "joined", |m| match m {
        ServerMsg::Joined { breakout, peers, .. } => {
            Some((breakout.map(|b| b.index), peers.into_iter().map(|p| p.id).collect()))
        }
        _ => None,
    })
    .await
}

fn open(rooms: Vec<BreakoutPlan>, close_seconds: u32) -> ClientMsg {
    ClientMsg::BreakoutOpen { rooms, auto_move: true, allow_return: true, choose: false, minutes: 0, close_seconds }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_people_go_into_twenty_five_rooms_and_all_come_back() {
    let server = TestServer::start(config()).await;
    let mut host = Client::connect(&server).await;
    host.join("class", "Teacher").await;
    let mut people = Vec::new();
    for n in 0..50 {
        let mut c = Client::connect(&server).await;
        c.join("class", &format!("Student {n}")).await;
        people.push(c);
    }
    host.send(&ClientMsg::Chat { text: "welcome".into() }).await;
    let plans: Vec<BreakoutPlan> = (0..25)
        .map(|r| BreakoutPlan {
            name: format!("Table {}", r + 1),
            members: vec![people[2 * r].id.clone(), people[2 * r + 1].id.clone()],
        })
        .collect();
    host.send(&open(plans, 1)).await;
    // Everyone lands in their room with their partner (the second of a pair finds the first).
    for (i, c) in people.iter_mut().enumerate() {
        let (room, peers) = next_joined(c).await;
        assert_eq!(room, Some(i as u32 / 2 + 1), "{} is in table {}", c.id, i / 2 + 1);
        assert!(peers.len() <= 1, "{}: only its partner, not {peers:?}", c.id);
    }
    // The host sees every room with its two people, and nobody left in the main room but itself.
    let state = until(&mut host, "the rooms full", |m| match m {
        ServerMsg::Breakouts { open: true, state: Some(s) } if s.rooms.iter().all(|r| r.count == 2) => Some(s),
        _ => None,
    })
    .await;
    assert_eq!(state.rooms.len(), 25);
    assert_eq!(state.main.as_ref().map(Vec::len), Some(1));
    assert!(state.rooms.iter().all(|r| r.members.as_ref().is_some_and(|m| m.len() == 2)));
    // A chat in table 3 stays there.
    people[4].send(&ClientMsg::Chat { text: "table three".into() }).await;
    until(&mut people[5], "the partner's chat", |m| match m {
        ServerMsg::Chat { message } => (message.text == "table three").then_some(()),
        _ => None,
    })
    .await;
    // Closing: a one-second countdown, told to everyone, then everyone is back.
    host.send(&ClientMsg::BreakoutClose { now: false }).await;
    for c in people.iter_mut() {
        let closing = until(c, "the countdown", |m| match m {
            ServerMsg::Breakouts { open: true, state: Some(s) } => s.closing_at,
            _ => None,
        })
        .await;
        assert!(closing > 0);
    }
    for (i, c) in people.iter_mut().enumerate() {
        let (room, peers) = next_joined(c).await;
        assert_eq!(room, None, "{} is back in the main room", c.id);
        assert!(peers.contains(&host.id));
        // Table 3's chat goes to its two people, and only them.
        let kept = until(c, "closed", |m| match m {
            ServerMsg::BreakoutChat { messages, .. } => Some(Some(messages)),
            ServerMsg::Breakouts { open: false, .. } => Some(None),
            _ => None,
        })
        .await;
        match (i, kept) {
            (4 | 5, Some(messages)) => assert_eq!(messages[0].text, "table three"),
            (4 | 5, None) => panic!("{} did not get its table's chat", c.id),
            (_, Some(_)) => panic!("{} got another table's chat", c.id),
            (_, None) => {}
        }
    }
    let mut late = Client::connect(&server).await;
    match late.join("class", "Late").await {
        ServerMsg::Joined { peers, chat, breakout, .. } => {
            assert_eq!(peers.len(), 51, "everyone is in the main room");
            assert_eq!(breakout, None);
            assert_eq!(
                chat.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(),
                ["welcome"],
                "the main chat is intact"
            );
        }
        _ => unreachable!(),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_while_moves_are_asked_for_leaves_everyone_in_the_main_room() {
    let server = TestServer::start(config()).await;
    let mut host = Client::connect(&server).await;
    host.join("c", "Host").await;
    let mut a = Client::connect(&server).await;
    a.join("c", "A").await;
    let mut b = Client::connect(&server).await;
    b.join("c", "B").await;
    let plans = vec![
        BreakoutPlan { name: "One".into(), members: vec![a.id.clone()] },
        BreakoutPlan { name: "Two".into(), members: vec![b.id.clone()] },
    ];
    let choose = ClientMsg::BreakoutOpen {
        rooms: plans,
        auto_move: false,
        allow_return: true,
        choose: true,
        minutes: 0,
        close_seconds: 60,
    };
    host.send(&choose).await;
    // Both ask to move (A to its room, B to the other: choosing is on) while the host closes at
    // once; whatever the order, everyone ends in the main room and the rooms are gone.
    a.send(&ClientMsg::BreakoutMove { room: 1 }).await;
    b.send(&ClientMsg::BreakoutMove { room: 1 }).await;
    host.send(&ClientMsg::BreakoutClose { now: true }).await;
    a.send(&ClientMsg::BreakoutMove { room: 2 }).await;
    for c in [&mut a, &mut b] {
        until(c, "closed", |m| matches!(m, ServerMsg::Breakouts { open: false, .. }).then_some(())).await;
        // A move asked for after the close finds no rooms.
        c.send(&ClientMsg::BreakoutMove { room: 1 }).await;
        let code = until(c, "refusal", |m| match m {
            ServerMsg::Error { code, .. } => Some(code),
            _ => None,
        })
        .await;
        assert_eq!(code, ErrorCode::InvalidBreakout);
    }
    let mut late = Client::connect(&server).await;
    match late.join("c", "Late").await {
        ServerMsg::Joined { peers, .. } => assert_eq!(peers.len(), 3, "all three are in the main room"),
        _ => unreachable!(),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_lost_while_rooms_are_open_hands_the_meeting_to_a_cohost_who_closes_them() {
    let server = TestServer::start(Config { resume_grace: Duration::from_millis(300), ..config() }).await;
    let mut host = Client::connect(&server).await;
    host.join("w", "Host").await;
    let mut co = Client::connect(&server).await;
    co.join("w", "Co").await;
    let mut p = Client::connect(&server).await;
    p.join("w", "P").await;
    host.send(&ClientMsg::SetRole { peer: co.id.clone(), role: Role::Cohost }).await;
    host.send(&open(vec![BreakoutPlan { name: "Solo".into(), members: vec![p.id.clone()] }], 0)).await;
    assert_eq!(next_joined(&mut p).await.0, Some(1));
    // The host visits the room, then its connection is gone for good.
    host.send(&ClientMsg::BreakoutMove { room: 1 }).await;
    assert_eq!(next_joined(&mut host).await.0, Some(1));
    drop(host);
    let left = until(&mut p, "the host gone", |m| match m {
        ServerMsg::PeerLeft { reason, .. } => Some(reason),
        _ => None,
    })
    .await;
    assert_eq!(left, LeaveReason::Disconnected);
    // The co-host, in the main room, is the meeting's host now, and closes the rooms.
    let co_id = co.id.clone();
    until(&mut co, "promoted", |m| match m {
        ServerMsg::PeerUpdated { peer } => (peer.id == co_id && peer.role == Role::Host).then_some(()),
        _ => None,
    })
    .await;
    // A participant still may not.
    p.send(&ClientMsg::BreakoutClose { now: true }).await;
    let code = until(&mut p, "refusal", |m| match m {
        ServerMsg::Error { code, .. } => Some(code),
        _ => None,
    })
    .await;
    assert_eq!(code, ErrorCode::NotAllowed);
    co.send(&ClientMsg::BreakoutClose { now: false }).await;
    assert_eq!(next_joined(&mut p).await.0, None, "close_seconds 0: back at once");
    server.shutdown().await;
}
