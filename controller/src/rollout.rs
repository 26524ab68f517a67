//! Staged policy rollout: a new fleet policy goes to a canary cohort first, is watched, and
//! is then promoted to the fleet or rolled back, by an admin or by itself.
//!
//! # Delivery
//! The canary goes out as a *signed per-CPE policy* to each router of the cohort (the
//! candidate plus the devices allowed on that router, see
//! [`crate::policy::derived_override`]); the fleet topic keeps the live version. That keeps
//! the agent's rules untouched: every policy is signed and versioned as before, the per-CPE
//! override wins over the fleet policy, and a router outside the cohort never holds the
//! candidate. A cohort field inside a signed fleet policy was rejected: the fleet topic
//! retains one message, so a router outside the cohort that restarts during the canary
//! would find only the candidate, with nothing to fall back to, and every agent would need
//! a new rule. Promotion publishes the candidate as the next fleet version and re-derives
//! every derived override from it; a rollback (by hand, or the watch's automatic halt)
//! re-derives the cohort's overrides from the live fleet policy, as new, higher versions,
//! since routers refuse older ones.
//!
//! # Watching
//! A rollout carries its limits: how many cohort routers may refuse the candidate, how
//! far the share of suspicious or infected devices in the cohort may rise (percentage
//! points over the share when it started), and optionally how long a canary that every
//! cohort router applied soaks before it promotes itself. [`decide`] is the pure rule;
//! [`watch`] applies it every few seconds to the rollout in its canary stage, which lives
//! in the database (`rollouts`, `rollout_targets`, see [`crate::store::rollout`]), so a
//! restarted controller carries on watching. At most one rollout is in its canary stage (a
//! unique index), and every step claims the row with a conditional update, so a person and
//! the watch never both end it.
//! Every step is audited with its operator (the watch as [`WATCH_ACTOR`]).

use std::time::Duration;

use serde::Serialize;
use smtpguard_protocol::{Policy, PolicyScope};

use crate::store::db::Sql;
use crate::store::{policies, rollout as stored};
use crate::web::{AppState, WebError};

/// The audit log's actor for steps the watch takes by itself.
pub const WATCH_ACTOR: &str = "rollout watch";

/// Longest change note kept (characters).
pub const NOTE_MAX: usize = 500;

/// Which routers get the canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cohort {
    /// This share (1-100 %) of the enrolled routers, picked by a stable hash of their ids.
    Percent(u8),
    /// These routers.
    Named(Vec<String>),
}

impl Cohort {
    /// Reads `25%` or a list of router ids separated by commas or white space.
    ///
    /// # Errors
    /// A message for the person who typed it.
    pub fn parse(text: &str) -> Result<Cohort, String> {
        let text = text.trim();
        if let Some(n) = text.strip_suffix('%') {
            return match n.trim().parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Cohort::Percent(p)),
                _ => Err(format!("cohort {text:?}: a share must be 1% to 100%")),
            };
        }
        let ids: Vec<String> = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if ids.is_empty() {
            return Err("name the cohort: a share such as 10% or router ids".into());
        }
        Ok(Cohort::Named(ids))
    }
}

/// The cohort's routers among `enrolled` (sorted ids). A share takes at least one router
/// and is picked by a stable hash, so the same fleet and share give the same routers.
///
/// # Errors
/// An unknown router named, or no router at all.
pub fn pick(enrolled: &[String], cohort: &Cohort) -> Result<Vec<String>, String> {
    let mut out = match cohort {
        Cohort::Named(ids) => {
            for id in ids {
                if !enrolled.contains(id) {
                    return Err(format!("no enrolled router {id:?}"));
                }
            }
            let mut ids = ids.clone();
            ids.dedup();
            ids
        }
        Cohort::Percent(p) => {
            let n = (enrolled.len() * usize::from(*p)).div_ceil(100).max(1);
            let mut ranked: Vec<(String, &String)> = enrolled
                .iter()
                .map(|id| (crate::households::hash_secret(id), id))
                .collect();
            ranked.sort();
            ranked
                .into_iter()
                .take(n)
                .map(|(_, id)| id.clone())
                .collect()
        }
    };
    if out.is_empty() {
        return Err("no enrolled router to roll out to".into());
    }
    out.sort();
    out.dedup();
    if out.len() == enrolled.len() && enrolled.len() > 1 {
        return Err("the cohort is the whole fleet: publish the policy instead".into());
    }
    Ok(out)
}

/// When a rollout halts or promotes itself.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    /// Cohort routers that may refuse the candidate; one more halts the rollout.
    pub max_refusals: u32,
    /// How far the share of flagged (suspicious or infected) devices in the cohort may
    /// rise over its share when the canary started, in percentage points.
    pub max_flagged_rise: f64,
    /// Promote by itself once every cohort router applied the candidate and this long has
    /// passed since the start; `None`: an admin promotes.
    pub promote_after_secs: Option<u64>,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The cohort runs the candidate.
    Canary,
    /// The candidate is the fleet policy.
    Promoted,
    /// An admin rolled it back.
    RolledBack,
    /// The watch halted it (a limit was exceeded) and rolled the cohort back.
    Halted,
}

impl Status {
    /// The database and API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Canary => "canary",
            Status::Promoted => "promoted",
            Status::RolledBack => "rolled_back",
            Status::Halted => "halted",
        }
    }

    /// The status named `s` as stored (anything unknown reads as [`Status::Canary`]).
    pub(crate) fn parse(s: &str) -> Status {
        match s {
            "promoted" => Status::Promoted,
            "rolled_back" => Status::RolledBack,
            "halted" => Status::Halted,
            _ => Status::Canary,
        }
    }
}

/// One rollout as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Rollout {
    /// Its number.
    pub id: i64,
    /// Where it stands.
    pub status: Status,
    /// The policy rolled out.
    #[serde(skip)]
    pub candidate: Policy,
    /// The editor text it came from.
    #[serde(skip)]
    pub source_text: Option<String>,
    /// Why.
    pub note: String,
    /// The live fleet version when it started.
    pub base_version: Option<u64>,
    /// The cohort's routers.
    pub cohort: Vec<String>,
    /// Its limits.
    pub limits: Limits,
    /// Share of flagged devices in the cohort at the start (percent).
    pub flagged_before: f64,
    /// Who started it.
    pub started_by: String,
    /// When (Unix ms).
    pub started_ms: u64,
    /// Who ended the canary stage (promoted, rolled back or halted).
    pub ended_by: Option<String>,
    /// When.
    pub ended_ms: Option<u64>,
    /// Why it was rolled back or halted.
    pub end_reason: Option<String>,
    /// The fleet version it was promoted as.
    pub fleet_version: Option<u64>,
}

/// How one router stands with one signed version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum TargetState {
    /// It applied this version or a newer one of the same scope.
    Applied,
    /// No answer yet.
    Behind,
    /// It refused, and why.
    Refused(String),
}

/// One router in one stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// The router.
    pub cpe_id: String,
    /// The version it was sent.
    pub version: u64,
    /// How it stands.
    #[serde(flatten)]
    pub state: TargetState,
}

/// One stage of a rollout: the versions signed for it and how each router stands.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// `canary` (the candidate to the cohort, per-CPE), `fleet` (promoted) or `restore`
    /// (the cohort back on the live fleet policy, per-CPE).
    pub name: &'static str,
    /// Its routers.
    pub targets: Vec<Target>,
}

impl Stage {
    /// Routers that applied.
    pub fn applied(&self) -> usize {
        self.count(|s| matches!(s, TargetState::Applied))
    }

    /// Routers that have not answered.
    pub fn behind(&self) -> usize {
        self.count(|s| matches!(s, TargetState::Behind))
    }

    /// Routers that refused.
    pub fn refused(&self) -> usize {
        self.count(|s| matches!(s, TargetState::Refused(_)))
    }

    fn count(&self, f: impl Fn(&TargetState) -> bool) -> usize {
        self.targets.iter().filter(|t| f(&t.state)).count()
    }

    /// The versions signed for the stage, lowest and highest.
    pub fn versions(&self) -> Option<(u64, u64)> {
        let lo = self.targets.iter().map(|t| t.version).min()?;
        let hi = self.targets.iter().map(|t| t.version).max()?;
        Some((lo, hi))
    }
}

/// Flagged devices among the cohort's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Flagged {
    /// Suspicious or infected.
    pub flagged: u64,
    /// All devices known on the cohort's routers.
    pub devices: u64,
}

impl Flagged {
    /// The flagged share in percent (0 without devices).
    pub fn percent(self) -> f64 {
        if self.devices == 0 {
            0.0
        } else {
            #[allow(clippy::cast_precision_loss)]
            let share = self.flagged as f64 * 100.0 / self.devices as f64;
            share
        }
    }
}

/// What the watch does about a rollout in its canary stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing yet.
    Wait,
    /// Halt and roll the cohort back, for this reason.
    Halt(String),
    /// Promote to the fleet.
    Promote,
}

/// The watch's rule (pure): halt when more cohort routers refused than allowed or the
/// flagged share rose more than allowed; promote when the rollout promotes itself, every
/// cohort router applied and the soak time has passed; else wait.
pub fn decide(rollout: &Rollout, canary: &Stage, flagged: Flagged, now_ms: u64) -> Decision {
    if rollout.status != Status::Canary {
        return Decision::Wait;
    }
    let refused = canary.refused();
    if refused > rollout.limits.max_refusals as usize {
        let why = canary
            .targets
            .iter()
            .find_map(|t| match &t.state {
                TargetState::Refused(r) => {
                    Some(format!("{} refused v{}: {r}", t.cpe_id, t.version))
                }
                _ => None,
            })
            .unwrap_or_default();
        return Decision::Halt(format!(
            "{refused} of {} cohort routers refused the candidate (limit {}); {why}",
            canary.targets.len(),
            rollout.limits.max_refusals
        ));
    }
    let now = flagged.percent();
    let rise = now - rollout.flagged_before;
    if flagged.devices > 0 && rise > rollout.limits.max_flagged_rise {
        return Decision::Halt(format!(
            "flagged devices in the cohort rose from {:.1}% to {:.1}% ({} of {}), more than the {:.1} points allowed",
            rollout.flagged_before, now, flagged.flagged, flagged.devices, rollout.limits.max_flagged_rise
        ));
    }
    if let Some(secs) = rollout.limits.promote_after_secs {
        let soaked = now_ms.saturating_sub(rollout.started_ms) >= secs.saturating_mul(1000);
        if soaked && !canary.targets.is_empty() && canary.applied() == canary.targets.len() {
            return Decision::Promote;
        }
    }
    Decision::Wait
}

// ---- database ----

/// The rollout in its canary stage, if any.
///
/// # Errors
/// Database errors or a stored rollout that no longer parses.
pub fn canary(db: &impl Sql) -> Result<Option<Rollout>, WebError> {
    Ok(stored::canary(db)?)
}

/// Rollout `id`.
///
/// # Errors
/// As [`canary`].
pub fn one(db: &impl Sql, id: i64) -> Result<Option<Rollout>, WebError> {
    Ok(stored::one(db, id)?)
}

/// The newest `limit` rollouts, newest first.
///
/// # Errors
/// As [`canary`].
pub fn list(db: &impl Sql, limit: usize) -> Result<Vec<Rollout>, WebError> {
    Ok(stored::list(db, limit)?)
}

/// The candidate `cpe_id` must run while it is in the cohort of the rollout in its canary
/// stage, if it is.
///
/// # Errors
/// As [`canary`].
pub fn canary_policy_for(db: &impl Sql, cpe_id: &str) -> Result<Option<Policy>, WebError> {
    Ok(canary(db)?
        .filter(|r| r.cohort.iter().any(|c| c == cpe_id))
        .map(|r| r.candidate))
}

/// Share of flagged devices on `cpes`' routers, from each device's newest verdict.
///
/// # Errors
/// Database errors.
pub fn flagged(db: &impl Sql, cpes: &[String]) -> Result<Flagged, WebError> {
    let mut out = Flagged {
        flagged: 0,
        devices: 0,
    };
    for cpe in cpes {
        let (devices, flagged) = crate::store::devices::flagged(db, cpe)?;
        out.devices += devices;
        out.flagged += flagged;
    }
    Ok(out)
}

/// How `cpe_id` stands with `version` of `scope`.
fn target_state(
    db: &impl Sql,
    cpe_id: &str,
    scope: PolicyScope,
    version: u64,
) -> Result<TargetState, WebError> {
    if let Some(reason) = policies::refusal(db, cpe_id, scope, version)? {
        return Ok(TargetState::Refused(reason));
    }
    Ok(
        if policies::applied_version(db, cpe_id, scope)? >= version {
            TargetState::Applied
        } else {
            TargetState::Behind
        },
    )
}

/// The stages of `rollout` so far, in order: canary, then fleet (promoted) or restore.
///
/// # Errors
/// Database errors.
pub fn stages(db: &impl Sql, rollout: &Rollout) -> Result<Vec<Stage>, WebError> {
    let mut out = Vec::new();
    for name in ["canary", "restore"] {
        let rows = stored::targets(db, rollout.id, name)?;
        if rows.is_empty() {
            continue;
        }
        let mut targets = Vec::with_capacity(rows.len());
        for (cpe, version) in rows {
            let state = target_state(db, &cpe, PolicyScope::Cpe, version)?;
            targets.push(Target {
                cpe_id: cpe,
                version,
                state,
            });
        }
        out.push(Stage {
            name: if name == "canary" {
                "canary"
            } else {
                "restore"
            },
            targets,
        });
    }
    if let Some(version) = rollout.fleet_version {
        let mut targets = Vec::new();
        for cpe in policies::enrolled_cpes(db)? {
            let state = target_state(db, &cpe, PolicyScope::Fleet, version)?;
            targets.push(Target {
                cpe_id: cpe,
                version,
                state,
            });
        }
        out.push(Stage {
            name: "fleet",
            targets,
        });
    }
    Ok(out)
}

fn record_targets(
    db: &impl Sql,
    rollout_id: i64,
    stage: &str,
    signed: &[(String, Result<u64, String>)],
) -> Result<(), WebError> {
    for (cpe, result) in signed {
        if let Ok(version) = result {
            stored::add_target(db, rollout_id, stage, cpe, *version)?;
        }
    }
    Ok(())
}

fn failures(signed: &[(String, Result<u64, String>)]) -> Vec<String> {
    signed
        .iter()
        .filter_map(|(cpe, r)| r.as_ref().err().map(|e| format!("{cpe}: {e}")))
        .collect()
}

// ---- steps ----

/// What an admin asks for when starting a rollout.
#[derive(Debug, Clone)]
pub struct Request {
    /// The candidate policy.
    pub candidate: Policy,
    /// The editor text it came from.
    pub source_text: Option<String>,
    /// Why (required).
    pub note: String,
    /// Which routers.
    pub cohort: Cohort,
    /// When it halts or promotes itself.
    pub limits: Limits,
}

/// Starts a rollout: checks the candidate like any fleet version, picks the cohort, records
/// the rollout and the cohort's flagged share, and sends each cohort router the candidate
/// as its derived per-CPE policy. Audited as `rollout_start`. Returns the rollout's id.
///
/// # Errors
/// Why nothing started (a rollout already in its canary stage, a bad candidate, cohort or
/// note); or, after the start, the routers the candidate could not be published to.
pub async fn start(state: &AppState, actor: &str, request: Request) -> Result<i64, String> {
    let result = start_inner(state, actor, &request).await;
    let (target, outcome, detail) = match &result {
        Ok((id, cohort, _)) => (
            format!("rollout {id}"),
            "ok",
            format!(
                "cohort {}; limits {}; note: {}",
                cohort.join(", "),
                limits_text(&request.limits),
                request.note
            ),
        ),
        Err(e) => ("rollout".to_string(), "refused", e.clone()),
    };
    state
        .audit(actor, "rollout_start", target, outcome, detail)
        .await;
    let (id, _, failed) = result?;
    if failed.is_empty() {
        Ok(id)
    } else {
        Err(format!(
            "rollout {id} started, but the candidate was not published to {}",
            failed.join("; ")
        ))
    }
}

/// The limits in words, for the audit log and the page.
pub fn limits_text(l: &Limits) -> String {
    format!(
        "halts when more than {} refuse or flagged devices rise more than {:.1} points; {}",
        crate::verdicts::plural(l.max_refusals, "router", "routers"),
        l.max_flagged_rise,
        l.promote_after_secs.map_or_else(
            || "promoted by hand".to_string(),
            |s| format!("promotes itself {s} s after the start once every cohort router applied")
        )
    )
}

async fn start_inner(
    state: &AppState,
    actor: &str,
    request: &Request,
) -> Result<(i64, Vec<String>, Vec<String>), String> {
    let note = request.note.trim().to_string();
    if note.is_empty() || note.chars().count() > NOTE_MAX {
        return Err(format!(
            "a change note of 1 to {NOTE_MAX} characters is required"
        ));
    }
    if !(request.limits.max_flagged_rise >= 0.0 && request.limits.max_flagged_rise <= 100.0) {
        return Err("the flagged-device rise must be 0 to 100 points".into());
    }
    crate::web::policy_editor::check(state, &request.candidate)?;
    let now = state.now_ms();
    let (actor_s, req) = (actor.to_string(), request.clone());
    let (id, cohort) = state
        .sql(move |db| {
            if let Some(r) = canary(db)? {
                return Err(WebError::BadRequest(format!(
                    "rollout {} is in its canary stage: promote it or roll it back first",
                    r.id
                )));
            }
            let live = crate::web::policy_editor::current_fleet_policy(db)?;
            let mut a = req.candidate.clone();
            a.policy_version = 0;
            let mut b = live;
            let base_version = (b.policy_version > 0).then_some(b.policy_version);
            b.policy_version = 0;
            if crate::audit::policy_changes(&b, &a).is_empty() {
                return Err(WebError::BadRequest(
                    "the candidate changes nothing from the live version".into(),
                ));
            }
            let cohort =
                pick(&policies::enrolled_cpes(db)?, &req.cohort).map_err(WebError::BadRequest)?;
            let before = flagged(db, &cohort)?.percent();
            let id = stored::insert(
                db,
                &stored::NewRollout {
                    candidate: &req.candidate,
                    source_text: req.source_text.as_deref(),
                    note: &note,
                    base_version,
                    cohort: &cohort,
                    limits: &req.limits,
                    flagged_before: before,
                    started_by: &actor_s,
                    started_ms: now,
                },
            )?;
            Ok((id, cohort))
        })
        .await
        .map_err(|e| e.to_string())?;
    let signed = crate::policy::rederive(state, cohort.clone(), false).await;
    let failed = failures(&signed);
    state
        .sql(move |db| record_targets(db, id, "canary", &signed))
        .await
        .map_err(|e| e.to_string())?;
    Ok((id, cohort, failed))
}

/// Promotes rollout `id`: its candidate becomes the next fleet version (audited with its
/// diff as `rollout_promote`), and every derived override, the cohort's included, is
/// re-derived from it. Returns the fleet version.
///
/// # Errors
/// Why it was not promoted (not in its canary stage, or publishing failed: the rollout
/// then stays in its canary stage).
pub async fn promote(state: &AppState, actor: &str, id: i64) -> Result<u64, String> {
    let now = state.now_ms();
    let who = actor.to_string();
    let claimed = state
        .sql(move |db| {
            let Some(r) = one(db, id)? else {
                return Err(WebError::NotFound);
            };
            if !stored::claim(db, id, Status::Promoted, &who, None, now)? {
                return Err(WebError::BadRequest(format!(
                    "rollout {id} is not in its canary stage ({})",
                    r.status.as_str()
                )));
            }
            Ok((r, crate::web::policy_editor::current_fleet_policy(db)?))
        })
        .await;
    let (rollout, before) = match claimed {
        Ok(c) => c,
        Err(e) => {
            let why = e.to_string();
            state
                .audit(
                    actor,
                    "rollout_promote",
                    format!("rollout {id}"),
                    "refused",
                    why.clone(),
                )
                .await;
            return Err(why);
        }
    };
    let target = format!("rollout {id}");
    match crate::web::policy_editor::publish_checked(
        state,
        actor,
        "rollout_promote",
        &target,
        &before,
        rollout.candidate.clone(),
    )
    .await
    {
        Ok(version) => {
            let text = rollout.source_text.clone();
            let note = format!("rollout {id}: {}", rollout.note);
            crate::web::policy_editor::remember(state, version, text, note, actor.to_string())
                .await;
            let kept = state
                .sql(move |db| Ok(stored::set_fleet_version(db, id, version)?))
                .await;
            if let Err(e) = kept {
                tracing::error!(rollout = id, error = %e, "could not record the promoted version");
            }
            Ok(version)
        }
        Err(e) => {
            let reopened = state.sql(move |db| Ok(stored::reopen(db, id)?)).await;
            if let Err(e) = reopened {
                tracing::error!(rollout = id, error = %e, "could not reopen the rollout");
            }
            Err(e)
        }
    }
}

/// Ends rollout `id`'s canary stage as `status` ([`Status::RolledBack`] by an admin,
/// [`Status::Halted`] by the watch) and sends each cohort router its override derived from
/// the live fleet policy again. Audited as `rollout_rollback` or `rollout_halt`.
///
/// # Errors
/// Why it was not rolled back (not in its canary stage), or the routers the restore could
/// not be published to.
pub async fn roll_back(
    state: &AppState,
    actor: &str,
    id: i64,
    status: Status,
    reason: &str,
) -> Result<(), String> {
    let action = if status == Status::Halted {
        "rollout_halt"
    } else {
        "rollout_rollback"
    };
    let now = state.now_ms();
    let (who, why) = (actor.to_string(), reason.to_string());
    let claimed = state
        .sql(move |db| {
            let Some(r) = one(db, id)? else {
                return Err(WebError::NotFound);
            };
            if !stored::claim(db, id, status, &who, Some(&why), now)? {
                return Err(WebError::BadRequest(format!(
                    "rollout {id} is not in its canary stage ({})",
                    r.status.as_str()
                )));
            }
            Ok(r)
        })
        .await;
    let rollout = match claimed {
        Ok(r) => r,
        Err(e) => {
            let why = e.to_string();
            state
                .audit(
                    actor,
                    action,
                    format!("rollout {id}"),
                    "refused",
                    why.clone(),
                )
                .await;
            return Err(why);
        }
    };
    let signed = crate::policy::rederive(state, rollout.cohort.clone(), false).await;
    let failed = failures(&signed);
    let versions: Vec<String> = signed
        .iter()
        .filter_map(|(cpe, r)| r.as_ref().ok().map(|v| format!("{cpe} v{v}")))
        .collect();
    let recorded = state
        .sql(move |db| record_targets(db, id, "restore", &signed))
        .await;
    if let Err(e) = recorded {
        tracing::error!(rollout = id, error = %e, "could not record the restore versions");
    }
    let detail = format!(
        "{reason}; started by {}; cohort restored: {}{}",
        rollout.started_by,
        versions.join(", "),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; not published to {}", failed.join("; "))
        }
    );
    let outcome = if failed.is_empty() { "ok" } else { "partial" };
    state
        .audit(actor, action, format!("rollout {id}"), outcome, detail)
        .await;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the restore was not published to {}",
            failed.join("; ")
        ))
    }
}

/// One pass of the watch over the rollout in its canary stage: what [`decide`] says, done.
///
/// # Errors
/// A database error reading the rollout, or the failed step's error.
pub async fn check(state: &AppState) -> Result<Decision, String> {
    let now = state.now_ms();
    let found = state
        .sql(move |db| {
            let Some(r) = canary(db)? else {
                return Ok(None);
            };
            let stage = stages(db, &r)?
                .into_iter()
                .find(|s| s.name == "canary")
                .unwrap_or(Stage {
                    name: "canary",
                    targets: Vec::new(),
                });
            let f = flagged(db, &r.cohort)?;
            Ok(Some((r, stage, f)))
        })
        .await
        .map_err(|e| e.to_string())?;
    let Some((rollout, stage, f)) = found else {
        return Ok(Decision::Wait);
    };
    let decision = decide(&rollout, &stage, f, now);
    match &decision {
        Decision::Wait => {}
        Decision::Halt(why) => {
            tracing::warn!(rollout = rollout.id, reason = %why, "rollout halted");
            roll_back(state, WATCH_ACTOR, rollout.id, Status::Halted, why).await?;
        }
        Decision::Promote => {
            tracing::info!(rollout = rollout.id, "rollout promotes itself");
            promote(state, WATCH_ACTOR, rollout.id).await?;
        }
    }
    Ok(decision)
}

/// Runs [`check`] every `every` until the task is dropped.
pub async fn watch(state: AppState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = check(&state).await {
            tracing::warn!(error = %e, "rollout watch");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_protocol::AckOutcome;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("cpe-{i}")).collect()
    }

    fn rollout(limits: Limits, before: f64) -> Rollout {
        Rollout {
            id: 1,
            status: Status::Canary,
            candidate: Policy::default(),
            source_text: None,
            note: "n".into(),
            base_version: Some(1),
            cohort: vec!["cpe-0".into(), "cpe-1".into()],
            limits,
            flagged_before: before,
            started_by: "alice".into(),
            started_ms: 1_000,
            ended_by: None,
            ended_ms: None,
            end_reason: None,
            fleet_version: None,
        }
    }

    fn stage(states: &[TargetState]) -> Stage {
        Stage {
            name: "canary",
            targets: states
                .iter()
                .enumerate()
                .map(|(i, s)| Target {
                    cpe_id: format!("cpe-{i}"),
                    version: 5 + i as u64,
                    state: s.clone(),
                })
                .collect(),
        }
    }

    const LIMITS: Limits = Limits {
        max_refusals: 0,
        max_flagged_rise: 10.0,
        promote_after_secs: Some(60),
    };

    /// Signs into the database like `serve`'s publisher, without a broker.
    struct SignOnly {
        db: std::path::PathBuf,
        key: ed25519_dalek::SigningKey,
    }

    impl crate::web::PolicyPublisher for SignOnly {
        fn publish(
            &self,
            policy: Policy,
            cpe_id: Option<String>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + '_>>
        {
            Box::pin(async move {
                let mut store = crate::store::Store::open(&self.db).map_err(|e| e.to_string())?;
                let target =
                    cpe_id.map_or(crate::policy::Target::Fleet, crate::policy::Target::Cpe);
                crate::policy::sign(
                    &mut store,
                    &self.key,
                    policy,
                    &target,
                    &smtpguard_protocol::SafetyContext::default(),
                    1,
                )
                .map(|p| p.version)
                .map_err(|e| e.to_string())
            })
        }
    }

    fn state(db: &std::path::Path, key: &ed25519_dalek::SigningKey) -> AppState {
        let conn = crate::web::open_db(db).unwrap();
        AppState::new(
            conn,
            crate::web::WebSettings::new("rollout-test-token-0123"),
            std::sync::Arc::new(SignOnly {
                db: db.to_path_buf(),
                key: key.clone(),
            }),
            std::sync::Arc::new(|| 10_000),
        )
    }

    fn set_flagged(db: &std::path::Path, cpe: &str, flagged: usize, clean: usize) {
        put_devices(&crate::store::Store::open(db).unwrap(), cpe, flagged, clean);
    }

    /// The flagged-device limit, end to end over the database: a rise within the limit
    /// waits; past it, the watch of a fresh state (a restarted controller) halts the
    /// rollout, restores the cohort to the fleet policy and audits it as the watch's step.
    #[test]
    fn the_watch_halts_on_flagged_devices_from_the_database_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("controller.db");
        let key = smtpguard_protocol::keys::generate();
        {
            let mut store = crate::store::Store::open(&db).unwrap();
            for i in 0..4 {
                let k = smtpguard_protocol::keys::generate().verifying_key();
                crate::registry::add(
                    &mut store,
                    &format!("cpe-{i}"),
                    &smtpguard_protocol::keys::public_key_text(&k),
                    None,
                    0,
                )
                .unwrap();
            }
        }
        for i in 0..4 {
            set_flagged(&db, &format!("cpe-{i}"), 0, 5);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let first = state(&db, &key);
            let fleet = Policy {
                rate_limit_per_minute: 7,
                ..Policy::default()
            };
            let v1 = first.policy.publish(fleet, None).await.unwrap();
            let candidate = Policy {
                rate_limit_per_minute: 30,
                ..Policy::default()
            };
            let request = Request {
                candidate,
                source_text: None,
                note: "canary".into(),
                cohort: Cohort::Named(vec!["cpe-1".into(), "cpe-2".into()]),
                limits: Limits {
                    max_refusals: 0,
                    max_flagged_rise: 10.0,
                    promote_after_secs: None,
                },
            };
            let id = start(&first, "alice", request).await.unwrap();
            // 1 of 10 flagged: 10 points, within the limit.
            set_flagged(&db, "cpe-1", 1, 4);
            assert_eq!(check(&first).await.unwrap(), Decision::Wait);
            drop(first);

            set_flagged(&db, "cpe-2", 2, 3);
            let restarted = state(&db, &key);
            match check(&restarted).await.unwrap() {
                Decision::Halt(why) => assert!(why.contains("from 0.0% to 30.0%"), "{why}"),
                d => panic!("{d:?}"),
            }
            let (r, stages) = restarted
                .sql(move |db| {
                    let r = one(db, id)?.unwrap();
                    let s = stages(db, &r)?;
                    Ok((r, s))
                })
                .await
                .unwrap();
            assert_eq!(r.status, Status::Halted);
            assert_eq!(r.ended_by.as_deref(), Some(WATCH_ACTOR));
            let names: Vec<&str> = stages.iter().map(|s| s.name).collect();
            assert_eq!(names, ["canary", "restore"]);
            let store = crate::store::Store::open(&db).unwrap();
            for cpe in ["cpe-1", "cpe-2"] {
                let p = store
                    .latest_policy(smtpguard_protocol::PolicyScope::Cpe, Some(cpe))
                    .unwrap()
                    .unwrap();
                let p: Policy = serde_json::from_str(&p.policy_json).unwrap();
                assert_eq!(p.rate_limit_per_minute, 7, "{cpe} not restored");
            }
            for cpe in ["cpe-0", "cpe-3"] {
                assert!(store
                    .latest_policy(smtpguard_protocol::PolicyScope::Cpe, Some(cpe))
                    .unwrap()
                    .is_none());
            }
            let fleet = store
                .latest_policy(smtpguard_protocol::PolicyScope::Fleet, None)
                .unwrap()
                .unwrap();
            assert_eq!(fleet.version, v1, "the fleet saw the candidate");
            let halts = crate::audit::list(
                store.db(),
                &crate::audit::Filter {
                    actor: Some(WATCH_ACTOR.into()),
                    action: Some("rollout_halt".into()),
                    ..crate::audit::Filter::default()
                },
                crate::audit::PAGE_MAX,
            )
            .unwrap();
            let halts: Vec<_> = halts
                .iter()
                .filter(|e| e.outcome == "ok" && e.detail.contains("started by alice"))
                .collect();
            assert_eq!(halts.len(), 1);
            // Nothing left to watch.
            assert_eq!(check(&restarted).await.unwrap(), Decision::Wait);
        });
    }

    /// Signs into a database handle like `serve`'s publisher, without a broker.
    struct SignInto {
        db: std::sync::Arc<crate::store::db::Db>,
        key: ed25519_dalek::SigningKey,
    }

    impl crate::web::PolicyPublisher for SignInto {
        fn publish(
            &self,
            policy: Policy,
            cpe_id: Option<String>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + '_>>
        {
            let (db, key) = (std::sync::Arc::clone(&self.db), self.key.clone());
            Box::pin(async move {
                let target =
                    cpe_id.map_or(crate::policy::Target::Fleet, crate::policy::Target::Cpe);
                tokio::task::spawn_blocking(move || {
                    crate::policy::sign_in(
                        &db,
                        &key,
                        policy,
                        &target,
                        &smtpguard_protocol::SafetyContext::default(),
                        1,
                    )
                    .map(|p| p.version)
                    .map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())?
            })
        }
    }

    /// The next message number of a router in these tests (increasing, as an agent's).
    fn next_seq() -> u64 {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    /// `cpe`'s devices 0 to `flagged + clean - 1` as its next telemetry window reports
    /// them: the first `flagged` infected, the others clean.
    fn put_devices(store: &crate::store::Store, cpe: &str, flagged: usize, clean: usize) {
        let seq = next_seq();
        let devices = (0..flagged + clean)
            .map(|i| smtpguard_protocol::DeviceReport {
                mac: format!("02:00:00:00:00:{i:02x}").parse().unwrap(),
                ips: vec![],
                hostname: None,
                vendor: None,
                verdict: if i < flagged {
                    smtpguard_protocol::Verdict::Infected
                } else {
                    smtpguard_protocol::Verdict::Clean
                },
                score: 0.5,
                action: smtpguard_protocol::Action::Monitor,
                action_until_ms: None,
                counters: smtpguard_protocol::DeviceCounters::default(),
                evidence: vec![],
            })
            .collect();
        let mut window = crate::store::empty_telemetry(seq * 60_000);
        if let smtpguard_protocol::Body::Telemetry(t) = &mut window {
            t.devices = devices;
        }
        let message = crate::store::received(cpe, seq, seq * 60_000, window);
        assert_eq!(store.write_batch(&[message], &[]).unwrap(), [true]);
    }

    /// `cpe`'s answer to per-CPE version `version`, as the ingest stores it.
    fn ack(store: &crate::store::Store, cpe: &str, version: u64, outcome: AckOutcome) {
        let seq = next_seq();
        let body = smtpguard_protocol::Body::PolicyAck(smtpguard_protocol::PolicyAck {
            scope: PolicyScope::Cpe,
            policy_version: version,
            outcome,
        });
        let message = crate::store::received(cpe, seq, 1, body);
        assert_eq!(store.write_batch(&[message], &[]).unwrap(), [true]);
    }

    /// The newest per-CPE policy's rate limit on `cpe`.
    fn cpe_rate(store: &crate::store::Store, cpe: &str) -> Option<u32> {
        store
            .latest_policy(PolicyScope::Cpe, Some(cpe))
            .unwrap()
            .map(|p| {
                serde_json::from_str::<Policy>(&p.policy_json)
                    .unwrap()
                    .rate_limit_per_minute
            })
    }

    /// A rollout's whole life on both backends: started (the cohort gets the candidate),
    /// halted by a refusal (the cohort is restored), then another promoted (the fleet
    /// policy becomes the candidate and its stage lists every router).
    #[test]
    fn rollouts_start_halt_and_promote_on_both_backends() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (url, _dir) in crate::store::db::tests::backends() {
            let store = crate::store::Store::open_url(&url).unwrap();
            let db = std::sync::Arc::clone(store.db());
            for i in 0..4 {
                store.upsert_cpe(&format!("cpe-{i}"), "k", None, 0).unwrap();
                put_devices(&store, &format!("cpe-{i}"), 0, 5);
            }
            let state = AppState::new(
                std::sync::Arc::clone(&db),
                crate::web::WebSettings::new("rollout-test-token-0123"),
                std::sync::Arc::new(SignInto {
                    db: std::sync::Arc::clone(&db),
                    key: smtpguard_protocol::keys::generate(),
                }),
                std::sync::Arc::new(|| 10_000),
            );
            let request = |rate: u32| Request {
                candidate: Policy {
                    rate_limit_per_minute: rate,
                    ..Policy::default()
                },
                source_text: Some(format!("rate_limit_per_minute = {rate}")),
                note: "canary".into(),
                cohort: Cohort::Named(vec!["cpe-1".into(), "cpe-2".into()]),
                limits: Limits {
                    max_refusals: 0,
                    max_flagged_rise: 10.0,
                    promote_after_secs: None,
                },
            };
            let fleet = Policy {
                rate_limit_per_minute: 7,
                ..Policy::default()
            };
            assert_eq!(rt.block_on(state.policy.publish(fleet, None)).unwrap(), 1);
            put_devices(&store, "cpe-1", 1, 4);
            let id = rt.block_on(start(&state, "alice", request(30))).unwrap();
            let r = canary(&*db).unwrap().unwrap();
            assert_eq!((r.id, r.status), (id, Status::Canary), "{url}");
            assert_eq!(r.source_text.as_deref(), Some("rate_limit_per_minute = 30"));
            assert_eq!(r.flagged_before, 10.0, "{url}");
            assert_eq!(
                canary_policy_for(&*db, "cpe-2")
                    .unwrap()
                    .unwrap()
                    .rate_limit_per_minute,
                30
            );
            assert!(canary_policy_for(&*db, "cpe-0").unwrap().is_none(), "{url}");
            assert_eq!(cpe_rate(&store, "cpe-1"), Some(30), "{url}");
            let f = flagged(&*db, &r.cohort).unwrap();
            assert_eq!((f.flagged, f.devices), (1, 10), "{url}");
            let stage = &stages(&*db, &r).unwrap()[0];
            assert_eq!(stage.name, "canary");
            assert!(
                stage.targets.iter().all(|t| t.state == TargetState::Behind),
                "{url}"
            );
            // cpe-2 applied its version; cpe-1 refused its own.
            let version_of = |cpe: &str| {
                stage
                    .targets
                    .iter()
                    .find(|t| t.cpe_id == cpe)
                    .unwrap()
                    .version
            };
            ack(&store, "cpe-2", version_of("cpe-2"), AckOutcome::Applied);
            ack(
                &store,
                "cpe-1",
                version_of("cpe-1"),
                AckOutcome::Refused {
                    reason: "covers relay".into(),
                },
            );
            let states: Vec<TargetState> = stages(&*db, &r).unwrap()[0]
                .targets
                .iter()
                .map(|t| t.state.clone())
                .collect();
            assert_eq!(
                states,
                [
                    TargetState::Refused("covers relay".into()),
                    TargetState::Applied
                ],
                "{url}"
            );
            match rt.block_on(check(&state)).unwrap() {
                Decision::Halt(why) => assert!(why.contains("cpe-1 refused"), "{why}"),
                d => panic!("{url}: {d:?}"),
            }
            let r = one(&*db, id).unwrap().unwrap();
            assert_eq!(r.status, Status::Halted, "{url}");
            assert_eq!(r.ended_by.as_deref(), Some(WATCH_ACTOR), "{url}");
            let names: Vec<&str> = stages(&*db, &r).unwrap().iter().map(|s| s.name).collect();
            assert_eq!(names, ["canary", "restore"], "{url}");
            assert_eq!(cpe_rate(&store, "cpe-1"), Some(7), "{url}");
            assert!(canary(&*db).unwrap().is_none(), "{url}");

            let second = rt.block_on(start(&state, "alice", request(40))).unwrap();
            let version = rt.block_on(promote(&state, "bob", second)).unwrap();
            let r = one(&*db, second).unwrap().unwrap();
            assert_eq!(
                (r.status, r.fleet_version),
                (Status::Promoted, Some(version)),
                "{url}"
            );
            let live = crate::web::policy_editor::current_fleet_policy(&*db).unwrap();
            assert_eq!(live.rate_limit_per_minute, 40, "{url}");
            let fleet_stage = stages(&*db, &r).unwrap().pop().unwrap();
            assert_eq!(
                (fleet_stage.name, fleet_stage.targets.len()),
                ("fleet", 4),
                "{url}"
            );
            // Promoted overrides are re-derived from the new fleet version.
            assert_eq!(cpe_rate(&store, "cpe-2"), Some(40), "{url}");
            assert!(
                rt.block_on(promote(&state, "bob", second)).is_err(),
                "{url}"
            );
            let listed: Vec<i64> = list(&*db, 5).unwrap().iter().map(|r| r.id).collect();
            assert_eq!(listed, [second, id], "{url}");
        }
    }

    #[test]
    fn cohorts_are_parsed_and_picked_stably() {
        assert_eq!(Cohort::parse(" 50% "), Ok(Cohort::Percent(50)));
        assert!(Cohort::parse("0%").is_err());
        assert!(Cohort::parse("101%").is_err());
        assert!(Cohort::parse(" , ").is_err());
        assert_eq!(
            Cohort::parse("cpe-1, cpe-3\ncpe-1"),
            Ok(Cohort::Named(vec![
                "cpe-1".into(),
                "cpe-3".into(),
                "cpe-1".into()
            ]))
        );
        let fleet = ids(4);
        let half = pick(&fleet, &Cohort::Percent(50)).unwrap();
        assert_eq!(half.len(), 2);
        assert_eq!(half, pick(&fleet, &Cohort::Percent(50)).unwrap());
        assert_eq!(pick(&fleet, &Cohort::Percent(1)).unwrap().len(), 1);
        assert_eq!(
            pick(&fleet, &Cohort::parse("cpe-3 cpe-1 cpe-1").unwrap()).unwrap(),
            vec!["cpe-1".to_string(), "cpe-3".to_string()]
        );
        assert!(pick(&fleet, &Cohort::Named(vec!["cpe-9".into()]))
            .unwrap_err()
            .contains("cpe-9"));
        assert!(pick(&fleet, &Cohort::Percent(100))
            .unwrap_err()
            .contains("whole fleet"));
        assert!(pick(&[], &Cohort::Percent(10)).is_err());
    }

    #[test]
    fn a_refusal_over_the_limit_halts() {
        let r = rollout(LIMITS, 0.0);
        let s = stage(&[
            TargetState::Applied,
            TargetState::Refused("covers relay".into()),
        ]);
        let none = Flagged {
            flagged: 0,
            devices: 0,
        };
        match decide(&r, &s, none, 2_000) {
            Decision::Halt(why) => {
                assert!(why.contains("1 of 2 cohort routers refused"), "{why}");
                assert!(why.contains("cpe-1 refused v6: covers relay"), "{why}");
            }
            d => panic!("{d:?}"),
        }
        let lenient = rollout(
            Limits {
                max_refusals: 1,
                ..LIMITS
            },
            0.0,
        );
        assert_eq!(decide(&lenient, &s, none, 2_000), Decision::Wait);
    }

    #[test]
    fn a_rise_in_flagged_devices_over_the_limit_halts() {
        let r = rollout(LIMITS, 10.0);
        let s = stage(&[TargetState::Applied, TargetState::Applied]);
        // 2 of 10 = 20 %: a rise of exactly 10 points is allowed.
        let at_limit = Flagged {
            flagged: 2,
            devices: 10,
        };
        assert_eq!(decide(&r, &s, at_limit, 2_000), Decision::Wait);
        let over = Flagged {
            flagged: 3,
            devices: 10,
        };
        match decide(&r, &s, over, 2_000) {
            Decision::Halt(why) => assert!(why.contains("from 10.0% to 30.0%"), "{why}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn it_promotes_itself_only_when_every_router_applied_and_the_soak_passed() {
        let r = rollout(LIMITS, 0.0);
        let none = Flagged {
            flagged: 0,
            devices: 3,
        };
        let behind = stage(&[TargetState::Applied, TargetState::Behind]);
        let done = stage(&[TargetState::Applied, TargetState::Applied]);
        assert_eq!(decide(&r, &behind, none, 1_000_000), Decision::Wait);
        assert_eq!(decide(&r, &done, none, 60_999), Decision::Wait);
        assert_eq!(decide(&r, &done, none, 61_000), Decision::Promote);
        let by_hand = rollout(
            Limits {
                promote_after_secs: None,
                ..LIMITS
            },
            0.0,
        );
        assert_eq!(decide(&by_hand, &done, none, 1_000_000), Decision::Wait);
        let mut ended = r.clone();
        ended.status = Status::Halted;
        assert_eq!(decide(&ended, &done, none, 1_000_000), Decision::Wait);
    }
}
