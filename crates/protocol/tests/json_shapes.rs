//! Pins the JSON shapes: every example in `docs/protocol.md` must parse as a protocol message and
//! serialise back to exactly the same JSON, and every message type must have an example.

use huddle_protocol::{ClientMsg, ServerMsg};
use serde_json::Value;
use std::collections::BTreeSet;

fn examples() -> Vec<Value> {
    let doc = include_str!("../../../docs/protocol.md");
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```json" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let text = block.join("\n");
            out.push(serde_json::from_str(&text).unwrap_or_else(|e| panic!("example is not JSON ({e}): {text}")));
        }
    }
    out
}

/// Parses `v` as `T` and checks it serialises back to the same JSON.
fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Option<String> {
    let parsed: T = serde_json::from_value(v.clone()).ok()?;
    let back = serde_json::to_value(&parsed).expect("protocol types serialise");
    assert_eq!(&back, v, "example does not round-trip exactly");
    Some(v["type"].as_str().expect("has a type").to_string())
}

#[test]
fn every_documented_example_round_trips() {
    let mut client_types = BTreeSet::new();
    let mut server_types = BTreeSet::new();
    let examples = examples();
    assert!(examples.len() >= 18, "found only {} examples", examples.len());
    for v in &examples {
        let c = round_trips::<ClientMsg>(v);
        let s = round_trips::<ServerMsg>(v);
        assert!(c.is_some() || s.is_some(), "example is neither a client nor a server message: {v}");
        client_types.extend(c);
        server_types.extend(s);
    }
    let all_client: BTreeSet<String> = ClientMsg::TYPES.iter().map(|s| s.to_string()).collect();
    assert_eq!(client_types, all_client, "every client message type has an example");
    let all_server: BTreeSet<String> = [
        "welcome",
        "rooms",
        "joined",
        "left",
        "peer_joined",
        "peer_left",
        "peer_updated",
        "topology",
        "active_speaker",
        "signal",
        "chat",
        "file_upload",
        "file",
        "error",
        "bye",
        "waiting",
        "waiting_list",
        "room_settings",
        "moderated",
        "removed",
        "ended",
        "reaction",
        "invite_token",
        "invites_revoked",
        "password_attempts",
        "pong",
        "ice_servers",
        "check_ice_servers",
        "recording",
        "recordings",
        "breakouts",
        "breakout_message",
        "breakout_help_request",
        "breakout_chat",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(server_types, all_server, "every server message type has an example");
}

#[test]
fn every_error_code_is_documented() {
    let doc = include_str!("../../../docs/protocol.md");
    for code in huddle_protocol::ErrorCode::ALL {
        assert!(doc.contains(&format!("| `{code}` |")), "error code {code} is missing from the table");
    }
}

#[test]
fn shapes_are_pinned() {
    // A few shapes spelled out, so a rename shows up here even if the document changes with it.
    let join: ClientMsg =
        serde_json::from_str(r#"{"type":"join","protocol":1,"room":"r","name":"n"}"#).expect("join parses");
    assert_eq!(
        join,
        ClientMsg::Join {
            recording_ok: false,
            protocol: 1,
            room: "r".into(),
            name: "n".into(),
            audio: false,
            video: false,
            password: None,
            token: None
        }
    );
    // Consent to a recording: sent only when true.
    let consent =
        r#"{"type":"join","protocol":1,"room":"r","name":"n","audio":false,"video":false,"recording_ok":true}"#;
    let parsed: ClientMsg = serde_json::from_str(consent).expect("join with consent parses");
    assert!(matches!(parsed, ClientMsg::Join { recording_ok: true, .. }));
    assert_eq!(serde_json::to_string(&parsed).expect("serialises"), consent);
    assert!(!serde_json::to_string(&join).expect("serialises").contains("recording_ok"));
    let refused = ServerMsg::error(huddle_protocol::ErrorCode::RecordingConsent, Some("join"));
    assert!(serde_json::to_string(&refused).expect("serialises").contains(r#""code":"recording_consent""#));
    let err = ServerMsg::error(huddle_protocol::ErrorCode::RoomFull, Some("join"));
    assert_eq!(
        serde_json::to_string(&err).expect("serialises"),
        r#"{"type":"error","code":"room_full","message":"This room is full.","request":"join"}"#
    );
    let ended = ServerMsg::Ended { room: "r".into(), reason: Some(huddle_protocol::EndReason::ServerError) };
    assert_eq!(
        serde_json::to_string(&ended).expect("serialises"),
        r#"{"type":"ended","room":"r","reason":"server_error"}"#
    );
    let by_host = ServerMsg::Ended { room: "r".into(), reason: None };
    assert_eq!(serde_json::to_string(&by_host).expect("serialises"), r#"{"type":"ended","room":"r"}"#);
    let leave: ClientMsg =
        serde_json::from_str(r#"{"type":"leave","extra":true}"#).expect("unknown fields are ignored");
    assert_eq!(leave, ClientMsg::Leave);
    let moderate: ClientMsg =
        serde_json::from_str(r#"{"type":"moderate","peer":"p4","action":"stop_video"}"#).expect("moderate parses");
    assert_eq!(
        moderate,
        ClientMsg::Moderate {
            peer: huddle_protocol::PeerId("p4".into()),
            action: huddle_protocol::ModAction::StopVideo
        }
    );
    let stopped = ServerMsg::Recording {
        recording: None,
        stopped: Some(huddle_protocol::RecordingStopped {
            by: None,
            reason: huddle_protocol::RecordingStopReason::TimeLimit,
        }),
    };
    assert_eq!(
        serde_json::to_string(&stopped).expect("serialises"),
        r#"{"type":"recording","recording":null,"stopped":{"reason":"time_limit"}}"#
    );
    let listed = huddle_protocol::RoomSummary { name: "r".into(), participants: 1, capacity: 6, recording: false };
    assert_eq!(
        serde_json::to_string(&listed).expect("serialises"),
        r#"{"name":"r","participants":1,"capacity":6}"#,
        "a room not recording says nothing of it"
    );
    let settings = huddle_protocol::RoomSettings { waiting_room: true, ..Default::default() };
    assert_eq!(
        serde_json::to_string(&ServerMsg::RoomSettings { settings }).expect("serialises"),
        r#"{"type":"room_settings","settings":{"locked":false,"waitingRoom":true,"allowUnmute":false,"hasPassword":false,"listed":false}}"#
    );
    let limited = ServerMsg::error(huddle_protocol::ErrorCode::RateLimited, Some("chat"));
    assert_eq!(
        serde_json::to_string(&limited).expect("serialises"),
        r#"{"type":"error","code":"rate_limited","message":"Too many messages too quickly; this one was not sent. Slow down.","request":"chat"}"#
    );
    let busy = ServerMsg::error(huddle_protocol::ErrorCode::TooManyConnections, None);
    assert!(serde_json::to_string(&busy)
        .expect("serialises")
        .starts_with(r#"{"type":"error","code":"too_many_connections","#));
    for (reason, json) in [
        (huddle_protocol::ByeReason::Flooding, r#"{"type":"bye","reason":"flooding"}"#),
        (huddle_protocol::ByeReason::TooManyConnections, r#"{"type":"bye","reason":"too_many_connections"}"#),
    ] {
        assert_eq!(serde_json::to_string(&ServerMsg::Bye { reason }).expect("serialises"), json);
    }
}
