//! `GET /noc`: the fleet page. The CPE list is searched, filtered, sorted and paged in SQL,
//! so the page weighs the same at twenty routers or two hundred thousand; the same filter
//! drives the CSV/JSON export (`GET /api/export/cpes?...`, [`super::export`]).
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
use super::list::{given, like, options, Links, Noun, Order, SortKey};
use super::noc::{current_campaigns, device_rows, export_links, noc_page};
use super::{auth, AppState, WebError};
use crate::db_params;
use crate::store::db::{Row, Sql};
use crate::verdicts::{plural, DeviceView};
use crate::{abuse, households};

/// CPEs on one page of the list.
pub const PAGE_ROWS: u32 = 50;
/// Flagged devices the fleet page lists before pointing at the filtered list.
pub const FLAGGED_ROWS: usize = 20;

/// One CPE as the NOC sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CpeRow {
    /// Its id.
    pub cpe_id: String,
    /// Operator label.
    pub label: Option<String>,
    /// `online`/`offline`, if it ever reported state.
    pub status: Option<String>,
    /// Agent version.
    pub agent_version: Option<String>,
    /// Applied fleet policy.
    pub fleet_policy_version: Option<i64>,
    /// Public address.
    pub public_ip: Option<String>,
    /// Last state update.
    pub updated_ms: Option<i64>,
    /// Revoked?
    pub revoked: bool,
    /// Owning household name.
    pub household: Option<String>,
    /// Its devices whose newest verdict is not clean.
    #[serde(skip)]
    pub flagged: u32,
}

impl CpeRow {
    /// The status word the list shows and filters on: `revoked`, `never` (never reported
    /// state), or the router's own `online`/`offline`.
    pub fn status_word(&self) -> &str {
        match (self.revoked, self.status.as_deref()) {
            (true, _) => "revoked",
            (_, None) => "never",
            (_, Some(s)) => s,
        }
    }

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

const SELECT: &str = "SELECT c.cpe_id, c.label, s.status, s.agent_version, s.fleet_policy_version,
        s.public_ip, s.updated_ms, c.revoked_at_ms IS NOT NULL, h.name,
        (SELECT COUNT(*) FROM devices dv WHERE dv.cpe_id = c.cpe_id
            AND dv.verdict <> 'clean')";

const FROM: &str = " FROM cpes c LEFT JOIN cpe_state s ON s.cpe_id = c.cpe_id
        LEFT JOIN household_cpes hc ON hc.cpe_id = c.cpe_id
        LEFT JOIN households h ON h.id = hc.household_id";

const STATUS: &str = "CASE WHEN c.revoked_at_ms IS NOT NULL THEN 'revoked'
        WHEN s.status IS NULL THEN 'never' ELSE s.status END";

fn row(r: &Row) -> Result<CpeRow, crate::store::db::DbError> {
    Ok(CpeRow {
        cpe_id: r.get(0)?,
        label: r.get(1)?,
        status: r.get(2)?,
        agent_version: r.get(3)?,
        fleet_policy_version: r.get(4)?,
        public_ip: r.get(5)?,
        updated_ms: r.get(6)?,
        revoked: r.get(7)?,
        household: r.get(8)?,
        flagged: r.get(9)?,
    })
}

/// One CPE with its state and household.
///
/// # Errors
/// [`WebError::NotFound`] for an unknown CPE; database errors.
pub fn cpe_row(db: &impl Sql, id: &str) -> Result<CpeRow, WebError> {
    let filter = Filter {
        cpe: Some(id.to_string()),
        ..Filter::default()
    };
    search(db, &filter, 1, 0)?
        .1
        .into_iter()
        .next()
        .ok_or(WebError::NotFound)
}

/// Every CPE with its state and household (for small fleets and the API; pages use
/// [`search`]).
///
/// # Errors
/// Database errors.
pub fn cpe_rows(db: &impl Sql, only: Option<&str>) -> Result<Vec<CpeRow>, WebError> {
    let filter = Filter {
        cpe: only.map(str::to_string),
        ..Filter::default()
    };
    Ok(search(db, &filter, u32::MAX, 0)?.1)
}

/// The fleet page's query string, as sent; [`Filter::parse`] checks it.
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

/// Column to sort the CPE list by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// CPE id.
    #[default]
    Cpe,
    /// Household name.
    Household,
    /// Status word.
    Status,
    /// Last state update.
    Seen,
    /// Current public address.
    Ip,
    /// Agent version.
    Agent,
    /// Applied fleet policy version.
    Policy,
    /// Count of flagged devices.
    Flagged,
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

impl Sort {
    fn column(self) -> &'static str {
        match self {
            Sort::Cpe => "c.cpe_id",
            Sort::Household => "h.name",
            Sort::Status => STATUS,
            Sort::Seen => "s.updated_ms",
            Sort::Ip => "s.public_ip",
            Sort::Agent => "s.agent_version",
            Sort::Policy => "s.fleet_policy_version",
            Sort::Flagged => "10",
        }
    }
}

/// A checked fleet filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Exactly this CPE.
    pub cpe: Option<String>,
    /// `%text%` against id, label, household and host names (LIKE-escaped).
    pub text: Option<String>,
    /// A device MAC, canonical form.
    pub mac: Option<String>,
    /// A public address, ever held.
    pub ip: Option<String>,
    /// With [`Filter::ip`] and a time: the CPE that held it then (`Some("")`: nobody did).
    pub holder: Option<String>,
    /// Status word ([`CpeRow::status_word`]).
    pub status: Option<&'static str>,
    /// Verdicts a device must have.
    pub verdicts: Option<(&'static str, &'static str)>,
    /// Agent version.
    pub agent: Option<String>,
    /// Fleet policy version.
    pub policy: Option<i64>,
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

impl Filter {
    /// Checks a query; finds the holder of an address at a time through the abuse
    /// mapping's address history.
    ///
    /// # Errors
    /// [`WebError::BadRequest`] naming the bad field; database errors.
    pub fn parse(db: &impl Sql, q: &FleetQuery) -> Result<Filter, WebError> {
        let mut f = Filter {
            page: 1,
            ..Filter::default()
        };
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
        f.sort = q.order.sort()?;
        f.desc = q.order.desc(false)?;
        f.page = q.order.page()?;
        Ok(f)
    }
}

/// The CPEs matching `f`: how many in all, and `limit` of them from `offset` in `f`'s order.
///
/// # Errors
/// Database errors.
pub fn search(
    db: &impl Sql,
    f: &Filter,
    limit: u32,
    offset: u64,
) -> Result<(u64, Vec<CpeRow>), WebError> {
    // Every optional filter is typed, so that PostgreSQL knows its parameter's type when it
    // is NULL; the text search ignores case on both backends.
    let filter = format!(
        " WHERE (CAST(?1 AS TEXT) IS NULL OR c.cpe_id = ?1)
          AND (CAST(?2 AS TEXT) IS NULL OR c.cpe_id = ?2)
          AND (CAST(?3 AS TEXT) IS NULL OR LOWER(c.cpe_id) LIKE LOWER(?3) ESCAPE '\\'
               OR LOWER(c.label) LIKE LOWER(?3) ESCAPE '\\'
               OR LOWER(h.name) LIKE LOWER(?3) ESCAPE '\\'
               OR c.cpe_id IN (SELECT cpe_id FROM devices
                   WHERE LOWER(hostname) LIKE LOWER(?3) ESCAPE '\\'))
          AND (CAST(?4 AS TEXT) IS NULL
               OR c.cpe_id IN (SELECT cpe_id FROM devices WHERE mac = ?4))
          AND (CAST(?5 AS TEXT) IS NULL OR ?2 IS NOT NULL OR s.public_ip = ?5
               OR c.cpe_id IN (SELECT cpe_id FROM public_ips WHERE ip = ?5))
          AND (CAST(?6 AS TEXT) IS NULL OR {STATUS} = ?6)
          AND (CAST(?7 AS TEXT) IS NULL OR c.cpe_id IN
               (SELECT cpe_id FROM devices WHERE verdict IN (?7, CAST(?8 AS TEXT))))
          AND (CAST(?9 AS TEXT) IS NULL OR s.agent_version = ?9)
          AND (CAST(?10 AS BIGINT) IS NULL OR s.fleet_policy_version = ?10)"
    );
    let (v1, v2) = f.verdicts.unzip();
    let params = db_params![
        f.cpe.as_ref(),
        f.holder.as_ref(),
        f.text.as_ref(),
        f.mac.as_ref(),
        f.ip.as_ref(),
        f.status,
        v1,
        v2,
        f.agent.as_ref(),
        f.policy,
    ];
    let total: u64 = db.query_one(&format!("SELECT COUNT(*){FROM}{filter}"), params)?;
    let dir = if f.desc { "DESC" } else { "ASC" };
    let sql = format!(
        "{SELECT}{FROM}{filter} ORDER BY {} {dir} NULLS LAST, c.cpe_id {dir} LIMIT {limit} OFFSET {offset}",
        f.sort.column()
    );
    let rows = db
        .query(&sql, params)?
        .iter()
        .map(row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((total, rows))
}

/// How many CPEs are online, offline, never seen and revoked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// Online now.
    pub online: u64,
    /// Reported themselves offline (or their last will did).
    pub offline: u64,
    /// Enrolled, never reported state.
    pub never: u64,
    /// Revoked.
    pub revoked: u64,
}

/// Counts CPEs by status word.
///
/// # Errors
/// Database errors.
pub fn status_counts(db: &impl Sql) -> Result<StatusCounts, WebError> {
    let mut out = StatusCounts::default();
    let rows = db.query(
        &format!(
            "SELECT {STATUS}, COUNT(*) FROM cpes c LEFT JOIN cpe_state s ON s.cpe_id = c.cpe_id
             GROUP BY 1"
        ),
        &[],
    )?;
    for r in rows {
        let (word, n): (String, u64) = (r.get(0)?, r.get(1)?);
        match word.as_str() {
            "online" => out.online += n,
            "never" => out.never += n,
            "revoked" => out.revoked += n,
            _ => out.offline += n,
        }
    }
    Ok(out)
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
    f: &Filter,
    now: u64,
    settings: &crate::campaigns::Settings,
) -> Result<Data, WebError> {
    let counts = status_counts(conn)?;
    let (total, rows) = search(
        conn,
        f,
        PAGE_ROWS,
        u64::from(f.page.saturating_sub(1)) * u64::from(PAGE_ROWS),
    )?;
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

fn cpe_table(q: &FleetQuery, f: &Filter, rows: &[CpeRow], now: u64) -> String {
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

fn pager(q: &FleetQuery, f: &Filter, total: u64) -> String {
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
            let f = Filter::parse(conn, &query)?;
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

    /// Four routers: cpe-a (online, household "Müller", agent 1.2, policy 3, an infected
    /// laptop, address 203.0.113.7 now), cpe-b (offline, held 203.0.113.7 earlier),
    /// cpe-c (never seen), cpe-d (revoked).
    fn fleet(db: &impl Sql) {
        for (id, label, revoked) in [
            ("cpe-a", Some("Kitchen"), None),
            ("cpe-b", None, None),
            ("cpe-c", None, None),
            ("cpe-d", None, Some(5u64)),
        ] {
            db.execute(
                "INSERT INTO cpes (cpe_id, public_key, label, enrolled_at_ms, revoked_at_ms)
                 VALUES (?1, 'k', ?2, 0, ?3)",
                db_params![id, label, revoked],
            )
            .unwrap();
        }
        for (id, status, agent, policy, ip) in [
            ("cpe-a", "online", "1.2", 3u64, "203.0.113.7"),
            ("cpe-b", "offline", "1.1", 2, "198.51.100.9"),
        ] {
            db.execute(
                "INSERT INTO cpe_state (cpe_id, status, agent_version, fleet_policy_version,
                    public_ip, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, 100)",
                db_params![id, status, agent, policy, ip],
            )
            .unwrap();
        }
        let household: i64 = db
            .query_one(
                "INSERT INTO households (name, created_ms) VALUES ('Müller', 0) RETURNING id",
                &[],
            )
            .unwrap();
        db.execute(
            "INSERT INTO household_cpes (cpe_id, household_id) VALUES ('cpe-a', ?1)",
            db_params![household],
        )
        .unwrap();
        db.execute(
            "INSERT INTO devices (cpe_id, mac, hostname, ips_json, verdict, severity, score,
                since_ms, last_seen_ms, last_fact, action, evidence_json, observed_json)
             VALUES ('cpe-a', '02:00:00:00:00:01', 'Laptop-Anna', '[]', 'infected', 2, 0.9,
                1, 1, 'alert', 'block', '[]', '{}')",
            &[],
        )
        .unwrap();
        db.execute(
            "INSERT INTO public_ips (cpe_id, ip, first_seen_ms, last_seen_ms)
             VALUES ('cpe-b', '203.0.113.7', ?1, ?2), ('cpe-a', '203.0.113.7', ?3, ?4)",
            // 2025-11-30T10:53:20Z for an hour; ten days later for a day.
            db_params![
                1_764_500_000_000u64,
                1_764_503_600_000u64,
                1_765_364_000_000u64,
                1_765_450_400_000u64
            ],
        )
        .unwrap();
    }

    fn ids(db: &impl Sql, q: FleetQuery) -> Vec<String> {
        let f = Filter::parse(db, &q).unwrap();
        let (total, rows) = search(db, &f, 50, 0).unwrap();
        assert_eq!(total as usize, rows.len());
        rows.into_iter().map(|r| r.cpe_id).collect()
    }

    #[test]
    fn every_fleet_filter_works_on_both_backends() {
        for (url, _dir) in crate::store::db::tests::backends() {
            let store = crate::store::Store::open_url(&url).unwrap();
            let db = &**store.db();
            fleet(db);
            let q = |text: &str| FleetQuery {
                q: Some(text.into()),
                ..FleetQuery::default()
            };
            assert_eq!(ids(db, FleetQuery::default()).len(), 4, "{url}");
            // Text, case-insensitive, against id, label, household and host names.
            assert_eq!(ids(db, q("kitchen")), ["cpe-a"], "{url}");
            // (ASCII letters only: SQLite folds no others.)
            assert_eq!(ids(db, q("MüLLER")).len(), 1, "{url}");
            assert_eq!(ids(db, q("laptop-anna")), ["cpe-a"], "{url}");
            assert_eq!(ids(db, q("CPE-")).len(), 4, "{url}");
            assert_eq!(ids(db, q("02:00:00:00:00:01")), ["cpe-a"], "{url}");
            // An address: every router that ever held it; with a time, the one that did then.
            assert_eq!(ids(db, q("203.0.113.7")), ["cpe-a", "cpe-b"], "{url}");
            let at = |t: &str| FleetQuery {
                at: Some(t.into()),
                ..q("203.0.113.7")
            };
            assert_eq!(ids(db, at("2025-11-30T11:23")), ["cpe-b"], "{url}");
            assert!(ids(db, at("2025-12-05T10:53")).is_empty(), "{url}");
            let by = |status: Option<&str>,
                      verdict: Option<&str>,
                      agent: Option<&str>,
                      policy: Option<&str>| {
                FleetQuery {
                    status: status.map(Into::into),
                    verdict: verdict.map(Into::into),
                    agent: agent.map(Into::into),
                    policy: policy.map(Into::into),
                    ..FleetQuery::default()
                }
            };
            assert_eq!(
                ids(db, by(Some("online"), None, None, None)),
                ["cpe-a"],
                "{url}"
            );
            assert_eq!(
                ids(db, by(Some("never"), None, None, None)),
                ["cpe-c"],
                "{url}"
            );
            assert_eq!(
                ids(db, by(Some("revoked"), None, None, None)),
                ["cpe-d"],
                "{url}"
            );
            assert_eq!(
                ids(db, by(None, Some("flagged"), None, None)),
                ["cpe-a"],
                "{url}"
            );
            assert!(
                ids(db, by(None, Some("suspicious"), None, None)).is_empty(),
                "{url}"
            );
            assert_eq!(
                ids(db, by(None, None, Some("1.1"), None)),
                ["cpe-b"],
                "{url}"
            );
            assert_eq!(
                ids(db, by(None, None, None, Some("v3"))),
                ["cpe-a"],
                "{url}"
            );
            // Sorted by flagged devices, most first; the row as the API shows it.
            let mut sorted = FleetQuery::default();
            sorted.order.sort = Some("flagged".into());
            sorted.order.dir = Some("desc".into());
            let f = Filter::parse(db, &sorted).unwrap();
            let first = &search(db, &f, 1, 0).unwrap().1[0];
            assert_eq!(first.cpe_id, "cpe-a", "{url}");
            assert_eq!(first.flagged, 1, "{url}");
            assert_eq!(first.household.as_deref(), Some("Müller"), "{url}");
            assert_eq!(first.fleet_policy_version, Some(3), "{url}");
            assert!(!first.revoked, "{url}");
            assert!(cpe_row(db, "cpe-d").unwrap().revoked, "{url}");
            assert!(
                matches!(cpe_row(db, "nope"), Err(WebError::NotFound)),
                "{url}"
            );
            let counts = status_counts(db).unwrap();
            assert_eq!(
                (counts.online, counts.offline, counts.never, counts.revoked),
                (1, 1, 1, 1),
                "{url}"
            );
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
