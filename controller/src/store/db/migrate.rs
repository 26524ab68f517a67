//! Migrations on both backends: one ordered list, each entry with its SQLite and its
//! PostgreSQL text (the types differ: `INTEGER`/`BIGINT`, `INTEGER PRIMARY KEY`/`BIGSERIAL`,
//! `BLOB`/`BYTEA`, `REAL`/`DOUBLE PRECISION`). The number applied is kept in the one-row
//! table `schema_version`; each migration runs in its own transaction with the version bump,
//! so a database is never left half-migrated. Never edit a released migration: append.
//!
//! PostgreSQL: several replicas may start at once. Each migration's transaction first takes
//! a transaction-scoped advisory lock ([`MIGRATION_LOCK`]), then reads the version: the
//! second replica waits for the first one's commit and then finds nothing left to do.
//! SQLite: the transaction begins `IMMEDIATE`, which serializes the same way.

use postgres::Client;
use rusqlite::Connection;

use super::DbError;

/// One migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// What it does, for logs.
    pub name: &'static str,
    /// Its SQL for SQLite (several statements allowed).
    pub sqlite: &'static str,
    /// Its SQL for PostgreSQL (several statements allowed).
    pub postgres: &'static str,
}

/// The advisory lock key migrations run under ("smtpguard" in ASCII, as a number): one key
/// for the whole database, whichever migration list is being applied.
pub const MIGRATION_LOCK: i64 = 0x0073_6d74_7067_7561;

const VERSION_TABLE_SQLITE: &str =
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)";
const VERSION_TABLE_POSTGRES: &str =
    "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)";

fn too_new(found: u64, list: &[Migration]) -> Result<(), DbError> {
    let supported = list.len() as u64;
    if found > supported {
        return Err(DbError::TooNew { found, supported });
    }
    Ok(())
}

pub(super) fn sqlite(conn: &mut Connection, list: &[Migration]) -> Result<u64, DbError> {
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(VERSION_TABLE_SQLITE)?;
        let version: Option<i64> =
            tx.query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))?;
        let version = u64::try_from(version.unwrap_or(0)).unwrap_or(0);
        too_new(version, list)?;
        let Some(next) = list.get(version as usize) else {
            tx.commit()?;
            return Ok(version);
        };
        tracing::info!(version = version + 1, name = next.name, "migrating SQLite");
        tx.execute_batch(next.sqlite)?;
        tx.execute("DELETE FROM schema_version", [])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [version as i64 + 1],
        )?;
        tx.commit()?;
    }
}

pub(super) fn postgres(client: &mut Client, list: &[Migration]) -> Result<u64, DbError> {
    loop {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute(VERSION_TABLE_POSTGRES)?;
        let version: Option<i64> = tx
            .query_one("SELECT MAX(version) FROM schema_version", &[])?
            .get(0);
        let version = u64::try_from(version.unwrap_or(0)).unwrap_or(0);
        too_new(version, list)?;
        let Some(next) = list.get(version as usize) else {
            tx.commit()?;
            return Ok(version);
        };
        tracing::info!(
            version = version + 1,
            name = next.name,
            "migrating PostgreSQL"
        );
        tx.batch_execute(next.postgres)?;
        tx.execute("DELETE FROM schema_version", &[])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&(version as i64 + 1)],
        )?;
        tx.commit()?;
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::backends;
    use super::super::Db;
    use super::*;

    const LIST: &[Migration] = &[
        Migration {
            name: "a",
            sqlite: "CREATE TABLE a (id INTEGER PRIMARY KEY, wire BLOB NOT NULL)",
            postgres: "CREATE TABLE a (id BIGSERIAL PRIMARY KEY, wire BYTEA NOT NULL)",
        },
        Migration {
            name: "b",
            sqlite: "CREATE TABLE b (x REAL); INSERT INTO b (x) VALUES (1.5)",
            postgres: "CREATE TABLE b (x DOUBLE PRECISION); INSERT INTO b (x) VALUES (1.5)",
        },
    ];

    #[test]
    fn migrations_apply_once_in_order_and_a_newer_database_is_refused() {
        for (url, _guard) in backends() {
            let db = Db::open(&url).unwrap();
            assert_eq!(db.migrate(&LIST[..1]).unwrap(), 1, "{url}");
            assert_eq!(db.migrate(LIST).unwrap(), 2);
            assert_eq!(db.migrate(LIST).unwrap(), 2, "nothing runs twice");
            let rows = db.query("SELECT x FROM b", &[]).unwrap();
            assert_eq!(rows.len(), 1, "{url}: b's insert ran once");
            let err = Db::open(&url).unwrap().migrate(&LIST[..1]).unwrap_err();
            assert!(
                matches!(
                    err,
                    DbError::TooNew {
                        found: 2,
                        supported: 1
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn replicas_starting_together_migrate_once() {
        for (url, _guard) in backends() {
            let barrier = std::sync::Barrier::new(4);
            let versions: Vec<u64> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            let db = Db::open(&url).unwrap();
                            barrier.wait();
                            db.migrate(LIST).unwrap()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(versions, vec![2; 4], "{url}");
            let db = Db::open(&url).unwrap();
            assert_eq!(db.query("SELECT x FROM b", &[]).unwrap().len(), 1, "{url}");
        }
    }
}
