//! Policy versions as the editors read and annotate them: the published fleet versions with
//! the text each was published from, who published it and why ([`versions`], [`version`],
//! [`remember`]), the newest per-router override a CPE page edits ([`cpe_override`]), and
//! the editor's rollout view ([`rollout`]).
//!
//! Signing and publishing are `crate::policy`'s; this module only reads what was stored and
//! keeps the editor's notes with it.

use smtpguard_protocol::{Policy, PolicyScope};

use super::db::{Param, Sql};
use super::{from_i64, scope_name, to_i64, RolloutRow, StoreError};
use crate::db_params;

/// Refusals the rollout view reads at most (the newest).
pub const REFUSALS_MAX: u32 = 5_000;

/// One published fleet version, as the editor and its history show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    /// Its version.
    pub version: u64,
    /// The policy signed.
    pub policy: Policy,
    /// The text it was published from (`None` for versions signed before texts were kept,
    /// or outside the editor).
    pub text: Option<String>,
    /// When it was signed (Unix ms).
    pub created_ms: u64,
    /// Who published it.
    pub actor: Option<String>,
    /// Their change note.
    pub note: Option<String>,
}

/// A stored policy's JSON, read back.
fn parse_policy(version: i64, json: &str) -> Result<Policy, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        column: "policies.policy_json",
        detail: format!("v{version}: {e}"),
    })
}

/// Fleet versions: `filter` (with `?1` bound to the fleet scope and `?2` to `arg`) after
/// the common columns.
fn read_versions(db: &impl Sql, filter: &str, arg: i64) -> Result<Vec<Version>, StoreError> {
    let rows = db.query(
        &format!(
            "SELECT version, policy_json, source_text, created_ms, actor, note FROM policies
             WHERE scope = ?1 {filter}"
        ),
        &[
            Param::from(scope_name(PolicyScope::Fleet)),
            Param::from(arg),
        ],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let version: i64 = r.get(0)?;
        out.push(Version {
            version: from_i64(version),
            policy: parse_policy(version, &r.get::<String>(1)?)?,
            text: r.get(2)?,
            created_ms: from_i64(r.get(3)?),
            actor: r.get(4)?,
            note: r.get(5)?,
        });
    }
    Ok(out)
}

/// The newest `limit` fleet versions, newest first.
///
/// # Errors
/// [`StoreError::Db`]; [`StoreError::Corrupt`] for a stored policy that no longer parses.
pub fn versions(db: &impl Sql, limit: usize) -> Result<Vec<Version>, StoreError> {
    read_versions(
        db,
        "ORDER BY version DESC LIMIT ?2",
        i64::try_from(limit).unwrap_or(i64::MAX),
    )
}

/// Fleet version `version`, if it exists (a per-CPE version of that number does not count).
///
/// # Errors
/// As [`versions`].
pub fn version(db: &impl Sql, version: u64) -> Result<Option<Version>, StoreError> {
    Ok(read_versions(db, "AND version = ?2", to_i64(version))?
        .into_iter()
        .next())
}

/// The newest fleet policy, or the default when none was ever published.
///
/// # Errors
/// As [`versions`].
pub fn current_fleet_policy(db: &impl Sql) -> Result<Policy, StoreError> {
    Ok(versions(db, 1)?
        .into_iter()
        .next()
        .map_or_else(Policy::default, |v| v.policy))
}

/// Keeps the editor's text, note and author with fleet version `version`.
///
/// # Errors
/// [`StoreError::Db`].
pub fn remember(
    db: &impl Sql,
    version: u64,
    text: Option<&str>,
    note: &str,
    actor: &str,
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE policies SET source_text = ?2, note = ?3, actor = ?4
         WHERE scope = 'fleet' AND version = ?1",
        db_params![version, text, note, actor],
    )?;
    Ok(())
}

/// The newest per-router override of `cpe_id`: its version and policy.
///
/// # Errors
/// As [`versions`].
pub fn cpe_override(db: &impl Sql, cpe_id: &str) -> Result<Option<(u64, Policy)>, StoreError> {
    let Some(r) = db.query_opt(
        "SELECT version, policy_json FROM policies WHERE scope = 'cpe' AND cpe_id = ?1
         ORDER BY version DESC LIMIT 1",
        db_params![cpe_id],
    )?
    else {
        return Ok(None);
    };
    let version: i64 = r.get(0)?;
    Ok(Some((
        from_i64(version),
        parse_policy(version, &r.get::<String>(1)?)?,
    )))
}

/// The editor's rollout view: every enrolled CPE with the versions it applied (the higher
/// of what it reported and what it acknowledged; none when neither is above 0) and its
/// refusals (newest first, from the newest [`REFUSALS_MAX`]), by CPE id; and the newest
/// fleet version.
///
/// # Errors
/// [`StoreError::Db`].
pub fn rollout(db: &impl Sql) -> Result<(Vec<RolloutRow>, Option<u64>), StoreError> {
    let latest: Option<i64> = db.query_one(
        "SELECT MAX(version) FROM policies WHERE scope = 'fleet'",
        &[],
    )?;
    let rows = db.query(
        "SELECT c.cpe_id, s.status, s.fleet_policy_version, s.cpe_policy_version,
            (SELECT MAX(version) FROM policy_acks a
              WHERE a.cpe_id = c.cpe_id AND a.scope = 'fleet' AND a.outcome = 'applied'),
            (SELECT MAX(version) FROM policy_acks a
              WHERE a.cpe_id = c.cpe_id AND a.scope = 'cpe' AND a.outcome = 'applied')
         FROM cpes c LEFT JOIN cpe_state s ON s.cpe_id = c.cpe_id ORDER BY c.cpe_id",
        &[],
    )?;
    let version = |a: Option<i64>, b: Option<i64>| {
        u64::try_from(a.unwrap_or(0).max(b.unwrap_or(0)))
            .ok()
            .filter(|v| *v > 0)
    };
    let mut out: Vec<RolloutRow> = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(RolloutRow {
            cpe_id: r.get(0)?,
            status: r.get(1)?,
            fleet_policy_version: version(r.get(2)?, r.get(4)?),
            cpe_policy_version: version(r.get(3)?, r.get(5)?),
            refusals: Vec::new(),
        });
    }
    let refusals = db.query(
        "SELECT cpe_id, scope, version, COALESCE(reason, '') FROM policy_acks
         WHERE outcome = 'refused' ORDER BY version DESC LIMIT ?1",
        db_params![REFUSALS_MAX],
    )?;
    for refusal in refusals {
        let cpe: String = refusal.get(0)?;
        if let Some(row) = out.iter_mut().find(|r| r.cpe_id == cpe) {
            row.refusals.push((
                refusal.get(1)?,
                refusal.get::<u64>(2).unwrap_or(0),
                refusal.get(3)?,
            ));
        }
    }
    Ok((out, latest.and_then(|v| u64::try_from(v).ok())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::tests::backends;
    use crate::store::fleet::fixtures::{cpe, state};

    fn publish(db: &impl Sql, version: u64, scope: &str, cpe: Option<&str>, rate: u32) {
        let policy = Policy {
            policy_version: version,
            rate_limit_per_minute: rate,
            ..Policy::default()
        };
        db.execute(
            "INSERT INTO policies (version, scope, cpe_id, policy_json, wire, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            db_params![
                version,
                scope,
                cpe,
                &serde_json::to_string(&policy).unwrap(),
                &[1u8, 2][..],
                version * 1000
            ],
        )
        .unwrap();
    }

    /// The history, the live version, the override and the rollout view read the same on
    /// both backends: a router's applied version is the higher of what it reported and
    /// what it acked.
    #[test]
    fn versions_and_the_rollout_view_read_the_same_on_both_backends() {
        for (url, _dir) in backends() {
            let store = crate::store::Store::open_url(&url).unwrap();
            let db = &**store.db();
            assert_eq!(
                current_fleet_policy(db).unwrap(),
                Policy::default(),
                "{url}"
            );
            cpe(db, "cpe-1", None, None);
            cpe(db, "cpe-2", None, None);
            cpe(db, "cpe-3", None, Some(1));
            publish(db, 1, "fleet", None, 10);
            publish(db, 2, "cpe", Some("cpe-1"), 20);
            publish(db, 3, "fleet", None, 30);
            remember(db, 3, Some("rate"), "why", "alice").unwrap();
            let listed: Vec<u64> = versions(db, 10)
                .unwrap()
                .iter()
                .map(|v| v.version)
                .collect();
            assert_eq!(listed, [3, 1], "{url}");
            let v3 = version(db, 3).unwrap().unwrap();
            assert_eq!(
                (
                    v3.text.as_deref(),
                    v3.note.as_deref(),
                    v3.actor.as_deref(),
                    v3.created_ms
                ),
                (Some("rate"), Some("why"), Some("alice"), 3000),
                "{url}"
            );
            assert!(
                version(db, 2).unwrap().is_none(),
                "a per-CPE version: {url}"
            );
            assert_eq!(current_fleet_policy(db).unwrap().rate_limit_per_minute, 30);

            // cpe-1 reported fleet v1 and acked v3; cpe-2 reported v3, refused per-CPE v2.
            state(db, "cpe-1", "online", None, Some(1), None, 5);
            state(db, "cpe-2", "online", None, Some(3), None, 5);
            db.execute(
                "INSERT INTO policy_acks (cpe_id, scope, version, outcome, reason, at_ms)
                 VALUES ('cpe-1', 'fleet', 3, 'applied', NULL, 6),
                        ('cpe-1', 'cpe', 2, 'applied', NULL, 6),
                        ('cpe-2', 'cpe', 2, 'refused', 'not mine', 6)",
                &[],
            )
            .unwrap();
            let (rows, latest) = rollout(db).unwrap();
            assert_eq!(latest, Some(3), "{url}");
            let applied: Vec<(&str, Option<u64>, Option<u64>)> = rows
                .iter()
                .map(|r| {
                    (
                        r.cpe_id.as_str(),
                        r.fleet_policy_version,
                        r.cpe_policy_version,
                    )
                })
                .collect();
            assert_eq!(
                applied,
                [
                    ("cpe-1", Some(3), Some(2)),
                    ("cpe-2", Some(3), None),
                    ("cpe-3", None, None)
                ],
                "{url}"
            );
            assert_eq!(
                rows[1].refusals,
                [("cpe".to_string(), 2, "not mine".to_string())],
                "{url}"
            );
        }
    }

    #[test]
    fn the_newest_override_is_read_on_both_backends() {
        for (url, _dir) in backends() {
            let store = crate::store::Store::open_url(&url).unwrap();
            let db = &**store.db();
            assert!(cpe_override(db, "cpe-1").unwrap().is_none(), "{url}");
            for (version, rate) in [(4u64, 40u32), (9, 90)] {
                publish(db, version, "cpe", Some("cpe-1"), rate);
            }
            publish(db, 10, "fleet", None, 100);
            let (version, policy) = cpe_override(db, "cpe-1").unwrap().unwrap();
            assert_eq!((version, policy.rate_limit_per_minute), (9, 90), "{url}");
            assert!(cpe_override(db, "cpe-2").unwrap().is_none(), "{url}");
        }
    }
}
