//! One household device's state, and the fixed-capacity table that holds them.
//!
//! # Eviction rule
//! The table holds at most `capacity` devices. When a new MAC arrives at a full table, the
//! least recently seen device whose verdict is `clean` and that has no action in force is
//! evicted (ties: the lowest slot). If every device is suspicious, infected or under an
//! action, the newcomer is refused and counted instead — a flood of spoofed MACs can
//! neither grow memory nor push a convicted bot out of the table.

use std::collections::HashMap;
use std::net::IpAddr;

use smtpguard_protocol::{Action, MacAddr, Verdict};

use super::class::{self, Announced, Class, Source};
use super::keyed_hash::KeyedState;
use super::smtp::Tell;
use super::window::{Buckets, KeySet};

/// Addresses remembered per device (most recent first).
pub const MAX_IPS: usize = 4;
/// EHLO names and MAIL FROM domains remembered per device for fleet correlation.
pub const MAX_NAMES: usize = 8;
/// Mail servers remembered per device for fleet correlation.
pub const MAX_SERVERS_OBSERVED: usize = 32;
/// Longest DHCP host name kept.
pub const MAX_HOSTNAME: usize = 63;
/// Days of submission history kept for the baseline (policy's `baseline_days` is capped).
pub const BASELINE_DAYS_MAX: usize = 31;

pub(crate) const TELLS: usize = 9;
/// Longest DHCP vendor class kept.
pub const MAX_VENDOR_CLASS: usize = 32;
/// Longest DHCP parameter request list kept (longer lists match no fingerprint).
pub const MAX_DHCP_PARAMS: usize = 32;
/// AUTH identities and foreign submission servers remembered per device.
pub const SUBMISSION_KEYS_MAX: usize = 64;
/// How long AUTH identities and submission servers are remembered: what a device used in
/// this time is its own habit, not news.
pub const HABIT_MS: u64 = 7 * super::DAY_MS;

/// What the engine tracks about one device.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    /// Unique for the engine's lifetime (slots are reused).
    pub id: u64,
    pub mac: MacAddr,
    pub ips: Vec<IpAddr>,
    pub hostname: Option<String>,
    pub vendor: Option<String>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Last time anything scored changed (connections, tells, rejections).
    pub last_signal_ms: u64,

    pub direct: Buckets<20>,
    pub submissions: Buckets<20>,
    pub messages: Buckets<20>,
    /// AUTH commands the server refused.
    pub auth_refusals: Buckets<20>,
    pub rcpts: Buckets<20>,
    pub mx_lookups: Buckets<20>,
    pub mx_followed: Buckets<20>,
    pub unanswered: Buckets<20>,
    /// Reputation rejections over 24 h (1 h buckets).
    pub rejections: Buckets<24>,
    /// Submitted messages over the last hour (5 min buckets).
    pub hourly: Buckets<12>,
    /// Submitted messages per day, ring indexed by day number.
    pub daily: [u32; BASELINE_DAYS_MAX + 1],
    pub daily_newest: u64,

    pub servers: KeySet,
    pub mx_names: KeySet,
    pub mx_addrs: KeySet,

    // Long-window state (hours to days); its size is documented in `score` and checked by
    // `long_window_state_size`.
    /// Mail servers new to [`Device::servers`] per hour over 24 h: the day's true count of
    /// distinct servers even past [`super::SERVERS_MAX`].
    pub new_servers: Buckets<24>,
    /// The device's first direct-to-MX connection since it entered the table.
    pub first_direct_ms: Option<u64>,
    /// AUTH refusals per hour over 24 h.
    pub auth_fail_day: Buckets<24>,
    /// Hashes of AUTH identities (never the names) used in the last [`HABIT_MS`].
    pub auth_ids: KeySet,
    /// AUTH identities new to the device, per hour over 24 h.
    pub new_ids: Buckets<24>,
    /// Submission servers other than the allowlisted relays, used in the last [`HABIT_MS`].
    pub sub_servers: KeySet,
    /// Submission servers new to the device, per hour over 24 h.
    pub new_sub_servers: Buckets<24>,
    /// DHCP vendor class (option 60), cut to [`MAX_VENDOR_CLASS`].
    pub vendor_class: Option<String>,
    /// DHCP parameter request list (option 55).
    pub dhcp_params: [u8; MAX_DHCP_PARAMS],
    pub dhcp_params_len: u8,
    /// What kind of device this is, from the above, the host name and the vendor.
    pub class: Option<(Class, Source)>,

    pub tell_last_ms: [Option<u64>; TELLS],
    pub tell_detail: [String; TELLS],
    pub max_rcpts: u32,
    pub rejection_text: String,
    pub indicator_last_ms: Option<u64>,
    pub indicator_detail: String,

    pub verdict: Verdict,
    pub score_h: u32,
    pub action: Action,
    pub action_until_ms: Option<u64>,
    /// A block ran out; the device is re-blocked only when it sends mail again.
    pub awaiting_resume: bool,
    /// Bits of [`action_bit`]: every action taken for the device.
    pub actions_taken: u8,
    pub dirty: bool,
    /// The highest score reached, with its verdict, evidence and time.
    pub peak: Option<Peak>,

    pub obs_ehlo: Vec<String>,
    pub obs_domains: Vec<String>,
    pub obs_servers: Vec<IpAddr>,
}

/// The strongest moment of a device so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Peak {
    /// Verdict then.
    pub verdict: Verdict,
    /// Score then, in hundredths.
    pub score_h: u32,
    /// Evidence then.
    pub evidence: Vec<String>,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// Bit for an action in [`Device::actions_taken`].
pub(crate) fn action_bit(a: Action) -> u8 {
    match a {
        Action::Monitor => 1,
        Action::RateLimit => 2,
        Action::Block => 4,
    }
}

impl Device {
    pub fn new(mac: MacAddr, now_ms: u64, window_ms: u64, vendor: Option<String>) -> Self {
        let class = class::classify(&Announced {
            vendor: vendor.as_deref(),
            ..Announced::default()
        });
        Device {
            id: 0,
            mac,
            ips: Vec::new(),
            hostname: None,
            vendor,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            last_signal_ms: 0,
            direct: Buckets::new(window_ms),
            submissions: Buckets::new(window_ms),
            messages: Buckets::new(window_ms),
            auth_refusals: Buckets::new(window_ms),
            rcpts: Buckets::new(window_ms),
            mx_lookups: Buckets::new(window_ms),
            mx_followed: Buckets::new(window_ms),
            unanswered: Buckets::new(window_ms),
            rejections: Buckets::new(super::LONG_MS),
            hourly: Buckets::new(super::HOUR_MS),
            daily: [0; BASELINE_DAYS_MAX + 1],
            daily_newest: now_ms / super::DAY_MS,
            servers: KeySet::default(),
            mx_names: KeySet::default(),
            mx_addrs: KeySet::default(),
            new_servers: Buckets::new(super::DAY_MS),
            first_direct_ms: None,
            auth_fail_day: Buckets::new(super::DAY_MS),
            auth_ids: KeySet::default(),
            new_ids: Buckets::new(super::DAY_MS),
            sub_servers: KeySet::default(),
            new_sub_servers: Buckets::new(super::DAY_MS),
            vendor_class: None,
            dhcp_params: [0; MAX_DHCP_PARAMS],
            dhcp_params_len: 0,
            class,
            tell_last_ms: [None; TELLS],
            tell_detail: Default::default(),
            max_rcpts: 0,
            rejection_text: String::new(),
            indicator_last_ms: None,
            indicator_detail: String::new(),
            verdict: Verdict::Clean,
            score_h: 0,
            action: Action::Monitor,
            action_until_ms: None,
            awaiting_resume: false,
            actions_taken: 0,
            dirty: false,
            peak: None,
            obs_ehlo: Vec::new(),
            obs_domains: Vec::new(),
            obs_servers: Vec::new(),
        }
    }

    /// Restarts the windowed counters for a new window length.
    pub fn reset_windows(&mut self, window_ms: u64) {
        self.direct = Buckets::new(window_ms);
        self.submissions = Buckets::new(window_ms);
        self.messages = Buckets::new(window_ms);
        self.auth_refusals = Buckets::new(window_ms);
        self.rcpts = Buckets::new(window_ms);
        self.mx_lookups = Buckets::new(window_ms);
        self.mx_followed = Buckets::new(window_ms);
        self.unanswered = Buckets::new(window_ms);
    }

    pub fn learn_ip(&mut self, ip: IpAddr) {
        if self.ips.first() == Some(&ip) {
            return;
        }
        self.ips.retain(|a| *a != ip);
        self.ips.insert(0, ip);
        self.ips.truncate(MAX_IPS);
    }

    pub fn set_hostname(&mut self, raw: &[u8]) {
        let clean: String = raw
            .iter()
            .take(MAX_HOSTNAME)
            .map(|&b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                    char::from(b)
                } else {
                    '?'
                }
            })
            .collect();
        if clean.is_empty() || self.hostname.as_deref() == Some(clean.as_str()) {
            return;
        }
        self.hostname = Some(clean);
        self.classify();
    }

    /// Takes what a DHCP request says about the client: vendor class and parameter list.
    pub fn set_dhcp_client(&mut self, vendor_class: Option<&[u8]>, params: Option<&[u8]>) {
        if let Some(raw) = vendor_class {
            let clean: String = raw
                .iter()
                .take(MAX_VENDOR_CLASS)
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        char::from(b)
                    } else {
                        '?'
                    }
                })
                .collect();
            if !clean.trim().is_empty() {
                self.vendor_class = Some(clean);
            }
        }
        if let Some(p) = params {
            // Too long to be one of the known lists: remember that it is none of them.
            let n = if p.len() <= MAX_DHCP_PARAMS {
                p.len()
            } else {
                0
            };
            self.dhcp_params[..n].copy_from_slice(&p[..n]);
            self.dhcp_params_len = n as u8;
        }
        self.classify();
    }

    fn classify(&mut self) {
        let n = usize::from(self.dhcp_params_len);
        self.class = class::classify(&Announced {
            vendor_class: self.vendor_class.as_deref(),
            params: (n > 0).then(|| &self.dhcp_params[..n]),
            hostname: self.hostname.as_deref(),
            vendor: self.vendor.as_deref(),
        });
    }

    /// What showed the device's class, in words for evidence (`DHCP host name "garage-cam"`).
    pub fn class_source(&self) -> String {
        match self.class {
            Some((_, Source::VendorClass)) => format!(
                "DHCP vendor class \"{}\"",
                self.vendor_class.as_deref().unwrap_or("")
            ),
            Some((_, Source::Fingerprint)) => "its DHCP client's parameter list".to_string(),
            Some((_, Source::HostName)) => {
                format!("host name \"{}\"", self.hostname.as_deref().unwrap_or(""))
            }
            Some((_, Source::Vendor)) => {
                format!("maker {}", self.vendor.as_deref().unwrap_or(""))
            }
            None => String::new(),
        }
    }

    pub fn tell(&mut self, t: Tell, now_ms: u64, detail: std::fmt::Arguments<'_>) {
        use std::fmt::Write;
        let i = t.index();
        self.tell_last_ms[i] = Some(now_ms);
        let d = &mut self.tell_detail[i];
        d.clear();
        let _ = d.write_fmt(detail);
        self.last_signal_ms = now_ms;
        self.dirty = true;
    }

    pub fn indicator(&mut self, now_ms: u64, detail: std::fmt::Arguments<'_>) {
        use std::fmt::Write;
        self.indicator_last_ms = Some(now_ms);
        self.indicator_detail.clear();
        let _ = self.indicator_detail.write_fmt(detail);
        self.last_signal_ms = now_ms;
        self.dirty = true;
    }

    /// Counts one submitted message for the hourly volume and the daily baseline.
    pub fn count_submission(&mut self, now_ms: u64, n: u32) {
        self.hourly.add(now_ms, n);
        let day = now_ms / super::DAY_MS;
        if day > self.daily_newest {
            let gap = day - self.daily_newest;
            let len = self.daily.len() as u64;
            for i in 1..=gap.min(len) {
                self.daily[((self.daily_newest + i) % len) as usize] = 0;
            }
            self.daily_newest = day;
        }
        let slot = (day % self.daily.len() as u64) as usize;
        self.daily[slot] = self.daily[slot].saturating_add(n);
        self.last_signal_ms = now_ms;
        self.dirty = true;
    }

    /// Takes back `n` messages counted at `at_ms` that were not submitted after all (a
    /// submission connection, counted as one message when it opened, whose AUTH was
    /// refused): from the window, the hourly volume and that day's count.
    pub fn uncount_submission(&mut self, at_ms: u64, n: u32) {
        self.messages.remove(at_ms, n);
        self.hourly.remove(at_ms, n);
        let day = at_ms / super::DAY_MS;
        let len = self.daily.len() as u64;
        if day <= self.daily_newest && day + len > self.daily_newest {
            let slot = (day % len) as usize;
            self.daily[slot] = self.daily[slot].saturating_sub(n);
        }
        self.dirty = true;
    }

    /// Submitted messages per hour before today (thousandths), over up to `days` whole
    /// days; for a device first seen today, over the hours before the current one.
    /// `None` when there is no history at all.
    pub fn baseline_milli_per_hour(&self, now_ms: u64, days: u32) -> Option<u64> {
        let today = now_ms / super::DAY_MS;
        let first_day = self.first_seen_ms / super::DAY_MS;
        let len = self.daily.len() as u64;
        let whole = (today.saturating_sub(first_day))
            .min(u64::from(days))
            .min(len - 1);
        if whole >= 1 {
            let mut sum = 0u64;
            for d in today - whole..today {
                if d <= self.daily_newest && d + len > self.daily_newest {
                    sum += u64::from(self.daily[(d % len) as usize]);
                }
            }
            return Some(sum * 1000 / (whole * 24));
        }
        let hours = now_ms.saturating_sub(self.first_seen_ms) / super::HOUR_MS;
        if hours == 0 {
            return None;
        }
        let today_count = if self.daily_newest == today {
            u64::from(self.daily[(today % len) as usize])
        } else {
            0
        };
        let before = today_count.saturating_sub(u64::from(self.hourly.total(now_ms)));
        Some(before * 1000 / hours)
    }

    pub fn observe_name(list: &mut Vec<String>, name: &str) {
        if name.is_empty() || list.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return;
        }
        if list.len() >= MAX_NAMES {
            list.remove(0);
        }
        list.push(name.to_string());
    }

    pub fn observe_server(&mut self, ip: IpAddr) {
        if self.obs_servers.contains(&ip) {
            return;
        }
        if self.obs_servers.len() >= MAX_SERVERS_OBSERVED {
            self.obs_servers.remove(0);
        }
        self.obs_servers.push(ip);
    }

    /// Whether the eviction rule allows dropping this device.
    pub fn evictable(&self) -> bool {
        self.verdict == Verdict::Clean && self.action == Action::Monitor
    }
}

/// The fixed-capacity device table.
#[derive(Debug)]
pub(crate) struct DeviceTable {
    pub slots: Vec<Option<Device>>,
    /// Keyed per table: see `keyed_hash`.
    index: HashMap<MacAddr, usize, KeyedState>,
    free: Vec<usize>,
    capacity: usize,
}

/// What happened when a device was looked up for a frame.
pub(crate) enum Slot {
    /// Already known.
    Known(usize),
    /// Newly added; `evicted` names the slot's previous occupant.
    Added { slot: usize, evicted: bool },
    /// Table full of devices that must not be evicted.
    Refused,
}

impl DeviceTable {
    pub fn new(capacity: usize) -> Self {
        DeviceTable {
            slots: Vec::new(),
            index: HashMap::with_hasher(KeyedState::new()),
            free: Vec::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, mac: &MacAddr) -> Option<usize> {
        self.index.get(mac).copied()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn device(&self, slot: usize) -> Option<&Device> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    pub fn device_mut(&mut self, slot: usize) -> Option<&mut Device> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    /// Finds or adds `mac`, evicting by the module's rule when full.
    pub fn lookup_or_add(&mut self, mac: MacAddr, make: impl FnOnce() -> Device) -> Slot {
        if let Some(&slot) = self.index.get(&mac) {
            return Slot::Known(slot);
        }
        let mut evicted = false;
        if self.index.len() >= self.capacity {
            let victim = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, d)| d.as_ref().map(|d| (i, d)))
                .filter(|(_, d)| d.evictable())
                .min_by_key(|(i, d)| (d.last_seen_ms, *i))
                .map(|(i, _)| i);
            let Some(victim) = victim else {
                return Slot::Refused;
            };
            if let Some(old) = self.slots[victim].take() {
                self.index.remove(&old.mac);
            }
            self.free.push(victim);
            evicted = true;
        }
        let device = make();
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(device);
                s
            }
            None => {
                self.slots.push(Some(device));
                self.slots.len() - 1
            }
        };
        self.index.insert(mac, slot);
        Slot::Added { slot, evicted }
    }

    /// Occupied slots in slot order (deterministic).
    pub fn occupied(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.as_ref().map(|_| i))
    }
}
