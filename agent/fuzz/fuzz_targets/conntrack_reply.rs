//! Arbitrary bytes as a ctnetlink reply datagram: see
//! `smtpguard_agent::fuzzing::conntrack_reply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpguard_agent::fuzzing::conntrack_reply(data));
