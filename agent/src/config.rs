//! Agent configuration: one typed [`AgentConfig`], read from TOML or from OpenWrt UCI
//! (`/etc/config/smtpguard`) with the same field names, validated once on load.
//!
//! Every section has defaults, so an empty file is a complete configuration. Unknown fields
//! are errors (a typo must not silently fall back to a default); every error names the field
//! and the line.
//!
//! # UCI mapping
//! A `config agent` section holds the top-level fields; a `config capture` (`uplink`,
//! `enforce`, `led`) section holds the fields of the TOML table of that name. Option and list
//! names are the field names. Values are read by the type the field has in the defaults
//! (learnt by serialising [`AgentConfig::default`]), so UCI and TOML cannot drift apart:
//! booleans as `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off`; numbers as digits; arrays as
//! `list` lines; an empty value for an optional field means "not set". Section names are
//! free (`config capture 'lan'`), but each type may appear once.
//!
//! ```text
//! config agent 'agent'
//!     option state_dir '/etc/smtpguard'
//!     list isp_relays '198.51.100.25:587'
//! config capture 'capture'
//!     option interface 'br-lan'
//!     option device_capacity '512'
//! config uplink 'uplink'
//!     option enabled '1'
//!     option broker_url 'mqtts://controller.isp.example:8883'
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use smtpguard_firmware::uci;
use smtpguard_protocol::policy::RelayRule;

use crate::ports::MailPorts;

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
    /// Persistent state: signing key, sequence counter, alert queue, blocks. On a router
    /// this is flash: the agent writes here only when that state changes (see the README's
    /// flash write budget).
    pub state_dir: PathBuf,
    /// Runtime state, kept in RAM on a router (`/var/run/smtpguard` on OpenWrt): the status
    /// file `status` and the LuCI page read, and manual-release requests on their way to the
    /// running agent. Lost at reboot by design. When not set, [`AgentConfig::state_dir`].
    pub runtime_dir: Option<PathBuf>,
    /// Local policy (TOML, the protocol's `Policy`) applied until the controller sends one.
    pub policy_file: Option<PathBuf>,
    /// The ISP's mail relays (`198.51.100.25:587`, `198.51.100.0/24`, `[2001:db8::/32]:587`)
    /// that no policy pushed by the controller can remove: they join the `allow_relays` of
    /// every controller policy, and a controller policy whose indicators cover one of them
    /// is refused (see `smtpguard_protocol::policy::safety`). The `allow_relays` of the
    /// local `policy_file` count the same way.
    pub isp_relays: Vec<RelayRule>,
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
            runtime_dir: None,
            policy_file: None,
            isp_relays: Vec::new(),
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
    /// IEEE OUI registry (CSV) for vendor names. When not set, [`DEFAULT_OUI_FILE`] is used
    /// if it exists; see [`CaptureConfig::oui_file`].
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
            oui_file: None,
            leases_file: PathBuf::from("/tmp/dhcp.leases"),
            device_capacity: 1024,
        }
    }
}

impl CaptureConfig {
    /// The OUI registry to load: the configured file, else [`DEFAULT_OUI_FILE`] when it
    /// exists, else none (devices then have no vendor name).
    pub fn oui_file(&self) -> Option<PathBuf> {
        match &self.oui_file {
            Some(path) => Some(path.clone()),
            None => Path::new(DEFAULT_OUI_FILE)
                .exists()
                .then(|| PathBuf::from(DEFAULT_OUI_FILE)),
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
    /// The oldest policy version this router accepts, for either scope, even with no
    /// version applied yet (a new or factory-reset router): an older, validly signed
    /// policy planted on the broker is refused. 0 (the default) sets no floor; firmware
    /// images set the version current when they were built.
    pub policy_version_floor: u64,
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
    /// The mail ports: the capture filter passes them, the engine reads them as mail (25 is
    /// direct-to-MX, the others submission), and only they are throttled or blocked.
    pub mail_ports: Vec<u16>,
    /// After `smtpguard-agent release MAC`, how long the agent leaves that device alone.
    pub release_grace_secs: u64,
}

impl Default for EnforceConfig {
    fn default() -> Self {
        EnforceConfig {
            backend: EnforceBackend::Nftables,
            nft: PathBuf::from("nft"),
            mail_ports: crate::ports::DEFAULT_MAIL_PORTS.to_vec(),
            release_grace_secs: 3600,
        }
    }
}

impl EnforceConfig {
    /// The mail port set (validated when the config was loaded; the default set if not).
    pub fn mail_ports(&self) -> MailPorts {
        MailPorts::new(&self.mail_ports).unwrap_or_default()
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

/// A configuration that cannot be used. Each message starts with where the configuration
/// came from (the file, or `configuration` for text) and the line where known.
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
    /// The TOML is malformed, or has an unknown field or a value of the wrong type; the
    /// message from the TOML reader carries the line, column and field.
    #[error("{origin}: {message}")]
    Toml {
        /// The file, or `configuration`.
        origin: String,
        /// The reader's message.
        message: String,
    },
    /// The UCI text is malformed.
    #[error("{origin}: {source}")]
    Uci {
        /// The file, or `configuration`.
        origin: String,
        /// The parser's error, with its line.
        source: uci::UciError,
    },
    /// A UCI section has a type that is not a section of the configuration, or repeats one.
    #[error("{origin}:{line}: section `config {section_type}`: {problem}")]
    Section {
        /// The file, or `configuration`.
        origin: String,
        /// Line of the `config` statement.
        line: usize,
        /// The section type.
        section_type: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A field has a value of the wrong type or out of its range, or is not a field.
    #[error("{origin}:{}field `{field}`: {problem}", .line.map(|l| format!("{l}: ")).unwrap_or_else(|| " ".to_owned()))]
    Field {
        /// The file, or `configuration`.
        origin: String,
        /// Line of the field, when it is in the file (a default out of range has none).
        line: Option<usize>,
        /// Dotted path of the field, e.g. `capture.device_capacity`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// A field error from [`AgentConfig::validate`], before the file and line are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// Name for configuration that did not come from a file.
const TEXT_ORIGIN: &str = "configuration";

/// The UCI section type that holds the top-level fields.
const UCI_TOP_SECTION: &str = "agent";

impl AgentConfig {
    /// Where runtime state lives: the `runtime_dir` setting, else the state directory.
    pub fn runtime_dir(&self) -> &Path {
        self.runtime_dir.as_deref().unwrap_or(&self.state_dir)
    }

    /// Reads and validates a configuration file: OpenWrt UCI when the path lies under
    /// `/etc/config/` or the first statement is a UCI `config` or `package`, TOML otherwise.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, and the field and line where possible.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let origin = path.display().to_string();
        if path.starts_with("/etc/config") || looks_like_uci(&text) {
            parse_uci(&text, &origin)
        } else {
            parse_toml(&text, &origin)
        }
    }

    /// Parses and validates TOML text.
    ///
    /// # Errors
    /// [`ConfigError::Toml`] for malformed text, unknown fields and wrong types;
    /// [`ConfigError::Field`] for values out of range.
    pub fn from_toml_str(text: &str) -> Result<AgentConfig, ConfigError> {
        parse_toml(text, TEXT_ORIGIN)
    }

    /// Parses and validates OpenWrt UCI text (see the module docs for the mapping).
    ///
    /// # Errors
    /// [`ConfigError::Uci`] for malformed text; [`ConfigError::Section`] for an unknown or
    /// repeated section type; [`ConfigError::Field`] for unknown fields, values of the wrong
    /// type and values out of range, with the line.
    pub fn from_uci_str(text: &str) -> Result<AgentConfig, ConfigError> {
        parse_uci(text, TEXT_ORIGIN)
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
        if self
            .runtime_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return bad("runtime_dir", "must not be empty when set");
        }
        if self.capture.interface.is_empty() {
            return bad("capture.interface", "must not be empty");
        }
        if self.capture.interface.len() >= 16 {
            return bad(
                "capture.interface",
                "Linux interface names are at most 15 bytes",
            );
        }
        if self.capture.device_capacity == 0 {
            return bad("capture.device_capacity", "must be at least 1");
        }
        if self.enforce.nft.as_os_str().is_empty() {
            return bad("enforce.nft", "must not be empty");
        }
        if let Err(e) = MailPorts::new(&self.enforce.mail_ports) {
            return bad("enforce.mail_ports", &e.to_string());
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

fn parse_toml(text: &str, origin: &str) -> Result<AgentConfig, ConfigError> {
    let config: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Toml {
        origin: origin.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    config.validate().map_err(|e| ConfigError::Field {
        origin: origin.to_owned(),
        line: toml_line(text, e.field),
        field: e.field.to_owned(),
        problem: e.problem,
    })?;
    Ok(config)
}

/// The line where a TOML file sets the dotted `field` (`[table]` headers and `key = ...`
/// lines; enough for the flat files this configuration uses).
fn toml_line(text: &str, field: &str) -> Option<usize> {
    let mut table = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            table = header.split(']').next().unwrap_or("").trim().to_owned();
        } else if let Some((key, _)) = line.split_once('=') {
            let key = key.trim().trim_matches('"');
            let full = if table.is_empty() {
                key.to_owned()
            } else {
                format!("{table}.{key}")
            };
            if full == field {
                return Some(i + 1);
            }
        }
    }
    None
}

/// Whether the first statement of `text` is a UCI `config` or `package` statement.
fn looks_like_uci(text: &str) -> bool {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    let mut words = first.unwrap_or("").split_whitespace();
    matches!(words.next(), Some("config" | "package"))
        && words.next().is_some_and(|w| !w.starts_with('='))
}

fn parse_uci(text: &str, origin: &str) -> Result<AgentConfig, ConfigError> {
    let package = uci::parse(text).map_err(|source| ConfigError::Uci {
        origin: origin.to_owned(),
        source,
    })?;
    let field_error = |line: Option<usize>, field: String, problem: String| ConfigError::Field {
        origin: origin.to_owned(),
        line,
        field,
        problem,
    };
    // The defaults as a TOML tree: their value types tell how to read each UCI string.
    let defaults = toml::Value::try_from(AgentConfig::default())
        .map_err(|e| field_error(None, String::new(), e.to_string()))?;
    let tables: Vec<&str> = match &defaults {
        toml::Value::Table(t) => t
            .iter()
            .filter(|(_, v)| v.is_table())
            .map(|(k, _)| k.as_str())
            .collect(),
        _ => Vec::new(),
    };

    let mut root = toml::value::Table::new();
    let mut seen_sections: HashMap<String, usize> = HashMap::new();
    let mut lines: HashMap<String, usize> = HashMap::new();
    for section in package.sections() {
        let kind = section.section_type();
        let section_error = |problem: String| ConfigError::Section {
            origin: origin.to_owned(),
            line: section.line(),
            section_type: kind.to_owned(),
            problem,
        };
        let table_name = if kind == UCI_TOP_SECTION {
            None
        } else if tables.contains(&kind) {
            Some(kind)
        } else {
            let mut known = vec![UCI_TOP_SECTION];
            known.extend(&tables);
            return Err(section_error(format!(
                "unknown section type, expected one of {}",
                known.join(", ")
            )));
        };
        if let Some(first) = seen_sections.insert(kind.to_owned(), section.line()) {
            return Err(section_error(format!(
                "appears twice (first at line {first}); each section type may appear once"
            )));
        }
        for entry in section.entries() {
            let field = match table_name {
                Some(t) => format!("{t}.{}", entry.name()),
                None => entry.name().to_owned(),
            };
            let template = match table_name {
                Some(t) => defaults.get(t).and_then(|v| v.get(entry.name())),
                None => defaults.get(entry.name()),
            };
            let value = coerce(template, entry.value())
                .map_err(|p| field_error(Some(entry.line()), field.clone(), p))?;
            let Some(value) = value else { continue };
            let target = match table_name {
                Some(t) => {
                    let slot = root
                        .entry(t.to_owned())
                        .or_insert_with(|| toml::Value::Table(toml::value::Table::new()));
                    match slot {
                        toml::Value::Table(t) => t,
                        // Only tables are ever inserted under a section name.
                        _ => continue,
                    }
                }
                None => &mut root,
            };
            target.insert(entry.name().to_owned(), value);
            lines.insert(field.clone(), entry.line());
            // Deserialise after each field, so an unknown field or a bad value is reported
            // with its own name and line.
            if let Err(e) = toml::Value::Table(root.clone()).try_into::<AgentConfig>() {
                return Err(field_error(Some(entry.line()), field, e.to_string()));
            }
        }
    }
    let config: AgentConfig = toml::Value::Table(root)
        .try_into()
        .map_err(|e| field_error(None, String::new(), e.to_string()))?;
    config
        .validate()
        .map_err(|e| field_error(lines.get(e.field).copied(), e.field.to_owned(), e.problem))?;
    Ok(config)
}

/// Reads one UCI value as the type of `template` (the field's default); `None` for an empty
/// value of a field that has no default (an unset optional field).
fn coerce(
    template: Option<&toml::Value>,
    value: &uci::Value,
) -> Result<Option<toml::Value>, String> {
    use toml::Value as T;
    match value {
        uci::Value::Single(s) => match template {
            None if s.is_empty() => Ok(None),
            None | Some(T::String(_)) | Some(T::Datetime(_)) => Ok(Some(T::String(s.clone()))),
            Some(T::Boolean(_)) => uci::parse_bool(s)
                .map(|b| Some(T::Boolean(b)))
                .ok_or_else(|| format!("`{s}` is not a boolean (1/0, true/false, yes/no, on/off)")),
            Some(T::Integer(_)) => s
                .parse::<i64>()
                .map(|n| Some(T::Integer(n)))
                .map_err(|_| format!("`{s}` is not a whole number")),
            Some(T::Float(_)) => s
                .parse::<f64>()
                .map(|n| Some(T::Float(n)))
                .map_err(|_| format!("`{s}` is not a number")),
            Some(T::Array(items)) => {
                let item = coerce(items.first(), value)?;
                Ok(Some(T::Array(item.into_iter().collect())))
            }
            Some(T::Table(_)) => Err("is a section (`config NAME`), not an option".to_owned()),
        },
        uci::Value::List(items) => match template {
            None | Some(T::Array(_)) => {
                let element = template.and_then(|t| t.as_array()).and_then(|a| a.first());
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let single = uci::Value::Single(item.clone());
                    match element {
                        Some(e) => out.extend(coerce(Some(e), &single)?),
                        None => out.push(T::String(item.clone())),
                    }
                }
                Ok(Some(T::Array(out)))
            }
            Some(_) => Err("takes one value: use `option`, not `list`".to_owned()),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    const TOML_SAMPLE: &str = r#"
cpe_id = "cpe-0042"
state_dir = "/etc/smtpguard"
runtime_dir = "/var/run/smtpguard"
policy_file = "/etc/smtpguard/policy.toml"
isp_relays = ["198.51.100.25:587", "[2001:db8::/32]:465"]

[capture]
interface = "br-lan"
device_capacity = 512
leases_file = "/tmp/dhcp.leases"

[uplink]
enabled = true
broker_url = "mqtts://controller.isp.example:8883"
username = "cpe-0042"
tls_ca_file = "/etc/ssl/certs/ca-certificates.crt"
policy_version_floor = 7

[enforce]
backend = "none"

[led]
name = "green:status"
"#;

    const UCI_SAMPLE: &str = "
# smtpguard
config agent 'agent'
\toption cpe_id 'cpe-0042'
\toption state_dir '/etc/smtpguard'
\toption runtime_dir '/var/run/smtpguard'
\toption policy_file '/etc/smtpguard/policy.toml'
\tlist isp_relays '198.51.100.25:587'
\tlist isp_relays '[2001:db8::/32]:465'

config capture 'lan'
\toption interface 'br-lan'
\toption device_capacity '512'
\toption leases_file '/tmp/dhcp.leases'
\toption oui_file ''

config uplink 'uplink'
\toption enabled '1'
\toption broker_url 'mqtts://controller.isp.example:8883'
\toption username 'cpe-0042'
\toption password ''
\toption tls_ca_file '/etc/ssl/certs/ca-certificates.crt'
\toption policy_version_floor '7'

config enforce 'enforce'
\toption backend 'none'

config led 'led'
\toption name 'green:status'
";

    fn expected() -> AgentConfig {
        AgentConfig {
            cpe_id: Some("cpe-0042".to_owned()),
            state_dir: "/etc/smtpguard".into(),
            runtime_dir: Some("/var/run/smtpguard".into()),
            policy_file: Some("/etc/smtpguard/policy.toml".into()),
            isp_relays: vec![
                "198.51.100.25:587".parse().unwrap(),
                "[2001:db8::/32]:465".parse().unwrap(),
            ],
            capture: CaptureConfig {
                device_capacity: 512,
                ..CaptureConfig::default()
            },
            uplink: UplinkConfig {
                enabled: true,
                broker_url: "mqtts://controller.isp.example:8883".to_owned(),
                username: Some("cpe-0042".to_owned()),
                tls_ca_file: Some("/etc/ssl/certs/ca-certificates.crt".into()),
                policy_version_floor: 7,
                ..UplinkConfig::default()
            },
            enforce: EnforceConfig {
                backend: EnforceBackend::None,
                ..EnforceConfig::default()
            },
            led: LedConfig {
                name: Some("green:status".to_owned()),
            },
        }
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(
            AgentConfig::from_toml_str("").unwrap(),
            AgentConfig::default()
        );
        assert_eq!(
            AgentConfig::from_uci_str("").unwrap(),
            AgentConfig::default()
        );
        let d = AgentConfig::default();
        assert_eq!(d.capture.interface, "br-lan");
        assert_eq!(d.capture.device_capacity, 1024);
        assert_eq!(d.state_dir, Path::new("/var/lib/smtpguard"));
        assert_eq!(d.enforce.backend, EnforceBackend::Nftables);
    }

    #[test]
    fn toml_and_uci_read_the_same_settings() {
        assert_eq!(AgentConfig::from_toml_str(TOML_SAMPLE).unwrap(), expected());
        assert_eq!(AgentConfig::from_uci_str(UCI_SAMPLE).unwrap(), expected());
    }

    /// Every field of a fully set configuration, written as UCI by a generic printer, reads
    /// back equal: the UCI mapping covers every field TOML has.
    /// The UCI file the OpenWrt package installs loads as it is.
    #[test]
    fn the_openwrt_package_config_loads() {
        let text = include_str!("../../firmware/openwrt/smtpguard/files/smtpguard.config");
        let config = AgentConfig::from_uci_str(text).unwrap();
        assert_eq!(config.capture.interface, "br-lan");
        // Shipped off: an unenrolled router starts and works on its local policy.
        assert!(!config.uplink.enabled);
        assert_eq!(
            config.uplink.broker_url,
            "mqtts://controller.isp.example:8883"
        );
    }

    #[test]
    fn every_toml_field_round_trips_through_uci() {
        let full = expected();
        let value = toml::Value::try_from(&full).unwrap();
        let mut uci_text = String::new();
        let mut write_section = |kind: &str, table: &toml::value::Table| {
            uci_text.push_str(&format!("config {kind} '{kind}'\n"));
            for (key, v) in table {
                let text = match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Table(_) => continue,
                    toml::Value::Array(items) => {
                        for item in items {
                            let item = match item {
                                toml::Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            uci_text.push_str(&format!("\tlist {key} '{item}'\n"));
                        }
                        continue;
                    }
                    other => other.to_string(),
                };
                uci_text.push_str(&format!("\toption {key} '{text}'\n"));
            }
        };
        let root = value.as_table().unwrap();
        write_section("agent", root);
        for (key, v) in root {
            if let toml::Value::Table(t) = v {
                write_section(key, t);
            }
        }
        assert_eq!(
            AgentConfig::from_uci_str(&uci_text).unwrap(),
            full,
            "{uci_text}"
        );
    }

    #[test]
    fn uci_booleans_numbers_and_empty_values() {
        for (text, enabled) in [
            ("1", true),
            ("yes", true),
            ("on", true),
            ("0", false),
            ("off", false),
        ] {
            let uci = format!(
                "config uplink\n\toption enabled '{text}'\n\toption broker_url 'mqtt://b'\n"
            );
            assert_eq!(
                AgentConfig::from_uci_str(&uci).unwrap().uplink.enabled,
                enabled
            );
        }
        let c = AgentConfig::from_uci_str("config led\n\toption name ''\n").unwrap();
        assert_eq!(c.led.name, None, "empty means unset");
    }

    fn uci_err(text: &str) -> String {
        AgentConfig::from_uci_str(text).unwrap_err().to_string()
    }

    fn toml_err(text: &str) -> String {
        AgentConfig::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn broken_uci_names_the_field_and_line() {
        let e = uci_err(
            "config capture\n\toption interface 'br-lan'\n\toption device_capacity 'lots'\n",
        );
        assert!(
            e.contains(":3:") && e.contains("capture.device_capacity") && e.contains("lots"),
            "{e}"
        );

        let e = uci_err("config uplink\n\toption enabled 'maybe'\n");
        assert!(
            e.contains(":2:") && e.contains("uplink.enabled") && e.contains("boolean"),
            "{e}"
        );

        let e = uci_err("config capture\n\toption interfase 'br-lan'\n");
        assert!(
            e.contains(":2:") && e.contains("capture.interfase") && e.contains("unknown field"),
            "{e}"
        );

        let e = uci_err("config enforce\n\toption backend 'iptables'\n");
        assert!(
            e.contains(":2:") && e.contains("enforce.backend") && e.contains("iptables"),
            "{e}"
        );

        let e = uci_err("config capture\n\tlist interface 'br-lan'\n");
        assert!(
            e.contains("capture.interface") && e.contains("option"),
            "{e}"
        );

        let e = uci_err("config agent\n\toption capture 'x'\n");
        assert!(e.contains(":2:") && e.contains("field `capture`"), "{e}");

        let e = uci_err("\nconfig controller 'controller'\n\toption url 'x'\n");
        assert!(
            e.contains(":2:") && e.contains("config controller") && e.contains("capture"),
            "{e}"
        );

        let e = uci_err("config led\nconfig led 'again'\n");
        assert!(
            e.contains(":2:") && e.contains("twice") && e.contains("line 1"),
            "{e}"
        );

        let e = uci_err("config capture\n\toption device_capacity '0'\n");
        assert!(
            e.contains(":2:") && e.contains("capture.device_capacity") && e.contains("at least 1"),
            "{e}"
        );

        let e = uci_err("config agent\n\tlist isp_relays 'mail.isp.example'\n");
        assert!(
            e.contains(":2:") && e.contains("isp_relays") && e.contains("mail.isp.example"),
            "{e}"
        );

        // Malformed UCI: the parser's own error, with its line.
        let e = uci_err("config capture\n\toption interface 'br-lan\n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn broken_toml_names_the_field_and_line() {
        let e = toml_err("[capture]\ninterface = \"br-lan\"\ndevice_capacity = \"lots\"\n");
        assert!(e.contains("line 3") && e.contains("device_capacity"), "{e}");

        let e = toml_err("[capture]\ninterfase = \"br-lan\"\n");
        assert!(e.contains("line 2") && e.contains("interfase"), "{e}");

        let e = toml_err("[enforce]\nbackend = \"iptables\"\n");
        assert!(e.contains("line 2") && e.contains("iptables"), "{e}");

        let e = toml_err("cpe_id = \"a b\"\n\n[capture]\ndevice_capacity = 0\n");
        assert!(
            e.contains("configuration:1:") && e.contains("`cpe_id`"),
            "{e}"
        );

        let e = toml_err("[capture]\n\ndevice_capacity = 0\n");
        assert!(
            e.contains("configuration:3:") && e.contains("capture.device_capacity"),
            "{e}"
        );

        let e = toml_err("[uplink]\nenabled = true\n");
        assert!(
            e.contains("uplink.broker_url") && e.contains("enabled"),
            "{e}"
        );

        let e = toml_err("[capture\n");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn load_tells_uci_from_toml_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let uci_path = dir.path().join("smtpguard");
        std::fs::write(&uci_path, UCI_SAMPLE).unwrap();
        assert_eq!(AgentConfig::load(&uci_path).unwrap(), expected());
        let toml_path = dir.path().join("agent.toml");
        std::fs::write(&toml_path, TOML_SAMPLE).unwrap();
        assert_eq!(AgentConfig::load(&toml_path).unwrap(), expected());

        std::fs::write(&toml_path, "[capture]\ndevice_capacity = 0\n").unwrap();
        let e = AgentConfig::load(&toml_path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:2:", toml_path.display())), "{e}");

        let e = AgentConfig::load(&dir.path().join("absent.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent.toml"), "{e}");
    }

    #[test]
    fn oui_file_falls_back_to_the_system_registry_only_when_present() {
        let set = CaptureConfig {
            oui_file: Some("/srv/oui.csv".into()),
            ..CaptureConfig::default()
        };
        assert_eq!(set.oui_file(), Some(PathBuf::from("/srv/oui.csv")));
        let unset = CaptureConfig::default();
        assert_eq!(
            unset.oui_file().is_some(),
            Path::new(DEFAULT_OUI_FILE).exists()
        );
    }
}
