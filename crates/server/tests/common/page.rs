//! A page's view of its session, for tests that resume it: its id and secret, and how many
//! messages it has seen, counted as the page counts them (`docs/protocol.md`, "Resuming").

use super::Client;
use futures_util::StreamExt;
use huddle_protocol::{PeerId, ServerMsg};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A page: its session's id and secret, and how many messages it has seen (for a resume).
pub struct Page {
    pub client: Client,
    pub secret: String,
    pub seen: u64,
}

impl Page {
    pub async fn open(addr: SocketAddr) -> Page {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.expect("handshake");
        let mut client = Client { ws, id: PeerId(String::new()) };
        match client.recv().await {
            ServerMsg::Welcome { id, resume, .. } => {
                client.id = id;
                Page { client, secret: resume, seen: 0 }
            }
            other => panic!("{other:?}"),
        }
    }

    pub async fn recv(&mut self) -> ServerMsg {
        let m = self.client.recv().await;
        if !matches!(m, ServerMsg::Welcome { .. } | ServerMsg::Bye { .. }) {
            self.seen += 1;
        }
        m
    }

    /// Reads until the server closes this connection (a `bye` may come first).
    pub async fn until_closed(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.client.ws.next()).await {
                Err(_) => panic!("{}'s connection was not closed within {within:?}", self.client.id),
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return,
                Ok(Some(Ok(Message::Text(t)))) => {
                    let m: ServerMsg = serde_json::from_str(&t).expect("server JSON");
                    assert!(matches!(m, ServerMsg::Bye { .. }), "before the close: {m:?}");
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Resumes through `addr` as a page does: tries again (every 250 ms, as the page's first
    /// retry) while the server closes before `welcome`, until `deadline`.
    pub async fn resume(&mut self, addr: SocketAddr, deadline: Instant) {
        loop {
            assert!(Instant::now() < deadline, "{} could not resume in time", self.client.id);
            let url = format!("ws://{addr}/ws?session={}&resume={}&seen={}", self.client.id, self.secret, self.seen);
            if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await {
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => {
                            match serde_json::from_str::<ServerMsg>(&t).expect("server JSON") {
                                ServerMsg::Welcome { id, resumed, .. } => {
                                    assert!(resumed, "{} started over as {id} instead of resuming", self.client.id);
                                    assert_eq!(id, self.client.id);
                                    self.client.ws = ws;
                                    return;
                                }
                                other => panic!("before welcome: {other:?}"),
                            }
                        }
                        Ok(Some(Ok(Message::Ping(_)))) => continue,
                        // Closed before `welcome`: not yet (the room's lease has not run out).
                        _ => break,
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
