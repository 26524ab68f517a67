//! Golden test vectors: for every message kind, the exact signed CBOR bytes produced with the
//! RFC 8032 test key. If the encoding changes in any way (field names, order, integer or
//! float widths, the signing input), these tests fail; other implementations can check
//! themselves against the files in `tests/vectors/`.
//!
//! To regenerate after a deliberate wire change (and a version bump!):
//! `SMTPGUARD_BLESS=1 cargo test -p smtpguard-protocol --test vectors -- --test-threads=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::*;
use smtpguard_protocol::envelope::{self, KeyStatus};
use smtpguard_protocol::{keys, open, seal, Body, Freshness, Topic, FLEET_ID};

fn vector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn sealed(body: &Body, seq: u64) -> Vec<u8> {
    let cpe = if matches!(body, Body::Policy(_)) {
        FLEET_ID
    } else {
        CPE
    };
    seal(body, cpe, seq, T0_MS, &rfc8032_key()).unwrap()
}

fn topic_for(body: &Body) -> String {
    match body {
        Body::Policy(_) => Topic::FleetPolicy.to_string(),
        other => Topic::for_cpe(other.kind(), CPE).to_string(),
    }
}

#[test]
fn rfc8032_key_is_the_published_one() {
    assert_eq!(
        hex::encode(rfc8032_key().verifying_key().to_bytes()),
        RFC8032_PUBLIC
    );
    assert_eq!(keys::cpe_id_for(&rfc8032_key().verifying_key()), CPE);
}

#[test]
fn every_kind_matches_its_golden_bytes() {
    let bless = std::env::var_os("SMTPGUARD_BLESS").is_some();
    for (i, (name, body)) in all_bodies().into_iter().enumerate() {
        let bytes = sealed(&body, 100 + i as u64);
        let opened = open(&bytes).unwrap();
        let signature = hex::encode(&bytes[bytes.len() - 64..]);
        let wire_path = vector_dir().join(format!("{name}.cbor.hex"));
        let sig_path = vector_dir().join(format!("{name}.sig.hex"));
        if bless {
            std::fs::write(&wire_path, format!("{}\n", hex::encode(&bytes))).unwrap();
            std::fs::write(&sig_path, format!("{signature}\n")).unwrap();
        }
        let golden = std::fs::read_to_string(&wire_path)
            .unwrap_or_else(|e| panic!("{}: {e}", wire_path.display()));
        assert_eq!(
            hex::encode(&bytes),
            golden.trim(),
            "{name}: wire bytes drifted from {}",
            wire_path.display()
        );
        let golden_sig = std::fs::read_to_string(&sig_path).unwrap();
        assert_eq!(signature, golden_sig.trim(), "{name}: signature drifted");
        assert_eq!(opened.header().kind, body.kind());
    }
}

#[test]
fn golden_bytes_decode_and_verify_to_the_fixtures() {
    let public = rfc8032_key().verifying_key();
    for (i, (name, body)) in all_bodies().into_iter().enumerate() {
        let text = std::fs::read_to_string(vector_dir().join(format!("{name}.cbor.hex"))).unwrap();
        let bytes = hex::decode(text.trim()).unwrap();
        let env = envelope::verify(
            &topic_for(&body),
            &bytes,
            |_| KeyStatus::Active(public),
            None,
            None,
            T0_MS + 1_000,
            &Freshness::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(env.body, body, "{name}");
        assert_eq!(env.seq, 100 + i as u64);
        assert_eq!(env.sent_at_ms, T0_MS);
        assert_eq!(env.version, smtpguard_protocol::PROTOCOL_VERSION);
    }
}

#[test]
fn the_signature_is_over_the_domain_separated_envelope() {
    // Recompute the signing input from the golden envelope bytes by hand, so the documented
    // construction (DOMAIN || kind || 0x00 || envelope) is itself pinned.
    use ed25519_dalek::Verifier;
    let text = std::fs::read_to_string(vector_dir().join("alert.cbor.hex")).unwrap();
    let bytes = hex::decode(text.trim()).unwrap();
    let sig: [u8; 64] = bytes[bytes.len() - 64..].try_into().unwrap();
    // The outer map is {"envelope": bstr, "signature": bstr}; find the envelope bytes by
    // its header: a1/a2 map, "envelope" key, then a byte-string header.
    let key = b"\x68envelope";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    let (len, header) = match bytes[at] {
        0x59 => (
            u16::from_be_bytes([bytes[at + 1], bytes[at + 2]]) as usize,
            3,
        ),
        0x58 => (bytes[at + 1] as usize, 2),
        other => panic!("unexpected header {other:#x}"),
    };
    let env = &bytes[at + header..at + header + len];
    let mut input = envelope::SIGNING_DOMAIN.to_vec();
    input.extend_from_slice(b"alert\0");
    input.extend_from_slice(env);
    rfc8032_key()
        .verifying_key()
        .verify(&input, &ed25519_dalek::Signature::from_bytes(&sig))
        .unwrap();
}
