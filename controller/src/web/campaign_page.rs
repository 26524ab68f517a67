//! Campaigns: infected devices in different households that behave alike, with their abuse
//! reports.
//!
//! - `GET /noc/campaigns[?q=..&status=pushed|new&min=N&sort=..&dir=..&page=N]`: the list,
//!   searched (campaign id, EHLO name, sender domain, mail server, router), filtered
//!   (pushed or not, at least N households), sorted (households, devices, last seen, first
//!   seen) and paged ([`CampaignQuery`]; `GET /api/campaigns` and
//!   `GET /api/export/campaigns` take the same filters).
//! - `GET /noc/campaigns/{id}`: one campaign: its devices with their abuse reports, what
//!   links them, and the push form.
//! - `POST /noc/campaigns/{id}/push` (admin, after a confirmation that lists the shared mail
//!   servers) adds a campaign's indicators to the fleet policy.
//!
//! Campaigns are clustered from the fleet's infected devices on each request
//! ([`load`]); only one page of them is rendered.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::auth::{self, csrf_field};
use super::html::{self, esc, path_seg, Table};
use super::list::{given, offset, options, Links, Noun, Order, SortKey};
use super::noc::{current_campaigns, noc_page};
use super::policy_editor::{current_fleet_policy, publish_checked};
use super::{AppState, WebError};
use crate::abuse;
use crate::campaigns::{self, Campaign};
use crate::operators::Level;
use crate::store::db::Sql;
use crate::verdicts::{plural, DeviceView};

/// Campaigns on one page of the list.
pub const PAGE_ROWS: u32 = 50;
/// Devices one campaign's page lists (the export has them all).
pub const MEMBER_ROWS: usize = 200;

/// The campaign list's query string, as sent; [`CampaignQuery::filter`] checks it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CampaignQuery {
    /// Search text, matched (ignoring case) against the campaign id, its EHLO names, sender
    /// domains and mail servers, and its routers' ids.
    #[serde(default)]
    pub q: Option<String>,
    /// `pushed` (its indicators are in a fleet policy) or `new` (not yet).
    #[serde(default)]
    pub status: Option<String>,
    /// At least this many households.
    #[serde(default)]
    pub min: Option<String>,
    /// Sort (`households`, `devices`, `seen`, `first`), direction and page.
    #[serde(flatten)]
    pub order: Order,
}

/// Column to sort the campaign list by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CampaignSort {
    /// Distinct households.
    #[default]
    Households,
    /// Member devices.
    Devices,
    /// Newest alert among members.
    Seen,
    /// Oldest alert among members.
    First,
}

impl SortKey for CampaignSort {
    const ALL: &'static [(CampaignSort, &'static str)] = &[
        (CampaignSort::Households, "households"),
        (CampaignSort::Devices, "devices"),
        (CampaignSort::Seen, "seen"),
        (CampaignSort::First, "first"),
    ];
}

/// A checked campaign filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CampaignFilter {
    /// Lower-case search text.
    pub text: Option<String>,
    /// Pushed (`true`) or not yet (`false`).
    pub pushed: Option<bool>,
    /// At least this many households.
    pub min_households: usize,
    /// Order.
    pub sort: CampaignSort,
    /// Descending?
    pub desc: bool,
    /// 1-based page.
    pub page: u32,
}

impl CampaignQuery {
    /// The filters that were given, by their query-string names (sort and page aside).
    pub(crate) fn filters(&self) -> Vec<(&'static str, Option<&str>)> {
        vec![
            ("q", given(&self.q)),
            ("status", given(&self.status)),
            ("min", given(&self.min)),
        ]
    }

    /// The list's links: filters, sort and direction kept.
    pub(crate) fn links(&self) -> Links<'_> {
        self.order
            .links("/noc/campaigns", "campaigns", self.filters().to_vec())
    }

    /// The checked filter.
    ///
    /// # Errors
    /// [`WebError::BadRequest`] naming the bad field.
    pub fn filter(&self) -> Result<CampaignFilter, WebError> {
        let text = match given(&self.q) {
            Some(t) if t.chars().count() > 200 => {
                return Err(WebError::BadRequest(
                    "search text over 200 characters".into(),
                ))
            }
            t => t.map(str::to_lowercase),
        };
        let pushed = match given(&self.status) {
            None => None,
            Some("pushed") => Some(true),
            Some("new") => Some(false),
            Some(_) => return Err(WebError::BadRequest("status must be pushed or new".into())),
        };
        let min_households = match given(&self.min) {
            None => 0,
            Some(m) => m
                .parse::<usize>()
                .map_err(|_| WebError::BadRequest("min must be a number of households".into()))?,
        };
        let sort = self.order.sort()?;
        Ok(CampaignFilter {
            text,
            pushed,
            min_households,
            sort,
            desc: self.order.desc(true)?,
            page: self.order.page()?,
        })
    }
}

impl CampaignFilter {
    /// Whether a campaign passes the filter.
    pub fn matches(&self, c: &Campaign, pushed: Option<i64>) -> bool {
        if c.households < self.min_households {
            return false;
        }
        if let Some(want) = self.pushed {
            if pushed.is_some() != want {
                return false;
            }
        }
        let Some(text) = &self.text else {
            return true;
        };
        let has = |s: &str| s.to_lowercase().contains(text.as_str());
        has(&c.id)
            || c.ehlo_names.iter().any(|e| has(e))
            || c.sender_domains.iter().any(|d| has(d))
            || c.mail_servers.iter().any(|ip| has(&ip.to_string()))
            || c.members.iter().any(|m| has(&m.cpe_id))
    }

    /// Keeps the matching campaigns, in the filter's order (ties by id).
    pub fn apply(&self, list: Vec<(Campaign, Option<i64>)>) -> Vec<(Campaign, Option<i64>)> {
        let mut out: Vec<_> = list
            .into_iter()
            .filter(|(c, p)| self.matches(c, *p))
            .collect();
        out.sort_by(|(a, _), (b, _)| {
            let key = |c: &Campaign| match self.sort {
                CampaignSort::Households => c.households as u64,
                CampaignSort::Devices => c.members.len() as u64,
                CampaignSort::Seen => c.last_ms,
                CampaignSort::First => c.first_ms,
            };
            let by = key(a).cmp(&key(b));
            let by = if self.desc { by.reverse() } else { by };
            by.then_with(|| a.id.cmp(&b.id))
        });
        out
    }
}

/// The fleet's current campaigns with their pushed version (clustered from every device's
/// newest state on each call).
///
/// # Errors
/// Database errors.
pub fn load(
    conn: &impl Sql,
    now: u64,
    settings: &campaigns::Settings,
) -> Result<Vec<(Campaign, Option<i64>)>, WebError> {
    let devices = super::noc::infected_devices(conn, now)?;
    current_campaigns(conn, &devices, settings)
}

fn linked_by(c: &Campaign) -> String {
    c.links
        .iter()
        .map(|l| match l {
            campaigns::Link::Ehlo(e) => format!("EHLO {}", esc(e)),
            campaigns::Link::SenderDomain(d) => format!("sender domain {}", esc(d)),
            campaigns::Link::Servers(p) => format!("{p}% shared mail servers"),
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

fn search_form(q: &CampaignQuery) -> String {
    let v = |o: &Option<String>| esc(given(o).unwrap_or(""));
    let mut s = format!(
        r#"<form class="search" method="get" action="/noc/campaigns#campaigns" role="search" aria-label="Search the campaigns"><div class="wide"><label for="f-q">EHLO name, sender domain, mail server or CPE</label><input type="text" id="f-q" name="q" value="{}" autocomplete="off"></div>"#,
        v(&q.q)
    );
    s.push_str(&options(
        "status",
        "Indicators",
        given(&q.status),
        &[("pushed", "pushed to the fleet"), ("new", "not pushed yet")],
    ));
    let _ = write!(
        s,
        r#"<div><label for="f-min">At least … households</label><input type="text" id="f-min" name="min" value="{}" inputmode="numeric"></div><div><button class="btn" type="submit" id="f-go">Search</button> <a href="/noc/campaigns#campaigns">Clear</a></div></form>"#,
        v(&q.min)
    );
    s
}

fn campaign_table(
    q: &CampaignQuery,
    f: &CampaignFilter,
    rows: &[(Campaign, Option<i64>)],
) -> String {
    let links = q.links();
    let head = |label: &'static str, key: CampaignSort| {
        links.sort_head(label, key.key(), f.sort.key(), f.desc, true)
    };
    let plain = |h: &'static str| (h, esc(h));
    let mut t = Table::new(
        "campaign-list",
        "Campaigns",
        &[
            plain("Campaign"),
            head("Households", CampaignSort::Households),
            head("Devices", CampaignSort::Devices),
            plain("Linked by"),
            head("First seen", CampaignSort::First),
            head("Last seen", CampaignSort::Seen),
            plain("Indicators"),
        ],
    );
    for (c, pushed) in rows {
        t.row(
            &format!(r#" data-campaign="{}""#, esc(&c.id)),
            &[
                (
                    "",
                    format!(
                        r#"<a class="mono" href="/noc/campaigns/{}">{}</a>"#,
                        path_seg(&c.id),
                        esc(&c.id)
                    ),
                ),
                (
                    "",
                    format!(
                        r#"<span class="badge bad">{}</span>"#,
                        esc(&plural(c.households as u64, "household", "households"))
                    ),
                ),
                (
                    "",
                    esc(&plural(c.members.len() as u64, "device", "devices")),
                ),
                ("wrap", linked_by(c)),
                ("t", esc(&html::time(c.first_ms))),
                ("t", esc(&html::time(c.last_ms))),
                (
                    "",
                    match pushed {
                        Some(v) => format!(r#"<span class="badge ok">pushed in v{v}</span>"#),
                        None => r#"<span class="badge muted">not pushed</span>"#.into(),
                    },
                ),
            ],
        );
    }
    t.finish()
}

/// `GET /noc/campaigns`: the campaign list.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(flash): Query<FlashQuery>,
    Query(q): Query<CampaignQuery>,
) -> Response {
    let caller = match auth::noc(&state, &headers).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let f = match q.filter() {
        Ok(f) => f,
        Err(e) => {
            let body = format!(
                r#"<h1>Campaigns</h1><div class="flash err" role="alert">{}</div>{}"#,
                esc(&e.to_string()),
                search_form(&q)
            );
            return (
                e.status(),
                noc_page("Campaigns", "campaigns", &caller, &body),
            )
                .into_response();
        }
    };
    let now = state.now_ms();
    let settings = state.settings.campaigns;
    let filter = f.clone();
    let loaded = state
        .sql(move |conn| {
            let all = load(conn, now, &settings)?;
            let any = !all.is_empty();
            let matching = filter.apply(all);
            let total = matching.len() as u64;
            let start = usize::try_from(offset(filter.page, PAGE_ROWS)).unwrap_or(usize::MAX);
            let rows: Vec<_> = matching
                .into_iter()
                .skip(start)
                .take(PAGE_ROWS as usize)
                .collect();
            Ok((any, total, rows))
        })
        .await;
    let (any, total, rows) = match loaded {
        Ok(x) => x,
        Err(e) => return e.page(),
    };
    let mut b = String::from("<h1>Campaigns</h1><p class=\"sub\">Infected devices in different households that behave alike: same EHLO name, same sender domains, or overlapping sets of destination mail servers.</p>");
    if let Some(v) = flash.pushed {
        let _ = write!(
            b,
            r#"<div class="flash" role="status">Indicators pushed to the fleet in policy version {v}.</div>"#
        );
    }
    if !any {
        b.push_str(r#"<p class="muted">No campaign spans more than one household right now.</p>"#);
    }
    b.push_str(r#"<h2 id="campaigns">Campaigns</h2>"#);
    b.push_str(&search_form(&q));
    b.push_str(&q.links().pager(
        Noun {
            id: "campaign",
            one: "campaign",
            many: "campaigns",
        },
        f.page,
        PAGE_ROWS,
        total,
    ));
    if !rows.is_empty() {
        b.push_str(&campaign_table(&q, &f, &rows));
    }
    b.push_str(&q.links().export_links("campaigns", "these campaigns"));
    noc_page("Campaigns", "campaigns", &caller, &b)
}

/// `GET /noc/campaigns/{id}`: one campaign, its devices and the push form.
pub async fn one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let caller = match auth::noc(&state, &headers).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let now = state.now_ms();
    let settings = state.settings.campaigns;
    let loaded = state
        .sql(move |conn| {
            let devices = super::noc::infected_devices(conn, now)?;
            let (c, pushed) = current_campaigns(conn, &devices, &settings)?
                .into_iter()
                .find(|(c, _)| c.id == id)
                .ok_or(WebError::NotFound)?;
            let shown = &c.members[..c.members.len().min(MEMBER_ROWS)];
            let names =
                super::fleet::household_names(conn, shown.iter().map(|m| m.cpe_id.as_str()))?;
            let mut reports = BTreeMap::new();
            let mut device_names = BTreeMap::new();
            for m in shown {
                let mac = m.mac.to_string();
                let f = abuse::ReportFilter {
                    cpe_id: Some(m.cpe_id.clone()),
                    mac: Some(mac.clone()),
                    ..abuse::ReportFilter::default()
                };
                reports.insert(
                    (m.cpe_id.clone(), mac.clone()),
                    abuse::count_filtered(conn, &f)?,
                );
                let name = devices
                    .iter()
                    .find(|d| d.cpe_id == m.cpe_id && d.mac == m.mac)
                    .map(DeviceView::display_name)
                    .unwrap_or_default();
                device_names.insert((m.cpe_id.clone(), mac), name);
            }
            let routers = crate::store::fleet::active_count(conn)?;
            Ok((c, pushed, names, device_names, reports, routers))
        })
        .await;
    let (c, pushed, names, device_names, reports, routers) = match loaded {
        Ok(x) => x,
        Err(e) => return e.page(),
    };
    let mut b = format!(
        r#"<p><a href="/noc/campaigns">← Campaigns</a></p><h1>Campaign <span class="mono">{}</span></h1>"#,
        esc(&c.id)
    );
    let _ = write!(
        b,
        r#"<section class="card infected" id="{}"><div class="row"><span class="badge bad">{}</span><span class="muted">{} · first {} · latest {}</span></div>"#,
        esc(&c.id),
        esc(&plural(c.households as u64, "household", "households")),
        esc(&plural(c.members.len() as u64, "device", "devices")),
        esc(&html::time(c.first_ms)),
        esc(&html::time(c.last_ms)),
    );
    let _ = write!(b, "<p><b>Linked by:</b> {}</p>", linked_by(&c));
    let mut t = html::Table::plain(
        "campaign-devices",
        &format!("Devices in campaign {}", c.id),
        &["Household / CPE", "Device", "Abuse reports"],
    );
    for m in c.members.iter().take(MEMBER_ROWS) {
        let mac = m.mac.to_string();
        let key = (m.cpe_id.clone(), mac.clone());
        let n = reports.get(&key).copied().unwrap_or(0);
        let name = device_names.get(&key).map_or("", String::as_str);
        t.row(
            "",
            &[
                (
                    "",
                    format!(
                        "{} {}",
                        esc(names.get(&m.cpe_id).map_or("", String::as_str)),
                        html::cpe_link(&m.cpe_id)
                    ),
                ),
                (
                    "",
                    format!(
                        r#"<span class="wrap">{}</span> <span class="mono muted">{}</span>"#,
                        esc(name),
                        esc(&mac)
                    ),
                ),
                (
                    "",
                    if n == 0 {
                        "none".into()
                    } else {
                        format!(
                            r#"<a href="/noc/abuse?cpe={}&amp;mac={}#reports">{}</a>"#,
                            path_seg(&m.cpe_id),
                            path_seg(&mac),
                            esc(&plural(n, "report", "reports"))
                        )
                    },
                ),
            ],
        );
    }
    b.push_str(&t.finish());
    if c.members.len() > MEMBER_ROWS {
        let _ = write!(
            b,
            r#"<p class="muted">The first {MEMBER_ROWS} of {}; the <a href="/api/export/campaigns?format=csv&amp;q={}">export</a> lists them all.</p>"#,
            esc(&plural(c.members.len() as u64, "device", "devices")),
            path_seg(&c.id)
        );
    }
    let mut servers = String::new();
    for ip in &c.mail_servers {
        let _ = write!(servers, "<li>{}</li>", esc(&ip.to_string()));
    }
    let _ = write!(
        b,
        r#"<form method="post" action="/noc/campaigns/{}/push">{}<p><b>Indicators:</b> EHLO <span class="mono">{}</span> · sender domains <span class="mono">{}</span></p>
<details><summary>The {} they share</summary><ul class="mono">{servers}</ul></details>
<label class="inline"><input type="checkbox" name="with_servers" value="1"> also block these mail servers (only if they are not big providers)</label>
<p><label class="inline"><input type="checkbox" name="confirm" value="1" required> Push to the policy of all {}: every router then blocks devices that show these indicators</label></p>
<p><button class="btn danger" type="submit">{}</button></p></form></section>"#,
        path_seg(&c.id),
        csrf_field(&caller),
        esc(&if c.ehlo_names.is_empty() {
            "—".into()
        } else {
            c.ehlo_names.join(", ")
        }),
        esc(&if c.sender_domains.is_empty() {
            "—".into()
        } else {
            c.sender_domains.join(", ")
        }),
        esc(&plural(
            c.mail_servers.len() as u64,
            "mail server",
            "mail servers"
        )),
        esc(&plural(routers, "router", "routers")),
        match pushed {
            Some(v) => format!("Pushed in v{v} — push again"),
            None => "Push indicators to the whole fleet".into(),
        }
    );
    noc_page("Campaign", "campaigns", &caller, &b)
}

/// After-redirect flash values.
#[derive(Debug, Deserialize)]
pub struct FlashQuery {
    #[serde(default)]
    pushed: Option<u64>,
}

/// The campaign push form.
#[derive(Debug, Deserialize)]
pub struct PushForm {
    csrf: String,
    #[serde(default)]
    with_servers: Option<String>,
    #[serde(default)]
    confirm: Option<String>,
}

/// `POST /noc/campaigns/{id}/push`: adds the campaign's indicators to the fleet policy.
pub async fn push(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<PushForm>,
) -> Response {
    let (staff, _) = match auth::staff_form(&state, &headers, Level::Admin, &form.csrf).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    if form.confirm.is_none() {
        return WebError::BadRequest("tick the box to confirm the push to the whole fleet".into())
            .page();
    }
    match push_campaign_indicators(&state, &staff.name, &id, form.with_servers.is_some()).await {
        Ok(v) => Redirect::to(&format!("/noc/campaigns?pushed={v}")).into_response(),
        Err(e) => e.page(),
    }
}

/// Merges a campaign's indicators into the newest fleet policy and publishes it; returns the
/// new version.
///
/// # Errors
/// [`WebError::NotFound`] for an unknown campaign; publishing errors.
pub async fn push_campaign_indicators(
    state: &AppState,
    actor: &str,
    id: &str,
    with_servers: bool,
) -> Result<u64, WebError> {
    let now = state.now_ms();
    let settings = state.settings.campaigns;
    let wanted = id.to_string();
    let (campaign, mut policy) = state
        .sql(move |conn| {
            let devices = super::noc::infected_devices(conn, now)?;
            let c = current_campaigns(conn, &devices, &settings)?
                .into_iter()
                .map(|(c, _)| c)
                .find(|c| c.id == wanted)
                .ok_or(WebError::NotFound)?;
            Ok((c, current_fleet_policy(conn)?))
        })
        .await?;
    let mut extra = campaigns::indicators_of(&campaign, with_servers);
    if extra.is_empty() {
        return Err(WebError::BadRequest(
            "this campaign has no shared EHLO names or sender domains; tick the mail-server box to push its servers".into(),
        ));
    }
    let dropped =
        campaigns::drop_unsafe_servers(&mut extra, &policy, &state.settings.policy_safety);
    for why in &dropped {
        tracing::info!(campaign = %campaign.id, %why, "mail server left out of the campaign push");
    }
    if extra.is_empty() {
        return Err(WebError::BadRequest(format!(
            "nothing to push: every shared mail server of this campaign is protected ({})",
            dropped
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    let before = policy.clone();
    campaigns::merge_indicators(&mut policy.indicators, &extra);
    let version = publish_checked(state, actor, "campaign_push", &campaign.id, &before, policy)
        .await
        .map_err(WebError::BadRequest)?;
    let id = campaign.id.clone();
    state
        .sql(move |db| Ok(crate::store::pages::campaign_pushed(db, &id, version, now)?))
        .await?;
    tracing::info!(campaign = %campaign.id, version, "campaign indicators pushed");
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_protocol::MacAddr;

    fn campaign(id: &str, households: usize, devices: usize, last_ms: u64, ehlo: &str) -> Campaign {
        Campaign {
            id: id.into(),
            members: (0..devices)
                .map(|i| campaigns::Member {
                    cpe_id: format!("cpe-{id}-{i}"),
                    mac: MacAddr([2, 0, 0, 0, 0, i as u8]),
                    at_ms: last_ms,
                    observed: Default::default(),
                })
                .collect(),
            households,
            first_ms: 0,
            last_ms,
            ehlo_names: vec![ehlo.into()],
            sender_domains: Vec::new(),
            mail_servers: vec!["198.51.100.9".parse().unwrap()],
            links: Vec::new(),
        }
    }

    #[test]
    fn campaigns_are_searched_filtered_and_sorted() {
        let list = vec![
            (campaign("c-1", 2, 2, 30, "alpha.club"), None),
            (campaign("c-2", 5, 9, 10, "beta.club"), Some(3)),
            (campaign("c-3", 3, 3, 20, "gamma.club"), None),
        ];
        let q = |query: CampaignQuery| {
            let f = query.filter().unwrap();
            f.apply(list.clone())
                .into_iter()
                .map(|(c, _)| c.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(q(CampaignQuery::default()), ["c-2", "c-3", "c-1"]);
        let text = CampaignQuery {
            q: Some("GAMMA".into()),
            ..CampaignQuery::default()
        };
        assert_eq!(q(text), ["c-3"]);
        let server = CampaignQuery {
            q: Some("198.51.100.9".into()),
            ..CampaignQuery::default()
        };
        assert_eq!(q(server).len(), 3);
        let new = CampaignQuery {
            status: Some("new".into()),
            min: Some("3".into()),
            ..CampaignQuery::default()
        };
        assert_eq!(q(new), ["c-3"]);
        let seen = CampaignQuery {
            order: Order {
                sort: Some("seen".into()),
                dir: Some("asc".into()),
                ..Order::default()
            },
            ..CampaignQuery::default()
        };
        assert_eq!(q(seen), ["c-2", "c-3", "c-1"]);
        for bad in [
            CampaignQuery {
                status: Some("maybe".into()),
                ..CampaignQuery::default()
            },
            CampaignQuery {
                min: Some("two".into()),
                ..CampaignQuery::default()
            },
            CampaignQuery {
                order: Order {
                    sort: Some("name".into()),
                    ..Order::default()
                },
                ..CampaignQuery::default()
            },
        ] {
            assert!(matches!(bad.filter(), Err(WebError::BadRequest(_))));
        }
    }
}
