//! Who may do what on the embedded broker: pure functions over a client's identity and a
//! topic, the same rules `deploy/mosquitto/acl` gives mosquitto.
//!
//! - The controller (its configured user name and password) may publish and subscribe
//!   anywhere: it writes policy and commands and reads everything the fleet sends.
//! - A CPE (user name = client id = its CPE id) publishes only its own
//!   `smtpguard/v1/cpe/{id}/{telemetry,alert,state,ack,command-ack}`, retained only on `state`; its last
//!   will may only be its own `state`; it subscribes only to the fleet policy, its own
//!   policy override and its own command topic, each by its exact name (no wildcards, no
//!   shared subscriptions). It can write no policy and no command, not even its own.

use smtpguard_protocol::topic::PREFIX;

/// A logged-in client of the embedded broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The controller's own login: every right.
    Controller,
    /// A router, by CPE id.
    Cpe(String),
}

/// The topic leaves a CPE may publish under its own prefix.
const CPE_PUBLISH_LEAVES: [&str; 5] = ["telemetry", "alert", "state", "ack", "command-ack"];

/// The topic leaves of its own prefix a CPE may subscribe to.
const CPE_SUBSCRIBE_LEAVES: [&str; 2] = ["policy", "command"];

/// The leaf under `smtpguard/v1/cpe/{id}/` of `topic` when it is `id`'s own topic.
pub(crate) fn own_leaf<'a>(id: &str, topic: &'a str) -> Option<&'a str> {
    topic
        .strip_prefix(PREFIX)?
        .strip_prefix("/cpe/")?
        .strip_prefix(id)?
        .strip_prefix('/')
}

/// Whether `who` may publish on `topic` (with the retain flag `retain`).
pub fn may_publish(who: &Identity, topic: &str, retain: bool) -> bool {
    match who {
        Identity::Controller => true,
        Identity::Cpe(id) => match own_leaf(id, topic) {
            Some("state") => true,
            Some(leaf) => !retain && CPE_PUBLISH_LEAVES.contains(&leaf),
            None => false,
        },
    }
}

/// Whether `who` may leave a last will on `topic`.
pub fn may_will(who: &Identity, topic: &str) -> bool {
    match who {
        Identity::Controller => true,
        Identity::Cpe(id) => own_leaf(id, topic) == Some("state"),
    }
}

/// Whether `who` may subscribe to `filter`.
pub fn may_subscribe(who: &Identity, filter: &str) -> bool {
    match who {
        Identity::Controller => true,
        Identity::Cpe(id) => {
            filter == format!("{PREFIX}/policy/fleet")
                || own_leaf(id, filter).is_some_and(|leaf| CPE_SUBSCRIBE_LEAVES.contains(&leaf))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpe_writes_only_its_own_leaves_and_reads_only_its_policy_and_commands() {
        let a = Identity::Cpe("cpe-a".into());
        for leaf in ["telemetry", "alert", "ack", "command-ack"] {
            let t = format!("smtpguard/v1/cpe/cpe-a/{leaf}");
            assert!(may_publish(&a, &t, false), "{t}");
            assert!(!may_publish(&a, &t, true), "retained {t}");
        }
        assert!(may_publish(&a, "smtpguard/v1/cpe/cpe-a/state", true));
        for t in [
            "smtpguard/v1/cpe/cpe-b/telemetry",
            "smtpguard/v1/cpe/cpe-a/policy",
            "smtpguard/v1/cpe/cpe-a/command",
            "smtpguard/v1/cpe/cpe-b/command",
            "smtpguard/v1/cpe/cpe-b/command-ack",
            "smtpguard/v1/cpe/cpe-a/telemetry/x",
            "smtpguard/v1/cpe/cpe-ab/telemetry",
            "smtpguard/v1/cpe/cpe-a",
            "smtpguard/v1/policy/fleet",
            "smtpguard/v1/cpe/+/telemetry",
            "other/topic",
            "",
        ] {
            assert!(!may_publish(&a, t, false), "{t}");
        }
        assert!(may_will(&a, "smtpguard/v1/cpe/cpe-a/state"));
        assert!(!may_will(&a, "smtpguard/v1/cpe/cpe-a/alert"));
        assert!(!may_will(&a, "smtpguard/v1/cpe/cpe-b/state"));
        assert!(!may_will(&a, "smtpguard/v1/policy/fleet"));
        for f in [
            "smtpguard/v1/policy/fleet",
            "smtpguard/v1/cpe/cpe-a/policy",
            "smtpguard/v1/cpe/cpe-a/command",
        ] {
            assert!(may_subscribe(&a, f), "{f}");
        }
        for f in [
            "#",
            "smtpguard/#",
            "smtpguard/v1/cpe/+/policy",
            "smtpguard/v1/cpe/cpe-b/policy",
            "smtpguard/v1/cpe/cpe-b/command",
            "smtpguard/v1/cpe/+/command",
            "smtpguard/v1/cpe/cpe-a/command-ack",
            "smtpguard/v1/cpe/cpe-a/#",
            "smtpguard/v1/cpe/cpe-a/+",
            "smtpguard/v1/cpe/cpe-a/telemetry",
            "$share/controllers/smtpguard/v1/cpe/+/alert",
            "$SYS/#",
        ] {
            assert!(!may_subscribe(&a, f), "{f}");
        }
        let c = Identity::Controller;
        assert!(may_publish(&c, "smtpguard/v1/policy/fleet", true));
        assert!(may_subscribe(
            &c,
            "$share/controllers/smtpguard/v1/cpe/+/alert"
        ));
    }
}
