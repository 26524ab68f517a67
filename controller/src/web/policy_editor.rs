//! The fleet policy editor: `GET /noc/policy`, `POST /noc/policy` (check, or sign and
//! publish) and `POST /noc/policy/rollback/{version}`. Admins only change policy; every NOC
//! role may read the page.
//!
//! The editor shows the live version with who published it, when and why, the text it was
//! published from (comments kept; numbers as written), and the rollout. "Check" signs
//! nothing: it shows what would change against the live version, the safety check's verdict
//! and how many routers would receive it. "Sign and publish" needs a change note, refuses a
//! policy that changes nothing, and checks again. Every earlier version can be rolled back
//! to, which publishes its content as a new, higher version (routers refuse older ones).
//! The versions, notes and rollout view are read through [`crate::store::drafts`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use smtpguard_protocol::Policy;

use super::auth::{self, csrf_field, Caller, Staff};
use super::html::{self, esc, Table};
use super::noc::noc_page;
use super::{AppState, WebError};
use crate::audit;
use crate::operators::Level;
use crate::store::db::Sql;
use crate::store::drafts::{self, Version};
use crate::store::RolloutRow;

/// Longest change note kept (characters).
pub const NOTE_MAX: usize = 500;

/// Versions the history lists.
const HISTORY_MAX: usize = 20;

/// The newest fleet policy, or the default when none was ever published.
///
/// # Errors
/// Database errors, or a stored policy that no longer parses.
pub(crate) fn current_fleet_policy(db: &impl Sql) -> Result<Policy, WebError> {
    Ok(drafts::current_fleet_policy(db)?)
}

/// A policy as editable text: no version (assigned when signing) and every number as
/// written (thresholds are single precision; printed through `f32` they read 0.4, not
/// 0.4000000059604645).
fn display_text(policy: &Policy) -> String {
    fn tidy(v: &mut toml::Value) {
        match v {
            toml::Value::Float(f) => {
                #[allow(clippy::cast_possible_truncation)]
                let short = (*f as f32).to_string();
                if let Ok(g) = short.parse::<f64>() {
                    *f = g;
                }
            }
            toml::Value::Array(a) => a.iter_mut().for_each(tidy),
            toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| tidy(v)),
            _ => {}
        }
    }
    let mut p = policy.clone();
    p.policy_version = 0;
    let Ok(mut value) = toml::Value::try_from(&p) else {
        return String::new();
    };
    if let toml::Value::Table(t) = &mut value {
        t.remove("policy_version");
    }
    tidy(&mut value);
    toml::to_string(&value).unwrap_or_default()
}

/// The content that counts when comparing versions (the version number does not).
fn content(policy: &Policy) -> Policy {
    let mut p = policy.clone();
    p.policy_version = 0;
    p
}

/// Checks, signs and publishes a fleet policy and audits it (what changed from `before`,
/// and the outcome). Returns the version, or why it was refused: a version every router
/// would refuse is never signed.
pub(crate) async fn publish_checked(
    state: &AppState,
    actor: &str,
    action: &'static str,
    target: &str,
    before: &Policy,
    policy: Policy,
) -> Result<u64, String> {
    let diff = audit::policy_diff(&content(before), &content(&policy));
    let busy = state
        .sql(|db| Ok(crate::rollout::canary(db)?.map(|r| r.id)))
        .await;
    let result = match (busy, check(state, &policy)) {
        (Err(e), _) => Err(e.to_string()),
        (Ok(Some(id)), _) => Err(format!(
            "rollout {id} is in its canary stage: promote it or roll it back first"
        )),
        (Ok(None), Ok(())) => state.policy.publish(policy, None).await,
        (Ok(None), Err(e)) => Err(e),
    };
    if result.is_ok() {
        // Routers with a derived override run it instead of the fleet policy: re-derive
        // them from the new version.
        for (cpe, failed) in crate::policy::rederive_all(state).await {
            if let Err(e) = failed {
                tracing::error!(cpe_id = %cpe, error = %e, "could not re-derive a per-CPE override");
            }
        }
    }
    let (outcome, detail) = match &result {
        Ok(v) => ("ok", format!("version {v}; {diff}")),
        Err(e) => ("refused", format!("{e}; {diff}")),
    };
    state
        .audit(actor, action, target.to_string(), outcome, detail)
        .await;
    result
}

/// The checks a policy passes before anything is signed: the schema's own limits and the
/// safety check every router runs too.
pub(crate) fn check(state: &AppState, policy: &Policy) -> Result<(), String> {
    policy.validate().map_err(|e| e.to_string())?;
    smtpguard_protocol::check_policy_safety(policy, &state.settings.policy_safety)
        .map_err(|e| e.to_string())
}

/// Keeps the editor's text, note and author with a version the editor published.
pub(crate) async fn remember(
    state: &AppState,
    version: u64,
    text: Option<String>,
    note: String,
    actor: String,
) {
    let kept = state
        .sql(move |db| {
            Ok(drafts::remember(
                db,
                version,
                text.as_deref(),
                &note,
                &actor,
            )?)
        })
        .await;
    if let Err(e) = kept {
        tracing::warn!(version, error = %e, "could not keep the policy's text and note");
    }
}

/// What the page shows besides the editor.
struct Data {
    versions: Vec<Version>,
    rollout: Vec<RolloutRow>,
    latest: Option<u64>,
    routers: u64,
    rollouts: Vec<super::rollout::Shown>,
}

async fn load(state: &AppState) -> Result<Data, WebError> {
    state
        .sql(|db| {
            let versions = drafts::versions(db, HISTORY_MAX)?;
            let (rollout, latest) = drafts::rollout(db)?;
            Ok(Data {
                versions,
                rollout,
                latest,
                routers: crate::store::fleet::active_count(db)?,
                rollouts: super::rollout::load(db)?,
            })
        })
        .await
}

/// What one request adds to the page.
#[derive(Default)]
struct View<'a> {
    text: Option<&'a str>,
    note: &'a str,
    error: Option<String>,
    checked: Option<Vec<String>>,
    saved: Option<u64>,
}

fn body(caller: &Caller, staff: &Staff, data: &Data, view: &View<'_>) -> String {
    let live = data.versions.first();
    let mut b = String::from("<h1>Fleet policy</h1>");
    match live {
        Some(v) => {
            let _ = write!(
                b,
                r#"<p class="sub" id="live">Live: <strong>version {}</strong>, published {}{}{}.</p>"#,
                v.version,
                esc(&html::time(v.created_ms)),
                v.actor
                    .as_deref()
                    .map(|a| format!(" by {}", esc(a)))
                    .unwrap_or_default(),
                v.note
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .map(|n| format!(": “{}”", esc(n)))
                    .unwrap_or_default()
            );
        }
        None => b.push_str(r#"<p class="sub" id="live">No fleet policy published yet: routers use their local policy file.</p>"#),
    }
    if let Some(v) = view.saved {
        let _ = write!(
            b,
            r#"<div class="flash" role="status">Policy version {v} signed and published.</div>"#
        );
    }
    if let Some(e) = &view.error {
        let _ = write!(b, r#"<div class="flash err" role="alert">{}</div>"#, esc(e));
    }
    if let Some(changes) = &view.checked {
        let _ = write!(
            b,
            r#"<div class="flash" id="check" role="status"><strong>Check passed; nothing was signed.</strong> {} will receive this. Changes against {}:<ul>"#,
            crate::verdicts::plural(data.routers, "router", "routers"),
            live.map_or("the routers' local files".to_string(), |v| format!(
                "version {}",
                v.version
            ))
        );
        for c in changes {
            let _ = write!(b, "<li class=\"mono\">{}</li>", esc(c));
        }
        b.push_str("</ul></div>");
    }
    let live_text = live.map_or_else(
        || display_text(&Policy::default()),
        |v| v.text.clone().unwrap_or_else(|| display_text(&v.policy)),
    );
    let text = view.text.unwrap_or(&live_text);
    if staff.level >= Level::Admin {
        let _ = write!(
            b,
            r#"<form method="post" action="/noc/policy">{}<label for="policy">Policy (TOML, the agent's schema; the version is assigned when signing)</label><textarea id="policy" name="policy" rows="18" spellcheck="false">{}</textarea><label for="note">Change note (required to publish; kept with the version and in the audit log)</label><input id="note" name="note" maxlength="{NOTE_MAX}" value="{}"><p><button type="submit" name="action" value="check">Check (signs nothing)</button> <button class="btn" type="submit" name="action" value="publish">Sign and publish to {}</button></p>{}</form>"#,
            csrf_field(caller),
            esc(text),
            esc(view.note),
            crate::verdicts::plural(data.routers, "router", "routers"),
            super::rollout::start_fields()
        );
    } else {
        let _ = write!(
            b,
            r#"<p class="muted">Only admins change policy. The live text:</p><pre class="mono">{}</pre>"#,
            esc(text)
        );
    }
    b.push_str(&super::rollout::embedded(caller, staff, &data.rollouts));
    rollout_table(&mut b, &data.rollout, data.latest);
    b.push_str("<h2>History</h2>");
    if data.versions.is_empty() {
        b.push_str(r#"<p class="muted">Nothing published yet.</p>"#);
    } else {
        b.push_str(r#"<table id="history"><caption>Published fleet versions, newest first</caption><thead><tr><th scope="col">Version</th><th scope="col">Published</th><th scope="col">By</th><th scope="col">Note</th><th scope="col"></th></tr></thead><tbody>"#);
        for (i, v) in data.versions.iter().enumerate() {
            let action = if i == 0 {
                r#"<span class="badge ok">live</span>"#.to_string()
            } else if staff.level >= Level::Admin {
                format!(
                    r#"<form method="post" action="/noc/policy/rollback/{}">{}<button type="submit">Roll back to this</button></form>"#,
                    v.version,
                    csrf_field(caller)
                )
            } else {
                String::new()
            };
            let _ = write!(
                b,
                r#"<tr data-version="{}"><td>v{}</td><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>"#,
                v.version,
                v.version,
                esc(&html::time(v.created_ms)),
                esc(v.actor.as_deref().unwrap_or("—")),
                esc(v.note.as_deref().unwrap_or("")),
            );
        }
        b.push_str("</tbody></table>");
    }
    b
}

/// How many routers behind or refusing the rollout view lists; the fleet list, filtered by
/// policy version, has the rest. Keeps the page small at any fleet size.
const LAGGING_SHOWN: usize = 50;

/// The rollout of the fleet policy: how many routers run each version (each a link to the
/// fleet list filtered by it), then the routers behind or refusing, at most
/// [`LAGGING_SHOWN`] of them with their refusals.
fn rollout_table(b: &mut String, rollout: &[RolloutRow], latest: Option<u64>) {
    let is_current = |r: &RolloutRow| latest.is_some() && r.fleet_policy_version == latest;
    let applied = rollout.iter().filter(|r| is_current(r)).count();
    let _ = write!(
        b,
        "<h2>Rollout</h2><p>{} of {} run the latest version{}.</p>",
        applied,
        crate::verdicts::plural(rollout.len() as u64, "router", "routers"),
        latest.map(|v| format!(" (v{v})")).unwrap_or_default()
    );
    let mut by_version: BTreeMap<Option<u64>, usize> = BTreeMap::new();
    for r in rollout {
        *by_version.entry(r.fleet_policy_version).or_default() += 1;
    }
    let mut t = Table::plain(
        "rollout-versions",
        "Routers by the fleet policy they run",
        &["Fleet policy", "Routers"],
    );
    for (v, n) in by_version.iter().rev() {
        let (name, link) = match v {
            Some(v) => (
                format!("v{v}"),
                format!(r#"<a href="/noc?policy={v}#cpes">{n}</a>"#),
            ),
            None => ("none applied yet".to_string(), n.to_string()),
        };
        let badge = if v.is_some() && *v == latest {
            r#" <span class="badge ok">current</span>"#
        } else {
            ""
        };
        t.row("", &[("", format!("{}{badge}", esc(&name))), ("", link)]);
    }
    b.push_str(&t.finish());
    let lagging: Vec<&RolloutRow> = rollout
        .iter()
        .filter(|r| !is_current(r) || !r.refusals.is_empty())
        .collect();
    if lagging.is_empty() {
        return;
    }
    let mut t = Table::plain(
        "rollout-lagging",
        "Routers behind the latest version or refusing a policy",
        &[
            "CPE",
            "Status",
            "Applied fleet policy",
            "Override",
            "Refused",
        ],
    );
    for r in lagging.iter().take(LAGGING_SHOWN) {
        let refused: Vec<String> = r
            .refusals
            .iter()
            .take(3)
            .map(|(scope, v, reason)| format!("{scope} v{v}: {reason}"))
            .collect();
        let state = if is_current(r) {
            r#"<span class="badge ok">current</span>"#
        } else if latest.is_some() {
            r#"<span class="badge warn-soft">behind</span>"#
        } else {
            ""
        };
        t.row(
            "",
            &[
                ("", html::cpe_link(&r.cpe_id)),
                ("", esc(r.status.as_deref().unwrap_or("never seen"))),
                (
                    "",
                    format!(
                        "{} {state}",
                        r.fleet_policy_version
                            .map(|v| format!("v{v}"))
                            .unwrap_or("—".into())
                    ),
                ),
                (
                    "",
                    r.cpe_policy_version
                        .map(|v| format!("v{v}"))
                        .unwrap_or("—".into()),
                ),
                ("", esc(&refused.join("; "))),
            ],
        );
    }
    b.push_str(&t.finish());
    if lagging.len() > LAGGING_SHOWN {
        let _ = write!(
            b,
            r#"<p class="muted">And {} more: see the <a href="/noc?sort=policy&amp;dir=asc#cpes">fleet list sorted by policy</a>.</p>"#,
            lagging.len() - LAGGING_SHOWN
        );
    }
}

/// After-redirect flash values.
#[derive(Debug, Default, Deserialize)]
pub struct Flash {
    #[serde(default)]
    saved: Option<u64>,
}

/// `GET /noc/policy`: the live version, the editor (admins), the rollout and the history.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(flash): Query<Flash>,
) -> Response {
    let (staff, caller) = match auth::staff(&state, &headers, Level::Viewer).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let data = match load(&state).await {
        Ok(d) => d,
        Err(e) => return e.page(),
    };
    let view = View {
        saved: flash.saved,
        ..View::default()
    };
    noc_page(
        "Policy",
        "policy",
        &caller,
        &body(&caller, &staff, &data, &view),
    )
}

/// The editor form.
#[derive(Debug, Deserialize)]
pub struct EditForm {
    csrf: String,
    policy: String,
    #[serde(default)]
    note: String,
    /// `check` or `publish` (the default).
    #[serde(default)]
    action: Option<String>,
}

/// `POST /noc/policy`: checks, or checks, signs and publishes. A refused policy is shown
/// again in the editor with the reason, and nothing is signed.
pub async fn save(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<EditForm>,
) -> Response {
    let (staff, caller) = match auth::staff_form(&state, &headers, Level::Admin, &form.csrf).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let data = match load(&state).await {
        Ok(d) => d,
        Err(e) => return e.page(),
    };
    let publish = form.action.as_deref() != Some("check");
    let note = form.note.trim();
    let answer = |status: StatusCode, error: Option<String>, checked: Option<Vec<String>>| {
        let view = View {
            text: Some(&form.policy),
            note: &form.note,
            error,
            checked,
            saved: None,
        };
        (
            status,
            noc_page(
                "Policy",
                "policy",
                &caller,
                &body(&caller, &staff, &data, &view),
            ),
        )
            .into_response()
    };
    let before = data
        .versions
        .first()
        .map_or_else(Policy::default, |v| v.policy.clone());
    let policy = match toml::from_str::<Policy>(&form.policy) {
        Ok(p) => p,
        Err(e) => {
            let why = e.to_string();
            if publish {
                state
                    .audit(
                        &staff.name,
                        "policy_publish",
                        "fleet".into(),
                        "refused",
                        why.clone(),
                    )
                    .await;
            }
            return answer(
                StatusCode::BAD_REQUEST,
                Some(format!("Not published: {why}")),
                None,
            );
        }
    };
    if let Err(why) = check(&state, &policy) {
        if publish {
            let diff = audit::policy_diff(&content(&before), &content(&policy));
            state
                .audit(
                    &staff.name,
                    "policy_publish",
                    "fleet".into(),
                    "refused",
                    format!("{why}; {diff}"),
                )
                .await;
        }
        return answer(
            StatusCode::BAD_REQUEST,
            Some(format!("Not published: {why}")),
            None,
        );
    }
    let changes = audit::policy_changes(&content(&before), &content(&policy));
    if changes.is_empty() && !data.versions.is_empty() {
        return answer(
            StatusCode::BAD_REQUEST,
            Some("Not published: nothing changed from the live version.".into()),
            None,
        );
    }
    if !publish {
        return answer(StatusCode::OK, None, Some(changes));
    }
    if note.is_empty() || note.chars().count() > NOTE_MAX {
        return answer(
            StatusCode::BAD_REQUEST,
            Some(format!(
                "Not published: a change note of 1 to {NOTE_MAX} characters is required."
            )),
            None,
        );
    }
    match publish_checked(
        &state,
        &staff.name,
        "policy_publish",
        "fleet",
        &before,
        policy,
    )
    .await
    {
        Ok(v) => {
            remember(
                &state,
                v,
                Some(form.policy.clone()),
                note.to_string(),
                staff.name.clone(),
            )
            .await;
            Redirect::to(&format!("/noc/policy?saved={v}")).into_response()
        }
        Err(e) => answer(
            StatusCode::BAD_REQUEST,
            Some(format!("Not published: {e}")),
            None,
        ),
    }
}

/// The rollback form.
#[derive(Debug, Deserialize)]
pub struct RollbackForm {
    csrf: String,
}

/// `POST /noc/policy/rollback/{version}`: publishes an earlier version's content as a new
/// version.
pub async fn rollback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(version): Path<u64>,
    Form(form): Form<RollbackForm>,
) -> Response {
    let (staff, caller) = match auth::staff_form(&state, &headers, Level::Admin, &form.csrf).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let data = match load(&state).await {
        Ok(d) => d,
        Err(e) => return e.page(),
    };
    let Version { policy, text, .. } =
        match state.sql(move |db| Ok(drafts::version(db, version)?)).await {
            Ok(Some(v)) => v,
            Ok(None) => return WebError::NotFound.page(),
            Err(e) => return e.page(),
        };
    let before = data
        .versions
        .first()
        .map_or_else(Policy::default, |v| v.policy.clone());
    let view_error = |e: String| {
        let view = View {
            error: Some(e),
            ..View::default()
        };
        (
            StatusCode::BAD_REQUEST,
            noc_page(
                "Policy",
                "policy",
                &caller,
                &body(&caller, &staff, &data, &view),
            ),
        )
            .into_response()
    };
    if audit::policy_changes(&content(&before), &content(&policy)).is_empty() {
        return view_error(format!("Not published: version {version} is what is live."));
    }
    let target = format!("fleet (back to v{version})");
    match publish_checked(
        &state,
        &staff.name,
        "policy_rollback",
        &target,
        &before,
        policy,
    )
    .await
    {
        Ok(v) => {
            remember(
                &state,
                v,
                text,
                format!("rollback to version {version}"),
                staff.name.clone(),
            )
            .await;
            Redirect::to(&format!("/noc/policy?saved={v}")).into_response()
        }
        Err(e) => view_error(format!("Not published: {e}")),
    }
}
