//! Arbitrary bytes as an inbound message on every kind of topic: see
//! `smtpguard_protocol::fuzzing::decode_verify`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpguard_protocol::fuzzing::decode_verify(data));
