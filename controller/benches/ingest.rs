//! Ingest throughput next to raw ed25519 verification, measured in the same run.
//!
//! `cargo bench -p smtpguard-controller --bench ingest` prints messages per second for:
//! - raw: `verify_strict` of one signature at a time over messages of the same size;
//! - ingest: the controller's whole path for the same number of sealed alerts and
//!   telemetry from 200 CPEs — topic, framing, key lookup, batch signature verification,
//!   freshness, replay window, and the batched SQLite transaction (WAL, synchronous=FULL,
//!   on disk) — in batches of the ingest's default size;
//!
//! and the ratio ingest / raw. Goal: at least 0.6.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::time::Instant;

use ed25519_dalek::{Signer, SigningKey};
use smtpguard_controller::ingest::{Inbound, Verifier};
use smtpguard_controller::registry::{self, KeyCache};
use smtpguard_controller::store::Store;
use smtpguard_protocol::{
    keys, seal, Action, AgentStats, Alert, Body, DeviceReport, Freshness, MacAddr, Observed,
    Telemetry, Topic, Verdict,
};

const CPES: usize = 200;
const MESSAGES: usize = 20_000;
const BATCH: usize = 512;

fn body(i: usize) -> Body {
    let device = DeviceReport {
        mac: MacAddr([2, 0, 0, 0, (i >> 8) as u8, i as u8]),
        ips: vec!["192.168.1.14".parse().unwrap()],
        hostname: Some("laptop".into()),
        vendor: Some("Example Corp".into()),
        verdict: Verdict::Infected,
        score: 0.93,
        action: Action::RateLimit,
        action_until_ms: Some(1_700_000_000_000),
        counters: Default::default(),
        evidence: vec!["312 connections to 287 distinct mail servers in 10 minutes".into()],
    };
    if i % 4 == 0 {
        Body::Alert(Alert {
            device,
            previous: Verdict::Clean,
            at_ms: 1_700_000_000_000,
            observed: Observed::default(),
        })
    } else {
        Body::Telemetry(Telemetry {
            window_start_ms: 1_700_000_000_000,
            window_secs: 60,
            public_ip: Some("203.0.113.9".parse().unwrap()),
            stats: AgentStats::default(),
            devices: vec![device],
            connections: vec![],
        })
    }
}

/// The controller's full ingest path (verify, admit, store) over `messages` into `store`;
/// messages per second.
fn ingest(
    store: &mut Store,
    keys_: &[(String, SigningKey)],
    messages: &[Inbound],
    now: u64,
) -> f64 {
    for (id, k) in keys_ {
        registry::add(
            store,
            id,
            &keys::public_key_text(&k.verifying_key()),
            None,
            0,
        )
        .unwrap();
    }
    let mut verifier = Verifier::new(
        KeyCache::load(store).unwrap(),
        HashMap::new(),
        Freshness::default(),
    );
    let t = Instant::now();
    let mut stored = 0usize;
    for batch in messages.chunks(BATCH) {
        let checked = verifier.check(batch.to_vec(), now);
        let fresh = store
            .write_batch(&checked.accepted, &checked.rejections)
            .unwrap();
        stored += fresh.iter().filter(|f| **f).count();
    }
    let rate = messages.len() as f64 / t.elapsed().as_secs_f64();
    assert_eq!(stored, messages.len());
    rate
}

fn main() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let keys_: Vec<(String, SigningKey)> = (0..CPES)
        .map(|i| (format!("cpe-{i}"), keys::generate()))
        .collect();
    let mut seqs = vec![0u64; CPES];
    let messages: Vec<Inbound> = (0..MESSAGES)
        .map(|i| {
            let c = i % CPES;
            seqs[c] += 1;
            let b = body(i);
            let (id, key) = &keys_[c];
            Inbound {
                topic: Topic::for_cpe(b.kind(), id).to_string(),
                payload: seal(&b, id, seqs[c], now, key).unwrap(),
            }
        })
        .collect();
    let avg_len = messages.iter().map(|m| m.payload.len()).sum::<usize>() / MESSAGES;

    // Raw: one verify_strict per signature, same message sizes.
    let raw_key = keys::generate();
    let raw_pub = raw_key.verifying_key();
    let raw: Vec<(Vec<u8>, ed25519_dalek::Signature)> = (0..MESSAGES)
        .map(|i| {
            let m = vec![i as u8; avg_len];
            let s = raw_key.sign(&m);
            (m, s)
        })
        .collect();
    let t = Instant::now();
    for (m, s) in &raw {
        raw_pub.verify_strict(m, s).unwrap();
    }
    let raw_rate = MESSAGES as f64 / t.elapsed().as_secs_f64();

    // SQLite: a file in WAL mode, synchronous=FULL, as `serve` opens it.
    let dir = tempfile::tempdir().unwrap();
    let mut sqlite = Store::open(&dir.path().join("bench.db")).unwrap();
    let sqlite_rate = ingest(&mut sqlite, &keys_, &messages, now);
    // PostgreSQL: a fresh database on a throwaway local cluster (Debian's server, started by
    // smtpguard-pgtest), default settings (synchronous_commit on).
    let mut pg = Store::open_url(&smtpguard_pgtest::database()).unwrap();
    let pg_rate = ingest(&mut pg, &keys_, &messages, now);

    println!("messages: {MESSAGES} from {CPES} CPEs, average {avg_len} bytes, batches of {BATCH}");
    println!("raw ed25519 verify_strict:            {raw_rate:>8.0} msg/s");
    println!("ingest into SQLite (verify+admit+store): {sqlite_rate:>6.0} msg/s");
    println!("ingest into PostgreSQL (same):        {pg_rate:>8.0} msg/s");
    println!("ratio SQLite ingest/raw: {:.2}", sqlite_rate / raw_rate);
    println!("ratio PostgreSQL ingest/raw: {:.2}", pg_rate / raw_rate);
}
