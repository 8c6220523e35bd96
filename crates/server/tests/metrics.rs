//! `/metrics` on the real server: Prometheus text that parses, counters that move with joins and
//! chat, subsystems that are off left out, the bearer token, and `--metrics false`.

mod common;

use common::{Client, TestServer};
use huddle_protocol::ClientMsg;
use huddle_server::config::TopologyMode;
use huddle_server::Config;
use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET path` over plain HTTP/1.1: (status, content type, body).
async fn get(server: &TestServer, path: &str, auth: Option<&str>) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n", server.addr);
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(common::WAIT, tcp.read_to_end(&mut raw)).await.expect("answered in time").expect("read");
    let text = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_string))
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// Parses Prometheus text format 0.0.4 strictly enough to catch mistakes: every sample belongs
/// to the family declared just before it (`# HELP` then `# TYPE`, once each), names and label
/// names are valid, values are numbers. Returns series (`name{labels}`) → value.
fn parse(text: &str) -> HashMap<String, f64> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    let mut series = HashMap::new();
    let mut families = std::collections::HashSet::new();
    let mut family = String::new();
    let mut helped = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped = rest.split(' ').next().expect("a name").to_string();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("name and type");
            assert_eq!(name, helped, "HELP before TYPE");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert!(valid_name(name), "{line}");
            assert!(families.insert(name.to_string()), "{name} declared twice");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counters end in _total: {name}");
            }
            family = name.to_string();
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (key, value) = line.rsplit_once(' ').expect("a sample");
            let name = key.split('{').next().expect("a name");
            assert_eq!(name, family, "a sample outside its family: {line}");
            if let Some(labels) = key.strip_prefix(name).filter(|l| !l.is_empty()) {
                let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).expect("braces");
                for pair in inner.split(',') {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(valid_name(k) && v.starts_with('"') && v.ends_with('"'), "{line}");
                }
            }
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
            assert!(series.insert(key.to_string(), v).is_none(), "{key} twice");
        }
    }
    assert!(text.ends_with('\n'));
    series
}

async fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let (status, content_type, body) = get(server, "/metrics", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    parse(&body)
}

fn v(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("{key} missing"))
}

#[tokio::test]
async fn metrics_parse_and_move_with_joins_and_chat() {
    let server = TestServer::start(Config { topology: TopologyMode::Sfu, ..Config::default() }).await;
    let before = scrape(&server).await;
    for key in [
        "huddle_sfu_forwarded_packets_total",
        "huddle_sfu_forwarded_bytes_total",
        "huddle_turn_allocations",
        "huddle_turn_relayed_packets_total{direction=\"to_peer\"}",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "huddle_ws_refused_messages_total{reason=\"rate_limited\"}",
        "huddle_ws_disconnects_total{reason=\"too_slow\"}",
        "huddle_media_commands_dropped_total",
    ] {
        v(&before, key);
    }
    assert_eq!(v(&before, "huddle_participants"), 0.0);
    assert!(v(&before, "process_cpu_seconds_total") > 0.0);

    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.join("r", "Mina").await;
    b.join("r", "Jun").await;
    a.send(&ClientMsg::Chat { text: "hello".into() }).await;
    assert!(matches!(b.recv().await, huddle_protocol::ServerMsg::Chat { .. }));
    assert!(matches!(a.recv().await, huddle_protocol::ServerMsg::PeerJoined { .. }));
    assert!(matches!(a.recv().await, huddle_protocol::ServerMsg::Chat { .. }));
    a.barrier().await;

    let after = scrape(&server).await;
    let moved = |key: &str| v(&after, key) - v(&before, key);
    assert_eq!(moved("huddle_ws_messages_in_total{type=\"join\"}"), 2.0);
    assert_eq!(moved("huddle_ws_messages_in_total{type=\"chat\"}"), 1.0);
    assert_eq!(moved("huddle_ws_refused_messages_total{reason=\"unknown_type\"}"), 1.0, "the barrier");
    // welcome ×2, joined ×2, peer_joined, chat ×2, the barrier's error: at least 7 by now.
    assert!(moved("huddle_ws_messages_out_total") >= 7.0);
    assert_eq!(v(&after, "huddle_participants"), 2.0);
    assert_eq!(v(&after, "huddle_rooms"), 1.0);
    assert_eq!(v(&after, "huddle_connections"), 2.0);
    assert_eq!(v(&after, "huddle_ws_connections"), 2.0);
    server.shutdown().await;
}

#[tokio::test]
async fn subsystems_that_are_off_are_left_out() {
    let server = TestServer::start(Config { topology: TopologyMode::P2p, turn: false, ..Config::default() }).await;
    let m = scrape(&server).await;
    assert!(m.keys().all(|k| !k.starts_with("huddle_sfu_") && !k.starts_with("huddle_turn_")), "{m:?}");
    v(&m, "huddle_rooms");
    server.shutdown().await;
}

#[tokio::test]
async fn a_metrics_token_is_required_when_set() {
    let token = "s3cret-token-for-scrapers";
    let server = TestServer::start(Config { metrics_token: Some(token.into()), ..Config::default() }).await;
    assert_eq!(get(&server, "/metrics", None).await.0, 401);
    assert_eq!(get(&server, "/metrics", Some("Bearer wrong-token-for-scrapers")).await.0, 401);
    assert_eq!(get(&server, "/metrics", Some(&format!("Basic {token}"))).await.0, 401);
    let (status, _, body) = get(&server, "/metrics", Some(&format!("Bearer {token}"))).await;
    assert_eq!(status, 200);
    parse(&body);
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let server = TestServer::start(Config { metrics: false, ..Config::default() }).await;
    assert_eq!(get(&server, "/metrics", None).await.0, 404);
    assert_eq!(get(&server, "/healthz", None).await.0, 200);
    server.shutdown().await;
}
