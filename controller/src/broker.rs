//! The embedded MQTT broker (rumqttd, in-process, behind [`gate`]) and the client options
//! every MQTT client of the controller uses.
//!
//! rumqttd 0.20 has no ACL hook, so it listens only on an ephemeral loopback port and
//! admits only the gate, which holds a random secret made at every start. Clients reach
//! the gate on `broker.embedded_listen` (loopback unless configured otherwise); it checks
//! every login (the controller's credentials, or a CPE's id as user name and client id
//! with its own broker password, see [`crate::registry`]), every packet against the topic
//! ACL of [`acl`], and the packet size limit, and counts refusals in [`stats`]. rumqttd's
//! per-topic logs are bounded ([`SEGMENT_BYTES`] × [`SEGMENT_COUNT`] each) and the gate
//! lets a CPE publish only on its four own topics, so the number of logs is bounded by
//! the fleet's size.
//!
//! Integrity does not rest on the broker: every message is signed and the ingest checks
//! the envelope's `cpe_id` against the topic. rumqttd keeps nothing on disk: messages it
//! acknowledged but had not yet delivered are lost when the controller process dies, and
//! retained policy is republished by `serve` on start (and whenever it changes, by the
//! policy watch, [`crate::policy::watch_retained`]). Production fleets that must not lose an
//! alert across a controller crash use an external broker with persistence (the mosquitto
//! configuration in `deploy/mosquitto/`).

pub mod acl;
pub mod gate;
pub mod stats;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rumqttd::{Broker, Config as RumqttdConfig, ConnectionSettings, RouterConfig, ServerSettings};

use crate::config::{BrokerConfig, ConfigError};
use crate::registry::KeyCache;

/// Size of one segment of a rumqttd topic log, bytes.
pub const SEGMENT_BYTES: usize = 4 * 1024 * 1024;

/// Segments a rumqttd topic log keeps in memory; older ones are dropped.
pub const SEGMENT_COUNT: usize = 4;

/// Bytes an MQTT PUBLISH may carry besides its payload (topic, packet id), on top of
/// `broker.max_payload_bytes`, in the gate's limit on a packet's remaining length.
pub const PACKET_OVERHEAD_BYTES: usize = 512;

/// The broker could not be started or a client could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker's thread could not be spawned or its address bound.
    #[error("starting the embedded broker: {0}")]
    Spawn(std::io::Error),
    /// The broker address or TLS settings are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The CA file could not be read or holds no certificate.
    #[error("TLS CA file {path}: {detail}")]
    Tls {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

/// Starts the embedded broker: rumqttd on its own threads, behind the gate listening on
/// `broker.embedded_listen` as a task of the current tokio runtime (call it from one). Both
/// run until the process exits. `keys` is consulted at every login, so enrollments and
/// revocations take effect for new connections at once; a tick of `keys_changed` closes
/// the connections of CPEs revoked or given a new password since they logged in.
///
/// # Errors
/// [`BrokerError::Config`] when the controller's password is empty; [`BrokerError::Spawn`]
/// when an address cannot be bound or a thread not started.
pub fn start_embedded(
    config: &BrokerConfig,
    keys: Arc<RwLock<KeyCache>>,
    keys_changed: tokio::sync::watch::Receiver<u64>,
) -> Result<(), BrokerError> {
    if config.password.is_empty() {
        return Err(BrokerError::Config(ConfigError::Invalid {
            field: "broker.password",
            problem: "the embedded broker does not start without the controller's password".into(),
        }));
    }
    let public = std::net::TcpListener::bind(config.embedded_listen).map_err(BrokerError::Spawn)?;
    public.set_nonblocking(true).map_err(BrokerError::Spawn)?;
    let public = tokio::net::TcpListener::from_std(public).map_err(BrokerError::Spawn)?;
    let internal = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_err(BrokerError::Spawn)?;
    let secret = crate::households::new_secret("gate_");
    let max_packet_bytes = config.max_payload_bytes + PACKET_OVERHEAD_BYTES;

    let upstream_secret = secret.clone();
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: max_packet_bytes,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        // A CPE can only publish on its own four topics (the gate's ACL), so the logs made
        // for topics nobody subscribed yet are bounded by the fleet's size.
        dynamic_filters: true,
    };
    connections.set_auth_handler(move |_client_id: String, _user: String, pass: String| {
        let admitted = !pass.is_empty() && pass == upstream_secret;
        async move { admitted }
    });
    let server = ServerSettings {
        name: "smtpguard-v4".into(),
        listen: internal,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let mut v4 = HashMap::new();
    v4.insert("v4".to_string(), server);
    let rumqttd_config = RumqttdConfig {
        id: 0,
        router: RouterConfig {
            max_connections: config.max_connections + 16,
            max_outgoing_packet_count: 200,
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENT_COUNT,
            ..RouterConfig::default()
        },
        v4: Some(v4),
        ..RumqttdConfig::default()
    };
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(rumqttd_config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(BrokerError::Spawn)?;
    let gate_config = Arc::new(gate::GateConfig {
        upstream: internal,
        upstream_secret: secret,
        controller_user: config.username.clone(),
        controller_password: config.password.clone(),
        max_packet_bytes,
        max_connections: config.max_connections,
    });
    tokio::spawn(gate::run(public, gate_config, keys, keys_changed));
    Ok(())
}

/// MQTT options for a controller client (`client_id`) of the configured broker: its
/// credentials, TLS when the URL says `mqtts://`, and a packet limit above the protocol's
/// so oversize messages are counted by the ingest instead of breaking the connection.
///
/// # Errors
/// [`BrokerError::Config`] for a bad URL, [`BrokerError::Tls`] for an unusable CA file.
pub fn client_options(config: &BrokerConfig, client_id: &str) -> Result<MqttOptions, BrokerError> {
    let addr = config.addr()?;
    let mut options = MqttOptions::new(client_id, addr.host, addr.port);
    options
        .set_credentials(config.username.clone(), config.password.clone())
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(
            config.max_payload_bytes + 1024,
            config.max_payload_bytes + 1024,
        );
    if addr.tls {
        options.set_transport(Transport::Tls(tls_config(config.tls_ca_file.as_deref())?));
    }
    Ok(options)
}

/// A rustls client configuration trusting `ca_file` ([`smtpguard_common::tls_client_config`]).
///
/// # Errors
/// [`BrokerError::Tls`].
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<TlsConfiguration, BrokerError> {
    let Some(path) = ca_file else {
        return Err(BrokerError::Tls {
            path: String::new(),
            detail: "mqtts:// needs broker.tls_ca_file".into(),
        });
    };
    smtpguard_common::tls_client_config(path)
        .map(TlsConfiguration::Rustls)
        .map_err(|e| BrokerError::Tls {
            path: path.display().to_string(),
            detail: e.to_string(),
        })
}
