//! The load generator at small fleet scale: 200 agents against two controller replicas
//! sharing one database (PostgreSQL, on a throwaway cluster; and SQLite) and mosquitto's
//! `$share/controllers/...` subscription, telemetry every 2 s for 20 s, alerts from about
//! 5 % of the agents, and replica 0 SIGKILLed at mid-run and started again. Every message
//! the broker acknowledged must be in the database exactly once, every alert must reach the
//! operator API, and the NOC fleet page must be served to a signed-in operator.
//!
//! Needs the Debian packages `mosquitto` and `postgresql` (`scripts/setup.sh` installs
//! them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The `key=value` pairs of the machine-readable last line.
fn fields(line: &str) -> HashMap<String, String> {
    line.strip_prefix("loadgen: ")
        .unwrap_or_else(|| panic!("not the summary line: {line}"))
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn number(f: &HashMap<String, String>, key: &str) -> f64 {
    f.get(key)
        .unwrap_or_else(|| panic!("{key} missing: {f:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number: {f:?}"))
}

/// Runs the load generator on `database` (a `--database` value) and checks its summary.
fn two_replicas_one_killed(database: &str, kind: &str) {
    let bin = smtpguard_tests::mqtt::loadgen_binary().unwrap();
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args([
            "--agents",
            "200",
            "--replicas",
            "2",
            "--mosquitto",
            "--telemetry-secs",
            "2",
            "--duration-secs",
            "20",
            "--kill-replica",
            // Down longer than a telemetry period: its agents' newer messages reach the
            // other replica while its session still holds older ones.
            "--restart-after-secs",
            "5",
            "--devices",
            "3",
            "--timeout-secs",
            "100",
        ])
        .arg("--database")
        .arg(database)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        println!("{line}");
        lines.push(line);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "loadgen failed: {lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("replica 0 SIGKILLed")),
        "no replica was killed: {lines:?}"
    );
    let last = lines.last().expect("no output");
    let f = fields(last);
    assert_eq!(f["agents"], "200");
    assert_eq!(f["replicas"], "2");
    assert_eq!(f["database"], kind);
    let stored = number(&f, "stored");
    let expected = number(&f, "expected");
    // 200 agents × 10 telemetry windows at least, plus state, policy acks and alerts.
    assert!(expected > 2000.0, "{last}");
    assert_eq!(stored, expected, "{last}");
    assert_eq!(number(&f, "lost"), 0.0, "{last}");
    assert_eq!(number(&f, "duplicates"), 0.0, "{last}");
    assert!(number(&f, "policy_ack_s") > 0.0, "{last}");
    // A number: every alert reached the API ("missed" otherwise).
    assert!(number(&f, "alert_to_noc_p99_ms") > 0.0, "{last}");
    assert!(number(&f, "fleet_page_p95_ms") >= 0.0, "{last}");
    assert!(number(&f, "fleet_page_kb") > 1.0, "{last}");
    println!("run took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn two_replicas_on_postgres_one_killed_lose_and_duplicate_nothing() {
    two_replicas_one_killed(&smtpguard_pgtest::database(), "postgres");
}

#[test]
fn two_replicas_on_sqlite_one_killed_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    two_replicas_one_killed(&format!("sqlite:{}", db.display()), "sqlite");
}
