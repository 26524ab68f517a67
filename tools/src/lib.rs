//! smtpguard's tools: everything that runs the product without a real router or a real
//! household. They depend on the agent and the controller; neither depends on them, so the
//! router binary and the controller carry none of this.
//!
//! # Layout
//! - [`sim`]: the deterministic household traffic simulator (Ethernet frames on a
//!   timeline: DHCP, DNS, SMTP dialogues, bots) for tests, benchmarks, the demo and the
//!   capture generator.
//! - [`pcap_writer`]: writes those frames as pcap files.
//! - [`library`]: the scenario library (multi-day timelines of hidden bots and of the clean
//!   devices most like them, with expected verdicts) and its runner over the agent core.
//! - [`demo_live`]: simulated households whose routers run the real agent core and uplink
//!   against a real controller.
//! - [`demo`]: `smtpguard-demo`, the controller with either the live households or the
//!   controller's seeded fleet, on loopback.
//! - binaries: `smtpguard-demo`, and `smtpguard-loadgen`, the load generator (thousands of
//!   signed MQTT agents against a real controller and broker).
//!
//! # Data flow
//! [`sim`] frames → `smtpguard_agent::core::Agent` (driven as the router's run loop drives it)
//! → alerts, telemetry and acks through `smtpguard_agent::uplink` → broker → the controller's
//! ingest, exactly as from a router.

pub mod demo;
pub mod demo_live;
pub mod library;
pub mod pcap_writer;
pub mod sim;
