//! The HTTP side of the controller: NOC dashboard, subscriber portal, JSON API, `/metrics`.
//!
//! # Layout
//! - [`auth`]: operator and subscriber identities from bearer tokens or session cookies,
//!   sessions, CSRF tokens.
//! - [`html`]: escaping and the page frame.
//! - [`fleet`]: the fleet page: CPEs searched, filtered, sorted and paged in SQL.
//! - [`list`]: what the server-side lists share (query values, sort links, pager).
//! - [`cpe`]: one router's page and what an operator does from it (release, extend or
//!   lift a block, per-router policy override).
//! - [`campaign_page`]: campaigns and the push of their indicators to the fleet policy.
//! - [`releases`]: release requests and their decision.
//! - [`noc`]: what the NOC pages share (frame, devices table, campaigns, exports).
//! - [`portal`]: the subscriber's "your devices" pages.
//! - [`abuse_desk`]: abuse reports: the list, a simple look-up form, pasted ARF/JSON, one
//!   report with its reply, open/answered.
//! - [`api`]: JSON endpoints, including `POST /api/abuse` and the commands to one router
//!   (`POST /api/cpes/{cpe}/devices/{mac}/release|block`, `GET /api/cpes/{cpe}/commands`).
//! - [`audit`]: the audit log, as a NOC page and as JSON.
//! - [`export`]: CSV and JSON exports of flagged devices, abuse reports and the audit log.
//! - [`metrics`]: Prometheus text exposition.
//! - [`policy_editor`]: the fleet policy editor, its rollout and history.
//! - [`rollout`]: the staged rollouts on the policy page (refreshed in place), their
//!   start, promote and roll-back forms, `GET /api/rollouts`.
//! - [`senders`]: subscriber-declared senders (portal and NOC) and
//!   `POST /noc/cpe/{id}/allow`.
//! - [`live`]: the `[web]` configuration section and policy publishing for `serve`.
//!
//! # Data flow
//! Requests are routed by axum; handlers resolve the caller with [`auth`], then run their
//! database work (SQLite or PostgreSQL, through the typed functions of [`crate::store`]) on a
//! blocking thread with [`AppState::sql`], calling the pure logic in
//! [`crate::verdicts`], [`crate::campaigns`], [`crate::abuse`] and [`crate::households`],
//! and render HTML or JSON. Policy changes go through the injected [`PolicyPublisher`], which
//! `serve` backs with the signing and publishing in `crate::policy`; commands to a router
//! (an approved release request, the API) through the injected [`CommandSender`], backed by
//! [`crate::commands`].

pub mod abuse_desk;
pub mod api;
pub mod audit;
pub mod auth;
pub mod campaign_page;
pub mod cpe;
pub mod devices;
pub mod export;
pub mod fleet;
pub mod html;
pub(crate) mod list;
pub mod live;
pub mod metrics;
pub mod noc;
pub mod policy_editor;
pub mod portal;
pub mod releases;
pub mod rollout;
pub mod senders;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use smtpguard_protocol::Policy;

use crate::abuse::AbuseError;
use crate::households::HouseholdError;
use crate::verdicts::VerdictError;

/// Largest request body accepted (abuse reports are the largest legitimate bodies).
pub const MAX_BODY_BYTES: usize = crate::abuse::arf::MAX_REPORT_BYTES;

/// Publishes a new policy for the fleet (`cpe_id` `None`) or one CPE: signs it with the next
/// version, stores it and puts it on its retained topic. Returns the version.
pub trait PolicyPublisher: Send + Sync + 'static {
    /// See the trait.
    fn publish(
        &self,
        policy: Policy,
        cpe_id: Option<String>,
    ) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send + '_>>;
}

/// Sends a signed command to one router: issues it under the router's next command id,
/// stores it and publishes it. Returns the command id. `release_request_id` links a release
/// to the subscriber's request it carries out.
pub trait CommandSender: Send + Sync + 'static {
    /// See the trait.
    fn send(
        &self,
        cpe_id: String,
        order: crate::commands::Order,
        release_request_id: Option<i64>,
    ) -> Pin<Box<dyn Future<Output = Result<u64, crate::commands::CommandError>> + Send + '_>>;
}

/// The command sender of a web server with no broker to send on (tests of the pages):
/// every command fails with a message saying so.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCommands;

impl CommandSender for NoCommands {
    fn send(
        &self,
        _cpe_id: String,
        _order: crate::commands::Order,
        _release_request_id: Option<i64>,
    ) -> Pin<Box<dyn Future<Output = Result<u64, crate::commands::CommandError>> + Send + '_>> {
        Box::pin(async {
            Err(crate::commands::CommandError::Key(
                "this server has no command channel".into(),
            ))
        })
    }
}

/// A source of the current time (Unix ms); tests pin it.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

/// Counters the web layer keeps itself (the rest of `/metrics` comes from the database).
#[derive(Debug, Default)]
pub struct Counters {
    /// Abuse reports refused, by reason label.
    pub abuse_rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Failed logins and bad bearer tokens.
    pub auth_failures: std::sync::atomic::AtomicU64,
    /// Form posts refused for a bad CSRF token or a foreign origin.
    pub csrf_failures: std::sync::atomic::AtomicU64,
    /// Requests with a credential answered 429 because their address is in back-off.
    pub login_throttled: std::sync::atomic::AtomicU64,
    /// Requests refused because the caller's role does not allow them.
    pub forbidden: std::sync::atomic::AtomicU64,
}

impl Counters {
    fn bump_abuse(&self, label: &'static str) {
        if let Ok(mut m) = self.abuse_rejected.lock() {
            *m.entry(label).or_default() += 1;
        }
    }
}

/// Web server settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSettings {
    /// SHA-256 (hex) of the operator token; the token itself is never kept.
    pub operator_token_hash: String,
    /// Mark cookies `Secure` (the site is public over https).
    pub secure_cookies: bool,
    /// Reverse proxies whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Back-off for failed credentials per source address.
    pub login_backoff: auth::BackoffSettings,
    /// How long a login lasts.
    pub session_secs: u64,
    /// Fleet correlation knobs.
    pub campaigns: crate::campaigns::Settings,
    /// What no policy the NOC signs may cut off (the controller's `[policy]` section and
    /// broker addresses); checked before anything is handed to the publisher.
    pub policy_safety: smtpguard_protocol::SafetyContext,
    /// The time zone of portal times for households that chose none (IANA name).
    pub portal_time_zone: String,
    /// Whom subscribers call or write to, in the portal's words (`None`: "your provider's
    /// customer service").
    pub support_contact: Option<String>,
}

impl WebSettings {
    /// Settings for an operator token, with defaults for the rest.
    pub fn new(operator_token: &str) -> WebSettings {
        WebSettings {
            operator_token_hash: crate::households::hash_secret(operator_token),
            secure_cookies: false,
            trusted_proxies: Vec::new(),
            login_backoff: auth::BackoffSettings::default(),
            session_secs: 12 * 3600,
            campaigns: crate::campaigns::Settings::default(),
            policy_safety: smtpguard_protocol::SafetyContext::default(),
            portal_time_zone: "UTC".into(),
            support_contact: None,
        }
    }
}

/// Shared state of all handlers.
#[derive(Clone)]
pub struct AppState {
    db: Arc<crate::store::db::Db>,
    /// Settings.
    pub settings: Arc<WebSettings>,
    /// Policy publishing.
    pub policy: Arc<dyn PolicyPublisher>,
    /// Commands to one router ([`NoCommands`] unless [`AppState::with_commands`]).
    pub commands: Arc<dyn CommandSender>,
    /// Web-layer counters.
    pub counters: Arc<Counters>,
    /// Failed credentials per source address.
    pub login_throttle: Arc<Mutex<auth::LoginThrottle>>,
    /// The clock.
    pub clock: Clock,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// Opens the database for the web server: [`crate::store::Store::open`], which migrates
/// the one schema (the web UI's tables included), and keeps its handle.
///
/// # Errors
/// [`WebError::Internal`] when the file cannot be opened or migrated.
pub fn open_db(path: &Path) -> Result<Arc<crate::store::db::Db>, WebError> {
    let store = crate::store::Store::open(path).map_err(|e| WebError::Internal(e.to_string()))?;
    Ok(store.into_db())
}

/// As [`open_db`] for a database URL (`postgres://...`, `sqlite:PATH`; see
/// [`crate::config::Config::database_url`]).
///
/// # Errors
/// [`WebError::Internal`] when the database cannot be reached, opened or migrated.
pub fn open_db_url(url: &str) -> Result<Arc<crate::store::db::Db>, WebError> {
    let store =
        crate::store::Store::open_url(url).map_err(|e| WebError::Internal(e.to_string()))?;
    Ok(store.into_db())
}

impl AppState {
    /// Appends to the audit log (see [`crate::audit`]). A failure to write it is logged and
    /// does not undo or hide the action's own result.
    pub async fn audit(
        &self,
        actor: &str,
        action: &'static str,
        target: String,
        outcome: &str,
        detail: String,
    ) {
        let now = self.now_ms();
        let (actor, outcome) = (actor.to_string(), outcome.to_string());
        let written = self
            .sql(move |db| {
                crate::audit::record(db, now, &actor, action, &target, &outcome, &detail)?;
                Ok(())
            })
            .await;
        if let Err(e) = written {
            tracing::error!(error = %e, action, "could not write the audit log");
        }
    }

    /// Sends a signed command to one router (no release request behind it) and audits it
    /// as `command` with the outcome `sent` or `refused`. Returns the command id.
    ///
    /// # Errors
    /// The sender's [`crate::commands::CommandError`].
    pub async fn send_order(
        &self,
        actor: &str,
        cpe_id: &str,
        order: crate::commands::Order,
    ) -> Result<u64, crate::commands::CommandError> {
        let (what, mac) = match &order {
            crate::commands::Order::Release { mac, .. } => ("release", *mac),
            crate::commands::Order::Block { mac, .. } => ("block", *mac),
        };
        let sent = self.commands.send(cpe_id.to_string(), order, None).await;
        let (outcome, detail) = match &sent {
            Ok(id) => ("sent", format!("{what}, command {id}")),
            Err(e) => ("refused", format!("{what}: {e}")),
        };
        self.audit(actor, "command", format!("{cpe_id}/{mac}"), outcome, detail)
            .await;
        sent
    }

    /// Audits an abuse lookup: the report's question and answer, or why it was refused.
    pub async fn audit_abuse(
        &self,
        actor: &str,
        result: Result<&crate::abuse::StoredReport, String>,
    ) {
        match result {
            Ok(r) => {
                self.audit(
                    actor,
                    "abuse_lookup",
                    format!("report {}", r.id),
                    "ok",
                    r.audit_detail(),
                )
                .await;
            }
            Err(why) => {
                self.audit(actor, "abuse_lookup", "report".into(), "refused", why)
                    .await;
            }
        }
    }

    /// State over an open connection (from [`open_db`]).
    pub fn new(
        db: Arc<crate::store::db::Db>,
        settings: WebSettings,
        policy: Arc<dyn PolicyPublisher>,
        clock: Clock,
    ) -> AppState {
        AppState {
            db,
            login_throttle: Arc::new(Mutex::new(auth::LoginThrottle::new(settings.login_backoff))),
            settings: Arc::new(settings),
            policy,
            commands: Arc::new(NoCommands),
            counters: Arc::new(Counters::default()),
            clock,
        }
    }

    /// The same state sending commands through `commands`.
    pub fn with_commands(mut self, commands: Arc<dyn CommandSender>) -> AppState {
        self.commands = commands;
        self
    }

    /// Now, in Unix ms.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Runs `f` with the database (either backend) on a blocking thread.
    ///
    /// # Errors
    /// `f`'s error, or [`WebError::Internal`] when the thread failed.
    pub async fn sql<T, F>(&self, f: F) -> Result<T, WebError>
    where
        T: Send + 'static,
        F: FnOnce(&crate::store::db::Db) -> Result<T, WebError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| WebError::Internal(e.to_string()))?
    }
}

/// A request failed; each variant maps to one status code.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// No valid credentials (401; pages redirect to the login form).
    #[error("sign in required")]
    Unauthorized,
    /// A wrong bearer token (401 like [`WebError::Unauthorized`]; the response is marked
    /// for the login back-off).
    #[error("sign in required")]
    BadCredentials,
    /// Valid credentials for the wrong role (403).
    #[error("not allowed")]
    Forbidden,
    /// Bad or missing CSRF token, or a cross-site form post (403).
    #[error("form expired or sent from another site; reload the page and try again")]
    Csrf,
    /// No such thing, or not yours (404).
    #[error("not found")]
    NotFound,
    /// The request is malformed (400), with a message for the caller.
    #[error("{0}")]
    BadRequest(String),
    /// The body is over [`MAX_BODY_BYTES`] (413).
    #[error("request body too large (limit {MAX_BODY_BYTES} bytes)")]
    TooLarge,
    /// Server-side failure (500); details go to the log, not the client.
    #[error("internal error")]
    Internal(String),
}

impl From<rusqlite::Error> for WebError {
    fn from(e: rusqlite::Error) -> Self {
        WebError::Internal(e.to_string())
    }
}

impl From<crate::store::db::DbError> for WebError {
    fn from(e: crate::store::db::DbError) -> Self {
        WebError::Internal(e.to_string())
    }
}

impl From<crate::store::StoreError> for WebError {
    fn from(e: crate::store::StoreError) -> Self {
        WebError::Internal(e.to_string())
    }
}

impl From<VerdictError> for WebError {
    fn from(e: VerdictError) -> Self {
        WebError::Internal(e.to_string())
    }
}

impl From<HouseholdError> for WebError {
    fn from(e: HouseholdError) -> Self {
        match e {
            HouseholdError::NotFound => WebError::NotFound,
            HouseholdError::Invalid(m) => WebError::BadRequest(m.to_string()),
            HouseholdError::Database(e) => WebError::Internal(e.to_string()),
        }
    }
}

impl From<AbuseError> for WebError {
    fn from(e: AbuseError) -> Self {
        if e.is_client_error() {
            if matches!(e, AbuseError::Arf(crate::abuse::arf::ArfError::TooLarge(_))) {
                WebError::TooLarge
            } else {
                WebError::BadRequest(e.to_string())
            }
        } else {
            WebError::Internal(e.to_string())
        }
    }
}

impl WebError {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            WebError::Unauthorized | WebError::BadCredentials => StatusCode::UNAUTHORIZED,
            WebError::Forbidden | WebError::Csrf => StatusCode::FORBIDDEN,
            WebError::NotFound => StatusCode::NOT_FOUND,
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn log(&self) {
        if let WebError::Internal(detail) = self {
            tracing::error!(%detail, "web request failed");
        }
    }

    /// As a JSON API response: `{"error": "..."}`.
    pub fn api(self) -> Response {
        self.log();
        let mut r = (
            self.status(),
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if matches!(self, WebError::Unauthorized | WebError::BadCredentials) {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"smtpguard\""),
            );
        }
        if matches!(self, WebError::BadCredentials) {
            r.extensions_mut().insert(auth::AuthOutcome::Failed);
        }
        r
    }

    /// As an HTML page response; 401 sends people to the login form.
    pub fn page(self) -> Response {
        self.log();
        match self {
            WebError::Unauthorized => return Redirect::to("/login").into_response(),
            WebError::BadCredentials => {
                let mut r = Redirect::to("/login").into_response();
                r.extensions_mut().insert(auth::AuthOutcome::Failed);
                return r;
            }
            _ => {}
        }
        let (title, text) = match &self {
            WebError::NotFound => (
                "Not found",
                "There is nothing here, or it is not yours to see.".to_string(),
            ),
            WebError::Forbidden => (
                "Not allowed",
                "This page is not available to your account.".to_string(),
            ),
            other => ("Something went wrong", other.to_string()),
        };
        let body = format!(
            r#"<div class="login"><h1>{}</h1><p>{}</p><p><a class="btn secondary" href="/login">Back</a></p></div>"#,
            html::esc(title),
            html::esc(&text)
        );
        (
            self.status(),
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html::page(title, html::Nav::None, None, &body),
        )
            .into_response()
    }
}

/// An HTML response.
pub fn html_response(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `GET /static/ui.js`: [`html::UI_JS`].
async fn ui_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        html::UI_JS,
    )
        .into_response()
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/login") }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/static/ui.js", get(ui_js))
        .route("/noc", get(fleet::page))
        .route("/noc/devices", get(devices::page))
        .route("/api/devices", get(devices::api))
        .route("/noc/cpe/{cpe_id}", get(cpe::page))
        .route("/noc/cpe/{cpe_id}/command", post(cpe::command))
        .route("/noc/cpe/{cpe_id}/policy", post(cpe::policy_override))
        .route("/noc/campaigns", get(campaign_page::page))
        .route("/noc/campaigns/{id}", get(campaign_page::one))
        .route("/noc/campaigns/{id}/push", post(campaign_page::push))
        .route(
            "/noc/policy",
            get(policy_editor::page).post(policy_editor::save),
        )
        .route(
            "/noc/policy/rollback/{version}",
            post(policy_editor::rollback),
        )
        .route("/noc/abuse", get(abuse_desk::page).post(abuse_desk::paste))
        .route("/noc/abuse/lookup", post(abuse_desk::lookup))
        .route("/noc/abuse/{id}", get(abuse_desk::one))
        .route("/noc/abuse/{id}/answered", post(abuse_desk::answered))
        .route("/noc/releases", get(releases::page))
        .route("/noc/releases/{id}", post(releases::decide))
        .route(
            "/noc/policy/rollouts",
            get(rollout::fragment).post(rollout::start),
        )
        .route("/noc/policy/rollouts/{id}/promote", post(rollout::promote))
        .route(
            "/noc/policy/rollouts/{id}/rollback",
            post(rollout::rollback),
        )
        .route("/api/rollouts", get(rollout::api))
        .route("/noc/senders", get(senders::noc_page))
        .route("/noc/senders/{id}", post(senders::decide))
        .route("/noc/cpe/{cpe_id}/allow", post(senders::allow))
        .route(
            "/my/senders",
            get(senders::portal_page).post(senders::declare),
        )
        .route("/noc/audit", get(audit::page))
        .route("/api/audit", get(audit::api))
        .route("/api/export/{what}", get(export::export))
        .route("/my", get(portal::devices))
        .route("/my/devices/{cpe_id}/{mac}", get(portal::device))
        .route("/my/release", post(portal::release))
        .route("/my/contact", post(portal::contact))
        .route("/my/time-zone", post(portal::time_zone))
        .route("/api/fleet", get(api::fleet))
        .route("/api/cpes/{cpe_id}", get(api::cpe))
        .route("/api/cpes/{cpe_id}/commands", get(api::commands))
        .route(
            "/api/cpes/{cpe_id}/devices/{mac}/release",
            post(api::release_device),
        )
        .route(
            "/api/cpes/{cpe_id}/devices/{mac}/block",
            post(api::block_device),
        )
        .route("/api/campaigns", get(api::campaigns))
        .route("/api/abuse", get(api::abuse_list).post(api::abuse_submit))
        .route("/api/my/devices", get(api::my_devices))
        .route("/metrics", get(metrics::metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::throttle,
        ))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// Serves `router(state)` on `listener` until `shutdown` resolves.
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "web server listening");
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
