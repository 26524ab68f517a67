//! CPE enrollment: which routers may speak, with which public key and broker password.
//!
//! `smtpguard-controller cpe add ID PUBLIC_KEY` enrolls a router with the key its agent
//! printed (`smtpguard-agent keygen`) and issues its broker password, printed once: the
//! router's `uplink.password` (its `uplink.username` and MQTT client id are its CPE id).
//! `cpe rotate-password ID` issues a new one (the old one stops working for new logins
//! at once); `cpe revoke ID` makes every later message of it a
//! [`Rejection::RevokedKey`](smtpguard_protocol::Rejection::RevokedKey) and its login
//! refused. The ingest keeps a [`KeyCache`] and reloads it when another process changed
//! the database; the embedded broker checks logins against the same cache.
//!
//! A broker password is 32 random bytes (64 hex digits). Only its hash is stored, in
//! mosquitto's own `$7$` format (PBKDF2-HMAC-SHA512, 101 rounds, 12-byte salt), so one
//! stored hash serves the embedded broker's login check and the password file of
//! `cpe export-mosquitto`. A slow KDF buys nothing for a 256-bit random secret; 101
//! rounds cost about 0.1 ms per login, 1 s of CPU for 10,000 routers connecting.

use std::collections::HashMap;

use smtpguard_protocol::envelope::is_valid_cpe_id;
use smtpguard_protocol::keys::{self, KeyError};
use smtpguard_protocol::KeyStatus;

use crate::store::{CpeRecord, Store, StoreError};

/// Enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The id cannot be a CPE id.
    #[error("invalid CPE id {0:?}: use 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'")]
    InvalidId(String),
    /// The public key text is not a usable key.
    #[error("public key: {0}")]
    Key(#[from] KeyError),
    /// No such CPE.
    #[error("no enrolled CPE {0:?}")]
    NotEnrolled(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An enrolled CPE with the broker password just issued to it (shown once, never stored).
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The stored record.
    pub record: CpeRecord,
    /// The router's `uplink.password`.
    pub broker_password: String,
}

/// Enrolls `cpe_id` with `public_key` (text as printed by `smtpguard-agent keygen`) and
/// issues a new broker password. Enrolling again replaces the key and the password and
/// lifts a revocation.
///
/// # Errors
/// [`RegistryError::InvalidId`], [`RegistryError::Key`] (bad or weak key), or a store error.
pub fn add(
    store: &mut Store,
    cpe_id: &str,
    public_key: &str,
    label: Option<&str>,
    now_ms: u64,
) -> Result<Enrolled, RegistryError> {
    if !is_valid_cpe_id(cpe_id) {
        return Err(RegistryError::InvalidId(cpe_id.chars().take(80).collect()));
    }
    let key = keys::parse_public_key(public_key)?;
    let text = keys::public_key_text(&key);
    store.upsert_cpe(cpe_id, &text, label, now_ms)?;
    let broker_password = rotate_password(store, cpe_id)?;
    let record = store
        .cpe(cpe_id)?
        .ok_or_else(|| RegistryError::NotEnrolled(cpe_id.to_string()))?;
    Ok(Enrolled {
        record,
        broker_password,
    })
}

/// Issues a new broker password for `cpe_id` and returns it (to show once). The old one
/// is refused for every later login.
///
/// # Errors
/// [`RegistryError::NotEnrolled`] or a store error.
pub fn rotate_password(store: &mut Store, cpe_id: &str) -> Result<String, RegistryError> {
    let password = crate::households::new_secret("");
    if store.set_cpe_password_hash(cpe_id, &hash_password(&password, &random_salt()))? {
        Ok(password)
    } else {
        Err(RegistryError::NotEnrolled(cpe_id.to_string()))
    }
}

/// The mosquitto password file (`user:$7$...` lines) of every enrolled, unrevoked CPE
/// that has a password, followed by `extra` lines (e.g. the controller's own).
///
/// # Errors
/// A store error.
pub fn mosquitto_password_file(store: &Store) -> Result<String, StoreError> {
    let mut out = String::new();
    for c in store.cpes()? {
        if let (None, Some(hash)) = (c.revoked_at_ms, c.broker_password_hash) {
            out.push_str(&format!("{}:{}\n", c.cpe_id, hash));
        }
    }
    Ok(out)
}

/// Rounds of PBKDF2 in a hash made here: mosquitto 2's default.
pub const HASH_ROUNDS: u32 = 101;

/// The most rounds a stored hash may ask for, so a hand-edited database cannot make each
/// login arbitrarily slow.
const MAX_HASH_ROUNDS: u32 = 100_000;

fn random_salt() -> [u8; 12] {
    use rand::RngCore;
    let mut salt = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    salt
}

fn pbkdf2_sha512(password: &[u8], salt: &[u8], rounds: u32) -> [u8; 64] {
    let mut out = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, rounds, &mut out);
    out
}

/// `password` hashed in mosquitto's `$7$` format with `salt`:
/// `$7$101$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>`.
pub fn hash_password(password: &str, salt: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "$7${HASH_ROUNDS}${}${}",
        b64.encode(salt),
        b64.encode(pbkdf2_sha512(password.as_bytes(), salt, HASH_ROUNDS))
    )
}

/// Whether `password` matches `hash` (mosquitto's `$7$` format); false for a hash that
/// does not parse. Compares in constant time.
pub fn verify_password(password: &[u8], hash: &str) -> bool {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut parts = hash.split('$');
    let (Some(""), Some("7"), Some(rounds), Some(salt), Some(expected), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let Ok(rounds) = rounds.parse::<u32>() else {
        return false;
    };
    if !(1..=MAX_HASH_ROUNDS).contains(&rounds) {
        return false;
    }
    let (Ok(salt), Ok(expected)) = (b64.decode(salt), b64.decode(expected)) else {
        return false;
    };
    if expected.len() != 64 {
        return false;
    }
    let got = pbkdf2_sha512(password, &salt, rounds);
    got.iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Revokes `cpe_id`.
///
/// # Errors
/// [`RegistryError::NotEnrolled`] or a store error.
pub fn revoke(store: &mut Store, cpe_id: &str, now_ms: u64) -> Result<(), RegistryError> {
    if store.revoke_cpe(cpe_id, now_ms)? {
        Ok(())
    } else {
        Err(RegistryError::NotEnrolled(cpe_id.to_string()))
    }
}

/// What the ingest and the embedded broker know about every enrolled CPE: its key's
/// status and its broker password hash.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyCache {
    keys: HashMap<String, KeyStatus>,
    passwords: HashMap<String, String>,
    /// Admits no router yet (see [`KeyCache::closed`]).
    closed: bool,
}

impl KeyCache {
    /// The cache the embedded broker reads before the ingest's subscriptions exist: every
    /// router login is answered "server unavailable" ([`Login::NotReady`]), so the router
    /// retries instead of reporting a wrong password.
    pub fn closed() -> KeyCache {
        KeyCache {
            closed: true,
            ..KeyCache::default()
        }
    }

    /// Loads every enrolled CPE. A stored key that does not parse (a hand-edited database)
    /// counts as unknown and is logged.
    ///
    /// # Errors
    /// A store error.
    pub fn load(store: &Store) -> Result<KeyCache, StoreError> {
        let mut keys = HashMap::new();
        let mut passwords = HashMap::new();
        for cpe in store.cpes()? {
            if let (None, Some(hash)) = (cpe.revoked_at_ms, &cpe.broker_password_hash) {
                passwords.insert(cpe.cpe_id.clone(), hash.clone());
            }
            let status = if cpe.revoked_at_ms.is_some() {
                KeyStatus::Revoked
            } else {
                match keys::parse_public_key(&cpe.public_key) {
                    Ok(k) => KeyStatus::Active(k),
                    Err(e) => {
                        tracing::warn!(cpe_id = %cpe.cpe_id, error = %e, "unusable stored key");
                        continue;
                    }
                }
            };
            keys.insert(cpe.cpe_id, status);
        }
        Ok(KeyCache {
            keys,
            passwords,
            closed: false,
        })
    }

    /// The status of one sender's key.
    pub fn status(&self, cpe_id: &str) -> KeyStatus {
        self.keys.get(cpe_id).copied().unwrap_or(KeyStatus::Unknown)
    }

    /// Number of enrolled CPEs (revoked included).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no CPE is enrolled.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `cpe_id` is enrolled and not revoked.
    pub fn is_active(&self, cpe_id: &str) -> bool {
        matches!(self.status(cpe_id), KeyStatus::Active(_))
    }

    /// The stored broker password hash of an enrolled, unrevoked CPE.
    pub fn password_hash(&self, cpe_id: &str) -> Option<&str> {
        if !self.is_active(cpe_id) {
            return None;
        }
        self.passwords.get(cpe_id).map(String::as_str)
    }

    /// The embedded broker's login check for a CPE: enrolled, not revoked, and `password`
    /// matches its stored hash.
    pub fn check_login(&self, cpe_id: &str, password: &[u8]) -> Login {
        if self.closed {
            return Login::NotReady;
        }
        match self.status(cpe_id) {
            KeyStatus::Unknown => Login::UnknownCpe,
            KeyStatus::Revoked => Login::Revoked,
            KeyStatus::Active(_) => match self.passwords.get(cpe_id) {
                Some(hash) if verify_password(password, hash) => Login::Admitted,
                _ => Login::BadPassword,
            },
        }
    }
}

/// The outcome of a CPE's broker login ([`KeyCache::check_login`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// Enrolled, active, right password.
    Admitted,
    /// No such CPE.
    UnknownCpe,
    /// The CPE is revoked.
    Revoked,
    /// Wrong or missing password (or none issued).
    BadPassword,
    /// The controller is starting: nobody is subscribed yet to store what a router would
    /// publish, so routers are asked to come back.
    NotReady,
}

impl Login {
    /// The label of a refusal in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Login::Admitted => "admitted",
            Login::UnknownCpe => "unknown_cpe",
            Login::Revoked => "revoked",
            Login::BadPassword => "bad_password",
            Login::NotReady => "not_ready",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enroll_revoke_and_refuse_bad_input() {
        for (url, _guard) in crate::store::db::tests::backends() {
            let mut store = Store::open_url(&url).unwrap();
            let key = keys::generate().verifying_key();
            let text = keys::public_key_text(&key);
            add(&mut store, "cpe-1", &text, Some("flat 3"), 10).unwrap();
            assert_eq!(
                KeyCache::load(&store).unwrap().status("cpe-1"),
                KeyStatus::Active(key)
            );
            assert!(matches!(
                add(&mut store, "a/b", &text, None, 10),
                Err(RegistryError::InvalidId(_))
            ));
            assert!(matches!(
                add(&mut store, "cpe-2", "ed25519:00", None, 10),
                Err(RegistryError::Key(_))
            ));
            let first = KeyCache::load(&store).unwrap();
            assert_eq!(first.check_login("cpe-1", b"wrong"), Login::BadPassword);
            assert_eq!(first.check_login("cpe-1", b""), Login::BadPassword);
            assert_eq!(first.check_login("cpe-9", b"x"), Login::UnknownCpe);
            let enrolled = add(&mut store, "cpe-1", &text, None, 11).unwrap();
            let cache = KeyCache::load(&store).unwrap();
            assert_eq!(
                cache.check_login("cpe-1", enrolled.broker_password.as_bytes()),
                Login::Admitted
            );
            // Rotation: the old password stops working, the new one works.
            let new = rotate_password(&mut store, "cpe-1").unwrap();
            let cache = KeyCache::load(&store).unwrap();
            assert_eq!(
                cache.check_login("cpe-1", enrolled.broker_password.as_bytes()),
                Login::BadPassword
            );
            assert_eq!(cache.check_login("cpe-1", new.as_bytes()), Login::Admitted);
            assert!(mosquitto_password_file(&store)
                .unwrap()
                .starts_with("cpe-1:$7$101$"));
            assert!(matches!(
                rotate_password(&mut store, "cpe-9"),
                Err(RegistryError::NotEnrolled(_))
            ));
            revoke(&mut store, "cpe-1", 20).unwrap();
            let cache = KeyCache::load(&store).unwrap();
            assert_eq!(cache.check_login("cpe-1", new.as_bytes()), Login::Revoked);
            assert_eq!(mosquitto_password_file(&store).unwrap(), "");
            let cache = KeyCache::load(&store).unwrap();
            assert_eq!(cache.status("cpe-1"), KeyStatus::Revoked);
            assert_eq!(cache.status("cpe-9"), KeyStatus::Unknown);
            assert!(matches!(
                revoke(&mut store, "cpe-9", 20),
                Err(RegistryError::NotEnrolled(_))
            ));
        }
    }

    /// The hash format is mosquitto's own: a line `mosquitto_passwd -b FILE cpe-1
    /// hunter2hunter2` wrote (mosquitto 2.0.11) verifies, and one made here has its shape.
    #[test]
    fn hashes_are_mosquitto_compatible() {
        let from_mosquitto = "$7$101$DqwnO0WoY3Cvhkfq$wkX3l5U0ZGzkkNS0/DIdAxymZ9p42OyAKEky7/2WeAlIoz7PLYPjr9O0nPQG3cnYINGLiR1NTOpAVNDUgBVv+g==";
        assert!(verify_password(b"hunter2hunter2", from_mosquitto));
        assert!(!verify_password(b"hunter2hunter3", from_mosquitto));
        assert!(!verify_password(b"", from_mosquitto));
        let salt = hex::decode("0eac273b45a86370af8647ea").unwrap();
        assert_eq!(hash_password("hunter2hunter2", &salt), from_mosquitto);
        for bad in [
            "",
            "$7$",
            "$6$101$AA==$AA==",
            "$7$0$AA==$AA==",
            "$7$999999999$AA==$AA==",
            "$7$101$!!$AA==",
        ] {
            assert!(!verify_password(b"x", bad), "{bad}");
        }
    }
}
