//! HTTPS: the real server with a self-signed certificate, reached by a TLS client that trusts
//! exactly that certificate (as a user who checked the printed fingerprint does).

mod common;

use common::tls::{pinned, tls_to};
use common::WAIT;
use futures_util::StreamExt;
use huddle_protocol::ServerMsg;
use huddle_server::config::Tls;
use huddle_server::{tls, Config};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn the_page_and_the_websocket_over_https_with_a_self_signed_certificate() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let setup = tls::setup(&Tls::SelfSigned, &names, None).expect("certificate").expect("TLS on");
    let fingerprint = setup.fingerprint.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = Config { tls: Tls::SelfSigned, ..Config::default() };
    let server = tokio::spawn(huddle_server::serve_with(config, listener, Some(setup), async move {
        let _ = stopped.await;
    }));
    let connector = pinned(&fingerprint);

    // Plain HTTP to the HTTPS port (an address typed without https://) is sent over to HTTPS.
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    let host = format!("localhost:{}", addr.port());
    let request = format!("GET /r/team?x=1 HTTP/1.1\r\nHost: {host}\r\n\r\n");
    plain.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut answer)).await.expect("closed in time");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    assert!(answer.contains(&format!("\r\nLocation: https://{host}/r/team?x=1\r\n")), "{answer}");
    // A request without a usable Host gets a plain refusal; garbage and silence cost nothing.
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut answer)).await.expect("closed in time");
    assert!(answer.starts_with(b"HTTP/1.1 400"), "{}", String::from_utf8_lossy(&answer));
    let _silent = TcpStream::connect(addr).await.expect("connect");
    // ICE over TCP shares the port: a connection that starts with an RFC 4571 frame holding a
    // STUN Binding request goes to the SFU, which does not answer a stranger (no 400, no TLS).
    let mut ice = TcpStream::connect(addr).await.expect("connect");
    let stun = [&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42][..], &[7; 12]].concat();
    ice.write_all(&[&(stun.len() as u16).to_be_bytes()[..], &stun].concat()).await.expect("write");
    ice.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, ice.read_to_end(&mut answer)).await.expect("closed in time");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));

    // A client that expects another certificate does not get through.
    let other = tls::setup(&Tls::SelfSigned, &names, None).expect("certificate").expect("TLS on");
    assert!(tls_to(addr, &pinned(&other.fingerprint)).await.is_err(), "another certificate was accepted");

    // The page's health check over HTTPS.
    let mut https = tls_to(addr, &connector).await.expect("TLS handshake with the pinned certificate");
    https.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut body = Vec::new();
    tokio::time::timeout(WAIT, https.read_to_end(&mut body)).await.expect("answered in time").expect("read");
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // Signalling over wss: the server says welcome.
    let stream = tls_to(addr, &connector).await.expect("TLS handshake");
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.expect("WebSocket over TLS");
    let first = tokio::time::timeout(WAIT, ws.next()).await.expect("a message in time").expect("open").expect("ok");
    let Message::Text(text) = first else { panic!("expected text, got {first:?}") };
    let msg: ServerMsg = serde_json::from_str(&text).expect("a server message");
    assert!(matches!(msg, ServerMsg::Welcome { .. }), "{msg:?}");
    drop(ws);

    let _ = stop.send(());
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("stops in time")
        .expect("no panic")
        .expect("Ok");
}

#[test]
fn the_banner_names_the_network_urls_and_the_fingerprint() {
    let setup = tls::setup(&Tls::SelfSigned, &["localhost".to_string()], None).expect("certificate").expect("TLS on");
    let local: SocketAddr = "127.0.0.1:8443".parse().expect("address");
    let text = huddle_server::banner(local, Some(&setup));
    assert!(text.starts_with("huddle listening on https://127.0.0.1:8443/\n"), "{text}");
    assert!(text.contains(&setup.fingerprint), "{text}");
    assert!(text.contains(setup.spki_sha256.as_deref().expect("self-signed")), "{text}");
    assert!(text.contains("--listen 0.0.0.0:8443"), "loopback only says how to open it: {text}");
    // An address other machines can use: its URL and a QR code of it.
    let lan: SocketAddr = "192.168.1.23:8443".parse().expect("address");
    let text = huddle_server::banner(lan, Some(&setup));
    assert!(text.contains("on your network: https://192.168.1.23:8443/"), "{text}");
    assert!(text.contains("scan to join"), "{text}");
    assert!(text.lines().filter(|l| l.contains('█') || l.contains('▀') || l.contains('▄')).count() > 10, "{text}");
    // Plain HTTP on the network: a hint that phones need HTTPS.
    let text = huddle_server::banner(lan, None);
    assert!(text.starts_with("huddle listening on http://192.168.1.23:8443/\n"), "{text}");
    assert!(text.contains("--tls self-signed"), "{text}");
}
