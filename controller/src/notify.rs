//! Notifications that are never lost: when a device turns infected, and when a release
//! reaches the router, the ISP's systems (a webhook) and the household (an e-mail through
//! the ISP's relay) are told, once.
//!
//! The ingest writes each event into the outbox (`store::notifications`) in the same
//! transaction that stores the message, so a crash cannot lose one. This task delivers
//! what is due: the webhook gets a JSON `POST` signed with HMAC-SHA256 over the body
//! (`X-Smtpguard-Signature: sha256=<hex>`, key from `webhook_secret_file`) and the outbox id
//! as `X-Smtpguard-Delivery` for receivers that deduplicate; the household gets a plain-text
//! e-mail naming the device and linking to the portal, through `smtp_relay` with STARTTLS
//! required (and AUTH when configured), unless it gave no address or opted out. A channel
//! that fails is retried with exponential back-off (1 s doubling up to 10 min) until
//! `give_up_hours`, then marked failed. Delivery states are in `/metrics`
//! (`smtpguard_notifications{channel,state}`). A crash between a delivery and its record
//! can repeat that one delivery (at least once); receivers can deduplicate by delivery id.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use sha2::Sha256;
use smtpguard_common::now_ms;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::ConfigError;
use crate::households;
use crate::store::db::Db;
use crate::store::notifications::{self, state, Pending};

/// Notifications handled per round.
const ROUND_MAX: usize = 50;

/// Longest wait between attempts.
const BACKOFF_MAX_MS: u64 = 600_000;

/// How long a finished notification is kept (30 days).
const KEEP_MS: u64 = 30 * 86_400_000;

/// How often finished notifications past [`KEEP_MS`] are removed.
const PRUNE_EVERY_MS: u64 = 3_600_000;

/// The `[notifications]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Where the webhook goes (`http://` or `https://`); none: no webhook.
    pub webhook_url: Option<String>,
    /// The HMAC key for the webhook's signature (required with `webhook_url`; not empty).
    pub webhook_secret_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for an `https://` webhook.
    pub webhook_ca_file: Option<PathBuf>,
    /// The ISP's SMTP relay, `host:port`; none: no e-mail.
    pub smtp_relay: Option<String>,
    /// CA certificates (PEM) trusted for the relay besides the system's.
    pub smtp_ca_file: Option<PathBuf>,
    /// AUTH user at the relay, if it wants one.
    pub smtp_username: Option<String>,
    /// File with the AUTH password.
    pub smtp_password_file: Option<PathBuf>,
    /// The sender of the e-mails.
    pub mail_from: String,
    /// The portal's address, for the link in the e-mail.
    pub portal_url: String,
    /// After how long undeliverable notifications are given up.
    pub give_up_hours: u32,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhook_url: None,
            webhook_secret_file: None,
            webhook_ca_file: None,
            smtp_relay: None,
            smtp_ca_file: None,
            smtp_username: None,
            smtp_password_file: None,
            mail_from: String::new(),
            portal_url: "http://127.0.0.1:8080".into(),
            give_up_hours: 72,
        }
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

fn read_secret(field: &'static str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
    let secret = text.trim().to_string();
    if secret.len() < 16 {
        return Err(invalid(
            field,
            format!("{}: at least 16 characters are needed", path.display()),
        ));
    }
    Ok(secret)
}

/// A webhook address taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Url, ConfigError> {
    let bad = |why: &str| invalid("notifications.webhook_url", why.to_string());
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad("must start with http:// or https://"));
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.to_string(),
            p.parse::<u16>().map_err(|_| bad("bad port"))?,
        ),
        _ => (authority.to_string(), if tls { 443 } else { 80 }),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@') {
        return Err(bad("bad host"));
    }
    let path = if path.is_empty() { "/" } else { path };
    if path.contains(|c: char| c.is_control() || c == ' ') {
        return Err(bad("bad path"));
    }
    Ok(Url {
        tls,
        host,
        port,
        path: path.to_string(),
    })
}

/// What the deliverer needs, checked at start.
struct Ready {
    webhook: Option<(Url, String, Option<Arc<rustls::ClientConfig>>)>,
    mail: Option<(AsyncSmtpTransport<Tokio1Executor>, lettre::message::Mailbox)>,
    portal_url: String,
    give_up_ms: u64,
}

impl NotifyConfig {
    /// Checks the section: a webhook needs a secret of 16 characters or more, e-mail needs
    /// a sender; files must be readable.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.ready().map(|_| ())
    }

    fn ready(&self) -> Result<Ready, ConfigError> {
        let webhook = match &self.webhook_url {
            None => None,
            Some(url) => {
                let url = parse_url(url)?;
                let Some(path) = &self.webhook_secret_file else {
                    return Err(invalid(
                        "notifications.webhook_secret_file",
                        "a webhook needs a signing secret",
                    ));
                };
                let secret = read_secret("notifications.webhook_secret_file", path)?;
                let tls = if url.tls {
                    let Some(ca) = &self.webhook_ca_file else {
                        return Err(invalid(
                            "notifications.webhook_ca_file",
                            "an https:// webhook needs the CA file to trust",
                        ));
                    };
                    Some(
                        smtpguard_common::tls_client_config(ca)
                            .map_err(|e| invalid("notifications.webhook_ca_file", e.to_string()))?,
                    )
                } else {
                    None
                };
                Some((url, secret, tls))
            }
        };
        let mail = match &self.smtp_relay {
            None => None,
            Some(relay) => {
                let field = "notifications.smtp_relay";
                let (host, port) = relay
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                    .ok_or_else(|| invalid(field, "must be host:port"))?;
                let from: lettre::message::Mailbox = self
                    .mail_from
                    .parse()
                    .map_err(|e| invalid("notifications.mail_from", format!("{e}")))?;
                let mut tls = TlsParameters::builder(host.clone());
                if let Some(ca) = &self.smtp_ca_file {
                    let pem = std::fs::read(ca).map_err(|e| {
                        invalid(
                            "notifications.smtp_ca_file",
                            format!("{}: {e}", ca.display()),
                        )
                    })?;
                    let cert = Certificate::from_pem(&pem)
                        .map_err(|e| invalid("notifications.smtp_ca_file", e.to_string()))?;
                    tls = tls.add_root_certificate(cert);
                }
                let tls = tls
                    .build_rustls()
                    .map_err(|e| invalid("notifications.smtp_ca_file", e.to_string()))?;
                let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                    .port(port)
                    .tls(Tls::Required(tls))
                    .timeout(Some(Duration::from_secs(30)));
                if let Some(user) = &self.smtp_username {
                    let Some(path) = &self.smtp_password_file else {
                        return Err(invalid(
                            "notifications.smtp_password_file",
                            "a user name needs a password file",
                        ));
                    };
                    let password = std::fs::read_to_string(path).map_err(|e| {
                        invalid(
                            "notifications.smtp_password_file",
                            format!("{}: {e}", path.display()),
                        )
                    })?;
                    builder = builder
                        .credentials(Credentials::new(user.clone(), password.trim().to_string()));
                }
                Some((builder.build(), from))
            }
        };
        Ok(Ready {
            webhook,
            mail,
            portal_url: self.portal_url.trim_end_matches('/').to_string(),
            give_up_ms: u64::from(self.give_up_hours.max(1)) * 3_600_000,
        })
    }
}

/// The webhook's signature header value for `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Writes the request head and body, then reads the start of the answer (4 KiB is plenty
/// for its status line).
async fn send_and_read<S>(mut s: S, head: &[u8], body: &[u8]) -> Result<Vec<u8>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(head).await.map_err(|e| e.to_string())?;
    s.write_all(body).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = (&mut s).take(4096).read_to_end(&mut answer).await;
    Ok(answer)
}

/// One HTTP/1.1 `POST`; `Ok` for a 2xx answer.
async fn post(
    url: &Url,
    tls: Option<&Arc<rustls::ClientConfig>>,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(), String> {
    let connect = tokio::net::TcpStream::connect((url.host.as_str(), url.port));
    let tcp = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: smtpguard-controller\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        url.path,
        url.host,
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let exchange = async {
        match tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                    .map_err(|e| format!("server name: {e}"))?;
                let s = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                send_and_read(s, request.as_bytes(), body).await
            }
            None => send_and_read(tcp, request.as_bytes(), body).await,
        }
    };
    let answer = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .map_err(|_| "no answer in 20 s".to_string())??;
    let status = std::str::from_utf8(&answer)
        .ok()
        .and_then(|t| t.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| "no HTTP status in the answer".to_string())?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

fn webhook_body(p: &Pending, contact: Option<&households::Contact>, portal: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "delivery_id": p.id,
        "event": p.event,
        "cpe_id": p.cpe_id,
        "mac": p.mac,
        "device": p.device,
        "detail": p.detail,
        "at_ms": p.at_ms,
        "household_id": contact.map(|c| c.household_id),
        "household": contact.map(|c| c.name.clone()),
        "portal_url": format!("{portal}/my"),
    }))
    .unwrap_or_default()
}

/// The e-mail's subject and text, in plain words.
pub fn mail_text(p: &Pending, household: &str, portal: &str) -> (String, String) {
    if p.event == notifications::Event::Released.as_str() {
        (
            format!("Your device {} can send e-mail again", p.device),
            format!(
                "Hello {household},\n\nthe restriction on {} ({}) has been lifted by your router. \
                 If it starts sending junk e-mail again, the router will stop it again.\n\n\
                 Your devices: {portal}/my\n",
                p.device, p.mac
            ),
        )
    } else {
        (
            format!("A device in your home is sending junk e-mail: {}", p.device),
            format!(
                "Hello {household},\n\nyour router noticed that {} ({}) is sending junk e-mail, \
                 which usually means it has been taken over by malicious software. To protect \
                 you and others, your router has limited only this device's e-mail sending; \
                 everything else keeps working, and your own e-mail program is not affected.\n\n\
                 What it saw: {}\n\n\
                 What to do, and how to ask for the restriction to be lifted once the device is \
                 clean: {portal}/my\n\n\
                 This message was sent automatically. Questions: reply to this e-mail or call \
                 your provider's support line.\n",
                p.device, p.mac, p.detail
            ),
        )
    }
}

fn backoff_ms(attempts: u32) -> u64 {
    1000u64
        .saturating_mul(1u64 << attempts.min(20))
        .min(BACKOFF_MAX_MS)
}

/// One delivery round of one notification: the channels still pending.
async fn deliver(
    ready: &Ready,
    p: &mut Pending,
    contact: Option<households::Contact>,
) -> Option<String> {
    let mut error = None;
    if p.webhook == state::PENDING {
        match &ready.webhook {
            None => p.webhook = state::OFF.into(),
            Some((url, secret, tls)) => {
                let body = webhook_body(p, contact.as_ref(), &ready.portal_url);
                let headers = [
                    ("X-Smtpguard-Signature", signature(secret, &body)),
                    ("X-Smtpguard-Delivery", p.id.to_string()),
                    ("X-Smtpguard-Event", p.event.clone()),
                ];
                match post(url, tls.as_ref(), &headers, &body).await {
                    Ok(()) => p.webhook = state::SENT.into(),
                    Err(e) => error = Some(format!("webhook: {e}")),
                }
            }
        }
    }
    if p.email == state::PENDING {
        let to = contact
            .as_ref()
            .filter(|c| c.notify_email)
            .and_then(|c| Some((c.email.clone()?, c.name.clone())));
        match (&ready.mail, to) {
            (None, _) | (_, None) => p.email = state::OFF.into(),
            (Some((transport, from)), Some((email, name))) => {
                let (subject, text) = mail_text(p, &name, &ready.portal_url);
                let message = email
                    .parse::<lettre::message::Mailbox>()
                    .map_err(|e| e.to_string())
                    .and_then(|to| {
                        Message::builder()
                            .from(from.clone())
                            .to(to)
                            .subject(subject)
                            .header(ContentType::TEXT_PLAIN)
                            .body(text)
                            .map_err(|e| e.to_string())
                    });
                match message {
                    Err(e) => {
                        // An address that cannot be mailed will not get better.
                        p.email = state::FAILED.into();
                        error = Some(format!("e-mail: {e}"));
                    }
                    Ok(m) => match transport.send(m).await {
                        Ok(_) => p.email = state::SENT.into(),
                        Err(e) => {
                            error = Some(format!("e-mail: {e}"));
                        }
                    },
                }
            }
        }
    }
    error
}

/// Runs `f` with the deliverer's database (either backend), on the blocking pool.
async fn on_db<T: Send + 'static>(
    db: &Arc<Db>,
    f: impl FnOnce(&Db) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || f(&db))
        .await
        .map_err(|e| e.to_string())?
}

/// Runs the deliverer until `stop` turns true. Opens the database at `url` itself
/// ([`crate::config::Config::database_url`]).
///
/// # Errors
/// [`ConfigError`] when the section does not validate (checked before anything runs).
pub async fn run(
    config: NotifyConfig,
    url: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ConfigError> {
    let ready = config.ready()?;
    let opened = tokio::task::spawn_blocking(move || crate::web::open_db_url(&url)).await;
    let conn = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => return Err(invalid("database", e.to_string())),
        Err(e) => return Err(invalid("database", e.to_string())),
    };
    let mut last_prune = 0u64;
    loop {
        if *stop.borrow() {
            // Closing PostgreSQL connections blocks, which a runtime thread must not do.
            let _ = tokio::task::spawn_blocking(move || drop(conn)).await;
            return Ok(());
        }
        let now = now_ms();
        let prune = now.saturating_sub(last_prune) > PRUNE_EVERY_MS;
        if prune {
            last_prune = now;
        }
        let loaded = on_db(&conn, move |db| {
            if prune {
                notifications::prune(db, now.saturating_sub(KEEP_MS)).map_err(|e| e.to_string())?;
            }
            let rows = notifications::due(db, now, ROUND_MAX).map_err(|e| e.to_string())?;
            rows.into_iter()
                .map(|p| {
                    let contact =
                        households::contact_for_cpe(db, &p.cpe_id).map_err(|e| e.to_string())?;
                    Ok((p, contact))
                })
                .collect::<Result<Vec<_>, String>>()
        })
        .await;
        let batch = loaded.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "notification outbox unreadable; retrying");
            Vec::new()
        });
        let idle = batch.is_empty();
        for (mut p, contact) in batch {
            let error = deliver(&ready, &mut p, contact).await;
            let pending = p.webhook == state::PENDING || p.email == state::PENDING;
            p.attempts = p.attempts.saturating_add(1);
            if pending && now_ms().saturating_sub(p.at_ms) > ready.give_up_ms {
                for s in [&mut p.webhook, &mut p.email] {
                    if s == state::PENDING {
                        *s = state::FAILED.into();
                    }
                }
                tracing::error!(id = p.id, error = ?error, "notification given up");
            } else if let Some(e) = &error {
                tracing::warn!(id = p.id, attempts = p.attempts, error = %e, "notification not delivered yet");
            } else {
                tracing::info!(id = p.id, event = %p.event, cpe_id = %p.cpe_id, webhook = %p.webhook, email = %p.email, "notification delivered");
            }
            let next = now_ms().saturating_add(backoff_ms(p.attempts.saturating_sub(1)));
            let saved = on_db(&conn, move |db| {
                notifications::record_round(db, &p, next, error.as_deref())
                    .map_err(|e| e.to_string())
            })
            .await;
            if let Err(e) = saved {
                tracing::warn!(error = %e, "could not record a notification round");
            }
        }
        if idle {
            tokio::select! {
                _ = stop.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_taken_apart_or_refused() {
        let u = parse_url("https://crm.isp.example/hooks/sg?x=1").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "crm.isp.example", 443, "/hooks/sg?x=1")
        );
        let u = parse_url("http://127.0.0.1:9000").unwrap();
        assert_eq!((u.port, u.path.as_str()), (9000, "/"));
        let u = parse_url("http://[::1]:8443/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8443));
        for bad in [
            "ftp://x",
            "http://",
            "http://a b/",
            "http://h:99999/",
            "http://u@h/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(backoff_ms(0), 1000);
        assert_eq!(backoff_ms(3), 8000);
        assert_eq!(backoff_ms(40), BACKOFF_MAX_MS);
    }

    #[test]
    fn a_webhook_without_a_real_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let c = NotifyConfig {
            webhook_url: Some("http://127.0.0.1:9/".into()),
            ..NotifyConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("webhook_secret_file"));
        let c = NotifyConfig {
            webhook_secret_file: Some(short),
            ..c
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("16 characters"));
        let c = NotifyConfig {
            smtp_relay: Some("relay.isp.example:587".into()),
            mail_from: "not an address".into(),
            ..NotifyConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("mail_from"));
    }

    #[test]
    fn the_mail_names_the_device_in_plain_words() {
        let p = Pending {
            id: 1,
            event: "infected".into(),
            cpe_id: "cpe-1".into(),
            mac: "02:00:00:00:00:05".into(),
            device: "old-pc".into(),
            detail: "57 distinct mail servers in 10 min".into(),
            at_ms: 0,
            webhook: state::PENDING.into(),
            email: state::PENDING.into(),
            attempts: 0,
        };
        let (subject, text) = mail_text(&p, "The Müller family", "https://my.isp.example");
        assert!(subject.contains("old-pc"));
        assert!(text.contains("Hello The Müller family"));
        assert!(text.contains("https://my.isp.example/my"));
        assert!(!text.contains("EHLO") && !text.contains("SYN"));
    }
}
