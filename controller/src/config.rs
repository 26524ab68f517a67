//! The controller's configuration: a TOML file read into typed structs, every field with a
//! default, validated once by [`Config::load`] with an error naming the field.
//!
//! ```toml
//! db_path = "/var/lib/smtpguard/controller.db"
//! # Or PostgreSQL, shared by several controller replicas (`sqlite:PATH` is SQLite again).
//! # Without it the database is the SQLite file db_path; db_path's directory stays the data
//! # directory either way (the embedded broker's password file). A password in the URL is
//! # never logged, and neither is the URL with it (see `DatabaseUrl`).
//! # database = "postgres://smtpguard:secret@db.isp.example:5432/smtpguard"
//! policy_key_path = "/etc/smtpguard/policy.key"
//! http_listen = "127.0.0.1:8080"
//!
//! [broker]
//! # Embedded broker (the default): where it listens. Loopback unless set; routers need an
//! # address they can reach, e.g. "0.0.0.0:1883" (behind a TLS terminator for mqtts://).
//! embedded_listen = "127.0.0.1:1883"
//! # Or an external broker; when set, nothing is embedded.
//! # url = "mqtt://mosquitto.example:1883"   (mqtts:// for TLS)
//! username = "controller"
//! # At least 12 characters and not a well-known default. With the embedded broker it may be
//! # left out: a random one is made at first start and kept (mode 0600) in
//! # `broker-password` next to db_path. An external broker needs it set.
//! # password = "..."
//! client_id = "smtpguard-controller-1"
//!
//! [policy]
//! # The ISP's mail relays, as the routers have them in `isp_relays`: no policy the NOC signs
//! # may carry an indicator covering one (nor one of its own `allow_relays`).
//! isp_relays = ["198.51.100.25:587"]
//! # The addresses routers reach the broker at (what their broker_url resolves to), besides
//! # `broker.embedded_listen` and `broker.url` when those are IP addresses.
//! agent_broker_addresses = ["192.0.2.10"]
//!
//! [web]
//! operator_token_file = "/etc/smtpguard/operator.token"
//! # Cookies are `Secure` when this is https:// (or set secure_cookies = true | false).
//! public_url = "https://noc.isp.example"
//! # A TLS proxy in front: its X-Forwarded-For names the client for the login back-off.
//! trusted_proxies = ["127.0.0.1"]
//!
//! [ingest]
//! batch_max = 512
//! batch_linger_ms = 10
//! max_age_secs = 604800
//! max_future_secs = 300
//! shared_subscription = true
//!
//! [retention]
//! # Days each kind of history is kept; 0 keeps it forever. Devices' current state, the
//! # newest alert and verdict change of each device and the audit log are never deleted.
//! telemetry_days = 14
//! connections_days = 180
//! alerts_days = 365
//! verdict_history_days = 365
//! interval_minutes = 60
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use smtpguard_protocol::policy::RelayRule;
use smtpguard_protocol::SafetyContext;

/// The configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said.
        source: Box<toml::de::Error>,
    },
    /// A field has a value that cannot work.
    #[error("config field `{field}`: {problem}")]
    Invalid {
        /// Dotted field name.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// The whole controller configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// SQLite database file, used when `database` is not set; its directory is the data
    /// directory either way ([`Config::data_dir`]).
    pub db_path: PathBuf,
    /// The database by URL: `postgres://user[:password]@host:port/db` or `sqlite:PATH`;
    /// `None`: the SQLite file `db_path`. See [`Config::database_url`].
    pub database: Option<DatabaseUrl>,
    /// The policy-signing key (made by `smtpguard-controller keygen`).
    pub policy_key_path: PathBuf,
    /// Where the web server listens.
    pub http_listen: SocketAddr,
    /// MQTT broker.
    pub broker: BrokerConfig,
    /// What no signed policy may cut off.
    pub policy: PolicyConfig,
    /// Ingest tuning.
    pub ingest: IngestConfig,
    /// Web UI, API and `/metrics` on `http_listen`.
    pub web: crate::web::live::WebConfig,
    /// Commands to one router (release, block).
    pub commands: CommandsConfig,
    /// Webhook and e-mail notifications (`crate::notify`).
    pub notifications: crate::notify::NotifyConfig,
    /// How long history is kept (`crate::store::retention`).
    pub retention: RetentionConfig,
}

/// The `[commands]` section: defaults of the commands the NOC and the API send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// How long a released device is left alone by its router (approving a release request
    /// sends this; the API may name its own).
    pub release_grace_secs: u32,
    /// How long a block sent from the API lasts when the call names no time.
    pub block_ttl_secs: u32,
    /// How long after issuing a command its router still accepts it.
    pub expiry_secs: u32,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            release_grace_secs: 24 * 3600,
            block_ttl_secs: 24 * 3600,
            expiry_secs: 3600,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            db_path: PathBuf::from("/var/lib/smtpguard/controller.db"),
            database: None,
            policy_key_path: PathBuf::from("/etc/smtpguard/policy.key"),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            broker: BrokerConfig::default(),
            policy: PolicyConfig::default(),
            ingest: IngestConfig::default(),
            web: crate::web::live::WebConfig::default(),
            commands: CommandsConfig::default(),
            notifications: crate::notify::NotifyConfig::default(),
            retention: RetentionConfig::default(),
        }
    }
}

/// A database URL from the configuration. Its `Debug` and `Display` hide the password
/// (`postgres://user:***@host/db`, `password=***` in the query), so a logged or printed
/// configuration never shows it; [`DatabaseUrl::expose`] gives the URL to connect with.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL (not checked: see [`Config::validate`]).
    pub fn new(url: impl Into<String>) -> DatabaseUrl {
        DatabaseUrl(url.into())
    }

    /// The URL with its password, to open the database with. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    /// Whether this is a PostgreSQL URL.
    pub fn is_postgres(&self) -> bool {
        let url = self.0.trim();
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }

    /// Checks that the URL is one the controller opens.
    fn check(&self) -> Result<(), String> {
        let url = self.0.trim();
        if self.is_postgres() {
            return url
                .parse::<postgres::Config>()
                .map(drop)
                .map_err(|e| format!("{} is not a usable PostgreSQL URL: {e}", self.redacted()));
        }
        match url.strip_prefix("sqlite:") {
            Some(path) if !path.trim_start_matches("//").is_empty() && path != ":memory:" => Ok(()),
            Some(_) => {
                Err("sqlite: needs a file path (sqlite:/var/lib/smtpguard/controller.db)".into())
            }
            None => Err(format!(
                "{} is neither postgres://user@host:port/db nor sqlite:PATH",
                self.redacted()
            )),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.redacted())
            .finish()
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `url` with the password of its `user:password@` part and of any `password=` query
/// parameter replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    if let Some(query_start) = out.find('?') {
        let query = out[query_start + 1..]
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&");
        out.replace_range(query_start + 1.., &query);
    }
    out
}

/// The MQTT broker: embedded, or an external one by URL.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Listen address of the embedded broker; used when `url` is not set. Loopback by
    /// default: exposing the broker to the routers is a decision.
    pub embedded_listen: SocketAddr,
    /// External broker, `mqtt://host:port` or `mqtts://host:port`. Nothing is embedded then.
    pub url: Option<String>,
    /// The controller's MQTT user name.
    pub username: String,
    /// The controller's MQTT password: at least [`MIN_BROKER_PASSWORD_CHARS`] characters
    /// and none of [`WELL_KNOWN_PASSWORDS`]. Empty means "not configured": for the embedded
    /// broker, [`Config::resolve_broker_password`] then reads or makes the one in the data
    /// directory; an external broker refuses to start without one.
    pub password: String,
    /// MQTT client id (1-100 characters); stable, because the ingest uses persistent
    /// sessions so the broker keeps unacknowledged messages across a controller restart.
    /// The ingest's alerts use `{client_id}-alerts`, the policy watch
    /// `{client_id}-policy-watch`; each replica needs its own.
    pub client_id: String,
    /// CA certificate (PEM) for `mqtts://`.
    pub tls_ca_file: Option<PathBuf>,
    /// Largest MQTT payload the embedded broker accepts, in bytes: the protocol's 64 KiB
    /// by default. A larger packet is refused by the broker's gate before it is buffered,
    /// the client disconnected and the drop counted in `/metrics`
    /// (`smtpguard_broker_dropped_total{reason="payload_size_limit_exceeded"}`).
    pub max_payload_bytes: usize,
    /// Most simultaneous connections the embedded broker accepts.
    pub max_connections: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            embedded_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            url: None,
            username: "controller".into(),
            password: String::new(),
            client_id: "smtpguard-controller".into(),
            tls_ca_file: None,
            max_payload_bytes: smtpguard_protocol::MAX_MESSAGE_BYTES,
            max_connections: 20_000,
        }
    }
}

/// The shortest controller broker password accepted.
pub const MIN_BROKER_PASSWORD_CHARS: usize = 12;

/// Passwords refused whatever their length (compared without regard to case): defaults of
/// this project's documentation and of common brokers.
pub const WELL_KNOWN_PASSWORDS: &[&str] = &[
    "secret",
    "password",
    "controller",
    "smtpguard",
    "changeme",
    "smtpguard-controller",
    "controller-password",
    "password1234",
    "123456789012",
    "changemechangeme",
];

/// The file in the data directory (beside `db_path`) that holds the generated password of
/// the controller's embedded-broker login.
pub const BROKER_PASSWORD_FILE: &str = "broker-password";

/// `[policy]`: what the policy safety check protects when the NOC signs
/// (`smtpguard_protocol::policy::safety`), besides each policy's own `allow_relays`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// The ISP's mail relays, the same the routers have in their local `isp_relays`.
    pub isp_relays: Vec<RelayRule>,
    /// Addresses the routers reach the broker at (what their `uplink.broker_url` resolves
    /// to), besides `broker.embedded_listen` and the host of `broker.url` when those are IP
    /// addresses.
    pub agent_broker_addresses: Vec<IpAddr>,
}

pub use smtpguard_common::BrokerAddr;

impl BrokerConfig {
    /// Whether the controller runs its own broker.
    pub fn is_embedded(&self) -> bool {
        self.url.is_none()
    }

    /// The address clients of this controller (ingest, policy publisher) connect to.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a URL that is not `mqtt[s]://host:port`.
    pub fn addr(&self) -> Result<BrokerAddr, ConfigError> {
        match &self.url {
            None => {
                let ip = self.embedded_listen.ip();
                let host = if ip.is_unspecified() {
                    "127.0.0.1".to_string()
                } else {
                    ip.to_string()
                };
                Ok(BrokerAddr {
                    host,
                    port: self.embedded_listen.port(),
                    tls: false,
                })
            }
            Some(url) => parse_url(url),
        }
    }
}

/// Parses `broker.url` ([`BrokerAddr::parse`]).
///
/// # Errors
/// [`ConfigError::Invalid`] naming `broker.url`.
pub fn parse_url(url: &str) -> Result<BrokerAddr, ConfigError> {
    BrokerAddr::parse(url).map_err(|e| ConfigError::Invalid {
        field: "broker.url",
        problem: e.to_string(),
    })
}

/// Ingest tuning.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Most messages verified and stored in one transaction.
    pub batch_max: usize,
    /// How long a batch waits for more messages before it is processed.
    pub batch_linger_ms: u64,
    /// Oldest `sent_at` accepted. Agents hold alerts through outages.
    pub max_age_secs: u64,
    /// How far ahead of the controller's clock an agent's clock may run.
    pub max_future_secs: u64,
    /// Subscribe through the shared group `$share/controllers/` so several controller
    /// instances split the fleet. mosquitto 2.0 does not restore shared subscriptions from
    /// its persistence file after a restart, so messages published between a broker
    /// restart and the controller's reconnect would be dropped; a single controller on
    /// mosquitto sets this to `false` (a plain subscription in its persistent session is
    /// restored and loses nothing). The embedded broker always uses a plain subscription.
    pub shared_subscription: bool,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            batch_max: 512,
            batch_linger_ms: 10,
            max_age_secs: 7 * 24 * 3600,
            max_future_secs: 300,
            shared_subscription: true,
        }
    }
}

/// The `[retention]` section: how many days each kind of history is kept before
/// `serve` deletes it (`crate::store::retention`), `0` meaning forever, and how often it
/// looks. Defaults are an ISP's: abuse desks ask about reports months old, so the
/// connection and NAT logs that map them to a device stay half a year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Telemetry windows and their per-device reports, and the raw signed messages of
    /// every kind but alerts.
    pub telemetry_days: u32,
    /// The connection log with its NAT translations and the routers' public address
    /// periods: what maps an abuse report (public IP, port, time) to a device.
    pub connections_days: u32,
    /// Alerts with their evidence and their raw signed messages (each device's newest
    /// alert stays).
    pub alerts_days: u32,
    /// Verdict changes (each device's newest change stays).
    pub verdict_history_days: u32,
    /// Minutes between passes; one pass also runs when `serve` starts.
    pub interval_minutes: u32,
}

/// The longest retention accepted, in days (ten years): anything longer is a typo; keep
/// forever with `0`.
pub const MAX_RETENTION_DAYS: u32 = 3650;

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            telemetry_days: 14,
            connections_days: 180,
            alerts_days: 365,
            verdict_history_days: 365,
            interval_minutes: 60,
        }
    }
}

impl RetentionConfig {
    /// What [`crate::store::retention`] deletes, given the ingest's freshness limits (no
    /// raw message a replay of which could still pass them is deleted).
    pub fn windows(&self, ingest: &IngestConfig) -> crate::store::retention::Windows {
        let days = |d: u32| (d > 0).then(|| u64::from(d) * 24 * 3600 * 1000);
        crate::store::retention::Windows {
            telemetry_ms: days(self.telemetry_days),
            connections_ms: days(self.connections_days),
            alerts_ms: days(self.alerts_days),
            verdict_history_ms: days(self.verdict_history_days),
            replay_guard_ms: ingest
                .max_age_secs
                .saturating_add(ingest.max_future_secs)
                .saturating_mul(1000),
        }
    }

    /// Checks the section.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, days) in [
            ("retention.telemetry_days", self.telemetry_days),
            ("retention.connections_days", self.connections_days),
            ("retention.alerts_days", self.alerts_days),
            ("retention.verdict_history_days", self.verdict_history_days),
        ] {
            if days > MAX_RETENTION_DAYS {
                return Err(ConfigError::Invalid {
                    field,
                    problem: format!(
                        "{days} days is more than {MAX_RETENTION_DAYS}; use 0 to keep forever"
                    ),
                });
            }
        }
        if !(1..=1440).contains(&self.interval_minutes) {
            return Err(ConfigError::Invalid {
                field: "retention.interval_minutes",
                problem: "must be 1-1440 (a day)".into(),
            });
        }
        Ok(())
    }
}

impl Config {
    /// The context of the policy safety check at the controller: the configured ISP relays,
    /// and as broker addresses the configured ones plus the embedded broker's listen
    /// address (unless it is the unspecified address) and the host of `broker.url` when it
    /// is an IP address.
    pub fn safety_context(&self) -> SafetyContext {
        let mut brokers = self.policy.agent_broker_addresses.clone();
        let own = match &self.broker.url {
            None => Some(self.broker.embedded_listen.ip()).filter(|ip| !ip.is_unspecified()),
            Some(_) => self
                .broker
                .addr()
                .ok()
                .and_then(|a| a.host.parse::<IpAddr>().ok()),
        };
        if let Some(ip) = own {
            if !brokers.contains(&ip) {
                brokers.push(ip);
            }
        }
        SafetyContext {
            local_relays: self.policy.isp_relays.clone(),
            brokers,
        }
    }

    /// Reads a configuration file, resolves the embedded broker's password
    /// ([`Config::resolve_broker_password`]) and validates it.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or the field.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        config.resolve_broker_password()?;
        config.validate()?;
        Ok(config)
    }

    /// The URL of the controller's database: `database` when set, otherwise the SQLite
    /// file `db_path` (`sqlite:PATH`). What `serve`, the ingest, the web server, the
    /// notification deliverer and the periodic jobs' leases open. It carries the password:
    /// log [`DatabaseUrl::redacted`] or [`Config::database_label`] instead.
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(url) => url.expose().trim().to_string(),
            None => format!("sqlite:{}", self.db_path.display()),
        }
    }

    /// The database as logs and errors may name it (the password hidden).
    pub fn database_label(&self) -> String {
        match &self.database {
            Some(url) => url.redacted(),
            None => self.db_path.display().to_string(),
        }
    }

    /// The data directory: where `db_path` lives.
    pub fn data_dir(&self) -> PathBuf {
        match self.db_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        }
    }

    /// With the embedded broker and no `broker.password`, takes the password from
    /// [`BROKER_PASSWORD_FILE`] in the data directory, making a random one there (mode 0600)
    /// at first start. Every process of this controller that reads the same configuration
    /// (serve, `policy set`, the web UI) gets the same one. Does nothing otherwise.
    ///
    /// # Errors
    /// [`ConfigError::Io`] when the file cannot be read or written.
    pub fn resolve_broker_password(&mut self) -> Result<(), ConfigError> {
        if !self.broker.password.is_empty() || !self.broker.is_embedded() {
            return Ok(());
        }
        let path = self.data_dir().join(BROKER_PASSWORD_FILE);
        let io = |source| ConfigError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(self.data_dir()).map_err(io)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(&path) {
            Ok(mut file) => {
                use std::io::Write;
                let secret = crate::households::new_secret("mqtt_");
                file.write_all(format!("{secret}\n").as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(io)?;
                tracing::info!(path = %path.display(), "made the controller's broker password");
                self.broker.password = secret;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.broker.password = std::fs::read_to_string(&path)
                    .map_err(io)?
                    .trim()
                    .to_string();
            }
            Err(e) => return Err(io(e)),
        }
        Ok(())
    }

    /// Checks every field once.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| {
            Err(ConfigError::Invalid {
                field,
                problem: problem.to_string(),
            })
        };
        if self.db_path.as_os_str().is_empty() {
            return invalid("db_path", "must not be empty");
        }
        if let Some(url) = &self.database {
            if let Err(problem) = url.check() {
                return invalid("database", &problem);
            }
        }
        if self.policy_key_path.as_os_str().is_empty() {
            return invalid("policy_key_path", "must not be empty");
        }
        if self.broker.password.is_empty() {
            return invalid(
                "broker.password",
                "must be set (an external broker needs the controller's password; for the embedded broker, leave it out of the file and one is generated)",
            );
        }
        if self.broker.password.chars().count() < MIN_BROKER_PASSWORD_CHARS
            || WELL_KNOWN_PASSWORDS
                .iter()
                .any(|w| w.eq_ignore_ascii_case(&self.broker.password))
        {
            return invalid(
                "broker.password",
                "is a well-known default or shorter than 12 characters; use a random secret",
            );
        }
        // Room for the alerts' session's suffix and the policy watch's (the longest).
        if self.broker.client_id.is_empty() || self.broker.client_id.len() > 100 {
            return invalid("broker.client_id", "must be 1-100 characters");
        }
        if self.broker.url.is_some() {
            self.broker.addr()?;
        }
        if self.broker.max_payload_bytes < smtpguard_protocol::MAX_MESSAGE_BYTES {
            return invalid(
                "broker.max_payload_bytes",
                "must be at least the protocol's 65536-byte message limit",
            );
        }
        if self.broker.max_connections == 0 {
            return invalid("broker.max_connections", "must be above 0");
        }
        if !(1..=10_000).contains(&self.ingest.batch_max) {
            return invalid("ingest.batch_max", "must be 1-10000");
        }
        if self.ingest.batch_linger_ms > 10_000 {
            return invalid("ingest.batch_linger_ms", "must be at most 10000");
        }
        if self.ingest.max_age_secs == 0 {
            return invalid("ingest.max_age_secs", "must be above 0");
        }
        let max = smtpguard_protocol::messages::MAX_COMMAND_SECS;
        for (field, v) in [
            (
                "commands.release_grace_secs",
                self.commands.release_grace_secs,
            ),
            ("commands.block_ttl_secs", self.commands.block_ttl_secs),
            ("commands.expiry_secs", self.commands.expiry_secs),
        ] {
            if v == 0 || v > max {
                return invalid(field, "must be 1-2592000 (30 days)");
            }
        }
        self.retention.validate()?;
        self.notifications.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_file_gets_defaults_and_bad_fields_are_named() {
        let mut c: Config = toml::from_str("db_path = \"/tmp/x.db\"").unwrap();
        c.broker.password = "a-random-secret-0123".into();
        c.validate().unwrap();
        assert!(c.broker.is_embedded());
        assert_eq!(c.broker.addr().unwrap().host, "127.0.0.1");

        let mut c = Config::default();
        c.broker.password = "a-random-secret-0123".into();
        c.broker.url = Some("http://x:1".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("broker.url"), "{err}");

        let mut c = Config::default();
        c.broker.password = "a-random-secret-0123".into();
        c.ingest.batch_max = 0;
        assert!(c.validate().unwrap_err().to_string().contains("batch_max"));

        assert!(toml::from_str::<Config>("db_pth = \"x\"").is_err());
        let c: Config = toml::from_str(
            "[policy]\nisp_relays = [\"198.51.100.25:587\"]\nagent_broker_addresses = [\"192.0.2.10\"]\n\n[broker]\nurl = \"mqtt://192.0.2.11:1883\"\n",
        )
        .unwrap();
        let ctx = c.safety_context();
        assert_eq!(ctx.local_relays, vec!["198.51.100.25:587".parse().unwrap()]);
        assert_eq!(
            ctx.brokers,
            vec![
                "192.0.2.10".parse::<IpAddr>().unwrap(),
                "192.0.2.11".parse().unwrap()
            ]
        );
        let err = toml::from_str::<Config>("[policy]\nisp_relays = [\"mail.isp.example\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("isp_relays"), "{err}");

        assert_eq!(
            parse_url("mqtts://[::1]:8883").unwrap(),
            BrokerAddr {
                host: "::1".into(),
                port: 8883,
                tls: true
            }
        );
    }

    /// Finding row 1 of issue 17: no empty or well-known controller password, and the
    /// embedded broker on loopback unless configured otherwise.
    #[test]
    fn empty_and_well_known_broker_passwords_are_refused_and_loopback_is_the_default() {
        assert!(Config::default().broker.embedded_listen.ip().is_loopback());
        for bad in [
            "",
            "secret",
            "ChangeMeChangeMe",
            "short-pw",
            "smtpguard-controller",
        ] {
            let mut c = Config::default();
            c.broker.password = bad.into();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("broker.password"), "{bad:?}: {err}");
        }
        // An external broker with no password: refused, naming the field.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.toml");
        std::fs::write(
            &path,
            format!(
                "db_path = \"{}\"\n[broker]\nurl = \"mqtt://192.0.2.11:1883\"\n",
                dir.path().join("c.db").display()
            ),
        )
        .unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("broker.password"), "{err}");
        assert!(!dir.path().join(BROKER_PASSWORD_FILE).exists());
    }

    #[test]
    fn retention_has_isp_defaults_zero_keeps_forever_and_absurd_values_are_named() {
        let mut c: Config = toml::from_str("db_path = \"/tmp/x.db\"").unwrap();
        c.broker.password = "a-random-secret-0123".into();
        c.validate().unwrap();
        assert_eq!(c.retention.telemetry_days, 14);
        assert_eq!(c.retention.connections_days, 180);
        assert_eq!(c.retention.alerts_days, 365);
        assert_eq!(c.retention.verdict_history_days, 365);
        let w = c.retention.windows(&c.ingest);
        assert_eq!(w.telemetry_ms, Some(14 * 86_400_000));
        // A week of freshness plus five minutes of clock skew.
        assert_eq!(w.replay_guard_ms, (7 * 86_400 + 300) * 1000);

        let mut c: Config = toml::from_str(
            "[retention]\ntelemetry_days = 3\nalerts_days = 0\ninterval_minutes = 5\n",
        )
        .unwrap();
        c.broker.password = "a-random-secret-0123".into();
        c.validate().unwrap();
        let w = c.retention.windows(&c.ingest);
        assert_eq!(w.telemetry_ms, Some(3 * 86_400_000));
        assert_eq!(w.alerts_ms, None, "0 keeps alerts forever");
        assert_eq!(w.connections_ms, Some(180 * 86_400_000));
        assert_eq!(c.retention.interval_minutes, 5);

        for (text, field) in [
            ("connections_days = 36500", "retention.connections_days"),
            ("interval_minutes = 0", "retention.interval_minutes"),
            ("interval_minutes = 100000", "retention.interval_minutes"),
        ] {
            let mut c: Config = toml::from_str(&format!("[retention]\n{text}\n")).unwrap();
            c.broker.password = "a-random-secret-0123".into();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        let err = toml::from_str::<Config>("[retention]\ntelemetry = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("telemetry"), "{err}");
        let err = toml::from_str::<Config>("[retention]\ntelemetry_days = -1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("telemetry_days"), "{err}");
    }

    #[test]
    fn the_embedded_broker_password_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.toml");
        let data = dir.path().join("data");
        std::fs::write(
            &path,
            format!("db_path = \"{}\"\n", data.join("controller.db").display()),
        )
        .unwrap();
        let first = Config::load(&path).unwrap();
        assert!(
            first.broker.password.len() >= 64,
            "{}",
            first.broker.password
        );
        let file = data.join(BROKER_PASSWORD_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Every later load (serve, policy set, ...) gets the same one.
        let again = Config::load(&path).unwrap();
        assert_eq!(again.broker.password, first.broker.password);
        // One set in the file wins and nothing is read.
        std::fs::write(
            &path,
            format!(
                "db_path = \"{}\"\n[broker]\npassword = \"another-random-secret\"\n",
                data.join("controller.db").display()
            ),
        )
        .unwrap();
        assert_eq!(
            Config::load(&path).unwrap().broker.password,
            "another-random-secret"
        );
        // A password file someone emptied is refused, not used.
        std::fs::write(&file, "\n").unwrap();
        std::fs::write(
            &path,
            format!("db_path = \"{}\"\n", data.join("controller.db").display()),
        )
        .unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("broker.password"), "{err}");
    }

    #[test]
    fn the_database_url_defaults_to_db_path_and_never_shows_its_password() {
        let secret = "s3cret-Pw";
        let mut c: Config = toml::from_str("db_path = \"/tmp/x.db\"").unwrap();
        c.broker.password = "a-random-secret-0123".into();
        assert_eq!(c.database_url(), "sqlite:/tmp/x.db");
        c.validate().unwrap();

        let mut c: Config = toml::from_str(&format!(
            "database = \"postgres://guard:{secret}@db.example:5433/smtpguard\"\n"
        ))
        .unwrap();
        c.broker.password = "a-random-secret-0123".into();
        c.validate().unwrap();
        assert_eq!(
            c.database_url(),
            format!("postgres://guard:{secret}@db.example:5433/smtpguard")
        );
        assert_eq!(
            c.database_label(),
            "postgres://guard:***@db.example:5433/smtpguard"
        );
        let printed = format!("{c:?} {}", c.database.as_ref().unwrap());
        assert!(!printed.contains(secret), "{printed}");
        assert!(printed.contains("guard:***@db.example"), "{printed}");
        // The URL is also not in the data directory's place: that stays db_path's.
        assert_eq!(c.data_dir(), PathBuf::from("/var/lib/smtpguard"));

        // A password as a query parameter is hidden too; a URL without one is unchanged.
        assert_eq!(
            redact_url(&format!(
                "postgresql://h/db?user=g&password={secret}&sslmode=disable"
            )),
            "postgresql://h/db?user=g&password=***&sslmode=disable"
        );
        assert_eq!(redact_url("postgres://g@h:5/db"), "postgres://g@h:5/db");

        c.database = Some(DatabaseUrl::new("sqlite:/srv/guard.db"));
        c.validate().unwrap();
        assert_eq!(c.database_url(), "sqlite:/srv/guard.db");

        // Broken URLs are refused naming the field, without the password.
        for bad in [
            format!("mysql://guard:{secret}@h/db"),
            format!("postgres://guard:{secret}@h:notaport/db"),
            "sqlite:".to_string(),
            "/var/lib/x.db".to_string(),
        ] {
            c.database = Some(DatabaseUrl::new(bad.clone()));
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("`database`"), "{bad}: {err}");
            assert!(!err.contains(secret), "{err}");
        }
    }
}
