//! The abuse desk: complaints about our customers' public addresses, mapped to the household
//! device that sent the mail ([`crate::abuse`]).
//!
//! - `GET /noc/abuse[?q=..&status=open|answered&confidence=..&cpe=ID&mac=MAC&sort=..&page=N]`:
//!   the reports, searched (public IP, MAC, router, reporter), filtered, sorted (received or
//!   reported time) and paged in SQL ([`ListQuery`]; the export and `GET /api/abuse` take the
//!   same filters), with two ways in: a simple form (address, date and time in a time zone,
//!   optional source port) and a paste box for a whole ARF message or JSON.
//! - `POST /noc/abuse/lookup` (the simple form) and `POST /noc/abuse` (the paste): map and
//!   store the report, then show it; on an error the page comes back with everything typed
//!   or pasted still in place.
//! - `GET /noc/abuse/{id}`: one report: the answer with its confidence (one vocabulary,
//!   [`Confidence::grade`], on the list and here), the router's evidence, links to the
//!   router and to the campaign the device belongs to, a reply for the complainant.
//! - `POST /noc/abuse/{id}/answered`: marks it answered.
//!
//! Operators and admins post; every NOC role reads.

use std::fmt::Write as _;
use std::net::IpAddr;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::auth::{self, csrf_field, Caller};
use smtpguard_protocol::MacAddr;

use super::html::{self, esc, Table};
use super::list::{given, like, offset, options, Links, Noun, Order, SortKey};
use super::noc::{current_campaigns, noc_page};
use super::{AppState, WebError};
use crate::abuse::{
    self, mapping::Confidence, AbuseQuery, ReportFilter, ReportSort, ReportSummary,
};
use crate::households;
use crate::operators::Level;
use crate::verdicts::{self, plural};

/// Reports on one page of the list.
pub const LIST_ROWS: u32 = 50;

/// The list's query string, as sent (also the export's and `GET /api/abuse`'s filters).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListQuery {
    /// Search: a public IP (exactly), a MAC (exactly), or text matched against the router,
    /// device, reporter, address and Message-ID.
    #[serde(default)]
    pub q: Option<String>,
    /// `open` or `answered`.
    #[serde(default)]
    pub status: Option<String>,
    /// A confidence word ([`Confidence::grade`], spaces as `-`): `exact`, `strong`, `good`,
    /// `fair`, `household-only`, `no-match`; or `device` for any that names a device.
    #[serde(default)]
    pub confidence: Option<String>,
    /// Only reports about this router.
    #[serde(default)]
    pub cpe: Option<String>,
    /// Only reports naming this device.
    #[serde(default)]
    pub mac: Option<String>,
    /// Sort (`received`, the default, or `time`: the reported time of the mail), direction (newest first by default) and page.
    #[serde(flatten)]
    pub order: Order,
}

impl SortKey for ReportSort {
    const ALL: &'static [(ReportSort, &'static str)] = &[
        (ReportSort::Received, "received"),
        (ReportSort::ReportedTime, "time"),
    ];
}

/// The confidence words the list filters on, with the labels each stands for.
fn confidence_words() -> Vec<(String, Vec<&'static str>)> {
    let mut out: Vec<(String, Vec<&'static str>)> = Vec::new();
    for c in Confidence::ALL {
        let word = c.grade().replace(' ', "-");
        match out.iter_mut().find(|(w, _)| *w == word) {
            Some((_, labels)) => labels.push(c.as_str()),
            None => out.push((word, vec![c.as_str()])),
        }
    }
    out
}

impl ListQuery {
    /// The filters that were given, by their query-string names (sort and page aside).
    pub(crate) fn filters(&self) -> Vec<(&'static str, Option<&str>)> {
        vec![
            ("q", given(&self.q)),
            ("status", given(&self.status)),
            ("confidence", given(&self.confidence)),
            ("cpe", given(&self.cpe)),
            ("mac", given(&self.mac)),
        ]
    }

    /// The list's links: filters, sort and direction kept.
    pub(crate) fn links(&self) -> Links<'_> {
        self.order
            .links("/noc/abuse", "reports", self.filters().to_vec())
    }

    /// The checked filter.
    ///
    /// # Errors
    /// [`WebError::BadRequest`] naming the bad field.
    pub fn filter(&self) -> Result<ReportFilter, WebError> {
        let mut f = ReportFilter {
            status: match given(&self.status) {
                None => None,
                Some("open") => Some("open"),
                Some("answered") => Some("answered"),
                Some(_) => {
                    return Err(WebError::BadRequest(
                        "status must be open or answered".into(),
                    ))
                }
            },
            cpe_id: given(&self.cpe).map(str::to_string),
            mac: match given(&self.mac) {
                None => None,
                Some(m) => Some(
                    m.parse::<MacAddr>()
                        .map_err(|_| {
                            WebError::BadRequest("mac must look like aa:bb:cc:dd:ee:ff".into())
                        })?
                        .to_string(),
                ),
            },
            ..ReportFilter::default()
        };
        if let Some(text) = given(&self.q) {
            if text.chars().count() > 200 {
                return Err(WebError::BadRequest(
                    "search text over 200 characters".into(),
                ));
            }
            if let Ok(mac) = text.parse::<MacAddr>() {
                f.mac = Some(mac.to_string());
            } else if let Ok(ip) = text.parse::<IpAddr>() {
                f.public_ip = Some(ip.to_string());
            } else {
                f.text = Some(like(text));
            }
        }
        if let Some(word) = given(&self.confidence) {
            f.confidences = if word == "device" {
                Confidence::ALL
                    .into_iter()
                    .filter(|c| abuse::names_device(*c))
                    .map(|c| c.as_str())
                    .collect()
            } else {
                confidence_words()
                    .into_iter()
                    .find(|(w, _)| w == word)
                    .map(|(_, labels)| labels)
                    .ok_or_else(|| {
                        WebError::BadRequest(
                            "confidence must be exact, strong, good, fair, household-only, no-match or device"
                                .into(),
                        )
                    })?
            };
        }
        f.sort = self.order.sort()?;
        f.ascending = !self.order.desc(true)?;
        Ok(f)
    }
}

/// What the forms held, to give back after an error.
#[derive(Debug, Default, Clone)]
struct Typed {
    report: String,
    ip: String,
    date: String,
    time: String,
    zone: String,
    port: String,
    reporter: String,
}

/// The confidence of a stored label as a badge with its one word.
pub fn confidence_badge(label: &str) -> String {
    match Confidence::parse(label) {
        Some(c) => {
            let class = if abuse::names_device(c) {
                "ok"
            } else {
                "warn-soft"
            };
            format!(
                r#"<span class="badge {class}" data-confidence="{}">{}</span>"#,
                c.as_str(),
                esc(c.grade())
            )
        }
        None => format!(r#"<span class="badge muted">{}</span>"#, esc(label)),
    }
}

fn status_badge(r: &ReportSummary) -> String {
    if r.status == "answered" {
        r#"<span class="badge ok">answered</span>"#.to_string()
    } else {
        r#"<span class="badge warn-soft">open</span>"#.to_string()
    }
}

fn device_cell(r: &ReportSummary) -> String {
    match (&r.cpe_id, &r.mac) {
        (Some(c), Some(m)) => format!(
            r#"{} <span class="mono">{}</span>"#,
            html::cpe_link(c),
            esc(m)
        ),
        (Some(c), None) => html::cpe_link(c),
        _ => "no match".into(),
    }
}

fn report_table(
    list: &[ReportSummary],
    caption: &str,
    [received, at]: [(&'static str, String); 2],
) -> String {
    let plain = |h: &'static str| (h, esc(h));
    let mut t = Table::new(
        "abuse-list",
        caption,
        &[
            plain("#"),
            received,
            plain("Reporter"),
            at,
            plain("Confidence"),
            plain("Router / device"),
            plain("Status"),
        ],
    );
    for r in list {
        t.row(
            &format!(r#" data-report="{}""#, r.id),
            &[
                ("", format!(r#"<a href="/noc/abuse/{0}">#{0}</a>"#, r.id)),
                (
                    "",
                    format!(
                        r#"{}<div class="muted">{}</div>"#,
                        esc(&html::time(r.received_ms)),
                        esc(&r.source)
                    ),
                ),
                ("wrap", esc(r.reporter.as_deref().unwrap_or("—"))),
                (
                    "",
                    format!(
                        r#"<span class="mono">{}</span><div class="muted">{}</div>"#,
                        esc(&r.public_ip),
                        esc(&html::time(r.at_ms))
                    ),
                ),
                ("", confidence_badge(&r.confidence)),
                ("", device_cell(r)),
                ("", status_badge(r)),
            ],
        );
    }
    t.finish()
}

fn forms(caller: &Caller, typed: &Typed) -> String {
    let zone = if typed.zone.is_empty() {
        "UTC"
    } else {
        typed.zone.as_str()
    };
    let mut b = String::from(r#"<h2 id="lookup">Look up an address</h2>"#);
    let _ = write!(
        b,
        r#"<form method="post" action="/noc/abuse/lookup" class="search" id="lookup-form">{}<div><label for="a-ip">Public IP address</label><input type="text" id="a-ip" name="ip" value="{}" required inputmode="decimal" placeholder="203.0.113.7"></div><div><label for="a-date">Date</label><input type="text" id="a-date" name="date" value="{}" required placeholder="2026-11-30"></div><div><label for="a-time">Time</label><input type="text" id="a-time" name="time" value="{}" required placeholder="14:05:09"></div><div><label for="a-zone">Time zone of that time</label><input type="text" id="a-zone" name="zone" value="{}" list="zones"><datalist id="zones"><option value="UTC"><option value="Europe/Berlin"><option value="Europe/London"><option value="America/New_York"><option value="America/Los_Angeles"><option value="Asia/Tokyo"></datalist></div><div><label for="a-port">Source port (optional)</label><input type="text" id="a-port" name="port" value="{}" inputmode="numeric"></div><div><label for="a-reporter">Reporter (optional)</label><input type="text" id="a-reporter" name="reporter" value="{}" placeholder="abuse@provider.example"></div><div><button class="btn" type="submit" id="lookup-go">Find the device</button></div></form>"#,
        csrf_field(caller),
        esc(&typed.ip),
        esc(&typed.date),
        esc(&typed.time),
        esc(zone),
        esc(&typed.port),
        esc(&typed.reporter),
    );
    let _ = write!(
        b,
        r#"<h2 id="paste">Paste a report</h2><form method="post" action="/noc/abuse" id="paste-form">{}<label for="report">The whole ARF message, or JSON <span class="mono">{{"public_ip": "...", "time": "2025-03-04T13:05:09Z", "source_port": 40123}}</span> (<span class="mono">public_ip</span> may be a router's WAN address from the CGNAT log; with the source port, the router's own NAT translation names the device exactly)</label><textarea id="report" name="report" rows="8" spellcheck="false">{}</textarea><label for="p-reporter">Reporter (optional)</label><input type="text" id="p-reporter" name="reporter" value="{}"><p><button class="btn" type="submit">Find the device</button></p></form>"#,
        csrf_field(caller),
        esc(&typed.report),
        esc(&typed.reporter),
    );
    b
}

fn search_form(q: &ListQuery) -> String {
    let v = |o: &Option<String>| esc(given(o).unwrap_or(""));
    let mut s = format!(
        r#"<form class="search" method="get" action="/noc/abuse#reports" role="search" aria-label="Search the abuse reports"><div class="wide"><label for="f-q">Public IP, CPE, MAC or reporter</label><input type="text" id="f-q" name="q" value="{}" autocomplete="off"></div>"#,
        v(&q.q)
    );
    s.push_str(&options(
        "status",
        "Status",
        given(&q.status),
        &[("open", "open"), ("answered", "answered")],
    ));
    let words = confidence_words();
    let mut values: Vec<(&str, &str)> = vec![("device", "names a device")];
    values.extend(
        words
            .iter()
            .map(|(w, _)| (w.as_str(), w.as_str()))
            .collect::<Vec<_>>(),
    );
    s.push_str(&options(
        "confidence",
        "Confidence",
        given(&q.confidence),
        &values,
    ));
    // The router and device filters come from links (a CPE page, a campaign); kept here.
    for (name, value) in [("cpe", given(&q.cpe)), ("mac", given(&q.mac))] {
        if let Some(value) = value {
            let _ = write!(
                s,
                r#"<input type="hidden" name="{name}" value="{}">"#,
                esc(value)
            );
        }
    }
    s.push_str(r#"<div><button class="btn" type="submit" id="f-go">Search</button> <a href="/noc/abuse#reports">Clear</a></div></form>"#);
    s
}

fn report_list(
    q: &ListQuery,
    f: &ReportFilter,
    page: u32,
    total: u64,
    list: &[ReportSummary],
) -> String {
    let links = q.links();
    let mut b = links.pager(
        Noun {
            id: "report",
            one: "report",
            many: "reports",
        },
        page,
        LIST_ROWS,
        total,
    );
    if !list.is_empty() {
        let current = match f.sort {
            ReportSort::Received => "received",
            ReportSort::ReportedTime => "time",
        };
        let desc = !f.ascending;
        let order = match (f.sort, desc) {
            (ReportSort::Received, true) => "newest first",
            (ReportSort::Received, false) => "oldest first",
            (ReportSort::ReportedTime, true) => "latest reported time first",
            (ReportSort::ReportedTime, false) => "earliest reported time first",
        };
        b.push_str(&report_table(
            list,
            &format!(
                "{} of {}, {order}",
                list.len(),
                plural(total, "report", "reports")
            ),
            [
                links.sort_head("Received", "received", current, desc, true),
                links.sort_head("Public IP at time", "time", current, desc, true),
            ],
        ));
    }
    b
}

async fn list_page(
    state: &AppState,
    caller: &Caller,
    q: &ListQuery,
    error: Option<&str>,
    typed: &Typed,
) -> Result<String, WebError> {
    let filter = q.filter()?;
    let page = q.order.page()?;
    let f = filter.clone();
    let (total, list) = state
        .sql(move |db| {
            let total = abuse::count_filtered(db, &f)?;
            let list = abuse::list_page(db, &f, LIST_ROWS, offset(page, LIST_ROWS))?;
            Ok((total, list))
        })
        .await?;
    let mut b = String::from("<h1>Abuse reports</h1><p class=\"sub\">Complaints about our customers' public addresses, mapped to the household device that sent the mail.</p>");
    if let Some(e) = error {
        let _ = write!(
            b,
            r#"<div class="flash err" role="alert" id="abuse-error">{}</div>"#,
            esc(e)
        );
    }
    b.push_str(&forms(caller, typed));
    b.push_str(r#"<h2 id="reports">Reports</h2><p class="row links">"#);
    for (label, href) in [
        ("All", "/noc/abuse#reports"),
        ("Open", "/noc/abuse?status=open#reports"),
        ("Answered", "/noc/abuse?status=answered#reports"),
    ] {
        let current = match (label, filter.status) {
            ("All", None) | ("Open", Some("open")) | ("Answered", Some("answered")) => {
                r#" aria-current="true""#
            }
            _ => "",
        };
        let _ = write!(b, r#"<a href="{href}"{current}>{label}</a>"#);
    }
    b.push_str("</p>");
    if let Some(cpe) = &filter.cpe_id {
        let _ = write!(
            b,
            r#"<p>About router {}{} · <a href="/noc/abuse">all reports</a></p>"#,
            html::cpe_link(cpe),
            filter
                .mac
                .as_deref()
                .map(|m| format!(r#", device <span class="mono">{}</span>"#, esc(m)))
                .unwrap_or_default()
        );
    }
    b.push_str(&search_form(q));
    b.push_str(&report_list(q, &filter, page, total, &list));
    if total == 0 && q.filters().iter().all(|(_, v)| v.is_none()) {
        b.push_str(r#"<p class="muted">No reports here. Reporters and feedback loops can also POST them to <span class="mono">/api/abuse</span>.</p>"#);
    }
    b.push_str(&q.links().export_links("abuse", "these abuse reports"));
    Ok(b)
}

/// `GET /noc/abuse`.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let caller = match auth::noc(&state, &headers).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    match list_page(&state, &caller, &q, None, &Typed::default()).await {
        Ok(b) => noc_page("Abuse reports", "abuse", &caller, &b),
        // A bad search: the search form again, with what was wrong and what was typed.
        Err(e @ WebError::BadRequest(_)) => {
            let body = format!(
                r#"<h1>Abuse reports</h1><div class="flash err" role="alert" id="abuse-error">{}</div>{}"#,
                esc(&e.to_string()),
                search_form(&q)
            );
            (
                e.status(),
                noc_page("Abuse reports", "abuse", &caller, &body),
            )
                .into_response()
        }
        Err(e) => e.page(),
    }
}

/// Stores the answer's outcome in the audit log, then shows the report; on an error, the
/// list page with the error and what was typed.
async fn finish(
    state: &AppState,
    staff: &auth::Staff,
    caller: &Caller,
    result: Result<abuse::StoredReport, WebError>,
    typed: Typed,
) -> Response {
    match result {
        Ok(r) => {
            state.audit_abuse(&staff.name, Ok(&r)).await;
            Redirect::to(&format!("/noc/abuse/{}", r.id)).into_response()
        }
        Err(e) => {
            state.audit_abuse(&staff.name, Err(e.to_string())).await;
            if let WebError::BadRequest(_) | WebError::TooLarge = e {
                state.counters.bump_abuse("form");
            }
            let status = e.status();
            let msg = e.to_string();
            match list_page(state, caller, &ListQuery::default(), Some(&msg), &typed).await {
                Ok(b) => (status, noc_page("Abuse reports", "abuse", caller, &b)).into_response(),
                Err(e) => e.page(),
            }
        }
    }
}

/// The paste form.
#[derive(Debug, Deserialize)]
pub struct PasteForm {
    csrf: String,
    report: String,
    #[serde(default)]
    reporter: String,
}

/// `POST /noc/abuse`: maps a pasted report.
pub async fn paste(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<PasteForm>,
) -> Response {
    let (staff, caller) =
        match auth::staff_form(&state, &headers, Level::Operator, &form.csrf).await {
            Ok(c) => c,
            Err(e) => return e.page(),
        };
    let now = state.now_ms();
    let body = form.report.clone().into_bytes();
    let reporter = form.reporter.clone();
    let result = state
        .sql(move |db| {
            let r = abuse::submit(db, "", &body, now)?;
            abuse::set_reporter(db, r.id, &reporter)?;
            Ok(r)
        })
        .await;
    let typed = Typed {
        report: form.report,
        reporter: form.reporter,
        ..Typed::default()
    };
    finish(&state, &staff, &caller, result, typed).await
}

/// The simple form.
#[derive(Debug, Deserialize)]
pub struct LookupForm {
    csrf: String,
    #[serde(default)]
    ip: String,
    #[serde(default)]
    date: String,
    #[serde(default)]
    time: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    port: String,
    #[serde(default)]
    reporter: String,
}

/// The question the simple form asks, or what is wrong with it.
fn lookup_query(f: &LookupForm) -> Result<AbuseQuery, WebError> {
    let bad = |m: String| WebError::BadRequest(m);
    let public_ip: IpAddr =
        f.ip.trim()
            .parse()
            .map_err(|_| bad(format!("{:?} is not an IP address", cut(&f.ip))))?;
    let zone_name = if f.zone.trim().is_empty() {
        "UTC"
    } else {
        f.zone.trim()
    };
    let zone = jiff::tz::TimeZone::get(zone_name).map_err(|_| {
        bad(format!(
            "time zone {:?} not known; use a name such as Europe/Berlin or UTC",
            cut(zone_name)
        ))
    })?;
    let date: jiff::civil::Date = f.date.trim().parse().map_err(|_| {
        bad(format!(
            "date {:?} not understood; write it as 2026-11-30",
            cut(&f.date)
        ))
    })?;
    let time: jiff::civil::Time = f.time.trim().parse().map_err(|_| {
        bad(format!(
            "time {:?} not understood; write it as 14:05 or 14:05:09",
            cut(&f.time)
        ))
    })?;
    let at = date
        .to_datetime(time)
        .to_zoned(zone)
        .map_err(|e| bad(format!("that time does not exist in {zone_name}: {e}")))?;
    let at_ms = u64::try_from(at.timestamp().as_millisecond())
        .map_err(|_| bad("the time is before 1970".into()))?;
    let source_port = match f.port.trim() {
        "" => None,
        p => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(format!("source port {:?} is not 1-65535", cut(p))))?,
        ),
    };
    Ok(AbuseQuery {
        public_ip,
        at_ms,
        dest_ip: None,
        dest_port: None,
        source_port,
    })
}

fn cut(s: &str) -> String {
    s.chars().take(60).collect()
}

/// `POST /noc/abuse/lookup`: the simple form.
pub async fn lookup(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LookupForm>,
) -> Response {
    let (staff, caller) =
        match auth::staff_form(&state, &headers, Level::Operator, &form.csrf).await {
            Ok(c) => c,
            Err(e) => return e.page(),
        };
    let now = state.now_ms();
    let result = match lookup_query(&form) {
        Ok(q) => {
            let reporter = form.reporter.clone();
            state
                .sql(move |db| {
                    let r = abuse::submit_query(db, "form", q, None, None, now)?;
                    abuse::set_reporter(db, r.id, &reporter)?;
                    Ok(r)
                })
                .await
        }
        Err(e) => Err(e),
    };
    let typed = Typed {
        ip: form.ip,
        date: form.date,
        time: form.time,
        zone: form.zone,
        port: form.port,
        reporter: form.reporter,
        report: String::new(),
    };
    finish(&state, &staff, &caller, result, typed).await
}

/// What we write back to the complainant, by what was found.
pub fn reply_text(r: &ReportSummary, confidence: Option<Confidence>) -> String {
    let when = crate::abuse::date::format_utc_secs(r.at_ms);
    let opening = format!(
        "Thank you for your report about mail sent from {} on {when}.",
        r.public_ip
    );
    let body = match confidence {
        Some(c) if abuse::names_device(c) => "That address belongs to one of our customers. We identified the device on the customer's network that sent the mail; its outgoing e-mail is restricted and the customer has been told how to clean it.",
        Some(Confidence::HouseholdOnly) => "That address belongs to one of our customers. We could not single out one device on the customer's network; we have asked the customer to check their devices and are watching the connection.",
        _ => "At that time the address was not assigned to a customer connection we can trace. Please check the time and time zone in your report; if you have the source port of the connection, send it to us and we will look again.",
    };
    format!("{opening}\n\n{body}\n\nRegards,\nAbuse desk")
}

/// `GET /noc/abuse/{id}`: one report's answer with its evidence.
pub async fn one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let caller = match auth::noc(&state, &headers).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let now = state.now_ms();
    let settings = state.settings.campaigns;
    let data = state
        .sql(move |conn| {
            let filter = ReportFilter {
                id: Some(id),
                ..ReportFilter::default()
            };
            let row = abuse::list_filtered(conn, &filter, 1)?
                .into_iter()
                .next()
                .ok_or(WebError::NotFound)?;
            let answer = abuse::answer_of(conn, id)?.ok_or(WebError::NotFound)?;
            let household = match &row.cpe_id {
                Some(c) => households::owner_of(conn, c)?.map(|(_, n)| n),
                None => None,
            };
            // The campaign the named device belongs to, if any.
            let campaign = match (&row.cpe_id, &row.mac) {
                (Some(c), Some(m)) => {
                    let devices = verdicts::load_devices(conn, c, now)?;
                    if devices.iter().any(|d| d.mac.to_string() == *m) {
                        let all = super::noc::infected_devices(conn, now)?;
                        current_campaigns(conn, &all, &settings)?
                            .into_iter()
                            .map(|(c, _)| c)
                            .find(|camp| {
                                camp.members
                                    .iter()
                                    .any(|x| x.cpe_id == *c && x.mac.to_string() == *m)
                            })
                            .map(|camp| camp.id)
                    } else {
                        None
                    }
                }
                _ => None,
            };
            Ok((row, answer, household, campaign))
        })
        .await;
    let (row, answer, household, campaign) = match data {
        Ok(d) => d,
        Err(e) => return e.page(),
    };
    let m: Option<abuse::mapping::Match> = serde_json::from_value(answer).ok();
    let confidence = Confidence::parse(&row.confidence);
    let mut b = format!(
        r#"<p><a href="/noc/abuse">← Abuse reports</a></p><h1>Report #{}</h1><p class="sub">{} report · received {} · mail from <span class="mono">{}</span> at {}{}</p>"#,
        row.id,
        esc(&row.source),
        esc(&html::time(row.received_ms)),
        esc(&row.public_ip),
        esc(&html::time(row.at_ms)),
        row.message_id
            .as_deref()
            .map(|m| format!(" · Message-ID <span class=\"mono wrap\">{}</span>", esc(m)))
            .unwrap_or_default()
    );
    let _ = write!(
        b,
        r#"<dl class="facts"><div><dt>Reporter</dt><dd class="wrap">{}</dd></div><div><dt>Status</dt><dd id="report-status">{}{}</dd></div><div><dt>Confidence</dt><dd>{}</dd></div></dl>"#,
        esc(row.reporter.as_deref().unwrap_or("not recorded")),
        status_badge(&row),
        match (&row.answered_by, row.answered_ms) {
            (Some(who), Some(at)) => format!(" by {} on {}", esc(who), esc(&html::time(at))),
            _ => String::new(),
        },
        confidence_badge(&row.confidence),
    );
    let class = if row.mac.is_some() {
        "card infected"
    } else {
        "card"
    };
    let _ = write!(b, r#"<section class="{class}"><h3>Answer</h3>"#);
    match (&row.cpe_id, &row.mac) {
        (Some(c), Some(mac)) => {
            let name = m
                .as_ref()
                .and_then(|m| m.device_name.clone())
                .unwrap_or_default();
            let _ = write!(
                b,
                r#"<p class="what" id="answer">Device <b>{}</b> <span class="mono">{}</span> in household <b>{}</b> (CPE {}).</p>"#,
                esc(&name),
                esc(mac),
                esc(household.as_deref().unwrap_or("unassigned")),
                html::cpe_link(c)
            );
        }
        (Some(c), None) => {
            let _ = write!(
                b,
                r#"<p class="what" id="answer">Household CPE {}; no single device identified.</p>"#,
                html::cpe_link(c)
            );
        }
        _ => b.push_str(r#"<p class="what" id="answer">No match: stored for follow-up.</p>"#),
    }
    if let Some(c) = confidence {
        let _ = write!(
            b,
            r#"<p><b>Confidence:</b> <span id="confidence">{}</span></p>"#,
            esc(c.describe())
        );
    }
    if let Some(camp) = &campaign {
        let _ = write!(
            b,
            r#"<p id="campaign">This device is part of campaign <a class="mono" href="/noc/campaigns/{}">{}</a>.</p>"#,
            html::path_seg(camp),
            esc(camp)
        );
    }
    if let Some(m) = &m {
        if !m.evidence.is_empty() {
            let _ = write!(
                b,
                r#"<p id="evidence-count">{} from this device in the window ({} from the household); showing the {} nearest the reported time.</p>"#,
                esc(&plural(
                    m.device_connections as u64,
                    "mail connection",
                    "mail connections"
                )),
                m.household_connections,
                m.evidence.len(),
            );
            let mut t = Table::plain(
                "evidence",
                "The router's log of mail connections",
                &[
                    "Time",
                    "Destination",
                    "LAN source port",
                    "NAT address",
                    "NAT port",
                ],
            );
            for c in &m.evidence {
                t.row(
                    "",
                    &[
                        ("", esc(&crate::abuse::date::format_utc_secs(c.at_ms))),
                        ("mono", esc(&format!("{}:{}", c.dst, c.dst_port))),
                        ("num", c.src_port.to_string()),
                        (
                            "mono",
                            esc(&c.nat_ip.map(|i| i.to_string()).unwrap_or("—".into())),
                        ),
                        (
                            "num",
                            c.nat_port.map(|p| p.to_string()).unwrap_or("—".into()),
                        ),
                    ],
                );
            }
            b.push_str(&t.finish());
        }
    }
    b.push_str("</section>");
    let _ = write!(
        b,
        r#"<h2>Reply to the complainant</h2><label for="reply">Copy this into your reply</label><textarea id="reply" rows="9" readonly>{}</textarea>"#,
        esc(&reply_text(&row, confidence))
    );
    if row.status != "answered" {
        let _ = write!(
            b,
            r#"<form method="post" action="/noc/abuse/{}/answered">{}<p><button class="btn" type="submit" id="mark-answered">Mark answered</button></p></form>"#,
            row.id,
            csrf_field(&caller)
        );
    }
    noc_page("Abuse report", "abuse", &caller, &b)
}

/// The "answered" form.
#[derive(Debug, Deserialize)]
pub struct AnsweredForm {
    csrf: String,
}

/// `POST /noc/abuse/{id}/answered`.
pub async fn answered(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<AnsweredForm>,
) -> Response {
    let (staff, _) = match auth::staff_form(&state, &headers, Level::Operator, &form.csrf).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let now = state.now_ms();
    let who = staff.name.clone();
    match state
        .sql(move |db| Ok(abuse::mark_answered(db, id, &who, now)?))
        .await
    {
        Ok(true) => {
            state
                .audit(
                    &staff.name,
                    "abuse_answered",
                    format!("report {id}"),
                    "ok",
                    String::new(),
                )
                .await;
            Redirect::to(&format!("/noc/abuse/{id}")).into_response()
        }
        Ok(false) => WebError::NotFound.page(),
        Err(e) => e.page(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(date: &str, time: &str, zone: &str, port: &str) -> LookupForm {
        LookupForm {
            csrf: String::new(),
            ip: "203.0.113.7".into(),
            date: date.into(),
            time: time.into(),
            zone: zone.into(),
            port: port.into(),
            reporter: String::new(),
        }
    }

    #[test]
    fn the_list_query_reads_ip_mac_text_and_one_confidence_word() {
        let q = |text: &str| ListQuery {
            q: Some(text.into()),
            ..ListQuery::default()
        };
        let f = q("203.0.113.7").filter().unwrap();
        assert_eq!(f.public_ip.as_deref(), Some("203.0.113.7"));
        let f = q("02-00-00-00-00-66").filter().unwrap();
        assert_eq!(f.mac.as_deref(), Some("02:00:00:00:00:66"));
        let f = q("bigmail_").filter().unwrap();
        assert_eq!(f.text.as_deref(), Some("%bigmail\\_%"));
        let exact = ListQuery {
            confidence: Some("exact".into()),
            ..ListQuery::default()
        };
        assert_eq!(exact.filter().unwrap().confidences, ["exact", "exact-port"]);
        let household = ListQuery {
            confidence: Some("household-only".into()),
            order: Order {
                sort: Some("time".into()),
                dir: Some("asc".into()),
                ..Order::default()
            },
            ..ListQuery::default()
        };
        let f = household.filter().unwrap();
        assert_eq!(f.confidences, ["household-only"]);
        assert_eq!(f.sort, ReportSort::ReportedTime);
        assert!(f.ascending);
        for bad in [
            ListQuery {
                confidence: Some("certain".into()),
                ..ListQuery::default()
            },
            ListQuery {
                status: Some("closed".into()),
                ..ListQuery::default()
            },
            ListQuery {
                order: Order {
                    sort: Some("reporter".into()),
                    ..Order::default()
                },
                ..ListQuery::default()
            },
        ] {
            assert!(matches!(bad.filter(), Err(WebError::BadRequest(_))));
        }
    }

    #[test]
    fn the_simple_form_reads_local_time_in_its_zone() {
        // 2025-03-04 14:05:09 in Berlin (CET) is 13:05:09 UTC.
        let q = lookup_query(&form("2025-03-04", "14:05:09", "Europe/Berlin", "40123")).unwrap();
        assert_eq!(q.at_ms, 1_741_093_509_000);
        assert_eq!(q.source_port, Some(40123));
        let q = lookup_query(&form("2025-03-04", "13:05", "", "")).unwrap();
        assert_eq!(q.at_ms, 1_741_093_500_000);
        assert_eq!(q.source_port, None);
        for bad in [
            form("04.03.2025", "13:05", "UTC", ""),
            form("2025-03-04", "1pm", "UTC", ""),
            form("2025-03-04", "13:05", "Mars/Base", ""),
            form("2025-03-04", "13:05", "UTC", "70000"),
        ] {
            assert!(matches!(lookup_query(&bad), Err(WebError::BadRequest(_))));
        }
    }
}
