//! Replays the committed inputs of every fuzz target in `controller/fuzz` (its `seeds/` and
//! its minimized `corpus-min/`) through the same function the target runs, on stable: a
//! crash the fuzzer once found fails `cargo test` if it comes back.

use smtpguard_controller::fuzzing;
use smtpguard_protocol::fuzzing::{replay_corpus, targets_in};

const FUZZ_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz");

#[test]
fn every_fuzz_target_has_a_replay_test() {
    assert_eq!(
        targets_in(FUZZ_DIR),
        ["abuse_arf", "abuse_date", "abuse_json"]
    );
}

#[test]
fn abuse_arf_corpus_replays_clean() {
    assert!(replay_corpus(FUZZ_DIR, "abuse_arf", fuzzing::abuse_arf) > 0);
}

#[test]
fn abuse_json_corpus_replays_clean() {
    assert!(replay_corpus(FUZZ_DIR, "abuse_json", fuzzing::abuse_json) > 0);
}

#[test]
fn abuse_date_corpus_replays_clean() {
    assert!(replay_corpus(FUZZ_DIR, "abuse_date", fuzzing::abuse_date) > 0);
}
