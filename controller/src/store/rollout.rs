//! Staged rollouts as stored: one row per rollout (`rollouts`: the candidate, cohort,
//! limits and where it stands) and the versions signed for each of its stages
//! (`rollout_targets`). [`crate::rollout`] keeps the rules (the watch's decision, the
//! steps) and calls these; every step that ends a canary claims the row with
//! [`claim`], so two never both end it.

use smtpguard_protocol::Policy;

use super::db::{DbError, Param, Sql};
use super::{from_i64, StoreError};
use crate::db_params;
use crate::rollout::{Limits, Rollout, Status};

const COLUMNS: &str = "id, status, candidate_json, source_text, note, base_version, cohort_json,
    max_refusals, max_flagged_rise, promote_after_secs, flagged_before, started_by, started_ms,
    ended_by, ended_ms, end_reason, fleet_version";

fn corrupt(column: &'static str, id: i64, e: &serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        column,
        detail: format!("rollout {id}: {e}"),
    }
}

fn read(db: &impl Sql, filter: &str, params: &[Param<'_>]) -> Result<Vec<Rollout>, StoreError> {
    let rows = db.query(&format!("SELECT {COLUMNS} FROM rollouts {filter}"), params)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: i64 = r.get(0)?;
        let candidate: Policy = serde_json::from_str(&r.get::<String>(2)?)
            .map_err(|e| corrupt("rollouts.candidate_json", id, &e))?;
        let cohort: Vec<String> = serde_json::from_str(&r.get::<String>(6)?)
            .map_err(|e| corrupt("rollouts.cohort_json", id, &e))?;
        out.push(Rollout {
            id,
            status: Status::parse(&r.get::<String>(1)?),
            candidate,
            source_text: r.get(3)?,
            note: r.get(4)?,
            base_version: r.get::<Option<i64>>(5)?.map(from_i64),
            cohort,
            limits: Limits {
                max_refusals: u32::try_from(r.get::<i64>(7)?).unwrap_or(0),
                max_flagged_rise: r.get(8)?,
                promote_after_secs: r.get::<Option<i64>>(9)?.map(from_i64),
            },
            flagged_before: r.get(10)?,
            started_by: r.get(11)?,
            started_ms: from_i64(r.get(12)?),
            ended_by: r.get(13)?,
            ended_ms: r.get::<Option<i64>>(14)?.map(from_i64),
            end_reason: r.get(15)?,
            fleet_version: r.get::<Option<i64>>(16)?.map(from_i64),
        });
    }
    Ok(out)
}

/// The rollout in its canary stage, if any.
///
/// # Errors
/// [`StoreError`]; [`StoreError::Corrupt`] for a stored rollout that no longer parses.
pub fn canary(db: &impl Sql) -> Result<Option<Rollout>, StoreError> {
    Ok(read(db, "WHERE status = 'canary'", &[])?.pop())
}

/// Rollout `id`.
///
/// # Errors
/// As [`canary`].
pub fn one(db: &impl Sql, id: i64) -> Result<Option<Rollout>, StoreError> {
    Ok(read(db, "WHERE id = ?1", db_params![id])?.pop())
}

/// The newest `limit` rollouts, newest first.
///
/// # Errors
/// As [`canary`].
pub fn list(db: &impl Sql, limit: usize) -> Result<Vec<Rollout>, StoreError> {
    read(
        db,
        "ORDER BY id DESC LIMIT ?1",
        db_params![i64::try_from(limit).unwrap_or(i64::MAX)],
    )
}

/// A rollout about to start, as [`insert`] records it.
#[derive(Debug, Clone, Copy)]
pub struct NewRollout<'a> {
    /// The candidate policy.
    pub candidate: &'a Policy,
    /// The editor text it came from.
    pub source_text: Option<&'a str>,
    /// Why.
    pub note: &'a str,
    /// The live fleet version.
    pub base_version: Option<u64>,
    /// The cohort's routers.
    pub cohort: &'a [String],
    /// Its limits.
    pub limits: &'a Limits,
    /// Share of flagged devices in the cohort now (percent).
    pub flagged_before: f64,
    /// Who starts it.
    pub started_by: &'a str,
    /// When (Unix ms).
    pub started_ms: u64,
}

/// Records a rollout in its canary stage; returns its id. The unique index on the canary
/// stage refuses a second one.
///
/// # Errors
/// [`StoreError`].
pub fn insert(db: &impl Sql, r: &NewRollout<'_>) -> Result<i64, StoreError> {
    let candidate_json = serde_json::to_string(r.candidate)?;
    let cohort_json = serde_json::to_string(r.cohort)?;
    Ok(db.query_one(
        "INSERT INTO rollouts (status, candidate_json, source_text, note, base_version,
            cohort_json, max_refusals, max_flagged_rise, promote_after_secs,
            flagged_before, started_by, started_ms)
         VALUES ('canary', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         RETURNING id",
        db_params![
            &candidate_json,
            r.source_text,
            r.note,
            r.base_version,
            &cohort_json,
            r.limits.max_refusals,
            r.limits.max_flagged_rise,
            r.limits.promote_after_secs,
            r.flagged_before,
            r.started_by,
            r.started_ms
        ],
    )?)
}

/// Ends the canary stage of rollout `id` as `status`, unless something else ended it
/// first; `true` when this call did.
///
/// # Errors
/// [`DbError`].
pub fn claim(
    db: &impl Sql,
    id: i64,
    status: Status,
    actor: &str,
    reason: Option<&str>,
    now_ms: u64,
) -> Result<bool, DbError> {
    let n = db.execute(
        "UPDATE rollouts SET status = ?2, ended_by = ?3, ended_ms = ?4, end_reason = ?5
         WHERE id = ?1 AND status = 'canary'",
        db_params![id, status.as_str(), actor, now_ms, reason],
    )?;
    Ok(n == 1)
}

/// Puts a rollout claimed for promotion back in its canary stage (publishing the candidate
/// failed), unless it was promoted as a fleet version meanwhile.
///
/// # Errors
/// [`DbError`].
pub fn reopen(db: &impl Sql, id: i64) -> Result<(), DbError> {
    db.execute(
        "UPDATE rollouts SET status = 'canary', ended_by = NULL, ended_ms = NULL
         WHERE id = ?1 AND status = 'promoted' AND fleet_version IS NULL",
        db_params![id],
    )?;
    Ok(())
}

/// Records the fleet version rollout `id` was promoted as.
///
/// # Errors
/// [`DbError`].
pub fn set_fleet_version(db: &impl Sql, id: i64, version: u64) -> Result<(), DbError> {
    db.execute(
        "UPDATE rollouts SET fleet_version = ?2 WHERE id = ?1",
        db_params![id, version],
    )?;
    Ok(())
}

/// Records the per-CPE version signed for `cpe_id` in `stage` (`canary` or `restore`) of
/// rollout `id` (once).
///
/// # Errors
/// [`DbError`].
pub fn add_target(
    db: &impl Sql,
    id: i64,
    stage: &str,
    cpe_id: &str,
    version: u64,
) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO rollout_targets (rollout_id, stage, cpe_id, version)
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        db_params![id, stage, cpe_id, version],
    )?;
    Ok(())
}

/// The routers of `stage` of rollout `id`, each with the highest version signed for it
/// there, by router id.
///
/// # Errors
/// [`DbError`].
pub fn targets(db: &impl Sql, id: i64, stage: &str) -> Result<Vec<(String, u64)>, DbError> {
    db.query(
        "SELECT cpe_id, MAX(version) FROM rollout_targets
         WHERE rollout_id = ?1 AND stage = ?2 GROUP BY cpe_id ORDER BY cpe_id",
        db_params![id, stage],
    )?
    .iter()
    .map(|row| Ok((row.get(0)?, from_i64(row.get(1)?))))
    .collect()
}
