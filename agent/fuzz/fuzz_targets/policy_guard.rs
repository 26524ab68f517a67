//! Arbitrary bytes as a signed policy body through the agent's policy guard: see `smtpguard_agent::fuzzing::policy_guard`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpguard_agent::fuzzing::policy_guard(data));
