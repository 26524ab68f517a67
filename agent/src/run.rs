//! `smtpguard-agent run`: the live agent on the router.
//!
//! # Shape
//! A thin shell around pure cores. One blocking worker thread owns the capture socket, the
//! [`Engine`], the [`Planner`] and the [`Enforcer`], and loops:
//! capture ([`Capture::next_frame`], which waits at most its poll interval) →
//! [`Engine::handle_frame`] → [`Engine::handle_timeout`] when [`Engine::poll_timeout`] is due
//! → [`Engine::poll_action`] → the planner → one nft batch for all ops of the round → the state
//! file. Every second it takes manual-release requests; every [`STATUS_EVERY_SECS`] it rewrites
//! the status file that `smtpguard-agent status` reads. The async [`run`] starts the worker and
//! stops it when the injected `shutdown` future resolves (SIGTERM/SIGINT in the binary, see
//! [`run_until_signal`]).
//!
//! # Uplink
//! With `[uplink] enabled`, [`run`] loads (or on first boot makes) the router's key and starts
//! the [`crate::uplink`] session on the async side. The worker hands it every verdict change
//! as an alert (persisted until the broker acknowledges it) and, every
//! `policy.telemetry_interval_secs`, a telemetry report; verified policies come back over a
//! channel and are applied between frames: the per-CPE override if there is one, else the
//! fleet policy, else the local policy file. Each is acknowledged as applied. Verified
//! controller commands (release, block) come back the same way and go to
//! [`crate::core::Agent::apply_command`]; its answer is acknowledged through the uplink,
//! which records the command's id durably first.
//!
//! # WAN address and NAT
//! Every [`WAN_POLL_MS`] the worker reads the WAN address ([`crate::nat::wan`]) and gives a
//! new one to the core (telemetry) and the uplink (retained state). With an uplink and
//! `[nat] conntrack`, each round it asks the core for the NAT lookups due, looks them up
//! over ctnetlink ([`crate::nat::conntrack`], one batch, at most [`NAT_LOOKUPS_PER_SEC`])
//! and hands the answers back.
//!
//! # Start and stop
//! At start the block state file is loaded and restored with each block's remaining time to
//! live, pending manual releases are applied, and the table is installed idempotently. At
//! a clean stop the state and a final status are written and the table is left in place: the
//! blocks stay in force and expire by their own timeouts, as they do if the agent dies.

use smtpguard_common::now_ms;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use smtpguard_protocol::{Command, MacAddr, Policy, Verdict};

use crate::capture::{Capture, CaptureError, CaptureOptions};
use crate::config::{AgentConfig, EnforceBackend};
use crate::core::{Agent, Output, Settings as CoreSettings};
use crate::enforce::control::{
    self, write_status, StatusFile, STATUS_EVERY_SECS, STATUS_HEARTBEAT_SECS,
};
use crate::enforce::plan::Snapshot;
use crate::enforce::{state, EnforceError, Enforcer, LoggingEnforcer, NftEnforcer};
use crate::engine::EngineConfig;
use crate::leases;
use crate::nat::conntrack::{self, Conntrack};
use crate::nat::{wan, NatQuery};
use crate::oui::OuiTable;
use crate::uplink::{PolicyUpdate, Settings, Uplink, UplinkError, UplinkHandle};
use smtpguard_firmware::led::sysfs::SysfsLed;
use smtpguard_firmware::led::{Status as LedStatus, StatusLed};

/// How often the status LED's state (devices, uplink) is re-evaluated.
const LED_EVAL_MS: u64 = 1_000;

/// How often manual-release requests are looked for.
const RELEASE_POLL_MS: u64 = 1_000;
/// How long `release` waits for the running agent to take its request.
const RELEASE_TAKEN_WAIT_MS: u64 = 5 * RELEASE_POLL_MS;
/// How often the local policy file is checked for changes.
const POLICY_POLL_MS: u64 = 2_000;
/// How often the DHCP lease file is checked for changes (dnsmasq rewrites it on each lease).
const LEASES_POLL_MS: u64 = 5_000;
/// How long to wait before trying again after a failed nft batch.
const RESYNC_AFTER_MS: u64 = 5_000;
/// How often the table is checked to be still there (a firewall restart deletes it).
const TABLE_CHECK_MS: u64 = 3_000;
/// How often the WAN address is looked at again (a DHCP or PPP renewal changes it).
const WAN_POLL_MS: u64 = 30_000;
/// Most conntrack lookups per second (each is one small netlink request and reply).
const NAT_LOOKUPS_PER_SEC: usize = 200;

/// The run loop could not start or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The local policy file could not be read or is invalid.
    #[error("policy file {path}: {problem}")]
    Policy {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The capture could not be opened or failed.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The enforcement table could not be installed.
    #[error("cannot install the enforcement table: {0}")]
    Enforce(#[from] EnforceError),
    /// The worker thread panicked or could not be started.
    #[error("agent worker stopped abnormally: {0}")]
    Worker(String),
    /// The async runtime or signal handlers could not be set up.
    #[error("cannot set up the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The router's key could not be loaded or made.
    #[error("router key: {0}")]
    Key(#[from] smtpguard_protocol::keys::KeyError),
    /// The uplink could not start (bad `[uplink]` settings, state directory).
    #[error("uplink: {0}")]
    Uplink(#[from] UplinkError),
}

/// Where the router's ed25519 key lives: made on first start, mode 0600.
pub fn key_path(config: &AgentConfig) -> PathBuf {
    config.state_dir.join("agent.key")
}

/// The worker's side of the uplink: a handle to send on, and the policies to apply.
struct Link {
    handle: UplinkHandle,
    policies: std::sync::mpsc::Receiver<PolicyUpdate>,
    commands: std::sync::mpsc::Receiver<Command>,
}

/// Reads and validates the local policy; the default policy when no file is configured.
///
/// # Errors
/// [`RunError::Policy`] naming the file.
pub fn load_policy(path: Option<&Path>) -> Result<Policy, RunError> {
    let Some(path) = path else {
        return Ok(Policy::default());
    };
    let bad = |problem: String| RunError::Policy {
        path: path.to_owned(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let policy: Policy = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    policy.validate().map_err(|e| bad(e.to_string()))?;
    Ok(policy)
}

pub use crate::core::table_spec;

/// The enforcement backend `config` asks for.
pub fn enforcer_for(config: &AgentConfig) -> Box<dyn Enforcer + Send> {
    match config.enforce.backend {
        EnforceBackend::Nftables => Box::new(NftEnforcer::new(
            config.enforce.nft.to_string_lossy().into_owned(),
        )),
        EnforceBackend::None => Box::new(LoggingEnforcer::default()),
    }
}

/// `smtpguard-agent status`: prints the running agent's status and the kernel's live
/// blocks for the agent configured by `config`.
///
/// # Errors
/// As [`control::status`].
pub fn print_status(config: &AgentConfig) -> Result<(), EnforceError> {
    let text = control::status(
        config.runtime_dir(),
        enforcer_for(config).as_mut(),
        now_ms(),
    )?;
    print!("{text}");
    Ok(())
}

/// `smtpguard-agent release MAC`: lifts the block on `mac` now and tells the running agent.
///
/// # Errors
/// As [`control::release`].
pub fn release_command(config: &AgentConfig, mac: MacAddr) -> Result<(), EnforceError> {
    let dir = config.runtime_dir();
    let text = control::release(dir, enforcer_for(config).as_mut(), mac, now_ms())?;
    println!("{text}");
    // A running agent takes the request within a second; until it has, its engine could
    // still enforce again. Say which it is, so the person knows the release holds.
    let running = control::read_status(dir)
        .ok()
        .flatten()
        .is_some_and(|s| s.running_at(now_ms()));
    if !running {
        println!("{mac}: the agent is not running; it takes the release when it starts");
        return Ok(());
    }
    let deadline = now_ms() + RELEASE_TAKEN_WAIT_MS;
    while state::release_pending(dir, mac) {
        if now_ms() >= deadline {
            println!(
                "{mac}: the running agent has not taken the release yet (it reads requests every {} s)",
                RELEASE_POLL_MS / 1000
            );
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    println!("{mac}: the running agent took the release");
    Ok(())
}

/// The router's own MAC and addresses on `interface`, so the engine never takes the router
/// for a device.
fn router_identity(interface: &str) -> (Vec<MacAddr>, Vec<IpAddr>) {
    let Some(iface) = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == interface)
    else {
        return (Vec::new(), Vec::new());
    };
    let macs = iface
        .mac
        .map(|m| MacAddr([m.0, m.1, m.2, m.3, m.4, m.5]))
        .into_iter()
        .collect();
    let ips = iface.ips.iter().map(|n| n.ip()).collect();
    (macs, ips)
}

/// Runs the agent until `shutdown` resolves or the worker fails.
///
/// # Errors
/// [`RunError`] when the policy, capture or table cannot be set up, or the capture fails.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let (uplink_stop_tx, uplink_stop_rx) = tokio::sync::watch::channel(false);
    let mut link = None;
    let mut uplink_tasks = Vec::new();
    if config.uplink.enabled {
        let (key, created) = smtpguard_protocol::keys::load_or_create(&key_path(&config))?;
        if created {
            tracing::info!(path = %key_path(&config).display(), "made this router's key");
        }
        let settings = Settings::from_agent_config(&config, &key)?;
        tracing::info!(cpe_id = %settings.cpe_id, broker = %settings.broker_url, "uplink starting");
        let mut stop_rx = uplink_stop_rx.clone();
        let uplink = Uplink::start(settings, key, async move {
            let _ = stop_rx.changed().await;
        })
        .await?;
        let Uplink {
            handle,
            mut policies,
            mut commands,
            task,
        } = uplink;
        let (policy_tx, policy_rx) = std::sync::mpsc::channel();
        uplink_tasks.push(tokio::spawn(async move {
            while let Some(update) = policies.recv().await {
                if policy_tx.send(update).is_err() {
                    break;
                }
            }
        }));
        let (command_tx, command_rx) = std::sync::mpsc::channel();
        uplink_tasks.push(tokio::spawn(async move {
            while let Some(command) = commands.recv().await {
                if command_tx.send(command).is_err() {
                    break;
                }
            }
        }));
        uplink_tasks.push(task);
        link = Some(Link {
            handle,
            policies: policy_rx,
            commands: command_rx,
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let worker_stop = Arc::clone(&stop);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let worker = std::thread::Builder::new()
        .name("smtpguard-worker".into())
        .spawn(move || {
            let result = Worker::start(&config, link).and_then(|mut w| w.run(&worker_stop));
            let _ = done_tx.send(());
            result
        })
        .map_err(RunError::Runtime)?;
    tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            stop.store(true, Ordering::Relaxed);
        }
        _ = done_rx => {}
    }
    let joined = tokio::task::spawn_blocking(move || worker.join())
        .await
        .map_err(|e| RunError::Worker(e.to_string()))?;
    // The worker has handed over its last alerts; the uplink publishes the offline state
    // and ends. Alerts not yet acknowledged stay on disk for the next start.
    let _ = uplink_stop_tx.send(true);
    for task in uplink_tasks {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    joined.map_err(|_| RunError::Worker("the worker thread panicked".into()))?
}

/// Runs the agent until SIGTERM or SIGINT: what `smtpguard-agent run` calls.
///
/// # Errors
/// As [`run`], and [`RunError::Runtime`] when the runtime or signal handlers fail.
pub fn run_until_signal(config: AgentConfig) -> Result<(), RunError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(RunError::Runtime)?;
        let mut int = signal(SignalKind::interrupt()).map_err(RunError::Runtime)?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        run(config, shutdown).await
    })
}

/// Everything the worker thread owns: the core, and the I/O it carries out for it.
struct Worker {
    state_dir: PathBuf,
    /// RAM on a router: the status file and manual-release requests.
    runtime_dir: PathBuf,
    /// The last status written: its content (without the time) and when.
    last_status: Option<(Vec<u8>, u64)>,
    interface: String,
    capture: Capture,
    agent: Agent,
    enforcer: Box<dyn Enforcer + Send>,
    /// A batch failed: reinstall and re-apply the planner's view at this time.
    resync_at_ms: Option<u64>,
    next_status_ms: u64,
    next_release_poll_ms: u64,
    /// The local policy file and the modification time of the version in force.
    policy_file: Option<(PathBuf, Option<SystemTime>)>,
    next_policy_poll_ms: u64,
    /// The DHCP lease file (host names) and the modification time last read.
    leases_file: (PathBuf, Option<SystemTime>),
    next_leases_poll_ms: u64,
    next_table_check_ms: u64,
    /// The uplink, when enabled.
    link: Option<Link>,
    /// The router's status LED (`[led] name`), its next pattern step and next evaluation.
    led: Option<StatusLed<SysfsLed>>,
    led_deadline_ms: Option<u64>,
    next_led_eval_ms: u64,
    /// `[nat] wan_interface`, and when the WAN address is looked at next.
    wan_interface: Option<String>,
    next_wan_poll_ms: u64,
    /// The conntrack socket (with an uplink and `[nat] conntrack`), the lookups left in the
    /// current second and when that second started, and reused buffers.
    conntrack: Option<Conntrack>,
    nat_budget: usize,
    nat_second_ms: u64,
    nat_queries: Vec<NatQuery>,
    nat_answers: Vec<(u64, Option<std::net::SocketAddr>)>,
}

impl Worker {
    fn start(config: &AgentConfig, link: Option<Link>) -> Result<Worker, RunError> {
        let policy = load_policy(config.policy_file.as_deref())?;
        let now = now_ms();
        let state_dir = config.state_dir.clone();
        let runtime_dir = config.runtime_dir().to_path_buf();
        // Made by the agent, so that it owns them: `release`, run by root (or by LuCI's
        // rpcd), leaves its requests in a directory the unprivileged agent can empty.
        if let Err(err) = std::fs::create_dir_all(runtime_dir.join(state::RELEASE_DIR)) {
            tracing::warn!(%err, dir = %runtime_dir.display(), "cannot create the runtime directory");
        }
        let (router_macs, router_ips) = router_identity(&config.capture.interface);
        let oui = config
            .capture
            .oui_file()
            .and_then(|p| match OuiTable::load(&p) {
                Ok(t) => Some(Arc::new(t)),
                Err(err) => {
                    tracing::warn!(%err, "no vendor names");
                    None
                }
            });
        let mail_ports = config.enforce.mail_ports();
        let conntrack = if link.is_some() && config.nat.conntrack {
            match Conntrack::open() {
                Ok(ct) => Some(ct),
                Err(err) => {
                    tracing::warn!(%err, "no NAT translations in the connection log");
                    None
                }
            }
        } else {
            None
        };
        let mut agent = Agent::new(
            CoreSettings {
                engine: EngineConfig {
                    device_capacity: config.capture.device_capacity,
                    router_macs,
                    router_ips,
                    oui,
                    ..EngineConfig::default()
                },
                release_grace_secs: config.enforce.release_grace_secs,
                mail_ports,
                isp_relays: config.isp_relays.clone(),
                telemetry: link.is_some(),
                nat_lookups: conntrack.is_some(),
            },
            policy,
            now,
        );
        match state::load(&state_dir) {
            Ok(Some(snapshot)) => agent.restore(now, &snapshot),
            Ok(None) => {}
            Err(err) => {
                // A damaged file must not keep the router unprotected: start empty, keep
                // the file aside for a person to look at.
                tracing::error!(%err, "ignoring unreadable enforcement state");
                let path = state::state_path(&state_dir);
                let _ = std::fs::rename(&path, path.with_extension("json.unreadable"));
            }
        }
        take_releases(&runtime_dir, &mut agent, now);

        let capture = Capture::open(
            &config.capture.interface,
            &CaptureOptions {
                mail_ports,
                ..CaptureOptions::default()
            },
        )?;
        let mut worker = Worker {
            state_dir,
            runtime_dir,
            last_status: None,
            interface: config.capture.interface.clone(),
            capture,
            agent,
            enforcer: enforcer_for(config),
            resync_at_ms: None,
            next_status_ms: now,
            next_release_poll_ms: now + RELEASE_POLL_MS,
            policy_file: config
                .policy_file
                .as_ref()
                .map(|p| (p.clone(), modified(p))),
            next_policy_poll_ms: now + POLICY_POLL_MS,
            leases_file: (config.capture.leases_file.clone(), None),
            next_leases_poll_ms: now,
            next_table_check_ms: now + TABLE_CHECK_MS,
            link,
            led: open_led(config.led.name.as_deref()),
            led_deadline_ms: None,
            next_led_eval_ms: now,
            wan_interface: config.nat.wan_interface.clone(),
            next_wan_poll_ms: now,
            conntrack,
            nat_budget: NAT_LOOKUPS_PER_SEC,
            nat_second_ms: now,
            nat_queries: Vec::with_capacity(conntrack::BATCH_MAX),
            nat_answers: Vec::with_capacity(conntrack::BATCH_MAX),
        };
        // The table must be there before the agent runs: a router that cannot install it
        // does not start (procd restarts it).
        worker.carry_out(now, true)?;
        tracing::info!(
            interface = %config.capture.interface,
            backend = ?config.enforce.backend,
            "agent running"
        );
        Ok(worker)
    }

    fn run(&mut self, stop: &AtomicBool) -> Result<(), RunError> {
        let result = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            match self.capture.next_frame() {
                Ok(Some(frame)) => self.agent.handle_frame(frame.ts_ms, frame.data),
                Ok(None) => {}
                Err(err) => break Err(RunError::Capture(err)),
            }
            self.tick(now_ms());
        };
        save_state(&self.state_dir, &self.agent.snapshot(now_ms()));
        self.write_status(now_ms(), true);
        result
    }

    /// Timers, inputs from files and the uplink, and the core's outputs for one round.
    fn tick(&mut self, now: u64) {
        if self.agent.poll_timeout().is_some_and(|t| t <= now) {
            self.agent.handle_timeout(now);
        }
        if now >= self.next_release_poll_ms {
            self.next_release_poll_ms = now + RELEASE_POLL_MS;
            take_releases(&self.runtime_dir, &mut self.agent, now);
        }
        if now >= self.next_leases_poll_ms {
            self.next_leases_poll_ms = now + LEASES_POLL_MS;
            self.read_leases();
        }
        if now >= self.next_policy_poll_ms {
            self.next_policy_poll_ms = now + POLICY_POLL_MS;
            self.reload_policy(now);
        }
        if let Some(link) = &self.link {
            let updates: Vec<PolicyUpdate> = link.policies.try_iter().collect();
            for update in updates {
                tracing::info!(scope = ?update.scope, version = update.version, "controller policy");
                self.agent.apply_controller_policy(now, &update);
            }
            let commands: Vec<Command> = link.commands.try_iter().collect();
            for command in commands {
                self.agent.apply_command(now, &command);
            }
        }
        if let Ok(cs) = self.capture.stats() {
            self.agent.note_kernel_drops(cs.drops);
        }
        if now >= self.next_wan_poll_ms {
            self.next_wan_poll_ms = now + WAN_POLL_MS;
            self.refresh_wan();
        }
        self.look_up_nat(now);
        // Only the start may fail on the table; later failures are retried.
        let _ = self.carry_out(now, false);
        if now >= self.next_table_check_ms {
            self.next_table_check_ms = now + TABLE_CHECK_MS;
            self.check_table(now);
        }
        if self.resync_at_ms.is_some_and(|t| t <= now) {
            self.resync(now);
        }
        if now >= self.next_status_ms {
            self.next_status_ms = now + STATUS_EVERY_SECS * 1000;
            self.write_status(now, false);
        }
        self.drive_led(now);
    }

    /// Carries out the core's outputs in order: the table, one nft batch per set of ops,
    /// the state file, alerts, telemetry and acks to the uplink.
    ///
    /// # Errors
    /// Only when `strict` (at start): the table could not be installed.
    fn carry_out(&mut self, now: u64, strict: bool) -> Result<(), RunError> {
        let mut changed = false;
        while let Some(output) = self.agent.poll_output() {
            match output {
                Output::Table(spec) => {
                    if let Err(err) = self.enforcer.install(&spec) {
                        if strict {
                            return Err(err.into());
                        }
                        tracing::error!(%err, "cannot update the table; retrying");
                        self.resync_at_ms.get_or_insert(now + RESYNC_AFTER_MS);
                    }
                }
                Output::Apply(ops) => {
                    for op in &ops {
                        tracing::info!(%op, "enforce");
                    }
                    if let Err(err) = self.enforcer.apply(&ops) {
                        tracing::error!(%err, "enforcement batch failed; nothing in it was applied");
                        self.resync_at_ms.get_or_insert(now + RESYNC_AFTER_MS);
                    }
                    changed = true;
                }
                Output::Save(snapshot) => {
                    save_state(&self.state_dir, &snapshot);
                }
                Output::Alert(alert) => {
                    if let Some(link) = &self.link {
                        if let Err(err) = link.handle.send_alert(alert) {
                            tracing::error!(%err, "alert not queued for the controller");
                        }
                    }
                }
                Output::Telemetry(telemetry) => {
                    if let Some(link) = &self.link {
                        if let Err(err) = link.handle.send_telemetry(telemetry) {
                            tracing::warn!(%err, "telemetry not queued");
                        }
                    }
                }
                Output::PolicyAck(ack) => {
                    if let Some(link) = &self.link {
                        if let Err(err) = link.handle.ack(ack) {
                            tracing::error!(%err, "policy ack not queued");
                        }
                    }
                }
                Output::CommandAck(ack) => {
                    if let Some(link) = &self.link {
                        if let Err(err) = link.handle.command_ack(ack) {
                            tracing::error!(%err, "command ack not queued");
                        }
                    }
                    changed = true;
                }
            }
        }
        if changed {
            // `status` shows a change of enforcement at once, not at the next interval.
            self.next_status_ms = now;
        }
        Ok(())
    }

    /// Looks at the WAN address again; a new one goes into telemetry and the retained
    /// state. An address that cannot be found (link down) keeps the last one known.
    fn refresh_wan(&mut self) {
        let Some(ip) = wan::wan_address(self.wan_interface.as_deref(), None) else {
            return;
        };
        if self.agent.public_ip() == Some(ip) {
            return;
        }
        tracing::info!(%ip, previous = ?self.agent.public_ip(), "WAN address");
        self.agent.set_public_ip(Some(ip));
        if let Some(link) = &self.link {
            if let Err(err) = link.handle.set_public_ip(Some(ip)) {
                tracing::warn!(%err, "state with the new WAN address not queued");
            }
        }
    }

    /// One batch of the conntrack lookups the core has due, within the per-second budget.
    fn look_up_nat(&mut self, now: u64) {
        let Some(ct) = &mut self.conntrack else {
            return;
        };
        if now.saturating_sub(self.nat_second_ms) >= 1_000 {
            self.nat_second_ms = now;
            self.nat_budget = NAT_LOOKUPS_PER_SEC;
        }
        let max = self.nat_budget.min(conntrack::BATCH_MAX);
        if max == 0 {
            return;
        }
        self.nat_queries.clear();
        self.agent.nat_queries(now, max, &mut self.nat_queries);
        if self.nat_queries.is_empty() {
            return;
        }
        self.nat_budget -= self.nat_queries.len().min(self.nat_budget);
        self.nat_answers.clear();
        if let Err(err) = ct.lookup(&self.nat_queries, &mut self.nat_answers) {
            tracing::warn!(%err, "conntrack lookups failed; retried at their next delay");
        }
        for (id, translated) in self.nat_answers.drain(..) {
            self.agent.nat_answer(id, translated);
        }
    }

    /// Shows the most urgent state on the LED: an infected device, the controller out of
    /// reach, a suspicious device, or all clean (off).
    fn drive_led(&mut self, now: u64) {
        let Some(led) = &mut self.led else {
            return;
        };
        let result = if now >= self.next_led_eval_ms {
            self.next_led_eval_ms = now + LED_EVAL_MS;
            let devices = self.agent.engine().report(now).devices;
            let offline = self
                .link
                .as_ref()
                .is_some_and(|link| !link.handle.stats().connected);
            let status = LedStatus::most_urgent(
                devices
                    .iter()
                    .map(|d| match d.verdict {
                        Verdict::Infected => LedStatus::Infected,
                        Verdict::Suspicious => LedStatus::Suspicious,
                        Verdict::Clean => LedStatus::Clean,
                    })
                    .chain(offline.then_some(LedStatus::Offline)),
            );
            led.show(status, now)
        } else if self.led_deadline_ms.is_some_and(|t| t <= now) {
            led.poll(now)
        } else {
            return;
        };
        match result {
            Ok(deadline) => self.led_deadline_ms = deadline,
            Err(err) => {
                tracing::warn!(%err, "status LED cannot be written; giving it up");
                self.led = None;
            }
        }
    }

    /// Gives the core the host names of the DHCP lease file when it changed. A missing or
    /// unreadable file only means no names.
    fn read_leases(&mut self) {
        let (path, seen) = &mut self.leases_file;
        let current = modified(path);
        if current.is_none() || current == *seen {
            return;
        }
        *seen = current;
        match leases::read(path) {
            Ok(l) => {
                let mut named = 0;
                for (mac, name) in l.hostnames() {
                    self.agent.set_hostname(mac, name);
                    named += 1;
                }
                tracing::debug!(
                    named,
                    skipped = l.skipped_lines,
                    "host names from the lease file"
                );
            }
            Err(err) => tracing::warn!(%err, "no host names from the lease file"),
        }
    }

    /// Hands the core the local policy file again when it changed. A file that no longer
    /// reads or validates is logged and the policy in force stays.
    fn reload_policy(&mut self, now: u64) {
        let Some((path, seen)) = &mut self.policy_file else {
            return;
        };
        let current = modified(path);
        if current == *seen {
            return;
        }
        *seen = current;
        match load_policy(Some(path)) {
            Ok(policy) => {
                tracing::info!(version = policy.policy_version, mode = ?policy.mode, "policy file reloaded");
                self.agent.set_local_policy(now, policy);
            }
            Err(err) => tracing::error!(%err, "keeping the policy in force"),
        }
    }

    /// Puts the table back at once when it is gone: `fw4 flush` (every firewall restart)
    /// and `nft flush ruleset` delete every table, and the blocks with it.
    fn check_table(&mut self, now: u64) {
        match self.enforcer.table_present() {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    "the enforcement table is gone (firewall restart?): putting it back with the blocks in force"
                );
                self.enforcer.note_reinstall();
                self.resync(now);
            }
            Err(err) => tracing::warn!(%err, "cannot check the enforcement table"),
        }
    }

    /// Reinstalls the table and re-applies every entry the planner holds.
    fn resync(&mut self, now: u64) {
        let result = self
            .enforcer
            .install(self.agent.table())
            .and_then(|()| self.enforcer.apply(&self.agent.sync_ops(now)));
        match result {
            Ok(()) => {
                tracing::info!("enforcement back in step with the planner");
                self.resync_at_ms = None;
            }
            Err(err) => {
                tracing::error!(%err, "enforcement still failing; retrying");
                self.resync_at_ms = Some(now + RESYNC_AFTER_MS);
            }
        }
    }

    fn write_status(&mut self, now: u64, stopped: bool) {
        let policy = self.agent.policy();
        let snapshot = self.agent.snapshot(now);
        let status = StatusFile {
            updated_ms: now,
            pid: std::process::id(),
            stopped,
            interface: self.interface.clone(),
            mode: policy.mode,
            policy_version: policy.policy_version,
            devices: self.agent.engine().report(now).devices,
            enforcement: snapshot.entries,
            manual_releases: snapshot.manual_releases,
            enforcer: self.enforcer.stats(),
            stats: self.agent.stats(),
        };
        // Written only when something in it changed, and at least every heartbeat so that
        // readers can tell a running agent from a dead one.
        let content = serde_json::to_vec(&StatusFile {
            updated_ms: 0,
            ..status.clone()
        })
        .unwrap_or_default();
        if !stopped
            && self.last_status.as_ref().is_some_and(|(last, at)| {
                *last == content && now.saturating_sub(*at) < STATUS_HEARTBEAT_SECS * 1000
            })
        {
            return;
        }
        match write_status(&self.runtime_dir, &status) {
            Ok(()) => self.last_status = Some((content, now)),
            Err(err) => tracing::warn!(%err, "cannot write the status file"),
        }
    }
}

/// Opens the LED named in `[led] name`; an absent or unusable LED is logged, never fatal.
fn open_led(name: Option<&str>) -> Option<StatusLed<SysfsLed>> {
    let name = name.filter(|n| !n.is_empty())?;
    match SysfsLed::open(name) {
        Ok(pin) => Some(StatusLed::new(pin)),
        Err(err) => {
            tracing::warn!(%err, led = name, "no status LED");
            None
        }
    }
}

/// Writes the enforcement state file; a failure is logged (the blocks stay in force).
fn save_state(state_dir: &Path, snapshot: &Snapshot) {
    if let Err(err) = state::save(state_dir, snapshot) {
        tracing::error!(%err, "cannot save the enforcement state");
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Hands the core the manual releases `smtpguard-agent release` left.
fn take_releases(state_dir: &Path, agent: &mut Agent, now: u64) {
    let (macs, errors) = state::take_release_requests(state_dir);
    for err in errors {
        tracing::warn!(%err, "ignored a bad release request");
    }
    for mac in macs {
        agent.release_by_hand(now, mac);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_files_are_read_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_policy(None).unwrap(), Policy::default());
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "mode = \"enforce\"\nblock_ttl_secs = 30\n").unwrap();
        let p = load_policy(Some(&path)).unwrap();
        assert_eq!(p.block_ttl_secs, 30);
        std::fs::write(&path, "block_ttl_secs = 0\n").unwrap();
        let err = load_policy(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("block_ttl_secs"), "{err}");
        let err = load_policy(Some(&dir.path().join("missing.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }

    #[test]
    fn enforce_section_defaults_and_validation() {
        let c = AgentConfig::from_toml_str("").unwrap();
        assert_eq!(c.enforce.mail_ports, vec![25, 465, 587, 2525]);
        assert_eq!(c.enforce.release_grace_secs, 3600);
        let c = AgentConfig::from_toml_str(
            "[enforce]\nbackend = \"none\"\nmail_ports = [25]\nrelease_grace_secs = 60\n",
        )
        .unwrap();
        assert_eq!(c.enforce.backend, EnforceBackend::None);
        assert_eq!(
            table_spec(&c.enforce.mail_ports(), &Policy::default()).mail_ports,
            vec![25]
        );
        for bad in [
            "mail_ports = []",
            "mail_ports = [0]",
            "release_grace_secs = 99999999",
        ] {
            let err = AgentConfig::from_toml_str(&format!("[enforce]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("enforce."), "{bad}: {err}");
        }
    }

    #[test]
    fn shutdown_before_start_failure_reports_the_failure() {
        // A capture on an interface that does not exist fails at start; `run` returns that
        // error rather than hanging on the shutdown future.
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig {
            state_dir: dir.path().to_owned(),
            capture: crate::config::CaptureConfig {
                interface: "sg-nonexistent0".into(),
                ..crate::config::CaptureConfig::default()
            },
            enforce: crate::config::EnforceConfig {
                backend: EnforceBackend::None,
                ..crate::config::EnforceConfig::default()
            },
            ..AgentConfig::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(run(config, std::future::pending()))
            .unwrap_err();
        assert!(err.to_string().contains("sg-nonexistent0"), "{err}");
    }
}
