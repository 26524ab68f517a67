//! The scenario library: multi-day household timelines with the verdict each device should
//! get, for the bots that hide from the 10-minute thresholds and the clean devices that
//! look most like them.
//!
//! Each [`Scenario`] is a timeline of frames from [`crate::sim`] and the devices that
//! matter in it ([`Subject`]s, each with its expected verdict and, for bots, the time of its
//! first bad packet). [`run`] drives the real agent core (`smtpguard_agent::core::Agent`)
//! the way `replay` does (each frame at its capture time, timers fired up to it) in
//! simulated time, and reports per device the worst verdict and score reached and how long
//! after the first bad packet the router rate-limited and blocked it. [`table`] turns the
//! outcomes into the README's tables (`tools/tests/library.rs` prints them).

use std::net::Ipv4Addr;

use smtpguard_agent::core::{Agent, Output, Settings};
use smtpguard_agent::enforce::Op;
use smtpguard_agent::engine::EngineConfig;
use smtpguard_protocol::{MacAddr, Mode, Policy, Verdict};

use crate::sim::{Dialogue, Frame, Host, Household, EPOCH_MS};

const MIN: u64 = 60_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 86_400_000;

/// The provider's relay of every household.
pub const RELAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// An external mail service (not the provider's) that NAS boxes and printers log in to.
pub const ALERT_SERVICE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 25);

/// A device that matters in a scenario.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The device.
    pub host: Host,
    /// What it is, in words.
    pub role: &'static str,
    /// Whether it is a bot (for counting false positives).
    pub bot: bool,
    /// The verdict it should reach (the worst during the timeline).
    pub expect: Verdict,
    /// A bot's first bad packet (Unix ms).
    pub first_bad_ms: Option<u64>,
}

/// One timeline.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The class of scenario (one README table each).
    pub class: &'static str,
    /// Its name.
    pub name: &'static str,
    /// The frames, in time order.
    pub frames: Vec<Frame>,
    /// The devices to check.
    pub subjects: Vec<Subject>,
    /// Time runs on (without frames) until here.
    pub end_ms: u64,
}

/// What became of one subject.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Scenario class.
    pub class: &'static str,
    /// Scenario name.
    pub scenario: &'static str,
    /// The subject's role.
    pub role: &'static str,
    /// The device.
    pub mac: MacAddr,
    /// Whether it is a bot.
    pub bot: bool,
    /// Expected verdict.
    pub expect: Verdict,
    /// The worst verdict reached.
    pub verdict: Verdict,
    /// The highest score reached, in hundredths.
    pub score_h: u32,
    /// Evidence at that moment.
    pub evidence: Vec<String>,
    /// From the first bad packet to the first rate limit.
    pub to_rate_limit_ms: Option<u64>,
    /// From the first bad packet to the first block.
    pub to_block_ms: Option<u64>,
}

/// The policy of every scenario: enforcement on, the provider's relay allowlisted.
pub fn policy() -> Policy {
    Policy {
        mode: Mode::Enforce,
        allow_relays: RELAY.to_string().parse().into_iter().collect(),
        ..Policy::default()
    }
}

fn at(day: u64, hour: u64, min: u64) -> u64 {
    EPOCH_MS + day * DAY + hour * HOUR + min * MIN
}

/// DHCP at the start and a renewal every 12 hours, as home routers hand out leases.
fn leases(h: &mut Household, host: &Host, vendor_class: Option<&str>, days: u64) {
    let mut t = EPOCH_MS + u64::from(host.mac.0[5]) * 1000;
    while t < EPOCH_MS + days * DAY {
        h.dhcp_with_class(t, host, vendor_class);
        t += 12 * HOUR;
    }
}

/// `per_day` messages through the relay on 587 with STARTTLS, spread over `from..to` o'clock.
fn relay_mail(
    h: &mut Household,
    host: &Host,
    days: std::ops::Range<u64>,
    per_day: u64,
    hours: (u64, u64),
) {
    let span = (hours.1 - hours.0) * HOUR;
    let gap = span / per_day.max(1);
    let ehlo = format!("{}.lan", host.hostname.as_deref().unwrap_or("pc"));
    for day in days {
        for k in 0..per_day {
            let jitter = h.rng().below(gap / 2 + 1);
            let t = at(day, hours.0, 0) + k * gap + jitter;
            let d = Dialogue {
                starttls: true,
                ..Dialogue::mail_client(&ehlo)
            };
            h.smtp_session(t, host, RELAY, 587, &d);
        }
    }
}

/// Direct-to-MX mail imitating a server: an MX lookup of a fresh domain, then a session
/// with a plausible EHLO and a MAIL FROM in its own domain, every `every_ms` (± a quarter)
/// from `start` for `count` messages. Returns the first session's time.
fn careful_bot(h: &mut Household, host: &Host, start: u64, every_ms: u64, count: u32) -> u64 {
    let own = format!("{}.net", h.rng().word());
    let mut t = start;
    let mut first = None;
    for _ in 0..count {
        let mx_ip = h.rng().public_ip();
        let domain = format!("{}.com", h.rng().word());
        h.mx_lookup(t, host, &domain, &format!("mx.{domain}"), mx_ip);
        let user = h.rng().word();
        first.get_or_insert(t);
        h.smtp_session(
            t + 40,
            host,
            mx_ip,
            25,
            &Dialogue::plausible_server(&own, &user),
        );
        t += every_ms * 3 / 4 + h.rng().below(every_ms / 2 + 1);
    }
    first.unwrap_or(start)
}

fn subject(
    host: &Host,
    role: &'static str,
    bot: bool,
    expect: Verdict,
    first_bad_ms: Option<u64>,
) -> Subject {
    Subject {
        host: host.clone(),
        role,
        bot,
        expect,
        first_bad_ms,
    }
}

/// A laptop mailing a few messages a day through the relay, in every household.
fn household(seed: u64, days: u64) -> (Household, Host) {
    let mut h = Household::new(seed);
    let laptop = h.device(2, Some("laptop"));
    leases(&mut h, &laptop, Some("MSFT 5.0"), days);
    relay_mail(&mut h, &laptop, 0..days, 6, (9, 21));
    (h, laptop)
}

const LOW_AND_SLOW: &str = "low-and-slow IoT bots";
const CADENCE: &str = "cadence bots";
const STUFFING: &str = "credential-stuffing bots";
const STOLEN: &str = "stolen-credential bursts";
const HARD_CLEAN: &str = "hard clean devices";

/// One device of interest in a household with a laptop on the relay.
struct Case {
    class: &'static str,
    name: &'static str,
    seed: u64,
    days: u64,
    /// Device number (see [`Household::device`]), host name and DHCP vendor class.
    n: u8,
    hostname: &'static str,
    vendor_class: Option<&'static str>,
    role: &'static str,
    bot: bool,
    expect: Verdict,
}

/// The household of `c`, with `act` adding what its device does (returning its first bad
/// packet's time, for bots).
fn case(c: Case, act: impl FnOnce(&mut Household, &Host) -> Option<u64>) -> Scenario {
    let (mut h, laptop) = household(c.seed, c.days);
    let dev = h.device(c.n, Some(c.hostname));
    leases(&mut h, &dev, c.vendor_class, c.days);
    let first = act(&mut h, &dev);
    let subjects = vec![
        subject(&dev, c.role, c.bot, c.expect, first),
        subject(&laptop, "laptop on the relay", false, Verdict::Clean, None),
    ];
    Scenario {
        class: c.class,
        name: c.name,
        frames: h.into_frames(),
        subjects,
        end_ms: at(c.days, 0, 0),
    }
}

fn bot(class: &'static str, name: &'static str, seed: u64, days: u64, role: &'static str) -> Case {
    Case {
        class,
        name,
        seed,
        days,
        n: 5,
        hostname: "",
        vendor_class: None,
        role,
        bot: true,
        expect: Verdict::Infected,
    }
}

fn clean(name: &'static str, seed: u64, hostname: &'static str, role: &'static str) -> Case {
    Case {
        class: HARD_CLEAN,
        name,
        seed,
        days: 3,
        n: 9,
        hostname,
        vendor_class: None,
        role,
        bot: false,
        expect: Verdict::Clean,
    }
}

/// Refused AUTH PLAIN logins with a different user each time, every `every_ms`, cycling
/// through `servers`; returns the first one's time.
fn stuffing(
    h: &mut Household,
    host: &Host,
    start: u64,
    every_ms: u64,
    count: u32,
    servers: &[Ipv4Addr],
) -> u64 {
    let mut t = start;
    for i in 0..count {
        let user = format!("{}{}@example.org", h.rng().word(), i);
        let d = Dialogue {
            auth_refused: true,
            auth_user: Some(user),
            ..Dialogue::mail_client("[192.168.1.50]")
        };
        let server = servers[i as usize % servers.len().max(1)];
        h.smtp_session(t, host, server, 587, &d);
        t += every_ms;
    }
    start
}

/// 400 messages in 2 hours through the relay on day 3 at 14:00, on the laptop's own
/// account. In the clear the bot gives itself away (EHLO with the household's public
/// address, as Emotet does); under TLS it says EHLO as the laptop does.
fn stolen_burst(h: &mut Household, laptop: &Host, tls: bool) -> u64 {
    let first = at(3, 14, 0);
    for k in 0..400u64 {
        let d = Dialogue {
            starttls: tls,
            ..Dialogue::mail_client(if tls { "laptop.lan" } else { "[203.0.113.77]" })
        };
        h.smtp_session(first + k * 18_000, laptop, RELAY, 587, &d);
    }
    first
}

/// Every scenario.
pub fn library() -> Vec<Scenario> {
    vec![
        // Three quiet days, then 15 careful messages an hour for 30 hours.
        case(
            Case {
                hostname: "garage-cam",
                ..bot(LOW_AND_SLOW, "camera after quiet days", 101, 5,
                    "camera (host name), quiet for 3 days, then 15 direct-to-MX messages an hour")
            },
            |h, d| Some(careful_bot(h, d, at(3, 8, 0), 4 * MIN, 450)),
        ),
        case(
            Case {
                hostname: "p1",
                vendor_class: Some("tuya-smartlife"),
                ..bot(LOW_AND_SLOW, "smart plug", 102, 2,
                    "smart plug (DHCP vendor class), 10 direct-to-MX messages an hour from its first hour")
            },
            |h, d| Some(careful_bot(h, d, at(0, 1, 0), 6 * MIN, 240)),
        ),
        case(
            Case {
                hostname: "old-pc",
                ..bot(LOW_AND_SLOW, "unknown device after quiet days", 103, 6,
                    "PC of no known class, relay mail only for 4 days, then 8 direct-to-MX messages an hour")
            },
            |h, d| {
                relay_mail(h, d, 0..6, 2, (10, 20));
                Some(careful_bot(h, d, at(4, 2, 0), 7 * MIN, 300))
            },
        ),
        case(
            Case {
                hostname: "desktop",
                vendor_class: Some("MSFT 5.0"),
                ..bot(CADENCE, "message every 5 minutes", 104, 2,
                    "Windows PC, one careful direct-to-MX message every 5 min for 14 h")
            },
            |h, d| Some(careful_bot(h, d, at(0, 6, 0), 5 * MIN, 168)),
        ),
        case(
            Case {
                hostname: "desktop",
                vendor_class: Some("MSFT 5.0"),
                ..bot(CADENCE, "message every 8 minutes", 105, 2,
                    "Windows PC, one careful direct-to-MX message every 8 min for 20 h")
            },
            |h, d| Some(careful_bot(h, d, at(0, 2, 0), 8 * MIN, 150)),
        ),
        case(
            Case {
                hostname: "media-box",
                ..bot(STUFFING, "relay and foreign servers", 106, 2,
                    "media box trying a new user every 20 s on the relay and 5 foreign servers")
            },
            |h, d| {
                let mut servers = vec![RELAY];
                servers.extend((0..5).map(|_| h.rng().public_ip()));
                Some(stuffing(h, d, at(1, 10, 0), 20_000, 540, &servers))
            },
        ),
        case(
            Case {
                hostname: "raspberrypi",
                ..bot(STUFFING, "slow, foreign servers", 107, 2,
                    "Raspberry Pi trying a new user every 3 min on 12 foreign submission servers")
            },
            |h, d| {
                let servers: Vec<Ipv4Addr> = (0..12).map(|_| h.rng().public_ip()).collect();
                Some(stuffing(h, d, at(0, 20, 0), 3 * MIN, 200, &servers))
            },
        ),
        case(
            Case {
                hostname: "laptop2",
                vendor_class: Some("MSFT 5.0"),
                ..bot(STOLEN, "cleartext burst", 108, 4,
                    "laptop, 6 messages a day, then 400 in 2 h through the relay with EHLO of the household's public address")
            },
            |h, d| {
                relay_mail(h, d, 0..4, 6, (9, 21));
                Some(stolen_burst(h, d, false))
            },
        ),
        case(
            Case {
                hostname: "laptop2",
                vendor_class: Some("MSFT 5.0"),
                ..bot(STOLEN, "TLS-hidden burst", 109, 4,
                    "laptop, 6 messages a day, then 400 in 2 h through the relay, its usual EHLO, under TLS")
            },
            |h, d| {
                relay_mail(h, d, 0..4, 6, (9, 21));
                Some(stolen_burst(h, d, true))
            },
        ),
        case(
            clean("home office", 110, "office-pc", "home office, 200 messages a day through the relay"),
            |h, d| {
                relay_mail(h, d, 0..3, 200, (8, 18));
                None
            },
        ),
        case(
            clean("self-hosted mail server", 111, "homeserver",
                "self-hosted mail server, 40 messages a day straight to 25 correspondents' MX"),
            |h, d| {
                // The family's own domain; its correspondents are 25 domains.
                let pool: Vec<(String, Ipv4Addr)> = (0..25)
                    .map(|_| (format!("{}.org", h.rng().word()), h.rng().public_ip()))
                    .collect();
                for day in 0..3 {
                    for k in 0..40u64 {
                        let t = at(day, 7, 0) + k * 24 * MIN + h.rng().below(10 * MIN);
                        let (domain, ip) = pool[h.rng().below(pool.len() as u64) as usize].clone();
                        h.mx_lookup(t, d, &domain, &format!("mx.{domain}"), ip);
                        let dialogue = Dialogue::plausible_server("family.example", "ann");
                        h.smtp_session(t + 40, d, ip, 25, &dialogue);
                    }
                }
                None
            },
        ),
        case(
            clean("NAS alerts", 112, "synology-nas",
                "NAS mailing 12 alerts a day through an external mail service"),
            |h, d| {
                for day in 0..3 {
                    for k in 0..12u64 {
                        let dialogue = Dialogue {
                            starttls: true,
                            ..Dialogue::mail_client("synology-nas")
                        };
                        h.smtp_session(at(day, 0, 30) + k * 2 * HOUR, d, ALERT_SERVICE, 587, &dialogue);
                    }
                }
                None
            },
        ),
        case(
            clean("printer alerts", 113, "EPSON3F2A1C",
                "printer (host name) scanning to e-mail through an external mail service on 465"),
            |h, d| {
                for day in 0..3 {
                    for k in 0..5u64 {
                        let dialogue = Dialogue::mail_client("EPSON3F2A1C");
                        h.smtp_session(at(day, 9, 0) + k * 2 * HOUR, d, ALERT_SERVICE, 465, &dialogue);
                    }
                }
                None
            },
        ),
        case(
            clean("mailing-list member", 114, "ann-laptop",
                "mailing-list member replying all day (90 a day through the relay)"),
            |h, d| {
                relay_mail(h, d, 0..3, 90, (8, 23));
                None
            },
        ),
    ]
}

/// The agent core's settings for simulated households: the router's own MAC and address
/// are not devices.
pub fn settings() -> Settings {
    Settings {
        engine: EngineConfig {
            router_macs: vec![Household::router_mac()],
            router_ips: vec![Household::router_ip().into()],
            ..EngineConfig::default()
        },
        ..Settings::default()
    }
}

/// Drives the agent core over the scenario as `replay` does, then lets time run to its
/// end; one outcome per subject.
pub fn run(s: &Scenario) -> Vec<Outcome> {
    let mut agent = Agent::new(settings(), policy(), EPOCH_MS);
    let mut limited: Vec<(MacAddr, u64)> = Vec::new();
    let mut blocked: Vec<(MacAddr, u64)> = Vec::new();
    let mut note = |agent: &mut Agent, now: u64| {
        while let Some(o) = agent.poll_output() {
            if let Output::Apply(ops) = o {
                for op in ops {
                    match op {
                        Op::Limit { mac, .. } if !limited.iter().any(|(m, _)| *m == mac) => {
                            limited.push((mac, now))
                        }
                        Op::Block { mac, .. } if !blocked.iter().any(|(m, _)| *m == mac) => {
                            blocked.push((mac, now))
                        }
                        _ => {}
                    }
                }
            }
        }
    };
    for f in &s.frames {
        agent.handle_frame(f.ts_ms, &f.data);
        note(&mut agent, f.ts_ms);
    }
    while let Some(t) = agent.poll_timeout() {
        if t > s.end_ms {
            break;
        }
        agent.handle_timeout(t);
        note(&mut agent, t);
    }
    let after = |list: &[(MacAddr, u64)], mac: MacAddr, first: Option<u64>| {
        let first = first?;
        list.iter()
            .find(|(m, _)| *m == mac)
            .map(|(_, t)| t.saturating_sub(first))
    };
    s.subjects
        .iter()
        .map(|sub| {
            let mac = sub.host.mac;
            let peak = agent.engine().peak(&mac);
            Outcome {
                class: s.class,
                scenario: s.name,
                role: sub.role,
                mac,
                bot: sub.bot,
                expect: sub.expect,
                verdict: peak.as_ref().map_or(Verdict::Clean, |p| p.verdict),
                score_h: peak.as_ref().map_or(0, |p| p.score_h),
                evidence: peak.map(|p| p.evidence).unwrap_or_default(),
                to_rate_limit_ms: after(&limited, mac, sub.first_bad_ms),
                to_block_ms: after(&blocked, mac, sub.first_bad_ms),
            }
        })
        .collect()
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    (!v.is_empty()).then(|| v[(v.len() - 1) / 2])
}

fn minutes(ms: Option<u64>) -> String {
    match ms {
        Some(ms) if ms < 2 * MIN => format!("{} s", ms / 1000),
        Some(ms) if ms < 2 * HOUR => format!("{} min", ms / MIN),
        Some(ms) => format!("{:.1} h", ms as f64 / HOUR as f64),
        None => "—".to_string(),
    }
}

/// One Markdown table per scenario class: devices, flagged, false positives, median time
/// from the first bad packet to the rate limit and to the block; then each device.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let mut classes: Vec<&str> = outcomes.iter().map(|o| o.class).collect();
    classes.dedup();
    for class in classes {
        let rows: Vec<&Outcome> = outcomes.iter().filter(|o| o.class == class).collect();
        let flagged = rows
            .iter()
            .filter(|o| o.bot && o.verdict != Verdict::Clean)
            .count();
        let bots = rows.iter().filter(|o| o.bot).count();
        let fp = rows
            .iter()
            .filter(|o| !o.bot && o.verdict != Verdict::Clean)
            .count();
        let rl = median(rows.iter().filter_map(|o| o.to_rate_limit_ms).collect());
        let bl = median(rows.iter().filter_map(|o| o.to_block_ms).collect());
        out.push_str(&format!(
            "**{class}**: {} devices ({bots} bots), {flagged} flagged, {fp} false positives, median to rate limit {}, to block {}\n\n",
            rows.len(),
            minutes(rl),
            minutes(bl)
        ));
        out.push_str("| scenario | device | expected | verdict (score) | to rate limit | to block |\n|---|---|---|---|---|---|\n");
        for o in rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} ({}.{:02}) | {} | {} |\n",
                o.scenario,
                o.role,
                o.expect,
                o.verdict,
                o.score_h / 100,
                o.score_h % 100,
                minutes(o.to_rate_limit_ms),
                minutes(o.to_block_ms)
            ));
        }
        out.push('\n');
    }
    out
}
