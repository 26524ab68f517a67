//! Which policy messages an agent applies (pure: no I/O besides the versions file).
//!
//! A policy is handed to the run loop only if it verifies against the controller's key,
//! its version is above the one applied for its scope, it passes the protocol's validation,
//! and it passes the protocol's safety check ([`check_policy_safety`]) against this
//! router's [`SafetyContext`]: the ISP relays of its local configuration and the addresses
//! of the broker the uplink talks to. Anything else is refused with the check's reason, for
//! the NOC to act on; the same version seen again (a retained policy redelivered on
//! reconnect) is ignored silently. A version below the configured floor
//! (`uplink.policy_version_floor`) is refused even by a router that has applied nothing
//! yet, so a factory-reset router cannot be handed an old, validly signed policy.
//!
//! The local relays are added to the `allow_relays` of every policy handed on, so no pushed
//! policy can remove them: the effective relay set is always local relays plus the policy's.
//!
//! Per-CPE policy overrides the fleet policy as a whole while present; the run loop gets
//! each scope's newest policy and decides which is in force.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use smtpguard_protocol::{
    check_policy_safety, open, verify_policy, AckOutcome, Body, Freshness, KeyStatus, Policy,
    PolicyAck, PolicyScope, Rejection, SafetyContext, Topic,
};

use super::seq::{write_durably, SeqError};

/// A verified policy for the run loop to apply; answer it with an ack.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyUpdate {
    /// Fleet policy or this router's override.
    pub scope: PolicyScope,
    /// Its version.
    pub version: u64,
    /// The policy.
    pub policy: Policy,
}

impl PolicyUpdate {
    /// The ack saying it was applied.
    pub fn applied(&self) -> PolicyAck {
        PolicyAck {
            scope: self.scope,
            policy_version: self.version,
            outcome: AckOutcome::Applied,
        }
    }

    /// The ack saying it was refused, and why.
    pub fn refused(&self, reason: impl Into<String>) -> PolicyAck {
        PolicyAck {
            scope: self.scope,
            policy_version: self.version,
            outcome: AckOutcome::Refused {
                reason: reason.into(),
            },
        }
    }
}

/// What to do with one policy message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Hand it to the run loop.
    Apply(PolicyUpdate),
    /// Answer with this refusal.
    Refuse(PolicyAck),
    /// Nothing to do (not ours, empty, or already handled).
    Ignore,
}

/// Applied versions per scope, persisted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Versions {
    /// Applied fleet policy version.
    pub fleet: Option<u64>,
    /// Applied per-CPE policy version.
    pub cpe: Option<u64>,
}

impl Versions {
    fn get(&self, scope: PolicyScope) -> Option<u64> {
        match scope {
            PolicyScope::Fleet => self.fleet,
            PolicyScope::Cpe => self.cpe,
        }
    }
    fn raise(&mut self, scope: PolicyScope, v: u64) {
        let slot = match scope {
            PolicyScope::Fleet => &mut self.fleet,
            PolicyScope::Cpe => &mut self.cpe,
        };
        *slot = Some(slot.map_or(v, |old| old.max(v)));
    }
}

/// The policy gate.
#[derive(Debug)]
pub struct PolicyGuard {
    controller_key: VerifyingKey,
    cpe_id: String,
    /// What no policy may cut off: the local relays and the broker's addresses.
    safety: SafetyContext,
    applied: Versions,
    offered: Versions,
    path: PathBuf,
    /// The oldest version accepted for either scope (0: none).
    version_floor: u64,
}

impl PolicyGuard {
    /// A gate for `cpe_id` that refuses policies unsafe under `safety`, with applied
    /// versions read from `state_dir/policy-versions.json`.
    pub fn open(
        state_dir: &Path,
        controller_key: VerifyingKey,
        cpe_id: String,
        safety: SafetyContext,
    ) -> PolicyGuard {
        let path = state_dir.join("policy-versions.json");
        let applied = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        PolicyGuard {
            controller_key,
            cpe_id,
            safety,
            applied,
            offered: applied,
            path,
            version_floor: 0,
        }
    }

    /// Refuses every policy version below `floor` (`uplink.policy_version_floor`), whatever
    /// was applied before.
    pub fn with_version_floor(mut self, floor: u64) -> PolicyGuard {
        self.version_floor = floor;
        self
    }

    /// Applied versions.
    pub fn applied(&self) -> Versions {
        self.applied
    }

    /// Records an applied version durably (called when the run loop acks `Applied`).
    ///
    /// # Errors
    /// [`SeqError::Io`] when the file cannot be written.
    pub fn mark_applied(&mut self, scope: PolicyScope, version: u64) -> Result<(), SeqError> {
        self.applied.raise(scope, version);
        self.offered.raise(scope, version);
        let bytes = serde_json::to_vec(&self.applied).unwrap_or_default();
        write_durably(&self.path, &bytes)
    }

    /// Decides about one message received on `topic`.
    pub fn decide(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Decision {
        let scope = match Topic::parse(topic) {
            Ok(Topic::FleetPolicy) => PolicyScope::Fleet,
            Ok(Topic::CpePolicy(id)) if id == self.cpe_id => PolicyScope::Cpe,
            _ => return Decision::Ignore,
        };
        if payload.is_empty() {
            // A cleared retained topic.
            return Decision::Ignore;
        }
        let claimed = open(payload).map(|o| o.header().seq).unwrap_or(0);
        let refuse = |version: u64, reason: String| {
            Decision::Refuse(PolicyAck {
                scope,
                policy_version: version,
                outcome: AckOutcome::Refused { reason },
            })
        };
        let floor = match (self.applied.get(scope), self.offered.get(scope)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        // Policies stay retained for months: their age is no reason to refuse them; the
        // version check is what stops a replayed old policy.
        let any_time = Freshness {
            max_age_ms: u64::MAX,
            max_future_ms: u64::MAX,
        };
        let key = self.controller_key;
        let envelope = match verify_policy(
            topic,
            payload,
            |_| KeyStatus::Active(key),
            floor,
            now_ms,
            &any_time,
        ) {
            Ok(e) => e,
            Err(Rejection::PolicyRollback { version, applied }) if version == applied => {
                return Decision::Ignore
            }
            Err(r) => return refuse(claimed, format!("{} ({})", r, r.reason().as_str())),
        };
        let Body::Policy(mut policy) = envelope.body else {
            return refuse(claimed, "not a policy message".into());
        };
        let version = policy.policy_version;
        if version < self.version_floor {
            return refuse(
                version,
                format!(
                    "policy version {version} is below this router's floor {} (uplink.policy_version_floor)",
                    self.version_floor
                ),
            );
        }
        if let Err(e) = policy.validate() {
            return refuse(version, format!("invalid policy: {e}"));
        }
        if let Err(e) = check_policy_safety(&policy, &self.safety) {
            return refuse(version, e.to_string());
        }
        policy.allow_relays_too(&self.safety.local_relays);
        self.offered.raise(scope, version);
        Decision::Apply(PolicyUpdate {
            scope,
            version,
            policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_protocol::{envelope::FLEET_ID, keys, seal};

    fn signed(key: &ed25519_dalek::SigningKey, version: u64, policy: Policy, id: &str) -> Vec<u8> {
        let mut p = policy;
        p.policy_version = version;
        seal(&Body::Policy(p), id, version, 1, key).unwrap()
    }

    #[test]
    fn versions_must_increase_and_signatures_must_verify() {
        let dir = tempfile::tempdir().unwrap();
        let key = keys::generate();
        let mut g = PolicyGuard::open(dir.path(), key.verifying_key(), "cpe-1".into(), router());
        let fleet = "smtpguard/v1/policy/fleet";
        let d = g.decide(fleet, &signed(&key, 3, Policy::default(), FLEET_ID), 5);
        let Decision::Apply(u) = d else {
            panic!("{d:?}")
        };
        assert_eq!(u.version, 3);
        g.mark_applied(PolicyScope::Fleet, 3).unwrap();
        // Redelivery of the same version: silent.
        assert_eq!(
            g.decide(fleet, &signed(&key, 3, Policy::default(), FLEET_ID), 5),
            Decision::Ignore
        );
        // Older: refused with the reason.
        let Decision::Refuse(ack) =
            g.decide(fleet, &signed(&key, 2, Policy::default(), FLEET_ID), 5)
        else {
            panic!()
        };
        assert_eq!(ack.policy_version, 2);
        assert!(format!("{:?}", ack.outcome).contains("policy_rollback"));
        // Wrong key: refused, version taken from the envelope.
        let other = keys::generate();
        let Decision::Refuse(ack) =
            g.decide(fleet, &signed(&other, 9, Policy::default(), FLEET_ID), 5)
        else {
            panic!()
        };
        assert_eq!(ack.policy_version, 9);
        assert!(format!("{:?}", ack.outcome).contains("bad_signature"));
        // Another CPE's override: not ours.
        assert_eq!(
            g.decide(
                "smtpguard/v1/cpe/cpe-2/policy",
                &signed(&key, 10, Policy::default(), "cpe-2"),
                5
            ),
            Decision::Ignore
        );
        // Applied versions survive a restart.
        let g2 = PolicyGuard::open(
            dir.path(),
            key.verifying_key(),
            "cpe-1".into(),
            SafetyContext::default(),
        );
        assert_eq!(g2.applied().fleet, Some(3));
    }

    /// Finding row 3 of issue 17: a factory-reset router (nothing applied) refuses a
    /// validly signed policy older than its configured floor, for either scope, and
    /// applies one at or above it.
    #[test]
    fn a_router_with_nothing_applied_refuses_versions_below_its_floor() {
        let dir = tempfile::tempdir().unwrap();
        let key = keys::generate();
        let mut g = PolicyGuard::open(dir.path(), key.verifying_key(), "cpe-1".into(), router())
            .with_version_floor(5);
        assert_eq!(g.applied(), Versions::default());
        let fleet = "smtpguard/v1/policy/fleet";
        let reason = refusal(g.decide(fleet, &signed(&key, 4, Policy::default(), FLEET_ID), 5));
        assert!(reason.contains("floor 5"), "{reason}");
        let own = "smtpguard/v1/cpe/cpe-1/policy";
        let reason = refusal(g.decide(own, &signed(&key, 2, Policy::default(), "cpe-1"), 5));
        assert!(reason.contains("policy_version_floor"), "{reason}");
        assert!(matches!(
            g.decide(fleet, &signed(&key, 5, Policy::default(), FLEET_ID), 5),
            Decision::Apply(_)
        ));
    }

    fn refusal(d: Decision) -> String {
        match d {
            Decision::Refuse(PolicyAck {
                outcome: AckOutcome::Refused { reason },
                ..
            }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Finding rows 5 and 6 of issue 17, as a router sees them: a signed, valid policy that
    /// would convict everyone, or the ISP relay of the local configuration after dropping
    /// every allowlisted relay, or the broker, is refused with the reason in the ack.
    #[test]
    fn policies_that_would_block_the_uplink_or_a_relay_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = keys::generate();
        let mut g = PolicyGuard::open(dir.path(), key.verifying_key(), "cpe-1".into(), router());
        let fleet = "smtpguard/v1/policy/fleet";
        let with = |servers: &[&str]| {
            let mut p = Policy::default();
            p.indicators.mail_servers = servers.iter().map(|s| s.parse().unwrap()).collect();
            p
        };

        let why = refusal(g.decide(fleet, &signed(&key, 1, with(&["0.0.0.0/0"]), FLEET_ID), 5));
        assert!(
            why.contains("indicators.mail_servers") && why.contains("0.0.0.0/0"),
            "{why}"
        );

        let p = with(&["198.51.100.25/32"]);
        assert!(p.allow_relays.is_empty());
        let why = refusal(g.decide(fleet, &signed(&key, 2, p, FLEET_ID), 5));
        assert!(
            why.contains("local ISP relay 198.51.100.25/32:587"),
            "{why}"
        );

        let why = refusal(g.decide(
            fleet,
            &signed(&key, 3, with(&["192.0.2.0/24"]), FLEET_ID),
            5,
        ));
        assert!(why.contains("covers the broker address 192.0.2.1"), "{why}");

        let mut p = with(&["203.0.113.0/24"]);
        p.allow_relays = vec!["203.0.113.7:587".parse().unwrap()];
        let why = refusal(g.decide(fleet, &signed(&key, 4, p, FLEET_ID), 5));
        assert!(
            why.contains("allowlisted relay 203.0.113.7/32:587"),
            "{why}"
        );

        // Nothing refused was recorded as applied.
        assert_eq!(g.applied().fleet, None);
    }

    #[test]
    fn local_relays_join_every_applied_policy() {
        let dir = tempfile::tempdir().unwrap();
        let key = keys::generate();
        let mut g = PolicyGuard::open(dir.path(), key.verifying_key(), "cpe-1".into(), router());
        let mut p = Policy {
            allow_relays: vec!["203.0.113.7:587".parse().unwrap()],
            ..Policy::default()
        };
        p.indicators.mail_servers = vec!["178.63.41.0/24".parse().unwrap()];
        let d = g.decide(
            "smtpguard/v1/policy/fleet",
            &signed(&key, 7, p, FLEET_ID),
            5,
        );
        let Decision::Apply(u) = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            u.policy.allow_relays,
            vec![
                "203.0.113.7:587".parse().unwrap(),
                "198.51.100.25:587".parse().unwrap()
            ]
        );
        assert!(u.policy.is_relay("198.51.100.25".parse().unwrap(), 587));
    }

    /// The router of these tests: the ISP relay in its local configuration, and its broker.
    fn router() -> SafetyContext {
        SafetyContext {
            local_relays: vec!["198.51.100.25:587".parse().unwrap()],
            brokers: vec!["192.0.2.1".parse().unwrap()],
        }
    }
}
