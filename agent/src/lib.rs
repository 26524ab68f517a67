//! smtpguard edge agent.
//!
//! # Layout
//! - [`capture`]: live capture on the LAN interface (`AF_PACKET` + a kernel BPF filter that
//!   passes only mail, DNS and DHCP frames), frames stamped in Unix milliseconds.
//! - [`config`]: [`config::AgentConfig`], read from TOML or OpenWrt UCI and validated once.
pub mod capture;
pub mod config;
