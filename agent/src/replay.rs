//! `smtpguard-agent replay`: offline analysis of a capture with the live engine.
//!
//! The capture streams through [`crate::pcap::CaptureReader`] into [`Engine`] with each
//! record's timestamp as the clock ([`Engine::handle_timeout`] runs whenever time passes
//! [`Engine::poll_timeout`]), and the result is one [`Report`]: every device with its
//! worst verdict during the capture with its score and evidence (and the verdict at the
//! end), the actions taken, plus packet and session counts. The JSON
//! field names are a contract that tests, benchmarks and operators rely on:
//!
//! ```json
//! {"devices":[{"mac":"02:11:22:33:44:05","ips":["192.168.1.14"],"hostname":null,
//!   "vendor":null,"verdict":"infected","score":0.97,"evidence":["..."],
//!   "actions":["block"]}],"packets":14557,"smtp_sessions":123}
//! ```
//!
//! Nothing here touches live capture, netlink or the network, so replay runs anywhere,
//! including under qemu-user. Output is deterministic: same capture, same bytes.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;
use smtpguard_protocol::{Action, DeviceCounters, MacAddr, Policy, Verdict};

use crate::cooked::{CookedStats, CookedView};
use crate::core::{Agent, Output, Settings};
use crate::enforce::Op;
use crate::engine::{EngineConfig, EngineStats};
use crate::oui::{OuiError, OuiTable};
use crate::pcap::{CaptureError, CaptureReader, Link};

/// Entries kept in [`Report::timeline`].
pub const TIMELINE_MAX: usize = 1000;

/// `replay` command-line arguments (parsed in [`crate::cli`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayArgs {
    /// Capture file (pcap or pcapng; Ethernet or Linux cooked SLL/SLL2).
    pub pcap: PathBuf,
    /// Policy as TOML (every field optional; defaults otherwise).
    pub policy: Option<PathBuf>,
    /// Output format.
    pub format: OutputFormat,
    /// IEEE OUI registry (e.g. /usr/share/ieee-data/oui.csv) for device vendors.
    pub oui: Option<PathBuf>,
}

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// One JSON document (the contract).
    Json,
    /// For people.
    Text,
}

/// Replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The policy file could not be read.
    #[error("policy file {path}: {source}")]
    PolicyRead {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The policy file is not a valid policy (the message names the field).
    #[error("policy file {path}: {message}")]
    Policy {
        /// The file.
        path: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The capture could not be opened.
    #[error("capture {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a readable capture.
    #[error("capture {path}: {source}")]
    Capture {
        /// The file.
        path: String,
        /// Why.
        source: CaptureError,
    },
    /// The OUI registry could not be loaded.
    #[error(transparent)]
    Oui(#[from] OuiError),
}

/// One device in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayDevice {
    /// Ethernet address.
    pub mac: MacAddr,
    /// LAN addresses seen.
    pub ips: Vec<std::net::IpAddr>,
    /// DHCP host name, if seen.
    pub hostname: Option<String>,
    /// Vendor from the OUI registry, if given and known.
    pub vendor: Option<String>,
    /// The worst verdict the device reached during the capture.
    pub verdict: Verdict,
    /// The highest score in [0, 1] (two decimals) it reached.
    pub score: f32,
    /// Why, in sentences with numbers, as of that moment.
    pub evidence: Vec<String>,
    /// When it reached that score (capture time, Unix ms).
    pub peak_at_ms: Option<u64>,
    /// Verdict at the end of the capture (windows may have slid since the peak).
    pub final_verdict: Verdict,
    /// Score at the end of the capture.
    pub final_score: f32,
    /// Every action the engine took for the device during the capture.
    pub actions: Vec<Action>,
    /// The action in force at the end of the capture.
    pub action_in_force: Action,
    /// Counters over the detection window at the end of the capture.
    pub counters: DeviceCounters,
}

/// One verdict change or action during the capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineEntry {
    /// When (capture time, Unix ms).
    pub at_ms: u64,
    /// The device.
    pub mac: MacAddr,
    /// `alert`, `enforce` or `release`.
    pub event: &'static str,
    /// For alerts, the new verdict; for enforcement, the action.
    pub detail: String,
}

/// The replay report (see the module documentation for the contract).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Devices, highest score first, then by MAC.
    pub devices: Vec<ReplayDevice>,
    /// Packets read from the capture.
    pub packets: u64,
    /// TCP sessions on mail ports.
    pub smtp_sessions: u64,
    /// The capture ended in the middle of a record (analysed up to the cut).
    pub truncated: bool,
    /// Packets of pcapng interfaces whose link type replay cannot read (skipped).
    pub unsupported_link_packets: u64,
    /// What became of Linux cooked records (`tcpdump -i any`): given to the engine, or
    /// skipped as the router's own, WAN-side or duplicate copies (all zero for Ethernet).
    pub cooked: CookedStats,
    /// Capture time of the first and last packet (Unix ms).
    pub first_ms: Option<u64>,
    /// See `first_ms`.
    pub last_ms: Option<u64>,
    /// Verdict changes and actions in order, at most [`TIMELINE_MAX`].
    pub timeline: Vec<TimelineEntry>,
    /// The engine's counters.
    pub stats: EngineStats,
}

/// A finished replay and any warning to print.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The report.
    pub report: Report,
    /// Set when the capture was cut off or corrupt part-way (analysed up to there).
    pub warning: Option<String>,
}

/// Reads and validates a policy file.
///
/// # Errors
/// [`ReplayError::PolicyRead`] or [`ReplayError::Policy`] naming the bad field.
pub fn load_policy(path: &Path) -> Result<Policy, ReplayError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ReplayError::PolicyRead {
        path: shown.clone(),
        source,
    })?;
    let policy: Policy = toml::from_str(&text).map_err(|e| ReplayError::Policy {
        path: shown.clone(),
        message: e.to_string().trim().replace('\n', " "),
    })?;
    policy.validate().map_err(|e| ReplayError::Policy {
        path: shown,
        message: e.to_string(),
    })?;
    Ok(policy)
}

/// Runs the engine over a capture read from `input` (`name` is used in messages).
///
/// Ethernet records go to the engine as they are; Linux cooked records (SLL, SLL2) through
/// [`CookedView`], which keeps each packet once, in the direction it had on the LAN.
///
/// # Errors
/// [`ReplayError::Capture`] when the input is not a capture at all, is a pcap of a link
/// type replay cannot read, or is a pcapng none of whose interfaces it can read. A capture
/// that breaks off part-way is analysed up to the break and reported in
/// [`Outcome::warning`].
pub fn replay_reader<R: Read>(
    input: R,
    name: &str,
    policy: Policy,
    config: EngineConfig,
) -> Result<Outcome, ReplayError> {
    let mut reader = CaptureReader::new(input).map_err(|source| ReplayError::Capture {
        path: name.to_string(),
        source,
    })?;
    let mut cooked = CookedView::new(config.mail_ports);
    let mut agent = Agent::new(
        Settings {
            mail_ports: config.mail_ports,
            engine: config,
            ..Settings::default()
        },
        policy,
        0,
    );
    let mut timeline = Vec::new();
    let mut packets = 0u64;
    let mut first_ms = None;
    let mut last_ms = None;
    let mut warning = None;
    let mut truncated = false;
    loop {
        let rec = match reader.next_packet() {
            Ok(Some(rec)) => rec,
            Ok(None) => break,
            Err(source @ CaptureError::NoUsableInterface { .. }) => {
                return Err(ReplayError::Capture {
                    path: name.to_string(),
                    source,
                })
            }
            Err(e) => {
                truncated = matches!(e, CaptureError::Truncated { .. });
                warning = Some(format!(
                    "warning: {name}: {e}; analysed the {packets} packets before it"
                ));
                break;
            }
        };
        let now = rec.ts_ms();
        packets += 1;
        first_ms.get_or_insert(now);
        last_ms = Some(last_ms.map_or(now, |l: u64| l.max(now)));
        match rec.link {
            Link::Ethernet => agent.handle_frame(now, rec.data),
            Link::Cooked(format) => {
                if let Some(frame) = cooked.frame(rec.ts_ns, format, rec.data) {
                    agent.handle_frame(now, frame);
                }
            }
        }
        drain(&mut agent, now, &mut timeline);
    }
    let end = last_ms.unwrap_or(0);
    let engine = agent.engine();
    let snapshot = engine.report(end);
    let mut devices: Vec<ReplayDevice> = snapshot
        .devices
        .into_iter()
        .map(|d| {
            let peak = engine.peak(&d.mac);
            let (verdict, score, evidence, peak_at_ms) = match peak {
                Some(p) => (
                    p.verdict,
                    p.score_h as f32 / 100.0,
                    p.evidence,
                    Some(p.at_ms),
                ),
                None => (d.verdict, d.score, d.evidence, None),
            };
            ReplayDevice {
                actions: engine.actions_taken(&d.mac),
                mac: d.mac,
                ips: d.ips,
                hostname: d.hostname,
                vendor: d.vendor,
                verdict,
                score,
                evidence,
                peak_at_ms,
                final_verdict: d.verdict,
                final_score: d.score,
                action_in_force: d.action,
                counters: d.counters,
            }
        })
        .collect();
    devices.sort_by(|a, b| {
        let sa = (a.score * 100.0).round() as u32;
        let sb = (b.score * 100.0).round() as u32;
        sb.cmp(&sa).then(a.mac.cmp(&b.mac))
    });
    let stats = engine.stats();
    Ok(Outcome {
        report: Report {
            devices,
            packets,
            smtp_sessions: stats.smtp_sessions,
            truncated,
            unsupported_link_packets: reader.skipped(),
            cooked: cooked.stats(),
            first_ms,
            last_ms,
            timeline,
            stats,
        },
        warning,
    })
}

/// Records the core's alerts and enforcement in the timeline (the rest of its outputs is
/// for a live router).
fn drain(agent: &mut Agent, now: u64, timeline: &mut Vec<TimelineEntry>) {
    while let Some(output) = agent.poll_output() {
        let entries: Vec<TimelineEntry> = match output {
            Output::Alert(a) => vec![TimelineEntry {
                at_ms: a.at_ms,
                mac: a.device.mac,
                event: "alert",
                detail: format!(
                    "{} -> {} (score {:.2})",
                    a.previous, a.device.verdict, a.device.score
                ),
            }],
            Output::Apply(ops) => ops
                .into_iter()
                .map(|op| {
                    let (event, detail) = match op {
                        Op::Limit { .. } => ("enforce", Action::RateLimit.to_string()),
                        Op::Block { .. } => ("enforce", Action::Block.to_string()),
                        Op::Unlimit { .. } => ("release", Action::RateLimit.to_string()),
                        Op::Unblock { .. } => ("release", Action::Block.to_string()),
                    };
                    TimelineEntry {
                        at_ms: now,
                        mac: op.mac(),
                        event,
                        detail,
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        for e in entries {
            if timeline.len() < TIMELINE_MAX {
                timeline.push(e);
            }
        }
    }
}

/// Replays a capture file with the given arguments.
///
/// # Errors
/// Any [`ReplayError`]: unreadable policy or OUI file, missing file, not a capture.
pub fn replay_file(args: &ReplayArgs) -> Result<Outcome, ReplayError> {
    let policy = match &args.policy {
        Some(p) => load_policy(p)?,
        None => Policy::default(),
    };
    let mut config = EngineConfig::default();
    if let Some(path) = &args.oui {
        config.oui = Some(Arc::new(OuiTable::load(path)?));
    }
    let name = args.pcap.display().to_string();
    let file = File::open(&args.pcap).map_err(|source| ReplayError::Open {
        path: name.clone(),
        source,
    })?;
    replay_reader(
        BufReader::with_capacity(64 * 1024, file),
        &name,
        policy,
        config,
    )
}

/// The report as one line of JSON.
pub fn render_json(report: &Report) -> String {
    // Serialising plain structs of strings and numbers cannot fail.
    serde_json::to_string(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The report for people.
pub fn render_text(report: &Report, name: &str) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{name}: {} packets, {} SMTP session{}, {} device{}{}",
        report.packets,
        report.smtp_sessions,
        if report.smtp_sessions == 1 { "" } else { "s" },
        report.devices.len(),
        if report.devices.len() == 1 { "" } else { "s" },
        if report.truncated {
            " (capture cut off)"
        } else {
            ""
        }
    );
    if report.unsupported_link_packets > 0 {
        let _ = writeln!(
            out,
            "{} packets on interfaces of unsupported link types skipped",
            report.unsupported_link_packets
        );
    }
    let c = &report.cooked;
    if c.records > 0 {
        let _ = writeln!(
            out,
            "Linux cooked records: {} analysed; skipped {} sent by the router (own, NAT'd or bridged copies), {} replies received on the WAN side, {} from the internet, {} duplicates, {} not Ethernet, {} malformed",
            c.to_engine,
            c.sent_by_router,
            c.received_replies,
            c.from_internet,
            c.duplicates,
            c.not_ethernet,
            c.malformed
        );
    }
    for d in &report.devices {
        let ips: Vec<String> = d.ips.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "\n{}  {}  {}{}",
            d.mac,
            if ips.is_empty() {
                "-".into()
            } else {
                ips.join(", ")
            },
            d.vendor.as_deref().unwrap_or("unknown vendor"),
            d.hostname
                .as_deref()
                .map(|h| format!("  \"{h}\""))
                .unwrap_or_default(),
        );
        let actions: Vec<&str> = d.actions.iter().map(Action::as_str).collect();
        let _ = writeln!(
            out,
            "  {} (score {:.2}); actions: {}",
            d.verdict.as_str().to_uppercase(),
            d.score,
            if actions.is_empty() {
                "none".into()
            } else {
                actions.join(", ")
            }
        );
        for e in &d.evidence {
            let _ = writeln!(out, "  - {e}");
        }
    }
    out
}

/// `smtpguard-agent replay`: prints the report; exit 0 when the capture was read, 2 when
/// the policy, OUI file or capture is unusable.
pub fn main(args: ReplayArgs) -> ExitCode {
    match replay_file(&args) {
        Ok(outcome) => {
            if let Some(w) = &outcome.warning {
                eprintln!("{w}");
            }
            let text = match args.format {
                OutputFormat::Json => render_json(&outcome.report),
                OutputFormat::Text => {
                    render_text(&outcome.report, &args.pcap.display().to_string())
                }
            };
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smtpguard-agent replay: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_policy_files_load_and_bad_fields_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "allow_macs = [\"02:11:22:33:44:50\"]\n").unwrap();
        let p = load_policy(&ok).unwrap();
        assert_eq!(p.allow_macs.len(), 1);
        let relays = dir.path().join("relays.toml");
        std::fs::write(&relays, "allow_relays = [\"198.51.100.7:587\"]\n").unwrap();
        assert!(load_policy(&relays)
            .unwrap()
            .is_relay("198.51.100.7".parse().unwrap(), 587));
        for (text, field) in [
            ("alow_macs = []", "alow_macs"),
            ("[thresholds]\ninfected = \"high\"", "infected"),
            (
                "[thresholds]\nsuspicious = 0.9\ninfected = 0.8",
                "thresholds.suspicious",
            ),
            ("allow_macs = [\"nonsense\"]", "allow_macs"),
        ] {
            let bad = dir.path().join("bad.toml");
            std::fs::write(&bad, text).unwrap();
            let err = load_policy(&bad).unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
    }

    #[test]
    fn non_captures_are_errors() {
        let err = replay_reader(
            &b"not a capture"[..],
            "x",
            Policy::default(),
            EngineConfig::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a pcap"), "{err}");
    }
}
