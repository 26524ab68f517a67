//! The uplink: signed telemetry and alerts to the controller over MQTT, signed policy back.
//!
//! # Layout
//! - [`seq`]: sequence numbers reserved in fsynced blocks, never reused after a crash.
//! - [`queue`]: the offline queue — alerts on disk until the broker acknowledges them,
//!   telemetry in a fixed ring that drops the oldest (counted), control messages in memory.
//! - [`guard`]: which policy messages are applied (signature, version, the protocol's safety
//!   check against the local ISP relays and the broker's addresses) — pure.
//! - [`commands`]: which controller commands are applied (signature, target, expiry, id
//!   above the last one handled, persisted) — pure.
//! - [`session`]: the MQTT task (rumqttc): connect with backoff and jitter, last will,
//!   retained online state, resubscribe on every ConnAck, send in sequence order, map
//!   PubAcks to queued alerts.
//! - [`keygen`]: `smtpguard-agent keygen`.
//!
//! # Use from the run loop
//! ```text
//! let uplink = Uplink::start(settings, key, shutdown)?;
//! uplink.handle.send_alert(alert)?;            // durable before it returns
//! uplink.handle.send_telemetry(telemetry)?;    // may be dropped oldest-first offline
//! while let Some(update) = uplink.policies.recv().await {
//!     apply(&update.policy);
//!     uplink.handle.ack(update.applied())?;
//! }
//! while let Some(command) = uplink.commands.recv().await {
//!     uplink.handle.command_ack(apply(&command))?; // records the id durably first
//! }
//! ```

pub mod commands;
pub mod guard;
pub mod keygen;
pub mod queue;
pub mod seq;
pub mod session;

pub(crate) use smtpguard_common::now_ms;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ed25519_dalek::{SigningKey, VerifyingKey};
use smtpguard_protocol::policy::RelayRule;
use smtpguard_protocol::{
    seal, AckOutcome, Alert, Body, Command, CommandAck, Kind, PolicyAck, SafetyContext, SealError,
    State, Status, Telemetry, Topic,
};
use tokio::sync::{mpsc, Notify};

pub use guard::PolicyUpdate;

use commands::CommandGuard;
use guard::PolicyGuard;
use queue::{AlertQueue, Class, MemQueue, Outgoing, QueueFull};
use seq::{SeqAllocator, SeqError};

/// The uplink failed.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The broker URL or TLS settings are unusable.
    #[error("uplink setting `{field}`: {problem}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// State on disk (sequence counter, alert queue) could not be used.
    #[error(transparent)]
    State(#[from] SeqError),
    /// A message could not be sealed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The alert queue on disk is full.
    #[error(transparent)]
    QueueFull(#[from] QueueFull),
    /// The uplink task has stopped.
    #[error("the uplink has stopped")]
    Stopped,
}

/// Everything the uplink needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This router's id.
    pub cpe_id: String,
    /// Where the sequence counter, alert queue and applied policy versions live.
    pub state_dir: PathBuf,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub broker_url: String,
    /// MQTT user name; the CPE id when absent (brokers' ACLs key on it).
    pub username: Option<String>,
    /// MQTT password.
    pub password: Option<String>,
    /// Relays no pushed policy can remove (the ISP's): checked by the policy guard and
    /// added to every applied policy's `allow_relays`.
    pub local_relays: Vec<RelayRule>,
    /// The controller's policy-signing key.
    pub controller_public_key: VerifyingKey,
    /// The oldest policy version accepted even with none applied yet (0: no floor).
    pub policy_version_floor: u64,
    /// CA certificate (PEM) for `mqtts://`.
    pub tls_ca_file: Option<PathBuf>,
    /// Telemetry messages held while offline; older ones are dropped (and counted).
    pub telemetry_queue_len: usize,
    /// Alerts held on disk while offline; beyond this `send_alert` fails.
    pub max_queued_alerts: usize,
    /// Messages handed to the MQTT client and not yet acknowledged.
    pub max_inflight: usize,
    /// MQTT keep-alive.
    pub keep_alive_secs: u64,
    /// First reconnect delay; doubles per failure, with full jitter.
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay.
    pub reconnect_max_ms: u64,
    /// Reported in the state message.
    pub agent_version: String,
}

impl Settings {
    /// Settings with defaults for everything but the essentials.
    pub fn new(
        cpe_id: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        broker_url: impl Into<String>,
        controller_public_key: VerifyingKey,
    ) -> Settings {
        Settings {
            cpe_id: cpe_id.into(),
            state_dir: state_dir.into(),
            broker_url: broker_url.into(),
            username: None,
            password: None,
            local_relays: Vec::new(),
            controller_public_key,
            policy_version_floor: 0,
            tls_ca_file: None,
            telemetry_queue_len: 32,
            max_queued_alerts: 100_000,
            max_inflight: 32,
            keep_alive_secs: 30,
            reconnect_min_ms: 500,
            reconnect_max_ms: 60_000,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

impl Settings {
    /// Settings from the agent's configuration (`[uplink]`, `cpe_id`, `state_dir`) for the
    /// router whose key is `key`; the CPE id defaults to the one derived from the key. The
    /// local relays are `isp_relays` and the `allow_relays` of the local `policy_file`.
    ///
    /// # Errors
    /// [`UplinkError::Config`] when `uplink.controller_public_key` is missing or invalid, or
    /// the local policy file cannot be read.
    pub fn from_agent_config(
        config: &crate::config::AgentConfig,
        key: &SigningKey,
    ) -> Result<Settings, UplinkError> {
        let text = config
            .uplink
            .controller_public_key
            .as_deref()
            .ok_or(UplinkError::Config {
                field: "uplink.controller_public_key",
                problem: "required when the uplink is enabled".into(),
            })?;
        let controller =
            smtpguard_protocol::keys::parse_public_key(text).map_err(|e| UplinkError::Config {
                field: "uplink.controller_public_key",
                problem: e.to_string(),
            })?;
        let cpe_id = config
            .cpe_id
            .clone()
            .unwrap_or_else(|| smtpguard_protocol::keys::cpe_id_for(&key.verifying_key()));
        let mut s = Settings::new(
            cpe_id,
            config.state_dir.join("uplink"),
            config.uplink.broker_url.clone(),
            controller,
        );
        s.username = config.uplink.username.clone();
        s.password = config.uplink.password.clone();
        s.tls_ca_file = config.uplink.tls_ca_file.clone();
        s.policy_version_floor = config.uplink.policy_version_floor;
        s.local_relays = config.isp_relays.clone();
        let local_policy = crate::run::load_policy(config.policy_file.as_deref()).map_err(|e| {
            UplinkError::Config {
                field: "policy_file",
                problem: e.to_string(),
            }
        })?;
        for relay in local_policy.allow_relays {
            if !s.local_relays.contains(&relay) {
                s.local_relays.push(relay);
            }
        }
        Ok(s)
    }
}

/// Counters of the uplink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UplinkStats {
    /// Telemetry messages dropped from the offline queue.
    pub telemetry_dropped: u64,
    /// Alerts on disk not yet acknowledged by the broker.
    pub alerts_queued: u64,
    /// Messages the broker acknowledged.
    pub acked: u64,
    /// Whether the MQTT connection is up.
    pub connected: bool,
    /// Controller commands refused before reaching the run loop (forged, for another
    /// router, expired, replayed).
    pub commands_refused: u64,
}

/// State shared by the handle (callers) and the session task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cpe_id: String,
    pub(crate) key: SigningKey,
    pub(crate) seq: SeqAllocator,
    pub(crate) alerts: AlertQueue,
    pub(crate) mem: MemQueue,
    pub(crate) guard: PolicyGuard,
    pub(crate) commands: CommandGuard,
    pub(crate) agent_version: String,
    pub(crate) public_ip: Option<IpAddr>,
    pub(crate) acked: u64,
    pub(crate) connected: bool,
}

impl Shared {
    /// Seals `body` with the next sequence number.
    pub(crate) fn seal(&mut self, body: &Body) -> Result<(u64, Vec<u8>), UplinkError> {
        let seq = self.seq.allocate()?;
        let bytes = seal(body, &self.cpe_id, seq, now_ms(), &self.key)?;
        Ok((seq, bytes))
    }

    /// The state message body.
    pub(crate) fn state(&self, status: Status) -> Body {
        let v = self.guard.applied();
        Body::State(State {
            status,
            agent_version: self.agent_version.clone(),
            fleet_policy_version: v.fleet,
            cpe_policy_version: v.cpe,
            public_ip: self.public_ip,
        })
    }

    /// Seals and queues a control message (state or ack).
    pub(crate) fn queue_control(&mut self, body: &Body) -> Result<(), UplinkError> {
        let kind = body.kind();
        let (seq, bytes) = self.seal(body)?;
        let topic = Topic::for_cpe(kind, &self.cpe_id);
        self.mem.push(Outgoing {
            seq,
            retain: topic.is_retained(),
            topic: topic.to_string(),
            bytes,
            class: Class::Control,
        });
        Ok(())
    }
}

/// Sends to the controller. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UplinkHandle {
    shared: Arc<Mutex<Shared>>,
    wake: Arc<Notify>,
}

impl UplinkHandle {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Shared>, UplinkError> {
        self.shared.lock().map_err(|_| UplinkError::Stopped)
    }

    /// Queues a telemetry report. Its `stats.telemetry_dropped` is filled in with the
    /// uplink's own count. Offline, the oldest reports are dropped beyond the queue length.
    ///
    /// # Errors
    /// [`UplinkError::Seal`] (too large) or [`UplinkError::State`] (sequence counter).
    pub fn send_telemetry(&self, mut telemetry: Telemetry) -> Result<(), UplinkError> {
        {
            let mut s = self.lock()?;
            telemetry.stats.telemetry_dropped = s.mem.dropped();
            if telemetry.public_ip.is_some() {
                s.public_ip = telemetry.public_ip;
            }
            let (seq, bytes) = s.seal(&Body::Telemetry(telemetry))?;
            let topic = Topic::Telemetry(s.cpe_id.clone()).to_string();
            s.mem.push(Outgoing {
                seq,
                topic,
                bytes,
                retain: false,
                class: Class::Telemetry,
            });
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Queues an alert durably: when this returns `Ok`, the alert is on disk and will be
    /// delivered to the broker, across restarts, before it is forgotten.
    ///
    /// # Errors
    /// [`UplinkError::QueueFull`], [`UplinkError::State`] (disk), [`UplinkError::Seal`].
    pub fn send_alert(&self, alert: Alert) -> Result<(), UplinkError> {
        {
            let mut s = self.lock()?;
            let (seq, bytes) = s.seal(&Body::Alert(alert))?;
            s.alerts.push(seq, &bytes)??;
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Answers a policy. An `Applied` ack records the version durably and republishes the
    /// retained state with it.
    ///
    /// # Errors
    /// [`UplinkError::State`] when the version cannot be recorded, or sealing errors.
    pub fn ack(&self, ack: PolicyAck) -> Result<(), UplinkError> {
        {
            let mut s = self.lock()?;
            let applied = matches!(ack.outcome, AckOutcome::Applied);
            if applied {
                s.guard.mark_applied(ack.scope, ack.policy_version)?;
            }
            s.queue_control(&Body::PolicyAck(ack))?;
            if applied {
                let state = s.state(Status::Online);
                s.queue_control(&state)?;
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    /// The router's WAN address changed (or was learnt): republishes the retained state
    /// with it, so the controller's view of the CPE follows. Nothing when it is the same.
    ///
    /// # Errors
    /// [`UplinkError::State`] (sequence counter) or sealing errors.
    pub fn set_public_ip(&self, ip: Option<IpAddr>) -> Result<(), UplinkError> {
        {
            let mut s = self.lock()?;
            if ip.is_none() || s.public_ip == ip {
                return Ok(());
            }
            s.public_ip = ip;
            let state = s.state(Status::Online);
            s.queue_control(&state)?;
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Answers a command the run loop applied or refused: the id is recorded durably first,
    /// so the command is never applied again, even after a restart.
    ///
    /// # Errors
    /// [`UplinkError::State`] when the id cannot be recorded, or sealing errors.
    pub fn command_ack(&self, ack: CommandAck) -> Result<(), UplinkError> {
        {
            let mut s = self.lock()?;
            s.commands.mark_handled(ack.command_id)?;
            s.queue_control(&Body::CommandAck(ack))?;
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Current counters.
    pub fn stats(&self) -> UplinkStats {
        match self.shared.lock() {
            Ok(s) => UplinkStats {
                telemetry_dropped: s.mem.dropped(),
                alerts_queued: s.alerts.len() as u64,
                acked: s.acked,
                connected: s.connected,
                commands_refused: s.commands.refused(),
            },
            Err(_) => UplinkStats::default(),
        }
    }
}

/// Verified policies for the run loop, in arrival order.
#[derive(Debug)]
pub struct PolicyUpdates {
    rx: mpsc::UnboundedReceiver<PolicyUpdate>,
}

impl PolicyUpdates {
    /// The next verified policy; `None` once the uplink stopped.
    pub async fn recv(&mut self) -> Option<PolicyUpdate> {
        self.rx.recv().await
    }
}

/// Verified commands for the run loop, in arrival order.
#[derive(Debug)]
pub struct CommandUpdates {
    rx: mpsc::UnboundedReceiver<Command>,
}

impl CommandUpdates {
    /// The next verified command; `None` once the uplink stopped.
    pub async fn recv(&mut self) -> Option<Command> {
        self.rx.recv().await
    }
}

/// A running uplink.
#[derive(Debug)]
pub struct Uplink {
    /// Where to send reports.
    pub handle: UplinkHandle,
    /// Policies to apply.
    pub policies: PolicyUpdates,
    /// Commands to apply; answer each with [`UplinkHandle::command_ack`].
    pub commands: CommandUpdates,
    /// The session task; ends after `shutdown` resolved (with a clean offline state).
    pub task: tokio::task::JoinHandle<()>,
}

impl Uplink {
    /// Opens the state in `settings.state_dir` (picking up queued alerts of an earlier run)
    /// and spawns the MQTT session on the current tokio runtime.
    ///
    /// # Errors
    /// [`UplinkError::Config`] for a bad broker URL or TLS file, [`UplinkError::State`]
    /// when the state directory is unusable.
    pub async fn start(
        settings: Settings,
        key: SigningKey,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<Uplink, UplinkError> {
        let addr = session::parse_url(&settings.broker_url)?;
        let safety = SafetyContext {
            local_relays: settings.local_relays.clone(),
            brokers: session::resolve(&addr.host, addr.port).await,
        };
        std::fs::create_dir_all(&settings.state_dir).map_err(|source| SeqError::Io {
            path: settings.state_dir.clone(),
            source,
        })?;
        let seq = SeqAllocator::open(&settings.state_dir)?;
        let alerts = AlertQueue::open(
            &settings.state_dir.join("alerts"),
            Topic::for_cpe(Kind::Alert, &settings.cpe_id).to_string(),
            settings.max_queued_alerts,
        )?;
        let guard = PolicyGuard::open(
            &settings.state_dir,
            settings.controller_public_key,
            settings.cpe_id.clone(),
            safety,
        )
        .with_version_floor(settings.policy_version_floor);
        let commands = CommandGuard::open(
            &settings.state_dir,
            settings.controller_public_key,
            settings.cpe_id.clone(),
        );
        let shared = Arc::new(Mutex::new(Shared {
            cpe_id: settings.cpe_id.clone(),
            key,
            seq,
            alerts,
            mem: MemQueue::new(settings.telemetry_queue_len),
            guard,
            commands,
            agent_version: settings.agent_version.clone(),
            public_ip: None,
            acked: 0,
            connected: false,
        }));
        let wake = Arc::new(Notify::new());
        let (tx, rx) = mpsc::unbounded_channel();
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let options = session::options(&settings, &addr)?;
        let task = tokio::spawn(session::run(
            settings,
            options,
            shared.clone(),
            wake.clone(),
            (tx, command_tx),
            shutdown,
        ));
        Ok(Uplink {
            handle: UplinkHandle { shared, wake },
            policies: PolicyUpdates { rx },
            commands: CommandUpdates { rx: command_rx },
            task,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_protocol::keys;

    /// The local relays are the configured ISP relays and the local policy file's
    /// `allow_relays`, each once.
    #[test]
    fn local_relays_come_from_the_config_and_the_local_policy_file() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            "allow_relays = [\"198.51.100.25:587\", \"203.0.113.0/24:465\"]\n",
        )
        .unwrap();
        let controller = keys::generate();
        let mut config = crate::config::AgentConfig::default();
        config.uplink.controller_public_key =
            Some(keys::public_key_text(&controller.verifying_key()));
        config.isp_relays = vec!["198.51.100.25:587".parse().unwrap()];
        config.policy_file = Some(policy.clone());
        let s = Settings::from_agent_config(&config, &keys::generate()).unwrap();
        assert_eq!(
            s.local_relays,
            vec![
                "198.51.100.25:587".parse().unwrap(),
                "203.0.113.0/24:465".parse().unwrap()
            ]
        );

        std::fs::write(&policy, "allow_relays = [\"mail.isp.example\"]\n").unwrap();
        let err = Settings::from_agent_config(&config, &keys::generate()).unwrap_err();
        assert!(err.to_string().contains("policy_file"), "{err}");
    }
}
