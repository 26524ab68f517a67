//! The web server inside `smtpguard-controller serve`: its configuration section (`[web]`),
//! the operator token, policy publishing backed by [`crate::policy`] (sign with the
//! controller key, store, publish retained on the broker), and commands to one router
//! backed by [`crate::commands`] (sign, store, publish not retained).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use smtpguard_protocol::{Policy, SafetyContext};

use super::{open_db_url, system_clock, AppState, PolicyPublisher, WebError, WebSettings};
use crate::config::{BrokerConfig, Config};
use crate::policy::{self, Target};

/// The `[web]` section of the controller configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Serve the NOC, the portal, the API and `/metrics` on `http_listen`.
    pub enabled: bool,
    /// File holding the operator (NOC) token, one line. The environment variable
    /// `SMTPGUARD_OPERATOR_TOKEN`, when set, wins.
    pub operator_token_file: PathBuf,
    /// The URL people reach the site at, e.g. `https://noc.isp.example` (for cookies; the
    /// server itself speaks plain HTTP behind the TLS proxy).
    pub public_url: Option<String>,
    /// Mark cookies `Secure`. Not set: on when `public_url` is `https://`. Cookies are also
    /// `Secure` on a request a trusted proxy says came over https.
    pub secure_cookies: Option<bool>,
    /// Reverse proxies (their addresses) whose `X-Forwarded-For` names the client for the
    /// login back-off and whose `X-Forwarded-Proto: https` makes cookies `Secure`.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Login lifetime.
    pub session_secs: u64,
    /// Fleet correlation: destination-server Jaccard index that links two devices.
    pub campaign_min_jaccard: f64,
    /// How often the rollout watch checks the rollout in its canary stage (seconds).
    pub rollout_check_secs: u64,
    /// Portal times for households that chose no time zone: an IANA name such as
    /// `Europe/Berlin`.
    pub portal_time_zone: String,
    /// Whom subscribers call or write to, shown in the portal, e.g. `0800 123 456 (free,
    /// daily 8-20 h) or help@isp.example`.
    pub support_contact: Option<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            operator_token_file: PathBuf::from("/etc/smtpguard/operator.token"),
            public_url: None,
            secure_cookies: None,
            trusted_proxies: Vec::new(),
            session_secs: 12 * 3600,
            campaign_min_jaccard: 0.3,
            rollout_check_secs: 10,
            portal_time_zone: "UTC".into(),
            support_contact: None,
        }
    }
}

impl WebConfig {
    /// Checks ranges.
    ///
    /// # Errors
    /// [`WebError::BadRequest`] naming the field.
    pub fn validate(&self) -> Result<(), WebError> {
        if !(60..=30 * 86_400).contains(&self.session_secs) {
            return Err(WebError::BadRequest(
                "config field `web.session_secs`: must be 60-2592000".into(),
            ));
        }
        if let Some(url) = &self.public_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(WebError::BadRequest(
                    "config field `web.public_url`: must start with https:// or http://".into(),
                ));
            }
        }
        if !(1..=3600).contains(&self.rollout_check_secs) {
            return Err(WebError::BadRequest(
                "config field `web.rollout_check_secs`: must be 1-3600".into(),
            ));
        }
        if !(self.campaign_min_jaccard > 0.0 && self.campaign_min_jaccard <= 1.0) {
            return Err(WebError::BadRequest(
                "config field `web.campaign_min_jaccard`: must be in (0, 1]".into(),
            ));
        }
        if super::html::Zone::named(&self.portal_time_zone).is_none() {
            return Err(WebError::BadRequest(format!(
                "config field `web.portal_time_zone`: {:?} is not a time zone this system knows (e.g. Europe/Berlin)",
                self.portal_time_zone
            )));
        }
        if self.support_contact.as_ref().is_some_and(|c| c.len() > 300) {
            return Err(WebError::BadRequest(
                "config field `web.support_contact`: at most 300 characters".into(),
            ));
        }
        Ok(())
    }

    /// The operator token from the environment or the token file.
    ///
    /// # Errors
    /// [`WebError::BadRequest`] when neither gives a token of at least 16 characters.
    pub fn operator_token(&self) -> Result<String, WebError> {
        let token = match std::env::var("SMTPGUARD_OPERATOR_TOKEN") {
            Ok(t) => t,
            Err(_) => std::fs::read_to_string(&self.operator_token_file).map_err(|e| {
                WebError::BadRequest(format!(
                    "config field `web.operator_token_file`: {}: {e}",
                    self.operator_token_file.display()
                ))
            })?,
        };
        let token = token.trim().to_string();
        if token.len() < 16 {
            return Err(WebError::BadRequest(
                "the operator token must be at least 16 characters".into(),
            ));
        }
        Ok(token)
    }

    /// Whether cookies are always `Secure`: as configured, else when the public URL is
    /// https.
    pub fn secure_cookies(&self) -> bool {
        self.secure_cookies.unwrap_or_else(|| {
            self.public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
        })
    }

    /// Settings for [`AppState`].
    ///
    /// # Errors
    /// As [`WebConfig::operator_token`].
    pub fn settings(&self) -> Result<WebSettings, WebError> {
        let mut s = WebSettings::new(&self.operator_token()?);
        s.secure_cookies = self.secure_cookies();
        s.trusted_proxies = self.trusted_proxies.clone();
        s.session_secs = self.session_secs;
        s.campaigns.min_jaccard = self.campaign_min_jaccard;
        s.portal_time_zone = self.portal_time_zone.clone();
        s.support_contact = self.support_contact.clone();
        Ok(s)
    }
}

/// Signs with the controller key, stores (the version from the database's counter, so
/// replicas never repeat one), and publishes retained through the broker.
pub struct BrokerPolicy {
    db: Arc<crate::store::db::Db>,
    key_path: PathBuf,
    broker: BrokerConfig,
    client_id: String,
    safety: SafetyContext,
    clock: super::Clock,
}

impl BrokerPolicy {
    /// From the controller configuration, storing into `db` (the web server's database).
    pub fn new(config: &Config, db: Arc<crate::store::db::Db>) -> BrokerPolicy {
        BrokerPolicy {
            db,
            key_path: config.policy_key_path.clone(),
            broker: config.broker.clone(),
            client_id: format!("{}-web", config.broker.client_id),
            safety: config.safety_context(),
            clock: system_clock(),
        }
    }
}

impl PolicyPublisher for BrokerPolicy {
    fn publish(
        &self,
        policy: Policy,
        cpe_id: Option<String>,
    ) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send + '_>> {
        Box::pin(async move {
            let db = Arc::clone(&self.db);
            let key_path = self.key_path.clone();
            let now = (self.clock)();
            let target = cpe_id.map_or(Target::Fleet, Target::Cpe);
            let safety = self.safety.clone();
            let stored = tokio::task::spawn_blocking(move || {
                let key =
                    smtpguard_protocol::keys::read_secret(&key_path).map_err(|e| e.to_string())?;
                policy::sign_in(&db, &key, policy, &target, &safety, now).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())??;
            policy::publish(
                &self.broker,
                &self.client_id,
                std::slice::from_ref(&stored),
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| {
                format!(
                    "signed as version {} but not published: {e}",
                    stored.version
                )
            })?;
            Ok(stored.version)
        })
    }
}

/// Sends commands: signs with the controller key, stores, and publishes (not retained)
/// through the broker ([`crate::commands::issue_and_send`]).
pub struct BrokerCommands {
    db_path: PathBuf,
    key_path: PathBuf,
    broker: BrokerConfig,
    client_id: String,
    config: crate::config::CommandsConfig,
    clock: super::Clock,
}

impl BrokerCommands {
    /// From the controller configuration.
    pub fn new(config: &Config) -> BrokerCommands {
        BrokerCommands {
            db_path: config.db_path.clone(),
            key_path: config.policy_key_path.clone(),
            broker: config.broker.clone(),
            client_id: format!("{}-commands", config.broker.client_id),
            config: config.commands,
            clock: system_clock(),
        }
    }
}

impl super::CommandSender for BrokerCommands {
    fn send(
        &self,
        cpe_id: String,
        order: crate::commands::Order,
        release_request_id: Option<i64>,
    ) -> Pin<Box<dyn Future<Output = Result<u64, crate::commands::CommandError>> + Send + '_>> {
        Box::pin(crate::commands::issue_and_send(
            &self.db_path,
            &self.key_path,
            &self.broker,
            &self.client_id,
            self.config,
            cpe_id,
            order,
            release_request_id,
            (self.clock)(),
        ))
    }
}

/// Binds `config.http_listen` and serves until `shutdown` resolves.
///
/// # Errors
/// [`WebError`] when the configuration, the database or the listener fails.
pub async fn run(
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebError> {
    let web = &config.web;
    web.validate()?;
    let mut settings = web.settings()?;
    settings.policy_safety = config.safety_context();
    let db = open_db_url(&config.database_url())?;
    let state = AppState::new(
        Arc::clone(&db),
        settings,
        Arc::new(BrokerPolicy::new(config, db)),
        system_clock(),
    )
    .with_commands(Arc::new(BrokerCommands::new(config)));
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| WebError::Internal(format!("binding {}: {e}", config.http_listen)))?;
    // The rollout watch runs as long as the web server (its state is in the database), on
    // one replica at a time ([`crate::lead`]).
    let (_stop_watch, watch_stopped) = tokio::sync::watch::channel(false);
    let watch = {
        let (state, every) = (state.clone(), Duration::from_secs(web.rollout_check_secs));
        tokio::spawn(crate::lead::one_at_a_time(
            config.database_url(),
            "rollout-watch",
            watch_stopped,
            move |_| crate::rollout::watch(state.clone(), every),
        ))
    };
    let served = super::serve(listener, state, shutdown)
        .await
        .map_err(|e| WebError::Internal(e.to_string()));
    watch.abort();
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_secure_when_the_public_url_is_https_unless_configured_otherwise() {
        let parse = |text: &str| {
            let c: WebConfig = toml::from_str(text).unwrap();
            c.validate().unwrap();
            c.secure_cookies()
        };
        assert!(!parse(""));
        assert!(!parse("public_url = \"http://127.0.0.1:8080\""));
        assert!(parse("public_url = \"https://noc.isp.example\""));
        assert!(!parse(
            "public_url = \"https://noc.isp.example\"\nsecure_cookies = false"
        ));
        assert!(parse("secure_cookies = true"));
        let c: WebConfig = toml::from_str("public_url = \"noc.isp.example\"").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("web.public_url"), "{err}");
    }
}
