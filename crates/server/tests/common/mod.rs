//! Test harness: the real server on 127.0.0.1:0 and real WebSocket clients.
#![allow(dead_code)]

pub mod http;
pub mod page;
pub mod raw;
pub mod redis;
pub mod tls;

use futures_util::{SinkExt, StreamExt};
use huddle_protocol::{ClientMsg, ErrorCode, PeerId, ServerMsg};
use huddle_server::Config;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(huddle_server::serve(config, listener, async move {
            let _ = stopped.await;
        }));
        TestServer { addr, stop: Some(stop), task: Some(task) }
    }

    /// Like [`TestServer::start`], on a given address (e.g. the port of a server that stopped).
    pub async fn start_on(config: Config, addr: SocketAddr) -> TestServer {
        let listener = TcpListener::bind(addr).await.expect("bind the address again");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(huddle_server::serve(config, listener, async move {
            let _ = stopped.await;
        }));
        TestServer { addr, stop: Some(stop), task: Some(task) }
    }

    pub async fn default() -> TestServer {
        TestServer::start(Config::default()).await
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Triggers graceful shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().expect("not yet stopped").send(());
        let task = self.task.take().expect("not yet stopped");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("server stops in time")
            .expect("server task did not panic")
            .expect("server returned Ok");
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub id: PeerId,
}

impl Client {
    /// Connects and reads `welcome`.
    pub async fn connect(server: &TestServer) -> Client {
        Client::connect_to(server.addr).await
    }

    /// Connects to the server at `addr` (e.g. a `huddle` process) and reads `welcome`.
    pub async fn connect_to(addr: SocketAddr) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.expect("WebSocket handshake");
        let mut c = Client { ws, id: PeerId(String::new()) };
        match c.recv().await {
            ServerMsg::Welcome { id, protocol, .. } => {
                assert_eq!(protocol, huddle_protocol::PROTOCOL_VERSION);
                c.id = id;
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        c
    }

    pub async fn send(&mut self, msg: &ClientMsg) {
        let text = serde_json::to_string(msg).expect("serialise");
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// The next protocol message (pings are answered by tungstenite and skipped here).
    pub async fn recv(&mut self) -> ServerMsg {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{} waited {WAIT:?} for a message", self.id))
                .expect("connection open")
                .expect("valid frame");
            match frame {
                Message::Text(t) => {
                    return serde_json::from_str(&t).unwrap_or_else(|e| panic!("bad server JSON {e}: {t}"))
                }
                Message::Ping(_) => {
                    // tungstenite queued the pong; send it now, as a browser would.
                    self.ws.flush().await.expect("send pong");
                }
                Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next frame of any kind, or `None` when the connection ends.
    pub async fn next_frame(&mut self) -> Option<Message> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("frame or close in time") {
                Some(Ok(Message::Ping(_))) => continue,
                Some(Ok(m)) => return Some(m),
                _ => return None,
            }
        }
    }

    pub async fn join(&mut self, room: &str, name: &str) -> ServerMsg {
        self.send(&join(room, name)).await;
        let m = self.recv().await;
        assert!(matches!(m, ServerMsg::Joined { .. }), "expected joined, got {m:?}");
        m
    }

    /// [`Client::join`] by someone who was told the meeting is being recorded
    /// (`recording_ok`).
    pub async fn join_recorded(&mut self, room: &str, name: &str) -> ServerMsg {
        self.send(&join_recorded(room, name)).await;
        let m = self.recv().await;
        assert!(matches!(m, ServerMsg::Joined { .. }), "expected joined, got {m:?}");
        m
    }

    pub async fn expect_error(&mut self, code: ErrorCode) {
        match self.recv().await {
            ServerMsg::Error { code: got, message, .. } => {
                assert_eq!(got, code);
                assert!(!message.is_empty(), "errors carry a human sentence");
            }
            other => panic!("expected error {code}, got {other:?}"),
        }
    }

    /// Proves that nothing else is queued for this client: the hub answers in order, so if the
    /// very next message is the answer to this request, nothing was sent before it. (The request
    /// is one the server refuses, so it changes no state.)
    pub async fn barrier(&mut self) {
        self.send_raw(Message::text(r#"{"type":"barrier"}"#)).await;
        match self.recv().await {
            ServerMsg::Error { code: ErrorCode::UnknownType, .. } => {}
            other => panic!("expected nothing before the barrier, got {other:?}"),
        }
    }
}

/// [`join`] with `recording_ok`: the person accepts that the meeting is being recorded.
pub fn join_recorded(room: &str, name: &str) -> ClientMsg {
    match join(room, name) {
        ClientMsg::Join { protocol, room, name, audio, video, password, token, .. } => {
            ClientMsg::Join { protocol, room, name, audio, video, password, token, recording_ok: true }
        }
        _ => unreachable!("join makes a join"),
    }
}

pub fn join(room: &str, name: &str) -> ClientMsg {
    ClientMsg::Join {
        recording_ok: false,
        protocol: 1,
        room: room.into(),
        name: name.into(),
        audio: true,
        video: true,
        password: None,
        token: None,
    }
}
