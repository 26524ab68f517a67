//! Replays every capture of the real-traffic corpus (`shared/corpus`, next to the
//! repository) and checks the verdicts its README states; runs the actual
//! `smtpguard-agent replay` binary for the JSON contract and its exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use smtpguard_agent::engine::EngineConfig;
use smtpguard_agent::replay::{self, ReplayDevice, Report};
use smtpguard_protocol::{Policy, Verdict};

/// The corpus directory; missing is a failure, not a skip. `SMTPGUARD_CORPUS` (the `pcap`
/// directory) overrides; otherwise `shared/corpus` beside the repository (CI's layout) or
/// beside the directory holding the work trees.
fn corpus() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates: Vec<PathBuf> = std::env::var_os("SMTPGUARD_CORPUS")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            manifest.join("../../shared/corpus/pcap"),
            manifest.join("../../../shared/corpus/pcap"),
        ])
        .collect();
    candidates
        .iter()
        .find(|d| d.join("bot-malspam-direct-to-mx.pcap").is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!("the traffic corpus is missing: looked in {candidates:?} (set SMTPGUARD_CORPUS to its pcap directory)")
        })
}

fn run(name: &str) -> Report {
    let path = corpus().join(name);
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let outcome =
        replay::replay_reader(file, name, Policy::default(), EngineConfig::default()).unwrap();
    assert!(outcome.warning.is_none(), "{name}: {:?}", outcome.warning);
    assert!(outcome.report.packets > 0, "{name}: no packets");
    outcome.report
}

fn device<'a>(r: &'a Report, mac: &str) -> &'a ReplayDevice {
    r.devices
        .iter()
        .find(|d| d.mac.to_string() == mac)
        .unwrap_or_else(|| panic!("no device {mac} in {:#?}", r.devices))
}

fn has_evidence(d: &ReplayDevice, needle: &str) -> bool {
    d.evidence.iter().any(|e| e.contains(needle))
}

#[test]
fn every_corpus_capture_is_covered() {
    let mut names: Vec<String> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pcap") || n.ends_with(".pcapng"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "benign-auth-plain-587.pcap",
            "benign-outlook-applemail.pcap",
            "benign-starttls-25.pcap",
            "bot-emotet-stolen-creds-587.pcap",
            "bot-malspam-direct-to-mx.pcap",
            "negative-dnscat-mx-tunnel.pcap",
        ],
        "a capture was added or removed: give it an expectation here"
    );
}

#[test]
fn malspam_bot_is_at_least_suspicious_with_dialogue_evidence() {
    let r = run("bot-malspam-direct-to-mx.pcap");
    let bot = device(&r, "00:08:02:1c:47:ae");
    assert!(bot.verdict >= Verdict::Suspicious, "{bot:#?}");
    assert!(has_evidence(bot, "helo=COZOXORY.club"), "{bot:#?}");
    assert!(has_evidence(bot, "on port 25"), "{bot:#?}");
    assert!(has_evidence(bot, "503"), "{bot:#?}");
    assert!(has_evidence(bot, "virus"), "{bot:#?}");
    assert_eq!(
        bot.ips,
        vec!["10.7.29.101".parse::<std::net::IpAddr>().unwrap()]
    );
    // The gateway answering on port 25 is not a device.
    assert_eq!(r.devices.len(), 1);
    assert_eq!(r.smtp_sessions, 1);
}

#[test]
fn emotet_on_submission_port_is_at_least_suspicious() {
    let r = run("bot-emotet-stolen-creds-587.pcap");
    let bot = device(&r, "00:08:02:1c:47:ae");
    assert!(bot.verdict >= Verdict::Suspicious, "{bot:#?}");
    assert!(
        has_evidence(bot, "EHLO [173.66.46.97] is not this device's address"),
        "{bot:#?}"
    );
}

#[test]
fn benign_mail_clients_are_clean() {
    for (name, macs) in [
        ("benign-auth-plain-587.pcap", &["00:0a:f3:31:94:00"][..]),
        (
            "benign-outlook-applemail.pcap",
            &["00:e0:1c:3c:17:c2", "58:b0:35:86:54:8d"][..],
        ),
        (
            "benign-starttls-25.pcap",
            &["00:13:72:c4:f1:e1", "00:0c:29:c1:34:dc"][..],
        ),
    ] {
        let r = run(name);
        for mac in macs {
            let d = device(&r, mac);
            assert_eq!(d.verdict, Verdict::Clean, "{name}: {d:#?}");
            assert!(d.actions.is_empty(), "{name}: {d:#?}");
        }
        assert!(
            r.devices.iter().all(|d| d.verdict == Verdict::Clean),
            "{name}: {:#?}",
            r.devices
        );
    }
}

#[test]
fn dns_tunnel_with_mx_queries_is_not_convicted() {
    let r = run("negative-dnscat-mx-tunnel.pcap");
    let d = device(&r, "e4:b3:18:4b:f0:c3");
    assert_ne!(d.verdict, Verdict::Infected, "{d:#?}");
    assert_eq!(d.verdict, Verdict::Clean, "{d:#?}");
    assert!(
        d.counters.mx_lookups > 0 || r.stats.dns_messages > 0,
        "{r:#?}"
    );
    assert_eq!(r.smtp_sessions, 0);
}

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smtpguard-agent"))
}

#[test]
fn binary_prints_the_json_contract() {
    let pcap = corpus().join("bot-malspam-direct-to-mx.pcap");
    let out = agent()
        .args(["replay", "--pcap"])
        .arg(&pcap)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // Exactly one JSON document.
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["packets"], 199);
    assert_eq!(v["smtp_sessions"], 1);
    let dev = &v["devices"][0];
    assert_eq!(dev["mac"], "00:08:02:1c:47:ae");
    assert_eq!(dev["ips"][0], "10.7.29.101");
    assert!(dev["hostname"].is_null());
    assert!(dev["vendor"].is_null());
    assert_eq!(dev["verdict"], "suspicious");
    let score = dev["score"].as_f64().unwrap();
    assert!((0.4..0.75).contains(&score), "{score}");
    // Two decimals.
    assert_eq!((score * 100.0).round() / 100.0, score);
    assert!(dev["evidence"].as_array().unwrap().len() >= 3);
    assert_eq!(dev["actions"], serde_json::json!(["monitor"]));
    // Same capture, same bytes.
    let again = agent()
        .args(["replay", "--pcap"])
        .arg(&pcap)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap(), text);
}

#[test]
fn binary_with_policy_and_text_format() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "mode = \"enforce\"\nallow_macs = [\"02:11:22:33:44:50\"]\n",
    )
    .unwrap();
    let out = agent()
        .args(["replay", "--format", "text", "--pcap"])
        .arg(corpus().join("bot-emotet-stolen-creds-587.pcap"))
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("SUSPICIOUS"), "{text}");
    assert!(text.contains("rate-limit"), "{text}");
    assert!(text.contains("EHLO [173.66.46.97]"), "{text}");
    // A broken policy names the field and exits 2.
    std::fs::write(&policy, "[weights]\ndialogue = 7.0\n").unwrap();
    let out = agent()
        .args(["replay", "--pcap"])
        .arg(corpus().join("bot-emotet-stolen-creds-587.pcap"))
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("weights.dialogue"));
}

#[test]
fn binary_exit_codes_for_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    // Missing file.
    let out = agent()
        .args(["replay", "--pcap"])
        .arg(dir.path().join("missing.pcap"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.pcap"));
    assert!(out.stdout.is_empty());
    // Not a capture.
    let text = dir.path().join("notes.pcap");
    std::fs::write(&text, "these are notes, not packets\n").unwrap();
    let out = agent()
        .args(["replay", "--pcap"])
        .arg(&text)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a pcap or pcapng capture"));
    // Truncated mid-packet: analysed up to the cut, warning, exit 0.
    let full = std::fs::read(corpus().join("bot-malspam-direct-to-mx.pcap")).unwrap();
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &full[..full.len() * 2 / 3]).unwrap();
    let out = agent()
        .args(["replay", "--pcap"])
        .arg(&cut)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cut off"), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["truncated"], true);
    let packets = v["packets"].as_u64().unwrap();
    assert!(packets > 0 && packets < 199, "{packets}");
}
