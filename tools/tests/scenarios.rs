//! Engine scenarios on simulated household timelines: verdicts, actions, evidence and
//! time to verdict, as an operator would check them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;

use smtpguard_agent::engine::{Engine, EngineAction, EngineConfig};
use smtpguard_protocol::{Action, MacAddr, Mode, Policy, Verdict};
use smtpguard_tools::sim::{Dialogue, Frame, Household, EPOCH_MS};

const MIN: u64 = 60_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 86_400_000;

fn relay() -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 7)
}

fn enforce_policy() -> Policy {
    Policy {
        mode: Mode::Enforce,
        allow_relays: vec!["198.51.100.7".parse().unwrap()],
        ..Policy::default()
    }
}

fn engine(policy: Policy) -> Engine {
    Engine::new(
        EngineConfig {
            router_macs: vec![Household::router_mac()],
            router_ips: vec![Household::router_ip().into()],
            ..EngineConfig::default()
        },
        policy,
    )
}

/// Feeds frames like the live shell does; returns every action with the time it came out.
fn feed(e: &mut Engine, frames: &[Frame]) -> Vec<(u64, EngineAction)> {
    let mut out = Vec::new();
    for f in frames {
        while let Some(t) = e.poll_timeout() {
            if t > f.ts_ms {
                break;
            }
            e.handle_timeout(t);
            drain(e, t, &mut out);
        }
        e.handle_frame(f.ts_ms, &f.data);
        drain(e, f.ts_ms, &mut out);
    }
    out
}

/// Lets time pass without traffic.
fn idle_until(e: &mut Engine, until: u64) -> Vec<(u64, EngineAction)> {
    let mut out = Vec::new();
    while let Some(t) = e.poll_timeout() {
        if t > until {
            break;
        }
        e.handle_timeout(t);
        drain(e, t, &mut out);
    }
    out
}

fn drain(e: &mut Engine, now: u64, out: &mut Vec<(u64, EngineAction)>) {
    while let Some(a) = e.poll_action() {
        out.push((now, a));
    }
}

fn mac_of(a: &EngineAction) -> MacAddr {
    match a {
        EngineAction::Alert(al) => al.device.mac,
        EngineAction::Enforce { mac, .. } | EngineAction::Release { mac } => *mac,
    }
}

/// Enforce/Release actions of one device, as (time, label).
fn enforcement(actions: &[(u64, EngineAction)], mac: MacAddr) -> Vec<(u64, String)> {
    actions
        .iter()
        .filter(|(_, a)| mac_of(a) == mac)
        .filter_map(|(t, a)| match a {
            EngineAction::Enforce { action, .. } => Some((*t, action.to_string())),
            EngineAction::Release { .. } => Some((*t, "release".to_string())),
            EngineAction::Alert(_) => None,
        })
        .collect()
}

/// The first alert raising `mac` to at least `verdict`.
fn first_alert(actions: &[(u64, EngineAction)], mac: MacAddr, verdict: Verdict) -> Option<u64> {
    actions.iter().find_map(|(_, a)| match a {
        EngineAction::Alert(al) if al.device.mac == mac && al.device.verdict >= verdict => {
            Some(al.at_ms)
        }
        _ => None,
    })
}

/// Bot sessions: an MX lookup, then a direct-to-MX session with a random EHLO.
fn bot_burst(
    h: &mut Household,
    bot: &smtpguard_tools::sim::Host,
    start: u64,
    every_ms: u64,
    count: u32,
) -> u64 {
    let mut t = start;
    for _ in 0..count {
        let mx_ip = h.rng().public_ip();
        let domain = format!("{}.com", h.rng().word());
        h.mx_lookup(t, bot, &domain, &format!("mx.{domain}"), mx_ip);
        let d = Dialogue::bot(h.rng());
        h.smtp_session(t + 40, bot, mx_ip, 25, &d);
        t += every_ms;
    }
    t
}

#[test]
fn bursting_bot_among_clean_devices_is_blocked_released_and_reblocked() {
    let mut h = Household::new(11);
    let laptop = h.device(2, Some("laptop"));
    let phone = h.device(3, Some("phone"));
    let tv = h.device(4, Some("tv"));
    let bot = h.device(5, Some("old-pc"));
    for (i, host) in [&laptop, &phone, &tv, &bot].into_iter().enumerate() {
        h.dhcp(EPOCH_MS + i as u64 * 10, host);
    }
    // Clean devices: a few messages an hour through the relay, on 587 and on 25.
    for k in 0..6u64 {
        let t = EPOCH_MS + 5 * MIN + k * 20 * MIN;
        h.smtp_session(
            t,
            &laptop,
            relay(),
            587,
            &Dialogue {
                starttls: true,
                ..Dialogue::mail_client("laptop.lan")
            },
        );
        h.smtp_session(
            t + 7 * MIN,
            &phone,
            relay(),
            25,
            &Dialogue::mail_client("[192.168.1.13]"),
        );
    }
    // The bot: 300 direct-to-MX messages an hour for two hours.
    let bot_start = EPOCH_MS + 10 * MIN;
    bot_burst(&mut h, &bot, bot_start, 12_000, 600);
    let frames = h.into_frames();

    let mut e = engine(enforce_policy());
    let actions = feed(&mut e, &frames);

    // Time to verdict: suspicious on the first session, infected within 5 minutes.
    let suspicious = first_alert(&actions, bot.mac, Verdict::Suspicious).unwrap();
    let infected = first_alert(&actions, bot.mac, Verdict::Infected).unwrap();
    assert!(
        suspicious - bot_start < MIN,
        "suspicious after {} ms",
        suspicious - bot_start
    );
    assert!(
        infected - bot_start <= 5 * MIN,
        "infected after {} ms",
        infected - bot_start
    );

    // Graduated response, block TTL (1 h) and re-block when the bot carries on.
    let enf = enforcement(&actions, bot.mac);
    let labels: Vec<&str> = enf.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(
        labels,
        ["rate-limit", "block", "release", "block"],
        "{enf:?}"
    );
    let block_at = enf[1].0;
    let release_at = enf[2].0;
    assert!(
        release_at >= block_at + HOUR && release_at < block_at + HOUR + MIN,
        "{enf:?}"
    );
    assert!(
        enf[3].0 >= release_at && enf[3].0 < release_at + MIN,
        "{enf:?}"
    );
    if let Some((
        _,
        EngineAction::Enforce {
            until_ms, reason, ..
        },
    )) = actions.iter().find(|(_, a)| {
        matches!(
            a,
            EngineAction::Enforce {
                action: Action::Block,
                ..
            }
        )
    }) {
        assert_eq!(*until_ms, Some(block_at + HOUR));
        assert!(reason.starts_with("infected (score"), "{reason}");
    } else {
        panic!("no block");
    }

    // Evidence a person can read, with numbers.
    let report = e.report(frames.last().unwrap().ts_ms);
    let b = report.devices.iter().find(|d| d.mac == bot.mac).unwrap();
    assert_eq!(b.verdict, Verdict::Infected);
    assert!(b.score >= 0.9, "{b:?}");
    assert_eq!(b.hostname.as_deref(), Some("old-pc"));
    assert_eq!(b.ips, vec![std::net::IpAddr::from(bot.ip)]);
    let ev = b.evidence.join("\n");
    assert!(ev.contains("distinct mail servers on port 25"), "{ev}");
    assert!(ev.contains("looks machine-generated"), "{ev}");
    assert!(
        ev.contains("right after looking up their MX records"),
        "{ev}"
    );
    assert!(b.counters.distinct_mail_servers >= 40, "{:?}", b.counters);
    assert_eq!(report.devices[0].mac, bot.mac, "highest score first");
    // The alert carries evidence and the indicator values for fleet correlation.
    let alert = actions
        .iter()
        .find_map(|(_, a)| match a {
            EngineAction::Alert(al)
                if al.device.mac == bot.mac && al.device.verdict == Verdict::Infected =>
            {
                Some(al)
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(alert.previous, Verdict::Suspicious);
    assert!(!alert.device.evidence.is_empty());
    assert!(!alert.observed.ehlo_names.is_empty());

    // Clean devices: clean, never touched.
    for host in [&laptop, &phone, &tv] {
        let d = report.devices.iter().find(|d| d.mac == host.mac).unwrap();
        assert_eq!(d.verdict, Verdict::Clean, "{d:?}");
        assert!(enforcement(&actions, host.mac).is_empty());
        assert!(e.actions_taken(&host.mac).is_empty());
    }
    // The SMTP connection log covers every session.
    let conns = e.drain_connections();
    assert!(conns.iter().any(|c| c.mac == bot.mac && c.dst_port == 25));
    assert!(conns
        .iter()
        .any(|c| c.mac == laptop.mac && c.dst_port == 587));
}

/// A person releases a blocked bot by hand while it is still infected: during the grace
/// period the engine asks for nothing however the bot behaves; after it, the bot that keeps
/// spamming is blocked again (no verdict change is needed for that).
#[test]
fn bot_released_by_hand_is_left_alone_for_the_grace_period_then_blocked_again() {
    let mut h = Household::new(12);
    let bot = h.device(5, Some("old-pc"));
    h.dhcp(EPOCH_MS, &bot);
    // Loud enough to be blocked within minutes, then carrying on for an hour.
    let start = EPOCH_MS + MIN;
    bot_burst(&mut h, &bot, start, 6_000, 600);
    let frames = h.into_frames();

    let mut e = engine(enforce_policy());
    let split = frames
        .iter()
        .position(|f| f.ts_ms >= start + 10 * MIN)
        .unwrap();
    let before = feed(&mut e, &frames[..split]);
    let labels: Vec<String> = enforcement(&before, bot.mac)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(labels, ["rate-limit", "block"], "{before:?}");

    // Released by hand at the split, with a 20-minute grace period.
    let released_at = frames[split].ts_ms;
    let grace_end = released_at + 20 * MIN;
    e.hold(released_at, bot.mac, grace_end);
    let after = feed(&mut e, &frames[split..]);
    let enf = enforcement(&after, bot.mac);
    assert!(!enf.is_empty(), "the bot was never enforced again");
    assert!(
        enf.iter().all(|(t, _)| *t >= grace_end),
        "enforced during the grace period: {enf:?}"
    );
    // The bot still mails every 6 s: blocked again within a minute of the grace period's end.
    let (t, label) = &enf[0];
    assert!(*t < grace_end + MIN, "{enf:?}");
    assert!(
        enf.iter().any(|(_, l)| l == "block"),
        "not blocked again: {enf:?} (first {label})"
    );
    // The verdict never stopped being infected: enforcement came back without a verdict
    // change.
    assert!(
        !after
            .iter()
            .any(|(_, a)| matches!(a, EngineAction::Alert(_))),
        "{after:?}"
    );
}

/// The mail-port set is one: a device whose only mail goes to port 2525 is a mail device
/// with the default set (the same set the capture filter and nftables use), and a port
/// left out of the configured set is not mail to the engine either.
#[test]
fn mail_on_the_alternate_port_counts_as_mail_by_the_configured_set() {
    let mut h = Household::new(13);
    let nas = h.device(6, Some("nas"));
    for k in 0..3u64 {
        h.smtp_session(
            EPOCH_MS + k * MIN,
            &nas,
            Ipv4Addr::new(203, 0, 113, 40),
            2525,
            &Dialogue::mail_client("nas.lan"),
        );
    }
    let frames = h.into_frames();
    let sessions_with = |ports: &[u16]| {
        let mut e = Engine::new(
            EngineConfig {
                router_macs: vec![Household::router_mac()],
                router_ips: vec![Household::router_ip().into()],
                mail_ports: smtpguard_agent::ports::MailPorts::new(ports).unwrap(),
                ..EngineConfig::default()
            },
            enforce_policy(),
        );
        feed(&mut e, &frames);
        let end = frames.last().unwrap().ts_ms;
        let seen = e.report(end).devices.iter().any(|d| d.mac == nas.mac);
        (e.stats().smtp_sessions, seen)
    };
    assert_eq!(
        sessions_with(&smtpguard_agent::ports::DEFAULT_MAIL_PORTS),
        (3, true)
    );
    assert_eq!(sessions_with(&[25, 465, 587]), (0, false));
}

#[test]
fn slow_bot_is_caught_over_hours_not_minutes() {
    let mut h = Household::new(12);
    let bot = h.device(6, None);
    let start = EPOCH_MS + MIN;
    // One message every two minutes for five hours.
    bot_burst(&mut h, &bot, start, 2 * MIN, 150);
    let frames = h.into_frames();
    let mut e = engine(enforce_policy());
    let actions = feed(&mut e, &frames);
    let suspicious = first_alert(&actions, bot.mac, Verdict::Suspicious).unwrap();
    let infected = first_alert(&actions, bot.mac, Verdict::Infected).unwrap();
    assert!(suspicious - start < MIN);
    // Not within one detection window, but within a few hours (the 24 h fan-out).
    assert!(infected - start > 10 * MIN, "{}", infected - start);
    assert!(infected - start < 3 * HOUR, "{}", infected - start);
    let report = e.report(frames.last().unwrap().ts_ms);
    let ev = report.devices[0].evidence.join("\n");
    assert!(ev.contains("in 24 h"), "{ev}");
}

#[test]
fn submission_surge_far_above_the_devices_own_baseline() {
    let mut h = Household::new(13);
    let pc = h.device(7, Some("family-pc"));
    let quiet = h.device(8, Some("quiet"));
    let mail = |h: &mut Household, host, t| {
        let d = Dialogue {
            starttls: true,
            ..Dialogue::mail_client("family-pc.lan")
        };
        h.smtp_session(t, host, relay(), 587, &d);
    };
    // Two days of four messages a day through the relay.
    for day in 0..2u64 {
        for k in 0..4u64 {
            mail(&mut h, &pc, EPOCH_MS + day * DAY + 9 * HOUR + k * 3 * HOUR);
            mail(
                &mut h,
                &quiet,
                EPOCH_MS + day * DAY + 10 * HOUR + k * 3 * HOUR,
            );
        }
    }
    // Day three, 10:00: stolen credentials, 300 messages in an hour through the relay.
    let burst = EPOCH_MS + 2 * DAY + 10 * HOUR;
    for k in 0..300u64 {
        mail(&mut h, &pc, burst + k * 12_000);
    }
    // The quiet device sends 40 that hour: busy, but under the floor.
    for k in 0..40u64 {
        mail(&mut h, &quiet, burst + k * 90_000);
    }
    let frames = h.into_frames();
    let mut e = engine(enforce_policy());
    let actions = feed(&mut e, &frames);

    let infected = first_alert(&actions, pc.mac, Verdict::Infected).unwrap();
    assert!(infected >= burst, "no verdict before the burst");
    assert!(infected - burst <= 15 * MIN, "{}", infected - burst);
    let enf = enforcement(&actions, pc.mac);
    assert_eq!(
        enf.first().map(|(_, l)| l.as_str()),
        Some("block"),
        "{enf:?}"
    );
    let report = e.report(burst + 20 * MIN);
    let d = report.devices.iter().find(|d| d.mac == pc.mac).unwrap();
    let ev = d.evidence.join("\n");
    assert!(ev.contains("submitted in the last hour"), "{ev}");
    assert!(ev.contains("baseline is 0.2 per hour"), "{ev}");
    assert!(
        !ev.contains("port 25"),
        "relay traffic is not direct-to-MX: {ev}"
    );
    let q = report.devices.iter().find(|d| d.mac == quiet.mac).unwrap();
    assert_eq!(q.verdict, Verdict::Clean, "{q:?}");
    assert!(enforcement(&actions, quiet.mac).is_empty());
}

#[test]
fn allowlisted_home_mail_server_is_never_acted_on() {
    let mut h = Household::new(14);
    let server = h.device(0x50, Some("mailserver"));
    let twin = h.device(0x51, Some("twin"));
    // Both deliver a family's mail straight to many MX hosts, same behaviour.
    for host in [&server, &twin] {
        for k in 0..60u64 {
            let mx = h.rng().public_ip();
            let d = Dialogue {
                auth: false,
                mail_from: "anna@smith-family.net".into(),
                ..Dialogue::mail_client("mail.smith-family.net")
            };
            h.smtp_session(EPOCH_MS + k * 20_000, host, mx, 25, &d);
        }
    }
    let frames = h.into_frames();
    let mut e = engine(Policy {
        allow_macs: vec![server.mac],
        ..enforce_policy()
    });
    let actions = feed(&mut e, &frames);
    assert!(
        enforcement(&actions, server.mac).is_empty(),
        "{:?}",
        enforcement(&actions, server.mac)
    );
    assert!(e
        .actions_taken(&server.mac)
        .iter()
        .all(|a| *a == Action::Monitor));
    // Without the allowlist the same behaviour is acted on.
    assert!(!enforcement(&actions, twin.mac).is_empty());
    // Allowlisting the twin by a new policy releases it at once.
    e.set_policy(Policy {
        allow_macs: vec![server.mac, twin.mac],
        ..enforce_policy()
    });
    let mut after = Vec::new();
    drain(&mut e, frames.last().unwrap().ts_ms, &mut after);
    let labels: Vec<String> = enforcement(&after, twin.mac)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(labels, ["release"]);
}

#[test]
fn mac_flood_keeps_the_table_bounded_and_the_bot_in_it() {
    let mut h = Household::new(15);
    let bot = h.device(9, None);
    let end = bot_burst(&mut h, &bot, EPOCH_MS, 10_000, 30);
    let mut frames = h.into_frames();
    // 30,000 spoofed MACs, one SYN each to port 25.
    let mut flood = Household::new(16);
    for i in 0..30_000u32 {
        let b = i.to_be_bytes();
        let host = flood.device_with_mac([0x06, 0xaa, b[0], b[1], b[2], b[3]]);
        let ip = flood.rng().public_ip();
        flood.syn_unanswered(end + u64::from(i) * 10, &host, ip, 25);
    }
    frames.extend(flood.into_frames());
    frames.sort_by_key(|f| f.ts_ms);
    let mut e = engine(enforce_policy());
    let actions = feed(&mut e, &frames);
    idle_until(&mut e, frames.last().unwrap().ts_ms + MIN);
    let stats = e.stats();
    assert_eq!(stats.devices, 1024);
    assert_eq!(stats.devices_evicted, 30_000 + 1 - 1024);
    assert_eq!(stats.devices_refused, 0);
    // The convicted bot was not pushed out.
    let report = e.report(frames.last().unwrap().ts_ms);
    assert_eq!(report.devices.len(), 1024);
    let b = report.devices.iter().find(|d| d.mac == bot.mac).unwrap();
    assert_eq!(b.verdict, Verdict::Infected);
    assert_eq!(b.action, Action::Block);
    assert!(first_alert(&actions, bot.mac, Verdict::Infected).is_some());
}

/// Writes a capture of `macs` spoofed MACs, one unanswered port-25 SYN each, 10 ms apart.
fn write_flood(path: &std::path::Path, macs: u32) {
    let mut flood = Household::new(17);
    for i in 0..macs {
        let b = i.to_be_bytes();
        let host = flood.device_with_mac([0x06, 0xbb, b[0], b[1], b[2], b[3]]);
        let ip = flood.rng().public_ip();
        flood.syn_unanswered(EPOCH_MS + u64::from(i) * 10, &host, ip, 25);
    }
    let frames = flood.into_frames();
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    smtpguard_tools::sim::write_pcap(file, &frames).unwrap();
}

/// Replays `pcap` with the real binary under `/usr/bin/time`: the JSON report and the peak
/// RSS in KiB.
fn replay_with_rss(pcap: &std::path::Path) -> (serde_json::Value, u64) {
    let time = std::path::Path::new("/usr/bin/time");
    assert!(
        time.exists(),
        "/usr/bin/time (Debian package `time`) is needed to measure RSS"
    );
    let out = std::process::Command::new(time)
        .args(["-f", "maxrss_kib=%M"])
        .arg(smtpguard_tests::mqtt::agent_binary().unwrap())
        .args(["replay", "--pcap"])
        .arg(pcap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let kib: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSS in {stderr}"));
    (serde_json::from_slice(&out.stdout).unwrap(), kib)
}

#[test]
fn flood_capture_replays_in_bounded_memory() {
    // 30,000 spoofed MACs as a capture file, through the real binary. The baseline is the
    // same binary on a flood that just fills the device table (1,024 MACs): the 29-fold
    // larger flood may cost at most 2 MiB more. A table that grew with the flood would
    // need tens of MiB (about 2 KiB per device), and the binary's own size (a debug build
    // maps far more code than a router build) cancels out of the difference.
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.pcap");
    let flood = dir.path().join("flood.pcap");
    write_flood(&full, 1024);
    write_flood(&flood, 30_000);

    let (v, base_kib) = replay_with_rss(&full);
    assert_eq!(v["packets"], 1024 * 3);
    assert_eq!(v["devices"].as_array().unwrap().len(), 1024);
    assert_eq!(v["stats"]["devices_evicted"], 0);

    let (v, kib) = replay_with_rss(&flood);
    assert_eq!(v["packets"], 90_000);
    assert_eq!(v["devices"].as_array().unwrap().len(), 1024);
    assert_eq!(v["stats"]["devices_evicted"], 30_000 - 1024);
    eprintln!("peak RSS: 1,024 MACs {base_kib} KiB, 30,000 MACs {kib} KiB");
    assert!(
        kib <= base_kib + 2 * 1024,
        "30,000 MACs peaked at {kib} KiB, more than 2 MiB over the {base_kib} KiB of 1,024"
    );
}

#[test]
fn sessions_whose_auth_failed_are_auth_failures_not_submitted_messages() {
    let mut h = Household::new(29);
    let pc = h.device(7, Some("family-pc"));
    let typo = h.device(8, Some("typo-laptop"));
    let start = EPOCH_MS + 10 * HOUR;
    let refused = |ehlo: &str| Dialogue {
        auth_refused: true,
        ..Dialogue::mail_client(ehlo)
    };
    // Within one hour: 70 messages through the relay after AUTH (cleartext, so each one is
    // seen), and 50 sessions whose AUTH the relay refused with 535.
    for k in 0..70u64 {
        let d = Dialogue::mail_client("family-pc.lan");
        h.smtp_session(start + k * 40_000, &pc, relay(), 587, &d);
    }
    for k in 0..50u64 {
        let d = refused("family-pc.lan");
        h.smtp_session(start + 20_000 + k * 60_000, &pc, relay(), 587, &d);
    }
    // A laptop with a wrong password, 100 times: it sent nothing.
    for k in 0..100u64 {
        let d = refused("typo-laptop.lan");
        h.smtp_session(start + 5_000 + k * 30_000, &typo, relay(), 587, &d);
    }
    let frames = h.into_frames();
    let end = frames.last().unwrap().ts_ms;
    let mut e = engine(Policy::default());
    feed(&mut e, &frames);
    let report = e.report(end);

    let d = report.devices.iter().find(|d| d.mac == pc.mac).unwrap();
    let ev = d.evidence.join("\n");
    assert!(
        ev.contains("70 messages submitted in the last hour"),
        "the 50 refused sessions are not messages: {ev}"
    );
    assert!(
        ev.contains("AUTH attempts refused by the server in 10 min (not counted as messages)"),
        "{ev}"
    );
    // The window's counters (10 min): only the messages of authenticated sessions.
    let in_window = (0..70u64)
        .filter(|k| start + k * 40_000 + 10 * MIN > end)
        .count() as u32;
    assert_eq!(d.counters.messages, in_window, "{:?}", d.counters);

    let t = report.devices.iter().find(|d| d.mac == typo.mac).unwrap();
    assert_eq!(t.counters.messages, 0, "{:?}", t.counters);
    assert!(
        t.evidence.iter().all(|e| !e.contains("submitted")),
        "{:?}",
        t.evidence
    );
    assert_eq!(t.verdict, Verdict::Clean, "{t:?}");
}
