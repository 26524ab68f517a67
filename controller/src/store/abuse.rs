//! What the abuse desk reads and writes: the address history and connection log the
//! ingest keeps (`public_ips`, `connections`), read for the mapping, and the stored reports
//! (`abuse_reports`) with their filters. [`crate::abuse`] keeps the parsing and the mapping
//! and calls these.

use std::net::IpAddr;

use smtpguard_protocol::MacAddr;

use super::db::{DbError, Param, Row, Sql};
use super::from_i64;
use crate::abuse::mapping::{AddressPeriod, Connection};
use crate::abuse::{ReportFilter, ReportSort, ReportSummary, StoredReport};
use crate::db_params;

/// Every period in which a CPE held the public address `ip` (at most 1000, oldest first).
///
/// # Errors
/// [`DbError`].
pub fn address_periods(db: &impl Sql, ip: IpAddr) -> Result<Vec<AddressPeriod>, DbError> {
    let rows = db.query(
        "SELECT cpe_id, first_seen_ms, last_seen_ms FROM public_ips WHERE ip = ?1
         ORDER BY first_seen_ms LIMIT 1000",
        db_params![&ip.to_string()],
    )?;
    let mut periods = Vec::with_capacity(rows.len());
    for r in rows {
        periods.push(AddressPeriod {
            cpe_id: r.get(0)?,
            ip,
            first_ms: from_i64(r.get(1)?),
            last_ms: from_i64(r.get(2)?),
        });
    }
    Ok(periods)
}

/// `cpe_id`'s logged connections from `from_ms` to `to_ms` (inclusive), oldest first, at
/// most 20,000.
///
/// # Errors
/// [`DbError`].
pub fn connections(
    db: &impl Sql,
    cpe_id: &str,
    from_ms: u64,
    to_ms: u64,
) -> Result<Vec<Connection>, DbError> {
    connection_rows(&db.query(
        "SELECT cpe_id, mac, at_ms, src_port, dst, dst_port, nat_port, nat_ip FROM connections
         WHERE cpe_id = ?1 AND at_ms BETWEEN ?2 AND ?3 ORDER BY at_ms LIMIT 20000",
        db_params![cpe_id, from_ms, to_ms],
    )?)
}

/// Every CPE's logged connections that left a router as `nat_ip`:`nat_port` from
/// `from_ms` to `to_ms` (inclusive), oldest first, at most 100 (index
/// `connections_by_translation`).
///
/// # Errors
/// [`DbError`].
pub fn translations(
    db: &impl Sql,
    nat_ip: IpAddr,
    nat_port: u16,
    from_ms: u64,
    to_ms: u64,
) -> Result<Vec<Connection>, DbError> {
    connection_rows(&db.query(
        "SELECT cpe_id, mac, at_ms, src_port, dst, dst_port, nat_port, nat_ip FROM connections
         WHERE nat_ip = ?1 AND nat_port = ?2 AND at_ms BETWEEN ?3 AND ?4 ORDER BY at_ms LIMIT 100",
        db_params![&nat_ip.to_string(), u32::from(nat_port), from_ms, to_ms],
    )?)
}

/// Reads connection rows (`cpe_id, mac, at_ms, src_port, dst, dst_port, nat_port, nat_ip`).
fn connection_rows(rows: &[Row]) -> Result<Vec<Connection>, DbError> {
    let mut conns = Vec::with_capacity(rows.len());
    for r in rows {
        let (mac, dst): (String, String) = (r.get(1)?, r.get(4)?);
        // A row the ingest stored is well-formed; skip rather than fail on a bad one.
        let (Ok(mac), Ok(dst)) = (mac.parse::<MacAddr>(), dst.parse::<IpAddr>()) else {
            continue;
        };
        conns.push(Connection {
            cpe_id: r.get(0)?,
            mac,
            at_ms: from_i64(r.get(2)?),
            src_port: u16::try_from(r.get::<i64>(3)?).unwrap_or(0),
            dst,
            dst_port: u16::try_from(r.get::<i64>(5)?).unwrap_or(0),
            nat_port: r.get::<Option<i64>>(6)?.and_then(|n| u16::try_from(n).ok()),
            nat_ip: r.get::<Option<String>>(7)?.and_then(|s| s.parse().ok()),
        });
    }
    Ok(conns)
}

/// Stores a report with its answer (`result_json`: the answer as JSON); returns its id
/// (`report.id` is not read).
///
/// # Errors
/// [`DbError`].
pub fn insert_report(
    db: &impl Sql,
    report: &StoredReport,
    result_json: &str,
) -> Result<i64, DbError> {
    let (query, answer) = (&report.query, &report.answer);
    db.query_one(
        "INSERT INTO abuse_reports (received_ms, source, public_ip, at_ms, dest_ip, dest_port,
            source_port, feedback_type, message_id, confidence, cpe_id, mac, result_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         RETURNING id",
        db_params![
            report.received_ms,
            &report.source,
            &query.public_ip.to_string(),
            query.at_ms,
            query.dest_ip.map(|i| i.to_string()).as_ref(),
            query.dest_port.map(u32::from),
            query.source_port.map(u32::from),
            report.feedback_type.as_ref(),
            report.message_id.as_ref(),
            answer.confidence.as_str(),
            answer.cpe_id.as_ref(),
            answer.mac.map(|m| m.to_string()).as_ref(),
            result_json,
        ],
    )
}

/// Records who complained (`None`: unknown).
///
/// # Errors
/// [`DbError`].
pub fn set_reporter(db: &impl Sql, id: i64, reporter: Option<&str>) -> Result<(), DbError> {
    db.execute(
        "UPDATE abuse_reports SET reporter = ?2 WHERE id = ?1",
        db_params![id, reporter],
    )?;
    Ok(())
}

/// Marks a report answered by `who`. Returns whether the report exists.
///
/// # Errors
/// [`DbError`].
pub fn mark_answered(db: &impl Sql, id: i64, who: &str, now_ms: u64) -> Result<bool, DbError> {
    let n = db.execute(
        "UPDATE abuse_reports SET status = 'answered', answered_ms = ?2, answered_by = ?3
         WHERE id = ?1",
        db_params![id, now_ms, who],
    )?;
    Ok(n > 0)
}

/// The confidence labels a filter can name at once (as many as there are labels).
const CONFIDENCES_MAX: usize = 7;

/// The conditions of a report list; `?1` to `?7` are bound by [`filter_params`], then the
/// confidences. Each optional filter is typed so that PostgreSQL knows its parameter's type
/// when it is NULL. `text` is a `LIKE` pattern, case-insensitive on both backends.
const REPORT_WHERE: &str = " FROM abuse_reports
         WHERE (CAST(?1 AS BIGINT) = 0 OR mac IS NULL)
           AND (CAST(?2 AS TEXT) IS NULL OR status = ?2)
           AND (CAST(?3 AS TEXT) IS NULL OR cpe_id = ?3)
           AND (CAST(?4 AS TEXT) IS NULL OR mac = ?4)
           AND (CAST(?5 AS BIGINT) IS NULL OR id = ?5)
           AND (CAST(?6 AS TEXT) IS NULL OR public_ip = ?6)
           AND (CAST(?7 AS TEXT) IS NULL OR LOWER(cpe_id) LIKE LOWER(?7) ESCAPE '\\'
                OR LOWER(mac) LIKE LOWER(?7) ESCAPE '\\'
                OR LOWER(reporter) LIKE LOWER(?7) ESCAPE '\\'
                OR LOWER(public_ip) LIKE LOWER(?7) ESCAPE '\\'
                OR LOWER(message_id) LIKE LOWER(?7) ESCAPE '\\')
           AND (CAST(?8 AS TEXT) IS NULL
                OR confidence IN (?8, ?9, ?10, ?11, ?12, ?13, ?14))";

/// `f`'s values for [`REPORT_WHERE`]'s placeholders, in order.
fn filter_params(f: &ReportFilter) -> Vec<Param<'_>> {
    let mut params = db_params![
        i64::from(f.unmatched_only),
        f.status,
        f.cpe_id.as_ref(),
        f.mac.as_ref(),
        f.id,
        f.public_ip.as_ref(),
        f.text.as_ref()
    ]
    .to_vec();
    for i in 0..CONFIDENCES_MAX {
        params.push(Param::from(f.confidences.get(i).copied()));
    }
    params
}

/// How many stored reports match `f`.
///
/// # Errors
/// [`DbError`].
pub fn count_reports(db: &impl Sql, f: &ReportFilter) -> Result<u64, DbError> {
    db.query_one(&format!("SELECT COUNT(*){REPORT_WHERE}"), &filter_params(f))
}

/// `limit` stored reports matching `f` from `offset`, in `f`'s order (ties by id).
///
/// # Errors
/// [`DbError`].
pub fn reports(
    db: &impl Sql,
    f: &ReportFilter,
    limit: u32,
    offset: u64,
) -> Result<Vec<ReportSummary>, DbError> {
    let dir = if f.ascending { "ASC" } else { "DESC" };
    let order = match f.sort {
        ReportSort::Received => format!("id {dir}"),
        ReportSort::ReportedTime => format!("at_ms {dir}, id {dir}"),
    };
    let sql = format!(
        "SELECT id, received_ms, source, public_ip, at_ms, confidence, cpe_id, mac, message_id,
                reporter, status, answered_ms, answered_by{REPORT_WHERE}
         ORDER BY {order} LIMIT {limit} OFFSET {offset}"
    );
    let rows = db.query(&sql, &filter_params(f))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(ReportSummary {
            id: r.get(0)?,
            received_ms: from_i64(r.get(1)?),
            source: r.get(2)?,
            public_ip: r.get(3)?,
            at_ms: from_i64(r.get(4)?),
            confidence: r.get(5)?,
            cpe_id: r.get(6)?,
            mac: r.get(7)?,
            message_id: r.get(8)?,
            reporter: r.get(9)?,
            status: r.get(10)?,
            answered_ms: r.get::<Option<i64>>(11)?.map(from_i64),
            answered_by: r.get(12)?,
        });
    }
    Ok(out)
}

/// One stored report's answer as JSON text.
///
/// # Errors
/// [`DbError`].
pub fn answer_json(db: &impl Sql, id: i64) -> Result<Option<String>, DbError> {
    db.query_opt(
        "SELECT result_json FROM abuse_reports WHERE id = ?1",
        db_params![id],
    )?
    .map(|row| row.get(0))
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::tests::backends;
    use crate::store::db::Backend;
    use crate::store::Store;

    /// Migration 18 (and PostgreSQL's second entry): the report list's indexes exist.
    #[test]
    fn the_report_lists_indexes_exist_on_both_backends() {
        for (url, _guard) in backends() {
            let store = Store::open_url(&url).unwrap();
            let db = &**store.db();
            let catalog = match db.backend() {
                Backend::Sqlite => {
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name IN (?1, ?2)"
                }
                Backend::Postgres => "SELECT COUNT(*) FROM pg_indexes WHERE indexname IN (?1, ?2)",
            };
            let indexes: i64 = db
                .query_one(
                    catalog,
                    db_params!["abuse_reports_by_at", "abuse_reports_by_ip"],
                )
                .unwrap();
            assert_eq!(indexes, 2, "{url}");
        }
    }
}
