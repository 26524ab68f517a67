//! SQLite storage: the one schema and its migrations ([`schema`]), the ingest's batched
//! write path, the registry of CPE keys, policy versions and acknowledgements, read helpers
//! for the rest of the controller (verdicts, web UI, CLI) and the deletion of history past
//! its retention ([`retention`]).
//!
//! One [`Store`] owns one connection and is used from one thread; readers (the web server)
//! open their own with [`Store::open`] — WAL mode lets them read while the ingest writes.
//! Every write of the ingest goes through [`Store::write_batch`]: one transaction for a batch
//! of verified messages and the rejection counts seen with them, so either all of a batch
//! is durable or none is (the ingest acknowledges to the broker only after the commit).
//!
//! Being built (issue 12): [`db`], the same SQL on SQLite or PostgreSQL chosen by URL, and
//! [`arbiter`], the ingest decisions that must hold across replicas (de-duplication, the
//! replay check, policy versions, leader leases) on top of it. `Store` does not use them
//! yet; [`db`]'s docs say how the rest moves over.

pub mod arbiter;
pub mod commands;
pub mod db;
pub mod devices;
pub mod history;
pub mod notifications;
pub mod partitions;
pub mod retention;
pub mod schema;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use smtpguard_protocol::{
    AckOutcome, Alert, Body, Envelope, PolicyAck, PolicyScope, RejectionReason, State, Status,
    Telemetry,
};

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A JSON column could not be written or read.
    #[error("JSON column: {0}")]
    Json(#[from] serde_json::Error),
    /// The database was written by a newer build.
    #[error("database schema version {found} is newer than this build's {supported}")]
    TooNew {
        /// The database's `user_version`.
        found: u32,
        /// [`schema::SCHEMA_VERSION`].
        supported: u32,
    },
    /// A stored value is not what the schema promises (a hand-edited database).
    #[error("corrupt value in {column}: {detail}")]
    Corrupt {
        /// Table and column.
        column: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The backend-neutral layer ([`db`]) reported an error.
    #[error(transparent)]
    Db(#[from] db::DbError),
}

impl From<crate::verdicts::VerdictError> for StoreError {
    fn from(e: crate::verdicts::VerdictError) -> Self {
        match e {
            crate::verdicts::VerdictError::Sqlite(e) => StoreError::Sqlite(e),
            crate::verdicts::VerdictError::Db(e) => StoreError::Db(e),
            crate::verdicts::VerdictError::Corrupt { column, detail } => {
                StoreError::Corrupt { column, detail }
            }
        }
    }
}

/// A verified message ready to be stored.
#[derive(Debug, Clone)]
pub struct Received {
    /// The verified envelope.
    pub envelope: Envelope,
    /// The signed bytes exactly as received, kept for audit.
    pub wire: Vec<u8>,
    /// When the controller received it (Unix ms).
    pub received_at_ms: u64,
}

/// One enrolled CPE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpeRecord {
    /// Its id.
    pub cpe_id: String,
    /// Its public key as text (`ed25519:...`).
    pub public_key: String,
    /// Operator's label.
    pub label: Option<String>,
    /// When it was enrolled (Unix ms).
    pub enrolled_at_ms: Option<u64>,
    /// When it was revoked (Unix ms), if it was.
    pub revoked_at_ms: Option<u64>,
    /// Its broker password as mosquitto's `$7$` hash (`None`: none issued, no login).
    pub broker_password_hash: Option<String>,
}

/// A signed policy as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    /// Its version (the one controller-wide counter).
    pub version: u64,
    /// Fleet-wide or per-CPE.
    pub scope: PolicyScope,
    /// The target CPE of a per-CPE policy.
    pub cpe_id: Option<String>,
    /// The policy as JSON.
    pub policy_json: String,
    /// The signed bytes published.
    pub wire: Vec<u8>,
    /// When it was signed (Unix ms).
    pub created_ms: u64,
}

/// One CPE's view in the policy rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRow {
    /// The CPE.
    pub cpe_id: String,
    /// Online or offline as last reported, if ever.
    pub status: Option<String>,
    /// Applied fleet policy version (from acks and state).
    pub fleet_policy_version: Option<u64>,
    /// Applied per-CPE policy version.
    pub cpe_policy_version: Option<u64>,
    /// Refusals: (scope, version, reason), newest first.
    pub refusals: Vec<(String, u64, String)>,
}

/// Text name of a policy scope in the database.
pub fn scope_name(scope: PolicyScope) -> &'static str {
    match scope {
        PolicyScope::Fleet => "fleet",
        PolicyScope::Cpe => "cpe",
    }
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Online => "online",
        Status::Offline => "offline",
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_i64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The storage handle: a [`db::Db`] opened from a URL and migrated. Cheap to share
/// (`Store::db` hands out the `Arc`); SQLite keeps one connection behind a mutex, PostgreSQL
/// a bounded pool.
pub struct Store {
    db: std::sync::Arc<db::Db>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.db.backend())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`, in WAL mode, and migrates
    /// it.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the file cannot be opened or migrated;
    /// [`StoreError::TooNew`] for a database from a newer build.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::setup(db::Db::open_sqlite(Some(path))?)
    }

    /// Opens the database at `url` (`postgres://...`, `sqlite:PATH`, or a file path; see
    /// [`db::Db::open`]) and migrates it.
    ///
    /// # Errors
    /// As [`Store::open`]; [`StoreError::Db`] for a URL of another kind or an unreachable
    /// server.
    pub fn open_url(url: &str) -> Result<Store, StoreError> {
        Self::setup(db::Db::open(url)?)
    }

    /// A private in-memory database (tests, benchmarks).
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Self::setup(db::Db::open_sqlite(None)?)
    }

    fn setup(db: db::Db) -> Result<Store, StoreError> {
        match db.backend() {
            db::Backend::Sqlite => {
                let mut conn = db.sqlite_connection()?;
                schema::migrate(&mut conn)?;
                devices::backfill(&mut conn)?;
            }
            db::Backend::Postgres => {
                db.migrate(schema::POSTGRES)?;
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                partitions::ensure(&db, now_ms, partitions::DAYS_AHEAD)?;
            }
        }
        Ok(Store {
            db: std::sync::Arc::new(db),
        })
    }

    /// The database, for the rest of the controller's queries.
    pub fn db(&self) -> &std::sync::Arc<db::Db> {
        &self.db
    }

    /// The SQLite connection, for code not yet moved onto [`db::Db`] (issue 12's port).
    ///
    /// # Panics
    /// On PostgreSQL, which such code cannot use; `serve` refuses a PostgreSQL URL until
    /// nothing calls this.
    pub fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db
            .sqlite_connection()
            .expect("code not yet moved onto store::db runs only on SQLite")
    }

    /// Deletes history past its retention window as of `now_ms` (one pass of
    /// [`retention::run_pass`]; `cancelled` is asked between batches).
    ///
    /// # Errors
    /// [`StoreError`]; batches already committed stay done and counted.
    pub fn apply_retention(
        &mut self,
        windows: &retention::Windows,
        now_ms: u64,
        limits: &retention::Limits,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<retention::Report, StoreError> {
        retention::run_pass(&self.db, windows, now_ms, limits, cancelled)
    }

    /// The migrated database itself, for a component that keeps one of its own (the web
    /// server, see [`crate::web::open_db`]).
    pub fn into_db(self) -> std::sync::Arc<db::Db> {
        self.db
    }

    /// Issues a command to `cpe_id` in one transaction: `build` gets the next command id
    /// for that router and returns the signed command, which is stored as sent.
    ///
    /// # Errors
    /// `build`'s error, or [`StoreError`] (converted); nothing is stored then.
    pub fn issue_command<E: From<StoreError>>(
        &mut self,
        cpe_id: &str,
        build: impl FnOnce(u64) -> Result<commands::NewCommand, E>,
    ) -> Result<commands::NewCommand, E> {
        // IMMEDIATE: two writers never both read the same highest id.
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let id = commands::next_id(&tx, cpe_id)?;
        let command = build(id)?;
        commands::insert(&tx, &command)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(command)
    }

    /// Stores a batch of verified messages and adds `rejections` to the counters, in one
    /// transaction. Returns, for each message, whether it was new (`false`: a duplicate of
    /// an already stored `(cpe_id, seq)`, which changes nothing).
    ///
    /// # Errors
    /// [`StoreError`]; nothing of the batch is stored then.
    pub fn write_batch(
        &mut self,
        messages: &[Received],
        rejections: &[(RejectionReason, u64)],
    ) -> Result<Vec<bool>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut fresh = Vec::with_capacity(messages.len());
        for m in messages {
            fresh.push(store_message(&tx, m)?);
        }
        add_rejections(&tx, rejections)?;
        tx.commit()?;
        Ok(fresh)
    }

    /// Adds to the rejection counters.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn count_rejections(
        &mut self,
        rejections: &[(RejectionReason, u64)],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        add_rejections(&tx, rejections)?;
        tx.commit()?;
        Ok(())
    }

    /// Every rejection reason with its count (zero for reasons never seen), in
    /// [`RejectionReason::ALL`] order — what `/metrics` exports.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn rejection_counts(&self) -> Result<Vec<(RejectionReason, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT reason, count FROM rejections")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut counts: HashMap<String, u64> = HashMap::new();
        for row in rows {
            let (reason, count) = row?;
            counts.insert(reason, from_i64(count));
        }
        Ok(RejectionReason::ALL
            .iter()
            .map(|r| (*r, counts.get(r.as_str()).copied().unwrap_or(0)))
            .collect())
    }

    /// The count of one rejection reason.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn rejection_count(&self, reason: RejectionReason) -> Result<u64, StoreError> {
        let n: Option<i64> = self
            .conn()
            .query_row(
                "SELECT count FROM rejections WHERE reason = ?1",
                [reason.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(n.map_or(0, from_i64))
    }

    /// The highest stored sequence number of each CPE, to restore replay windows on start.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn highest_seqs(&self) -> Result<HashMap<String, u64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT cpe_id, MAX(seq) FROM messages WHERE kind != 'state' GROUP BY cpe_id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = HashMap::new();
        for row in rows {
            let (id, seq) = row?;
            out.insert(id, from_i64(seq));
        }
        Ok(out)
    }

    /// The sequence numbers stored for each CPE within `window` below its highest one
    /// (state messages aside), ascending: what a restarted replica's replay windows are
    /// rebuilt from. Another replica may have stored numbers above the ones this replica
    /// still has to commit (its broker session delivers them again after a crash); an exact
    /// window accepts those, where [`Store::highest_seqs`] alone would refuse them as
    /// replays and they would be acknowledged without being stored.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn recent_seqs(&self, window: u64) -> Result<HashMap<String, Vec<u64>>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT m.cpe_id, m.seq FROM messages m
             JOIN (SELECT cpe_id, MAX(seq) AS top FROM messages WHERE kind != 'state'
                   GROUP BY cpe_id) h
               ON m.cpe_id = h.cpe_id AND m.seq > h.top - ?1
             WHERE m.kind != 'state'
             ORDER BY m.cpe_id, m.seq",
        )?;
        let rows = stmt.query_map([to_i64(window)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut out: HashMap<String, Vec<u64>> = HashMap::new();
        for row in rows {
            let (id, seq) = row?;
            out.entry(id).or_default().push(from_i64(seq));
        }
        Ok(out)
    }

    /// Whether `(cpe_id, seq)` is already stored.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn has_message(&self, cpe_id: &str, seq: u64) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT 1 FROM messages WHERE cpe_id = ?1 AND seq = ?2",
                params![cpe_id, to_i64(seq)],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Number of stored alerts, in total or of one CPE.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn alert_count(&self, cpe_id: Option<&str>) -> Result<u64, StoreError> {
        let n: i64 = match cpe_id {
            Some(id) => self.conn().query_row(
                "SELECT COUNT(*) FROM alerts WHERE cpe_id = ?1",
                [id],
                |r| r.get(0),
            )?,
            None => self
                .conn()
                .query_row("SELECT COUNT(*) FROM alerts", [], |r| r.get(0))?,
        };
        Ok(from_i64(n))
    }

    // ---- registry ----

    /// Enrolls a CPE (or re-enrolls a revoked one with a new key).
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn upsert_cpe(
        &mut self,
        cpe_id: &str,
        public_key: &str,
        label: Option<&str>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO cpes (cpe_id, public_key, label, enrolled_at_ms, revoked_at_ms)
             VALUES (?1, ?2, ?3, ?4, NULL)
             ON CONFLICT (cpe_id) DO UPDATE SET public_key = excluded.public_key,
                 label = COALESCE(excluded.label, cpes.label),
                 enrolled_at_ms = excluded.enrolled_at_ms, revoked_at_ms = NULL",
            params![cpe_id, public_key, label, to_i64(now_ms)],
        )?;
        Ok(())
    }

    /// Replaces a CPE's broker password hash. Returns whether it is enrolled.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn set_cpe_password_hash(&mut self, cpe_id: &str, hash: &str) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE cpes SET broker_password_hash = ?2 WHERE cpe_id = ?1",
            params![cpe_id, hash],
        )?;
        Ok(n > 0)
    }

    /// Marks a CPE revoked. Returns whether it was enrolled.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn revoke_cpe(&mut self, cpe_id: &str, now_ms: u64) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE cpes SET revoked_at_ms = COALESCE(revoked_at_ms, ?2) WHERE cpe_id = ?1",
            params![cpe_id, to_i64(now_ms)],
        )?;
        Ok(n > 0)
    }

    /// Every enrolled CPE, by id.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn cpes(&self) -> Result<Vec<CpeRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT cpe_id, public_key, label, enrolled_at_ms, revoked_at_ms, broker_password_hash
             FROM cpes ORDER BY cpe_id",
        )?;
        let rows = stmt.query_map([], cpe_record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One CPE's record.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn cpe(&self, cpe_id: &str) -> Result<Option<CpeRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT cpe_id, public_key, label, enrolled_at_ms, revoked_at_ms, broker_password_hash
                 FROM cpes WHERE cpe_id = ?1",
                [cpe_id],
                cpe_record,
            )
            .optional()?)
    }

    // ---- policy ----

    /// The highest policy version ever signed (0 when none).
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn highest_policy_version(&self) -> Result<u64, StoreError> {
        let v: Option<i64> =
            self.conn()
                .query_row("SELECT MAX(version) FROM policies", [], |r| r.get(0))?;
        Ok(v.map_or(0, from_i64))
    }

    /// Records a signed policy. Fails if the version exists (the counter is monotonic).
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn insert_policy(&mut self, p: &StoredPolicy) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO policies (version, scope, cpe_id, policy_json, wire, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                to_i64(p.version),
                scope_name(p.scope),
                p.cpe_id,
                p.policy_json,
                p.wire,
                to_i64(p.created_ms)
            ],
        )?;
        Ok(())
    }

    /// The newest policy of a scope (and CPE, for per-CPE policy).
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn latest_policy(
        &self,
        scope: PolicyScope,
        cpe_id: Option<&str>,
    ) -> Result<Option<StoredPolicy>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT version, cpe_id, policy_json, wire, created_ms FROM policies
                 WHERE scope = ?1 AND (?2 IS NULL OR cpe_id = ?2)
                 ORDER BY version DESC LIMIT 1",
                params![scope_name(scope), cpe_id],
                |r| {
                    Ok(StoredPolicy {
                        version: from_i64(r.get(0)?),
                        scope,
                        cpe_id: r.get(1)?,
                        policy_json: r.get(2)?,
                        wire: r.get(3)?,
                        created_ms: from_i64(r.get(4)?),
                    })
                },
            )
            .optional()?;
        Ok(row)
    }

    /// The rollout view: every enrolled CPE with its applied versions and its refusals.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn rollout(&self) -> Result<Vec<RolloutRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT c.cpe_id, s.status,
                (SELECT MAX(version) FROM policy_acks a
                  WHERE a.cpe_id = c.cpe_id AND a.scope = 'fleet' AND a.outcome = 'applied'),
                (SELECT MAX(version) FROM policy_acks a
                  WHERE a.cpe_id = c.cpe_id AND a.scope = 'cpe' AND a.outcome = 'applied'),
                s.fleet_policy_version, s.cpe_policy_version
             FROM cpes c LEFT JOIN cpe_state s ON s.cpe_id = c.cpe_id
             ORDER BY c.cpe_id",
        )?;
        let rows = stmt.query_map([], |r| {
            let ack_fleet: Option<i64> = r.get(2)?;
            let ack_cpe: Option<i64> = r.get(3)?;
            let st_fleet: Option<i64> = r.get(4)?;
            let st_cpe: Option<i64> = r.get(5)?;
            Ok(RolloutRow {
                cpe_id: r.get(0)?,
                status: r.get(1)?,
                fleet_policy_version: ack_fleet.max(st_fleet).map(from_i64),
                cpe_policy_version: ack_cpe.max(st_cpe).map(from_i64),
                refusals: Vec::new(),
            })
        })?;
        let mut out: Vec<RolloutRow> = rows.collect::<Result<_, _>>()?;
        let mut stmt = conn.prepare(
            "SELECT cpe_id, scope, version, COALESCE(reason, '') FROM policy_acks
             WHERE outcome = 'refused' ORDER BY version DESC",
        )?;
        let refusals = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                from_i64(r.get(2)?),
                r.get::<_, String>(3)?,
            ))
        })?;
        let index: HashMap<String, usize> = out
            .iter()
            .enumerate()
            .map(|(i, row)| (row.cpe_id.clone(), i))
            .collect();
        for refusal in refusals {
            let (cpe, scope, version, reason) = refusal?;
            if let Some(&i) = index.get(&cpe) {
                out[i].refusals.push((scope, version, reason));
            }
        }
        Ok(out)
    }
}

fn cpe_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<CpeRecord> {
    Ok(CpeRecord {
        cpe_id: r.get(0)?,
        public_key: r.get(1)?,
        label: r.get(2)?,
        enrolled_at_ms: r.get::<_, Option<i64>>(3)?.map(from_i64),
        revoked_at_ms: r.get::<_, Option<i64>>(4)?.map(from_i64),
        broker_password_hash: r.get(5)?,
    })
}

fn add_rejections(
    tx: &Transaction<'_>,
    rejections: &[(RejectionReason, u64)],
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO rejections (reason, count) VALUES (?1, ?2)
         ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count",
    )?;
    for (reason, n) in rejections {
        if *n > 0 {
            stmt.execute(params![reason.as_str(), to_i64(*n)])?;
        }
    }
    Ok(())
}

/// Inserts one message; returns false for a duplicate `(cpe_id, seq)`.
fn store_message(tx: &Transaction<'_>, m: &Received) -> Result<bool, StoreError> {
    let e = &m.envelope;
    let seq = to_i64(e.seq);
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO messages (cpe_id, seq, kind, sent_at_ms, received_at_ms, wire)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            e.cpe_id,
            seq,
            e.kind().as_str(),
            to_i64(e.sent_at_ms),
            to_i64(m.received_at_ms),
            m.wire
        ])?;
    if inserted == 0 {
        return Ok(false);
    }
    match &e.body {
        Body::Alert(a) => store_alert(tx, &e.cpe_id, seq, a)?,
        Body::Telemetry(t) => store_telemetry(tx, &e.cpe_id, seq, t)?,
        Body::State(s) => store_state(tx, &e.cpe_id, s, m.received_at_ms)?,
        Body::PolicyAck(a) => store_ack(tx, &e.cpe_id, a, m.received_at_ms)?,
        Body::CommandAck(a) => commands::note_ack(tx, &e.cpe_id, a, m.received_at_ms)?,
        // Agents never send policy or commands; the ingest refuses them before they get here.
        Body::Policy(_) | Body::Command(_) => {}
    }
    Ok(true)
}

fn ips_json(ips: &[IpAddr]) -> Result<String, StoreError> {
    let texts: Vec<String> = ips.iter().map(ToString::to_string).collect();
    Ok(serde_json::to_string(&texts)?)
}

fn store_alert(tx: &Transaction<'_>, cpe_id: &str, seq: i64, a: &Alert) -> Result<(), StoreError> {
    let d = &a.device;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO alerts (cpe_id, seq, mac, at_ms, previous, verdict, score, action,
            action_until_ms, hostname, vendor, ips_json, evidence_json, observed_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        cpe_id,
        seq,
        d.mac.to_string(),
        to_i64(a.at_ms),
        a.previous.as_str(),
        d.verdict.as_str(),
        f64::from(d.score),
        d.action.as_str(),
        d.action_until_ms.map(to_i64),
        d.hostname,
        d.vendor,
        ips_json(&d.ips)?,
        serde_json::to_string(&d.evidence)?,
        serde_json::to_string(&a.observed)?,
    ])?;
    if d.verdict == smtpguard_protocol::Verdict::Infected
        && a.previous != smtpguard_protocol::Verdict::Infected
    {
        let mac = d.mac.to_string();
        let device = d
            .hostname
            .clone()
            .or_else(|| d.vendor.clone())
            .unwrap_or_else(|| mac.clone());
        let detail = d.evidence.first().cloned().unwrap_or_default();
        let dedup = format!("infected/{cpe_id}/{mac}/{}", a.at_ms);
        notifications::enqueue(
            tx,
            notifications::Event::Infected,
            cpe_id,
            &mac,
            &device,
            &detail,
            a.at_ms,
            &dedup,
        )?;
    }
    history::note_alert(tx, cpe_id, seq, a)?;
    devices::note_alert(tx, cpe_id, a)
}

fn store_telemetry(
    tx: &Transaction<'_>,
    cpe_id: &str,
    seq: i64,
    t: &Telemetry,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO telemetry (cpe_id, seq, window_start_ms, window_secs, public_ip, stats_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        cpe_id,
        seq,
        to_i64(t.window_start_ms),
        t.window_secs,
        t.public_ip.map(|ip| ip.to_string()),
        serde_json::to_string(&t.stats)?,
    ])?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO device_reports (cpe_id, seq, mac, verdict, score, action, action_until_ms,
                hostname, vendor, ips_json, counters_json, evidence_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        let observed_at = t
            .window_start_ms
            .saturating_add(u64::from(t.window_secs).saturating_mul(1000));
        for d in &t.devices {
            history::note_report(tx, cpe_id, seq, observed_at, d)?;
            stmt.execute(params![
                cpe_id,
                seq,
                d.mac.to_string(),
                d.verdict.as_str(),
                f64::from(d.score),
                d.action.as_str(),
                d.action_until_ms.map(to_i64),
                d.hostname,
                d.vendor,
                ips_json(&d.ips)?,
                serde_json::to_string(&d.counters)?,
                serde_json::to_string(&d.evidence)?,
            ])?;
            devices::note_report(tx, cpe_id, t.window_start_ms, t.window_secs, d)?;
        }
    }
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO connections (cpe_id, mac, at_ms, src_port, dst, dst_port, nat_port, nat_ip)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for c in &t.connections {
            stmt.execute(params![
                cpe_id,
                c.mac.to_string(),
                to_i64(c.at_ms),
                c.src_port,
                c.dst.to_string(),
                c.dst_port,
                c.nat_port,
                c.nat_ip.map(|ip| ip.to_string()),
            ])?;
        }
    }
    if let Some(ip) = t.public_ip {
        note_public_ip(tx, cpe_id, ip, t.window_start_ms)?;
        // The CPE's current address follows its telemetry too, not only its retained state.
        tx.prepare_cached("UPDATE cpe_state SET public_ip = ?2 WHERE cpe_id = ?1")?
            .execute(params![cpe_id, ip.to_string()])?;
    }
    Ok(())
}

/// Extends the current address period of a CPE, or opens a new one when the address changed.
fn note_public_ip(
    tx: &Transaction<'_>,
    cpe_id: &str,
    ip: IpAddr,
    at_ms: u64,
) -> Result<(), StoreError> {
    let ip = ip.to_string();
    let latest: Option<(String, i64)> = tx
        .prepare_cached(
            "SELECT ip, first_seen_ms FROM public_ips WHERE cpe_id = ?1
             ORDER BY last_seen_ms DESC LIMIT 1",
        )?
        .query_row([cpe_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match latest {
        Some((current, first)) if current == ip => {
            tx.prepare_cached(
                "UPDATE public_ips SET last_seen_ms = MAX(last_seen_ms, ?4)
                 WHERE cpe_id = ?1 AND ip = ?2 AND first_seen_ms = ?3",
            )?
            .execute(params![cpe_id, ip, first, to_i64(at_ms)])?;
        }
        _ => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO public_ips (cpe_id, ip, first_seen_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?3)",
            )?
            .execute(params![cpe_id, ip, to_i64(at_ms)])?;
        }
    }
    Ok(())
}

/// States apply in arrival order: the broker publishes an agent's last will (sealed when it
/// connected) after the agent's newer messages, and it is then the truth.
fn store_state(
    tx: &Transaction<'_>,
    cpe_id: &str,
    s: &State,
    now_ms: u64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO cpe_state (cpe_id, status, agent_version, fleet_policy_version,
            cpe_policy_version, public_ip, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (cpe_id) DO UPDATE SET status = excluded.status,
            agent_version = excluded.agent_version,
            fleet_policy_version = COALESCE(excluded.fleet_policy_version, cpe_state.fleet_policy_version),
            cpe_policy_version = COALESCE(excluded.cpe_policy_version, cpe_state.cpe_policy_version),
            public_ip = COALESCE(excluded.public_ip, cpe_state.public_ip),
            updated_ms = excluded.updated_ms",
    )?
    .execute(params![
        cpe_id,
        status_name(s.status),
        s.agent_version,
        s.fleet_policy_version.map(to_i64),
        s.cpe_policy_version.map(to_i64),
        s.public_ip.map(|ip| ip.to_string()),
        to_i64(now_ms),
    ])?;
    Ok(())
}

fn store_ack(
    tx: &Transaction<'_>,
    cpe_id: &str,
    a: &PolicyAck,
    now_ms: u64,
) -> Result<(), StoreError> {
    let (outcome, reason) = match &a.outcome {
        AckOutcome::Applied => ("applied", None),
        AckOutcome::Refused { reason } => ("refused", Some(reason.as_str())),
    };
    tx.prepare_cached(
        "INSERT OR REPLACE INTO policy_acks (cpe_id, scope, version, outcome, reason, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        cpe_id,
        scope_name(a.scope),
        to_i64(a.policy_version),
        outcome,
        reason,
        to_i64(now_ms)
    ])?;
    if matches!(a.outcome, AckOutcome::Applied) {
        let column = match a.scope {
            PolicyScope::Fleet => "fleet_policy_version",
            PolicyScope::Cpe => "cpe_policy_version",
        };
        tx.execute(
            &format!(
                "UPDATE cpe_state SET {column} = MAX(COALESCE({column}, 0), ?2) WHERE cpe_id = ?1"
            ),
            params![cpe_id, to_i64(a.policy_version)],
        )?;
    }
    Ok(())
}

/// A verified message of `cpe_id` as the tests hand it to the store: sent and received at
/// `at_ms`, without its signed bytes.
#[cfg(test)]
pub(crate) fn received(cpe_id: &str, seq: u64, at_ms: u64, body: Body) -> Received {
    Received {
        envelope: Envelope {
            version: smtpguard_protocol::PROTOCOL_VERSION,
            cpe_id: cpe_id.into(),
            seq,
            sent_at_ms: at_ms,
            body,
        },
        wire: vec![],
        received_at_ms: at_ms,
    }
}

/// A telemetry window starting at `window_start_ms`, a minute long, with nothing in it.
#[cfg(test)]
pub(crate) fn empty_telemetry(window_start_ms: u64) -> Body {
    Body::Telemetry(Telemetry {
        window_start_ms,
        window_secs: 60,
        public_ip: None,
        stats: smtpguard_protocol::AgentStats::default(),
        devices: vec![],
        connections: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtpguard_protocol::{Action, DeviceReport, MacAddr, Observed, Verdict};

    fn alert_envelope(cpe: &str, seq: u64) -> Received {
        let alert = Alert {
            device: DeviceReport {
                mac: MacAddr([2, 0x11, 0x22, 0x33, 0x44, 5]),
                ips: vec!["192.168.1.14".parse().unwrap()],
                hostname: Some("laptop".into()),
                vendor: None,
                verdict: Verdict::Infected,
                score: 0.9,
                action: Action::RateLimit,
                action_until_ms: Some(5000),
                counters: Default::default(),
                evidence: vec!["312 connections".into()],
            },
            previous: Verdict::Clean,
            at_ms: 1000,
            observed: Observed::default(),
        };
        Received {
            envelope: Envelope {
                version: 1,
                cpe_id: cpe.into(),
                seq,
                sent_at_ms: 1000,
                body: Body::Alert(alert),
            },
            wire: vec![1, 2, 3],
            received_at_ms: 1001,
        }
    }

    #[test]
    fn migrations_run_once_and_set_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        drop(Store::open(&path).unwrap());
        let store = Store::open(&path).unwrap();
        let v: u32 = store
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, schema::SCHEMA_VERSION);
        let mode: String = store
            .conn()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn duplicates_are_stored_once_and_text_columns_use_protocol_names() {
        let mut store = Store::open_in_memory().unwrap();
        let a = alert_envelope("cpe-1", 7);
        let fresh = store
            .write_batch(&[a.clone(), a.clone()], &[(RejectionReason::Replay, 2)])
            .unwrap();
        assert_eq!(fresh, vec![true, false]);
        assert_eq!(store.alert_count(None).unwrap(), 1);
        let (mac, verdict, action, ips): (String, String, String, String) = store
            .conn()
            .query_row(
                "SELECT mac, verdict, action, ips_json FROM alerts",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(mac, "02:11:22:33:44:05");
        assert_eq!(verdict, "infected");
        assert_eq!(action, "rate-limit");
        assert_eq!(ips, r#"["192.168.1.14"]"#);
        let counts = store.rejection_counts().unwrap();
        assert_eq!(counts.len(), RejectionReason::ALL.len());
        assert_eq!(store.rejection_count(RejectionReason::Replay).unwrap(), 2);
        assert_eq!(store.rejection_count(RejectionReason::Stale).unwrap(), 0);
        assert_eq!(store.highest_seqs().unwrap().get("cpe-1"), Some(&7));
    }

    #[test]
    fn rollout_shows_applied_versions_and_refusals() {
        let mut store = Store::open_in_memory().unwrap();
        store.upsert_cpe("cpe-1", "ed25519:00", None, 1).unwrap();
        let ack = |seq, version, outcome| Received {
            envelope: Envelope {
                version: 1,
                cpe_id: "cpe-1".into(),
                seq,
                sent_at_ms: 1,
                body: Body::PolicyAck(PolicyAck {
                    scope: PolicyScope::Fleet,
                    policy_version: version,
                    outcome,
                }),
            },
            wire: vec![],
            received_at_ms: 2,
        };
        store
            .write_batch(
                &[
                    ack(1, 3, AckOutcome::Applied),
                    ack(
                        2,
                        4,
                        AckOutcome::Refused {
                            reason: "bad signature".into(),
                        },
                    ),
                ],
                &[],
            )
            .unwrap();
        let rows = store.rollout().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].fleet_policy_version, Some(3));
        assert_eq!(
            rows[0].refusals,
            vec![("fleet".to_string(), 4, "bad signature".to_string())]
        );
    }
}
