//! Dead connections are dropped by the heartbeat, on a paused clock.
//!
//! The clock is advanced by hand one second at a time, with the runtime given a moment after each
//! step to carry the socket traffic that step caused (pings, pongs). Auto-advance would not do:
//! it jumps to the next timer whenever tasks are idle, even while a pong is still on its way over
//! loopback, and then drops live connections too.

mod common;

use common::{Client, TestServer};
use futures_util::{SinkExt, StreamExt};
use huddle_protocol::{LeaveReason, ServerMsg};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Reads `client` as a browser would: answers pings at once and forwards protocol messages.
fn browser_like(mut client: Client) -> mpsc::UnboundedReceiver<ServerMsg> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = client.ws.next().await {
            match frame {
                Message::Text(t) => {
                    let _ = tx.send(serde_json::from_str(&t).expect("server JSON"));
                }
                Message::Ping(_) => client.ws.flush().await.expect("send pong"),
                _ => {}
            }
        }
    });
    rx
}

/// Moves the paused clock one second and lets the runtime process what that released.
async fn tick() {
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..4 {
        // Give the kernel a real moment to move loopback bytes (it may defer that work when the
        // machine is busy), then let the runtime poll its sockets and run what became ready.
        std::thread::sleep(Duration::from_millis(1));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
}

#[tokio::test]
async fn a_silent_connection_leaves_after_the_heartbeat_timeout_and_the_resume_grace() {
    let server = TestServer::default().await;
    let mut alive = Client::connect(&server).await;
    let mut silent = Client::connect(&server).await;
    alive.join("r", "alive").await;
    silent.join("r", "silent").await;
    alive.recv().await; // peer_joined
    let alive_id = alive.id.clone();
    let mut alive = browser_like(alive);

    tokio::time::pause();
    // `silent` never reads again, so it never answers a ping.
    let mut seconds = 0;
    let left = loop {
        tick().await;
        seconds += 1;
        if let Ok(msg) = alive.try_recv() {
            break msg;
        }
        assert!(seconds < 90, "the silent peer was not dropped within 90 s");
    };
    assert_eq!(left, ServerMsg::PeerLeft { id: silent.id.clone(), reason: LeaveReason::Disconnected });
    // 40 s without an answer to pings, checked every 5 s from the connection's start (so the silent
    // peer is dropped 40–45 s after its last frame); then its place is kept 30 s for a resume. The
    // `peer_left` then crosses the hub, an outbox and loopback, which on a busy machine may take a
    // tick or two of this loop to be seen.
    assert!((70..=77).contains(&seconds), "dropped after {seconds} s");

    // The browser-like connection answered every ping: still there several timeouts later.
    for _ in 0..120 {
        tick().await;
    }
    assert!(
        matches!(alive.try_recv(), Err(mpsc::error::TryRecvError::Empty)),
        "{alive_id} got no message and was not closed"
    );
    tokio::time::resume();
    drop(silent);
}
