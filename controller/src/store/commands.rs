//! Commands to one router: what was signed and sent, and what the router answered.
//!
//! A command is stored (`status` `sent`) before it is published, with the signed bytes, so
//! an answer can never arrive for a command the database does not know. The router's
//! answers go to `command_acks` as they come (an audit log: refusals of forged or replayed
//! commands land there too), and the first answer to a command that is still `sent` sets
//! its `status` (`applied` or `refused`), `reason` and `ack_ms`; a later answer (a replay
//! refused after the command was applied) does not undo it. `expired` is never stored: a
//! command still `sent` after its expiry is shown as expired, because the router will refuse
//! it from then on.

use serde::Serialize;
use smtpguard_protocol::{AckOutcome, CommandAck, CommandAction};

use super::db::{Row, Sql};
use super::{from_i64, to_i64, StoreError};
use crate::db_params;

/// A command as issued (signed, not yet stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommand {
    /// The router.
    pub cpe_id: String,
    /// Its id (per router, increasing).
    pub command_id: u64,
    /// What it asks.
    pub action: CommandAction,
    /// When it was issued (Unix ms).
    pub issued_ms: u64,
    /// When the router stops accepting it (Unix ms).
    pub expires_ms: u64,
    /// The signed bytes to publish.
    pub wire: Vec<u8>,
    /// The release request it carries out, if any.
    pub release_request_id: Option<i64>,
}

/// A stored command and where it stands, as the API and the pages show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandRow {
    /// The router.
    pub cpe_id: String,
    /// Its id.
    pub command_id: u64,
    /// `release` or `block`.
    pub action: String,
    /// The device.
    pub mac: String,
    /// Grace period (release) or time to live (block), in seconds.
    pub secs: u64,
    /// When it was issued (Unix ms).
    pub issued_ms: u64,
    /// When the router stops accepting it (Unix ms).
    pub expires_ms: u64,
    /// `sent`, `applied`, `refused`, `expired` (sent, not answered, past its expiry) or
    /// `unsent` (the broker could not take it).
    pub status: String,
    /// Why it was refused (or not sent).
    pub reason: Option<String>,
    /// When the answer arrived (Unix ms).
    pub ack_ms: Option<u64>,
    /// The release request it carries out, if any.
    pub release_request_id: Option<i64>,
}

fn secs_of(action: &CommandAction) -> u32 {
    match action {
        CommandAction::Release { grace_secs, .. } => *grace_secs,
        CommandAction::Block { ttl_secs, .. } => *ttl_secs,
    }
}

/// The next command id for `cpe_id`: one above the highest ever issued to it. Call it in
/// the transaction that inserts the command, after locking the router's row (see
/// [`super::Store::issue_command`]).
///
/// # Errors
/// [`StoreError::Db`].
pub fn next_id(tx: &impl Sql, cpe_id: &str) -> Result<u64, StoreError> {
    let max: Option<i64> = tx.query_one(
        "SELECT MAX(command_id) FROM commands WHERE cpe_id = ?1",
        db_params![cpe_id],
    )?;
    Ok(max.map_or(0, from_i64) + 1)
}

/// Stores an issued command as `sent`.
///
/// # Errors
/// [`StoreError::Db`], e.g. for an id already used.
pub fn insert(tx: &impl Sql, c: &NewCommand) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO commands (cpe_id, command_id, action, mac, secs, issued_ms, expires_ms, wire,
            status, release_request_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'sent', ?9)",
        db_params![
            &c.cpe_id,
            to_i64(c.command_id),
            c.action.name(),
            &c.action.mac().to_string(),
            secs_of(&c.action),
            to_i64(c.issued_ms),
            to_i64(c.expires_ms),
            &c.wire,
            c.release_request_id,
        ],
    )?;
    Ok(())
}

/// Marks a command the broker did not take.
///
/// # Errors
/// [`StoreError::Db`].
pub fn mark_unsent(
    conn: &impl Sql,
    cpe_id: &str,
    command_id: u64,
    reason: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE commands SET status = 'unsent', reason = ?3
         WHERE cpe_id = ?1 AND command_id = ?2 AND status = 'sent'",
        db_params![cpe_id, to_i64(command_id), reason],
    )?;
    Ok(())
}

/// Commands to resend at most at once to a router that came back online.
pub const RESEND_MAX: usize = 16;

/// The commands of `cpe_id` still waiting for an answer at `now_ms` (sent or unsent, not
/// expired), oldest first, at most [`RESEND_MAX`]: command id and the signed bytes.
///
/// # Errors
/// [`StoreError::Db`].
pub fn unanswered(
    conn: &impl Sql,
    cpe_id: &str,
    now_ms: u64,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    conn.query(
        "SELECT command_id, wire FROM commands
         WHERE cpe_id = ?1 AND status IN ('sent', 'unsent') AND expires_ms > ?2
         ORDER BY command_id LIMIT ?3",
        db_params![cpe_id, to_i64(now_ms), to_i64(RESEND_MAX as u64)],
    )?
    .iter()
    .map(|r| Ok((from_i64(r.get(0)?), r.get(1)?)))
    .collect()
}

/// Records that a command was published again (its router came back online).
///
/// # Errors
/// [`StoreError::Db`].
pub fn note_resent(conn: &impl Sql, cpe_id: &str, command_id: u64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE commands SET sends = sends + 1,
             status = CASE status WHEN 'unsent' THEN 'sent' ELSE status END,
             reason = CASE status WHEN 'unsent' THEN NULL ELSE reason END
         WHERE cpe_id = ?1 AND command_id = ?2",
        db_params![cpe_id, to_i64(command_id)],
    )?;
    Ok(())
}

/// Records a router's answer (inside the ingest's transaction).
///
/// # Errors
/// [`StoreError::Db`].
pub fn note_ack(
    tx: &impl Sql,
    cpe_id: &str,
    ack: &CommandAck,
    received_ms: u64,
) -> Result<(), StoreError> {
    let (outcome, reason) = match &ack.outcome {
        AckOutcome::Applied => ("applied", None),
        AckOutcome::Refused { reason } => ("refused", Some(reason.as_str())),
    };
    let command_id = to_i64(ack.command_id);
    if outcome == "applied" {
        // The first answer to a release tells the subscriber the restriction is lifted.
        let release = tx.query_opt(
            "SELECT mac, secs FROM commands WHERE cpe_id = ?1 AND command_id = ?2
             AND action = 'release' AND status IN ('sent', 'unsent')",
            db_params![cpe_id, command_id],
        )?;
        if let Some(r) = release {
            let mac: String = r.get(0)?;
            let grace: i64 = r.get(1)?;
            let hours = grace / 3600;
            super::notifications::enqueue(
                tx,
                super::notifications::Event::Released,
                cpe_id,
                &mac,
                &mac,
                &format!("released; left alone for {hours} h"),
                ack.at_ms,
                &format!("released/{cpe_id}/{}", ack.command_id),
            )?;
        }
    }
    tx.execute(
        "INSERT INTO command_acks (cpe_id, command_id, outcome, reason, at_ms, received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        db_params![
            cpe_id,
            command_id,
            outcome,
            reason,
            to_i64(ack.at_ms),
            to_i64(received_ms)
        ],
    )?;
    tx.execute(
        "UPDATE commands SET status = ?3, reason = ?4, ack_ms = ?5
         WHERE cpe_id = ?1 AND command_id = ?2 AND status IN ('sent', 'unsent')",
        db_params![cpe_id, command_id, outcome, reason, to_i64(received_ms)],
    )?;
    Ok(())
}

const COLUMNS: &str = "cpe_id, command_id, action, mac, secs, issued_ms, expires_ms, status, \
                       reason, ack_ms, release_request_id";

fn row(r: &Row, now_ms: u64) -> Result<CommandRow, StoreError> {
    let expires_ms = from_i64(r.get(6)?);
    let mut status: String = r.get(7)?;
    if status == "sent" && now_ms > expires_ms {
        status = "expired".into();
    }
    Ok(CommandRow {
        cpe_id: r.get(0)?,
        command_id: from_i64(r.get(1)?),
        action: r.get(2)?,
        mac: r.get(3)?,
        secs: from_i64(r.get(4)?),
        issued_ms: from_i64(r.get(5)?),
        expires_ms,
        status,
        reason: r.get(8)?,
        ack_ms: r.get::<Option<i64>>(9)?.map(from_i64),
        release_request_id: r.get(10)?,
    })
}

/// A router's commands, newest first, at most `limit`, with their status at `now_ms`.
///
/// # Errors
/// [`StoreError::Db`].
pub fn list(
    conn: &impl Sql,
    cpe_id: &str,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<CommandRow>, StoreError> {
    conn.query(
        &format!(
            "SELECT {COLUMNS} FROM commands WHERE cpe_id = ?1 ORDER BY command_id DESC LIMIT ?2"
        ),
        db_params![cpe_id, i64::try_from(limit).unwrap_or(i64::MAX)],
    )?
    .iter()
    .map(|r| row(r, now_ms))
    .collect()
}

/// The newest command carrying out release request `request_id`, with its status.
///
/// # Errors
/// [`StoreError::Db`].
pub fn for_release_request(
    conn: &impl Sql,
    request_id: i64,
    now_ms: u64,
) -> Result<Option<CommandRow>, StoreError> {
    conn.query_opt(
        &format!(
            "SELECT {COLUMNS} FROM commands WHERE release_request_id = ?1
             ORDER BY issued_ms DESC, command_id DESC LIMIT 1"
        ),
        db_params![request_id],
    )?
    .as_ref()
    .map(|r| row(r, now_ms))
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::tests::backends;
    use crate::store::Store;
    use smtpguard_protocol::MacAddr;

    fn new(cpe: &str, id: u64, expires_ms: u64) -> NewCommand {
        NewCommand {
            cpe_id: cpe.into(),
            command_id: id,
            action: CommandAction::Release {
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                grace_secs: 600,
            },
            issued_ms: 1_000,
            expires_ms,
            wire: vec![1, 2, 3],
            release_request_id: Some(4),
        }
    }

    #[test]
    fn ids_increase_per_router_and_the_first_answer_sets_the_status() {
        for (url, _guard) in backends() {
            let store = Store::open_url(&url).unwrap();
            let db = store.db();
            db.transaction(|tx| {
                assert_eq!(next_id(tx, "cpe-a")?, 1);
                insert(tx, &new("cpe-a", 1, 10_000))?;
                insert(tx, &new("cpe-a", 2, 10_000))
            })
            .unwrap();
            // An id already used is refused (and its transaction rolled back).
            assert!(db
                .transaction(|tx| insert(tx, &new("cpe-a", 2, 10_000)))
                .is_err());
            db.transaction(|tx| {
                assert_eq!(next_id(tx, "cpe-a")?, 3);
                assert_eq!(next_id(tx, "cpe-b")?, 1);
                let applied = CommandAck {
                    command_id: 1,
                    outcome: AckOutcome::Applied,
                    at_ms: 2_000,
                };
                note_ack(tx, "cpe-a", &applied, 2_100)?;
                // A later refusal of the same id (a replay) does not undo it.
                let replayed = CommandAck {
                    command_id: 1,
                    outcome: AckOutcome::Refused {
                        reason: "replayed".into(),
                    },
                    at_ms: 3_000,
                };
                note_ack(tx, "cpe-a", &replayed, 3_100)
            })
            .unwrap();
            let rows = list(db, "cpe-a", 5_000, 10).unwrap();
            assert_eq!(rows.len(), 2, "{url}");
            assert_eq!(rows[0].command_id, 2);
            assert_eq!(rows[0].status, "sent");
            assert_eq!(rows[1].status, "applied");
            assert_eq!(rows[1].ack_ms, Some(2_100));
            assert_eq!(rows[1].reason, None);
            // Past its expiry, an unanswered command shows as expired.
            let rows = list(db, "cpe-a", 10_001, 10).unwrap();
            assert_eq!(rows[0].status, "expired");
            let acks: i64 = db
                .query_one("SELECT COUNT(*) FROM command_acks", &[])
                .unwrap();
            assert_eq!(acks, 2, "{url}");
            // The applied release told the subscriber, once.
            let released: i64 = db
                .query_one(
                    "SELECT COUNT(*) FROM notifications WHERE event = 'released'",
                    &[],
                )
                .unwrap();
            assert_eq!(released, 1, "{url}");
            let r = for_release_request(db, 4, 5_000).unwrap().unwrap();
            assert_eq!(r.command_id, 2);
            assert!(for_release_request(db, 5, 5_000).unwrap().is_none());
            mark_unsent(db, "cpe-a", 2, "broker down").unwrap();
            let rows = list(db, "cpe-a", 5_000, 10).unwrap();
            assert_eq!(rows[0].status, "unsent", "{url}");
        }
    }

    #[test]
    fn unanswered_commands_are_resent_until_answered_or_expired() {
        for (url, _guard) in backends() {
            let store = Store::open_url(&url).unwrap();
            let db = store.db();
            db.transaction(|tx| {
                insert(tx, &new("cpe-a", 1, 10_000))?;
                insert(tx, &new("cpe-a", 2, 10_000))?;
                insert(tx, &new("cpe-a", 3, 4_000))?;
                insert(tx, &new("cpe-b", 1, 10_000))?;
                let applied = CommandAck {
                    command_id: 1,
                    outcome: AckOutcome::Applied,
                    at_ms: 2_000,
                };
                note_ack(tx, "cpe-a", &applied, 2_100)
            })
            .unwrap();
            mark_unsent(db, "cpe-a", 2, "broker down").unwrap();
            // Answered (1) and expired (3) are not sent again; other routers' are not theirs.
            let due = unanswered(db, "cpe-a", 5_000).unwrap();
            assert_eq!(due, vec![(2, vec![1, 2, 3])], "{url}");
            note_resent(db, "cpe-a", 2).unwrap();
            let rows = list(db, "cpe-a", 5_000, 10).unwrap();
            let two = rows.iter().find(|r| r.command_id == 2).unwrap();
            assert_eq!((two.status.as_str(), two.reason.as_deref()), ("sent", None));
            let sends: i64 = db
                .query_one(
                    "SELECT sends FROM commands WHERE cpe_id = 'cpe-a' AND command_id = 2",
                    &[],
                )
                .unwrap();
            assert_eq!(sends, 2, "{url}");
            assert!(unanswered(db, "cpe-a", 10_000).unwrap().is_empty());
        }
    }

    #[test]
    fn two_replicas_issuing_commands_to_one_router_never_share_an_id() {
        for (url, _guard) in backends() {
            let setup = Store::open_url(&url).unwrap();
            setup.upsert_cpe("cpe-a", "ed25519:00", None, 1).unwrap();
            let ids: Vec<u64> = std::thread::scope(|s| {
                let tasks: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(|| {
                            let store = Store::open_url(&url).unwrap();
                            (0..10)
                                .map(|_| {
                                    store
                                        .issue_command("cpe-a", |id| {
                                            Ok::<_, StoreError>(new("cpe-a", id, 10_000))
                                        })
                                        .unwrap()
                                        .command_id
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                tasks.into_iter().flat_map(|t| t.join().unwrap()).collect()
            });
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (1..=20).collect::<Vec<u64>>(), "{url}: {ids:?}");
        }
    }
}
