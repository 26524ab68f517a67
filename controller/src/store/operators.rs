//! The NOC's operators as stored: name, role, the hash of their secret, when added and
//! revoked. [`crate::operators`] keeps the rules (names, roles, secrets) and calls these.

use super::db::{DbError, Row, Sql};
use super::to_i64;
use crate::db_params;
use crate::operators::{Level, Operator};

/// Records an operator. Returns `false` when the name is taken (of two adding the same
/// name at once, one inserts nothing).
///
/// # Errors
/// [`DbError`].
pub fn insert(
    db: &impl Sql,
    name: &str,
    level: Level,
    secret_hash: &str,
    now_ms: u64,
) -> Result<bool, DbError> {
    let added = db.execute(
        "INSERT INTO operators (name, role, secret_hash, created_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO NOTHING",
        db_params![name, level.as_str(), secret_hash, to_i64(now_ms)],
    )?;
    Ok(added > 0)
}

/// Revokes the active operator `name` and ends their web sessions. Returns `false` when no
/// active operator has that name.
///
/// # Errors
/// [`DbError`].
pub fn revoke(db: &impl Sql, name: &str, now_ms: u64) -> Result<bool, DbError> {
    let n = db.execute(
        "UPDATE operators SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
        db_params![name, to_i64(now_ms)],
    )?;
    if n == 0 {
        return Ok(false);
    }
    db.execute(
        "DELETE FROM web_sessions WHERE operator_id = (SELECT id FROM operators WHERE name = ?1)",
        db_params![name],
    )?;
    Ok(true)
}

/// An operator from a row of `id, name, role, created_ms, revoked_ms`; `None` for a role
/// this build does not know.
fn operator_of(r: &Row) -> Result<Option<Operator>, DbError> {
    let Ok(level) = Level::parse(&r.get::<String>(2)?) else {
        return Ok(None);
    };
    Ok(Some(Operator {
        id: r.get(0)?,
        name: r.get(1)?,
        level,
        created_ms: r.get(3)?,
        revoked_ms: r.get(4)?,
    }))
}

/// Every operator, active and revoked, by name.
///
/// # Errors
/// [`DbError`].
pub fn list(db: &impl Sql) -> Result<Vec<Operator>, DbError> {
    let rows = db.query(
        "SELECT id, name, role, created_ms, revoked_ms FROM operators ORDER BY name",
        db_params![],
    )?;
    let mut out = Vec::new();
    for r in &rows {
        out.extend(operator_of(r)?);
    }
    Ok(out)
}

/// The active operator whose secret has this hash.
///
/// # Errors
/// [`DbError`].
pub fn by_secret_hash(db: &impl Sql, secret_hash: &str) -> Result<Option<Operator>, DbError> {
    match db.query_opt(
        "SELECT id, name, role, created_ms, revoked_ms FROM operators
         WHERE secret_hash = ?1 AND revoked_ms IS NULL",
        db_params![secret_hash],
    )? {
        Some(r) => operator_of(&r),
        None => Ok(None),
    }
}

/// The active operator with row id `id`.
///
/// # Errors
/// [`DbError`].
pub fn active(db: &impl Sql, id: i64) -> Result<Option<Operator>, DbError> {
    match db.query_opt(
        "SELECT id, name, role, created_ms, revoked_ms FROM operators
         WHERE id = ?1 AND revoked_ms IS NULL",
        db_params![id],
    )? {
        Some(r) => operator_of(&r),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::tests::backends;
    use crate::store::Store;

    /// A revoked operator's sessions end with the revocation; another operator's stay.
    #[test]
    fn revoking_an_operator_ends_their_sessions() {
        for (url, _guard) in backends() {
            let store = Store::open_url(&url).unwrap();
            let db = &**store.db();
            assert!(insert(db, "alice", Level::Admin, "h-alice", 1).unwrap());
            assert!(insert(db, "bob", Level::Viewer, "h-bob", 1).unwrap());
            assert!(!insert(db, "alice", Level::Viewer, "h-other", 2).unwrap());
            // A session of each, as `web::auth` keeps them.
            for (session, name) in [("s-alice", "alice"), ("s-bob", "bob")] {
                let id = by_secret_hash(db, &format!("h-{name}"))
                    .unwrap()
                    .unwrap()
                    .id;
                db.execute(
                    "INSERT INTO web_sessions (session_hash, role, operator_id, csrf,
                        created_ms, expires_ms) VALUES (?1, 'noc', ?2, 'c', 0, 9000000000000)",
                    db_params![session, id],
                )
                .unwrap();
            }
            assert!(revoke(db, "alice", 4_000).unwrap());
            assert!(!revoke(db, "alice", 5_000).unwrap(), "{url}");
            let left: Vec<String> = db
                .query("SELECT session_hash FROM web_sessions", &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0).unwrap())
                .collect();
            assert_eq!(left, ["s-bob"], "{url}");
        }
    }
}
