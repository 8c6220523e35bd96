//! Any text through exactly what the server does with a WebSocket text frame: parse it as a
//! `ClientMsg`, and when that fails, `ws::classify` says why; then the checks the hub applies to
//! what a parsed message carries (`validate::label` for names and room names,
//! `validate::chat_text`, `FileStore::offer` for file offers), and the same checks on the raw
//! text. Invalid UTF-8 is replaced first: a text frame is always UTF-8.
//!
//! Invariants: no panic; a parsed message serialises and parses back to an equal value with its
//! own `type` tag, which `ClientMsg::TYPES` lists; `classify` answers `bad_json` exactly for
//! non-JSON, names the request for a known `type` tag and never calls it `unknown_type`; what a
//! validator accepts is the input cleaned (trimmed, invisible characters stripped), showing
//! something, within the limit, free of the characters it refuses, accepted again unchanged and
//! still accepted under a higher limit; an accepted
//! file offer has a safe name, a size within the limit and a lower-case SHA-256.
#![no_main]

use huddle_protocol::{ClientMsg, ErrorCode, PeerId};
use huddle_server::files::{FileLimits, FileStore, MAX_FILE_NAME_CHARS};
use huddle_server::{validate, ws};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

/// The server's default limits, and small ones the fuzzer reaches easily.
const LIMITS: &[u32] = &[1, 3, 32, 64, 2000];
const MAX_FILE_BYTES: u64 = 100 * 1024 * 1024;

/// Characters that never survive into a name: controls, bidi controls and the invisible ones
/// that are always stripped (the context-dependent joiners are checked by `validate`'s tests).
fn never_in_a_label(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{200B}' | '\u{3164}' | '\u{2800}' | '\u{00AD}')
}

fn check_label(raw: &str, max: u32) {
    let Some(s) = validate::label(raw, max) else {
        return;
    };
    check_cleaned(&s, max);
    assert!(!s.chars().any(never_in_a_label), "{s:?}");
    assert!(!s.contains("  "), "a run of spaces kept: {s:?}");
    assert_eq!(validate::label(&s, max), Some(s.clone()), "accepted again unchanged");
    assert_eq!(validate::label(raw, max.saturating_add(1)), Some(s), "a higher limit accepts it too");
}

fn check_chat(raw: &str, max: u32) {
    let Some(s) = validate::chat_text(raw, max) else {
        return;
    };
    check_cleaned(&s, max);
    assert!(!s.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
    assert!(!s.chars().any(|c| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200B}')));
    assert_eq!(validate::chat_text(&s, max), Some(s.clone()), "accepted again unchanged");
    assert_eq!(validate::chat_text(raw, max.saturating_add(1)), Some(s), "a higher limit accepts it too");
}

/// What a validator accepts is trimmed, within the limit, and shows something.
fn check_cleaned(s: &str, max: u32) {
    assert_eq!(s, s.trim());
    let n = s.chars().count();
    assert!((1..=max as usize).contains(&n), "{n} characters accepted with a limit of {max}");
    assert!(s.chars().any(|c| !c.is_whitespace()), "nothing shows in {s:?}");
}

fn check_file_offer(name: &str, size: u64, mime: &str, sha256: &str) {
    let dir = std::env::temp_dir().join("huddle-fuzz-never-written");
    let total = 10 * MAX_FILE_BYTES;
    let limits = FileLimits {
        max_file: MAX_FILE_BYTES,
        total,
        per_connection: total,
        per_ip: total,
        per_room: total,
        timeout: std::time::Duration::from_secs(30),
        min_rate: 65536,
    };
    let mut store = FileStore::new(dir, limits);
    let room: Arc<str> = Arc::from("r");
    let from = PeerId("p1".into());
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    let now = tokio::time::Instant::now();
    match store.offer(&room, &from, ip, "sender", name, size, mime, sha256, now) {
        Ok((id, url)) => {
            let kept = validate::label(name, MAX_FILE_NAME_CHARS).expect("a valid name");
            let kept = kept.as_str();
            assert!(!kept.contains(['/', '\\']), "a path in a file name: {kept:?}");
            assert!((1..=MAX_FILE_BYTES).contains(&size));
            assert!(sha256.len() == 64 && sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            assert!(!mime.chars().any(char::is_control));
            assert!(url.starts_with(&format!("/files/{id}?key=")));
            assert_eq!(store.used(), size);
        }
        Err(code) => assert!(matches!(code, ErrorCode::InvalidFile | ErrorCode::FileStorageFull), "{code}"),
    }
}

fn check_message(msg: &ClientMsg) {
    let json = serde_json::to_string(msg).expect("a ClientMsg always serialises");
    let back: ClientMsg = serde_json::from_str(&json).expect("what we write we read");
    assert_eq!(&back, msg, "round trip through {json}");
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(value.get("type").and_then(|t| t.as_str()), Some(msg.type_name()));
    assert!(ClientMsg::TYPES.contains(&msg.type_name()), "TYPES lacks {}", msg.type_name());
    for &max in LIMITS {
        match msg {
            ClientMsg::Join { room, name, .. } => {
                check_label(room, max);
                check_label(name, max);
            }
            ClientMsg::Chat { text } => check_chat(text, max),
            _ => {}
        }
    }
    if let ClientMsg::FileOffer { name, size, mime, sha256 } = msg {
        check_file_offer(name, *size, mime, sha256);
    }
}

fn check_refusal(text: &str) {
    let (code, request) = ws::classify(text);
    let value = serde_json::from_str::<serde_json::Value>(text);
    match code {
        ErrorCode::BadJson => assert!(value.is_err(), "valid JSON called bad_json"),
        ErrorCode::BadMessage | ErrorCode::UnknownType => assert!(value.is_ok(), "invalid JSON called {code}"),
        other => panic!("classify answered {other}"),
    }
    let tag = value.as_ref().ok().and_then(|v| v.get("type")).and_then(|t| t.as_str());
    if let Some(tag) = tag.filter(|t| ClientMsg::TYPES.contains(t)) {
        assert_eq!(code, ErrorCode::BadMessage, "a known type {tag:?} called {code}");
        assert_eq!(request.as_deref(), Some(tag));
    } else {
        assert!(request.is_none(), "request {request:?} named for an unknown type");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match serde_json::from_str::<ClientMsg>(&text) {
        Ok(msg) => check_message(&msg),
        Err(_) => check_refusal(&text),
    }
    for &max in LIMITS {
        check_label(&text, max);
        check_chat(&text, max);
    }
});
