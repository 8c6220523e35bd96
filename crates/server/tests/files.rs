//! Files shared through the server: offer over the WebSocket, upload and download over real HTTP.

mod common;

use common::{Client, TestServer};
use huddle_protocol::{ClientMsg, ErrorCode, ServerMsg};
use huddle_server::config::TopologyMode;
use huddle_server::Config;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn offer(name: &str, bytes: &[u8]) -> ClientMsg {
    ClientMsg::FileOffer {
        name: name.into(),
        size: bytes.len() as u64,
        mime: "text/plain".into(),
        sha256: sha256_hex(bytes),
    }
}

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection, read to the end.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read response");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        body = dechunk(&body);
    }
    HttpResponse { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).expect("ascii").trim(), 16).expect("hex size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// Files go through the server in `sfu` rooms only.
async fn sfu_server(config: Config) -> TestServer {
    TestServer::start(Config { topology: TopologyMode::Sfu, ..config }).await
}

async fn upload_url(c: &mut Client) -> String {
    match c.recv().await {
        ServerMsg::FileUpload { url, .. } => url,
        other => panic!("expected file_upload, got {other:?}"),
    }
}

#[tokio::test]
async fn a_file_is_uploaded_once_checked_and_downloaded_by_the_room() {
    let server = sfu_server(Config::default()).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.join("files", "Mina").await;
    b.join("files", "Jun").await;
    assert!(matches!(a.recv().await, ServerMsg::PeerJoined { .. }));
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    a.send(&offer("주간 보고.pdf", &bytes)).await;
    let url = upload_url(&mut a).await;

    let res = http(server.addr, "PUT", &url, &bytes).await;
    assert_eq!(res.status, 204, "{}", String::from_utf8_lossy(&res.body));
    for c in [&mut a, &mut b] {
        match c.recv().await {
            ServerMsg::File { file } => {
                assert_eq!(file.name, "주간 보고.pdf");
                assert_eq!(file.sender, "Mina");
                assert_eq!(file.size, bytes.len() as u64);
                assert_eq!(file.sha256, sha256_hex(&bytes));
            }
            other => panic!("expected file, got {other:?}"),
        }
    }
    let download = url.split('?').next().expect("path").to_string();
    let res = http(server.addr, "GET", &download, b"").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body, bytes, "the same bytes come back");
    assert_eq!(res.header("content-type"), Some("application/octet-stream"), "never rendered by the browser");
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
    assert!(res.header("content-disposition").is_some_and(|v| v.starts_with("attachment;")));

    // Uploading again is refused; so is the download once the room has emptied.
    assert_eq!(http(server.addr, "PUT", &url, &bytes).await.status, 409);
    a.send(&ClientMsg::Leave).await;
    b.send(&ClientMsg::Leave).await;
    assert!(matches!(a.recv().await, ServerMsg::Left { .. }));
    assert!(matches!(b.recv().await, ServerMsg::PeerLeft { .. }));
    // b became the host when a left.
    assert!(matches!(b.recv().await, ServerMsg::PeerUpdated { .. }));
    assert!(matches!(b.recv().await, ServerMsg::Left { .. }));
    assert_eq!(http(server.addr, "GET", &download, b"").await.status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_uploads_are_refused_and_nobody_is_told() {
    let server = sfu_server(Config::default()).await;
    let mut a = Client::connect(&server).await;
    a.join("files", "Mina").await;
    let bytes = b"hello, huddle".to_vec();

    a.send(&offer("a.txt", &bytes)).await;
    let url = upload_url(&mut a).await;
    let wrong_key = format!("{}?key=00000000000000000000000000000000", url.split('?').next().expect("path"));
    assert_eq!(http(server.addr, "PUT", &wrong_key, &bytes).await.status, 404);
    let mut tampered = bytes.clone();
    tampered[0] ^= 1;
    let res = http(server.addr, "PUT", &url, &tampered).await;
    assert_eq!(res.status, 400);
    assert!(String::from_utf8_lossy(&res.body).contains("file_mismatch"));
    assert_eq!(http(server.addr, "PUT", &url, &bytes).await.status, 404, "a failed upload ends its offer");

    a.send(&offer("b.txt", &bytes)).await;
    let url = upload_url(&mut a).await;
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"and more");
    assert_eq!(http(server.addr, "PUT", &url, &longer).await.status, 413);
    a.barrier().await;

    // Offers the server refuses outright.
    let cases = [
        ClientMsg::FileOffer { name: "x".into(), size: 0, mime: String::new(), sha256: sha256_hex(b"") },
        ClientMsg::FileOffer { name: "x".into(), size: 1 << 40, mime: String::new(), sha256: sha256_hex(b"") },
        ClientMsg::FileOffer { name: "../x".into(), size: 1, mime: String::new(), sha256: sha256_hex(b"") },
        ClientMsg::FileOffer { name: "x".into(), size: 1, mime: String::new(), sha256: "beef".into() },
    ];
    for c in cases {
        a.send(&c).await;
        a.expect_error(ErrorCode::InvalidFile).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_storage_limit_holds() {
    let server = sfu_server(Config { file_storage_bytes: 100, ..Config::default() }).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.join("files", "Mina").await;
    b.join("files", "Jun").await;
    assert!(matches!(a.recv().await, ServerMsg::PeerJoined { .. }));
    a.send(&offer("a.bin", &[7u8; 80])).await;
    let _ = upload_url(&mut a).await;
    b.send(&offer("b.bin", &[8u8; 30])).await;
    b.expect_error(ErrorCode::FileStorageFull).await;
    // Leaving frees what was offered and never uploaded.
    a.send(&ClientMsg::Leave).await;
    // a's leave and b's offer travel on different connections: b offers once it saw a go.
    loop {
        match b.recv().await {
            ServerMsg::PeerLeft { .. } => break,
            ServerMsg::PeerUpdated { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    b.send(&offer("b.bin", &[8u8; 30])).await;
    loop {
        match b.recv().await {
            ServerMsg::FileUpload { .. } => break,
            ServerMsg::PeerUpdated { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    server.shutdown().await;
}
