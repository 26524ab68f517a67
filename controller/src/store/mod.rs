//! Storage on SQLite (the embedded default) or PostgreSQL (several replicas sharing one
//! database), through [`db`]: every SQL statement of the controller is in this module and
//! its children, and the rest of the controller calls typed functions (a test holds that).
//! The one schema and its migrations ([`schema`]), the ingest's batched write path, the
//! registry of CPE keys, policy versions and acknowledgements, one module per area of the
//! product ([`households`], [`operators`], [`audit`], [`policies`], [`rollout`], [`abuse`],
//! [`fleet`], [`drafts`], [`senders`], [`sessions`], [`metrics`], [`pages`]) and the
//! deletion of history past its retention ([`retention`]).
//!
//! A [`Store`] holds a [`db::Db`] (SQLite: one connection behind a mutex, WAL mode so that
//! other processes read while the ingest writes; PostgreSQL: a pool). Every write of the
//! ingest goes through [`Store::write_batch`]: one transaction for a batch of verified
//! messages and the rejection counts seen with them, so either all of a batch is durable or
//! none is (the ingest acknowledges to the broker only after the commit). In it,
//! [`arbiter::admit`] decides each message first — stored once per `(cpe_id, seq)` and not
//! below its CPE's replay window, whichever replica sees it — and only the messages it
//! stored get their body rows ([`history`], [`devices`], [`notifications`], [`commands`]
//! acks, alerts, telemetry, addresses, states). [`arbiter`] also holds policy versions and
//! the leader leases.

pub mod abuse;
pub mod arbiter;
pub mod audit;
pub mod commands;
pub mod db;
pub mod devices;
pub mod drafts;
pub mod fleet;
pub mod history;
pub mod households;
pub mod metrics;
pub mod notifications;
pub mod operators;
pub mod pages;
pub mod partitions;
pub mod policies;
pub mod retention;
pub mod rollout;
pub mod schema;
pub mod senders;
pub mod sessions;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use db::Sql;
use smtpguard_protocol::{
    AckOutcome, Alert, Body, DeviceReport, Envelope, MacAddr, PolicyAck, PolicyScope,
    RejectionReason, State, Status, Telemetry,
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

/// The storage handle: a [`db::Db`] opened from a URL and migrated. Cheap to share (clones
/// share the one `Db`, and `Store::db` hands out its `Arc`); SQLite keeps one connection behind a mutex, PostgreSQL
/// a bounded pool. Several `Store`s (replicas) may share one PostgreSQL database: the write
/// path decides each message with [`arbiter::admit`].
#[derive(Clone)]
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
                schema::migrate(&mut *db.sqlite_connection()?)?;
                // Only SQLite files can predate the `devices` table; PostgreSQL databases
                // start at its schema.
                devices::backfill(&db)?;
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
    /// for that router and returns the signed command, which is stored as sent. `build` may
    /// run more than once (a PostgreSQL transaction aborted for a deadlock runs again, see
    /// [`db::Db::transaction`]): it must only sign.
    ///
    /// # Errors
    /// `build`'s error, or [`StoreError`] (converted); nothing is stored then.
    pub fn issue_command<E: From<StoreError>>(
        &self,
        cpe_id: &str,
        mut build: impl FnMut(u64) -> Result<commands::NewCommand, E>,
    ) -> Result<commands::NewCommand, E> {
        /// Either side's error, so that the transaction can tell them apart.
        enum Fail<E> {
            Store(StoreError),
            Build(E),
        }
        impl<E> From<db::DbError> for Fail<E> {
            fn from(e: db::DbError) -> Self {
                Fail::Store(e.into())
            }
        }
        impl<E> From<StoreError> for Fail<E> {
            fn from(e: StoreError) -> Self {
                Fail::Store(e)
            }
        }
        let issued = self.db.transaction(|tx| {
            // Two writers never both read the same highest id: SQLite's transaction holds
            // the write lock from its start, PostgreSQL's locks the router's row here.
            tx.execute(
                "UPDATE cpes SET cpe_id = cpe_id WHERE cpe_id = ?1",
                crate::db_params![cpe_id],
            )?;
            let id = commands::next_id(tx, cpe_id)?;
            let command = build(id).map_err(Fail::Build)?;
            commands::insert(tx, &command)?;
            Ok(command)
        });
        match issued {
            Ok(command) => Ok(command),
            Err(Fail::Store(e)) => Err(E::from(e)),
            Err(Fail::Build(e)) => Err(e),
        }
    }

    /// Stores a batch of verified messages and adds `rejections` to the counters, in one
    /// transaction. [`arbiter::admit`] decides each message first (stored once per
    /// `(cpe_id, seq)` across replicas, and not below the CPE's replay window); only the
    /// new ones get their body rows. Returns, for each message, whether it was new
    /// (`false`: a duplicate, or below the window, which changes nothing and which the
    /// ingest counts as a replay).
    ///
    /// # Errors
    /// [`StoreError`]; nothing of the batch is stored then.
    pub fn write_batch(
        &self,
        messages: &[Received],
        rejections: &[(RejectionReason, u64)],
    ) -> Result<Vec<bool>, StoreError> {
        self.db.transaction(|tx| {
            let admitted = arbiter::admit(tx, messages)?;
            for (m, a) in messages.iter().zip(&admitted) {
                if *a == arbiter::Admission::Stored {
                    store_body(tx, m)?;
                }
            }
            add_rejections(tx, rejections)?;
            Ok(admitted
                .iter()
                .map(|a| *a == arbiter::Admission::Stored)
                .collect())
        })
    }

    /// Adds to the rejection counters.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn count_rejections(
        &self,
        rejections: &[(RejectionReason, u64)],
    ) -> Result<(), StoreError> {
        self.db.transaction(|tx| add_rejections(tx, rejections))
    }

    /// Every rejection reason with its count (zero for reasons never seen), in
    /// [`RejectionReason::ALL`] order — what `/metrics` exports.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn rejection_counts(&self) -> Result<Vec<(RejectionReason, u64)>, StoreError> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for r in self.db.query("SELECT reason, count FROM rejections", &[])? {
            counts.insert(r.get(0)?, from_i64(r.get(1)?));
        }
        Ok(RejectionReason::ALL
            .iter()
            .map(|r| (*r, counts.get(r.as_str()).copied().unwrap_or(0)))
            .collect())
    }

    /// The count of one rejection reason.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn rejection_count(&self, reason: RejectionReason) -> Result<u64, StoreError> {
        let row = self.db.query_opt(
            "SELECT count FROM rejections WHERE reason = ?1",
            crate::db_params![reason.as_str()],
        )?;
        Ok(match row {
            Some(r) => from_i64(r.get(0)?),
            None => 0,
        })
    }

    /// The highest stored sequence number of each CPE, read from `messages` (tests compare
    /// it with what the arbiter keeps; the ingest starts with empty windows).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn highest_seqs(&self) -> Result<HashMap<String, u64>, StoreError> {
        let mut out = HashMap::new();
        for r in self.db.query(
            "SELECT cpe_id, MAX(seq) FROM messages WHERE kind <> 'state' GROUP BY cpe_id",
            &[],
        )? {
            out.insert(r.get(0)?, from_i64(r.get(1)?));
        }
        Ok(out)
    }

    /// Whether `(cpe_id, seq)` is already stored.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn has_message(&self, cpe_id: &str, seq: u64) -> Result<bool, StoreError> {
        Ok(self
            .db
            .query_opt(
                "SELECT 1 FROM messages WHERE cpe_id = ?1 AND seq = ?2",
                crate::db_params![cpe_id, to_i64(seq)],
            )?
            .is_some())
    }

    /// Number of stored alerts, in total or of one CPE.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn alert_count(&self, cpe_id: Option<&str>) -> Result<u64, StoreError> {
        let n: i64 = match cpe_id {
            Some(id) => self.db.query_one(
                "SELECT COUNT(*) FROM alerts WHERE cpe_id = ?1",
                crate::db_params![id],
            )?,
            None => self.db.query_one("SELECT COUNT(*) FROM alerts", &[])?,
        };
        Ok(from_i64(n))
    }

    /// A value that changes when the enrolled keys may have changed in another process or
    /// replica, so the ingest knows when to reload them: SQLite's `data_version` (any
    /// commit of another connection), PostgreSQL's change counter of the `cpes` table (a
    /// statement trigger bumps it, whoever writes).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn keys_marker(&self) -> Result<String, StoreError> {
        Ok(match self.db.backend() {
            db::Backend::Sqlite => self
                .db
                .query_one::<i64>("PRAGMA data_version", &[])?
                .to_string(),
            db::Backend::Postgres => self
                .db
                .query_one::<i64>("SELECT value FROM counters WHERE name = 'registry'", &[])?
                .to_string(),
        })
    }

    // ---- registry ----

    /// Enrolls a CPE (or re-enrolls a revoked one with a new key).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn upsert_cpe(
        &self,
        cpe_id: &str,
        public_key: &str,
        label: Option<&str>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.db.execute(
            "INSERT INTO cpes (cpe_id, public_key, label, enrolled_at_ms, revoked_at_ms)
             VALUES (?1, ?2, ?3, ?4, NULL)
             ON CONFLICT (cpe_id) DO UPDATE SET public_key = excluded.public_key,
                 label = COALESCE(excluded.label, cpes.label),
                 enrolled_at_ms = excluded.enrolled_at_ms, revoked_at_ms = NULL",
            crate::db_params![cpe_id, public_key, label, to_i64(now_ms)],
        )?;
        Ok(())
    }

    /// Replaces a CPE's broker password hash. Returns whether it is enrolled.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn set_cpe_password_hash(&self, cpe_id: &str, hash: &str) -> Result<bool, StoreError> {
        let n = self.db.execute(
            "UPDATE cpes SET broker_password_hash = ?2 WHERE cpe_id = ?1",
            crate::db_params![cpe_id, hash],
        )?;
        Ok(n > 0)
    }

    /// Marks a CPE revoked. Returns whether it was enrolled.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn revoke_cpe(&self, cpe_id: &str, now_ms: u64) -> Result<bool, StoreError> {
        let n = self.db.execute(
            "UPDATE cpes SET revoked_at_ms = COALESCE(revoked_at_ms, ?2) WHERE cpe_id = ?1",
            crate::db_params![cpe_id, to_i64(now_ms)],
        )?;
        Ok(n > 0)
    }

    /// Every enrolled CPE, by id.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn cpes(&self) -> Result<Vec<CpeRecord>, StoreError> {
        self.db
            .query(
                "SELECT cpe_id, public_key, label, enrolled_at_ms, revoked_at_ms,
                    broker_password_hash
                 FROM cpes ORDER BY cpe_id",
                &[],
            )?
            .iter()
            .map(cpe_record)
            .collect()
    }

    /// One CPE's record.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn cpe(&self, cpe_id: &str) -> Result<Option<CpeRecord>, StoreError> {
        self.db
            .query_opt(
                "SELECT cpe_id, public_key, label, enrolled_at_ms, revoked_at_ms,
                    broker_password_hash
                 FROM cpes WHERE cpe_id = ?1",
                crate::db_params![cpe_id],
            )?
            .as_ref()
            .map(cpe_record)
            .transpose()
    }

    // ---- policy ----

    /// The highest policy version ever signed (0 when none).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn highest_policy_version(&self) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .db
            .query_one("SELECT MAX(version) FROM policies", &[])?;
        Ok(v.map_or(0, from_i64))
    }

    /// Records a signed policy. Fails if the version exists (the counter is monotonic).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn insert_policy(&self, p: &StoredPolicy) -> Result<(), StoreError> {
        Ok(self.db.transaction(|tx| arbiter::insert_policy(tx, p))?)
    }

    /// The newest policy of a scope (and CPE, for per-CPE policy).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn latest_policy(
        &self,
        scope: PolicyScope,
        cpe_id: Option<&str>,
    ) -> Result<Option<StoredPolicy>, StoreError> {
        let Some(r) = self.db.query_opt(
            "SELECT version, cpe_id, policy_json, wire, created_ms FROM policies
             WHERE scope = ?1 AND (CAST(?2 AS TEXT) IS NULL OR cpe_id = ?2)
             ORDER BY version DESC LIMIT 1",
            crate::db_params![scope_name(scope), cpe_id],
        )?
        else {
            return Ok(None);
        };
        Ok(Some(StoredPolicy {
            version: from_i64(r.get(0)?),
            scope,
            cpe_id: r.get(1)?,
            policy_json: r.get(2)?,
            wire: r.get(3)?,
            created_ms: from_i64(r.get(4)?),
        }))
    }

    /// The rollout view: every enrolled CPE with its applied versions and its refusals.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn rollout(&self) -> Result<Vec<RolloutRow>, StoreError> {
        let mut out = Vec::new();
        for r in self.db.query(
            "SELECT c.cpe_id, s.status,
                (SELECT MAX(version) FROM policy_acks a
                  WHERE a.cpe_id = c.cpe_id AND a.scope = 'fleet' AND a.outcome = 'applied'),
                (SELECT MAX(version) FROM policy_acks a
                  WHERE a.cpe_id = c.cpe_id AND a.scope = 'cpe' AND a.outcome = 'applied'),
                s.fleet_policy_version, s.cpe_policy_version
             FROM cpes c LEFT JOIN cpe_state s ON s.cpe_id = c.cpe_id
             ORDER BY c.cpe_id",
            &[],
        )? {
            let ack_fleet: Option<i64> = r.get(2)?;
            let ack_cpe: Option<i64> = r.get(3)?;
            let st_fleet: Option<i64> = r.get(4)?;
            let st_cpe: Option<i64> = r.get(5)?;
            out.push(RolloutRow {
                cpe_id: r.get(0)?,
                status: r.get(1)?,
                fleet_policy_version: ack_fleet.max(st_fleet).map(from_i64),
                cpe_policy_version: ack_cpe.max(st_cpe).map(from_i64),
                refusals: Vec::new(),
            });
        }
        let index: HashMap<String, usize> = out
            .iter()
            .enumerate()
            .map(|(i, row)| (row.cpe_id.clone(), i))
            .collect();
        for r in self.db.query(
            "SELECT cpe_id, scope, version, COALESCE(reason, '') FROM policy_acks
             WHERE outcome = 'refused' ORDER BY version DESC",
            &[],
        )? {
            let cpe: String = r.get(0)?;
            if let Some(&i) = index.get(&cpe) {
                out[i]
                    .refusals
                    .push((r.get(1)?, from_i64(r.get(2)?), r.get(3)?));
            }
        }
        Ok(out)
    }
}

fn cpe_record(r: &db::Row) -> Result<CpeRecord, StoreError> {
    Ok(CpeRecord {
        cpe_id: r.get(0)?,
        public_key: r.get(1)?,
        label: r.get(2)?,
        enrolled_at_ms: r.get::<Option<i64>>(3)?.map(from_i64),
        revoked_at_ms: r.get::<Option<i64>>(4)?.map(from_i64),
        broker_password_hash: r.get(5)?,
    })
}

fn add_rejections(tx: &impl Sql, rejections: &[(RejectionReason, u64)]) -> Result<(), StoreError> {
    for (reason, n) in rejections {
        if *n > 0 {
            tx.execute(
                "INSERT INTO rejections (reason, count) VALUES (?1, ?2)
                 ON CONFLICT (reason) DO UPDATE SET count = rejections.count + excluded.count",
                crate::db_params![reason.as_str(), to_i64(*n)],
            )?;
        }
    }
    Ok(())
}

/// Writes the body rows of a message [`arbiter::admit`] has just stored. Every number from
/// the message goes in saturated ([`to_i64`]): a value no column can hold must not fail the
/// batch (the ingest would retry it forever).
fn store_body(tx: &impl Sql, m: &Received) -> Result<(), StoreError> {
    let e = &m.envelope;
    let seq = to_i64(e.seq);
    match &e.body {
        Body::Alert(a) => store_alert(tx, &e.cpe_id, seq, a),
        Body::Telemetry(t) => store_telemetry(tx, &e.cpe_id, seq, t),
        Body::State(s) => store_state(tx, &e.cpe_id, s, m.received_at_ms),
        Body::PolicyAck(a) => store_ack(tx, &e.cpe_id, a, m.received_at_ms),
        Body::CommandAck(a) => commands::note_ack(tx, &e.cpe_id, a, m.received_at_ms),
        // Agents never send policy or commands; the ingest refuses them before they get here.
        Body::Policy(_) | Body::Command(_) => Ok(()),
    }
}

fn ips_json(ips: &[IpAddr]) -> Result<String, StoreError> {
    let texts: Vec<String> = ips.iter().map(ToString::to_string).collect();
    Ok(serde_json::to_string(&texts)?)
}

fn store_alert(tx: &impl Sql, cpe_id: &str, seq: i64, a: &Alert) -> Result<(), StoreError> {
    let d = &a.device;
    tx.execute(
        "INSERT INTO alerts (cpe_id, seq, mac, at_ms, previous, verdict, score, action,
            action_until_ms, hostname, vendor, ips_json, evidence_json, observed_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT DO NOTHING",
        crate::db_params![
            cpe_id,
            seq,
            &d.mac.to_string(),
            to_i64(a.at_ms),
            a.previous.as_str(),
            d.verdict.as_str(),
            f64::from(d.score),
            d.action.as_str(),
            d.action_until_ms.map(to_i64),
            d.hostname.as_ref(),
            d.vendor.as_ref(),
            &ips_json(&d.ips)?,
            &serde_json::to_string(&d.evidence)?,
            &serde_json::to_string(&a.observed)?,
        ],
    )?;
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

fn store_telemetry(tx: &impl Sql, cpe_id: &str, seq: i64, t: &Telemetry) -> Result<(), StoreError> {
    let start = to_i64(t.window_start_ms);
    tx.execute(
        "INSERT INTO telemetry (cpe_id, seq, window_start_ms, window_secs, public_ip, stats_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT DO NOTHING",
        crate::db_params![
            cpe_id,
            seq,
            start,
            t.window_secs,
            t.public_ip.map(|ip| ip.to_string()).as_ref(),
            &serde_json::to_string(&t.stats)?,
        ],
    )?;
    let observed_at = t
        .window_start_ms
        .saturating_add(u64::from(t.window_secs).saturating_mul(1000));
    let macs: Vec<MacAddr> = t.devices.iter().map(|d| d.mac).collect();
    let distinct = macs.iter().collect::<std::collections::HashSet<_>>().len() == macs.len();
    if distinct {
        // The usual window: every device once. Its rows are read, its reports inserted and
        // its rows written in a few multi-row statements, whatever the number of devices.
        let before = devices::Before::read_many(tx, cpe_id, &macs)?;
        for d in &t.devices {
            let known = before.get(&d.mac).and_then(devices::Before::known);
            history::note_report(tx, cpe_id, seq, observed_at, d, known)?;
        }
        insert_reports(tx, cpe_id, seq, start, &t.devices)?;
        devices::note_reports(
            tx,
            cpe_id,
            t.window_start_ms,
            t.window_secs,
            &t.devices,
            before,
        )?;
    } else {
        // A device named twice in one window: one at a time, each seeing the one before.
        for d in &t.devices {
            let before = devices::Before::read(tx, cpe_id, &d.mac.to_string())?;
            history::note_report(tx, cpe_id, seq, observed_at, d, before.known())?;
            insert_reports(tx, cpe_id, seq, start, std::slice::from_ref(d))?;
            devices::note_report(tx, cpe_id, t.window_start_ms, t.window_secs, d, before)?;
        }
    }
    // Many rows per statement (a window can hold hundreds of connections), cut as the
    // arbiter cuts its batches.
    let mut rest = &t.connections[..];
    for size in arbiter::chunk_sizes(rest.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let texts: Vec<(String, String, Option<String>)> = chunk
            .iter()
            .map(|c| {
                (
                    c.mac.to_string(),
                    c.dst.to_string(),
                    c.nat_ip.map(|ip| ip.to_string()),
                )
            })
            .collect();
        let mut params = Vec::with_capacity(size * 8);
        for (c, (mac, dst, nat_ip)) in chunk.iter().zip(&texts) {
            params.extend(crate::db_params![
                cpe_id,
                mac,
                to_i64(c.at_ms),
                c.src_port,
                dst,
                c.dst_port,
                c.nat_port,
                nat_ip.as_ref(),
            ]);
        }
        tx.execute(
            &format!(
                "INSERT INTO connections (cpe_id, mac, at_ms, src_port, dst, dst_port, nat_port,
                    nat_ip) VALUES {}",
                arbiter::value_rows(size, 8, "")
            ),
            &params,
        )?;
    }
    if let Some(ip) = t.public_ip {
        note_public_ip(tx, cpe_id, ip, t.window_start_ms)?;
        // The CPE's current address follows its telemetry too, not only its retained state.
        tx.execute(
            "UPDATE cpe_state SET public_ip = ?2 WHERE cpe_id = ?1",
            crate::db_params![cpe_id, &ip.to_string()],
        )?;
    }
    Ok(())
}

/// Inserts the device reports of one telemetry window, many rows per statement.
fn insert_reports(
    tx: &impl Sql,
    cpe_id: &str,
    seq: i64,
    window_start: i64,
    reports: &[DeviceReport],
) -> Result<(), StoreError> {
    let texts = reports
        .iter()
        .map(|d| {
            Ok((
                d.mac.to_string(),
                ips_json(&d.ips)?,
                serde_json::to_string(&d.counters)?,
                serde_json::to_string(&d.evidence)?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let mut offset = 0;
    for size in arbiter::window_chunk_sizes(reports.len()) {
        let mut params = Vec::with_capacity(size * 13);
        for (d, (mac, ips, counters, evidence)) in reports[offset..offset + size]
            .iter()
            .zip(&texts[offset..offset + size])
        {
            params.extend(crate::db_params![
                cpe_id,
                seq,
                mac,
                d.verdict.as_str(),
                f64::from(d.score),
                d.action.as_str(),
                d.action_until_ms.map(to_i64),
                d.hostname.as_ref(),
                d.vendor.as_ref(),
                ips,
                counters,
                evidence,
                window_start,
            ]);
        }
        offset += size;
        tx.execute(
            &format!(
                "INSERT INTO device_reports (cpe_id, seq, mac, verdict, score, action,
                    action_until_ms, hostname, vendor, ips_json, counters_json, evidence_json,
                    at_ms) VALUES {}",
                arbiter::value_rows(size, 13, "")
            ),
            &params,
        )?;
    }
    Ok(())
}

/// Extends the current address period of a CPE, or opens a new one when the address changed.
fn note_public_ip(tx: &impl Sql, cpe_id: &str, ip: IpAddr, at_ms: u64) -> Result<(), StoreError> {
    let ip = ip.to_string();
    let at = to_i64(at_ms);
    let latest = tx.query_opt(
        "SELECT ip, first_seen_ms FROM public_ips WHERE cpe_id = ?1
         ORDER BY last_seen_ms DESC LIMIT 1",
        crate::db_params![cpe_id],
    )?;
    let latest: Option<(String, i64)> = match latest {
        Some(r) => Some((r.get(0)?, r.get(1)?)),
        None => None,
    };
    match latest {
        Some((current, first)) if current == ip => {
            tx.execute(
                "UPDATE public_ips
                 SET last_seen_ms = CASE WHEN last_seen_ms > ?4 THEN last_seen_ms ELSE ?4 END
                 WHERE cpe_id = ?1 AND ip = ?2 AND first_seen_ms = ?3",
                crate::db_params![cpe_id, &ip, first, at],
            )?;
        }
        _ => {
            tx.execute(
                "INSERT INTO public_ips (cpe_id, ip, first_seen_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?3) ON CONFLICT DO NOTHING",
                crate::db_params![cpe_id, &ip, at],
            )?;
        }
    }
    Ok(())
}

/// States apply in arrival order: the broker publishes an agent's last will (sealed when it
/// connected) after the agent's newer messages, and it is then the truth.
fn store_state(tx: &impl Sql, cpe_id: &str, s: &State, now_ms: u64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO cpe_state (cpe_id, status, agent_version, fleet_policy_version,
            cpe_policy_version, public_ip, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (cpe_id) DO UPDATE SET status = excluded.status,
            agent_version = excluded.agent_version,
            fleet_policy_version = COALESCE(excluded.fleet_policy_version, cpe_state.fleet_policy_version),
            cpe_policy_version = COALESCE(excluded.cpe_policy_version, cpe_state.cpe_policy_version),
            public_ip = COALESCE(excluded.public_ip, cpe_state.public_ip),
            updated_ms = excluded.updated_ms",
        crate::db_params![
            cpe_id,
            status_name(s.status),
            &s.agent_version,
            s.fleet_policy_version.map(to_i64),
            s.cpe_policy_version.map(to_i64),
            s.public_ip.map(|ip| ip.to_string()).as_ref(),
            to_i64(now_ms),
        ],
    )?;
    Ok(())
}

fn store_ack(tx: &impl Sql, cpe_id: &str, a: &PolicyAck, now_ms: u64) -> Result<(), StoreError> {
    let (outcome, reason) = match &a.outcome {
        AckOutcome::Applied => ("applied", None),
        AckOutcome::Refused { reason } => ("refused", Some(reason.as_str())),
    };
    let version = to_i64(a.policy_version);
    tx.execute(
        "INSERT INTO policy_acks (cpe_id, scope, version, outcome, reason, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (cpe_id, scope, version) DO UPDATE SET outcome = excluded.outcome,
            reason = excluded.reason, at_ms = excluded.at_ms",
        crate::db_params![
            cpe_id,
            scope_name(a.scope),
            version,
            outcome,
            reason,
            to_i64(now_ms)
        ],
    )?;
    if matches!(a.outcome, AckOutcome::Applied) {
        let column = match a.scope {
            PolicyScope::Fleet => "fleet_policy_version",
            PolicyScope::Cpe => "cpe_policy_version",
        };
        tx.execute(
            &format!(
                "UPDATE cpe_state SET {column} = CASE
                    WHEN COALESCE({column}, 0) > ?2 THEN {column} ELSE ?2 END
                 WHERE cpe_id = ?1"
            ),
            crate::db_params![cpe_id, version],
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

    /// Every SQL statement of the controller is under `store/`: no other source file (tests
    /// included) holds the text of one.
    #[test]
    fn sql_lives_in_the_store_alone() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let store = src.join("store");
        let statement = [
            "SELECT ",
            "INSERT INTO",
            "DELETE FROM",
            "CREATE TABLE",
            "CREATE INDEX",
            "ALTER TABLE",
        ];
        let mut stack = vec![src];
        let mut found = Vec::new();
        let mut read = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    if path != store {
                        stack.push(path);
                    }
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                read += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                for (n, line) in text.lines().enumerate() {
                    let code = line.trim_start();
                    if code.starts_with("//") {
                        continue;
                    }
                    let update = code.contains("UPDATE ") && code.contains(" SET ");
                    if update || statement.iter().any(|s| code.contains(s)) {
                        found.push(format!("{}:{}: {code}", path.display(), n + 1));
                    }
                }
            }
        }
        assert!(read > 20, "the sources were read ({read} files)");
        assert!(
            found.is_empty(),
            "SQL outside store/:\n{}",
            found.join("\n")
        );
    }

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
            .db()
            .sqlite_connection()
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, schema::SCHEMA_VERSION);
        let mode: String = store
            .db()
            .sqlite_connection()
            .unwrap()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn duplicates_are_stored_once_and_text_columns_use_protocol_names() {
        for (url, _guard) in db::tests::backends() {
            let store = Store::open_url(&url).unwrap();
            let a = alert_envelope("cpe-1", 7);
            let fresh = store
                .write_batch(&[a.clone(), a.clone()], &[(RejectionReason::Replay, 2)])
                .unwrap();
            assert_eq!(fresh, vec![true, false], "{url}");
            assert_eq!(store.alert_count(None).unwrap(), 1);
            assert_eq!(store.alert_count(Some("cpe-1")).unwrap(), 1);
            assert_eq!(store.alert_count(Some("cpe-2")).unwrap(), 0);
            let r = store
                .db()
                .query_opt("SELECT mac, verdict, action, ips_json FROM alerts", &[])
                .unwrap()
                .unwrap();
            assert_eq!(r.get::<String>(0).unwrap(), "02:11:22:33:44:05");
            assert_eq!(r.get::<String>(1).unwrap(), "infected");
            assert_eq!(r.get::<String>(2).unwrap(), "rate-limit");
            assert_eq!(r.get::<String>(3).unwrap(), r#"["192.168.1.14"]"#);
            let counts = store.rejection_counts().unwrap();
            assert_eq!(counts.len(), RejectionReason::ALL.len());
            assert_eq!(store.rejection_count(RejectionReason::Replay).unwrap(), 2);
            assert_eq!(store.rejection_count(RejectionReason::Stale).unwrap(), 0);
            store
                .count_rejections(&[(RejectionReason::Replay, 3)])
                .unwrap();
            assert_eq!(store.rejection_count(RejectionReason::Replay).unwrap(), 5);
            assert_eq!(store.highest_seqs().unwrap().get("cpe-1"), Some(&7));
            assert!(store.has_message("cpe-1", 7).unwrap());
            assert!(!store.has_message("cpe-1", 8).unwrap());
        }
    }

    fn telemetry_from(cpe: &str, seq: u64, ip: &str) -> Received {
        let mut m = received(cpe, seq, 1_000 * seq, empty_telemetry(60_000 * seq));
        if let Body::Telemetry(t) = &mut m.envelope.body {
            t.public_ip = Some(ip.parse().unwrap());
            let Body::Alert(a) = alert_envelope(cpe, 1).envelope.body else {
                unreachable!("an alert")
            };
            t.devices = vec![a.device];
            t.connections = vec![smtpguard_protocol::ConnRecord {
                mac: MacAddr([2, 0x11, 0x22, 0x33, 0x44, 5]),
                at_ms: 60_000 * seq + 5,
                src_port: 50_000,
                dst: "192.0.2.25".parse().unwrap(),
                dst_port: 25,
                nat_port: Some(40_000),
                nat_ip: Some(ip.parse().unwrap()),
            }];
        }
        m
    }

    /// Two replicas (two `Store`s on one database): each message is stored, with its body
    /// rows, by exactly one of them, and a message below the window is refused by both.
    #[test]
    fn two_replicas_store_each_message_once_and_share_the_replay_window() {
        use smtpguard_protocol::replay::WINDOW;
        for (url, _guard) in db::tests::backends() {
            let a = Store::open_url(&url).unwrap();
            let b = Store::open_url(&url).unwrap();
            let first = a
                .write_batch(
                    &[alert_envelope("cpe-1", 1), alert_envelope("cpe-1", 2)],
                    &[],
                )
                .unwrap();
            assert_eq!(first, vec![true, true], "{url}");
            // The other replica's broker session delivers 2 again, and 3 and a far newer one.
            let second = b
                .write_batch(
                    &[
                        alert_envelope("cpe-1", 2),
                        alert_envelope("cpe-1", 3),
                        alert_envelope("cpe-1", 3 + WINDOW),
                    ],
                    &[],
                )
                .unwrap();
            assert_eq!(second, vec![false, true, true], "{url}");
            // Within the window, never stored: taken. 3 is stored and now at the window's
            // edge; 0 was never stored but is below it: refused, as a replay, with no rows.
            let third = a
                .write_batch(
                    &[
                        alert_envelope("cpe-1", 4),
                        alert_envelope("cpe-1", 3),
                        alert_envelope("cpe-1", 0),
                    ],
                    &[],
                )
                .unwrap();
            assert_eq!(third, vec![true, false, false], "{url}");
            assert!(!b.has_message("cpe-1", 0).unwrap());
            // One alert row per stored message, and one notification for the event.
            assert_eq!(b.alert_count(Some("cpe-1")).unwrap(), 5, "{url}");
            let notified: i64 = a
                .db()
                .query_one("SELECT COUNT(*) FROM notifications", &[])
                .unwrap();
            assert_eq!(notified, 1, "{url}: one infected event, at one time");
            assert_eq!(a.highest_seqs().unwrap().get("cpe-1"), Some(&(3 + WINDOW)));
        }
    }

    /// Two replicas racing the same telemetry batches: every body table holds each
    /// message's rows once.
    #[test]
    fn racing_replicas_write_each_messages_rows_once() {
        for (url, _guard) in db::tests::backends() {
            Store::open_url(&url).unwrap();
            let all: Vec<Received> = (1..=60)
                .map(|seq| telemetry_from(&format!("cpe-{}", seq % 3), seq, "100.64.0.1"))
                .collect();
            let barrier = std::sync::Barrier::new(2);
            let run = |reverse: bool| {
                let store = Store::open_url(&url).unwrap();
                let mut mine = all.clone();
                if reverse {
                    mine.reverse();
                }
                barrier.wait();
                mine.chunks(7)
                    .map(|batch| {
                        let fresh = store.write_batch(batch, &[]).unwrap();
                        fresh.iter().filter(|f| **f).count()
                    })
                    .sum::<usize>()
            };
            let stored: usize = std::thread::scope(|s| {
                let x = s.spawn(|| run(false));
                let y = s.spawn(|| run(true));
                x.join().unwrap() + y.join().unwrap()
            });
            assert_eq!(stored, 60, "{url}: each message stored by one replica");
            let store = Store::open_url(&url).unwrap();
            let count = |table: &str| -> i64 {
                store
                    .db()
                    .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
                    .unwrap()
            };
            assert_eq!(count("messages"), 60, "{url}");
            assert_eq!(count("telemetry"), 60, "{url}");
            assert_eq!(count("device_reports"), 60, "{url}");
            assert_eq!(count("connections"), 60, "{url}");
            assert_eq!(count("devices"), 3, "{url}: one device per router");
            assert_eq!(
                count("public_ips"),
                3,
                "{url}: one address period per router"
            );
            // Each device report is placed at its window's start.
            let misplaced: i64 = store
                .db()
                .query_one(
                    "SELECT COUNT(*) FROM device_reports d JOIN telemetry t
                       ON t.cpe_id = d.cpe_id AND t.seq = d.seq
                     WHERE d.at_ms <> t.window_start_ms",
                    &[],
                )
                .unwrap();
            assert_eq!(misplaced, 0, "{url}");
            // The rows kept at ingest are the fold of what was stored, whoever stored it.
            for cpe in ["cpe-0", "cpe-1", "cpe-2"] {
                let db = store.db();
                let folded = crate::verdicts::devices(
                    &crate::verdicts::load_alerts(db, Some(cpe), 0, 1_000).unwrap(),
                    &crate::verdicts::load_reports(db, Some(cpe), 0, 1_000).unwrap(),
                    0,
                );
                assert_eq!(folded.len(), 1);
                assert_eq!(devices::list(db, Some(cpe), 0).unwrap(), folded, "{url}");
            }
        }
    }

    #[test]
    fn every_connection_of_a_window_is_stored_with_its_fields() {
        for (url, _guard) in db::tests::backends() {
            let store = Store::open_url(&url).unwrap();
            let mut m = telemetry_from("cpe-1", 1, "100.64.0.1");
            if let Body::Telemetry(t) = &mut m.envelope.body {
                let first = t.connections[0].clone();
                t.connections = (0..70u16)
                    .map(|i| smtpguard_protocol::ConnRecord {
                        src_port: 50_000 + i,
                        nat_port: (i % 2 == 0).then_some(40_000 + i),
                        nat_ip: (i % 2 == 0).then_some(first.nat_ip).flatten(),
                        ..first.clone()
                    })
                    .collect();
            }
            assert_eq!(store.write_batch(&[m], &[]).unwrap(), vec![true]);
            let rows = store
                .db()
                .query(
                    "SELECT mac, at_ms, src_port, dst, dst_port, nat_port, nat_ip
                     FROM connections ORDER BY src_port",
                    &[],
                )
                .unwrap();
            assert_eq!(rows.len(), 70, "{url}");
            let last = &rows[69];
            assert_eq!(last.get::<String>(0).unwrap(), "02:11:22:33:44:05");
            assert_eq!(last.get::<u64>(1).unwrap(), 60_005);
            assert_eq!(last.get::<u32>(2).unwrap(), 50_069);
            assert_eq!(last.get::<String>(3).unwrap(), "192.0.2.25");
            assert_eq!(last.get::<u32>(4).unwrap(), 25);
            assert_eq!(last.get::<Option<u32>>(5).unwrap(), None, "{url}");
            assert_eq!(last.get::<Option<String>>(6).unwrap(), None);
            assert_eq!(rows[68].get::<Option<u32>>(5).unwrap(), Some(40_068));
            assert_eq!(
                rows[68].get::<Option<String>>(6).unwrap().as_deref(),
                Some("100.64.0.1"),
                "{url}"
            );
        }
    }

    #[test]
    fn enrolment_policies_and_states_read_back_the_same_on_both_backends() {
        for (url, _guard) in db::tests::backends() {
            let store = Store::open_url(&url).unwrap();
            store
                .upsert_cpe("cpe-1", "ed25519:00", Some("flat 3"), 1)
                .unwrap();
            store.upsert_cpe("cpe-1", "ed25519:01", None, 2).unwrap();
            assert!(store.set_cpe_password_hash("cpe-1", "$7$x").unwrap());
            assert!(!store.set_cpe_password_hash("cpe-9", "$7$x").unwrap());
            assert!(store.revoke_cpe("cpe-1", 5).unwrap());
            assert!(store.revoke_cpe("cpe-1", 9).unwrap());
            let c = store.cpe("cpe-1").unwrap().unwrap();
            assert_eq!(
                c,
                CpeRecord {
                    cpe_id: "cpe-1".into(),
                    public_key: "ed25519:01".into(),
                    label: Some("flat 3".into()),
                    enrolled_at_ms: Some(2),
                    revoked_at_ms: Some(5),
                    broker_password_hash: Some("$7$x".into()),
                },
                "{url}"
            );
            assert_eq!(store.cpes().unwrap(), vec![c]);
            assert_eq!(store.cpe("cpe-9").unwrap(), None);
            assert_eq!(store.highest_policy_version().unwrap(), 0);
            for (version, cpe) in [(1, None), (2, Some("cpe-1")), (3, None)] {
                store
                    .insert_policy(&StoredPolicy {
                        version,
                        scope: if cpe.is_some() {
                            PolicyScope::Cpe
                        } else {
                            PolicyScope::Fleet
                        },
                        cpe_id: cpe.map(str::to_string),
                        policy_json: format!("{{\"v\":{version}}}"),
                        wire: vec![version as u8],
                        created_ms: version,
                    })
                    .unwrap();
            }
            assert_eq!(store.highest_policy_version().unwrap(), 3);
            let fleet = store
                .latest_policy(PolicyScope::Fleet, None)
                .unwrap()
                .unwrap();
            assert_eq!((fleet.version, fleet.wire), (3, vec![3]), "{url}");
            let mine = store
                .latest_policy(PolicyScope::Cpe, Some("cpe-1"))
                .unwrap()
                .unwrap();
            assert_eq!(mine.version, 2);
            assert!(store
                .latest_policy(PolicyScope::Cpe, Some("cpe-2"))
                .unwrap()
                .is_none());
            // A state, then a telemetry address and an applied ack lift what it says.
            let state = received(
                "cpe-1",
                1,
                10,
                Body::State(State {
                    status: Status::Online,
                    agent_version: "1.0".into(),
                    fleet_policy_version: Some(1),
                    cpe_policy_version: None,
                    public_ip: None,
                }),
            );
            let ack = received(
                "cpe-1",
                2,
                20,
                Body::PolicyAck(PolicyAck {
                    scope: PolicyScope::Cpe,
                    policy_version: 2,
                    outcome: AckOutcome::Applied,
                }),
            );
            store
                .write_batch(&[state, ack, telemetry_from("cpe-1", 3, "100.64.0.9")], &[])
                .unwrap();
            let r = store
                .db()
                .query_opt(
                    "SELECT status, fleet_policy_version, cpe_policy_version, public_ip
                     FROM cpe_state WHERE cpe_id = 'cpe-1'",
                    &[],
                )
                .unwrap()
                .unwrap();
            assert_eq!(r.get::<String>(0).unwrap(), "online", "{url}");
            assert_eq!(r.get::<Option<u64>>(1).unwrap(), Some(1));
            assert_eq!(r.get::<Option<u64>>(2).unwrap(), Some(2), "{url}");
            assert_eq!(
                r.get::<Option<String>>(3).unwrap().as_deref(),
                Some("100.64.0.9")
            );
        }
    }

    #[test]
    fn another_replicas_enrolment_changes_the_keys_marker() {
        for (url, _guard) in db::tests::backends() {
            let ingest = Store::open_url(&url).unwrap();
            let cli = Store::open_url(&url).unwrap();
            let before = ingest.keys_marker().unwrap();
            assert_eq!(ingest.keys_marker().unwrap(), before, "{url}: stable");
            cli.upsert_cpe("cpe-1", "ed25519:00", None, 1).unwrap();
            let enrolled = ingest.keys_marker().unwrap();
            assert_ne!(enrolled, before, "{url}");
            cli.set_cpe_password_hash("cpe-1", "$7$new").unwrap();
            assert_ne!(ingest.keys_marker().unwrap(), enrolled, "{url}");
        }
    }

    #[test]
    fn rollout_shows_applied_versions_and_refusals() {
        for (url, _guard) in db::tests::backends() {
            let store = Store::open_url(&url).unwrap();
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
            assert_eq!(rows.len(), 1, "{url}");
            assert_eq!(rows[0].fleet_policy_version, Some(3));
            assert_eq!(
                rows[0].refusals,
                vec![("fleet".to_string(), 4, "bad signature".to_string())],
                "{url}"
            );
        }
    }
}
