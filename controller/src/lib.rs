//! smtpguard controller: receives the fleet's signed evidence, stores it, and signs and
//! publishes policy.
//!
//! # Layout
//! - [`config`]: the typed, validated controller configuration (TOML).
//! - [`store`]: SQLite schema, migrations, the batched write path and read helpers.
//! - [`registry`]: CPE enrollment (public keys) and revocation.
//! - [`broker`]: the embedded MQTT broker (rumqttd), or nothing when an external broker is
//!   configured.
//! - [`ingest`]: MQTT shared subscription → verify (protocol) → replay window → batched
//!   store → manual ack.
//! - [`policy`]: policy signing, versioning, publishing (retained) and the rollout view.
//! - [`serve`]: `run(config, shutdown)`: broker + policy republish + ingest.
//!
//! # Data flow
//! Agents publish signed envelopes → broker → [`ingest`] verifies each against the key in
//! [`registry`], checks the per-CPE replay window, and writes batches to [`store`]; only
//! then are the messages acknowledged to the broker. The NOC runs [`policy::set`]: a new
//! version is signed with the controller key, stored and published retained; agents answer
//! with acks that the ingest stores and [`policy::status`] reports.

pub mod abuse;
pub mod broker;
pub mod campaigns;
pub mod config;
pub mod demo;
pub mod households;
pub mod ingest;
pub mod policy;
pub mod registry;
pub mod serve;
pub mod store;
pub mod verdicts;
pub mod web;
