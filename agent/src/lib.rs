//! smtpguard edge agent.
//!
//! # Layout
//! - [`core`]: [`core::Agent`], the sans-IO agent core that `run`, `replay`, the demo and the
//!   tests all drive the same way: engine, planner, policy precedence, one timer table and
//!   the telemetry window in, kernel operations, alerts, telemetry and acks out.
//! - [`config`]: [`config::AgentConfig`], read from TOML or OpenWrt UCI and validated once.
//! - [`capture`]: live capture on the LAN interface (`AF_PACKET` + a kernel BPF filter that
//!   passes only mail, DNS and DHCP frames), frames stamped in Unix milliseconds.
//! - [`leases`]: host names from the dnsmasq lease file (`/tmp/dhcp.leases`).
//! - [`log`]: the log lines (warnings and errors on stderr, the rest on stdout), filtered as
//!   `RUST_LOG` says.
//! - [`packet`]: one raw Ethernet frame (802.1Q ok) → addresses, ports, flags, payload.
//! - [`engine`]: the pure detection engine: devices by MAC, signals over sliding windows,
//!   scores, verdicts with evidence, and the actions policy calls for. Time is passed in.
//! - [`pcap`]: streaming pcap/pcapng reader (Ethernet, Linux cooked SLL and SLL2).
//! - [`cooked`]: Linux cooked records (`tcpdump -i any` on a router) as the Ethernet
//!   frames of the LAN: each packet used once, in the direction it had on the LAN.
//! - [`ports`]: [`ports::MailPorts`], the one set of mail ports that the capture filter,
//!   the engine and the nftables table all use (`enforce.mail_ports`).
//! - [`oui`]: vendor names from the IEEE registry file (`oui.csv`), loaded at start.
//! - [`replay`]: `smtpguard-agent replay`: a capture through the engine with the capture's
//!   timestamps as the clock, printed as one JSON (or text) report.
//! - [`enforce`]: turns verdicts into device-scoped action: the pure [`enforce::Planner`],
//!   the nftables backend (table `inet smtpguard`), the block state file, and the `status` /
//!   `release` subcommands' logic.
//! - [`durable`]: files replaced whole and durably (state, sequence numbers, alert queue,
//!   status), one implementation for all of them.
//! - [`run`]: `smtpguard-agent run`, the live loop: capture → engine → planner → nftables,
//!   state and status files, clean shutdown on SIGTERM/SIGINT.
//! - [`nat`]: the router's WAN address and the conntrack NAT translation of each logged mail
//!   connection (ctnetlink), so the controller can map an abuse report's (IP, port, time)
//!   to the device; the core holds the records until their lookup is answered.
//! - [`uplink`]: signed telemetry and alerts to the controller over MQTT (bounded offline
//!   queue, alerts persisted until the broker acknowledges them), verified policy back.
//! - `fuzzing` (hidden, `fuzzing` feature only): the body of each fuzz target in
//!   `agent/fuzz`, shared with the stable corpus replay in `tests/fuzz_corpus.rs`.
//!
//! # Data flow
//! Live: capture → [`engine::Engine::handle_frame`] → [`engine::Engine::poll_action`] →
//! enforcement ([`enforce::Planner`] → [`enforce::Enforcer`]) and uplink; the shell calls
//! [`engine::Engine::handle_timeout`] at [`engine::Engine::poll_timeout`]. Offline:
//! [`pcap::CaptureReader`] (→ [`cooked::CookedView`] for cooked captures) → the same engine →
//! [`replay::Report`].

pub mod capture;
pub mod cli;
pub mod config;
pub mod cooked;
pub mod core;
pub mod durable;
pub mod enforce;
pub mod engine;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod leases;
pub mod log;
pub mod nat;
pub mod oui;
pub mod packet;
pub mod pcap;
pub mod ports;
pub mod replay;
pub mod run;
pub mod uplink;
