//! One test for each way an inbound message can be bad, asserting the exact rejection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use ed25519_dalek::SigningKey;
use smtpguard_protocol::envelope::{verify, verify_policy, KeyStatus};
use smtpguard_protocol::{
    open, seal, Body, Freshness, Rejection, RejectionReason, ReplayWindow, Topic, FLEET_ID,
    MAX_MESSAGE_BYTES,
};

fn other_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn alert_bytes(seq: u64, sent_at: u64) -> Vec<u8> {
    seal(&Body::Alert(alert()), CPE, seq, sent_at, &rfc8032_key()).unwrap()
}

fn alert_topic() -> String {
    Topic::Alert(CPE.into()).to_string()
}

/// Runs the full check with the RFC 8032 key enrolled for [`CPE`].
fn check(topic: &str, bytes: &[u8], window: Option<&ReplayWindow>) -> Result<Body, Rejection> {
    let public = rfc8032_key().verifying_key();
    verify(
        topic,
        bytes,
        |id| {
            if id == CPE {
                KeyStatus::Active(public)
            } else {
                KeyStatus::Unknown
            }
        },
        window,
        None,
        T0_MS,
        &Freshness::default(),
    )
    .map(|e| e.body)
}

#[test]
fn a_good_message_passes() {
    assert_eq!(
        check(&alert_topic(), &alert_bytes(1, T0_MS), None).unwrap(),
        Body::Alert(alert())
    );
}

#[test]
fn oversize_is_rejected_before_decoding() {
    let bytes = vec![0xffu8; MAX_MESSAGE_BYTES + 1];
    assert_eq!(
        open(&bytes).unwrap_err(),
        Rejection::Oversize {
            len: MAX_MESSAGE_BYTES + 1,
            max: MAX_MESSAGE_BYTES
        }
    );
    // A sender can't make one either.
    let mut t = telemetry();
    t.devices = vec![device(); 2000];
    assert!(matches!(
        seal(&Body::Telemetry(t), CPE, 1, T0_MS, &rfc8032_key()),
        Err(smtpguard_protocol::SealError::TooLarge(_))
    ));
}

#[test]
fn malformed_cbor_is_rejected() {
    for bytes in [&b""[..], b"\x00", b"not cbor at all", b"\xa2\x68envelope"] {
        let err = check(&alert_topic(), bytes, None).unwrap_err();
        assert_eq!(err.reason(), RejectionReason::Malformed, "{bytes:?}: {err}");
    }
}

#[test]
fn unknown_version_is_rejected() {
    #[derive(serde::Serialize)]
    struct Env<'a> {
        version: u16,
        cpe_id: &'a str,
        seq: u64,
        sent_at: u64,
        kind: &'a str,
        #[serde(with = "serde_bytes_compat")]
        body: Vec<u8>,
    }
    #[derive(serde::Serialize)]
    struct Signed {
        #[serde(with = "serde_bytes_compat")]
        envelope: Vec<u8>,
        #[serde(with = "serde_bytes_compat")]
        signature: Vec<u8>,
    }
    mod serde_bytes_compat {
        pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
    }
    let env = serde_cbor::to_vec(&Env {
        version: 2,
        cpe_id: CPE,
        seq: 1,
        sent_at: T0_MS,
        kind: "alert",
        body: vec![0xa0],
    })
    .unwrap();
    let bytes = serde_cbor::to_vec(&Signed {
        envelope: env,
        signature: vec![0; 64],
    })
    .unwrap();
    assert_eq!(
        check(&alert_topic(), &bytes, None).unwrap_err(),
        Rejection::UnknownVersion(2)
    );
}

#[test]
fn unknown_key_is_rejected() {
    let bytes = seal(
        &Body::Alert(alert()),
        "cpe-stranger",
        1,
        T0_MS,
        &other_key(),
    )
    .unwrap();
    assert_eq!(
        check(
            &Topic::Alert("cpe-stranger".into()).to_string(),
            &bytes,
            None
        )
        .unwrap_err(),
        Rejection::UnknownKey {
            cpe_id: "cpe-stranger".into()
        }
    );
}

#[test]
fn revoked_key_is_rejected() {
    let err = verify(
        &alert_topic(),
        &alert_bytes(1, T0_MS),
        |_| KeyStatus::Revoked,
        None,
        None,
        T0_MS,
        &Freshness::default(),
    )
    .unwrap_err();
    assert_eq!(err, Rejection::RevokedKey { cpe_id: CPE.into() });
}

#[test]
fn forged_signature_is_rejected() {
    // Signed by someone else's key, claiming to be CPE.
    let bytes = seal(&Body::Alert(alert()), CPE, 1, T0_MS, &other_key()).unwrap();
    assert_eq!(
        check(&alert_topic(), &bytes, None).unwrap_err(),
        Rejection::BadSignature
    );
}

#[test]
fn tampered_body_is_rejected() {
    let mut bytes = alert_bytes(1, T0_MS);
    // Change the evidence text ("287 distinct" -> "187 distinct") inside the signed bytes.
    let at = bytes
        .windows(12)
        .position(|w| w == b"287 distinct")
        .unwrap();
    bytes[at] = b'1';
    assert_eq!(
        check(&alert_topic(), &bytes, None).unwrap_err(),
        Rejection::BadSignature
    );
}

#[test]
fn another_cpes_topic_is_rejected() {
    let err = check(
        &Topic::Alert("cpe-neighbour".into()).to_string(),
        &alert_bytes(1, T0_MS),
        None,
    )
    .unwrap_err();
    assert_eq!(err.reason(), RejectionReason::TopicMismatch);
    assert!(err.to_string().contains("cpe-neighbour"), "{err}");
}

#[test]
fn a_kind_on_another_kinds_topic_is_rejected() {
    let err = check(
        &Topic::Telemetry(CPE.into()).to_string(),
        &alert_bytes(1, T0_MS),
        None,
    )
    .unwrap_err();
    assert_eq!(
        err,
        Rejection::TopicMismatch {
            topic: Topic::Telemetry(CPE.into()).to_string(),
            detail: "alert message on a telemetry topic".into()
        }
    );
}

#[test]
fn a_per_cpe_policy_cannot_be_replayed_as_fleet_policy() {
    let bytes = seal(&Body::Policy(policy()), CPE, 1, T0_MS, &rfc8032_key()).unwrap();
    let err = check(&Topic::FleetPolicy.to_string(), &bytes, None).unwrap_err();
    assert_eq!(err.reason(), RejectionReason::TopicMismatch);
    let fleet = seal(&Body::Policy(policy()), FLEET_ID, 1, T0_MS, &rfc8032_key()).unwrap();
    let err = check(&Topic::CpePolicy(CPE.into()).to_string(), &fleet, None).unwrap_err();
    assert_eq!(err.reason(), RejectionReason::TopicMismatch);
}

#[test]
fn foreign_topic_is_rejected() {
    assert_eq!(
        check("spam/v1/x", &alert_bytes(1, T0_MS), None).unwrap_err(),
        Rejection::BadTopic("spam/v1/x".into())
    );
}

#[test]
fn replayed_message_is_rejected() {
    let mut window = ReplayWindow::new();
    let bytes = alert_bytes(41, T0_MS);
    check(&alert_topic(), &bytes, Some(&window)).unwrap();
    window.accept(41).unwrap();
    assert_eq!(
        check(&alert_topic(), &bytes, Some(&window)).unwrap_err(),
        Rejection::Replay {
            seq: 41,
            why: "was already accepted".into()
        }
    );
}

#[test]
fn message_below_the_window_is_rejected() {
    let mut window = ReplayWindow::new();
    window.accept(5000).unwrap();
    let err = check(&alert_topic(), &alert_bytes(10, T0_MS), Some(&window)).unwrap_err();
    assert_eq!(
        err,
        Rejection::Replay {
            seq: 10,
            why: "is below the window starting at 3977".into()
        }
    );
}

#[test]
fn stale_message_is_rejected() {
    let week = Freshness::default().max_age_ms;
    let sent = T0_MS - week - 1;
    assert_eq!(
        check(&alert_topic(), &alert_bytes(1, sent), None).unwrap_err(),
        Rejection::Stale {
            sent_at_ms: sent,
            now_ms: T0_MS
        }
    );
}

#[test]
fn message_from_the_future_is_rejected() {
    let sent = T0_MS + Freshness::default().max_future_ms + 1;
    assert_eq!(
        check(&alert_topic(), &alert_bytes(1, sent), None).unwrap_err(),
        Rejection::FromFuture {
            sent_at_ms: sent,
            now_ms: T0_MS
        }
    );
}

#[test]
fn policy_rollback_is_rejected() {
    let controller = rfc8032_key();
    let bytes = seal(&Body::Policy(policy()), FLEET_ID, 3, T0_MS, &controller).unwrap();
    let run = |applied| {
        verify(
            &Topic::FleetPolicy.to_string(),
            &bytes,
            |_| KeyStatus::Active(controller.verifying_key()),
            None,
            applied,
            T0_MS,
            &Freshness::default(),
        )
    };
    assert!(run(Some(7)).is_ok());
    assert_eq!(
        run(Some(8)).unwrap_err(),
        Rejection::PolicyRollback {
            version: 8,
            applied: 8
        }
    );
}

/// The agent's policy-only check gives the same answers as the full one, for a policy and
/// for each way a policy can be refused.
#[test]
fn the_policy_only_check_agrees_with_the_full_one() {
    let controller = rfc8032_key();
    let fleet = Topic::FleetPolicy.to_string();
    let good = seal(&Body::Policy(policy()), FLEET_ID, 3, T0_MS, &controller).unwrap();
    let forged = seal(&Body::Policy(policy()), FLEET_ID, 3, T0_MS, &other_key()).unwrap();
    let alert = alert_bytes(1, T0_MS);
    let key = |_: &str| KeyStatus::Active(controller.verifying_key());
    for (topic, bytes, applied) in [
        (fleet.as_str(), &good, None),
        (fleet.as_str(), &good, Some(8)),
        (fleet.as_str(), &forged, None),
        (fleet.as_str(), &alert, None),
    ] {
        let full = verify(
            topic,
            bytes,
            key,
            None,
            applied,
            T0_MS,
            &Freshness::default(),
        );
        let lean = verify_policy(topic, bytes, key, applied, T0_MS, &Freshness::default());
        assert_eq!(full, lean, "{topic}");
    }
    let lean = verify_policy(&fleet, &good, key, None, T0_MS, &Freshness::default());
    assert!(matches!(lean.unwrap().body, Body::Policy(p) if p == policy()));
    // An alert on its own topic passes every check but the body: only policy is decoded.
    let err = verify_policy(
        &alert_topic(),
        &alert,
        key,
        None,
        T0_MS,
        &Freshness::default(),
    )
    .unwrap_err();
    assert_eq!(err.reason(), RejectionReason::Malformed);
}

#[test]
fn every_reason_has_a_distinct_label() {
    let mut labels: Vec<_> = RejectionReason::ALL.iter().map(|r| r.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), RejectionReason::ALL.len());
}

#[cfg(feature = "batch")]
#[test]
fn batch_verification_rejects_only_the_bad_ones() {
    use smtpguard_protocol::verify_batch;
    let public = rfc8032_key().verifying_key();
    let good = alert_bytes(1, T0_MS);
    let forged = seal(&Body::Alert(alert()), CPE, 2, T0_MS, &other_key()).unwrap();
    let items = vec![
        (open(&good).unwrap(), public),
        (open(&forged).unwrap(), public),
        (open(&alert_bytes(3, T0_MS)).unwrap(), public),
    ];
    let results = verify_batch(items);
    assert!(results[0].is_ok());
    assert_eq!(results[1], Err(Rejection::BadSignature));
    assert_eq!(results[2].as_ref().unwrap().seq, 3);
}
