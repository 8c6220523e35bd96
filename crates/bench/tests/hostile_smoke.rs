//! `huddle-bench hostile` end to end, briefly and gently: every kind of attacker from one
//! address for 4 s while the normal clients run, with `--report-only`, so that CI exercises the
//! harness whatever the server's verdict (`scripts/test` runs the full soak with
//! `HUDDLE_HOSTILE=1`). The JSON line must show that each kind of attacker reached the server,
//! that the normal clients were answered, and that the server was read at every stage.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn hostile_run_exercises_every_attack() {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_huddle-bench"))
        .args(["hostile", "--seconds", "4", "--ips", "1", "--quiet-secs", "2", "--cleanup-secs", "2"])
        .args(["--rest-secs", "3", "--loris-per-ip", "8", "--idle-upgrades-per-ip", "4"])
        .args(["--buffer-holders-per-ip", "2"])
        .args(["--victim-respawns", "1", "--file-secs", "2", "--newcomer-secs", "1", "--report-only"])
        .env_remove("HUDDLE_HOSTILE_SECONDS")
        .output()
        .expect("huddle-bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "huddle-bench hostile failed:\n{stderr}");
    assert_eq!(stdout.lines().count(), 1, "one JSON line on stdout:\n{stdout}\n{stderr}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(r["bench"], "hostile", "{r}");
    assert!(r["ok"].is_boolean() && r["reasons"].is_array(), "{r}");
    // Every kind of attacker got through to the server at least once.
    let events = &r["attack"]["events"];
    let reached = |kind: &str, event: &str| events[kind][event].as_u64().unwrap_or(0) > 0;
    assert!(reached("big_frames", "big_frames_sent") && reached("big_frames", "nonreaders"), "{events}");
    assert!(reached("big_frames", "slow_readers"), "{events}");
    assert!(reached("slowloris", "opened"), "{events}");
    assert!(reached("idle_upgrades", "upgraded"), "{events}");
    assert!(reached("floods", "sent"), "{events}");
    assert!(reached("malformed", "sent_bad_json") && reached("malformed", "sent_over_max_frame"), "{events}");
    assert!(reached("buffer_holders", "big_frames_sent"), "{events}");
    assert!(reached("file_offers", "offers_sent"), "{events}");
    assert!(r["attack"]["abandoned_connections"].as_u64() > Some(0), "{r}");
    // The normal clients were answered, and measured in each phase.
    assert!(r["normal_answers"].as_u64() > Some(0), "{r}");
    for phase in ["quiet", "attack", "after"] {
        let kinds = &r["normal"][phase]["by_kind"];
        assert!(kinds["chat"]["answers"].as_u64() > Some(0), "no chat answered in {phase}: {r}");
        assert!(kinds["ping"]["answers"].as_u64() > Some(0), "no ping answered in {phase}: {r}");
    }
    assert!(r["normal"]["attack"]["by_kind"]["page"].is_object(), "{r}");
    // The server was read at every stage, with its open-file limit.
    for stage in ["rest_baseline", "live_baseline", "after_attack", "at_rest_after", "after_abandoned_closed"] {
        let s = &r["server"][stage];
        assert!(s["rss_kb"].as_u64() > Some(0) && s["fds"].as_u64() > Some(0), "{stage}: {r}");
    }
    assert!(r["server"]["nofile_soft_hard"][0].as_u64() >= Some(1024), "{r}");
    assert_eq!(r["server"]["rest_baseline"]["established"], 0, "{r}");
    assert!(r["server"]["live_baseline"]["established"].as_u64() >= Some(3), "the three normal people: {r}");
    assert!(!r["timeline"].as_array().expect("timeline").is_empty(), "{r}");
    // About 25 s; every wait in the harness is bounded, this only catches a hang.
    assert!(t.elapsed() < Duration::from_secs(120), "took {:?}", t.elapsed());
}
