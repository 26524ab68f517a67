//! Subscriber-declared senders: a subscriber says "this device is my own mail server / mail
//! program" with a reason (`GET|POST /my/senders`); the NOC (operator role or above)
//! approves or declines (`GET /noc/senders`, `POST /noc/senders/{id}`); an approval
//! allows the device on its router for good through [`crate::policy::allow_device`] (a
//! signed per-CPE policy whose allowlist holds it). `POST /noc/cpe/{id}/allow` (a MAC and
//! a note) is the same allowance for any NOC page to post to.
//!
//! A household declares only devices its own routers reported (the same list its portal
//! shows); anything else is answered 404, as if it did not exist. Every declaration,
//! decision and allowance is audited. The declarations and allowances are stored by
//! [`crate::store::senders`].

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use smtpguard_protocol::MacAddr;

use super::auth::{self, csrf_field};
use super::html::{self, esc, page, path_seg, Nav, Table};
use super::{html_response, AppState, WebError};
use crate::operators::Level;
use crate::store::senders::{self as store, Allowed, Decided};

/// Longest reason kept (characters).
pub const REASON_MAX: usize = 500;

/// Declarations a page lists.
const LISTED: u32 = 200;

fn kind_text(kind: &str) -> &'static str {
    if kind == "server" {
        "its own mail server"
    } else {
        "a mail program"
    }
}

fn status_badge(status: &str) -> &'static str {
    match status {
        "approved" => r#"<span class="badge ok">approved</span>"#,
        "declined" => r#"<span class="badge muted">declined</span>"#,
        _ => r#"<span class="badge warn-soft">waiting for the NOC</span>"#,
    }
}

/// After-redirect flash values.
#[derive(Debug, Default, Deserialize)]
pub struct Flash {
    #[serde(default)]
    declared: Option<i64>,
    #[serde(default)]
    decided: Option<i64>,
}

/// `GET /my/senders`: the household's devices to declare and its declarations.
pub async fn portal_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(flash): Query<Flash>,
) -> Response {
    let (hh_id, caller) = match auth::subscriber(&state, &headers).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let now = state.now_ms();
    let data = state
        .sql(move |conn| {
            let (_, devices, _) = super::portal::household_devices(conn, hh_id, now)?;
            Ok((devices, store::declarations(conn, Some(hh_id), LISTED)?))
        })
        .await;
    let (devices, declared) = match data {
        Ok(d) => d,
        Err(e) => return e.page(),
    };
    let mut b = String::from(
        r#"<h1>Your own mail senders</h1><p class="sub">Run your own mail server, or a program that sends mail directly? Tell us which device, and after a check by our network team your router will never slow down or block its mail.</p>"#,
    );
    if flash.declared.is_some() {
        b.push_str(r#"<div class="flash" role="status">Thank you — we will look at it and this page shows our answer.</div>"#);
    }
    if devices.is_empty() {
        b.push_str(r#"<p class="muted">Your router has not reported any device yet.</p>"#);
    } else {
        let _ = write!(
            b,
            r#"<form method="post" action="/my/senders" class="card">{}<label for="device">Device</label><select id="device" name="device">"#,
            csrf_field(&caller)
        );
        for d in &devices {
            let _ = write!(
                b,
                r#"<option value="{} {}">{} ({})</option>"#,
                esc(&d.cpe_id),
                esc(&d.mac.to_string()),
                esc(&d.display_name()),
                esc(&d.mac.to_string())
            );
        }
        b.push_str(r#"</select><label for="kind">It is</label><select id="kind" name="kind"><option value="server">my own mail server</option><option value="program">a mail program that sends directly</option></select>"#);
        let _ = write!(
            b,
            r#"<label for="reason">Why (for example: "Raspberry Pi running Postfix for my family's mail")</label><input type="text" id="reason" name="reason" maxlength="{REASON_MAX}" required><p><button class="btn" type="submit" id="declare">Send to the network team</button></p></form>"#
        );
    }
    if !declared.is_empty() {
        b.push_str("<h2>What you told us</h2>");
        let mut t = Table::plain(
            "declarations",
            "Devices you told us send mail",
            &["Device", "Reason", "Status"],
        );
        for d in &declared {
            t.row(
                &format!(r#" data-id="{}""#, d.id),
                &[
                    ("mono", esc(&d.mac)),
                    ("", format!("{}: {}", kind_text(&d.kind), esc(&d.reason))),
                    ("", status_badge(&d.status).to_string()),
                ],
            );
        }
        b.push_str(&t.finish());
    }
    b.push_str(r#"<p><a href="/my">Back to your devices</a></p>"#);
    html_response(page(
        "Your mail senders",
        Nav::Portal,
        caller.csrf.as_deref(),
        &b,
    ))
}

/// The declaration form.
#[derive(Debug, Deserialize)]
pub struct DeclareForm {
    #[serde(default)]
    csrf: String,
    /// `CPE MAC`, as the page's select offers it.
    device: String,
    kind: String,
    #[serde(default)]
    reason: String,
}

/// `POST /my/senders`: records a declaration for one of the household's own devices.
pub async fn declare(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<DeclareForm>,
) -> Response {
    let (hh_id, _caller) = match auth::subscriber_form(&state, &headers, &form.csrf).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let actor = format!("household {hh_id}");
    let reason = form.reason.trim().to_string();
    let parsed = form
        .device
        .split_once(' ')
        .and_then(|(cpe, mac)| Some((cpe.to_string(), mac.trim().parse::<MacAddr>().ok()?)));
    let checked = match (parsed, form.kind.as_str()) {
        (None, _) => Err(WebError::BadRequest("choose a device from the list".into())),
        (_, k) if k != "server" && k != "program" => {
            Err(WebError::BadRequest("choose what the device is".into()))
        }
        _ if reason.is_empty() || reason.chars().count() > REASON_MAX => Err(WebError::BadRequest(
            format!("a reason of 1 to {REASON_MAX} characters is required"),
        )),
        (Some(d), _) => Ok(d),
    };
    let (cpe, mac) = match checked {
        Ok(d) => d,
        Err(e) => return e.page(),
    };
    let now = state.now_ms();
    let (kind, why) = (form.kind.clone(), reason.clone());
    let (c, m) = (cpe.clone(), mac);
    let result = state
        .sql(move |conn| {
            let (_, devices, _) = super::portal::household_devices(conn, hh_id, now)?;
            if !devices.iter().any(|d| d.cpe_id == c && d.mac == m) {
                // Not one of this household's devices: as if it did not exist.
                return Err(WebError::NotFound);
            }
            Ok(store::declare(conn, hh_id, &c, &m, &kind, &why, now)?)
        })
        .await;
    let target = format!("{cpe} {mac}");
    match result {
        Ok(id) => {
            state
                .audit(
                    &actor,
                    "sender_declare",
                    target,
                    "ok",
                    format!("declaration {id}: {}: {reason}", kind_text(&form.kind)),
                )
                .await;
            Redirect::to(&format!("/my/senders?declared={id}")).into_response()
        }
        Err(e) => {
            state
                .audit(&actor, "sender_declare", target, "refused", e.to_string())
                .await;
            e.page()
        }
    }
}

/// `GET /noc/senders`: declarations, waiting ones first, and the devices allowed so far
/// (every NOC role reads; operators and admins decide).
pub async fn noc_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(flash): Query<Flash>,
) -> Response {
    let (staff, caller) = match auth::staff(&state, &headers, Level::Viewer).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let data = state
        .sql(|db| {
            Ok((
                store::declarations(db, None, LISTED)?,
                store::allowed_devices(db)?,
            ))
        })
        .await;
    let (decl, allowed) = match data {
        Ok(d) => d,
        Err(e) => return e.page(),
    };
    let mut b = String::from(
        r#"<h1>Declared senders</h1><p class="sub">Subscribers' own mail servers and mail programs. Approving one allows the device on its router for good (a signed per-router policy).</p>"#,
    );
    if let Some(id) = flash.decided {
        let _ = write!(
            b,
            r#"<div class="flash" role="status">Declaration {id} decided.</div>"#
        );
    }
    if decl.is_empty() {
        b.push_str(r#"<p class="muted">No declarations yet.</p>"#);
    } else {
        let mut t = Table::plain(
            "declarations",
            "Devices households say are their own mail senders",
            &[
                "Household",
                "Router / device",
                "Says",
                "Asked",
                "Status",
                "Decision",
            ],
        );
        for d in &decl {
            let action = if d.status == "pending" && staff.level >= Level::Operator {
                format!(
                    r#"<form method="post" action="/noc/senders/{}">{}<button class="btn" type="submit" name="decision" value="approve">Approve</button> <button class="btn secondary" type="submit" name="decision" value="decline">Decline</button></form>"#,
                    d.id,
                    csrf_field(&caller)
                )
            } else {
                d.decided_by
                    .as_deref()
                    .map(|w| format!("by {}", esc(w)))
                    .unwrap_or_default()
            };
            t.row(
                &format!(r#" data-id="{}" data-status="{}""#, d.id, esc(&d.status)),
                &[
                    ("", esc(&d.household)),
                    (
                        "",
                        format!(
                            r#"{}<div class="mono">{}</div>"#,
                            html::cpe_link(&d.cpe_id),
                            esc(&d.mac)
                        ),
                    ),
                    ("", format!("{}: {}", kind_text(&d.kind), esc(&d.reason))),
                    ("t", esc(&html::time(d.requested_ms))),
                    ("", status_badge(&d.status).to_string()),
                    ("", action),
                ],
            );
        }
        b.push_str(&t.finish());
    }
    b.push_str(r#"<h2>Allowed devices</h2>"#);
    if allowed.is_empty() {
        b.push_str(r#"<p class="muted">None.</p>"#);
    } else {
        let mut t = Table::plain(
            "allowed",
            "Devices allowed on their router",
            &["Router", "Device", "Note", "By", "When"],
        );
        for Allowed {
            cpe_id: cpe,
            mac,
            note,
            actor,
            created_ms: at,
        } in &allowed
        {
            t.row(
                "",
                &[
                    ("", html::cpe_link(cpe)),
                    ("mono", esc(mac)),
                    ("", esc(note)),
                    ("", esc(actor)),
                    ("t", esc(&html::time(*at))),
                ],
            );
        }
        b.push_str(&t.finish());
    }
    super::noc::noc_page("Senders", "senders", &caller, &b)
}

/// The decision form.
#[derive(Debug, Deserialize)]
pub struct DecisionForm {
    #[serde(default)]
    csrf: String,
    decision: String,
}

/// `POST /noc/senders/{id}`: approve (allow the device on its router) or decline
/// (operators and admins).
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
    let status = match form.decision.as_str() {
        "approve" => "approved",
        "decline" => "declined",
        _ => return WebError::BadRequest("decision must be approve or decline".into()).page(),
    };
    let now = state.now_ms();
    let who = staff.name.clone();
    let decided = state
        .sql(move |db| store::decide(db, id, status, &who, now)?.ok_or(WebError::NotFound))
        .await;
    let Decided {
        cpe_id: cpe,
        mac,
        kind,
        reason,
    } = match decided {
        Ok(r) => r,
        Err(e) => {
            state
                .audit(
                    &staff.name,
                    "sender_decision",
                    format!("declaration {id}"),
                    "refused",
                    e.to_string(),
                )
                .await;
            return e.page();
        }
    };
    state
        .audit(
            &staff.name,
            "sender_decision",
            format!("{cpe} {mac}"),
            status,
            format!("declaration {id}"),
        )
        .await;
    if status == "approved" {
        let Ok(mac) = mac.parse::<MacAddr>() else {
            return WebError::Internal(format!("declaration {id}: stored MAC {mac:?}")).page();
        };
        let note = format!("declaration {id}: {}: {reason}", kind_text(&kind));
        if let Err(e) = crate::policy::allow_device(&state, &staff.name, &cpe, mac, &note).await {
            return WebError::BadRequest(format!(
                "Approved, but the router's policy was not published: {e}"
            ))
            .page();
        }
    }
    Redirect::to(&format!("/noc/senders?decided={id}")).into_response()
}

/// The allow form.
#[derive(Debug, Deserialize)]
pub struct AllowForm {
    #[serde(default)]
    csrf: String,
    mac: String,
    #[serde(default)]
    note: String,
}

/// `POST /noc/cpe/{cpe_id}/allow`: allows a device on a router for good (operators and
/// admins); back to the router's page.
pub async fn allow(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(cpe_id): Path<String>,
    Form(form): Form<AllowForm>,
) -> Response {
    let (staff, _) = match auth::staff_form(&state, &headers, Level::Operator, &form.csrf).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let Ok(mac) = form.mac.trim().parse::<MacAddr>() else {
        return WebError::BadRequest(format!("{:?} is not a MAC address", form.mac)).page();
    };
    match crate::policy::allow_device(&state, &staff.name, &cpe_id, mac, &form.note).await {
        Ok(v) => {
            Redirect::to(&format!("/noc/cpe/{}?allowed={v}", path_seg(&cpe_id))).into_response()
        }
        Err(e) => WebError::BadRequest(format!("Not allowed: {e}")).page(),
    }
}
