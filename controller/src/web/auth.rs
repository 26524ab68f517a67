//! Who is calling: the operator (NOC) or one household, from an `Authorization: Bearer`
//! token (API) or a session cookie (pages), plus sessions and CSRF.
//!
//! Tokens and session ids are stored only as SHA-256 hashes. The session cookie is
//! `HttpOnly; SameSite=Strict`; every form carries the session's CSRF token, and a form post
//! whose `Origin` names another site is refused even before that.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use rusqlite::{params, OptionalExtension};
use serde::Deserialize;

use super::html::{esc, page, Nav};
use super::{html_response, AppState, WebError};
use crate::households::{self, hash_secret, new_secret};

/// Name of the session cookie.
pub const COOKIE: &str = "sg_session";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The NOC operator.
    Noc,
    /// A subscriber of this household.
    Household(i64),
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
/// [`WebError::Unauthorized`] when neither is valid.
pub async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, WebError> {
    if let Some(token) = bearer(headers) {
        let token = token.to_string();
        let op_hash = state.settings.operator_token_hash.clone();
        let found = state
            .db(move |conn| {
                if same_digest(&hash_secret(&token), &op_hash) {
                    return Ok(Some(Role::Noc));
                }
                Ok(households::authenticate(conn, &token)?.map(Role::Household))
            })
            .await?;
        return match found {
            Some(role) => Ok(Caller { role, csrf: None }),
            None => {
                state.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                Err(WebError::Unauthorized)
            }
        };
    }
    let Some(sid) = cookie(headers, COOKIE).map(str::to_string) else {
        return Err(WebError::Unauthorized);
    };
    let now = state.now_ms();
    state
        .db(move |conn| {
            let row: Option<(String, Option<i64>, String)> = conn
                .query_row(
                    "SELECT role, household_id, csrf FROM web_sessions
                     WHERE session_hash = ?1 AND expires_ms > ?2",
                    params![hash_secret(&sid), i64::try_from(now).unwrap_or(i64::MAX)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            match row {
                Some((role, hh, csrf)) => {
                    let role = match (role.as_str(), hh) {
                        ("noc", _) => Role::Noc,
                        ("household", Some(id)) => Role::Household(id),
                        _ => return Err(WebError::Unauthorized),
                    };
                    Ok(Caller {
                        role,
                        csrf: Some(csrf),
                    })
                }
                None => Err(WebError::Unauthorized),
            }
        })
        .await
}

/// The caller, who must be the operator.
///
/// # Errors
/// 401 without credentials, 403 for a subscriber.
pub async fn noc(state: &AppState, headers: &HeaderMap) -> Result<Caller, WebError> {
    let c = caller(state, headers).await?;
    match c.role {
        Role::Noc => Ok(c),
        Role::Household(_) => Err(WebError::Forbidden),
    }
}

/// The caller, who must be a subscriber; returns the household id.
///
/// # Errors
/// 401 without credentials, 403 for the operator (who has the NOC pages).
pub async fn subscriber(state: &AppState, headers: &HeaderMap) -> Result<(i64, Caller), WebError> {
    let c = caller(state, headers).await?;
    match c.role {
        Role::Household(id) => Ok((id, c)),
        Role::Noc => Err(WebError::Forbidden),
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

fn login_page(error: Option<&str>) -> String {
    let err = error
        .map(|e| format!(r#"<div class="flash err" role="alert">{}</div>"#, esc(e)))
        .unwrap_or_default();
    let body = format!(
        r#"<div class="login"><h1>Sign in</h1><p class="muted">Use the access code from your welcome letter, or your operator token.</p>{err}
<form method="post" action="/login"><label for="token">Access code</label><input id="token" name="token" type="password" autocomplete="current-password" required>
<p><button class="btn" type="submit" id="signin">Sign in</button></p></form></div>"#
    );
    page("Sign in", Nav::None, None, &body)
}

/// `GET /login`.
pub async fn login_form() -> Response {
    html_response(login_page(None))
}

/// The login form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /login`: starts a session for the operator or a household.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        state.counters.csrf_failures.fetch_add(1, Ordering::Relaxed);
        return WebError::Csrf.page();
    }
    let token = form.token.trim().to_string();
    let op_hash = state.settings.operator_token_hash.clone();
    let now = state.now_ms();
    let ttl = state.settings.session_secs.saturating_mul(1000);
    let result = state
        .db(move |conn| {
            let role = if same_digest(&hash_secret(&token), &op_hash) {
                Some(Role::Noc)
            } else {
                households::authenticate(conn, &token)?.map(Role::Household)
            };
            let Some(role) = role else { return Ok(None) };
            let sid = new_secret("s_");
            let csrf = new_secret("c_");
            let (name, hh) = match role {
                Role::Noc => ("noc", None),
                Role::Household(id) => ("household", Some(id)),
            };
            let now_i = i64::try_from(now).unwrap_or(i64::MAX);
            conn.execute("DELETE FROM web_sessions WHERE expires_ms <= ?1", [now_i])?;
            conn.execute(
                "INSERT INTO web_sessions (session_hash, role, household_id, csrf, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    hash_secret(&sid),
                    name,
                    hh,
                    csrf,
                    now_i,
                    i64::try_from(now.saturating_add(ttl)).unwrap_or(i64::MAX)
                ],
            )?;
            Ok(Some((role, sid)))
        })
        .await;
    match result {
        Ok(Some((role, sid))) => {
            let target = match role {
                Role::Noc => "/noc",
                Role::Household(_) => "/my",
            };
            let secure = if state.settings.secure_cookies {
                "; Secure"
            } else {
                ""
            };
            let cookie = format!(
                "{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                state.settings.session_secs
            );
            ([(header::SET_COOKIE, cookie)], Redirect::to(target)).into_response()
        }
        Ok(None) => {
            state.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            (
                axum::http::StatusCode::UNAUTHORIZED,
                html_response(login_page(Some("That access code is not valid."))),
            )
                .into_response()
        }
        Err(e) => e.page(),
    }
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
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let c = match caller(&state, &headers).await {
        Ok(c) => c,
        Err(_) => return Redirect::to("/login").into_response(),
    };
    if let Err(e) = check_form(&state, &headers, &c, &form.csrf) {
        return e.page();
    }
    if let Some(sid) = cookie(&headers, COOKIE).map(str::to_string) {
        let _ = state
            .db(move |conn| {
                conn.execute(
                    "DELETE FROM web_sessions WHERE session_hash = ?1",
                    [hash_secret(&sid)],
                )?;
                Ok(())
            })
            .await;
    }
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response()
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

    #[test]
    fn digest_comparison() {
        assert!(same_digest("abcd", "abcd"));
        assert!(!same_digest("abcd", "abce"));
        assert!(!same_digest("abcd", "abc"));
    }
}
