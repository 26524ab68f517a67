//! The agent core is driven the same way by every driver, so the same frames give the same
//! verdicts and actions whether they come through `replay` (a capture file, timers at the
//! capture's clock), the live loop's pattern (each frame, then a tick on a clock that runs a
//! little behind and in between idle ticks) or the demo's (a batch of frames, then time run
//! on to a later moment).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::path::PathBuf;

use smtpguard_agent::core::{Agent, Output, Settings};
use smtpguard_agent::enforce::Op;
use smtpguard_agent::engine::EngineConfig;
use smtpguard_agent::replay;
use smtpguard_protocol::{Mode, Policy, Verdict};
use smtpguard_tools::sim::{Dialogue, Frame, Household, EPOCH_MS};

const MIN: u64 = 60_000;

fn enforce_policy() -> Policy {
    Policy {
        mode: Mode::Enforce,
        block_ttl_secs: 600,
        allow_relays: vec!["198.51.100.7:587".parse().unwrap()],
        ..Policy::default()
    }
}

fn settings() -> Settings {
    smtpguard_tools::library::settings()
}

/// What a driver saw: every alert (device, verdict, its own time) and every kernel
/// operation, in order.
fn events(output: Output) -> Vec<String> {
    match output {
        Output::Alert(a) => vec![format!(
            "{} alert {} -> {} at {}",
            a.device.mac, a.previous, a.device.verdict, a.at_ms
        )],
        Output::Apply(ops) => ops
            .iter()
            .map(|op| match op {
                Op::Limit { mac, .. } => format!("{mac} rate-limit"),
                Op::Block { mac, .. } => format!("{mac} block"),
                Op::Unlimit { mac } => format!("{mac} lift rate-limit"),
                Op::Unblock { mac } => format!("{mac} lift block"),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn drain(agent: &mut Agent, out: &mut Vec<String>) {
    while let Some(o) = agent.poll_output() {
        out.extend(events(o));
    }
}

/// The live loop: each frame as captured, then a tick on a clock a few milliseconds later;
/// between frames the capture returns every 250 ms with nothing and the loop ticks.
fn drive_live(frames: &[Frame]) -> (Vec<String>, Agent) {
    let mut agent = Agent::new(settings(), enforce_policy(), EPOCH_MS);
    let mut out = Vec::new();
    let mut clock = EPOCH_MS;
    for f in frames {
        while clock + 250 < f.ts_ms {
            clock += 250;
            if agent.poll_timeout().is_some_and(|t| t <= clock) {
                agent.handle_timeout(clock);
            }
            drain(&mut agent, &mut out);
        }
        agent.handle_frame(f.ts_ms, &f.data);
        clock = f.ts_ms + 3;
        if agent.poll_timeout().is_some_and(|t| t <= clock) {
            agent.handle_timeout(clock);
        }
        drain(&mut agent, &mut out);
    }
    (out, agent)
}

/// The demo: frames in batches of a simulated minute, then time run on to the batch's end.
fn drive_demo(frames: &[Frame]) -> (Vec<String>, Agent) {
    let mut agent = Agent::new(settings(), enforce_policy(), EPOCH_MS);
    let mut out = Vec::new();
    for batch in frames.chunk_by(|a, b| a.ts_ms / MIN == b.ts_ms / MIN) {
        for f in batch {
            agent.handle_frame(f.ts_ms, &f.data);
        }
        drain(&mut agent, &mut out);
        if let Some(last) = batch.last() {
            agent.handle_timeout(last.ts_ms);
            drain(&mut agent, &mut out);
        }
    }
    (out, agent)
}

/// Replay: the frames as a capture file through `smtpguard-agent replay`'s code.
fn drive_replay(frames: &[Frame]) -> replay::Report {
    let bytes = smtpguard_tools::sim::write_pcap(Vec::new(), frames).unwrap();
    replay::replay_reader(
        &bytes[..],
        "parity.pcap",
        enforce_policy(),
        settings().engine,
    )
    .unwrap()
    .report
}

/// A household with a bot that is rate-limited, blocked, let out when the block runs out,
/// and blocked again (40 minutes of spam, 10-minute blocks); a laptop mailing through the relay; a quiet phone.
fn household() -> (Vec<Frame>, [smtpguard_tools::sim::Host; 3]) {
    let mut h = Household::new(21);
    let bot = h.device(5, Some("old-pc"));
    let laptop = h.device(2, Some("laptop"));
    let phone = h.device(3, Some("phone"));
    for (i, host) in [&bot, &laptop, &phone].into_iter().enumerate() {
        h.dhcp(EPOCH_MS + i as u64 * 10, host);
    }
    for k in 0..6u64 {
        h.smtp_session(
            EPOCH_MS + 2 * MIN + k * 7 * MIN,
            &laptop,
            Ipv4Addr::new(198, 51, 100, 7),
            587,
            &Dialogue {
                starttls: true,
                ..Dialogue::mail_client("laptop.lan")
            },
        );
    }
    let mut t = EPOCH_MS + 5 * MIN;
    for _ in 0..240 {
        let mx = h.rng().public_ip();
        let domain = format!("{}.com", h.rng().word());
        h.mx_lookup(t, &bot, &domain, &format!("mx.{domain}"), mx);
        let d = Dialogue::bot(h.rng());
        h.smtp_session(t + 40, &bot, mx, 25, &d);
        t += 10_000;
    }
    (h.into_frames(), [bot, laptop, phone])
}

#[test]
fn replay_live_loop_and_demo_drive_the_core_alike() {
    let (frames, [bot, laptop, phone]) = household();
    let (live, live_agent) = drive_live(&frames);
    let (demo, demo_agent) = drive_demo(&frames);
    let report = drive_replay(&frames);

    // The scenario does what it should, so the comparison means something.
    let bot_events: Vec<&String> = live
        .iter()
        .filter(|e| e.starts_with(&bot.mac.to_string()))
        .collect();
    let ops: Vec<&str> = bot_events
        .iter()
        .filter(|e| !e.contains(" alert "))
        .map(|e| e.split_once(' ').unwrap().1)
        .collect();
    // 40 minutes of spam under a 10-minute block: limited, blocked (the block takes the
    // rate limit's place), and blocked again each time the block runs out and it carries
    // on.
    assert_eq!(
        ops,
        [
            "rate-limit",
            "lift rate-limit",
            "block",
            "lift block",
            "block",
            "lift block",
            "block",
            "lift block",
            "block"
        ],
        "{bot_events:#?}"
    );
    assert!(
        live.iter()
            .all(|e| !e.starts_with(&laptop.mac.to_string())
                && !e.starts_with(&phone.mac.to_string()))
    );

    // Live loop and demo: the same alerts (with their times) and operations, in order.
    assert_eq!(live, demo);

    // Replay: the same timeline of alerts and actions.
    let replayed: Vec<String> = report
        .timeline
        .iter()
        .map(|e| format!("{} {} {}", e.mac, e.event, e.detail))
        .collect();
    let from_live: Vec<String> = live
        .iter()
        .map(|e| {
            let (mac, rest) = e.split_once(' ').unwrap();
            match rest {
                "rate-limit" | "block" => format!("{mac} enforce {rest}"),
                p if p.starts_with("lift ") => format!("{mac} release {}", &p[5..]),
                p => {
                    let change = p.trim_start_matches("alert ");
                    let change = change.split(" at ").next().unwrap();
                    let rest: Vec<&str> = change.split(" -> ").collect();
                    format!("{mac} alert {} -> {}", rest[0], rest[1])
                }
            }
        })
        .collect();
    let replayed_short: Vec<String> = replayed
        .iter()
        .map(|e| e.split(" (score").next().unwrap().to_string())
        .collect();
    assert_eq!(replayed_short, from_live);

    // And the same verdicts at the end, device by device.
    let end = frames.last().unwrap().ts_ms;
    for mac in [bot.mac, laptop.mac, phone.mac] {
        let live_d = live_agent.engine().report(end).devices;
        let demo_d = demo_agent.engine().report(end).devices;
        let l = live_d.iter().find(|d| d.mac == mac).unwrap();
        let d = demo_d.iter().find(|d| d.mac == mac).unwrap();
        let r = report.devices.iter().find(|d| d.mac == mac).unwrap();
        assert_eq!((l.verdict, l.score), (d.verdict, d.score), "{mac}");
        assert_eq!(
            (l.verdict, l.score),
            (r.final_verdict, r.final_score),
            "{mac}"
        );
        assert_eq!(live_agent.engine().actions_taken(&mac), r.actions, "{mac}");
    }
    let b = report.devices.iter().find(|d| d.mac == bot.mac).unwrap();
    assert_eq!(b.verdict, Verdict::Infected);
}

/// The same on a real capture of the shared corpus: a spam bot delivering direct to MX.
#[test]
fn a_corpus_capture_gives_the_same_verdicts_replayed_and_driven_live() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let path = [
        dir.join("../../shared/corpus/pcap"),
        dir.join("../../../shared/corpus/pcap"),
    ]
    .into_iter()
    .chain(std::env::var_os("SMTPGUARD_CORPUS").map(PathBuf::from))
    .map(|d| d.join("bot-malspam-direct-to-mx.pcap"))
    .find(|p| p.is_file())
    .expect("the traffic corpus is missing (set SMTPGUARD_CORPUS to its pcap directory)");
    let bytes = std::fs::read(&path).unwrap();
    let mut reader = smtpguard_agent::pcap::CaptureReader::new(&bytes[..]).unwrap();
    let mut frames = Vec::new();
    while let Some(rec) = reader.next_packet().unwrap() {
        frames.push(Frame {
            ts_ms: rec.ts_ms(),
            data: rec.data.to_vec(),
        });
    }
    let mut agent = Agent::new(Settings::default(), enforce_policy(), frames[0].ts_ms);
    let mut live = Vec::new();
    for f in &frames {
        agent.handle_frame(f.ts_ms, &f.data);
        agent.handle_timeout(f.ts_ms + 3);
        drain(&mut agent, &mut live);
    }
    let report = replay::replay_reader(
        &bytes[..],
        "malspam",
        enforce_policy(),
        EngineConfig::default(),
    )
    .unwrap()
    .report;
    let end = frames.last().unwrap().ts_ms;
    let devices = agent.engine().report(end).devices;
    assert!(!report.devices.is_empty());
    for r in &report.devices {
        let l = devices.iter().find(|d| d.mac == r.mac).unwrap();
        assert_eq!(
            (l.verdict, l.score),
            (r.final_verdict, r.final_score),
            "{}",
            r.mac
        );
        assert_eq!(agent.engine().actions_taken(&r.mac), r.actions, "{}", r.mac);
    }
    // The bot reached a verdict that enforcement acted on, the same way both times.
    assert!(live.iter().any(|e| e.ends_with("rate-limit")), "{live:#?}");
    let enforced: Vec<&str> = report
        .timeline
        .iter()
        .filter(|e| e.event != "alert")
        .map(|e| e.detail.as_str())
        .collect();
    let live_enforced: Vec<&str> = live
        .iter()
        .filter(|e| !e.contains(" alert "))
        .map(|e| e.split_once(' ').unwrap().1)
        .collect();
    assert_eq!(enforced, live_enforced);
}
