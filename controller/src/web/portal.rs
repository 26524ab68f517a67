//! The subscriber portal: "Your devices", in plain language, for one household only.
//!
//! Every query is scoped by the household id of the session; a CPE or device of another
//! household is answered exactly like one that does not exist (404).

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use smtpguard_protocol::{Action, MacAddr, Verdict};

use super::auth::{self, csrf_field, Caller};
use super::html::{self, esc, page, path_seg, Nav};
use super::{html_response, AppState, WebError};
use crate::households::{self, Household, ReleaseProgress, ReleaseRequest};
use crate::verdicts::{self, DeviceView};

/// The household's devices and release requests.
pub(crate) fn household_devices(
    conn: &rusqlite::Connection,
    household_id: i64,
    now_ms: u64,
) -> Result<(Household, Vec<DeviceView>, Vec<ReleaseRequest>), WebError> {
    let hh = households::household(conn, household_id)?;
    let mut devices = Vec::new();
    for cpe in &hh.cpes {
        devices.extend(verdicts::load_devices(conn, Some(cpe), now_ms)?);
    }
    devices.sort_by(|a, b| {
        verdicts::severity(b.verdict)
            .cmp(&verdicts::severity(a.verdict))
            .then_with(|| a.display_name().cmp(&b.display_name()))
    });
    let releases = households::release_requests(conn, Some(household_id))?;
    Ok((hh, devices, releases))
}

fn uses_mail_account(d: &DeviceView) -> bool {
    d.counters
        .as_ref()
        .is_some_and(|(c, _)| c.submission_connections >= 10)
        || d.evidence.iter().any(|e| {
            let e = e.to_ascii_lowercase();
            e.contains("submission") || e.contains("587") || e.contains("credential")
        })
}

fn cleanup_steps(d: &DeviceView) -> String {
    let mut s = String::from(r#"<ol class="steps">"#);
    if uses_mail_account(d) {
        s.push_str("<li><b>Change the password of your e-mail account now</b>, from another device (a phone or a different computer). The program on this device knows your current password and is sending mail in your name.</li>");
    }
    s.push_str("<li>Run a full virus scan with up-to-date protection. On Windows: <i>Windows Security → Virus &amp; threat protection → Scan options → Microsoft Defender Offline scan</i>.</li>");
    s.push_str("<li>Install all pending system and app updates, then restart the device.</li>");
    s.push_str("<li>Remove programs and browser extensions you do not recognise or did not install yourself.</li>");
    if !uses_mail_account(d) {
        s.push_str("<li>Change the passwords of your e-mail accounts, from another device.</li>");
    }
    s.push_str("<li>Smart TV, camera or other gadget? Reset it to factory settings, update its firmware and change its default password.</li>");
    s.push_str("</ol>");
    s
}

fn release_block(d: &DeviceView, releases: &[ReleaseRequest], caller: &Caller) -> String {
    let mac = d.mac.to_string();
    if let Some(r) = releases
        .iter()
        .find(|r| r.cpe_id == d.cpe_id && r.mac == mac)
    {
        let progress = households::release_progress(r, d.action, d.action_until_ms, r.command);
        if progress != ReleaseProgress::Denied {
            return format!(
                r#"<div class="flash release-status" data-status="{}" data-progress="{}">Release requested on {}. {}</div>"#,
                esc(&r.status),
                progress.as_str(),
                esc(&html::time(r.requested_ms)),
                esc(&progress.subscriber_text(html::time))
            );
        }
    }
    format!(
        r#"<form method="post" action="/my/release" class="release">{}<input type="hidden" name="cpe_id" value="{}"><input type="hidden" name="mac" value="{}">
<label for="note-{m}">Done cleaning? Tell us what you did (optional)</label><textarea id="note-{m}" name="note" rows="2" maxlength="500" placeholder="e.g. ran a full virus scan and removed an unknown program"></textarea>
<p><button class="btn" type="submit" name="request_release">I cleaned this device — request release</button></p></form>"#,
        csrf_field(caller),
        esc(&d.cpe_id),
        esc(&mac),
        m = esc(&mac.replace(':', "")),
    )
}

fn device_card(d: &DeviceView, releases: &[ReleaseRequest], caller: &Caller) -> String {
    let class = d.verdict.as_str();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<section class="card {class}" data-mac="{}"><div class="row"><h3>{}</h3>{}</div><div class="muted">{}{} · <span class="mono">{}</span></div>"#,
        esc(&d.mac.to_string()),
        esc(&d.display_name()),
        html::verdict_badge(d.verdict),
        d.vendor
            .as_deref()
            .map(|v| format!("{} · ", esc(v)))
            .unwrap_or_default(),
        esc(&d
            .ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")),
        esc(&d.mac.to_string()),
    );
    let what = verdicts::device_summary(d)
        .or_else(|| d.evidence.first().map(|e| format!("This device: {e}.")));
    let heading = if d.verdict == Verdict::Infected {
        "This device appears to be infected with a program that sends spam"
    } else {
        "This device behaves unusually when sending mail"
    };
    let _ = write!(
        s,
        r#"<p class="what"><b>{heading}</b> (since {}).</p>"#,
        esc(&html::time(d.since_ms))
    );
    if let Some(w) = what {
        let _ = write!(s, r#"<p class="what summary">{}</p>"#, esc(&w));
    }
    let until = d.action_until_ms.map(html::time);
    let doing_class = if d.action == Action::RateLimit {
        "doing rl"
    } else {
        "doing"
    };
    let _ = write!(
        s,
        r#"<div class="{doing_class}"><b>What your router is doing:</b> <span class="action-text">{}</span></div>"#,
        esc(&verdicts::plain_action(d.action, until.as_deref()))
    );
    if !d.evidence.is_empty() {
        s.push_str(r#"<details open><summary>How we know</summary><ul class="ev">"#);
        for e in &d.evidence {
            let _ = write!(s, "<li>{}</li>", esc(e));
        }
        s.push_str("</ul></details>");
    }
    s.push_str("<h3 style=\"margin-top:14px\">How to clean it up</h3>");
    s.push_str(&cleanup_steps(d));
    s.push_str(&release_block(d, releases, caller));
    let _ = write!(
        s,
        r#"<p><a href="/my/devices/{}/{}">Details and history</a></p></section>"#,
        path_seg(&d.cpe_id),
        path_seg(&d.mac.to_string())
    );
    s
}

/// Flash messages after a redirect.
#[derive(Debug, Deserialize)]
pub struct Flash {
    #[serde(default)]
    requested: Option<String>,
    #[serde(default)]
    contact: Option<String>,
}

fn contact_form(c: &households::Contact, caller: &auth::Caller) -> String {
    format!(
        r#"<h2>E-mail about your devices</h2><form method="post" action="/my/contact" id="contact">{}<label for="email">Your e-mail address (we write when a device needs attention, and when a restriction is lifted)</label><input id="email" name="email" type="email" autocomplete="email" value="{}"><label><input type="checkbox" name="notify" value="on"{}> Send me these e-mails</label><p><button class="btn" type="submit">Save</button></p></form>"#,
        auth::csrf_field(caller),
        esc(c.email.as_deref().unwrap_or("")),
        if c.notify_email { " checked" } else { "" }
    )
}

/// The contact form.
#[derive(Debug, Deserialize)]
pub struct ContactForm {
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    notify: Option<String>,
}

/// `POST /my/contact`: the household's e-mail address and whether it wants e-mail.
pub async fn contact(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<ContactForm>,
) -> Response {
    let (hh_id, _) = match auth::subscriber_form(&state, &headers, &form.csrf).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let notify = form.notify.is_some();
    let result = state
        .db(move |conn| {
            Ok(households::set_contact(
                conn,
                hh_id,
                Some(form.email.as_str()),
                notify,
            )?)
        })
        .await;
    match result {
        Ok(()) => Redirect::to("/my?contact=1").into_response(),
        Err(e) => e.page(),
    }
}

/// `GET /my`.
pub async fn devices(
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
        .db(move |conn| {
            let d = household_devices(conn, hh_id, now)?;
            Ok((d, households::contact(conn, hh_id)?))
        })
        .await;
    let ((hh, devs, releases), contact) = match data {
        Ok(d) => d,
        Err(e) => return e.page(),
    };
    let bad: Vec<&DeviceView> = devs
        .iter()
        .filter(|d| d.verdict != Verdict::Clean)
        .collect();
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<h1>Your devices</h1><p class="sub">{} · checked {}</p>"#,
        esc(&hh.name),
        esc(&html::time(now))
    );
    if flash.contact.is_some() {
        body.push_str(
            r#"<div class="flash" role="status">Saved: how we tell you about your devices.</div>"#,
        );
    }
    if flash.requested.is_some() {
        body.push_str(r#"<div class="flash" role="status">Thank you — your release request was recorded. We will check the device's traffic; this page shows when the restriction is lifted.</div>"#);
    }
    if bad.is_empty() {
        body.push_str(r#"<div class="card clean"><h3>All good</h3><p>None of your devices is sending spam. Your router keeps watching and will tell you here if that changes.</p></div>"#);
    } else {
        let _ = write!(
            body,
            r#"<div class="flash err" role="alert"><b>{} of your devices {} attention.</b> Only its e-mail sending is restricted; everything else keeps working.</div>"#,
            bad.len(),
            if bad.len() == 1 { "needs" } else { "need" }
        );
        for d in &bad {
            body.push_str(&device_card(d, &releases, &caller));
        }
    }
    let clean: Vec<&DeviceView> = devs
        .iter()
        .filter(|d| d.verdict == Verdict::Clean)
        .collect();
    if !clean.is_empty() {
        body.push_str(r#"<h2>Other devices</h2><table><tr><th>Device</th><th>Status</th><th class="hide-sm">Last seen</th></tr>"#);
        for d in clean {
            let _ = write!(
                body,
                r#"<tr data-mac="{}"><td><a href="/my/devices/{}/{}">{}</a><div class="muted mono">{}</div></td><td>{}</td><td class="hide-sm">{}</td></tr>"#,
                esc(&d.mac.to_string()),
                path_seg(&d.cpe_id),
                path_seg(&d.mac.to_string()),
                esc(&d.display_name()),
                esc(&d.mac.to_string()),
                html::verdict_badge(d.verdict),
                esc(&html::ago(d.last_seen_ms, now)),
            );
        }
        body.push_str("</table>");
    }
    body.push_str(&contact_form(&contact, &caller));
    body.push_str(r#"<p><a href="/my/senders" id="senders-link">Run your own mail server or mail program? Tell us here.</a></p>"#);
    body.push_str(r#"<p class="muted" style="margin-top:28px">Your router looks only at how devices send e-mail (how often, to how many servers), never at the content of your mail.</p>"#);
    html_response(page(
        "Your devices",
        Nav::Portal,
        caller.csrf.as_deref(),
        &body,
    ))
}

/// `GET /my/devices/{cpe_id}/{mac}`: one device's history.
pub async fn device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((cpe_id, mac)): Path<(String, String)>,
) -> Response {
    let (hh_id, caller) = match auth::subscriber(&state, &headers).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let Ok(mac) = mac.parse::<MacAddr>() else {
        return WebError::NotFound.page();
    };
    let now = state.now_ms();
    let data = state
        .db(move |conn| {
            let (_, devs, _) = household_devices(conn, hh_id, now)?;
            devs.into_iter()
                .find(|d| d.cpe_id == cpe_id && d.mac == mac)
                .ok_or(WebError::NotFound)
        })
        .await;
    let d = match data {
        Ok(d) => d,
        Err(e) => return e.page(),
    };
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<p><a href="/my">← Your devices</a></p><h1>{} {}</h1><p class="sub mono">{} · {}</p>"#,
        esc(&d.display_name()),
        html::verdict_badge(d.verdict),
        esc(&d.mac.to_string()),
        esc(&d
            .ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")),
    );
    body.push_str("<h2>History</h2>");
    if d.history.is_empty() {
        body.push_str(
            "<p class=\"muted\">No changes recorded: this device has always looked normal.</p>",
        );
    } else {
        body.push_str(r#"<div class="timeline">"#);
        for h in d.history.iter().rev() {
            let _ = write!(
                body,
                "<div class=\"change\" data-verdict=\"{}\"><b>{}</b> — {} → {} {}{}<ul class=\"ev\">",
                h.verdict.as_str(),
                esc(&html::time(h.at_ms)),
                esc(h.previous.as_str()),
                html::verdict_badge(h.verdict),
                html::action_badge(h.action, h.action_until_ms),
                html::change_source_note(h.source),
            );
            for e in &h.evidence {
                let _ = write!(body, "<li>{}</li>", esc(e));
            }
            body.push_str("</ul></div>");
        }
        body.push_str("</div>");
    }
    html_response(page("Device", Nav::Portal, caller.csrf.as_deref(), &body))
}

/// The release form.
#[derive(Debug, Deserialize)]
pub struct ReleaseForm {
    csrf: String,
    cpe_id: String,
    mac: String,
    #[serde(default)]
    note: String,
}

/// `POST /my/release`: records a release request for one of the household's devices.
pub async fn release(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<ReleaseForm>,
) -> Response {
    let (hh_id, _) = match auth::subscriber_form(&state, &headers, &form.csrf).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let Ok(mac) = form.mac.parse::<MacAddr>() else {
        return WebError::NotFound.page();
    };
    let now = state.now_ms();
    let result = state
        .db(move |conn| {
            Ok(households::request_release(
                conn,
                hh_id,
                &form.cpe_id,
                &mac,
                form.note.trim(),
                now,
            )?)
        })
        .await;
    match result {
        Ok(id) => {
            tracing::info!(household = hh_id, request = id, "release requested");
            Redirect::to("/my?requested=1").into_response()
        }
        Err(e) => e.page(),
    }
}
