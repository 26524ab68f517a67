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
use super::fleet::cpe_row;
use super::html::{self, esc, page, path_seg, Nav, Table};
use super::{html_response, AppState, WebError};
use crate::households::{self, Household, ReleaseProgress, ReleaseRequest};
use crate::store::fleet::CpeRow;
use crate::verdicts::{self, plural, DeviceView};

/// What the portal shows a household: its routers, devices, release requests and the zone
/// its times are written in.
pub(crate) struct HouseholdView {
    routers: Vec<CpeRow>,
    zone: html::Zone,
}

fn household_view(
    conn: &impl crate::store::db::Sql,
    hh: &Household,
    fallback_zone: &str,
) -> Result<HouseholdView, WebError> {
    let mut routers = Vec::new();
    for cpe in &hh.cpes {
        routers.push(cpe_row(conn, cpe)?);
    }
    let zone = html::Zone::pick(
        households::time_zone(conn, hh.id)?.as_deref(),
        fallback_zone,
    );
    Ok(HouseholdView { routers, zone })
}

/// The household's devices and release requests.
pub(crate) fn household_devices(
    conn: &impl crate::store::db::Sql,
    household_id: i64,
    now_ms: u64,
) -> Result<(Household, Vec<DeviceView>, Vec<ReleaseRequest>), WebError> {
    let hh = households::household(conn, household_id)?;
    let mut devices = Vec::new();
    for cpe in &hh.cpes {
        devices.extend(verdicts::load_devices(conn, cpe, now_ms)?);
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

fn release_block(
    d: &DeviceView,
    releases: &[ReleaseRequest],
    caller: &Caller,
    zone: &html::Zone,
) -> String {
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
                esc(&zone.time(r.requested_ms)),
                esc(&progress.subscriber_text(|ms| zone.time(ms)))
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

/// What happens next to a device's restriction, and what still works, in plain words.
fn next_steps(d: &DeviceView, zone: &html::Zone) -> String {
    let until = d.action_until_ms.map(|ms| zone.time(ms));
    match (d.action, until) {
        (Action::Block, Some(until)) => format!(
            "The restriction ends by itself on {until}, or sooner once you have cleaned the device and asked us to lift it. If the device is still sending spam by then, your router restricts it again. Meanwhile this device cannot send e-mail with a mail program (Outlook, Thunderbird, the phone's mail app); web mail in the browser, and everything else on this device and your other devices, keeps working."
        ),
        (Action::Block, None) => "The restriction stays until you have cleaned the device and asked us to lift it. Web mail in the browser, and everything else, keeps working.".to_string(),
        (Action::RateLimit, Some(until)) => format!(
            "Until {until} this device can send only a few e-mails at a time; your mail program still works, just slowly. The limit ends by itself, or sooner once you have cleaned the device and asked us to lift it."
        ),
        (Action::RateLimit, None) => "This device can send only a few e-mails at a time until you have cleaned it and asked us to lift the limit.".to_string(),
        (Action::Monitor, _) => "No restriction is in force on this device any more: it can send e-mail normally. Please still clean it up, or your router will restrict it again when it sends spam.".to_string(),
    }
}

fn device_card(
    d: &DeviceView,
    releases: &[ReleaseRequest],
    caller: &Caller,
    zone: &html::Zone,
) -> String {
    let class = d.verdict.as_str();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<section class="card {class}" data-mac="{}"><div class="row"><h3 class="wrap">{}</h3>{}</div><div class="muted">{}{}</div>"#,
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
    );
    let what = verdicts::device_summary(d);
    let heading = if d.verdict == Verdict::Infected {
        "This device appears to be infected with a program that sends spam"
    } else {
        "This device behaves unusually when sending e-mail"
    };
    let _ = write!(
        s,
        r#"<p class="what"><b>{heading}</b> (since {}).</p>"#,
        esc(&zone.time(d.since_ms))
    );
    if let Some(w) = what {
        let _ = write!(s, r#"<p class="what summary">{}</p>"#, esc(&w));
    }
    let until = d.action_until_ms.map(|ms| zone.time(ms));
    let doing_class = match d.action {
        Action::RateLimit => "doing rl",
        Action::Monitor => "doing done",
        Action::Block => "doing",
    };
    let _ = write!(
        s,
        r#"<div class="{doing_class}"><b>What your router is doing:</b> <span class="action-text">{}</span></div><p class="next"><b>What happens next:</b> {}</p>"#,
        esc(&verdicts::plain_action(d.action, until.as_deref())),
        esc(&next_steps(d, zone)),
    );
    s.push_str("<h3 style=\"margin-top:14px\">How to clean it up</h3>");
    s.push_str(&cleanup_steps(d));
    s.push_str(&release_block(d, releases, caller, zone));
    if !d.evidence.is_empty() {
        s.push_str(r#"<details class="evidence"><summary>Technical details (for experts)</summary><ul class="ev">"#);
        for e in &d.evidence {
            let _ = write!(s, "<li>{}</li>", esc(e));
        }
        let _ = write!(
            s,
            r#"</ul><p class="muted mono">{}</p></details>"#,
            esc(&d.mac.to_string())
        );
    }
    let _ = write!(
        s,
        r#"<p><a href="/my/devices/{}/{}">Details and history</a></p></section>"#,
        path_seg(&d.cpe_id),
        path_seg(&d.mac.to_string())
    );
    s
}

/// An honest word about each router that is not reporting: the page cannot show what it
/// does not know.
fn router_state(view: &HouseholdView, now: u64, support: Option<&str>) -> String {
    let mut s = String::new();
    for r in &view.routers {
        if r.status_word() == "online" {
            continue;
        }
        let seen = r
            .updated_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| format!("{} ({})", view.zone.time(ms), html::ago(ms, now)));
        let _ = write!(
            s,
            r#"<div class="card offline" id="router-offline" role="status"><h3>Your router is not reporting</h3><p>{}</p><p>While it is offline we cannot see your devices, so what this page shows may be out of date. Restrictions already in force keep running on the router until they end.</p><p>If your internet works, restart the router (unplug it for ten seconds). If this message stays, please tell us. {}</p></div>"#,
            esc(&match seen {
                Some(seen) => format!("We last heard from it on {seen}."),
                None => "We have never heard from it: it may not be set up yet.".into(),
            }),
            esc(&auth::support_line(support)),
        );
    }
    s
}

/// Flash messages after a redirect.
#[derive(Debug, Deserialize)]
pub struct Flash {
    #[serde(default)]
    requested: Option<String>,
    #[serde(default)]
    contact: Option<String>,
    #[serde(default)]
    zone: Option<String>,
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
        .sql(move |db| {
            Ok(households::set_contact(
                db,
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

fn time_zone_form(zone: &html::Zone, caller: &Caller) -> String {
    format!(
        r#"<h2>Your time zone</h2><form method="post" action="/my/time-zone" id="tz-form">{}<label for="tz">Times on these pages are shown in</label><input id="tz" name="time_zone" type="text" value="{}" autocomplete="off" spellcheck="false" placeholder="Europe/Berlin"><p class="muted" hidden data-tz-hint="tz">Your browser says you are in <b></b>. <button class="btn secondary" type="button">Use it</button></p><p><button class="btn" type="submit">Save time zone</button></p></form>"#,
        csrf_field(caller),
        esc(zone.name()),
    )
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
    let fallback = state.settings.portal_time_zone.clone();
    let data = state
        .sql(move |conn| {
            let d = household_devices(conn, hh_id, now)?;
            let view = household_view(conn, &d.0, &fallback)?;
            Ok((d, view, households::contact(conn, hh_id)?))
        })
        .await;
    let ((hh, devs, releases), view, contact) = match data {
        Ok(d) => d,
        Err(e) => return e.page(),
    };
    let support = state.settings.support_contact.as_deref();
    let zone = &view.zone;
    let bad: Vec<&DeviceView> = devs
        .iter()
        .filter(|d| d.verdict != Verdict::Clean)
        .collect();
    let restricted = bad.iter().filter(|d| d.action != Action::Monitor).count();
    let offline = view.routers.iter().any(|r| r.status_word() != "online");
    // The newest word from the router: its state, or a device in its telemetry.
    let last_report = view
        .routers
        .iter()
        .filter_map(|r| r.updated_ms.and_then(|ms| u64::try_from(ms).ok()))
        .chain(devs.iter().map(|d| d.last_seen_ms))
        .max();
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<h1>Your devices</h1><p class="sub">{} · {}</p>"#,
        esc(&hh.name),
        esc(&match last_report {
            Some(ms) => format!("your router last reported {}", html::ago(ms, now)),
            None => "your router has not reported yet".into(),
        })
    );
    if flash.contact.is_some() {
        body.push_str(
            r#"<div class="flash" role="status">Saved: how we tell you about your devices.</div>"#,
        );
    }
    if flash.zone.is_some() {
        let _ = write!(
            body,
            r#"<div class="flash" role="status">Saved: times are now shown in {}.</div>"#,
            esc(zone.name())
        );
    }
    if flash.requested.is_some() {
        body.push_str(r#"<div class="flash" role="status">Thank you — your release request was recorded. We will check the device's traffic; this page shows when the restriction is lifted.</div>"#);
    }
    body.push_str(&router_state(&view, now, support));
    if bad.is_empty() {
        if offline {
            body.push_str(r#"<div class="card"><h3>No problem reported before your router went quiet</h3><p>When your router reports again, this page shows what it sees.</p></div>"#);
        } else {
            body.push_str(r#"<div class="card clean" id="all-good"><h3>All good</h3><p>None of your devices is sending spam. Your router keeps watching and will tell you here if that changes.</p></div>"#);
        }
    } else {
        let them = if bad.len() == 1 { "it" } else { "them" };
        let restriction = if restricted == 0 {
            format!("No restriction is in force any more, but please still clean {them} up.")
        } else if restricted == bad.len() {
            format!(
                "Only e-mail sending of {} is restricted; everything else keeps working.",
                if bad.len() == 1 {
                    "this device"
                } else {
                    "these devices"
                }
            )
        } else {
            format!(
                "E-mail sending of {} is restricted; everything else keeps working.",
                plural(restricted as u64, "device", "devices")
            )
        };
        let _ = write!(
            body,
            r#"<div class="flash err" role="alert" id="attention"><b>{} of your devices {} attention.</b> {}</div>"#,
            bad.len(),
            if bad.len() == 1 { "needs" } else { "need" },
            esc(&restriction)
        );
        for d in &bad {
            body.push_str(&device_card(d, &releases, &caller, zone));
        }
    }
    let clean: Vec<&DeviceView> = devs
        .iter()
        .filter(|d| d.verdict == Verdict::Clean)
        .collect();
    if !clean.is_empty() {
        let (heading, caption) = if bad.is_empty() {
            ("Devices on your network", "Devices your router sees")
        } else {
            (
                "Your other devices",
                "Your other devices, which look normal",
            )
        };
        let _ = write!(body, "<h2>{heading}</h2>");
        let mut t = Table::plain("other-devices", caption, &["Device", "Status", "Last seen"]);
        for d in clean {
            t.row(
                &format!(r#" data-mac="{}""#, esc(&d.mac.to_string())),
                &[
                    (
                        "",
                        format!(
                            r#"<a class="wrap" href="/my/devices/{}/{}">{}</a>"#,
                            path_seg(&d.cpe_id),
                            path_seg(&d.mac.to_string()),
                            esc(&d.display_name()),
                        ),
                    ),
                    ("", html::verdict_badge(d.verdict)),
                    ("", esc(&html::ago(d.last_seen_ms, now))),
                ],
            );
        }
        body.push_str(&t.finish());
    }
    let _ = write!(
        body,
        r#"<h2>Need help?</h2><p id="support">{}</p>"#,
        esc(&auth::support_line(support))
    );
    body.push_str(&contact_form(&contact, &caller));
    body.push_str(r#"<p><a href="/my/senders" id="senders-link">Run your own mail server or mail program? Tell us here.</a></p>"#);
    body.push_str(&time_zone_form(zone, &caller));
    body.push_str(r#"<p class="muted" style="margin-top:28px">Your router looks only at how devices send e-mail (how often, to how many servers), never at the content of your mail.</p>"#);
    html_response(page(
        "Your devices",
        Nav::Portal,
        caller.csrf.as_deref(),
        &body,
    ))
}

/// The time zone form.
#[derive(Debug, Deserialize)]
pub struct TimeZoneForm {
    csrf: String,
    #[serde(default)]
    time_zone: String,
}

/// `POST /my/time-zone`: the zone the household's times are shown in.
pub async fn time_zone(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<TimeZoneForm>,
) -> Response {
    let (hh_id, _) = match auth::subscriber_form(&state, &headers, &form.csrf).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let result = state
        .sql(move |db| {
            Ok(households::set_time_zone(
                db,
                hh_id,
                Some(form.time_zone.as_str()),
            )?)
        })
        .await;
    match result {
        Ok(()) => Redirect::to("/my?zone=1").into_response(),
        Err(e) => e.page(),
    }
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
    let fallback = state.settings.portal_time_zone.clone();
    let data = state
        .sql(move |conn| {
            let (hh, devs, _) = household_devices(conn, hh_id, now)?;
            let zone = household_view(conn, &hh, &fallback)?.zone;
            devs.into_iter()
                .find(|d| d.cpe_id == cpe_id && d.mac == mac)
                .map(|d| (d, zone))
                .ok_or(WebError::NotFound)
        })
        .await;
    let (d, zone) = match data {
        Ok(d) => d,
        Err(e) => return e.page(),
    };
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<p><a href="/my">← Your devices</a></p><h1 class="wrap">{} {}</h1><p class="sub mono wrap">{} · {}</p>"#,
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
            let until = h.action_until_ms.map(|ms| zone.time(ms));
            let _ = write!(
                body,
                "<div class=\"change\" data-verdict=\"{}\"><b>{}</b> — {} → {}{}<p>{}</p>",
                h.verdict.as_str(),
                esc(&zone.time(h.at_ms)),
                esc(h.previous.as_str()),
                html::verdict_badge(h.verdict),
                html::change_source_note(h.source),
                esc(&verdicts::plain_action(h.action, until.as_deref())),
            );
            if !h.evidence.is_empty() {
                body.push_str(r#"<details><summary>Technical details</summary><ul class="ev">"#);
                for e in &h.evidence {
                    let _ = write!(body, "<li>{}</li>", esc(e));
                }
                body.push_str("</ul></details>");
            }
            body.push_str("</div>");
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
        .sql(move |db| {
            Ok(households::request_release(
                db,
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
