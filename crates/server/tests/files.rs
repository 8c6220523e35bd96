//! Files shared through the server: offer over the WebSocket, upload and download over real HTTP.

mod common;

use common::http::{http, offer, sha256_hex};
use common::{Client, TestServer};
use huddle_protocol::{ClientMsg, ErrorCode, ServerMsg};
use huddle_server::config::TopologyMode;
use huddle_server::Config;

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
