//! The PostgreSQL backend of [`Db`](super::Db): the `postgres` crate (a synchronous façade
//! over tokio-postgres; each connection drives its socket on its own small runtime), a
//! bounded pool of connections, and per connection a cache of prepared statements keyed by
//! the SQL as written (so `?N` → `$N` is translated once per statement and connection).
//!
//! The calls block: like rusqlite they belong on a blocking thread (the ingest's worker, or
//! `spawn_blocking` in the web server), never directly on an async task.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres::error::SqlState;
use postgres::types::{FromSql, IsNull, ToSql, Type};
use postgres::{Client, GenericClient, NoTls, Statement};

use super::{placeholders, DbError, Param, Row, Value};

/// How long a caller waits for a free connection when the pool is at its size.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per connection; the cache starts over when full (statements
/// are written in the code, so this only bounds SQL built at run time).
const STATEMENT_CACHE: usize = 256;

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// One connection and its prepared statements.
pub(super) struct PgConn {
    pub(super) client: Client,
    pub(super) statements: HashMap<String, Statement>,
}

struct Slots {
    idle: Vec<PgConn>,
    /// Connections open, idle or checked out.
    open: usize,
}

/// A bounded pool of connections to one database.
pub(super) struct Pool {
    config: postgres::Config,
    max: usize,
    slots: Mutex<Slots>,
    freed: Condvar,
}

impl Pool {
    pub(super) fn new(url: &str, max: usize) -> Result<Pool, DbError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| DbError::Url(format!("{e} in the PostgreSQL URL")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("smtpguard-controller");
        }
        Ok(Pool {
            config,
            max: max.max(1),
            slots: Mutex::new(Slots {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        })
    }

    /// A connection of its own, outside the pool (a lease holds one for as long as it leads).
    pub(super) fn connect(&self) -> Result<Client, DbError> {
        Ok(self.config.connect(NoTls)?)
    }

    /// An idle connection, a new one while below the pool's size, or the first one given
    /// back within [`CHECKOUT_TIMEOUT`].
    pub(super) fn get(&self) -> Result<Pooled<'_>, DbError> {
        let deadline = Instant::now() + CHECKOUT_TIMEOUT;
        let mut slots = self.slots.lock().map_err(|_| DbError::Poisoned)?;
        loop {
            if let Some(conn) = slots.idle.pop() {
                if conn.client.is_closed() {
                    slots.open -= 1;
                    continue;
                }
                return Ok(Pooled {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if slots.open < self.max {
                slots.open += 1;
                drop(slots);
                return match self.connect() {
                    Ok(client) => Ok(Pooled {
                        pool: self,
                        conn: Some(PgConn {
                            client,
                            statements: HashMap::new(),
                        }),
                    }),
                    Err(e) => {
                        if let Ok(mut slots) = self.slots.lock() {
                            slots.open -= 1;
                        }
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DbError::PoolTimeout(CHECKOUT_TIMEOUT));
            }
            slots = self
                .freed
                .wait_timeout(slots, deadline - now)
                .map_err(|_| DbError::Poisoned)?
                .0;
        }
    }

    fn put_back(&self, conn: PgConn) {
        if let Ok(mut slots) = self.slots.lock() {
            if conn.client.is_closed() {
                slots.open -= 1;
            } else {
                slots.idle.push(conn);
            }
        }
        self.freed.notify_one();
    }
}

/// A checked-out connection; goes back to the pool when dropped (or is closed for good when
/// the server or network ended it).
pub(super) struct Pooled<'a> {
    pool: &'a Pool,
    conn: Option<PgConn>,
}

impl Deref for Pooled<'_> {
    type Target = PgConn;
    fn deref(&self) -> &PgConn {
        // Always Some until drop.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut PgConn {
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put_back(conn);
        }
    }
}

impl Drop for Pool {
    /// Closes the idle connections. The `postgres` client closes its socket by running its
    /// own small runtime, which panics on a thread that is driving a tokio runtime (the last
    /// handle of a web server or a job dropped on an async task), so there they are closed
    /// on a thread of their own.
    fn drop(&mut self) {
        let idle = match self.slots.get_mut() {
            Ok(slots) => std::mem::take(&mut slots.idle),
            Err(poisoned) => std::mem::take(&mut poisoned.into_inner().idle),
        };
        if !idle.is_empty() {
            close_off_runtime("pg-close", move || drop(idle));
        }
    }
}

/// Runs `close`, which blocks on the `postgres` client (closing a connection, a last
/// statement), now on a plain thread, or on a thread of its own when this one is part of a
/// tokio runtime, where that blocking would panic (a handle dropped by an async task, a
/// task aborted at shutdown).
pub(crate) fn close_off_runtime(thread: &str, close: impl FnOnce() + Send + 'static) {
    if tokio::runtime::Handle::try_current().is_err() {
        return close();
    }
    if let Err(e) = std::thread::Builder::new().name(thread.into()).spawn(close) {
        tracing::warn!(error = %e, "could not close PostgreSQL connections");
    }
}

/// Runs `f`, which blocks on the `postgres` client (it drives each connection on a small
/// runtime of its own and waits with `block_on`), where that cannot panic. A thread that
/// drives a tokio runtime must not block that way: on a multi-threaded runtime the call
/// runs in `block_in_place` (the runtime moves its other tasks off this thread meanwhile);
/// on a current-thread runtime it runs on a short-lived thread of its own. Blocking
/// threads (`spawn_blocking`, plain threads) run it as it is.
pub(super) fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::CurrentThread) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
        Ok(_) => tokio::task::block_in_place(f),
        Err(_) => f(),
    }
}

/// As [`blocking`] for work that cannot move to another thread (a transaction's closure):
/// `block_in_place` on a multi-threaded runtime, as it is elsewhere. On a current-thread
/// runtime's own thread the `postgres` client cannot block at all: call the database from
/// `spawn_blocking` there.
pub(super) fn blocking_here<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::CurrentThread) | Err(_) => f(),
        Ok(_) => tokio::task::block_in_place(f),
    }
}

/// Whether a failed statement may succeed when its transaction runs again: a serialization
/// failure or a deadlock the server broke by aborting us.
pub(super) fn is_retryable(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// Whether `sql` has an optional filter, `CAST(?N AS T) IS NULL OR column = ?N`: such a
/// statement is prepared for each call and so planned for its values. Kept prepared,
/// PostgreSQL switches it to a generic plan after five runs, and a generic plan must serve
/// the NULL case too, so it cannot use the column's index: the API's look-up of one
/// router's devices became a scan of every device (14 ms instead of well under one, in the
/// 10,000-agent load run).
fn plans_per_call(sql: &str) -> bool {
    sql.contains(") IS NULL OR ")
}

fn statement<C: GenericClient>(
    client: &mut C,
    cache: &mut HashMap<String, Statement>,
    sql: &str,
) -> Result<Statement, DbError> {
    if let Some(s) = cache.get(sql) {
        return Ok(s.clone());
    }
    let translated = placeholders::to_postgres(sql)?;
    let prepared = client.prepare(&translated)?;
    if plans_per_call(sql) {
        return Ok(prepared);
    }
    if cache.len() >= STATEMENT_CACHE {
        cache.clear();
    }
    cache.insert(sql.to_string(), prepared.clone());
    Ok(prepared)
}

fn bound<'a>(params: &[Param<'a>]) -> Result<Vec<Param<'a>>, DbError> {
    params.iter().map(|p| p.bindable()).collect()
}

fn refs<'p>(params: &'p [Param<'_>]) -> Vec<&'p (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// Runs one statement; the number of rows it changed.
pub(super) fn execute<C: GenericClient>(
    client: &mut C,
    cache: &mut HashMap<String, Statement>,
    sql: &str,
    params: &[Param<'_>],
) -> Result<u64, DbError> {
    let stmt = statement(client, cache, sql)?;
    let params = bound(params)?;
    Ok(client.execute(&stmt, &refs(&params))?)
}

/// Runs one query (or a statement with `RETURNING`); its rows.
pub(super) fn query<C: GenericClient>(
    client: &mut C,
    cache: &mut HashMap<String, Statement>,
    sql: &str,
    params: &[Param<'_>],
) -> Result<Vec<Row>, DbError> {
    let stmt = statement(client, cache, sql)?;
    let params = bound(params)?;
    let rows = client.query(&stmt, &refs(&params))?;
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.try_get::<_, Value>(i).map_err(DbError::from))
                .collect::<Result<Vec<_>, _>>()
                .map(Row)
        })
        .collect()
}

fn is_text(ty: &Type) -> bool {
    [
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
    ]
    .contains(ty)
}

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let mismatch = |what: &str| -> BoxError { format!("cannot bind {what} to {ty}").into() };
        match *self {
            Param::Null => Ok(IsNull::Yes),
            Param::U64(v) => Param::Int(i64::try_from(v)?).to_sql(ty, out),
            Param::Int(v) => {
                if *ty == Type::INT8 {
                    v.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(v)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(v)?.to_sql(ty, out)
                } else if *ty == Type::FLOAT8 {
                    (v as f64).to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (v != 0).to_sql(ty, out)
                } else {
                    Err(mismatch("an integer"))
                }
            }
            Param::Real(v) => {
                if *ty == Type::FLOAT8 {
                    v.to_sql(ty, out)
                } else if *ty == Type::FLOAT4 {
                    (v as f32).to_sql(ty, out)
                } else {
                    Err(mismatch("a float"))
                }
            }
            Param::Text(s) if is_text(ty) => s.to_sql(ty, out),
            Param::Text(_) => Err(mismatch("text")),
            Param::Bytes(b) if *ty == Type::BYTEA => b.to_sql(ty, out),
            Param::Bytes(_) => Err(mismatch("bytes")),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in `to_sql`, which knows which variant it holds.
        true
    }

    fn to_sql_checked(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        self.to_sql(ty, out)
    }
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Value, BoxError> {
        Ok(if *ty == Type::INT8 {
            Value::Int(i64::from_sql(ty, raw)?)
        } else if *ty == Type::INT4 {
            Value::Int(i64::from(i32::from_sql(ty, raw)?))
        } else if *ty == Type::INT2 {
            Value::Int(i64::from(i16::from_sql(ty, raw)?))
        } else if *ty == Type::BOOL {
            Value::Int(i64::from(bool::from_sql(ty, raw)?))
        } else if *ty == Type::FLOAT8 {
            Value::Real(f64::from_sql(ty, raw)?)
        } else if *ty == Type::FLOAT4 {
            Value::Real(f64::from(f32::from_sql(ty, raw)?))
        } else if *ty == Type::BYTEA {
            Value::Bytes(Vec::<u8>::from_sql(ty, raw)?)
        } else if is_text(ty) {
            Value::Text(String::from_sql(ty, raw)?)
        } else {
            return Err(format!(
                "column type {ty} is not read by the store (cast it, e.g. SUM(..)::BIGINT)"
            )
            .into());
        })
    }

    fn from_sql_null(_: &Type) -> Result<Value, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::INT8,
            Type::INT4,
            Type::INT2,
            Type::BOOL,
            Type::FLOAT8,
            Type::FLOAT4,
            Type::BYTEA,
        ]
        .contains(ty)
            || is_text(ty)
    }
}

#[cfg(test)]
mod tests {
    use super::plans_per_call;

    #[test]
    fn only_statements_with_an_optional_parameter_filter_are_planned_per_call() {
        assert!(plans_per_call(
            "SELECT mac FROM devices d WHERE (CAST(?1 AS TEXT) IS NULL OR d.cpe_id = ?1)"
        ));
        assert!(plans_per_call(
            "SELECT id FROM senders s WHERE CAST(?1 AS BIGINT) IS NULL OR s.household_id = ?1"
        ));
        assert!(!plans_per_call(
            "SELECT action FROM devices WHERE (action_until_ms IS NULL OR action_until_ms > ?1)"
        ));
        assert!(!plans_per_call("SELECT mac FROM devices WHERE cpe_id = ?1"));
    }
}
