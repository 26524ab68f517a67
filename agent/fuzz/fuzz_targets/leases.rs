//! Arbitrary bytes as the dnsmasq lease file: see `smtpguard_agent::fuzzing::leases`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpguard_agent::fuzzing::leases(data));
