//! Who is calling: a member of the NOC team (a named operator with a role, see
//! [`crate::operators`], or whoever holds the operator token file, an admin) or one
//! household, from an `Authorization: Bearer` token (API) or a session cookie (pages), plus
//! sessions and CSRF. [`staff`] checks the role a handler needs on the server, whatever the
//! page showed; a session names its operator, so revoking them ends it.
//!
//! Tokens and session ids are stored only as SHA-256 hashes (sessions by
//! [`crate::store::sessions`]). The session cookie is `HttpOnly; SameSite=Strict`, and
//! `Secure` when the site is public over https ([`super::WebSettings::secure_cookies`]) or a
//! trusted proxy says the request came over https; every form carries the session's CSRF
//! token, and a form post whose `Origin` names another site is refused even before that.
//!
//! # Login back-off
//! Every request that presents a credential (`POST /login`, or any `Authorization` header)
//! passes [`throttle`] first. A source address (an IPv6 client by its /64) that failed
//! [`BackoffSettings::free_failures`] times must wait before its next try, twice as long
//! after each further failure, up to [`BackoffSettings::max_delay_ms`]; meanwhile it is
//! answered `429 Too Many Requests` with `Retry-After`, without its credential being looked
//! at, and the refusal is counted (`smtpguard_web_login_throttled_total`). A successful login
//! clears its address. [`LoginThrottle`] is the pure table behind it, bounded by
//! [`BackoffSettings::capacity`]. The source address is the TCP peer, or, when the peer is one
//! of [`super::WebSettings::trusted_proxies`], the last `X-Forwarded-For` entry.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::html::{esc, page, Nav};
use super::{html_response, AppState, WebError};
use crate::households::{self, hash_secret, new_secret};
use crate::operators::{self, Level, TOKEN_OPERATOR};
use crate::store::db::Sql;
use crate::store::sessions::{self, Session};

/// Name of the session cookie.
pub const COOKIE: &str = "sg_session";

/// A member of the NOC team, as signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staff {
    /// Their operator row; `None` for the operator token file.
    pub operator_id: Option<i64>,
    /// Their name, for the NOC header and the audit log.
    pub name: String,
    /// What they may do.
    pub level: Level,
}

impl Staff {
    fn token_holder() -> Staff {
        Staff {
            operator_id: None,
            name: TOKEN_OPERATOR.to_string(),
            level: Level::Admin,
        }
    }

    fn of(op: operators::Operator) -> Staff {
        Staff {
            operator_id: Some(op.id),
            name: op.name,
            level: op.level,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A member of the NOC team.
    Noc(Staff),
    /// A subscriber of this household.
    Household(i64),
}

/// Who a bearer token or login secret belongs to: the operator token file, a named
/// operator, or a household.
fn who(db: &impl Sql, token: &str, op_hash: &str) -> Result<Option<Role>, WebError> {
    if same_digest(&hash_secret(token), op_hash) {
        return Ok(Some(Role::Noc(Staff::token_holder())));
    }
    if token.starts_with("op_") {
        return Ok(operators::authenticate(db, token)
            .map_err(|e| WebError::Internal(e.to_string()))?
            .map(|op| Role::Noc(Staff::of(op))));
    }
    Ok(households::authenticate(db, token)?.map(Role::Household))
}

/// A caller with their session's CSRF token (none for bearer-token callers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who.
    pub role: Role,
    /// The CSRF token forms must carry.
    pub csrf: Option<String>,
}

/// Compares two equal-length hex digests without early exit.
fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Resolves the caller from a bearer token or the session cookie.
///
/// # Errors
/// [`WebError::BadCredentials`] for a wrong bearer token, [`WebError::Unauthorized`] when
/// there is no valid session.
pub async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, WebError> {
    if let Some(token) = bearer(headers) {
        let token = token.to_string();
        let op_hash = state.settings.operator_token_hash.clone();
        let found = state.sql(move |db| who(db, &token, &op_hash)).await?;
        return match found {
            Some(role) => Ok(Caller { role, csrf: None }),
            None => {
                state.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                Err(WebError::BadCredentials)
            }
        };
    }
    let Some(sid) = cookie(headers, COOKIE).map(str::to_string) else {
        return Err(WebError::Unauthorized);
    };
    let now = state.now_ms();
    state.sql(move |db| session(db, &sid, now)).await
}

/// The caller a session id stands for at `now_ms`. Sessions live in the database, so any
/// replica answers for any session.
fn session(db: &impl Sql, sid: &str, now_ms: u64) -> Result<Caller, WebError> {
    let Some(found) = sessions::find(db, &hash_secret(sid), now_ms)? else {
        return Err(WebError::Unauthorized);
    };
    let role = match (found.role.as_str(), found.household_id, found.operator_id) {
        // The operator's role is read afresh: a revoked operator's session ends here.
        ("noc", _, Some(id)) => {
            match operators::active(db, id).map_err(|e| WebError::Internal(e.to_string()))? {
                Some(op) => Role::Noc(Staff::of(op)),
                None => return Err(WebError::Unauthorized),
            }
        }
        ("noc", _, None) => Role::Noc(Staff::token_holder()),
        ("household", Some(id), _) => Role::Household(id),
        _ => return Err(WebError::Unauthorized),
    };
    Ok(Caller {
        role,
        csrf: Some(found.csrf),
    })
}

/// The caller, who must be on the NOC team with at least `level`; returns them too.
///
/// # Errors
/// 401 without credentials, 403 for a subscriber or a role below `level` (counted in
/// `smtpguard_web_forbidden_total`).
pub async fn staff(
    state: &AppState,
    headers: &HeaderMap,
    level: Level,
) -> Result<(Staff, Caller), WebError> {
    let c = caller(state, headers).await?;
    match &c.role {
        Role::Noc(s) if s.level >= level => Ok((s.clone(), c)),
        _ => {
            state.counters.forbidden.fetch_add(1, Ordering::Relaxed);
            Err(WebError::Forbidden)
        }
    }
}

/// A form post by the NOC team: [`staff`] with `level`, then [`check_form`] with the
/// form's CSRF token.
///
/// # Errors
/// As [`staff`] and [`check_form`].
pub async fn staff_form(
    state: &AppState,
    headers: &HeaderMap,
    level: Level,
    csrf: &str,
) -> Result<(Staff, Caller), WebError> {
    let (staff, caller) = staff(state, headers, level).await?;
    check_form(state, headers, &caller, csrf)?;
    Ok((staff, caller))
}

/// A form post by a subscriber: [`subscriber`], then [`check_form`] with the form's CSRF
/// token; returns the household id too.
///
/// # Errors
/// As [`subscriber`] and [`check_form`].
pub async fn subscriber_form(
    state: &AppState,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<(i64, Caller), WebError> {
    let (id, caller) = subscriber(state, headers).await?;
    check_form(state, headers, &caller, csrf)?;
    Ok((id, caller))
}

/// The caller, who must be on the NOC team (any role: every NOC page can be read).
///
/// # Errors
/// 401 without credentials, 403 for a subscriber.
pub async fn noc(state: &AppState, headers: &HeaderMap) -> Result<Caller, WebError> {
    staff(state, headers, Level::Viewer).await.map(|(_, c)| c)
}

/// The caller, who must be a subscriber; returns the household id.
///
/// # Errors
/// 401 without credentials, 403 for the operator (who has the NOC pages).
pub async fn subscriber(state: &AppState, headers: &HeaderMap) -> Result<(i64, Caller), WebError> {
    let c = caller(state, headers).await?;
    match c.role {
        Role::Household(id) => Ok((id, c)),
        Role::Noc(_) => Err(WebError::Forbidden),
    }
}

/// Refuses a form post from another site: `Origin` (when the browser sends one) must name
/// this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    origin_host.eq_ignore_ascii_case(host)
}

/// Checks a form post: same origin and the session's CSRF token.
///
/// # Errors
/// [`WebError::Csrf`].
pub fn check_form(
    state: &AppState,
    headers: &HeaderMap,
    caller: &Caller,
    token: &str,
) -> Result<(), WebError> {
    let ok = same_origin(headers)
        && caller
            .csrf
            .as_deref()
            .is_some_and(|c| same_digest(&hash_secret(c), &hash_secret(token)));
    if ok {
        Ok(())
    } else {
        state.counters.csrf_failures.fetch_add(1, Ordering::Relaxed);
        Err(WebError::Csrf)
    }
}

/// A hidden CSRF field for a form.
pub fn csrf_field(caller: &Caller) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(caller.csrf.as_deref().unwrap_or(""))
    )
}

/// "Call customer service: {contact}." in the portal's words.
pub fn support_line(support: Option<&str>) -> String {
    match support {
        Some(c) => format!("Customer service can help: {c}."),
        None => "Customer service can help; the number is on your contract and your bill.".into(),
    }
}

fn login_page(error: Option<&str>, support: Option<&str>) -> String {
    let err = error
        .map(|e| format!(r#"<div class="flash err" role="alert">{}</div>"#, esc(e)))
        .unwrap_or_default();
    let body = format!(
        r#"<div class="login"><h1>Sign in</h1><p>Type the access code from the letter we sent you, for example <span class="mono">K7QM-3XWA-PT9E</span>. Capital or small letters and the dashes do not matter.</p>{err}
<form method="post" action="/login"><label for="token">Access code</label><input id="token" name="token" type="password" autocomplete="current-password" autocapitalize="characters" spellcheck="false" required>
<p hidden><label class="inline"><input type="checkbox" id="show-code" data-show-for="token"> Show the code while I type</label></p>
<p><button class="btn" type="submit" id="signin">Sign in</button></p></form>
<p class="muted">Lost the letter? {}</p></div>"#,
        esc(&support_line(support))
    );
    page("Sign in", Nav::None, None, &body)
}

/// `GET /login`.
pub async fn login_form(State(state): State<AppState>) -> Response {
    html_response(login_page(None, state.settings.support_contact.as_deref()))
}

/// The login form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /login`: starts a session for the operator or a household.
pub async fn login(
    State(state): State<AppState>,
    client: Option<Extension<Client>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let https = client.is_some_and(|Extension(c)| c.https);
    if !same_origin(&headers) {
        state.counters.csrf_failures.fetch_add(1, Ordering::Relaxed);
        return WebError::Csrf.page();
    }
    let token = form.token.trim().to_string();
    let op_hash = state.settings.operator_token_hash.clone();
    let now = state.now_ms();
    let ttl = state.settings.session_secs.saturating_mul(1000);
    let result = state
        .sql(move |db| start_session(db, &token, &op_hash, now, ttl))
        .await;
    match result {
        Ok(Some((role, sid))) => {
            let target = match role {
                Role::Noc(_) => "/noc",
                Role::Household(_) => "/my",
            };
            let cookie = format!(
                "{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
                state.settings.session_secs,
                secure_attr(&state, https)
            );
            let mut r = ([(header::SET_COOKIE, cookie)], Redirect::to(target)).into_response();
            r.extensions_mut().insert(AuthOutcome::Succeeded);
            r
        }
        Ok(None) => {
            state.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            let mut r = (
                StatusCode::UNAUTHORIZED,
                html_response(login_page(
                    Some("That access code is not valid."),
                    state.settings.support_contact.as_deref(),
                )),
            )
                .into_response();
            r.extensions_mut().insert(AuthOutcome::Failed);
            r
        }
        Err(e) => e.page(),
    }
}

/// Signs in with `token` at `now_ms`: a new session of `ttl_ms` for whoever it belongs to,
/// with its id (for the cookie); `None` for a token nobody holds. Both outcomes are
/// audited; expired sessions are removed on the way.
fn start_session(
    db: &crate::store::db::Db,
    token: &str,
    op_hash: &str,
    now_ms: u64,
    ttl_ms: u64,
) -> Result<Option<(Role, String)>, WebError> {
    let Some(role) = who(db, token, op_hash)? else {
        // Refused sign-ins are audited without the secret: by what it looked like.
        let kind = if token.starts_with("op_") {
            "operator secret"
        } else {
            "access code"
        };
        crate::audit::record(db, now_ms, "unknown", "sign_in", kind, "refused", "")?;
        return Ok(None);
    };
    let sid = new_secret("s_");
    let (name, household_id, operator_id) = match &role {
        Role::Noc(s) => ("noc", None, s.operator_id),
        Role::Household(id) => ("household", Some(*id), None),
    };
    let session = Session {
        role: name.to_string(),
        household_id,
        operator_id,
        csrf: new_secret("c_"),
    };
    let (actor, detail) = match &role {
        Role::Noc(s) => (s.name.clone(), s.level.as_str().to_string()),
        Role::Household(id) => (format!("household:{id}"), "subscriber".to_string()),
    };
    let hash = hash_secret(&sid);
    let expires_ms = now_ms.saturating_add(ttl_ms);
    db.transaction(|tx| {
        sessions::start(tx, &hash, &session, now_ms, expires_ms)?;
        crate::audit::record(tx, now_ms, &actor, "sign_in", "web", "ok", &detail)?;
        Ok::<_, WebError>(())
    })?;
    Ok(Some((role, sid)))
}

/// A form with only the CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    /// The token.
    pub csrf: String,
}

/// `POST /logout`: ends the session.
pub async fn logout(
    State(state): State<AppState>,
    client: Option<Extension<Client>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let https = client.is_some_and(|Extension(c)| c.https);
    let c = match caller(&state, &headers).await {
        Ok(c) => c,
        Err(_) => return Redirect::to("/login").into_response(),
    };
    if let Err(e) = check_form(&state, &headers, &c, &form.csrf) {
        return e.page();
    }
    if let Some(sid) = cookie(&headers, COOKIE).map(str::to_string) {
        let _ = state
            .sql(move |db| Ok(sessions::end(db, &hash_secret(&sid))?))
            .await;
    }
    let clear = format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        secure_attr(&state, https)
    );
    ([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response()
}

/// `; Secure` when cookies must be: the site is configured as public over https, or this
/// request came through a trusted proxy over https.
fn secure_attr(state: &AppState, https: bool) -> &'static str {
    if state.settings.secure_cookies || https {
        "; Secure"
    } else {
        ""
    }
}

/// How a request's credential fared; put on the response by the handler, read by
/// [`throttle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// A wrong token or access code.
    Failed,
    /// A login that started a session.
    Succeeded,
}

/// Where a request came from, as [`throttle`] resolved it (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The source address.
    pub ip: IpAddr,
    /// Whether a trusted proxy says the client used https.
    pub https: bool,
}

/// Login back-off knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffSettings {
    /// Failures an address may make before it has to wait.
    pub free_failures: u32,
    /// The wait after the failure that uses up the free ones; doubles with each further one.
    pub first_delay_ms: u64,
    /// The longest wait.
    pub max_delay_ms: u64,
    /// Most addresses tracked at once. Beyond it, the entry with the fewest failures (the
    /// oldest of those) is forgotten, so a spray of addresses evicts its own kind before a
    /// persistent guesser, and memory stays bounded.
    pub capacity: usize,
    /// An address with no failure for this long (and no wait pending) is forgotten.
    pub forget_after_ms: u64,
}

impl Default for BackoffSettings {
    fn default() -> Self {
        BackoffSettings {
            free_failures: 5,
            first_delay_ms: 1_000,
            max_delay_ms: 15 * 60_000,
            capacity: 4_096,
            forget_after_ms: 3_600_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Attempts {
    failures: u32,
    last_failure_ms: u64,
    wait_until_ms: u64,
}

/// Failed credentials per source address and the wait each must sit out: pure, time passed
/// in. See the module docs.
#[derive(Debug)]
pub struct LoginThrottle {
    settings: BackoffSettings,
    table: HashMap<IpAddr, Attempts>,
}

/// The table key of an address: IPv6 clients by their /64 (one household or host gets a
/// whole /64, so one address each would give an attacker 2^64 fresh starts).
fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
        v4 => v4,
    }
}

impl LoginThrottle {
    /// An empty table.
    pub fn new(settings: BackoffSettings) -> LoginThrottle {
        LoginThrottle {
            settings,
            table: HashMap::new(),
        }
    }

    /// Addresses tracked.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Whether `ip` may try a credential at `now_ms`.
    ///
    /// # Errors
    /// The milliseconds it still has to wait.
    pub fn check(&self, ip: IpAddr, now_ms: u64) -> Result<(), u64> {
        match self.table.get(&throttle_key(ip)) {
            Some(a) if a.wait_until_ms > now_ms => Err(a.wait_until_ms - now_ms),
            _ => Ok(()),
        }
    }

    /// Records a failed credential from `ip`; returns the wait it now has to sit out (0 while
    /// it has free failures left).
    pub fn failure(&mut self, ip: IpAddr, now_ms: u64) -> u64 {
        let key = throttle_key(ip);
        if !self.table.contains_key(&key) {
            self.make_room(now_ms);
        }
        let s = self.settings;
        let a = self.table.entry(key).or_insert(Attempts {
            failures: 0,
            last_failure_ms: now_ms,
            wait_until_ms: 0,
        });
        a.failures = a.failures.saturating_add(1);
        a.last_failure_ms = now_ms;
        let wait = match a.failures.checked_sub(s.free_failures) {
            None => 0,
            Some(over) => s
                .first_delay_ms
                .saturating_mul(1u64.checked_shl(over).unwrap_or(u64::MAX))
                .min(s.max_delay_ms),
        };
        a.wait_until_ms = now_ms.saturating_add(wait);
        wait
    }

    /// Forgets `ip` after a successful login.
    pub fn success(&mut self, ip: IpAddr) {
        self.table.remove(&throttle_key(ip));
    }

    /// Makes room for one more entry: drops the stale ones, and when still full the one with
    /// the fewest failures (the oldest of those).
    fn make_room(&mut self, now_ms: u64) {
        if self.table.len() < self.settings.capacity {
            return;
        }
        let forget = self.settings.forget_after_ms;
        self.table.retain(|_, a| {
            a.wait_until_ms > now_ms || now_ms.saturating_sub(a.last_failure_ms) < forget
        });
        while self.table.len() >= self.settings.capacity.max(1) {
            let victim = self
                .table
                .iter()
                .min_by_key(|(_, a)| (a.failures, a.last_failure_ms))
                .map(|(k, _)| *k);
            match victim {
                Some(k) => {
                    self.table.remove(&k);
                }
                None => break,
            }
        }
    }
}

/// The source address of `req`: the TCP peer, or the last `X-Forwarded-For` entry when the
/// peer is a trusted proxy (which also tells, by `X-Forwarded-Proto`, whether the client used
/// https). Without connection information every request shares the unspecified address, so
/// the back-off still holds.
fn client_of(req: &axum::extract::Request, trusted_proxies: &[IpAddr]) -> Client {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    if !trusted_proxies.contains(&peer) {
        return Client {
            ip: peer,
            https: false,
        };
    }
    let h = req.headers();
    let forwarded = h
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .last()
        .and_then(|v| v.trim().parse::<IpAddr>().ok());
    let https = h
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    Client {
        ip: forwarded.unwrap_or(peer),
        https,
    }
}

/// Middleware: resolves the [`Client`], makes an address in back-off wait (429 with
/// `Retry-After`) before any credential of it is looked at, and records the outcome the
/// handler put on the response.
pub async fn throttle(
    State(state): State<AppState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let client = client_of(&req, &state.settings.trusted_proxies);
    req.extensions_mut().insert(client);
    let presents_credential = req.headers().contains_key(header::AUTHORIZATION)
        || (req.method() == Method::POST && req.uri().path() == "/login");
    if presents_credential {
        let now = state.now_ms();
        let wait = match state.login_throttle.lock() {
            Ok(t) => t.check(client.ip, now).err(),
            Err(_) => Some(1_000),
        };
        if let Some(wait_ms) = wait {
            state
                .counters
                .login_throttled
                .fetch_add(1, Ordering::Relaxed);
            let secs = wait_ms.div_ceil(1000).max(1);
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed sign-ins from your address; try again in {secs} s\n"),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
    }
    let resp = next.run(req).await;
    if let Some(outcome) = resp.extensions().get::<AuthOutcome>().copied() {
        let now = state.now_ms();
        if let Ok(mut t) = state.login_throttle.lock() {
            match outcome {
                AuthOutcome::Failed => {
                    let wait = t.failure(client.ip, now);
                    if wait > 0 {
                        tracing::info!(client = %client.ip, wait_ms = wait, "sign-in back-off");
                    }
                }
                AuthOutcome::Succeeded => t.success(client.ip),
            }
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cookies_and_bearer_tokens_are_read() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sg_session=s_abc; b=2"),
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("s_abc"));
        assert_eq!(bearer(&h), Some("tok"));
    }

    #[test]
    fn foreign_origins_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_wait_starts_after_the_free_failures_and_doubles_up_to_the_cap() {
        let mut t = LoginThrottle::new(BackoffSettings::default());
        let a = ip("198.51.100.9");
        let waits: Vec<u64> = (0..17).map(|_| t.failure(a, 10_000)).collect();
        assert_eq!(&waits[..4], &[0, 0, 0, 0]);
        assert_eq!(
            &waits[4..],
            &[
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 512_000,
                900_000, 900_000, 900_000
            ]
        );
        assert_eq!(t.check(a, 10_000), Err(900_000));
        assert_eq!(t.check(a, 909_999), Err(1));
        assert_eq!(t.check(a, 910_000), Ok(()));
        // Other addresses are not affected; a success clears the address.
        assert_eq!(t.check(ip("198.51.100.10"), 10_000), Ok(()));
        t.success(a);
        assert_eq!(t.check(a, 10_000), Ok(()));
        assert!(t.is_empty());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let settings = BackoffSettings {
            free_failures: 1,
            ..BackoffSettings::default()
        };
        let mut t = LoginThrottle::new(settings);
        t.failure(ip("2001:db8:1:2::1"), 0);
        assert!(t.check(ip("2001:db8:1:2:ffff::9"), 0).is_err());
        assert!(t.check(ip("2001:db8:1:3::1"), 0).is_ok());
        t.failure(ip("::ffff:198.51.100.9"), 0);
        assert!(t.check(ip("198.51.100.9"), 0).is_err());
    }

    #[test]
    fn a_spray_of_addresses_stays_bounded_and_keeps_the_persistent_guesser() {
        let settings = BackoffSettings {
            capacity: 64,
            ..BackoffSettings::default()
        };
        let mut t = LoginThrottle::new(settings);
        let guesser = ip("203.0.113.66");
        for _ in 0..8 {
            t.failure(guesser, 1_000);
        }
        for i in 0..100_000u32 {
            t.failure(IpAddr::from(i.to_be_bytes()), 2_000 + u64::from(i));
            assert!(t.len() <= 64);
        }
        assert_eq!(t.len(), 64);
        assert!(
            t.check(guesser, 2_000).is_err(),
            "the guesser must still wait"
        );
        // Stale entries are dropped first once the table is full again.
        let later = 10_000_000;
        t.failure(ip("192.0.2.1"), later);
        assert_eq!(t.len(), 1);
    }

    /// Sessions live in the database: one replica signs in, another answers for the
    /// session; a wrong secret, an expired session and a revoked operator get nothing.
    #[test]
    fn sessions_work_on_any_replica_until_they_expire_or_their_operator_is_revoked() {
        use crate::store::db::tests::backends;
        use crate::store::Store;
        for (url, _g) in backends() {
            let one = Store::open_url(&url).unwrap().into_db();
            let two = Store::open_url(&url).unwrap().into_db();
            let op_hash = hash_secret("the-token-file");
            let (hh, token) = households::create(&*one, "Replica family", &[], 0).unwrap();
            let secret = operators::add(&*one, "olga", Level::Operator, 0).unwrap();
            let ttl = 60_000;

            let (role, sid) = start_session(&one, &token, &op_hash, 1_000, ttl)
                .unwrap()
                .unwrap();
            assert_eq!(role, Role::Household(hh));
            let caller = session(&*two, &sid, 2_000).unwrap();
            assert_eq!(caller.role, Role::Household(hh), "{url}");
            assert!(caller.csrf.is_some_and(|c| c.starts_with("c_")));
            // Expired, and an id nobody was given.
            assert!(matches!(
                session(&*two, &sid, 1_000 + ttl),
                Err(WebError::Unauthorized)
            ));
            assert!(matches!(
                session(&*two, "s_guess", 2_000),
                Err(WebError::Unauthorized)
            ));

            let (role, op_sid) = start_session(&two, &secret, &op_hash, 3_000, ttl)
                .unwrap()
                .unwrap();
            assert!(
                matches!(&role, Role::Noc(s) if s.name == "olga" && s.level == Level::Operator)
            );
            let (role, file_sid) = start_session(&two, "the-token-file", &op_hash, 3_000, ttl)
                .unwrap()
                .unwrap();
            assert_eq!(role, Role::Noc(Staff::token_holder()));
            assert_eq!(
                session(&*one, &file_sid, 4_000).unwrap().role,
                Role::Noc(Staff::token_holder())
            );
            // Revoked on one replica: the session ends on the other at its next request.
            assert!(session(&*two, &op_sid, 4_000).is_ok());
            operators::revoke(&*one, "olga", 5_000).unwrap();
            assert!(matches!(
                session(&*two, &op_sid, 6_000),
                Err(WebError::Unauthorized)
            ));
            assert!(start_session(&two, &secret, &op_hash, 6_000, ttl)
                .unwrap()
                .is_none());
            // Wrong secrets start nothing and are audited without the secret.
            for wrong in ["op_wrong", "hh_wrong", "ABCD-EFGH-JKMN"] {
                assert!(start_session(&one, wrong, &op_hash, 7_000, ttl)
                    .unwrap()
                    .is_none());
            }
            let refused = crate::audit::list(
                &*two,
                &crate::audit::Filter {
                    actor: Some("unknown".into()),
                    ..Default::default()
                },
                50,
            )
            .unwrap();
            assert_eq!(refused.len(), 4, "{url}");
            assert!(refused
                .iter()
                .all(|e| e.outcome == "refused" && !e.target.contains("wrong")));
            let ok = crate::audit::list(
                &*one,
                &crate::audit::Filter {
                    action: Some("sign_in".into()),
                    ..Default::default()
                },
                crate::audit::PAGE_MAX,
            )
            .unwrap()
            .iter()
            .filter(|e| e.outcome == "ok")
            .count();
            assert_eq!(ok, 3);
        }
    }

    struct NoPolicy;

    impl crate::web::PolicyPublisher for NoPolicy {
        fn publish(
            &self,
            _policy: smtpguard_protocol::Policy,
            _cpe_id: Option<String>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + '_>>
        {
            Box::pin(async { Err("not in this test".to_string()) })
        }
    }

    /// A web server over `db` on a free loopback port, until `stop` turns true.
    async fn serve_on(
        db: std::sync::Arc<crate::store::db::Db>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let state = AppState::new(
            db,
            crate::web::WebSettings::new("replica-test-token-0123"),
            std::sync::Arc::new(NoPolicy),
            std::sync::Arc::new(|| 1_000_000),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            crate::web::serve(listener, state, shutdown).await.unwrap();
        });
        (addr, server)
    }

    /// One HTTP/1.1 request; the status, the headers (names in lower case) and the body.
    async fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Vec<(String, String)>, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, body.to_string())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Two replicas on one PostgreSQL database: a sign-in on one is a session on the other,
    /// and a revocation on one ends it on the other; wrong credentials get nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_started_on_one_replica_is_honoured_and_ended_on_another() {
        use crate::store::Store;
        let url = tokio::task::spawn_blocking(smtpguard_pgtest::database)
            .await
            .unwrap();
        let (one, two) = tokio::task::spawn_blocking(move || {
            (
                Store::open_url(&url).unwrap().into_db(),
                Store::open_url(&url).unwrap().into_db(),
            )
        })
        .await
        .unwrap();
        assert_eq!(one.backend(), crate::store::db::Backend::Postgres);
        let db = one.clone();
        let (household_token, secret) = tokio::task::spawn_blocking(move || {
            let (_, token) = households::create(&*db, "Web family", &[], 0).unwrap();
            (
                token,
                operators::add(&*db, "vera", Level::Viewer, 0).unwrap(),
            )
        })
        .await
        .unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (a1, s1) = serve_on(one.clone(), stopped.clone()).await;
        let (a2, s2) = serve_on(two.clone(), stopped).await;
        let form = [("Content-Type", "application/x-www-form-urlencoded")];

        let login = |addr, token: String| async move {
            let (status, headers, _) =
                request(addr, "POST", "/login", &form, &format!("token={token}")).await;
            let cookie = header(&headers, "set-cookie")
                .and_then(|c| c.split(';').next())
                .map(str::to_string);
            (
                status,
                header(&headers, "location").map(str::to_string),
                cookie,
            )
        };
        let (status, location, cookie) = login(a1, secret.clone()).await;
        assert_eq!((status, location.as_deref()), (303, Some("/noc")));
        let vera = cookie.unwrap();
        let (status, _, body) =
            request(a2, "GET", "/noc/audit", &[("Cookie", vera.as_str())], "").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("vera") && body.contains("sign_in"), "{body}");

        // A subscriber's session is not a NOC session, on any replica.
        let (_, _, cookie) = login(a2, household_token).await;
        let subscriber = cookie.unwrap();
        let (status, _, _) = request(
            a1,
            "GET",
            "/noc/audit",
            &[("Cookie", subscriber.as_str())],
            "",
        )
        .await;
        assert_eq!(status, 403);

        // Wrong credentials.
        let (status, location, cookie) = login(a2, "op_wrong".into()).await;
        assert_eq!((status, location, cookie), (401, None, None));
        let (status, _, _) = request(
            a1,
            "GET",
            "/api/audit",
            &[("Authorization", "Bearer op_forged")],
            "",
        )
        .await;
        assert_eq!(status, 401);
        let (status, headers, _) = request(
            a1,
            "GET",
            "/noc/audit",
            &[("Cookie", "sg_session=s_forged")],
            "",
        )
        .await;
        assert_eq!(
            (status, header(&headers, "location")),
            (303, Some("/login")),
            "a forged session id is sent to sign in"
        );

        // Revoked through replica one: the session ends on replica two.
        let db = one.clone();
        tokio::task::spawn_blocking(move || operators::revoke(&*db, "vera", 2_000).unwrap())
            .await
            .unwrap();
        let (status, headers, _) =
            request(a2, "GET", "/noc/audit", &[("Cookie", vera.as_str())], "").await;
        assert_eq!(
            (status, header(&headers, "location")),
            (303, Some("/login"))
        );
        let (status, _, _) = request(
            a1,
            "GET",
            "/api/audit",
            &[("Authorization", &format!("Bearer {secret}"))],
            "",
        )
        .await;
        assert_eq!(status, 401);

        // The last handles close their PostgreSQL connections, which blocks: not on a task.
        stop.send_replace(true);
        s1.await.unwrap();
        s2.await.unwrap();
        tokio::task::spawn_blocking(move || drop((one, two)))
            .await
            .unwrap();
    }

    #[test]
    fn digest_comparison() {
        assert!(same_digest("abcd", "abcd"));
        assert!(!same_digest("abcd", "abce"));
        assert!(!same_digest("abcd", "abc"));
    }
}
