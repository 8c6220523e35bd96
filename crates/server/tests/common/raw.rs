//! A WebSocket client written by hand, for tests that need what a library client hides: a chosen
//! source address and receive buffer, frames of any size or content (invalid UTF-8, unmasked,
//! over the limit), the exact close code, and reading — or not reading — at will.

use huddle_protocol::ServerMsg;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long a read may wait before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A TCP connection to `server` from `local` (a loopback address such as 127.0.0.2), with a
/// receive buffer of about `recv_buffer` bytes if given.
pub async fn tcp(server: SocketAddr, local: &str, recv_buffer: Option<u32>) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    if let Some(size) = recv_buffer {
        sock.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    sock.bind(format!("{local}:0").parse().expect("address")).expect("bind a loopback address");
    sock.connect(server).await.expect("connect")
}

/// A TCP connection to `server` from `local`, or why not.
pub async fn try_tcp(server: SocketAddr, local: &str) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(format!("{local}:0").parse().expect("address"))?;
    sock.connect(server).await
}

/// What arrived.
#[derive(Debug, PartialEq)]
pub enum Got {
    Text(String),
    Binary(Vec<u8>),
    Ping,
    Pong,
    /// A close frame and its code (`None`: no code).
    Close(Option<u16>),
    /// The TCP connection ended (FIN) without more.
    Eof,
    /// The TCP connection was reset, or another read error.
    Reset,
}

impl Got {
    /// The protocol message of a text frame.
    pub fn msg(&self) -> Option<ServerMsg> {
        match self {
            Got::Text(t) => serde_json::from_str(t).ok(),
            _ => None,
        }
    }
}

pub struct RawWs {
    pub tcp: TcpStream,
    buf: Vec<u8>,
    /// Fragments of a message being put together: its opcode and bytes so far.
    partial: Option<(u8, Vec<u8>)>,
}

impl RawWs {
    /// Opens a WebSocket on `tcp` (`path` with its query, e.g. `/ws`); panics unless upgraded.
    pub async fn open(mut tcp: TcpStream, path: &str) -> RawWs {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.expect("write the upgrade request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk)).await.expect("answered in time").expect("read");
            assert!(n > 0, "closed before answering the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        buf.drain(..end);
        RawWs { tcp, buf, partial: None }
    }

    /// The socket and the bytes read from it but not yet parsed.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.tcp, self.buf)
    }

    /// [`tcp`] then [`RawWs::open`] on `/ws`.
    pub async fn connect(server: SocketAddr, local: &str, recv_buffer: Option<u32>) -> RawWs {
        RawWs::open(tcp(server, local, recv_buffer).await, "/ws").await
    }

    /// Writes one frame, masked as a client must (`masked: false` breaks the protocol).
    pub async fn send_frame(&mut self, opcode: u8, fin: bool, payload: &[u8], masked: bool) {
        let _ = self.tcp.write_all(&frame(opcode, fin, payload, masked)).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(0x1, true, text.as_bytes(), true).await;
    }

    pub async fn send_msg(&mut self, msg: &huddle_protocol::ClientMsg) {
        self.send_text(&serde_json::to_string(msg).expect("serialise")).await;
    }

    pub async fn send_pong(&mut self) {
        self.send_frame(0xA, true, b"", true).await;
    }

    /// The next message (fragments put together), control frame or end of the connection.
    pub async fn next(&mut self) -> Got {
        tokio::time::timeout(WAIT, self.next_untimed()).await.unwrap_or_else(|_| panic!("nothing within {WAIT:?}"))
    }

    /// [`RawWs::next`] without a deadline (the caller bounds it).
    pub async fn next_untimed(&mut self) -> Got {
        loop {
            match self.parse() {
                Some((opcode, fin, payload)) => {
                    let whole = match (opcode, self.partial.take()) {
                        (0x0, Some((first, mut bytes))) => {
                            bytes.extend_from_slice(&payload);
                            if !fin {
                                self.partial = Some((first, bytes));
                                continue;
                            }
                            (first, bytes)
                        }
                        (0x1 | 0x2, None) if !fin => {
                            self.partial = Some((opcode, payload));
                            continue;
                        }
                        (op, partial) => {
                            // A control frame may come between fragments.
                            self.partial = partial;
                            (op, payload)
                        }
                    };
                    return match whole {
                        (0x1, bytes) => Got::Text(String::from_utf8(bytes).expect("the server sends UTF-8")),
                        (0x2, bytes) => Got::Binary(bytes),
                        (0x8, bytes) => {
                            Got::Close((bytes.len() >= 2).then(|| u16::from_be_bytes([bytes[0], bytes[1]])))
                        }
                        (0x9, _) => Got::Ping,
                        (0xA, _) => Got::Pong,
                        (op, _) => panic!("unexpected opcode {op:#x}"),
                    };
                }
                None => {
                    let mut chunk = [0u8; 16 * 1024];
                    match self.tcp.read(&mut chunk).await {
                        Ok(0) => return Got::Eof,
                        Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                        Err(_) => return Got::Reset,
                    }
                }
            }
        }
    }

    /// The next protocol message, skipping pings and pongs.
    pub async fn recv(&mut self) -> ServerMsg {
        loop {
            match self.next().await {
                Got::Ping | Got::Pong => continue,
                got => return got.msg().unwrap_or_else(|| panic!("expected a message, got {got:?}")),
            }
        }
    }

    /// Everything until the connection ends (or `within` passes: then the last entry is not an
    /// end), pings and pongs left out.
    pub async fn until_end(&mut self, within: Duration) -> Vec<Got> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.next_untimed()).await {
                Err(_) => return got,
                Ok(Got::Ping | Got::Pong) => {}
                Ok(end @ (Got::Eof | Got::Reset)) => {
                    got.push(end);
                    return got;
                }
                Ok(g) => got.push(g),
            }
        }
    }

    /// One whole frame from the buffer, if there is one.
    fn parse(&mut self) -> Option<(u8, bool, Vec<u8>)> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[1] & 0x80, 0, "the server masked a frame");
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize, 10),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < at + len {
            return None;
        }
        let (fin, opcode) = (b[0] & 0x80 != 0, b[0] & 0x0f);
        let payload = b[at..at + len].to_vec();
        self.buf.drain(..at + len);
        // Tests that measure the server's memory count this process's too: keep no large
        // buffer of the test client's behind.
        self.buf.shrink_to(4 * 1024);
        Some((opcode, fin, payload))
    }
}

/// One client frame.
pub fn frame(opcode: u8, fin: bool, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A frame header announcing `len` bytes of masked text, without the bytes.
pub fn text_header(len: u64) -> Vec<u8> {
    let mut out = vec![0x81, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    out
}

/// `GET path` over `tcp` with keep-alive; the status code. Reads exactly one response.
pub async fn get(tcp: &mut TcpStream, path: &str) -> u16 {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
            }
        }
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk)).await.expect("answered in time").expect("read");
        assert!(n > 0, "closed before the response ended");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whether the peer has closed `tcp` (EOF or reset) within `within`; reads and drops anything
/// before that.
pub async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    let read_to_end = async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end).await.is_ok()
}

/// `/metrics` of the server at `addr`, as series (`name{labels}`) → value.
pub async fn metrics(addr: SocketAddr) -> std::collections::HashMap<String, f64> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw)).await.expect("answered in time").expect("read");
    let text = String::from_utf8(raw).expect("UTF-8");
    let body = text.split_once("\r\n\r\n").expect("a head and a body").1;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// One series of `/metrics`.
pub async fn metric(addr: SocketAddr, key: &str) -> f64 {
    *metrics(addr).await.get(key).unwrap_or_else(|| panic!("{key} missing"))
}
