//! Verdict history, kept at ingest in the transaction of the message that tells it.
//!
//! Two tables (migration 2 in [`super::schema`]):
//! - `verdict_changes`: one row per change of a device's verdict, from an alert (`source =
//!   'alert'`) or, when the alert never arrived, rebuilt from telemetry (`'telemetry'`).
//! - the device's row in `devices` ([`super::devices`], updated right after this module
//!   looked at it): the newest verdict the controller knows and as of when, the reference
//!   telemetry is compared with.
//!
//! Rules, all order-tolerant (alerts and telemetry of one router may arrive out of order, and
//! replicas sharing the ingest store them in any order):
//! - An alert is a change: stored as such. A change rebuilt from telemetry that it explains
//!   (same device and new verdict, seen no earlier than the alert, up to the next alert of
//!   the device) is removed: the alert was late, not lost.
//! - A device report in telemetry, observed at the end of its window, whose verdict differs
//!   from the newest known one (a device never seen before counts as clean) records a
//!   change from the known verdict to the reported one, with the report's evidence: the
//!   router changed its mind and its alert was lost. A report older than what is known
//!   changes nothing.
//!
//! It also reads the stored facts back for the views and the refold: alerts, device reports
//! of telemetry windows and verdict changes ([`load_alerts`], [`load_reports`],
//! [`load_history`], re-exported by [`crate::verdicts`]).

use smtpguard_protocol::{Alert, DeviceReport, MacAddr, Verdict};

use super::db::{DbError, Sql};
use super::{to_i64, StoreError};
use crate::db_params;
use crate::verdicts::{
    parse_action, parse_verdict, AlertRow, ChangeSource, HistoryRow, ReportRow, VerdictChange,
    VerdictError,
};

/// Where a stored verdict change came from.
pub const SOURCE_ALERT: &str = "alert";
/// A change rebuilt from telemetry because its alert did not arrive.
pub const SOURCE_TELEMETRY: &str = "telemetry";

/// How much later than an alert's own time a telemetry report may place the same change
/// and still be explained by it: telemetry windows end on whole seconds.
const SLACK_MS: u64 = 1_000;

#[allow(clippy::too_many_arguments)]
fn insert_change(
    tx: &impl Sql,
    cpe_id: &str,
    seq: i64,
    mac: &str,
    at_ms: u64,
    previous: Verdict,
    d: &DeviceReport,
    source: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO verdict_changes (cpe_id, mac, at_ms, previous, verdict, score, action,
            action_until_ms, evidence_json, source, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        db_params![
            cpe_id,
            mac,
            to_i64(at_ms),
            previous.as_str(),
            d.verdict.as_str(),
            f64::from(d.score),
            d.action.as_str(),
            d.action_until_ms.map(to_i64),
            &serde_json::to_string(&d.evidence)?,
            source,
            seq,
        ],
    )?;
    Ok(())
}

/// Records the change an alert tells (see the module docs).
///
/// # Errors
/// [`StoreError`].
pub(super) fn note_alert(
    tx: &impl Sql,
    cpe_id: &str,
    seq: i64,
    a: &Alert,
) -> Result<(), StoreError> {
    let d = &a.device;
    let mac = d.mac.to_string();
    // The next alert of this device after this one bounds what this one explains.
    let next: Option<i64> = tx.query_one(
        "SELECT MIN(at_ms) FROM verdict_changes
         WHERE cpe_id = ?1 AND mac = ?2 AND source = 'alert' AND at_ms > ?3",
        db_params![cpe_id, &mac, to_i64(a.at_ms)],
    )?;
    // Telemetry windows end on whole seconds: a rebuilt change up to [`SLACK_MS`] before
    // the alert is the same change.
    tx.execute(
        "DELETE FROM verdict_changes
         WHERE cpe_id = ?1 AND mac = ?2 AND source = 'telemetry' AND verdict = ?3
           AND at_ms >= ?4 AND at_ms < ?5",
        db_params![
            cpe_id,
            &mac,
            d.verdict.as_str(),
            to_i64(a.at_ms.saturating_sub(SLACK_MS)),
            next.unwrap_or(i64::MAX),
        ],
    )?;
    insert_change(tx, cpe_id, seq, &mac, a.at_ms, a.previous, d, SOURCE_ALERT)
}

/// Compares one device report of a telemetry window observed at `at_ms` (the window's
/// end) with the known verdict (`known`: the device's newest verdict and as of when, from
/// its row before this report) and records a change when they differ (see the module
/// docs).
///
/// # Errors
/// [`StoreError`].
pub(super) fn note_report(
    tx: &impl Sql,
    cpe_id: &str,
    seq: i64,
    at_ms: u64,
    d: &DeviceReport,
    known: Option<(Verdict, u64)>,
) -> Result<(), StoreError> {
    let mac = d.mac.to_string();
    let previous = match known {
        Some((_, known_at)) if known_at > at_ms => return Ok(()),
        Some((v, _)) => v,
        None => Verdict::Clean,
    };
    if previous != d.verdict {
        insert_change(tx, cpe_id, seq, &mac, at_ms, previous, d, SOURCE_TELEMETRY)?;
    }
    Ok(())
}

// ---- reading the stored facts ----

fn parse_mac(s: &str) -> Result<MacAddr, VerdictError> {
    s.parse().map_err(
        |e: smtpguard_protocol::types::MacParseError| VerdictError::Corrupt {
            column: "mac",
            detail: e.to_string(),
        },
    )
}

fn json<T: serde::de::DeserializeOwned + Default>(
    column: &'static str,
    s: Option<String>,
) -> Result<T, VerdictError> {
    match s {
        None => Ok(T::default()),
        Some(s) => serde_json::from_str(&s).map_err(|e| VerdictError::Corrupt {
            column,
            detail: e.to_string(),
        }),
    }
}

fn ms(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

type RawAlert = (
    String,
    String,
    i64,
    String,
    String,
    f64,
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Alerts of one CPE (or all when `None`) at or after `since_ms`, oldest first, at most
/// `limit` (the newest kept).
///
/// # Errors
/// [`VerdictError`] on database errors or corrupt rows.
pub fn load_alerts(
    conn: &impl Sql,
    cpe_id: Option<&str>,
    since_ms: u64,
    limit: u32,
) -> Result<Vec<AlertRow>, VerdictError> {
    alerts_where(conn, cpe_id, None, since_ms, limit)
}

/// One device's newest `limit` alerts, oldest first.
///
/// # Errors
/// [`VerdictError`] on database errors or corrupt rows.
pub fn device_alerts(
    conn: &impl Sql,
    cpe_id: &str,
    mac: &str,
    limit: u32,
) -> Result<Vec<AlertRow>, VerdictError> {
    alerts_where(conn, Some(cpe_id), Some(mac), 0, limit)
}

fn alerts_where(
    conn: &impl Sql,
    cpe_id: Option<&str>,
    mac: Option<&str>,
    since_ms: u64,
    limit: u32,
) -> Result<Vec<AlertRow>, VerdictError> {
    let rows = conn.query(
        "SELECT * FROM (SELECT cpe_id, mac, at_ms, previous, verdict, score, action, action_until_ms,
                hostname, vendor, ips_json, evidence_json, observed_json, id
         FROM alerts WHERE (CAST(?1 AS TEXT) IS NULL OR cpe_id = ?1)
           AND (CAST(?4 AS TEXT) IS NULL OR mac = ?4) AND at_ms >= ?2
         ORDER BY at_ms DESC, id DESC LIMIT ?3) newest ORDER BY at_ms, id",
        db_params![cpe_id, to_i64(since_ms), limit, mac],
    )?;
    let rows = rows.iter().map(|r| -> Result<RawAlert, DbError> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
            r.get(11)?,
            r.get(12)?,
        ))
    });
    let mut out = Vec::new();
    for row in rows {
        let raw: RawAlert = row?;
        let (cpe, mac, at, prev, verdict, score, action, until, host, vendor, ips, ev, obs) = raw;
        out.push(AlertRow {
            cpe_id: cpe,
            mac: parse_mac(&mac)?,
            at_ms: ms(Some(at)).unwrap_or(0),
            previous: parse_verdict(&prev)?,
            verdict: parse_verdict(&verdict)?,
            score: score as f32,
            action: parse_action(&action)?,
            action_until_ms: ms(until),
            hostname: host,
            vendor,
            ips: json("alerts.ips_json", ips)?,
            evidence: json("alerts.evidence_json", ev)?,
            observed: json("alerts.observed_json", obs)?,
        });
    }
    Ok(out)
}

/// Device reports of one CPE (or all) from telemetry windows starting at or after
/// `since_ms`, at most `limit` (the newest kept).
///
/// # Errors
/// [`VerdictError`] on database errors or corrupt rows.
pub fn load_reports(
    conn: &impl Sql,
    cpe_id: Option<&str>,
    since_ms: u64,
    limit: u32,
) -> Result<Vec<ReportRow>, VerdictError> {
    reports_where(conn, cpe_id, None, since_ms, limit)
}

/// One device's reports from its newest `limit` telemetry windows, oldest first.
///
/// # Errors
/// [`VerdictError`] on database errors or corrupt rows.
pub fn device_reports(
    conn: &impl Sql,
    cpe_id: &str,
    mac: &str,
    limit: u32,
) -> Result<Vec<ReportRow>, VerdictError> {
    reports_where(conn, Some(cpe_id), Some(mac), 0, limit)
}

fn reports_where(
    conn: &impl Sql,
    cpe_id: Option<&str>,
    mac: Option<&str>,
    since_ms: u64,
    limit: u32,
) -> Result<Vec<ReportRow>, VerdictError> {
    let rows = conn.query(
        "SELECT d.cpe_id, d.mac, t.window_start_ms, t.window_secs, d.verdict, d.score, d.action,
                d.action_until_ms, d.hostname, d.vendor, d.ips_json, d.counters_json, d.evidence_json
         FROM device_reports d JOIN telemetry t ON t.cpe_id = d.cpe_id AND t.seq = d.seq
         WHERE (CAST(?1 AS TEXT) IS NULL OR d.cpe_id = ?1)
           AND (CAST(?4 AS TEXT) IS NULL OR d.mac = ?4)
           AND t.window_start_ms >= ?2
         ORDER BY t.window_start_ms DESC LIMIT ?3",
        db_params![cpe_id, to_i64(since_ms), limit, mac],
    )?;
    let rows = rows.iter().map(|r| -> Result<_, DbError> {
        Ok((
            r.get::<String>(0)?,
            r.get::<String>(1)?,
            r.get::<i64>(2)?,
            r.get::<i64>(3)?,
            r.get::<String>(4)?,
            r.get::<f64>(5)?,
            r.get::<String>(6)?,
            r.get::<Option<i64>>(7)?,
            r.get::<Option<String>>(8)?,
            r.get::<Option<String>>(9)?,
            r.get::<Option<String>>(10)?,
            r.get::<Option<String>>(11)?,
            r.get::<Option<String>>(12)?,
        ))
    });
    let mut out = Vec::new();
    for row in rows {
        let (cpe, mac, start, secs, verdict, score, action, until, host, vendor, ips, ctr, ev) =
            row?;
        out.push(ReportRow {
            cpe_id: cpe,
            mac: parse_mac(&mac)?,
            window_start_ms: ms(Some(start)).unwrap_or(0),
            window_secs: u32::try_from(secs).unwrap_or(0),
            verdict: parse_verdict(&verdict)?,
            score: score as f32,
            action: parse_action(&action)?,
            action_until_ms: ms(until),
            hostname: host,
            vendor,
            ips: json("device_reports.ips_json", ips)?,
            counters: json("device_reports.counters_json", ctr)?,
            evidence: json("device_reports.evidence_json", ev)?,
        });
    }
    out.reverse();
    Ok(out)
}

/// Stored verdict changes of one CPE (or all) at or after `since_ms`, oldest first, at most
/// `limit` (the newest kept).
///
/// # Errors
/// [`VerdictError`] on database errors or corrupt rows.
pub fn load_history(
    conn: &impl Sql,
    cpe_id: Option<&str>,
    since_ms: u64,
    limit: u32,
) -> Result<Vec<HistoryRow>, VerdictError> {
    let rows = conn.query(
        "SELECT * FROM (SELECT cpe_id, mac, at_ms, previous, verdict, score, action,
                action_until_ms, evidence_json, source, id
         FROM verdict_changes WHERE (CAST(?1 AS TEXT) IS NULL OR cpe_id = ?1) AND at_ms >= ?2
         ORDER BY at_ms DESC, id DESC LIMIT ?3) newest ORDER BY at_ms, id",
        db_params![cpe_id, to_i64(since_ms), limit],
    )?;
    let rows = rows.iter().map(|r| -> Result<_, DbError> {
        Ok((
            r.get::<String>(0)?,
            r.get::<String>(1)?,
            r.get::<i64>(2)?,
            r.get::<String>(3)?,
            r.get::<String>(4)?,
            r.get::<f64>(5)?,
            r.get::<String>(6)?,
            r.get::<Option<i64>>(7)?,
            r.get::<Option<String>>(8)?,
            r.get::<String>(9)?,
        ))
    });
    let mut out = Vec::new();
    for row in rows {
        let (cpe, mac, at, prev, verdict, score, action, until, ev, source) = row?;
        let source = match source.as_str() {
            SOURCE_ALERT => ChangeSource::Alert,
            SOURCE_TELEMETRY => ChangeSource::Telemetry,
            other => {
                return Err(VerdictError::Corrupt {
                    column: "verdict_changes.source",
                    detail: other.chars().take(40).collect(),
                })
            }
        };
        out.push((
            cpe,
            parse_mac(&mac)?,
            VerdictChange {
                source,
                at_ms: ms(Some(at)).unwrap_or(0),
                previous: parse_verdict(&prev)?,
                verdict: parse_verdict(&verdict)?,
                score: score as f32,
                action: parse_action(&action)?,
                action_until_ms: ms(until),
                evidence: json("verdict_changes.evidence_json", ev)?,
            },
        ));
    }
    Ok(out)
}

/// The sequence numbers of `cpe_id`'s stored telemetry windows, ascending.
#[cfg(test)]
pub(crate) fn telemetry_seqs(db: &impl Sql, cpe_id: &str) -> Vec<u64> {
    db.query(
        "SELECT seq FROM telemetry WHERE cpe_id = ?1 ORDER BY seq",
        db_params![cpe_id],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0).unwrap())
    .collect()
}

#[cfg(test)]
mod tests {
    use smtpguard_protocol::{
        Action, AgentStats, Body, DeviceCounters, MacAddr, Observed, Telemetry,
    };

    use super::*;
    use crate::store::db::tests::backends;
    use crate::store::{Received, Store};

    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 9]);

    fn report(verdict: Verdict, evidence: &str) -> DeviceReport {
        DeviceReport {
            mac: MAC,
            ips: vec![],
            hostname: None,
            vendor: None,
            verdict,
            score: 0.9,
            action: Action::Monitor,
            action_until_ms: None,
            counters: DeviceCounters::default(),
            evidence: vec![evidence.to_string()],
        }
    }

    fn msg(seq: u64, body: Body) -> Received {
        crate::store::received("cpe-h", seq, 0, body)
    }

    fn alert(seq: u64, at_ms: u64, previous: Verdict, verdict: Verdict) -> Received {
        msg(
            seq,
            Body::Alert(Alert {
                device: report(verdict, &format!("alert {seq}")),
                previous,
                at_ms,
                observed: Observed::default(),
            }),
        )
    }

    /// Telemetry whose window ends at `end_ms`.
    fn telemetry(seq: u64, end_ms: u64, verdict: Verdict) -> Received {
        msg(
            seq,
            Body::Telemetry(Telemetry {
                window_start_ms: end_ms - 60_000,
                window_secs: 60,
                public_ip: None,
                stats: AgentStats::default(),
                devices: vec![report(verdict, &format!("report {seq}"))],
                connections: vec![],
            }),
        )
    }

    fn history(store: &Store) -> Vec<(u64, String, String, String, String)> {
        store
            .db()
            .query(
                "SELECT at_ms, previous, verdict, source, evidence_json FROM verdict_changes
                 ORDER BY at_ms, id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get(0).unwrap(),
                    r.get(1).unwrap(),
                    r.get(2).unwrap(),
                    r.get(3).unwrap(),
                    r.get(4).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn alerts_are_changes_and_agreeing_telemetry_adds_none() {
        for (url, _guard) in backends() {
            let store = Store::open_url(&url).unwrap();
            store
                .write_batch(
                    &[
                        telemetry(1, 60_000, Verdict::Clean),
                        alert(2, 70_000, Verdict::Clean, Verdict::Infected),
                        telemetry(3, 120_000, Verdict::Infected),
                        // Older than the alert: changes nothing.
                        telemetry(0, 65_000, Verdict::Clean),
                    ],
                    &[],
                )
                .unwrap();
            let h = history(&store);
            assert_eq!(h.len(), 1, "{url}: {h:?}");
            assert_eq!(h[0].0, 70_000);
            assert_eq!(h[0].3, "alert");
        }
    }

    #[test]
    fn a_lost_alert_is_rebuilt_from_telemetry_and_a_late_one_replaces_it() {
        for (url, _guard) in backends() {
            let store = Store::open_url(&url).unwrap();
            store
                .write_batch(
                    &[
                        telemetry(1, 60_000, Verdict::Clean),
                        telemetry(3, 120_000, Verdict::Infected),
                        telemetry(4, 180_000, Verdict::Infected),
                    ],
                    &[],
                )
                .unwrap();
            let h = history(&store);
            assert_eq!(
                h,
                vec![(
                    120_000,
                    "clean".into(),
                    "infected".into(),
                    "telemetry".into(),
                    "[\"report 3\"]".into()
                )],
                "{url}"
            );
            // The alert was late, not lost: it takes the rebuilt entry's place.
            store
                .write_batch(&[alert(2, 100_000, Verdict::Clean, Verdict::Infected)], &[])
                .unwrap();
            let h = history(&store);
            assert_eq!(h.len(), 1, "{url}: {h:?}");
            assert_eq!((h[0].0, h[0].3.as_str()), (100_000, "alert"));
            // The device is released and cleans up; that alert is lost too.
            store
                .write_batch(&[telemetry(6, 300_000, Verdict::Clean)], &[])
                .unwrap();
            let h = history(&store);
            assert_eq!(h.len(), 2, "{url}: {h:?}");
            assert_eq!(
                (h[1].1.as_str(), h[1].2.as_str(), h[1].3.as_str()),
                ("infected", "clean", "telemetry")
            );
        }
    }

    #[test]
    fn a_device_first_seen_infected_starts_its_history_from_clean() {
        for (url, _guard) in backends() {
            let store = Store::open_url(&url).unwrap();
            store
                .write_batch(&[telemetry(1, 60_000, Verdict::Suspicious)], &[])
                .unwrap();
            let h = history(&store);
            assert_eq!(h.len(), 1, "{url}");
            assert_eq!((h[0].1.as_str(), h[0].2.as_str()), ("clean", "suspicious"));
        }
    }

    #[test]
    fn the_migration_turns_stored_alerts_into_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(crate::store::schema::MIGRATIONS[0])
                .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO alerts (cpe_id, seq, mac, at_ms, previous, verdict, score, action,
                    ips_json, evidence_json, observed_json)
                 VALUES ('cpe-h', 5, ?1, 1000, 'clean', 'infected', 0.9, 'block', '[]',
                    '[\"old alert\"]', '{}')",
                [MAC.to_string()],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let h = history(&store);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].4, "[\"old alert\"]");
        // The known verdict came along: telemetry that agrees adds nothing.
        store
            .write_batch(&[telemetry(6, 120_000, Verdict::Infected)], &[])
            .unwrap();
        assert_eq!(history(&store).len(), 1);
    }
}
