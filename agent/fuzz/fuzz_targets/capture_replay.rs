//! Arbitrary bytes as a capture file through the reader and the engine: see `smtpguard_agent::fuzzing::capture_replay`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpguard_agent::fuzzing::capture_replay(data));
