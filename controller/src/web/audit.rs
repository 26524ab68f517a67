//! The audit log pages: `GET /noc/audit` (filters by actor, action and target, newest
//! first, paged by id) and `GET /api/audit` (the same as JSON). Every NOC role may read it;
//! nobody can change it (see [`crate::audit`]).

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::html::{self, esc};
use super::noc::noc_page;
use super::{auth, AppState};
use crate::audit::{self, Entry, Filter};

/// Entries per page unless asked otherwise.
const PAGE: usize = 50;

/// The filters of both pages.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    /// Entries older than this id (the next page).
    before: Option<i64>,
    limit: Option<usize>,
}

impl AuditQuery {
    fn filter(&self) -> Filter {
        let some = |v: &Option<String>| {
            v.as_ref()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        Filter {
            actor: some(&self.actor),
            action: some(&self.action),
            target: some(&self.target),
            before_id: self.before,
        }
    }
}

async fn load(state: &AppState, q: &AuditQuery) -> Result<Vec<Entry>, super::WebError> {
    let filter = q.filter();
    let limit = q.limit.unwrap_or(PAGE);
    state
        .sql(move |db| Ok(audit::list(db, &filter, limit)?))
        .await
}

/// `GET /api/audit`: `{"entries": [...], "next_before": id|null}`, newest first.
pub async fn api(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    if let Err(e) = auth::noc(&state, &headers).await {
        return e.api();
    }
    match load(&state, &q).await {
        Ok(entries) => {
            let limit = q.limit.unwrap_or(PAGE).clamp(1, audit::PAGE_MAX);
            let next = (entries.len() == limit)
                .then(|| entries.last().map(|e| e.id))
                .flatten();
            Json(json!({ "entries": entries, "next_before": next })).into_response()
        }
        Err(e) => e.api(),
    }
}

/// `GET /noc/audit`.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    let caller = match auth::noc(&state, &headers).await {
        Ok(c) => c,
        Err(e) => return e.page(),
    };
    let entries = match load(&state, &q).await {
        Ok(e) => e,
        Err(e) => return e.page(),
    };
    let f = q.filter();
    let field = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
    let mut b = String::from(
        r#"<h1>Audit log</h1><p class="sub">Who did what, newest first. Entries are never changed or removed.</p>"#,
    );
    let _ = write!(
        b,
        r#"<form method="get" action="/noc/audit" class="search filters"><div><label for="actor">Who</label><input type="text" id="actor" name="actor" value="{}"></div><div><label for="action">Action</label><input type="text" id="action" name="action" value="{}" placeholder="e.g. policy_publish"></div><div><label for="target">Target contains</label><input type="text" id="target" name="target" value="{}"></div><div><button class="btn" type="submit">Filter</button></div></form>"#,
        field(&f.actor),
        field(&f.action),
        field(&f.target)
    );
    if entries.is_empty() {
        b.push_str(r#"<p class="muted">No entries match.</p>"#);
    } else {
        let mut t = html::Table::plain(
            "audit",
            "Audit entries",
            &["Time", "Who", "Action", "Target", "Outcome", "Detail"],
        );
        for e in &entries {
            t.row(
                &format!(r#" data-action="{}""#, esc(&e.action)),
                &[
                    ("", esc(&html::time(e.at_ms))),
                    ("", esc(&e.actor)),
                    ("mono", esc(&e.action)),
                    ("mono wrap", esc(&e.target)),
                    ("", esc(&e.outcome)),
                    ("wrap", esc(&e.detail)),
                ],
            );
        }
        b.push_str(&t.finish());
        if entries.len() == PAGE {
            if let Some(last) = entries.last() {
                let mut next = format!("/noc/audit?before={}", last.id);
                for (k, v) in [
                    ("actor", &f.actor),
                    ("action", &f.action),
                    ("target", &f.target),
                ] {
                    if let Some(v) = v {
                        let _ = write!(next, "&{k}={}", html::path_seg(v));
                    }
                }
                let _ = write!(b, r#"<p><a href="{}">Older entries</a></p>"#, esc(&next));
            }
        }
    }
    b.push_str(&super::noc::export_links("audit", "the whole log"));
    noc_page("Audit log", "audit", &caller, &b)
}
