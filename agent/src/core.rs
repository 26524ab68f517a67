//! The agent core: one sans-IO state machine that every driver runs the same way.
//!
//! [`Agent`] owns the detection [`Engine`], the enforcement [`Planner`], the policy in force
//! and its precedence, one timer table and the telemetry window. It reads no socket, file or
//! clock: time comes in with every input, and what the router must do comes out of
//! [`Agent::poll_output`] as [`Output`]s. The live loop (`run`), `replay`, the demo's simulated
//! households and the tests all drive it through the same calls, so what a replay shows is
//! what a router does.
//!
//! # Call order
//! 1. [`Agent::new`] with the router's settings, its local policy and the start time; then,
//!    on a router, [`Agent::restore`] with the saved enforcement state.
//! 2. For every captured frame, [`Agent::handle_frame`]`(t, frame)`. It first fires every
//!    timer due up to `t` at its own deadline (engine sweeps and block expiry, planner expiry
//!    and renewals, the telemetry window), then hands the frame to the engine. Without
//!    frames, [`Agent::handle_timeout`]`(now)` fires the due timers the same way; the driver
//!    calls it when [`Agent::poll_timeout`] has passed.
//! 3. Policy ([`Agent::set_local_policy`], [`Agent::apply_controller_policy`]), manual
//!    releases ([`Agent::release_by_hand`]), the controller's verified commands
//!    ([`Agent::apply_command`]) and host names ([`Agent::set_hostname`]) come in whenever
//!    the driver learns of them.
//! 4. After each input the driver drains [`Agent::poll_output`] until `None` and carries the
//!    outputs out in order.
//!
//! # Who decides what
//! The engine alone decides what a device deserves under the policy in force (mode,
//! allowlisted devices, block time to live, manual-release grace periods, when a block
//! ends), also for enforcement it did not start itself: blocks the controller commands
//! and blocks restored after a restart go through [`Engine::impose`]. The planner only
//! turns those decisions into kernel operations (and renews the kernel timeouts of
//! open-ended rate limits). The core decides which policy is in force: the per-CPE
//! override, else the fleet policy, else the local file, always with the router's own ISP
//! relays allowlisted.

use std::collections::VecDeque;
use std::net::IpAddr;

use smtpguard_protocol::messages::{MAX_CONN_RECORDS, MAX_DEVICES_PER_TELEMETRY};
use smtpguard_protocol::policy::RelayRule;
use smtpguard_protocol::{
    AckOutcome, Action, AgentStats, Alert, Command, CommandAck, CommandAction, MacAddr, Policy,
    PolicyAck, PolicyScope, Telemetry,
};

use crate::enforce::plan::{ManualRelease, Snapshot};
use crate::enforce::{Op, Planner, TableSpec};
use crate::engine::{Engine, EngineAction, EngineConfig};
use crate::nat::{NatLog, NatQuery};
use crate::ports::MailPorts;
use crate::uplink::PolicyUpdate;

/// Timers fired by one call at most (a bound against a timer that would not move on).
const TIMERS_PER_CALL_MAX: usize = 1_000_000;

/// What the router must do, in the order the core asks for it.
#[derive(Debug, Clone, PartialEq)]
// Alerts and telemetry are rare next to frames; boxing them would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Output {
    /// Install the table with these settings (idempotent; set elements are kept).
    Table(TableSpec),
    /// Apply these operations as one batch.
    Apply(Vec<Op>),
    /// Enforcement changed: save this state (blocks to restore after a restart).
    Save(Snapshot),
    /// A device's verdict changed: tell the controller (must not be lost).
    Alert(Alert),
    /// The telemetry window closed: send this report.
    Telemetry(Telemetry),
    /// A controller policy was put in force: acknowledge it.
    PolicyAck(PolicyAck),
    /// A controller command was applied or refused: acknowledge it.
    CommandAck(CommandAck),
}

/// The router's own settings for the core (not policy: they do not change at run time).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Engine construction parameters; its `mail_ports` is replaced by [`Settings::mail_ports`].
    pub engine: EngineConfig,
    /// How long a device released by hand on the router is left alone (seconds).
    pub release_grace_secs: u64,
    /// The one mail-port set: engine, table (and the capture filter, which the shell opens).
    pub mail_ports: MailPorts,
    /// The ISP relays of the router's config: allowlisted under every policy.
    pub isp_relays: Vec<RelayRule>,
    /// Close a telemetry window every `policy.telemetry_interval_secs` (a router with an
    /// uplink); off for replay.
    pub telemetry: bool,
    /// Hold each logged connection until the driver has looked up its NAT translation
    /// ([`Agent::nat_queries`], [`Agent::nat_answer`]); on for a live router with
    /// conntrack, off for replay and the demo.
    pub nat_lookups: bool,
}

/// The manual-release grace period when the router's config names none (an hour).
pub const DEFAULT_RELEASE_GRACE_SECS: u64 = 3600;

/// Counters at the start of the telemetry window.
#[derive(Debug, Clone, Copy, Default)]
struct WindowBase {
    packets: u64,
    kernel_drops: u64,
    malformed: u64,
    evicted: u64,
}

/// The agent core. See the module documentation.
pub struct Agent {
    engine: Engine,
    planner: Planner,
    release_grace_secs: u64,
    mail_ports: MailPorts,
    isp_relays: Vec<RelayRule>,
    local: Policy,
    fleet: Option<Policy>,
    cpe: Option<Policy>,
    spec: TableSpec,
    telemetry: bool,
    window_start_ms: u64,
    window_base: WindowBase,
    kernel_drops: u64,
    public_ip: Option<IpAddr>,
    nat: NatLog,
    outputs: VecDeque<Output>,
    timers_stuck: u64,
}

/// The table settings for `policy` with the mail-port set.
pub fn table_spec(mail_ports: &MailPorts, policy: &Policy) -> TableSpec {
    TableSpec {
        mail_ports: mail_ports.as_slice().to_vec(),
        rate_per_minute: policy.rate_limit_per_minute,
        relays: policy.allow_relays.clone(),
    }
}

impl Agent {
    /// A core under `local_policy` (validated by the caller) at `now_ms`. Its first output
    /// installs the table.
    pub fn new(settings: Settings, local_policy: Policy, now_ms: u64) -> Agent {
        let Settings {
            engine,
            release_grace_secs,
            mail_ports,
            isp_relays,
            telemetry,
            nat_lookups,
        } = settings;
        let mut local = local_policy;
        local.allow_relays_too(&isp_relays);
        let spec = table_spec(&mail_ports, &local);
        let engine = Engine::new(
            EngineConfig {
                mail_ports,
                ..engine
            },
            local.clone(),
        );
        let mut agent = Agent {
            engine,
            planner: Planner::new(&local),
            release_grace_secs: if release_grace_secs == 0 {
                DEFAULT_RELEASE_GRACE_SECS
            } else {
                release_grace_secs
            },
            mail_ports,
            isp_relays,
            local,
            fleet: None,
            cpe: None,
            spec: spec.clone(),
            telemetry,
            window_start_ms: now_ms,
            window_base: WindowBase::default(),
            kernel_drops: 0,
            public_ip: None,
            nat: NatLog::new(nat_lookups),
            outputs: VecDeque::new(),
            timers_stuck: 0,
        };
        agent.outputs.push_back(Output::Table(spec));
        agent
    }

    /// Takes back the enforcement state saved before a restart. Manual releases keep their
    /// grace period. Blocks come back with their remaining time, through the engine like a
    /// commanded block, so the policy in force re-checks them and the engine ends them;
    /// a rate limit the verdict held open comes back for one block time to live, after
    /// which the restarted engine's own evidence decides. What expired meanwhile, or what
    /// today's policy refuses, is lifted from the kernel too.
    pub fn restore(&mut self, now_ms: u64, snapshot: &Snapshot) {
        for r in &snapshot.manual_releases {
            self.engine.hold(now_ms, r.mac, r.until_ms);
        }
        let horizon = self.engine.policy().block_ttl_ms();
        let mut ops = Vec::new();
        for e in &snapshot.entries {
            let until = if e.open_ended {
                now_ms.saturating_add(horizon)
            } else {
                e.until_ms
            };
            let lift = e.lift_op();
            if until <= now_ms {
                ops.push(lift);
                continue;
            }
            match self
                .engine
                .impose(now_ms, e.mac, e.action, until, &e.reason)
            {
                Ok(action) if action == e.action => {}
                Ok(_) => ops.push(lift),
                Err(refusal) => {
                    tracing::info!(mac = %e.mac, action = %e.action, %refusal, "not restored");
                    ops.push(lift);
                }
            }
        }
        self.push_ops(now_ms, ops);
        self.take_engine_actions(now_ms);
        for e in &snapshot.entries {
            self.planner.keep_since(&e.mac, e.since_ms);
        }
        tracing::info!(
            restored = self.planner.entries().count(),
            "enforcement restored from the state file"
        );
    }

    /// One captured frame at `now_ms`: the due timers first, then the frame.
    pub fn handle_frame(&mut self, now_ms: u64, frame: &[u8]) {
        self.advance(now_ms);
        self.engine.handle_frame(now_ms, frame);
        self.take_engine_actions(now_ms);
        if self.nat.lookups() {
            self.take_connections();
        }
    }

    /// Time passed without frames: fires every timer due up to `now_ms`, each at its own
    /// deadline.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.advance(now_ms);
    }

    /// What to save for a restart: enforcement in force and manual releases in their grace
    /// period.
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        Snapshot {
            entries: self.planner.entries_snapshot(),
            manual_releases: self
                .engine
                .holds(now_ms)
                .map(|(mac, until_ms)| ManualRelease { mac, until_ms })
                .collect(),
        }
    }

    /// When the next timer is due (Unix ms): engine, planner or telemetry window.
    pub fn poll_timeout(&self) -> Option<u64> {
        [
            self.engine.poll_timeout(),
            self.planner.poll_timeout(),
            self.next_telemetry_ms(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next thing to do, oldest first.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// A new local policy file (validated by the caller). In force unless the controller's
    /// policy is.
    pub fn set_local_policy(&mut self, now_ms: u64, policy: Policy) {
        let mut policy = policy;
        policy.allow_relays_too(&self.isp_relays);
        self.local = policy;
        if self.cpe.is_none() && self.fleet.is_none() {
            self.put_in_force(now_ms);
        }
    }

    /// A verified policy from the controller: the per-CPE override wins over the fleet
    /// policy, which wins over the local file. Acknowledged as applied.
    pub fn apply_controller_policy(&mut self, now_ms: u64, update: &PolicyUpdate) {
        let mut policy = update.policy.clone();
        policy.allow_relays_too(&self.isp_relays);
        match update.scope {
            PolicyScope::Fleet => self.fleet = Some(policy),
            PolicyScope::Cpe => self.cpe = Some(policy),
        }
        self.put_in_force(now_ms);
        self.outputs.push_back(Output::PolicyAck(update.applied()));
    }

    /// A person released `mac` by hand: everything in force is lifted and the device is left
    /// alone for the grace period, after which it is enforced again if it keeps sending.
    pub fn release_by_hand(&mut self, now_ms: u64, mac: MacAddr) {
        self.release(now_ms, mac, self.release_grace_secs);
    }

    /// A command from the controller, verified by the uplink (signature, target, expiry,
    /// id): a release takes the same path as [`Agent::release_by_hand`] with the command's
    /// grace period; a block is put in force for its time to live, ending any grace period,
    /// unless the policy in force forbids it (monitor mode, an allowlisted device). Answered
    /// with an [`Output::CommandAck`] after the operations.
    pub fn apply_command(&mut self, now_ms: u64, command: &Command) {
        let outcome = match command.action {
            CommandAction::Release { mac, grace_secs } => {
                self.release(now_ms, mac, u64::from(grace_secs));
                AckOutcome::Applied
            }
            CommandAction::Block { mac, ttl_secs } => {
                self.block_by_command(now_ms, mac, ttl_secs, command.command_id)
            }
        };
        tracing::info!(id = command.command_id, action = command.action.name(), mac = %command.action.mac(), ?outcome, "controller command");
        self.outputs.push_back(Output::CommandAck(CommandAck {
            command_id: command.command_id,
            outcome,
            at_ms: now_ms,
        }));
    }

    /// Closes the telemetry window now instead of at its end (a driver that has just fed a
    /// backlog, or wants the controller to see the state at once). Nothing without telemetry.
    pub fn close_telemetry_window(&mut self, now_ms: u64) {
        if self.telemetry {
            self.advance(now_ms);
            self.close_window(now_ms);
        }
    }

    /// A device's host name (from the router's DHCP lease file).
    pub fn set_hostname(&mut self, mac: MacAddr, name: &str) {
        self.engine.set_hostname(mac, name);
    }

    /// The kernel's capture drop counter (total since the capture opened), for telemetry.
    pub fn note_kernel_drops(&mut self, total: u64) {
        self.kernel_drops = total;
    }

    /// The router's public address, for telemetry (abuse reports name it).
    pub fn set_public_ip(&mut self, ip: Option<IpAddr>) {
        self.public_ip = ip;
    }

    /// The router's public address as last set.
    pub fn public_ip(&self) -> Option<IpAddr> {
        self.public_ip
    }

    /// Up to `max` NAT lookups due at `now_ms` (appended to `out`), with
    /// [`Settings::nat_lookups`] on. See [`crate::nat`].
    pub fn nat_queries(&mut self, now_ms: u64, max: usize, out: &mut Vec<NatQuery>) {
        self.nat.due(now_ms, max, out);
    }

    /// The answer to a lookup from [`Agent::nat_queries`]: the source address and port the
    /// server sees, or `None` when conntrack has no entry (yet).
    pub fn nat_answer(&mut self, id: u64, translated: Option<std::net::SocketAddr>) {
        self.nat.answer(id, translated);
    }

    /// NAT lookup counters.
    pub fn nat_stats(&self) -> crate::nat::NatStats {
        self.nat.stats()
    }

    /// The detection engine (reports, status, evidence).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The enforcement planner (what is in force).
    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        self.engine.policy()
    }

    /// The table settings in force.
    pub fn table(&self) -> &TableSpec {
        &self.spec
    }

    /// The operations that rebuild the kernel's sets from the planner's view (after a failed
    /// batch, or after the table disappeared).
    pub fn sync_ops(&self, now_ms: u64) -> Vec<Op> {
        self.planner.sync_ops(now_ms)
    }

    /// Capture, engine and uplink counters for the status file.
    pub fn stats(&self) -> AgentStats {
        let es = self.engine.stats();
        AgentStats {
            packets: es.packets,
            kernel_drops: self.kernel_drops,
            malformed_packets: es.malformed,
            devices_evicted: es.devices_evicted,
            telemetry_dropped: 0,
        }
    }

    /// Times a timer failed to move on (a defect; never expected).
    pub fn timers_stuck(&self) -> u64 {
        self.timers_stuck
    }

    // ---- inside -------------------------------------------------------------------------

    /// The one path of every release by a person, by hand on the router or from the NOC:
    /// the engine leaves `mac` alone for `grace_secs`, and the kernel lets it go.
    fn release(&mut self, now_ms: u64, mac: MacAddr, grace_secs: u64) {
        let until = now_ms.saturating_add(grace_secs.saturating_mul(1000));
        self.engine.hold(now_ms, mac, until);
        tracing::info!(%mac, grace_secs, "released by hand");
        // Both kinds are lifted whatever is in force, so there are always ops and a save:
        // the grace period survives a restart.
        let ops = self.planner.lift_all(mac);
        self.push_ops(now_ms, ops);
    }

    fn block_by_command(
        &mut self,
        now_ms: u64,
        mac: MacAddr,
        ttl_secs: u32,
        id: u64,
    ) -> AckOutcome {
        let until = now_ms.saturating_add(u64::from(ttl_secs) * 1000);
        let reason = format!("blocked by the controller (command {id})");
        let outcome = match self
            .engine
            .impose(now_ms, mac, Action::Block, until, &reason)
        {
            Ok(_) => AckOutcome::Applied,
            Err(refusal) => AckOutcome::Refused {
                reason: refusal.to_string(),
            },
        };
        self.take_engine_actions(now_ms);
        outcome
    }

    fn next_telemetry_ms(&self) -> Option<u64> {
        self.telemetry.then(|| {
            let interval = u64::from(self.engine.policy().telemetry_interval_secs.max(1)) * 1000;
            self.window_start_ms.saturating_add(interval)
        })
    }

    /// Fires the due timers in deadline order, each at its own time.
    fn advance(&mut self, now_ms: u64) {
        for _ in 0..TIMERS_PER_CALL_MAX {
            let Some(t) = self.poll_timeout().filter(|&t| t <= now_ms) else {
                return;
            };
            let fired = self.fire(t, now_ms);
            if !fired || self.poll_timeout().is_some_and(|next| next <= t) {
                // A timer that does not move on past its deadline would spin here forever.
                self.timers_stuck += 1;
                tracing::error!(deadline_ms = t, "a timer did not move on; skipped");
                return;
            }
        }
        self.timers_stuck += 1;
    }

    /// Fires every timer due at `t` (on the way to `now_ms`); whether anything was due.
    fn fire(&mut self, t: u64, now_ms: u64) -> bool {
        let mut fired = false;
        if self.engine.poll_timeout().is_some_and(|e| e <= t) {
            self.engine.handle_timeout(t);
            self.take_engine_actions(t);
            fired = true;
        }
        if self.planner.poll_timeout().is_some_and(|p| p <= t) {
            let ops = self.planner.handle_timeout(t);
            self.push_ops(t, ops);
            fired = true;
        }
        if self.next_telemetry_ms().is_some_and(|w| w <= t) {
            self.close_window(t);
            // Time that passed without a frame (a clock set forward, a gap in a capture) is
            // reported once, not as one empty window per interval: the next window starts
            // at the last interval boundary before `now_ms`.
            let interval = u64::from(self.engine.policy().telemetry_interval_secs.max(1)) * 1000;
            let behind = now_ms.saturating_sub(self.window_start_ms);
            if behind >= interval {
                self.window_start_ms = now_ms - behind % interval;
            }
            fired = true;
        }
        fired
    }

    fn take_engine_actions(&mut self, now_ms: u64) {
        let mut ops = Vec::new();
        while let Some(action) = self.engine.poll_action() {
            match action {
                EngineAction::Alert(alert) => {
                    let d = &alert.device;
                    tracing::warn!(
                        mac = %d.mac,
                        verdict = %d.verdict,
                        previous = %alert.previous,
                        score = d.score,
                        evidence = %d.evidence.join("; "),
                        "verdict changed"
                    );
                    self.push_ops(now_ms, std::mem::take(&mut ops));
                    self.outputs.push_back(Output::Alert(alert));
                }
                EngineAction::Enforce {
                    mac,
                    action,
                    until_ms,
                    reason,
                } => ops.extend(self.planner.apply(now_ms, mac, action, until_ms, &reason)),
                EngineAction::Release { mac } => ops.extend(self.planner.lift(mac)),
            }
        }
        self.push_ops(now_ms, ops);
    }

    /// Moves the engine's new connection records into the NAT log.
    fn take_connections(&mut self) {
        while let Some((record, client)) = self.engine.pop_connection() {
            self.nat.push(record, client);
        }
    }

    fn push_ops(&mut self, now_ms: u64, ops: Vec<Op>) {
        if ops.is_empty() {
            return;
        }
        self.outputs.push_back(Output::Apply(ops));
        self.outputs.push_back(Output::Save(self.snapshot(now_ms)));
    }

    /// Puts the policy of highest precedence in force: table, planner, engine.
    fn put_in_force(&mut self, now_ms: u64) {
        let policy = self
            .cpe
            .clone()
            .or_else(|| self.fleet.clone())
            .unwrap_or_else(|| self.local.clone());
        tracing::info!(version = policy.policy_version, mode = ?policy.mode, "policy in force");
        let spec = table_spec(&self.mail_ports, &policy);
        if spec != self.spec {
            self.spec = spec.clone();
            self.outputs.push_back(Output::Table(spec));
        }
        self.planner.set_policy(&policy);
        self.engine.set_policy(policy);
        self.take_engine_actions(now_ms);
    }

    /// Closes the telemetry window at `now_ms`: devices, the connection log and the counters
    /// of the window.
    fn close_window(&mut self, now_ms: u64) {
        let es = self.engine.stats();
        let base = self.window_base;
        let mut devices = self.engine.report(now_ms).devices;
        devices.truncate(MAX_DEVICES_PER_TELEMETRY);
        self.take_connections();
        let mut connections = self.nat.take_ready(now_ms);
        // Keep the newest records when there are more than one message may carry.
        let excess = connections.len().saturating_sub(MAX_CONN_RECORDS);
        connections.drain(..excess);
        let telemetry = Telemetry {
            window_start_ms: self.window_start_ms,
            window_secs: u32::try_from(now_ms.saturating_sub(self.window_start_ms) / 1000)
                .unwrap_or(u32::MAX),
            public_ip: self.public_ip,
            stats: AgentStats {
                packets: es.packets.saturating_sub(base.packets),
                kernel_drops: self.kernel_drops.saturating_sub(base.kernel_drops),
                malformed_packets: es.malformed.saturating_sub(base.malformed),
                devices_evicted: es.devices_evicted.saturating_sub(base.evicted),
                telemetry_dropped: 0,
            },
            devices,
            connections,
        };
        self.outputs.push_back(Output::Telemetry(telemetry));
        self.window_start_ms = now_ms;
        self.window_base = WindowBase {
            packets: es.packets,
            kernel_drops: self.kernel_drops,
            malformed: es.malformed,
            evicted: es.devices_evicted,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforce::Op;
    use smtpguard_protocol::Mode;

    const T0: u64 = 1_795_435_200_000;
    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 7]);

    fn agent(mode: Mode) -> Agent {
        let policy = Policy {
            mode,
            ..Policy::default()
        };
        let mut a = Agent::new(Settings::default(), policy, T0);
        while a.poll_output().is_some() {}
        a
    }

    fn command(id: u64, action: CommandAction) -> Command {
        Command {
            target: "cpe-a".into(),
            command_id: id,
            issued_ms: T0,
            expires_ms: T0 + 60_000,
            action,
        }
    }

    fn drain(a: &mut Agent) -> (Vec<Op>, Vec<CommandAck>) {
        let (mut ops, mut acks) = (Vec::new(), Vec::new());
        while let Some(o) = a.poll_output() {
            match o {
                Output::Apply(batch) => ops.extend(batch),
                Output::CommandAck(ack) => acks.push(ack),
                _ => {}
            }
        }
        (ops, acks)
    }

    /// A block command blocks for its time to live; a release command lifts it through the
    /// same path as a release by hand, with the command's grace period, during which the
    /// engine's own directives do not block the device again.
    #[test]
    fn block_and_release_commands_change_enforcement_and_are_acknowledged() {
        let mut a = agent(Mode::Enforce);
        a.apply_command(
            T0,
            &command(
                1,
                CommandAction::Block {
                    mac: MAC,
                    ttl_secs: 600,
                },
            ),
        );
        let (ops, acks) = drain(&mut a);
        assert_eq!(
            ops,
            vec![Op::Block {
                mac: MAC,
                ttl_secs: 600
            }]
        );
        assert_eq!(acks.len(), 1);
        assert_eq!(
            (acks[0].command_id, &acks[0].outcome),
            (1, &AckOutcome::Applied)
        );
        let entry = a.planner().entry(&MAC, T0 + 1).unwrap();
        assert_eq!(entry.action, Action::Block);
        assert_eq!(entry.until_ms, T0 + 600_000);

        a.apply_command(
            T0 + 1_000,
            &command(
                2,
                CommandAction::Release {
                    mac: MAC,
                    grace_secs: 120,
                },
            ),
        );
        let (ops, acks) = drain(&mut a);
        assert_eq!(
            ops,
            vec![Op::Unblock { mac: MAC }, Op::Unlimit { mac: MAC }]
        );
        assert_eq!(acks[0].outcome, AckOutcome::Applied);
        assert!(a.planner().entry(&MAC, T0 + 1_001).is_none());
        assert_eq!(
            a.snapshot(T0 + 1_001).manual_releases,
            vec![ManualRelease {
                mac: MAC,
                until_ms: T0 + 121_000
            }]
        );
        // A block command ends the grace period on purpose.
        a.apply_command(
            T0 + 3_000,
            &command(
                3,
                CommandAction::Block {
                    mac: MAC,
                    ttl_secs: 60,
                },
            ),
        );
        let (ops, acks) = drain(&mut a);
        assert_eq!(ops.len(), 1);
        assert_eq!(acks[0].outcome, AckOutcome::Applied);
    }

    #[test]
    fn a_block_the_policy_forbids_is_refused_with_the_reason() {
        let mut a = agent(Mode::Monitor);
        let block = CommandAction::Block {
            mac: MAC,
            ttl_secs: 60,
        };
        a.apply_command(T0, &command(1, block.clone()));
        let (ops, acks) = drain(&mut a);
        assert!(ops.is_empty());
        assert!(
            matches!(&acks[0].outcome, AckOutcome::Refused { reason } if reason.contains("monitor mode"))
        );

        let mut a = Agent::new(
            Settings::default(),
            Policy {
                mode: Mode::Enforce,
                allow_macs: vec![MAC],
                ..Policy::default()
            },
            T0,
        );
        a.apply_command(T0, &command(2, block));
        let (ops, acks) = drain(&mut a);
        assert!(ops.is_empty());
        assert!(
            matches!(&acks[0].outcome, AckOutcome::Refused { reason } if reason.contains("allow_macs"))
        );
    }

    fn snapshot_with(entries: Vec<crate::enforce::Entry>) -> Snapshot {
        Snapshot {
            entries,
            manual_releases: Vec::new(),
        }
    }

    fn entry(action: Action, until_ms: u64, open_ended: bool) -> crate::enforce::Entry {
        crate::enforce::Entry {
            mac: MAC,
            action,
            since_ms: T0 - 5_000,
            until_ms,
            open_ended,
            reason: "infected (score 0.9): 40 mail servers".into(),
        }
    }

    /// A block restored after a restart belongs to the engine like any other: it ends at its
    /// time through the engine, and a policy that allowlists the device lifts it at once.
    #[test]
    fn restored_blocks_are_the_engines_to_end() {
        let mut a = agent(Mode::Enforce);
        a.restore(
            T0,
            &snapshot_with(vec![entry(Action::Block, T0 + 30_000, false)]),
        );
        let (ops, _) = drain(&mut a);
        assert_eq!(
            ops,
            vec![Op::Block {
                mac: MAC,
                ttl_secs: 30
            }]
        );
        let e = a.planner().entry(&MAC, T0).unwrap();
        assert_eq!((e.since_ms, e.until_ms), (T0 - 5_000, T0 + 30_000));
        let device = a.engine().report(T0).devices;
        assert_eq!(device[0].action, Action::Block);
        assert_eq!(device[0].action_until_ms, Some(T0 + 30_000));
        // The engine's timer ends it; the planner has no timer of its own for blocks.
        assert_eq!(a.poll_timeout().map(|t| t <= T0 + 30_000), Some(true));
        a.handle_timeout(T0 + 29_999);
        assert!(drain(&mut a).0.is_empty());
        a.handle_timeout(T0 + 30_000);
        assert_eq!(drain(&mut a).0, vec![Op::Unblock { mac: MAC }]);

        // Restored again, then allowlisted by a new policy: lifted at once.
        let mut a = agent(Mode::Enforce);
        a.restore(
            T0,
            &snapshot_with(vec![entry(Action::Block, T0 + 30_000, false)]),
        );
        drain(&mut a);
        a.set_local_policy(
            T0 + 1_000,
            Policy {
                mode: Mode::Enforce,
                allow_macs: vec![MAC],
                ..Policy::default()
            },
        );
        assert_eq!(drain(&mut a).0, vec![Op::Unblock { mac: MAC }]);
        assert_eq!(a.planner().entries().count(), 0);
    }

    /// What the state file holds but today's policy refuses, or what ran out while the
    /// agent was down, is lifted from the kernel; an open-ended rate limit comes back for
    /// one block time to live.
    #[test]
    fn restore_lifts_what_expired_or_is_refused_and_bounds_open_ended_limits() {
        let mut a = agent(Mode::Monitor);
        a.restore(
            T0,
            &snapshot_with(vec![entry(Action::Block, T0 + 30_000, false)]),
        );
        assert_eq!(drain(&mut a).0, vec![Op::Unblock { mac: MAC }]);

        let mut a = agent(Mode::Enforce);
        a.restore(
            T0,
            &snapshot_with(vec![entry(Action::Block, T0 - 1, false)]),
        );
        assert_eq!(drain(&mut a).0, vec![Op::Unblock { mac: MAC }]);

        let mut a = agent(Mode::Enforce);
        a.restore(
            T0,
            &snapshot_with(vec![entry(Action::RateLimit, T0 + 1_000, true)]),
        );
        let ttl = u64::from(Policy::default().block_ttl_secs);
        assert_eq!(
            drain(&mut a).0,
            vec![Op::Limit {
                mac: MAC,
                ttl_secs: ttl
            }]
        );
        a.handle_timeout(T0 + ttl * 1000);
        assert_eq!(drain(&mut a).0, vec![Op::Unlimit { mac: MAC }]);
    }

    /// Mode changes are decided by the engine: rate-limit mode turns a block into a rate
    /// limit with the same end, monitor mode lifts everything.
    #[test]
    fn mode_changes_downgrade_and_lift_through_the_engine() {
        let mut a = agent(Mode::Enforce);
        a.apply_command(
            T0,
            &command(
                1,
                CommandAction::Block {
                    mac: MAC,
                    ttl_secs: 600,
                },
            ),
        );
        drain(&mut a);
        a.set_local_policy(
            T0 + 1_000,
            Policy {
                mode: Mode::RateLimit,
                ..Policy::default()
            },
        );
        assert_eq!(
            drain(&mut a).0,
            vec![
                Op::Unblock { mac: MAC },
                Op::Limit {
                    mac: MAC,
                    ttl_secs: 599
                }
            ]
        );
        a.set_local_policy(
            T0 + 2_000,
            Policy {
                mode: Mode::Monitor,
                ..Policy::default()
            },
        );
        assert_eq!(drain(&mut a).0, vec![Op::Unlimit { mac: MAC }]);
        assert_eq!(
            a.engine().report(T0 + 2_000).devices[0].action,
            Action::Monitor
        );
    }

    /// A clock set forward by decades (NTP at a router's boot) is one telemetry report and
    /// a few timers, not one report per interval of the gap.
    #[test]
    fn a_clock_jump_is_reported_once_not_per_interval() {
        let settings = Settings {
            telemetry: true,
            ..Settings::default()
        };
        let mut a = Agent::new(settings, Policy::default(), T0);
        while a.poll_output().is_some() {}
        let interval = u64::from(Policy::default().telemetry_interval_secs) * 1000;
        let later = T0 + 40 * 365 * 86_400_000 + interval / 2;
        a.handle_timeout(later);
        let mut reports = Vec::new();
        while let Some(o) = a.poll_output() {
            if let Output::Telemetry(t) = o {
                reports.push(t.window_start_ms);
            }
        }
        assert_eq!(reports, vec![T0], "one report for the gap");
        assert_eq!(a.timers_stuck(), 0);
        // And the next window runs on from the last interval boundary.
        assert!(a
            .poll_timeout()
            .is_some_and(|t| t > later && t <= later + interval));
    }
}
