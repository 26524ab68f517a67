//! The detection engine: a pure, deterministic state machine from Ethernet frames on the
//! router's LAN side to a verdict per household device, with evidence a person can read
//! and the actions policy calls for.
//!
//! No tokio, no clock, no I/O: time comes in as Unix milliseconds (`now_ms`), and the shell
//! (live capture or replay) feeds [`Engine::handle_frame`], calls [`Engine::handle_timeout`]
//! at [`Engine::poll_timeout`], and carries out what [`Engine::poll_action`] returns.
//! Scores are integer arithmetic (thousandths) and every output is in a fixed order, so a
//! replay prints the same bytes on every platform.
//!
//! # Layout
//! - [`class`]: device classes (camera, TV, printer, ...) from DHCP and the OUI vendor, a
//!   prior for the direct-to-MX signal.
//! - [`device`] (private): per-device state and the fixed-capacity table with its eviction
//!   rule.
//! - `keyed_hash` (private): the cheap per-engine keyed hash of the device and session
//!   tables (why keyed: a MAC flood must not be able to aim at one bucket).
//! - [`smtp`]: TCP streams into lines, and the SMTP dialogue state machine with its tells.
//! - [`dns`]: DNS (MX/CNAME/A/AAAA) and DHCP parsing into fixed-size summaries.
//! - [`names`]: EHLO heuristics (address literals, random-looking names, rDNS-like names).
//! - [`window`]: sliding-window counters and bounded key sets.
//! - `score` (private): signals → levels → score → verdict, and evidence sentences.
//!
//! # Which frames make devices
//! A device is the LAN side of an outbound conversation: the sender of a TCP segment to a
//! mail port ([`EngineConfig::mail_ports`]), of a DNS query, or the client of a DHCP exchange. Multicast
//! sources, the router's own MACs and addresses, and connections arriving from a public
//! IPv4 address to a private one (port forwarding to a home server) never make devices.
//!
//! # Memory bounds
//! Devices: `device_capacity` (eviction rule in `device`). TCP sessions on mail ports:
//! `session_capacity`, least recently active evicted when full, each with two fixed
//! [`smtp::LINE_MAX`] line buffers. Per device: at most [`SERVERS_MAX`] distinct mail
//! servers, [`MX_NAMES_MAX`] MX names and [`MX_ADDRS_MAX`] MX-answered addresses, with
//! small fixed lists of names for correlation, and the long-window state (at most 3 KiB,
//! see `score`). Connection log and action queue are bounded
//! rings that drop their oldest entries (counted).

pub mod class;
mod device;
pub mod dns;
mod keyed_hash;
pub mod names;
mod score;
pub mod smtp;
pub mod window;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use smtpguard_protocol::{
    Action, Alert, ConnRecord, DeviceReport, MacAddr, Mode, Observed, Policy, Verdict,
};

use crate::oui::OuiTable;
use crate::packet::{self, Packet, TcpSegment, Transport, UdpDatagram};
use crate::ports::MailPorts;
pub use device::Peak;
use device::{action_bit, Device, DeviceTable, Slot};
use keyed_hash::KeyedState;
use smtp::{Events, Limits, Smtp, Stream, Tell};
use window::ip_key;

/// Devices tracked by default.
pub const DEFAULT_DEVICE_CAPACITY: usize = 1024;
/// Concurrent TCP sessions on mail ports tracked by default.
pub const DEFAULT_SESSION_CAPACITY: usize = 1024;
/// Connection records kept for telemetry by default.
pub const DEFAULT_CONN_LOG_CAPACITY: usize = 1024;
/// Pending actions kept when the shell does not drain them.
pub const ACTION_QUEUE_MAX: usize = 4096;
/// Manual releases held at once (people release devices by hand; a few are ever in force).
/// When full, the hold that ends soonest makes room.
pub const HOLDS_MAX: usize = 256;
/// Distinct mail servers remembered per device.
pub const SERVERS_MAX: usize = 1024;
/// MX names remembered per device.
pub const MX_NAMES_MAX: usize = 64;
/// MX-answered addresses remembered per device.
pub const MX_ADDRS_MAX: usize = 256;
/// A SYN to a mail port without any answer after this long counts as unanswered.
pub const SYN_TIMEOUT_MS: u64 = 15_000;
/// A mail session with no packets for this long is forgotten.
pub const SESSION_IDLE_MS: u64 = 300_000;

pub(crate) const HOUR_MS: u64 = 3_600_000;
pub(crate) const DAY_MS: u64 = 86_400_000;
/// The long horizon: dialogue tells, rejections and the day's fan-out are remembered this
/// long, so a slow bot accumulates evidence across windows.
pub(crate) const LONG_MS: u64 = DAY_MS;

const SMTP_PORT: u16 = 25;
const SMTPS_PORT: u16 = 465;

/// Engine construction parameters (not policy: these do not change at run time).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most devices tracked at once (default 1024).
    pub device_capacity: usize,
    /// Most concurrent TCP sessions on mail ports tracked (default 1024).
    pub session_capacity: usize,
    /// Most SMTP connection records kept until [`Engine::drain_connections`] (default 1024).
    pub conn_log_capacity: usize,
    /// The router's own LAN MACs: never devices.
    pub router_macs: Vec<MacAddr>,
    /// The router's own addresses: never devices.
    pub router_ips: Vec<IpAddr>,
    /// Vendor lookup for new devices.
    pub oui: Option<Arc<OuiTable>>,
    /// The mail ports (the agent's one set, `enforce.mail_ports`): 25 is direct-to-MX,
    /// every other one submission.
    pub mail_ports: MailPorts,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            device_capacity: DEFAULT_DEVICE_CAPACITY,
            session_capacity: DEFAULT_SESSION_CAPACITY,
            conn_log_capacity: DEFAULT_CONN_LOG_CAPACITY,
            router_macs: Vec::new(),
            router_ips: Vec::new(),
            oui: None,
            mail_ports: MailPorts::default(),
        }
    }
}

/// Something the shell must do.
// Actions are rare (verdict changes), so the unboxed alert costs nothing that matters and
// keeps the interface the other modules code against.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum EngineAction {
    /// Verdict changed: the alert to send (with evidence).
    Alert(Alert),
    /// Carry out `action` on the device's mail traffic until `until_ms` (`None` = until
    /// further notice), per policy mode.
    Enforce {
        /// The device.
        mac: MacAddr,
        /// Rate-limit or block.
        action: Action,
        /// When the engine will release it by itself.
        until_ms: Option<u64>,
        /// Why, in words (verdict, score and the strongest evidence).
        reason: String,
    },
    /// Lift whatever is in force on the device (TTL expired, verdict cleared, allowlisted
    /// by new policy).
    Release {
        /// The device.
        mac: MacAddr,
    },
}

/// Why the engine would not put enforcement in force on a device
/// ([`Engine::impose`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The device is on the policy's device allowlist.
    #[error("the device is on the policy's allow_macs list")]
    Allowlisted,
    /// The policy in force only monitors.
    #[error("the policy in force is in monitor mode: this router blocks nothing")]
    MonitorMode,
    /// Every tracked device is under suspicion or action, and this one is new.
    #[error("the device table is full of devices under suspicion or action")]
    TableFull,
}

/// How strong an action is: monitoring < rate limit < block.
fn strength(a: Action) -> u8 {
    match a {
        Action::Monitor => 0,
        Action::RateLimit => 1,
        Action::Block => 2,
    }
}

fn weaker(a: Action, b: Action) -> Action {
    if strength(a) <= strength(b) {
        a
    } else {
        b
    }
}

fn stronger(a: Action, b: Action) -> Action {
    if strength(a) >= strength(b) {
        a
    } else {
        b
    }
}

/// The strongest action a policy mode allows.
fn mode_ceiling(mode: Mode) -> Action {
    match mode {
        Mode::Monitor => Action::Monitor,
        Mode::RateLimit => Action::RateLimit,
        Mode::Enforce => Action::Block,
    }
}

/// Counters of the engine's own health and work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Frames handled.
    pub packets: u64,
    /// Frames that could not be decoded.
    pub malformed: u64,
    /// Frames without IP (ARP and the like).
    pub non_ip: u64,
    /// Devices in the table now.
    pub devices: u64,
    /// Devices evicted from the full table.
    pub devices_evicted: u64,
    /// New devices refused because every tracked device was under suspicion or action.
    pub devices_refused: u64,
    /// TCP sessions on mail ports seen.
    pub smtp_sessions: u64,
    /// Sessions dropped because the session table was full.
    pub sessions_evicted: u64,
    /// DNS messages parsed.
    pub dns_messages: u64,
    /// DNS messages that were malformed.
    pub dns_malformed: u64,
    /// DHCP messages parsed.
    pub dhcp_messages: u64,
    /// Alerts raised.
    pub alerts: u64,
    /// Actions dropped because the shell did not drain them.
    pub actions_dropped: u64,
    /// Connection records dropped because the log was full.
    pub connections_dropped: u64,
}

/// Every device's state at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// When (Unix ms).
    pub at_ms: u64,
    /// Devices, highest score first, then by MAC.
    pub devices: Vec<DeviceReport>,
}

/// A manual release in its grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hold {
    /// When the grace period ends (Unix ms).
    until_ms: u64,
    /// The device was found to deserve enforcement during the grace period (logged once).
    asked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    client: IpAddr,
    client_port: u16,
    server: IpAddr,
    server_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionKind {
    /// Port 25 to a host that is not an allowlisted relay.
    Direct,
    /// 587/465, an allowlisted relay, or port 25 after successful AUTH.
    Submission,
}

#[derive(Clone)]
struct Session {
    key: FlowKey,
    device: usize,
    /// The device's identity, to notice when its slot was reused.
    device_id: u64,
    /// The slot holds a tracked session (not on the free list).
    in_use: bool,
    kind: SessionKind,
    saw_syn: bool,
    answered: bool,
    syn_ms: u64,
    last_ms: u64,
    client_fin: bool,
    server_fin: bool,
    /// Messages of this session already counted on the device.
    counted_messages: u32,
    /// Implicit TLS (465): nothing to parse.
    opaque: bool,
    client: Stream,
    server: Stream,
    smtp: Smtp,
}

/// Policy turned into the integers the engine computes with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub window_ms: u64,
    pub tick_ms: u64,
    pub fanout_servers: u32,
    pub fanout_networks: u32,
    pub syn_storm: u32,
    pub many_rcpts: u32,
    pub baseline_days: u32,
    pub surge_factor_milli: u64,
    pub surge_min_per_hour: u32,
    /// Weights in thousandths, in [`score::Signal`] order.
    pub weights: [u32; score::SIGNALS],
    pub suspicious_h: u32,
    pub infected_h: u32,
    pub block_ttl_ms: u64,
}

fn thousandths(v: f32) -> u32 {
    if v.is_finite() && v > 0.0 {
        (v.min(1000.0) * 1000.0).round() as u32
    } else {
        0
    }
}

fn hundredths(v: f32) -> u32 {
    if v.is_finite() && v > 0.0 {
        (v.min(1000.0) * 100.0).round() as u32
    } else {
        0
    }
}

impl Params {
    fn from_policy(p: &Policy) -> Self {
        let d = &p.detection;
        let w = &p.weights;
        let window_ms = u64::from(d.window_secs.max(1)) * 1000;
        Params {
            window_ms,
            tick_ms: (window_ms / 20).clamp(1000, 60_000),
            fanout_servers: d.fanout_servers.max(1),
            fanout_networks: d.fanout_networks.max(1),
            syn_storm: d.syn_storm.max(1),
            many_rcpts: d.many_rcpts.max(1),
            baseline_days: d.baseline_days.clamp(1, device::BASELINE_DAYS_MAX as u32),
            surge_factor_milli: u64::from(thousandths(d.surge_factor).max(1000)),
            surge_min_per_hour: d.surge_min_per_hour.max(1),
            weights: [
                thousandths(w.direct_mx),
                thousandths(w.mx_follow),
                thousandths(w.dialogue),
                thousandths(w.rejections),
                thousandths(w.submission_surge),
                thousandths(w.syn_storm),
                thousandths(w.indicators),
                score::LONG_WEIGHTS[0],
                score::LONG_WEIGHTS[1],
                score::LONG_WEIGHTS[2],
                score::LONG_WEIGHTS[3],
                score::LONG_WEIGHTS[4],
            ],
            suspicious_h: hundredths(p.thresholds.suspicious).max(1),
            infected_h: hundredths(p.thresholds.infected).max(1),
            block_ttl_ms: p.block_ttl_ms(),
        }
    }
}

/// The detection engine. See the module documentation.
pub struct Engine {
    config: EngineConfig,
    policy: Policy,
    params: Params,
    devices: DeviceTable,
    sessions: Vec<Session>,
    session_index: HashMap<FlowKey, usize, KeyedState>,
    free_sessions: Vec<usize>,
    actions: VecDeque<EngineAction>,
    /// The connection log, each record with the device's LAN address (for the NAT lookup).
    connections: VecDeque<(ConnRecord, IpAddr)>,
    stats: EngineStats,
    now_ms: u64,
    next_sweep_ms: Option<u64>,
    next_expiry_ms: Option<u64>,
    /// Devices a person released by hand: no enforcement until the end of their grace
    /// period. See [`Engine::hold`].
    holds: BTreeMap<MacAddr, Hold>,
    dirty: Vec<usize>,
    /// The device the current frame was about.
    touched: Option<usize>,
    next_device_id: u64,
}

impl Engine {
    /// A new engine with `config` and an initial `policy` (validated by the caller).
    pub fn new(config: EngineConfig, policy: Policy) -> Engine {
        let params = Params::from_policy(&policy);
        let mut config = config;
        config.device_capacity = config.device_capacity.max(1);
        config.session_capacity = config.session_capacity.max(1);
        config.conn_log_capacity = config.conn_log_capacity.max(1);
        Engine {
            devices: DeviceTable::new(config.device_capacity),
            config,
            policy,
            params,
            sessions: Vec::new(),
            session_index: HashMap::with_hasher(KeyedState::new()),
            free_sessions: Vec::new(),
            actions: VecDeque::new(),
            connections: VecDeque::new(),
            stats: EngineStats::default(),
            now_ms: 0,
            next_sweep_ms: None,
            next_expiry_ms: None,
            holds: BTreeMap::new(),
            dirty: Vec::new(),
            touched: None,
            next_device_id: 0,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Applies a new policy at once: thresholds, weights, allowlists, mode and indicators.
    /// Every device is re-evaluated; actions no longer called for are released. A changed
    /// detection window restarts the windowed counters.
    pub fn set_policy(&mut self, policy: Policy) {
        let old_window = self.params.window_ms;
        self.params = Params::from_policy(&policy);
        self.policy = policy;
        let slots: Vec<usize> = self.devices.occupied().collect();
        if self.params.window_ms != old_window {
            for &s in &slots {
                if let Some(d) = self.devices.device_mut(s) {
                    d.reset_windows(self.params.window_ms);
                }
            }
        }
        let now = self.now_ms;
        for s in slots {
            self.evaluate(now, s);
        }
        self.recompute_expiry();
    }

    fn clock(&mut self, now_ms: u64) -> u64 {
        self.now_ms = self.now_ms.max(now_ms);
        if self.next_sweep_ms.is_none() {
            self.next_sweep_ms = Some(self.now_ms + self.params.tick_ms);
        }
        self.now_ms
    }

    /// Handles one raw Ethernet frame captured at `now_ms`. Never panics; frames that do
    /// not decode are counted in [`EngineStats::malformed`].
    pub fn handle_frame(&mut self, now_ms: u64, frame: &[u8]) {
        let now = self.clock(now_ms);
        self.stats.packets += 1;
        let pkt = match packet::decode(frame) {
            Ok(Some(p)) => p,
            Ok(None) => {
                self.stats.non_ip += 1;
                return;
            }
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        match pkt.transport {
            Transport::Tcp(t) if self.config.mail_ports.contains(t.dst_port) => {
                self.client_segment(now, &pkt, &t)
            }
            Transport::Tcp(t) if self.config.mail_ports.contains(t.src_port) => {
                self.server_segment(now, &pkt, &t)
            }
            Transport::Udp(u) => self.datagram(now, &pkt, &u),
            _ => {}
        }
        self.flush_dirty(now);
    }

    /// Sets a device's host name (from the router's DHCP lease file); adds the device if
    /// it is new.
    pub fn set_hostname(&mut self, mac: MacAddr, name: &str) {
        let now = self.now_ms;
        if let Some(slot) = self.device_for(now, mac) {
            if let Some(d) = self.devices.device_mut(slot) {
                d.set_hostname(name.as_bytes());
            }
        }
    }

    /// A person released `mac` by hand (`smtpguard-agent release`, or the controller's
    /// release command): whatever the engine had in force is forgotten, and the device is
    /// neither rate-limited nor blocked until `until_ms` however it behaves. When the grace
    /// period ends, a device that still deserves it is enforced again as soon as it sends
    /// mail (the same rule as after a block runs out), so a bot that was released too early
    /// cannot keep spamming.
    pub fn hold(&mut self, now_ms: u64, mac: MacAddr, until_ms: u64) {
        let now = self.clock(now_ms);
        if until_ms <= now {
            return;
        }
        if self.holds.len() >= HOLDS_MAX && !self.holds.contains_key(&mac) {
            let soonest = self
                .holds
                .iter()
                .min_by_key(|(_, h)| h.until_ms)
                .map(|(m, _)| *m);
            if let Some(m) = soonest {
                self.holds.remove(&m);
            }
        }
        self.holds.insert(
            mac,
            Hold {
                until_ms,
                asked: false,
            },
        );
        if let Some(d) = self
            .devices
            .get(&mac)
            .and_then(|s| self.devices.device_mut(s))
        {
            d.action = Action::Monitor;
            d.action_until_ms = None;
            d.awaiting_resume = false;
        }
        self.recompute_expiry();
    }

    /// Puts `action` in force on `mac` until `until_ms`, whatever its verdict: a block the
    /// controller commanded, or enforcement restored after a restart. The policy in force
    /// still rules: nothing on an allowlisted device or in monitor mode, a rate limit
    /// instead of a block in rate-limit mode. It ends a manual release's grace period (a
    /// person or the controller wants the device stopped). Stronger or longer enforcement
    /// already in force stays. Returns the action in force afterwards.
    ///
    /// # Errors
    /// A [`Refusal`] when the policy forbids it or the device table has no room.
    pub fn impose(
        &mut self,
        now_ms: u64,
        mac: MacAddr,
        action: Action,
        until_ms: u64,
        reason: &str,
    ) -> Result<Action, Refusal> {
        let now = self.clock(now_ms);
        if self.policy.is_allowed_device(&mac) {
            return Err(Refusal::Allowlisted);
        }
        let action = weaker(action, mode_ceiling(self.policy.mode));
        if action == Action::Monitor {
            return Err(Refusal::MonitorMode);
        }
        let slot = self.device_for(now, mac).ok_or(Refusal::TableFull)?;
        self.holds.remove(&mac);
        let until_ms = until_ms.max(now + 1);
        let Some(d) = self.devices.device_mut(slot) else {
            return Err(Refusal::TableFull);
        };
        let current_until = d.action_until_ms.filter(|&t| t > now);
        let keeps = match current_until {
            // Enforcement with an end: kept when at least as strong and as long.
            Some(t) => strength(d.action) >= strength(action) && t >= until_ms,
            // Open-ended (a rate limit the verdict holds): kept when stronger.
            None => strength(d.action) > strength(action),
        };
        if keeps {
            return Ok(d.action);
        }
        let until_ms = match current_until {
            Some(t) if d.action == action => t.max(until_ms),
            _ => until_ms,
        };
        d.action = action;
        d.action_until_ms = Some(until_ms);
        d.awaiting_resume = false;
        d.actions_taken |= action_bit(action);
        d.dirty = true;
        self.push_action(EngineAction::Enforce {
            mac,
            action,
            until_ms: Some(until_ms),
            reason: reason.to_string(),
        });
        self.recompute_expiry();
        Ok(action)
    }

    /// The manual releases in their grace period at `now_ms`: device and end (Unix ms).
    pub fn holds(&self, now_ms: u64) -> impl Iterator<Item = (MacAddr, u64)> + '_ {
        self.holds
            .iter()
            .filter(move |(_, h)| h.until_ms > now_ms)
            .map(|(&mac, h)| (mac, h.until_ms))
    }

    /// Advances time: expires blocks and manual releases' grace periods, times out
    /// unanswered SYNs and idle sessions, slides windows and re-evaluates devices.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let now = self.clock(now_ms);
        if self.next_expiry_ms.is_some_and(|t| t <= now) {
            self.expire_actions(now);
        }
        if self.next_sweep_ms.is_some_and(|t| t <= now) {
            // An idle engine (no session open, every device clean, unenforced and quiet
            // for longer than any window) has nothing to slide or re-evaluate: it stops
            // ticking until the next frame, so a clock set forward by years (NTP at a
            // router's boot, a capture with a long gap) costs a few sweeps, not one per tick.
            let busy = self.sweep(now);
            self.next_sweep_ms = busy.then(|| now + self.params.tick_ms);
        }
        self.flush_dirty(now);
    }

    /// The next time [`Engine::handle_timeout`] has work (Unix ms), once time has started.
    pub fn poll_timeout(&self) -> Option<u64> {
        match (self.next_sweep_ms, self.next_expiry_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next action to carry out, oldest first.
    pub fn poll_action(&mut self) -> Option<EngineAction> {
        self.actions.pop_front()
    }

    /// Every device, highest score first (then by MAC), at `now_ms`.
    pub fn report(&self, now_ms: u64) -> Report {
        let now = now_ms.max(self.now_ms);
        let mut devices: Vec<DeviceReport> = self
            .devices
            .occupied()
            .filter_map(|s| self.device_report(s, now))
            .collect();
        devices.sort_by(|a, b| {
            let sa = (a.score * 100.0).round() as u32;
            let sb = (b.score * 100.0).round() as u32;
            sb.cmp(&sa).then(a.mac.cmp(&b.mac))
        });
        Report {
            at_ms: now,
            devices,
        }
    }

    /// The engine's counters.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.clone();
        s.devices = self.devices.len() as u64;
        s
    }

    /// The SMTP connection log since the last call (oldest first), for telemetry.
    pub fn drain_connections(&mut self) -> Vec<ConnRecord> {
        self.connections.drain(..).map(|(r, _)| r).collect()
    }

    /// The oldest logged connection not yet taken, with the LAN address the device opened
    /// it from (what a conntrack lookup of its NAT translation needs).
    pub fn pop_connection(&mut self) -> Option<(ConnRecord, IpAddr)> {
        self.connections.pop_front()
    }

    /// Indicator values seen on a device (EHLO names, MAIL FROM domains, mail servers),
    /// each sorted.
    pub fn observed(&self, mac: &MacAddr) -> Observed {
        self.devices
            .get(mac)
            .and_then(|s| self.devices.device(s))
            .map(observed_of)
            .unwrap_or_default()
    }

    /// The highest score a device reached while in the table, with the verdict and evidence
    /// of that moment (`None` if it never scored).
    pub fn peak(&self, mac: &MacAddr) -> Option<Peak> {
        self.devices
            .get(mac)
            .and_then(|s| self.devices.device(s))
            .and_then(|d| d.peak.clone())
    }

    /// Every action taken for a device since it entered the table, in the order monitor,
    /// rate-limit, block (`monitor` when a non-clean verdict called for no enforcement).
    pub fn actions_taken(&self, mac: &MacAddr) -> Vec<Action> {
        let bits = self
            .devices
            .get(mac)
            .and_then(|s| self.devices.device(s))
            .map_or(0, |d| d.actions_taken);
        [Action::Monitor, Action::RateLimit, Action::Block]
            .into_iter()
            .filter(|a| bits & action_bit(*a) != 0)
            .collect()
    }

    // ---- frames -------------------------------------------------------------------

    /// Whether a frame from `mac`/`src` to `dst` may come from a household device.
    fn lan_client(&self, mac: MacAddr, src: IpAddr, dst: IpAddr) -> bool {
        if mac.is_multicast()
            || self.config.router_macs.contains(&mac)
            || self.config.router_ips.contains(&src)
        {
            return false;
        }
        // From the internet to a LAN address: port forwarding to a home server.
        !(is_public_v4(src) && is_private(dst))
    }

    fn device_for(&mut self, now: u64, mac: MacAddr) -> Option<usize> {
        let window = self.params.window_ms;
        let oui = &self.config.oui;
        let make = || {
            let vendor = oui
                .as_ref()
                .and_then(|t| t.lookup(&mac))
                .map(str::to_string);
            Device::new(mac, now, window, vendor)
        };
        let slot = match self.devices.lookup_or_add(mac, make) {
            Slot::Known(s) => s,
            Slot::Added { slot, evicted } => {
                if evicted {
                    // Its sessions go stale: `live_session` drops them when next seen.
                    self.stats.devices_evicted += 1;
                }
                self.next_device_id += 1;
                if let Some(d) = self.devices.device_mut(slot) {
                    d.id = self.next_device_id;
                }
                slot
            }
            Slot::Refused => {
                self.stats.devices_refused += 1;
                return None;
            }
        };
        if let Some(d) = self.devices.device_mut(slot) {
            d.last_seen_ms = d.last_seen_ms.max(now);
        }
        self.touched = Some(slot);
        Some(slot)
    }

    /// Whether session `s` still belongs to the device it was made for (the device may
    /// have been evicted and its slot reused); frees it if not.
    fn live_session(&mut self, s: usize) -> bool {
        let sess = &self.sessions[s];
        let live = self
            .devices
            .device(sess.device)
            .is_some_and(|d| d.id == sess.device_id);
        if !live {
            self.free_session(s);
        }
        live
    }

    fn client_segment(&mut self, now: u64, pkt: &Packet<'_>, t: &TcpSegment<'_>) {
        if !self.lan_client(pkt.src_mac, pkt.src_ip, pkt.dst_ip) {
            return;
        }
        let key = FlowKey {
            client: pkt.src_ip,
            client_port: t.src_port,
            server: pkt.dst_ip,
            server_port: t.dst_port,
        };
        let existing = self
            .session_index
            .get(&key)
            .copied()
            .filter(|&s| self.live_session(s));
        if t.syn && !t.ack {
            if let Some(s) = existing {
                // A retransmitted SYN.
                self.sessions[s].last_ms = now;
                return;
            }
            let Some(dev) = self.device_for(now, pkt.src_mac) else {
                return;
            };
            if let Some(d) = self.devices.device_mut(dev) {
                d.learn_ip(pkt.src_ip);
            }
            let s = self.new_session(now, key, dev, true);
            self.sessions[s].client.syn(t.seq);
            self.on_connection(now, s);
            return;
        }
        let s = match existing {
            Some(s) => s,
            None => {
                // A session already under way when we started watching.
                if t.payload.is_empty() || t.rst || t.fin {
                    return;
                }
                let Some(dev) = self.device_for(now, pkt.src_mac) else {
                    return;
                };
                if let Some(d) = self.devices.device_mut(dev) {
                    d.learn_ip(pkt.src_ip);
                }
                self.new_session(now, key, dev, false)
            }
        };
        self.sessions[s].last_ms = now;
        self.touched = Some(self.sessions[s].device);
        if let Some(d) = self.devices.device_mut(self.sessions[s].device) {
            d.last_seen_ms = d.last_seen_ms.max(now);
        }
        if t.rst {
            self.free_session(s);
            return;
        }
        if !t.payload.is_empty() && !self.sessions[s].opaque {
            let limits = Limits {
                many_rcpts: self.params.many_rcpts,
            };
            let mut ev = Events::default();
            let Session { client, smtp, .. } = &mut self.sessions[s];
            client.feed(t.seq, t.payload, |line| {
                smtp.client_line(line, &limits, &mut ev)
            });
            self.apply_events(now, s, ev);
        }
        if t.fin {
            self.sessions[s].client_fin = true;
            if self.sessions[s].server_fin {
                self.free_session(s);
            }
        }
    }

    fn server_segment(&mut self, now: u64, pkt: &Packet<'_>, t: &TcpSegment<'_>) {
        let key = FlowKey {
            client: pkt.dst_ip,
            client_port: t.dst_port,
            server: pkt.src_ip,
            server_port: t.src_port,
        };
        let Some(s) = self.session_index.get(&key).copied() else {
            return;
        };
        if !self.live_session(s) {
            return;
        }
        self.touched = Some(self.sessions[s].device);
        let sess = &mut self.sessions[s];
        sess.last_ms = now;
        sess.answered = true;
        if t.syn {
            sess.server.syn(t.seq);
            return;
        }
        if t.rst {
            self.free_session(s);
            return;
        }
        if !t.payload.is_empty() && !sess.opaque {
            let mut ev = Events::default();
            let Session { server, smtp, .. } = sess;
            server.feed(t.seq, t.payload, |line| {
                smtp.server_line(line, &mut ev);
                0
            });
            self.apply_events(now, s, ev);
        }
        if t.fin {
            self.sessions[s].server_fin = true;
            if self.sessions[s].client_fin {
                self.free_session(s);
            }
        }
    }

    fn datagram(&mut self, now: u64, pkt: &Packet<'_>, u: &UdpDatagram<'_>) {
        if u.dst_port == 53 {
            if !self.lan_client(pkt.src_mac, pkt.src_ip, pkt.dst_ip) {
                return;
            }
            let Ok(msg) = dns::parse_dns(u.payload) else {
                self.stats.dns_malformed += 1;
                return;
            };
            self.stats.dns_messages += 1;
            if msg.response {
                return;
            }
            let Some(dev) = self.device_for(now, pkt.src_mac) else {
                return;
            };
            if let Some(d) = self.devices.device_mut(dev) {
                d.learn_ip(pkt.src_ip);
                if msg.qtype == dns::TYPE_MX {
                    d.mx_lookups.add(now, 1);
                }
            }
        } else if u.src_port == 53 {
            let Some(dev) = self.devices.get(&pkt.dst_mac) else {
                return;
            };
            let Ok(msg) = dns::parse_dns(u.payload) else {
                self.stats.dns_malformed += 1;
                return;
            };
            self.stats.dns_messages += 1;
            if !msg.response {
                return;
            }
            let window = self.params.window_ms;
            let Some(d) = self.devices.device_mut(dev) else {
                return;
            };
            for &mx in msg.mx() {
                d.mx_names.touch(mx, now, MX_NAMES_MAX);
            }
            let recent = now.saturating_sub(window);
            for &(alias, target) in msg.cnames() {
                if d.mx_names.contains_since(alias, recent) {
                    d.mx_names.touch(target, now, MX_NAMES_MAX);
                }
            }
            for (owner, ip) in msg.addrs() {
                if d.mx_names.contains_since(owner, recent) {
                    d.mx_addrs.touch(ip_key(ip), now, MX_ADDRS_MAX);
                }
            }
        } else if (u.src_port, u.dst_port) == (68, 67) || (u.src_port, u.dst_port) == (67, 68) {
            let Ok(msg) = dns::parse_dhcp(u.payload) else {
                return;
            };
            self.stats.dhcp_messages += 1;
            let mac = MacAddr(msg.chaddr);
            if mac.is_multicast() || self.config.router_macs.contains(&mac) {
                return;
            }
            if msg.op == 1 {
                let Some(dev) = self.device_for(now, mac) else {
                    return;
                };
                if let Some(d) = self.devices.device_mut(dev) {
                    if let Some(name) = msg.hostname {
                        d.set_hostname(name);
                    }
                    if msg.vendor_class.is_some() || msg.params.is_some() {
                        d.set_dhcp_client(msg.vendor_class, msg.params);
                    }
                }
            } else if msg.msg_type == Some(dns::DHCP_ACK) && !msg.yiaddr.is_unspecified() {
                if let Some(d) = self
                    .devices
                    .get(&mac)
                    .and_then(|s| self.devices.device_mut(s))
                {
                    d.learn_ip(IpAddr::V4(msg.yiaddr));
                }
            }
        }
    }

    // ---- sessions -----------------------------------------------------------------

    fn new_session(&mut self, now: u64, key: FlowKey, dev: usize, saw_syn: bool) -> usize {
        let dev_id = self.devices.device(dev).map_or(0, |d| d.id);
        self.stats.smtp_sessions += 1;
        let relay = self.policy.is_relay(key.server, key.server_port);
        let kind = if key.server_port == SMTP_PORT && !relay {
            SessionKind::Direct
        } else {
            SessionKind::Submission
        };
        if self.session_index.len() >= self.config.session_capacity {
            let victim = self
                .sessions
                .iter()
                .enumerate()
                .filter(|(_, s)| s.in_use)
                .min_by_key(|(i, s)| (s.last_ms, *i))
                .map(|(i, _)| i);
            if let Some(v) = victim {
                self.free_session(v);
                self.stats.sessions_evicted += 1;
            }
        }
        let fresh = |sess: &mut Session| {
            sess.key = key;
            sess.device = dev;
            sess.device_id = dev_id;
            sess.in_use = true;
            sess.kind = kind;
            sess.saw_syn = saw_syn;
            sess.answered = false;
            sess.syn_ms = now;
            sess.last_ms = now;
            sess.client_fin = false;
            sess.server_fin = false;
            sess.counted_messages = 0;
            sess.opaque = key.server_port == SMTPS_PORT;
            sess.client.reset();
            sess.server.reset();
            sess.smtp.start(key.server_port, key.client, saw_syn);
        };
        let slot = match self.free_sessions.pop() {
            Some(i) => {
                fresh(&mut self.sessions[i]);
                i
            }
            None => {
                let mut sess = Session {
                    key,
                    device: dev,
                    device_id: dev_id,
                    in_use: true,
                    kind,
                    saw_syn,
                    answered: false,
                    syn_ms: now,
                    last_ms: now,
                    client_fin: false,
                    server_fin: false,
                    counted_messages: 0,
                    opaque: false,
                    client: Stream::default(),
                    server: Stream::default(),
                    smtp: Smtp::default(),
                };
                fresh(&mut sess);
                self.sessions.push(sess);
                self.sessions.len() - 1
            }
        };
        self.session_index.insert(key, slot);
        slot
    }

    fn free_session(&mut self, s: usize) {
        let sess = &mut self.sessions[s];
        if sess.in_use {
            sess.in_use = false;
            self.session_index.remove(&sess.key);
            self.free_sessions.push(s);
        }
    }

    /// A new connection (SYN) to a mail port.
    fn on_connection(&mut self, now: u64, s: usize) {
        let sess = &mut self.sessions[s];
        let key = sess.key;
        let kind = sess.kind;
        if kind == SessionKind::Submission {
            // One message per connection; more when cleartext DATA shows them.
            sess.counted_messages = 1;
        }
        let dev = sess.device;
        let window = self.params.window_ms;
        let foreign_submission =
            kind == SessionKind::Submission && !self.policy.is_relay(key.server, key.server_port);
        let indicator = self
            .policy
            .indicators
            .mail_servers
            .iter()
            .find(|c| c.contains(key.server))
            .copied();
        let Some(d) = self.devices.device_mut(dev) else {
            return;
        };
        if self.connections.len() >= self.config.conn_log_capacity {
            self.connections.pop_front();
            self.stats.connections_dropped += 1;
        }
        self.connections.push_back((
            ConnRecord {
                mac: d.mac,
                at_ms: now,
                src_port: key.client_port,
                dst: key.server,
                dst_port: key.server_port,
                nat_port: None,
                nat_ip: None,
            },
            key.client,
        ));
        d.awaiting_resume = false;
        d.last_signal_ms = now;
        d.dirty = true;
        d.observe_server(key.server);
        match kind {
            SessionKind::Direct => {
                d.direct.add(now, 1);
                d.first_direct_ms.get_or_insert(now);
                let k = ip_key(key.server);
                if d.servers.touch(k, now, SERVERS_MAX) {
                    d.new_servers.add(now, 1);
                }
                if d.mx_addrs.contains_since(k, now.saturating_sub(window)) {
                    d.mx_followed.add(now, 1);
                }
            }
            SessionKind::Submission => {
                d.submissions.add(now, 1);
                d.messages.add(now, 1);
                d.count_submission(now, 1);
                if foreign_submission
                    && d.sub_servers
                        .touch(ip_key(key.server), now, device::SUBMISSION_KEYS_MAX)
                {
                    d.new_sub_servers.add(now, 1);
                }
            }
        }
        if let Some(c) = indicator {
            d.indicator(
                now,
                format_args!(
                    "connected to {} in campaign indicator network {c}",
                    key.server
                ),
            );
        }
    }

    /// The server refused AUTH in session `s`: an AUTH failure, and not the message a
    /// submission connection was counted as when it opened (unless the session has since
    /// authenticated or shown messages of its own).
    fn auth_refused(&mut self, now: u64, s: usize) {
        let sess = &mut self.sessions[s];
        let shown = sess.smtp.messages();
        let refund = sess.kind == SessionKind::Submission
            && !sess.smtp.authed()
            && sess.counted_messages > shown;
        let provisional = sess.counted_messages.saturating_sub(shown);
        let opened_ms = sess.syn_ms;
        if refund {
            sess.counted_messages = shown;
        }
        if let Some(d) = self.devices.device_mut(sess.device) {
            if refund {
                d.uncount_submission(opened_ms, provisional);
            }
            d.auth_refusals.add(now, 1);
            d.auth_fail_day.add(now, 1);
            d.last_signal_ms = now;
            d.dirty = true;
        }
    }

    fn apply_events(&mut self, now: u64, s: usize, ev: Events) {
        if ev == Events::default() {
            return;
        }
        let sess = &mut self.sessions[s];
        if ev.auth_ok && sess.kind == SessionKind::Direct {
            // Authenticated on port 25: a relay (the provider's), not someone's MX.
            sess.kind = SessionKind::Submission;
            if let Some(d) = self.devices.device_mut(sess.device) {
                d.servers.flag(ip_key(sess.key.server));
                d.submissions.add(now, 1);
                d.count_submission(now, 1);
            }
            sess.counted_messages = sess.counted_messages.max(1);
        }
        if ev.auth_failed {
            self.auth_refused(now, s);
        }
        let sess = &mut self.sessions[s];
        let total = sess.smtp.messages();
        let new_messages = total.saturating_sub(sess.counted_messages);
        sess.counted_messages = sess.counted_messages.max(total);
        let kind = sess.kind;
        let dev_ip = sess.key.client;
        let smtp = &sess.smtp;
        let policy = &self.policy;
        let Some(d) = self.devices.device_mut(sess.device) else {
            return;
        };
        if ev.auth_identity {
            if let Some(id) = smtp.auth_identity() {
                if d.auth_ids.touch(id, now, device::SUBMISSION_KEYS_MAX) {
                    d.new_ids.add(now, 1);
                    d.last_signal_ms = now;
                    d.dirty = true;
                }
            }
        }
        if new_messages > 0 {
            d.messages.add(now, new_messages);
            if kind == SessionKind::Submission {
                d.count_submission(now, new_messages);
            }
        }
        if ev.rcpts > 0 {
            d.rcpts.add(now, ev.rcpts);
            d.max_rcpts = d.max_rcpts.max(smtp.rcpts());
            if smtp.rcpts() > self.params.many_rcpts {
                // Keep the count in the evidence current as the session goes on.
                let n = d.max_rcpts;
                d.tell(
                    Tell::ManyRcpts,
                    now,
                    format_args!("{n} RCPT TO in one session"),
                );
            }
        }
        for t in Tell::ALL {
            if ev.tells & t.bit() == 0 {
                continue;
            }
            let ehlo = smtp.ehlo();
            match t {
                Tell::EhloForeignIp => d.tell(
                    t,
                    now,
                    format_args!("EHLO {ehlo} is not this device's address ({dev_ip})"),
                ),
                Tell::EhloRandom => {
                    d.tell(t, now, format_args!("EHLO {ehlo} looks machine-generated"))
                }
                Tell::EhloRdnsLike => d.tell(
                    t,
                    now,
                    format_args!("EHLO {ehlo} claims an access line's reverse-DNS name"),
                ),
                Tell::MailFromMismatch => d.tell(
                    t,
                    now,
                    format_args!(
                        "MAIL FROM domain {} does not match EHLO {ehlo}",
                        smtp.mail_domain()
                    ),
                ),
                Tell::ManyRcpts => {
                    let n = d.max_rcpts.max(smtp.rcpts());
                    d.tell(t, now, format_args!("{n} RCPT TO in one session"))
                }
                Tell::BeforeGreeting => d.tell(
                    t,
                    now,
                    format_args!("commands sent before the server's greeting"),
                ),
                Tell::UnadvertisedPipelining => d.tell(
                    t,
                    now,
                    format_args!("commands pipelined to a server that did not offer PIPELINING"),
                ),
                Tell::OutOfSequence => d.tell(
                    t,
                    now,
                    format_args!("commands out of sequence (server answered 503)"),
                ),
                Tell::ForgedReceived => d.tell(
                    t,
                    now,
                    format_args!(
                        "message carries a forged Received header (helo={})",
                        smtp.received_helo()
                    ),
                ),
            }
        }
        if ev.ehlo {
            let name = smtp.ehlo();
            Device::observe_name(&mut d.obs_ehlo, name);
            if policy
                .indicators
                .ehlo_names
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name))
            {
                d.indicator(
                    now,
                    format_args!("EHLO {name} is a known campaign indicator"),
                );
            }
        }
        if ev.mail_from {
            let domain = smtp.mail_domain();
            Device::observe_name(&mut d.obs_domains, domain);
            if policy
                .indicators
                .mail_from_domains
                .iter()
                .any(|n| n.eq_ignore_ascii_case(domain))
            {
                d.indicator(
                    now,
                    format_args!("MAIL FROM domain {domain} is a known campaign indicator"),
                );
            }
        }
        if ev.rejection {
            d.rejections.add(now, 1);
            d.rejection_text.clear();
            d.rejection_text.push_str(smtp.rejection_text());
            d.last_signal_ms = now;
            d.dirty = true;
        }
    }

    // ---- time ---------------------------------------------------------------------

    /// Times out sessions, slides windows and marks devices to re-evaluate; whether anything
    /// is still going on (an open session or an active device) that needs the next tick.
    fn sweep(&mut self, now: u64) -> bool {
        let mut busy = false;
        for i in 0..self.sessions.len() {
            let sess = &self.sessions[i];
            if !sess.in_use || !self.live_session(i) {
                continue;
            }
            let sess = &self.sessions[i];
            if sess.saw_syn && !sess.answered && now.saturating_sub(sess.syn_ms) >= SYN_TIMEOUT_MS {
                let dev = sess.device;
                self.free_session(i);
                if let Some(d) = self.devices.device_mut(dev) {
                    d.unanswered.add(now, 1);
                    d.last_signal_ms = now;
                    d.dirty = true;
                }
            } else if now.saturating_sub(sess.last_ms) >= SESSION_IDLE_MS {
                self.free_session(i);
            } else {
                busy = true;
            }
        }
        let window = self.params.window_ms;
        let long_ago = now.saturating_sub(LONG_MS);
        let slots: Vec<usize> = self.devices.occupied().collect();
        for s in slots {
            let Some(d) = self.devices.device_mut(s) else {
                continue;
            };
            d.servers.expire(long_ago);
            d.mx_names.expire(long_ago);
            d.mx_addrs.expire(now.saturating_sub(window));
            d.auth_ids.expire(now.saturating_sub(device::HABIT_MS));
            d.sub_servers.expire(now.saturating_sub(device::HABIT_MS));
            let active = d.verdict != Verdict::Clean
                || d.score_h > 0
                || d.action != Action::Monitor
                || d.last_signal_ms + LONG_MS + window > now;
            if active {
                d.dirty = true;
                busy = true;
            }
            if d.dirty {
                self.dirty.push(s);
            }
        }
        busy
    }

    fn expire_actions(&mut self, now: u64) {
        let slots: Vec<usize> = self.devices.occupied().collect();
        for s in slots {
            let Some(d) = self.devices.device_mut(s) else {
                continue;
            };
            if d.action != Action::Monitor && d.action_until_ms.is_some_and(|t| t <= now) {
                // After a block runs out the device is blocked again only once it sends
                // mail again; the next evaluation decides afresh.
                d.awaiting_resume = d.action == Action::Block;
                d.action = Action::Monitor;
                d.action_until_ms = None;
                d.dirty = true;
                let mac = d.mac;
                self.push_action(EngineAction::Release { mac });
                self.dirty.push(s);
            }
        }
        let ended: Vec<MacAddr> = self
            .holds
            .iter()
            .filter(|(_, h)| h.until_ms <= now)
            .map(|(m, _)| *m)
            .collect();
        for mac in ended {
            self.holds.remove(&mac);
            tracing::info!(%mac, "grace period of the manual release over");
            // Like a block that ran out: enforced again when it sends mail again.
            if let Some(s) = self.devices.get(&mac) {
                if let Some(d) = self.devices.device_mut(s) {
                    d.awaiting_resume = true;
                    d.dirty = true;
                    self.dirty.push(s);
                }
            }
        }
        self.recompute_expiry();
    }

    fn recompute_expiry(&mut self) {
        let blocks = self
            .devices
            .occupied()
            .filter_map(|s| self.devices.device(s))
            .filter(|d| d.action != Action::Monitor)
            .filter_map(|d| d.action_until_ms);
        let holds = self.holds.values().map(|h| h.until_ms);
        self.next_expiry_ms = blocks.chain(holds).min();
    }

    fn flush_dirty(&mut self, now: u64) {
        if let Some(s) = self.touched.take() {
            if self.devices.device(s).is_some_and(|d| d.dirty) {
                self.dirty.push(s);
            }
        }
        if self.dirty.is_empty() {
            return;
        }
        let mut slots = std::mem::take(&mut self.dirty);
        slots.sort_unstable();
        slots.dedup();
        for &s in &slots {
            self.evaluate(now, s);
        }
        slots.clear();
        self.dirty = slots;
    }

    // ---- verdicts and actions -----------------------------------------------------

    fn push_action(&mut self, a: EngineAction) {
        if self.actions.len() >= ACTION_QUEUE_MAX {
            self.actions.pop_front();
            self.stats.actions_dropped += 1;
        }
        self.actions.push_back(a);
    }

    fn evaluate(&mut self, now: u64, slot: usize) {
        let params = self.params;
        let Some(d) = self.devices.device_mut(slot) else {
            return;
        };
        d.dirty = false;
        let m = score::measure(d, &params, now);
        let assessed = score::assess(&m, &params);
        let previous = d.verdict;
        d.score_h = assessed.score_h;
        d.verdict = assessed.verdict;
        if d.peak.as_ref().is_none_or(|p| assessed.score_h > p.score_h) && assessed.score_h > 0 {
            d.peak = Some(Peak {
                verdict: assessed.verdict,
                score_h: assessed.score_h,
                evidence: score::evidence(d, &m, &params),
                at_ms: now,
            });
        }
        // The one place that decides enforcement. The verdict asks for an action within
        // what the policy allows (mode, allowlist, a manual release's grace period);
        // enforcement with an end (a block, or one commanded or restored) lasts until its
        // end as long as the policy still allows it, so a bot that went quiet because it
        // is blocked is not let out by its own silence.
        let allowed = self.policy.is_allowed_device(&d.mac);
        let mut ceiling = if allowed {
            Action::Monitor
        } else {
            mode_ceiling(self.policy.mode)
        };
        let asked = weaker(self.policy.mode.action_for(d.verdict), ceiling);
        if ceiling != Action::Monitor {
            if let Some(hold) = self.holds.get_mut(&d.mac).filter(|h| h.until_ms > now) {
                if asked != Action::Monitor && !hold.asked {
                    hold.asked = true;
                    tracing::info!(
                        mac = %d.mac,
                        action = %asked,
                        grace_left_secs = (hold.until_ms - now).div_ceil(1000),
                        "released by hand recently: not enforcing"
                    );
                }
                ceiling = Action::Monitor;
            }
        }
        let by_verdict = weaker(asked, ceiling);
        let kept = match d.action_until_ms {
            Some(t) if t > now => weaker(d.action, ceiling),
            _ => Action::Monitor,
        };
        let desired = stronger(by_verdict, kept);
        if d.verdict != Verdict::Clean && desired == Action::Monitor {
            d.actions_taken |= action_bit(Action::Monitor);
        }
        let mut enforce = None;
        if desired != d.action {
            match desired {
                Action::Monitor => {
                    d.action = Action::Monitor;
                    d.action_until_ms = None;
                    enforce = Some(EngineAction::Release { mac: d.mac });
                }
                Action::Block if d.awaiting_resume => {}
                Action::Block | Action::RateLimit => {
                    // What the verdict asks for ends by the policy (blocks) or with the
                    // verdict (rate limits); kept enforcement keeps its end.
                    let until = if strength(by_verdict) >= strength(kept) {
                        (desired == Action::Block).then(|| now + params.block_ttl_ms)
                    } else {
                        d.action_until_ms
                    };
                    d.action = desired;
                    d.action_until_ms = until;
                    d.actions_taken |= action_bit(desired);
                    let evidence = score::evidence(d, &m, &params);
                    let reason = format!(
                        "{} (score {}): {}",
                        d.verdict,
                        score::format_score(d.score_h),
                        evidence.first().map_or("", String::as_str)
                    );
                    enforce = Some(EngineAction::Enforce {
                        mac: d.mac,
                        action: desired,
                        until_ms: until,
                        reason,
                    });
                }
            }
        }
        if previous != assessed.verdict {
            self.stats.alerts += 1;
            if let Some(report) = self.device_report(slot, now) {
                let observed = self
                    .devices
                    .device(slot)
                    .map(observed_of)
                    .unwrap_or_default();
                self.push_action(EngineAction::Alert(Alert {
                    device: report,
                    previous,
                    at_ms: now,
                    observed,
                }));
            }
        }
        if let Some(a) = enforce {
            self.push_action(a);
            self.recompute_expiry();
        }
    }

    fn device_report(&self, slot: usize, now: u64) -> Option<DeviceReport> {
        let d = self.devices.device(slot)?;
        let m = score::measure(d, &self.params, now);
        let mut ips = d.ips.clone();
        ips.sort();
        Some(DeviceReport {
            mac: d.mac,
            ips,
            hostname: d.hostname.clone(),
            vendor: d.vendor.clone(),
            verdict: d.verdict,
            score: d.score_h as f32 / 100.0,
            action: d.action,
            action_until_ms: d.action_until_ms,
            counters: m.counters(),
            evidence: score::evidence(d, &m, &self.params),
        })
    }
}

fn observed_of(d: &Device) -> Observed {
    let mut ehlo_names = d.obs_ehlo.clone();
    ehlo_names.sort();
    let mut mail_from_domains = d.obs_domains.clone();
    mail_from_domains.sort();
    let mut mail_servers = d.obs_servers.clone();
    mail_servers.sort();
    Observed {
        ehlo_names,
        mail_from_domains,
        mail_servers,
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || v4.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
        }
    }
}

fn is_public_v4(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(is_private(ip)
                || v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast())
        }
        IpAddr::V6(_) => false,
    }
}
