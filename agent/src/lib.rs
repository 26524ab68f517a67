//! smtpguard edge agent.
//!
//! # Layout
//! - [`enforce`]: turns verdicts into device-scoped action: the pure [`enforce::Planner`],
//!   the nftables backend (table `inet smtpguard`), the block state file, and the `status` /
//!   `release` subcommands.

pub mod enforce;
