//! Arbitrary bytes as the CBOR body of a command message, both decoders: see
//! `smtpguard_protocol::fuzzing::command_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpguard_protocol::fuzzing::command_body(data));
