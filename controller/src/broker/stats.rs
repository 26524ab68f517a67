//! The embedded broker's counters, shown in `/metrics`: refused logins, ACL denials,
//! dropped packets and connections, and the policy watch's restorations. Process-wide (the
//! broker, the policy watch and the web server of one `serve` share them).

use std::sync::atomic::{AtomicU64, Ordering};

/// One counter per label value, in the order of its `LABELS`.
#[derive(Debug)]
pub struct Labelled<const N: usize> {
    labels: [&'static str; N],
    counts: [AtomicU64; N],
}

impl<const N: usize> Labelled<N> {
    const fn new(labels: [&'static str; N]) -> Self {
        Labelled {
            labels,
            counts: [const { AtomicU64::new(0) }; N],
        }
    }

    /// Adds one to `label` (a label not in the list is counted under the last one).
    pub fn add(&self, label: &str) {
        let i = self
            .labels
            .iter()
            .position(|l| *l == label)
            .unwrap_or(N.saturating_sub(1));
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count of `label`.
    pub fn count(&self, label: &str) -> u64 {
        self.labels
            .iter()
            .position(|l| *l == label)
            .and_then(|i| self.counts.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Every `(label, count)`, zeros included.
    pub fn all(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.labels
            .iter()
            .zip(self.counts.iter())
            .map(|(l, c)| (*l, c.load(Ordering::Relaxed)))
    }
}

/// Every counter of the embedded broker and the policy watch.
#[derive(Debug)]
pub struct BrokerStats {
    /// Logins refused, by reason.
    pub logins_refused: Labelled<8>,
    /// Packets refused by the topic ACL (the client is disconnected), by action.
    pub acl_denied: Labelled<3>,
    /// Packets and connections dropped to bound memory or for breaking the protocol, and
    /// connections silent beyond their keep-alive or accepting nothing for too long.
    pub dropped: Labelled<6>,
    /// Connections closed by the gate for a reason other than the client: the CPE was
    /// revoked or its password rotated, the router refused a link (`upstream_unreachable`),
    /// the router closed the link, or a newer login with the same client id took it over.
    pub sessions_ended: Labelled<4>,
    /// Retained policy topics the policy watch put right, by what it did.
    pub policy_restored: Labelled<3>,
}

/// The process's counters.
pub static STATS: BrokerStats = BrokerStats {
    logins_refused: Labelled::new([
        "controller_password",
        "unknown_cpe",
        "revoked",
        "bad_password",
        "client_id_mismatch",
        "will_denied",
        "malformed",
        "not_ready",
    ]),
    acl_denied: Labelled::new(["publish", "subscribe", "subscription_limit"]),
    dropped: Labelled::new([
        "payload_size_limit_exceeded",
        "connection_limit",
        "protocol_violation",
        "timeout",
        "keep_alive_timeout",
        "stalled_reader",
    ]),
    sessions_ended: Labelled::new([
        "credentials_changed",
        "upstream_unreachable",
        "broker_closed",
        "taken_over",
    ]),
    policy_restored: Labelled::new(["fleet_republished", "cpe_republished", "cpe_cleared"]),
};

/// Appends the counters in Prometheus text format.
pub fn render(out: &mut String) {
    use std::fmt::Write as _;
    let s = &STATS;
    type Family = (
        &'static str,
        &'static str,
        &'static str,
        Vec<(&'static str, u64)>,
    );
    let families: [Family; 5] = [
        (
            "smtpguard_broker_logins_refused_total",
            "reason",
            "Embedded broker logins refused, by reason.",
            s.logins_refused.all().collect(),
        ),
        (
            "smtpguard_broker_acl_denied_total",
            "action",
            "Embedded broker packets refused by the topic ACL (client disconnected).",
            s.acl_denied.all().collect(),
        ),
        (
            "smtpguard_broker_dropped_total",
            "reason",
            "Embedded broker packets or connections dropped, by reason.",
            s.dropped.all().collect(),
        ),
        (
            "smtpguard_broker_sessions_ended_total",
            "reason",
            "CPE connections closed by the controller.",
            s.sessions_ended.all().collect(),
        ),
        (
            "smtpguard_policy_restored_total",
            "action",
            "Retained policy topics that held something else than the latest signed policy, put right.",
            s.policy_restored.all().collect(),
        ),
    ];
    for (name, label, help, values) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (value, n) in values {
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_count_and_render() {
        let l = Labelled::new(["a", "b"]);
        l.add("a");
        l.add("zzz");
        assert_eq!((l.count("a"), l.count("b")), (1, 1));
        let mut out = String::new();
        render(&mut out);
        assert!(
            out.contains("smtpguard_broker_dropped_total{reason=\"payload_size_limit_exceeded\"}")
        );
    }
}
