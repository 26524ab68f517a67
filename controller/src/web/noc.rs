//! What the NOC pages share: the page frame with the NOC navigation ([`noc_page`]), the
//! devices table, the current campaigns, the export links. The pages themselves are one file
//! each: [`super::fleet`], [`super::cpe`], [`super::campaign_page`], [`super::abuse_desk`],
//! [`super::releases`], [`super::policy_editor`], [`super::audit`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::response::Response;
use smtpguard_protocol::Verdict;

use super::auth::{self, Caller};
use super::html::{self, esc, page, Nav};
use super::{html_response, WebError};
use crate::campaigns::{self, Campaign, Member};
use crate::store::db::Sql;
use crate::verdicts::DeviceView;

/// The fleet's infected devices, what campaigns are found among (kept at ingest).
///
/// # Errors
/// SQLite errors.
pub fn infected_devices(conn: &impl Sql, now_ms: u64) -> Result<Vec<DeviceView>, WebError> {
    Ok(crate::store::devices::with_verdicts(
        conn,
        &[Verdict::Infected],
        u32::MAX,
        now_ms,
    )?)
}

/// The campaigns among the fleet's infected devices.
///
/// # Errors
/// Database errors.
pub fn current_campaigns(
    db: &impl Sql,
    devices: &[DeviceView],
    settings: &campaigns::Settings,
) -> Result<Vec<(Campaign, Option<i64>)>, WebError> {
    let members: Vec<Member> = devices
        .iter()
        .filter(|d| d.verdict == Verdict::Infected)
        .map(|d| Member {
            cpe_id: d.cpe_id.clone(),
            mac: d.mac,
            at_ms: d.since_ms,
            observed: d.observed.clone(),
        })
        .collect();
    let found = campaigns::cluster(&members, settings);
    let mut out = Vec::new();
    for c in found {
        let pushed = crate::store::pages::campaign(db, &c.id, c.first_ms)?;
        out.push((c, pushed));
    }
    Ok(out)
}

/// The devices table: name and MAC, household and CPE (when `households` is given: the
/// fleet's list, not one router's), verdict, since, evidence, action.
pub(crate) fn device_rows(
    devs: &[&DeviceView],
    households: Option<&BTreeMap<String, String>>,
    caption: &str,
) -> String {
    let mut heads = vec!["Device"];
    if households.is_some() {
        heads.push("Household / CPE");
    }
    heads.extend(["Verdict", "Since", "Evidence", "Action"]);
    let mut t = html::Table::plain("", caption, &heads);
    for d in devs {
        let mut cells = vec![(
            "",
            format!(
                r#"<b class="wrap">{}</b><div class="muted mono">{}</div><div class="muted">{}</div>"#,
                esc(&d.display_name()),
                esc(&d.mac.to_string()),
                esc(d.vendor.as_deref().unwrap_or("")),
            ),
        )];
        if let Some(names) = households {
            cells.push((
                "",
                format!(
                    "{}<div>{}</div>",
                    esc(names.get(&d.cpe_id).map_or("", String::as_str)),
                    html::cpe_link(&d.cpe_id)
                ),
            ));
        }
        cells.push((
            "",
            format!(
                r#"{} <div class="muted">score {:.2}</div>"#,
                html::verdict_badge(d.verdict),
                d.score
            ),
        ));
        cells.push(("t", esc(&html::time(d.since_ms))));
        let mut ev = String::from(r#"<ul class="ev">"#);
        for e in d.evidence.iter().take(4) {
            let _ = write!(ev, "<li>{}</li>", esc(e));
        }
        ev.push_str("</ul>");
        cells.push(("", ev));
        cells.push(("", html::action_badge(d.action, d.action_until_ms)));
        t.row(
            &format!(
                r#" class="dev {}" data-mac="{}""#,
                d.verdict.as_str(),
                esc(&d.mac.to_string())
            ),
            &cells,
        );
    }
    t.finish()
}

pub(crate) fn noc_page(
    title: &str,
    section: &'static str,
    caller: &Caller,
    body: &str,
) -> Response {
    let (who, role) = match &caller.role {
        auth::Role::Noc(s) => (s.name.as_str(), s.level.as_str()),
        auth::Role::Household(_) => ("", ""),
    };
    html_response(page(
        title,
        Nav::Noc(section, who, role),
        caller.csrf.as_deref(),
        body,
    ))
}

/// Links to the CSV and JSON exports of `what` ([`super::export`]).
pub(crate) fn export_links(what: &str, label: &str) -> String {
    format!(
        r#"<p class="muted exports">Export {}: <a href="/api/export/{what}?format=csv">CSV</a> · <a href="/api/export/{what}?format=json">JSON</a></p>"#,
        esc(label)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_protocol::{Action, MacAddr, Observed};

    fn infected(cpe: &str, last: u8) -> DeviceView {
        DeviceView {
            cpe_id: cpe.into(),
            mac: MacAddr([2, 0, 0, 0, 0, last]),
            hostname: None,
            vendor: None,
            ips: Vec::new(),
            verdict: Verdict::Infected,
            score: 0.9,
            since_ms: 1_000 * u64::from(last),
            last_seen_ms: 1_000 * u64::from(last),
            action: Action::Block,
            action_until_ms: None,
            evidence: Vec::new(),
            counters: None,
            history: Vec::new(),
            observed: Observed {
                ehlo_names: vec!["bot-7f3a.example".into()],
                mail_from_domains: Vec::new(),
                mail_servers: Vec::new(),
            },
        }
    }

    /// A campaign found again comes back with the version its indicators were pushed in.
    #[test]
    fn campaigns_come_back_with_their_pushed_version_on_both_backends() {
        for (url, _dir) in crate::store::db::tests::backends() {
            let store = crate::store::Store::open_url(&url).unwrap();
            let db = &**store.db();
            let devices = [infected("cpe-1", 1), infected("cpe-2", 2)];
            let settings = campaigns::Settings::default();
            let found = current_campaigns(db, &devices, &settings).unwrap();
            assert_eq!(found.len(), 1, "{url}");
            assert_eq!(found[0].1, None, "{url}");
            crate::store::pages::campaign_pushed(db, &found[0].0.id, 12, 5).unwrap();
            let again = current_campaigns(db, &devices, &settings).unwrap();
            assert_eq!(again.len(), 1, "{url}");
            assert_eq!(again[0].1, Some(12), "{url}");
        }
    }
}
