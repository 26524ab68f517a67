//! Backend-neutral SQL: one [`Db`] handle over SQLite (rusqlite, the embedded default) or
//! PostgreSQL (the `postgres` client with a small pool), chosen by URL.
//!
//! # Layout
//! - [`Db`]: opened from a URL ([`Db::open`]); [`Db::execute`], [`Db::query`],
//!   [`Db::query_opt`] and [`Db::transaction`], whose closure gets a [`Tx`] with the same
//!   three calls. Everything is synchronous and blocking, as the [`Store`](super::Store) is
//!   today: call it from the ingest's worker thread or from `spawn_blocking`.
//! - [`value`]: our own parameter and value types ([`Param`], [`Value`], [`Row`]) so callers
//!   never see either driver's; `u64` is stored as a signed 64-bit integer with a checked
//!   conversion.
//! - [`placeholders`]: SQL is written once with `?1`-style placeholders; PostgreSQL gets them
//!   as `$1` (translated once per statement and connection, with the prepared statement).
//! - [`migrate`]: one ordered list of migrations, each with its SQLite and its PostgreSQL DDL,
//!   the version kept in a `schema_version` table, applied under a PostgreSQL advisory lock
//!   so that replicas starting together do not race.
//! - `sqlite` and `pg`: the two backends.
//!
//! # Writing SQL for both
//! Write the common dialect: `INSERT .. ON CONFLICT (..) DO NOTHING/UPDATE`, `RETURNING`,
//! `CASE` instead of SQLite's two-argument `max()`/PostgreSQL's `GREATEST`, `COALESCE`,
//! `CAST(?1 AS TEXT)` where PostgreSQL cannot infer a parameter's type (`?1 IS NULL`), and
//! `CAST(SUM(x) AS BIGINT)` (PostgreSQL's `SUM` of integers is `NUMERIC`, which is not read).
//! Statements that return rows (`RETURNING`) go through `query`, not `execute`. Where the
//! dialects really differ, branch on [`Db::backend`] / [`Tx::backend`].
//!
//! # Moving the rest of the controller's SQL onto `Db`
//! Today [`Store`](super::Store) owns a rusqlite connection and other modules reach it with
//! `Store::conn()` (web handlers, households, operators, audit, notify, rollout, abuse,
//! campaigns). The port goes module by module: each function that takes `&Connection` or
//! `&Transaction` takes `&Db` or `&mut Tx` instead, its SQL stays as it is where it is
//! already common (most is) and gets the few rewrites above where it is not, and its
//! `rusqlite::params!`/`query_row` become [`db_params!`](crate::db_params)/[`Db::query_opt`]
//! with [`Row::get`]. `Store` then holds a `Db` opened from `database = "..."`, its write
//! path (`write_batch`) runs in one [`Db::transaction`] with [`super::arbiter`] deciding
//! each message first and the body tables written only for the new ones, and
//! `Store::conn()` goes away once nothing calls it. The SQLite migration list of
//! `store::schema` and the PostgreSQL list of `store::schema::POSTGRES` become one list
//! of [`Migration`]s (SQLite text = today's, PostgreSQL text = the same tables with
//! `BIGINT`/`BIGSERIAL`/`BYTEA`/`DOUBLE PRECISION`), SQLite keeping `user_version` for its
//! existing files.

pub mod migrate;
pub mod placeholders;
pub mod value;

mod pg;

pub(crate) use pg::close_off_runtime;
mod sqlite;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use migrate::Migration;
pub use value::{FromValue, Param, Row, Value};

/// Connections a PostgreSQL [`Db`] opens at most (in use and idle), unless told otherwise.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// How many times [`Db::transaction`] runs a PostgreSQL transaction that the server aborted
/// for a deadlock or a serialization failure.
const TRANSACTION_ATTEMPTS: u32 = 5;

/// A database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite reported an error.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL (or the connection to it) reported an error.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),
    /// The database URL is not one we open.
    #[error("database URL: {0}")]
    Url(String),
    /// A `u64` too large for the database's signed 64-bit integers.
    #[error("{0} does not fit a 64-bit signed integer column")]
    OutOfRange(String),
    /// A column is missing or its value does not fit the type asked for.
    #[error("column {index}: {detail}")]
    Column {
        /// The column, from 0.
        index: usize,
        /// What is wrong.
        detail: String,
    },
    /// SQL whose placeholders cannot be translated for PostgreSQL.
    #[error("SQL placeholders: {0}")]
    Placeholder(String),
    /// Every pooled PostgreSQL connection stayed busy for this long.
    #[error("no free PostgreSQL connection within {0:?}")]
    PoolTimeout(Duration),
    /// A thread panicked while holding the pool's bookkeeping.
    #[error("the connection pool was poisoned by a panic")]
    Poisoned,
    /// The database was migrated by a newer build.
    #[error("database schema version {found} is newer than this build's {supported}")]
    TooNew {
        /// The database's version.
        found: u64,
        /// The number of migrations this build knows.
        supported: u64,
    },
    /// A lease's lock file could not be opened or locked.
    #[error("lease lock file {path}: {source}")]
    LockFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl DbError {
    /// Whether running the same transaction again may succeed (PostgreSQL aborted it for a
    /// deadlock or a serialization failure).
    pub fn is_retryable(&self) -> bool {
        match self {
            DbError::Postgres(e) => pg::is_retryable(e),
            _ => false,
        }
    }
}

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, a file or in memory.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

enum Inner {
    Sqlite(sqlite::SqliteDb),
    Postgres(pg::Pool),
}

/// A database handle, shareable between threads (`Arc<Db>`). SQLite: one connection behind a
/// mutex; PostgreSQL: a bounded pool.
pub struct Db {
    inner: Inner,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

/// Where a database URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Postgres(String),
    SqliteFile(PathBuf),
    SqliteMemory,
}

fn parse_url(url: &str) -> Result<Target, DbError> {
    let url = url.trim();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Target::Postgres(url.to_string()));
    }
    if url == "sqlite::memory:" {
        return Ok(Target::SqliteMemory);
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if path.is_empty() {
        return Err(DbError::Url(
            "empty: give postgres://..., sqlite:PATH or a file path".into(),
        ));
    }
    if path.contains("://") {
        return Err(DbError::Url(format!(
            "{} is neither postgres:// nor sqlite:",
            url.split("://").next().unwrap_or_default()
        )));
    }
    Ok(Target::SqliteFile(PathBuf::from(path)))
}

impl Db {
    /// Opens `url`: `postgres://user@host:port/db` (or `postgresql://`), `sqlite:PATH`,
    /// `sqlite::memory:`, or a plain file path (SQLite). A PostgreSQL pool opens up to
    /// [`DEFAULT_POOL_SIZE`] connections and checks the first one now.
    ///
    /// # Errors
    /// [`DbError::Url`] for a URL of another kind; the backend's error when the database
    /// cannot be opened or reached.
    pub fn open(url: &str) -> Result<Db, DbError> {
        Self::open_with_pool(url, DEFAULT_POOL_SIZE)
    }

    /// As [`Db::open`] with at most `pool_size` PostgreSQL connections (ignored by SQLite).
    ///
    /// # Errors
    /// As [`Db::open`].
    pub fn open_with_pool(url: &str, pool_size: usize) -> Result<Db, DbError> {
        let inner = match parse_url(url)? {
            Target::Postgres(url) => {
                let pool = pg::Pool::new(&url, pool_size)?;
                // Fail now, with the server's reason, rather than at the first query.
                pg::blocking(|| pool.get().map(drop))?;
                Inner::Postgres(pool)
            }
            Target::SqliteFile(path) => Inner::Sqlite(sqlite::SqliteDb::open(Some(&path))?),
            Target::SqliteMemory => Inner::Sqlite(sqlite::SqliteDb::open(None)?),
        };
        Ok(Db { inner })
    }

    /// Opens a SQLite file (`None`: a private in-memory database).
    ///
    /// # Errors
    /// [`DbError::Sqlite`].
    pub fn open_sqlite(path: Option<&Path>) -> Result<Db, DbError> {
        Ok(Db {
            inner: Inner::Sqlite(sqlite::SqliteDb::open(path)?),
        })
    }

    /// The SQLite connection itself, for code not yet moved onto `Db` (issue 12's port);
    /// [`DbError::Url`] on PostgreSQL.
    ///
    /// # Errors
    /// [`DbError::Url`] when this is not SQLite.
    pub fn sqlite_connection(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, rusqlite::Connection>, DbError> {
        match &self.inner {
            Inner::Sqlite(db) => db.lock(),
            Inner::Postgres(_) => Err(DbError::Url(
                "this part of the controller runs on SQLite only".into(),
            )),
        }
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Sqlite(_) => Backend::Sqlite,
            Inner::Postgres(_) => Backend::Postgres,
        }
    }

    /// Runs one statement outside a transaction; the number of rows it changed.
    ///
    /// # Errors
    /// [`DbError`].
    pub fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, DbError> {
        match &self.inner {
            Inner::Sqlite(db) => sqlite::execute(&*db.lock()?, sql, params),
            Inner::Postgres(pool) => pg::blocking(|| {
                let mut conn = pool.get()?;
                let pg::PgConn { client, statements } = &mut *conn;
                pg::execute(client, statements, sql, params)
            }),
        }
    }

    /// Runs one query; all its rows.
    ///
    /// # Errors
    /// [`DbError`].
    pub fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        match &self.inner {
            Inner::Sqlite(db) => sqlite::query(&*db.lock()?, sql, params),
            Inner::Postgres(pool) => pg::blocking(|| {
                let mut conn = pool.get()?;
                let pg::PgConn { client, statements } = &mut *conn;
                pg::query(client, statements, sql, params)
            }),
        }
    }

    /// Runs one query; its first row, if any.
    ///
    /// # Errors
    /// [`DbError`].
    pub fn query_opt(&self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Runs `f` in a transaction and commits when it returns `Ok`; an `Err` (or a panic)
    /// rolls everything back. On SQLite the transaction takes the write lock at its start
    /// (`BEGIN IMMEDIATE`). On PostgreSQL (`READ COMMITTED`) a transaction the server
    /// aborted for a deadlock or a serialization failure runs again, up to a few times, so
    /// `f` may run more than once: it must not have effects outside the transaction.
    ///
    /// # Errors
    /// `f`'s error, or [`DbError`] (converted) from beginning or committing.
    pub fn transaction<T, E: From<DbError>>(
        &self,
        f: impl FnMut(&mut Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        match self.inner {
            Inner::Postgres(_) => pg::blocking_here(|| self.run_transaction(f)),
            Inner::Sqlite(_) => self.run_transaction(f),
        }
    }

    fn run_transaction<T, E: From<DbError>>(
        &self,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match &self.inner {
                Inner::Sqlite(db) => {
                    let mut conn = db.lock()?;
                    let tx = conn
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .map_err(DbError::from)?;
                    let mut tx = Tx {
                        inner: TxInner::Sqlite(tx),
                        retryable: Cell::new(false),
                    };
                    let value = f(&mut tx)?;
                    tx.commit()?;
                    return Ok(value);
                }
                Inner::Postgres(pool) => {
                    let mut conn = pool.get()?;
                    let pg::PgConn { client, statements } = &mut *conn;
                    let tx = client.transaction().map_err(DbError::from)?;
                    let mut tx = Tx {
                        inner: TxInner::Postgres {
                            tx: RefCell::new(tx),
                            statements: RefCell::new(statements),
                        },
                        retryable: Cell::new(false),
                    };
                    match f(&mut tx) {
                        Ok(value) => match tx.commit() {
                            Ok(()) => return Ok(value),
                            Err(e) if e.is_retryable() && attempt < TRANSACTION_ATTEMPTS => {
                                tracing::debug!(error = %e, attempt, "transaction runs again");
                            }
                            Err(e) => return Err(e.into()),
                        },
                        Err(e) => {
                            let retry = tx.retryable.get();
                            drop(tx);
                            if !(retry && attempt < TRANSACTION_ATTEMPTS) {
                                return Err(e);
                            }
                            tracing::debug!(
                                attempt,
                                "transaction aborted by the server runs again"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Applies the migrations of `list` the database does not have yet; returns its version
    /// (the number of migrations applied, ever). See [`migrate`].
    ///
    /// # Errors
    /// [`DbError::TooNew`] when the database has more than `list`; the backend's error when a
    /// migration fails (that migration is rolled back, the earlier ones stay).
    pub fn migrate(&self, list: &[Migration]) -> Result<u64, DbError> {
        match &self.inner {
            Inner::Sqlite(db) => migrate::sqlite(&mut *db.lock()?, list),
            Inner::Postgres(pool) => {
                pg::blocking(|| migrate::postgres(&mut pool.get()?.client, list))
            }
        }
    }

    /// What a lease on this database locks: a dedicated PostgreSQL connection, a lock file
    /// beside the SQLite file, or nothing for an in-memory database.
    pub(crate) fn lease_target(&self) -> LeaseTarget<'_> {
        match &self.inner {
            Inner::Postgres(pool) => LeaseTarget::Postgres(Box::new(move || pool.connect())),
            Inner::Sqlite(db) => match db.path() {
                Some(p) => LeaseTarget::File(p),
                None => LeaseTarget::Process,
            },
        }
    }
}

/// See [`Db::lease_target`].
pub(crate) enum LeaseTarget<'a> {
    /// Opens a connection of its own.
    Postgres(Box<dyn Fn() -> Result<postgres::Client, DbError> + 'a>),
    /// The SQLite file.
    File(&'a Path),
    /// An in-memory database: only this process can see it.
    Process,
}

enum TxInner<'a> {
    Sqlite(rusqlite::Transaction<'a>),
    Postgres {
        tx: RefCell<postgres::Transaction<'a>>,
        statements: RefCell<&'a mut HashMap<String, postgres::Statement>>,
    },
}

/// An open transaction (see [`Db::transaction`]).
pub struct Tx<'a> {
    inner: TxInner<'a>,
    /// A statement failed in a way that running the whole transaction again may fix.
    retryable: Cell<bool>,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl Tx<'_> {
    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self.inner {
            TxInner::Sqlite(_) => Backend::Sqlite,
            TxInner::Postgres { .. } => Backend::Postgres,
        }
    }

    fn note<T>(&self, result: Result<T, DbError>) -> Result<T, DbError> {
        if let Err(e) = &result {
            if e.is_retryable() {
                self.retryable.set(true);
            }
        }
        result
    }

    /// Runs one statement; the number of rows it changed.
    ///
    /// # Errors
    /// [`DbError`].
    pub fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, DbError> {
        let result = match &self.inner {
            TxInner::Sqlite(tx) => sqlite::execute(tx, sql, params),
            TxInner::Postgres { tx, statements } => pg::execute(
                &mut *tx.borrow_mut(),
                &mut statements.borrow_mut(),
                sql,
                params,
            ),
        };
        self.note(result)
    }

    /// Runs one query (or a statement with `RETURNING`); all its rows.
    ///
    /// # Errors
    /// [`DbError`].
    pub fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        let result = match &self.inner {
            TxInner::Sqlite(tx) => sqlite::query(tx, sql, params),
            TxInner::Postgres { tx, statements } => pg::query(
                &mut *tx.borrow_mut(),
                &mut statements.borrow_mut(),
                sql,
                params,
            ),
        };
        self.note(result)
    }

    /// Runs one query; its first row, if any.
    ///
    /// # Errors
    /// [`DbError`].
    pub fn query_opt(&self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    fn commit(self) -> Result<(), DbError> {
        match self.inner {
            TxInner::Sqlite(tx) => Ok(tx.commit()?),
            TxInner::Postgres { tx, .. } => Ok(tx.into_inner().commit()?),
        }
    }
}

/// What runs SQL: a [`Db`] (each statement on its own) or a [`Tx`] (inside the
/// transaction). Code that reads or writes the same way in both cases takes `&impl Sql`, as
/// rusqlite code takes a `&Connection` that may be a transaction.
pub trait Sql {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Runs one statement; the number of rows it changed.
    ///
    /// # Errors
    /// [`DbError`].
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, DbError>;

    /// Runs one query (or a statement with `RETURNING`); all its rows.
    ///
    /// # Errors
    /// [`DbError`].
    fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError>;

    /// Runs one query; its first row, if any.
    ///
    /// # Errors
    /// [`DbError`].
    fn query_opt(&self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The first column of the first row, which the query always has (`COUNT(*)`, ...).
    ///
    /// # Errors
    /// [`DbError::Column`] when there is no row; as [`Row::get`] otherwise.
    fn query_one<T: FromValue>(&self, sql: &str, params: &[Param<'_>]) -> Result<T, DbError>
    where
        Self: Sized,
    {
        match self.query_opt(sql, params)? {
            Some(row) => row.get(0),
            None => Err(DbError::Column {
                index: 0,
                detail: "the query returned no row".into(),
            }),
        }
    }
}

impl Sql for Db {
    fn backend(&self) -> Backend {
        Db::backend(self)
    }
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, DbError> {
        Db::execute(self, sql, params)
    }
    fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        Db::query(self, sql, params)
    }
}

/// A shared handle runs SQL as what it holds (`Arc<Db>`, as the web state and the CLI keep it).
impl<T: Sql> Sql for std::sync::Arc<T> {
    fn backend(&self) -> Backend {
        (**self).backend()
    }
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, DbError> {
        (**self).execute(sql, params)
    }
    fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        (**self).query(sql, params)
    }
}

impl Sql for Tx<'_> {
    fn backend(&self) -> Backend {
        Tx::backend(self)
    }
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, DbError> {
        Tx::execute(self, sql, params)
    }
    fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        Tx::query(self, sql, params)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The two backends every store test runs on: a fresh SQLite file (kept alive by the
    /// returned guard) and a fresh database on the test binary's PostgreSQL cluster.
    pub(crate) fn backends() -> Vec<(String, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = format!("sqlite:{}", dir.path().join("db.sqlite").display());
        vec![(sqlite, Some(dir)), (smtpguard_pgtest::database(), None)]
    }

    #[test]
    fn urls_choose_the_backend() {
        assert_eq!(
            parse_url("postgres://u@h:5/db").unwrap(),
            Target::Postgres("postgres://u@h:5/db".into())
        );
        assert_eq!(
            parse_url("sqlite:/var/lib/x.db").unwrap(),
            Target::SqliteFile("/var/lib/x.db".into())
        );
        assert_eq!(
            parse_url("sqlite:///var/lib/x.db").unwrap(),
            Target::SqliteFile("/var/lib/x.db".into())
        );
        assert_eq!(
            parse_url("/var/lib/x.db").unwrap(),
            Target::SqliteFile("/var/lib/x.db".into())
        );
        assert_eq!(parse_url("sqlite::memory:").unwrap(), Target::SqliteMemory);
        assert!(matches!(parse_url("mysql://h/db"), Err(DbError::Url(_))));
        assert!(matches!(parse_url(" "), Err(DbError::Url(_))));
    }

    #[test]
    fn values_round_trip_the_same_on_both_backends() {
        for (url, _guard) in backends() {
            let db = Db::open(&url).unwrap();
            let ddl = match db.backend() {
                Backend::Sqlite => {
                    "CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n INTEGER, small INTEGER)"
                }
                Backend::Postgres => {
                    "CREATE TABLE t (i BIGINT, r DOUBLE PRECISION, s TEXT, b BYTEA, n BIGINT, small INTEGER)"
                }
            };
            db.execute(ddl, &[]).unwrap();
            let text = String::from("it's ?1 'quoted'");
            let none: Option<u64> = None;
            let n = db
                .execute(
                    "INSERT INTO t (i, r, s, b, n, small) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    crate::db_params![i64::MAX as u64, 0.25, &text, &[0u8, 255][..], none, 7u32],
                )
                .unwrap();
            assert_eq!(n, 1, "{url}");
            let row = db
                .query_opt(
                    "SELECT i, r, s, b, n, small FROM t WHERE s = ?1 AND 'lit ?2' = 'lit ?2'",
                    crate::db_params![&text],
                )
                .unwrap()
                .unwrap();
            assert_eq!(row.get::<u64>(0).unwrap(), i64::MAX as u64, "{url}");
            assert_eq!(row.get::<f64>(1).unwrap(), 0.25);
            assert_eq!(row.get::<String>(2).unwrap(), text);
            assert_eq!(row.get::<Vec<u8>>(3).unwrap(), vec![0, 255]);
            assert_eq!(row.get::<Option<u64>>(4).unwrap(), None);
            assert_eq!(row.get::<u32>(5).unwrap(), 7);
            // A u64 beyond i64 is refused, not wrapped.
            let err = db
                .execute("INSERT INTO t (i) VALUES (?1)", crate::db_params![u64::MAX])
                .unwrap_err();
            assert!(matches!(err, DbError::OutOfRange(_)), "{url}: {err}");
            assert!(db
                .query_opt("SELECT i FROM t WHERE s = 'none'", &[])
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn a_failed_transaction_leaves_nothing_and_a_committed_one_everything() {
        for (url, _guard) in backends() {
            let db = Db::open(&url).unwrap();
            db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)", &[])
                .unwrap();
            let err = db
                .transaction(|tx| {
                    tx.execute("INSERT INTO t (k) VALUES (?1)", crate::db_params!["a"])?;
                    tx.execute("INSERT INTO t (k) VALUES (?1)", crate::db_params!["a"])
                })
                .unwrap_err();
            assert!(
                matches!(err, DbError::Sqlite(_) | DbError::Postgres(_)),
                "{err}"
            );
            let count = |db: &Db| {
                db.query_opt("SELECT COUNT(*) FROM t", &[])
                    .unwrap()
                    .unwrap()
                    .get::<i64>(0)
                    .unwrap()
            };
            assert_eq!(count(&db), 0, "{url}: the first insert was rolled back");
            let inserted = db
                .transaction(|tx| {
                    let mut rows = 0;
                    for k in ["a", "b", "c"] {
                        rows += tx.execute(
                            "INSERT INTO t (k) VALUES (?1) ON CONFLICT (k) DO NOTHING",
                            crate::db_params![k],
                        )?;
                    }
                    Ok::<_, DbError>(rows)
                })
                .unwrap();
            assert_eq!(inserted, 3);
            assert_eq!(count(&db), 3, "{url}");
        }
    }

    #[test]
    fn a_postgres_transaction_aborted_for_a_deadlock_runs_again() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let url = smtpguard_pgtest::database();
        let setup = Db::open(&url).unwrap();
        setup
            .execute(
                "CREATE TABLE t (k TEXT PRIMARY KEY, n BIGINT NOT NULL)",
                &[],
            )
            .unwrap();
        setup
            .execute("INSERT INTO t (k, n) VALUES ('a', 0), ('b', 0)", &[])
            .unwrap();
        let barrier = std::sync::Barrier::new(2);
        let attempts = [AtomicU32::new(0), AtomicU32::new(0)];
        let (barrier, attempts, url) = (&barrier, &attempts, &url);
        std::thread::scope(|s| {
            for (who, (first, second)) in [("a", "b"), ("b", "a")].into_iter().enumerate() {
                s.spawn(move || {
                    let db = Db::open(url).unwrap();
                    db.transaction(|tx| {
                        let attempt = attempts[who].fetch_add(1, Ordering::SeqCst) + 1;
                        let bump = "UPDATE t SET n = n + 1 WHERE k = ?1";
                        tx.execute(bump, crate::db_params![first])?;
                        if attempt == 1 {
                            // Each holds one row and then wants the other's: a deadlock,
                            // which the server breaks by aborting one of the two.
                            barrier.wait();
                        }
                        tx.execute(bump, crate::db_params![second])?;
                        Ok::<_, DbError>(())
                    })
                    .unwrap();
                });
            }
        });
        let total: u32 = attempts.iter().map(|a| a.load(Ordering::SeqCst)).sum();
        // At least one ran again. A retry can deadlock once more: the aborted transaction,
        // run again at once, may lock its first row before the survivor (woken by the
        // abort) takes it, and the two are crossed as before.
        assert!(total >= 3, "one of the two ran again: {total} attempts");
        let rows = setup.query("SELECT n FROM t ORDER BY k", &[]).unwrap();
        let counts: Vec<i64> = rows.iter().map(|r| r.get(0).unwrap()).collect();
        assert_eq!(counts, vec![2, 2], "both committed exactly once");
    }

    /// Async code that calls the database directly (without `spawn_blocking`) works on
    /// PostgreSQL too: opening, statements and (on a multi-threaded runtime) transactions.
    #[test]
    fn postgres_calls_from_async_tasks_do_not_panic() {
        let url = smtpguard_pgtest::database();
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let u = url.clone();
        let n = multi
            .block_on(async move {
                tokio::spawn(async move {
                    let db = Db::open(&u).unwrap();
                    db.execute("CREATE TABLE t (k BIGINT)", &[]).unwrap();
                    db.transaction(|tx| {
                        tx.execute("INSERT INTO t (k) VALUES (1), (2)", &[])?;
                        Ok::<_, DbError>(())
                    })
                    .unwrap();
                    db.query("SELECT k FROM t", &[]).unwrap().len()
                })
                .await
            })
            .unwrap();
        assert_eq!(n, 2);
        let single = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let n = single.block_on(async {
            let db = Db::open(&url).unwrap();
            db.execute("INSERT INTO t (k) VALUES (3)", &[]).unwrap();
            db.query("SELECT k FROM t", &[]).unwrap().len()
        });
        assert_eq!(n, 3);
    }

    #[test]
    fn the_last_postgres_handle_can_be_dropped_on_an_async_task() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let db = Db::open(&smtpguard_pgtest::database()).unwrap();
        assert_eq!(db.query("SELECT 1", &[]).unwrap().len(), 1);
        // An idle pooled connection is closed when the handle goes, on a runtime thread.
        rt.block_on(async move { tokio::spawn(async move { drop(db) }).await })
            .unwrap();
    }

    #[test]
    fn blocking_calls_work_from_spawn_blocking_inside_a_tokio_runtime() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        for (url, _guard) in backends() {
            let db = std::sync::Arc::new(Db::open(&url).unwrap());
            let answers = rt.block_on(async {
                let mut tasks = Vec::new();
                for i in 0..8i64 {
                    let db = db.clone();
                    tasks.push(tokio::task::spawn_blocking(move || {
                        db.query_opt("SELECT ?1 + 1", crate::db_params![i])
                            .map(|r| r.map(|r| r.get::<i64>(0)))
                    }));
                }
                let mut answers = Vec::new();
                for t in tasks {
                    answers.push(t.await.unwrap().unwrap().unwrap().unwrap());
                }
                answers
            });
            assert_eq!(answers, (1..=8).collect::<Vec<i64>>(), "{url}");
        }
    }
}
