//! `GET /noc/devices`: every household device of the fleet, searched, filtered, sorted and
//! paged in SQL on the rows kept at ingest ([`crate::store::devices`]), so the page weighs
//! the same at twenty routers or two hundred thousand. `GET /api/devices` gives the same
//! page as JSON, and `GET /api/export/devices?...` ([`super::export`]) the whole filtered
//! list as CSV or JSON.
//!
//! The search box takes what an operator has at hand: a MAC address, a public IP address
//! (with `at`, the router that held it then, by the abuse mapping's address history;
//! without, every router that ever held it), a LAN address, or text matched against host
//! name, vendor, CPE id, router label and household name.

use std::net::IpAddr;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use smtpguard_protocol::MacAddr;

use super::api::DeviceJson;
use super::fleet::{household_names, parse_time};
use super::html::{self, esc, Table};
use super::list::{self, given, like, Links, Noun, Order, SortKey};
use super::noc::noc_page;
use super::{auth, AppState, WebError};
use crate::abuse;
use crate::store::devices::{self as store, Filter, Sort};
use crate::verdicts::DeviceView;

/// Devices on one page of the list.
pub const PAGE_ROWS: u32 = 50;

/// The device list's query string, as sent; [`DeviceList::parse`] checks it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DeviceQuery {
    /// Search text: MAC, public or LAN IP, or text.
    #[serde(default)]
    pub q: Option<String>,
    /// With a public IP: when (RFC 3339, or `YYYY-MM-DDTHH:MM` in UTC).
    #[serde(default)]
    pub at: Option<String>,
    /// `infected`, `suspicious`, `flagged` (either), `clean` or `all`.
    #[serde(default)]
    pub verdict: Option<String>,
    /// The action in force: `block`, `rate-limit` or `monitor`.
    #[serde(default)]
    pub action: Option<String>,
    /// Sort (`severity`, `since`, `seen`, `cpe`, `name`), direction, page and (API) `per_page`.
    #[serde(flatten)]
    pub order: Order,
}

impl SortKey for Sort {
    const ALL: &'static [(Sort, &'static str)] = &[
        (Sort::Severity, "severity"),
        (Sort::Since, "since"),
        (Sort::LastSeen, "seen"),
        (Sort::Cpe, "cpe"),
        (Sort::Name, "name"),
    ];
}

impl DeviceQuery {
    /// The filters that were given, by their query-string names (sort and page aside).
    pub fn filters(&self) -> [(&'static str, Option<&str>); 4] {
        [
            ("q", given(&self.q)),
            ("at", given(&self.at)),
            ("verdict", given(&self.verdict)),
            ("action", given(&self.action)),
        ]
    }

    fn links(&self) -> Links<'_> {
        self.order
            .links("/noc/devices", "devices", self.filters().to_vec())
    }

    /// The links of the exports: these filters, and `verdict=all` when no verdict is given
    /// (the export's own default is the flagged devices, the list's is every device).
    fn export(&self) -> Links<'_> {
        let mut links = self.links();
        for (name, value) in &mut links.filters {
            if *name == "verdict" && value.is_none() {
                *value = Some("all");
            }
        }
        links
    }
}

/// A checked device query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceList {
    /// What to list.
    pub filter: Filter,
    /// Order.
    pub sort: Sort,
    /// Descending?
    pub desc: bool,
    /// 1-based page.
    pub page: u32,
}

impl DeviceList {
    /// Checks a query; finds the holder of a public address at a time through the abuse
    /// mapping's address history.
    ///
    /// # Errors
    /// [`WebError::BadRequest`] naming the bad field; database errors.
    pub fn parse(db: &impl crate::store::db::Sql, q: &DeviceQuery) -> Result<DeviceList, WebError> {
        let mut f = Filter::default();
        if let Some(text) = given(&q.q) {
            if text.chars().count() > 200 {
                return Err(WebError::BadRequest(
                    "search text over 200 characters".into(),
                ));
            }
            if let Ok(mac) = text.parse::<MacAddr>() {
                f.mac = Some(mac.to_string());
            } else if let Ok(ip) = text.parse::<IpAddr>() {
                if let Some(at) = given(&q.at) {
                    let at = parse_time(at)?;
                    // Nobody held it then: a CPE id no router has.
                    f.cpe = Some(abuse::holder_at(db, ip, at)?.unwrap_or_default());
                } else if is_lan(ip) {
                    f.text = Some(like(&format!("\"{ip}\"")));
                } else {
                    f.public_ip = Some(ip.to_string());
                }
            } else {
                f.text = Some(like(text));
            }
        }
        f.severity = match given(&q.verdict) {
            None | Some("all") => None,
            Some("infected") => Some((2, 2)),
            Some("suspicious") => Some((1, 1)),
            Some("flagged") => Some((1, 2)),
            Some("clean") => Some((0, 0)),
            Some(_) => {
                return Err(WebError::BadRequest(
                    "verdict must be infected, suspicious, flagged, clean or all".into(),
                ))
            }
        };
        f.action = match given(&q.action) {
            None => None,
            Some(a) => Some(
                ["block", "rate-limit", "monitor"]
                    .into_iter()
                    .find(|w| *w == a)
                    .ok_or_else(|| {
                        WebError::BadRequest("action must be block, rate-limit or monitor".into())
                    })?,
            ),
        };
        let sort: Sort = q.order.sort()?;
        // Worst, newest first unless asked otherwise.
        let desc = q.order.desc(matches!(
            sort,
            Sort::Severity | Sort::Since | Sort::LastSeen
        ))?;
        let page = q.order.page()?;
        Ok(DeviceList {
            filter: f,
            sort,
            desc,
            page,
        })
    }

    /// Its page of `per_page` devices and how many match in all.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn load(
        &self,
        conn: &impl crate::store::db::Sql,
        per_page: u32,
        now_ms: u64,
    ) -> Result<(u64, Vec<DeviceView>), WebError> {
        let offset = list::offset(self.page, per_page);
        Ok(store::search(
            conn,
            &self.filter,
            self.sort,
            self.desc,
            per_page,
            offset,
            now_ms,
        )?)
    }
}

fn is_lan(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00 || v6.is_unicast_link_local(),
    }
}

fn search_form(q: &DeviceQuery) -> String {
    let v = |o: &Option<String>| esc(given(o).unwrap_or(""));
    let mut s = format!(
        r#"<form class="search" method="get" action="/noc/devices#devices" role="search" aria-label="Search the devices"><div class="wide"><label for="f-q">MAC, host name, vendor, household, CPE, or IP address</label><input type="text" id="f-q" name="q" value="{}" autocomplete="off"></div><div><label for="f-at">Public IP held at (UTC)</label><input type="text" id="f-at" name="at" value="{}" placeholder="2026-11-30T20:15"></div>"#,
        v(&q.q),
        v(&q.at)
    );
    s.push_str(&list::options(
        "verdict",
        "Verdict",
        given(&q.verdict),
        &[
            ("flagged", "infected or suspicious"),
            ("infected", "infected"),
            ("suspicious", "suspicious"),
            ("clean", "clean"),
        ],
    ));
    s.push_str(&list::options(
        "action",
        "Router action now",
        given(&q.action),
        &[
            ("block", "blocked"),
            ("rate-limit", "rate-limited"),
            ("monitor", "watched only"),
        ],
    ));
    s.push_str(r#"<div><button class="btn" type="submit" id="f-go">Search</button> <a href="/noc/devices">Clear</a></div></form>"#);
    s
}

fn table(
    q: &DeviceQuery,
    l: &DeviceList,
    rows: &[DeviceView],
    households: &std::collections::BTreeMap<String, String>,
) -> String {
    let current = l.sort.key();
    let links = q.links();
    let head = |label: &'static str, key: &str| {
        // Times and verdicts read best newest and worst first.
        let desc_first = matches!(key, "severity" | "since" | "seen");
        links.sort_head(label, key, current, l.desc, desc_first)
    };
    let mut t = Table::new(
        "device-list",
        "Devices",
        &[
            head("Device", "name"),
            head("Household / CPE", "cpe"),
            head("Verdict", "severity"),
            head("Since", "since"),
            head("Last seen", "seen"),
            ("Action now", "Action now".into()),
        ],
    );
    for d in rows {
        let mac = d.mac.to_string();
        t.row(
            &format!(
                r#" class="dev {}" data-mac="{}""#,
                d.verdict.as_str(),
                esc(&mac)
            ),
            &[
                (
                    "",
                    format!(
                        r#"<b class="wrap">{}</b><div class="muted mono">{}</div><div class="muted">{}</div>"#,
                        esc(&d.display_name()),
                        esc(&mac),
                        esc(d.vendor.as_deref().unwrap_or("")),
                    ),
                ),
                (
                    "",
                    format!(
                        "{}<div>{}</div>",
                        esc(households.get(&d.cpe_id).map_or("", String::as_str)),
                        html::cpe_link(&d.cpe_id)
                    ),
                ),
                (
                    "",
                    format!(
                        r#"{} <div class="muted">score {:.2}</div>"#,
                        html::verdict_badge(d.verdict),
                        d.score
                    ),
                ),
                ("t", esc(&html::time(d.since_ms))),
                ("t", esc(&html::time(d.last_seen_ms))),
                ("", html::action_badge(d.action, d.action_until_ms)),
            ],
        );
    }
    t.finish()
}

/// `GET /noc/devices`: the searchable device list.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<DeviceQuery>,
) -> Response {
    let caller = match auth::noc(&state, &headers).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let now = state.now_ms();
    let query = q.clone();
    let loaded = state
        .sql(move |conn| {
            let l = DeviceList::parse(conn, &query)?;
            let (total, rows) = l.load(conn, PAGE_ROWS, now)?;
            let names = household_names(conn, rows.iter().map(|d| d.cpe_id.as_str()))?;
            Ok((l, total, rows, names))
        })
        .await;
    let (l, total, rows, names) = match loaded {
        Ok(x) => x,
        Err(e @ WebError::BadRequest(_)) => {
            let body = format!(
                r#"<h1>Devices</h1><div class="flash err" role="alert">{}</div>{}"#,
                esc(&e.to_string()),
                search_form(&q)
            );
            return (e.status(), noc_page("Devices", "devices", &caller, &body)).into_response();
        }
        Err(e) => return e.page(),
    };
    let mut b = String::from(r#"<h1 id="devices">Devices</h1>"#);
    b.push_str(&search_form(&q));
    b.push_str(r#"<div id="device-results" data-refresh="30">"#);
    b.push_str(&q.links().pager(
        Noun {
            id: "device",
            one: "device",
            many: "devices",
        },
        l.page,
        PAGE_ROWS,
        total,
    ));
    if !rows.is_empty() {
        b.push_str(&table(&q, &l, &rows, &names));
    }
    b.push_str("</div>");
    b.push_str(&q.export().export_links("devices", "these devices"));
    noc_page("Devices", "devices", &caller, &b)
}

/// `GET /api/devices`: one page of the device list as JSON, the same query as the page
/// plus `per_page` ([`list::per_page`]).
pub async fn api(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<DeviceQuery>,
) -> Response {
    if let Err(e) = auth::noc(&state, &headers).await {
        return e.api();
    }
    let per_page = match q.order.per_page() {
        Ok(n) => n,
        Err(e) => return e.api(),
    };
    let now = state.now_ms();
    let r = state
        .sql(move |conn| {
            let l = DeviceList::parse(conn, &q)?;
            let (total, rows) = l.load(conn, per_page, now)?;
            Ok((l.page, total, rows))
        })
        .await;
    match r {
        Ok((page, total, rows)) => Json(json!({
            "total": total,
            "page": page,
            "per_page": per_page,
            "devices": rows.iter().map(DeviceJson::from).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => e.api(),
    }
}

/// The whole filtered list for an export, at most `limit` devices.
///
/// # Errors
/// [`WebError::BadRequest`] for a bad query; SQLite errors.
pub fn export_rows(
    conn: &impl crate::store::db::Sql,
    q: &DeviceQuery,
    limit: u32,
    now_ms: u64,
) -> Result<Vec<DeviceView>, WebError> {
    let l = DeviceList::parse(conn, q)?;
    Ok(store::search(conn, &l.filter, l.sort, l.desc, limit, 0, now_ms)?.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_keep_the_filters_and_the_export_names_all_devices_when_unfiltered() {
        let q = DeviceQuery {
            q: Some("DESKTOP 7&x".into()),
            verdict: Some("infected".into()),
            ..DeviceQuery::default()
        };
        assert_eq!(
            q.links().href(Some("seen"), Some("desc"), Some(2)),
            "/noc/devices?q=DESKTOP%207%26x&verdict=infected&sort=seen&dir=desc&page=2#devices"
        );
        assert_eq!(
            q.export().filter_query(),
            "&q=DESKTOP%207%26x&verdict=infected"
        );
        assert_eq!(
            DeviceQuery::default().export().filter_query(),
            "&verdict=all"
        );
    }

    #[test]
    fn lan_addresses_are_told_from_public_ones() {
        assert!(is_lan("192.168.1.14".parse().unwrap()));
        assert!(is_lan("fd00::1".parse().unwrap()));
        assert!(!is_lan("203.0.113.7".parse().unwrap()));
    }
}
