//! The enforcement planner: carries out the engine's decisions as kernel [`Op`]s.
//!
//! It decides nothing. The engine ([`crate::engine`]) alone decides what each device
//! deserves under the policy in force: mode, allowlisted devices, time to live, manual
//! releases and their grace periods, when a block ends. The planner only keeps the kernel's
//! sets in step with those decisions:
//! - [`Planner::apply`] puts one decision in force (replacing a different action on the
//!   same device), [`Planner::lift`] and [`Planner::lift_all`] take it away;
//! - every kernel element gets a timeout, so a dead agent's limits lapse by themselves; an
//!   open-ended rate limit (one the engine holds until the verdict clears) has its timeout
//!   renewed shortly before it runs out ([`Planner::handle_timeout`]), which is the
//!   planner's only timer;
//! - [`Planner::snapshot`] and [`Planner::sync_ops`] give what is in force, for the state
//!   file and for rebuilding the kernel's sets after a failed batch or a flushed table.
//!
//! Time is passed in as Unix milliseconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smtpguard_protocol::{Action, MacAddr, Policy};

use super::Op;

/// A rate limit or block in force on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The device.
    pub mac: MacAddr,
    /// [`Action::RateLimit`] or [`Action::Block`].
    pub action: Action,
    /// When it started (Unix ms).
    pub since_ms: u64,
    /// When it ends (Unix ms): the engine's decision. For an open-ended entry, when the
    /// kernel element's current timeout runs out; the planner renews it before then.
    pub until_ms: u64,
    /// Held until the engine releases it (the engine's rate limits have no end): the kernel
    /// element still gets a timeout, renewed while the agent runs, so a dead agent's limits
    /// lapse by themselves.
    #[serde(default)]
    pub open_ended: bool,
    /// The engine's reason, for `status` and logs.
    pub reason: String,
}

/// A manual release and the end of its grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualRelease {
    /// The device released by hand.
    pub mac: MacAddr,
    /// Until when (Unix ms) the engine leaves it alone.
    pub until_ms: u64,
}

/// What the agent persists: enough to rebuild enforcement after a restart. The core
/// ([`crate::core::Agent::snapshot`]) fills it from the planner (entries) and the engine
/// (manual releases).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    /// Rate limits and blocks in force.
    pub entries: Vec<Entry>,
    /// Manual releases still in their grace period.
    pub manual_releases: Vec<ManualRelease>,
}

/// The enforcement planner. See the module docs.
#[derive(Debug, Clone)]
pub struct Planner {
    /// The kernel timeout given to open-ended entries (the policy's block time to live).
    horizon_ms: u64,
    entries: BTreeMap<MacAddr, Entry>,
}

/// How long before an open-ended entry's kernel timeout the planner renews it.
fn renew_margin_ms(horizon_ms: u64) -> u64 {
    (horizon_ms / 4).min(10_000)
}

fn ttl_secs(now_ms: u64, until_ms: u64) -> u64 {
    until_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}

fn op_for(entry: &Entry, now_ms: u64) -> Op {
    let ttl_secs = ttl_secs(now_ms, entry.until_ms);
    match entry.action {
        Action::Block => Op::Block {
            mac: entry.mac,
            ttl_secs,
        },
        _ => Op::Limit {
            mac: entry.mac,
            ttl_secs,
        },
    }
}

impl Entry {
    /// The op that takes this entry out of the kernel's sets.
    pub fn lift_op(&self) -> Op {
        match self.action {
            Action::Block => Op::Unblock { mac: self.mac },
            _ => Op::Unlimit { mac: self.mac },
        }
    }
}

impl Planner {
    /// An empty planner; open-ended entries get `policy`'s block time to live as their
    /// kernel timeout.
    pub fn new(policy: &Policy) -> Self {
        Planner {
            horizon_ms: policy.block_ttl_ms(),
            entries: BTreeMap::new(),
        }
    }

    /// A new policy in force: only its block time to live matters here (the kernel timeout
    /// of open-ended entries from their next renewal on).
    pub fn set_policy(&mut self, policy: &Policy) {
        self.horizon_ms = policy.block_ttl_ms();
    }

    /// The engine put `action` in force on `mac` until `until_ms` (`None`: until it says
    /// otherwise). Returns the ops that make the kernel agree; empty when it already does.
    /// [`Action::Monitor`] lifts whatever is in force.
    pub fn apply(
        &mut self,
        now_ms: u64,
        mac: MacAddr,
        action: Action,
        until_ms: Option<u64>,
        reason: &str,
    ) -> Vec<Op> {
        if action == Action::Monitor {
            return self.lift(mac);
        }
        let open_ended = until_ms.is_none();
        let until_ms = until_ms
            .unwrap_or(now_ms.saturating_add(self.horizon_ms))
            .max(now_ms + 1);
        let mut ops = Vec::new();
        let mut since_ms = now_ms;
        if let Some(e) = self.entries.get(&mac) {
            if e.action == action {
                if e.open_ended == open_ended && (open_ended || e.until_ms == until_ms) {
                    return ops;
                }
                since_ms = e.since_ms;
            } else {
                ops.push(e.lift_op());
            }
        }
        let entry = Entry {
            mac,
            action,
            since_ms,
            until_ms,
            open_ended,
            reason: reason.to_string(),
        };
        tracing::info!(%mac, %action, ttl_secs = ttl_secs(now_ms, until_ms), open_ended, reason, "enforcing");
        ops.push(op_for(&entry, now_ms));
        self.entries.insert(mac, entry);
        ops
    }

    /// The engine released `mac` (its time ran out, its verdict cleared, the policy no
    /// longer allows it): lift what is in force.
    pub fn lift(&mut self, mac: MacAddr) -> Vec<Op> {
        match self.entries.remove(&mac) {
            Some(e) => {
                tracing::info!(%mac, action = %e.action, "lifted");
                vec![e.lift_op()]
            }
            None => Vec::new(),
        }
    }

    /// A person released `mac`: lift both kinds of element, whatever the planner thinks is
    /// in force (the kernel may hold one from an earlier run).
    pub fn lift_all(&mut self, mac: MacAddr) -> Vec<Op> {
        self.entries.remove(&mac);
        vec![Op::Unblock { mac }, Op::Unlimit { mac }]
    }

    /// Keeps the start time an entry had before a restart.
    pub fn keep_since(&mut self, mac: &MacAddr, since_ms: u64) {
        if let Some(e) = self.entries.get_mut(mac) {
            e.since_ms = e.since_ms.min(since_ms);
        }
    }

    /// Renews the kernel timeouts of open-ended entries that run out soon.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Vec<Op> {
        let horizon = self.horizon_ms;
        let margin = renew_margin_ms(horizon);
        let mut ops = Vec::new();
        for e in self.entries.values_mut() {
            if e.open_ended && e.until_ms <= now_ms.saturating_add(margin) {
                e.until_ms = now_ms.saturating_add(horizon);
                ops.push(op_for(e, now_ms));
            }
        }
        ops
    }

    /// When [`Planner::handle_timeout`] next has work (Unix ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        let margin = renew_margin_ms(self.horizon_ms);
        self.entries
            .values()
            .filter(|e| e.open_ended)
            .map(|e| e.until_ms.saturating_sub(margin))
            .min()
    }

    /// What is in force (manual releases are the engine's: see [`Snapshot`]).
    pub fn entries_snapshot(&self) -> Vec<Entry> {
        self.entries.values().cloned().collect()
    }

    /// The ops that rebuild the kernel's sets from the planner's view (after a failed batch,
    /// or after the table was replaced).
    pub fn sync_ops(&self, now_ms: u64) -> Vec<Op> {
        self.entries
            .values()
            .filter(|e| e.until_ms > now_ms)
            .map(|e| op_for(e, now_ms))
            .collect()
    }

    /// Entries in force, by MAC.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// The entry in force on `mac` at `now_ms`, if any.
    pub fn entry(&self, mac: &MacAddr, now_ms: u64) -> Option<&Entry> {
        self.entries.get(mac).filter(|e| e.until_ms > now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOT: &str = "02:5b:00:00:00:0b";

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn planner() -> Planner {
        Planner::new(&Policy {
            block_ttl_secs: 30,
            ..Policy::default()
        })
    }

    #[test]
    fn a_block_replaces_a_rate_limit_and_a_longer_one_extends_it_keeping_its_start() {
        let mut p = planner();
        let bot = mac(BOT);
        assert_eq!(
            p.apply(1_000, bot, Action::RateLimit, None, "suspicious"),
            vec![Op::Limit {
                mac: bot,
                ttl_secs: 30
            }]
        );
        assert_eq!(
            p.apply(5_000, bot, Action::Block, Some(35_000), "infected"),
            vec![
                Op::Unlimit { mac: bot },
                Op::Block {
                    mac: bot,
                    ttl_secs: 30
                }
            ]
        );
        // The same decision again changes nothing.
        assert!(p
            .apply(6_000, bot, Action::Block, Some(35_000), "infected")
            .is_empty());
        assert_eq!(
            p.apply(7_000, bot, Action::Block, Some(67_500), "again"),
            vec![Op::Block {
                mac: bot,
                ttl_secs: 61
            }]
        );
        let e = p.entry(&bot, 7_000).unwrap();
        assert_eq!(
            (e.since_ms, e.until_ms, e.reason.as_str()),
            (5_000, 67_500, "again")
        );
        assert_eq!(p.lift(bot), vec![Op::Unblock { mac: bot }]);
        assert!(p.lift(bot).is_empty());
        assert_eq!(p.entries().count(), 0);
    }

    #[test]
    fn blocks_have_no_planner_timer_open_ended_rate_limits_are_renewed() {
        let mut p = planner();
        let bot = mac(BOT);
        let other = mac("02:5b:00:00:00:0c");
        p.apply(0, other, Action::Block, Some(10_000), "x");
        // The engine ends blocks; the kernel's own timeout is the backstop.
        assert_eq!(p.poll_timeout(), None);
        // Open-ended: the kernel gets the block TTL (30 s) ...
        p.apply(0, bot, Action::RateLimit, None, "suspicious");
        assert!(p.entry(&bot, 0).unwrap().open_ended);
        // ... renewed shortly before it runs out (7.5 s margin: a quarter of 30 s).
        assert_eq!(p.poll_timeout(), Some(22_500));
        assert!(p.handle_timeout(22_499).is_empty());
        assert_eq!(
            p.handle_timeout(22_500),
            vec![Op::Limit {
                mac: bot,
                ttl_secs: 30
            }]
        );
        assert_eq!(p.poll_timeout(), Some(45_000));
        assert!(p
            .apply(23_000, bot, Action::RateLimit, None, "suspicious")
            .is_empty());
        // A new policy's time to live applies from the next renewal.
        p.set_policy(&Policy {
            block_ttl_secs: 120,
            ..Policy::default()
        });
        assert_eq!(
            p.handle_timeout(45_000),
            vec![Op::Limit {
                mac: bot,
                ttl_secs: 120
            }]
        );
    }

    #[test]
    fn a_manual_release_lifts_both_kinds_and_sync_rebuilds_what_is_in_force() {
        let mut p = planner();
        let bot = mac(BOT);
        assert_eq!(
            p.lift_all(bot),
            vec![Op::Unblock { mac: bot }, Op::Unlimit { mac: bot }]
        );
        p.apply(0, bot, Action::Block, Some(18_000), "x");
        assert_eq!(
            p.sync_ops(500),
            vec![Op::Block {
                mac: bot,
                ttl_secs: 18
            }]
        );
        assert!(p.sync_ops(18_000).is_empty());
        p.keep_since(&bot, 0);
        assert_eq!(p.entries_snapshot()[0].since_ms, 0);
        // Through the state file's encoding.
        let snap = Snapshot {
            entries: p.entries_snapshot(),
            manual_releases: vec![ManualRelease {
                mac: bot,
                until_ms: 9,
            }],
        };
        let back: Snapshot = serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
        assert_eq!(back, snap);
        assert_eq!(
            p.apply(1, bot, Action::Monitor, None, "clean"),
            vec![Op::Unblock { mac: bot }]
        );
    }
}
