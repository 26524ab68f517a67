//! The notification outbox: one row per event to tell the ISP's systems and the
//! subscriber about, written in the same transaction as the message that caused it, so a
//! crash can never lose one; [`crate::notify`] delivers them.

use super::db::Sql;
use super::StoreError;
use crate::db_params;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A device turned infected.
    Infected,
    /// A release was applied by the router.
    Released,
}

impl Event {
    /// The name stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Infected => "infected",
            Event::Released => "released",
        }
    }
}

/// Where a channel of one notification stands.
pub mod state {
    /// Not delivered yet.
    pub const PENDING: &str = "pending";
    /// Delivered (the webhook answered 2xx, the relay accepted the mail).
    pub const SENT: &str = "sent";
    /// Given up after the configured time.
    pub const FAILED: &str = "failed";
    /// Not wanted: the channel is not configured, or the household gave no address or
    /// opted out.
    pub const OFF: &str = "off";
}

/// One notification to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Row id: the delivery id the webhook receives.
    pub id: i64,
    /// `infected` or `released`.
    pub event: String,
    /// The router.
    pub cpe_id: String,
    /// The device.
    pub mac: String,
    /// Its name as people know it.
    pub device: String,
    /// What happened, in words.
    pub detail: String,
    /// When (Unix ms).
    pub at_ms: u64,
    /// Webhook channel state.
    pub webhook: String,
    /// E-mail channel state.
    pub email: String,
    /// Delivery rounds so far.
    pub attempts: u32,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Queues a notification inside the ingest's transaction; a second one with the same
/// `dedup` key (the same event seen twice, or by two replicas) is ignored.
///
/// # Errors
/// [`StoreError::Db`].
#[allow(clippy::too_many_arguments)]
pub fn enqueue(
    tx: &impl Sql,
    event: Event,
    cpe_id: &str,
    mac: &str,
    device: &str,
    detail: &str,
    at_ms: u64,
    dedup: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO notifications
            (event, cpe_id, mac, device, detail, at_ms, dedup, next_attempt_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)
         ON CONFLICT (dedup) DO NOTHING",
        db_params![
            event.as_str(),
            cpe_id,
            mac,
            device,
            detail,
            to_i64(at_ms),
            dedup
        ],
    )?;
    Ok(())
}

/// Notifications with a pending channel whose next attempt is due at `now_ms`, oldest
/// first, at most `limit`.
///
/// # Errors
/// [`StoreError::Db`].
pub fn due(conn: &impl Sql, now_ms: u64, limit: usize) -> Result<Vec<Pending>, StoreError> {
    conn.query(
        "SELECT id, event, cpe_id, mac, device, detail, at_ms, webhook_state, email_state, attempts
         FROM notifications
         WHERE (webhook_state = 'pending' OR email_state = 'pending') AND next_attempt_ms <= ?1
         ORDER BY id LIMIT ?2",
        db_params![to_i64(now_ms), i64::try_from(limit).unwrap_or(i64::MAX)],
    )?
    .iter()
    .map(|r| {
        Ok(Pending {
            id: r.get(0)?,
            event: r.get(1)?,
            cpe_id: r.get(2)?,
            mac: r.get(3)?,
            device: r.get(4)?,
            detail: r.get(5)?,
            at_ms: u64::try_from(r.get::<i64>(6)?).unwrap_or(0),
            webhook: r.get(7)?,
            email: r.get(8)?,
            attempts: u32::try_from(r.get::<i64>(9)?).unwrap_or(u32::MAX),
        })
    })
    .collect()
}

/// Records one delivery round of notification `id`.
///
/// # Errors
/// [`StoreError::Db`].
pub fn record_round(
    conn: &impl Sql,
    p: &Pending,
    next_attempt_ms: u64,
    last_error: Option<&str>,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE notifications SET webhook_state = ?2, email_state = ?3, attempts = ?4,
             next_attempt_ms = ?5, last_error = COALESCE(CAST(?6 AS TEXT), last_error)
         WHERE id = ?1",
        db_params![
            p.id,
            &p.webhook,
            &p.email,
            p.attempts,
            to_i64(next_attempt_ms),
            last_error
        ],
    )?;
    Ok(())
}

/// How many notifications are in each state, per channel: `(channel, state, count)`.
///
/// # Errors
/// [`StoreError::Db`].
pub fn counts(conn: &impl Sql) -> Result<Vec<(String, String, i64)>, StoreError> {
    conn.query(
        "SELECT CAST('webhook' AS TEXT), webhook_state, COUNT(*) FROM notifications
            GROUP BY webhook_state
         UNION ALL
         SELECT CAST('email' AS TEXT), email_state, COUNT(*) FROM notifications
            GROUP BY email_state",
        &[],
    )?
    .iter()
    .map(|r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
    .collect()
}

/// Forgets finished notifications older than `before_ms` (the outbox stays bounded).
///
/// # Errors
/// [`StoreError::Db`].
pub fn prune(conn: &impl Sql, before_ms: u64) -> Result<usize, StoreError> {
    let n = conn.execute(
        "DELETE FROM notifications WHERE at_ms < ?1
             AND webhook_state <> 'pending' AND email_state <> 'pending'",
        db_params![to_i64(before_ms)],
    )?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::tests::backends;
    use crate::store::Store;

    #[test]
    fn the_outbox_keeps_one_row_per_event_until_every_channel_is_done() {
        for (url, _guard) in backends() {
            let store = Store::open_url(&url).unwrap();
            store
                .db()
                .transaction(|tx| {
                    for _ in 0..2 {
                        enqueue(
                            tx,
                            Event::Infected,
                            "cpe-a",
                            "02:00:00:00:00:01",
                            "pc",
                            "50 servers",
                            1_000,
                            "infected/cpe-a/1",
                        )?;
                    }
                    enqueue(
                        tx,
                        Event::Released,
                        "cpe-a",
                        "02:00:00:00:00:01",
                        "pc",
                        "",
                        2_000,
                        "released/cpe-a/7",
                    )
                })
                .unwrap();
            let db = store.db();
            let mut due = due(db, 0, 10).unwrap();
            assert_eq!(due.len(), 2, "{url}");
            let first = &mut due[0];
            first.webhook = state::SENT.into();
            first.attempts = 1;
            record_round(db, first, 5_000, Some("relay down")).unwrap();
            // Still pending by e-mail: due again at 5 s, not before.
            assert_eq!(super::due(db, 4_999, 10).unwrap().len(), 1, "{url}");
            let again = super::due(db, 5_000, 10).unwrap();
            assert_eq!(again.len(), 2);
            assert_eq!((again[0].webhook.as_str(), again[0].attempts), ("sent", 1));
            let mut done = again[0].clone();
            done.email = state::OFF.into();
            record_round(db, &done, 6_000, None).unwrap();
            let error: Option<String> = db
                .query_one(
                    "SELECT last_error FROM notifications WHERE id = ?1",
                    db_params![done.id],
                )
                .unwrap();
            assert_eq!(error.as_deref(), Some("relay down"), "{url}: kept");
            assert_eq!(prune(db, 1_500).unwrap(), 1);
            let c = counts(db).unwrap();
            assert!(
                c.contains(&("webhook".into(), "pending".into(), 1)),
                "{url}: {c:?}"
            );
        }
    }
}
