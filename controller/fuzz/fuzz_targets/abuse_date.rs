//! Arbitrary text as an abuse report's date: see `smtpguard_controller::fuzzing::abuse_date`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpguard_controller::fuzzing::abuse_date(data));
