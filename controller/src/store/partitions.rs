//! Day partitions of the PostgreSQL tables that grow with time (a no-op on SQLite).
//!
//! [`schema::POSTGRES`](super::schema::POSTGRES) partitions `alerts`, `telemetry`,
//! `device_reports`, `connections` and `verdict_changes` by range of their time column
//! (Unix ms) and gives each a `DEFAULT` partition. [`ensure`] adds one partition per UTC day,
//! named `<table>_pYYYYMMDD` and covering `[00:00, 24:00)` of that day, from yesterday to a
//! few days ahead; rows outside every day partition land in the `DEFAULT` one. Retention
//! ([`super::retention`]) drops a day partition once its whole day is past the window, which
//! costs nothing like deleting its rows.
//!
//! # Creating a day the DEFAULT partition already has rows of
//! PostgreSQL refuses a new range partition while the `DEFAULT` partition holds rows of
//! that range (a controller down for a while, a clock that jumped). So a day partition is
//! never created directly: in one transaction the parent is locked against writes and
//! other partition changes (`SHARE ROW EXCLUSIVE`; readers go on), then its `DEFAULT`
//! partition (`ACCESS EXCLUSIVE`, which `ATTACH` needs anyway), the day's table is made
//! standalone, the day's rows are moved into it from the `DEFAULT` partition, and it is
//! attached. Nothing is lost or duplicated whether it commits or not. Writers wait on the
//! parent for the few milliseconds this takes (once per table and day), and then route
//! their rows to the new day: a lock on the `DEFAULT` partition alone would let an insert
//! already routed there fail the new partition's constraint after the attach (tested).
//!
//! # Replicas
//! Every replica runs [`ensure`] when it opens the store, and the leader's retention job
//! runs it too. The parent's lock makes two of them take turns on a table; the second
//! finds the day there and does nothing. A transaction that read a partitioned table and
//! then writes it while [`ensure`] waits for the `DEFAULT` partition deadlocks with it;
//! the server aborts one of the two and [`Db::transaction`] runs it again.

use super::db::{Backend, Db, DbError, Sql, Tx};

/// One day in milliseconds.
pub const DAY_MS: u64 = 86_400_000;

/// How many days ahead of today a store opening or a retention pass makes partitions for.
pub const DAYS_AHEAD: u64 = 3;

/// The partitioned tables with the column each is partitioned by.
pub const PARTITIONED: [(&str, &str); 5] = [
    ("alerts", "at_ms"),
    ("telemetry", "window_start_ms"),
    ("device_reports", "at_ms"),
    ("connections", "at_ms"),
    ("verdict_changes", "at_ms"),
];

/// The UTC calendar date of day `day` since 1970-01-01, as (year, month, day of month).
fn civil(day: i64) -> (i64, u32, u32) {
    // Days since 0000-03-01 counted in 400-year eras of 146 097 days each, so that a year
    // starts in March and the leap day is the last day of a year.
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let of_era = z.rem_euclid(146_097);
    let year_of_era = (of_era - of_era / 1_460 + of_era / 36_524 - of_era / 146_096) / 365;
    let day_of_year = of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day_of_month = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day_of_month).unwrap_or(1),
    )
}

/// The name of `table`'s partition of day `day` (days since 1970-01-01, UTC).
pub fn partition_name(table: &str, day: u64) -> String {
    let (y, m, d) = civil(i64::try_from(day).unwrap_or(i64::MAX / 2));
    format!("{table}_p{y:04}{m:02}{d:02}")
}

/// The day (since 1970-01-01) a partition name of `table` stands for; `None` for any other
/// name (the `DEFAULT` partition, a table an operator attached by hand).
pub fn partition_day(table: &str, name: &str) -> Option<u64> {
    let digits = name.strip_prefix(table)?.strip_prefix("_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m, d): (i64, u32, u32) = (
        digits[..4].parse().ok()?,
        digits[4..6].parse().ok()?,
        digits[6..].parse().ok()?,
    );
    // The inverse of `civil`, checked by converting back.
    let (yy, mm) = if m <= 2 {
        (y - 1, i64::from(m) + 9)
    } else {
        (y, i64::from(m) - 3)
    };
    let era = yy.div_euclid(400);
    let year_of_era = yy.rem_euclid(400);
    let day_of_year = (153 * mm + 2) / 5 + i64::from(d) - 1;
    let of_era = 365 * year_of_era + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let day = era * 146_097 + of_era - 719_468;
    (civil(day) == (y, m, d))
        .then_some(day)
        .and_then(|day| u64::try_from(day).ok())
}

/// Makes sure every partitioned table has its partitions of the UTC days from yesterday to
/// `days_ahead` days after the day of `now_ms`, moving rows of those days out of the
/// `DEFAULT` partition where there are any. Returns how many partitions it created. Does
/// nothing on SQLite. Safe to run from several replicas at once (see the module docs).
///
/// # Errors
/// [`DbError`]; the partitions made before the error stay.
pub fn ensure(db: &Db, now_ms: u64, days_ahead: u64) -> Result<usize, DbError> {
    if db.backend() != Backend::Postgres {
        return Ok(0);
    }
    let today = now_ms / DAY_MS;
    let mut created = 0;
    for day in today.saturating_sub(1)..=today.saturating_add(days_ahead) {
        for (table, column) in PARTITIONED {
            if db.transaction(|tx| create(tx, table, column, day))? {
                created += 1;
            }
        }
    }
    Ok(created)
}

/// Whether `name` is a table of the current schema.
pub(crate) fn exists(db: &impl Sql, name: &str) -> Result<bool, DbError> {
    Ok(db.query_one::<i64>(
        "SELECT COUNT(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relname = ?1 AND n.nspname = current_schema()",
        crate::db_params![name],
    )? > 0)
}

/// Creates `table`'s partition of `day` unless it is there; whether it created it.
fn create(tx: &Tx<'_>, table: &str, column: &str, day: u64) -> Result<bool, DbError> {
    let name = partition_name(table, day);
    let (from, to) = (day.saturating_mul(DAY_MS), (day + 1).saturating_mul(DAY_MS));
    let (from, to) = (
        i64::try_from(from).map_err(|_| DbError::OutOfRange(from.to_string()))?,
        i64::try_from(to).map_err(|_| DbError::OutOfRange(to.to_string()))?,
    );
    // The usual case, the day made already, takes no lock; otherwise ask again under it.
    if exists(tx, &name)? {
        return Ok(false);
    }
    // Table names come from PARTITIONED and bounds are numbers: nothing to quote.
    tx.execute(
        &format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"),
        &[],
    )?;
    if exists(tx, &name)? {
        return Ok(false);
    }
    tx.execute(
        &format!("LOCK TABLE {table}_default IN ACCESS EXCLUSIVE MODE"),
        &[],
    )?;
    tx.execute(
        &format!("CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"),
        &[],
    )?;
    let moved = tx.execute(
        &format!(
            "WITH moved AS (DELETE FROM {table}_default WHERE {column} >= ?1 AND {column} < ?2
                RETURNING *)
             INSERT INTO {name} SELECT * FROM moved"
        ),
        crate::db_params![from, to],
    )?;
    if moved > 0 {
        tracing::info!(table, partition = %name, rows = moved, "moved a day's rows out of the default partition");
    }
    tx.execute(
        &format!("ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ({from}) TO ({to})"),
        &[],
    )?;
    Ok(true)
}

/// `table`'s day partitions with their days, oldest first.
///
/// # Errors
/// [`DbError`].
pub fn day_partitions(db: &impl Sql, table: &str) -> Result<Vec<(u64, String)>, DbError> {
    if db.backend() != Backend::Postgres {
        return Ok(Vec::new());
    }
    let rows = db.query(
        "SELECT c.relname FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_class p ON p.oid = i.inhparent
         JOIN pg_namespace n ON n.oid = p.relnamespace
         WHERE p.relname = ?1 AND n.nspname = current_schema()",
        crate::db_params![table],
    )?;
    let mut out = Vec::new();
    for row in rows {
        let name: String = row.get(0)?;
        if let Some(day) = partition_day(table, &name) {
            out.push((day, name));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// 2030-06-15 12:00 UTC.
    const NOON: u64 = 1_907_755_200_000;

    #[test]
    fn names_are_utc_dates_and_read_back() {
        assert_eq!(partition_name("telemetry", 0), "telemetry_p19700101");
        assert_eq!(partition_name("alerts", NOON / DAY_MS), "alerts_p20300615");
        // 2024-02-29 (a leap day) and 2000-03-01.
        assert_eq!(partition_name("t", 19_782), "t_p20240229");
        assert_eq!(partition_name("t", 11_017), "t_p20000301");
        for day in [0, 59, 60, 365, 11_016, 11_017, 19_782, 20_000, 60_000] {
            assert_eq!(partition_day("t", &partition_name("t", day)), Some(day));
        }
        assert_eq!(partition_day("t", "t_default"), None);
        assert_eq!(partition_day("t", "t_p20230229"), None, "no such date");
        assert_eq!(partition_day("alerts", "telemetry_p20300615"), None);
    }

    fn partition_of(db: &Db, table: &str, column: &str, at_ms: u64) -> Vec<String> {
        db.query(
            &format!("SELECT CAST(tableoid::regclass AS TEXT) FROM {table} WHERE {column} = ?1"),
            crate::db_params![at_ms],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0).unwrap())
        .collect()
    }

    #[test]
    fn days_from_yesterday_to_three_ahead_are_made_once_and_take_their_rows() {
        let store = Store::open_url(&smtpguard_pgtest::database()).unwrap();
        let db = store.db();
        // Before the partitions exist, the day after tomorrow's rows go to the default.
        let later = NOON + 2 * DAY_MS;
        db.execute(
            "INSERT INTO connections (cpe_id, mac, at_ms, src_port, dst, dst_port)
             VALUES ('cpe-p', '02:00:00:00:00:01', ?1, 1, '192.0.2.1', 25)",
            crate::db_params![later],
        )
        .unwrap();
        assert_eq!(
            partition_of(db, "connections", "at_ms", later),
            vec!["connections_default"]
        );

        assert_eq!(ensure(db, NOON, 3).unwrap(), 5 * PARTITIONED.len());
        let days: Vec<String> = day_partitions(&**db, "telemetry")
            .unwrap()
            .into_iter()
            .map(|(_, name)| name)
            .filter(|n| n.starts_with("telemetry_p2030"))
            .collect();
        assert_eq!(
            days,
            [
                "telemetry_p20300614",
                "telemetry_p20300615",
                "telemetry_p20300616",
                "telemetry_p20300617",
                "telemetry_p20300618"
            ]
        );
        // The row moved to its day; new rows go to their day; an idempotent second run.
        assert_eq!(
            partition_of(db, "connections", "at_ms", later),
            vec!["connections_p20300617"]
        );
        db.execute(
            "INSERT INTO alerts (cpe_id, seq, mac, at_ms, previous, verdict, score, action,
                ips_json, evidence_json, observed_json)
             VALUES ('cpe-p', 1, 'm', ?1, 'clean', 'infected', 1.0, 'block', '[]', '[]', '{}')",
            crate::db_params![NOON - DAY_MS],
        )
        .unwrap();
        assert_eq!(
            partition_of(db, "alerts", "at_ms", NOON - DAY_MS),
            vec!["alerts_p20300614"]
        );
        assert_eq!(ensure(db, NOON, 3).unwrap(), 0);
        // Two days later: the two new days only.
        assert_eq!(
            ensure(db, NOON + 2 * DAY_MS, 3).unwrap(),
            2 * PARTITIONED.len()
        );
    }

    #[test]
    fn replicas_making_the_same_partitions_at_once_all_succeed() {
        let url = smtpguard_pgtest::database();
        Store::open_url(&url).unwrap();
        let made: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let url = &url;
                    s.spawn(move || {
                        let db = Db::open(url).unwrap();
                        ensure(&db, NOON, 3).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            made.iter().sum::<usize>(),
            5 * PARTITIONED.len(),
            "{made:?}"
        );
    }

    #[test]
    fn rows_written_while_a_day_is_made_all_end_up_in_it() {
        let url = smtpguard_pgtest::database();
        let store = Store::open_url(&url).unwrap();
        let day = NOON + 2 * DAY_MS;
        let rows = 300u64;
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let db = Db::open(&url).unwrap();
                for i in 0..rows {
                    db.execute(
                        "INSERT INTO connections (cpe_id, mac, at_ms, src_port, dst, dst_port)
                         VALUES ('cpe-w', 'm', ?1, ?2, '192.0.2.1', 25)",
                        crate::db_params![day + i, i],
                    )
                    .unwrap();
                }
            });
            // Start once some rows are in the DEFAULT partition, while more are coming.
            while store
                .db()
                .query_one::<i64>("SELECT COUNT(*) FROM connections", &[])
                .unwrap()
                < 20
            {
                std::thread::yield_now();
            }
            ensure(&Db::open(&url).unwrap(), NOON, 3).unwrap();
            writer.join().unwrap();
        });
        let placed = store
            .db()
            .query(
                "SELECT CAST(tableoid::regclass AS TEXT), COUNT(*) FROM connections GROUP BY 1",
                &[],
            )
            .unwrap();
        let placed: Vec<(String, i64)> = placed
            .iter()
            .map(|r| (r.get(0).unwrap(), r.get(1).unwrap()))
            .collect();
        assert_eq!(
            placed,
            vec![("connections_p20300617".to_string(), rows as i64)]
        );
    }

    #[test]
    fn sqlite_has_no_partitions() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(ensure(store.db(), NOON, 3).unwrap(), 0);
        assert!(day_partitions(&**store.db(), "alerts").unwrap().is_empty());
    }
}
