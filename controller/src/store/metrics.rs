//! What `/metrics` counts in the database, read in one [`snapshot`]: messages stored by
//! kind, rejections by reason, CPEs by status and by applied fleet policy version, abuse
//! reports matched or not, release requests and commands by status (expired ones apart),
//! command publishes, with the devices' ([`super::devices::counts`]), notifications'
//! ([`super::notifications::counts`]) and retention's ([`super::retention::totals`]) own
//! counts. The web layer renders it as Prometheus text.

use super::db::{DbError, FromValue, Sql};
use super::{retention, StoreError};

/// The database's counts at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Messages stored now, by kind (retention's deletions apart: see [`Snapshot::retention`]).
    pub by_kind: Vec<(String, i64)>,
    /// Rejected inbound messages, by reason.
    pub rejections: Vec<(String, i64)>,
    /// Devices by verdict: clean, suspicious, infected.
    pub devices: [usize; 3],
    /// Enrolled (not revoked) CPEs by last reported status (`unknown`: never reported).
    pub cpes: Vec<(String, i64)>,
    /// Enrolled (not revoked) CPEs by applied fleet policy version (`None`: none yet).
    pub rollout: Vec<(Option<i64>, i64)>,
    /// Abuse reports by whether a device was named.
    pub abuse: Vec<(bool, i64)>,
    /// Release requests by status.
    pub releases: Vec<(String, i64)>,
    /// Commands by status, `expired` for sent or unsent ones past their expiry.
    pub commands: Vec<(String, i64)>,
    /// Command publishes, resends included.
    pub command_sends: i64,
    /// Notifications by channel and state.
    pub notifications: Vec<(String, String, i64)>,
    /// What retention deleted so far.
    pub retention: retention::Totals,
}

/// The count of `key` in `rows` (0 when absent).
pub fn count(rows: &[(String, i64)], key: &str) -> i64 {
    rows.iter().find(|(k, _)| k == key).map_or(0, |(_, v)| *v)
}

fn pairs<T: FromValue>(db: &impl Sql, sql: &str) -> Result<Vec<(T, i64)>, StoreError> {
    Ok(db
        .query(sql, &[])?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect::<Result<_, DbError>>()?)
}

/// Reads every count, commands expired at `now_ms` apart.
///
/// # Errors
/// [`StoreError`].
pub fn snapshot(db: &impl Sql, now_ms: u64) -> Result<Snapshot, StoreError> {
    let devices = super::devices::counts(db, now_ms)?
        .by_verdict
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    Ok(Snapshot {
        by_kind: pairs(db, "SELECT kind, COUNT(*) FROM messages GROUP BY kind")?,
        rejections: pairs(db, "SELECT reason, count FROM rejections")?,
        devices,
        cpes: pairs(
            db,
            "SELECT COALESCE(s.status, 'unknown'), COUNT(*) FROM cpes c
             LEFT JOIN cpe_state s ON s.cpe_id = c.cpe_id WHERE c.revoked_at_ms IS NULL
             GROUP BY 1",
        )?,
        rollout: pairs(
            db,
            "SELECT s.fleet_policy_version, COUNT(*) FROM cpes c
             LEFT JOIN cpe_state s ON s.cpe_id = c.cpe_id WHERE c.revoked_at_ms IS NULL
             GROUP BY 1",
        )?,
        abuse: pairs(
            db,
            "SELECT mac IS NOT NULL, COUNT(*) FROM abuse_reports GROUP BY 1",
        )?,
        releases: pairs(
            db,
            "SELECT status, COUNT(*) FROM release_requests GROUP BY status",
        )?,
        // `now_ms` is a number, so formatting it into the statement is safe.
        commands: pairs(
            db,
            &format!(
                "SELECT CASE WHEN status IN ('sent', 'unsent') AND expires_ms <= {now_ms}
                 THEN 'expired' ELSE status END, COUNT(*) FROM commands GROUP BY 1"
            ),
        )?,
        command_sends: db.query_one(
            "SELECT CAST(COALESCE(SUM(sends), 0) AS BIGINT) FROM commands",
            &[],
        )?,
        notifications: super::notifications::counts(db)?,
        retention: retention::totals(db)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fleet::fixtures::{cpe, state};
    use crate::store::Store;

    /// The counts `/metrics` reads itself, on both backends: CPEs by status and by applied
    /// version, abuse reports matched or not, commands with the expired ones apart, sends.
    #[test]
    fn the_own_counts_read_the_same_on_both_backends() {
        for (url, _dir) in crate::store::db::tests::backends() {
            let store = Store::open_url(&url).unwrap();
            let db = &**store.db();
            for id in ["a", "b", "c"] {
                cpe(db, id, None, None);
            }
            state(db, "a", "online", None, Some(4), None, 1);
            state(db, "b", "online", None, Some(4), None, 1);
            db.execute(
                "INSERT INTO rejections (reason, count) VALUES ('replay', 7)",
                &[],
            )
            .unwrap();
            for (mac, confidence) in [(Some("02:00:00:00:00:01"), "exact"), (None, "unmatched")] {
                db.execute(
                    "INSERT INTO abuse_reports (received_ms, source, public_ip, at_ms,
                        confidence, mac, result_json)
                     VALUES (1, 'json', '192.0.2.1', 1, ?1, ?2, '{}')",
                    crate::db_params![confidence, mac],
                )
                .unwrap();
            }
            for (id, expires, sends) in [(1u64, 50u64, 2u64), (2, 500, 1)] {
                db.execute(
                    "INSERT INTO commands (cpe_id, command_id, action, mac, secs, issued_ms,
                        expires_ms, wire, status, sends)
                     VALUES ('a', ?1, 'block', '02:00:00:00:00:01', 60, 1, ?2, ?3, 'sent', ?4)",
                    crate::db_params![id, expires, &[0u8][..], sends],
                )
                .unwrap();
            }
            let s = snapshot(db, 100).unwrap();
            assert_eq!(s.rejections, [("replay".to_string(), 7)], "{url}");
            assert_eq!(count(&s.cpes, "online"), 2, "{url}");
            assert_eq!(count(&s.cpes, "unknown"), 1, "{url}");
            let mut rollout = s.rollout.clone();
            rollout.sort();
            assert_eq!(rollout, [(None, 1), (Some(4), 2)], "{url}");
            let mut abuse = s.abuse.clone();
            abuse.sort();
            assert_eq!(abuse, [(false, 1), (true, 1)], "{url}");
            assert_eq!(count(&s.commands, "expired"), 1, "{url}");
            assert_eq!(count(&s.commands, "sent"), 1, "{url}");
            assert_eq!(s.command_sends, 3, "{url}");
            assert_eq!(s.devices, [0; 3], "{url}");
        }
    }
}
