//! The embedded MQTT broker (rumqttd's router, in-process, behind [`gate`]) and the client
//! options every MQTT client of the controller uses.
//!
//! rumqttd 0.20 has no ACL hook, so its router has no listener at all: the gate, listening
//! on `broker.embedded_listen` (loopback unless configured otherwise), is the only way in.
//! It checks every login (the controller's credentials, or a CPE's id as user name and
//! client id with its own broker password, see [`crate::registry`]), every packet against
//! the topic ACL of [`acl`] and the packet size limit, counts refusals in [`stats`], and
//! bridges each admitted client into the router through an in-process link (rumqttd's
//! `LinkBuilder`), so a client costs the controller one descriptor, its socket. The gate
//! speaks MQTT 3.1.1 to the client and rumqttd's packets to the link; it keeps one session
//! per client id, publishes a client's last will itself when the connection ends without
//! DISCONNECT, and asks the router for more only once the client has taken what it has
//! (at most [`MAX_OUTGOING_PACKETS`] wait in the router per link). rumqttd's per-topic logs
//! are bounded ([`SEGMENT_BYTES`] × [`SEGMENT_COUNT`] each) and the gate lets a CPE publish
//! only on its own topics, so the number of logs is bounded by the fleet's size.
//!
//! rumqttd matches each new topic against every filter and each new filter against every
//! topic, and scans every retained message for each new subscription. So that a fleet's
//! logins do not cost the square of its size twice over, CPEs' subscriptions to their own
//! policy and command topics ride on one wildcard filter per leaf shared by all CPEs, and
//! the gate delivers each CPE only its own topics. The retained scan remains: every router
//! retains its state, so logins still slow down with the fleet's size (README, "Load with
//! credentials and ACLs on").
//!
//! Integrity does not rest on the broker: every message is signed and the ingest checks
//! the envelope's `cpe_id` against the topic. rumqttd keeps nothing on disk: messages it
//! acknowledged but had not yet delivered are lost when the controller process dies, and
//! retained policy is republished by `serve` on start (and whenever it changes, by the
//! policy watch, [`crate::policy::watch_retained`]). The ingest's persistent session lives
//! in the router while the controller runs, so alerts published while it reconnects wait
//! for it. Production fleets that must not lose an alert across a controller crash use an
//! external broker with persistence (the mosquitto configuration in `deploy/mosquitto/`).

pub mod acl;
pub mod gate;
pub mod stats;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rumqttd::local::LinkBuilder;
use rumqttd::{Router, RouterConfig};

use crate::config::{BrokerConfig, ConfigError};
use crate::registry::KeyCache;

/// Size of one segment of a rumqttd topic log, bytes.
pub const SEGMENT_BYTES: usize = 4 * 1024 * 1024;

/// Segments a rumqttd topic log keeps in memory; older ones are dropped.
pub const SEGMENT_COUNT: usize = 4;

/// Packets rumqttd's router queues for one link before it waits for the gate to have
/// written them (the bound on what a client that does not read costs).
pub const MAX_OUTGOING_PACKETS: u64 = 200;

/// Bytes an MQTT PUBLISH may carry besides its payload (topic, packet id), on top of
/// `broker.max_payload_bytes`, in the gate's limit on a packet's remaining length.
pub const PACKET_OVERHEAD_BYTES: usize = 512;

/// The broker could not be started or a client could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker's address could not be bound.
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

/// Starts the embedded broker: rumqttd's router on its own thread, behind the gate
/// listening on `broker.embedded_listen` as a task of the current tokio runtime (call it
/// from one). Both run until the process exits. `keys` is consulted at every login, so
/// enrollments and revocations take effect for new connections at once; a tick of
/// `keys_changed` closes the connections of CPEs revoked or given a new password since
/// they logged in.
///
/// # Errors
/// [`BrokerError::Config`] when the controller's password is empty; [`BrokerError::Spawn`]
/// when the address cannot be bound.
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
    let max_packet_bytes = config.max_payload_bytes + PACKET_OVERHEAD_BYTES;
    let router = Router::new(
        0,
        RouterConfig {
            max_connections: config.max_connections + 16,
            max_outgoing_packet_count: MAX_OUTGOING_PACKETS,
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENT_COUNT,
            ..RouterConfig::default()
        },
    );
    let router_tx = router.spawn();
    // A CPE can only publish on its own topics (the gate's ACL), so the logs made for
    // topics nobody subscribed yet (dynamic filters) are bounded by the fleet's size.
    let link: Arc<gate::LinkFactory> = Arc::new(move |client_id: &str, clean: bool| {
        LinkBuilder::new(client_id, router_tx.clone())
            .clean_session(clean)
            .dynamic_filters(true)
            .build()
            .map_err(|e| tracing::warn!(client_id, error = %e, "the router refused a link"))
            .ok()
    });
    let gate_config = Arc::new(gate::GateConfig {
        link,
        controller_user: config.username.clone(),
        controller_password: config.password.clone(),
        max_packet_bytes,
        max_connections: config.max_connections,
        connect_timeout: gate::CONNECT_TIMEOUT,
        write_stall_timeout: gate::WRITE_STALL_TIMEOUT,
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
