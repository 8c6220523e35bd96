//! Files through the server under attack (issue 15, items 9 and 11): storage held without
//! uploading, quotas per participant, address and room, deadlines for offers, uploads and
//! downloads, files only in `sfu` rooms, private modes, and the clean-up of a crashed server's files.
//! Each test performs the attack against the real server and real sockets; several client
//! addresses come from binding to 127.0.0.x.

mod common;

use common::{Client, TestServer, WAIT};
use huddle_protocol::{ClientMsg, ErrorCode, ServerMsg};
use huddle_server::config::TopologyMode;
use huddle_server::Config;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::MaybeTlsStream;

const MIB: u64 = 1024 * 1024;

fn sfu(config: Config) -> Config {
    Config { topology: TopologyMode::Sfu, ..config }
}

fn local(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn offer(name: &str, bytes: &[u8]) -> ClientMsg {
    ClientMsg::FileOffer { name: name.into(), size: bytes.len() as u64, mime: String::new(), sha256: sha256_hex(bytes) }
}

/// An offer of `size` bytes that will never be uploaded.
fn empty_offer(size: u64) -> ClientMsg {
    ClientMsg::FileOffer { name: "big.bin".into(), size, mime: String::new(), sha256: sha256_hex(b"") }
}

/// A TCP connection to the server from `ip` (127.0.0.x), optionally with a small receive buffer.
async fn tcp_from(ip: IpAddr, server: SocketAddr, recv_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(ip, 0)).expect("bind a loopback address");
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).expect("receive buffer");
    }
    socket.connect(server).await.expect("connect")
}

/// A WebSocket client from `ip`, past its `welcome`.
async fn client_from(server: &TestServer, ip: IpAddr) -> Client {
    let tcp = tcp_from(ip, server.addr, None).await;
    let (ws, _) =
        tokio_tungstenite::client_async(server.url(), MaybeTlsStream::Plain(tcp)).await.expect("WebSocket handshake");
    let mut c = Client { ws, id: huddle_protocol::PeerId(String::new()) };
    match c.recv().await {
        ServerMsg::Welcome { id, .. } => c.id = id,
        other => panic!("expected welcome, got {other:?}"),
    }
    c
}

/// The next message that is not about other people coming, going or sharing.
async fn answer(c: &mut Client) -> ServerMsg {
    loop {
        match c.recv().await {
            ServerMsg::PeerJoined { .. }
            | ServerMsg::PeerLeft { .. }
            | ServerMsg::PeerUpdated { .. }
            | ServerMsg::File { .. }
            | ServerMsg::Topology { .. } => continue,
            other => return other,
        }
    }
}

async fn upload_url(c: &mut Client) -> String {
    match answer(c).await {
        ServerMsg::FileUpload { url, .. } => url,
        other => panic!("{}: expected file_upload, got {other:?}", c.id),
    }
}

async fn refused(c: &mut Client) -> ErrorCode {
    match answer(c).await {
        ServerMsg::Error { code, .. } => code,
        other => panic!("{}: expected an error, got {other:?}", c.id),
    }
}

/// Sends a request head (and `body`) on `s`.
async fn request(s: &mut TcpStream, method: &str, path: &str, length: usize, body: &[u8]) {
    send_request(s, method, path, length, body, "Connection: close\r\n").await;
}

/// [`request`] as a browser sends it: the connection is to be kept alive.
async fn request_keep_alive(s: &mut TcpStream, method: &str, path: &str, length: usize, body: &[u8]) {
    send_request(s, method, path, length, body, "").await;
}

async fn send_request(s: &mut TcpStream, method: &str, path: &str, length: usize, body: &[u8], extra: &str) {
    let head = format!("{method} {path} HTTP/1.1\r\nHost: huddle\r\nContent-Length: {length}\r\n{extra}\r\n");
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
}

/// `A` offers `bytes` in room `r` from 127.0.0.1 and starts its upload on a kept-alive
/// connection, sending the first `sent` bytes.
async fn begin_upload(server: &TestServer, bytes: &[u8], sent: usize) -> TcpStream {
    let mut a = client_from(server, local(1)).await;
    a.join("r", "A").await;
    a.send(&offer("a.bin", bytes)).await;
    let url = upload_url(&mut a).await;
    let mut put = tcp_from(local(1), server.addr, None).await;
    request_keep_alive(&mut put, "PUT", &url, bytes.len(), &bytes[..sent]).await;
    put
}

/// Someone else, in another room, can reserve `size` bytes: what a cut-off upload held is free.
async fn the_store_takes(server: &TestServer, size: u64) {
    let mut b = client_from(server, local(2)).await;
    b.join("other", "B").await;
    b.send(&empty_offer(size)).await;
    let _ = upload_url(&mut b).await;
}

/// Reads a response to its end: the status and the body (not de-chunked).
async fn response(s: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await.expect("an answer in time").expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let status = String::from_utf8_lossy(&raw[..split]).split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
    (status, raw[split + 4..].to_vec())
}

async fn http(ip: IpAddr, server: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = tcp_from(ip, server, None).await;
    request(&mut s, method, path, body.len(), body).await;
    response(&mut s).await
}

/// Offers and uploads `bytes` as `c`; returns the download path once the room was told.
async fn share(server: &TestServer, c: &mut Client, ip: IpAddr, bytes: &[u8]) -> String {
    c.send(&offer("shared.bin", bytes)).await;
    let url = upload_url(c).await;
    let (status, body) = http(ip, server.addr, "PUT", &url, bytes).await;
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
    loop {
        match c.recv().await {
            ServerMsg::File { file } if file.from == c.id => return file.url,
            ServerMsg::File { .. } | ServerMsg::PeerJoined { .. } | ServerMsg::PeerLeft { .. } => continue,
            ServerMsg::PeerUpdated { .. } => continue,
            other => panic!("expected our file, got {other:?}"),
        }
    }
}

/// The reported attack: six connections, each alone in a room, offer 1 GiB between them and never
/// upload a byte. Every other room must still be able to share.
#[tokio::test]
async fn offers_never_uploaded_do_not_starve_other_rooms() {
    let server = TestServer::start(sfu(Config::default())).await;
    let mut attackers = Vec::new();
    let mut reserved = 0;
    let mut refusals = Vec::new();
    for i in 0..6 {
        let mut a = client_from(&server, local(1)).await;
        a.join(&format!("hoard-{i}"), "Hoarder").await;
        for _ in 0..2 {
            a.send(&empty_offer(90 * MIB)).await;
            match answer(&mut a).await {
                ServerMsg::FileUpload { .. } => reserved += 90 * MIB,
                ServerMsg::Error { code, .. } => refusals.push(code),
                other => panic!("unexpected {other:?}"),
            }
        }
        attackers.push(a);
    }
    let mut victim = client_from(&server, local(2)).await;
    victim.join("work", "Mina").await;
    victim.send(&empty_offer(50 * MIB)).await;
    let _ = upload_url(&mut victim).await;
    assert!(reserved <= Config::default().file_ip_bytes, "one address reserved {reserved} bytes");
    assert!(refusals.iter().all(|c| *c == ErrorCode::FileQuota), "the address quota stopped the hoarder: {refusals:?}");
    server.shutdown().await;
}

/// Quotas per participant, per address and per room, with real uploads (so the two-offers-waiting
/// rule is not what stops them); files of a room that empties no longer count.
#[tokio::test]
async fn each_quota_holds_and_frees_with_its_room() {
    let config = Config {
        max_file_bytes: 1000,
        file_connection_bytes: 2000,
        file_ip_bytes: 3000,
        file_room_bytes: 4000,
        file_storage_bytes: 1_000_000,
        ..Config::default()
    };
    let server = TestServer::start(sfu(config)).await;
    let kib = vec![1u8; 1000];
    // Per participant: two files shared, then nothing more.
    let mut a = client_from(&server, local(1)).await;
    a.join("r1", "A").await;
    share(&server, &mut a, local(1), &kib).await;
    share(&server, &mut a, local(1), &kib).await;
    a.send(&empty_offer(1)).await;
    assert_eq!(refused(&mut a).await, ErrorCode::FileQuota, "over the participant's quota");
    // Per address: a second connection from it, in another room.
    let mut b = client_from(&server, local(1)).await;
    b.join("r2", "B").await;
    share(&server, &mut b, local(1), &kib).await;
    b.send(&empty_offer(1)).await;
    assert_eq!(refused(&mut b).await, ErrorCode::FileQuota, "over the address's quota");
    // Per room: two more people from other addresses fill r1.
    let mut c = client_from(&server, local(2)).await;
    c.join("r1", "C").await;
    share(&server, &mut c, local(2), &kib).await;
    let mut d = client_from(&server, local(3)).await;
    d.join("r1", "D").await;
    share(&server, &mut d, local(3), &kib).await;
    d.send(&empty_offer(1)).await;
    assert_eq!(refused(&mut d).await, ErrorCode::FileQuota, "over the room's quota");
    // Someone else elsewhere is not affected.
    let mut e = client_from(&server, local(4)).await;
    e.join("r3", "E").await;
    e.send(&empty_offer(1000)).await;
    let _ = upload_url(&mut e).await;
    // r1 empties: its files go, and with them what they counted against A's address.
    for c in [&mut a, &mut c, &mut d] {
        c.send(&ClientMsg::Leave).await;
        assert!(matches!(answer(c).await, ServerMsg::Left { .. }));
    }
    b.send(&empty_offer(1000)).await;
    let _ = upload_url(&mut b).await;
    server.shutdown().await;
}

/// In `p2p` rooms the pages send files to each other; the server refuses to store them. Once the
/// room moves to the SFU, offers are taken.
#[tokio::test]
async fn files_go_through_the_server_only_in_sfu_rooms() {
    let server = TestServer::default().await; // auto: peer-to-peer until the third person
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.join("mesh", "A").await;
    b.join("mesh", "B").await;
    a.send(&empty_offer(1000)).await;
    assert_eq!(refused(&mut a).await, ErrorCode::NotSfuRoom);
    let mut c = Client::connect(&server).await;
    c.join("mesh", "C").await;
    loop {
        match a.recv().await {
            ServerMsg::Topology { .. } => break,
            ServerMsg::PeerJoined { .. } => continue,
            other => panic!("expected the move to the SFU, got {other:?}"),
        }
    }
    a.send(&empty_offer(1000)).await;
    let _ = upload_url(&mut a).await;
    server.shutdown().await;
}

/// An offer whose upload does not start in time expires and frees its reservation.
#[tokio::test]
async fn an_offer_not_uploaded_in_time_expires() {
    let timeout = Duration::from_secs(1);
    let config =
        Config { file_transfer_timeout: timeout, file_storage_bytes: 1000, max_file_bytes: 1000, ..Config::default() };
    let server = TestServer::start(sfu(config)).await;
    let bytes = vec![5u8; 1000];
    let mut a = client_from(&server, local(1)).await;
    a.join("r", "A").await;
    a.send(&offer("a.bin", &bytes)).await;
    let url = upload_url(&mut a).await;
    let mut b = client_from(&server, local(2)).await;
    b.join("other", "B").await;
    b.send(&empty_offer(10)).await;
    assert_eq!(refused(&mut b).await, ErrorCode::FileStorageFull, "the offer holds the storage");
    // Nothing to await: the deadline itself is under test.
    tokio::time::sleep(timeout + Duration::from_millis(500)).await;
    let (status, body) = http(local(1), server.addr, "PUT", &url, &bytes).await;
    assert_eq!(status, 404, "an expired offer takes no upload: {}", String::from_utf8_lossy(&body));
    b.send(&empty_offer(10)).await;
    let _ = upload_url(&mut b).await;
    server.shutdown().await;
}

/// An upload that stops sending is cut off after the timeout, and its reservation freed.
#[tokio::test]
async fn a_stalled_upload_is_cut_off() {
    let config = Config {
        file_transfer_timeout: Duration::from_secs(1),
        file_storage_bytes: 1000,
        max_file_bytes: 1000,
        ..Config::default()
    };
    let server = TestServer::start(sfu(config)).await;
    // Kept alive, as a browser's: the server must still close the connection after its answer
    // (`response` reads to the end), not keep it for the rest of the body.
    let mut put = begin_upload(&server, &[5u8; 1000], 100).await;
    let started = Instant::now();
    let (status, body) = response(&mut put).await;
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("upload_too_slow"));
    assert!(started.elapsed() < Duration::from_secs(3), "cut off after about the timeout");
    the_store_takes(&server, 1000).await;
    server.shutdown().await;
}

/// An upload that trickles (never stalling long enough for the timeout) is cut off at its
/// deadline: the timeout plus its size at the minimum rate.
#[tokio::test]
async fn a_trickled_upload_is_cut_off_at_its_deadline() {
    let config = Config {
        file_transfer_timeout: Duration::from_secs(1),
        file_min_rate: 1000,
        file_storage_bytes: 1000,
        max_file_bytes: 1000,
        ..Config::default()
    };
    let server = TestServer::start(sfu(config)).await;
    let bytes = vec![5u8; 1000];
    let mut put = begin_upload(&server, &bytes, 0).await;
    // 10 bytes every 200 ms: 50 bytes a second, 20 s for the whole file; the deadline is 2 s.
    let started = Instant::now();
    let mut sent = 0;
    let mut raw = Vec::new();
    while raw.is_empty() && sent < bytes.len() && started.elapsed() < Duration::from_secs(8) {
        if put.write_all(&bytes[sent..sent + 10]).await.is_err() {
            // Cut off; the answer may still be there to read.
            read_some(&mut put, &mut raw, Duration::from_secs(1)).await;
            break;
        }
        sent += 10;
        read_some(&mut put, &mut raw, Duration::from_millis(200)).await;
    }
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "after {sent} bytes in {:?}: {text:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(4), "cut off at about its deadline");
    // The connection goes with the answer, even while the client trickles on: nothing of it is
    // held past the deadline.
    let answered = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = loop {
        if answered.elapsed() > Duration::from_secs(5) {
            break false;
        }
        if put.write_all(&[5u8; 10]).await.is_err() {
            break true;
        }
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(200), put.read(&mut buf)).await {
            break true;
        }
    };
    assert!(closed, "the connection of a cut-off upload is still open {:?} after its answer", answered.elapsed());
    the_store_takes(&server, 1000).await;
    server.shutdown().await;
}

/// Appends what arrives on `s` within `wait` (nothing on a timeout or an error).
async fn read_some(s: &mut TcpStream, into: &mut Vec<u8>, wait: Duration) {
    let mut buf = [0u8; 1024];
    if let Ok(Ok(n)) = tokio::time::timeout(wait, s.read(&mut buf)).await {
        into.extend_from_slice(&buf[..n]);
    }
}

/// Waits until a file exists under `dir` (an upload has begun: its file is made as it starts).
async fn a_file_appears_under(dir: &Path) {
    let deadline = Instant::now() + WAIT;
    while modes(dir).iter().all(|(_, _, is_dir)| *is_dir) {
        assert!(Instant::now() < deadline, "no upload began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An upload under way is called off as soon as its room closes, rather than running on.
#[tokio::test]
async fn an_upload_ends_when_its_room_closes() {
    let dir = temp_dir("closing");
    let config = Config { max_file_bytes: 1000, file_dir: Some(dir.clone()), ..Config::default() };
    let server = TestServer::start(sfu(config)).await;
    let bytes = vec![5u8; 1000];
    let mut a = client_from(&server, local(1)).await;
    a.join("r", "A").await;
    a.send(&offer("a.bin", &bytes)).await;
    let url = upload_url(&mut a).await;
    let mut put = tcp_from(local(1), server.addr, None).await;
    request(&mut put, "PUT", &url, bytes.len(), &bytes[..100]).await;
    std::fs::create_dir_all(&dir).expect("the directory (made by the server, or before it)");
    a_file_appears_under(&dir).await;
    a.send(&ClientMsg::Leave).await;
    assert!(matches!(answer(&mut a).await, ServerMsg::Left { .. }));
    let (status, body) = response(&mut put).await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Upload URLs are capabilities for one offer: another's id with one's own key, a URL of an offer
/// whose owner left, and a second upload are all refused.
#[tokio::test]
async fn upload_urls_work_only_for_their_own_offer() {
    let server = TestServer::start(sfu(Config::default())).await;
    let mut a = client_from(&server, local(1)).await;
    let mut b = client_from(&server, local(2)).await;
    a.join("r", "A").await;
    b.join("r", "B").await;
    let a_bytes = b"from a".to_vec();
    let b_bytes = b"from b".to_vec();
    a.send(&offer("a.txt", &a_bytes)).await;
    let a_url = upload_url(&mut a).await;
    b.send(&offer("b.txt", &b_bytes)).await;
    let b_url = upload_url(&mut b).await;
    let a_id = a_url.split('?').next().expect("path");
    let b_key = b_url.split('?').nth(1).expect("query");
    let (status, _) = http(local(2), server.addr, "PUT", &format!("{a_id}?{b_key}"), &b_bytes).await;
    assert_eq!(status, 404, "b's key does not open a's upload");
    // a leaves before uploading: the URL dies with the offer.
    a.send(&ClientMsg::Leave).await;
    assert!(matches!(answer(&mut a).await, ServerMsg::Left { .. }));
    let (status, _) = http(local(1), server.addr, "PUT", &a_url, &a_bytes).await;
    assert_eq!(status, 404, "an offer goes with its owner");
    let (status, _) = http(local(2), server.addr, "PUT", &b_url, &b_bytes).await;
    assert_eq!(status, 204);
    let (status, _) = http(local(2), server.addr, "PUT", &b_url, &b_bytes).await;
    assert_eq!(status, 409, "once");
    server.shutdown().await;
}

/// Open handles of the server on files under `dir` (the server runs in this process).
fn open_handles_under(dir: &Path) -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|p| p.starts_with(dir))
        .count()
}

/// Downloads that are never read: one address gets a bounded number at once, and each lets go of
/// its file after the timeout, so stalled readers hold neither file handles nor deleted files.
#[tokio::test]
async fn stalled_downloads_are_bounded_and_let_go() {
    let dir = temp_dir("downloads");
    let config =
        Config { file_transfer_timeout: Duration::from_secs(1), file_dir: Some(dir.clone()), ..Config::default() };
    let server = TestServer::start(sfu(config)).await;
    let mut a = client_from(&server, local(1)).await;
    a.join("r", "A").await;
    let bytes: Vec<u8> = (0..16 * MIB as u32).map(|i| (i % 251) as u8).collect();
    let url = share(&server, &mut a, local(1), &bytes).await;

    // A reader that asks and never reads, with a small window so the server's writes block.
    let mut stalled = Vec::new();
    let mut refused_at = None;
    for i in 0..100 {
        let mut s = tcp_from(local(9), server.addr, Some(4096)).await;
        request(&mut s, "GET", &url, 0, &[]).await;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.expect("a status line");
        if head.starts_with(b"HTTP/1.1 429") {
            refused_at = Some(i);
            break;
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
        stalled.push(s);
    }
    let cap = refused_at.expect("one address cannot open downloads without end");
    assert!(cap >= 8, "a few downloads at once are fine ({cap})");
    // Another address is not affected, and gets the whole file.
    let (status, body) = http(local(10), server.addr, "GET", &url, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), bytes.len());
    // The stalled downloads let go of the file after the timeout.
    let deadline = Instant::now() + WAIT;
    while open_handles_under(&dir) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open_handles_under(&dir), 0, "no file handle held for a reader that stopped");
    let mut s = tcp_from(local(9), server.addr, None).await;
    request(&mut s, "GET", &url, 0, &[]).await;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.expect("a status line");
    assert!(head.starts_with(b"HTTP/1.1 200"), "the address may download again: {}", String::from_utf8_lossy(&head));
    // Gone before the shutdown, which waits for every HTTP connection.
    drop((s, stalled));
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn temp_dir(name: &str) -> PathBuf {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).expect("random");
    let tag: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::env::temp_dir().join(format!("huddle-test-{name}-{tag}"))
}

/// Every directory under `root` (itself included) and every file, with its permission bits.
fn modes(root: &Path) -> Vec<(PathBuf, u32, bool)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("metadata");
        out.push((p.clone(), meta.permissions().mode() & 0o777, meta.is_dir()));
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&p).expect("list").map(|e| e.expect("entry").path()));
        }
    }
    out
}

fn assert_private(root: &Path) {
    for (path, mode, is_dir) in modes(root) {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}, not {want:o}", path.display());
    }
}

/// Shared files are readable by the server's user only.
#[tokio::test]
async fn shared_files_are_private() {
    let dir = temp_dir("private").join("files");
    let server = TestServer::start(sfu(Config { file_dir: Some(dir.clone()), ..Config::default() })).await;
    let mut a = client_from(&server, local(1)).await;
    a.join("r", "A").await;
    share(&server, &mut a, local(1), b"a private file").await;
    let files = modes(&dir).iter().filter(|(_, _, is_dir)| !is_dir).count();
    assert_eq!(files, 1, "the shared file is there");
    assert_private(&dir);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(dir.parent().expect("parent"));
}

/// The data directory, its `tls/` and every key in them are the server's user's only.
#[tokio::test]
async fn the_data_directory_is_private() {
    let data = temp_dir("data").join("nested").join("huddle");
    let config =
        Config { data_dir: Some(data.clone()), tls: huddle_server::config::Tls::SelfSigned, ..Config::default() };
    let server = TestServer::start(config).await;
    // Served: everything is made by now (a plain request to the HTTPS port is sent over to it).
    let (status, _) = http(local(1), server.addr, "GET", "/", &[]).await;
    assert_eq!(status, 308);
    assert!(data.join("tls").is_dir() && data.join("invite.key").is_file());
    assert_private(data.parent().expect("nested"));
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(data.parent().and_then(Path::parent).expect("root"));
}

/// A pid no process has: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().expect("spawn");
    let pid = child.id();
    child.wait().expect("reaped");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    pid
}

/// A crashed server's file directory is removed at the next start, and nothing else is: not a
/// live process's, not another name, not a link, not a plain file.
#[tokio::test]
async fn a_crashed_servers_files_are_removed_at_start() {
    let parent = temp_dir("stale");
    std::fs::create_dir_all(&parent).expect("parent");
    let dead = dead_pid();
    let me = std::process::id();
    let mkdir_with_file = |name: &str| {
        let d = parent.join(name);
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(d.join("0123456789abcdef0123456789abcdef"), b"left behind").expect("file");
        d
    };
    let stale = mkdir_with_file(&format!("huddle-files-{dead}-0"));
    let stale2 = mkdir_with_file(&format!("huddle-files-{dead}-3"));
    let live = mkdir_with_file(&format!("huddle-files-{me}-999999"));
    let init = mkdir_with_file("huddle-files-1-0");
    let other = mkdir_with_file("huddle-files-x-0");
    let unrelated = mkdir_with_file("photos");
    let target = mkdir_with_file("link-target");
    let link = parent.join(format!("huddle-files-{dead}-1"));
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let plain = parent.join(format!("huddle-files-{dead}-2"));
    std::fs::write(&plain, b"a file, not a directory").expect("file");
    // What an older huddle left straight in --file-dir: files named by their 128-bit id.
    let legacy = parent.join("fedcba9876543210fedcba9876543210");
    std::fs::write(&legacy, b"old upload").expect("file");
    let notes = parent.join("notes.txt");
    std::fs::write(&notes, b"the operator's").expect("file");

    let server = TestServer::start(sfu(Config { file_dir: Some(parent.clone()), ..Config::default() })).await;
    let _ = Client::connect(&server).await; // started

    assert!(!stale.exists() && !stale2.exists(), "a dead server's directories are removed");
    assert!(!legacy.exists(), "an older huddle's leftovers in --file-dir are removed");
    for kept in [&live, &init, &other, &unrelated, &target] {
        assert!(kept.join("0123456789abcdef0123456789abcdef").exists(), "{} is kept", kept.display());
    }
    assert!(std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()), "a link is left alone");
    assert!(plain.is_file() && notes.is_file(), "other files are left alone");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&parent);
}
