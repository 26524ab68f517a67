//! Enforcement: turning the engine's verdicts into device-scoped action on the router.
//!
//! # Layout
//! - [`plan`]: [`Planner`], a pure executor. It takes the engine's decisions ("rate-limit
//!   this MAC until t", "block it until t", "release it") and answers with [`Op`]s for a
//!   backend. It decides nothing itself (mode, allowlist, time to live and manual releases
//!   are the engine's); its one timer renews the kernel timeouts of open-ended limits.
//! - [`nft`]: [`NftEnforcer`], the nftables backend. It owns exactly one table,
//!   `inet smtpguard`, installs it idempotently and applies every change as one atomic
//!   `nft -f -` batch. The batch text is built by pure functions, tested byte for byte.
//! - [`state`]: the block state file in `state_dir`, written atomically (temp + rename) so
//!   blocks survive an agent restart; also the manual-release requests that
//!   `smtpguard-agent release` drops for the running agent.
//! - [`control`]: the `status` and `release` subcommands and the status file the run loop
//!   rewrites every few seconds.
//!
//! # Data flow
//! engine action → [`Planner::apply`] / [`Planner::lift`] → `Vec<Op>` →
//! [`Enforcer::apply`] (one nft batch) → the core's snapshot → [`state::save`].
//! At start: [`state::load`] → the core's restore (through the engine) →
//! [`Enforcer::install`] + [`Enforcer::apply`]. The engine ends blocks; the kernel's element
//! timeouts end them too if the agent is dead.
//!
//! Only mail ports are ever affected, and only for MACs the planner put in a set.

pub mod control;
pub mod nft;
pub mod plan;
pub mod state;

use std::fmt;

use smtpguard_protocol::policy::RelayRule;
use smtpguard_protocol::MacAddr;

pub use nft::NftEnforcer;
pub use plan::{Entry, Planner};

/// The name of the nftables table the agent owns (family `inet`). Nothing else is touched.
pub const TABLE: &str = "smtpguard";

/// One change to the kernel's view of a device.
///
/// Each op is idempotent: setting an element replaces any element already there (so a
/// timeout can be extended or shortened), removing an element that is absent is no error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Throttle new mail connections from `mac` for `ttl_secs`.
    Limit {
        /// The device.
        mac: MacAddr,
        /// Seconds until the kernel drops the element by itself.
        ttl_secs: u64,
    },
    /// Stop throttling `mac`.
    Unlimit {
        /// The device.
        mac: MacAddr,
    },
    /// Drop new mail connections from `mac` for `ttl_secs` (and stop throttling it: the
    /// block supersedes the limit).
    Block {
        /// The device.
        mac: MacAddr,
        /// Seconds until the kernel releases the block by itself.
        ttl_secs: u64,
    },
    /// Lift the block on `mac`.
    Unblock {
        /// The device.
        mac: MacAddr,
    },
}

impl Op {
    /// The device this op is about.
    pub fn mac(&self) -> MacAddr {
        match self {
            Op::Limit { mac, .. }
            | Op::Unlimit { mac }
            | Op::Block { mac, .. }
            | Op::Unblock { mac } => *mac,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Limit { mac, ttl_secs } => write!(f, "rate-limit {mac} for {ttl_secs} s"),
            Op::Unlimit { mac } => write!(f, "lift rate limit on {mac}"),
            Op::Block { mac, ttl_secs } => write!(f, "block {mac} for {ttl_secs} s"),
            Op::Unblock { mac } => write!(f, "lift block on {mac}"),
        }
    }
}

/// The table-wide settings: everything in the table except the per-device set elements.
/// Reinstalled (atomically, keeping the elements) whenever policy changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// Destination TCP ports the table acts on.
    pub mail_ports: Vec<u16>,
    /// New mail connections per minute allowed to a rate-limited device.
    pub rate_per_minute: u32,
    /// Destinations that are never throttled or blocked.
    pub relays: Vec<RelayRule>,
}

/// Which of the agent's sets a live element sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetKind {
    /// The `blocked` set: mail ports dropped.
    Blocked,
    /// The `limited` set: new mail connections rate-limited.
    Limited,
}

impl SetKind {
    /// The set's name in the table.
    pub fn set_name(&self) -> &'static str {
        match self {
            SetKind::Blocked => "blocked",
            SetKind::Limited => "limited",
        }
    }
}

/// An element as the kernel holds it right now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveElement {
    /// Which set.
    pub set: SetKind,
    /// The device.
    pub mac: MacAddr,
    /// Seconds left before the kernel drops the element, if it has a timeout.
    pub expires_secs: Option<u64>,
}

/// Enforcement failed.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    /// The `nft` program could not be started or waited for.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program as configured.
        program: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// `nft` refused the batch; nothing in it was applied.
    #[error("nft rejected the batch (exit {status}): {stderr}")]
    Rejected {
        /// Exit status, or -1 when killed by a signal.
        status: i32,
        /// What nft printed on stderr (trimmed).
        stderr: String,
    },
    /// `nft` printed something we could not read.
    #[error("cannot read nft output: {0}")]
    Output(String),
    /// Reading or writing a file in the state directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A state or status file holds something that is not what the agent writes.
    #[error("{path}: {problem}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// Counters an enforcer keeps about itself, shown by `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnforcerStats {
    /// Batches applied.
    pub batches_applied: u64,
    /// Batches refused (each changed nothing).
    pub batches_failed: u64,
    /// Times the table was found gone (a firewall restart flushes every table) and put back.
    #[serde(default)]
    pub table_reinstalls: u64,
}

/// A backend that carries out [`Op`]s on the router.
pub trait Enforcer {
    /// Creates or updates the table to match `spec`, keeping the per-device elements.
    /// Idempotent: calling it twice leaves one copy of every rule.
    ///
    /// # Errors
    /// The backend's failure; on error nothing was changed.
    fn install(&mut self, spec: &TableSpec) -> Result<(), EnforceError>;

    /// Applies `ops` all at once, or none of them.
    ///
    /// # Errors
    /// The backend's failure; on error nothing was changed.
    fn apply(&mut self, ops: &[Op]) -> Result<(), EnforceError>;

    /// What the kernel enforces right now.
    ///
    /// # Errors
    /// The backend's failure to read its state.
    fn list(&mut self) -> Result<Vec<LiveElement>, EnforceError>;

    /// Whether the table is still in the kernel. A firewall restart (`fw4 flush`, `nft flush
    /// ruleset`) deletes every table, the agent's too; the run loop checks this every few
    /// seconds and reinstalls the table with the blocks in force.
    ///
    /// # Errors
    /// The backend's failure to read the kernel's tables.
    fn table_present(&mut self) -> Result<bool, EnforceError>;

    /// Counts a reinstall after the table was found gone.
    fn note_reinstall(&mut self);

    /// Counters about this backend.
    fn stats(&self) -> EnforcerStats;
}

/// The backend for monitor-only setups: logs what it would do and touches nothing.
#[derive(Debug, Default)]
pub struct LoggingEnforcer {
    stats: EnforcerStats,
}

impl Enforcer for LoggingEnforcer {
    fn install(&mut self, spec: &TableSpec) -> Result<(), EnforceError> {
        tracing::info!(
            ports = ?spec.mail_ports,
            rate_per_minute = spec.rate_per_minute,
            relays = spec.relays.len(),
            "enforcement backend is `none`: actions are logged, never applied"
        );
        Ok(())
    }

    fn apply(&mut self, ops: &[Op]) -> Result<(), EnforceError> {
        for op in ops {
            tracing::info!(%op, "would enforce (backend `none`)");
        }
        self.stats.batches_applied += 1;
        Ok(())
    }

    fn list(&mut self) -> Result<Vec<LiveElement>, EnforceError> {
        Ok(Vec::new())
    }

    fn table_present(&mut self) -> Result<bool, EnforceError> {
        Ok(true)
    }

    fn note_reinstall(&mut self) {
        self.stats.table_reinstalls += 1;
    }

    fn stats(&self) -> EnforcerStats {
        self.stats
    }
}
