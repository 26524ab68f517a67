//! One router's NOC page, `GET /noc/cpe/{cpe_id}`, and what an operator does from it:
//! - `POST /noc/cpe/{cpe_id}/command` (operator): lift a device's restriction (a signed
//!   release), block it or extend its block (a signed block with a new time to live), through
//!   [`AppState::send_order`] and the signed command path of [`crate::commands`];
//! - `POST /noc/cpe/{cpe_id}/policy` (admin): a per-router policy override, checked like the
//!   fleet policy and then signed for this router only (`Target::Cpe` in [`crate::policy`]).
//!
//! Both are CSRF-checked form posts and audited, refused attempts included.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use smtpguard_protocol::{Action, MacAddr, Policy};

use super::auth::{self, csrf_field, Caller};
use super::fleet::cpe_row;
use super::html::{self, esc, path_seg, Table};
use super::noc::{device_rows, noc_page};
use super::{AppState, WebError};
use crate::commands::Order;
use crate::households;
use crate::operators::Level;
use crate::store::db::Sql;
use crate::store::fleet::CpeRow;
use crate::verdicts::{self, plural, DeviceView};

/// Block times the page offers, in seconds, with their words.
pub const BLOCK_CHOICES: [(u32, &str); 3] = [
    (3600, "1 hour"),
    (24 * 3600, "24 hours"),
    (7 * 24 * 3600, "7 days"),
];

/// Flash messages after a redirect.
#[derive(Debug, Default, Deserialize)]
pub struct CpeFlash {
    #[serde(default)]
    sent: Option<u64>,
    #[serde(default)]
    policy: Option<u64>,
    #[serde(default)]
    allowed: Option<u64>,
}

struct Loaded {
    row: CpeRow,
    devices: Vec<DeviceView>,
    releases: Vec<households::ReleaseRequest>,
    commands: Vec<crate::store::commands::CommandRow>,
    override_policy: Option<(u64, Policy)>,
    fleet_policy: Policy,
    abuse_reports: usize,
    cpe_policy_applied: Option<i64>,
    /// Devices allowed on this router for good ([`crate::policy::allow_device`]).
    allowed: Vec<MacAddr>,
}

fn load(conn: &impl Sql, id: &str, now: u64) -> Result<Loaded, WebError> {
    let row = cpe_row(conn, id)?;
    let devices = verdicts::load_devices(conn, id, now)?;
    let releases: Vec<_> = households::release_requests(conn, None)?
        .into_iter()
        .filter(|r| r.cpe_id == id)
        .collect();
    let commands = crate::store::commands::list(conn, id, now, 50)
        .map_err(|e| WebError::Internal(e.to_string()))?;
    let abuse_reports = crate::abuse::count_filtered(
        conn,
        &crate::abuse::ReportFilter {
            cpe_id: Some(id.to_string()),
            ..crate::abuse::ReportFilter::default()
        },
    )?;
    Ok(Loaded {
        row,
        devices,
        releases,
        commands,
        override_policy: crate::store::drafts::cpe_override(conn, id)?,
        fleet_policy: super::policy_editor::current_fleet_policy(conn)?,
        abuse_reports: usize::try_from(abuse_reports).unwrap_or(0),
        cpe_policy_applied: crate::store::fleet::cpe_policy_version(conn, id)?,
        allowed: crate::policy::allowed_devices(conn, id)?,
    })
}

fn summary(d: &Loaded, now: u64) -> String {
    let row = &d.row;
    let mut b = format!(
        r#"<p><a href="/noc">← Fleet</a></p><h1 class="id">{}</h1><dl class="facts" id="cpe-facts">"#,
        esc(&row.cpe_id)
    );
    let seen = row
        .updated_ms
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| format!("{} ({})", html::time(ms), html::ago(ms, now)));
    let facts = [
        (
            "Household",
            esc(row
                .household
                .as_deref()
                .or(row.label.as_deref())
                .unwrap_or("none")),
        ),
        ("Status", row.status_badge(now)),
        (
            if row.status_word() == "online" {
                "Last state report"
            } else {
                "Last seen"
            },
            esc(seen.as_deref().unwrap_or("never")),
        ),
        (
            "Public IP",
            format!(
                r#"<span class="mono">{}</span>"#,
                esc(row.public_ip.as_deref().unwrap_or("unknown"))
            ),
        ),
        (
            "Agent",
            esc(row.agent_version.as_deref().unwrap_or("unknown")),
        ),
        (
            "Fleet policy applied",
            row.fleet_policy_version
                .map_or("none".into(), |v| format!("v{v}")),
        ),
        (
            "Router override",
            match (&d.override_policy, d.cpe_policy_applied) {
                (None, _) => "none".into(),
                (Some((v, _)), Some(a)) if i64::try_from(*v).ok() == Some(a) => {
                    format!("v{v}, applied")
                }
                (Some((v, _)), _) => format!("v{v}, not yet applied"),
            },
        ),
    ];
    for (k, v) in facts {
        let _ = write!(b, "<div><dt>{k}</dt><dd>{v}</dd></div>");
    }
    b.push_str("</dl>");
    let _ = write!(
        b,
        r##"<p class="row links"><a href="/noc/abuse?cpe={0}" id="link-abuse">{1}</a><a href="#releases">{2}</a><a href="/noc/audit?target={0}" id="link-history">History in the audit log</a></p>"##,
        path_seg(&row.cpe_id),
        esc(&plural(
            d.abuse_reports as u64,
            "abuse report",
            "abuse reports"
        )),
        esc(&plural(
            d.releases.len() as u64,
            "release request",
            "release requests"
        )),
    );
    b
}

fn ttl_select(id: &str) -> String {
    let mut s = format!(
        r#"<label class="inline" for="{id}">for</label> <select id="{id}" name="ttl_secs">"#
    );
    for (secs, words) in BLOCK_CHOICES {
        let sel = if secs == 24 * 3600 { " selected" } else { "" };
        let _ = write!(s, r#"<option value="{secs}"{sel}>{words}</option>"#);
    }
    s.push_str("</select>");
    s
}

fn actions(d: &Loaded, caller: &Caller) -> String {
    let mut b = String::from(
        r#"<h2 id="actions">Act on a device</h2><p class="sub">Each action is a signed command to this router; it answers with an acknowledgement (see Commands below). Everything is written to the audit log.</p>"#,
    );
    if d.devices.is_empty() {
        b.push_str(r#"<p class="muted">No devices reported yet.</p>"#);
        return b;
    }
    let mut t = Table::plain(
        "device-actions",
        "Devices and what you can do",
        &["Device", "Now", "Release request", "Actions"],
    );
    let path = path_seg(&d.row.cpe_id);
    for (i, dev) in d.devices.iter().enumerate() {
        let mac = dev.mac.to_string();
        let request = d
            .releases
            .iter()
            .find(|r| r.mac == mac)
            .map(|r| {
                let progress =
                    households::release_progress(r, dev.action, dev.action_until_ms, r.command);
                format!(
                    "{} (requested {})",
                    progress.noc_text(html::time),
                    html::time(r.requested_ms)
                )
            })
            .unwrap_or_else(|| "—".into());
        let restricted = dev.action != Action::Monitor;
        let mut forms = String::new();
        if restricted {
            let _ = write!(
                forms,
                r#"<form method="post" action="/noc/cpe/{path}/command" class="row">{}<input type="hidden" name="mac" value="{}"><button class="btn secondary" name="action" value="release">Lift restriction</button></form>"#,
                csrf_field(caller),
                esc(&mac)
            );
        }
        let _ = write!(
            forms,
            r#"<form method="post" action="/noc/cpe/{path}/command" class="row">{}<input type="hidden" name="mac" value="{}"><button class="btn danger" name="action" value="block">{}</button> {}</form>"#,
            csrf_field(caller),
            esc(&mac),
            if dev.action == Action::Block {
                "Extend block"
            } else {
                "Block mail"
            },
            ttl_select(&format!("ttl-{i}")),
        );
        if d.allowed.contains(&dev.mac) {
            forms.push_str(
                r#"<p class="muted">Allowed on this router: never throttled or blocked.</p>"#,
            );
        } else {
            let _ = write!(
                forms,
                r#"<form method="post" action="/noc/cpe/{path}/allow" class="row">{}<input type="hidden" name="mac" value="{}"><input type="text" id="allow-note-{i}" name="note" required aria-label="Why this device may send mail" placeholder="Why (e.g. the subscriber's own mail server)"><button class="btn secondary" type="submit">Allow on this router</button></form>"#,
                csrf_field(caller),
                esc(&mac)
            );
        }
        t.row(
            &format!(r#" data-mac="{}""#, esc(&mac)),
            &[
                (
                    "",
                    format!(
                        r#"<b class="wrap">{}</b><div class="muted mono">{}</div>"#,
                        esc(&dev.display_name()),
                        esc(&mac)
                    ),
                ),
                ("", html::action_badge(dev.action, dev.action_until_ms)),
                ("", esc(&request)),
                ("", forms),
            ],
        );
    }
    b.push_str(&t.finish());
    b
}

fn override_form(d: &Loaded, caller: &Caller) -> String {
    let mut b = String::from(r#"<h2 id="override">Policy for this router only</h2>"#);
    let (text, note) = match &d.override_policy {
        Some((v, p)) => (
            policy_text(p),
            format!("This router has its own policy, version {v}. It takes precedence over the fleet policy."),
        ),
        None => (
            policy_text(&d.fleet_policy),
            "This router follows the fleet policy. An override takes precedence over it on this router only; the text below starts as the fleet policy.".to_string(),
        ),
    };
    let _ = write!(b, r#"<p class="sub">{}</p>"#, esc(&note));
    let admin = matches!(&caller.role, auth::Role::Noc(s) if s.level >= Level::Admin);
    if !admin {
        b.push_str(r#"<p class="muted">Only an administrator can change a router's policy.</p>"#);
        return b;
    }
    let _ = write!(
        b,
        r#"<form method="post" action="/noc/cpe/{}/policy">{}<label for="override-policy">Policy (TOML)</label><textarea id="override-policy" name="policy" rows="12" spellcheck="false">{}</textarea><p><label class="inline"><input type="checkbox" name="confirm" value="1" required> Sign this policy and send it to <span class="mono">{}</span> only</label></p><p><button class="btn" type="submit" id="override-send">Sign and send</button></p></form>"#,
        path_seg(&d.row.cpe_id),
        csrf_field(caller),
        esc(&text),
        esc(&d.row.cpe_id),
    );
    b
}

fn policy_text(p: &Policy) -> String {
    let mut v = match toml::Value::try_from(p) {
        Ok(v) => v,
        Err(_) => return String::new(),
    };
    if let toml::Value::Table(t) = &mut v {
        t.remove("policy_version");
    }
    toml::to_string(&v).unwrap_or_default()
}

/// The "Commands" section: the newest commands sent to the router, with where each stands.
fn command_rows(commands: &[crate::store::commands::CommandRow]) -> String {
    let mut b = String::from(r#"<h2 id="commands-h">Commands</h2>"#);
    if commands.is_empty() {
        b.push_str(r#"<p class="muted">No commands sent to this router.</p>"#);
        return b;
    }
    let mut t = Table::plain(
        "commands",
        "Commands sent to this router, newest first",
        &[
            "Id", "Action", "Device", "Time", "Issued", "Status", "Answered",
        ],
    );
    for c in commands {
        let status = match &c.reason {
            Some(reason) => format!("{}: {reason}", c.status),
            None => c.status.clone(),
        };
        t.row(
            &format!(
                r#" data-command="{}" data-status="{}""#,
                c.command_id,
                esc(&c.status)
            ),
            &[
                ("", c.command_id.to_string()),
                ("", esc(&c.action)),
                ("mono", esc(&c.mac)),
                ("", format!("{} s", c.secs)),
                ("", esc(&html::time(c.issued_ms))),
                ("", esc(&status)),
                (
                    "",
                    esc(&c.ack_ms.map(html::time).unwrap_or_else(|| "—".into())),
                ),
            ],
        );
    }
    b.push_str(&t.finish());
    b
}

fn timeline(devices: &[DeviceView]) -> String {
    let mut b = String::from("<h2>Evidence timeline</h2>");
    let mut events: Vec<(&DeviceView, &verdicts::VerdictChange)> = devices
        .iter()
        .flat_map(|d| d.history.iter().map(move |h| (d, h)))
        .collect();
    events.sort_by_key(|e| std::cmp::Reverse(e.1.at_ms));
    if events.is_empty() {
        b.push_str(r#"<p class="muted">No verdict changes.</p>"#);
        return b;
    }
    b.push_str(r#"<div class="timeline">"#);
    for (d, h) in events.iter().take(200) {
        let _ = write!(
            b,
            "<div class=\"change\" data-mac=\"{}\" data-verdict=\"{}\"><b>{}</b> · {} <span class=\"mono muted\">{}</span> · {} → {} {}{}<ul class=\"ev\">",
            esc(&d.mac.to_string()),
            h.verdict.as_str(),
            esc(&html::time(h.at_ms)),
            esc(&d.display_name()),
            esc(&d.mac.to_string()),
            esc(h.previous.as_str()),
            html::verdict_badge(h.verdict),
            html::action_badge(h.action, h.action_until_ms),
            html::change_source_note(h.source),
        );
        for e in &h.evidence {
            let _ = write!(b, "<li>{}</li>", esc(e));
        }
        b.push_str("</ul></div>");
    }
    b.push_str("</div>");
    b
}

/// `GET /noc/cpe/{cpe_id}`: one router, its devices, what can be done about them, its
/// commands, policy override and evidence timeline.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(cpe_id): Path<String>,
    Query(flash): Query<CpeFlash>,
) -> Response {
    let caller = match auth::noc(&state, &headers).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let now = state.now_ms();
    let id = cpe_id.clone();
    let d = match state.sql(move |conn| load(conn, &id, now)).await {
        Ok(d) => d,
        Err(e) => return e.page(),
    };
    let mut b = summary(&d, now);
    if let Some(id) = flash.sent {
        let _ = write!(
            b,
            r#"<div class="flash" role="status" id="flash">Command {id} signed and sent; its status is under Commands.</div>"#
        );
    }
    if let Some(v) = flash.policy {
        let _ = write!(
            b,
            r#"<div class="flash" role="status" id="flash">Policy version {v} signed and sent to this router.</div>"#
        );
    }
    if let Some(v) = flash.allowed {
        let _ = write!(
            b,
            r#"<div class="flash" role="status" id="flash">Device allowed: policy version {v} signed and sent to this router.</div>"#
        );
    }
    b.push_str(r#"<div id="cpe-live" data-refresh="30">"#);
    b.push_str("<h2>Devices</h2>");
    let all: Vec<&DeviceView> = d.devices.iter().collect();
    if all.is_empty() {
        b.push_str(r#"<p class="muted">No devices reported yet.</p>"#);
    } else {
        b.push_str(&device_rows(&all, None, "Devices on this router"));
    }
    b.push_str(&command_rows(&d.commands));
    b.push_str("</div>");
    b.push_str(&actions(&d, &caller));
    b.push_str(r#"<h2 id="releases">Release requests</h2>"#);
    if d.releases.is_empty() {
        b.push_str(r#"<p class="muted">The household has not asked for a release.</p>"#);
    } else {
        let mut t = Table::plain(
            "cpe-releases",
            "The household's release requests",
            &["Requested", "Device", "Note", "Status"],
        );
        for r in &d.releases {
            t.row(
                "",
                &[
                    ("", esc(&html::time(r.requested_ms))),
                    ("mono", esc(&r.mac)),
                    ("", esc(&r.note)),
                    ("", esc(&r.status)),
                ],
            );
        }
        b.push_str(&t.finish());
    }
    b.push_str(&override_form(&d, &caller));
    b.push_str(&timeline(&d.devices));
    noc_page(&d.row.cpe_id, "fleet", &caller, &b)
}

/// The device action form.
#[derive(Debug, Deserialize)]
pub struct CommandForm {
    csrf: String,
    mac: String,
    action: String,
    #[serde(default)]
    ttl_secs: Option<String>,
}

/// `POST /noc/cpe/{cpe_id}/command`: lift, block or extend, for operators.
pub async fn command(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(cpe_id): Path<String>,
    Form(form): Form<CommandForm>,
) -> Response {
    let (staff, _) = match auth::staff_form(&state, &headers, Level::Operator, &form.csrf).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let Ok(mac) = form.mac.trim().parse::<MacAddr>() else {
        return WebError::BadRequest("the device's MAC address is not valid".into()).page();
    };
    let order = match form.action.as_str() {
        "release" => Order::Release {
            mac,
            grace_secs: None,
        },
        "block" => {
            let ttl = form.ttl_secs.as_deref().unwrap_or("");
            let Some((secs, _)) = BLOCK_CHOICES
                .iter()
                .find(|(s, _)| s.to_string() == ttl.trim())
            else {
                return WebError::BadRequest(
                    "choose how long to block: 1 hour, 24 hours or 7 days".into(),
                )
                .page();
            };
            Order::Block {
                mac,
                ttl_secs: Some(*secs),
            }
        }
        _ => return WebError::BadRequest("action must be release or block".into()).page(),
    };
    let id = cpe_id.clone();
    if let Err(e) = state.sql(move |db| cpe_row(db, &id).map(drop)).await {
        return e.page();
    }
    match state.send_order(&staff.name, &cpe_id, order).await {
        Ok(command_id) => Redirect::to(&format!(
            "/noc/cpe/{}?sent={command_id}#commands-h",
            path_seg(&cpe_id)
        ))
        .into_response(),
        Err(crate::commands::CommandError::UnknownCpe(_)) => WebError::NotFound.page(),
        Err(e) if e.is_client_error() => WebError::BadRequest(e.to_string()).page(),
        Err(e) => WebError::BadRequest(format!("The command was not sent: {e}")).page(),
    }
}

/// The override form.
#[derive(Debug, Deserialize)]
pub struct OverrideForm {
    csrf: String,
    policy: String,
    #[serde(default)]
    confirm: Option<String>,
}

/// `POST /noc/cpe/{cpe_id}/policy`: signs a policy for this router only, for admins. The
/// policy passes the same checks as a fleet policy (the schema's limits and the safety check
/// every router runs) before anything is signed; the attempt is audited either way.
pub async fn policy_override(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(cpe_id): Path<String>,
    Form(form): Form<OverrideForm>,
) -> Response {
    let (staff, _) = match auth::staff_form(&state, &headers, Level::Admin, &form.csrf).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let id = cpe_id.clone();
    if let Err(e) = state.sql(move |db| cpe_row(db, &id).map(drop)).await {
        return e.page();
    }
    let checked = if form.confirm.is_none() {
        Err("tick the box to confirm this router only".to_string())
    } else {
        toml::from_str::<Policy>(&form.policy)
            .map_err(|e| format!("not a valid policy: {e}"))
            .and_then(|p| {
                p.validate().map_err(|e| e.to_string())?;
                smtpguard_protocol::check_policy_safety(&p, &state.settings.policy_safety)
                    .map_err(|e| e.to_string())?;
                Ok(p)
            })
    };
    let result = match checked {
        Ok(p) => state.policy.publish(p, Some(cpe_id.clone())).await,
        Err(e) => Err(e),
    };
    let (outcome, detail) = match &result {
        Ok(v) => ("ok", format!("version {v}")),
        Err(e) => ("refused", e.clone()),
    };
    state
        .audit(
            &staff.name,
            "policy_override",
            cpe_id.clone(),
            outcome,
            detail,
        )
        .await;
    match result {
        Ok(v) => Redirect::to(&format!(
            "/noc/cpe/{}?policy={v}#override",
            path_seg(&cpe_id)
        ))
        .into_response(),
        Err(e) => WebError::BadRequest(format!("Not sent: {e}")).page(),
    }
}
