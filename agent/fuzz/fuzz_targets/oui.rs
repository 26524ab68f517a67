//! Arbitrary bytes as the OUI registry: see `smtpguard_agent::fuzzing::oui`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpguard_agent::fuzzing::oui(data));
