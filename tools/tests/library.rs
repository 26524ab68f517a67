//! The scenario library (`smtpguard_tools::library`) through the agent core: every device
//! gets its expected verdict with a margin of 0.1 from the thresholds, and the README's
//! tables are printed (`cargo test -p smtpguard-tools --test library -- --nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use smtpguard_protocol::Verdict;
use smtpguard_tools::library::{self, policy, Outcome};

/// Scenarios where the margin cannot be had, with the reason the README gives.
const THIN_MARGIN: &[&str] = &[
    // Under TLS only the volume shows: the submission surge alone scores 0.80.
    "TLS-hidden burst",
];

#[test]
fn every_scenario_gets_its_verdict_with_margin() {
    let p = policy();
    let suspicious = (p.thresholds.suspicious * 100.0).round() as u32;
    let infected = (p.thresholds.infected * 100.0).round() as u32;
    let mut outcomes: Vec<Outcome> = Vec::new();
    for s in library::library() {
        outcomes.extend(library::run(&s));
    }
    println!("{}", library::table(&outcomes));
    let mut wrong = Vec::new();
    for o in &outcomes {
        let thin = THIN_MARGIN.contains(&o.scenario);
        let ok = match o.expect {
            Verdict::Clean => o.verdict == Verdict::Clean && (thin || o.score_h + 10 <= suspicious),
            Verdict::Suspicious => {
                o.verdict == Verdict::Suspicious && (thin || o.score_h >= suspicious + 10)
            }
            Verdict::Infected => {
                o.verdict == Verdict::Infected && (thin || o.score_h >= infected + 10)
            }
        };
        if !ok {
            wrong.push(format!(
                "{} / {}: expected {}, got {} ({}) {:?}",
                o.scenario, o.role, o.expect, o.verdict, o.score_h, o.evidence
            ));
        }
        if o.bot && o.expect == Verdict::Infected {
            // Enforced: rate-limited, then blocked.
            if o.to_block_ms.is_none() {
                wrong.push(format!("{} / {}: never blocked", o.scenario, o.role));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The evidence says why, in plain words.
    for (scenario, needle) in [
        (
            "camera after quiet days",
            "this looks like a camera (host name \"garage-cam\")",
        ),
        (
            "camera after quiet days",
            "after 3 days on the network without any",
        ),
        (
            "smart plug",
            "smart-home gadget (DHCP vendor class \"tuya-smartlife\")",
        ),
        (
            "unknown device after quiet days",
            "after 4 days on the network without any",
        ),
        ("message every 5 minutes", "new mail servers every hour for"),
        (
            "relay and foreign servers",
            "AUTH identities new to this device in 24 h",
        ),
        (
            "slow, foreign servers",
            "submission servers other than the provider's relay",
        ),
    ] {
        let o = outcomes
            .iter()
            .find(|o| o.scenario == scenario && o.bot)
            .unwrap();
        assert!(
            o.evidence.iter().any(|e| e.contains(needle)),
            "{scenario}: no {needle:?} in {:#?}",
            o.evidence
        );
    }
}
