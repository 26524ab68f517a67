//! Exports for the NOC and the abuse desk: devices, CPEs, campaigns, abuse reports and the
//! audit log, as CSV or JSON.
//! `GET /api/export/{devices|cpes|campaigns|abuse|audit}?format=csv|json` (any NOC role;
//! bearer token or session). `devices` takes the device list's filters
//! ([`super::devices::DeviceQuery`]; the flagged devices when no `verdict` is given, every
//! device with `verdict=all`); `cpes`, `campaigns` and `abuse` take their list page's
//! filters ([`super::fleet::FleetQuery`], [`super::campaign_page::CampaignQuery`],
//! [`super::abuse_desk::ListQuery`]). Each exports every row the filtered list has, in its
//! order.
//!
//! CSV follows RFC 4180 (fields quoted when they hold a comma, quote or line break) and is
//! safe to open in a spreadsheet: host names and evidence come from the LAN, so a field
//! starting with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'` and is
//! never run as a formula.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{abuse_desk, auth, campaign_page, devices, fleet, AppState, WebError};
use crate::store::db::Sql;
use crate::{abuse, audit};

/// Rows one export holds at most.
pub const ROWS_MAX: usize = 100_000;

/// The export's query.
#[derive(Debug, Default, Deserialize)]
pub struct ExportQuery {
    format: Option<String>,
}

/// One CSV field, quoted and neutralised as the module docs say.
pub fn csv_field(value: &str) -> String {
    let guarded = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_string()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

fn csv(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = header.join(",");
    out.push_str("\r\n");
    for row in rows {
        let fields: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    out
}

/// A table to export: column names, rows as text, and the same as JSON objects.
struct Table {
    name: &'static str,
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                Value::Object(
                    self.header
                        .iter()
                        .zip(r)
                        .map(|(k, v)| ((*k).to_string(), Value::String(v.clone())))
                        .collect(),
                )
            })
            .collect();
        json!({ self.name: rows })
    }
}

fn time(ms: u64) -> String {
    crate::abuse::date::format_utc_secs(ms)
}

fn devices(conn: &impl Sql, now: u64, q: &devices::DeviceQuery) -> Result<Table, WebError> {
    let devs = devices::export_rows(conn, q, u32::try_from(ROWS_MAX).unwrap_or(u32::MAX), now)?;
    let rows = devs
        .iter()
        .map(|d| {
            vec![
                d.cpe_id.clone(),
                d.mac.to_string(),
                d.hostname.clone().unwrap_or_default(),
                d.vendor.clone().unwrap_or_default(),
                d.verdict.as_str().to_string(),
                format!("{:.2}", d.score),
                d.action.to_string(),
                time(d.since_ms),
                time(d.last_seen_ms),
                d.evidence.join("; "),
            ]
        })
        .collect();
    Ok(Table {
        name: "devices",
        header: vec![
            "cpe_id",
            "mac",
            "hostname",
            "vendor",
            "verdict",
            "score",
            "action",
            "since",
            "last_seen",
            "evidence",
        ],
        rows,
    })
}

fn cpes(db: &impl Sql, q: &fleet::FleetQuery) -> Result<Table, WebError> {
    let (_, list) = fleet::FleetList::parse(db, q)?.search(
        db,
        u32::try_from(ROWS_MAX).unwrap_or(u32::MAX),
        0,
    )?;
    let rows = list
        .iter()
        .map(|c| {
            vec![
                c.cpe_id.clone(),
                c.household.clone().unwrap_or_default(),
                c.label.clone().unwrap_or_default(),
                c.status_word().to_string(),
                c.updated_ms
                    .and_then(|ms| u64::try_from(ms).ok())
                    .map(time)
                    .unwrap_or_default(),
                c.public_ip.clone().unwrap_or_default(),
                c.agent_version.clone().unwrap_or_default(),
                c.fleet_policy_version
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                c.flagged.to_string(),
            ]
        })
        .collect();
    Ok(Table {
        name: "cpes",
        header: vec![
            "cpe_id",
            "household",
            "label",
            "status",
            "last_seen",
            "public_ip",
            "agent_version",
            "fleet_policy_version",
            "flagged_devices",
        ],
        rows,
    })
}

fn campaigns(
    conn: &impl Sql,
    now: u64,
    settings: &crate::campaigns::Settings,
    q: &campaign_page::CampaignQuery,
) -> Result<Table, WebError> {
    let filter = q.filter()?;
    let mut list = filter.apply(campaign_page::load(conn, now, settings)?);
    list.truncate(ROWS_MAX);
    let rows = list
        .iter()
        .map(|(c, pushed)| {
            vec![
                c.id.clone(),
                c.households.to_string(),
                c.members.len().to_string(),
                time(c.first_ms),
                time(c.last_ms),
                c.ehlo_names.join(" "),
                c.sender_domains.join(" "),
                c.mail_servers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
                pushed.map(|v| v.to_string()).unwrap_or_default(),
                c.members
                    .iter()
                    .map(|m| format!("{}/{}", m.cpe_id, m.mac))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    Ok(Table {
        name: "campaigns",
        header: vec![
            "id",
            "households",
            "devices",
            "first_seen",
            "last_seen",
            "ehlo_names",
            "sender_domains",
            "mail_servers",
            "pushed_version",
            "members",
        ],
        rows,
    })
}

fn reports(db: &impl Sql, q: &abuse_desk::ListQuery) -> Result<Table, WebError> {
    let filter = q.filter()?;
    let list = abuse::list_page(db, &filter, u32::try_from(ROWS_MAX).unwrap_or(u32::MAX), 0)?;
    let rows = list
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                time(r.received_ms),
                r.source.clone(),
                r.public_ip.clone(),
                time(r.at_ms),
                r.confidence.clone(),
                r.cpe_id.clone().unwrap_or_default(),
                r.mac.clone().unwrap_or_default(),
                r.message_id.clone().unwrap_or_default(),
                r.reporter.clone().unwrap_or_default(),
                r.status.clone(),
            ]
        })
        .collect();
    Ok(Table {
        name: "abuse_reports",
        header: vec![
            "id",
            "received",
            "source",
            "public_ip",
            "reported_time",
            "confidence",
            "cpe_id",
            "mac",
            "message_id",
            "reporter",
            "status",
        ],
        rows,
    })
}

fn audit_log(conn: &impl Sql) -> Result<Table, WebError> {
    let mut rows = Vec::new();
    let mut filter = audit::Filter::default();
    while rows.len() < ROWS_MAX {
        let page = audit::list(conn, &filter, audit::PAGE_MAX)?;
        let Some(last) = page.last() else { break };
        filter.before_id = Some(last.id);
        rows.extend(page.into_iter().map(|e| {
            vec![
                e.id.to_string(),
                time(e.at_ms),
                e.actor,
                e.action,
                e.target,
                e.outcome,
                e.detail,
            ]
        }));
    }
    Ok(Table {
        name: "audit",
        header: vec![
            "id", "time", "actor", "action", "target", "outcome", "detail",
        ],
        rows,
    })
}

/// `GET /api/export/{what}`.
pub async fn export(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(what): Path<String>,
    Query(q): Query<ExportQuery>,
    uri: Uri,
) -> Response {
    if let Err(e) = auth::noc(&state, &headers).await {
        return e.api();
    }
    let csv_wanted = match q.format.as_deref() {
        None | Some("csv") => true,
        Some("json") => false,
        Some(_) => return WebError::BadRequest("format must be csv or json".into()).api(),
    };
    let now = state.now_ms();
    // Each list reads its own filters from the same query string.
    fn filters<T: serde::de::DeserializeOwned>(uri: &Uri) -> Result<T, WebError> {
        Query::<T>::try_from_uri(uri)
            .map(|Query(q)| q)
            .map_err(|e| WebError::BadRequest(e.body_text()))
    }
    let table = match what.as_str() {
        "devices" => match filters::<devices::DeviceQuery>(&uri) {
            Ok(mut device_q) => {
                // The flagged devices unless a verdict (or `all`) is asked for.
                device_q.verdict.get_or_insert_with(|| "flagged".into());
                state.sql(move |conn| devices(conn, now, &device_q)).await
            }
            Err(e) => Err(e),
        },
        "cpes" => match filters::<fleet::FleetQuery>(&uri) {
            Ok(fleet_q) => state.sql(move |db| cpes(db, &fleet_q)).await,
            Err(e) => Err(e),
        },
        "campaigns" => match filters::<campaign_page::CampaignQuery>(&uri) {
            Ok(campaign_q) => {
                let settings = state.settings.campaigns;
                state
                    .sql(move |conn| campaigns(conn, now, &settings, &campaign_q))
                    .await
            }
            Err(e) => Err(e),
        },
        "abuse" => match filters::<abuse_desk::ListQuery>(&uri) {
            Ok(abuse_q) => state.sql(move |db| reports(db, &abuse_q)).await,
            Err(e) => Err(e),
        },
        "audit" => state.sql(audit_log).await,
        _ => return WebError::NotFound.api(),
    };
    let table = match table {
        Ok(t) => t,
        Err(e) => return e.api(),
    };
    if csv_wanted {
        let disposition = format!("attachment; filename=\"smtpguard-{}.csv\"", table.name);
        (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (header::CONTENT_DISPOSITION, disposition),
            ],
            csv(&table.header, &table.rows),
        )
            .into_response()
    } else {
        Json(table.json()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("+1"), "'+1");
        assert_eq!(csv_field("@cmd"), "'@cmd");
        assert_eq!(
            csv(&["a", "b"], &[vec!["1".into(), "x,y".into()]]),
            "a,b\r\n1,\"x,y\"\r\n"
        );
    }
}
