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

use smtpguard_protocol::messages::MAX_EVIDENCE;
use smtpguard_protocol::{DeviceCounters, Verdict};

use super::device::{Device, TELLS};
use super::smtp::Tell;
use super::{Params, LONG_MS};

/// Number of signals.
pub const SIGNALS: usize = 7;

const DIRECT: usize = 0;
const MX_FOLLOW: usize = 1;
const DIALOGUE: usize = 2;
const REJECTIONS: usize = 3;
const SURGE: usize = 4;
const SYN: usize = 5;
const INDICATORS: usize = 6;

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
    let (servers_day, _) = d.servers.count_since(since_day);
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
                        "{} on port 25 in 24 h",
                        plural(m.servers_day, "distinct mail server", "distinct mail servers")
                    )
                };
                if m.servers_w > 0 && m.servers_day > m.servers_w {
                    s.push_str(&format!(", {} in 24 h", m.servers_day));
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
            _ => {}
        }
    }
    if m.auth_refusals > 0 && !out.is_empty() {
        // Not a signal of its own, but what the counts above leave out: these sessions
        // submitted nothing and are not among the messages.
        out.push(format!(
            "{} refused by the server in {win} (not counted as messages)",
            plural(m.auth_refusals, "AUTH attempt", "AUTH attempts"),
        ));
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
