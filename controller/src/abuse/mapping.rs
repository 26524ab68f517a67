//! From "spam came from public address X at time T" to the household and the device.
//!
//! Pure: [`map`] takes the question, the CPEs' public-address periods, their SMTP connection
//! logs and their devices, and returns the best [`Match`] with the evidence behind it.
//! The steps, each narrowing the answer:
//! 0. With a source port: the router's own NAT translation. A logged connection that left
//!    the router from that address (its WAN address, which is the public address without
//!    carrier-grade NAT, or the address the ISP's CGNAT log names) and that port, opened
//!    within [`TRANSLATION_BEFORE_MS`] before to [`TRANSLATION_AFTER_MS`] after T, names the
//!    device: [`Confidence::Exact`]. The nearest in time wins if a port was reused.
//! 1. Which CPE held the address at T (periods from telemetry, with [`ADDRESS_SLACK_MS`]
//!    at both ends because telemetry only samples the address once a window).
//! 2. Which of its devices opened SMTP connections in the window before T (the message
//!    arrives after the connection), preferring the exact NAT'd source port, then the
//!    destination server, then any mail connection.
//! 3. Without a connection log, the device the agent had convicted at the time.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use smtpguard_protocol::{MacAddr, Verdict};

use super::AbuseQuery;

/// How far around a period of an address its holder is still credible.
pub const ADDRESS_SLACK_MS: u64 = 15 * 60 * 1000;
/// How long before the report's time a connection may have been opened.
pub const BEFORE_MS: u64 = 15 * 60 * 1000;
/// How long after (clock skew between the router and the reporter).
pub const AFTER_MS: u64 = 2 * 60 * 1000;
/// How long before the report's time a connection matching the reported (address, port)
/// may have been opened: a mail session lasts seconds to minutes, and a NAT port is given
/// to another connection only after the first is gone.
pub const TRANSLATION_BEFORE_MS: u64 = 5 * 60 * 1000;
/// How long after (clock skew between the router and the reporter).
pub const TRANSLATION_AFTER_MS: u64 = 2 * 60 * 1000;

/// One period in which a CPE had a public address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPeriod {
    /// The CPE.
    pub cpe_id: String,
    /// The address.
    pub ip: IpAddr,
    /// First seen (Unix ms).
    pub first_ms: u64,
    /// Last seen (Unix ms).
    pub last_ms: u64,
}

/// One logged SMTP connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// The CPE.
    pub cpe_id: String,
    /// The device.
    pub mac: MacAddr,
    /// When (Unix ms).
    pub at_ms: u64,
    /// LAN source port.
    pub src_port: u16,
    /// Destination.
    pub dst: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// Source port after NAT.
    pub nat_port: Option<u16>,
    /// Source address after NAT (the router's WAN address), when the router reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_ip: Option<IpAddr>,
}

impl Connection {
    /// Whether this connection left the router as `ip`:`port` within the tolerance around
    /// `at_ms` ([`TRANSLATION_BEFORE_MS`], [`TRANSLATION_AFTER_MS`]).
    pub fn translated_as(&self, ip: IpAddr, port: u16, at_ms: u64) -> bool {
        self.nat_ip == Some(ip)
            && self.nat_port == Some(port)
            && self.at_ms >= at_ms.saturating_sub(TRANSLATION_BEFORE_MS)
            && self.at_ms <= at_ms.saturating_add(TRANSLATION_AFTER_MS)
    }
}

/// A device's verdict at the time of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceAtTime {
    /// The CPE.
    pub cpe_id: String,
    /// The device.
    pub mac: MacAddr,
    /// Its name, for the answer.
    pub name: String,
    /// Its verdict at the time.
    pub verdict: Verdict,
    /// Its score.
    pub score: f32,
}

/// How sure the answer is, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Confidence {
    /// The router's own NAT translation: a connection left it from the reported address and
    /// port at that time.
    Exact,
    /// The NAT'd source port in the report matches a logged connection.
    ExactPort,
    /// A logged connection to the reporting server near the time.
    DestinationAndTime,
    /// Logged mail connections near the time, from this device only or mostly.
    TimeWindow,
    /// No connection log; the device the agent had convicted at the time.
    Verdict,
    /// The household is known but not the device.
    HouseholdOnly,
    /// No CPE had that address at that time.
    Unmatched,
}

impl Confidence {
    /// The label used on the wire and in the UI.
    pub fn as_str(&self) -> &'static str {
        match self {
            Confidence::Exact => "exact",
            Confidence::ExactPort => "exact-port",
            Confidence::DestinationAndTime => "destination-and-time",
            Confidence::TimeWindow => "time-window",
            Confidence::Verdict => "verdict",
            Confidence::HouseholdOnly => "household-only",
            Confidence::Unmatched => "unmatched",
        }
    }

    /// Every confidence, surest first.
    pub const ALL: [Confidence; 7] = [
        Confidence::Exact,
        Confidence::ExactPort,
        Confidence::DestinationAndTime,
        Confidence::TimeWindow,
        Confidence::Verdict,
        Confidence::HouseholdOnly,
        Confidence::Unmatched,
    ];

    /// The confidence of a label ([`Confidence::as_str`]).
    pub fn parse(label: &str) -> Option<Confidence> {
        Confidence::ALL.into_iter().find(|c| c.as_str() == label)
    }

    /// The one word the NOC sees for it, in lists and on the report alike: `exact`,
    /// `strong`, `good`, `fair`, `household only` or `no match` (the start of
    /// [`Confidence::describe`]).
    pub fn grade(&self) -> &'static str {
        match self {
            Confidence::Exact | Confidence::ExactPort => "exact",
            Confidence::DestinationAndTime => "strong",
            Confidence::TimeWindow => "good",
            Confidence::Verdict => "fair",
            Confidence::HouseholdOnly => "household only",
            Confidence::Unmatched => "no match",
        }
    }

    /// In words, for the NOC.
    pub fn describe(&self) -> &'static str {
        match self {
            Confidence::Exact => "exact: the router's own NAT translation shows this device's connection leaving from the reported address and port at that time",
            Confidence::ExactPort => "exact: the reported source port matches a connection in the router's log",
            Confidence::DestinationAndTime => "strong: the router logged this device connecting to the reporting mail server at that time",
            Confidence::TimeWindow => "good: this device made the mail connections logged around that time",
            Confidence::Verdict => "fair: no connection log for that time; this device was flagged as infected then",
            Confidence::HouseholdOnly => "household only: the router had this address, but no device can be singled out",
            Confidence::Unmatched => "no match: no router of ours had this address at that time",
        }
    }
}

/// The answer to an abuse report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Match {
    /// How sure.
    pub confidence: Confidence,
    /// The CPE that had the address, if any.
    pub cpe_id: Option<String>,
    /// The device most likely responsible, if one can be named.
    pub mac: Option<MacAddr>,
    /// Its name.
    pub device_name: Option<String>,
    /// The logged connections supporting the answer (at most [`MAX_EVIDENCE`]).
    pub evidence: Vec<Connection>,
    /// Mail connections of the device in the window.
    pub device_connections: usize,
    /// Mail connections of all devices of the CPE in the window.
    pub household_connections: usize,
}

/// Most connections returned as evidence.
pub const MAX_EVIDENCE: usize = 20;

/// The CPE that held `ip` at `at_ms`: a period containing the time wins; otherwise the
/// nearest period within the slack.
pub fn holder(periods: &[AddressPeriod], ip: IpAddr, at_ms: u64) -> Option<&str> {
    periods
        .iter()
        .filter(|p| p.ip == ip)
        .filter_map(|p| {
            let dist = if at_ms < p.first_ms {
                p.first_ms - at_ms
            } else {
                at_ms.saturating_sub(p.last_ms)
            };
            (dist <= ADDRESS_SLACK_MS).then_some((dist, p.last_ms, p.cpe_id.as_str()))
        })
        // Nearest; then the newer period; then the id, for determinism.
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(b.2)))
        .map(|(_, _, id)| id)
}

/// The connection whose NAT translation matches the report, nearest in time first: see
/// step 0 of the module documentation. The reported destination must match when given.
pub fn translation<'c>(q: &AbuseQuery, connections: &'c [Connection]) -> Option<&'c Connection> {
    let port = q.source_port?;
    connections
        .iter()
        .filter(|c| c.translated_as(q.public_ip, port, q.at_ms))
        .filter(|c| q.dest_ip.is_none_or(|d| d == c.dst))
        .filter(|c| q.dest_port.is_none_or(|p| p == c.dst_port))
        .min_by_key(|c| (c.at_ms.abs_diff(q.at_ms), c.cpe_id.as_str(), c.mac))
}

/// Answers the question. `connections` and `devices` may include other CPEs' rows; the
/// translation step looks at every CPE's, the later steps only at the holder's.
pub fn map(
    q: &AbuseQuery,
    periods: &[AddressPeriod],
    connections: &[Connection],
    devices: &[DeviceAtTime],
) -> Match {
    if let Some(hit) = translation(q, connections) {
        let cpe = hit.cpe_id.as_str();
        let lo = q.at_ms.saturating_sub(BEFORE_MS);
        let hi = q.at_ms.saturating_add(AFTER_MS);
        let in_window = |c: &&Connection| c.cpe_id == cpe && c.at_ms >= lo && c.at_ms <= hi;
        return Match {
            confidence: Confidence::Exact,
            cpe_id: Some(cpe.to_string()),
            mac: Some(hit.mac),
            device_name: devices
                .iter()
                .find(|d| d.cpe_id == cpe && d.mac == hit.mac)
                .map(|d| d.name.clone()),
            evidence: vec![hit.clone()],
            device_connections: connections
                .iter()
                .filter(in_window)
                .filter(|c| c.mac == hit.mac)
                .count(),
            household_connections: connections.iter().filter(in_window).count(),
        };
    }
    let Some(cpe) = holder(periods, q.public_ip, q.at_ms) else {
        return Match {
            confidence: Confidence::Unmatched,
            cpe_id: None,
            mac: None,
            device_name: None,
            evidence: Vec::new(),
            device_connections: 0,
            household_connections: 0,
        };
    };
    let lo = q.at_ms.saturating_sub(BEFORE_MS);
    let hi = q.at_ms.saturating_add(AFTER_MS);
    let mut window: Vec<&Connection> = connections
        .iter()
        .filter(|c| c.cpe_id == cpe && c.at_ms >= lo && c.at_ms <= hi)
        .filter(|c| q.dest_port.is_none_or(|p| p == c.dst_port))
        .collect();
    // Nearest to the reported time first.
    window.sort_by_key(|c| (c.at_ms.abs_diff(q.at_ms), c.mac, c.src_port));
    let name_of = |mac: MacAddr| {
        devices
            .iter()
            .find(|d| d.cpe_id == cpe && d.mac == mac)
            .map(|d| d.name.clone())
    };
    let household = window.len();
    let pick = |conf: Confidence, chosen: Vec<&Connection>| -> Option<Match> {
        let first = chosen.first()?;
        let mac = first.mac;
        let device_connections = window.iter().filter(|c| c.mac == mac).count();
        Some(Match {
            confidence: conf,
            cpe_id: Some(cpe.to_string()),
            mac: Some(mac),
            device_name: name_of(mac),
            evidence: chosen
                .into_iter()
                .filter(|c| c.mac == mac)
                .take(MAX_EVIDENCE)
                .cloned()
                .collect(),
            device_connections,
            household_connections: household,
        })
    };
    if let Some(port) = q.source_port {
        let exact: Vec<&Connection> = window
            .iter()
            .copied()
            .filter(|c| c.nat_port == Some(port) && q.dest_ip.is_none_or(|d| d == c.dst))
            .collect();
        if let Some(m) = pick(Confidence::ExactPort, exact) {
            return m;
        }
    }
    if let Some(dest) = q.dest_ip {
        let to_dest: Vec<&Connection> = window.iter().copied().filter(|c| c.dst == dest).collect();
        if let Some(m) = pick(Confidence::DestinationAndTime, to_dest) {
            return m;
        }
    }
    if !window.is_empty() {
        // The device with the most connections in the window; ties go to the worst verdict,
        // then the lowest MAC.
        let mut counts: Vec<(MacAddr, usize)> = Vec::new();
        for c in &window {
            match counts.iter_mut().find(|(m, _)| *m == c.mac) {
                Some((_, n)) => *n += 1,
                None => counts.push((c.mac, 1)),
            }
        }
        let verdict_of = |mac: MacAddr| {
            devices
                .iter()
                .find(|d| d.cpe_id == cpe && d.mac == mac)
                .map_or(0, |d| crate::verdicts::severity(d.verdict))
        };
        counts.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then(verdict_of(b.0).cmp(&verdict_of(a.0)))
                .then(a.0.cmp(&b.0))
        });
        let best = counts[0].0;
        let chosen: Vec<&Connection> = window.iter().copied().filter(|c| c.mac == best).collect();
        if let Some(m) = pick(Confidence::TimeWindow, chosen) {
            return m;
        }
    }
    let convicted = devices
        .iter()
        .filter(|d| d.cpe_id == cpe && d.verdict != Verdict::Clean)
        .max_by(|a, b| {
            crate::verdicts::severity(a.verdict)
                .cmp(&crate::verdicts::severity(b.verdict))
                .then(a.score.total_cmp(&b.score))
                .then(b.mac.cmp(&a.mac))
        });
    match convicted {
        Some(d) => Match {
            confidence: Confidence::Verdict,
            cpe_id: Some(cpe.to_string()),
            mac: Some(d.mac),
            device_name: Some(d.name.clone()),
            evidence: Vec::new(),
            device_connections: 0,
            household_connections: household,
        },
        None => Match {
            confidence: Confidence::HouseholdOnly,
            cpe_id: Some(cpe.to_string()),
            mac: None,
            device_name: None,
            evidence: Vec::new(),
            device_connections: 0,
            household_connections: household,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_741_093_509_000;
    const BOT: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x66]);
    const LAPTOP: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x10]);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn periods() -> Vec<AddressPeriod> {
        vec![
            // The address moved from cpe-old to cpe-a an hour before.
            AddressPeriod {
                cpe_id: "cpe-old".into(),
                ip: ip("203.0.113.7"),
                first_ms: T - 10 * 3_600_000,
                last_ms: T - 3_600_000,
            },
            AddressPeriod {
                cpe_id: "cpe-a".into(),
                ip: ip("203.0.113.7"),
                first_ms: T - 3_000_000,
                last_ms: T + 60_000,
            },
        ]
    }

    fn conn(mac: MacAddr, dt_secs: i64, dst: &str, nat: u16) -> Connection {
        Connection {
            cpe_id: "cpe-a".into(),
            mac,
            at_ms: (T as i64 + dt_secs * 1000) as u64,
            src_port: 50_000,
            dst: ip(dst),
            dst_port: 25,
            nat_port: Some(nat),
            nat_ip: None,
        }
    }

    fn query() -> AbuseQuery {
        AbuseQuery {
            public_ip: ip("203.0.113.7"),
            at_ms: T,
            dest_ip: None,
            dest_port: None,
            source_port: None,
        }
    }

    fn devices() -> Vec<DeviceAtTime> {
        vec![
            DeviceAtTime {
                cpe_id: "cpe-a".into(),
                mac: BOT,
                name: "DESKTOP-7".into(),
                verdict: Verdict::Infected,
                score: 0.95,
            },
            DeviceAtTime {
                cpe_id: "cpe-a".into(),
                mac: LAPTOP,
                name: "laptop".into(),
                verdict: Verdict::Clean,
                score: 0.0,
            },
        ]
    }

    #[test]
    fn the_holder_at_the_time_not_the_earlier_one() {
        assert_eq!(holder(&periods(), ip("203.0.113.7"), T), Some("cpe-a"));
        assert_eq!(
            holder(&periods(), ip("203.0.113.7"), T - 5 * 3_600_000),
            Some("cpe-old")
        );
        assert_eq!(holder(&periods(), ip("203.0.113.8"), T), None);
        assert_eq!(holder(&periods(), ip("203.0.113.7"), T + 3_600_000), None);
    }

    #[test]
    fn the_exact_nat_port_names_the_device_even_if_another_sent_more() {
        let conns = vec![
            conn(BOT, -30, "198.51.100.1", 40_001),
            conn(BOT, -20, "198.51.100.2", 40_002),
            conn(BOT, -10, "198.51.100.3", 40_003),
            conn(LAPTOP, -5, "198.51.100.25", 40_123),
        ];
        let q = AbuseQuery {
            source_port: Some(40_123),
            dest_ip: Some(ip("198.51.100.25")),
            ..query()
        };
        let m = map(&q, &periods(), &conns, &devices());
        assert_eq!(m.confidence, Confidence::ExactPort);
        assert_eq!(m.mac, Some(LAPTOP));
        assert_eq!(m.device_name.as_deref(), Some("laptop"));
        assert_eq!(m.evidence.len(), 1);
        assert_eq!(m.evidence[0].nat_port, Some(40_123));
        assert_eq!(m.household_connections, 4);
    }

    #[test]
    fn destination_then_volume_then_verdict() {
        let conns = vec![
            conn(BOT, -30, "198.51.100.1", 1),
            conn(BOT, -20, "198.51.100.2", 2),
            conn(LAPTOP, -5, "198.51.100.25", 3),
        ];
        let q = AbuseQuery {
            dest_ip: Some(ip("198.51.100.25")),
            ..query()
        };
        let m = map(&q, &periods(), &conns, &devices());
        assert_eq!(m.confidence, Confidence::DestinationAndTime);
        assert_eq!(m.mac, Some(LAPTOP));

        let m = map(&query(), &periods(), &conns, &devices());
        assert_eq!(m.confidence, Confidence::TimeWindow);
        assert_eq!(m.mac, Some(BOT));
        assert_eq!(m.device_connections, 2);
        // Nearest first.
        assert_eq!(m.evidence[0].dst, ip("198.51.100.2"));

        // Connections outside the window do not count.
        let old = vec![conn(LAPTOP, -3600, "198.51.100.25", 3)];
        let m = map(&query(), &periods(), &old, &devices());
        assert_eq!(m.confidence, Confidence::Verdict);
        assert_eq!(m.mac, Some(BOT));

        let m = map(&query(), &periods(), &[], &devices()[1..]);
        assert_eq!(m.confidence, Confidence::HouseholdOnly);
        assert_eq!(m.cpe_id.as_deref(), Some("cpe-a"));
        assert_eq!(m.mac, None);
    }

    #[test]
    fn a_translation_matches_only_its_address_port_and_time_tolerance() {
        let wan = ip("100.64.7.2");
        let c = Connection {
            nat_ip: Some(wan),
            ..conn(LAPTOP, 0, "198.51.100.25", 40_123)
        };
        assert!(c.translated_as(wan, 40_123, T));
        // The report comes after the connection opened, up to the tolerance.
        assert!(c.translated_as(wan, 40_123, T + TRANSLATION_BEFORE_MS));
        assert!(!c.translated_as(wan, 40_123, T + TRANSLATION_BEFORE_MS + 1));
        // Or before it, by clock skew.
        assert!(c.translated_as(wan, 40_123, T - TRANSLATION_AFTER_MS));
        assert!(!c.translated_as(wan, 40_123, T - TRANSLATION_AFTER_MS - 1));
        assert!(!c.translated_as(wan, 40_124, T));
        assert!(!c.translated_as(ip("100.64.7.3"), 40_123, T));
        // A record without a WAN address never matches exactly.
        let old = conn(LAPTOP, 0, "198.51.100.25", 40_123);
        assert!(!old.translated_as(wan, 40_123, T));
    }

    #[test]
    fn the_router_translation_names_the_device_exactly_across_cpes() {
        let wan = ip("100.64.7.2");
        let mut other = conn(BOT, -5, "198.51.100.25", 40_123);
        other.cpe_id = "cpe-b".into();
        other.nat_ip = Some(ip("100.64.7.3"));
        let conns = vec![
            Connection {
                nat_ip: Some(wan),
                ..conn(BOT, -30, "198.51.100.1", 40_001)
            },
            Connection {
                nat_ip: Some(wan),
                ..conn(BOT, -20, "198.51.100.2", 40_002)
            },
            // The same port reused earlier by another device: the nearest wins.
            Connection {
                nat_ip: Some(wan),
                ..conn(BOT, -280, "198.51.100.3", 40_123)
            },
            Connection {
                nat_ip: Some(wan),
                ..conn(LAPTOP, -8, "198.51.100.25", 40_123)
            },
            other,
        ];
        // Asked by WAN address, which no address period names (CGNAT).
        let q = AbuseQuery {
            public_ip: wan,
            source_port: Some(40_123),
            ..query()
        };
        let m = map(&q, &[], &conns, &devices());
        assert_eq!(m.confidence, Confidence::Exact);
        assert_eq!(m.cpe_id.as_deref(), Some("cpe-a"));
        assert_eq!(m.mac, Some(LAPTOP));
        assert_eq!(m.device_name.as_deref(), Some("laptop"));
        assert_eq!(m.evidence.len(), 1);
        assert_eq!(m.evidence[0].nat_ip, Some(wan));
        assert_eq!(m.household_connections, 4);
        // A destination that contradicts the translation: no exact answer.
        let q2 = AbuseQuery {
            dest_ip: Some(ip("192.0.2.1")),
            ..q.clone()
        };
        assert_ne!(
            map(&q2, &[], &conns, &devices()).confidence,
            Confidence::Exact
        );
        // A port nobody used: the earlier steps as before.
        let q3 = AbuseQuery {
            source_port: Some(49_999),
            public_ip: ip("203.0.113.7"),
            ..query()
        };
        let m = map(&q3, &periods(), &conns, &devices());
        assert_eq!(m.confidence, Confidence::TimeWindow);
        assert_eq!(m.mac, Some(BOT));
    }

    #[test]
    fn unknown_address_is_unmatched() {
        let q = AbuseQuery {
            public_ip: ip("192.0.2.99"),
            ..query()
        };
        let m = map(&q, &periods(), &[], &devices());
        assert_eq!(m.confidence, Confidence::Unmatched);
        assert_eq!(m.cpe_id, None);
    }
}
