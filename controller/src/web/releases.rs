//! `GET /noc/releases`: subscribers' release requests; `POST /noc/releases/{id}` (operator)
//! approves one, which sends the signed release to the router, or denies it. Audited.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::auth::{self, csrf_field};
use super::html::{self, esc};
use super::noc::noc_page;
use super::{AppState, WebError};
use crate::households;
use crate::operators::Level;

/// `GET /noc/releases`: subscribers' release requests.
pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let caller = match auth::noc(&state, &headers).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let data = state
        .sql(|db| {
            let list = households::release_requests(db, None)?;
            let names: BTreeMap<i64, String> = households::all(db)?
                .into_iter()
                .map(|h| (h.id, h.name))
                .collect();
            Ok((list, names))
        })
        .await;
    let (list, names) = match data {
        Ok(d) => d,
        Err(e) => return e.page(),
    };
    let mut b = String::from("<h1>Release requests</h1><p class=\"sub\">Subscribers who cleaned a device and ask for its restriction to be lifted. Approve once its telemetry looks clean.</p>");
    if list.is_empty() {
        b.push_str(r#"<p class="muted">None.</p>"#);
    } else {
        let mut t = html::Table::plain(
            "releases",
            "Release requests, newest first",
            &["Requested", "Household", "Device", "Note", "Status"],
        );
        for r in &list {
            let decide = if r.status == "pending" {
                format!(
                    r#"<form method="post" action="/noc/releases/{}" class="row">{}<button class="btn" name="decision" value="approve">Approve</button><button class="btn secondary" name="decision" value="deny">Deny</button></form>"#,
                    r.id,
                    csrf_field(&caller)
                )
            } else {
                esc(&r.status)
            };
            t.row(
                "",
                &[
                    ("", esc(&html::time(r.requested_ms))),
                    (
                        "",
                        esc(names.get(&r.household_id).map_or("", String::as_str)),
                    ),
                    (
                        "",
                        format!(
                            r#"{} <span class="mono">{}</span>"#,
                            html::cpe_link(&r.cpe_id),
                            esc(&r.mac)
                        ),
                    ),
                    ("wrap", esc(&r.note)),
                    ("", decide),
                ],
            );
        }
        b.push_str(&t.finish());
    }
    noc_page("Release requests", "releases", &caller, &b)
}

/// The decision form.
#[derive(Debug, Deserialize)]
pub struct DecisionForm {
    csrf: String,
    decision: String,
}

/// `POST /noc/releases/{id}`.
pub async fn decide(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<DecisionForm>,
) -> Response {
    let (staff, _) = match auth::staff_form(&state, &headers, Level::Operator, &form.csrf).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let approve = match form.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return WebError::BadRequest("decision must be approve or deny".into()).page(),
    };
    let now = state.now_ms();
    let decided = match state
        .sql(move |db| Ok(households::decide_release(db, id, approve, now)?))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            state
                .audit(
                    &staff.name,
                    "release_decision",
                    format!("request {id}"),
                    "refused",
                    e.to_string(),
                )
                .await;
            return e.page();
        }
    };
    let target = format!("{}/{}", decided.cpe_id, decided.mac);
    state
        .audit(
            &staff.name,
            "release_decision",
            target.clone(),
            if approve { "approved" } else { "denied" },
            format!("request {}", decided.id),
        )
        .await;
    if approve {
        // The decision stands whatever happens to the command; the pages show whether the
        // router took it.
        match decided.mac.parse() {
            Ok(mac) => {
                let order = crate::commands::Order::Release {
                    mac,
                    grace_secs: None,
                };
                match state
                    .commands
                    .send(decided.cpe_id.clone(), order, Some(decided.id))
                    .await
                {
                    Ok(command_id) => {
                        tracing::info!(request = decided.id, command_id, "release sent");
                        state
                            .audit(
                                &staff.name,
                                "command",
                                target,
                                "sent",
                                format!("release, command {command_id}, request {}", decided.id),
                            )
                            .await;
                    }
                    Err(e) => {
                        tracing::error!(request = decided.id, error = %e, "release not sent");
                        state
                            .audit(
                                &staff.name,
                                "command",
                                target,
                                "failed",
                                format!("release for request {}: {e}", decided.id),
                            )
                            .await;
                    }
                }
            }
            Err(e) => {
                tracing::error!(request = decided.id, error = %e, "release request with a bad MAC")
            }
        }
    }
    Redirect::to("/noc/releases").into_response()
}
