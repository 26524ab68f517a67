//! JSON API: `Authorization: Bearer <token>` (or a session cookie for GETs).
//!
//! Operator: `GET /api/fleet`, `GET /api/cpes/{id}`, `GET /api/campaigns`, `GET/POST
//! /api/abuse` (the lists are paged: the list page's filters plus `page` and `per_page`,
//! answered as `{"total", "page", "per_page", <rows>}`), and commands to one router:
//! `POST /api/cpes/{id}/devices/{mac}/release[?grace_secs=N]` and
//! `POST /api/cpes/{id}/devices/{mac}/block[?ttl_secs=N]` (bearer token only; 201
//! `{"command_id": N, "cpe_id": .., "mac": .., "action": .., "status": "sent"}`),
//! `GET /api/cpes/{id}/commands` (newest first, each with `status` `sent`, `applied`,
//! `refused` with `reason`, `expired` or `unsent`, and `ack_ms`). Subscriber: `GET
//! /api/my/devices` (own household only).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::abuse_desk::ListQuery;
use super::auth;
use super::campaign_page::{self, CampaignQuery};
use super::fleet::{cpe_row, FleetList, FleetQuery};
use super::list;
use super::portal::household_devices;
use super::{AppState, WebError};
use crate::abuse;
use crate::commands::{CommandError, Order};
use crate::operators::Level;
use crate::store::commands as store_commands;
use crate::verdicts::{self, DeviceView};

/// A device as the API shows it.
#[derive(Debug, Serialize)]
pub struct DeviceJson {
    cpe_id: String,
    mac: String,
    name: String,
    hostname: Option<String>,
    vendor: Option<String>,
    ips: Vec<String>,
    verdict: &'static str,
    score: f32,
    since_ms: u64,
    last_seen_ms: u64,
    action: &'static str,
    action_until_ms: Option<u64>,
    evidence: Vec<String>,
    summary: Option<String>,
    /// Verdict changes, oldest first.
    history: Vec<Value>,
}

impl From<&DeviceView> for DeviceJson {
    fn from(d: &DeviceView) -> Self {
        DeviceJson {
            cpe_id: d.cpe_id.clone(),
            mac: d.mac.to_string(),
            name: d.display_name(),
            hostname: d.hostname.clone(),
            vendor: d.vendor.clone(),
            ips: d.ips.iter().map(ToString::to_string).collect(),
            verdict: d.verdict.as_str(),
            score: d.score,
            since_ms: d.since_ms,
            last_seen_ms: d.last_seen_ms,
            action: d.action.as_str(),
            action_until_ms: d.action_until_ms,
            evidence: d.evidence.clone(),
            summary: verdicts::device_summary(d),
            history: d
                .history
                .iter()
                .map(|h| {
                    json!({
                        "at_ms": h.at_ms,
                        "from": h.previous.as_str(),
                        "to": h.verdict.as_str(),
                        "score": h.score,
                        "action": h.action.as_str(),
                        "source": match h.source {
                            verdicts::ChangeSource::Alert => "alert",
                            verdicts::ChangeSource::Telemetry => "telemetry",
                        },
                    })
                })
                .collect(),
        }
    }
}

fn ok(v: Value) -> Response {
    Json(v).into_response()
}

/// `GET /api/fleet`: one page of CPEs, searched, filtered and sorted like the fleet page
/// (the same query parameters, [`FleetQuery`]) plus `per_page`, and the flagged devices of
/// the CPEs on the page: `{"total", "page", "per_page", "cpes": [..], "devices": [..]}`.
pub async fn fleet(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<FleetQuery>,
) -> Response {
    if let Err(e) = auth::noc(&state, &headers).await {
        return e.api();
    }
    let per_page = match q.order.per_page() {
        Ok(n) => n,
        Err(e) => return e.api(),
    };
    let now = state.now_ms();
    let r = state
        .sql(move |conn| {
            let f = FleetList::parse(conn, &q)?;
            let (total, cpes) = f.search(conn, per_page, list::offset(f.page, per_page))?;
            let mut devices = Vec::new();
            for c in cpes.iter().filter(|c| c.flagged > 0) {
                devices.extend(
                    verdicts::load_devices(conn, &c.cpe_id, now)?
                        .into_iter()
                        .filter(|d| d.verdict != smtpguard_protocol::Verdict::Clean),
                );
            }
            Ok((total, f.page, cpes, devices))
        })
        .await;
    match r {
        Ok((total, page, cpes, devices)) => ok(json!({
            "total": total,
            "page": page,
            "per_page": per_page,
            "cpes": cpes,
            "devices": devices.iter().map(DeviceJson::from).collect::<Vec<_>>(),
        })),
        Err(e) => e.api(),
    }
}

/// `GET /api/cpes/{id}`: one CPE and all its devices.
pub async fn cpe(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = auth::noc(&state, &headers).await {
        return e.api();
    }
    let now = state.now_ms();
    let r = state
        .sql(move |conn| {
            let row = cpe_row(conn, &id)?;
            let devices = verdicts::load_devices(conn, &id, now)?;
            Ok((row, devices))
        })
        .await;
    match r {
        Ok((row, devices)) => ok(json!({
            "cpe": row,
            "devices": devices.iter().map(DeviceJson::from).collect::<Vec<_>>(),
        })),
        Err(e) => e.api(),
    }
}

/// `GET /api/campaigns`: one page of campaigns, searched, filtered and sorted like the
/// campaign list ([`CampaignQuery`]) plus `per_page`:
/// `{"total", "page", "per_page", "campaigns": [..]}`.
pub async fn campaigns(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CampaignQuery>,
) -> Response {
    if let Err(e) = auth::noc(&state, &headers).await {
        return e.api();
    }
    let (f, per_page) = match (q.filter(), q.order.per_page()) {
        (Ok(f), Ok(n)) => (f, n),
        (Err(e), _) | (_, Err(e)) => return e.api(),
    };
    let now = state.now_ms();
    let settings = state.settings.campaigns;
    let page = f.page;
    let r = state
        .sql(move |conn| Ok(f.apply(campaign_page::load(conn, now, &settings)?)))
        .await;
    match r {
        Ok(list) => {
            let start = usize::try_from(list::offset(page, per_page)).unwrap_or(usize::MAX);
            let rows: Vec<Value> = list
                .iter()
                .skip(start)
                .take(per_page as usize)
                .map(|(c, pushed)| {
                    json!({
                        "id": c.id,
                        "households": c.households,
                        "members": c.members.iter().map(|m| json!({"cpe_id": m.cpe_id, "mac": m.mac.to_string()})).collect::<Vec<_>>(),
                        "ehlo_names": c.ehlo_names,
                        "sender_domains": c.sender_domains,
                        "mail_servers": c.mail_servers.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "first_ms": c.first_ms,
                        "last_ms": c.last_ms,
                        "pushed_version": pushed,
                    })
                })
                .collect();
            ok(json!({
                "total": list.len(),
                "page": page,
                "per_page": per_page,
                "campaigns": rows,
            }))
        }
        Err(e) => e.api(),
    }
}

/// The old list filter of `GET /api/abuse`.
#[derive(Debug, Default, Deserialize)]
pub struct AbuseListQuery {
    #[serde(default)]
    unmatched: bool,
}

/// `GET /api/abuse`: one page of stored reports, searched, filtered and sorted like the
/// abuse desk's list ([`ListQuery`]; `unmatched=true` for those no device was named for)
/// plus `per_page`: `{"total", "page", "per_page", "reports": [..]}`.
pub async fn abuse_list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(old): Query<AbuseListQuery>,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Err(e) = auth::noc(&state, &headers).await {
        return e.api();
    }
    let checked = (|| {
        let mut f = q.filter()?;
        f.unmatched_only = old.unmatched;
        Ok::<_, WebError>((f, q.order.page()?, q.order.per_page()?))
    })();
    let (f, page, per_page) = match checked {
        Ok(x) => x,
        Err(e) => return e.api(),
    };
    match state
        .sql(move |db| {
            let total = abuse::count_filtered(db, &f)?;
            let rows = abuse::list_page(db, &f, per_page, list::offset(page, per_page))?;
            Ok((total, rows))
        })
        .await
    {
        Ok((total, rows)) => ok(json!({
            "total": total,
            "page": page,
            "per_page": per_page,
            "reports": rows,
        })),
        Err(e) => e.api(),
    }
}

/// `POST /api/abuse`: an ARF report (`multipart/report` or `message/rfc822`) or JSON.
/// Answers 201 with the mapping (also for unmatched reports, which are stored), 4xx for bad
/// input (counted in `/metrics`).
pub async fn abuse_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let staff = match auth::staff(&state, &headers, Level::Operator).await {
        Ok((s, _)) => s,
        Err(e) => return e.api(),
    };
    let body = match body {
        Ok(b) => b,
        Err(rej) => {
            let label = if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "unreadable_body"
            };
            state.counters.bump_abuse(label);
            return if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                WebError::TooLarge.api()
            } else {
                WebError::BadRequest(rej.body_text()).api()
            };
        }
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let now = state.now_ms();
    let result = state
        .sql(move |db| match abuse::submit(db, &ct, &body, now) {
            Ok(r) => Ok(Ok(r)),
            Err(e) if e.is_client_error() => Ok(Err(e)),
            Err(e) => Err(WebError::from(e)),
        })
        .await;
    match result {
        Ok(Ok(r)) => {
            state.audit_abuse(&staff.name, Ok(&r)).await;
            (StatusCode::CREATED, Json(r)).into_response()
        }
        Ok(Err(e)) => {
            state.counters.bump_abuse(e.label());
            state.audit_abuse(&staff.name, Err(e.to_string())).await;
            WebError::from(e).api()
        }
        Err(e) => e.api(),
    }
}

/// Every label an abuse rejection can have (also exported as zeros by `/metrics`).
pub const ABUSE_LABELS: [&str; 13] = [
    "too_large",
    "not_text",
    "not_report",
    "broken_mime",
    "too_many",
    "no_feedback_part",
    "missing_field",
    "bad_source_ip",
    "bad_port",
    "bad_date",
    "bad_json",
    "unreadable_body",
    "bad_request",
];

/// `GET /api/my/devices`: the caller's household's devices.
pub async fn my_devices(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let hh = match auth::subscriber(&state, &headers).await {
        Ok((id, _)) => id,
        Err(e) => return e.api(),
    };
    let now = state.now_ms();
    match state
        .sql(move |conn| household_devices(conn, hh, now))
        .await
    {
        Ok((h, devices, releases)) => ok(json!({
            "household": h.name,
            "devices": devices.iter().map(DeviceJson::from).collect::<Vec<_>>(),
            "release_requests": releases,
        })),
        Err(e) => e.api(),
    }
}

/// Options of the command endpoints.
#[derive(Debug, Deserialize)]
pub struct CommandQuery {
    #[serde(default)]
    grace_secs: Option<u32>,
    #[serde(default)]
    ttl_secs: Option<u32>,
}

/// `POST /api/cpes/{id}/devices/{mac}/release[?grace_secs=N]`: sends a signed release.
pub async fn release_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((cpe_id, mac)): Path<(String, String)>,
    Query(q): Query<CommandQuery>,
) -> Response {
    send_command(state, headers, cpe_id, mac, q, true).await
}

/// `POST /api/cpes/{id}/devices/{mac}/block[?ttl_secs=N]`: sends a signed block.
pub async fn block_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((cpe_id, mac)): Path<(String, String)>,
    Query(q): Query<CommandQuery>,
) -> Response {
    send_command(state, headers, cpe_id, mac, q, false).await
}

async fn send_command(
    state: AppState,
    headers: HeaderMap,
    cpe_id: String,
    mac: String,
    q: CommandQuery,
    release: bool,
) -> Response {
    let staff = match auth::staff(&state, &headers, Level::Operator).await {
        // A session cookie could be ridden by another site: commands take the token.
        Ok((_, c)) if c.csrf.is_some() => return WebError::Forbidden.api(),
        Ok((s, _)) => s,
        Err(e) => return e.api(),
    };
    let Ok(mac) = mac.parse::<smtpguard_protocol::MacAddr>() else {
        return WebError::BadRequest("mac must look like aa:bb:cc:dd:ee:ff".into()).api();
    };
    let order = if release {
        Order::Release {
            mac,
            grace_secs: q.grace_secs,
        }
    } else {
        Order::Block {
            mac,
            ttl_secs: q.ttl_secs,
        }
    };
    let sent = state.send_order(&staff.name, &cpe_id, order).await;
    match sent {
        Ok(id) => (
            StatusCode::CREATED,
            Json(json!({
                "command_id": id,
                "cpe_id": cpe_id,
                "mac": mac.to_string(),
                "action": if release { "release" } else { "block" },
                "status": "sent",
            })),
        )
            .into_response(),
        Err(CommandError::UnknownCpe(_)) => WebError::NotFound.api(),
        Err(e) if e.is_client_error() => WebError::BadRequest(e.to_string()).api(),
        Err(e) => WebError::Internal(e.to_string()).api(),
    }
}

/// `GET /api/cpes/{id}/commands`: the router's commands, newest first, with their status.
pub async fn commands(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = auth::noc(&state, &headers).await {
        return e.api();
    }
    let now = state.now_ms();
    let r = state
        .sql(move |conn| {
            cpe_row(conn, &id)?;
            store_commands::list(conn, &id, now, 500).map_err(|e| WebError::Internal(e.to_string()))
        })
        .await;
    match r {
        Ok(list) => ok(json!({ "commands": list })),
        Err(e) => e.api(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;
    use crate::store::db::Db;
    use crate::store::fleet::fixtures::{cpe, held};
    use crate::store::Store;

    const TOKEN: &str = "replica-api-token-0123";

    /// Signs into the replica's own database (the version from the shared counter).
    struct SignInto(Arc<Db>);

    impl crate::web::PolicyPublisher for SignInto {
        fn publish(
            &self,
            policy: smtpguard_protocol::Policy,
            cpe_id: Option<String>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + '_>>
        {
            let db = Arc::clone(&self.0);
            Box::pin(async move {
                let target =
                    cpe_id.map_or(crate::policy::Target::Fleet, crate::policy::Target::Cpe);
                tokio::task::spawn_blocking(move || {
                    crate::policy::sign_in(
                        &db,
                        &smtpguard_protocol::keys::generate(),
                        policy,
                        &target,
                        &smtpguard_protocol::SafetyContext::default(),
                        1,
                    )
                    .map(|p| p.version)
                    .map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())?
            })
        }
    }

    /// A web server over `db` on a free loopback port, until `stop` turns true.
    async fn replica(
        db: Arc<Db>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> (AppState, SocketAddr, tokio::task::JoinHandle<()>) {
        let state = AppState::new(
            Arc::clone(&db),
            crate::web::WebSettings::new(TOKEN),
            Arc::new(SignInto(db)),
            Arc::new(|| 1_764_500_000_000),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = state.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            crate::web::serve(listener, served, shutdown).await.unwrap();
        });
        (state, addr, server)
    }

    /// One request with the operator token; the status and the body.
    async fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    }

    /// Two web servers on one PostgreSQL database: what one stores the other lists (an
    /// abuse report, through the API and the export), the fleet reads the same from both,
    /// and fleet versions published on both at once are never repeated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_on_one_postgres_serve_the_same_noc() {
        let url = tokio::task::spawn_blocking(smtpguard_pgtest::database)
            .await
            .unwrap();
        let (one, two) = tokio::task::spawn_blocking(move || {
            let one = Store::open_url(&url).unwrap().into_db();
            let two = Store::open_url(&url).unwrap().into_db();
            cpe(&*one, "cpe-a", Some("Kitchen"), None);
            cpe(&*one, "cpe-b", None, None);
            held(&*one, "cpe-a", "203.0.113.7", 1764400000000, 1764600000000);
            (one, two)
        })
        .await
        .unwrap();
        assert_eq!(one.backend(), crate::store::db::Backend::Postgres);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (s1, a1, j1) = replica(one, stopped.clone()).await;
        let (s2, a2, j2) = replica(two, stopped).await;

        let report = r#"{"public_ip":"203.0.113.7","time":"2025-11-30T10:00:00Z"}"#;
        let (status, body) = call(a1, "POST", "/api/abuse", report).await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = call(a2, "GET", "/api/abuse", "").await;
        assert_eq!(status, 200, "{body}");
        let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(listed["total"], 1, "{body}");
        let (status, csv) = call(a2, "GET", "/api/export/abuse?format=csv", "").await;
        assert_eq!(status, 200, "{csv}");
        assert!(
            csv.contains("203.0.113.7") && csv.contains("cpe-a"),
            "{csv}"
        );

        let (status, body) = call(a2, "GET", "/api/fleet?q=KITCHEN", "").await;
        assert_eq!(status, 200, "{body}");
        let fleet: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(fleet["total"], 1, "{body}");
        assert_eq!(fleet["cpes"][0]["cpe_id"], "cpe-a", "{body}");
        for path in [
            "/noc",
            "/noc/cpe/cpe-a",
            "/noc/abuse",
            "/noc/campaigns",
            "/metrics",
        ] {
            let (status, body) = call(a1, "GET", path, "").await;
            assert_eq!(status, 200, "{path}: {body}");
        }

        let publish = |s: AppState, rate: u32| async move {
            let policy = smtpguard_protocol::Policy {
                rate_limit_per_minute: rate,
                ..smtpguard_protocol::Policy::default()
            };
            s.policy.publish(policy, None).await.unwrap()
        };
        let (v1, v2) = tokio::join!(publish(s1.clone(), 11), publish(s2.clone(), 22));
        let mut versions = [v1, v2];
        versions.sort_unstable();
        assert_eq!(versions, [1, 2]);

        stop.send(true).unwrap();
        j1.await.unwrap();
        j2.await.unwrap();
        // The last handles close their PostgreSQL connections, which blocks.
        tokio::task::spawn_blocking(move || drop((s1, s2)))
            .await
            .unwrap();
    }
}
