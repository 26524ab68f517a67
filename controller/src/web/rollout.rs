//! The rollout part of the policy page ([`crate::rollout`]): each rollout with its stages,
//! summarised per stage and version with a drill-down to the routers that are behind or
//! refused, refreshed in place every few seconds by the site's script; the forms
//! that start, promote and roll back a rollout (admins, CSRF-checked); and
//! `GET /api/rollouts` (JSON).
//!
//! Routes: `GET /noc/policy/rollouts` (the section's HTML alone), `POST
//! /noc/policy/rollouts` (start, from the editor's
//! form), `POST /noc/policy/rollouts/{id}/promote|rollback`, `GET /api/rollouts`.

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use serde::Deserialize;
use smtpguard_protocol::Policy;

use super::auth::{self, csrf_field, Caller, Staff};
use super::html::{self, esc, path_seg};
use super::noc::noc_page;
use super::{html_response, AppState, WebError};
use crate::operators::Level;
use crate::rollout::{self, Cohort, Limits, Rollout, Stage, Status, TargetState};
use crate::store::db::Sql;

/// Rollouts the page lists.
const LISTED: usize = 5;

/// How often the page refreshes the section (ms).
const REFRESH_SECS: u32 = 3;

/// A rollout with its stages and the cohort's flagged devices now.
pub struct Shown {
    rollout: Rollout,
    stages: Vec<Stage>,
    flagged_now: rollout::Flagged,
}

/// The newest rollouts as the page and the API show them.
///
/// # Errors
/// Database errors.
pub fn load(db: &impl Sql) -> Result<Vec<Shown>, WebError> {
    let mut out = Vec::new();
    for r in rollout::list(db, LISTED)? {
        let stages = rollout::stages(db, &r)?;
        let flagged_now = rollout::flagged(db, &r.cohort)?;
        out.push(Shown {
            rollout: r,
            stages,
            flagged_now,
        });
    }
    Ok(out)
}

fn status_badge(s: Status) -> &'static str {
    match s {
        Status::Canary => r#"<span class="badge warn">canary</span>"#,
        Status::Promoted => r#"<span class="badge ok">promoted</span>"#,
        Status::RolledBack => r#"<span class="badge muted">rolled back</span>"#,
        Status::Halted => r#"<span class="badge bad">halted</span>"#,
    }
}

fn stage_title(name: &str) -> &'static str {
    match name {
        "canary" => "Canary: the candidate to the cohort (per-router policy)",
        "fleet" => "Fleet: the candidate as the fleet policy",
        _ => "Restore: the cohort back on the live fleet policy",
    }
}

/// The section's inner HTML: each rollout with its stages; the promote and roll-back
/// buttons for admins while a rollout is in its canary stage.
pub fn section(caller: &Caller, staff: &Staff, shown: &[Shown]) -> String {
    let mut b = String::from("<h2>Staged rollouts</h2>");
    if shown.is_empty() {
        b.push_str(r#"<p class="muted">No rollout yet. Admins start one from the editor above: the candidate goes to a canary cohort first.</p>"#);
    }
    for s in shown {
        let r = &s.rollout;
        let _ = write!(
            b,
            r#"<article class="card rollout" data-rollout="{}" data-status="{}"><h3>Rollout {} {}</h3><p>Started by {} {}: “{}”. Cohort: {} ({}). It {}.</p>"#,
            r.id,
            r.status.as_str(),
            r.id,
            status_badge(r.status),
            esc(&r.started_by),
            esc(&html::time(r.started_ms)),
            esc(&r.note),
            crate::verdicts::plural(r.cohort.len() as u64, "router", "routers"),
            r.cohort
                .iter()
                .map(|c| format!(
                    r#"<a class="mono" href="/noc/cpe/{}">{}</a>"#,
                    path_seg(c),
                    esc(c)
                ))
                .collect::<Vec<_>>()
                .join(", "),
            esc(&rollout::limits_text(&r.limits)),
        );
        let _ = write!(
            b,
            r#"<p class="flagged">Flagged devices in the cohort: {:.1}% at the start, <strong>{:.1}%</strong> now ({} of {}).</p>"#,
            r.flagged_before,
            s.flagged_now.percent(),
            s.flagged_now.flagged,
            s.flagged_now.devices
        );
        let _ = write!(
            b,
            r#"<table class="stages"><caption>Rollout {}: its stages</caption><thead><tr><th scope="col">Stage</th><th scope="col">Version</th><th scope="col">Applied</th><th scope="col">Behind</th><th scope="col">Refused</th></tr></thead><tbody>"#,
            r.id
        );
        for st in &s.stages {
            let versions = match st.versions() {
                Some((lo, hi)) if lo == hi => format!("v{lo}"),
                Some((lo, hi)) => format!("v{lo}–v{hi}"),
                None => "—".into(),
            };
            let lagging: Vec<&rollout::Target> = st
                .targets
                .iter()
                .filter(|t| t.state != TargetState::Applied)
                .collect();
            let drill = if lagging.is_empty() {
                String::new()
            } else {
                let mut d = format!(
                    r#"<details data-key="{}-{}"><summary>{} behind or refused</summary><ul>"#,
                    r.id,
                    st.name,
                    crate::verdicts::plural(lagging.len() as u64, "router", "routers")
                );
                for t in lagging {
                    let what = match &t.state {
                        TargetState::Refused(why) => format!("refused v{}: {}", t.version, why),
                        _ => format!("has not applied v{} yet", t.version),
                    };
                    let _ = write!(
                        d,
                        r#"<li data-cpe="{}"><a class="mono" href="/noc/cpe/{}">{}</a> {}</li>"#,
                        esc(&t.cpe_id),
                        path_seg(&t.cpe_id),
                        esc(&t.cpe_id),
                        esc(&what)
                    );
                }
                d.push_str("</ul></details>");
                d
            };
            let _ = write!(
                b,
                r#"<tr data-stage="{}"><td>{}{drill}</td><td class="mono">{}</td><td class="num applied">{}</td><td class="num behind">{}</td><td class="num refused">{}</td></tr>"#,
                st.name,
                stage_title(st.name),
                versions,
                st.applied(),
                st.behind(),
                st.refused()
            );
        }
        b.push_str("</tbody></table>");
        if let (Some(by), Some(at)) = (&r.ended_by, r.ended_ms) {
            let _ = write!(
                b,
                r#"<p class="ended">{} by {} {}{}</p>"#,
                match r.status {
                    Status::Promoted => "Promoted",
                    Status::Halted => "Halted",
                    _ => "Rolled back",
                },
                esc(by),
                esc(&html::time(at)),
                r.end_reason
                    .as_deref()
                    .map(|w| format!(": {}", esc(w)))
                    .unwrap_or_default()
            );
        }
        if r.status == Status::Canary && staff.level >= Level::Admin {
            let _ = write!(
                b,
                r#"<div class="row"><form method="post" action="/noc/policy/rollouts/{id}/promote">{csrf}<button class="btn" type="submit">Promote to the fleet</button></form><form method="post" action="/noc/policy/rollouts/{id}/rollback">{csrf}<input type="text" name="reason" placeholder="Why (kept in the audit log)" aria-label="Why roll back"><button class="btn danger" type="submit">Roll back the cohort</button></form></div>"#,
                id = r.id,
                csrf = csrf_field(caller)
            );
        }
        b.push_str("</article>");
    }
    b
}

/// The section as the policy page embeds it; the site's script ([`super::html::UI_JS`])
/// refreshes it in place every [`REFRESH_SECS`].
pub fn embedded(caller: &Caller, staff: &Staff, shown: &[Shown]) -> String {
    format!(
        r#"<section id="rollouts" data-refresh="{REFRESH_SECS}">{}</section>"#,
        section(caller, staff, shown)
    )
}

/// The form fields that start a rollout, inside the editor's form (admins).
pub fn start_fields() -> String {
    r#"<fieldset class="card"><legend>Staged rollout</legend><p class="muted">Sends the policy above to a canary cohort first (signed per-router policy); the fleet keeps the live version until you promote it. The rollout halts by itself and rolls the cohort back when a limit is exceeded.</p><label for="cohort">Cohort: a share (10%) or router ids</label><input type="text" id="cohort" name="cohort" value="10%"><label for="max_refusals">Halt when more routers than this refuse</label><input type="text" id="max_refusals" name="max_refusals" value="0"><label for="max_flagged_rise">Halt when the cohort's flagged devices rise more than (percentage points)</label><input type="text" id="max_flagged_rise" name="max_flagged_rise" value="5"><label for="promote_after_secs">Promote by itself after (seconds, once every cohort router applied; empty: by hand)</label><input type="text" id="promote_after_secs" name="promote_after_secs" value=""><p><button class="btn secondary" type="submit" id="start-rollout" formaction="/noc/policy/rollouts">Start canary rollout</button></p></fieldset>"#.to_string()
}

/// `GET /noc/policy/rollouts`: the section's HTML (every NOC role).
pub async fn fragment(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (staff, caller) = match auth::staff(&state, &headers, Level::Viewer).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    match state.sql(load).await {
        Ok(shown) => html_response(section(&caller, &staff, &shown)),
        Err(e) => e.page(),
    }
}

/// `GET /api/rollouts`: the newest rollouts with their stages (every NOC role).
pub async fn api(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = auth::staff(&state, &headers, Level::Viewer).await {
        return e.api();
    }
    let shown = match state.sql(load).await {
        Ok(s) => s,
        Err(e) => return e.api(),
    };
    let rollouts: Vec<serde_json::Value> = shown
        .iter()
        .map(|s| {
            let stages: Vec<serde_json::Value> = s
                .stages
                .iter()
                .map(|st| {
                    serde_json::json!({
                        "stage": st.name,
                        "applied": st.applied(),
                        "behind": st.behind(),
                        "refused": st.refused(),
                        "routers": st.targets,
                    })
                })
                .collect();
            serde_json::json!({
                "rollout": s.rollout,
                "flagged_now_percent": s.flagged_now.percent(),
                "stages": stages,
            })
        })
        .collect();
    Json(serde_json::json!({ "rollouts": rollouts })).into_response()
}

/// The start form: the editor's fields plus the rollout's.
#[derive(Debug, Deserialize)]
pub struct StartForm {
    #[serde(default)]
    csrf: String,
    policy: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    cohort: String,
    #[serde(default)]
    max_refusals: String,
    #[serde(default)]
    max_flagged_rise: String,
    #[serde(default)]
    promote_after_secs: String,
}

fn parse_limits(form: &StartForm) -> Result<Limits, String> {
    let max_refusals = match form.max_refusals.trim() {
        "" => 0,
        t => t
            .parse::<u32>()
            .map_err(|_| format!("refusals allowed: {t:?} is not a whole number"))?,
    };
    let max_flagged_rise = match form.max_flagged_rise.trim() {
        "" => 5.0,
        t => t
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("flagged-device rise: {t:?} is not a number"))?,
    };
    let promote_after_secs = match form.promote_after_secs.trim() {
        "" => None,
        t => Some(
            t.parse::<u64>()
                .ok()
                .filter(|s| *s <= 30 * 86_400)
                .ok_or_else(|| format!("promote after: {t:?} is not 0 to 2592000 seconds"))?,
        ),
    };
    Ok(Limits {
        max_refusals,
        max_flagged_rise,
        promote_after_secs,
    })
}

fn answer(caller: &Caller, result: Result<String, String>) -> Response {
    match result {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(why) => {
            let body = format!(
                r#"<h1>Staged rollout</h1><div class="flash err" role="alert">{}</div><p><a class="btn secondary" href="/noc/policy">Back to the policy page</a></p>"#,
                esc(&why)
            );
            let mut r = noc_page("Policy", "policy", caller, &body);
            *r.status_mut() = axum::http::StatusCode::BAD_REQUEST;
            r
        }
    }
}

/// `POST /noc/policy/rollouts`: starts a rollout of the editor's policy (admins).
pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<StartForm>,
) -> Response {
    let (staff, caller) = match auth::staff_form(&state, &headers, Level::Admin, &form.csrf).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let request = match (
        toml::from_str::<Policy>(&form.policy).map_err(|e| e.to_string()),
        Cohort::parse(&form.cohort),
        parse_limits(&form),
    ) {
        (Ok(candidate), Ok(cohort), Ok(limits)) => rollout::Request {
            candidate,
            source_text: Some(form.policy.clone()),
            note: form.note.clone(),
            cohort,
            limits,
        },
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            let why = format!("Not started: {e}");
            state
                .audit(
                    &staff.name,
                    "rollout_start",
                    "rollout".into(),
                    "refused",
                    why.clone(),
                )
                .await;
            return answer(&caller, Err(why));
        }
    };
    let result = rollout::start(&state, &staff.name, request)
        .await
        .map(|id| format!("/noc/policy?rollout={id}#rollouts"))
        .map_err(|e| format!("Not started: {e}"));
    answer(&caller, result)
}

/// The promote form.
#[derive(Debug, Deserialize)]
pub struct PromoteForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /noc/policy/rollouts/{id}/promote` (admins).
pub async fn promote(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<PromoteForm>,
) -> Response {
    let (staff, caller) = match auth::staff_form(&state, &headers, Level::Admin, &form.csrf).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let result = rollout::promote(&state, &staff.name, id)
        .await
        .map(|v| format!("/noc/policy?saved={v}#rollouts"))
        .map_err(|e| format!("Not promoted: {e}"));
    answer(&caller, result)
}

/// The roll-back form.
#[derive(Debug, Deserialize)]
pub struct RollbackForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// `POST /noc/policy/rollouts/{id}/rollback` (admins).
pub async fn rollback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<RollbackForm>,
) -> Response {
    let (staff, caller) = match auth::staff_form(&state, &headers, Level::Admin, &form.csrf).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let reason = match form.reason.trim() {
        "" => "rolled back by hand".to_string(),
        r => r.chars().take(rollout::NOTE_MAX).collect(),
    };
    let result = rollout::roll_back(&state, &staff.name, id, Status::RolledBack, &reason)
        .await
        .map(|()| "/noc/policy#rollouts".to_string())
        .map_err(|e| format!("Not rolled back: {e}"));
    answer(&caller, result)
}
