//! CPE enrollment: which routers may speak, with which public key.
//!
//! `smtpguard-controller cpe add ID PUBLIC_KEY` enrolls a router with the key its agent
//! printed (`smtpguard-agent keygen`); `cpe revoke ID` makes every later message of it a
//! [`Rejection::RevokedKey`](smtpguard_protocol::Rejection::RevokedKey). The ingest keeps
//! a [`KeyCache`] and reloads it when another process changed the database.

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

/// Enrolls `cpe_id` with `public_key` (text as printed by `smtpguard-agent keygen`).
/// Enrolling again replaces the key and lifts a revocation.
///
/// # Errors
/// [`RegistryError::InvalidId`], [`RegistryError::Key`] (bad or weak key), or a store error.
pub fn add(
    store: &mut Store,
    cpe_id: &str,
    public_key: &str,
    label: Option<&str>,
    now_ms: u64,
) -> Result<CpeRecord, RegistryError> {
    if !is_valid_cpe_id(cpe_id) {
        return Err(RegistryError::InvalidId(cpe_id.chars().take(80).collect()));
    }
    let key = keys::parse_public_key(public_key)?;
    let text = keys::public_key_text(&key);
    store.upsert_cpe(cpe_id, &text, label, now_ms)?;
    store
        .cpe(cpe_id)?
        .ok_or_else(|| RegistryError::NotEnrolled(cpe_id.to_string()))
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

/// What the ingest knows about every enrolled key.
#[derive(Debug, Default, Clone)]
pub struct KeyCache {
    keys: HashMap<String, KeyStatus>,
}

impl KeyCache {
    /// Loads every enrolled CPE. A stored key that does not parse (a hand-edited database)
    /// counts as unknown and is logged.
    ///
    /// # Errors
    /// A store error.
    pub fn load(store: &Store) -> Result<KeyCache, StoreError> {
        let mut keys = HashMap::new();
        for cpe in store.cpes()? {
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
        Ok(KeyCache { keys })
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

    /// Whether `cpe_id` is enrolled and not revoked (the embedded broker's login check).
    pub fn is_active(&self, cpe_id: &str) -> bool {
        matches!(self.status(cpe_id), KeyStatus::Active(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enroll_revoke_and_refuse_bad_input() {
        let mut store = Store::open_in_memory().unwrap();
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
        revoke(&mut store, "cpe-1", 20).unwrap();
        let cache = KeyCache::load(&store).unwrap();
        assert_eq!(cache.status("cpe-1"), KeyStatus::Revoked);
        assert_eq!(cache.status("cpe-9"), KeyStatus::Unknown);
        assert!(matches!(
            revoke(&mut store, "cpe-9", 20),
            Err(RegistryError::NotEnrolled(_))
        ));
    }
}
