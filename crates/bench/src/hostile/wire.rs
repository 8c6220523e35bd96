//! Raw HTTP and WebSocket bytes, for attackers that do what no well-behaved library would: stop
//! half-way through a request, send invalid UTF-8 or unmasked frames, announce a frame longer
//! than anything allowed. Also the client sockets themselves: bound to a chosen loopback
//! address (Linux routes all of 127/8 to loopback), optionally with a tiny receive buffer.

use anyhow::{bail, Context};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// Longest wait for a TCP connect, and for the answer to an HTTP request or upgrade.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_PING: u8 = 0x9;

/// A TCP connection to the server from `from`, with the receive buffer asked down to `rcvbuf`
/// bytes before the handshake (so that the window the server sees is small from the start).
pub async fn connect_from(from: Ipv4Addr, port: u16, rcvbuf: Option<u32>) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4().context("socket")?;
    if let Some(bytes) = rcvbuf {
        socket.set_recv_buffer_size(bytes).context("SO_RCVBUF")?;
    }
    socket.bind(SocketAddr::new(from.into(), 0)).with_context(|| format!("bind {from}"))?;
    let stream = timeout(CONNECT_TIMEOUT, socket.connect(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)))
        .await
        .context("TCP connect timed out")?
        .context("TCP connect")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The WebSocket upgrade request for `/ws`, as a non-browser client sends it (no `Origin`).
pub fn upgrade_request(port: u16) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Upgrades `stream` to a WebSocket by hand: sends the request, reads the answer's head and
/// checks it is `101`. Bytes after the head (the start of `welcome`) are read and dropped.
pub async fn raw_upgrade(stream: &mut TcpStream, port: u16) -> anyhow::Result<()> {
    stream.write_all(upgrade_request(port).as_bytes()).await.context("sending the upgrade")?;
    let head = timeout(CONNECT_TIMEOUT, read_head(stream)).await.context("no upgrade answer")??;
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or_default()).into_owned();
        bail!("upgrade refused: {line}");
    }
    Ok(())
}

/// Reads until the end of an HTTP head (`\r\n\r\n`), at most 16 KiB; returns everything read.
async fn read_head(stream: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 16 * 1024 {
            bail!("an HTTP head over 16 KiB");
        }
        let n = stream.read(&mut chunk).await.context("reading the answer")?;
        if n == 0 {
            bail!("connection closed before the answer");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// A WebSocket client (tungstenite) on a connection from `from`.
pub async fn ws_from(from: Ipv4Addr, port: u16, config: WebSocketConfig) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let tcp = connect_from(from, port, None).await?;
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (ws, _) = timeout(CONNECT_TIMEOUT, tokio_tungstenite::client_async_with_config(url, tcp, Some(config)))
        .await
        .context("WebSocket handshake timed out")?
        .context("WebSocket handshake")?;
    Ok(ws)
}

/// One client frame with `payload`, masked (as a client must) with the all-zero key, which
/// leaves the payload bytes as they are: the same bytes can be sent again and again.
pub fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = header(opcode, fin, payload.len() as u64, true);
    f.extend_from_slice(payload);
    f
}

/// A frame header announcing `len` payload bytes (none follow); `masked: false` breaks the rule
/// that clients mask.
pub fn header(opcode: u8, fin: bool, len: u64, masked: bool) -> Vec<u8> {
    let mut f = Vec::with_capacity(14);
    f.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    let mask = if masked { 0x80 } else { 0 };
    if len < 126 {
        f.push(mask | len as u8);
    } else if len <= u16::MAX as u64 {
        f.push(mask | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(mask | 127);
        f.extend_from_slice(&len.to_be_bytes());
    }
    if masked {
        f.extend_from_slice(&[0, 0, 0, 0]);
    }
    f
}

/// `GET path` with `Connection: close` on a new connection from `from`: `(status, body)`.
pub async fn http_get(from: Ipv4Addr, port: u16, path: &str, max_body: u64) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut tcp = connect_from(from, port, None).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await?;
    read_response(&mut tcp, max_body).await
}

/// `PUT path` with `body` on a new connection from `from`: `(status, body)`.
pub async fn http_put(from: Ipv4Addr, port: u16, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut tcp = connect_from(from, port, None).await?;
    let req = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await?;
    tcp.write_all(body).await?;
    read_response(&mut tcp, 64 * 1024).await
}

/// Reads a whole `Connection: close` answer (at most `max_body` bytes after the head).
async fn read_response(tcp: &mut TcpStream, max_body: u64) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut all = Vec::new();
    tcp.take(max_body + 16 * 1024).read_to_end(&mut all).await.context("reading the answer")?;
    let Some(end) = all.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("no complete HTTP answer ({} bytes)", all.len());
    };
    let head = String::from_utf8_lossy(&all[..end]);
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no HTTP status")?;
    Ok((status, all[end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_masked_with_a_zero_key() {
        assert_eq!(frame(OP_TEXT, true, b"hi"), vec![0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
        let long = frame(OP_BINARY, false, &[7u8; 300]);
        assert_eq!(&long[..8], &[0x02, 0x80 | 126, 0x01, 0x2C, 0, 0, 0, 0]);
        assert_eq!(long.len(), 8 + 300);
        assert_eq!(header(OP_TEXT, true, 1 << 40, false), vec![0x81, 127, 0, 0, 1, 0, 0, 0, 0, 0]);
    }
}
