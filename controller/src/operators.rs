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
//! [`TOKEN_OPERATOR`], so an upgrade locks nobody out.

use rusqlite::{params, Connection, OptionalExtension};

use crate::households::{hash_secret, new_secret};

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
    /// SQLite reported an error.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
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

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
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
pub fn add(
    conn: &Connection,
    name: &str,
    level: Level,
    now_ms: u64,
) -> Result<String, OperatorError> {
    if !valid_name(name) {
        return Err(OperatorError::Invalid(
            "operator name must be 1 to 64 letters, digits or . _ - @ (and not operator-token)",
        ));
    }
    let taken: Option<i64> = conn
        .query_row("SELECT id FROM operators WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    if taken.is_some() {
        return Err(OperatorError::Exists(name.to_string()));
    }
    let secret = new_secret("op_");
    conn.execute(
        "INSERT INTO operators (name, role, secret_hash, created_ms) VALUES (?1, ?2, ?3, ?4)",
        params![name, level.as_str(), hash_secret(&secret), to_i64(now_ms)],
    )?;
    Ok(secret)
}

/// Revokes an operator: their secret stops working and their sessions end.
///
/// # Errors
/// [`OperatorError::NotFound`] when no active operator has that name.
pub fn revoke(conn: &Connection, name: &str, now_ms: u64) -> Result<(), OperatorError> {
    let n = conn.execute(
        "UPDATE operators SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
        params![name, to_i64(now_ms)],
    )?;
    if n == 0 {
        return Err(OperatorError::NotFound(name.to_string()));
    }
    conn.execute(
        "DELETE FROM web_sessions WHERE operator_id = (SELECT id FROM operators WHERE name = ?1)",
        [name],
    )?;
    Ok(())
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, String, i64, Option<i64>)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn operator_of(
    (id, name, role, created, revoked): (i64, String, String, i64, Option<i64>),
) -> Option<Operator> {
    Some(Operator {
        id,
        name,
        level: Level::parse(&role).ok()?,
        created_ms: u64::try_from(created).unwrap_or(0),
        revoked_ms: revoked.map(|t| u64::try_from(t).unwrap_or(0)),
    })
}

/// Every operator, active and revoked, by name.
///
/// # Errors
/// [`OperatorError::Sqlite`].
pub fn list(conn: &Connection) -> Result<Vec<Operator>, OperatorError> {
    let mut stmt =
        conn.prepare("SELECT id, name, role, created_ms, revoked_ms FROM operators ORDER BY name")?;
    let rows = stmt.query_map([], row)?;
    let mut out = Vec::new();
    for r in rows {
        out.extend(operator_of(r?));
    }
    Ok(out)
}

/// The active operator a secret belongs to.
///
/// # Errors
/// [`OperatorError::Sqlite`].
pub fn authenticate(conn: &Connection, secret: &str) -> Result<Option<Operator>, OperatorError> {
    if secret.is_empty() || secret.len() > 200 {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT id, name, role, created_ms, revoked_ms FROM operators
             WHERE secret_hash = ?1 AND revoked_ms IS NULL",
            [hash_secret(secret)],
            row,
        )
        .optional()?
        .and_then(operator_of))
}

/// The active operator with row id `id` (a session's owner; `None` once revoked).
///
/// # Errors
/// [`OperatorError::Sqlite`].
pub fn active(conn: &Connection, id: i64) -> Result<Option<Operator>, OperatorError> {
    Ok(conn
        .query_row(
            "SELECT id, name, role, created_ms, revoked_ms FROM operators
             WHERE id = ?1 AND revoked_ms IS NULL",
            [id],
            row,
        )
        .optional()?
        .and_then(operator_of))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::schema::migrate(&mut conn).unwrap();
        conn
    }

    #[test]
    fn operators_sign_in_with_their_own_secret_until_revoked() {
        let conn = db();
        let alice = add(&conn, "alice", Level::Admin, 1_000).unwrap();
        let bob = add(&conn, "bob@noc", Level::Viewer, 2_000).unwrap();
        assert!(alice.starts_with("op_") && alice != bob);
        let a = authenticate(&conn, &alice).unwrap().unwrap();
        assert_eq!((a.name.as_str(), a.level), ("alice", Level::Admin));
        assert_eq!(
            authenticate(&conn, &bob).unwrap().unwrap().level,
            Level::Viewer
        );
        assert_eq!(authenticate(&conn, "op_wrong").unwrap(), None);
        assert!(matches!(
            add(&conn, "alice", Level::Viewer, 3_000),
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
                    add(&conn, bad, Level::Viewer, 0),
                    Err(OperatorError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
        revoke(&conn, "alice", 4_000).unwrap();
        assert_eq!(authenticate(&conn, &alice).unwrap(), None);
        assert_eq!(active(&conn, a.id).unwrap(), None);
        assert!(matches!(
            revoke(&conn, "alice", 5_000),
            Err(OperatorError::NotFound(_))
        ));
        let all = list(&conn).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].revoked_ms, Some(4_000));
        assert!(Level::Admin > Level::Operator && Level::Operator > Level::Viewer);
        assert!(Level::parse("root").is_err());
    }
}
