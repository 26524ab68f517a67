//! `GET /noc/campaigns`: infected devices in different households that behave alike, with
//! their abuse reports; `POST /noc/campaigns/{id}/push` (admin, after a confirmation that
//! lists the shared mail servers) adds a campaign's indicators to the fleet policy.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::auth::{self, csrf_field};
use super::html::{self, esc, path_seg};
use super::noc::{current_campaigns, noc_page};
use super::policy_editor::{current_fleet_policy, publish_checked};
use super::{AppState, WebError};
use crate::abuse;
use crate::campaigns;
use crate::operators::Level;
use crate::verdicts::{plural, DeviceView};

/// `GET /noc/campaigns`.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(flash): Query<FlashQuery>,
) -> Response {
    let caller = match auth::noc(&state, &headers).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let now = state.now_ms();
    let settings = state.settings.campaigns;
    let loaded = state
        .db(move |conn| {
            let devices = super::noc::infected_devices(conn, now)?;
            let campaigns = current_campaigns(conn, &devices, &settings)?;
            let names = super::fleet::household_names(
                conn,
                campaigns
                    .iter()
                    .flat_map(|(c, _)| c.members.iter().map(|m| m.cpe_id.as_str())),
            )?;
            let mut reports = BTreeMap::new();
            for m in campaigns.iter().flat_map(|(c, _)| c.members.iter()) {
                let f = abuse::ReportFilter {
                    cpe_id: Some(m.cpe_id.clone()),
                    mac: Some(m.mac.to_string()),
                    ..abuse::ReportFilter::default()
                };
                let n = abuse::list_filtered(conn, &f, 1000)?.len() as u64;
                reports.insert((m.cpe_id.clone(), m.mac.to_string()), n);
            }
            let routers: i64 = conn.query_row(
                "SELECT COUNT(*) FROM cpes WHERE revoked_at_ms IS NULL",
                [],
                |r| r.get(0),
            )?;
            Ok((
                devices,
                campaigns,
                names,
                reports,
                u64::try_from(routers).unwrap_or(0),
            ))
        })
        .await;
    let (devices, campaigns, names, reports, routers) = match loaded {
        Ok(f) => f,
        Err(e) => return e.page(),
    };
    let mut b = String::from("<h1>Campaigns</h1><p class=\"sub\">Infected devices in different households that behave alike: same EHLO name, same sender domains, or overlapping sets of destination mail servers.</p>");
    if let Some(v) = flash.pushed {
        let _ = write!(
            b,
            r#"<div class="flash" role="status">Indicators pushed to the fleet in policy version {v}.</div>"#
        );
    }
    if campaigns.is_empty() {
        b.push_str(r#"<p class="muted">No campaign spans more than one household right now.</p>"#);
    }
    for (c, pushed) in &campaigns {
        let _ = write!(
            b,
            r#"<section class="card infected" id="{}"><div class="row"><h3 class="mono">{}</h3><span class="badge bad">{}</span><span class="muted">{} · first {} · latest {}</span></div>"#,
            esc(&c.id),
            esc(&c.id),
            esc(&plural(c.households as u64, "household", "households")),
            esc(&plural(c.members.len() as u64, "device", "devices")),
            esc(&html::time(c.first_ms)),
            esc(&html::time(c.last_ms)),
        );
        b.push_str("<p><b>Linked by:</b> ");
        let links: Vec<String> = c
            .links
            .iter()
            .map(|l| match l {
                campaigns::Link::Ehlo(e) => format!("EHLO {}", esc(e)),
                campaigns::Link::SenderDomain(d) => format!("sender domain {}", esc(d)),
                campaigns::Link::Servers(p) => format!("{p}% shared mail servers"),
            })
            .collect();
        b.push_str(&links.join(" · "));
        b.push_str("</p>");
        let mut t = html::Table::plain(
            "",
            &format!("Devices in campaign {}", c.id),
            &["Household / CPE", "Device", "Abuse reports"],
        );
        for m in &c.members {
            let name = devices
                .iter()
                .find(|d| d.cpe_id == m.cpe_id && d.mac == m.mac)
                .map(DeviceView::display_name)
                .unwrap_or_default();
            let mac = m.mac.to_string();
            let n = reports
                .get(&(m.cpe_id.clone(), mac.clone()))
                .copied()
                .unwrap_or(0);
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
                            esc(&name),
                            esc(&mac)
                        ),
                    ),
                    (
                        "",
                        if n == 0 {
                            "none".into()
                        } else {
                            format!(
                                r#"<a href="/noc/abuse?cpe={}&amp;mac={}">{}</a>"#,
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
    }
    noc_page("Campaigns", "campaigns", &caller, &b)
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
        .db(move |conn| {
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
        .db(move |conn| {
            conn.execute(
                "UPDATE campaigns SET pushed_version = ?2, pushed_ms = ?3 WHERE id = ?1",
                rusqlite::params![
                    id,
                    i64::try_from(version).unwrap_or(i64::MAX),
                    i64::try_from(now).unwrap_or(i64::MAX)
                ],
            )?;
            Ok(())
        })
        .await?;
    tracing::info!(campaign = %campaign.id, version, "campaign indicators pushed");
    Ok(version)
}
