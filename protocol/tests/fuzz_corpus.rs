//! Replays the committed inputs of every fuzz target in `protocol/fuzz` (its `seeds/` and
//! its minimized `corpus-min/`) through the same function the target runs, on stable: a
//! crash the fuzzer once found fails `cargo test` if it comes back.

use smtpguard_protocol::fuzzing::{self, replay_corpus, targets_in};

const FUZZ_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz");

#[test]
fn every_fuzz_target_has_a_replay_test() {
    assert_eq!(
        targets_in(FUZZ_DIR),
        ["command_body", "decode_verify", "policy_body"]
    );
}

#[test]
fn decode_verify_corpus_replays_clean() {
    assert!(replay_corpus(FUZZ_DIR, "decode_verify", fuzzing::decode_verify) > 0);
}

#[test]
fn policy_body_corpus_replays_clean() {
    assert!(replay_corpus(FUZZ_DIR, "policy_body", fuzzing::policy_body) > 0);
}

#[test]
fn command_body_corpus_replays_clean() {
    assert!(replay_corpus(FUZZ_DIR, "command_body", fuzzing::command_body) > 0);
}
