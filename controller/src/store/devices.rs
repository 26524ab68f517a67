//! Device state, kept at ingest: one row per household device (table `devices`) with what
//! the controller knows of it now — verdict, score, action and until when, evidence, since
//! when, last seen, names, addresses, the newest window's counters and indicators.
//!
//! The row is the fold ([`verdicts::fold`]) of every alert and telemetry report of the
//! device, maintained in the transaction that stores the message:
//! - a fact newer than the row's newest (in fold order: time, then an alert after a report
//!   of the same instant) is applied to the row ([`DeviceView::apply`]);
//! - an older one (a late alert, a redelivered or another replica's message) makes the row
//!   be folded again from the device's stored facts ([`refold`]): its newest
//!   [`REFOLD_ALERTS`] alerts and [`REFOLD_REPORTS`] reports.
//!
//! So pages, the API and `/metrics` read rows; nothing folds history per request. The row
//! keeps the action as the router last reported it; readers apply
//! [`verdicts::action_in_force`] at their `now`. Retention never deletes rows here.

use std::net::IpAddr;

use smtpguard_protocol::{Alert, DeviceCounters, DeviceReport, MacAddr, Verdict};

use super::db::{Db, DbError, Row, Sql};
use super::{from_i64, to_i64, StoreError};
use crate::db_params;
use crate::verdicts::{self, AlertRow, DeviceView, Event, ReportRow};

/// Most alerts of one device a refold reads (the newest).
pub const REFOLD_ALERTS: u32 = 5_000;
/// Most telemetry reports of one device a refold reads (the newest).
pub const REFOLD_REPORTS: u32 = 2_000;

/// The columns [`view`] reads, in its order.
pub const COLUMNS: &str = "d.cpe_id, d.mac, d.hostname, d.vendor, d.ips_json, d.verdict, \
     d.score, d.since_ms, d.last_seen_ms, d.action, d.action_until_ms, d.evidence_json, \
     d.counters_json, d.window_secs, d.observed_json";

fn corrupt(column: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        column,
        detail: detail.to_string().chars().take(80).collect(),
    }
}

fn json<T: serde::de::DeserializeOwned>(
    column: &'static str,
    text: Option<String>,
) -> Result<Option<T>, StoreError> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(column, e)))
        .transpose()
}

fn from_ms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// One `devices` row (selected with [`COLUMNS`]) as a view, with the action as stored.
///
/// # Errors
/// [`StoreError`] on database errors or values the schema does not allow.
pub fn view(r: &Row) -> Result<DeviceView, StoreError> {
    let mac: String = r.get(1)?;
    let verdict: String = r.get(5)?;
    let action: String = r.get(9)?;
    let ips: Vec<IpAddr> = json("devices.ips_json", r.get(4)?)?.unwrap_or_default();
    let counters: Option<DeviceCounters> = json("devices.counters_json", r.get(12)?)?;
    let window_secs: Option<i64> = r.get(13)?;
    Ok(DeviceView {
        cpe_id: r.get(0)?,
        mac: mac.parse().map_err(|e| corrupt("devices.mac", e))?,
        hostname: r.get(2)?,
        vendor: r.get(3)?,
        ips,
        verdict: verdicts::parse_verdict(&verdict)
            .map_err(|_| corrupt("devices.verdict", &verdict))?,
        score: r.get::<f64>(6)? as f32,
        since_ms: from_ms(r.get(7)?),
        last_seen_ms: from_ms(r.get(8)?),
        action: verdicts::parse_action(&action).map_err(|_| corrupt("devices.action", &action))?,
        action_until_ms: r.get::<Option<i64>>(10)?.map(from_ms),
        evidence: json("devices.evidence_json", r.get(11)?)?.unwrap_or_default(),
        counters: counters.map(|c| {
            (
                c,
                window_secs.and_then(|s| u32::try_from(s).ok()).unwrap_or(0),
            )
        }),
        history: Vec::new(),
        observed: json("devices.observed_json", r.get(14)?)?.unwrap_or_default(),
    })
}

/// The device's row, with whether its newest fact was an alert.
fn current(
    tx: &impl Sql,
    cpe_id: &str,
    mac: &str,
) -> Result<Option<(DeviceView, bool)>, StoreError> {
    let row = tx.query_opt(
        &format!("SELECT {COLUMNS}, d.last_fact FROM devices d WHERE d.cpe_id = ?1 AND d.mac = ?2"),
        db_params![cpe_id, mac],
    )?;
    match row {
        None => Ok(None),
        Some(r) => {
            let last: String = r.get(15)?;
            Ok(Some((view(&r)?, last == "alert")))
        }
    }
}

/// Writes device rows (each device once) with one multi-row upsert per
/// [`super::arbiter::chunk_sizes`] chunk.
fn write_many(tx: &impl Sql, rows: &[(DeviceView, bool)]) -> Result<(), StoreError> {
    // The text columns of each row, owned here so the parameters can borrow them.
    struct Texts {
        mac: String,
        ips: String,
        evidence: String,
        counters: Option<String>,
        window_secs: Option<u32>,
        observed: String,
    }
    let texts = rows
        .iter()
        .map(|(v, _)| {
            let ips: Vec<String> = v.ips.iter().map(ToString::to_string).collect();
            let (counters, window_secs) = match &v.counters {
                Some((c, secs)) => (Some(serde_json::to_string(c)?), Some(*secs)),
                None => (None, None),
            };
            Ok(Texts {
                mac: v.mac.to_string(),
                ips: serde_json::to_string(&ips)?,
                evidence: serde_json::to_string(&v.evidence)?,
                counters,
                window_secs,
                observed: serde_json::to_string(&v.observed)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let mut offset = 0;
    for size in super::arbiter::window_chunk_sizes(rows.len()) {
        let mut params = Vec::with_capacity(size * 17);
        for ((v, last_was_alert), t) in rows[offset..offset + size]
            .iter()
            .zip(&texts[offset..offset + size])
        {
            params.extend(db_params![
                &v.cpe_id,
                &t.mac,
                v.hostname.as_ref(),
                v.vendor.as_ref(),
                &t.ips,
                v.verdict.as_str(),
                verdicts::severity(v.verdict),
                f64::from(v.score),
                to_i64(v.since_ms),
                to_i64(v.last_seen_ms),
                if *last_was_alert { "alert" } else { "report" },
                v.action.as_str(),
                v.action_until_ms.map(to_i64),
                &t.evidence,
                t.counters.as_ref(),
                t.window_secs,
                &t.observed,
            ]);
        }
        offset += size;
        tx.execute(
            &format!(
                "INSERT INTO devices (cpe_id, mac, hostname, vendor, ips_json, verdict, severity,
                    score, since_ms, last_seen_ms, last_fact, action, action_until_ms,
                    evidence_json, counters_json, window_secs, observed_json)
                 VALUES {}
                 ON CONFLICT (cpe_id, mac) DO UPDATE SET hostname = excluded.hostname,
                    vendor = excluded.vendor, ips_json = excluded.ips_json,
                    verdict = excluded.verdict, severity = excluded.severity,
                    score = excluded.score, since_ms = excluded.since_ms,
                    last_seen_ms = excluded.last_seen_ms, last_fact = excluded.last_fact,
                    action = excluded.action, action_until_ms = excluded.action_until_ms,
                    evidence_json = excluded.evidence_json,
                    counters_json = excluded.counters_json,
                    window_secs = excluded.window_secs, observed_json = excluded.observed_json",
                super::arbiter::value_rows(size, 17, "")
            ),
            &params,
        )?;
    }
    Ok(())
}

/// Applies one fact of `cpe_id`'s device to its row (see the module docs). The fact must
/// already be stored (a refold reads it back).
fn note(tx: &impl Sql, cpe_id: &str, mac: MacAddr, e: &Event<'_>) -> Result<(), StoreError> {
    let before = current(tx, cpe_id, &mac.to_string())?;
    note_on(tx, cpe_id, mac, e, before)
}

/// [`note`] on the row as read before the fact was stored.
fn note_on(
    tx: &impl Sql,
    cpe_id: &str,
    mac: MacAddr,
    e: &Event<'_>,
    before: Option<(DeviceView, bool)>,
) -> Result<(), StoreError> {
    match plan(cpe_id, mac, e, before) {
        Some((v, last_was_alert)) => write_many(tx, &[(v, last_was_alert)]),
        None => refold(tx, cpe_id, mac),
    }
}

/// What a fact does to the device's row as read before it: the new row (and whether its
/// newest fact is an alert), or `None` when the fact is older than the row's newest and the
/// row must be folded again from the stored facts.
fn plan(
    cpe_id: &str,
    mac: MacAddr,
    e: &Event<'_>,
    before: Option<(DeviceView, bool)>,
) -> Option<(DeviceView, bool)> {
    let is_alert = matches!(e, Event::Alert(_));
    match before {
        None => {
            let mut v = DeviceView::first_seen(cpe_id, mac, e);
            v.apply(e, true);
            Some((v, is_alert))
        }
        Some((mut v, last_was_alert)) if e.order_key() >= (v.last_seen_ms, last_was_alert) => {
            v.apply(e, false);
            Some((v, is_alert))
        }
        Some(_) => None,
    }
}

/// Folds the device's row again from its stored alerts and reports.
///
/// # Errors
/// [`StoreError`].
pub fn refold(tx: &impl Sql, cpe_id: &str, mac: MacAddr) -> Result<(), StoreError> {
    let m = mac.to_string();
    let alerts = super::history::device_alerts(tx, cpe_id, &m, REFOLD_ALERTS)?;
    let reports = super::history::device_reports(tx, cpe_id, &m, REFOLD_REPORTS)?;
    let mut events: Vec<Event<'_>> = alerts
        .iter()
        .map(Event::Alert)
        .chain(reports.iter().map(Event::Report))
        .collect();
    events.sort_by_key(Event::order_key);
    let Some(v) = verdicts::fold(cpe_id, mac, &events) else {
        return Ok(());
    };
    let last_was_alert = events.last().is_some_and(|e| matches!(e, Event::Alert(_)));
    write_many(tx, &[(v, last_was_alert)])
}

/// Notes an alert of `cpe_id` (already stored in `alerts`).
///
/// # Errors
/// [`StoreError`].
pub(super) fn note_alert(tx: &impl Sql, cpe_id: &str, a: &Alert) -> Result<(), StoreError> {
    let d = &a.device;
    let row = AlertRow {
        cpe_id: cpe_id.to_string(),
        mac: d.mac,
        at_ms: a.at_ms,
        previous: a.previous,
        verdict: d.verdict,
        score: d.score,
        action: d.action,
        action_until_ms: d.action_until_ms,
        hostname: d.hostname.clone(),
        vendor: d.vendor.clone(),
        ips: d.ips.clone(),
        evidence: d.evidence.clone(),
        observed: a.observed.clone(),
    };
    note(tx, cpe_id, d.mac, &Event::Alert(&row))
}

/// Notes one device's report of a telemetry window (already stored in `device_reports`);
/// `before` is the device's row read before the report was stored.
///
/// # Errors
/// [`StoreError`].
pub(super) fn note_report(
    tx: &impl Sql,
    cpe_id: &str,
    window_start_ms: u64,
    window_secs: u32,
    d: &DeviceReport,
    before: Before,
) -> Result<(), StoreError> {
    let row = report_row(cpe_id, window_start_ms, window_secs, d);
    note_on(tx, cpe_id, d.mac, &Event::Report(&row), before.0)
}

/// Notes every device report of one telemetry window (already stored in
/// `device_reports`) with three statements in all, whatever the number of devices: the rows
/// as read before ([`Before::read_many`]) are advanced in memory and written back in one
/// multi-row upsert; a device whose report is older than its row is folded again. `reports`
/// name each device once ([`Before::read_many`] is for such windows).
///
/// # Errors
/// [`StoreError`].
pub(super) fn note_reports(
    tx: &impl Sql,
    cpe_id: &str,
    window_start_ms: u64,
    window_secs: u32,
    reports: &[DeviceReport],
    mut before: std::collections::HashMap<MacAddr, Before>,
) -> Result<(), StoreError> {
    let mut writes = Vec::with_capacity(reports.len());
    let mut refolds = Vec::new();
    for d in reports {
        let row = report_row(cpe_id, window_start_ms, window_secs, d);
        let was = before.remove(&d.mac).and_then(|b| b.0);
        match plan(cpe_id, d.mac, &Event::Report(&row), was) {
            Some(w) => writes.push(w),
            None => refolds.push(d.mac),
        }
    }
    write_many(tx, &writes)?;
    for mac in refolds {
        refold(tx, cpe_id, mac)?;
    }
    Ok(())
}

fn report_row(cpe_id: &str, window_start_ms: u64, window_secs: u32, d: &DeviceReport) -> ReportRow {
    ReportRow {
        cpe_id: cpe_id.to_string(),
        mac: d.mac,
        window_start_ms,
        window_secs,
        verdict: d.verdict,
        score: d.score,
        action: d.action,
        action_until_ms: d.action_until_ms,
        hostname: d.hostname.clone(),
        vendor: d.vendor.clone(),
        ips: d.ips.clone(),
        counters: d.counters.clone(),
        evidence: d.evidence.clone(),
    }
}

/// A device's row as it was before a report of it is stored, read once for both the
/// history ([`Before::known`]) and the row itself ([`note_report`]).
#[derive(Debug)]
pub(super) struct Before(Option<(DeviceView, bool)>);

impl Before {
    /// Reads the row of `cpe_id`'s device `mac`.
    ///
    /// # Errors
    /// [`StoreError`].
    pub(super) fn read(tx: &impl Sql, cpe_id: &str, mac: &str) -> Result<Before, StoreError> {
        Ok(Before(current(tx, cpe_id, mac)?))
    }

    /// The rows of `cpe_id`'s devices `macs` (each named once), in as few statements as
    /// [`super::arbiter::chunk_sizes`] cuts them into; a device without a row has none.
    ///
    /// # Errors
    /// [`StoreError`].
    pub(super) fn read_many(
        tx: &impl Sql,
        cpe_id: &str,
        macs: &[MacAddr],
    ) -> Result<std::collections::HashMap<MacAddr, Before>, StoreError> {
        let texts: Vec<String> = macs.iter().map(ToString::to_string).collect();
        let mut out: std::collections::HashMap<MacAddr, Before> =
            macs.iter().map(|m| (*m, Before(None))).collect();
        let mut rest = &texts[..];
        for size in super::arbiter::window_chunk_sizes(rest.len()) {
            let (chunk, tail) = rest.split_at(size);
            rest = tail;
            let marks: Vec<String> = (2..size + 2).map(|i| format!("?{i}")).collect();
            let mut params = db_params![cpe_id].to_vec();
            params.extend(chunk.iter().map(|m| super::db::Param::Text(m)));
            for r in tx.query(
                &format!(
                    "SELECT {COLUMNS}, d.last_fact FROM devices d
                     WHERE d.cpe_id = ?1 AND d.mac IN ({})",
                    marks.join(", ")
                ),
                &params,
            )? {
                let last: String = r.get(15)?;
                let v = view(&r)?;
                out.insert(v.mac, Before(Some((v, last == "alert"))));
            }
        }
        Ok(out)
    }

    /// The newest verdict known of the device and as of when (its newest fact).
    pub(super) fn known(&self) -> Option<(Verdict, u64)> {
        self.0.as_ref().map(|(v, _)| (v.verdict, v.last_seen_ms))
    }
}

/// Fills `devices` from the stored alerts and reports when it is empty and they are not
/// (a SQLite database from before the table): each device of the stored facts is refolded.
/// Returns how many devices it folded.
///
/// # Errors
/// [`StoreError`].
pub fn backfill(db: &Db) -> Result<usize, StoreError> {
    // No rows, but facts to fold them from. Checked before the write lock is taken, so
    // every open of a new or up-to-date database stays a read.
    const WANTED: &str = "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM devices)
            AND (EXISTS (SELECT 1 FROM alerts) OR EXISTS (SELECT 1 FROM device_reports))
        THEN 1 ELSE 0 END";
    if !db.query_one::<bool>(WANTED, &[])? {
        return Ok(0);
    }
    // The write lock first, then look again: another process opening the same database
    // may have filled it meanwhile.
    db.transaction(|tx| {
        if !tx.query_one::<bool>(WANTED, &[])? {
            return Ok(0);
        }
        let keys = tx.query(
            "SELECT cpe_id, mac FROM alerts UNION SELECT cpe_id, mac FROM device_reports",
            &[],
        )?;
        let mut n = 0;
        for r in keys {
            let (cpe, mac): (String, String) = (r.get(0)?, r.get(1)?);
            let Ok(mac) = mac.parse::<MacAddr>() else {
                continue;
            };
            refold(tx, &cpe, mac)?;
            n += 1;
        }
        Ok(n)
    })
}

fn in_force(mut v: DeviceView, now_ms: u64) -> DeviceView {
    let (action, until) = verdicts::action_in_force(v.action, v.action_until_ms, now_ms);
    v.action = action;
    v.action_until_ms = until;
    v
}

fn collect(
    conn: &impl Sql,
    sql: &str,
    params: &[super::db::Param<'_>],
    now_ms: u64,
) -> Result<Vec<DeviceView>, StoreError> {
    conn.query(sql, params)?
        .iter()
        .map(|r| Ok(in_force(view(r)?, now_ms)))
        .collect()
}

/// The devices of one CPE (or of the whole fleet), worst verdict first, then by CPE and
/// MAC, with the action in force at `now_ms` and no history.
///
/// # Errors
/// [`StoreError`].
pub fn list(
    conn: &impl Sql,
    cpe_id: Option<&str>,
    now_ms: u64,
) -> Result<Vec<DeviceView>, StoreError> {
    collect(
        conn,
        &format!(
            "SELECT {COLUMNS} FROM devices d WHERE (CAST(?1 AS TEXT) IS NULL OR d.cpe_id = ?1)
             ORDER BY d.severity DESC, d.cpe_id, d.mac"
        ),
        db_params![cpe_id],
        now_ms,
    )
}

/// One device, with the action in force at `now_ms` and no history.
///
/// # Errors
/// [`StoreError`].
pub fn one(
    conn: &impl Sql,
    cpe_id: &str,
    mac: &str,
    now_ms: u64,
) -> Result<Option<DeviceView>, StoreError> {
    Ok(collect(
        conn,
        &format!("SELECT {COLUMNS} FROM devices d WHERE d.cpe_id = ?1 AND d.mac = ?2"),
        db_params![cpe_id, mac],
        now_ms,
    )?
    .pop())
}

/// Whether the device `mac` of `cpe_id` has a row (the controller has heard of it).
///
/// # Errors
/// [`DbError`].
pub fn known(conn: &impl Sql, cpe_id: &str, mac: &str) -> Result<bool, DbError> {
    Ok(conn
        .query_opt(
            "SELECT 1 FROM devices WHERE cpe_id = ?1 AND mac = ?2",
            db_params![cpe_id, mac],
        )?
        .is_some())
}

/// How many devices `cpe_id` has, and how many of them are suspicious or infected.
///
/// # Errors
/// [`DbError`].
pub fn flagged(conn: &impl Sql, cpe_id: &str) -> Result<(u64, u64), DbError> {
    let row = conn.query_opt(
        "SELECT COUNT(*),
            CAST(COALESCE(SUM(CASE WHEN verdict IN ('suspicious', 'infected')
                THEN 1 ELSE 0 END), 0) AS BIGINT)
         FROM devices WHERE cpe_id = ?1",
        db_params![cpe_id],
    )?;
    Ok(match row {
        Some(row) => (from_i64(row.get(0)?), from_i64(row.get(1)?)),
        None => (0, 0),
    })
}

/// Devices with one of `verdicts`, worst first and then the newest change first, at most
/// `limit`.
///
/// # Errors
/// [`StoreError`].
pub fn with_verdicts(
    conn: &impl Sql,
    verdicts: &[Verdict],
    limit: u32,
    now_ms: u64,
) -> Result<Vec<DeviceView>, StoreError> {
    let mut out = Vec::new();
    for v in verdicts {
        out.extend(collect(
            conn,
            &format!(
                "SELECT {COLUMNS} FROM devices d WHERE d.severity = ?1
                 ORDER BY d.since_ms DESC, d.cpe_id, d.mac LIMIT ?2"
            ),
            db_params![verdicts::severity(*v), limit],
            now_ms,
        )?);
    }
    out.sort_by_key(|d| {
        (
            std::cmp::Reverse(verdicts::severity(d.verdict)),
            std::cmp::Reverse(d.since_ms),
        )
    });
    out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(out)
}

/// How many devices the fleet has by verdict, and how many are blocked or rate-limited
/// at `now_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Devices by verdict: clean, suspicious, infected ([`verdicts::severity`] order).
    pub by_verdict: [u64; 3],
    /// Devices blocked now.
    pub blocked: u64,
    /// Devices rate-limited now.
    pub rate_limited: u64,
}

impl Counts {
    /// All devices.
    pub fn total(&self) -> u64 {
        self.by_verdict.iter().sum()
    }
}

/// The fleet's device counts (one indexed pass; nothing folded).
///
/// # Errors
/// [`StoreError`].
pub fn counts(conn: &impl Sql, now_ms: u64) -> Result<Counts, StoreError> {
    let mut out = Counts::default();
    for r in conn.query(
        "SELECT severity, COUNT(*) FROM devices GROUP BY severity",
        &[],
    )? {
        let (sev, n): (i64, i64) = (r.get(0)?, r.get(1)?);
        if let Some(slot) = usize::try_from(sev)
            .ok()
            .and_then(|i| out.by_verdict.get_mut(i))
        {
            *slot = from_ms(n);
        }
    }
    for r in conn.query(
        "SELECT action, COUNT(*) FROM devices
         WHERE action <> 'monitor' AND (action_until_ms IS NULL OR action_until_ms > ?1)
         GROUP BY action",
        db_params![to_i64(now_ms)],
    )? {
        let (action, n): (String, i64) = (r.get(0)?, r.get(1)?);
        match action.as_str() {
            "block" => out.blocked = from_ms(n),
            "rate-limit" => out.rate_limited = from_ms(n),
            _ => {}
        }
    }
    Ok(out)
}

/// What a device list asks for; every field narrows it (`None`: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Exactly this router.
    pub cpe: Option<String>,
    /// Exactly this MAC (canonical form).
    pub mac: Option<String>,
    /// `%text%` (LIKE-escaped with `\`) against host name, vendor, LAN addresses, CPE id,
    /// router label and household name.
    pub text: Option<String>,
    /// Routers that ever held this public address.
    pub public_ip: Option<String>,
    /// Verdict severities from..to ([`verdicts::severity`]).
    pub severity: Option<(u8, u8)>,
    /// The action in force: `monitor`, `rate-limit` or `block`.
    pub action: Option<&'static str>,
}

/// The order of a device list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Worst verdict first, then the newest change.
    #[default]
    Severity,
    /// Since when the verdict holds.
    Since,
    /// Newest news.
    LastSeen,
    /// Router id.
    Cpe,
    /// Host name (devices without one last).
    Name,
}

impl Sort {
    fn order(self, desc: bool) -> String {
        let dir = if desc { "DESC" } else { "ASC" };
        match self {
            Sort::Severity => format!("d.severity {dir}, d.since_ms {dir}, d.cpe_id, d.mac"),
            Sort::Since => format!("d.since_ms {dir}, d.cpe_id, d.mac"),
            Sort::LastSeen => format!("d.last_seen_ms {dir}, d.cpe_id, d.mac"),
            Sort::Cpe => format!("d.cpe_id {dir}, d.mac {dir}"),
            Sort::Name => format!("d.hostname IS NULL, d.hostname {dir}, d.cpe_id, d.mac"),
        }
    }
}

/// The devices matching `f`: how many in all, and `limit` of them from `offset` in
/// `sort` order, with the action in force at `now_ms`. One indexed query on the rows kept
/// at ingest, whatever the fleet's size.
///
/// # Errors
/// [`StoreError`].
#[allow(clippy::too_many_arguments)]
pub fn search(
    conn: &impl Sql,
    f: &Filter,
    sort: Sort,
    desc: bool,
    limit: u32,
    offset: u64,
    now_ms: u64,
) -> Result<(u64, Vec<DeviceView>), StoreError> {
    // Only what the filter needs: the joins cost a pass over the fleet when they are
    // not narrowed by anything.
    let mut from = String::from(" FROM devices d");
    let mut conds: Vec<String> = Vec::new();
    let mut params: Vec<super::db::Param<'_>> = Vec::new();
    // Pushes a value and names its placeholder.
    fn arg<'a>(params: &mut Vec<super::db::Param<'a>>, p: super::db::Param<'a>) -> String {
        params.push(p);
        format!("?{}", params.len())
    }
    if let Some(cpe) = &f.cpe {
        let n = arg(&mut params, cpe.into());
        conds.push(format!("d.cpe_id = {n}"));
    }
    if let Some(mac) = &f.mac {
        let n = arg(&mut params, mac.into());
        conds.push(format!("d.mac = {n}"));
    }
    if let Some(text) = &f.text {
        from.push_str(
            " LEFT JOIN cpes c ON c.cpe_id = d.cpe_id
              LEFT JOIN household_cpes hc ON hc.cpe_id = d.cpe_id
              LEFT JOIN households h ON h.id = hc.household_id",
        );
        // Case-insensitive on both backends (SQLite's LIKE is, PostgreSQL's is not).
        let n = arg(&mut params, text.into());
        let like = |column: &str| format!("LOWER({column}) LIKE LOWER({n}) ESCAPE '\\'");
        conds.push(format!(
            "({} OR {} OR {} OR {} OR {} OR {})",
            like("d.hostname"),
            like("d.vendor"),
            like("d.ips_json"),
            like("d.cpe_id"),
            like("c.label"),
            like("h.name")
        ));
    }
    if let Some(ip) = &f.public_ip {
        let n = arg(&mut params, ip.into());
        conds.push(format!(
            "d.cpe_id IN (SELECT cpe_id FROM cpe_state WHERE public_ip = {n}
                          UNION SELECT cpe_id FROM public_ips WHERE ip = {n})"
        ));
    }
    if let Some((lo, hi)) = f.severity {
        let lo = arg(&mut params, lo.into());
        let hi = arg(&mut params, hi.into());
        conds.push(format!("d.severity BETWEEN {lo} AND {hi}"));
    }
    if let Some(action) = f.action {
        let now = arg(&mut params, to_i64(now_ms).into());
        let action = arg(&mut params, action.into());
        conds.push(format!(
            "(CASE WHEN d.action <> 'monitor'
                AND (d.action_until_ms IS NULL OR d.action_until_ms > {now})
                THEN d.action ELSE 'monitor' END) = {action}"
        ));
    }
    if !conds.is_empty() {
        from.push_str(" WHERE ");
        from.push_str(&conds.join(" AND "));
    }
    let total: i64 = conn.query_one(&format!("SELECT COUNT(*){from}"), &params)?;
    let sql = format!(
        "SELECT {COLUMNS}{from} ORDER BY {} LIMIT {limit} OFFSET {offset}",
        sort.order(desc)
    );
    let rows = collect(conn, &sql, &params, now_ms)?;
    Ok((from_ms(total), rows))
}

#[cfg(test)]
mod tests {
    use smtpguard_protocol::{Action, AgentStats, Body, DeviceCounters, Observed, Telemetry};

    use super::*;
    use crate::store::db::tests::backends;
    use crate::store::{Received, Store};

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    fn report(mac: MacAddr, verdict: Verdict, n: u32) -> DeviceReport {
        DeviceReport {
            mac,
            ips: if n % 2 == 0 {
                vec![format!("192.168.1.{n}").parse().unwrap()]
            } else {
                vec![]
            },
            hostname: (n % 3 == 0).then(|| format!("host-{n}")),
            vendor: None,
            verdict,
            score: n as f32 / 100.0,
            action: if verdict == Verdict::Infected {
                Action::Block
            } else {
                Action::Monitor
            },
            action_until_ms: (verdict == Verdict::Infected)
                .then_some(u64::from(n) * 60_000 + 900_000),
            counters: DeviceCounters {
                distinct_mail_servers: n,
                ..Default::default()
            },
            evidence: if verdict == Verdict::Clean {
                vec![]
            } else {
                vec![format!("fact {n}")]
            },
        }
    }

    fn msg(cpe: &str, seq: u64, body: Body) -> Received {
        crate::store::received(cpe, seq, 0, body)
    }

    /// A device's life as a router tells it: telemetry every minute, alerts at changes.
    fn story(cpe: &str) -> Vec<Received> {
        let verdicts = [
            Verdict::Clean,
            Verdict::Clean,
            Verdict::Suspicious,
            Verdict::Infected,
            Verdict::Infected,
            Verdict::Clean,
            Verdict::Suspicious,
        ];
        let mut out = Vec::new();
        let mut seq = 0;
        for (i, v) in verdicts.iter().enumerate() {
            let n = u32::try_from(i).unwrap() + 1;
            let end = u64::from(n) * 60_000;
            if i > 0 && *v != verdicts[i - 1] {
                seq += 1;
                out.push(msg(
                    cpe,
                    seq,
                    Body::Alert(Alert {
                        device: report(A, *v, n),
                        previous: verdicts[i - 1],
                        at_ms: end - 20_000,
                        observed: Observed::default(),
                    }),
                ));
            }
            seq += 1;
            out.push(msg(
                cpe,
                seq,
                Body::Telemetry(Telemetry {
                    window_start_ms: end - 60_000,
                    window_secs: 60,
                    public_ip: None,
                    stats: AgentStats::default(),
                    devices: vec![report(A, *v, n), report(B, Verdict::Clean, n + 10)],
                    connections: vec![],
                }),
            ));
        }
        out
    }

    fn rows(store: &Store, cpe: Option<&str>) -> Vec<DeviceView> {
        list(store.db(), cpe, 1_000).unwrap()
    }

    /// What folding the stored facts of `cpe` gives (the reference the rows must equal).
    fn folded(store: &Store, cpe: &str) -> Vec<DeviceView> {
        let db = store.db();
        verdicts::devices(
            &verdicts::load_alerts(db, Some(cpe), 0, 10_000).unwrap(),
            &verdicts::load_reports(db, Some(cpe), 0, 10_000).unwrap(),
            1_000,
        )
    }

    #[test]
    fn rows_kept_at_ingest_equal_the_fold_in_any_arrival_order() {
        for (url, _guard) in backends() {
            let store = Store::open_url(&url).unwrap();
            let messages = story("cpe-d");
            for m in &messages {
                store.write_batch(std::slice::from_ref(m), &[]).unwrap();
            }
            let expected = folded(&store, "cpe-d");
            assert_eq!(rows(&store, None), expected, "{url}");
            assert_eq!(expected[0].verdict, Verdict::Suspicious);
            assert_eq!(expected[0].hostname.as_deref(), Some("host-6"));
            // Shuffled (a late alert, another replica's telemetry): the same rows. Each
            // order is told by another router of the same database.
            let mut state = 7u64;
            for k in 0..20 {
                let cpe = format!("cpe-s{k}");
                let mut shuffled = story(&cpe);
                for i in (1..shuffled.len()).rev() {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    shuffled.swap(i, usize::try_from(state >> 33).unwrap() % (i + 1));
                }
                for m in &shuffled {
                    store.write_batch(std::slice::from_ref(m), &[]).unwrap();
                }
                let mut want = expected.clone();
                for d in &mut want {
                    d.cpe_id.clone_from(&cpe);
                }
                assert_eq!(rows(&store, Some(&cpe)), want, "{url}: order {k}");
                assert_eq!(folded(&store, &cpe), want, "{url}: order {k}");
            }
        }
    }

    #[test]
    fn counts_and_flagged_lists_read_the_rows_with_the_action_in_force() {
        for (url, _guard) in backends() {
            let store = Store::open_url(&url).unwrap();
            let mut msgs = story("cpe-1");
            // A second router whose device is infected and blocked until 4:00 + 15 min.
            msgs.extend(story("cpe-2").into_iter().take(5));
            store.write_batch(&msgs, &[]).unwrap();
            let db = store.db();
            let c = counts(db, 0).unwrap();
            assert_eq!(c.by_verdict, [2, 1, 1], "{url}");
            assert_eq!((c.blocked, c.rate_limited), (1, 0));
            // The block has run out later on: the row is unchanged, the action in force is
            // not.
            let later = counts(db, 10_000_000).unwrap();
            assert_eq!(later.blocked, 0);
            let flagged = with_verdicts(
                db,
                &[Verdict::Infected, Verdict::Suspicious],
                10,
                10_000_000,
            )
            .unwrap();
            assert_eq!(flagged.len(), 2, "{url}");
            assert_eq!(
                (flagged[0].cpe_id.as_str(), flagged[0].verdict),
                ("cpe-2", Verdict::Infected)
            );
            assert_eq!(flagged[0].action, Action::Monitor);
            let one = one(db, "cpe-2", &A.to_string(), 0).unwrap().unwrap();
            assert_eq!(
                (one.verdict, one.action),
                (Verdict::Infected, Action::Block)
            );
            assert!(super::one(db, "cpe-9", &A.to_string(), 0)
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn a_search_narrows_by_text_mac_verdict_and_action_and_pages() {
        for (url, _guard) in backends() {
            let store = Store::open_url(&url).unwrap();
            let mut msgs = story("cpe-1");
            msgs.extend(story("cpe-2").into_iter().take(5));
            store.write_batch(&msgs, &[]).unwrap();
            let db = store.db();
            let find =
                |f: Filter, now: u64| search(db, &f, Sort::Severity, true, 10, 0, now).unwrap();
            let (n, all) = find(Filter::default(), 0);
            assert_eq!((n, all.len()), (4, 4), "{url}");
            assert_eq!(all[0].verdict, Verdict::Infected);
            let (n, _) = find(
                Filter {
                    text: Some("%host-6%".into()),
                    ..Filter::default()
                },
                0,
            );
            assert_eq!(n, 1, "{url}");
            // Case does not matter, on either backend; the joined tables are searched too.
            let (n, _) = find(
                Filter {
                    text: Some("%HOST-6%".into()),
                    ..Filter::default()
                },
                0,
            );
            assert_eq!(n, 1, "{url}");
            let (n, _) = find(
                Filter {
                    text: Some("%CPE-2%".into()),
                    ..Filter::default()
                },
                0,
            );
            assert_eq!(n, 2, "{url}");
            let (n, hits) = find(
                Filter {
                    mac: Some(B.to_string()),
                    ..Filter::default()
                },
                0,
            );
            assert_eq!(n, 2);
            assert!(hits.iter().all(|d| d.mac == B));
            let (n, _) = find(
                Filter {
                    severity: Some((1, 2)),
                    ..Filter::default()
                },
                0,
            );
            assert_eq!(n, 2, "{url}");
            let (n, hits) = find(
                Filter {
                    action: Some("block"),
                    cpe: Some("cpe-2".into()),
                    ..Filter::default()
                },
                0,
            );
            assert_eq!((n, hits[0].cpe_id.as_str()), (1, "cpe-2"), "{url}");
            // Once the block has run out nothing is blocked, and the rest is monitored.
            assert_eq!(
                find(
                    Filter {
                        action: Some("block"),
                        ..Filter::default()
                    },
                    10_000_000
                )
                .0,
                0
            );
            assert_eq!(
                find(
                    Filter {
                        action: Some("monitor"),
                        ..Filter::default()
                    },
                    10_000_000
                )
                .0,
                4,
                "{url}"
            );
            // Routers that held a public address: none was reported here.
            let (n, _) = find(
                Filter {
                    public_ip: Some("198.51.100.7".into()),
                    ..Filter::default()
                },
                0,
            );
            assert_eq!(n, 0, "{url}");
            // Pages: 3 per page, the second has the last one.
            let (n, page2) = search(db, &Filter::default(), Sort::Cpe, false, 3, 3, 0).unwrap();
            assert_eq!((n, page2.len()), (4, 1), "{url}");
            assert_eq!(page2[0].cpe_id, "cpe-2");
            let (_, named) = search(db, &Filter::default(), Sort::Name, false, 10, 0, 0).unwrap();
            assert!(named[0].hostname.is_some(), "{url}: named devices first");
        }
    }

    #[test]
    fn an_older_database_gets_its_rows_from_the_stored_facts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let store = Store::open(&path).unwrap();
            store.write_batch(&story("cpe-o"), &[]).unwrap();
        }
        let before = {
            let store = Store::open(&path).unwrap();
            rows(&store, None)
        };
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute("DELETE FROM devices", []).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(rows(&store, None), before);
        assert_eq!(before.len(), 2);
    }
}
