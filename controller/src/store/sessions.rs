//! Web sign-in sessions (table `web_sessions`), kept in the database so that any replica
//! answers for any session. A session is stored under the SHA-256 hash of its id (the
//! caller hashes; the id itself is only ever in the cookie) with its role, whom it stands
//! for, its CSRF token and when it expires.

use super::db::Sql;
use super::{to_i64, StoreError};
use crate::db_params;

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `noc` or `household`.
    pub role: String,
    /// The household of a `household` session.
    pub household_id: Option<i64>,
    /// The operator of a `noc` session (`None`: the operator token's holder).
    pub operator_id: Option<i64>,
    /// The session's CSRF token.
    pub csrf: String,
}

/// The unexpired session stored under `session_hash` at `now_ms`, if any.
///
/// # Errors
/// [`StoreError::Db`].
pub fn find(db: &impl Sql, session_hash: &str, now_ms: u64) -> Result<Option<Session>, StoreError> {
    let Some(row) = db.query_opt(
        "SELECT role, household_id, operator_id, csrf FROM web_sessions
         WHERE session_hash = ?1 AND expires_ms > ?2",
        db_params![session_hash, to_i64(now_ms)],
    )?
    else {
        return Ok(None);
    };
    Ok(Some(Session {
        role: row.get(0)?,
        household_id: row.get(1)?,
        operator_id: row.get(2)?,
        csrf: row.get(3)?,
    }))
}

/// Stores `session` under `session_hash` from `now_ms` until `expires_ms`, removing the
/// sessions expired by `now_ms` on the way (run it in the sign-in's transaction).
///
/// # Errors
/// [`StoreError::Db`].
pub fn start(
    db: &impl Sql,
    session_hash: &str,
    session: &Session,
    now_ms: u64,
    expires_ms: u64,
) -> Result<(), StoreError> {
    let now = to_i64(now_ms);
    db.execute(
        "DELETE FROM web_sessions WHERE expires_ms <= ?1",
        db_params![now],
    )?;
    db.execute(
        "INSERT INTO web_sessions (session_hash, role, household_id, operator_id, csrf,
            created_ms, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        db_params![
            session_hash,
            &session.role,
            session.household_id,
            session.operator_id,
            &session.csrf,
            now,
            to_i64(expires_ms)
        ],
    )?;
    Ok(())
}

/// Ends the session stored under `session_hash` (nothing when there is none).
///
/// # Errors
/// [`StoreError::Db`].
pub fn end(db: &impl Sql, session_hash: &str) -> Result<(), StoreError> {
    db.execute(
        "DELETE FROM web_sessions WHERE session_hash = ?1",
        db_params![session_hash],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::tests::backends;
    use crate::store::Store;

    #[test]
    fn sessions_expire_and_end_on_both_backends() {
        for (url, _dir) in backends() {
            let store = Store::open_url(&url).unwrap();
            let db = &**store.db();
            let noc = Session {
                role: "noc".into(),
                household_id: None,
                operator_id: None,
                csrf: "c_1".into(),
            };
            start(db, "h1", &noc, 1_000, 2_000).unwrap();
            assert_eq!(find(db, "h1", 1_999).unwrap().as_ref(), Some(&noc), "{url}");
            assert_eq!(find(db, "h1", 2_000).unwrap(), None, "expired: {url}");
            assert_eq!(find(db, "h2", 1_500).unwrap(), None, "{url}");
            // A later sign-in removes the expired session; ending one removes it at once.
            let household = Session {
                role: "household".into(),
                household_id: Some(7),
                csrf: "c_2".into(),
                ..noc.clone()
            };
            start(db, "h2", &household, 3_000, 9_000).unwrap();
            let left: i64 = db
                .query_one("SELECT COUNT(*) FROM web_sessions", &[])
                .unwrap();
            assert_eq!(left, 1, "{url}");
            assert_eq!(find(db, "h2", 3_000).unwrap(), Some(household), "{url}");
            end(db, "h2").unwrap();
            assert_eq!(find(db, "h2", 3_000).unwrap(), None, "{url}");
        }
    }
}
