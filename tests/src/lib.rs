//! Shared helpers for smtpguard's end-to-end tests (`tests/tests/*.rs`): locating the built
//! binaries, the shared packet corpus, and temporary working directories.
//!
//! - [`mqtt`]: a real mosquitto on loopback (ephemeral port, password file, ACL), the
//!   controller binary, and polling helpers for the `mqtt_*` tests.

pub mod mqtt;
