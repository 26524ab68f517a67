//! Subscriber-declared senders (table `sender_declarations`): a household's "this device is
//! my own mail server / mail program", waiting for the NOC or decided once
//! ([`declare`], [`decide`], [`declarations`]); and the devices allowed on their routers for
//! good (table `allowed_devices`, written by `crate::policy::allow_device`) as the NOC lists
//! them ([`allowed_devices`]).

use smtpguard_protocol::MacAddr;

use super::db::Sql;
use super::StoreError;
use crate::db_params;

/// Allowed devices [`allowed_devices`] lists at most (the newest).
pub const ALLOWED_LISTED: u32 = 500;

/// One declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declaration {
    /// Its id.
    pub id: i64,
    /// The declaring household's name.
    pub household: String,
    /// The device's router.
    pub cpe_id: String,
    /// The device.
    pub mac: String,
    /// `server` or `program`.
    pub kind: String,
    /// The household's reason.
    pub reason: String,
    /// `pending`, `approved` or `declined`.
    pub status: String,
    /// When it was declared (Unix ms).
    pub requested_ms: u64,
    /// Who decided it.
    pub decided_by: Option<String>,
}

/// Declarations of one household (or of all), waiting ones first, then the newest first,
/// at most `limit`.
///
/// # Errors
/// [`StoreError::Db`].
pub fn declarations(
    db: &impl Sql,
    household: Option<i64>,
    limit: u32,
) -> Result<Vec<Declaration>, StoreError> {
    let rows = db.query(
        "SELECT s.id, h.name, s.cpe_id, s.mac, s.kind, s.reason, s.status, s.requested_ms,
                s.decided_by
         FROM sender_declarations s JOIN households h ON h.id = s.household_id
         WHERE CAST(?1 AS BIGINT) IS NULL OR s.household_id = ?1
         ORDER BY CASE WHEN s.status = 'pending' THEN 0 ELSE 1 END, s.id DESC LIMIT ?2",
        db_params![household, limit],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            Ok(Declaration {
                id: r.get(0)?,
                household: r.get(1)?,
                cpe_id: r.get(2)?,
                mac: r.get(3)?,
                kind: r.get(4)?,
                reason: r.get(5)?,
                status: r.get(6)?,
                requested_ms: r.get(7)?,
                decided_by: r.get(8)?,
            })
        })
        .collect::<Result<_, super::db::DbError>>()?)
}

/// Records a declaration of `mac` on `cpe_id` for `household_id` (which the caller checked
/// owns the device), or returns the one still waiting for it; its id.
///
/// # Errors
/// [`StoreError::Db`].
pub fn declare(
    db: &impl Sql,
    household_id: i64,
    cpe_id: &str,
    mac: &MacAddr,
    kind: &str,
    reason: &str,
    now_ms: u64,
) -> Result<i64, StoreError> {
    let mac = mac.to_string();
    let pending = db.query_opt(
        "SELECT id FROM sender_declarations
         WHERE cpe_id = ?1 AND mac = ?2 AND status = 'pending'",
        db_params![cpe_id, &mac],
    )?;
    if let Some(r) = pending {
        return Ok(r.get(0)?);
    }
    Ok(db.query_one(
        "INSERT INTO sender_declarations
            (household_id, cpe_id, mac, kind, reason, status, requested_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6) RETURNING id",
        db_params![household_id, cpe_id, &mac, kind, reason, now_ms],
    )?)
}

/// What a decided declaration was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The device's router.
    pub cpe_id: String,
    /// The device, as stored.
    pub mac: String,
    /// `server` or `program`.
    pub kind: String,
    /// The household's reason.
    pub reason: String,
}

/// Decides pending declaration `id` (`status`: `approved` or `declined`) for `who`; what
/// it was about, or `None` when no declaration `id` is pending (also when another operator
/// decided it first).
///
/// # Errors
/// [`StoreError::Db`].
pub fn decide(
    db: &impl Sql,
    id: i64,
    status: &str,
    who: &str,
    now_ms: u64,
) -> Result<Option<Decided>, StoreError> {
    let Some(row) = db.query_opt(
        "UPDATE sender_declarations SET status = ?2, decided_by = ?3, decided_ms = ?4
         WHERE id = ?1 AND status = 'pending'
         RETURNING cpe_id, mac, kind, reason",
        db_params![id, status, who, now_ms],
    )?
    else {
        return Ok(None);
    };
    Ok(Some(Decided {
        cpe_id: row.get(0)?,
        mac: row.get(1)?,
        kind: row.get(2)?,
        reason: row.get(3)?,
    }))
}

/// A device allowed on its router for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Its router.
    pub cpe_id: String,
    /// The device.
    pub mac: String,
    /// Why.
    pub note: String,
    /// Who allowed it.
    pub actor: String,
    /// When (Unix ms).
    pub created_ms: u64,
}

/// The devices allowed on their routers, newest first, at most [`ALLOWED_LISTED`].
///
/// # Errors
/// [`StoreError::Db`].
pub fn allowed_devices(db: &impl Sql) -> Result<Vec<Allowed>, StoreError> {
    Ok(db
        .query(
            "SELECT cpe_id, mac, note, actor, created_ms FROM allowed_devices
             ORDER BY created_ms DESC LIMIT ?1",
            db_params![ALLOWED_LISTED],
        )?
        .iter()
        .map(|r| {
            Ok(Allowed {
                cpe_id: r.get(0)?,
                mac: r.get(1)?,
                note: r.get(2)?,
                actor: r.get(3)?,
                created_ms: r.get(4)?,
            })
        })
        .collect::<Result<_, super::db::DbError>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::households;
    use crate::store::db::tests::backends;
    use crate::store::Store;

    #[test]
    fn declarations_are_per_household_waiting_ones_first_and_decided_once() {
        for (url, _g) in backends() {
            let db = Store::open_url(&url).unwrap().into_db();
            let db = &*db;
            let (a, _) = households::create(db, "A", &["cpe-a"], 0).unwrap();
            let (b, _) = households::create(db, "B", &["cpe-b"], 0).unwrap();
            let mac: MacAddr = "02:00:00:00:00:25".parse().unwrap();
            let first = declare(db, a, "cpe-a", &mac, "server", "Postfix", 10).unwrap();
            // Asking again while it waits is the same declaration.
            assert_eq!(
                declare(db, a, "cpe-a", &mac, "program", "again", 11).unwrap(),
                first
            );
            let other: MacAddr = "02:00:00:00:00:26".parse().unwrap();
            let second = declare(db, b, "cpe-b", &other, "program", "Thunderbird", 12).unwrap();
            assert_ne!(first, second);

            let mine = declarations(db, Some(a), 200).unwrap();
            assert_eq!(mine.len(), 1, "{url}");
            assert_eq!(
                (mine[0].household.as_str(), mine[0].reason.as_str()),
                ("A", "Postfix")
            );
            assert_eq!(mine[0].requested_ms, 10);

            let decided = decide(db, first, "approved", "olga", 20).unwrap();
            assert_eq!(
                decided,
                Some(Decided {
                    cpe_id: "cpe-a".to_string(),
                    mac: mac.to_string(),
                    kind: "server".to_string(),
                    reason: "Postfix".to_string()
                })
            );
            // A second decision, or one on a declaration that does not exist, finds nothing.
            assert_eq!(decide(db, first, "declined", "mallory", 21).unwrap(), None);
            assert_eq!(
                decide(db, second + 100, "approved", "olga", 21).unwrap(),
                None
            );
            let all = declarations(db, None, 200).unwrap();
            let order: Vec<(i64, &str)> = all.iter().map(|d| (d.id, d.status.as_str())).collect();
            assert_eq!(order, [(second, "pending"), (first, "approved")], "{url}");
            assert_eq!(all[1].decided_by.as_deref(), Some("olga"));
            assert_eq!(declarations(db, None, 1).unwrap().len(), 1, "{url}");
            // Once decided, a new declaration of the device can be made.
            assert_ne!(
                declare(db, a, "cpe-a", &mac, "server", "new box", 30).unwrap(),
                first
            );

            assert!(allowed_devices(db).unwrap().is_empty());
            db.execute(
                "INSERT INTO allowed_devices (cpe_id, mac, note, actor, created_ms)
                 VALUES ('cpe-a', ?1, 'declaration', 'olga', 40)",
                db_params![&mac.to_string()],
            )
            .unwrap();
            assert_eq!(
                allowed_devices(db).unwrap(),
                [Allowed {
                    cpe_id: "cpe-a".into(),
                    mac: mac.to_string(),
                    note: "declaration".into(),
                    actor: "olga".into(),
                    created_ms: 40
                }]
            );
        }
    }
}
