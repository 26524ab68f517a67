//! Arbitrary frames into the engine: see `smtpguard_agent::fuzzing::engine_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpguard_agent::fuzzing::engine_frames(data));
