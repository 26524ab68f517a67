//! smtpguard edge agent.
//!
//! # Layout
//! - [`config`]: [`config::AgentConfig`], read from TOML or OpenWrt UCI and validated once.
pub mod config;
