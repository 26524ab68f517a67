//! The one policy safety check, run by the NOC before it signs a policy and by every agent
//! before it applies one: no policy may convict the mail relays a router depends on or cut
//! the router's uplink.
//!
//! A campaign indicator (`indicators.mail_servers`) convicts every device that connects to
//! an address it covers, fleet-wide, on first sight. Aimed at the ISP's relay it would block
//! every honest household's mail; aimed at the broker it would cut the routers off from the
//! controller that could undo it. So a policy is refused when an indicator network
//!
//! - is a catch-all: wider than [`MIN_PREFIX_V4`] / [`MIN_PREFIX_V6`] (`0.0.0.0/0`, `::/0`,
//!   `0.0.0.0/1`, ...), which no campaign needs and which would convict honest senders;
//! - overlaps the *effective* relay set: the relays of the router's local configuration,
//!   which no pushed policy can remove ([`SafetyContext::local_relays`]), plus the policy's
//!   own `allow_relays`;
//! - covers an address of the broker the agents' uplink talks to
//!   ([`SafetyContext::brokers`]).
//!
//! Pure: the caller resolves host names and reads configuration, and hands in the result.

use std::fmt;
use std::net::IpAddr;

use super::{Cidr, Policy, RelayRule};

/// The narrowest prefix an IPv4 indicator network may have: a /8 at most. No campaign runs
/// its mail servers from a wider network, and anything wider is a catch-all.
pub const MIN_PREFIX_V4: u8 = 8;

/// The narrowest prefix an IPv6 indicator network may have: a /16 at most.
pub const MIN_PREFIX_V6: u8 = 16;

/// The field of the policy whose entries are checked.
pub const MAIL_SERVERS_FIELD: &str = "indicators.mail_servers";

/// What a policy must never cut off, beyond what the policy itself says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SafetyContext {
    /// Relays that no pushed policy can remove: at an agent, those of its local
    /// configuration; at the controller, the ISP relays it is configured with.
    pub local_relays: Vec<RelayRule>,
    /// Addresses of the MQTT broker the agents' uplink connects to.
    pub brokers: Vec<IpAddr>,
}

/// Where a relay in the effective relay set comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOrigin {
    /// The local configuration ([`SafetyContext::local_relays`]).
    Local,
    /// The policy's `allow_relays`.
    Policy,
}

impl fmt::Display for RelayOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelayOrigin::Local => "local ISP relay",
            RelayOrigin::Policy => "allowlisted relay",
        })
    }
}

/// Why a policy is refused: the field, the offending entry and what it would cut off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafePolicy {
    /// An indicator network is so wide it would convict honest senders everywhere.
    #[error("policy field `{field}`: entry {net} is a catch-all (wider than /{max}); it would convict every device mailing anywhere in it")]
    CatchAll {
        /// Dotted path of the field.
        field: &'static str,
        /// The entry.
        net: Cidr,
        /// The widest prefix allowed for its address family.
        max: u8,
    },
    /// An indicator network overlaps a relay of the effective relay set.
    #[error("policy field `{field}`: entry {net} covers the {origin} {relay}; every device mailing through it would be convicted")]
    CoversRelay {
        /// Dotted path of the field.
        field: &'static str,
        /// The entry.
        net: Cidr,
        /// The relay it overlaps.
        relay: RelayRule,
        /// Where the relay comes from.
        origin: RelayOrigin,
    },
    /// An indicator network covers an address of the broker.
    #[error("policy field `{field}`: entry {net} covers the broker address {broker}; applying it would cut the routers' uplink")]
    CoversBroker {
        /// Dotted path of the field.
        field: &'static str,
        /// The entry.
        net: Cidr,
        /// The broker's address.
        broker: IpAddr,
    },
}

impl UnsafePolicy {
    /// The indicator network that made the policy unsafe.
    pub fn net(&self) -> Cidr {
        match self {
            UnsafePolicy::CatchAll { net, .. }
            | UnsafePolicy::CoversRelay { net, .. }
            | UnsafePolicy::CoversBroker { net, .. } => *net,
        }
    }
}

impl Cidr {
    /// Whether this network and `other` share at least one address (never across address
    /// families).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let wider = Cidr {
            addr: self.addr,
            prefix: self.prefix.min(other.prefix),
        };
        wider.contains(other.addr)
    }
}

/// The effective relay set of `policy` under `ctx`: the local relays first, then the
/// policy's own, each with its origin.
pub fn effective_relays<'a>(
    policy: &'a Policy,
    ctx: &'a SafetyContext,
) -> impl Iterator<Item = (RelayRule, RelayOrigin)> + 'a {
    ctx.local_relays
        .iter()
        .map(|r| (*r, RelayOrigin::Local))
        .chain(
            policy
                .allow_relays
                .iter()
                .map(|r| (*r, RelayOrigin::Policy)),
        )
}

/// Checks one indicator network of `field` against the catch-all bound, the broker and the
/// effective relay set of `policy` under `ctx`.
///
/// # Errors
/// [`UnsafePolicy`] naming `field`, `net` and what it would cut off.
pub fn check_indicator(
    field: &'static str,
    net: &Cidr,
    policy: &Policy,
    ctx: &SafetyContext,
) -> Result<(), UnsafePolicy> {
    let max = if net.addr().is_ipv4() {
        MIN_PREFIX_V4
    } else {
        MIN_PREFIX_V6
    };
    if net.prefix() < max {
        return Err(UnsafePolicy::CatchAll {
            field,
            net: *net,
            max,
        });
    }
    if let Some(broker) = ctx.brokers.iter().find(|b| net.contains(**b)) {
        return Err(UnsafePolicy::CoversBroker {
            field,
            net: *net,
            broker: *broker,
        });
    }
    if let Some((relay, origin)) = effective_relays(policy, ctx).find(|(r, _)| net.overlaps(&r.net))
    {
        return Err(UnsafePolicy::CoversRelay {
            field,
            net: *net,
            relay,
            origin,
        });
    }
    Ok(())
}

/// The policy safety check: refuses a policy any of whose indicator networks is a catch-all,
/// covers the broker or overlaps the effective relay set (see the module docs).
///
/// # Errors
/// [`UnsafePolicy`] for the first offending entry.
pub fn check_policy_safety(policy: &Policy, ctx: &SafetyContext) -> Result<(), UnsafePolicy> {
    policy
        .indicators
        .mail_servers
        .iter()
        .try_for_each(|net| check_indicator(MAIL_SERVERS_FIELD, net, policy, ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn with_servers(servers: &[&str]) -> Policy {
        let mut p = Policy::default();
        p.indicators.mail_servers = servers.iter().map(|s| cidr(s)).collect();
        p
    }

    /// The ISP relay the router's local configuration names.
    fn isp() -> SafetyContext {
        SafetyContext {
            local_relays: vec!["198.51.100.25:587".parse().unwrap()],
            brokers: vec!["192.0.2.1".parse().unwrap()],
        }
    }

    #[test]
    fn networks_overlap_when_they_share_an_address() {
        assert!(cidr("198.51.100.0/24").overlaps(&cidr("198.51.100.7/32")));
        assert!(cidr("198.51.100.7/32").overlaps(&cidr("198.51.100.0/24")));
        assert!(!cidr("198.51.100.0/24").overlaps(&cidr("198.51.101.0/24")));
        assert!(cidr("2001:db8::/32").overlaps(&cidr("2001:db8:1::/48")));
        assert!(!cidr("0.0.0.0/0").overlaps(&cidr("::/0")));
    }

    /// Finding row 5 of issue 17: a catch-all indicator.
    #[test]
    fn a_catch_all_indicator_is_refused_naming_the_field_and_entry() {
        for wide in ["0.0.0.0/0", "0.0.0.0/1", "128.0.0.0/7", "::/0", "2000::/3"] {
            let err =
                check_policy_safety(&with_servers(&[wide]), &SafetyContext::default()).unwrap_err();
            assert!(
                matches!(err, UnsafePolicy::CatchAll { field: MAIL_SERVERS_FIELD, net, .. } if net == cidr(wide)),
                "{wide}: {err:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains("indicators.mail_servers") && text.contains(wide),
                "{text}"
            );
        }
        // The widest allowed networks pass.
        check_policy_safety(
            &with_servers(&["10.0.0.0/8", "2001::/16"]),
            &SafetyContext::default(),
        )
        .unwrap();
    }

    /// Finding row 6 of issue 17: the pushed policy drops every relay, and an indicator covers
    /// the ISP relay of the local configuration.
    #[test]
    fn an_indicator_covering_the_local_isp_relay_is_refused_whatever_allow_relays_says() {
        let p = with_servers(&["198.51.100.25/32"]);
        assert!(p.allow_relays.is_empty());
        let err = check_policy_safety(&p, &isp()).unwrap_err();
        assert_eq!(
            err,
            UnsafePolicy::CoversRelay {
                field: MAIL_SERVERS_FIELD,
                net: cidr("198.51.100.25/32"),
                relay: "198.51.100.25:587".parse().unwrap(),
                origin: RelayOrigin::Local,
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("indicators.mail_servers")
                && text.contains("198.51.100.25/32")
                && text.contains("local ISP relay 198.51.100.25/32:587"),
            "{text}"
        );
        // A wider indicator that contains the relay, too.
        assert!(check_policy_safety(&with_servers(&["198.51.100.0/24"]), &isp()).is_err());
        // Without the local relay in the context the same policy passes: the context is
        // what carries it.
        let ctx = SafetyContext {
            local_relays: Vec::new(),
            ..isp()
        };
        check_policy_safety(&p, &ctx).unwrap();
    }

    #[test]
    fn an_indicator_inside_an_allowlisted_relay_network_is_refused() {
        let mut p = with_servers(&["203.0.113.9"]);
        p.allow_relays = vec!["203.0.113.0/24:465".parse().unwrap()];
        let err = check_policy_safety(&p, &SafetyContext::default()).unwrap_err();
        assert!(
            matches!(
                err,
                UnsafePolicy::CoversRelay {
                    origin: RelayOrigin::Policy,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("allowlisted relay"), "{err}");
    }

    #[test]
    fn an_indicator_covering_the_broker_is_refused() {
        let err = check_policy_safety(&with_servers(&["192.0.2.0/24"]), &isp()).unwrap_err();
        assert_eq!(
            err,
            UnsafePolicy::CoversBroker {
                field: MAIL_SERVERS_FIELD,
                net: cidr("192.0.2.0/24"),
                broker: "192.0.2.1".parse().unwrap(),
            }
        );
        assert!(
            err.to_string()
                .contains("covers the broker address 192.0.2.1"),
            "{err}"
        );
    }

    #[test]
    fn indicators_elsewhere_pass_and_the_first_bad_entry_is_named() {
        let p = with_servers(&["203.0.113.0/24", "2001:db8::/32"]);
        check_policy_safety(&p, &isp()).unwrap();
        check_policy_safety(&Policy::default(), &isp()).unwrap();
        let p = with_servers(&["203.0.113.0/24", "192.0.2.1", "0.0.0.0/0"]);
        assert_eq!(
            check_policy_safety(&p, &isp()).unwrap_err().net(),
            cidr("192.0.2.1/32")
        );
    }
}
