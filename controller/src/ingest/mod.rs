//! Ingest: from MQTT publishes to stored, verified messages.
//!
//! - [`Verifier`] (pure, time passed in): topic scheme, framing, topic/envelope match, key
//!   lookup, batch signature verification, freshness and the per-CPE replay window. It
//!   turns a batch of [`Inbound`] messages into [`Checked`]: what to store and what was
//!   rejected, counted by [`RejectionReason`].
//! - [`service`]: the async shell — two persistent MQTT sessions on the shared
//!   subscription (alerts, and the rest), each with a worker thread that verifies and
//!   writes batches in one transaction, and manual acknowledgements sent only after the
//!   commit.
//!
//! # Why no alert is lost or stored twice
//! The ingest acknowledges a publish to the broker only after the transaction holding it
//! committed. If the controller dies before that, the broker (which keeps the persistent
//! session's unacknowledged messages) delivers it again on reconnect. If it dies after the
//! commit but before the ack reached the broker, the message also comes again — and is
//! refused as a replay by the database, the arbiter between lanes and replicas
//! ([`crate::store::arbiter`]: the `(cpe_id, seq)` key, and the highest number kept per
//! CPE for what is older than the window). So every alert the broker accepted is
//! stored exactly once, provided the broker itself keeps the session (mosquitto with
//! persistence does across its restarts; the embedded broker does not survive the process).
//! Before the session first exists nothing is kept for it: the embedded broker therefore
//! lets no router in until the ingest's subscriptions are acknowledged, and with an external
//! broker the session is made at the controller's first start (see [`service`]).

pub mod service;

use std::collections::HashMap;

use smtpguard_protocol::envelope::FLEET_ID;
use smtpguard_protocol::{
    open, topic, verify_batch, Freshness, KeyStatus, Kind, Rejection, RejectionReason,
    ReplayWindow, Topic,
};

use crate::registry::KeyCache;
use crate::store::Received;

/// One message as it came from the broker.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The topic it was published on (a `$share/...` prefix is stripped).
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
}

/// The outcome of checking a batch.
#[derive(Debug, Default)]
pub struct Checked {
    /// Verified messages to store, in arrival order.
    pub accepted: Vec<Received>,
    /// How many messages were rejected for each reason (only non-zero reasons).
    pub rejections: Vec<(RejectionReason, u64)>,
}

/// The verification core: keys, replay windows and freshness limits.
#[derive(Debug)]
pub struct Verifier {
    keys: KeyCache,
    windows: HashMap<String, ReplayWindow>,
    freshness: Freshness,
}

impl Verifier {
    /// A verifier with the enrolled `keys`, replay windows restored from the highest stored
    /// sequence number of each CPE, and the given freshness limits.
    pub fn new(keys: KeyCache, highest: HashMap<String, u64>, freshness: Freshness) -> Verifier {
        let windows = highest
            .into_iter()
            .map(|(id, seq)| (id, ReplayWindow::after(seq)))
            .collect();
        Verifier {
            keys,
            windows,
            freshness,
        }
    }

    /// A verifier with the enrolled `keys`, no replay windows yet and the given freshness
    /// limits: what a starting ingest uses. The database is the arbiter
    /// ([`crate::store::arbiter`]): a message stored before (by this process or another
    /// replica) is refused there, and one older than the window by the highest number the
    /// database keeps per CPE; the windows here then spare it the repeats they see. So the
    /// start reads nothing that grows with history.
    pub fn starting(keys: KeyCache, freshness: Freshness) -> Verifier {
        Verifier::new(keys, HashMap::new(), freshness)
    }

    /// Replaces the key cache (after an enrollment or revocation).
    pub fn set_keys(&mut self, keys: KeyCache) {
        self.keys = keys;
    }

    /// The key cache in use.
    pub fn keys(&self) -> &KeyCache {
        &self.keys
    }

    /// Checks a batch. Accepted messages have their sequence numbers recorded in the replay
    /// windows (a duplicate inside the batch is a replay). State messages skip the window:
    /// an agent's last will is sealed when it connects and published by the broker after
    /// its newer messages; their uniqueness is enforced by the store's `(cpe_id, seq)` key.
    pub fn check(&mut self, batch: Vec<Inbound>, now_ms: u64) -> Checked {
        let mut counts = [0u64; RejectionReason::ALL.len()];
        let mut reject = |r: &Rejection| {
            tracing::debug!(reason = r.reason().as_str(), detail = %r, "message rejected");
            if let Some(i) = RejectionReason::ALL.iter().position(|x| *x == r.reason()) {
                counts[i] += 1;
            }
        };
        let mut to_verify = Vec::with_capacity(batch.len());
        let mut wires = Vec::with_capacity(batch.len());
        for msg in batch {
            match self.pre_check(&msg) {
                Ok((opened, key)) => {
                    to_verify.push((opened, key));
                    wires.push(msg.payload);
                }
                Err(r) => reject(&r),
            }
        }
        let mut accepted = Vec::with_capacity(to_verify.len());
        for (result, wire) in verify_batch(to_verify).into_iter().zip(wires) {
            let envelope = match result {
                Ok(e) => e,
                Err(r) => {
                    reject(&r);
                    continue;
                }
            };
            if let Err(r) = envelope.check_freshness(now_ms, &self.freshness) {
                reject(&r);
                continue;
            }
            // The database keys messages by a signed 64-bit sequence number: one above it
            // could never be stored, and would fail its whole batch at every retry.
            if i64::try_from(envelope.seq).is_err() {
                reject(&Rejection::Malformed(format!(
                    "sequence number {} above {}",
                    envelope.seq,
                    i64::MAX
                )));
                continue;
            }
            if envelope.kind() != Kind::State {
                let window = self.windows.entry(envelope.cpe_id.clone()).or_default();
                if let Err(r) = window.accept(envelope.seq) {
                    reject(&r);
                    continue;
                }
            }
            accepted.push(Received {
                envelope,
                wire,
                received_at_ms: now_ms,
            });
        }
        let rejections = RejectionReason::ALL
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (*r, n))
            .collect();
        Checked {
            accepted,
            rejections,
        }
    }

    /// Everything before the signature: topic, framing, topic match, what an agent may
    /// send, and the sender's key.
    fn pre_check(
        &self,
        msg: &Inbound,
    ) -> Result<(smtpguard_protocol::Opened, ed25519_dalek::VerifyingKey), Rejection> {
        let name = topic::strip_share(&msg.topic);
        let parsed = Topic::parse(name)?;
        if matches!(
            parsed,
            Topic::CpePolicy(_) | Topic::FleetPolicy | Topic::Command(_)
        ) {
            // Agents never publish policy or commands; only the controller's own messages
            // live there, and the ingest does not subscribe to them.
            return Err(Rejection::BadTopic(name.chars().take(200).collect()));
        }
        let opened = open(&msg.payload)?;
        opened.check_topic(&parsed)?;
        let cpe_id = &opened.header().cpe_id;
        if cpe_id == FLEET_ID {
            return Err(Rejection::Malformed("fleet id used by a sender".into()));
        }
        match self.keys.status(cpe_id) {
            KeyStatus::Active(key) => Ok((opened, key)),
            KeyStatus::Revoked => Err(Rejection::RevokedKey {
                cpe_id: cpe_id.clone(),
            }),
            KeyStatus::Unknown => Err(Rejection::UnknownKey {
                cpe_id: cpe_id.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_protocol::{keys, seal, AgentStats, Body, State, Status, Telemetry};

    use crate::store::Store;

    fn telemetry() -> Body {
        Body::Telemetry(Telemetry {
            window_start_ms: 0,
            window_secs: 60,
            public_ip: None,
            stats: AgentStats::default(),
            devices: vec![],
            connections: vec![],
        })
    }

    fn setup() -> (Verifier, ed25519_dalek::SigningKey) {
        let mut store = Store::open_in_memory().unwrap();
        let key = keys::generate();
        crate::registry::add(
            &mut store,
            "cpe-1",
            &keys::public_key_text(&key.verifying_key()),
            None,
            0,
        )
        .unwrap();
        let v = Verifier::new(
            KeyCache::load(&store).unwrap(),
            HashMap::new(),
            Freshness::default(),
        );
        (v, key)
    }

    fn inbound(leaf: &str, cpe: &str, payload: Vec<u8>) -> Inbound {
        Inbound {
            topic: format!("smtpguard/v1/cpe/{cpe}/{leaf}"),
            payload,
        }
    }

    #[test]
    fn each_bad_message_is_counted_under_its_reason() {
        let (mut v, key) = setup();
        let now = 1_000_000_000;
        let good = seal(&telemetry(), "cpe-1", 1, now, &key).unwrap();
        let mut tampered = good.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let other = keys::generate();
        let forged = seal(&telemetry(), "cpe-1", 2, now, &other).unwrap();
        let stale = seal(&telemetry(), "cpe-1", 3, 1, &key).unwrap();
        let unknown = seal(&telemetry(), "cpe-2", 1, now, &other).unwrap();
        let batch = vec![
            inbound("telemetry", "cpe-1", good.clone()),
            inbound("telemetry", "cpe-1", good.clone()),
            inbound("telemetry", "cpe-1", tampered),
            inbound("telemetry", "cpe-1", forged),
            inbound("telemetry", "cpe-1", stale),
            inbound("telemetry", "cpe-2", unknown),
            inbound("alert", "cpe-1", good.clone()),
            inbound("other", "cpe-1", good),
            inbound("telemetry", "cpe-1", vec![0xff; 70_000]),
        ];
        let checked = v.check(batch, now);
        assert_eq!(checked.accepted.len(), 1);
        let counts: HashMap<_, _> = checked.rejections.into_iter().collect();
        assert_eq!(counts.get(&RejectionReason::Replay), Some(&1));
        assert_eq!(counts.get(&RejectionReason::BadSignature), Some(&2));
        assert_eq!(counts.get(&RejectionReason::Stale), Some(&1));
        assert_eq!(counts.get(&RejectionReason::UnknownKey), Some(&1));
        assert_eq!(counts.get(&RejectionReason::TopicMismatch), Some(&1));
        assert_eq!(counts.get(&RejectionReason::BadTopic), Some(&1));
        assert_eq!(counts.get(&RejectionReason::Oversize), Some(&1));
    }

    /// A sequence number the database cannot hold is refused here, so the rest of its
    /// batch is stored instead of failing at every retry.
    #[test]
    fn a_sequence_number_beyond_the_databases_is_refused_and_the_batch_stored() {
        let (mut v, key) = setup();
        let now = 1_000_000_000;
        let msg = |seq| {
            inbound(
                "telemetry",
                "cpe-1",
                seal(&telemetry(), "cpe-1", seq, now, &key).unwrap(),
            )
        };
        let c = v.check(vec![msg(u64::MAX), msg(7)], now);
        let seqs: Vec<u64> = c.accepted.iter().map(|m| m.envelope.seq).collect();
        assert_eq!(seqs, vec![7]);
        assert_eq!(c.rejections, vec![(RejectionReason::Malformed, 1)]);
        for (url, _guard) in crate::store::db::tests::backends() {
            let store = Store::open_url(&url).unwrap();
            assert_eq!(
                store.write_batch(&c.accepted, &c.rejections).unwrap(),
                vec![true],
                "{url}"
            );
            assert_eq!(
                store.rejection_count(RejectionReason::Malformed).unwrap(),
                1
            );
        }
    }

    #[test]
    fn a_starting_verifier_leaves_what_another_replica_stored_to_the_database() {
        let (v, key) = setup();
        let now = 1_000_000_000;
        let msg = |seq| {
            inbound(
                "telemetry",
                "cpe-1",
                seal(&telemetry(), "cpe-1", seq, now, &key).unwrap(),
            )
        };
        for (url, _guard) in crate::store::db::tests::backends() {
            let store = Store::open_url(&url).unwrap();
            crate::registry::add(
                &mut store.clone(),
                "cpe-1",
                &keys::public_key_text(&key.verifying_key()),
                None,
                0,
            )
            .unwrap();
            // Another replica stored 10 and 12 (and 2,000, far ahead); 11 was in flight
            // to this one when it died, and its broker session hands everything out again.
            let mut other = Verifier::starting(v.keys().clone(), Freshness::default());
            let c = other.check(vec![msg(10), msg(12)], now);
            assert_eq!(
                store.write_batch(&c.accepted, &[]).unwrap(),
                vec![true, true]
            );
            let mut this = Verifier::starting(v.keys().clone(), Freshness::default());
            let c = this.check(vec![msg(11), msg(12), msg(10), msg(13), msg(13)], now);
            let seqs: Vec<u64> = c.accepted.iter().map(|m| m.envelope.seq).collect();
            assert_eq!(
                seqs,
                vec![11, 12, 10, 13],
                "the repeat of 13 is refused here"
            );
            assert_eq!(
                store.write_batch(&c.accepted, &c.rejections).unwrap(),
                vec![true, false, false, true],
                "{url}: what was stored before is refused by the database"
            );
        }
    }

    #[test]
    fn a_last_will_older_than_the_window_is_still_accepted() {
        let (mut v, key) = setup();
        let now = 1_000_000_000;
        let will = Body::State(State {
            status: Status::Offline,
            agent_version: "t".into(),
            fleet_policy_version: None,
            cpe_policy_version: None,
            public_ip: None,
        });
        let will = seal(&will, "cpe-1", 5, now, &key).unwrap();
        let newer = seal(&telemetry(), "cpe-1", 5000, now, &key).unwrap();
        let c = v.check(vec![inbound("telemetry", "cpe-1", newer)], now);
        assert_eq!(c.accepted.len(), 1);
        let c = v.check(vec![inbound("state", "cpe-1", will)], now);
        assert_eq!(c.accepted.len(), 1);
    }
}
