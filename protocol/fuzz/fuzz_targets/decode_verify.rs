//! Fuzzes the whole inbound path: arbitrary bytes on every kind of topic through size check,
//! CBOR decoding, version, topic match, signature, body, freshness, replay window and policy
//! version. Nothing may panic; nothing unsigned may verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpguard_protocol::envelope::{verify, KeyStatus};
use smtpguard_protocol::{open, Freshness, ReplayWindow, Topic};

const RFC8032_SECRET: [u8; 32] = [
    0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c,
    0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae,
    0x7f, 0x60,
];
const CPE: &str = "cpe-d75a980182b10ab7";
const NOW_MS: u64 = 1_795_435_200_000;

fuzz_target!(|data: &[u8]| {
    let public = ed25519_dalek::SigningKey::from_bytes(&RFC8032_SECRET).verifying_key();
    let mut window = ReplayWindow::new();
    let _ = window.accept(50);
    if let Ok(opened) = open(data) {
        // Exercise the accessors on whatever decoded.
        let _ = opened.header().kind;
    }
    let topics = [
        Topic::Telemetry(CPE.into()),
        Topic::Alert(CPE.into()),
        Topic::State(CPE.into()),
        Topic::PolicyAck(CPE.into()),
        Topic::CpePolicy(CPE.into()),
        Topic::FleetPolicy,
    ];
    for topic in topics {
        let result = verify(
            &topic.to_string(),
            data,
            |_| KeyStatus::Active(public),
            Some(&window),
            Some(3),
            NOW_MS,
            &Freshness::default(),
        );
        if let Ok(envelope) = result {
            // Only bytes signed by the RFC 8032 key can get here (the seeds are such).
            assert_eq!(envelope.kind(), topic.kind());
        }
    }
});
