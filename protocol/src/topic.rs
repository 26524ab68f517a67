//! The MQTT topic scheme (all QoS 1):
//!
//! | topic | kind | retained |
//! |---|---|---|
//! | `smtpguard/v1/cpe/{cpe_id}/telemetry` | [`Kind::Telemetry`] | no |
//! | `smtpguard/v1/cpe/{cpe_id}/alert` | [`Kind::Alert`] | no |
//! | `smtpguard/v1/cpe/{cpe_id}/state` | [`Kind::State`] | yes (and last will) |
//! | `smtpguard/v1/cpe/{cpe_id}/ack` | [`Kind::PolicyAck`] | no |
//! | `smtpguard/v1/cpe/{cpe_id}/command-ack` | [`Kind::CommandAck`] | no |
//! | `smtpguard/v1/cpe/{cpe_id}/command` | [`Kind::Command`] (controller to CPE) | no |
//! | `smtpguard/v1/cpe/{cpe_id}/policy` | [`Kind::Policy`] (per-CPE override) | yes |
//! | `smtpguard/v1/policy/fleet` | [`Kind::Policy`] (fleet) | yes |
//!
//! Everything a CPE publishes lives under its own `cpe/{cpe_id}/` prefix, so a broker ACL
//! such as mosquitto's `pattern write smtpguard/v1/cpe/%u/#` confines it. Controllers
//! subscribe through the shared group [`SHARE_GROUP`] so several instances split the fleet.

use std::fmt;

use crate::envelope::{is_valid_cpe_id, Rejection};
use crate::messages::Kind;

/// Prefix of every smtpguard topic.
pub const PREFIX: &str = "smtpguard/v1";

/// Shared-subscription group of the controllers.
pub const SHARE_GROUP: &str = "$share/controllers/";

/// One concrete smtpguard topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `cpe/{id}/telemetry`
    Telemetry(String),
    /// `cpe/{id}/alert`
    Alert(String),
    /// `cpe/{id}/state`
    State(String),
    /// `cpe/{id}/ack`
    PolicyAck(String),
    /// `cpe/{id}/policy`
    CpePolicy(String),
    /// `cpe/{id}/command` (controller to CPE)
    Command(String),
    /// `cpe/{id}/command-ack`
    CommandAck(String),
    /// `policy/fleet`
    FleetPolicy,
}

impl Topic {
    /// The topic for `kind` sent by (or, for policy, to) `cpe_id`.
    pub fn for_cpe(kind: Kind, cpe_id: &str) -> Topic {
        let id = cpe_id.to_owned();
        match kind {
            Kind::Telemetry => Topic::Telemetry(id),
            Kind::Alert => Topic::Alert(id),
            Kind::State => Topic::State(id),
            Kind::PolicyAck => Topic::PolicyAck(id),
            Kind::Policy => Topic::CpePolicy(id),
            Kind::Command => Topic::Command(id),
            Kind::CommandAck => Topic::CommandAck(id),
        }
    }

    /// The kind of message this topic carries.
    pub fn kind(&self) -> Kind {
        match self {
            Topic::Telemetry(_) => Kind::Telemetry,
            Topic::Alert(_) => Kind::Alert,
            Topic::State(_) => Kind::State,
            Topic::PolicyAck(_) => Kind::PolicyAck,
            Topic::CpePolicy(_) | Topic::FleetPolicy => Kind::Policy,
            Topic::Command(_) => Kind::Command,
            Topic::CommandAck(_) => Kind::CommandAck,
        }
    }

    /// The CPE the topic belongs to; `None` for the fleet policy.
    pub fn cpe_id(&self) -> Option<&str> {
        match self {
            Topic::Telemetry(id)
            | Topic::Alert(id)
            | Topic::State(id)
            | Topic::PolicyAck(id)
            | Topic::CpePolicy(id)
            | Topic::Command(id)
            | Topic::CommandAck(id) => Some(id),
            Topic::FleetPolicy => None,
        }
    }

    /// Whether messages on this topic are published retained.
    pub fn is_retained(&self) -> bool {
        matches!(
            self,
            Topic::State(_) | Topic::CpePolicy(_) | Topic::FleetPolicy
        )
    }

    /// Parses a topic name (without any `$share/...` prefix).
    ///
    /// # Errors
    /// [`Rejection::BadTopic`] for anything outside the scheme, including invalid CPE ids.
    pub fn parse(topic: &str) -> Result<Topic, Rejection> {
        let bad = || Rejection::BadTopic(topic.chars().take(200).collect());
        let rest = topic
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(bad)?;
        if rest == "policy/fleet" {
            return Ok(Topic::FleetPolicy);
        }
        let rest = rest.strip_prefix("cpe/").ok_or_else(bad)?;
        let (id, leaf) = rest.split_once('/').ok_or_else(bad)?;
        if !is_valid_cpe_id(id) {
            return Err(bad());
        }
        let id = id.to_owned();
        Ok(match leaf {
            "telemetry" => Topic::Telemetry(id),
            "alert" => Topic::Alert(id),
            "state" => Topic::State(id),
            "ack" => Topic::PolicyAck(id),
            "policy" => Topic::CpePolicy(id),
            "command" => Topic::Command(id),
            "command-ack" => Topic::CommandAck(id),
            _ => return Err(bad()),
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Telemetry(id) => write!(f, "{PREFIX}/cpe/{id}/telemetry"),
            Topic::Alert(id) => write!(f, "{PREFIX}/cpe/{id}/alert"),
            Topic::State(id) => write!(f, "{PREFIX}/cpe/{id}/state"),
            Topic::PolicyAck(id) => write!(f, "{PREFIX}/cpe/{id}/ack"),
            Topic::CpePolicy(id) => write!(f, "{PREFIX}/cpe/{id}/policy"),
            Topic::Command(id) => write!(f, "{PREFIX}/cpe/{id}/command"),
            Topic::CommandAck(id) => write!(f, "{PREFIX}/cpe/{id}/command-ack"),
            Topic::FleetPolicy => write!(f, "{PREFIX}/policy/fleet"),
        }
    }
}

/// What agents publish to controllers, one topic leaf each.
pub const CONTROLLER_KINDS: [Kind; 5] = [
    Kind::Telemetry,
    Kind::Alert,
    Kind::State,
    Kind::PolicyAck,
    Kind::CommandAck,
];

/// The filter through the shared group for every CPE's messages of `kind`.
pub fn controller_filter(kind: Kind) -> String {
    format!("{SHARE_GROUP}{}", Topic::for_cpe(kind, "+"))
}

/// The topic filters a controller subscribes to, through the shared group.
pub fn controller_filters() -> [String; 5] {
    CONTROLLER_KINDS.map(controller_filter)
}

/// The topics an agent subscribes to: the fleet policy, its own override and its own
/// command topic.
pub fn agent_filters(cpe_id: &str) -> [String; 3] {
    [
        Topic::FleetPolicy.to_string(),
        Topic::CpePolicy(cpe_id.to_owned()).to_string(),
        Topic::Command(cpe_id.to_owned()).to_string(),
    ]
}

/// Strips a `$share/{group}/` prefix, as brokers deliver shared-subscription messages
/// either with or without it.
pub fn strip_share(topic: &str) -> &str {
    topic
        .strip_prefix("$share/")
        .and_then(|r| r.split_once('/'))
        .map_or(topic, |(_, rest)| rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_round_trips() {
        let topics = [
            Topic::Telemetry("cpe-1".into()),
            Topic::Alert("cpe-1".into()),
            Topic::State("cpe-1".into()),
            Topic::PolicyAck("cpe-1".into()),
            Topic::CpePolicy("cpe-1".into()),
            Topic::Command("cpe-1".into()),
            Topic::CommandAck("cpe-1".into()),
            Topic::FleetPolicy,
        ];
        for t in topics {
            assert!(!t.is_retained() || !matches!(t, Topic::Command(_)));
            assert_eq!(Topic::parse(&t.to_string()).unwrap(), t);
        }
        assert_eq!(
            Topic::Alert("cpe-7".into()).to_string(),
            "smtpguard/v1/cpe/cpe-7/alert"
        );
        assert_eq!(Topic::FleetPolicy.to_string(), "smtpguard/v1/policy/fleet");
        assert_eq!(
            Topic::Command("cpe-7".into()).to_string(),
            "smtpguard/v1/cpe/cpe-7/command"
        );
        assert_eq!(
            Topic::for_cpe(Kind::CommandAck, "cpe-7").to_string(),
            "smtpguard/v1/cpe/cpe-7/command-ack"
        );
        assert!(!Topic::Command("cpe-7".into()).is_retained());
        assert_eq!(agent_filters("cpe-7")[2], "smtpguard/v1/cpe/cpe-7/command");
    }

    #[test]
    fn foreign_and_wildcard_topics_are_rejected() {
        for t in [
            "",
            "smtpguard/v1",
            "smtpguard/v2/cpe/a/alert",
            "smtpguard/v1/cpe/+/alert",
            "smtpguard/v1/cpe/#",
            "smtpguard/v1/cpe/a/b/alert",
            "smtpguard/v1/cpe/a/other",
            "smtpguard/v1/cpe/fleet/alert",
            "smtpguard/v1/policy/other",
        ] {
            assert!(
                matches!(Topic::parse(t), Err(Rejection::BadTopic(_))),
                "{t}"
            );
        }
    }

    #[test]
    fn shared_prefix_is_stripped() {
        assert_eq!(
            strip_share("$share/controllers/smtpguard/v1/cpe/a/alert"),
            "smtpguard/v1/cpe/a/alert"
        );
        assert_eq!(
            strip_share("smtpguard/v1/cpe/a/alert"),
            "smtpguard/v1/cpe/a/alert"
        );
        assert_eq!(
            controller_filters()[1],
            "$share/controllers/smtpguard/v1/cpe/+/alert"
        );
    }
}
