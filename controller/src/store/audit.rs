//! The audit log as stored (`audit_log`): appended to, read newest first, never changed
//! (the schema's triggers refuse it). [`crate::audit`] keeps what an entry holds and how
//! long its fields may be, and calls these.

use super::db::{Backend, DbError, Sql};
use super::to_i64;
use crate::audit::{Entry, Filter};
use crate::db_params;

/// Appends an entry.
///
/// # Errors
/// [`DbError`].
pub fn insert(
    db: &impl Sql,
    at_ms: u64,
    actor: &str,
    action: &str,
    target: &str,
    outcome: &str,
    detail: &str,
) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO audit_log (at_ms, actor, action, target, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        db_params![to_i64(at_ms), actor, action, target, outcome, detail],
    )?;
    Ok(())
}

/// Entries matching `filter`, newest first, at most `limit`. A target filter matches
/// targets containing its text exactly (no wildcards, the same case rules on both
/// backends).
///
/// # Errors
/// [`DbError`].
pub fn list(db: &impl Sql, filter: &Filter, limit: i64) -> Result<Vec<Entry>, DbError> {
    let sql = match db.backend() {
        Backend::Sqlite => {
            "SELECT id, at_ms, actor, action, target, outcome, detail FROM audit_log
             WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR action = ?2)
               AND (?3 IS NULL OR instr(target, ?3) > 0) AND (?4 IS NULL OR id < ?4)
             ORDER BY id DESC LIMIT ?5"
        }
        Backend::Postgres => {
            "SELECT id, at_ms, actor, action, target, outcome, detail FROM audit_log
             WHERE (CAST(?1 AS TEXT) IS NULL OR actor = ?1)
               AND (CAST(?2 AS TEXT) IS NULL OR action = ?2)
               AND (CAST(?3 AS TEXT) IS NULL OR strpos(target, ?3) > 0)
               AND (CAST(?4 AS BIGINT) IS NULL OR id < ?4)
             ORDER BY id DESC LIMIT ?5"
        }
    };
    db.query(
        sql,
        db_params![
            filter.actor.as_deref(),
            filter.action.as_deref(),
            filter.target.as_deref(),
            filter.before_id,
            limit
        ],
    )?
    .iter()
    .map(|r| {
        Ok(Entry {
            id: r.get(0)?,
            at_ms: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            outcome: r.get(5)?,
            detail: r.get(6)?,
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::tests::backends;
    use crate::store::Store;

    /// Append-only, whatever the backend: every change or deletion is refused and the log
    /// reads the same after.
    #[test]
    fn entries_are_never_changed_or_deleted() {
        for (url, _guard) in backends() {
            let store = Store::open_url(&url).unwrap();
            let db = &**store.db();
            for (i, actor) in ["alice", "bob", "cli"].into_iter().enumerate() {
                insert(db, 1_000 + i as u64, actor, "command", "cpe-1", "ok", "x").unwrap();
            }
            let all = list(db, &Filter::default(), 50).unwrap();
            assert_eq!(all.len(), 3, "{url}");
            for sql in [
                "UPDATE audit_log SET actor = 'mallory'",
                "UPDATE audit_log SET detail = '' WHERE actor = 'cli'",
                "DELETE FROM audit_log",
                "DELETE FROM audit_log WHERE actor = 'alice'",
            ] {
                assert!(db.execute(sql, db_params![]).is_err(), "{url}: {sql}");
            }
            if db.backend() == Backend::Postgres {
                // Row triggers do not see a TRUNCATE; a statement trigger does.
                assert!(db.execute("TRUNCATE audit_log", db_params![]).is_err());
            }
            assert_eq!(list(db, &Filter::default(), 50).unwrap(), all, "{url}");
        }
    }
}
