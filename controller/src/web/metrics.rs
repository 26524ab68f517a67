//! `GET /metrics`: Prometheus text exposition (version 0.0.4).
//!
//! Counters from the database (messages stored by kind, rejections by reason — every
//! [`RejectionReason`], zeros included —, rows deleted by retention per table), gauges
//! computed from the current views (devices by verdict, CPEs by status, CPEs per applied
//! fleet policy version), all read by [`crate::store::metrics::snapshot`]; the web layer's
//! own counters, and the embedded broker's and policy watch's ([`crate::broker::stats`]).
//! Messages stored count the ones retention deleted since, so the counter never goes down.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use smtpguard_protocol::{Kind, RejectionReason, Verdict};

use super::api::ABUSE_LABELS;
use super::AppState;
use crate::store::metrics::{count, snapshot, Snapshot};
use crate::verdicts;

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders the exposition text.
fn render(s: &Snapshot, state: &AppState) -> String {
    let mut o = String::with_capacity(4096);
    header(
        &mut o,
        "smtpguard_messages_stored_total",
        "counter",
        "Verified messages stored, by kind.",
    );
    for k in Kind::ALL {
        if k == Kind::Policy {
            continue;
        }
        let deleted = s
            .retention
            .messages_by_kind
            .get(k.as_str())
            .copied()
            .unwrap_or(0);
        let _ = writeln!(
            o,
            "smtpguard_messages_stored_total{{kind=\"{}\"}} {}",
            k.as_str(),
            u64::try_from(count(&s.by_kind, k.as_str()))
                .unwrap_or(0)
                .saturating_add(deleted)
        );
    }
    header(
        &mut o,
        "smtpguard_retention_deleted_total",
        "counter",
        "Rows deleted by retention, by table.",
    );
    for (table, n) in &s.retention.deleted {
        let _ = writeln!(
            o,
            "smtpguard_retention_deleted_total{{table=\"{}\"}} {n}",
            table.as_str()
        );
    }
    header(
        &mut o,
        "smtpguard_retention_last_run_timestamp_seconds",
        "gauge",
        "When the last retention pass finished (0: never).",
    );
    let (last_ms, complete) = s.retention.last_run.unwrap_or((0, true));
    let _ = writeln!(
        o,
        "smtpguard_retention_last_run_timestamp_seconds {}",
        last_ms / 1000
    );
    header(
        &mut o,
        "smtpguard_retention_last_run_complete",
        "gauge",
        "1 when the last retention pass deleted everything past its window, 0 when rows were left for the next pass.",
    );
    let _ = writeln!(
        o,
        "smtpguard_retention_last_run_complete {}",
        u8::from(complete)
    );
    header(
        &mut o,
        "smtpguard_rejections_total",
        "counter",
        "Inbound messages rejected, by reason.",
    );
    for r in RejectionReason::ALL {
        let _ = writeln!(
            o,
            "smtpguard_rejections_total{{reason=\"{}\"}} {}",
            r.as_str(),
            count(&s.rejections, r.as_str())
        );
    }
    header(
        &mut o,
        "smtpguard_devices",
        "gauge",
        "Household devices by current verdict.",
    );
    for v in [Verdict::Clean, Verdict::Suspicious, Verdict::Infected] {
        let _ = writeln!(
            o,
            "smtpguard_devices{{verdict=\"{}\"}} {}",
            v.as_str(),
            s.devices[usize::from(verdicts::severity(v))]
        );
    }
    header(
        &mut o,
        "smtpguard_infected_devices",
        "gauge",
        "Devices whose current verdict is infected.",
    );
    let _ = writeln!(o, "smtpguard_infected_devices {}", s.devices[2]);
    header(
        &mut o,
        "smtpguard_cpes",
        "gauge",
        "Enrolled CPEs by last reported status.",
    );
    for st in ["online", "offline", "unknown"] {
        let _ = writeln!(
            o,
            "smtpguard_cpes{{status=\"{st}\"}} {}",
            count(&s.cpes, st)
        );
    }
    header(
        &mut o,
        "smtpguard_cpes_online",
        "gauge",
        "Enrolled CPEs currently online.",
    );
    let _ = writeln!(o, "smtpguard_cpes_online {}", count(&s.cpes, "online"));
    header(
        &mut o,
        "smtpguard_policy_applied_cpes",
        "gauge",
        "Enrolled CPEs by applied fleet policy version (none: never applied one).",
    );
    for (v, n) in &s.rollout {
        let v = v.map_or("none".to_string(), |v| v.to_string());
        let _ = writeln!(o, "smtpguard_policy_applied_cpes{{version=\"{v}\"}} {n}");
    }
    header(
        &mut o,
        "smtpguard_abuse_reports_total",
        "counter",
        "Abuse reports stored, by whether a device was named.",
    );
    for (matched, label) in [(true, "device"), (false, "no_device")] {
        let n = s
            .abuse
            .iter()
            .find(|(m, _)| *m == matched)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(o, "smtpguard_abuse_reports_total{{result=\"{label}\"}} {n}");
    }
    header(
        &mut o,
        "smtpguard_abuse_rejected_total",
        "counter",
        "Abuse reports refused as malformed, by reason (since start).",
    );
    let rejected = state
        .counters
        .abuse_rejected
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    for l in ABUSE_LABELS.iter().chain(std::iter::once(&"form")) {
        let _ = writeln!(
            o,
            "smtpguard_abuse_rejected_total{{reason=\"{l}\"}} {}",
            rejected.get(l).copied().unwrap_or(0)
        );
    }
    header(
        &mut o,
        "smtpguard_release_requests",
        "gauge",
        "Subscriber release requests by status.",
    );
    for st in ["pending", "approved", "denied"] {
        let _ = writeln!(
            o,
            "smtpguard_release_requests{{status=\"{st}\"}} {}",
            count(&s.releases, st)
        );
    }
    header(
        &mut o,
        "smtpguard_commands",
        "gauge",
        "Commands to routers by status (refused: the router said why; expired: never answered).",
    );
    for st in ["sent", "unsent", "applied", "refused", "expired"] {
        let _ = writeln!(
            o,
            "smtpguard_commands{{status=\"{st}\"}} {}",
            count(&s.commands, st)
        );
    }
    header(
        &mut o,
        "smtpguard_command_publishes_total",
        "counter",
        "Times commands were published: once each when issued, again for a router back online.",
    );
    let _ = writeln!(o, "smtpguard_command_publishes_total {}", s.command_sends);
    header(
        &mut o,
        "smtpguard_notifications",
        "gauge",
        "Notifications (webhook, e-mail) by delivery state (finished ones are kept 30 days).",
    );
    for channel in ["webhook", "email"] {
        for st in ["pending", "sent", "failed", "off"] {
            let n = s
                .notifications
                .iter()
                .find(|(c, x, _)| c == channel && x == st)
                .map_or(0, |(_, _, n)| *n);
            let _ = writeln!(
                o,
                "smtpguard_notifications{{channel=\"{channel}\",state=\"{st}\"}} {n}"
            );
        }
    }
    crate::broker::stats::render(&mut o);
    header(
        &mut o,
        "smtpguard_web_auth_failures_total",
        "counter",
        "Failed logins and bad bearer tokens (since start).",
    );
    let _ = writeln!(
        o,
        "smtpguard_web_auth_failures_total {}",
        state.counters.auth_failures.load(Ordering::Relaxed)
    );
    header(
        &mut o,
        "smtpguard_web_forbidden_total",
        "counter",
        "Requests refused because the caller's role does not allow them (since start).",
    );
    let _ = writeln!(
        o,
        "smtpguard_web_forbidden_total {}",
        state.counters.forbidden.load(Ordering::Relaxed)
    );
    header(
        &mut o,
        "smtpguard_web_login_throttled_total",
        "counter",
        "Requests with a credential refused with 429 because their source address is in login back-off (since start).",
    );
    let _ = writeln!(
        o,
        "smtpguard_web_login_throttled_total {}",
        state.counters.login_throttled.load(Ordering::Relaxed)
    );
    header(
        &mut o,
        "smtpguard_web_login_backoff_addresses",
        "gauge",
        "Source addresses with failed credentials being tracked for back-off (bounded).",
    );
    let _ = writeln!(
        o,
        "smtpguard_web_login_backoff_addresses {}",
        state.login_throttle.lock().map_or(0, |t| t.len())
    );
    header(
        &mut o,
        "smtpguard_web_csrf_failures_total",
        "counter",
        "Form posts refused for CSRF (since start).",
    );
    let _ = writeln!(
        o,
        "smtpguard_web_csrf_failures_total {}",
        state.counters.csrf_failures.load(Ordering::Relaxed)
    );
    o
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let now = state.now_ms();
    match state.sql(move |conn| Ok(snapshot(conn, now)?)).await {
        Ok(s) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            render(&s, &state),
        )
            .into_response(),
        Err(e) => e.api(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::retention::{Limits, Windows};
    use crate::store::{Received, Store};

    /// Signs nothing: `/metrics` publishes no policy.
    struct NoPolicy;

    impl crate::web::PolicyPublisher for NoPolicy {
        fn publish(
            &self,
            _policy: smtpguard_protocol::Policy,
            _cpe_id: Option<String>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + '_>>
        {
            Box::pin(async { Err("not in this test".to_string()) })
        }
    }

    fn telemetry(seq: u64, at_ms: u64) -> Received {
        crate::store::received("cpe-m", seq, at_ms, crate::store::empty_telemetry(at_ms))
    }

    fn line<'a>(text: &'a str, name: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    #[test]
    fn retention_counts_show_and_stored_messages_never_go_down() {
        const DAY: u64 = 86_400_000;
        let now = 100 * DAY;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut store = Store::open(&path).unwrap();
        let old: Vec<Received> = (1..=3)
            .map(|seq| telemetry(seq, now - 30 * DAY + seq))
            .chain([telemetry(4, now)])
            .collect();
        store.write_batch(&old, &[]).unwrap();
        let state = AppState::new(
            crate::web::open_db(&path).unwrap(),
            crate::web::WebSettings::new("metrics-test-token-0123"),
            Arc::new(NoPolicy),
            Arc::new(move || now),
        );
        let render_now = |state: &AppState| {
            let db = crate::web::open_db(&path).unwrap();
            render(&snapshot(&*db, now).unwrap(), state)
        };
        let before = render_now(&state);
        assert_eq!(
            line(
                &before,
                "smtpguard_retention_deleted_total{table=\"telemetry\"}"
            ),
            "smtpguard_retention_deleted_total{table=\"telemetry\"} 0"
        );
        assert_eq!(
            line(&before, "smtpguard_retention_last_run_timestamp_seconds"),
            "smtpguard_retention_last_run_timestamp_seconds 0"
        );
        let stored = line(
            &before,
            "smtpguard_messages_stored_total{kind=\"telemetry\"}",
        );
        assert_eq!(
            stored,
            "smtpguard_messages_stored_total{kind=\"telemetry\"} 4"
        );

        let windows = Windows {
            telemetry_ms: Some(14 * DAY),
            replay_guard_ms: 7 * DAY,
            ..Windows::default()
        };
        let limits = Limits {
            pause: std::time::Duration::ZERO,
            ..Limits::default()
        };
        store
            .apply_retention(&windows, now, &limits, &|| false)
            .unwrap();

        let after = render_now(&state);
        assert_eq!(
            line(
                &after,
                "smtpguard_retention_deleted_total{table=\"telemetry\"}"
            ),
            "smtpguard_retention_deleted_total{table=\"telemetry\"} 3"
        );
        assert_eq!(
            line(
                &after,
                "smtpguard_retention_deleted_total{table=\"messages\"}"
            ),
            "smtpguard_retention_deleted_total{table=\"messages\"} 3"
        );
        assert_eq!(
            line(&after, "smtpguard_retention_last_run_timestamp_seconds"),
            format!(
                "smtpguard_retention_last_run_timestamp_seconds {}",
                now / 1000
            )
        );
        assert_eq!(
            line(&after, "smtpguard_retention_last_run_complete"),
            "smtpguard_retention_last_run_complete 1"
        );
        // Three of the four raw messages are gone; the counter still says four.
        assert_eq!(
            line(
                &after,
                "smtpguard_messages_stored_total{kind=\"telemetry\"}"
            ),
            stored
        );
    }
}
