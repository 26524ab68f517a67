//! Message bodies. Each [`Kind`] has one body type; [`Body`] carries any of them.
//!
//! Times on the wire are Unix time in milliseconds (`*_ms`) or seconds (`*_secs`) as the
//! field name says. Lists that an agent fills from traffic are bounded by the agent (see the
//! `MAX_*` constants) so a message stays under [`crate::MAX_MESSAGE_BYTES`].

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::policy::Policy;
use crate::types::{Action, MacAddr, Verdict};

/// Most devices one telemetry message reports; the agent sends the highest scores first.
pub const MAX_DEVICES_PER_TELEMETRY: usize = 64;
/// Most SMTP connection records one telemetry message carries.
pub const MAX_CONN_RECORDS: usize = 256;
/// Most evidence sentences for one device.
pub const MAX_EVIDENCE: usize = 8;
/// Most observed indicator values (EHLO names, domains, servers) of each sort in an alert.
pub const MAX_OBSERVED: usize = 32;

/// Which body an envelope carries. Part of the signed bytes, so a signature made for one
/// kind can never be accepted as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Periodic per-device counters and verdicts.
    Telemetry,
    /// A verdict change with its evidence.
    Alert,
    /// Online/offline and applied policy versions.
    State,
    /// Fleet-wide or per-CPE policy, signed by the controller.
    Policy,
    /// An agent's answer to a policy.
    PolicyAck,
    /// A signed order from the controller to one router (release or block a device).
    Command,
    /// A router's answer to a command.
    CommandAck,
}

impl Kind {
    /// The name used on the wire and in the signature's domain separation.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Telemetry => "telemetry",
            Kind::Alert => "alert",
            Kind::State => "state",
            Kind::Policy => "policy",
            Kind::PolicyAck => "policy-ack",
            Kind::Command => "command",
            Kind::CommandAck => "command-ack",
        }
    }

    /// Every kind, in wire order.
    pub const ALL: [Kind; 7] = [
        Kind::Telemetry,
        Kind::Alert,
        Kind::State,
        Kind::Policy,
        Kind::PolicyAck,
        Kind::Command,
        Kind::CommandAck,
    ];
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Any message body.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// See [`Telemetry`].
    Telemetry(Telemetry),
    /// See [`Alert`].
    Alert(Alert),
    /// See [`State`].
    State(State),
    /// See [`Policy`].
    Policy(Policy),
    /// See [`PolicyAck`].
    PolicyAck(PolicyAck),
    /// See [`Command`].
    Command(Command),
    /// See [`CommandAck`].
    CommandAck(CommandAck),
}

impl Body {
    /// The kind that names this body on the wire.
    pub fn kind(&self) -> Kind {
        match self {
            Body::Telemetry(_) => Kind::Telemetry,
            Body::Alert(_) => Kind::Alert,
            Body::State(_) => Kind::State,
            Body::Policy(_) => Kind::Policy,
            Body::PolicyAck(_) => Kind::PolicyAck,
            Body::Command(_) => Kind::Command,
            Body::CommandAck(_) => Kind::CommandAck,
        }
    }
}

/// Per-device counters over one telemetry window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceCounters {
    /// New connections to port 25 of hosts that are not allowlisted relays.
    pub smtp_connections: u32,
    /// Distinct destination addresses among those connections.
    pub distinct_mail_servers: u32,
    /// Distinct destination /24 networks among those connections.
    pub distinct_networks: u32,
    /// MX queries sent.
    pub mx_lookups: u32,
    /// Port-25 connections to an address from a preceding MX answer.
    pub mx_followed: u32,
    /// New connections to submission ports (587, 465).
    pub submission_connections: u32,
    /// Messages submitted (DATA/BDAT commands seen, or estimated on TLS ports).
    pub messages: u32,
    /// SYNs to mail ports that got no answer.
    pub unanswered_syns: u32,
    /// RCPT TO commands seen in cleartext sessions.
    pub rcpt_commands: u32,
    /// Remote 4xx/5xx replies citing blocklists, spam or complaints.
    pub remote_rejections: u32,
}

/// What the agent knows and concluded about one LAN device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// The device's Ethernet address.
    pub mac: MacAddr,
    /// Its current LAN addresses.
    #[serde(default, with = "crate::types::ip_text::list")]
    pub ips: Vec<IpAddr>,
    /// DHCP host name, if seen.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Vendor from the MAC's OUI, if known.
    #[serde(default)]
    pub vendor: Option<String>,
    /// Current verdict.
    pub verdict: Verdict,
    /// Score in [0, 1] behind the verdict.
    pub score: f32,
    /// What the router is doing about it.
    pub action: Action,
    /// When a block or rate limit in force ends (Unix ms), if one is.
    #[serde(default)]
    pub action_until_ms: Option<u64>,
    /// Counters over the window.
    #[serde(default)]
    pub counters: DeviceCounters,
    /// Short human sentences with numbers explaining the verdict.
    #[serde(default)]
    pub evidence: Vec<String>,
}

/// One outbound SMTP connection from a LAN device, kept so an abuse complaint about the
/// household's public address can be traced to the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRecord {
    /// The LAN device that opened it.
    pub mac: MacAddr,
    /// When the SYN was seen (Unix ms).
    pub at_ms: u64,
    /// The device's source port on the LAN side.
    pub src_port: u16,
    /// Destination address.
    #[serde(with = "crate::types::ip_text")]
    pub dst: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// Source port after NAT, from conntrack, where the router exposes it.
    #[serde(default)]
    pub nat_port: Option<u16>,
    /// Source address after NAT (the router's WAN address the connection left with), from
    /// the same conntrack entry as [`ConnRecord::nat_port`]. Absent in older messages.
    #[serde(
        default,
        with = "crate::types::ip_text::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub nat_ip: Option<IpAddr>,
}

/// Health of the agent itself over one window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStats {
    /// Packets the engine handled.
    pub packets: u64,
    /// Packets the kernel dropped before the agent could read them (PACKET_STATISTICS).
    pub kernel_drops: u64,
    /// Frames the agent could not parse.
    pub malformed_packets: u64,
    /// Devices evicted from the fixed-size device table.
    pub devices_evicted: u64,
    /// Telemetry messages dropped from the offline queue (oldest first).
    pub telemetry_dropped: u64,
}

/// Periodic report: per-device counters, scores and verdicts over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Start of the window (Unix ms).
    pub window_start_ms: u64,
    /// Length of the window.
    pub window_secs: u32,
    /// The household's public (WAN) address during the window, if known.
    #[serde(default, with = "crate::types::ip_text::option")]
    pub public_ip: Option<IpAddr>,
    /// Agent health.
    #[serde(default)]
    pub stats: AgentStats,
    /// Devices, highest score first, at most [`MAX_DEVICES_PER_TELEMETRY`].
    #[serde(default)]
    pub devices: Vec<DeviceReport>,
    /// SMTP connection log, at most [`MAX_CONN_RECORDS`].
    #[serde(default)]
    pub connections: Vec<ConnRecord>,
}

/// Indicator values observed on a device, for fleet correlation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Observed {
    /// EHLO/HELO names the device used.
    pub ehlo_names: Vec<String>,
    /// Domains of MAIL FROM addresses.
    pub mail_from_domains: Vec<String>,
    /// Mail servers it connected to.
    #[serde(with = "crate::types::ip_text::list")]
    pub mail_servers: Vec<IpAddr>,
}

/// A device's verdict changed. Alerts must not be lost: agents persist them until the
/// broker acknowledges them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The device, with its new verdict, score, action and evidence.
    pub device: DeviceReport,
    /// The verdict before the change.
    pub previous: Verdict,
    /// When the change happened (Unix ms).
    pub at_ms: u64,
    /// Indicator values seen on the device.
    #[serde(default)]
    pub observed: Observed,
}

/// Whether an agent is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Connected and reporting.
    Online,
    /// Disconnected (the broker publishes this as the agent's last will).
    Offline,
}

/// An agent's retained state: online or offline, its version and applied policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Online, or offline (last will).
    pub status: Status,
    /// The agent's version string.
    pub agent_version: String,
    /// Applied fleet policy version.
    #[serde(default)]
    pub fleet_policy_version: Option<u64>,
    /// Applied per-CPE override version.
    #[serde(default)]
    pub cpe_policy_version: Option<u64>,
    /// The household's public address, if known.
    #[serde(default, with = "crate::types::ip_text::option")]
    pub public_ip: Option<IpAddr>,
}

/// Which policy an acknowledgement or envelope is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyScope {
    /// The fleet-wide policy.
    Fleet,
    /// This CPE's override.
    Cpe,
}

/// Whether an agent applied a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckOutcome {
    /// Applied to the engine and the enforcer.
    Applied,
    /// Not applied, with the reason for the NOC.
    Refused {
        /// Why, in words an operator can act on.
        reason: String,
    },
}

/// An agent's answer to a policy message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyAck {
    /// Fleet policy or per-CPE override.
    pub scope: PolicyScope,
    /// The version this answers.
    pub policy_version: u64,
    /// Applied or refused.
    pub outcome: AckOutcome,
}

/// Longest grace period or block a command may ask for (30 days).
pub const MAX_COMMAND_SECS: u32 = 30 * 86_400;

/// What a command asks the router to do to one LAN device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CommandAction {
    /// Lift any block or rate limit on `mac` now and leave it alone for `grace_secs` (the
    /// same as a release by hand on the router).
    Release {
        /// The device.
        mac: MacAddr,
        /// How long the router does not enforce against it again.
        grace_secs: u32,
    },
    /// Block `mac`'s mail ports now for `ttl_secs`.
    Block {
        /// The device.
        mac: MacAddr,
        /// How long the block lasts.
        ttl_secs: u32,
    },
}

impl CommandAction {
    /// The device the action is about.
    pub fn mac(&self) -> MacAddr {
        match self {
            CommandAction::Release { mac, .. } | CommandAction::Block { mac, .. } => *mac,
        }
    }

    /// `release` or `block`, for tables and logs.
    pub fn name(&self) -> &'static str {
        match self {
            CommandAction::Release { .. } => "release",
            CommandAction::Block { .. } => "block",
        }
    }
}

/// A signed order from the controller to one router, on `smtpguard/v1/cpe/{id}/command`
/// (QoS 1, not retained). The envelope's `cpe_id` is the target too, and the body names it
/// again, so a command for router A is refused by router B even if a broker delivered it
/// on B's topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// The router it is for.
    pub target: String,
    /// Assigned by the controller, increasing per router: a router applies a command only
    /// when its id is above the last one it applied, so a replay is refused.
    pub command_id: u64,
    /// When the controller issued it (Unix ms).
    pub issued_ms: u64,
    /// After this (Unix ms) the router refuses it: an order stuck in a queue for a day is
    /// no longer the operator's intent.
    pub expires_ms: u64,
    /// What to do.
    pub action: CommandAction,
}

impl Command {
    /// Why `cpe_id` must not apply this command at `now_ms` after having applied
    /// `last_applied`; `None` when it may. The checks a router runs once the signature
    /// verified, in this order: target, expiry, replay, range.
    pub fn refusal(&self, cpe_id: &str, now_ms: u64, last_applied: Option<u64>) -> Option<String> {
        if self.target != cpe_id {
            return Some(format!(
                "command for {:?}, this router is {cpe_id:?}",
                self.target.chars().take(64).collect::<String>()
            ));
        }
        if now_ms > self.expires_ms {
            return Some(format!(
                "command {} expired at {} ms (now {now_ms} ms)",
                self.command_id, self.expires_ms
            ));
        }
        if let Some(last) = last_applied.filter(|&l| self.command_id <= l) {
            return Some(format!(
                "command {} replayed: not above the last applied command {last}",
                self.command_id
            ));
        }
        let secs = match self.action {
            CommandAction::Release { grace_secs, .. } => grace_secs,
            CommandAction::Block { ttl_secs, .. } => ttl_secs,
        };
        if secs == 0 || secs > MAX_COMMAND_SECS {
            return Some(format!(
                "{} for {secs} s: must be 1-{MAX_COMMAND_SECS} s",
                self.action.name()
            ));
        }
        None
    }
}

/// A router's answer to a command, on `smtpguard/v1/cpe/{id}/command-ack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandAck {
    /// The command this answers (as the router read it; 0 when it could not read one).
    pub command_id: u64,
    /// Applied, or refused with the reason.
    pub outcome: AckOutcome,
    /// When the router applied or refused it (Unix ms).
    pub at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> Command {
        Command {
            target: "cpe-a".into(),
            command_id: 7,
            issued_ms: 1_000,
            expires_ms: 61_000,
            action: CommandAction::Release {
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                grace_secs: 3600,
            },
        }
    }

    #[test]
    fn a_command_is_refused_by_another_router_after_expiry_on_replay_and_out_of_range() {
        let c = command();
        assert_eq!(c.refusal("cpe-a", 2_000, None), None);
        assert_eq!(c.refusal("cpe-a", 61_000, Some(6)), None);
        let why = c.refusal("cpe-b", 2_000, None).unwrap();
        assert!(
            why.contains("\"cpe-a\"") && why.contains("\"cpe-b\""),
            "{why}"
        );
        let why = c.refusal("cpe-a", 61_001, None).unwrap();
        assert!(why.contains("expired"), "{why}");
        let why = c.refusal("cpe-a", 2_000, Some(7)).unwrap();
        assert!(why.contains("replayed"), "{why}");
        assert!(c.refusal("cpe-a", 2_000, Some(9)).is_some());
        for secs in [0, MAX_COMMAND_SECS + 1] {
            let mut c = command();
            c.action = CommandAction::Block {
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                ttl_secs: secs,
            };
            let why = c.refusal("cpe-a", 2_000, None).unwrap();
            assert!(why.starts_with("block for"), "{why}");
        }
    }

    #[test]
    fn command_kinds_have_stable_names() {
        assert_eq!(Kind::Command.as_str(), "command");
        assert_eq!(Kind::CommandAck.as_str(), "command-ack");
        assert_eq!(Body::Command(command()).kind(), Kind::Command);
    }
}
