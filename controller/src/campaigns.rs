//! Fleet correlation: infected devices in different households that behave alike are one
//! spam campaign, and the campaign's indicators can be pushed to the whole fleet.
//!
//! [`cluster`] is pure and deterministic: devices ([`Member`]) are linked when their
//! destination mail-server sets overlap (Jaccard index at or above
//! [`Settings::min_jaccard`]), when they used the same distinctive EHLO name, or the same
//! MAIL FROM domain; the connected groups that span at least two households are campaigns.
//! [`indicators_of`] turns a campaign into protocol [`Indicators`] for a fleet policy;
//! [`drop_unsafe_servers`] takes out every mail server the policy safety check protects
//! (the ISP relays, the policy's `allow_relays`, the broker), so a push never convicts them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use smtpguard_protocol::policy::safety::{check_indicator, MAIL_SERVERS_FIELD};
use smtpguard_protocol::policy::{Cidr, Indicators};
use smtpguard_protocol::{MacAddr, Observed, Policy, SafetyContext, UnsafePolicy};

/// Clustering knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Two devices whose mail-server sets have at least this Jaccard index are linked.
    pub min_jaccard: f64,
    /// Server sets smaller than this never link on overlap alone (two devices that each
    /// reached one big provider are not a campaign).
    pub min_servers: usize,
    /// A campaign spans at least this many households.
    pub min_households: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            min_jaccard: 0.3,
            min_servers: 3,
            min_households: 2,
        }
    }
}

/// One infected device and what it was seen doing.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Its household's router.
    pub cpe_id: String,
    /// The device.
    pub mac: MacAddr,
    /// Its newest alert's time (Unix ms).
    pub at_ms: u64,
    /// Indicator values from its alerts.
    pub observed: Observed,
}

/// Why two devices were put together.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Link {
    /// Same EHLO name.
    Ehlo(String),
    /// Same MAIL FROM domain.
    SenderDomain(String),
    /// Overlapping mail-server sets, with the Jaccard index in percent.
    Servers(u32),
}

/// A group of alike infected devices across households.
#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    /// Stable id derived from the indicators (same campaign, same id across restarts).
    pub id: String,
    /// Members, by CPE then MAC.
    pub members: Vec<Member>,
    /// Distinct households.
    pub households: usize,
    /// First and newest alert time among members.
    pub first_ms: u64,
    /// Newest alert time.
    pub last_ms: u64,
    /// EHLO names used by at least two members.
    pub ehlo_names: Vec<String>,
    /// MAIL FROM domains used by at least two members.
    pub sender_domains: Vec<String>,
    /// Mail servers reached by at least two members.
    pub mail_servers: Vec<IpAddr>,
    /// The reasons members were linked, deduplicated.
    pub links: Vec<Link>,
}

/// An EHLO name identifies a campaign only when it is a name (IP literals and the usual
/// default names are shared by innocent software).
fn distinctive_ehlo(name: &str) -> Option<String> {
    let n = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if n.is_empty() || n.starts_with('[') || n.parse::<IpAddr>().is_ok() {
        return None;
    }
    const GENERIC: [&str; 4] = ["localhost", "localhost.localdomain", "user", "pc"];
    if GENERIC.contains(&n.as_str()) {
        return None;
    }
    Some(n)
}

fn norm_domain(d: &str) -> Option<String> {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    (!d.is_empty()).then_some(d)
}

/// The Jaccard index of two sets: |A ∩ B| / |A ∪ B|, 0 for two empty sets.
pub fn jaccard<T: Ord>(a: &BTreeSet<T>, b: &BTreeSet<T>) -> f64 {
    let inter = a.intersection(b).count();
    let union = a.len() + b.len() - inter;
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

struct Dsu(Vec<usize>);

impl Dsu {
    fn find(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        // The smaller index becomes the root, so results do not depend on visiting order.
        if ra < rb {
            self.0[rb] = ra;
        } else if rb < ra {
            self.0[ra] = rb;
        }
    }
}

/// Groups infected devices into campaigns. Deterministic: the same members in any order give
/// the same campaigns in the same order (most households first, then by id).
pub fn cluster(members: &[Member], settings: &Settings) -> Vec<Campaign> {
    let mut members: Vec<Member> = members.to_vec();
    members.sort_by(|a, b| (&a.cpe_id, a.mac).cmp(&(&b.cpe_id, b.mac)));
    members.dedup_by(|a, b| a.cpe_id == b.cpe_id && a.mac == b.mac);
    let n = members.len();
    let servers: Vec<BTreeSet<IpAddr>> = members
        .iter()
        .map(|m| m.observed.mail_servers.iter().copied().collect())
        .collect();
    let ehlos: Vec<BTreeSet<String>> = members
        .iter()
        .map(|m| {
            m.observed
                .ehlo_names
                .iter()
                .filter_map(|e| distinctive_ehlo(e))
                .collect()
        })
        .collect();
    let domains: Vec<BTreeSet<String>> = members
        .iter()
        .map(|m| {
            m.observed
                .mail_from_domains
                .iter()
                .filter_map(|d| norm_domain(d))
                .collect()
        })
        .collect();
    let mut dsu = Dsu((0..n).collect());
    let mut links: Vec<(usize, Link)> = Vec::new();
    for i in 0..n {
        for j in (i + 1)..n {
            let mut pair_links = Vec::new();
            if let Some(e) = ehlos[i].intersection(&ehlos[j]).next() {
                pair_links.push(Link::Ehlo(e.clone()));
            }
            if let Some(d) = domains[i].intersection(&domains[j]).next() {
                pair_links.push(Link::SenderDomain(d.clone()));
            }
            if servers[i].len() >= settings.min_servers && servers[j].len() >= settings.min_servers
            {
                let jac = jaccard(&servers[i], &servers[j]);
                if jac >= settings.min_jaccard {
                    pair_links.push(Link::Servers((jac * 100.0).round() as u32));
                }
            }
            if !pair_links.is_empty() {
                dsu.union(i, j);
                links.extend(pair_links.into_iter().map(|l| (i, l)));
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..n {
        let root = dsu.find(i);
        groups.entry(root).or_default().push(i);
    }
    let mut out = Vec::new();
    for (root, idx) in groups {
        let households: BTreeSet<&str> = idx.iter().map(|&i| members[i].cpe_id.as_str()).collect();
        if households.len() < settings.min_households.max(1) || idx.len() < 2 {
            continue;
        }
        let shared = |sets: &dyn Fn(usize) -> Vec<String>| -> Vec<String> {
            let mut count: BTreeMap<String, usize> = BTreeMap::new();
            for &i in &idx {
                for v in sets(i) {
                    *count.entry(v).or_default() += 1;
                }
            }
            count
                .into_iter()
                .filter(|(_, c)| *c >= 2)
                .map(|(v, _)| v)
                .collect()
        };
        let ehlo_names = shared(&|i| ehlos[i].iter().cloned().collect());
        let sender_domains = shared(&|i| domains[i].iter().cloned().collect());
        let mail_servers: Vec<IpAddr> =
            shared(&|i| servers[i].iter().map(|s| s.to_string()).collect())
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect();
        let mut group_links: Vec<Link> = links
            .iter()
            .filter(|(i, _)| dsu.find(*i) == root)
            .map(|(_, l)| l.clone())
            .collect();
        group_links.sort();
        group_links.dedup();
        let first_ms = idx.iter().map(|&i| members[i].at_ms).min().unwrap_or(0);
        let last_ms = idx.iter().map(|&i| members[i].at_ms).max().unwrap_or(0);
        let id = campaign_id(
            &ehlo_names,
            &sender_domains,
            &idx.iter().map(|&i| &members[i]).collect::<Vec<_>>(),
        );
        out.push(Campaign {
            id,
            households: households.len(),
            members: idx.iter().map(|&i| members[i].clone()).collect(),
            first_ms,
            last_ms,
            ehlo_names,
            sender_domains,
            mail_servers,
            links: group_links,
        });
    }
    out.sort_by(|a, b| {
        b.households
            .cmp(&a.households)
            .then_with(|| a.id.cmp(&b.id))
    });
    out
}

/// Named after its indicators when it has any (stable while members come and go), else after
/// its first member.
fn campaign_id(ehlo: &[String], domains: &[String], members: &[&Member]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    if ehlo.is_empty() && domains.is_empty() {
        if let Some(m) = members.first() {
            h.update(m.cpe_id.as_bytes());
            h.update(m.mac.0);
        }
    } else {
        for e in ehlo {
            h.update(b"e:");
            h.update(e.as_bytes());
            h.update([0]);
        }
        for d in domains {
            h.update(b"d:");
            h.update(d.as_bytes());
            h.update([0]);
        }
    }
    let digest = h.finalize();
    format!("c-{}", hex::encode(&digest[..5]))
}

/// The indicators of a campaign for a fleet policy. Mail servers are included only when
/// asked: big providers' MX hosts are shared by every bot and by every honest sender.
pub fn indicators_of(c: &Campaign, with_servers: bool) -> Indicators {
    Indicators {
        ehlo_names: c.ehlo_names.clone(),
        mail_from_domains: c.sender_domains.clone(),
        mail_servers: if with_servers {
            c.mail_servers.iter().map(|ip| Cidr::host(*ip)).collect()
        } else {
            Vec::new()
        },
    }
}

/// Removes from `extra` every mail server the safety check refuses for `policy` (the policy
/// the indicators are about to join) under `safety`: the effective relay set (the ISP relays
/// and the policy's `allow_relays`), the broker, catch-alls. Returns why each was removed.
pub fn drop_unsafe_servers(
    extra: &mut Indicators,
    policy: &Policy,
    safety: &SafetyContext,
) -> Vec<UnsafePolicy> {
    let mut dropped = Vec::new();
    extra.mail_servers.retain(|net| {
        match check_indicator(MAIL_SERVERS_FIELD, net, policy, safety) {
            Ok(()) => true,
            Err(why) => {
                dropped.push(why);
                false
            }
        }
    });
    dropped
}

/// Adds `extra` to `base` without duplicates (case-insensitive for names), keeping order.
pub fn merge_indicators(base: &mut Indicators, extra: &Indicators) {
    for e in &extra.ehlo_names {
        if !base.ehlo_names.iter().any(|x| x.eq_ignore_ascii_case(e)) {
            base.ehlo_names.push(e.clone());
        }
    }
    for d in &extra.mail_from_domains {
        if !base
            .mail_from_domains
            .iter()
            .any(|x| x.eq_ignore_ascii_case(d))
        {
            base.mail_from_domains.push(d.clone());
        }
    }
    for s in &extra.mail_servers {
        if !base.mail_servers.contains(s) {
            base.mail_servers.push(*s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(cpe: &str, last: u8, ehlo: &[&str], domains: &[&str], servers: &[u8]) -> Member {
        Member {
            cpe_id: cpe.into(),
            mac: MacAddr([2, 0, 0, 0, 0, last]),
            at_ms: u64::from(last) * 1000,
            observed: Observed {
                ehlo_names: ehlo.iter().map(|s| s.to_string()).collect(),
                mail_from_domains: domains.iter().map(|s| s.to_string()).collect(),
                mail_servers: servers
                    .iter()
                    .map(|o| IpAddr::from([198, 51, 100, *o]))
                    .collect(),
            },
        }
    }

    #[test]
    fn jaccard_of_sets() {
        let a: BTreeSet<u8> = [1, 2, 3, 4].into();
        let b: BTreeSet<u8> = [3, 4, 5, 6].into();
        assert!((jaccard(&a, &b) - 2.0 / 6.0).abs() < 1e-9);
        assert_eq!(jaccard::<u8>(&BTreeSet::new(), &BTreeSet::new()), 0.0);
    }

    #[test]
    fn shared_ehlo_across_households_is_a_campaign_with_that_indicator() {
        let ms = vec![
            member("cpe-a", 1, &["COZOXORY.club"], &[], &[1]),
            member("cpe-b", 2, &["cozoxory.club."], &[], &[2]),
            member("cpe-c", 3, &["other-pc.lan"], &[], &[3]),
        ];
        let cs = cluster(&ms, &Settings::default());
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].households, 2);
        assert_eq!(cs[0].ehlo_names, vec!["cozoxory.club".to_string()]);
        assert_eq!(cs[0].links, vec![Link::Ehlo("cozoxory.club".into())]);
        let ind = indicators_of(&cs[0], false);
        assert_eq!(ind.ehlo_names, vec!["cozoxory.club".to_string()]);
        assert!(ind.mail_servers.is_empty());
    }

    #[test]
    fn ip_literal_ehlo_never_links() {
        let ms = vec![
            member("cpe-a", 1, &["[192.168.1.5]"], &[], &[]),
            member("cpe-b", 2, &["[192.168.1.5]"], &[], &[]),
        ];
        assert!(cluster(&ms, &Settings::default()).is_empty());
    }

    #[test]
    fn server_overlap_links_at_the_threshold_transitively() {
        // a~b share 4 of 6 (0.67); b~c share 3 of 7 (0.43); a and c only 2 of 8 (0.25).
        let ms = vec![
            member("cpe-a", 1, &[], &[], &[1, 2, 3, 4, 5]),
            member("cpe-b", 2, &[], &[], &[2, 3, 4, 5, 6]),
            member("cpe-c", 3, &[], &[], &[4, 5, 6, 7, 8]),
            member("cpe-d", 4, &[], &[], &[50, 51, 52]),
        ];
        let cs = cluster(&ms, &Settings::default());
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].members.len(), 3);
        assert_eq!(cs[0].first_ms, 1000);
        assert_eq!(cs[0].last_ms, 3000);
        assert!(cs[0].links.contains(&Link::Servers(67)));
        let strict = Settings {
            min_jaccard: 0.7,
            ..Settings::default()
        };
        assert!(cluster(&ms, &strict).is_empty());
    }

    #[test]
    fn one_household_alone_is_not_a_campaign() {
        let ms = vec![
            member("cpe-a", 1, &["bot.example"], &[], &[]),
            member("cpe-a", 2, &["bot.example"], &[], &[]),
        ];
        assert!(cluster(&ms, &Settings::default()).is_empty());
    }

    #[test]
    fn order_of_input_does_not_change_the_result() {
        let mut ms = vec![
            member("cpe-a", 1, &[], &["spam.example"], &[]),
            member("cpe-b", 2, &[], &["SPAM.example"], &[]),
            member("cpe-c", 3, &["x.club"], &[], &[]),
            member("cpe-d", 4, &["x.club"], &[], &[]),
        ];
        let a = cluster(&ms, &Settings::default());
        ms.reverse();
        let b = cluster(&ms, &Settings::default());
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        assert_ne!(a[0].id, a[1].id);
    }

    /// A campaign whose bots also mailed through the ISP relay and an allowlisted relay:
    /// neither is pushed as an indicator, the other servers are.
    #[test]
    fn campaign_pushes_never_include_the_effective_relay_set() {
        let ms = vec![
            member("cpe-a", 1, &["bot.club"], &[], &[5, 7, 9, 25]),
            member("cpe-b", 2, &["bot.club"], &[], &[5, 7, 9, 25]),
        ];
        let cs = cluster(&ms, &Settings::default());
        let mut ind = indicators_of(&cs[0], true);
        assert_eq!(ind.mail_servers.len(), 4);
        let policy = Policy {
            allow_relays: vec!["198.51.100.9:587".parse().unwrap()],
            ..Policy::default()
        };
        let safety = SafetyContext {
            local_relays: vec!["198.51.100.25:587".parse().unwrap()],
            brokers: vec!["198.51.100.5".parse().unwrap()],
        };
        let dropped = drop_unsafe_servers(&mut ind, &policy, &safety);
        assert_eq!(
            ind.mail_servers,
            vec!["198.51.100.7/32".parse::<Cidr>().unwrap()]
        );
        let mut nets: Vec<String> = dropped.iter().map(|d| d.net().to_string()).collect();
        nets.sort();
        assert_eq!(
            nets,
            vec!["198.51.100.25/32", "198.51.100.5/32", "198.51.100.9/32"]
        );
        // What is left passes the check the signer runs.
        let mut merged = policy.clone();
        merge_indicators(&mut merged.indicators, &ind);
        smtpguard_protocol::check_policy_safety(&merged, &safety).unwrap();
    }

    #[test]
    fn merging_indicators_skips_duplicates() {
        let mut base = Indicators {
            ehlo_names: vec!["A.club".into()],
            ..Default::default()
        };
        merge_indicators(
            &mut base,
            &Indicators {
                ehlo_names: vec!["a.club".into(), "b.club".into()],
                ..Default::default()
            },
        );
        assert_eq!(
            base.ehlo_names,
            vec!["A.club".to_string(), "b.club".to_string()]
        );
    }
}
