//! Abuse reports: an outside complaint ("spam from 203.0.113.7 at 14:05") turned into the
//! household and the device responsible, with the router's own connection log as evidence.
//!
//! - [`arf`]: reads RFC 5965 ARF reports (bounded, hostile input).
//! - [`date`]: the date forms reports use.
//! - [`mapping`]: the pure mapping from an [`AbuseQuery`] to a [`mapping::Match`].
//! - this module: the JSON form of a query, and [`submit`], the shell that loads the rows
//!   the mapping needs, runs it, and stores every report (matched or not) in
//!   `abuse_reports`, all through [`crate::store::abuse`].

pub mod arf;
pub mod date;
pub mod mapping;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::store::abuse as stored;
use crate::store::db::{DbError, Sql};
use crate::verdicts::{self, VerdictError};
use mapping::{AddressPeriod, Confidence, DeviceAtTime, Match};

/// The question an abuse report asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AbuseQuery {
    /// The household's public address the mail came from.
    pub public_ip: IpAddr,
    /// When the mail arrived (Unix ms).
    pub at_ms: u64,
    /// The receiving server, if known.
    pub dest_ip: Option<IpAddr>,
    /// The receiving port, if known.
    pub dest_port: Option<u16>,
    /// The source port the reporter saw (the NAT'd port), if known.
    pub source_port: Option<u16>,
}

/// A report could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum AbuseError {
    /// The ARF report is unreadable.
    #[error("ARF report: {0}")]
    Arf(#[from] arf::ArfError),
    /// The JSON report is unreadable.
    #[error("JSON report: {0}")]
    Json(String),
    /// Reading rows for the mapping failed.
    #[error(transparent)]
    Verdicts(#[from] VerdictError),
    /// The database reported an error.
    #[error("database: {0}")]
    Db(#[from] DbError),
}

impl AbuseError {
    /// Whether the reporter's input is at fault (4xx) rather than the server (5xx).
    pub fn is_client_error(&self) -> bool {
        matches!(self, AbuseError::Arf(_) | AbuseError::Json(_))
    }

    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AbuseError::Arf(e) => e.label(),
            AbuseError::Json(_) => "bad_json",
            AbuseError::Verdicts(_) | AbuseError::Db(_) => "internal",
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TimeField {
    Ms(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonQuery {
    /// The public address, or the router's WAN address (from the ISP's CGNAT log).
    #[serde(alias = "wan_ip")]
    public_ip: String,
    time: TimeField,
    #[serde(default)]
    dest_ip: Option<String>,
    #[serde(default)]
    dest_port: Option<u16>,
    #[serde(default)]
    source_port: Option<u16>,
}

/// Reads `{"public_ip": "203.0.113.7", "time": "2025-03-04T13:05:09Z" | 1741093509000,
/// "dest_ip"?: "...", "dest_port"?: 25, "source_port"?: 40123}`. `wan_ip` is accepted for
/// `public_ip` (a router's WAN address behind carrier-grade NAT, with the port the CGNAT
/// log names as `source_port`).
///
/// # Errors
/// [`AbuseError::Json`] naming the problem.
pub fn parse_json(raw: &[u8]) -> Result<AbuseQuery, AbuseError> {
    if raw.len() > arf::MAX_REPORT_BYTES {
        return Err(AbuseError::Arf(arf::ArfError::TooLarge(raw.len())));
    }
    let j: JsonQuery = serde_json::from_slice(raw).map_err(|e| AbuseError::Json(e.to_string()))?;
    let ip = |s: &str, field: &str| {
        s.parse::<IpAddr>().map_err(|_| {
            AbuseError::Json(format!(
                "{field} {:?} is not an IP address",
                s.chars().take(60).collect::<String>()
            ))
        })
    };
    let at_ms = match j.time {
        TimeField::Ms(ms) => ms,
        TimeField::Text(t) => {
            date::parse_any(&t).map_err(|e| AbuseError::Json(format!("time: {e}")))?
        }
    };
    Ok(AbuseQuery {
        public_ip: ip(&j.public_ip, "public_ip")?,
        at_ms,
        dest_ip: j.dest_ip.as_deref().map(|d| ip(d, "dest_ip")).transpose()?,
        dest_port: j.dest_port,
        source_port: j.source_port,
    })
}

/// A stored report with its answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredReport {
    /// Its id.
    pub id: i64,
    /// When it was received (Unix ms).
    pub received_ms: u64,
    /// `arf` or `json`.
    pub source: String,
    /// The question.
    pub query: AbuseQuery,
    /// The ARF `Feedback-Type`.
    pub feedback_type: Option<String>,
    /// The reported message's `Message-ID`.
    pub message_id: Option<String>,
    /// The answer.
    pub answer: Match,
}

impl StoredReport {
    /// What the audit log says of this lookup: the question and the device found.
    pub fn audit_detail(&self) -> String {
        let q = &self.query;
        let port = q.source_port.map(|p| format!(":{p}")).unwrap_or_default();
        let found = match (&self.answer.cpe_id, &self.answer.mac) {
            (Some(c), Some(m)) => format!("{c} {m}"),
            (Some(c), None) => c.clone(),
            _ => "no device".into(),
        };
        format!(
            "{}{port} at {} ms -> {found} ({:?})",
            q.public_ip, q.at_ms, self.answer.confidence
        )
    }
}

/// Every period in which a CPE held the public address `ip` (at most 1000, oldest first),
/// from the address history the ingest keeps.
///
/// # Errors
/// [`AbuseError`] on database errors.
pub fn address_periods(db: &impl Sql, ip: IpAddr) -> Result<Vec<AddressPeriod>, AbuseError> {
    Ok(stored::address_periods(db, ip)?)
}

/// The CPE that held the public address `ip` at `at_ms`, by the same rule the abuse
/// mapping uses ([`mapping::holder`]).
///
/// # Errors
/// [`AbuseError`] on database errors.
pub fn holder_at(db: &impl Sql, ip: IpAddr, at_ms: u64) -> Result<Option<String>, AbuseError> {
    let periods = address_periods(db, ip)?;
    Ok(mapping::holder(&periods, ip, at_ms).map(str::to_string))
}

/// Loads what the mapping needs for `q` and answers it.
///
/// # Errors
/// [`AbuseError`] on database errors.
pub fn answer(db: &impl Sql, q: &AbuseQuery) -> Result<Match, AbuseError> {
    let translations = match q.source_port {
        Some(port) => load_translations(db, q, port)?,
        None => Vec::new(),
    };
    let periods = address_periods(db, q.public_ip)?;
    // The CPE whose translation matches, else the one that held the address.
    let cpe = match mapping::translation(q, &translations) {
        Some(c) => Some(c.cpe_id.clone()),
        None => mapping::holder(&periods, q.public_ip, q.at_ms).map(str::to_string),
    };
    let Some(cpe) = cpe else {
        return Ok(mapping::map(q, &periods, &translations, &[]));
    };
    let lo = q.at_ms.saturating_sub(mapping::BEFORE_MS);
    let hi = q.at_ms.saturating_add(mapping::AFTER_MS);
    let mut conns = stored::connections(db, &cpe, lo, hi)?;
    // The matching translation stays in the list even when the window was cut short.
    for t in translations {
        if !conns.contains(&t) {
            conns.push(t);
        }
    }
    let alerts: Vec<_> = verdicts::load_alerts(
        db,
        Some(&cpe),
        q.at_ms.saturating_sub(verdicts::LOOKBACK_MS),
        verdicts::MAX_ALERT_ROWS,
    )?
    .into_iter()
    .filter(|a| a.at_ms <= hi)
    .collect();
    let reports: Vec<_> = verdicts::load_reports(
        db,
        Some(&cpe),
        q.at_ms.saturating_sub(3_600_000),
        verdicts::MAX_REPORT_ROWS,
    )?
    .into_iter()
    .filter(|r| r.window_start_ms <= q.at_ms)
    .collect();
    let devices: Vec<DeviceAtTime> = verdicts::devices(&alerts, &reports, q.at_ms)
        .into_iter()
        .map(|d| DeviceAtTime {
            name: d.display_name(),
            cpe_id: d.cpe_id,
            mac: d.mac,
            verdict: d.verdict,
            score: d.score,
        })
        .collect();
    Ok(mapping::map(q, &periods, &conns, &devices))
}

/// Every CPE's logged connections that left a router as `q.public_ip`:`port` within the
/// translation tolerance around `q.at_ms` (index `connections_by_translation`).
fn load_translations(
    db: &impl Sql,
    q: &AbuseQuery,
    port: u16,
) -> Result<Vec<mapping::Connection>, AbuseError> {
    let lo = q.at_ms.saturating_sub(mapping::TRANSLATION_BEFORE_MS);
    let hi = q.at_ms.saturating_add(mapping::TRANSLATION_AFTER_MS);
    Ok(stored::translations(db, q.public_ip, port, lo, hi)?)
}

/// Handles one report body: ARF when `content_type` says `multipart/report` or the body
/// looks like a MIME message, JSON otherwise. Stores it (matched or not) and returns it.
///
/// # Errors
/// [`AbuseError`]; client errors are not stored.
pub fn submit(
    db: &impl Sql,
    content_type: &str,
    body: &[u8],
    now_ms: u64,
) -> Result<StoredReport, AbuseError> {
    let ct = content_type.to_ascii_lowercase();
    let looks_json = ct.contains("json")
        || body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{');
    let (source, query, feedback_type, message_id) = if looks_json {
        ("json", parse_json(body)?, None, None)
    } else if ct.starts_with("multipart/report") {
        // The HTTP Content-Type carries the boundary; put it in front as the MIME header.
        let mut full = format!("Content-Type: {content_type}\r\n\r\n").into_bytes();
        full.extend_from_slice(body);
        let (q, r) = arf::parse(&full)?;
        ("arf", q, Some(r.feedback_type), r.message_id)
    } else {
        let (q, r) = arf::parse(body)?;
        ("arf", q, Some(r.feedback_type), r.message_id)
    };
    submit_query(db, source, query, feedback_type, message_id, now_ms)
}

/// Answers and stores a report already read: from a body ([`submit`]) or from the abuse
/// desk's simple form (`source` `form`).
///
/// # Errors
/// [`AbuseError`] on database errors.
pub fn submit_query(
    db: &impl Sql,
    source: &str,
    query: AbuseQuery,
    feedback_type: Option<String>,
    message_id: Option<String>,
    now_ms: u64,
) -> Result<StoredReport, AbuseError> {
    let answer = answer(db, &query)?;
    let result_json =
        serde_json::to_string(&answer).map_err(|e| AbuseError::Json(e.to_string()))?;
    let mut report = StoredReport {
        id: 0,
        received_ms: now_ms,
        source: source.to_string(),
        query,
        feedback_type,
        message_id,
        answer,
    };
    report.id = stored::insert_report(db, &report, &result_json)?;
    Ok(report)
}

/// Records who complained (an address or a name, at most 200 characters; empty: unknown).
///
/// # Errors
/// [`AbuseError::Db`].
pub fn set_reporter(db: &impl Sql, id: i64, reporter: &str) -> Result<(), AbuseError> {
    let reporter: String = reporter.trim().chars().take(200).collect();
    stored::set_reporter(db, id, (!reporter.is_empty()).then_some(reporter.as_str()))?;
    Ok(())
}

/// Marks a report answered (the complainant has had the reply) by `who`. Returns whether
/// the report exists.
///
/// # Errors
/// [`AbuseError::Db`].
pub fn mark_answered(db: &impl Sql, id: i64, who: &str, now_ms: u64) -> Result<bool, AbuseError> {
    Ok(stored::mark_answered(db, id, who, now_ms)?)
}

/// Which reports [`list_filtered`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportFilter {
    /// Only those no device was named for.
    pub unmatched_only: bool,
    /// Only `open` or `answered` ones.
    pub status: Option<&'static str>,
    /// Only those about this router.
    pub cpe_id: Option<String>,
    /// Only those naming this device (with [`ReportFilter::cpe_id`]).
    pub mac: Option<String>,
    /// Only this one.
    pub id: Option<i64>,
    /// Only those about this public address.
    pub public_ip: Option<String>,
    /// A `LIKE ... ESCAPE '\'` pattern matched against the router, device, reporter,
    /// address and Message-ID.
    pub text: Option<String>,
    /// Only those whose confidence label is one of these.
    pub confidences: Vec<&'static str>,
    /// Order.
    pub sort: ReportSort,
    /// Oldest (or earliest) first instead of newest first.
    pub ascending: bool,
}

/// The order of a report list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReportSort {
    /// When the report was received (its id).
    #[default]
    Received,
    /// The reported time of the mail.
    ReportedTime,
}

/// Stored reports, newest first; `unmatched_only` lists those no device was named for.
///
/// # Errors
/// [`AbuseError::Db`].
pub fn list(
    db: &impl Sql,
    unmatched_only: bool,
    limit: u32,
) -> Result<Vec<ReportSummary>, AbuseError> {
    let filter = ReportFilter {
        unmatched_only,
        ..ReportFilter::default()
    };
    list_filtered(db, &filter, limit)
}

/// How many stored reports match `f`.
///
/// # Errors
/// [`AbuseError::Db`].
pub fn count_filtered(db: &impl Sql, f: &ReportFilter) -> Result<u64, AbuseError> {
    Ok(stored::count_reports(db, f)?)
}

/// Stored reports matching `f`, newest first.
///
/// # Errors
/// [`AbuseError::Db`].
pub fn list_filtered(
    db: &impl Sql,
    f: &ReportFilter,
    limit: u32,
) -> Result<Vec<ReportSummary>, AbuseError> {
    list_page(db, f, limit, 0)
}

/// `limit` stored reports matching `f` from `offset`, in `f`'s order (ties by id).
///
/// # Errors
/// [`AbuseError::Db`].
pub fn list_page(
    db: &impl Sql,
    f: &ReportFilter,
    limit: u32,
    offset: u64,
) -> Result<Vec<ReportSummary>, AbuseError> {
    Ok(stored::reports(db, f, limit, offset)?)
}

/// One row of the report list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportSummary {
    /// Its id.
    pub id: i64,
    /// When it was received.
    pub received_ms: u64,
    /// `arf`, `json` or `form`.
    pub source: String,
    /// The reported address.
    pub public_ip: String,
    /// The reported time.
    pub at_ms: u64,
    /// The answer's confidence label.
    pub confidence: String,
    /// The CPE, if matched.
    pub cpe_id: Option<String>,
    /// The device, if named.
    pub mac: Option<String>,
    /// The reported message's id.
    pub message_id: Option<String>,
    /// Who complained, if recorded.
    pub reporter: Option<String>,
    /// `open` or `answered`.
    pub status: String,
    /// When it was answered.
    pub answered_ms: Option<u64>,
    /// Who answered it.
    pub answered_by: Option<String>,
}

/// One stored report's full answer.
///
/// # Errors
/// [`AbuseError::Db`]; a corrupt answer is [`AbuseError::Json`].
pub fn answer_of(db: &impl Sql, id: i64) -> Result<Option<serde_json::Value>, AbuseError> {
    stored::answer_json(db, id)?
        .map(|t| serde_json::from_str(&t).map_err(|e| AbuseError::Json(e.to_string())))
        .transpose()
}

/// Whether a confidence names a device.
pub fn names_device(c: Confidence) -> bool {
    c <= Confidence::Verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Received, Store};
    use smtpguard_protocol::envelope::Envelope;
    use smtpguard_protocol::MacAddr;
    use smtpguard_protocol::{AgentStats, Body, ConnRecord, State, Status, Telemetry};

    const T: u64 = 1_764_500_000_000;
    const BOT: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x66]);
    const LAPTOP: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x10]);

    fn telemetry(cpe: &str, seq: u64, wan: &str, conns: &[(MacAddr, i64, u16)]) -> Received {
        telemetry_at(cpe, seq, T - 60_000, wan, conns)
    }

    /// A window starting at `window_start_ms` from `wan`, with `conns` (device, seconds
    /// from `T`, NAT'd port) to 198.51.100.25:25.
    fn telemetry_at(
        cpe: &str,
        seq: u64,
        window_start_ms: u64,
        wan: &str,
        conns: &[(MacAddr, i64, u16)],
    ) -> Received {
        let wan: IpAddr = wan.parse().unwrap();
        let connections = conns
            .iter()
            .enumerate()
            .map(|(i, &(mac, dt_secs, nat_port))| ConnRecord {
                mac,
                at_ms: (T as i64 + dt_secs * 1000) as u64,
                src_port: 50_000 + i as u16,
                dst: "198.51.100.25".parse().unwrap(),
                dst_port: 25,
                nat_port: Some(nat_port),
                nat_ip: Some(wan),
            })
            .collect();
        Received {
            envelope: Envelope {
                version: 1,
                cpe_id: cpe.into(),
                seq,
                sent_at_ms: T,
                body: Body::Telemetry(Telemetry {
                    window_start_ms,
                    window_secs: 60,
                    public_ip: Some(wan),
                    stats: AgentStats::default(),
                    devices: Vec::new(),
                    connections,
                }),
            },
            wire: vec![seq as u8],
            received_at_ms: T,
        }
    }

    #[test]
    fn a_stored_translation_answers_exact_and_other_ports_fall_back_to_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.db");
        let store = Store::open(&path).unwrap();
        store.upsert_cpe("cpe-a", "ed25519:test", None, T).unwrap();
        store
            .write_batch(
                &[
                    // Its retained state from before it knew its WAN address.
                    Received {
                        envelope: Envelope {
                            version: 1,
                            cpe_id: "cpe-a".into(),
                            seq: 1,
                            sent_at_ms: T - 120_000,
                            body: Body::State(State {
                                status: Status::Online,
                                agent_version: "test".into(),
                                fleet_policy_version: None,
                                cpe_policy_version: None,
                                public_ip: None,
                            }),
                        },
                        wire: vec![0],
                        received_at_ms: T - 120_000,
                    },
                    telemetry(
                        "cpe-a",
                        2,
                        "100.64.7.2",
                        &[
                            (BOT, -40, 40_001),
                            (BOT, -30, 40_002),
                            (LAPTOP, -10, 40_123),
                        ],
                    ),
                    // Another router with the same port on another address.
                    telemetry("cpe-b", 1, "100.64.7.3", &[(BOT, -10, 40_123)]),
                ],
                &[],
            )
            .unwrap();
        // The store's connection has every table, the abuse desk's included.
        let conn = &**store.db();
        // What `GET /api/cpes/cpe-a` shows as the router's address: its telemetry's.
        let row = crate::web::fleet::cpe_rows(conn, Some("cpe-a")).unwrap();
        assert_eq!(row[0].public_ip.as_deref(), Some("100.64.7.2"));
        let body = format!(r#"{{"wan_ip":"100.64.7.2","source_port":40123,"time":{T}}}"#);
        let r = submit(conn, "application/json", body.as_bytes(), T + 1).unwrap();
        assert_eq!(r.answer.confidence, Confidence::Exact);
        assert_eq!(r.answer.cpe_id.as_deref(), Some("cpe-a"));
        assert_eq!(r.answer.mac, Some(LAPTOP));
        assert!(r.answer.evidence.iter().all(|c| c.mac == LAPTOP));
        let json = serde_json::to_value(&r.answer).unwrap();
        assert_eq!(json["confidence"], "exact");
        assert_eq!(json["evidence"][0]["nat_ip"], "100.64.7.2");

        // A port no translation has: the time-window guess (the device with most mail).
        let body = format!(r#"{{"public_ip":"100.64.7.2","source_port":49999,"time":{T}}}"#);
        let r = submit(conn, "application/json", body.as_bytes(), T + 2).unwrap();
        assert_eq!(r.answer.confidence, Confidence::TimeWindow);
        assert_eq!(r.answer.mac, Some(BOT));

        // The right port long after the tolerance: not exact.
        let late = T + mapping::TRANSLATION_BEFORE_MS + 60_000;
        let body = format!(r#"{{"public_ip":"100.64.7.2","source_port":40123,"time":{late}}}"#);
        let r = submit(conn, "application/json", body.as_bytes(), T + 3).unwrap();
        assert_ne!(r.answer.confidence, Confidence::Exact);
        assert_eq!(list(conn, false, 10).unwrap()[2].confidence, "exact");
    }

    #[test]
    fn reports_are_searched_filtered_sorted_and_paged_in_sql() {
        for (url, _dir) in crate::store::db::tests::backends() {
            reports_are_searched_filtered_sorted_and_paged_on(&url);
        }
    }

    fn reports_are_searched_filtered_sorted_and_paged_on(url: &str) {
        let store = Store::open_url(url).unwrap();
        let conn = &**store.db();
        for i in 0..12u64 {
            let q = AbuseQuery {
                public_ip: IpAddr::from([192, 0, 2, i as u8]),
                // Reported times run the other way from arrival.
                at_ms: T - i * 60_000,
                dest_ip: None,
                dest_port: None,
                source_port: None,
            };
            let r = submit_query(conn, "json", q, None, None, T + i).unwrap();
            set_reporter(conn, r.id, &format!("abuse@isp{}.example", i % 3)).unwrap();
            if i % 4 == 0 {
                assert!(mark_answered(conn, r.id, "ops", T + 100).unwrap());
            }
        }
        let count = |f: &ReportFilter| count_filtered(conn, f).unwrap();
        assert_eq!(count(&ReportFilter::default()), 12);
        let by_ip = ReportFilter {
            public_ip: Some("192.0.2.7".into()),
            ..ReportFilter::default()
        };
        let found = list_page(conn, &by_ip, 50, 0).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].public_ip, "192.0.2.7");
        let isp1_open = ReportFilter {
            text: Some("%isp1%".into()),
            status: Some("open"),
            ..ReportFilter::default()
        };
        // Reporters isp1 are 1, 4, 7, 10; 4 is answered.
        assert_eq!(count(&isp1_open), 3, "{url}");
        // The search ignores case on both backends, as SQLite's LIKE always did.
        let upper = ReportFilter {
            text: Some("%ISP1%".into()),
            ..isp1_open.clone()
        };
        assert_eq!(count(&upper), 3, "{url}");
        let one = ReportFilter {
            id: Some(found[0].id),
            ..ReportFilter::default()
        };
        assert_eq!(list_page(conn, &one, 5, 0).unwrap(), found, "{url}");
        let answered = ReportFilter {
            status: Some("answered"),
            unmatched_only: true,
            ..ReportFilter::default()
        };
        assert_eq!(count(&answered), 3, "{url}");
        let answer = answer_of(conn, found[0].id).unwrap().unwrap();
        assert_eq!(answer["confidence"], "unmatched", "{url}");
        assert!(answer_of(conn, 9_999).unwrap().is_none(), "{url}");
        let unmatched = ReportFilter {
            confidences: vec!["unmatched"],
            ..ReportFilter::default()
        };
        assert_eq!(count(&unmatched), 12);
        let exact = ReportFilter {
            confidences: vec!["exact", "exact-port"],
            ..ReportFilter::default()
        };
        assert_eq!(count(&exact), 0);
        // Newest first by default; page 2 of 5 rows; by reported time, earliest first.
        let page2 = list_page(conn, &ReportFilter::default(), 5, 5).unwrap();
        let ips: Vec<&str> = page2.iter().map(|r| r.public_ip.as_str()).collect();
        assert_eq!(
            ips,
            [
                "192.0.2.6",
                "192.0.2.5",
                "192.0.2.4",
                "192.0.2.3",
                "192.0.2.2"
            ]
        );
        let by_time = ReportFilter {
            sort: ReportSort::ReportedTime,
            ascending: true,
            ..ReportFilter::default()
        };
        assert_eq!(
            list_page(conn, &by_time, 1, 0).unwrap()[0].public_ip,
            "192.0.2.11"
        );
    }

    /// The mapping's queries on both backends: the address history, the translation of a
    /// NAT'd port within its tolerance, and the connection window around the reported time.
    #[test]
    fn the_mapping_reads_addresses_translations_and_windows_on_both_backends() {
        for (url, _dir) in crate::store::db::tests::backends() {
            let store = Store::open_url(&url).unwrap();
            let db = &**store.db();
            let wan = "100.64.7.2";
            // The address history and connection log as the ingest keeps them: cpe-old
            // held the address a day ago, cpe-a from an hour ago until after the mail.
            let conns = [
                (BOT, -40, 40_001),
                (BOT, -30, 40_002),
                (LAPTOP, -10, 40_123),
            ];
            let fresh = store
                .write_batch(
                    &[
                        telemetry_at("cpe-old", 1, T - 90_000_000, wan, &[]),
                        telemetry_at("cpe-old", 2, T - 80_000_000, wan, &[]),
                        telemetry_at("cpe-a", 1, T - 3_600_000, wan, &[]),
                        telemetry_at("cpe-a", 2, T + 60_000, wan, &conns),
                    ],
                    &[],
                )
                .unwrap();
            assert_eq!(fresh, [true; 4], "{url}");
            let ip: IpAddr = wan.parse().unwrap();
            assert_eq!(address_periods(db, ip).unwrap().len(), 2, "{url}");
            assert_eq!(
                holder_at(db, ip, T).unwrap().as_deref(),
                Some("cpe-a"),
                "{url}"
            );
            assert_eq!(
                holder_at(db, ip, T - 85_000_000).unwrap().as_deref(),
                Some("cpe-old"),
                "{url}"
            );
            let query = |source_port| AbuseQuery {
                public_ip: ip,
                at_ms: T,
                dest_ip: None,
                dest_port: None,
                source_port,
            };
            let exact = answer(db, &query(Some(40_123))).unwrap();
            assert_eq!(exact.confidence, Confidence::Exact, "{url}");
            assert_eq!(exact.mac, Some(LAPTOP), "{url}");
            let window = answer(db, &query(Some(49_999))).unwrap();
            assert_eq!(window.confidence, Confidence::TimeWindow, "{url}");
            assert_eq!(window.mac, Some(BOT), "{url}");
            let stored = submit_query(db, "form", query(Some(40_123)), None, None, T + 1).unwrap();
            assert_eq!(stored.answer, exact, "{url}");
            let listed = list(db, false, 10).unwrap();
            assert_eq!(listed.len(), 1, "{url}");
            assert_eq!(listed[0].id, stored.id, "{url}");
            assert_eq!(listed[0].mac, Some(LAPTOP.to_string()), "{url}");
            assert_eq!(listed[0].cpe_id.as_deref(), Some("cpe-a"), "{url}");
        }
    }

    #[test]
    fn json_queries_accept_text_or_ms_times_and_refuse_junk() {
        let q = parse_json(
            br#"{"public_ip":"203.0.113.7","time":"2025-03-04T13:05:09Z","dest_port":25}"#,
        )
        .unwrap();
        assert_eq!(q.at_ms, 1_741_093_509_000);
        assert_eq!(q.dest_port, Some(25));
        let q = parse_json(br#"{"public_ip":"203.0.113.7","time":1741093509000}"#).unwrap();
        assert_eq!(q.at_ms, 1_741_093_509_000);
        for bad in [
            &br#"{"public_ip":"nope","time":1}"#[..],
            br#"{"public_ip":"203.0.113.7","time":"soon"}"#,
            br#"{"public_ip":"203.0.113.7"}"#,
            br#"{"public_ip":"203.0.113.7","time":1,"extra":1}"#,
            b"{",
        ] {
            assert!(matches!(parse_json(bad), Err(AbuseError::Json(_))));
        }
    }
}
