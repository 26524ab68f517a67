//! Agent configuration: one typed [`AgentConfig`], read from TOML or from OpenWrt UCI
//! (`/etc/config/smtpguard`) with the same field names, validated once on load.
//!
//! Every section has defaults, so an empty file is a complete configuration. Unknown fields
//! are errors (a typo must not silently fall back to a default); every error names the field
//! and, where the file gives one, the line.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where `run` and `status` look for the configuration when none is given.
pub const DEFAULT_PATH: &str = "/etc/smtpguard/agent.toml";

/// Where the IEEE OUI registry lives on Debian (package `ieee-data`).
pub const DEFAULT_OUI_FILE: &str = "/usr/share/ieee-data/oui.csv";

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// This router's id on the wire; derived from its public key when absent.
    pub cpe_id: Option<String>,
    /// Persistent state: signing key, sequence counter, alert queue, blocks.
    pub state_dir: PathBuf,
    /// Local policy (TOML, the protocol's `Policy`) applied until the controller sends one.
    pub policy_file: Option<PathBuf>,
    /// Live capture on the LAN.
    pub capture: CaptureConfig,
    /// MQTT uplink to the controller.
    pub uplink: UplinkConfig,
    /// Enforcement backend.
    pub enforce: EnforceConfig,
    /// Status LED.
    pub led: LedConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            cpe_id: None,
            state_dir: PathBuf::from("/var/lib/smtpguard"),
            policy_file: None,
            capture: CaptureConfig::default(),
            uplink: UplinkConfig::default(),
            enforce: EnforceConfig::default(),
            led: LedConfig::default(),
        }
    }
}

/// `[capture]`: which interface to watch and where host names and vendors come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// The LAN interface (the bridge on OpenWrt).
    pub interface: String,
    /// IEEE OUI registry (CSV) for vendor names; skipped when absent.
    pub oui_file: Option<PathBuf>,
    /// dnsmasq lease file, for device host names.
    pub leases_file: PathBuf,
    /// Most devices tracked at once; the engine evicts beyond this.
    pub device_capacity: usize,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            interface: "br-lan".to_owned(),
            oui_file: Path::new(DEFAULT_OUI_FILE)
                .exists()
                .then(|| PathBuf::from(DEFAULT_OUI_FILE)),
            leases_file: PathBuf::from("/tmp/dhcp.leases"),
            device_capacity: 1024,
        }
    }
}

/// `[uplink]`: the MQTT connection to the controller. Off by default: the agent then works
/// alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UplinkConfig {
    /// Whether to connect at all; without it the agent works alone.
    pub enabled: bool,
    /// Broker address, e.g. `mqtts://broker.example.net:8883`.
    pub broker_url: String,
    /// Broker user name.
    pub username: Option<String>,
    /// Broker password.
    pub password: Option<String>,
    /// The controller's policy-signing public key, as text.
    pub controller_public_key: Option<String>,
    /// CA certificate(s) for the broker's TLS, PEM.
    pub tls_ca_file: Option<PathBuf>,
}

/// `[enforce]`: how verdicts are carried out on the router (the table is described in
/// `enforce::nft`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnforceConfig {
    /// Which backend applies blocks and rate limits.
    pub backend: EnforceBackend,
    /// The `nft` program.
    pub nft: PathBuf,
    /// Destination TCP ports that are throttled or blocked; nothing else is ever touched.
    pub mail_ports: Vec<u16>,
    /// After `smtpguard-agent release MAC`, how long the agent leaves that device alone.
    pub release_grace_secs: u64,
}

impl Default for EnforceConfig {
    fn default() -> Self {
        EnforceConfig {
            backend: EnforceBackend::Nftables,
            nft: PathBuf::from("nft"),
            mail_ports: crate::enforce::DEFAULT_MAIL_PORTS.to_vec(),
            release_grace_secs: 3600,
        }
    }
}

/// An enforcement backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnforceBackend {
    /// The agent's own nftables table `inet smtpguard`.
    Nftables,
    /// Monitor only: decide, report, but touch nothing.
    None,
}

/// `[led]`: the status LED.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedConfig {
    /// Name under `/sys/class/leds`; no LED when absent.
    pub name: Option<String>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown field or a value of the wrong type; the
    /// message from the TOML reader carries the line, column and field.
    #[error("{path}: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The reader's message.
        message: String,
    },
    /// A field has a value out of its range.
    #[error("{}field `{field}`: {problem}", Location(.path, *.line))]
    Field {
        /// The file, when the configuration came from one.
        path: Option<PathBuf>,
        /// Line of the field, when known.
        line: Option<usize>,
        /// Dotted path of the field, e.g. `capture.device_capacity`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Formats `path:line: ` for error messages, leaving out what is unknown.
struct Location<'a>(&'a Option<PathBuf>, Option<usize>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(p), Some(l)) => write!(f, "{}:{l}: ", p.display()),
            (Some(p), None) => write!(f, "{}: ", p.display()),
            (None, Some(l)) => write!(f, "line {l}: "),
            (None, None) => Ok(()),
        }
    }
}

/// A field error before the file and line are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl AgentConfig {
    /// Reads and validates a configuration file: OpenWrt UCI when the path lies under
    /// `/etc/config/` or the text starts with a `config` section, TOML otherwise.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, and the field and line where possible.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| e.in_file(path))
    }

    /// Parses and validates TOML text.
    ///
    /// # Errors
    /// [`ConfigError::Toml`] for malformed text, unknown fields and wrong types;
    /// [`ConfigError::Field`] for values out of range.
    pub fn from_toml_str(text: &str) -> Result<AgentConfig, ConfigError> {
        let config: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Toml {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|e| ConfigError::Field {
            path: None,
            line: None,
            field: e.field.to_owned(),
            problem: e.problem,
        })?;
        Ok(config)
    }

    /// Checks every range once.
    ///
    /// # Errors
    /// [`FieldError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), FieldError> {
        let bad = |field: &'static str, problem: &str| {
            Err(FieldError {
                field,
                problem: problem.to_owned(),
            })
        };
        if let Some(id) = &self.cpe_id {
            if !smtpguard_protocol::envelope::is_valid_cpe_id(id) {
                return bad("cpe_id", "must be 1-64 characters of A-Z a-z 0-9 . _ -");
            }
        }
        if self.state_dir.as_os_str().is_empty() {
            return bad("state_dir", "must not be empty");
        }
        if self.capture.interface.is_empty() {
            return bad("capture.interface", "must not be empty");
        }
        if self.capture.device_capacity == 0 {
            return bad("capture.device_capacity", "must be at least 1");
        }
        if self.enforce.nft.as_os_str().is_empty() {
            return bad("enforce.nft", "must not be empty");
        }
        if self.enforce.mail_ports.is_empty() || self.enforce.mail_ports.contains(&0) {
            return bad(
                "enforce.mail_ports",
                "must list one or more ports between 1 and 65535",
            );
        }
        if self.enforce.release_grace_secs > 30 * 86_400 {
            return bad(
                "enforce.release_grace_secs",
                "must be at most 2592000 (30 days)",
            );
        }
        if self.uplink.enabled && self.uplink.broker_url.is_empty() {
            return bad(
                "uplink.broker_url",
                "must be set when the uplink is enabled",
            );
        }
        Ok(())
    }
}

impl ConfigError {
    fn in_file(self, file: &Path) -> ConfigError {
        match self {
            ConfigError::Toml { message, .. } => ConfigError::Toml {
                path: file.to_owned(),
                message,
            },
            ConfigError::Field {
                line,
                field,
                problem,
                ..
            } => ConfigError::Field {
                path: Some(file.to_owned()),
                line,
                field,
                problem,
            },
            other => other,
        }
    }
}

/// Prints the effective configuration as TOML on stdout (for `status`), hiding the password.
pub fn print_summary(config: &AgentConfig) {
    let mut shown = config.clone();
    if shown.uplink.password.is_some() {
        shown.uplink.password = Some("********".to_owned());
    }
    match toml::to_string(&shown) {
        Ok(text) => print!("{text}"),
        Err(e) => tracing::warn!("cannot show the configuration: {e}"),
    }
}
