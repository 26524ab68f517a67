//! The SQLite backend of [`Db`](super::Db): one rusqlite connection behind a mutex, in WAL
//! mode with the same settings as [`Store`](crate::store::Store). Write transactions begin
//! `IMMEDIATE`, so two writers (two handles on one file) queue on the busy timeout instead of
//! failing when a read lock would have to be upgraded.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::Connection;

use super::{DbError, Param, Row, Value};

/// How long a writer waits for another connection's write transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per connection (rusqlite's LRU cache).
const STATEMENT_CACHE: usize = 128;

pub(super) struct SqliteDb {
    conn: Mutex<Connection>,
    /// The file, `None` for an in-memory database.
    path: Option<PathBuf>,
}

impl SqliteDb {
    pub(super) fn open(path: Option<&Path>) -> Result<SqliteDb, DbError> {
        let conn = match path {
            Some(p) => Connection::open(p)?,
            None => Connection::open_in_memory()?,
        };
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        set_wal(&conn)?;
        // As the Store: the ingest acknowledges only durable messages, power loss included.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(SqliteDb {
            conn: Mutex::new(conn),
            path: path.map(Path::to_path_buf),
        })
    }

    /// The connection. A panic while it was held left no transaction open (rusqlite rolls
    /// back when a transaction is dropped, unwinding included), so a poisoned lock is
    /// taken over rather than refused.
    pub(super) fn lock(&self) -> Result<MutexGuard<'_, Connection>, DbError> {
        Ok(self.conn.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub(super) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// Switches the file to WAL. On a new file that other processes open at the same moment the
/// switch can meet a lock that SQLite does not wait for (no busy handler on that path), so
/// it is tried again for up to [`BUSY_TIMEOUT`].
fn set_wal(conn: &Connection) -> Result<(), DbError> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return Ok(other?),
        }
    }
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Param::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Param::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(v)),
            Param::U64(v) => ToSqlOutput::Borrowed(ValueRef::Integer(
                i64::try_from(v)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
            )),
            Param::Real(v) => ToSqlOutput::Borrowed(ValueRef::Real(v)),
            Param::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Param::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn bound<'a>(params: &[Param<'a>]) -> Result<Vec<Param<'a>>, DbError> {
    params.iter().map(|p| p.bindable()).collect()
}

/// Runs one statement; the number of rows it changed.
pub(super) fn execute(conn: &Connection, sql: &str, params: &[Param<'_>]) -> Result<u64, DbError> {
    let params = bound(params)?;
    let n = conn
        .prepare_cached(sql)?
        .execute(rusqlite::params_from_iter(params.iter()))?;
    Ok(n as u64)
}

/// Runs one query (or a statement with `RETURNING`); its rows.
pub(super) fn query(
    conn: &Connection,
    sql: &str,
    params: &[Param<'_>],
) -> Result<Vec<Row>, DbError> {
    let params = bound(params)?;
    let mut stmt = conn.prepare_cached(sql)?;
    let columns = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(columns);
        for i in 0..columns {
            values.push(match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Real(v) => Value::Real(v),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
            });
        }
        out.push(Row(values));
    }
    Ok(out)
}
