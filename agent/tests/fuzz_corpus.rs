//! Replays the committed inputs of every fuzz target in `agent/fuzz` (its `seeds/` and its
//! minimized `corpus-min/`) through the same function the target runs, on stable: a crash
//! the fuzzer once found fails `cargo test` if it comes back.

use smtpguard_agent::fuzzing;
use smtpguard_protocol::fuzzing::{replay_corpus, targets_in};

const FUZZ_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz");

#[test]
fn every_fuzz_target_has_a_replay_test() {
    assert_eq!(
        targets_in(FUZZ_DIR),
        [
            "agent_config",
            "capture_replay",
            "conntrack_reply",
            "engine_frames",
            "leases",
            "oui",
            "policy_guard",
            "policy_toml"
        ]
    );
}

#[test]
fn engine_frames_corpus_replays_clean() {
    assert!(replay_corpus(FUZZ_DIR, "engine_frames", fuzzing::engine_frames) > 0);
}

#[test]
fn capture_replay_corpus_replays_clean() {
    assert!(replay_corpus(FUZZ_DIR, "capture_replay", fuzzing::capture_replay) > 0);
}

#[test]
fn policy_guard_corpus_replays_clean() {
    assert!(replay_corpus(FUZZ_DIR, "policy_guard", fuzzing::policy_guard) > 0);
}

#[test]
fn policy_toml_corpus_replays_clean() {
    assert!(replay_corpus(FUZZ_DIR, "policy_toml", fuzzing::policy_toml) > 0);
}

#[test]
fn agent_config_corpus_replays_clean() {
    assert!(replay_corpus(FUZZ_DIR, "agent_config", fuzzing::agent_config) > 0);
}

#[test]
fn leases_corpus_replays_clean() {
    assert!(replay_corpus(FUZZ_DIR, "leases", fuzzing::leases) > 0);
}

#[test]
fn oui_corpus_replays_clean() {
    assert!(replay_corpus(FUZZ_DIR, "oui", fuzzing::oui) > 0);
}

#[test]
fn conntrack_reply_corpus_replays_clean() {
    assert!(replay_corpus(FUZZ_DIR, "conntrack_reply", fuzzing::conntrack_reply) > 0);
}
