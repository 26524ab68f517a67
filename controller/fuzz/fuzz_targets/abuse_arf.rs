//! Arbitrary bytes as an ARF abuse report: see `smtpguard_controller::fuzzing::abuse_arf`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpguard_controller::fuzzing::abuse_arf(data));
