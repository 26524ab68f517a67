//! smtpguard controller: receives the fleet's signed evidence, stores it, and signs and
//! publishes policy.
//!
//! # Layout
//! - [`config`]: the typed, validated controller configuration (TOML).
//! - [`lead`]: periodic jobs (retention, notifications, policy and rollout watches) run by
//!   one replica at a time, under a lease in the database.
//! - [`store`]: every SQL statement of the controller, over SQLite or PostgreSQL
//!   (`store::db`): the one schema and its migrations, the batched write path and its
//!   arbiter between replicas, device state kept at ingest, one module per area for the
//!   rest (households, operators, audit, policies, rollout, abuse, fleet, metrics, ...),
//!   and retention. The modules outside it keep the rules and call typed functions.
//! - [`registry`]: CPE enrollment (public keys) and revocation.
//! - [`broker`]: the embedded MQTT broker (rumqttd), or nothing when an external broker is
//!   configured.
//! - [`ingest`]: MQTT shared subscription (alerts in a session of their own) → verify
//!   (protocol) → replay window → batched store → manual ack.
//! - [`policy`]: policy signing, versioning, publishing (retained) and the rollout view.
//! - [`rollout`]: staged policy rollout: a canary cohort first (signed per-CPE policy), its
//!   acks, refusals and flagged-device share watched, then promoted or rolled back.
//! - [`commands`]: signed commands to one router (release, block): issue, store, publish,
//!   and the routers' answers stored by the ingest.
//! - [`serve`]: `run(config, shutdown)`: broker + policy republish + ingest.
//! - [`verdicts`]: pure fold of alerts and telemetry into each device's current verdict,
//!   history, evidence and action in force; plain-language summaries.
//! - [`campaigns`]: fleet correlation — alike infected devices across households grouped
//!   into campaigns whose indicators the NOC pushes as fleet policy.
//! - [`abuse`]: ARF abuse reports → public IP at time → CPE → device, with the router's
//!   connection log as evidence.
//! - `fuzzing` (hidden, `fuzzing` feature only): the body of each fuzz target in
//!   `controller/fuzz`, shared with the stable corpus replay in `tests/fuzz_corpus.rs`.
//! - [`households`]: subscriber accounts, hashed login tokens, release requests.
//! - [`web`]: axum server — NOC pages, subscriber portal, JSON API, `/metrics`.
//! - [`demo`]: the seeded demo fleet (web tests, screenshots, `smtpguard-demo --seeded`). The
//!   demo itself, the live simulated routers and the load generator are in the tools crate:
//!   the controller never links the router agent.
//!
//! # Data flow
//! Agents publish signed envelopes → broker → [`ingest`] verifies each against the key in
//! [`registry`], checks the per-CPE replay window, and writes batches to [`store`]; only
//! then are the messages acknowledged to the broker. The NOC runs [`policy::sign`]: a new
//! version is signed with the controller key, stored and published retained; agents answer
//! with acks that the ingest stores and [`policy::status`] reports.

pub mod abuse;
pub mod audit;
pub mod broker;
pub mod campaigns;
pub mod commands;
pub mod config;
pub mod demo;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod households;
pub mod ingest;
pub mod lead;
pub mod notify;
pub mod operators;
pub mod policy;
pub mod registry;
pub mod rollout;
pub mod serve;
pub mod store;
pub mod verdicts;
pub mod web;
