//! `smtpguard-agent status` and `smtpguard-agent release MAC`, and the status file behind
//! them.
//!
//! The run loop keeps `status.json` in the runtime directory (RAM on a router) up to date
//! with the devices, their verdicts and what the planner enforces: it looks every
//! [`STATUS_EVERY_SECS`] and writes when something changed, and at least every
//! [`STATUS_HEARTBEAT_SECS`].
//! `status` reads that file and the kernel's live set elements (which stay in force, and
//! expire by themselves, even when the agent is not running) and prints both. `release`
//! lifts a block at once in the kernel and leaves a request for the running agent, which
//! then leaves the device alone for its grace period.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use smtpguard_protocol::{AgentStats, DeviceReport, MacAddr, Mode};

use super::plan::{Entry, ManualRelease};
use super::state::{read_bounded, request_release, write_atomically};
use super::{EnforceError, Enforcer, EnforcerStats, LiveElement, Op, SetKind};

/// The status file's name in the state directory.
pub const STATUS_FILE: &str = "status.json";
/// How often the run loop looks whether the status changed.
pub const STATUS_EVERY_SECS: u64 = 2;
/// The longest the run loop leaves an unchanged status file alone.
pub const STATUS_HEARTBEAT_SECS: u64 = 10;
/// A status file older than this many heartbeats means the agent is not running.
const STALE_AFTER_HEARTBEATS: u64 = 3;

/// What the running agent says about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusFile {
    /// When it was written (Unix ms).
    pub updated_ms: u64,
    /// The agent's process id.
    pub pid: u32,
    /// Written by an agent that stopped cleanly (its blocks stay in force until they expire).
    pub stopped: bool,
    /// The interface it captures on.
    pub interface: String,
    /// The policy mode in force.
    pub mode: Mode,
    /// The policy version in force.
    pub policy_version: u64,
    /// Devices seen, with verdicts.
    pub devices: Vec<DeviceReport>,
    /// Rate limits and blocks the planner holds.
    pub enforcement: Vec<Entry>,
    /// Manual releases in their grace period.
    pub manual_releases: Vec<ManualRelease>,
    /// The enforcement backend's counters.
    pub enforcer: EnforcerStats,
    /// Capture and engine counters.
    pub stats: AgentStats,
}

impl StatusFile {
    /// Whether the agent that wrote this file was still running at `now_ms`: it did not
    /// stop, and it wrote the file within the last few intervals.
    pub fn running_at(&self, now_ms: u64) -> bool {
        !self.stopped
            && now_ms.saturating_sub(self.updated_ms) / 1000
                <= STATUS_HEARTBEAT_SECS * STALE_AFTER_HEARTBEATS
    }
}

/// Writes the status file atomically.
///
/// # Errors
/// [`EnforceError::Io`] naming the file.
pub fn write_status(state_dir: &Path, status: &StatusFile) -> Result<(), EnforceError> {
    let bytes = serde_json::to_vec_pretty(status).map_err(|e| EnforceError::Corrupt {
        path: STATUS_FILE.into(),
        problem: e.to_string(),
    })?;
    write_atomically(&state_dir.join(STATUS_FILE), &bytes)
}

/// Reads the status file; `None` when there is none.
///
/// # Errors
/// [`EnforceError::Io`] or [`EnforceError::Corrupt`] naming the file.
pub fn read_status(state_dir: &Path) -> Result<Option<StatusFile>, EnforceError> {
    let path = state_dir.join(STATUS_FILE);
    let Some(bytes) = read_bounded(&path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| EnforceError::Corrupt {
            path: path.display().to_string(),
            problem: e.to_string(),
        })
}

fn secs_left(until_ms: u64, now_ms: u64) -> u64 {
    until_ms.saturating_sub(now_ms).div_ceil(1000)
}

/// The text `smtpguard-agent status` prints, from the status file (if any) and the kernel's
/// live elements (or the reason they could not be read).
pub fn status_text(
    status: Option<&StatusFile>,
    live: Result<&[LiveElement], &EnforceError>,
    now_ms: u64,
) -> String {
    let mut out = String::new();
    match status {
        None => out.push_str("agent: no status file (the agent has not run here)\n"),
        Some(s) => {
            let age = now_ms.saturating_sub(s.updated_ms) / 1000;
            let state = if s.stopped {
                "STOPPED"
            } else if !s.running_at(now_ms) {
                "NOT RUNNING (status is stale)"
            } else {
                "running"
            };
            let _ = writeln!(
                out,
                "agent: {state}, pid {}, status written {age} s ago; capturing on {}; policy v{} mode {}",
                s.pid,
                if s.interface.is_empty() { "-" } else { &s.interface },
                s.policy_version,
                serde_json::to_value(s.mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            );
            let _ = writeln!(
                out,
                "packets {} · kernel drops {} · malformed {} · nft batches applied {} failed {}",
                s.stats.packets,
                s.stats.kernel_drops,
                s.stats.malformed_packets,
                s.enforcer.batches_applied,
                s.enforcer.batches_failed
            );
            let _ = writeln!(out, "\ndevices ({}):", s.devices.len());
            if s.devices.is_empty() {
                out.push_str("  (none seen yet)\n");
            }
            for d in &s.devices {
                let ips = d
                    .ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                let _ = writeln!(
                    out,
                    "  {}  {:<15}  {:<10} score {:.2}  {}{}",
                    d.mac,
                    if ips.is_empty() { "-".into() } else { ips },
                    d.verdict.as_str(),
                    d.score,
                    d.action,
                    d.hostname
                        .as_deref()
                        .map(|h| format!("  ({h})"))
                        .unwrap_or_default()
                );
                for e in &d.evidence {
                    let _ = writeln!(out, "      {e}");
                }
            }
            let _ = writeln!(
                out,
                "\nenforcement held by the agent ({}):",
                s.enforcement.len()
            );
            if s.enforcement.is_empty() {
                out.push_str("  (none)\n");
            }
            for e in &s.enforcement {
                let left = if e.open_ended {
                    "until released".to_string()
                } else {
                    format!("{} s left", secs_left(e.until_ms, now_ms))
                };
                let _ = writeln!(
                    out,
                    "  {}  {:<10}  {left}  {}",
                    e.mac,
                    e.action.as_str(),
                    e.reason
                );
            }
            for r in &s.manual_releases {
                let _ = writeln!(
                    out,
                    "  {}  released by hand, left alone for {} s more",
                    r.mac,
                    secs_left(r.until_ms, now_ms)
                );
            }
        }
    }
    out.push_str("\nin force in the kernel (table inet smtpguard):\n");
    match live {
        Err(e) => {
            let _ = writeln!(out, "  cannot read: {e}");
        }
        Ok([]) => out.push_str("  (no blocked or rate-limited devices)\n"),
        Ok(elements) => {
            for e in elements {
                let what = match e.set {
                    SetKind::Blocked => "blocked",
                    SetKind::Limited => "rate-limited",
                };
                let left = e
                    .expires_secs
                    .map_or_else(|| "no timeout".to_string(), |s| format!("expires in {s} s"));
                let _ = writeln!(out, "  {}  {what:<12}  {left}", e.mac);
            }
        }
    }
    out
}

/// `smtpguard-agent status`: the text to print.
///
/// # Errors
/// Only a status file that exists but cannot be read; an unreadable kernel table is shown in
/// the text instead.
pub fn status(
    state_dir: &Path,
    enforcer: &mut dyn Enforcer,
    now_ms: u64,
) -> Result<String, EnforceError> {
    let file = read_status(state_dir)?;
    let live = enforcer.list();
    Ok(status_text(file.as_ref(), live.as_deref(), now_ms))
}

/// `smtpguard-agent release MAC`: lifts the block and rate limit on `mac` in the kernel
/// now, and asks the running agent (or the next to start) to leave it alone for its grace
/// period. Returns what was done, in words.
///
/// # Errors
/// The kernel change failed ([`EnforceError::Rejected`]/[`EnforceError::Spawn`]) or the
/// request could not be written ([`EnforceError::Io`]). The request is written first, so a
/// running agent still releases the device when the kernel change fails.
pub fn release(
    state_dir: &Path,
    enforcer: &mut dyn Enforcer,
    mac: MacAddr,
    now_ms: u64,
) -> Result<String, EnforceError> {
    let was = enforcer
        .list()
        .map(|l| l.into_iter().filter(|e| e.mac == mac).collect::<Vec<_>>())
        .unwrap_or_default();
    request_release(state_dir, mac, now_ms)?;
    enforcer.apply(&[Op::Unblock { mac }, Op::Unlimit { mac }])?;
    let what = if was.is_empty() {
        "was neither blocked nor rate-limited"
    } else if was.iter().any(|e| e.set == SetKind::Blocked) {
        "block lifted"
    } else {
        "rate limit lifted"
    };
    Ok(format!(
        "{mac}: {what}; the agent leaves it alone for its release grace period"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_protocol::{Action, Verdict};

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    #[test]
    fn status_text_shows_devices_verdicts_and_live_blocks() {
        let bot = mac("02:5b:00:00:00:0b");
        let status = StatusFile {
            updated_ms: 100_000,
            pid: 42,
            interface: "br-lan".into(),
            mode: Mode::Enforce,
            policy_version: 3,
            devices: vec![DeviceReport {
                mac: bot,
                ips: vec!["192.168.50.11".parse().unwrap()],
                hostname: None,
                vendor: None,
                verdict: Verdict::Infected,
                score: 0.93,
                action: Action::Block,
                action_until_ms: Some(130_000),
                counters: Default::default(),
                evidence: vec!["40 connections to 38 distinct mail servers".into()],
            }],
            enforcement: vec![Entry {
                mac: bot,
                action: Action::Block,
                since_ms: 100_000,
                until_ms: 130_000,
                open_ended: false,
                reason: "infected".into(),
            }],
            ..StatusFile::default()
        };
        let live = vec![LiveElement {
            set: SetKind::Blocked,
            mac: bot,
            expires_secs: Some(27),
        }];
        let text = status_text(Some(&status), Ok(&live), 102_500);
        assert!(text.contains("agent: running, pid 42"), "{text}");
        assert!(text.contains("policy v3 mode enforce"), "{text}");
        assert!(
            text.contains("02:5b:00:00:00:0b  192.168.50.11    infected   score 0.93  block"),
            "{text}"
        );
        assert!(
            text.contains("40 connections to 38 distinct mail servers"),
            "{text}"
        );
        assert!(text.contains("block       28 s left  infected"), "{text}");
        assert!(
            text.contains("02:5b:00:00:00:0b  blocked       expires in 27 s"),
            "{text}"
        );
        // Much later the status is stale: the agent is not running.
        let text = status_text(Some(&status), Ok(&[]), 200_000);
        assert!(text.contains("NOT RUNNING"), "{text}");
        assert!(
            text.contains("(no blocked or rate-limited devices)"),
            "{text}"
        );
    }

    #[test]
    fn status_text_without_agent_or_table_says_so() {
        let err = EnforceError::Rejected {
            status: 1,
            stderr: "Error: No such file or directory".into(),
        };
        let text = status_text(None, Err(&err), 0);
        assert!(text.contains("no status file"), "{text}");
        assert!(
            text.contains("cannot read: nft rejected the batch"),
            "{text}"
        );
    }

    #[test]
    fn status_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_status(dir.path()).unwrap(), None);
        let s = StatusFile {
            updated_ms: 5,
            pid: 7,
            ..StatusFile::default()
        };
        write_status(dir.path(), &s).unwrap();
        assert_eq!(read_status(dir.path()).unwrap(), Some(s));
    }

    #[test]
    fn release_writes_a_request_and_lifts_in_the_kernel() {
        #[derive(Default)]
        struct Recorder(Vec<Op>);
        impl Enforcer for Recorder {
            fn install(&mut self, _: &super::super::TableSpec) -> Result<(), EnforceError> {
                Ok(())
            }
            fn apply(&mut self, ops: &[Op]) -> Result<(), EnforceError> {
                self.0.extend_from_slice(ops);
                Ok(())
            }
            fn list(&mut self) -> Result<Vec<LiveElement>, EnforceError> {
                Ok(vec![LiveElement {
                    set: SetKind::Blocked,
                    mac: "02:5b:00:00:00:0b".parse().unwrap(),
                    expires_secs: Some(3),
                }])
            }
            fn table_present(&mut self) -> Result<bool, EnforceError> {
                Ok(true)
            }
            fn note_reinstall(&mut self) {}
            fn stats(&self) -> EnforcerStats {
                EnforcerStats::default()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let bot = mac("02:5b:00:00:00:0b");
        let mut rec = Recorder::default();
        let msg = release(dir.path(), &mut rec, bot, 9).unwrap();
        assert!(msg.contains("block lifted"), "{msg}");
        assert_eq!(
            rec.0,
            vec![Op::Unblock { mac: bot }, Op::Unlimit { mac: bot }]
        );
        let (macs, _) = super::super::state::take_release_requests(dir.path());
        assert_eq!(macs, vec![bot]);
    }
}
