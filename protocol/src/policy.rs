//! The policy document: what the NOC pushes to the fleet and what `replay --policy` reads.
//!
//! Every field has a default, so a TOML file holding only `allow_macs = ["02:11:22:33:44:50"]`
//! is a complete policy. Unknown fields are errors (a typo must not silently fall back to a
//! default). [`Policy::validate`] checks ranges once, naming the offending field;
//! [`safety::check_policy_safety`] checks that the policy cannot convict the relays or cut
//! the uplink a router depends on.

pub mod safety;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::types::{MacAddr, Mode};

/// Fleet-wide or per-CPE policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Monotonic version, set by the controller when it signs; agents refuse anything not
    /// above the version they applied. `0` in hand-written files.
    pub policy_version: u64,
    /// How far the agent may act on its own.
    pub mode: Mode,
    /// Score thresholds for the verdicts.
    pub thresholds: Thresholds,
    /// Detection windows and the levels at which each signal counts in full.
    pub detection: Detection,
    /// How much each signal contributes to the score.
    pub weights: Weights,
    /// New mail connections per minute allowed to a rate-limited device.
    pub rate_limit_per_minute: u32,
    /// How long a block lasts before it is released automatically.
    pub block_ttl_secs: u32,
    /// Mail relays (the ISP's submission servers, a business's smarthost) that are never
    /// counted as direct-to-MX and never blocked.
    pub allow_relays: Vec<RelayRule>,
    /// Devices that are never throttled or blocked (a home mail server).
    pub allow_macs: Vec<MacAddr>,
    /// How often agents send telemetry.
    pub telemetry_interval_secs: u32,
    /// Known campaign indicators: a device matching them is convicted on first sight.
    pub indicators: Indicators,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            policy_version: 0,
            mode: Mode::Monitor,
            thresholds: Thresholds::default(),
            detection: Detection::default(),
            weights: Weights::default(),
            rate_limit_per_minute: 10,
            block_ttl_secs: 3600,
            allow_relays: Vec::new(),
            allow_macs: Vec::new(),
            telemetry_interval_secs: 60,
            indicators: Indicators::default(),
        }
    }
}

/// Score thresholds, each in (0, 1], `suspicious < infected`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Score at or above which a device is suspicious.
    pub suspicious: f32,
    /// Score at or above which a device is infected.
    pub infected: f32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            suspicious: 0.4,
            infected: 0.75,
        }
    }
}

/// Detection windows and saturation levels: each signal scores in proportion to how close
/// its count comes to its level, and counts in full at or above it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Detection {
    /// Sliding window for fan-out and volume signals.
    pub window_secs: u32,
    /// Distinct mail servers on port 25 within the window that count in full.
    pub fanout_servers: u32,
    /// Distinct /24 networks on port 25 within the window that count in full.
    pub fanout_networks: u32,
    /// Unanswered SYNs to mail ports within the window that count as a storm.
    pub syn_storm: u32,
    /// RCPT commands in one session that count as "many".
    pub many_rcpts: u32,
    /// How long a device's own submission baseline is learned over.
    pub baseline_days: u32,
    /// Submitted messages per hour above the device's baseline, as a multiple of it, that
    /// count in full.
    pub surge_factor: f32,
    /// Messages per hour below which submission volume never counts, whatever the baseline.
    pub surge_min_per_hour: u32,
}

impl Default for Detection {
    fn default() -> Self {
        Detection {
            window_secs: 600,
            fanout_servers: 20,
            fanout_networks: 10,
            syn_storm: 50,
            many_rcpts: 20,
            baseline_days: 7,
            surge_factor: 10.0,
            surge_min_per_hour: 60,
        }
    }
}

/// Weight of each signal in the score, each in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    /// Port-25 connections to non-relay hosts and their fan-out.
    pub direct_mx: f32,
    /// MX lookups followed by connections to the answers.
    pub mx_follow: f32,
    /// SMTP dialogue tells (EHLO, MAIL FROM, RCPT count, pipelining abuse).
    pub dialogue: f32,
    /// Remote rejections citing blocklists, spam or complaints.
    pub rejections: f32,
    /// Submission volume far above the device's own baseline.
    pub submission_surge: f32,
    /// Unanswered SYN storms to mail ports.
    pub syn_storm: f32,
    /// A match of a known campaign indicator.
    pub indicators: f32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            direct_mx: 0.45,
            mx_follow: 0.15,
            dialogue: 0.4,
            rejections: 0.25,
            submission_surge: 0.8,
            syn_storm: 0.35,
            indicators: 0.8,
        }
    }
}

/// Known campaign indicators, pushed by the NOC from fleet correlation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Indicators {
    /// EHLO/HELO names (exact, case-insensitive).
    pub ehlo_names: Vec<String>,
    /// MAIL FROM domains (exact, case-insensitive).
    pub mail_from_domains: Vec<String>,
    /// Mail servers or networks.
    pub mail_servers: Vec<Cidr>,
}

impl Indicators {
    /// Whether there are no indicators at all.
    pub fn is_empty(&self) -> bool {
        self.ehlo_names.is_empty()
            && self.mail_from_domains.is_empty()
            && self.mail_servers.is_empty()
    }
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// A network, or an error if `prefix` is longer than the address.
    ///
    /// # Errors
    /// [`PolicyError::Cidr`] when the prefix exceeds 32 (IPv4) or 128 (IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, PolicyError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(PolicyError::Cidr(format!(
                "{addr}/{prefix}: prefix longer than {max}"
            )));
        }
        Ok(Cidr { addr, prefix })
    }

    /// The network of the one address `ip` (a /32 or /128).
    pub fn host(ip: IpAddr) -> Cidr {
        Cidr {
            addr: ip,
            prefix: if ip.is_ipv4() { 32 } else { 128 },
        }
    }

    /// The network's address as written.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside this network (an IPv4 network never contains IPv6 addresses).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = PolicyError;

    /// `192.0.2.0/24`, `2001:db8::/32`, or a bare address (a host network).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PolicyError::Cidr(s.chars().take(60).collect());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a.parse::<IpAddr>().map_err(|_| bad())?,
                Some(p.parse::<u8>().map_err(|_| bad())?),
            ),
            None => (s.parse::<IpAddr>().map_err(|_| bad())?, None),
        };
        let prefix = prefix.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
        Cidr::new(addr, prefix)
    }
}

/// An allowlisted relay: a network and optionally one port (any port when absent).
///
/// Written as text: `198.51.100.7`, `198.51.100.0/24:587`, `[2001:db8::/32]:587`,
/// `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayRule {
    /// The relay's address or network.
    pub net: Cidr,
    /// The one port the rule covers, or every port.
    pub port: Option<u16>,
}

impl RelayRule {
    /// Whether a connection to `ip`:`port` goes to this relay.
    pub fn matches(&self, ip: IpAddr, port: u16) -> bool {
        self.net.contains(ip) && self.port.is_none_or(|p| p == port)
    }
}

impl fmt::Display for RelayRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.net.addr) {
            (None, _) => write!(f, "{}", self.net),
            (Some(p), IpAddr::V4(_)) => write!(f, "{}:{p}", self.net),
            (Some(p), IpAddr::V6(_)) => write!(f, "[{}]:{p}", self.net),
        }
    }
}

impl FromStr for RelayRule {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PolicyError::Relay(s.chars().take(60).collect());
        let port = |p: &str| p.parse::<u16>().map_err(|_| bad());
        if let Some(rest) = s.strip_prefix('[') {
            let (net, port_s) = rest.split_once("]:").ok_or_else(bad)?;
            return Ok(RelayRule {
                net: net.parse().map_err(|_| bad())?,
                port: Some(port(port_s)?),
            });
        }
        // IPv4 with a port has exactly one colon; IPv6 has at least two and no port here.
        if s.matches(':').count() == 1 {
            let (net, port_s) = s.split_once(':').ok_or_else(bad)?;
            return Ok(RelayRule {
                net: net.parse().map_err(|_| bad())?,
                port: Some(port(port_s)?),
            });
        }
        Ok(RelayRule {
            net: s.parse().map_err(|_| bad())?,
            port: None,
        })
    }
}

macro_rules! serde_as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_text!(Cidr);
serde_as_text!(RelayRule);

/// A policy field is out of range or unreadable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// A field's value is outside its allowed range.
    #[error("policy field `{field}`: {problem}")]
    Field {
        /// Dotted path of the field, e.g. `thresholds.infected`.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A network was not `ADDR/PREFIX` or a bare address.
    #[error("invalid network {0:?}: expected e.g. 192.0.2.0/24 or 2001:db8::/32")]
    Cidr(String),
    /// A relay was not `NET`, `NET:PORT` or `[V6NET]:PORT`.
    #[error("invalid relay {0:?}: expected e.g. 198.51.100.7:587, 198.51.100.0/24 or [2001:db8::/32]:587")]
    Relay(String),
}

fn field(field: &'static str, problem: impl Into<String>) -> PolicyError {
    PolicyError::Field {
        field,
        problem: problem.into(),
    }
}

impl Policy {
    /// How long a block lasts, in milliseconds (at least one second).
    pub fn block_ttl_ms(&self) -> u64 {
        u64::from(self.block_ttl_secs.max(1)) * 1000
    }

    /// Checks every range once; call on load and before signing.
    ///
    /// # Errors
    /// [`PolicyError::Field`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let t = &self.thresholds;
        let unit = |v: f32| v.is_finite() && v > 0.0 && v <= 1.0;
        if !unit(t.suspicious) {
            return Err(field("thresholds.suspicious", "must be in (0, 1]"));
        }
        if !unit(t.infected) {
            return Err(field("thresholds.infected", "must be in (0, 1]"));
        }
        if t.suspicious >= t.infected {
            return Err(field(
                "thresholds.suspicious",
                "must be below thresholds.infected",
            ));
        }
        let d = &self.detection;
        for (name, v) in [
            ("detection.window_secs", d.window_secs),
            ("detection.fanout_servers", d.fanout_servers),
            ("detection.fanout_networks", d.fanout_networks),
            ("detection.syn_storm", d.syn_storm),
            ("detection.many_rcpts", d.many_rcpts),
            ("detection.baseline_days", d.baseline_days),
            ("detection.surge_min_per_hour", d.surge_min_per_hour),
            ("rate_limit_per_minute", self.rate_limit_per_minute),
            ("block_ttl_secs", self.block_ttl_secs),
        ] {
            if v == 0 {
                return Err(field(name, "must be at least 1"));
            }
        }
        if d.window_secs > 86_400 {
            return Err(field(
                "detection.window_secs",
                "must be at most 86400 (one day)",
            ));
        }
        if !(d.surge_factor.is_finite() && d.surge_factor >= 1.0) {
            return Err(field(
                "detection.surge_factor",
                "must be a number of at least 1",
            ));
        }
        if self.block_ttl_secs > 30 * 86_400 {
            return Err(field("block_ttl_secs", "must be at most 2592000 (30 days)"));
        }
        if !(5..=86_400).contains(&self.telemetry_interval_secs) {
            return Err(field(
                "telemetry_interval_secs",
                "must be between 5 and 86400",
            ));
        }
        let w = &self.weights;
        for (name, v) in [
            ("weights.direct_mx", w.direct_mx),
            ("weights.mx_follow", w.mx_follow),
            ("weights.dialogue", w.dialogue),
            ("weights.rejections", w.rejections),
            ("weights.submission_surge", w.submission_surge),
            ("weights.syn_storm", w.syn_storm),
            ("weights.indicators", w.indicators),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(field(name, "must be in [0, 1]"));
            }
        }
        Ok(())
    }

    /// Whether a connection to `ip`:`port` goes to an allowlisted relay.
    pub fn is_relay(&self, ip: IpAddr, port: u16) -> bool {
        self.allow_relays.iter().any(|r| r.matches(ip, port))
    }

    /// Adds `relays` to the allowlisted relays (those not already there). The router's own
    /// ISP relays join every policy it applies this way, so no policy can take them out.
    pub fn allow_relays_too(&mut self, relays: &[RelayRule]) {
        for relay in relays {
            if !self.allow_relays.contains(relay) {
                self.allow_relays.push(*relay);
            }
        }
    }

    /// Whether `mac` is an allowlisted device.
    pub fn is_allowed_device(&self, mac: &MacAddr) -> bool {
        self.allow_macs.contains(mac)
    }

    /// Refuses a policy whose version is not above the one already applied for its scope.
    ///
    /// # Errors
    /// [`crate::Rejection::PolicyRollback`] with both versions.
    pub fn check_newer_than(&self, applied: Option<u64>) -> Result<(), crate::Rejection> {
        match applied {
            Some(applied) if self.policy_version <= applied => {
                Err(crate::Rejection::PolicyRollback {
                    version: self.policy_version,
                    applied,
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Policy::default().validate().unwrap();
    }

    #[test]
    fn relay_rules_parse_and_match() {
        let r: RelayRule = "198.51.100.0/24:587".parse().unwrap();
        assert!(r.matches("198.51.100.9".parse().unwrap(), 587));
        assert!(!r.matches("198.51.100.9".parse().unwrap(), 25));
        assert!(!r.matches("198.51.101.9".parse().unwrap(), 587));
        let any: RelayRule = "203.0.113.5".parse().unwrap();
        assert!(any.matches("203.0.113.5".parse().unwrap(), 25));
        let v6: RelayRule = "[2001:db8::/32]:465".parse().unwrap();
        assert!(v6.matches("2001:db8::1".parse().unwrap(), 465));
        let v6any: RelayRule = "2001:db8::/32".parse().unwrap();
        assert_eq!(v6any.port, None);
        for text in [
            "198.51.100.0/24:587",
            "203.0.113.5/32",
            "[2001:db8::/32]:465",
        ] {
            assert_eq!(text.parse::<RelayRule>().unwrap().to_string(), text);
        }
        for bad in [
            "",
            "198.51.100.0/33",
            "198.51.100.0:x",
            "[2001:db8::/32]",
            "mail.example",
        ] {
            assert!(bad.parse::<RelayRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_prefix_contains_everything_of_its_family() {
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
    }

    #[test]
    fn validation_names_the_field() {
        let mut p = Policy::default();
        p.thresholds.suspicious = 0.9;
        let err = p.validate().unwrap_err();
        assert!(err.to_string().contains("thresholds.suspicious"), "{err}");
        let p = Policy {
            telemetry_interval_secs: 1,
            ..Policy::default()
        };
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("telemetry_interval_secs"));
        let mut p = Policy::default();
        p.weights.dialogue = f32::NAN;
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("weights.dialogue"));
    }

    #[test]
    fn minimal_toml_files_are_complete_policies() {
        let p: Policy = toml::from_str(r#"allow_macs = ["02:11:22:33:44:50"]"#).unwrap();
        assert_eq!(p.allow_macs, vec!["02:11:22:33:44:50".parse().unwrap()]);
        assert_eq!(p.block_ttl_secs, Policy::default().block_ttl_secs);
        let p: Policy = toml::from_str(r#"allow_relays = ["198.51.100.7:587"]"#).unwrap();
        assert!(p.is_relay("198.51.100.7".parse().unwrap(), 587));
        let p: Policy = toml::from_str("mode = \"enforce\"\n[thresholds]\ninfected = 0.8").unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.thresholds.infected, 0.8);
        assert_eq!(p.thresholds.suspicious, 0.4);
    }

    #[test]
    fn typos_in_policy_files_are_errors() {
        let err = toml::from_str::<Policy>("alow_macs = []").unwrap_err();
        assert!(err.to_string().contains("alow_macs"), "{err}");
    }

    #[test]
    fn rollback_is_refused() {
        let p = Policy {
            policy_version: 4,
            ..Policy::default()
        };
        assert!(p.check_newer_than(None).is_ok());
        assert!(p.check_newer_than(Some(3)).is_ok());
        assert_eq!(
            p.check_newer_than(Some(4)),
            Err(crate::Rejection::PolicyRollback {
                version: 4,
                applied: 4
            })
        );
    }

    #[test]
    fn local_relays_join_a_policy_once() {
        let isp: RelayRule = "198.51.100.25:587".parse().unwrap();
        let other: RelayRule = "203.0.113.0/24:465".parse().unwrap();
        let mut p = Policy {
            allow_relays: vec![other],
            ..Policy::default()
        };
        p.allow_relays_too(&[isp, other]);
        p.allow_relays_too(&[isp]);
        assert_eq!(p.allow_relays, vec![other, isp]);
        assert!(p.is_relay("198.51.100.25".parse().unwrap(), 587));
    }
}
