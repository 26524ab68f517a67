//! The live demo fleet: simulated households whose agents run the real agent core and uplink.
//!
//! [`enroll`] creates, for each household, a CPE key (enrolled through [`registry::add`],
//! as `cpe add` does), the household account with its login token, and signs the demo's
//! fleet policy (enforce, the ISP relay allowlisted). [`spawn`] then starts one task per
//! household: a [`sim::Household`] timeline fed into the router's own agent core
//! ([`smtpguard_agent::core::Agent`], driven as the router's run loop drives it), whose alerts,
//! telemetry and policy acks go through a real [`Uplink`] to the embedded broker and from there
//! through the normal ingest: what the demo shows is what a router sends. Two days of history are replayed at once (so baselines exist and the
//! infections are minutes old when the demo starts); after that the households keep sending
//! a trickle of live traffic on the wall clock.

use smtpguard_common::now_ms;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sim::{Dialogue, Frame, Host, Household};
use ed25519_dalek::{SigningKey, VerifyingKey};
use smtpguard_agent::core::{Agent as Core, Output, Settings as CoreSettings};
use smtpguard_agent::enforce::Op;
use smtpguard_agent::engine::EngineConfig;
use smtpguard_agent::uplink::{Settings, Uplink, UplinkError, UplinkHandle};
use smtpguard_protocol::policy::{Cidr, RelayRule};
use smtpguard_protocol::{keys, Mode, Policy, SafetyContext};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use smtpguard_controller::demo::DemoError;
use smtpguard_controller::policy::{self, Target};
use smtpguard_controller::store::Store;
use smtpguard_controller::{households, registry};

const MIN: u64 = 60_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 86_400_000;
/// Telemetry cadence of the simulated agents (the demo policy's, the shortest allowed).
const TELEMETRY_EVERY_SECS: u32 = 5;

/// What goes on in a simulated household.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Phones, a TV and a laptop mailing through the ISP relay now and then.
    Clean,
    /// An infected PC delivering spam straight to other networks' mail servers.
    DirectToMx,
    /// A PC with a quiet mail habit that suddenly submits hundreds of messages through the
    /// ISP relay with stolen credentials.
    StolenCredentials,
}

impl Scenario {
    /// One line for the console.
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::Clean => "clean devices only",
            Scenario::DirectToMx => "a spam bot sending straight to mail servers (port 25)",
            Scenario::StolenCredentials => {
                "a PC sending through the ISP relay with stolen credentials"
            }
        }
    }
}

/// One live household.
#[derive(Debug, Clone)]
pub struct LiveHousehold {
    /// Display name.
    pub name: String,
    /// Its CPE.
    pub cpe_id: String,
    /// Its public address (for abuse mapping).
    pub public_ip: IpAddr,
    /// Login token.
    pub token: String,
    /// What its devices do.
    pub scenario: Scenario,
    /// The flagged device's DHCP host name, if any.
    pub infected_host: Option<String>,
    key: SigningKey,
    /// Its broker password, issued at enrollment.
    broker_password: String,
}

/// The ISP's submission relay the policy allowlists.
fn relay() -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 7)
}

/// The demo's fleet policy: enforce, with the ISP relay allowlisted.
pub fn demo_policy() -> Policy {
    Policy {
        mode: Mode::Enforce,
        allow_relays: "198.51.100.7".parse().map(|r| vec![r]).unwrap_or_default(),
        telemetry_interval_secs: TELEMETRY_EVERY_SECS,
        ..Policy::default()
    }
}

/// The ISP relay as the controller's `[policy] isp_relays` and the routers' `isp_relays`
/// name it.
pub fn isp_relay() -> RelayRule {
    RelayRule {
        net: Cidr::host(IpAddr::V4(relay())),
        port: None,
    }
}

/// Enrolls the live households in the database at `db` and signs the fleet policy with
/// `policy_key`, checked against `safety`.
///
/// # Errors
/// [`DemoError`] when the database cannot be written.
pub fn enroll(
    db: &Path,
    policy_key: &SigningKey,
    safety: &SafetyContext,
    now_ms: u64,
) -> Result<Vec<LiveHousehold>, DemoError> {
    let plan: [(&str, &str, Scenario, Option<&str>); 4] = [
        (
            "The Weber family",
            "cpe-demo-weber",
            Scenario::DirectToMx,
            Some("weber-desktop"),
        ),
        (
            "Fischer household",
            "cpe-demo-fischer",
            Scenario::StolenCredentials,
            Some("fischer-pc"),
        ),
        ("Becker household", "cpe-demo-becker", Scenario::Clean, None),
        ("Wagner household", "cpe-demo-wagner", Scenario::Clean, None),
    ];
    let mut store = Store::open(db)?;
    let db = store.db().clone();
    let mut out = Vec::new();
    for (i, (name, cpe, scenario, infected)) in plan.into_iter().enumerate() {
        let key = keys::generate();
        let enrolled = registry::add(
            &mut store,
            cpe,
            &keys::public_key_text(&key.verifying_key()),
            Some(name),
            now_ms,
        )
        .map_err(|e| DemoError::Web(format!("enrolling {cpe}: {e}")))?;
        let (_, token) = households::create(&*db, name, &[cpe], now_ms)?;
        let last = u8::try_from(10 + i).unwrap_or(10);
        out.push(LiveHousehold {
            name: name.to_string(),
            cpe_id: cpe.to_string(),
            public_ip: IpAddr::from([203, 0, 113, last]),
            token,
            scenario,
            infected_host: infected.map(str::to_string),
            key,
            broker_password: enrolled.broker_password,
        });
    }
    policy::sign(
        &mut store,
        policy_key,
        demo_policy(),
        &Target::Fleet,
        safety,
        now_ms,
    )
    .map_err(|e| DemoError::Web(format!("signing the demo policy: {e}")))?;
    smtpguard_controller::audit::record(
        &*db,
        now_ms,
        "demo",
        "policy_publish",
        "fleet",
        "ok",
        "the demo's start-up policy",
    )
    .map_err(|e| DemoError::Web(format!("auditing the demo policy: {e}")))?;
    Ok(out)
}

/// Starts one simulated agent per household against the broker at `mqtt`; each stops
/// (publishing its offline state) when `stop` turns true.
pub fn spawn(
    households: &[LiveHousehold],
    mqtt: std::net::SocketAddr,
    controller_key: VerifyingKey,
    state_dir: &Path,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    households
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut settings = Settings::new(
                h.cpe_id.clone(),
                state_dir.join(&h.cpe_id),
                format!("mqtt://{mqtt}"),
                controller_key,
            );
            settings.local_relays = vec![isp_relay()];
            settings.username = Some(h.cpe_id.clone());
            settings.password = Some(h.broker_password.clone());
            settings.reconnect_min_ms = 200;
            settings.reconnect_max_ms = 2_000;
            let agent = Agent {
                household: h.clone(),
                seed: 100 + i as u64,
                settings,
            };
            let stop = stop.clone();
            tokio::spawn(async move {
                let cpe = agent.household.cpe_id.clone();
                if let Err(e) = agent.run(stop).await {
                    tracing::error!(cpe_id = %cpe, error = %e, "simulated agent stopped");
                }
            })
        })
        .collect()
}

struct Agent {
    household: LiveHousehold,
    seed: u64,
    settings: Settings,
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

impl Agent {
    /// Runs the household's router: the real agent core fed with the simulated frames, its
    /// outputs carried out as a router would (alerts, telemetry and acks through the real
    /// uplink; blocks stop the simulated bot).
    async fn run(self, stop: watch::Receiver<bool>) -> Result<(), UplinkError> {
        let Agent {
            household,
            seed,
            settings,
        } = self;
        let mut uplink =
            Uplink::start(settings, household.key.clone(), stopped(stop.clone())).await?;
        let handle = uplink.handle.clone();
        let now = now_ms();
        let mut sim = Sim::new(seed, &household, now);
        // The first telemetry window starts now: the history before it sends none.
        let mut core = Core::new(
            CoreSettings {
                engine: EngineConfig {
                    router_macs: vec![Household::router_mac()],
                    router_ips: vec![Household::router_ip().into()],
                    ..EngineConfig::default()
                },
                isp_relays: vec![isp_relay()],
                telemetry: true,
                ..CoreSettings::default()
            },
            demo_policy(),
            now,
        );
        core.set_public_ip(Some(household.public_ip));
        // Two days of history, fed at once off the runtime's threads.
        let history = sim.take_before(now);
        let (core_back, outputs) = tokio::task::spawn_blocking(move || {
            let outputs = feed(&mut core, &history, now);
            (core, outputs)
        })
        .await
        .map_err(|_| UplinkError::Stopped)?;
        core = core_back;
        carry_out(&handle, &mut sim, outputs)?;
        // The NOC shows the households' state at once, not one window later.
        core.close_telemetry_window(now);
        carry_out(&handle, &mut sim, drain(&mut core))?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut stop_rx = stop;
        loop {
            tokio::select! {
                _ = stop_rx.changed() => {
                    if *stop_rx.borrow() {
                        break;
                    }
                }
                update = uplink.policies.recv() => match update {
                    Some(update) => {
                        core.apply_controller_policy(now_ms(), &update);
                        let outputs = drain(&mut core);
                        carry_out(&handle, &mut sim, outputs)?;
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    let now = now_ms();
                    sim.schedule_until(now + 2_000);
                    let frames = sim.take_before(now);
                    let outputs = feed(&mut core, &frames, now);
                    carry_out(&handle, &mut sim, outputs)?;
                }
            }
        }
        // The session publishes the offline state once it sees the stop.
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut uplink.task).await;
        Ok(())
    }
}

/// Feeds frames to the core as the router's run loop does, then lets time run to `until`.
fn feed(core: &mut Core, frames: &[Frame], until: u64) -> Vec<Output> {
    let mut out = Vec::new();
    for f in frames {
        core.handle_frame(f.ts_ms, &f.data);
        out.extend(drain(core));
    }
    core.handle_timeout(until);
    out.extend(drain(core));
    out
}

fn drain(core: &mut Core) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

/// What a router does with the core's outputs, minus the kernel: the simulated bot stops
/// while blocked.
fn carry_out(
    handle: &UplinkHandle,
    sim: &mut Sim,
    outputs: Vec<Output>,
) -> Result<(), UplinkError> {
    for output in outputs {
        match output {
            Output::Alert(alert) => handle.send_alert(alert)?,
            Output::Telemetry(t) => handle.send_telemetry(t)?,
            Output::PolicyAck(ack) => handle.ack(ack)?,
            Output::CommandAck(ack) => handle.command_ack(ack)?,
            Output::Apply(ops) => sim.note(&ops),
            Output::Table(_) | Output::Save(_) => {}
        }
    }
    Ok(())
}

/// A household's traffic: history up to the start, then events on the wall clock.
struct Sim {
    h: Household,
    scenario: Scenario,
    /// Devices mailing through the relay now and then, with their next send time.
    clean: Vec<(Host, u64)>,
    /// The infected device, its next send time and whether the router blocks it.
    bot: Option<(Host, u64, bool)>,
    /// Live gap between the infected device's attempts.
    bot_every_ms: u64,
}

impl Sim {
    fn new(seed: u64, household: &LiveHousehold, now: u64) -> Sim {
        let mut h = Household::new(seed);
        let start = now.saturating_sub(2 * DAY + 2 * HOUR);
        let phone = h.device(2, Some("Pixel-8"));
        let tv = h.device(3, Some("LivingRoom-TV"));
        let laptop = h.device(4, Some("laptop"));
        let mut all = vec![phone.clone(), tv, laptop.clone()];
        let bot = household
            .infected_host
            .as_deref()
            .map(|name| h.device(6, Some(name)));
        if let Some(b) = &bot {
            all.push(b.clone());
        }
        for (i, host) in all.iter().enumerate() {
            h.dhcp(start + i as u64 * 500, host);
        }
        // Clean mail: a few messages a day each, through the relay.
        let mut clean = Vec::new();
        for (k, host) in [phone, laptop].into_iter().enumerate() {
            let mut t = start + 30 * MIN + k as u64 * 47 * MIN;
            while t < now {
                relay_mail(&mut h, &host, t);
                t += 5 * HOUR + h.rng().below(2 * HOUR);
            }
            clean.push((host, t));
        }
        let mut sim = Sim {
            h,
            scenario: household.scenario,
            clean,
            bot: None,
            bot_every_ms: 12_000,
        };
        if let Some(b) = bot {
            let burst = match household.scenario {
                Scenario::DirectToMx => now.saturating_sub(8 * MIN),
                Scenario::StolenCredentials => {
                    // Four messages a day for two days: the device's own baseline.
                    for day in 0..2u64 {
                        for k in 0..4u64 {
                            relay_mail(&mut sim.h, &b, start + day * DAY + 9 * HOUR + k * 3 * HOUR);
                        }
                    }
                    now.saturating_sub(20 * MIN)
                }
                Scenario::Clean => now,
            };
            sim.bot = Some((b, burst, false));
            sim.schedule_until(now);
            // Slower live: enough for a moving picture, light on two cores.
            sim.bot_every_ms = 15_000;
        }
        sim
    }

    /// Adds every event due before `until`.
    fn schedule_until(&mut self, until: u64) {
        for i in 0..self.clean.len() {
            while self.clean[i].1 < until {
                let (host, t) = self.clean[i].clone();
                relay_mail(&mut self.h, &host, t);
                self.clean[i].1 = t + 10 * MIN + self.h.rng().below(10 * MIN);
            }
        }
        let scenario = self.scenario;
        let every = self.bot_every_ms;
        if let Some((host, next, blocked)) = &mut self.bot {
            while *next < until {
                let t = *next;
                match (scenario, *blocked) {
                    // The router drops its mail traffic: only unanswered SYNs remain.
                    (Scenario::DirectToMx, true) => {
                        let to = self.h.rng().public_ip();
                        self.h.syn_unanswered(t, host, to, 25);
                    }
                    (_, true) => self.h.syn_unanswered(t, host, relay(), 587),
                    (Scenario::DirectToMx, false) => {
                        let mx_ip = self.h.rng().public_ip();
                        let domain = format!("{}.com", self.h.rng().word());
                        self.h
                            .mx_lookup(t, host, &domain, &format!("mx.{domain}"), mx_ip);
                        let d = Dialogue::bot(self.h.rng());
                        self.h.smtp_session(t + 40, host, mx_ip, 25, &d);
                    }
                    (_, false) => relay_mail(&mut self.h, host, t),
                }
                *next = t + every;
            }
        }
    }

    /// Follows the router's enforcement of the infected device.
    fn note(&mut self, ops: &[Op]) {
        if let Some((host, _, blocked)) = &mut self.bot {
            for op in ops.iter().filter(|op| op.mac() == host.mac) {
                match op {
                    Op::Block { .. } => *blocked = true,
                    Op::Unblock { .. } => *blocked = false,
                    Op::Limit { .. } | Op::Unlimit { .. } => {}
                }
            }
        }
    }

    fn take_before(&mut self, ts_ms: u64) -> Vec<Frame> {
        self.h.take_before(ts_ms)
    }
}

fn relay_mail(h: &mut Household, host: &Host, t: u64) {
    let ehlo = format!(
        "{}.lan",
        host.hostname.clone().unwrap_or_else(|| "pc".into())
    );
    let d = Dialogue {
        starttls: true,
        ..Dialogue::mail_client(&ehlo)
    };
    h.smtp_session(t, host, relay(), 587, &d);
}

/// Where the simulated agents keep their state inside the demo directory.
pub fn state_dir(dir: &Path) -> PathBuf {
    dir.join("agents")
}
