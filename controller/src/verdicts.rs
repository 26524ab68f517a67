//! Device verdicts: which household device is in which state, since when, why, and what the
//! router is doing about it.
//!
//! The core is pure: [`devices`] folds stored alerts ([`AlertRow`]) and telemetry device
//! reports ([`ReportRow`]) into one [`DeviceView`] per (CPE, MAC), with its verdict history
//! and the action in force at `now_ms`. [`plain_summary`] turns counters into the sentence a
//! subscriber reads. The `load_*` functions, the thin shell that reads the rows from the
//! database (SQLite or PostgreSQL), live in [`crate::store::history`] and are re-exported
//! here.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::store::db::{DbError, Sql};
use smtpguard_protocol::{Action, DeviceCounters, MacAddr, Observed, Verdict};

pub use crate::store::history::{
    device_alerts, device_reports, load_alerts, load_history, load_reports,
};

/// Reading verdict rows failed.
#[derive(Debug, thiserror::Error)]
pub enum VerdictError {
    /// The database reported an error.
    #[error("database: {0}")]
    Db(#[from] DbError),
    /// A stored value is not what the schema promises.
    #[error("corrupt value in {column}: {detail}")]
    Corrupt {
        /// Table and column.
        column: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// One stored alert: a verdict change of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    /// The router that sent it.
    pub cpe_id: String,
    /// The device.
    pub mac: MacAddr,
    /// When the change happened (Unix ms).
    pub at_ms: u64,
    /// The verdict before.
    pub previous: Verdict,
    /// The new verdict.
    pub verdict: Verdict,
    /// Score behind it.
    pub score: f32,
    /// The action taken.
    pub action: Action,
    /// When that action ends (Unix ms), if it does.
    pub action_until_ms: Option<u64>,
    /// DHCP host name (LAN input: hostile text).
    pub hostname: Option<String>,
    /// OUI vendor.
    pub vendor: Option<String>,
    /// LAN addresses.
    pub ips: Vec<IpAddr>,
    /// The agent's evidence sentences.
    pub evidence: Vec<String>,
    /// Indicator values seen on the device.
    pub observed: Observed,
}

/// One device's entry in one telemetry window.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    /// The router that sent it.
    pub cpe_id: String,
    /// The device.
    pub mac: MacAddr,
    /// Window start (Unix ms).
    pub window_start_ms: u64,
    /// Window length.
    pub window_secs: u32,
    /// Verdict at the end of the window.
    pub verdict: Verdict,
    /// Score behind it.
    pub score: f32,
    /// Action in force.
    pub action: Action,
    /// When that action ends (Unix ms).
    pub action_until_ms: Option<u64>,
    /// DHCP host name.
    pub hostname: Option<String>,
    /// OUI vendor.
    pub vendor: Option<String>,
    /// LAN addresses.
    pub ips: Vec<IpAddr>,
    /// Counters over the window.
    pub counters: DeviceCounters,
    /// The agent's evidence sentences.
    pub evidence: Vec<String>,
}

impl ReportRow {
    /// When the window ended: when its verdict was observed (Unix ms).
    pub fn end_ms(&self) -> u64 {
        self.window_start_ms
            .saturating_add(u64::from(self.window_secs).saturating_mul(1000))
    }
}

/// How the controller learned of a verdict change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSource {
    /// The router's alert.
    Alert,
    /// Rebuilt from telemetry: the router reported a new verdict whose alert never arrived.
    Telemetry,
}

/// One verdict change in a device's history.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictChange {
    /// How it was learned.
    pub source: ChangeSource,
    /// When (Unix ms).
    pub at_ms: u64,
    /// From.
    pub previous: Verdict,
    /// To.
    pub verdict: Verdict,
    /// Score.
    pub score: f32,
    /// Action taken.
    pub action: Action,
    /// Until when.
    pub action_until_ms: Option<u64>,
    /// Evidence sentences at the time.
    pub evidence: Vec<String>,
}

/// Everything the controller knows about one household device now.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceView {
    /// Its router.
    pub cpe_id: String,
    /// Its address.
    pub mac: MacAddr,
    /// DHCP host name, if any (hostile text: escape it).
    pub hostname: Option<String>,
    /// OUI vendor.
    pub vendor: Option<String>,
    /// LAN addresses.
    pub ips: Vec<IpAddr>,
    /// Current verdict.
    pub verdict: Verdict,
    /// Current score.
    pub score: f32,
    /// Since when the device has had this verdict (Unix ms).
    pub since_ms: u64,
    /// Newest information about it (Unix ms).
    pub last_seen_ms: u64,
    /// The action in force at `now` (a block whose time ran out is `Monitor`).
    pub action: Action,
    /// When the action in force ends.
    pub action_until_ms: Option<u64>,
    /// Current evidence sentences.
    pub evidence: Vec<String>,
    /// Counters of the newest telemetry window, and its length in seconds.
    pub counters: Option<(DeviceCounters, u32)>,
    /// Verdict changes, oldest first, as stored at ingest ([`crate::store::history`]);
    /// filled by [`load_devices`] ([`attach_history`]), empty from [`devices`] alone.
    pub history: Vec<VerdictChange>,
    /// Indicator values from the newest alert.
    pub observed: Observed,
}

impl DeviceView {
    /// The name a person recognises: host name, else vendor, else the MAC.
    pub fn display_name(&self) -> String {
        match (&self.hostname, &self.vendor) {
            (Some(h), _) if !h.trim().is_empty() => h.clone(),
            (_, Some(v)) if !v.trim().is_empty() => format!("{v} device"),
            _ => self.mac.to_string(),
        }
    }
}

/// How bad a verdict is, for sorting (worst first).
pub fn severity(v: Verdict) -> u8 {
    match v {
        Verdict::Infected => 2,
        Verdict::Suspicious => 1,
        Verdict::Clean => 0,
    }
}

/// The action in force at `now_ms`: a rate limit or block whose end has passed is over.
pub fn action_in_force(
    action: Action,
    until_ms: Option<u64>,
    now_ms: u64,
) -> (Action, Option<u64>) {
    match (action, until_ms) {
        (Action::Monitor, _) => (Action::Monitor, None),
        (a, Some(until)) if until > now_ms => (a, Some(until)),
        (_, Some(_)) => (Action::Monitor, None),
        (a, None) => (a, None),
    }
}

/// One fact about a device, as the fold and the ingest apply it: an alert or one device's
/// entry in a telemetry window.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A verdict change the router sent.
    Alert(&'a AlertRow),
    /// A telemetry window's report of the device.
    Report(&'a ReportRow),
}

impl Event<'_> {
    /// When the fact was true: the alert's time, or the end of the report's window.
    pub fn at_ms(&self) -> u64 {
        match self {
            Event::Alert(a) => a.at_ms,
            Event::Report(r) => r.end_ms(),
        }
    }

    /// The order of the fold: by time, and an alert after a report ending at the same
    /// instant (it is the finer fact).
    pub fn order_key(&self) -> (u64, bool) {
        (self.at_ms(), matches!(self, Event::Alert(_)))
    }
}

/// Folds alerts and reports into one view per device, worst verdict first, then by CPE and
/// MAC. Deterministic: the order of the input rows does not matter. The history is left
/// empty: it is stored at ingest and read with [`load_history`].
pub fn devices(alerts: &[AlertRow], reports: &[ReportRow], now_ms: u64) -> Vec<DeviceView> {
    let mut by_device: BTreeMap<(&str, MacAddr), Vec<Event<'_>>> = BTreeMap::new();
    for a in alerts {
        by_device
            .entry((a.cpe_id.as_str(), a.mac))
            .or_default()
            .push(Event::Alert(a));
    }
    for r in reports {
        by_device
            .entry((r.cpe_id.as_str(), r.mac))
            .or_default()
            .push(Event::Report(r));
    }
    let mut out: Vec<DeviceView> = by_device
        .into_iter()
        .filter_map(|((cpe, mac), mut events)| {
            events.sort_by_key(Event::order_key);
            let mut v = fold(cpe, mac, &events)?;
            let (action, until) = action_in_force(v.action, v.action_until_ms, now_ms);
            v.action = action;
            v.action_until_ms = until;
            Some(v)
        })
        .collect();
    out.sort_by(|a, b| {
        severity(b.verdict)
            .cmp(&severity(a.verdict))
            .then_with(|| a.cpe_id.cmp(&b.cpe_id))
            .then_with(|| a.mac.cmp(&b.mac))
    });
    out
}

/// One device's events, in fold order ([`Event::order_key`]), folded into its view with
/// the action as the newest fact set it (not yet [`action_in_force`]).
pub fn fold(cpe: &str, mac: MacAddr, events: &[Event<'_>]) -> Option<DeviceView> {
    let first = events.first()?;
    let mut v = DeviceView::first_seen(cpe, mac, first);
    for (i, e) in events.iter().enumerate() {
        v.apply(e, i == 0);
    }
    Some(v)
}

impl DeviceView {
    /// A device as the controller knows it before its first fact is applied
    /// ([`DeviceView::apply`] the same fact next).
    pub fn first_seen(cpe: &str, mac: MacAddr, first: &Event<'_>) -> DeviceView {
        DeviceView {
            cpe_id: cpe.to_string(),
            mac,
            hostname: None,
            vendor: None,
            ips: Vec::new(),
            verdict: Verdict::Clean,
            score: 0.0,
            since_ms: first.at_ms(),
            last_seen_ms: 0,
            action: Action::Monitor,
            action_until_ms: None,
            evidence: Vec::new(),
            counters: None,
            history: Vec::new(),
            observed: Observed::default(),
        }
    }

    /// Applies the next fact, in fold order: the newest verdict, score and action win;
    /// names and addresses stay until a fact brings new ones; `since_ms` moves when the
    /// verdict changes, and on the device's `first` fact.
    pub fn apply(&mut self, e: &Event<'_>, first: bool) {
        let v = self;
        let (verdict, score, action, until, host, vendor, ips, evidence) = match e {
            Event::Alert(a) => {
                v.observed = a.observed.clone();
                (
                    a.verdict,
                    a.score,
                    a.action,
                    a.action_until_ms,
                    &a.hostname,
                    &a.vendor,
                    &a.ips,
                    &a.evidence,
                )
            }
            Event::Report(r) => {
                v.counters = Some((r.counters.clone(), r.window_secs));
                (
                    r.verdict,
                    r.score,
                    r.action,
                    r.action_until_ms,
                    &r.hostname,
                    &r.vendor,
                    &r.ips,
                    &r.evidence,
                )
            }
        };
        if first || verdict != v.verdict {
            // A change: from an alert it happened at `at_ms`; a report only shows the new
            // verdict by the end of its window, so the window start is the earliest bound.
            v.since_ms = match e {
                Event::Alert(a) => a.at_ms,
                Event::Report(r) => r.window_start_ms,
            };
        }
        v.verdict = verdict;
        v.score = score;
        v.action = action;
        v.action_until_ms = until;
        if host.is_some() {
            v.hostname.clone_from(host);
        }
        if vendor.is_some() {
            v.vendor.clone_from(vendor);
        }
        if !ips.is_empty() {
            v.ips.clone_from(ips);
        }
        if !evidence.is_empty() || verdict == Verdict::Clean {
            v.evidence.clone_from(evidence);
        }
        v.last_seen_ms = v.last_seen_ms.max(e.at_ms());
    }
}

fn duration_words(secs: u32) -> String {
    match secs {
        0..=119 => format!("{secs} seconds"),
        120..=7199 => format!("{} minutes", secs / 60),
        _ => format!("{} hours", secs / 3600),
    }
}

/// "1 router", "3 routers": a count with its noun.
pub fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n: u64 = n.into();
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// What the device did, in words a subscriber understands, from its newest counters; `None`
/// when nothing stands out.
pub fn plain_summary(counters: &DeviceCounters, window_secs: u32) -> Option<String> {
    let within = duration_words(window_secs);
    let mut parts = Vec::new();
    if counters.distinct_mail_servers >= 2 {
        parts.push(format!(
            "tried to send mail directly to {} in {within}",
            plural(
                counters.distinct_mail_servers,
                "mail server",
                "different mail servers"
            )
        ));
    } else if counters.smtp_connections >= 5 {
        parts.push(format!(
            "opened {} to mail servers in {within}",
            plural(counters.smtp_connections, "connection", "connections")
        ));
    }
    if counters.submission_connections >= 10 {
        parts.push(format!(
            "sent {} through a mail account in {within}",
            plural(counters.messages, "message", "messages")
        ));
    }
    if counters.remote_rejections > 0 {
        parts.push(format!(
            "was refused {} by mail servers as spam",
            plural(counters.remote_rejections, "time", "times")
        ));
    }
    if counters.unanswered_syns >= 20 {
        parts.push(format!(
            "made {} unanswered attempts to reach mail servers",
            counters.unanswered_syns
        ));
    }
    sentence(&parts)
}

/// Which signals of `counters` stand out, in words without numbers.
fn plain_lead(counters: &DeviceCounters) -> Option<String> {
    let mut parts = Vec::new();
    if counters.distinct_mail_servers >= 2 {
        parts.push("tried to send mail directly to many different mail servers");
    } else if counters.smtp_connections >= 5 {
        parts.push("opened many connections to mail servers");
    }
    if counters.submission_connections >= 10 {
        parts.push("sent many messages through a mail account");
    }
    if counters.remote_rejections > 0 {
        parts.push("was refused by mail servers as spam");
    }
    if counters.unanswered_syns >= 20 {
        parts.push("made many unanswered attempts to reach mail servers");
    }
    sentence(&parts)
}

fn sentence<S: AsRef<str>>(parts: &[S]) -> Option<String> {
    let last = parts.len().checked_sub(1)?;
    let mut text = String::from("This device ");
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            text.push_str(if i == last { " and " } else { ", " });
        }
        text.push_str(p.as_ref());
    }
    text.push('.');
    Some(text)
}

/// The one-sentence summary shown beside a device's evidence. The router's evidence
/// sentences carry the numbers, each over its own time span ("… in the last hour", "… in
/// 10 min"); the counters of a telemetry report cover another span and may be from another
/// moment than the evidence shown. So when there is evidence the summary names what stands
/// out without numbers, and it gives numbers from the counters only when no evidence sits
/// beside it to disagree with.
pub fn device_summary(d: &DeviceView) -> Option<String> {
    let (counters, window_secs) = d.counters.as_ref()?;
    if d.evidence.is_empty() {
        plain_summary(counters, *window_secs)
    } else {
        plain_lead(counters)
    }
}

/// What the router is doing, in words a subscriber understands. `until` is already
/// formatted by the caller (time zones are a presentation concern).
pub fn plain_action(action: Action, until: Option<&str>) -> String {
    match (action, until) {
        (Action::Block, Some(u)) => format!("Sending mail from this device is blocked until {u}. Everything else (web, video, games) works as usual."),
        (Action::Block, None) => "Sending mail from this device is blocked. Everything else works as usual.".to_string(),
        (Action::RateLimit, Some(u)) => format!("Mail from this device is slowed down until {u}. Everything else works as usual."),
        (Action::RateLimit, None) => "Mail from this device is slowed down. Everything else works as usual.".to_string(),
        (Action::Monitor, _) => "Your router is watching this device but not restricting it.".to_string(),
    }
}

// ---- stored names ----

/// Parses a verdict name as stored (`clean`, `suspicious`, `infected`).
///
/// # Errors
/// [`VerdictError::Corrupt`] for any other text.
pub fn parse_verdict(s: &str) -> Result<Verdict, VerdictError> {
    match s {
        "clean" => Ok(Verdict::Clean),
        "suspicious" => Ok(Verdict::Suspicious),
        "infected" => Ok(Verdict::Infected),
        other => Err(VerdictError::Corrupt {
            column: "verdict",
            detail: other.chars().take(40).collect(),
        }),
    }
}

/// Parses an action name as stored (`monitor`, `rate-limit`, `block`).
///
/// # Errors
/// [`VerdictError::Corrupt`] for anything else.
pub fn parse_action(s: &str) -> Result<Action, VerdictError> {
    match s {
        "monitor" => Ok(Action::Monitor),
        "rate-limit" => Ok(Action::RateLimit),
        "block" => Ok(Action::Block),
        other => Err(VerdictError::Corrupt {
            column: "action",
            detail: other.chars().take(40).collect(),
        }),
    }
}

/// One device's stored verdict change: (CPE, MAC, change).
pub type HistoryRow = (String, MacAddr, VerdictChange);

/// Gives each device its stored changes (oldest first); changes of devices not in `devices`
/// are left out.
pub fn attach_history(devices: &mut [DeviceView], history: Vec<HistoryRow>) {
    let mut by_device: BTreeMap<(String, MacAddr), Vec<VerdictChange>> = BTreeMap::new();
    for (cpe, mac, change) in history {
        by_device.entry((cpe, mac)).or_default().push(change);
    }
    for d in devices {
        if let Some(changes) = by_device.remove(&(d.cpe_id.clone(), d.mac)) {
            d.history = changes;
        }
    }
}

/// How far back the views look: verdicts older than this without news are history.
pub const LOOKBACK_MS: u64 = 7 * 24 * 3600 * 1000;
/// Most alert rows one view reads.
pub const MAX_ALERT_ROWS: u32 = 5000;
/// Most report rows one view reads.
pub const MAX_REPORT_ROWS: u32 = 20_000;

/// The current devices of one CPE as kept at ingest ([`crate::store::devices`]), each with
/// its history: the newest [`MAX_ALERT_ROWS`] changes of the last [`LOOKBACK_MS`].
///
/// # Errors
/// [`crate::store::StoreError`] on database errors or corrupt rows.
pub fn load_devices(
    conn: &impl Sql,
    cpe_id: &str,
    now_ms: u64,
) -> Result<Vec<DeviceView>, crate::store::StoreError> {
    let mut out = crate::store::devices::list(conn, Some(cpe_id), now_ms)?;
    let since = now_ms.saturating_sub(LOOKBACK_MS);
    attach_history(
        &mut out,
        load_history(conn, Some(cpe_id), since, MAX_ALERT_ROWS)?,
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([2, 0x11, 0x22, 0x33, 0x44, 5]);

    fn alert(at: u64, prev: Verdict, v: Verdict, action: Action, until: Option<u64>) -> AlertRow {
        AlertRow {
            cpe_id: "cpe-a".into(),
            mac: MAC,
            at_ms: at,
            previous: prev,
            verdict: v,
            score: 0.9,
            action,
            action_until_ms: until,
            hostname: Some("DESKTOP-7".into()),
            vendor: None,
            ips: vec!["192.168.1.14".parse().unwrap()],
            evidence: vec![format!("evidence at {at}")],
            observed: Observed::default(),
        }
    }

    fn report(start: u64, v: Verdict, servers: u32) -> ReportRow {
        ReportRow {
            cpe_id: "cpe-a".into(),
            mac: MAC,
            window_start_ms: start,
            window_secs: 600,
            verdict: v,
            score: 0.5,
            action: Action::Monitor,
            action_until_ms: None,
            hostname: None,
            vendor: Some("Acme".into()),
            ips: vec![],
            counters: DeviceCounters {
                distinct_mail_servers: servers,
                ..Default::default()
            },
            evidence: vec![],
        }
    }

    #[test]
    fn the_newest_alert_sets_verdict_since_and_the_block_in_force() {
        let alerts = vec![
            alert(
                5_000,
                Verdict::Suspicious,
                Verdict::Infected,
                Action::Block,
                Some(90_000),
            ),
            alert(
                1_000,
                Verdict::Clean,
                Verdict::Suspicious,
                Action::RateLimit,
                Some(50_000),
            ),
        ];
        let v = devices(&alerts, &[], 10_000);
        assert_eq!(v.len(), 1);
        let d = &v[0];
        assert_eq!(d.verdict, Verdict::Infected);
        assert_eq!(d.since_ms, 5_000);
        assert_eq!(d.action, Action::Block);
        assert_eq!(d.action_until_ms, Some(90_000));
        assert_eq!(d.evidence, vec!["evidence at 5000".to_string()]);
        assert_eq!(d.display_name(), "DESKTOP-7");
    }

    #[test]
    fn an_expired_block_is_no_longer_in_force() {
        let alerts = vec![alert(
            1_000,
            Verdict::Clean,
            Verdict::Infected,
            Action::Block,
            Some(2_000),
        )];
        let d = &devices(&alerts, &[], 3_000)[0];
        assert_eq!(d.verdict, Verdict::Infected);
        assert_eq!(d.action, Action::Monitor);
        assert_eq!(d.action_until_ms, None);
    }

    #[test]
    fn telemetry_keeps_the_verdict_and_adds_counters_without_moving_since() {
        let alerts = vec![alert(
            1_000,
            Verdict::Clean,
            Verdict::Infected,
            Action::Block,
            Some(900_000),
        )];
        let mut r = report(600_000, Verdict::Infected, 287);
        r.action = Action::Block;
        r.action_until_ms = Some(900_000);
        let d = &devices(&alerts, &[r], 700_000)[0];
        assert_eq!(d.since_ms, 1_000);
        assert_eq!(d.counters.as_ref().unwrap().0.distinct_mail_servers, 287);
        // Reports with no evidence keep the alert's.
        assert_eq!(d.evidence, vec!["evidence at 1000".to_string()]);
        assert_eq!(d.hostname.as_deref(), Some("DESKTOP-7"));
        assert_eq!(d.vendor.as_deref(), Some("Acme"));
        assert_eq!(d.last_seen_ms, 1_200_000);
    }

    #[test]
    fn a_later_clean_report_clears_the_device() {
        let alerts = vec![alert(
            1_000,
            Verdict::Clean,
            Verdict::Infected,
            Action::Block,
            Some(5_000),
        )];
        let d = &devices(&alerts, &[report(10_000, Verdict::Clean, 0)], 700_000)[0];
        assert_eq!(d.verdict, Verdict::Clean);
        assert_eq!(d.since_ms, 10_000);
        assert!(d.evidence.is_empty());
    }

    #[test]
    fn worst_devices_come_first_and_input_order_does_not_matter() {
        let mut clean = report(0, Verdict::Clean, 0);
        clean.mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let bad = alert(5, Verdict::Clean, Verdict::Infected, Action::Monitor, None);
        let a = devices(std::slice::from_ref(&bad), std::slice::from_ref(&clean), 10);
        let b = devices(&[bad], &[clean], 10);
        assert_eq!(a, b);
        assert_eq!(a[0].verdict, Verdict::Infected);
        assert_eq!(a[1].verdict, Verdict::Clean);
    }

    /// Issue 11: "43 messages in 10 minutes" in the summary beside "125 messages submitted
    /// in the last hour" in the evidence. The summary beside evidence carries no number of
    /// its own; without evidence it keeps its numbers.
    #[test]
    fn a_summary_beside_evidence_has_no_numbers_to_disagree_with_it() {
        let mut r = report(600_000, Verdict::Infected, 0);
        r.counters = DeviceCounters {
            submission_connections: 43,
            messages: 43,
            ..Default::default()
        };
        r.evidence = vec![
            "125 messages submitted in the last hour; this device's baseline is 0.5 per hour (12.0 a day)".into(),
        ];
        let d = &devices(&[], &[r.clone()], 700_000)[0];
        let summary = device_summary(d).unwrap();
        assert_eq!(
            summary,
            "This device sent many messages through a mail account."
        );
        assert!(!summary.chars().any(|c| c.is_ascii_digit()), "{summary}");
        // Evidence of an older alert, counters of a newer report: still no number.
        let mut newer = r.clone();
        newer.evidence.clear();
        let a = alert(
            1_000,
            Verdict::Clean,
            Verdict::Infected,
            Action::Block,
            None,
        );
        let d = &devices(&[a], &[newer], 700_000)[0];
        assert_eq!(d.evidence, vec!["evidence at 1000".to_string()]);
        assert!(!device_summary(d)
            .unwrap()
            .chars()
            .any(|c| c.is_ascii_digit()));
        // Nothing beside it: the numbers and their span.
        let mut bare = r;
        bare.evidence.clear();
        bare.verdict = Verdict::Clean;
        let d = &devices(&[], &[bare], 700_000)[0];
        assert_eq!(
            device_summary(d).unwrap(),
            "This device sent 43 messages through a mail account in 10 minutes."
        );
    }

    #[test]
    fn summaries_speak_plainly_with_numbers() {
        let c = DeviceCounters {
            distinct_mail_servers: 287,
            remote_rejections: 3,
            ..Default::default()
        };
        assert_eq!(
            plain_summary(&c, 600).unwrap(),
            "This device tried to send mail directly to 287 different mail servers in 10 minutes and was refused 3 times by mail servers as spam."
        );
        let c = DeviceCounters {
            submission_connections: 40,
            messages: 412,
            ..Default::default()
        };
        assert_eq!(
            plain_summary(&c, 3600).unwrap(),
            "This device sent 412 messages through a mail account in 60 minutes."
        );
        assert_eq!(plain_summary(&DeviceCounters::default(), 600), None);
        assert_eq!(
            plain_summary(&c, 60).unwrap(),
            "This device sent 412 messages through a mail account in 60 seconds."
        );
        assert!(plain_action(Action::Block, Some("14:05")).contains("blocked until 14:05"));
    }
}
