//! smtpguard edge agent.
//!
//! # Layout
//! - [`uplink`]: signed telemetry and alerts to the controller over MQTT (bounded offline
//!   queue, alerts persisted until the broker acknowledges them), verified policy back.
pub mod uplink;
