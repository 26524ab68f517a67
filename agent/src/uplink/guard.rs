//! Which policy messages an agent applies (pure: no I/O besides the versions file).
//!
//! A policy is handed to the run loop only if it verifies against the controller's key,
//! its version is above the one applied for its scope, it passes the protocol's validation,
//! and it cannot cut the router off: no indicator network may cover an allowlisted relay
//! or the broker the uplink talks to, and none may cover every address. Anything else is
//! refused with a reason the NOC can act on; the same version seen again (a retained
//! policy redelivered on reconnect) is ignored silently.
//!
//! Per-CPE policy overrides the fleet policy as a whole while present; the run loop gets
//! each scope's newest policy and decides which is in force.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use smtpguard_protocol::{
    open, verify_policy, AckOutcome, Body, Freshness, KeyStatus, Policy, PolicyAck, PolicyScope,
    Rejection, Topic,
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
    /// Addresses the uplink depends on (the broker's).
    protected: Vec<IpAddr>,
    applied: Versions,
    offered: Versions,
    path: PathBuf,
}

impl PolicyGuard {
    /// A gate for `cpe_id`, with applied versions read from `state_dir/policy-versions.json`.
    pub fn open(
        state_dir: &Path,
        controller_key: VerifyingKey,
        cpe_id: String,
        protected: Vec<IpAddr>,
    ) -> PolicyGuard {
        let path = state_dir.join("policy-versions.json");
        let applied = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        PolicyGuard {
            controller_key,
            cpe_id,
            protected,
            applied,
            offered: applied,
            path,
        }
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
        let Body::Policy(policy) = envelope.body else {
            return refuse(claimed, "not a policy message".into());
        };
        let version = policy.policy_version;
        if let Err(e) = policy.validate() {
            return refuse(version, format!("invalid policy: {e}"));
        }
        if let Some(why) = unsafe_reason(&policy, &self.protected) {
            return refuse(version, why);
        }
        self.offered.raise(scope, version);
        Decision::Apply(PolicyUpdate {
            scope,
            version,
            policy,
        })
    }
}

/// Why applying `policy` could cut the router off, if it could.
pub fn unsafe_reason(policy: &Policy, protected: &[IpAddr]) -> Option<String> {
    for net in &policy.indicators.mail_servers {
        if net.prefix() == 0 {
            return Some(format!(
                "indicators.mail_servers entry {net} covers every address"
            ));
        }
        if let Some(ip) = protected.iter().find(|ip| net.contains(**ip)) {
            return Some(format!(
                "indicators.mail_servers entry {net} covers the broker address {ip}; applying it would cut this router's uplink"
            ));
        }
        if let Some(relay) = policy
            .allow_relays
            .iter()
            .find(|r| net.contains(r.net.addr()))
        {
            return Some(format!(
                "indicators.mail_servers entry {net} covers the allowlisted relay {relay}"
            ));
        }
    }
    None
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
        let mut g = PolicyGuard::open(
            dir.path(),
            key.verifying_key(),
            "cpe-1".into(),
            vec!["192.0.2.1".parse().unwrap()],
        );
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
        let g2 = PolicyGuard::open(dir.path(), key.verifying_key(), "cpe-1".into(), vec![]);
        assert_eq!(g2.applied().fleet, Some(3));
    }

    #[test]
    fn policies_that_would_block_the_uplink_or_a_relay_are_refused() {
        let mut p = Policy::default();
        p.indicators.mail_servers = vec!["192.0.2.0/24".parse().unwrap()];
        let broker: IpAddr = "192.0.2.1".parse().unwrap();
        let why = unsafe_reason(&p, &[broker]).unwrap();
        assert!(why.contains("broker address 192.0.2.1"), "{why}");
        p.allow_relays = vec!["198.51.100.7:587".parse().unwrap()];
        p.indicators.mail_servers = vec!["198.51.100.0/24".parse().unwrap()];
        let why = unsafe_reason(&p, &[broker]).unwrap();
        assert!(
            why.contains("allowlisted relay 198.51.100.7/32:587"),
            "{why}"
        );
        p.indicators.mail_servers = vec!["203.0.113.0/24".parse().unwrap()];
        assert_eq!(unsafe_reason(&p, &[broker]), None);
    }
}
