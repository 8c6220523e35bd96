//! `huddle-bench turn` end to end, briefly: the real server (and coturn when installed, as
//! `scripts/test` does), a few client pairs over UDP and TCP, one short paced window and a short
//! saturation window; the JSON line on stdout has the figures.

use std::process::Command;

fn run_turn(transport: &str) -> serde_json::Value {
    let coturn = std::path::Path::new("/usr/bin/turnserver").exists();
    let out = Command::new(env!("CARGO_BIN_EXE_huddle-bench"))
        .args(["turn", "--pairs", "2", "--rate", "400", "--seconds", "0.5", "--warmup-secs", "0.2"])
        .args(["--saturation-secs", "0.5", "--inflight", "16", "--relay-secs", "0.5"])
        .args(["--disturbed-cpu-pct", "10000", "--coturn-threads", "1", "--transport", transport])
        .args(["--coturn", if coturn { "true" } else { "false" }])
        .output()
        .expect("huddle-bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "huddle-bench turn failed:\n{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON line on stdout:\n{stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    let mut names = vec!["huddle"];
    if coturn {
        names.push("coturn_m1");
    }
    for name in names {
        let s = &report["servers"][name];
        for w in [&s["windows"][0], &s["saturation"]] {
            assert!(w["delivered_pps"].as_f64().unwrap() > 0.0, "{name} relayed nothing: {w}\n{stderr}");
            assert_eq!(w["relayed"].as_u64().unwrap(), 2 * w["delivered"].as_u64().unwrap(), "{w}");
            assert!(w["server_us_per_relayed_packet"].as_f64().unwrap() >= 0.0, "{w}");
            assert_eq!(w["unparsed"], 0, "{w}");
            assert!(w["p50_us"].as_u64().is_some(), "{w}");
        }
        assert!(report[format!("{name}_us_per_relayed_packet")].is_number(), "{report}");
    }
    assert!(report["plain_relay_pps"].as_f64().unwrap() > 0.0);
    report
}

#[test]
fn turn_benchmark_over_udp() {
    let r = run_turn("udp");
    assert_eq!(r["transport"], "udp");
}

#[test]
fn turn_benchmark_over_tcp() {
    let r = run_turn("tcp");
    assert_eq!(r["transport"], "tcp");
}
