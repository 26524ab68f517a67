//! `GET /noc`: the fleet page. The CPE list is searched, filtered, sorted and paged in SQL
//! ([`crate::store::fleet`]), so the page weighs the same at twenty routers or two hundred
//! thousand; the same filter drives the CSV/JSON export (`GET /api/export/cpes?...`,
//! [`super::export`]). This module parses the query string and renders the page.
//!
//! One search box takes what an operator has at hand: a MAC address (any device the router
//! ever reported), a public IP address (with `at`, the router that held it then, by the
//! abuse mapping's address history; without, every router that ever held it), or text
//! matched against CPE id, label, household name and device host names.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use smtpguard_protocol::{MacAddr, Verdict};

use super::html::{self, esc, Table};
use super::list::{given, like, offset, options, Links, Noun, Order, SortKey};
use super::noc::{current_campaigns, device_rows, export_links, noc_page};
use super::{auth, AppState, WebError};
use crate::store::db::Sql;
use crate::store::fleet::{self as store, CpeRow, Filter, Sort, StatusCounts};
use crate::verdicts::{plural, DeviceView};
use crate::{abuse, households};

/// CPEs on one page of the list.
pub const PAGE_ROWS: u32 = 50;
/// Flagged devices the fleet page lists before pointing at the filtered list.
pub const FLAGGED_ROWS: usize = 20;

impl CpeRow {
    /// The status as a badge, with "last seen" for a router that is not online.
    pub fn status_badge(&self, now_ms: u64) -> String {
        let seen = self
            .updated_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| html::ago(ms, now_ms));
        match (self.status_word(), seen) {
            ("revoked", _) => r#"<span class="badge bad-soft">revoked</span>"#.to_string(),
            ("online", _) => r#"<span class="badge ok">online</span>"#.to_string(),
            ("never", _) => r#"<span class="badge muted">never seen</span>"#.to_string(),
            (s, Some(seen)) => format!(
                r#"<span class="badge muted">{}</span> <span class="muted">last seen {}</span>"#,
                esc(s),
                esc(&seen)
            ),
            (s, None) => format!(r#"<span class="badge muted">{}</span>"#, esc(s)),
        }
    }
}

/// One CPE with its state and household.
///
/// # Errors
/// [`WebError::NotFound`] for an unknown CPE; database errors.
pub fn cpe_row(db: &impl Sql, id: &str) -> Result<CpeRow, WebError> {
    store::one(db, id)?.ok_or(WebError::NotFound)
}

/// Every CPE (or only `only`) with its state and household, for small fleets and tests;
/// pages use [`FleetList::search`].
///
/// # Errors
/// Database errors.
pub fn cpe_rows(db: &impl Sql, only: Option<&str>) -> Result<Vec<CpeRow>, WebError> {
    let filter = Filter {
        cpe: only.map(str::to_string),
        ..Filter::default()
    };
    Ok(store::search(db, &filter, Sort::default(), false, u32::MAX, 0)?.1)
}

/// The fleet page's query string, as sent; [`FleetList::parse`] checks it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FleetQuery {
    /// Search text: MAC, public IP, or text.
    #[serde(default)]
    pub q: Option<String>,
    /// With a public IP: when (RFC 3339, or `YYYY-MM-DDTHH:MM` in UTC as a browser's
    /// date-time field sends it).
    #[serde(default)]
    pub at: Option<String>,
    /// `online`, `offline`, `never` or `revoked`.
    #[serde(default)]
    pub status: Option<String>,
    /// CPEs with a device whose newest verdict is `infected`, `suspicious` or either
    /// (`flagged`).
    #[serde(default)]
    pub verdict: Option<String>,
    /// Agent version, exactly.
    #[serde(default)]
    pub agent: Option<String>,
    /// Applied fleet policy version.
    #[serde(default)]
    pub policy: Option<String>,
    /// Sort (`cpe`, `household`, `status`, `seen`, `ip`, `agent`, `policy`, `flagged`), direction and page.
    #[serde(flatten)]
    pub order: Order,
}

impl FleetQuery {
    /// The filters that were given, by their query-string names (sort and page aside).
    pub(crate) fn filters(&self) -> Vec<(&'static str, Option<&str>)> {
        vec![
            ("q", given(&self.q)),
            ("at", given(&self.at)),
            ("status", given(&self.status)),
            ("verdict", given(&self.verdict)),
            ("agent", given(&self.agent)),
            ("policy", given(&self.policy)),
        ]
    }

    /// The list's links: filters, sort and direction kept.
    pub(crate) fn links(&self) -> Links<'_> {
        self.order.links("/noc", "cpes", self.filters())
    }

    /// The filters only, as a query string for the export links.
    pub fn filter_query(&self) -> String {
        self.links().filter_query()
    }
}

impl SortKey for Sort {
    const ALL: &'static [(Sort, &'static str)] = &[
        (Sort::Cpe, "cpe"),
        (Sort::Household, "household"),
        (Sort::Status, "status"),
        (Sort::Seen, "seen"),
        (Sort::Ip, "ip"),
        (Sort::Agent, "agent"),
        (Sort::Policy, "policy"),
        (Sort::Flagged, "flagged"),
    ];
}

/// A checked fleet query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetList {
    /// What to list.
    pub filter: Filter,
    /// Order.
    pub sort: Sort,
    /// Descending?
    pub desc: bool,
    /// 1-based page.
    pub page: u32,
}

/// `2026-11-30T20:15` (a browser's date-time field, taken as UTC) or RFC 3339 / RFC 5322.
pub(crate) fn parse_time(s: &str) -> Result<u64, WebError> {
    abuse::date::parse_any(s)
        .or_else(|_| abuse::date::parse_rfc3339(&format!("{s}:00Z")))
        .or_else(|_| abuse::date::parse_rfc3339(&format!("{s}Z")))
        .map_err(|_| {
            WebError::BadRequest(format!(
                "time {s:?} not understood; use 2026-11-30T20:15 (UTC) or 2026-11-30T21:15:00+01:00"
            ))
        })
}

impl FleetList {
    /// Checks a query; finds the holder of an address at a time through the abuse
    /// mapping's address history.
    ///
    /// # Errors
    /// [`WebError::BadRequest`] naming the bad field; database errors.
    pub fn parse(db: &impl Sql, q: &FleetQuery) -> Result<FleetList, WebError> {
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
                f.ip = Some(ip.to_string());
                if let Some(at) = given(&q.at) {
                    let at = parse_time(at)?;
                    f.holder = Some(abuse::holder_at(db, ip, at)?.unwrap_or_default());
                }
            } else {
                f.text = Some(like(text));
            }
        }
        f.status = match given(&q.status) {
            None => None,
            Some(s) => Some(
                ["online", "offline", "never", "revoked"]
                    .into_iter()
                    .find(|w| *w == s)
                    .ok_or_else(|| {
                        WebError::BadRequest(
                            "status must be online, offline, never or revoked".into(),
                        )
                    })?,
            ),
        };
        f.verdicts = match given(&q.verdict) {
            None => None,
            Some("infected") => Some(("infected", "infected")),
            Some("suspicious") => Some(("suspicious", "suspicious")),
            Some("flagged") => Some(("infected", "suspicious")),
            Some(_) => {
                return Err(WebError::BadRequest(
                    "verdict must be infected, suspicious or flagged".into(),
                ))
            }
        };
        f.agent = given(&q.agent).map(str::to_string);
        f.policy = match given(&q.policy) {
            None => None,
            Some(p) => Some(
                p.trim_start_matches('v')
                    .parse()
                    .map_err(|_| WebError::BadRequest("policy must be a version number".into()))?,
            ),
        };
        Ok(FleetList {
            filter: f,
            sort: q.order.sort()?,
            desc: q.order.desc(false)?,
            page: q.order.page()?,
        })
    }

    /// The CPEs it lists: how many in all, and `limit` of them from `offset`.
    ///
    /// # Errors
    /// Database errors.
    pub fn search(
        &self,
        db: &impl Sql,
        limit: u32,
        offset: u64,
    ) -> Result<(u64, Vec<CpeRow>), WebError> {
        Ok(store::search(
            db,
            &self.filter,
            self.sort,
            self.desc,
            limit,
            offset,
        )?)
    }
}

/// Household names of the given CPEs (those that have one).
///
/// # Errors
/// SQLite errors.
pub fn household_names<'a>(
    conn: &impl Sql,
    cpes: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, String>, WebError> {
    let mut out = BTreeMap::new();
    for c in cpes {
        if out.contains_key(c) {
            continue;
        }
        if let Some((_, name)) = households::owner_of(conn, c)? {
            out.insert(c.to_string(), name);
        }
    }
    Ok(out)
}

struct Data {
    counts: StatusCounts,
    total: u64,
    rows: Vec<CpeRow>,
    flagged: Vec<DeviceView>,
    infected: usize,
    suspicious: usize,
    households: BTreeMap<String, String>,
    campaigns: usize,
    open_abuse: u64,
    pending_releases: usize,
}

fn load(
    conn: &impl Sql,
    f: &FleetList,
    now: u64,
    settings: &crate::campaigns::Settings,
) -> Result<Data, WebError> {
    let counts = store::status_counts(conn)?;
    let (total, rows) = f.search(conn, PAGE_ROWS, offset(f.page, PAGE_ROWS))?;
    let campaigns =
        current_campaigns(conn, &super::noc::infected_devices(conn, now)?, settings)?.len();
    let flagged = crate::store::devices::with_verdicts(
        conn,
        &[Verdict::Infected, Verdict::Suspicious],
        u32::try_from(FLAGGED_ROWS).unwrap_or(u32::MAX),
        now,
    )?;
    let device_counts = crate::store::devices::counts(conn, now)?;
    let infected = usize::try_from(device_counts.by_verdict[2]).unwrap_or(usize::MAX);
    let suspicious = usize::try_from(device_counts.by_verdict[1]).unwrap_or(usize::MAX);
    let households = household_names(conn, flagged.iter().map(|d| d.cpe_id.as_str()))?;
    let open_abuse = abuse::count_filtered(
        conn,
        &abuse::ReportFilter {
            status: Some("open"),
            ..abuse::ReportFilter::default()
        },
    )?;
    let pending_releases = households::release_requests(conn, None)?
        .iter()
        .filter(|r| r.status == "pending")
        .count();
    Ok(Data {
        counts,
        total,
        rows,
        flagged,
        infected,
        suspicious,
        households,
        campaigns,
        open_abuse,
        pending_releases,
    })
}

fn stat(class: &str, n: u64, one: &str, many: &str, id: &str, href: &str) -> String {
    let words = plural(n, one, many);
    let label = words.split_once(' ').map_or("", |(_, w)| w);
    format!(
        r#"<a class="stat {class}" id="{id}" href="{href}"><b>{n}</b><span>{}</span></a>"#,
        esc(label)
    )
}

fn search_form(q: &FleetQuery) -> String {
    let v = |o: &Option<String>| esc(given(o).unwrap_or(""));
    let mut s = format!(
        r#"<form class="search" method="get" action="/noc#cpes" role="search" aria-label="Search the fleet"><div class="wide"><label for="f-q">CPE, household, MAC, host name or public IP</label><input type="text" id="f-q" name="q" value="{}" autocomplete="off"></div><div><label for="f-at">IP held at (UTC)</label><input type="text" id="f-at" name="at" value="{}" placeholder="2026-11-30T20:15"></div>"#,
        v(&q.q),
        v(&q.at)
    );
    s.push_str(&options(
        "status",
        "Status",
        given(&q.status),
        &[
            ("online", "online"),
            ("offline", "offline"),
            ("never", "never seen"),
            ("revoked", "revoked"),
        ],
    ));
    s.push_str(&options(
        "verdict",
        "Devices",
        given(&q.verdict),
        &[
            ("flagged", "any flagged"),
            ("infected", "infected"),
            ("suspicious", "suspicious"),
        ],
    ));
    let _ = write!(
        s,
        r#"<div><label for="f-agent">Agent version</label><input type="text" id="f-agent" name="agent" value="{}"></div><div><label for="f-policy">Fleet policy</label><input type="text" id="f-policy" name="policy" value="{}" inputmode="numeric"></div><div><button class="btn" type="submit" id="f-go">Search</button> <a href="/noc#cpes">Clear</a></div></form>"#,
        v(&q.agent),
        v(&q.policy)
    );
    s
}

fn cpe_table(q: &FleetQuery, f: &FleetList, rows: &[CpeRow], now: u64) -> String {
    let links = q.links();
    let head = |label: &'static str, key: Sort| {
        links.sort_head(label, key.key(), f.sort.key(), f.desc, false)
    };
    let mut t = Table::new(
        "cpe-list",
        "CPEs",
        &[
            head("CPE", Sort::Cpe),
            head("Household", Sort::Household),
            head("Status", Sort::Status),
            head("Public IP", Sort::Ip),
            head("Agent", Sort::Agent),
            head("Fleet policy", Sort::Policy),
            head("Flagged devices", Sort::Flagged),
        ],
    );
    for c in rows {
        t.row(
            &format!(r#" data-cpe="{}""#, esc(&c.cpe_id)),
            &[
                ("", html::cpe_link(&c.cpe_id)),
                (
                    "",
                    esc(c.household.as_deref().or(c.label.as_deref()).unwrap_or("")),
                ),
                ("", c.status_badge(now)),
                ("mono", esc(c.public_ip.as_deref().unwrap_or(""))),
                ("", esc(c.agent_version.as_deref().unwrap_or(""))),
                (
                    "",
                    c.fleet_policy_version
                        .map(|v| format!("v{v}"))
                        .unwrap_or_default(),
                ),
                (
                    "num",
                    if c.flagged > 0 {
                        format!(r#"<span class="badge bad">{}</span>"#, c.flagged)
                    } else {
                        "0".into()
                    },
                ),
            ],
        );
    }
    t.finish()
}

fn pager(q: &FleetQuery, f: &FleetList, total: u64) -> String {
    q.links().pager(
        Noun {
            id: "cpe",
            one: "CPE",
            many: "CPEs",
        },
        f.page,
        PAGE_ROWS,
        total,
    )
}

/// `GET /noc`: the fleet overview with the searchable CPE list.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<FleetQuery>,
) -> Response {
    let caller = match auth::noc(&state, &headers).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let now = state.now_ms();
    let settings = state.settings.campaigns;
    let query = q.clone();
    let loaded = state
        .sql(move |conn| {
            let f = FleetList::parse(conn, &query)?;
            let d = load(conn, &f, now, &settings)?;
            Ok((f, d))
        })
        .await;
    let (f, d) = match loaded {
        Ok(x) => x,
        Err(e @ WebError::BadRequest(_)) => {
            let body = format!(
                r#"<h1>Fleet</h1><div class="flash err" role="alert">{}</div>{}"#,
                esc(&e.to_string()),
                search_form(&q)
            );
            return (e.status(), noc_page("Fleet", "fleet", &caller, &body)).into_response();
        }
        Err(e) => return e.page(),
    };
    let mut b = format!(
        r#"<h1>Fleet</h1><div id="live" data-refresh="30"><p class="sub">As of {}</p><div class="grid">"#,
        esc(&html::time(now))
    );
    let c = d.counts;
    b.push_str(&stat(
        "ok",
        c.online,
        "CPE online",
        "CPEs online",
        "stat-online",
        "/noc?status=online#cpes",
    ));
    b.push_str(&stat(
        "",
        c.offline,
        "CPE offline",
        "CPEs offline",
        "stat-offline",
        "/noc?status=offline#cpes",
    ));
    b.push_str(&stat(
        "",
        c.never,
        "CPE never seen",
        "CPEs never seen",
        "stat-never",
        "/noc?status=never#cpes",
    ));
    let infected = d.infected as u64;
    let suspicious = d.suspicious as u64;
    b.push_str(&stat(
        if infected == 0 { "ok" } else { "bad" },
        infected,
        "infected device",
        "infected devices",
        "stat-infected",
        "/noc/devices?verdict=infected",
    ));
    b.push_str(&stat(
        if suspicious == 0 { "ok" } else { "warn" },
        suspicious,
        "suspicious device",
        "suspicious devices",
        "stat-suspicious",
        "/noc/devices?verdict=suspicious",
    ));
    b.push_str(&stat(
        "",
        d.campaigns as u64,
        "campaign",
        "campaigns",
        "stat-campaigns",
        "/noc/campaigns",
    ));
    b.push_str(&stat(
        "",
        d.open_abuse,
        "open abuse report",
        "open abuse reports",
        "stat-abuse",
        "/noc/abuse?status=open#reports",
    ));
    b.push_str(&stat(
        "",
        d.pending_releases as u64,
        "pending release request",
        "pending release requests",
        "stat-releases",
        "/noc/releases",
    ));
    b.push_str("</div>");
    b.push_str("<h2>Infected and suspicious devices</h2>");
    if d.flagged.is_empty() {
        b.push_str(r#"<p class="muted">No device in the fleet is flagged.</p>"#);
    } else {
        let refs: Vec<&DeviceView> = d.flagged.iter().collect();
        b.push_str(&device_rows(
            &refs,
            Some(&d.households),
            "Infected and suspicious devices, newest first",
        ));
        let all = infected + suspicious;
        if all > d.flagged.len() as u64 {
            let _ = write!(
                b,
                r#"<p><a href="/noc/devices?verdict=flagged" id="all-flagged">All {}</a></p>"#,
                esc(&plural(all, "flagged device", "flagged devices"))
            );
        }
        b.push_str(&export_links("devices", "flagged devices"));
    }
    b.push_str(r#"<h2 id="cpes">CPEs</h2>"#);
    b.push_str("</div>");
    b.push_str(&search_form(&q));
    b.push_str(r#"<div id="cpe-results" data-refresh="30">"#);
    b.push_str(&pager(&q, &f, d.total));
    if !d.rows.is_empty() {
        b.push_str(&cpe_table(&q, &f, &d.rows, now));
    }
    b.push_str("</div>");
    b.push_str(&q.links().export_links("cpes", "these CPEs"));
    noc_page("Fleet", "fleet", &caller, &b)
}

use axum::response::IntoResponse as _;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fleet::fixtures::{cpe, held};

    /// What each field of the query string becomes; the SQL behind each filter is
    /// `store::fleet`'s to test.
    #[test]
    fn queries_parse_into_filters() {
        let store = crate::store::Store::open_in_memory().unwrap();
        let db = &**store.db();
        cpe(db, "cpe-b", None, None);
        // 2025-11-30T10:53:20Z for an hour.
        held(
            db,
            "cpe-b",
            "203.0.113.7",
            1_764_500_000_000,
            1_764_503_600_000,
        );
        let parse = |q: FleetQuery| FleetList::parse(db, &q);
        let filter = |q: FleetQuery| parse(q).unwrap().filter;
        let q = |text: &str| FleetQuery {
            q: Some(text.into()),
            ..FleetQuery::default()
        };
        assert_eq!(parse(FleetQuery::default()).unwrap().page, 1);
        assert_eq!(filter(FleetQuery::default()), Filter::default());
        assert_eq!(
            filter(q("Kitchen_1")).text.as_deref(),
            Some("%Kitchen\\_1%")
        );
        assert_eq!(
            filter(q("02-00-00-00-00-01")).mac.as_deref(),
            Some("02:00:00:00:00:01")
        );
        // An address: every router that ever held it; with a time, the one that did then
        // ("" when nobody did).
        let ip = filter(q("203.0.113.7"));
        assert_eq!((ip.ip.as_deref(), ip.holder), (Some("203.0.113.7"), None));
        let at = |t: &str| FleetQuery {
            at: Some(t.into()),
            ..q("203.0.113.7")
        };
        assert_eq!(
            filter(at("2025-11-30T11:23")).holder.as_deref(),
            Some("cpe-b")
        );
        assert_eq!(filter(at("2025-12-05T10:53")).holder.as_deref(), Some(""));
        let by = |status: Option<&str>, verdict: Option<&str>, policy: Option<&str>| FleetQuery {
            status: status.map(Into::into),
            verdict: verdict.map(Into::into),
            agent: Some("1.1".into()),
            policy: policy.map(Into::into),
            ..FleetQuery::default()
        };
        let f = filter(by(Some("never"), Some("flagged"), Some("v3")));
        assert_eq!(
            (f.status, f.verdicts, f.agent.as_deref(), f.policy),
            (
                Some("never"),
                Some(("infected", "suspicious")),
                Some("1.1"),
                Some(3)
            )
        );
        let mut sorted = FleetQuery::default();
        sorted.order.sort = Some("flagged".into());
        sorted.order.dir = Some("desc".into());
        sorted.order.page = Some("2".into());
        let l = parse(sorted).unwrap();
        assert_eq!((l.sort, l.desc, l.page), (Sort::Flagged, true, 2));
        for bad in [
            by(Some("asleep"), None, None),
            by(None, Some("clean"), None),
            by(None, None, Some("latest")),
            at("yesterday"),
            q(&"x".repeat(201)),
        ] {
            assert!(matches!(parse(bad), Err(WebError::BadRequest(_))));
        }
    }

    #[test]
    fn links_keep_the_filters_and_encode_them() {
        let q = FleetQuery {
            q: Some("Müller & co".into()),
            status: Some("online".into()),
            ..FleetQuery::default()
        };
        let h = q.links().href(Some("seen"), Some("desc"), Some(3));
        assert_eq!(
            h,
            "/noc?q=M%C3%BCller%20%26%20co&status=online&sort=seen&dir=desc&page=3#cpes"
        );
        assert_eq!(q.filter_query(), "&q=M%C3%BCller%20%26%20co&status=online");
    }

    #[test]
    fn times_from_a_date_time_field_are_utc() {
        assert_eq!(parse_time("1970-01-01T00:01").unwrap(), 60_000);
        assert!(parse_time("yesterday").is_err());
    }
}
