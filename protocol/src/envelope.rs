//! The signed envelope and the checks every inbound message goes through.
//!
//! # Wire format
//! A message is the CBOR map `{"envelope": bstr, "signature": bstr(64)}`. The `envelope`
//! byte string is itself the CBOR map
//! `{"version": u16, "cpe_id": tstr, "seq": u64, "sent_at": u64 (Unix ms), "kind": tstr,
//! "body": bstr}` whose `body` is the CBOR encoding of the kind's body type.
//!
//! The ed25519 signature covers `DOMAIN || kind || 0x00 || envelope bytes`, where `DOMAIN`
//! is [`SIGNING_DOMAIN`]. Signing the exact bytes that travel means no canonical re-encoding
//! is ever needed; the domain prefix and the kind keep a signature from being reused for
//! another purpose or another kind, and `cpe_id` inside the signed bytes ties it to one
//! sender's topic (fleet policy uses [`FLEET_ID`]).
//!
//! # Order of checks
//! [`open`]: size (before any decoding), CBOR, version. Then [`Opened::check_topic`], key
//! lookup (by the caller, or [`verify`]), [`Opened::verify`]: signature, then the body.
//! Then [`Envelope::check_freshness`], the replay window, and for policy the version.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::Serialize;

use crate::messages::{Body, Command, CommandAction, Kind};
use crate::replay::ReplayWindow;
use crate::topic::Topic;
use crate::types::MacAddr;
use crate::wire::{self, Bytes};
use crate::{MAX_MESSAGE_BYTES, PROTOCOL_VERSION};

/// Domain-separation prefix of every signed byte string.
pub const SIGNING_DOMAIN: &[u8] = b"smtpguard/v1 envelope\0";

/// The `cpe_id` of fleet-wide policy envelopes; never a valid CPE id.
pub const FLEET_ID: &str = "fleet";

/// Longest CPE id accepted.
pub const MAX_CPE_ID_LEN: usize = 64;

/// A decoded, verified message.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Envelope format version ([`PROTOCOL_VERSION`]).
    pub version: u16,
    /// The sending CPE, or for policy the target CPE or [`FLEET_ID`].
    pub cpe_id: String,
    /// Per-sender monotonic sequence number.
    pub seq: u64,
    /// When the sender sealed it (Unix ms).
    pub sent_at_ms: u64,
    /// The message.
    pub body: Body,
}

impl Envelope {
    /// The kind of the body.
    pub fn kind(&self) -> Kind {
        self.body.kind()
    }

    /// Refuses messages sent too long ago or too far in the future.
    ///
    /// # Errors
    /// [`Rejection::Stale`] or [`Rejection::FromFuture`].
    pub fn check_freshness(&self, now_ms: u64, limits: &Freshness) -> Result<(), Rejection> {
        check_freshness(self.sent_at_ms, now_ms, limits)
    }
}

/// How far `sent_at` may be from the receiver's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Oldest message accepted. Agents hold alerts through outages, so the default is a week.
    pub max_age_ms: u64,
    /// How far ahead of the receiver's clock a sender's clock may run.
    pub max_future_ms: u64,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            max_age_ms: 7 * 24 * 3600 * 1000,
            max_future_ms: 5 * 60 * 1000,
        }
    }
}

fn check_freshness(sent_at_ms: u64, now_ms: u64, limits: &Freshness) -> Result<(), Rejection> {
    if sent_at_ms > now_ms.saturating_add(limits.max_future_ms) {
        return Err(Rejection::FromFuture { sent_at_ms, now_ms });
    }
    if now_ms.saturating_sub(sent_at_ms) > limits.max_age_ms {
        return Err(Rejection::Stale { sent_at_ms, now_ms });
    }
    Ok(())
}

/// Why an inbound message was rejected. Each variant is one way a message can be bad.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Larger than [`MAX_MESSAGE_BYTES`]; checked before decoding.
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    Oversize {
        /// Size received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a well-formed envelope: bad CBOR, wrong types, missing fields.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// An envelope version this build does not speak.
    #[error("unknown envelope version {0}")]
    UnknownVersion(u16),
    /// No enrolled key for the sender.
    #[error("unknown sender {cpe_id:?}: no enrolled key")]
    UnknownKey {
        /// The claimed sender.
        cpe_id: String,
    },
    /// The sender's key was revoked.
    #[error("sender {cpe_id:?} is revoked")]
    RevokedKey {
        /// The revoked sender.
        cpe_id: String,
    },
    /// The signature does not verify against the sender's key.
    #[error("bad signature")]
    BadSignature,
    /// The envelope does not belong on the topic it came on (another CPE's id, or another
    /// kind of message).
    #[error("topic {topic:?} does not match envelope ({detail})")]
    TopicMismatch {
        /// The topic it arrived on.
        topic: String,
        /// What differs.
        detail: String,
    },
    /// A topic outside the smtpguard scheme.
    #[error("topic {0:?} is not an smtpguard topic")]
    BadTopic(String),
    /// The sequence number was already seen or is below the replay window.
    #[error("replayed or reordered message: seq {seq} {why}")]
    Replay {
        /// The message's sequence number.
        seq: u64,
        /// "already seen" or "below the window starting at N".
        why: String,
    },
    /// `sent_at` is older than the allowed age.
    #[error("stale message: sent at {sent_at_ms} ms, now {now_ms} ms")]
    Stale {
        /// When it claims to have been sent.
        sent_at_ms: u64,
        /// The receiver's clock.
        now_ms: u64,
    },
    /// `sent_at` is further ahead than the allowed skew.
    #[error("message from the future: sent at {sent_at_ms} ms, now {now_ms} ms")]
    FromFuture {
        /// When it claims to have been sent.
        sent_at_ms: u64,
        /// The receiver's clock.
        now_ms: u64,
    },
    /// A policy whose version is not above the applied one.
    #[error("policy version {version} is not newer than applied version {applied}")]
    PolicyRollback {
        /// The offered version.
        version: u64,
        /// The applied version.
        applied: u64,
    },
}

/// The reason of a [`Rejection`] without its details: a label for counters and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectionReason {
    /// [`Rejection::Oversize`]
    Oversize,
    /// [`Rejection::Malformed`]
    Malformed,
    /// [`Rejection::UnknownVersion`]
    UnknownVersion,
    /// [`Rejection::UnknownKey`]
    UnknownKey,
    /// [`Rejection::RevokedKey`]
    RevokedKey,
    /// [`Rejection::BadSignature`]
    BadSignature,
    /// [`Rejection::TopicMismatch`]
    TopicMismatch,
    /// [`Rejection::BadTopic`]
    BadTopic,
    /// [`Rejection::Replay`]
    Replay,
    /// [`Rejection::Stale`]
    Stale,
    /// [`Rejection::FromFuture`]
    FromFuture,
    /// [`Rejection::PolicyRollback`]
    PolicyRollback,
}

impl RejectionReason {
    /// Every reason, for exporting zero-valued counters.
    pub const ALL: [RejectionReason; 12] = [
        RejectionReason::Oversize,
        RejectionReason::Malformed,
        RejectionReason::UnknownVersion,
        RejectionReason::UnknownKey,
        RejectionReason::RevokedKey,
        RejectionReason::BadSignature,
        RejectionReason::TopicMismatch,
        RejectionReason::BadTopic,
        RejectionReason::Replay,
        RejectionReason::Stale,
        RejectionReason::FromFuture,
        RejectionReason::PolicyRollback,
    ];

    /// A snake_case label, stable for dashboards.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectionReason::Oversize => "oversize",
            RejectionReason::Malformed => "malformed",
            RejectionReason::UnknownVersion => "unknown_version",
            RejectionReason::UnknownKey => "unknown_key",
            RejectionReason::RevokedKey => "revoked_key",
            RejectionReason::BadSignature => "bad_signature",
            RejectionReason::TopicMismatch => "topic_mismatch",
            RejectionReason::BadTopic => "bad_topic",
            RejectionReason::Replay => "replay",
            RejectionReason::Stale => "stale",
            RejectionReason::FromFuture => "from_future",
            RejectionReason::PolicyRollback => "policy_rollback",
        }
    }
}

impl Rejection {
    /// The reason label of this rejection.
    pub fn reason(&self) -> RejectionReason {
        match self {
            Rejection::Oversize { .. } => RejectionReason::Oversize,
            Rejection::Malformed(_) => RejectionReason::Malformed,
            Rejection::UnknownVersion(_) => RejectionReason::UnknownVersion,
            Rejection::UnknownKey { .. } => RejectionReason::UnknownKey,
            Rejection::RevokedKey { .. } => RejectionReason::RevokedKey,
            Rejection::BadSignature => RejectionReason::BadSignature,
            Rejection::TopicMismatch { .. } => RejectionReason::TopicMismatch,
            Rejection::BadTopic(_) => RejectionReason::BadTopic,
            Rejection::Replay { .. } => RejectionReason::Replay,
            Rejection::Stale { .. } => RejectionReason::Stale,
            Rejection::FromFuture { .. } => RejectionReason::FromFuture,
            Rejection::PolicyRollback { .. } => RejectionReason::PolicyRollback,
        }
    }
}

/// Sealing failed: the sender's own input was unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The CPE id is empty, too long, reserved, or has characters not allowed in a topic.
    #[error("invalid CPE id {0:?}: use 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'")]
    InvalidCpeId(String),
    /// The sealed message would exceed [`MAX_MESSAGE_BYTES`].
    #[error("sealed message of {0} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    /// The body could not be encoded.
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// Whether `id` can be a CPE id: 1-64 of `[A-Za-z0-9._-]`, not [`FLEET_ID`].
pub fn is_valid_cpe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CPE_ID_LEN
        && id != FLEET_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[derive(Serialize)]
struct SignedWire {
    envelope: Bytes,
    signature: Bytes,
}

#[derive(Serialize)]
struct EnvelopeWire {
    version: u16,
    cpe_id: String,
    seq: u64,
    sent_at: u64,
    kind: Kind,
    body: Bytes,
}

fn signing_input(kind: Kind, envelope: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(SIGNING_DOMAIN.len() + 12 + envelope.len());
    input.extend_from_slice(SIGNING_DOMAIN);
    input.extend_from_slice(kind.as_str().as_bytes());
    input.push(0);
    input.extend_from_slice(envelope);
    input
}

fn encode_body(body: &Body) -> Result<Vec<u8>, wire::WireError> {
    match body {
        Body::Telemetry(b) => wire::to_vec(b),
        Body::Alert(b) => wire::to_vec(b),
        Body::State(b) => wire::to_vec(b),
        Body::Policy(b) => wire::to_vec(b),
        Body::PolicyAck(b) => wire::to_vec(b),
        Body::Command(b) => wire::to_vec(b),
        Body::CommandAck(b) => wire::to_vec(b),
    }
}

/// How a receiver turns a verified body into a [`Body`].
type Decoder = fn(Kind, &[u8]) -> Result<Body, wire::WireError>;

pub(crate) fn decode_body(kind: Kind, bytes: &[u8]) -> Result<Body, wire::WireError> {
    Ok(match kind {
        Kind::Telemetry => Body::Telemetry(wire::from_slice(bytes)?),
        Kind::Alert => Body::Alert(wire::from_slice(bytes)?),
        Kind::State => Body::State(wire::from_slice(bytes)?),
        Kind::Policy => Body::Policy(wire::from_slice(bytes)?),
        Kind::PolicyAck => Body::PolicyAck(wire::from_slice(bytes)?),
        Kind::Command => Body::Command(wire::from_slice(bytes)?),
        Kind::CommandAck => Body::CommandAck(wire::from_slice(bytes)?),
    })
}

/// Decodes policy bodies only. An agent receives nothing else, and by never naming the
/// decoders of the report kinds it keeps them (a third of the CBOR code) out of its binary;
/// the policy itself is decoded through a generic tree, which is smaller again
/// ([`wire::from_slice_via_tree`]; the equivalence is tested on every policy the property
/// tests make).
pub(crate) fn decode_policy_body(kind: Kind, bytes: &[u8]) -> Result<Body, wire::WireError> {
    match kind {
        Kind::Policy => Ok(Body::Policy(wire::from_slice_via_tree(bytes)?)),
        other => Err(wire::WireError::new(format!(
            "a {other} body where only policy is accepted"
        ))),
    }
}

/// Decodes command bodies only: what an agent reads on its command topic. The fields are
/// taken by name from the generic CBOR tree the envelope framing already uses
/// ([`wire::Fields`]), so a router binary carries no derived decoder for commands at all
/// (the controller's derived one must agree: the `command_body` fuzz target checks it).
/// Unknown keys are ignored here, where the derived decoder refuses them.
pub(crate) fn decode_command_body(kind: Kind, bytes: &[u8]) -> Result<Body, wire::WireError> {
    match kind {
        Kind::Command => {
            let mut f = wire::Fields::decode(bytes)?;
            let mut a = f.map("action")?;
            let kind = a.text("type")?;
            let mac = a
                .text("mac")?
                .parse::<MacAddr>()
                .map_err(|e| wire::WireError::new(format!("field `mac`: {e}")))?;
            let action = match kind.as_str() {
                "release" => CommandAction::Release {
                    mac,
                    grace_secs: a.uint32("grace_secs")?,
                },
                "block" => CommandAction::Block {
                    mac,
                    ttl_secs: a.uint32("ttl_secs")?,
                },
                _ => {
                    return Err(wire::WireError::new(format!(
                        "unknown command action {:?}",
                        kind.chars().take(40).collect::<String>()
                    )))
                }
            };
            Ok(Body::Command(Command {
                target: f.text("target")?,
                command_id: f.uint("command_id")?,
                issued_ms: f.uint("issued_ms")?,
                expires_ms: f.uint("expires_ms")?,
                action,
            }))
        }
        other => Err(wire::WireError::new(format!(
            "a {other} body where only a command is accepted"
        ))),
    }
}

/// Encodes and signs a message: the bytes to publish.
///
/// `cpe_id` is the sender (agents) or the policy's target ([`FLEET_ID`] for fleet policy).
///
/// # Errors
/// [`SealError`] when the CPE id is invalid, the body cannot be encoded, or the result would
/// exceed [`MAX_MESSAGE_BYTES`].
pub fn seal(
    body: &Body,
    cpe_id: &str,
    seq: u64,
    sent_at_ms: u64,
    key: &SigningKey,
) -> Result<Vec<u8>, SealError> {
    let policy_to_fleet = matches!(body, Body::Policy(_)) && cpe_id == FLEET_ID;
    if !policy_to_fleet && !is_valid_cpe_id(cpe_id) {
        return Err(SealError::InvalidCpeId(cpe_id.chars().take(80).collect()));
    }
    let kind = body.kind();
    let body = encode_body(body).map_err(|e| SealError::Encode(e.to_string()))?;
    sign_envelope(kind, cpe_id, seq, sent_at_ms, body, key)
}

/// Wraps encoded body bytes in an envelope and signs it: the bytes to publish.
fn sign_envelope(
    kind: Kind,
    cpe_id: &str,
    seq: u64,
    sent_at_ms: u64,
    body: Vec<u8>,
    key: &SigningKey,
) -> Result<Vec<u8>, SealError> {
    let envelope = wire::to_vec(&EnvelopeWire {
        version: PROTOCOL_VERSION,
        cpe_id: cpe_id.to_owned(),
        seq,
        sent_at: sent_at_ms,
        kind,
        body: Bytes(body),
    })
    .map_err(|e| SealError::Encode(e.to_string()))?;
    let signature = key.sign(&signing_input(kind, &envelope));
    let bytes = wire::to_vec(&SignedWire {
        envelope: Bytes(envelope),
        signature: Bytes(signature.to_bytes().to_vec()),
    })
    .map_err(|e| SealError::Encode(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(SealError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Signs body bytes as they are, without encoding a [`Body`]: the fuzz targets use it to
/// reach the body decoders, which sit behind the signature check. Not in production builds.
#[cfg(feature = "fuzzing")]
pub(crate) fn seal_raw_body(
    kind: Kind,
    cpe_id: &str,
    seq: u64,
    sent_at_ms: u64,
    body: &[u8],
    key: &SigningKey,
) -> Result<Vec<u8>, SealError> {
    sign_envelope(kind, cpe_id, seq, sent_at_ms, body.to_vec(), key)
}

/// The header fields of an opened envelope, readable before the signature is checked
/// (to find the sender's key). Nothing here is trustworthy until [`Opened::verify`] passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Envelope version.
    pub version: u16,
    /// Claimed sender (or policy target).
    pub cpe_id: String,
    /// Claimed sequence number.
    pub seq: u64,
    /// Claimed send time (Unix ms).
    pub sent_at_ms: u64,
    /// Claimed kind.
    pub kind: Kind,
}

/// A message whose framing decoded but whose signature is not yet checked.
#[derive(Debug, Clone)]
pub struct Opened {
    header: Header,
    signed: Vec<u8>,
    body: Vec<u8>,
    signature: Signature,
}

/// Decodes the framing of an inbound message: size limit, CBOR, version.
///
/// # Errors
/// [`Rejection::Oversize`], [`Rejection::Malformed`] or [`Rejection::UnknownVersion`].
pub fn open(payload: &[u8]) -> Result<Opened, Rejection> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(Rejection::Oversize {
            len: payload.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    // The framing is read from a generic CBOR tree (`wire::Fields`) rather than decoded
    // into `SignedWire` and `EnvelopeWire` directly: the same rules, at a fraction of the
    // code in a router binary, since the tree decoder is shared with the policy's.
    let malformed = |e: wire::WireError| Rejection::Malformed(e.to_string());
    let mut outer = wire::Fields::decode(payload).map_err(malformed)?;
    let signed = outer.bytes("envelope").map_err(malformed)?;
    let sig = outer.bytes("signature").map_err(malformed)?;
    let signature: [u8; 64] = sig.as_slice().try_into().map_err(|_| {
        Rejection::Malformed(format!("signature is {} bytes, expected 64", sig.len()))
    })?;
    let mut fields = wire::Fields::decode(&signed).map_err(malformed)?;
    // The version first, so a future format is reported as such.
    let version = fields.uint("version").map_err(malformed)?;
    if version != u64::from(PROTOCOL_VERSION) {
        return Err(Rejection::UnknownVersion(
            u16::try_from(version).unwrap_or(u16::MAX),
        ));
    }
    let kind_text = fields.text("kind").map_err(malformed)?;
    let header = Header {
        version: PROTOCOL_VERSION,
        cpe_id: fields.text("cpe_id").map_err(malformed)?,
        seq: fields.uint("seq").map_err(malformed)?,
        sent_at_ms: fields.uint("sent_at").map_err(malformed)?,
        kind: Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind_text)
            .ok_or_else(|| {
                Rejection::Malformed(format!(
                    "unknown kind {:?}",
                    kind_text.chars().take(40).collect::<String>()
                ))
            })?,
    };
    let body = fields.bytes("body").map_err(malformed)?;
    let fleet_policy = header.kind == Kind::Policy && header.cpe_id == FLEET_ID;
    if !fleet_policy && !is_valid_cpe_id(&header.cpe_id) {
        return Err(Rejection::Malformed(format!(
            "invalid cpe_id {:?}",
            header.cpe_id.chars().take(80).collect::<String>()
        )));
    }
    Ok(Opened {
        header,
        body,
        signed,
        signature: Signature::from_bytes(&signature),
    })
}

impl Opened {
    /// The unverified header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Refuses an envelope that does not belong on `topic`: another CPE's id, or a kind
    /// that topic does not carry.
    ///
    /// # Errors
    /// [`Rejection::TopicMismatch`].
    pub fn check_topic(&self, topic: &Topic) -> Result<(), Rejection> {
        let mismatch = |detail: String| Rejection::TopicMismatch {
            topic: topic.to_string(),
            detail,
        };
        if topic.kind() != self.header.kind {
            return Err(mismatch(format!(
                "{} message on a {} topic",
                self.header.kind,
                topic.kind()
            )));
        }
        let expected = topic.cpe_id().unwrap_or(FLEET_ID);
        if expected != self.header.cpe_id {
            return Err(mismatch(format!(
                "envelope cpe_id {:?}, topic is for {:?}",
                self.header.cpe_id, expected
            )));
        }
        Ok(())
    }

    /// Checks the signature against the sender's key, then decodes the body.
    ///
    /// # Errors
    /// [`Rejection::BadSignature`], or [`Rejection::Malformed`] for a signed but undecodable
    /// body.
    pub fn verify(self, key: &VerifyingKey) -> Result<Envelope, Rejection> {
        self.verify_decoding(key, decode_body)
    }

    fn verify_decoding(self, key: &VerifyingKey, decode: Decoder) -> Result<Envelope, Rejection> {
        key.verify_strict(
            &signing_input(self.header.kind, &self.signed),
            &self.signature,
        )
        .map_err(|_| Rejection::BadSignature)?;
        self.into_envelope(decode)
    }

    fn into_envelope(self, decode: Decoder) -> Result<Envelope, Rejection> {
        let body = decode(self.header.kind, &self.body)
            .map_err(|e| Rejection::Malformed(format!("{} body: {e}", self.header.kind)))?;
        Ok(Envelope {
            version: self.header.version,
            cpe_id: self.header.cpe_id,
            seq: self.header.seq,
            sent_at_ms: self.header.sent_at_ms,
            body,
        })
    }
}

#[cfg(feature = "batch")]
/// Verifies many messages at once with ed25519 batch verification, which is several times
/// faster than one by one. When the batch fails, each message is checked alone so only the
/// bad ones are rejected. Keys must have been checked not to be weak at enrollment
/// ([`crate::keys::parse_public_key`] does).
pub fn verify_batch(items: Vec<(Opened, VerifyingKey)>) -> Vec<Result<Envelope, Rejection>> {
    let inputs: Vec<Vec<u8>> = items
        .iter()
        .map(|(o, _)| signing_input(o.header.kind, &o.signed))
        .collect();
    let messages: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let signatures: Vec<Signature> = items.iter().map(|(o, _)| o.signature).collect();
    let keys: Vec<VerifyingKey> = items.iter().map(|(_, k)| *k).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        items
            .into_iter()
            .map(|(o, _)| o.into_envelope(decode_body))
            .collect()
    } else {
        items.into_iter().map(|(o, k)| o.verify(&k)).collect()
    }
}

/// What a receiver knows of a sender's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Enrolled and active.
    Active(VerifyingKey),
    /// Enrolled, then revoked.
    Revoked,
    /// Never enrolled.
    Unknown,
}

/// Runs every check on one inbound message, in order: topic scheme, size, CBOR, version,
/// topic match, key, signature, body, freshness, replay window, and for policy its version
/// against `applied_policy_version`. Does not update the window: call
/// [`ReplayWindow::accept`] once the message has been acted on.
///
/// # Errors
/// The first [`Rejection`] that applies.
pub fn verify(
    topic: &str,
    payload: &[u8],
    key_of: impl FnOnce(&str) -> KeyStatus,
    window: Option<&ReplayWindow>,
    applied_policy_version: Option<u64>,
    now_ms: u64,
    freshness: &Freshness,
) -> Result<Envelope, Rejection> {
    let checks = Checks {
        window,
        applied_policy_version,
        now_ms,
        freshness,
    };
    verify_decoding(topic, payload, key_of, &checks, decode_body)
}

/// [`verify`] for a receiver of policy alone (the agent): every check is the same, and a
/// message on a policy topic is a policy (the topic check sees to that), but the decoders
/// of the other kinds are never reached, so they stay out of a router binary.
///
/// # Errors
/// As [`verify`].
pub fn verify_policy(
    topic: &str,
    payload: &[u8],
    key_of: impl FnOnce(&str) -> KeyStatus,
    applied_policy_version: Option<u64>,
    now_ms: u64,
    freshness: &Freshness,
) -> Result<Envelope, Rejection> {
    let checks = Checks {
        window: None,
        applied_policy_version,
        now_ms,
        freshness,
    };
    verify_decoding(topic, payload, key_of, &checks, decode_policy_body)
}

/// [`verify`] for a router's command topic: topic scheme, size, CBOR, version, topic match
/// (a command envelope for another CPE is refused here), the controller's signature, the
/// body (decoded through the generic tree, as policy is) and freshness of `sent_at`. The
/// checks of the body itself (target, expiry, replay) are [`crate::Command::refusal`].
///
/// # Errors
/// As [`verify`].
pub fn verify_command(
    topic: &str,
    payload: &[u8],
    key_of: impl FnOnce(&str) -> KeyStatus,
    now_ms: u64,
    freshness: &Freshness,
) -> Result<Envelope, Rejection> {
    let checks = Checks {
        window: None,
        applied_policy_version: None,
        now_ms,
        freshness,
    };
    verify_decoding(topic, payload, key_of, &checks, decode_command_body)
}

/// The receiver's state that [`verify`] checks a message against.
struct Checks<'a> {
    window: Option<&'a ReplayWindow>,
    applied_policy_version: Option<u64>,
    now_ms: u64,
    freshness: &'a Freshness,
}

fn verify_decoding(
    topic: &str,
    payload: &[u8],
    key_of: impl FnOnce(&str) -> KeyStatus,
    checks: &Checks<'_>,
    decode: Decoder,
) -> Result<Envelope, Rejection> {
    let Checks {
        window,
        applied_policy_version,
        now_ms,
        freshness,
    } = *checks;
    let topic = Topic::parse(topic)?;
    let opened = open(payload)?;
    opened.check_topic(&topic)?;
    let key = match key_of(&opened.header.cpe_id) {
        KeyStatus::Active(key) => key,
        KeyStatus::Revoked => {
            return Err(Rejection::RevokedKey {
                cpe_id: opened.header.cpe_id,
            })
        }
        KeyStatus::Unknown => {
            return Err(Rejection::UnknownKey {
                cpe_id: opened.header.cpe_id,
            })
        }
    };
    let envelope = opened.verify_decoding(&key, decode)?;
    envelope.check_freshness(now_ms, freshness)?;
    if let Some(window) = window {
        window.check(envelope.seq)?;
    }
    if let Body::Policy(policy) = &envelope.body {
        policy.check_newer_than(applied_policy_version)?;
    }
    Ok(envelope)
}
