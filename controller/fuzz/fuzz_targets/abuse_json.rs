//! Arbitrary bytes as a JSON abuse report: see `smtpguard_controller::fuzzing::abuse_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpguard_controller::fuzzing::abuse_json(data));
