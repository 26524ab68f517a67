//! The embedded MQTT broker (rumqttd, in-process) and the client options every MQTT client
//! of the controller uses.
//!
//! rumqttd has no ACLs and no persistence. Its login hook admits the controller's own
//! credentials (never with an empty password: [`start_embedded`] refuses to start without
//! one, and the configuration refuses well-known ones) and any enrolled, unrevoked CPE whose
//! client id equals its user name; the password of a CPE is not checked there (there is no
//! per-CPE secret besides its key). It listens on loopback unless configured otherwise.
//! Integrity does not rest on the broker: every message is signed and the ingest checks the
//! envelope's `cpe_id` against the topic. Because it keeps nothing on disk, messages the
//! broker acknowledged but had not yet delivered are lost when the controller process dies,
//! and retained policy is republished by `serve` on start. Production fleets that must not
//! lose an alert across a controller crash use an external broker with persistence (the
//! mosquitto configuration in `deploy/mosquitto/`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rumqttd::{Broker, Config as RumqttdConfig, ConnectionSettings, RouterConfig, ServerSettings};

use crate::config::{BrokerConfig, ConfigError};
use crate::registry::KeyCache;

/// The broker could not be started or a client could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker's thread could not be spawned.
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

/// Starts the embedded broker on its own threads. It runs until the process exits.
/// `keys` is consulted at every login, so enrollments and revocations take effect for new
/// connections at once.
///
/// # Errors
/// [`BrokerError::Config`] when the controller's password is empty; [`BrokerError::Spawn`].
pub fn start_embedded(
    config: &BrokerConfig,
    keys: Arc<RwLock<KeyCache>>,
) -> Result<(), BrokerError> {
    if config.password.is_empty() {
        return Err(BrokerError::Config(ConfigError::Invalid {
            field: "broker.password",
            problem: "the embedded broker does not start without the controller's password".into(),
        }));
    }
    let controller_user = config.username.clone();
    let controller_pass = config.password.clone();
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: config.max_payload_bytes,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
        let admitted = if user == controller_user {
            !pass.is_empty() && pass == controller_pass
        } else {
            client_id == user && keys.read().map(|k| k.is_active(&user)).unwrap_or(false)
        };
        if !admitted {
            tracing::info!(%client_id, %user, "embedded broker refused a login");
        }
        async move { admitted }
    });
    let server = ServerSettings {
        name: "smtpguard-v4".into(),
        listen: config.embedded_listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let mut v4 = HashMap::new();
    v4.insert("v4".to_string(), server);
    let rumqttd_config = RumqttdConfig {
        id: 0,
        router: RouterConfig {
            max_connections: config.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: 64 * 1024 * 1024,
            max_segment_count: 4,
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

/// A rustls client configuration with the ring provider, trusting `ca_file` (PEM).
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
    let tls_err = |detail: String| BrokerError::Tls {
        path: path.display().to_string(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|e| tls_err(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&pem).map_err(tls_err)? {
        roots.add(cert).map_err(|e| tls_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(tls_err("no certificate found".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// Certificates of a PEM file, with rustls' own PEM reader.
fn rustls_pemfile_certs(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}
