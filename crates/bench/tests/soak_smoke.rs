//! `huddle-bench soak` end to end, briefly: the real server, 80 clients in 8 rooms acting
//! every half second in two waves of 4 s after a 1.6 s warm-up (chats, hands, reactions, leaving
//! and joining, dropped and resumed connections, sessions given up), with a 2 s grace period. The
//! JSON line on stdout must say `ok`: nothing lost, duplicated or out of order, no stray
//! `peer_left`/`peer_joined`, no rooms left, and after each wave the heap in use, tasks and open
//! files back at the baseline.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn soak_run_loses_nothing_and_leaks_nothing() {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_huddle-bench"))
        .args(["soak", "--clients", "80", "--rooms", "8", "--duration-secs", "8", "--action-secs", "0.5"])
        .args(["--resume-grace-secs", "2", "--seed", "7"])
        .output()
        .expect("huddle-bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one JSON line on stdout:\n{stdout}\n{stderr}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert!(out.status.success(), "huddle-bench soak failed: {r}\n{stderr}");
    assert_eq!(r["ok"], true, "{r}\n{stderr}");
    for key in ["lost", "duplicated", "out_of_order", "unexpected_leave_join", "rooms_end", "client_failures"] {
        assert_eq!(r[key], 0, "{key}: {r}");
    }
    // The run exercised what it is there for.
    for key in ["chats", "resumes", "rejoins", "leaves", "expired", "wrong_secret", "tail_checks"] {
        assert!(r[key].as_u64().unwrap_or(0) > 0, "no {key}: {r}");
    }
    // The server was read at rest after each wave, and the probe of its heap and tasks answered.
    let waves = r["after_wave"].as_array().expect("after_wave");
    assert_eq!(waves.len(), 2, "{r}");
    for rest in waves.iter().chain([&r["baseline"]]) {
        assert!(rest["rss_kb"].as_u64() > Some(0) && rest["fds"].as_u64() > Some(0), "{r}");
        assert!(rest["tasks"].as_u64() > Some(0), "{r}");
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(rest["heap_in_use_kb"].as_u64() > Some(0), "{r}");
        }
    }
    let tasks = r["baseline"]["tasks"].as_u64();
    assert!(waves.iter().all(|w| w["tasks"].as_u64() <= tasks), "a task outlived its wave: {r}");
    // About 35 s on a busy 2-core machine (two waves, each followed by the grace period and
    // the checks); every wait in the harness is bounded, this only catches a hang.
    assert!(t.elapsed() < Duration::from_secs(90), "took {:?}", t.elapsed());
}
