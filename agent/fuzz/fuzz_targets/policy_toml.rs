//! Arbitrary bytes as the local policy file: see `smtpguard_agent::fuzzing::policy_toml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpguard_agent::fuzzing::policy_toml(data));
