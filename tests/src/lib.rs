//! Shared helpers for smtpguard's end-to-end tests (`tests/tests/*.rs`): locating the built
//! binaries, the shared packet corpus, and temporary working directories.
//!
//! - [`mqtt`]: a real mosquitto on loopback (ephemeral port, password file, ACL), the
//!   controller binary, and polling helpers for the `mqtt_*` tests.
//! - [`metrics`]: the controller's `/metrics`, scraped and read series by series.
//! - [`process`]: the controller and agent processes a test starts, with their logs, and
//!   waits that fail early when one of them died.

pub mod metrics;
pub mod mqtt;
pub mod process;
