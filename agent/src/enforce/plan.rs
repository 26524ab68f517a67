//! The enforcement planner: a pure state machine from directives to [`Op`]s.
//!
//! The engine decides *what* a device deserves (monitor, rate-limit, block, release); the
//! planner decides what that means on this router right now:
//! - the policy's [`Mode`] caps the response (monitor mode never touches traffic; rate-limit
//!   mode turns blocks into rate limits);
//! - allowlisted devices (`policy.allow_macs`) are never throttled or blocked;
//! - a block supersedes a rate limit and is not shortened by a later, milder directive: it
//!   lasts until its time to live runs out or the engine (or a person) releases it;
//! - a device released by hand is left alone for a grace period, so the running agent does
//!   not re-block it on the next packet while the subscriber cleans it up;
//! - when a block or rate limit expires the device is free again; if it resumes, the engine's
//!   next directive blocks it again.
//!
//! Time is passed in as Unix milliseconds; [`Planner::poll_timeout`] says when the next entry
//! expires.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smtpguard_protocol::{Action, MacAddr, Mode, Policy};

use super::Op;

/// Planner settings that are local to the router (not part of the fleet policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannerConfig {
    /// How long a device released by hand is left alone.
    pub release_grace_secs: u64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            release_grace_secs: 3600,
        }
    }
}

/// A rate limit or block in force on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The device.
    pub mac: MacAddr,
    /// [`Action::RateLimit`] or [`Action::Block`].
    pub action: Action,
    /// When it started (Unix ms).
    pub since_ms: u64,
    /// When it ends by itself (Unix ms). For an open-ended entry, when the kernel element's
    /// current timeout runs out; the planner renews it before then.
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
    /// Until when (Unix ms) the planner ignores directives for it.
    pub until_ms: u64,
}

/// What the planner persists: enough to rebuild the kernel's sets after a restart.
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
    config: PlannerConfig,
    mode: Mode,
    allow_macs: Vec<MacAddr>,
    block_ttl_ms: u64,
    entries: BTreeMap<MacAddr, Entry>,
    grace: BTreeMap<MacAddr, u64>,
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

fn lift(entry: &Entry) -> Op {
    match entry.action {
        Action::Block => Op::Unblock { mac: entry.mac },
        _ => Op::Unlimit { mac: entry.mac },
    }
}

impl Planner {
    /// An empty planner under `policy`.
    pub fn new(config: PlannerConfig, policy: &Policy) -> Self {
        Planner {
            config,
            mode: policy.mode,
            allow_macs: policy.allow_macs.clone(),
            block_ttl_ms: u64::from(policy.block_ttl_secs) * 1000,
            entries: BTreeMap::new(),
            grace: BTreeMap::new(),
        }
    }

    /// The engine wants `action` on `mac` until `until_ms` (the policy's block time to live
    /// from now when `None`). Returns the ops to apply; empty when nothing changes.
    pub fn enforce(
        &mut self,
        now_ms: u64,
        mac: MacAddr,
        action: Action,
        until_ms: Option<u64>,
        reason: &str,
    ) -> Vec<Op> {
        let action = match (self.mode, action) {
            (Mode::Monitor, _) | (_, Action::Monitor) => Action::Monitor,
            (Mode::RateLimit, _) => Action::RateLimit,
            (Mode::Enforce, a) => a,
        };
        let current = self.entries.get(&mac).filter(|e| e.until_ms > now_ms);
        if action == Action::Monitor {
            // Back to monitoring lifts a rate limit, never a block: a bot that went quiet
            // because it is blocked must not be let out by its own silence.
            return match current {
                Some(e) if e.action == Action::RateLimit => {
                    let op = lift(e);
                    self.entries.remove(&mac);
                    tracing::info!(%mac, "rate limit lifted: device back to monitoring");
                    vec![op]
                }
                _ => Vec::new(),
            };
        }
        if self.allow_macs.contains(&mac) {
            tracing::info!(%mac, %action, "allowlisted device: not enforcing");
            return Vec::new();
        }
        if self.grace.get(&mac).is_some_and(|&t| t > now_ms) {
            tracing::info!(%mac, %action, "released by hand recently: not enforcing");
            return Vec::new();
        }
        // Blocks always end (the policy's time to live); the engine's rate limits may not.
        let open_ended = until_ms.is_none() && action == Action::RateLimit;
        let until_ms = until_ms
            .unwrap_or(now_ms.saturating_add(self.block_ttl_ms))
            .max(now_ms + 1);
        if let Some(e) = current {
            let milder = e.action == Action::Block && action == Action::RateLimit;
            let same_and_not_longer = e.action == action
                && ((e.open_ended && open_ended)
                    || (!open_ended && !e.open_ended && e.until_ms >= until_ms));
            if milder || same_and_not_longer {
                return Vec::new();
            }
        }
        let since_ms = current
            .filter(|e| e.action == action)
            .map_or(now_ms, |e| e.since_ms);
        let entry = Entry {
            mac,
            action,
            since_ms,
            until_ms,
            open_ended,
            reason: reason.to_string(),
        };
        tracing::info!(%mac, %action, ttl_secs = ttl_secs(now_ms, until_ms), reason, "enforcing");
        let op = op_for(&entry, now_ms);
        self.entries.insert(mac, entry);
        vec![op]
    }

    /// The engine (or an expired verdict) releases `mac`: lift whatever is in force.
    pub fn release(&mut self, _now_ms: u64, mac: MacAddr) -> Vec<Op> {
        match self.entries.remove(&mac) {
            Some(e) => {
                tracing::info!(%mac, action = %e.action, "released");
                vec![lift(&e)]
            }
            None => Vec::new(),
        }
    }

    /// A person released `mac` (`smtpguard-agent release`): lift everything and leave the
    /// device alone for the grace period.
    pub fn release_manually(&mut self, now_ms: u64, mac: MacAddr) -> Vec<Op> {
        self.release_for(now_ms, mac, self.config.release_grace_secs)
    }

    /// A release with its own grace period (the controller's release command names one):
    /// the one path of every release by a person, by hand on the router or from the NOC.
    pub fn release_for(&mut self, now_ms: u64, mac: MacAddr, grace_secs: u64) -> Vec<Op> {
        self.entries.remove(&mac);
        let until = now_ms.saturating_add(grace_secs.saturating_mul(1000));
        self.grace.insert(mac, until);
        tracing::info!(%mac, grace_secs, "released by hand");
        vec![Op::Unblock { mac }, Op::Unlimit { mac }]
    }

    /// Ends the grace period of a release of `mac` (a person blocks it on purpose).
    pub fn end_grace(&mut self, mac: &MacAddr) {
        self.grace.remove(mac);
    }

    /// Whether `mac` is on the policy's device allowlist (never enforced).
    pub fn is_allowlisted(&self, mac: &MacAddr) -> bool {
        self.allow_macs.contains(mac)
    }

    /// The manual releases in their grace period at `now_ms`: device and end (Unix ms).
    pub fn manual_releases(&self, now_ms: u64) -> impl Iterator<Item = (MacAddr, u64)> + '_ {
        self.grace
            .iter()
            .filter(move |(_, &until)| until > now_ms)
            .map(|(&mac, &until)| (mac, until))
    }

    /// When the grace period of a manual release of `mac` ends, if one is running at
    /// `now_ms`.
    pub fn grace_until(&self, mac: &MacAddr, now_ms: u64) -> Option<u64> {
        self.grace.get(mac).copied().filter(|&t| t > now_ms)
    }

    /// Expires entries and grace periods due at `now_ms`, and renews the kernel timeouts of
    /// open-ended entries.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Vec<Op> {
        self.grace.retain(|_, until| *until > now_ms);
        let mut ops = Vec::new();
        let horizon = self.block_ttl_ms;
        for e in self.entries.values_mut() {
            if e.open_ended && e.until_ms <= now_ms + renew_margin_ms(horizon) {
                e.until_ms = now_ms + horizon;
                ops.push(op_for(e, now_ms));
            }
        }
        let due: Vec<MacAddr> = self
            .entries
            .values()
            .filter(|e| e.until_ms <= now_ms)
            .map(|e| e.mac)
            .collect();
        for mac in due {
            if let Some(e) = self.entries.remove(&mac) {
                tracing::info!(%mac, action = %e.action, "expired: device free again");
                // The kernel drops the element by itself at the same moment; lifting it
                // here as well keeps both views exact.
                ops.push(lift(&e));
            }
        }
        ops
    }

    /// When [`Planner::handle_timeout`] next has work (Unix ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        let margin = renew_margin_ms(self.block_ttl_ms);
        self.entries
            .values()
            .map(|e| {
                if e.open_ended {
                    e.until_ms.saturating_sub(margin)
                } else {
                    e.until_ms
                }
            })
            .chain(self.grace.values().copied())
            .min()
    }

    /// Applies a new policy: devices now allowlisted are released, monitor mode lifts
    /// everything, rate-limit mode turns blocks into rate limits of the same length.
    pub fn set_policy(&mut self, now_ms: u64, policy: &Policy) -> Vec<Op> {
        self.mode = policy.mode;
        self.allow_macs = policy.allow_macs.clone();
        self.block_ttl_ms = u64::from(policy.block_ttl_secs) * 1000;
        let mut ops = Vec::new();
        let macs: Vec<MacAddr> = self.entries.keys().copied().collect();
        for mac in macs {
            let Some(e) = self.entries.get_mut(&mac) else {
                continue;
            };
            if self.mode == Mode::Monitor || self.allow_macs.contains(&mac) {
                ops.push(lift(e));
                self.entries.remove(&mac);
            } else if self.mode == Mode::RateLimit && e.action == Action::Block {
                ops.push(lift(e));
                e.action = Action::RateLimit;
                ops.push(op_for(e, now_ms));
            }
        }
        ops
    }

    /// What is in force, for the state file.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            entries: self.entries.values().cloned().collect(),
            manual_releases: self
                .grace
                .iter()
                .map(|(&mac, &until_ms)| ManualRelease { mac, until_ms })
                .collect(),
        }
    }

    /// Takes back a snapshot from the state file after a restart. Entries that expired
    /// meanwhile are dropped; the rest are re-checked against the current policy and come
    /// back with their remaining time to live. Returns the ops that put the kernel's sets in
    /// step (replacing any elements still there).
    pub fn restore(&mut self, now_ms: u64, snapshot: &Snapshot) -> Vec<Op> {
        for r in &snapshot.manual_releases {
            if r.until_ms > now_ms {
                self.grace.insert(r.mac, r.until_ms);
            }
        }
        let mut ops = Vec::new();
        for e in &snapshot.entries {
            if e.until_ms <= now_ms && !e.open_ended {
                ops.push(lift(e));
                continue;
            }
            let before = self.entries.len();
            let until = (!e.open_ended).then_some(e.until_ms);
            let applied = self.enforce(now_ms, e.mac, e.action, until, &e.reason);
            if self.entries.len() > before {
                if let Some(entry) = self.entries.get_mut(&e.mac) {
                    entry.since_ms = e.since_ms;
                }
            }
            if applied.is_empty() {
                // Refused under today's policy (allowlisted, monitor mode, manual release):
                // make sure the kernel does not keep it either.
                ops.push(lift(e));
            }
            ops.extend(applied);
        }
        ops
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
    const SERVER: &str = "02:5b:00:00:00:5e";

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn policy(mode: Mode) -> Policy {
        Policy {
            mode,
            block_ttl_secs: 30,
            allow_macs: vec![mac(SERVER)],
            ..Policy::default()
        }
    }

    fn planner(mode: Mode) -> Planner {
        Planner::new(
            PlannerConfig {
                release_grace_secs: 600,
            },
            &policy(mode),
        )
    }

    #[test]
    fn graduates_from_rate_limit_to_block_and_expires() {
        let mut p = planner(Mode::Enforce);
        let bot = mac(BOT);
        let t0 = 1_000_000;
        let ops = p.enforce(t0, bot, Action::RateLimit, Some(t0 + 60_000), "fan-out");
        assert_eq!(
            ops,
            vec![Op::Limit {
                mac: bot,
                ttl_secs: 60
            }]
        );
        // Block without its own end: the policy's time to live (30 s).
        let ops = p.enforce(t0 + 5_000, bot, Action::Block, None, "infected");
        assert_eq!(
            ops,
            vec![Op::Block {
                mac: bot,
                ttl_secs: 30
            }]
        );
        assert_eq!(p.entry(&bot, t0 + 5_000).unwrap().action, Action::Block);
        // A milder directive while blocked changes nothing.
        assert!(p
            .enforce(t0 + 6_000, bot, Action::RateLimit, None, "x")
            .is_empty());
        assert!(p
            .enforce(t0 + 6_000, bot, Action::Monitor, None, "x")
            .is_empty());
        // Repeating the block with an earlier end changes nothing either.
        assert!(p
            .enforce(t0 + 6_000, bot, Action::Block, Some(t0 + 20_000), "x")
            .is_empty());
        assert_eq!(p.poll_timeout(), Some(t0 + 35_000));
        assert!(p.handle_timeout(t0 + 34_999).is_empty());
        assert_eq!(
            p.handle_timeout(t0 + 35_000),
            vec![Op::Unblock { mac: bot }]
        );
        assert_eq!(p.entry(&bot, t0 + 35_000), None);
        assert_eq!(p.poll_timeout(), None);
        // It resumes: blocked again.
        let ops = p.enforce(t0 + 40_000, bot, Action::Block, None, "again");
        assert_eq!(
            ops,
            vec![Op::Block {
                mac: bot,
                ttl_secs: 30
            }]
        );
    }

    #[test]
    fn open_ended_rate_limits_are_renewed_until_released() {
        let mut p = planner(Mode::Enforce);
        let bot = mac(BOT);
        // The engine's rate limits have no end: the kernel gets the block TTL (30 s) ...
        assert_eq!(
            p.enforce(0, bot, Action::RateLimit, None, "suspicious"),
            vec![Op::Limit {
                mac: bot,
                ttl_secs: 30
            }]
        );
        assert!(p.entry(&bot, 0).unwrap().open_ended);
        // ... renewed shortly before it runs out (7.5 s margin: a quarter of 30 s) ...
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
        // ... and repeating the directive changes nothing.
        assert!(p
            .enforce(23_000, bot, Action::RateLimit, None, "suspicious")
            .is_empty());
        // Renewed through a restart as well.
        let mut after = planner(Mode::Enforce);
        let ops = after.restore(100_000, &p.snapshot());
        assert_eq!(
            ops,
            vec![Op::Limit {
                mac: bot,
                ttl_secs: 30
            }]
        );
        assert!(after.entry(&bot, 100_000).unwrap().open_ended);
        // Until the engine releases it.
        assert_eq!(p.release(30_000, bot), vec![Op::Unlimit { mac: bot }]);
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn a_longer_block_extends_and_keeps_its_start() {
        let mut p = planner(Mode::Enforce);
        let bot = mac(BOT);
        p.enforce(1_000, bot, Action::Block, Some(11_000), "a");
        let ops = p.enforce(5_000, bot, Action::Block, Some(65_500), "b");
        assert_eq!(
            ops,
            vec![Op::Block {
                mac: bot,
                ttl_secs: 61
            }]
        );
        let e = p.entry(&bot, 5_000).unwrap();
        assert_eq!(
            (e.since_ms, e.until_ms, e.reason.as_str()),
            (1_000, 65_500, "b")
        );
    }

    #[test]
    fn monitor_lifts_a_rate_limit() {
        let mut p = planner(Mode::Enforce);
        let bot = mac(BOT);
        p.enforce(0, bot, Action::RateLimit, None, "x");
        assert_eq!(
            p.enforce(1, bot, Action::Monitor, None, "clean"),
            vec![Op::Unlimit { mac: bot }]
        );
        assert_eq!(p.entries().count(), 0);
    }

    #[test]
    fn mode_caps_the_response() {
        let bot = mac(BOT);
        let mut p = planner(Mode::Monitor);
        assert!(p.enforce(0, bot, Action::Block, None, "x").is_empty());
        assert!(p.enforce(0, bot, Action::RateLimit, None, "x").is_empty());
        let mut p = planner(Mode::RateLimit);
        assert_eq!(
            p.enforce(0, bot, Action::Block, None, "x"),
            vec![Op::Limit {
                mac: bot,
                ttl_secs: 30
            }]
        );
    }

    #[test]
    fn allowlisted_devices_are_never_enforced() {
        let mut p = planner(Mode::Enforce);
        let server = mac(SERVER);
        assert!(p.enforce(0, server, Action::Block, None, "x").is_empty());
        assert!(p
            .enforce(0, server, Action::RateLimit, None, "x")
            .is_empty());
        assert_eq!(p.entries().count(), 0);
    }

    #[test]
    fn policy_changes_release_allowlisted_devices_and_downgrade_blocks() {
        let mut p = planner(Mode::Enforce);
        let bot = mac(BOT);
        let other = mac("02:5b:00:00:00:0c");
        p.enforce(0, bot, Action::Block, Some(100_000), "x");
        p.enforce(0, other, Action::Block, Some(100_000), "x");
        let mut pol = policy(Mode::Enforce);
        pol.allow_macs.push(bot);
        assert_eq!(p.set_policy(10_000, &pol), vec![Op::Unblock { mac: bot }]);
        pol.mode = Mode::RateLimit;
        assert_eq!(
            p.set_policy(10_000, &pol),
            vec![
                Op::Unblock { mac: other },
                Op::Limit {
                    mac: other,
                    ttl_secs: 90
                }
            ]
        );
        pol.mode = Mode::Monitor;
        assert_eq!(p.set_policy(10_000, &pol), vec![Op::Unlimit { mac: other }]);
        assert_eq!(p.entries().count(), 0);
    }

    #[test]
    fn manual_release_holds_off_reblocking_for_the_grace_period() {
        let mut p = planner(Mode::Enforce);
        let bot = mac(BOT);
        p.enforce(0, bot, Action::Block, None, "x");
        assert_eq!(
            p.release_manually(1_000, bot),
            vec![Op::Unblock { mac: bot }, Op::Unlimit { mac: bot }]
        );
        assert!(p.enforce(2_000, bot, Action::Block, None, "x").is_empty());
        assert_eq!(p.poll_timeout(), Some(601_000));
        assert!(p.handle_timeout(601_000).is_empty());
        assert_eq!(
            p.enforce(601_000, bot, Action::Block, None, "x"),
            vec![Op::Block {
                mac: bot,
                ttl_secs: 30
            }]
        );
    }

    #[test]
    fn engine_release_lifts_whatever_is_in_force() {
        let mut p = planner(Mode::Enforce);
        let bot = mac(BOT);
        assert!(p.release(0, bot).is_empty());
        p.enforce(0, bot, Action::RateLimit, None, "x");
        assert_eq!(p.release(1, bot), vec![Op::Unlimit { mac: bot }]);
        // Not a manual release: a new directive acts at once.
        assert_eq!(p.enforce(2, bot, Action::Block, None, "x").len(), 1);
    }

    #[test]
    fn restore_brings_back_remaining_ttl_and_drops_the_expired() {
        let bot = mac(BOT);
        let gone = mac("02:5b:00:00:00:0c");
        let released = mac("02:5b:00:00:00:0d");
        let mut before = planner(Mode::Enforce);
        before.enforce(0, bot, Action::Block, Some(30_000), "fan-out");
        before.enforce(0, gone, Action::RateLimit, Some(5_000), "x");
        before.enforce(0, released, Action::Block, None, "x");
        before.release_manually(1_000, released);
        let snap = before.snapshot();
        // Through the state file's encoding.
        let snap: Snapshot = serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();

        let mut after = planner(Mode::Enforce);
        let ops = after.restore(12_500, &snap);
        assert_eq!(
            ops,
            vec![
                Op::Block {
                    mac: bot,
                    ttl_secs: 18
                },
                Op::Unlimit { mac: gone },
            ]
        );
        let e = after.entry(&bot, 12_500).unwrap();
        assert_eq!((e.since_ms, e.reason.as_str()), (0, "fan-out"));
        // The manual release's grace period survived too.
        assert!(after
            .enforce(13_000, released, Action::Block, None, "x")
            .is_empty());
        assert_eq!(
            after.sync_ops(12_500),
            vec![Op::Block {
                mac: bot,
                ttl_secs: 18
            }]
        );
    }

    #[test]
    fn restore_under_a_stricter_policy_lifts_what_it_refuses() {
        let bot = mac(BOT);
        let mut before = planner(Mode::Enforce);
        before.enforce(0, bot, Action::Block, Some(30_000), "x");
        let snap = before.snapshot();
        let mut pol = policy(Mode::Enforce);
        pol.allow_macs.push(bot);
        let mut after = Planner::new(PlannerConfig::default(), &pol);
        assert_eq!(after.restore(1_000, &snap), vec![Op::Unblock { mac: bot }]);
        assert_eq!(after.entries().count(), 0);
    }
}
