//! Arbitrary bytes as the agent configuration, TOML and UCI: see `smtpguard_agent::fuzzing::agent_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpguard_agent::fuzzing::agent_config(data));
