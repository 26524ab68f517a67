//! Small domain values used throughout the wire format.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A LAN device's Ethernet address: the identity of a household device.
///
/// Written as six lower-case hex pairs separated by colons (`02:11:22:33:44:05`) in every
/// encoding (CBOR, JSON, TOML), so evidence and policy files stay readable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The three-byte organisationally unique identifier (vendor prefix).
    pub fn oui(&self) -> [u8; 3] {
        [self.0[0], self.0[1], self.0[2]]
    }

    /// Multicast and broadcast addresses never identify a device.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A MAC address string was not six hex pairs separated by `:` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex pairs like 02:11:22:33:44:05")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.chars().take(40).collect());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What the agent concluded about one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Nothing in its mail behaviour stands out.
    Clean,
    /// Some signals of a bot; worth watching, throttled in enforce modes.
    Suspicious,
    /// Strong evidence of a spam bot.
    Infected,
}

impl Verdict {
    /// The lower-case name used on the wire and in reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Suspicious => "suspicious",
            Verdict::Infected => "infected",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the router does about one device's mail traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Log and report only.
    Monitor,
    /// Throttle new connections to mail ports (per-device token bucket).
    RateLimit,
    /// Drop new connections to mail ports until the block's time to live runs out.
    Block,
}

impl Action {
    /// The kebab-case name used on the wire and in reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Monitor => "monitor",
            Action::RateLimit => "rate-limit",
            Action::Block => "block",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far the agent may go on its own, set by policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Detect and report; never touch traffic.
    #[default]
    Monitor,
    /// Throttle suspicious and infected devices, never block.
    RateLimit,
    /// Throttle suspicious devices and block infected ones for the block time to live.
    #[serde(alias = "block")]
    Enforce,
}

impl Mode {
    /// The action this mode calls for on a device with `verdict`.
    pub fn action_for(&self, verdict: Verdict) -> Action {
        match (self, verdict) {
            (_, Verdict::Clean) | (Mode::Monitor, _) => Action::Monitor,
            (Mode::RateLimit, _) | (Mode::Enforce, Verdict::Suspicious) => Action::RateLimit,
            (Mode::Enforce, Verdict::Infected) => Action::Block,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_through_text() {
        let mac: MacAddr = "02:11:22:33:44:05".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0x11, 0x22, 0x33, 0x44, 0x05]);
        assert_eq!(mac.to_string(), "02:11:22:33:44:05");
        assert_eq!("02-11-22-33-44-05".parse::<MacAddr>().unwrap(), mac);
        assert_eq!("02:11:22:33:44:AB".parse::<MacAddr>().unwrap().0[5], 0xab);
    }

    #[test]
    fn bad_macs_are_errors() {
        for s in [
            "",
            "02:11:22:33:44",
            "02:11:22:33:44:05:06",
            "0211:22:33:44:05",
            "zz:11:22:33:44:05",
        ] {
            assert!(s.parse::<MacAddr>().is_err(), "{s}");
        }
    }

    #[test]
    fn mode_maps_verdicts_to_graduated_actions() {
        assert_eq!(Mode::Monitor.action_for(Verdict::Infected), Action::Monitor);
        assert_eq!(
            Mode::RateLimit.action_for(Verdict::Infected),
            Action::RateLimit
        );
        assert_eq!(
            Mode::Enforce.action_for(Verdict::Suspicious),
            Action::RateLimit
        );
        assert_eq!(Mode::Enforce.action_for(Verdict::Infected), Action::Block);
        assert_eq!(Mode::Enforce.action_for(Verdict::Clean), Action::Monitor);
    }
}

/// Serde helpers that write IP addresses as text (`192.0.2.1`, `2001:db8::1`) in every
/// encoding, so the CBOR wire is readable by any implementation (serde's default for
/// binary formats is an enum of byte arrays).
pub(crate) mod ip_text {
    use std::net::IpAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    fn parse<'de, D: Deserializer<'de>>(s: &str) -> Result<IpAddr, D::Error> {
        s.parse().map_err(serde::de::Error::custom)
    }

    /// One address.
    pub fn serialize<S: Serializer>(ip: &IpAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(ip)
    }

    /// One address.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
        parse::<D>(&<std::borrow::Cow<'de, str>>::deserialize(d)?)
    }

    /// An optional address.
    pub mod option {
        use super::*;

        /// Serializes `None` as null.
        pub fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
            match ip {
                Some(ip) => s.collect_str(ip),
                None => s.serialize_none(),
            }
        }

        /// Accepts null or an address.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
            Option::<std::borrow::Cow<'de, str>>::deserialize(d)?
                .map(|s| parse::<D>(&s))
                .transpose()
        }
    }

    /// A list of addresses.
    pub mod list {
        use super::*;
        use serde::ser::SerializeSeq;

        /// Serializes as an array of strings.
        pub fn serialize<S: Serializer>(ips: &[IpAddr], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(ips.len()))?;
            for ip in ips {
                seq.serialize_element(&ip.to_string())?;
            }
            seq.end()
        }

        /// Accepts an array of strings.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
            Vec::<std::borrow::Cow<'de, str>>::deserialize(d)?
                .iter()
                .map(|s| parse::<D>(s))
                .collect()
        }
    }
}
