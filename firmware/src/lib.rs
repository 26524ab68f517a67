//! smtpguard router support: what the agent needs from the router itself.
//!
//! # Layout
//! - [`led`]: the status LED driver. [`led::StatusLed`] owns an embedded-hal
//!   [`OutputPin`](embedded_hal::digital::OutputPin) and turns the agent's
//!   [`led::Status`] (clean, suspicious, controller unreachable, infected) into a blink
//!   pattern over a clock the caller passes in. `no_std`; works on any HAL.
//! - [`led::sysfs`] (feature `std`): the Linux backend, an `OutputPin` over an LED of the
//!   kernel's LED class (`/sys/class/leds/NAME/brightness`), as found on OpenWrt routers.
//! - [`uci`] (feature `std`): a strict parser for OpenWrt's UCI config files, so the agent can
//!   read `/etc/config/smtpguard` with the same field names as its TOML config.
//!
//! Data flows one way: the agent's engine decides verdicts, the agent maps them to a
//! [`led::Status`], and the driver writes the pin when its pattern says so:
//!
//! ```text
//! engine verdicts + uplink state ─► Status::most_urgent ─► StatusLed::show / poll(now_ms)
//!                                                            └► OutputPin (SysfsLed, GPIO, mock)
//! ```
//!
//! Outside the crate, `firmware/` holds the router packaging: `build.sh` (cross builds for
//! MIPS and ARM routers), `ci.sh` (builds and runs them under qemu-user), and `openwrt/` (the
//! OpenWrt feed package, procd init script, UCI defaults and `mkipk.sh`).
#![cfg_attr(not(feature = "std"), no_std)]

pub mod led;
#[cfg(feature = "std")]
pub mod uci;
