//! From a device's counters to a score, a verdict and evidence sentences.
//!
//! Each signal has a level in thousandths (1000 = counts in full, reached at the policy's
//! saturation level) and contributes `weight × level`; the score is the sum, capped at 1,
//! rounded to hundredths; verdict thresholds compare hundredths. Integers only.
//!
//! | signal | level reaches 1000 at |
//! |---|---|
//! | direct-to-MX | `fanout_servers` distinct servers or `fanout_networks` /24s in the window, or 3 × `fanout_servers` servers in 24 h |
//! | MX follow | `fanout_servers` connections to MX-answered addresses in the window |
//! | dialogue | 100 points of tells seen in 24 h (see [`super::smtp::Tell::points`]) |
//! | rejections | 3 reputation rejections in 24 h |
//! | submission surge | messages in the last hour ≥ max(`surge_min_per_hour`, `surge_factor` × baseline per hour); nothing below `surge_min_per_hour` |
//! | SYN storm | `syn_storm` unanswered SYNs in the window |
//! | indicators | any match in 24 h |
//! | persistence | new mail servers every hour: [`PERSIST_SERVERS_PER_HOUR`] or more in each of the last 3 hours or more, in full at 8 |
//! | new sender | the direct-to-MX level, for a device whose first direct-to-MX mail came after [`QUIET_MS`] on the network without any (for a week after) |
//! | device class | the direct-to-MX level, for a device whose class never sends mail itself (camera, TV, printer, smart-home gadget; see [`super::class`]) |
//! | AUTH failures | [`AUTH_FAIL_BURST`] refusals in the window or [`AUTH_FAIL_DAY`] in 24 h; at most 0.3 while the device used one AUTH identity in 24 h (a mail program retrying a stale password) |
//! | submission spread | AUTH identities or foreign submission servers new to the device (not used in the 7 days before) in 24 h: from the third, in full at [`SPREAD_FULL`] more |
//!
//! The first seven weights are policy (`weights`); the last five are the constants
//! [`LONG_WEIGHTS`]: they refine the policy's signals rather than stand beside them, and a
//! NOC tunes them through the thresholds.
//!
//! # Long-window state per device
//! Besides the 10-minute counters, each device keeps (see `device::Device`): four 24-hour
//! hourly counters (new mail servers, AUTH refusals, new AUTH identities, new submission
//! servers; 112 bytes each), the first direct-to-MX time, the DHCP vendor class (at most
//! 32 bytes) and parameter list (32 bytes), the class, and two sets of at most
//! [`super::device::SUBMISSION_KEYS_MAX`] (64) hashed AUTH identities and submission
//! servers remembered for 7 days (16 bytes an entry, 1 KiB each at most). In all at most
//! 3 KiB per device (`long_window_state_size` checks it); the direct-to-MX server set (16 bytes a server, at
//! most [`super::SERVERS_MAX`]) was there before and serves the hour and the day.

use smtpguard_protocol::messages::MAX_EVIDENCE;
use smtpguard_protocol::{DeviceCounters, Verdict};

use super::device::{Device, TELLS};
use super::smtp::Tell;
use super::{Params, DAY_MS, HOUR_MS, LONG_MS};

/// Number of signals.
pub const SIGNALS: usize = 12;

/// Weights (thousandths) of persistence, new sender, device class, AUTH failures and
/// submission spread.
pub const LONG_WEIGHTS: [u32; 5] = [400, 300, 300, 500, 400];

/// New mail servers in an hour that make it an hour of a persistent sender.
pub const PERSIST_SERVERS_PER_HOUR: u32 = 6;
/// Hours of persistence before it counts at all, and at which it counts in full.
const PERSIST_MIN_HOURS: u32 = 3;
const PERSIST_FULL_HOURS: u32 = 8;
/// Time on the network without direct-to-MX mail that makes a device a quiet one.
pub const QUIET_MS: u64 = 3 * DAY_MS;
/// How long after its first direct-to-MX mail a quiet device counts as a new sender.
const NEW_SENDER_MS: u64 = 7 * DAY_MS;
/// AUTH refusals in the window, or in 24 h, that count in full.
pub const AUTH_FAIL_BURST: u32 = 5;
pub const AUTH_FAIL_DAY: u32 = 20;
/// The AUTH failure level while only one identity is in use.
const STALE_PASSWORD_LEVEL: u32 = 300;
/// New AUTH identities or submission servers in 24 h that are a device's own business
/// (a second account, a new provider), and how many more count in full.
const SPREAD_FREE: u32 = 2;
pub const SPREAD_FULL: u32 = 6;
/// The long-window state's bound per device in bytes (documented above, checked by a test).
#[cfg(test)]
const LONG_STATE_MAX_BYTES: usize = 3 * 1024;

const DIRECT: usize = 0;
const MX_FOLLOW: usize = 1;
const DIALOGUE: usize = 2;
const REJECTIONS: usize = 3;
const SURGE: usize = 4;
const SYN: usize = 5;
const INDICATORS: usize = 6;
const PERSIST: usize = 7;
const NEW_SENDER: usize = 8;
const CLASS: usize = 9;
const AUTH_FAIL: usize = 10;
const SPREAD: usize = 11;

/// Reputation rejections in 24 h that count in full.
const REJECTIONS_FULL: u32 = 3;

/// What was counted for one device at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Measures {
    pub direct_conns: u32,
    pub servers_w: u32,
    pub nets_w: u32,
    pub servers_day: u32,
    pub mx_lookups: u32,
    pub mx_followed: u32,
    pub unanswered: u32,
    pub submissions: u32,
    pub messages: u32,
    pub auth_refusals: u32,
    pub rcpts: u32,
    pub rejections_day: u32,
    pub hour_messages: u32,
    pub baseline_milli: Option<u64>,
    pub tells: [bool; TELLS],
    pub dialogue_points: u32,
    pub indicator: bool,
    /// Distinct mail servers and networks in the last hour.
    pub servers_hour: u32,
    pub nets_hour: u32,
    /// Distinct networks in 24 h.
    pub nets_day: u32,
    /// Consecutive hours up to now with new mail servers every hour.
    pub persist_hours: u32,
    /// Days on the network before the first direct-to-MX mail, for a quiet device that
    /// started in the last week.
    pub quiet_days: Option<u64>,
    /// A class that never sends mail itself.
    pub never_mails: bool,
    pub auth_fail_day: u32,
    pub new_ids_day: u32,
    pub new_sub_servers_day: u32,
    /// Distinct AUTH identities used in 24 h.
    pub ids_day: u32,
}

impl Measures {
    pub fn counters(&self) -> DeviceCounters {
        DeviceCounters {
            smtp_connections: self.direct_conns,
            distinct_mail_servers: self.servers_w,
            distinct_networks: self.nets_w,
            mx_lookups: self.mx_lookups,
            mx_followed: self.mx_followed,
            submission_connections: self.submissions,
            messages: self.messages,
            unanswered_syns: self.unanswered,
            rcpt_commands: self.rcpts,
            remote_rejections: self.rejections_day,
        }
    }
}

pub(crate) fn measure(d: &Device, p: &Params, now: u64) -> Measures {
    let since_w = now.saturating_sub(p.window_ms);
    let since_day = now.saturating_sub(LONG_MS);
    let (servers_w, nets_w) = d.servers.count_since(since_w);
    let (servers_hour, nets_hour) = d.servers.count_since(now.saturating_sub(HOUR_MS));
    let (kept_day, nets_day) = d.servers.count_since(since_day);
    // The set holds at most SERVERS_MAX servers; the hourly count of servers new to it
    // does not stop there.
    let servers_day = kept_day.max(d.new_servers.total(now));
    let hours = d.new_servers.per_bucket(now);
    let mut persist_hours = 0;
    for (age, &n) in hours.iter().enumerate() {
        if n >= PERSIST_SERVERS_PER_HOUR {
            persist_hours += 1;
        } else if age > 0 {
            // The current hour is still filling: it does not end a streak.
            break;
        }
    }
    let quiet_days = d.first_direct_ms.and_then(|first| {
        let quiet = first.saturating_sub(d.first_seen_ms);
        (quiet >= QUIET_MS && now.saturating_sub(first) < NEW_SENDER_MS).then_some(quiet / DAY_MS)
    });
    let mut tells = [false; TELLS];
    let mut points = 0;
    for t in Tell::ALL {
        if d.tell_last_ms[t.index()].is_some_and(|at| at + LONG_MS > now) {
            tells[t.index()] = true;
            points += t.points();
        }
    }
    Measures {
        // The connection counter slides a bucket at a time and the server set to the
        // millisecond: every distinct server in the window had a connection in it, so the
        // count is at least that many (evidence never reads "38 connections to 40 servers").
        direct_conns: d.direct.total(now).max(servers_w),
        servers_w,
        nets_w,
        servers_day,
        mx_lookups: d.mx_lookups.total(now),
        mx_followed: d.mx_followed.total(now),
        unanswered: d.unanswered.total(now),
        submissions: d.submissions.total(now),
        messages: d.messages.total(now),
        auth_refusals: d.auth_refusals.total(now),
        rcpts: d.rcpts.total(now),
        rejections_day: d.rejections.total(now),
        hour_messages: d.hourly.total(now),
        baseline_milli: d.baseline_milli_per_hour(now, p.baseline_days),
        tells,
        dialogue_points: points,
        indicator: d.indicator_last_ms.is_some_and(|at| at + LONG_MS > now),
        servers_hour,
        nets_hour,
        nets_day,
        persist_hours,
        quiet_days,
        never_mails: d.class.is_some_and(|(c, _)| c.never_mails()),
        auth_fail_day: d.auth_fail_day.total(now),
        new_ids_day: d.new_ids.total(now),
        new_sub_servers_day: d.new_sub_servers.total(now),
        ids_day: d.auth_ids.count_since(since_day).0,
    }
}

fn ratio(n: u32, full: u32) -> u32 {
    (u64::from(n) * 1000 / u64::from(full.max(1))).min(1000) as u32
}

/// Level of each signal in thousandths.
pub(crate) fn levels(m: &Measures, p: &Params) -> [u32; SIGNALS] {
    let mut l = [0u32; SIGNALS];
    l[DIRECT] = ratio(m.servers_w, p.fanout_servers)
        .max(ratio(m.nets_w, p.fanout_networks))
        .max(ratio(m.servers_day, p.fanout_servers.saturating_mul(3)));
    l[MX_FOLLOW] = ratio(m.mx_followed, p.fanout_servers);
    l[DIALOGUE] = (m.dialogue_points * 10).min(1000);
    l[REJECTIONS] = ratio(m.rejections_day, REJECTIONS_FULL);
    l[SURGE] = surge_level(m, p);
    l[SYN] = ratio(m.unanswered, p.syn_storm);
    l[INDICATORS] = if m.indicator { 1000 } else { 0 };
    l[PERSIST] = if m.persist_hours >= PERSIST_MIN_HOURS {
        ratio(
            m.persist_hours - PERSIST_MIN_HOURS + 1,
            PERSIST_FULL_HOURS - PERSIST_MIN_HOURS + 1,
        )
    } else {
        0
    };
    l[NEW_SENDER] = if m.quiet_days.is_some() { l[DIRECT] } else { 0 };
    l[CLASS] = if m.never_mails { l[DIRECT] } else { 0 };
    l[AUTH_FAIL] =
        ratio(m.auth_refusals, AUTH_FAIL_BURST).max(ratio(m.auth_fail_day, AUTH_FAIL_DAY));
    if m.ids_day <= 1 {
        // One identity refused again and again: a stale password, not someone trying
        // other people's.
        l[AUTH_FAIL] = l[AUTH_FAIL].min(STALE_PASSWORD_LEVEL);
    }
    l[SPREAD] = ratio(m.new_ids_day.saturating_sub(SPREAD_FREE), SPREAD_FULL).max(ratio(
        m.new_sub_servers_day.saturating_sub(SPREAD_FREE),
        SPREAD_FULL,
    ));
    l
}

/// The hourly volume, in thousandths, at which the surge counts in full.
fn surge_target_milli(m: &Measures, p: &Params) -> u64 {
    let floor = u64::from(p.surge_min_per_hour) * 1000;
    let scaled = p.surge_factor_milli * m.baseline_milli.unwrap_or(0) / 1000;
    floor.max(scaled)
}

fn surge_level(m: &Measures, p: &Params) -> u32 {
    if m.hour_messages < p.surge_min_per_hour {
        return 0;
    }
    let target = surge_target_milli(m, p).max(1);
    (u64::from(m.hour_messages) * 1_000_000 / target).min(1000) as u32
}

/// Score and verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Assessed {
    pub score_h: u32,
    pub verdict: Verdict,
    pub contributions: [u32; SIGNALS],
}

pub(crate) fn assess(m: &Measures, p: &Params) -> Assessed {
    let l = levels(m, p);
    let mut contributions = [0u32; SIGNALS];
    let mut sum = 0u32;
    for i in 0..SIGNALS {
        contributions[i] = p.weights[i] * l[i] / 1000;
        sum += contributions[i];
    }
    let score_h = (sum.min(1000) + 5) / 10;
    let verdict = if score_h >= p.infected_h {
        Verdict::Infected
    } else if score_h >= p.suspicious_h {
        Verdict::Suspicious
    } else {
        Verdict::Clean
    };
    Assessed {
        score_h,
        verdict,
        contributions,
    }
}

/// `0.97` from 97.
pub(crate) fn format_score(h: u32) -> String {
    format!("{}.{:02}", h / 100, h % 100)
}

fn plural(n: u32, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// `10 min`, `1 h`, `90 s`.
pub(crate) fn duration(ms: u64) -> String {
    let s = ms / 1000;
    if s % 3600 == 0 {
        format!("{} h", s / 3600)
    } else if s % 60 == 0 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

/// One decimal from thousandths: 1500 → "1.5".
fn one_decimal(milli: u64) -> String {
    let tenths = (milli + 50) / 100;
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// Evidence sentences, strongest signal first, at most [`MAX_EVIDENCE`].
pub(crate) fn evidence(d: &Device, m: &Measures, p: &Params) -> Vec<String> {
    let a = assess(m, p);
    let l = levels(m, p);
    let mut order: Vec<usize> = (0..SIGNALS).filter(|&i| l[i] > 0).collect();
    order.sort_by(|&x, &y| a.contributions[y].cmp(&a.contributions[x]).then(x.cmp(&y)));
    let win = duration(p.window_ms);
    let mut out = Vec::new();
    for i in order {
        match i {
            DIRECT => {
                let mut s = if m.servers_w > 0 {
                    format!(
                        "{} to {} on port 25 ({}) in {win}",
                        plural(m.direct_conns, "connection", "connections"),
                        plural(m.servers_w, "distinct mail server", "distinct mail servers"),
                        plural(m.nets_w, "network", "networks"),
                    )
                } else {
                    format!(
                        "{} on port 25 ({}) in 24 h",
                        plural(m.servers_day, "distinct mail server", "distinct mail servers"),
                        plural(m.nets_day, "network", "networks"),
                    )
                };
                if m.servers_w > 0 && m.servers_hour > m.servers_w && p.window_ms < HOUR_MS {
                    s.push_str(&format!(", {} ({}) in 1 h", m.servers_hour, m.nets_hour));
                }
                if m.servers_w > 0 && m.servers_day > m.servers_hour.max(m.servers_w) {
                    s.push_str(&format!(", {} ({}) in 24 h", m.servers_day, m.nets_day));
                }
                out.push(s);
            }
            MX_FOLLOW => out.push(format!(
                "{} right after looking up their MX records ({} in {win})",
                plural(m.mx_followed, "connection to a mail server", "connections to mail servers"),
                plural(m.mx_lookups, "MX lookup", "MX lookups"),
            )),
            DIALOGUE => {
                for t in Tell::ALL {
                    if m.tells[t.index()] && !d.tell_detail[t.index()].is_empty() {
                        out.push(d.tell_detail[t.index()].clone());
                    }
                }
            }
            REJECTIONS => out.push(format!(
                "{} citing blocklists, spam or malware in 24 h: \"{}\"",
                plural(m.rejections_day, "remote rejection", "remote rejections"),
                d.rejection_text
            )),
            SURGE => out.push(match m.baseline_milli {
                Some(b) => format!(
                    "{} submitted in the last hour; this device's baseline is {} per hour ({} a day)",
                    plural(m.hour_messages, "message", "messages"),
                    one_decimal(b),
                    one_decimal(b * 24),
                ),
                None => format!(
                    "{} submitted in the last hour by a device with no sending history",
                    plural(m.hour_messages, "message", "messages"),
                ),
            }),
            SYN => out.push(format!(
                "{} to mail ports in {win}",
                plural(m.unanswered, "unanswered SYN", "unanswered SYNs")
            )),
            INDICATORS => out.push(d.indicator_detail.clone()),
            PERSIST => out.push(format!(
                "new mail servers every hour for {} h ({PERSIST_SERVERS_PER_HOUR} or more an hour; {} in the last hour)",
                m.persist_hours, m.servers_hour
            )),
            NEW_SENDER => out.push(format!(
                "first direct-to-MX mail from this device after {} on the network without any",
                plural(m.quiet_days.unwrap_or(0) as u32, "day", "days")
            )),
            CLASS => {
                if let Some((c, _)) = d.class {
                    out.push(format!(
                        "this looks like {} ({}), and {} do not send mail to mail servers themselves",
                        c.words(),
                        d.class_source(),
                        c.plural()
                    ));
                }
            }
            AUTH_FAIL => out.push(if m.auth_refusals > 0 {
                format!(
                    "{} refused by the server in {win} (not counted as messages), {} in 24 h",
                    plural(m.auth_refusals, "AUTH attempt", "AUTH attempts"),
                    m.auth_fail_day
                )
            } else {
                format!(
                    "{} refused by the server in 24 h (not counted as messages)",
                    plural(m.auth_fail_day, "AUTH attempt", "AUTH attempts"),
                )
            }),
            SPREAD => {
                if m.new_ids_day > SPREAD_FREE {
                    out.push(format!(
                        "{} new to this device in 24 h",
                        plural(m.new_ids_day, "AUTH identity", "AUTH identities")
                    ));
                }
                if m.new_sub_servers_day > SPREAD_FREE {
                    out.push(format!(
                        "{} other than the provider's relay new to this device in 24 h",
                        plural(
                            m.new_sub_servers_day,
                            "submission server",
                            "submission servers"
                        )
                    ));
                }
            }
            _ => {}
        }
    }
    out.truncate(MAX_EVIDENCE);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_protocol::{MacAddr, Policy};

    #[test]
    fn levels_and_verdicts_from_default_policy() {
        let p = Params::from_policy(&Policy::default());
        let mut m = Measures::default();
        assert_eq!(assess(&m, &p).verdict, Verdict::Clean);
        // One foreign address literal: 100 points of dialogue, 0.40 → suspicious.
        m.tells[Tell::EhloForeignIp.index()] = true;
        m.dialogue_points = 100;
        let a = assess(&m, &p);
        assert_eq!((a.score_h, a.verdict), (40, Verdict::Suspicious));
        // Plus full fan-out: 0.85 → infected.
        m.servers_w = 20;
        let a = assess(&m, &p);
        assert_eq!((a.score_h, a.verdict), (85, Verdict::Infected));
        // The score never exceeds 1.
        m.indicator = true;
        m.unanswered = 1000;
        assert_eq!(assess(&m, &p).score_h, 100);
    }

    #[test]
    fn surge_needs_volume_above_baseline_and_floor() {
        let p = Params::from_policy(&Policy::default());
        let mut m = Measures {
            hour_messages: 59,
            baseline_milli: Some(500),
            ..Measures::default()
        };
        assert_eq!(surge_level(&m, &p), 0);
        m.hour_messages = 60;
        assert_eq!(surge_level(&m, &p), 1000);
        // A busy device (20/h) needs 10× its baseline: 200/h.
        m.baseline_milli = Some(20_000);
        m.hour_messages = 100;
        assert_eq!(surge_level(&m, &p), 500);
        m.hour_messages = 1000;
        assert_eq!(surge_level(&m, &p), 1000);
    }

    #[test]
    fn day_counts_are_true_past_the_server_set_and_persistence_is_told() {
        let p = Params::from_policy(&Policy::default());
        let mut d = Device::new(MacAddr([2, 0, 0, 0, 0, 1]), 0, p.window_ms, None);
        // 1,500 distinct servers, 75 an hour for 20 hours: more than the set keeps.
        let hour = crate::engine::HOUR_MS;
        for i in 0..1500u32 {
            let at = u64::from(i) * hour / 75;
            let ip = std::net::IpAddr::from([198, 18 + (i / 250) as u8, (i % 250) as u8, 1]);
            let key = crate::engine::window::ip_key(ip);
            if d.servers.touch(key, at, crate::engine::SERVERS_MAX) {
                d.new_servers.add(at, 1);
            }
        }
        let now = 20 * hour - 1;
        let m = measure(&d, &p, now);
        assert_eq!(m.servers_day, 1500);
        assert_eq!(m.persist_hours, 20);
        let ev = evidence(&d, &m, &p).join("; ");
        assert!(ev.contains(", 1500 ("), "{ev}");
        assert!(ev.contains("in 24 h"), "{ev}");
        assert!(ev.contains("new mail servers every hour for 20 h"), "{ev}");
    }

    #[test]
    fn long_window_state_size() {
        use std::mem::size_of_val;
        let d = Device::new(MacAddr([2, 0, 0, 0, 0, 1]), 0, 600_000, None);
        let heap = 2 * crate::engine::device::SUBMISSION_KEYS_MAX * 16
            + crate::engine::device::MAX_VENDOR_CLASS;
        let fixed = size_of_val(&d.new_servers)
            + size_of_val(&d.first_direct_ms)
            + size_of_val(&d.auth_fail_day)
            + size_of_val(&d.auth_ids)
            + size_of_val(&d.new_ids)
            + size_of_val(&d.sub_servers)
            + size_of_val(&d.new_sub_servers)
            + size_of_val(&d.vendor_class)
            + size_of_val(&d.dhcp_params)
            + size_of_val(&d.dhcp_params_len)
            + size_of_val(&d.class);
        assert!(
            fixed + heap <= LONG_STATE_MAX_BYTES,
            "{fixed} + {heap} bytes > {LONG_STATE_MAX_BYTES}"
        );
        println!("long-window state: {fixed} bytes inline + at most {heap} on the heap");
    }

    #[test]
    fn number_formats() {
        assert_eq!(format_score(97), "0.97");
        assert_eq!(format_score(100), "1.00");
        assert_eq!(format_score(5), "0.05");
        assert_eq!(duration(600_000), "10 min");
        assert_eq!(duration(3_600_000), "1 h");
        assert_eq!(duration(90_000), "90 s");
        assert_eq!(one_decimal(583), "0.6");
        assert_eq!(one_decimal(14_000), "14.0");
    }

    #[test]
    fn evidence_never_counts_fewer_connections_than_distinct_servers() {
        let p = Params::from_policy(&Policy::default());
        let mut d = Device::new(MacAddr([2, 0, 0, 0, 0, 1]), 0, p.window_ms, None);
        // 40 servers, one connection each, spread over the 10-minute window; measured when
        // the oldest bucket of the connection counter has slid out but the oldest servers
        // are still inside the window.
        for i in 0..40u32 {
            let at = u64::from(i) * 14_000;
            d.direct.add(at, 1);
            let ip = std::net::IpAddr::from([198, 51, (i / 250) as u8, (i % 250) as u8]);
            d.servers.touch(crate::engine::window::ip_key(ip), at, 1024);
        }
        let now = p.window_ms + 20_000;
        let m = measure(&d, &p, now);
        assert!(
            m.direct_conns >= m.servers_w,
            "{} < {}",
            m.direct_conns,
            m.servers_w
        );
        let ev = evidence(&d, &m, &p).join("; ");
        assert!(
            ev.contains(&format!(
                "{} connections to {} distinct",
                m.direct_conns, m.servers_w
            )),
            "{ev}"
        );
    }
}
