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
        }
    }

    /// Every kind, in wire order.
    pub const ALL: [Kind; 5] = [
        Kind::Telemetry,
        Kind::Alert,
        Kind::State,
        Kind::Policy,
        Kind::PolicyAck,
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
