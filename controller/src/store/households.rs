//! Subscriber accounts as stored: households, the routers they own, the hashes of their
//! login tokens and their release requests. [`crate::households`] keeps the rules (who may
//! ask what, validation, token hashing) and calls these.

use super::db::{DbError, Row, Sql};
use super::to_i64;
use crate::db_params;
use crate::households::{CommandDelivery, Contact, Household, ReleaseRequest};

/// Records a household; returns its id.
///
/// # Errors
/// [`DbError`].
pub fn insert(db: &impl Sql, name: &str, now_ms: u64) -> Result<i64, DbError> {
    db.query_one(
        "INSERT INTO households (name, created_ms) VALUES (?1, ?2) RETURNING id",
        db_params![name, to_i64(now_ms)],
    )
}

/// Gives `cpe_id` to a household.
///
/// # Errors
/// [`DbError`], e.g. when the CPE already belongs to a household.
pub fn add_cpe(db: &impl Sql, household_id: i64, cpe_id: &str) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO household_cpes (cpe_id, household_id) VALUES (?1, ?2)",
        db_params![cpe_id, household_id],
    )?;
    Ok(())
}

/// Records the hash of a login token (or letter code) of a household.
///
/// # Errors
/// [`DbError`].
pub fn add_token_hash(
    db: &impl Sql,
    token_hash: &str,
    household_id: i64,
    now_ms: u64,
) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO subscriber_tokens (token_hash, household_id, created_ms) VALUES (?1, ?2, ?3)",
        db_params![token_hash, household_id, to_i64(now_ms)],
    )?;
    Ok(())
}

/// The household a token hash belongs to.
///
/// # Errors
/// [`DbError`].
pub fn household_of_token(db: &impl Sql, token_hash: &str) -> Result<Option<i64>, DbError> {
    db.query_opt(
        "SELECT household_id FROM subscriber_tokens WHERE token_hash = ?1",
        db_params![token_hash],
    )?
    .map(|r| r.get(0))
    .transpose()
}

/// Sets a household's e-mail address and whether it wants e-mail. Returns whether the
/// household exists.
///
/// # Errors
/// [`DbError`].
pub fn set_contact(
    db: &impl Sql,
    household_id: i64,
    email: Option<&str>,
    notify_email: bool,
) -> Result<bool, DbError> {
    let n = db.execute(
        "UPDATE households SET email = ?2, notify_email = ?3 WHERE id = ?1",
        db_params![household_id, email, notify_email],
    )?;
    Ok(n > 0)
}

/// A household's contact.
///
/// # Errors
/// [`DbError`].
pub fn contact(db: &impl Sql, household_id: i64) -> Result<Option<Contact>, DbError> {
    db.query_opt(
        "SELECT id, name, email, notify_email FROM households WHERE id = ?1",
        db_params![household_id],
    )?
    .map(|r| contact_of(&r))
    .transpose()
}

fn contact_of(r: &Row) -> Result<Contact, DbError> {
    Ok(Contact {
        household_id: r.get(0)?,
        name: r.get(1)?,
        email: r.get(2)?,
        notify_email: r.get(3)?,
    })
}

/// The contact of the household that owns `cpe_id`, if any does.
///
/// # Errors
/// [`DbError`].
pub fn contact_for_cpe(db: &impl Sql, cpe_id: &str) -> Result<Option<Contact>, DbError> {
    db.query_opt(
        "SELECT h.id, h.name, h.email, h.notify_email FROM household_cpes hc
         JOIN households h ON h.id = hc.household_id WHERE hc.cpe_id = ?1",
        db_params![cpe_id],
    )?
    .map(|r| contact_of(&r))
    .transpose()
}

/// A household's time zone: `None` for an unknown household, `Some(None)` when it chose
/// none.
///
/// # Errors
/// [`DbError`].
pub fn time_zone(db: &impl Sql, household_id: i64) -> Result<Option<Option<String>>, DbError> {
    db.query_opt(
        "SELECT time_zone FROM households WHERE id = ?1",
        db_params![household_id],
    )?
    .map(|r| r.get(0))
    .transpose()
}

/// Sets a household's time zone. Returns whether the household exists.
///
/// # Errors
/// [`DbError`].
pub fn set_time_zone(
    db: &impl Sql,
    household_id: i64,
    zone: Option<&str>,
) -> Result<bool, DbError> {
    let n = db.execute(
        "UPDATE households SET time_zone = ?2 WHERE id = ?1",
        db_params![household_id, zone],
    )?;
    Ok(n > 0)
}

/// One household with its CPEs.
///
/// # Errors
/// [`DbError`].
pub fn household(db: &impl Sql, id: i64) -> Result<Option<Household>, DbError> {
    let name: String =
        match db.query_opt("SELECT name FROM households WHERE id = ?1", db_params![id])? {
            Some(r) => r.get(0)?,
            None => return Ok(None),
        };
    let cpes = db
        .query(
            "SELECT cpe_id FROM household_cpes WHERE household_id = ?1 ORDER BY cpe_id",
            db_params![id],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect::<Result<_, _>>()?;
    Ok(Some(Household { id, name, cpes }))
}

/// Every household's id, ascending.
///
/// # Errors
/// [`DbError`].
pub fn ids(db: &impl Sql) -> Result<Vec<i64>, DbError> {
    db.query("SELECT id FROM households ORDER BY id", db_params![])?
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The household owning a CPE: its id and name.
///
/// # Errors
/// [`DbError`].
pub fn owner_of(db: &impl Sql, cpe_id: &str) -> Result<Option<(i64, String)>, DbError> {
    db.query_opt(
        "SELECT h.id, h.name FROM household_cpes c JOIN households h ON h.id = c.household_id
         WHERE c.cpe_id = ?1",
        db_params![cpe_id],
    )?
    .map(|r| Ok((r.get(0)?, r.get(1)?)))
    .transpose()
}

/// The pending release request for a device, if there is one.
///
/// # Errors
/// [`DbError`].
pub fn pending_release(db: &impl Sql, cpe_id: &str, mac: &str) -> Result<Option<i64>, DbError> {
    db.query_opt(
        "SELECT id FROM release_requests WHERE cpe_id = ?1 AND mac = ?2 AND status = 'pending'",
        db_params![cpe_id, mac],
    )?
    .map(|r| r.get(0))
    .transpose()
}

/// Records a pending release request; returns its id.
///
/// # Errors
/// [`DbError`].
pub fn insert_release(
    db: &impl Sql,
    household_id: i64,
    cpe_id: &str,
    mac: &str,
    note: &str,
    now_ms: u64,
) -> Result<i64, DbError> {
    db.query_one(
        "INSERT INTO release_requests (household_id, cpe_id, mac, requested_ms, note, status)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending') RETURNING id",
        db_params![household_id, cpe_id, mac, to_i64(now_ms), note],
    )
}

/// Release requests, newest first (at most 500): one household's, or all; each with what
/// became of the newest release command linked to it.
///
/// # Errors
/// [`DbError`].
pub fn release_requests(
    db: &impl Sql,
    household_id: Option<i64>,
) -> Result<Vec<ReleaseRequest>, DbError> {
    let rows = db.query(
        "SELECT r.id, r.household_id, r.cpe_id, r.mac, r.requested_ms, r.note, r.status,
            r.decided_ms, c.status, c.issued_ms, c.ack_ms
         FROM release_requests r
         LEFT JOIN commands c ON (c.cpe_id, c.command_id) = (
             SELECT cpe_id, command_id FROM commands WHERE release_request_id = r.id
             ORDER BY issued_ms DESC, command_id DESC LIMIT 1)
         WHERE CAST(?1 AS BIGINT) IS NULL OR r.household_id = ?1
         ORDER BY r.id DESC LIMIT 500",
        db_params![household_id],
    )?;
    rows.iter()
        .map(|r| {
            Ok(ReleaseRequest {
                id: r.get(0)?,
                household_id: r.get(1)?,
                cpe_id: r.get(2)?,
                mac: r.get(3)?,
                requested_ms: r.get(4)?,
                note: r.get(5)?,
                status: r.get(6)?,
                decided_ms: r.get(7)?,
                command: delivery(
                    r.get::<Option<String>>(8)?.as_deref(),
                    r.get(9)?,
                    r.get(10)?,
                ),
            })
        })
        .collect()
}

/// A command's row as a delivery: sent and unanswered, or applied (with the answer's time).
fn delivery(
    status: Option<&str>,
    issued_ms: Option<u64>,
    ack_ms: Option<u64>,
) -> Option<CommandDelivery> {
    match status? {
        "sent" => Some(CommandDelivery::Sent { at_ms: issued_ms? }),
        "applied" => Some(CommandDelivery::Acknowledged { at_ms: ack_ms? }),
        _ => None,
    }
}

/// Approves or denies a pending request. Returns whether there was one with that id.
///
/// # Errors
/// [`DbError`].
pub fn decide_release(db: &impl Sql, id: i64, approve: bool, now_ms: u64) -> Result<bool, DbError> {
    let n = db.execute(
        "UPDATE release_requests SET status = ?2, decided_ms = ?3 WHERE id = ?1 AND status = 'pending'",
        db_params![id, if approve { "approved" } else { "denied" }, to_i64(now_ms)],
    )?;
    Ok(n > 0)
}
