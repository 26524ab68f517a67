//! What policy decisions read and write besides the signed versions themselves
//! ([`super::arbiter`] numbers and records those): the routers a policy can target, the
//! devices the NOC allowed on a router, the per-CPE overrides the controller derived, and
//! how a router stands with a version (its acks and its reported state).
//! [`crate::policy`] and [`crate::rollout`] keep the rules and call these.

use smtpguard_protocol::{MacAddr, PolicyScope};

use super::db::{DbError, Sql};
use super::{from_i64, scope_name};
use crate::db_params;

/// Whether `cpe_id` was ever enrolled (revoked or not).
///
/// # Errors
/// [`DbError`].
pub fn cpe_known(db: &impl Sql, cpe_id: &str) -> Result<bool, DbError> {
    let n: i64 = db.query_one(
        "SELECT COUNT(*) FROM cpes WHERE cpe_id = ?1",
        db_params![cpe_id],
    )?;
    Ok(n != 0)
}

/// Whether `cpe_id` is enrolled and not revoked.
///
/// # Errors
/// [`DbError`].
pub fn cpe_enrolled(db: &impl Sql, cpe_id: &str) -> Result<bool, DbError> {
    let n: i64 = db.query_one(
        "SELECT COUNT(*) FROM cpes WHERE cpe_id = ?1 AND revoked_at_ms IS NULL",
        db_params![cpe_id],
    )?;
    Ok(n != 0)
}

/// The routers not revoked, by id.
///
/// # Errors
/// [`DbError`].
pub fn enrolled_cpes(db: &impl Sql) -> Result<Vec<String>, DbError> {
    db.query(
        "SELECT cpe_id FROM cpes WHERE revoked_at_ms IS NULL ORDER BY cpe_id",
        &[],
    )?
    .iter()
    .map(|r| r.get::<String>(0))
    .collect()
}

/// The devices the NOC allowed on `cpe_id` (never throttled or blocked there).
///
/// # Errors
/// [`DbError`].
pub fn allowed_devices(db: &impl Sql, cpe_id: &str) -> Result<Vec<MacAddr>, DbError> {
    let rows = db.query(
        "SELECT mac FROM allowed_devices WHERE cpe_id = ?1 ORDER BY mac",
        db_params![cpe_id],
    )?;
    let mut macs = Vec::with_capacity(rows.len());
    for row in rows {
        // Written only by `allow_device` from a parsed MAC; anything else is skipped.
        if let Ok(mac) = row.get::<String>(0)?.parse() {
            macs.push(mac);
        }
    }
    Ok(macs)
}

/// Allows `mac` on `cpe_id` (again: the note, actor and time are replaced).
///
/// # Errors
/// [`DbError`].
pub fn allow_device(
    db: &impl Sql,
    cpe_id: &str,
    mac: MacAddr,
    note: &str,
    actor: &str,
    now_ms: u64,
) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO allowed_devices (cpe_id, mac, note, actor, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (cpe_id, mac) DO UPDATE SET note = excluded.note,
            actor = excluded.actor, created_ms = excluded.created_ms",
        db_params![cpe_id, &mac.to_string(), note, actor, now_ms],
    )?;
    Ok(())
}

/// The version of the newest per-CPE policy of `cpe_id`, and of the newest one the
/// controller derived itself.
///
/// # Errors
/// [`DbError`].
pub fn override_versions(
    db: &impl Sql,
    cpe_id: &str,
) -> Result<(Option<i64>, Option<i64>), DbError> {
    let latest: Option<i64> = db.query_one(
        "SELECT MAX(version) FROM policies WHERE scope = 'cpe' AND cpe_id = ?1",
        db_params![cpe_id],
    )?;
    let derived = match db.query_opt(
        "SELECT version FROM derived_overrides WHERE cpe_id = ?1",
        db_params![cpe_id],
    )? {
        Some(row) => Some(row.get::<i64>(0)?),
        None => None,
    };
    Ok((latest, derived))
}

/// Records `version` as the newest per-CPE policy the controller derived for `cpe_id`.
///
/// # Errors
/// [`DbError`].
pub fn record_derived(db: &impl Sql, cpe_id: &str, version: u64) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO derived_overrides (cpe_id, version) VALUES (?1, ?2)
         ON CONFLICT (cpe_id) DO UPDATE SET version = excluded.version",
        db_params![cpe_id, version],
    )?;
    Ok(())
}

/// Every router not revoked that has a derived override, by id.
///
/// # Errors
/// [`DbError`].
pub fn derived_cpes(db: &impl Sql) -> Result<Vec<String>, DbError> {
    db.query(
        "SELECT d.cpe_id FROM derived_overrides d JOIN cpes c ON c.cpe_id = d.cpe_id
         WHERE c.revoked_at_ms IS NULL ORDER BY d.cpe_id",
        &[],
    )?
    .iter()
    .map(|r| r.get::<String>(0))
    .collect()
}

/// Why `cpe_id` refused `version` of `scope`, if it did (empty when it gave no reason).
///
/// # Errors
/// [`DbError`].
pub fn refusal(
    db: &impl Sql,
    cpe_id: &str,
    scope: PolicyScope,
    version: u64,
) -> Result<Option<String>, DbError> {
    db.query_opt(
        "SELECT COALESCE(reason, '') FROM policy_acks
         WHERE cpe_id = ?1 AND scope = ?2 AND version = ?3 AND outcome = 'refused'",
        db_params![cpe_id, scope_name(scope), version],
    )?
    .map(|row| row.get(0))
    .transpose()
}

/// The highest version of `scope` that `cpe_id` applied, by its acks or its reported state
/// (0 when neither says).
///
/// # Errors
/// [`DbError`].
pub fn applied_version(db: &impl Sql, cpe_id: &str, scope: PolicyScope) -> Result<u64, DbError> {
    let acked: Option<i64> = db.query_one(
        "SELECT MAX(version) FROM policy_acks
         WHERE cpe_id = ?1 AND scope = ?2 AND outcome = 'applied'",
        db_params![cpe_id, scope_name(scope)],
    )?;
    let column = match scope {
        PolicyScope::Fleet => "fleet_policy_version",
        PolicyScope::Cpe => "cpe_policy_version",
    };
    let reported = match db.query_opt(
        &format!("SELECT {column} FROM cpe_state WHERE cpe_id = ?1"),
        db_params![cpe_id],
    )? {
        Some(row) => row.get::<Option<i64>>(0)?,
        None => None,
    };
    Ok(from_i64(acked.unwrap_or(0).max(reported.unwrap_or(0))))
}

/// Every stored policy version, ascending.
#[cfg(test)]
pub(crate) fn versions(db: &impl Sql) -> Vec<u64> {
    db.query("SELECT version FROM policies ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<u64>(0).unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::tests::backends;
    use crate::store::Store;

    /// A stored MAC that no longer parses (a hand-edited row) is skipped, not an error.
    #[test]
    fn allowed_devices_skip_rows_that_are_not_macs() {
        for (url, _guard) in backends() {
            let store = Store::open_url(&url).unwrap();
            let db = &**store.db();
            let mac: MacAddr = "02:00:00:00:00:aa".parse().unwrap();
            allow_device(db, "cpe-1", mac, "printer", "alice", 1).unwrap();
            db.execute(
                "INSERT INTO allowed_devices (cpe_id, mac, note, actor, created_ms)
                 VALUES ('cpe-1', 'junk', 'x', 'y', 1)",
                &[],
            )
            .unwrap();
            assert_eq!(allowed_devices(db, "cpe-1").unwrap(), [mac], "{url}");
            allow_device(db, "cpe-1", mac, "the printer", "bob", 2).unwrap();
            assert_eq!(allowed_devices(db, "cpe-1").unwrap(), [mac], "{url}");
        }
    }
}
