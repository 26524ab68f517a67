//! The NOC's people: named operators with a role, each signing in with their own secret.
//!
//! | role | may |
//! |---|---|
//! | `viewer` | read every NOC page and the JSON API |
//! | `operator` | also decide release requests, look up abuse reports, send device commands |
//! | `admin` | also publish policy and push campaigns |
//!
//! Operators and CPEs are managed with the controller's command line, which only whoever
//! runs the controller can use. Secrets are shown once and stored as SHA-256 hashes, like
//! subscriber tokens. A revoked operator's sessions end at their next request. The single
//! `web.operator_token_file` of earlier versions keeps working as an admin named
//! [`TOKEN_OPERATOR`], so an upgrade locks nobody out. The rows are kept by
//! [`crate::store::operators`].

use crate::households::{hash_secret, new_secret};
use crate::store::db::{DbError, Sql};
use crate::store::operators as stored;

/// The name the audit log and the NOC give whoever signs in with the operator token file.
pub const TOKEN_OPERATOR: &str = "operator-token";

/// What an operator may do; each level includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Reads.
    Viewer,
    /// Decides releases, abuse reports and device commands.
    Operator,
    /// Publishes policy and pushes campaigns.
    Admin,
}

impl Level {
    /// The name used in the database, the command line and the NOC.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Viewer => "viewer",
            Level::Operator => "operator",
            Level::Admin => "admin",
        }
    }

    /// Parses a role name.
    ///
    /// # Errors
    /// [`OperatorError::Invalid`] for anything but `viewer`, `operator` or `admin`.
    pub fn parse(s: &str) -> Result<Level, OperatorError> {
        match s {
            "viewer" => Ok(Level::Viewer),
            "operator" => Ok(Level::Operator),
            "admin" => Ok(Level::Admin),
            _ => Err(OperatorError::Invalid(
                "role must be viewer, operator or admin",
            )),
        }
    }
}

/// Managing operators failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The database reported an error.
    #[error("database: {0}")]
    Database(#[from] DbError),
    /// A name or role is not acceptable.
    #[error("{0}")]
    Invalid(&'static str),
    /// An operator of that name exists already.
    #[error("an operator named {0:?} exists already")]
    Exists(String),
    /// No active operator of that name.
    #[error("no active operator named {0:?}")]
    NotFound(String),
}

/// One operator as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// Row id.
    pub id: i64,
    /// Unique name (shown in the NOC and the audit log).
    pub name: String,
    /// What they may do.
    pub level: Level,
    /// When added (Unix ms).
    pub created_ms: u64,
    /// When revoked, if they were.
    pub revoked_ms: Option<u64>,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
        && name != TOKEN_OPERATOR
}

/// Adds an operator and returns their secret (shown once).
///
/// # Errors
/// [`OperatorError::Invalid`] for a bad name, [`OperatorError::Exists`] for a taken one.
pub fn add(db: &impl Sql, name: &str, level: Level, now_ms: u64) -> Result<String, OperatorError> {
    if !valid_name(name) {
        return Err(OperatorError::Invalid(
            "operator name must be 1 to 64 letters, digits or . _ - @ (and not operator-token)",
        ));
    }
    let secret = new_secret("op_");
    if !stored::insert(db, name, level, &hash_secret(&secret), now_ms)? {
        return Err(OperatorError::Exists(name.to_string()));
    }
    Ok(secret)
}

/// Revokes an operator: their secret stops working and their sessions end.
///
/// # Errors
/// [`OperatorError::NotFound`] when no active operator has that name.
pub fn revoke(db: &impl Sql, name: &str, now_ms: u64) -> Result<(), OperatorError> {
    if !stored::revoke(db, name, now_ms)? {
        return Err(OperatorError::NotFound(name.to_string()));
    }
    Ok(())
}

/// Every operator, active and revoked, by name.
///
/// # Errors
/// [`OperatorError::Database`].
pub fn list(db: &impl Sql) -> Result<Vec<Operator>, OperatorError> {
    Ok(stored::list(db)?)
}

/// The active operator a secret belongs to.
///
/// # Errors
/// [`OperatorError::Database`].
pub fn authenticate(db: &impl Sql, secret: &str) -> Result<Option<Operator>, OperatorError> {
    if secret.is_empty() || secret.len() > 200 {
        return Ok(None);
    }
    Ok(stored::by_secret_hash(db, &hash_secret(secret))?)
}

/// The active operator with row id `id` (a session's owner; `None` once revoked).
///
/// # Errors
/// [`OperatorError::Database`].
pub fn active(db: &impl Sql, id: i64) -> Result<Option<Operator>, OperatorError> {
    Ok(stored::active(db, id)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::tests::backends;
    use crate::store::Store;

    #[test]
    fn operators_sign_in_with_their_own_secret_until_revoked() {
        for (url, _g) in backends() {
            let store = Store::open_url(&url).unwrap();
            let db = &**store.db();
            let alice = add(db, "alice", Level::Admin, 1_000).unwrap();
            let bob = add(db, "bob@noc", Level::Viewer, 2_000).unwrap();
            assert!(alice.starts_with("op_") && alice != bob);
            let a = authenticate(db, &alice).unwrap().unwrap();
            assert_eq!((a.name.as_str(), a.level), ("alice", Level::Admin));
            assert_eq!(a.created_ms, 1_000);
            assert_eq!(
                authenticate(db, &bob).unwrap().unwrap().level,
                Level::Viewer
            );
            assert_eq!(authenticate(db, "op_wrong").unwrap(), None);
            assert_eq!(authenticate(db, "").unwrap(), None);
            assert!(matches!(
                add(db, "alice", Level::Viewer, 3_000),
                Err(OperatorError::Exists(_))
            ));
            for bad in [
                "",
                "with space",
                "operator-token",
                "ünïcode",
                &"x".repeat(65),
            ] {
                assert!(
                    matches!(
                        add(db, bad, Level::Viewer, 0),
                        Err(OperatorError::Invalid(_))
                    ),
                    "{bad:?}"
                );
            }
            // Their sessions end too (`store::operators`).
            revoke(db, "alice", 4_000).unwrap();
            assert_eq!(authenticate(db, &alice).unwrap(), None, "{url}");
            assert_eq!(active(db, a.id).unwrap(), None);
            assert!(matches!(
                revoke(db, "alice", 5_000),
                Err(OperatorError::NotFound(_))
            ));
            // The name stays taken by the revoked operator.
            assert!(matches!(
                add(db, "alice", Level::Admin, 6_000),
                Err(OperatorError::Exists(_))
            ));
            let all = list(db).unwrap();
            assert_eq!(all.len(), 2);
            assert_eq!(all[0].revoked_ms, Some(4_000));
            assert_eq!(all[1].revoked_ms, None);
        }
        assert!(Level::Admin > Level::Operator && Level::Operator > Level::Viewer);
        assert!(Level::parse("root").is_err());
    }
}
