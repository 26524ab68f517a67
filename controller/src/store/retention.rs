//! Retention: history older than its configured window is deleted, a bounded batch at a
//! time, so the tables that grow with the fleet stop growing (`[retention]` in the config,
//! run by `serve` at start and every `interval_minutes`).
//!
//! What goes, by window (see [`Windows`]):
//! - telemetry: `telemetry` rows (by `window_start_ms`) with their `device_reports`, and the
//!   raw signed `messages` of every kind but alerts (by `received_at_ms`);
//! - connections: `connections` (by `at_ms`) and `public_ips` periods (by `last_seen_ms`),
//!   what maps an abuse report to a device;
//! - alerts: `alerts` (by `at_ms`) and their raw `messages`;
//! - verdict history: `verdict_changes` (by `at_ms`).
//!
//! What stays whatever its age: each device's current state (`devices`,
//! `cpe_state`, the registry), each device's newest alert and newest verdict change, the
//! audit log (append-only by design), policies, commands and the product tables.
//!
//! # Replays stay refused
//! The ingest refuses a replayed message in the database ([`super::arbiter`]): by the
//! `(cpe_id, seq)` key of `messages`, and, below the window, by the highest number kept per
//! CPE in `cpe_seq`, which retention never deletes. So a raw message is deleted only when
//! both hold: its CPE has a newer non-state message (so the window still covers every
//! older number), and it was received longer ago than
//! the freshness limit plus the allowed clock skew ([`Windows::replay_guard_ms`]), so a
//! replay of it is refused as stale before its number is even looked at.
//!
//! # Never blocking the ingest for long
//! Each batch is one short transaction (on SQLite `IMMEDIATE`) deleting at most
//! [`BATCH_ROWS`] rows (`DELETE ... WHERE rowid IN (SELECT rowid ... LIMIT n)` on an index
//! of the time column; PostgreSQL's `ctid` likewise), with a pause between batches that lets
//! the ingest's writer in; a pass does at most [`MAX_BATCHES`] batches per table and leaves
//! the rest to the next pass. Every batch adds its count to `retention_deleted` in the same
//! transaction, which `/metrics` exports.
//!
//! # PostgreSQL: whole days at once
//! On PostgreSQL the time tables are partitioned by UTC day ([`super::partitions`]). A pass
//! first makes sure the coming days have their partitions, then drops each day partition
//! whose whole day is past its window, one transaction each (not counted against
//! [`MAX_BATCHES`]: a drop costs the same whatever the day held), counting the rows it held.
//! Alerts and verdict changes that are their device's newest are first copied out of the
//! day being dropped (they land in the `DEFAULT` partition, the day having no partition any
//! more). Batches then delete from the `DEFAULT` partitions and from the tables that are
//! not partitioned (`messages`, `public_ips`) as on SQLite. Rows in a day partition that
//! the cutoff falls inside wait until their whole day is past the window: on PostgreSQL
//! history is kept up to one day longer than its window.

use std::collections::BTreeMap;
use std::time::Duration;

use smtpguard_protocol::Kind;

use super::db::{Backend, Db, Sql, Tx};
use super::partitions::{self, DAY_MS};
use super::{from_i64, to_i64, StoreError};

/// Most rows one batch (one transaction) deletes. A telemetry batch may go over by the
/// device reports of its last telemetry window (at most
/// [`smtpguard_protocol::messages::MAX_DEVICES_PER_TELEMETRY`]).
pub const BATCH_ROWS: usize = 5_000;

/// Most batches per table in one pass; what is left waits for the next pass.
pub const MAX_BATCHES: usize = 100;

/// The pause between two batches, in which the ingest takes the write lock.
pub const PAUSE: Duration = Duration::from_millis(20);

/// How long each kind of history is kept (`None`: forever), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Windows {
    /// Telemetry, device reports and raw messages other than alerts.
    pub telemetry_ms: Option<u64>,
    /// Connection log and public address periods.
    pub connections_ms: Option<u64>,
    /// Alerts and their raw messages.
    pub alerts_ms: Option<u64>,
    /// Verdict changes.
    pub verdict_history_ms: Option<u64>,
    /// No raw message received more recently than this is deleted: the ingest's freshness
    /// limit plus the clock skew it allows (`max_age_secs + max_future_secs`).
    pub replay_guard_ms: u64,
}

/// How much one pass does, and how gently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most rows per batch.
    pub batch_rows: usize,
    /// Most batches per table per pass.
    pub max_batches: usize,
    /// Pause between batches.
    pub pause: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            batch_rows: BATCH_ROWS,
            max_batches: MAX_BATCHES,
            pause: PAUSE,
        }
    }
}

/// A table retention trims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Raw signed messages.
    Messages,
    /// Telemetry windows.
    Telemetry,
    /// Per-device reports of telemetry.
    DeviceReports,
    /// Connection log with NAT translations.
    Connections,
    /// Public address periods of the routers.
    PublicIps,
    /// Alerts with evidence.
    Alerts,
    /// Verdict history.
    VerdictChanges,
}

impl Table {
    /// Every table, in the order of a pass.
    pub const ALL: [Table; 7] = [
        Table::Messages,
        Table::Telemetry,
        Table::DeviceReports,
        Table::Connections,
        Table::PublicIps,
        Table::Alerts,
        Table::VerdictChanges,
    ];

    /// The SQL table name, also the `/metrics` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Messages => "messages",
            Table::Telemetry => "telemetry",
            Table::DeviceReports => "device_reports",
            Table::Connections => "connections",
            Table::PublicIps => "public_ips",
            Table::Alerts => "alerts",
            Table::VerdictChanges => "verdict_changes",
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Rows deleted per table.
    pub deleted: BTreeMap<Table, u64>,
    /// Raw messages deleted per message kind (`telemetry`, `alert`, ...).
    pub messages_by_kind: BTreeMap<&'static str, u64>,
    /// Transactions that deleted something.
    pub batches: usize,
    /// Whether everything past its window is gone; `false` when a table reached
    /// [`Limits::max_batches`] (the next pass goes on) or the pass was cancelled.
    pub complete: bool,
}

impl Report {
    /// Rows deleted from `table`.
    pub fn count(&self, table: Table) -> u64 {
        self.deleted.get(&table).copied().unwrap_or(0)
    }

    /// Rows deleted in all.
    pub fn total(&self) -> u64 {
        self.deleted.values().sum()
    }
}

/// What retention did so far, as `/metrics` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Rows deleted per table since the database was made ([`Table::ALL`] order, zeros
    /// included).
    pub deleted: Vec<(Table, u64)>,
    /// Raw messages deleted per message kind.
    pub messages_by_kind: BTreeMap<String, u64>,
    /// When the last pass finished (Unix ms) and whether it was complete.
    pub last_run: Option<(u64, bool)>,
}

/// Reads the running totals.
///
/// # Errors
/// [`StoreError::Db`].
pub fn totals(db: &impl Sql) -> Result<Totals, StoreError> {
    let mut per_table: BTreeMap<String, u64> = BTreeMap::new();
    let mut messages_by_kind = BTreeMap::new();
    for row in db.query(
        "SELECT table_name, kind, deleted FROM retention_deleted",
        &[],
    )? {
        let (table, kind, n): (String, String, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
        let n = from_i64(n);
        *per_table.entry(table.clone()).or_default() += n;
        if table == Table::Messages.as_str() {
            *messages_by_kind.entry(kind).or_default() += n;
        }
    }
    let last_run = match db.query_opt(
        "SELECT finished_ms, complete FROM retention_runs WHERE id = 1",
        &[],
    )? {
        Some(row) => Some((from_i64(row.get(0)?), row.get::<i64>(1)? != 0)),
        None => None,
    };
    Ok(Totals {
        deleted: Table::ALL
            .iter()
            .map(|t| (*t, per_table.get(t.as_str()).copied().unwrap_or(0)))
            .collect(),
        messages_by_kind,
        last_run,
    })
}

/// One pass: deletes what is past its window as of `now_ms`, in batches (on PostgreSQL
/// whole day partitions first, see the module docs), and records the counts and the run.
/// `cancelled` is asked between batches (shutdown); a cancelled pass keeps what it did and
/// is reported incomplete.
///
/// # Errors
/// [`StoreError::Db`]; the batches committed before the error stay done and counted.
pub fn run_pass(
    db: &Db,
    windows: &Windows,
    now_ms: u64,
    limits: &Limits,
    cancelled: &dyn Fn() -> bool,
) -> Result<Report, StoreError> {
    partitions::ensure(db, now_ms, partitions::DAYS_AHEAD)?;
    let mut pass = Pass {
        db,
        limits,
        cancelled,
        report: Report {
            complete: true,
            ..Report::default()
        },
    };
    let cutoff = |window: Option<u64>| window.map(|w| now_ms.saturating_sub(w));
    // Whole days first (PostgreSQL only): what is left for the batches is then small.
    for (table, window) in [
        (Table::Telemetry, windows.telemetry_ms),
        (Table::DeviceReports, windows.telemetry_ms),
        (Table::Connections, windows.connections_ms),
        (Table::Alerts, windows.alerts_ms),
        (Table::VerdictChanges, windows.verdict_history_ms),
    ] {
        if let Some(cutoff) = cutoff(window) {
            pass.drop_days(table, cutoff)?;
        }
    }
    let cutoff = |window: Option<u64>| cutoff(window).map(to_i64);
    // Raw messages: never inside the replay guard.
    for kind in Kind::ALL {
        let window = if kind == Kind::Alert {
            windows.alerts_ms
        } else {
            windows.telemetry_ms
        };
        if let Some(cutoff) = cutoff(window.map(|w| w.max(windows.replay_guard_ms))) {
            pass.messages(kind.as_str(), cutoff)?;
        }
    }
    if let Some(cutoff) = cutoff(windows.telemetry_ms) {
        pass.telemetry(cutoff)?;
    }
    if let Some(cutoff) = cutoff(windows.connections_ms) {
        pass.simple(
            Table::Connections,
            "SELECT {id} FROM {t} WHERE at_ms < ?1 LIMIT ?2",
            cutoff,
        )?;
        pass.simple(
            Table::PublicIps,
            "SELECT {id} FROM {t} WHERE last_seen_ms < ?1 LIMIT ?2",
            cutoff,
        )?;
    }
    if let Some(cutoff) = cutoff(windows.alerts_ms) {
        pass.simple(
            Table::Alerts,
            "SELECT a.{id} FROM {t} a WHERE a.at_ms < ?1
             AND a.at_ms < (SELECT MAX(b.at_ms) FROM alerts b
                            WHERE b.cpe_id = a.cpe_id AND b.mac = a.mac)
             LIMIT ?2",
            cutoff,
        )?;
    }
    if let Some(cutoff) = cutoff(windows.verdict_history_ms) {
        pass.simple(
            Table::VerdictChanges,
            "SELECT v.{id} FROM {t} v WHERE v.at_ms < ?1
             AND v.at_ms < (SELECT MAX(w.at_ms) FROM verdict_changes w
                            WHERE w.cpe_id = v.cpe_id AND w.mac = v.mac)
             LIMIT ?2",
            cutoff,
        )?;
    }
    let report = pass.report;
    db.execute(
        "INSERT INTO retention_runs (id, finished_ms, complete) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET finished_ms = excluded.finished_ms,
             complete = excluded.complete",
        crate::db_params![to_i64(now_ms), report.complete],
    )?;
    Ok(report)
}

/// Whether `table` is partitioned by day on PostgreSQL.
fn partitioned(table: Table) -> bool {
    partitions::PARTITIONED
        .iter()
        .any(|(name, _)| *name == table.as_str())
}

/// The `DELETE` of one batch on `backend`: the rows of `table` whose physical ids
/// (`rowid`, `ctid`) `select` returns. In `select`, `{t}` is the table the batch deletes
/// from (on PostgreSQL the `DEFAULT` partition of a partitioned table: a `ctid` names a row
/// of one partition only) and `{id}` the id column.
fn batch_sql(backend: Backend, table: Table, select: &str) -> String {
    match backend {
        Backend::Sqlite => {
            let t = table.as_str();
            let select = select.replace("{t}", t).replace("{id}", "rowid");
            format!("DELETE FROM {t} WHERE rowid IN ({select})")
        }
        Backend::Postgres => {
            let t = if partitioned(table) {
                format!("{}_default", table.as_str())
            } else {
                table.as_str().to_string()
            };
            let select = select.replace("{t}", &t).replace("{id}", "ctid");
            // `= ANY(ARRAY(..))` makes PostgreSQL fetch the rows by their ids.
            format!("DELETE FROM {t} WHERE ctid = ANY(ARRAY({select}))")
        }
    }
}

/// The state of one pass.
struct Pass<'a> {
    db: &'a Db,
    limits: &'a Limits,
    cancelled: &'a dyn Fn() -> bool,
    report: Report,
}

impl Pass<'_> {
    fn limit(&self) -> i64 {
        i64::try_from(self.limits.batch_rows.max(1)).unwrap_or(i64::MAX)
    }

    /// Runs `batch` until it finds less than a full batch, the pass's batch limit is
    /// reached or the pass is cancelled. `batch` returns whether it found a full batch.
    fn batches(
        &mut self,
        mut batch: impl FnMut(&mut Self) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        for _ in 0..self.limits.max_batches {
            if (self.cancelled)() {
                self.report.complete = false;
                return Ok(());
            }
            self.pause();
            if !batch(self)? {
                return Ok(());
            }
        }
        self.report.complete = false;
        Ok(())
    }

    /// After every transaction of the pass, also the last of the previous table.
    fn pause(&self) {
        if self.report.batches > 0 && !self.limits.pause.is_zero() {
            std::thread::sleep(self.limits.pause);
        }
    }

    fn note(&mut self, table: Table, kind: &'static str, n: u64) {
        if n > 0 {
            *self.report.deleted.entry(table).or_default() += n;
            if table == Table::Messages {
                *self.report.messages_by_kind.entry(kind).or_default() += n;
            }
        }
    }

    /// Drops `table`'s day partitions whose whole day is before `cutoff` (PostgreSQL; a
    /// no-op on SQLite), each in its own transaction, keeping each device's newest alert or
    /// verdict change.
    fn drop_days(&mut self, table: Table, cutoff: u64) -> Result<(), StoreError> {
        for (day, name) in partitions::day_partitions(self.db, table.as_str())? {
            if (day + 1).saturating_mul(DAY_MS) > cutoff {
                break;
            }
            if (self.cancelled)() {
                self.report.complete = false;
                return Ok(());
            }
            self.pause();
            let keep_newest = matches!(table, Table::Alerts | Table::VerdictChanges);
            let dropped = self
                .db
                .transaction(|tx| drop_day(tx, table, &name, keep_newest))?;
            tracing::debug!(partition = %name, rows = dropped, "retention dropped a day");
            self.note(table, "", dropped);
            if dropped > 0 {
                self.report.batches += 1;
            }
        }
        Ok(())
    }

    /// A table whose batch is one `DELETE` of the rows `select` picks (see [`batch_sql`];
    /// `?1` the cutoff, `?2` the limit).
    fn simple(&mut self, table: Table, select: &str, cutoff: i64) -> Result<(), StoreError> {
        let sql = batch_sql(self.db.backend(), table, select);
        self.batches(|pass| {
            let limit = pass.limit();
            let n = pass.db.transaction(|tx| {
                let n = tx.execute(&sql, crate::db_params![cutoff, limit])?;
                record(tx, table, "", n)?;
                Ok::<_, StoreError>(n)
            })?;
            pass.note(table, "", n);
            if n > 0 {
                pass.report.batches += 1;
            }
            Ok(to_i64(n) >= limit)
        })
    }

    /// Raw messages of one kind received before `cutoff`, except those at or above their
    /// CPE's highest non-state sequence number (see the module docs).
    fn messages(&mut self, kind: &'static str, cutoff: i64) -> Result<(), StoreError> {
        let sql = batch_sql(
            self.db.backend(),
            Table::Messages,
            "SELECT m.{id} FROM {t} m
             WHERE m.kind = ?1 AND m.received_at_ms < ?2
             AND m.seq < (SELECT n.seq FROM messages n
                          WHERE n.cpe_id = m.cpe_id AND n.kind != 'state'
                          ORDER BY n.seq DESC LIMIT 1)
             LIMIT ?3",
        );
        self.batches(|pass| {
            let limit = pass.limit();
            let n = pass.db.transaction(|tx| {
                let n = tx.execute(&sql, crate::db_params![kind, cutoff, limit])?;
                record(tx, Table::Messages, kind, n)?;
                Ok::<_, StoreError>(n)
            })?;
            pass.note(Table::Messages, kind, n);
            if n > 0 {
                pass.report.batches += 1;
            }
            Ok(to_i64(n) >= limit)
        })
    }

    /// Telemetry windows that started before `cutoff`, each with its device reports; a
    /// batch stops taking windows once it has [`Limits::batch_rows`] rows.
    fn telemetry(&mut self, cutoff: i64) -> Result<(), StoreError> {
        let windows_table = match self.db.backend() {
            Backend::Sqlite => "telemetry",
            Backend::Postgres => "telemetry_default",
        };
        let select = format!(
            "SELECT cpe_id, seq FROM {windows_table} WHERE window_start_ms < ?1
             ORDER BY window_start_ms LIMIT ?2"
        );
        let delete = format!("DELETE FROM {windows_table} WHERE cpe_id = ?1 AND seq = ?2");
        self.batches(|pass| {
            let limit = pass.limit();
            let most = pass.limits.batch_rows.max(1);
            let (windows, reports, full) = pass.db.transaction(|tx| {
                let keys = tx.query(&select, crate::db_params![cutoff, limit])?;
                let (mut windows, mut reports) = (0u64, 0u64);
                let mut full = to_i64(keys.len() as u64) >= limit;
                for key in &keys {
                    if windows + reports >= most as u64 {
                        full = true;
                        break;
                    }
                    let (cpe_id, seq): (String, i64) = (key.get(0)?, key.get(1)?);
                    reports += tx.execute(
                        "DELETE FROM device_reports WHERE cpe_id = ?1 AND seq = ?2",
                        crate::db_params![&cpe_id, seq],
                    )?;
                    windows += tx.execute(&delete, crate::db_params![&cpe_id, seq])?;
                }
                record(tx, Table::Telemetry, "", windows)?;
                record(tx, Table::DeviceReports, "", reports)?;
                Ok::<_, StoreError>((windows, reports, full))
            })?;
            pass.note(Table::Telemetry, "", windows);
            pass.note(Table::DeviceReports, "", reports);
            if windows > 0 {
                pass.report.batches += 1;
            }
            Ok(full)
        })
    }
}

/// Drops the day partition `name` of `table` and counts its rows as deleted; with
/// `keep_newest`, the rows that are their device's newest in the whole table are copied
/// back first (into the `DEFAULT` partition, as the day is no longer covered) and not
/// counted. Returns the rows deleted.
fn drop_day(tx: &Tx<'_>, table: Table, name: &str, keep_newest: bool) -> Result<u64, StoreError> {
    let (table, parent) = (table, table.as_str());
    // Names come from `partitions::PARTITIONED` and `partition_name`: nothing to quote.
    if !partitions::exists(tx, name)? {
        return Ok(0); // Another pass dropped it meanwhile.
    }
    let held: i64 = tx.query_one(&format!("SELECT COUNT(*) FROM {name}"), &[])?;
    let mut kept = 0;
    if keep_newest {
        tx.execute(
            &format!("ALTER TABLE {parent} DETACH PARTITION {name}"),
            &[],
        )?;
        kept = tx.execute(
            &format!(
                "INSERT INTO {parent} SELECT * FROM {name} a
                 WHERE NOT EXISTS (SELECT 1 FROM {parent} b
                                   WHERE b.cpe_id = a.cpe_id AND b.mac = a.mac
                                   AND b.at_ms > a.at_ms)
                 AND NOT EXISTS (SELECT 1 FROM {name} c
                                 WHERE c.cpe_id = a.cpe_id AND c.mac = a.mac
                                 AND c.at_ms > a.at_ms)"
            ),
            &[],
        )?;
    }
    tx.execute(&format!("DROP TABLE {name}"), &[])?;
    let deleted = u64::try_from(held).unwrap_or(0).saturating_sub(kept);
    record(tx, table, "", deleted)?;
    Ok(deleted)
}

/// Adds `n` to the running total of `table` (and message `kind`), in the batch's
/// transaction.
fn record(tx: &impl Sql, table: Table, kind: &str, n: u64) -> Result<(), StoreError> {
    if n > 0 {
        tx.execute(
            "INSERT INTO retention_deleted (table_name, kind, deleted) VALUES (?1, ?2, ?3)
             ON CONFLICT (table_name, kind) DO UPDATE
             SET deleted = retention_deleted.deleted + excluded.deleted",
            crate::db_params![table.as_str(), kind, to_i64(n)],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::IpAddr;

    use smtpguard_protocol::{
        keys, seal, Action, AgentStats, Alert, Body, ConnRecord, DeviceCounters, DeviceReport,
        Freshness, MacAddr, Observed, RejectionReason, Telemetry, Verdict,
    };

    use super::*;
    use crate::ingest::{Inbound, Verifier};
    use crate::registry::KeyCache;
    use crate::store::db::tests::backends;
    use crate::store::{Received, Store};

    const DAY: u64 = 86_400_000;
    const NOW: u64 = 1_000 * DAY;
    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);

    /// The defaults of `[retention]` and `[ingest]`.
    fn windows() -> Windows {
        Windows {
            telemetry_ms: Some(14 * DAY),
            connections_ms: Some(180 * DAY),
            alerts_ms: Some(365 * DAY),
            verdict_history_ms: Some(365 * DAY),
            replay_guard_ms: 7 * DAY + 300_000,
        }
    }

    fn unhurried() -> Limits {
        Limits {
            pause: Duration::ZERO,
            ..Limits::default()
        }
    }

    fn device(mac: MacAddr, verdict: Verdict) -> DeviceReport {
        DeviceReport {
            mac,
            ips: vec![],
            hostname: None,
            vendor: None,
            verdict,
            score: 0.5,
            action: Action::Monitor,
            action_until_ms: None,
            counters: DeviceCounters::default(),
            evidence: vec![],
        }
    }

    fn msg(cpe: &str, seq: u64, at_ms: u64, body: Body) -> Received {
        crate::store::received(cpe, seq, at_ms, body)
    }

    /// A telemetry window starting at `at_ms` with both devices, one connection each and
    /// the router's public address `ip`.
    fn telemetry(cpe: &str, seq: u64, at_ms: u64, ip: &str) -> Received {
        let conn = |mac| ConnRecord {
            mac,
            at_ms,
            src_port: 40_000,
            dst: "198.51.100.9".parse().unwrap(),
            dst_port: 25,
            nat_port: Some(50_000),
            nat_ip: Some(ip.parse().unwrap()),
        };
        msg(
            cpe,
            seq,
            at_ms,
            Body::Telemetry(Telemetry {
                window_start_ms: at_ms,
                window_secs: 60,
                public_ip: Some(ip.parse::<IpAddr>().unwrap()),
                stats: AgentStats::default(),
                devices: vec![device(A, Verdict::Clean), device(B, Verdict::Clean)],
                connections: vec![conn(A), conn(B)],
            }),
        )
    }

    fn alert(cpe: &str, seq: u64, at_ms: u64, mac: MacAddr, verdict: Verdict) -> Received {
        msg(
            cpe,
            seq,
            at_ms,
            Body::Alert(Alert {
                device: device(mac, verdict),
                previous: Verdict::Clean,
                at_ms,
                observed: Observed::default(),
            }),
        )
    }

    fn count(store: &Store, sql: &str) -> i64 {
        store.db().query_one(sql, &[]).unwrap()
    }

    fn seqs(store: &Store, table: &str) -> Vec<i64> {
        store
            .db()
            .query(
                &format!("SELECT DISTINCT seq FROM {table} ORDER BY seq"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0).unwrap())
            .collect()
    }

    /// Stores `messages` as the ingest does. On PostgreSQL, whose write path is not this
    /// module's, they are written to a SQLite store and their rows copied over (ids left to
    /// PostgreSQL, a device report's time taken from its telemetry window).
    fn write(store: &mut Store, messages: &[Received]) -> Vec<bool> {
        store.write_batch(messages, &[]).unwrap()
    }

    #[test]
    fn rows_past_their_window_go_and_newer_ones_stay() {
        for (url, _guard) in backends() {
            let mut store = Store::open_url(&url).unwrap();
            let fresh = write(
                &mut store,
                &[
                    telemetry("cpe-r", 1, NOW - 400 * DAY, "100.64.0.1"),
                    alert("cpe-r", 2, NOW - 400 * DAY, A, Verdict::Suspicious),
                    alert("cpe-r", 3, NOW - 400 * DAY, B, Verdict::Infected),
                    telemetry("cpe-r", 4, NOW - 20 * DAY, "100.64.0.2"),
                    alert("cpe-r", 5, NOW - 10 * DAY, A, Verdict::Infected),
                    telemetry("cpe-r", 6, NOW - DAY, "100.64.0.2"),
                ],
            );
            assert!(fresh.iter().all(|f| *f));
            let changes_before = count(&store, "SELECT COUNT(*) FROM verdict_changes");

            let report = store
                .apply_retention(&windows(), NOW, &unhurried(), &|| false)
                .unwrap();

            assert!(report.complete);
            // Telemetry older than 14 days goes with its device reports; the day-old stays.
            assert_eq!(seqs(&store, "telemetry"), vec![6]);
            assert_eq!(seqs(&store, "device_reports"), vec![6]);
            assert_eq!(report.count(Table::Telemetry), 2);
            assert_eq!(report.count(Table::DeviceReports), 4);
            // Connections and address periods: 180 days; the 20-day-old ones stay.
            assert_eq!(
                count(
                    &store,
                    &format!(
                        "SELECT COUNT(*) FROM connections WHERE at_ms < {}",
                        NOW - 180 * DAY
                    )
                ),
                0
            );
            assert_eq!(count(&store, "SELECT COUNT(*) FROM connections"), 4);
            assert_eq!(
                count(
                    &store,
                    "SELECT COUNT(*) FROM public_ips WHERE ip = '100.64.0.1'"
                ),
                0
            );
            assert_eq!(
                count(
                    &store,
                    "SELECT COUNT(*) FROM public_ips WHERE ip = '100.64.0.2'"
                ),
                1
            );
            assert_eq!(report.count(Table::Connections), 2);
            assert_eq!(report.count(Table::PublicIps), 1);
            // Alerts: 365 days, but B's only alert is its newest and stays.
            assert_eq!(seqs(&store, "alerts"), vec![3, 5]);
            assert_eq!(report.count(Table::Alerts), 1);
            // Verdict history: A's old change goes, B's only one stays.
            assert_eq!(
                count(
                    &store,
                    &format!(
                        "SELECT COUNT(*) FROM verdict_changes WHERE at_ms < {}",
                        NOW - 365 * DAY
                    )
                ),
                1
            );
            assert_eq!(
                count(&store, "SELECT COUNT(*) FROM verdict_changes"),
                changes_before - 1
            );
            // Raw messages: past their kind's window, except the newest (6).
            assert_eq!(seqs(&store, "messages"), vec![5, 6]);
            assert_eq!(report.count(Table::Messages), 4);
            assert_eq!(report.messages_by_kind.get("telemetry"), Some(&2));
            assert_eq!(report.messages_by_kind.get("alert"), Some(&2));
            // Current state is kept.
            assert_eq!(count(&store, "SELECT COUNT(*) FROM devices"), 2);

            // The counts are kept for /metrics, and a second pass finds nothing.
            let t = totals(store.db()).unwrap();
            assert_eq!(t.last_run, Some((NOW, true)));
            let deleted: HashMap<Table, u64> = t.deleted.iter().copied().collect();
            for table in Table::ALL {
                assert_eq!(deleted[&table], report.count(table), "{table:?}");
            }
            assert_eq!(t.messages_by_kind.get("alert"), Some(&2));
            let again = store
                .apply_retention(&windows(), NOW + 1, &unhurried(), &|| false)
                .unwrap();
            assert_eq!(again.total(), 0);
            assert_eq!(totals(store.db()).unwrap().deleted, t.deleted);
        }
    }

    #[test]
    fn zero_keeps_forever_and_raw_messages_outlast_a_short_window_inside_the_replay_guard() {
        for (url, _guard) in backends() {
            let mut store = Store::open_url(&url).unwrap();
            write(
                &mut store,
                &[
                    telemetry("cpe-r", 1, NOW - 3 * DAY, "100.64.0.1"),
                    telemetry("cpe-r", 2, NOW - 2 * DAY, "100.64.0.1"),
                ],
            );
            let forever = Windows {
                replay_guard_ms: 0,
                ..Windows::default()
            };
            let report = store
                .apply_retention(&forever, NOW, &unhurried(), &|| false)
                .unwrap();
            assert_eq!(report.total(), 0);
            assert!(report.complete);

            let one_day = Windows {
                telemetry_ms: Some(DAY),
                ..windows()
            };
            let report = store
                .apply_retention(&one_day, NOW, &unhurried(), &|| false)
                .unwrap();
            assert_eq!(seqs(&store, "telemetry"), Vec::<i64>::new());
            // Received 3 days ago, inside the week a replay would still be fresh: kept.
            assert_eq!(seqs(&store, "messages"), vec![1, 2]);
            assert_eq!(report.count(Table::Messages), 0);
        }
    }

    #[test]
    fn batches_are_bounded_and_the_next_pass_goes_on() {
        for (url, _guard) in backends() {
            let mut store = Store::open_url(&url).unwrap();
            let old: Vec<Received> = (1..=5)
                .map(|seq| telemetry("cpe-r", seq, NOW - 200 * DAY + seq, "100.64.0.1"))
                .chain([telemetry("cpe-r", 6, NOW, "100.64.0.1")])
                .collect();
            write(&mut store, &old);
            // 5 old windows with 2 device reports and 2 connections each.
            let limits = Limits {
                batch_rows: 3,
                max_batches: 2,
                pause: Duration::ZERO,
            };
            let w = Windows {
                telemetry_ms: Some(14 * DAY),
                connections_ms: Some(180 * DAY),
                ..Windows::default()
            };
            let first = store.apply_retention(&w, NOW, &limits, &|| false).unwrap();
            assert!(!first.complete);
            // Connections: 2 batches of 3; telemetry: a window and its 2 reports fill a batch;
            // raw messages: 3, then the last 2 (a batch that is not full ends the table).
            assert_eq!(first.count(Table::Connections), 6);
            assert_eq!(first.count(Table::Telemetry), 2);
            assert_eq!(first.count(Table::DeviceReports), 4);
            assert_eq!(first.count(Table::Messages), 5);
            assert_eq!(first.batches, 6);
            assert_eq!(
                totals(store.db()).unwrap().last_run,
                Some((NOW, false)),
                "an incomplete pass says so"
            );

            let mut passes = 1;
            while !store
                .apply_retention(&w, NOW, &limits, &|| false)
                .unwrap()
                .complete
            {
                passes += 1;
                assert!(passes < 10, "retention never finished");
            }
            assert_eq!(seqs(&store, "telemetry"), vec![6]);
            assert_eq!(count(&store, "SELECT COUNT(*) FROM connections"), 2);
            let t = totals(store.db()).unwrap();
            let deleted: HashMap<Table, u64> = t.deleted.iter().copied().collect();
            assert_eq!(deleted[&Table::Telemetry], 5);
            assert_eq!(deleted[&Table::DeviceReports], 10);
            assert_eq!(deleted[&Table::Connections], 10);

            // A cancelled pass stops before its first batch and says it is incomplete.
            write(
                &mut store,
                &[telemetry("cpe-r", 7, NOW - 100 * DAY, "100.64.0.1")],
            );
            let cancelled = store.apply_retention(&w, NOW, &limits, &|| true).unwrap();
            assert_eq!(cancelled.total(), 0);
            assert!(!cancelled.complete);
        }
    }

    #[test]
    fn on_postgres_whole_days_past_the_window_are_dropped_keeping_each_devices_newest() {
        let mut store = Store::open_url(&smtpguard_pgtest::database()).unwrap();
        let old = NOW - 400 * DAY;
        let old_day = old / DAY;
        assert_eq!(
            partitions::ensure(store.db(), old, 0).unwrap(),
            2 * partitions::PARTITIONED.len()
        );
        let hour = 3_600_000;
        write(
            &mut store,
            &[
                telemetry("cpe-r", 1, old + hour, "100.64.0.1"),
                alert("cpe-r", 2, old + hour, A, Verdict::Suspicious),
                alert("cpe-r", 3, old + 2 * hour, A, Verdict::Infected),
                alert("cpe-r", 4, old + hour, B, Verdict::Infected),
                telemetry("cpe-r", 5, NOW - DAY, "100.64.0.1"),
            ],
        );
        let in_partition = |table: &str| {
            count(
                &store,
                &format!(
                    "SELECT COUNT(*) FROM {}",
                    partitions::partition_name(table, old_day)
                ),
            )
        };
        assert_eq!(in_partition("telemetry"), 1);
        assert_eq!(in_partition("device_reports"), 2);
        assert_eq!(in_partition("connections"), 2);
        assert_eq!(in_partition("alerts"), 3);
        let changes = in_partition("verdict_changes");
        assert!(changes >= 2, "{changes}");
        let changes_before = count(&store, "SELECT COUNT(*) FROM verdict_changes");

        let report = store
            .apply_retention(&windows(), NOW, &unhurried(), &|| false)
            .unwrap();

        assert!(report.complete);
        for (table, _) in partitions::PARTITIONED {
            let days: Vec<u64> = partitions::day_partitions(&**store.db(), table)
                .unwrap()
                .into_iter()
                .map(|(day, _)| day)
                .filter(|day| *day <= NOW / DAY + 3)
                .collect();
            // Of the days up to NOW's, only those this pass made remain: yesterday to
            // three days ahead (those of the real clock, made at open, are later still).
            assert_eq!(
                days,
                (NOW / DAY - 1..=NOW / DAY + 3).collect::<Vec<_>>(),
                "{table}"
            );
        }
        assert_eq!(report.count(Table::Telemetry), 1);
        assert_eq!(report.count(Table::DeviceReports), 2);
        assert_eq!(report.count(Table::Connections), 2);
        assert_eq!(seqs(&store, "telemetry"), vec![5]);
        // A's older alert went with its day; A's newest and B's only one were kept, in
        // the DEFAULT partition now.
        assert_eq!(report.count(Table::Alerts), 1);
        assert_eq!(seqs(&store, "alerts"), vec![3, 4]);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM alerts_default"), 2);
        // Each device keeps its newest verdict change.
        let left = count(&store, "SELECT COUNT(*) FROM verdict_changes");
        assert_eq!(
            u64::try_from(changes_before - left).unwrap(),
            report.count(Table::VerdictChanges)
        );
        assert_eq!(
            count(
                &store,
                "SELECT COUNT(DISTINCT mac) FROM verdict_changes WHERE cpe_id = 'cpe-r'"
            ),
            2
        );
        // The counts /metrics shows include the dropped days' rows.
        let t = totals(store.db()).unwrap();
        let deleted: HashMap<Table, u64> = t.deleted.iter().copied().collect();
        for table in Table::ALL {
            assert_eq!(deleted[&table], report.count(table), "{table:?}");
        }
        let again = store
            .apply_retention(&windows(), NOW + 1, &unhurried(), &|| false)
            .unwrap();
        assert_eq!(again.total(), 0);
    }

    #[test]
    fn a_replayed_old_message_is_still_refused_after_its_row_was_deleted() {
        let mut store = Store::open_in_memory().unwrap();
        let key = keys::generate();
        for cpe in ["cpe-1", "cpe-2"] {
            crate::registry::add(
                &mut store,
                cpe,
                &keys::public_key_text(&key.verifying_key()),
                None,
                0,
            )
            .unwrap();
        }
        let t0 = NOW - 30 * DAY;
        let body = |at| match telemetry("x", 0, at, "100.64.0.1").envelope.body {
            b @ Body::Telemetry(_) => b,
            _ => unreachable!(),
        };
        let wire = |cpe: &str, seq, at| Inbound {
            topic: format!("smtpguard/v1/cpe/{cpe}/telemetry"),
            payload: seal(&body(at), cpe, seq, at, &key).unwrap(),
        };
        let old = wire("cpe-1", 1, t0);
        let mut verifier = Verifier::new(
            KeyCache::load(&store).unwrap(),
            store.highest_seqs().unwrap(),
            Freshness::default(),
        );
        let checked = verifier.check(
            vec![
                old.clone(),
                wire("cpe-1", 2, t0 + 60_000),
                wire("cpe-2", 9, t0),
            ],
            t0 + 60_000,
        );
        assert_eq!(checked.accepted.len(), 3);
        store.write_batch(&checked.accepted, &[]).unwrap();

        store
            .apply_retention(&windows(), NOW, &unhurried(), &|| false)
            .unwrap();
        assert!(!store.has_message("cpe-1", 1).unwrap(), "the old row went");
        assert!(store.has_message("cpe-1", 2).unwrap(), "the newest stays");
        assert!(
            store.has_message("cpe-2", 9).unwrap(),
            "a CPE's only one stays"
        );

        // A restart restores the windows from what is left. Even with freshness far wider
        // than when the row was deleted (an operator raising max_age_secs), the replay is
        // refused by its number; with the freshness in force it is refused as stale.
        let wide = Freshness {
            max_age_ms: 365 * DAY,
            ..Freshness::default()
        };
        for (freshness, reason) in [
            (wide, RejectionReason::Replay),
            (Freshness::default(), RejectionReason::Stale),
        ] {
            let mut verifier = Verifier::new(
                KeyCache::load(&store).unwrap(),
                store.highest_seqs().unwrap(),
                freshness,
            );
            let checked = verifier.check(vec![old.clone()], NOW);
            assert!(checked.accepted.is_empty());
            assert_eq!(checked.rejections, vec![(reason, 1)]);
            // A new message of the same router still gets in.
            let checked = verifier.check(vec![wire("cpe-1", 3, NOW)], NOW);
            assert_eq!(checked.accepted.len(), 1);
        }
    }
}
