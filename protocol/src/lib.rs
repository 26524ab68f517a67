//! The smtpguard wire: the one definition of every byte that crosses between agents and
//! controllers.
//!
//! # Layout
//! - [`types`]: small domain values shared by every message (MAC address, verdict, action,
//!   policy mode).
//! - [`messages`]: the bodies — [`Telemetry`], [`Alert`], [`State`], [`PolicyAck`],
//!   [`Command`], [`CommandAck`] — and the [`Body`]/[`Kind`] pair that names them.
//! - [`policy`]: the [`Policy`] schema the NOC pushes (and the agent reads from TOML for
//!   replay), with defaults for every field and validation; [`policy::safety`], the one
//!   safety check the NOC runs before signing and every agent before applying.
//! - [`envelope`]: the signed envelope `{version, cpe_id, seq, sent_at, kind, body}`,
//!   [`seal`] to sign and encode, [`open`] → [`Opened::verify`] to decode and verify, and
//!   [`Rejection`], one variant for each way an inbound message can be bad.
//! - [`replay`]: [`ReplayWindow`], the per-sender sliding window over sequence numbers.
//! - [`topic`]: builders and a parser for the MQTT topic scheme.
//! - [`keys`]: ed25519 key generation, key files (mode 0600) and public keys as text.
//! - `fuzzing` (hidden, `fuzzing` feature only): the body of each fuzz target, shared by
//!   `protocol/fuzz` and the stable corpus replay in `tests/fuzz_corpus.rs`.
//! - `wire` (private): the only place that touches the CBOR library, so it can be swapped in
//!   one file.
//!
//! # Data flow
//! Sending: build a [`Body`] → [`seal`] with the sender's signing key → publish the bytes on
//! the topic from [`topic`]. Receiving: [`topic::Topic::parse`] → [`open`] (size limit,
//! CBOR, version) → [`Opened::check_topic`] → look up the sender's key →
//! [`Opened::verify`] (signature, then body) → [`Envelope::check_freshness`] →
//! [`ReplayWindow::check`] → for policy, [`Policy::check_newer_than`], [`Policy::validate`]
//! and [`check_policy_safety`] (which the NOC also runs before signing). Only after the
//! receiver has acted on the message does it call [`ReplayWindow::accept`].
//!
//! This crate does no network I/O, reads no clock and spawns nothing: time comes in as
//! arguments. The only file access is in [`keys`], for key files.

pub mod envelope;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod messages;
pub mod policy;
pub mod replay;
pub mod topic;
pub mod types;
mod wire;

#[cfg(feature = "batch")]
pub use envelope::verify_batch;
pub use envelope::{
    open, seal, verify, verify_command, verify_policy, Envelope, Freshness, Header, KeyStatus,
    Opened, Rejection, RejectionReason, SealError, FLEET_ID,
};
pub use messages::{
    AckOutcome, AgentStats, Alert, Body, Command, CommandAck, CommandAction, ConnRecord,
    DeviceCounters, DeviceReport, Kind, Observed, PolicyAck, PolicyScope, State, Status, Telemetry,
};
pub use policy::safety::{check_policy_safety, SafetyContext, UnsafePolicy};
pub use policy::{Policy, PolicyError};
pub use replay::ReplayWindow;
pub use topic::Topic;
pub use types::{Action, MacAddr, Mode, Verdict};
pub use wire::WireError;

/// Version of the envelope format this crate speaks. A message with another version is
/// rejected with [`Rejection::UnknownVersion`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest message accepted on the wire, checked before any decoding.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
