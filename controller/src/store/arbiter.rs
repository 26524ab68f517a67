//! The ingest decisions that must hold across controller replicas, made by the database
//! (either backend, through [`Db`]):
//!
//! - [`admit`]: each verified message is stored once per `(cpe_id, seq)`
//!   (`INSERT .. ON CONFLICT DO NOTHING`: [`Admission::Stored`] or
//!   [`Admission::Duplicate`]), and the per-CPE replay check runs in the same transaction:
//!   a sequence number [`WINDOW`] or more below the CPE's highest stored one is refused
//!   ([`Admission::BelowWindow`]), as the ingest's in-memory [`ReplayWindow`] does. State
//!   messages skip the window (an agent's last will is sealed when it connects and published
//!   after its newer messages) but are still stored once.
//! - [`publish_policy`]: policy versions from a row-locked counter, never repeated when two
//!   replicas publish at once, and allocated in commit order.
//! - [`try_lead`]: a leader lease per periodic job, so each runs on one replica at a time.
//!
//! # How the replay check is exact across replicas
//! A batch locks each of its CPEs' `cpe_seq` rows (an upsert that returns the highest stored
//! sequence number) before deciding that CPE's messages, and raises the number in the same
//! transaction. Another replica with messages of the same CPE waits for the commit and then
//! decides against the new number; the `(cpe_id, seq)` primary key decides duplicates. The
//! rows are locked in `cpe_id` order and messages inserted in `(cpe_id, seq)` order whatever
//! the arrival order, so two replicas do not deadlock on each other's batches (and if the
//! server ever aborts one for a deadlock, [`Db::transaction`] runs it again). The in-memory [`ReplayWindow`] of each replica stays
//! as a cheap first filter: it only refuses what this replica already accepted or what is
//! below its window, both of which the database would refuse too.
//!
//! Retention must not undo this: the highest number lives in `cpe_seq`, not in the
//! `messages` rows, so deleting old messages never lets a message below the window in; a
//! message *within* the window whose row was deleted would be taken as new, which the
//! ingest's freshness limit (`ingest.max_age_secs`) prevents as long as retention keeps
//! messages at least that long.
//!
//! # Policy versions: a counter rather than a PostgreSQL sequence
//! A sequence never repeats, but it hands out numbers in call order, not commit order: a
//! replica can commit and publish version 8 while another still signs 7, and 7, committed
//! and published last, becomes the broker's retained policy although every agent that
//! applied 8 refuses it as older: the fleet ends split between two policies. The counter row
//! stays locked until the publishing transaction commits, so versions are allocated in
//! commit order and the newest version is the newest decision. Publishing is rare (an
//! operator's action), so the wait costs nothing. Two publishes can still reach the broker
//! in the other order after their commits; the retained-policy watch (republish the newest
//! stored version) is what settles that.
//!
//! [`ReplayWindow`]: smtpguard_protocol::ReplayWindow

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};
use smtpguard_protocol::replay::WINDOW;
use smtpguard_protocol::{Kind, PolicyScope, RejectionReason};

use super::db::{Db, DbError, LeaseTarget, Param, Tx};
use super::{scope_name, Received, StoredPolicy};
use crate::db_params;

/// What the database decided for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// New: stored now. Its body tables are to be written in the same transaction.
    Stored,
    /// `(cpe_id, seq)` was already stored (by this replica or another); nothing changes.
    Duplicate,
    /// The sequence number is [`WINDOW`] or more below the CPE's highest stored one.
    BelowWindow {
        /// The CPE's highest stored sequence number when it was decided.
        highest: u64,
    },
}

impl Admission {
    /// The rejection to count for it (`/metrics`), as the ingest counts replays today.
    pub fn rejection(self) -> Option<RejectionReason> {
        match self {
            Admission::Stored => None,
            Admission::Duplicate | Admission::BelowWindow { .. } => Some(RejectionReason::Replay),
        }
    }
}

/// Rows per multi-row statement at most. A batch goes in chunks of this many and the rest
/// in power-of-two chunks, so each statement has at most seven texts to prepare.
const ROWS_PER_STATEMENT: usize = 64;

/// The sizes to cut `n` rows into (see [`ROWS_PER_STATEMENT`]).
pub(super) fn chunk_sizes(mut n: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    while n > 0 {
        let size = if n >= ROWS_PER_STATEMENT {
            ROWS_PER_STATEMENT
        } else {
            1 << n.ilog2()
        };
        sizes.push(size);
        n -= size;
    }
    sizes
}

/// The sizes to cut `n` rows into when `n` is small and takes few values (the devices of
/// one telemetry window): [`ROWS_PER_STATEMENT`]-row chunks and the rest in one, so a
/// window of ten devices is one statement, not 8 + 2.
pub(super) fn window_chunk_sizes(n: usize) -> Vec<usize> {
    let mut sizes = vec![ROWS_PER_STATEMENT; n / ROWS_PER_STATEMENT];
    if n % ROWS_PER_STATEMENT > 0 {
        sizes.push(n % ROWS_PER_STATEMENT);
    }
    sizes
}

/// `rows` rows of `columns` numbered placeholders each, then `extra`:
/// `(?1, ?2 extra), (?3, ?4 extra)`.
pub(super) fn value_rows(rows: usize, columns: usize, extra: &str) -> String {
    let mut sql = String::new();
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("?{}", r * columns + c + 1));
        }
        sql.push_str(extra);
        sql.push(')');
    }
    sql
}

/// Decides and stores the messages of a batch in the caller's transaction; the decisions
/// come back in the order of `messages`. See the module docs for the rules.
///
/// Three multi-row statements per batch, whatever its size (up to [`ROWS_PER_STATEMENT`]
/// rows each): lock the batch's CPEs in `cpe_id` order and read their highest sequence
/// numbers; insert the messages not below the window, getting back those that were new;
/// raise the highest numbers. Within one CPE, a message's window is decided against the
/// highest number before the batch: the batch's own new messages of that CPE are all lower
/// (they are taken in ascending order) and so cannot push it out.
///
/// # Errors
/// [`DbError`]; the caller's transaction then rolls back and nothing of the batch stays.
pub fn admit(tx: &mut Tx<'_>, messages: &[Received]) -> Result<Vec<Admission>, DbError> {
    let key = |i: usize| {
        (
            messages[i].envelope.cpe_id.as_str(),
            messages[i].envelope.seq,
        )
    };
    let windowed = |i: usize| messages[i].envelope.kind() != Kind::State;
    let mut order: Vec<usize> = (0..messages.len()).collect();
    // Stable: of two copies of one message, the first to arrive is the one stored.
    order.sort_by_key(|&i| key(i));
    let mut out = vec![Admission::Duplicate; messages.len()];

    // 1. Lock every CPE of the batch, in order, and read its highest stored number.
    let mut cpes: Vec<&str> = order.iter().map(|&i| key(i).0).collect();
    cpes.dedup();
    let mut before: HashMap<String, Option<u64>> = HashMap::with_capacity(cpes.len());
    let mut rest = &cpes[..];
    for size in chunk_sizes(cpes.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let sql = format!(
            "INSERT INTO cpe_seq (cpe_id, highest_seq) VALUES {}
             ON CONFLICT (cpe_id) DO UPDATE SET highest_seq = cpe_seq.highest_seq
             RETURNING cpe_id, highest_seq",
            value_rows(size, 1, ", NULL")
        );
        let params: Vec<Param<'_>> = chunk.iter().map(|c| Param::Text(c)).collect();
        for row in tx.query(&sql, &params)? {
            before.insert(row.get(0)?, row.get(1)?);
        }
    }
    let highest_before = |cpe: &str| before.get(cpe).copied().flatten();

    // 2. The window, and copies within the batch.
    let mut candidates = Vec::with_capacity(order.len());
    let mut previous = None;
    for &i in &order {
        let (cpe, seq) = key(i);
        if previous == Some((cpe, seq)) {
            continue;
        }
        previous = Some((cpe, seq));
        if let Some(h) = highest_before(cpe).filter(|_| windowed(i)) {
            if seq <= h && h - seq >= WINDOW {
                out[i] = Admission::BelowWindow { highest: h };
                continue;
            }
        }
        candidates.push(i);
    }

    // 3. Insert; what comes back is new.
    let mut inserted: HashSet<(String, u64)> = HashSet::with_capacity(candidates.len());
    let mut rest = &candidates[..];
    for size in chunk_sizes(candidates.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let sql = format!(
            "INSERT INTO messages (cpe_id, seq, kind, sent_at_ms, received_at_ms, wire)
             VALUES {} ON CONFLICT (cpe_id, seq) DO NOTHING RETURNING cpe_id, seq",
            value_rows(size, 6, "")
        );
        let mut params = Vec::with_capacity(size * 6);
        for &i in chunk {
            let m = &messages[i];
            params.extend(db_params![
                &m.envelope.cpe_id,
                m.envelope.seq,
                m.envelope.kind().as_str(),
                m.envelope.sent_at_ms,
                m.received_at_ms,
                &m.wire
            ]);
        }
        for row in tx.query(&sql, &params)? {
            inserted.insert((row.get(0)?, row.get(1)?));
        }
    }

    // 4. The decisions, and each CPE's new highest number.
    let mut raised: BTreeMap<&str, u64> = BTreeMap::new();
    for &i in &candidates {
        let (cpe, seq) = key(i);
        if !inserted.contains(&(cpe.to_string(), seq)) {
            continue;
        }
        out[i] = Admission::Stored;
        if windowed(i) && highest_before(cpe).is_none_or(|h| seq > h) {
            let top = raised.entry(cpe).or_insert(seq);
            *top = (*top).max(seq);
        }
    }
    let raised: Vec<(&str, u64)> = raised.into_iter().collect();
    let mut rest = &raised[..];
    for size in chunk_sizes(raised.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let sql = format!(
            "INSERT INTO cpe_seq (cpe_id, highest_seq) VALUES {}
             ON CONFLICT (cpe_id) DO UPDATE SET highest_seq = excluded.highest_seq",
            value_rows(size, 2, "")
        );
        let mut params = Vec::with_capacity(size * 2);
        for (cpe, seq) in chunk {
            params.extend(db_params![*cpe, *seq]);
        }
        tx.execute(&sql, &params)?;
    }
    Ok(out)
}

/// [`admit`] in a transaction of its own.
///
/// # Errors
/// [`DbError`]; nothing of the batch is stored then.
pub fn admit_batch(db: &Db, messages: &[Received]) -> Result<Vec<Admission>, DbError> {
    db.transaction(|tx| admit(tx, messages))
}

/// The highest stored sequence number of each CPE, as the replay check sees it (to restore
/// the in-memory windows at start).
///
/// # Errors
/// [`DbError`].
pub fn highest_seqs(db: &Db) -> Result<Vec<(String, u64)>, DbError> {
    db.query(
        "SELECT cpe_id, highest_seq FROM cpe_seq WHERE highest_seq IS NOT NULL ORDER BY cpe_id",
        &[],
    )?
    .iter()
    .map(|r| Ok((r.get(0)?, r.get(1)?)))
    .collect()
}

/// Allocates the next policy version in the caller's transaction; the counter row stays
/// locked until it ends (see the module docs).
///
/// # Errors
/// [`DbError`].
pub fn next_policy_version(tx: &mut Tx<'_>) -> Result<u64, DbError> {
    // Above every stored version too, in case a policy was stored without the counter
    // (`Store::insert_policy`, which stores a version chosen elsewhere).
    let row = tx.query_opt(
        "UPDATE counters SET value = 1 + CASE
             WHEN value >= (SELECT COALESCE(MAX(version), 0) FROM policies) THEN value
             ELSE (SELECT COALESCE(MAX(version), 0) FROM policies) END
         WHERE name = 'policy_version'
         RETURNING value",
        &[],
    )?;
    match row {
        Some(row) => row.get(0),
        None => Err(DbError::Column {
            index: 0,
            detail: "counters has no policy_version row (store schema not applied)".into(),
        }),
    }
}

/// Stores a signed policy in the caller's transaction.
///
/// # Errors
/// [`DbError`], e.g. when its version already exists.
pub fn insert_policy(tx: &mut Tx<'_>, p: &StoredPolicy) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO policies (version, scope, cpe_id, policy_json, wire, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        db_params![
            p.version,
            scope_name(p.scope),
            p.cpe_id.as_ref(),
            &p.policy_json,
            &p.wire,
            p.created_ms
        ],
    )?;
    Ok(())
}

/// Publishes a policy in one transaction: allocates its version, has `sign` make the
/// policy's JSON and signed bytes for that version, and stores it. `sign` may run more than
/// once (see [`Db::transaction`]); it must only sign.
///
/// # Errors
/// `sign`'s error or [`DbError`] (converted); nothing is stored then.
pub fn publish_policy<E: From<DbError>>(
    db: &Db,
    scope: PolicyScope,
    cpe_id: Option<&str>,
    created_ms: u64,
    mut sign: impl FnMut(u64) -> Result<(String, Vec<u8>), E>,
) -> Result<StoredPolicy, E> {
    db.transaction(|tx| {
        let version = next_policy_version(tx)?;
        let (policy_json, wire) = sign(version)?;
        let stored = StoredPolicy {
            version,
            scope,
            cpe_id: cpe_id.map(str::to_string),
            policy_json,
            wire,
            created_ms,
        };
        insert_policy(tx, &stored)?;
        Ok(stored)
    })
}

/// How long [`Lease::is_held`] waits for the database to answer.
const LEASE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

enum Hold {
    /// A session-level advisory lock, held by this connection until it unlocks or closes
    /// (a replica that dies closes it).
    Postgres {
        client: Box<postgres::Client>,
        key: i64,
    },
    /// An exclusive `flock` on a file beside the database, released when the file is
    /// closed (a process that dies closes it).
    File {
        /// Kept open: closing it releases the lock.
        _lock: std::fs::File,
    },
    /// An in-memory database: nobody else can see it.
    Process,
}

/// The right to run one periodic job; released when dropped (or when the process dies).
pub struct Lease {
    job: String,
    hold: Hold,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("job", &self.job)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// The job it is for.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// Whether it is still held. A PostgreSQL lease is lost with its connection (a server
    /// restart, a network cut, an administrator ending it): a leader checks before each run
    /// and asks [`try_lead`] again when it returns false.
    pub fn is_held(&mut self) -> bool {
        match &mut self.hold {
            Hold::Postgres { client, .. } => client.is_valid(LEASE_CHECK_TIMEOUT).is_ok(),
            Hold::File { .. } | Hold::Process => true,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Hold::Postgres { client, key } = std::mem::replace(&mut self.hold, Hold::Process) {
            // Unlock before closing: the server releases a closed session's locks only
            // when its backend has exited, which is later than the close.
            let release = move || {
                let mut client = client;
                let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&key]);
            };
            // A leader's task aborted at shutdown drops its lease on a runtime thread.
            super::db::close_off_runtime("lease-release", release);
        }
    }
}

/// The advisory lock key of `job`: the first 8 bytes of a hash of its name.
fn lease_key(job: &str) -> i64 {
    let digest = Sha256::digest(format!("smtpguard lease: {job}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Becomes the leader of `job` if nobody is: `Some(lease)` while this replica runs it,
/// `None` when another holds it (ask again at the next period). PostgreSQL: an advisory
/// lock on a dedicated connection. SQLite: a lock file beside the database (one host);
/// in memory: always granted.
///
/// # Errors
/// [`DbError`] when the database or the lock file cannot be reached.
pub fn try_lead(db: &Db, job: &str) -> Result<Option<Lease>, DbError> {
    let hold = match db.lease_target() {
        LeaseTarget::Postgres(connect) => {
            let mut client = connect()?;
            let key = lease_key(job);
            let got: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])?
                .try_get(0)?;
            if !got {
                return Ok(None);
            }
            Hold::Postgres {
                client: Box::new(client),
                key,
            }
        }
        LeaseTarget::File(db_path) => {
            let safe: String = job
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let mut path = db_path.as_os_str().to_owned();
            path.push(format!(".lease-{safe}"));
            let path = PathBuf::from(path);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|source| DbError::LockFile {
                    path: path.clone(),
                    source,
                })?;
            // SAFETY: flock on a descriptor we own and keep open for the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::WouldBlock {
                    return Ok(None);
                }
                return Err(DbError::LockFile { path, source: err });
            }
            Hold::File { _lock: file }
        }
        LeaseTarget::Process => Hold::Process,
    };
    Ok(Some(Lease {
        job: job.to_string(),
        hold,
    }))
}

/// Ends every other session of this PostgreSQL database that holds an advisory lock (a
/// lease), as a server restart or an administrator would, and waits until each is gone;
/// returns how many it ended (tests).
#[cfg(test)]
pub(crate) fn end_lease_sessions(db: &Db) -> Result<usize, DbError> {
    let ended = db.query(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        &[],
    )?;
    let mut n = 0;
    for row in ended {
        if row.get::<bool>(0)? {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::super::db::tests::backends;
    use super::super::db::Backend;
    use super::*;
    use smtpguard_protocol::{AgentStats, Body, Envelope, State, Status, Telemetry};

    fn message(cpe: &str, seq: u64) -> Received {
        Received {
            envelope: Envelope {
                version: 1,
                cpe_id: cpe.into(),
                seq,
                sent_at_ms: 1_000 + seq,
                body: Body::Telemetry(Telemetry {
                    window_start_ms: 0,
                    window_secs: 60,
                    public_ip: None,
                    stats: AgentStats::default(),
                    devices: vec![],
                    connections: vec![],
                }),
            },
            wire: vec![seq as u8; 200],
            received_at_ms: 2_000 + seq,
        }
    }

    fn state(cpe: &str, seq: u64) -> Received {
        let mut m = message(cpe, seq);
        m.envelope.body = Body::State(State {
            status: Status::Offline,
            agent_version: "t".into(),
            fleet_policy_version: None,
            cpe_policy_version: None,
            public_ip: None,
        });
        m
    }

    /// The database at `url` with the store's schema (its `cpe_seq`, `counters`, `messages`
    /// and `policies` are the arbiter's tables).
    fn open(url: &str) -> std::sync::Arc<Db> {
        crate::store::Store::open_url(url).unwrap().into_db()
    }

    fn stored_count(db: &Db) -> u64 {
        db.query_opt("SELECT COUNT(*) FROM messages", &[])
            .unwrap()
            .unwrap()
            .get(0)
            .unwrap()
    }

    use Admission::{BelowWindow, Duplicate, Stored};

    #[test]
    fn batches_are_cut_into_few_statement_shapes() {
        assert_eq!(chunk_sizes(0), Vec::<usize>::new());
        assert_eq!(chunk_sizes(1), vec![1]);
        assert_eq!(chunk_sizes(140), vec![64, 64, 8, 4]);
        assert_eq!(chunk_sizes(127), vec![64, 32, 16, 8, 4, 2, 1]);
        assert_eq!(value_rows(2, 2, ""), "(?1, ?2), (?3, ?4)");
        assert_eq!(value_rows(2, 1, ", NULL"), "(?1, NULL), (?2, NULL)");
    }

    #[test]
    fn each_message_is_stored_once_and_old_ones_are_refused_across_restarts() {
        for (url, _guard) in backends() {
            let db = open(&url);
            let got =
                admit_batch(&db, &[message("a", 1), message("a", 2), message("a", 1)]).unwrap();
            assert_eq!(got, vec![Stored, Stored, Duplicate], "{url}");
            // Out of order within a batch: decided per message, answered in input order.
            let got =
                admit_batch(&db, &[message("a", 2000), message("b", 5), message("a", 3)]).unwrap();
            assert_eq!(got, vec![Stored, Stored, Stored], "{url}");
            // A replica that starts later (a new handle) sees the same state.
            let other = open(&url);
            let got = admit_batch(
                &other,
                &[
                    // Within the window and never stored: taken.
                    message("a", 2000 - (WINDOW - 1)),
                    // Below the window: refused even though it was never stored.
                    message("a", 2000 - WINDOW),
                    message("a", 2000),
                    // Another CPE's window is its own.
                    message("b", 4),
                    // A last will older than the window is still stored, once.
                    state("a", 1500 - WINDOW),
                    state("a", 1500 - WINDOW),
                ],
            )
            .unwrap();
            assert_eq!(
                got,
                vec![
                    Stored,
                    BelowWindow { highest: 2000 },
                    Duplicate,
                    Stored,
                    Stored,
                    Duplicate
                ],
                "{url}"
            );
            assert_eq!(
                highest_seqs(&db).unwrap(),
                vec![("a".to_string(), 2000), ("b".to_string(), 5)]
            );
            assert_eq!(stored_count(&db), 8, "{url}");
            assert_eq!(
                BelowWindow { highest: 1 }.rejection(),
                Some(RejectionReason::Replay)
            );
            assert_eq!(Stored.rejection(), None);
        }
    }

    #[test]
    fn a_failed_batch_changes_neither_messages_nor_the_window() {
        for (url, _guard) in backends() {
            let db = open(&url);
            admit_batch(&db, &[message("a", 10)]).unwrap();
            let err = db
                .transaction(|tx| {
                    admit(tx, &[message("a", 5000)])?;
                    // Fails: no such table. The whole transaction goes.
                    tx.execute("INSERT INTO nowhere (x) VALUES (1)", &[])
                })
                .unwrap_err();
            assert!(!err.is_retryable(), "{err}");
            assert_eq!(
                highest_seqs(&db).unwrap(),
                vec![("a".to_string(), 10)],
                "{url}"
            );
            assert_eq!(
                admit_batch(&db, &[message("a", 5000)]).unwrap(),
                vec![Stored]
            );
        }
    }

    #[test]
    fn two_replicas_racing_the_same_messages_and_publishes_store_each_once() {
        const CPES: u64 = 4;
        const SEQS: u64 = 250;
        const PUBLISHES: usize = 25;
        for (url, _guard) in backends() {
            open(&url);
            let all: Vec<Received> = (0..CPES)
                .flat_map(|c| (1..=SEQS).map(move |s| message(&format!("cpe-{c}"), s)))
                .collect();
            let barrier = std::sync::Barrier::new(2);
            let run = |reverse: bool| {
                let db = open(&url);
                let mut mine = all.clone();
                if reverse {
                    mine.reverse();
                }
                barrier.wait();
                let mut decided = Vec::new();
                let mut versions = Vec::new();
                for (n, batch) in mine.chunks(40).enumerate() {
                    let got = admit_batch(&db, batch).unwrap();
                    for (m, a) in batch.iter().zip(got) {
                        decided.push((m.envelope.cpe_id.clone(), m.envelope.seq, a));
                    }
                    if n < PUBLISHES {
                        let p = publish_policy(&db, PolicyScope::Fleet, None, 1, |v| {
                            Ok::<_, DbError>((format!("{{\"v\":{v}}}"), vec![1]))
                        })
                        .unwrap();
                        versions.push(p.version);
                    }
                }
                (decided, versions)
            };
            let results = std::thread::scope(|s| {
                let a = s.spawn(|| run(false));
                let b = s.spawn(|| run(true));
                [a.join().unwrap(), b.join().unwrap()]
            });
            let mut stored = std::collections::HashMap::new();
            let mut versions = Vec::new();
            for (decided, v) in results {
                versions.extend(v);
                for (cpe, seq, a) in decided {
                    assert_ne!(a, BelowWindow { highest: 0 }, "nothing is old here");
                    *stored.entry((cpe, seq)).or_insert(0) += u32::from(a == Stored);
                }
            }
            assert_eq!(stored.len() as u64, CPES * SEQS);
            assert!(
                stored.values().all(|n| *n == 1),
                "{url}: every message stored by exactly one replica"
            );
            let db = open(&url);
            assert_eq!(stored_count(&db), CPES * SEQS, "{url}");
            let highest = highest_seqs(&db).unwrap();
            assert!(
                highest.iter().all(|(_, h)| *h == SEQS),
                "{url}: {highest:?}"
            );
            versions.sort_unstable();
            let expected: Vec<u64> = (1..=2 * PUBLISHES as u64).collect();
            assert_eq!(versions, expected, "{url}: versions unique and gapless");
        }
    }

    #[test]
    fn the_lease_is_held_by_one_replica_and_moves_when_it_lets_go() {
        for (url, _guard) in backends() {
            let first = open(&url);
            let second = open(&url);
            let lease = try_lead(&first, "retention")
                .unwrap()
                .expect("free at first");
            assert_eq!(lease.job(), "retention");
            assert!(try_lead(&second, "retention").unwrap().is_none(), "{url}");
            assert!(
                try_lead(&second, "offline-watch").unwrap().is_some(),
                "{url}: each job has its own lease"
            );
            drop(lease);
            let mut lease = try_lead(&second, "retention")
                .unwrap()
                .expect("moved to the second replica");
            assert!(lease.is_held());
            assert!(try_lead(&first, "retention").unwrap().is_none(), "{url}");
        }
    }

    #[test]
    fn a_postgres_lease_moves_when_its_holders_connection_dies() {
        let url = smtpguard_pgtest::database();
        let first = open(&url);
        let second = open(&url);
        let mut lease = try_lead(&first, "retention").unwrap().unwrap();
        assert!(try_lead(&second, "retention").unwrap().is_none());
        // The replica's process dies: the server ends its session (and waits until it has).
        assert_eq!(end_lease_sessions(&second).unwrap(), 1);
        assert!(!lease.is_held(), "the first replica learns that it lost it");
        assert!(try_lead(&second, "retention").unwrap().is_some());
        drop(lease);
    }

    #[test]
    fn on_an_existing_store_file_the_arbiter_continues_its_sequence_numbers_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.db");
        let store = super::super::Store::open(&path).unwrap();
        store.write_batch(&[message("a", 7)], &[]).unwrap();
        store
            .insert_policy(&StoredPolicy {
                version: 3,
                scope: PolicyScope::Fleet,
                cpe_id: None,
                policy_json: "{}".into(),
                wire: vec![],
                created_ms: 1,
            })
            .unwrap();
        let db = open(&format!("sqlite:{}", path.display()));
        assert_eq!(db.backend(), Backend::Sqlite);
        assert_eq!(highest_seqs(&db).unwrap(), vec![("a".to_string(), 7)]);
        assert_eq!(
            admit_batch(&db, &[message("a", 7), message("a", 8)]).unwrap(),
            vec![Duplicate, Stored]
        );
        let p = publish_policy(&db, PolicyScope::Cpe, Some("a"), 2, |_| {
            Ok::<_, DbError>(("{}".into(), vec![]))
        })
        .unwrap();
        assert_eq!(p.version, 4);
        // The Store sees what the arbiter stored.
        assert!(store.has_message("a", 8).unwrap());
        assert_eq!(store.highest_policy_version().unwrap(), 4);
    }

    /// Not a benchmark harness, a measurement in the same run for both backends: 10,000
    /// messages in batches of 500 (the ingest's default batch is 512) from CPEs seen for the
    /// first time, the same again (all duplicates), then each CPE's next messages (CPEs
    /// known: the steady state); from 100 CPEs with 100 messages each, and from 10,000 CPEs
    /// with one each (a fleet's telemetry round: every message of a batch from another CPE).
    #[test]
    fn ten_thousand_messages_are_stored_once_on_each_backend() {
        let shapes: [(&str, u64, u64); 2] =
            [("100 CPEs x 100", 100, 100), ("10000 CPEs x 1", 10_000, 1)];
        for (shape, cpes, per_cpe) in shapes {
            let round = |first: u64| -> Vec<Received> {
                (0..cpes)
                    .flat_map(|c| {
                        (first..first + per_cpe).map(move |s| message(&format!("cpe-{c:05}"), s))
                    })
                    .collect()
            };
            let (first, next) = (round(1), round(1 + per_cpe));
            let mut timings = Vec::new();
            for (url, _guard) in backends() {
                let db = open(&url);
                let timed = |messages: &[Received], expected: Admission| {
                    let start = std::time::Instant::now();
                    for batch in messages.chunks(500) {
                        let got = admit_batch(&db, batch).unwrap();
                        assert!(got.iter().all(|a| *a == expected));
                    }
                    start.elapsed().as_millis()
                };
                let new = timed(&first, Stored);
                let again = timed(&first, Duplicate);
                let steady = timed(&next, Stored);
                assert_eq!(stored_count(&db), 20_000);
                let highest = highest_seqs(&db).unwrap();
                assert_eq!(highest.len() as u64, cpes);
                assert!(highest.iter().all(|(_, h)| *h == 2 * per_cpe));
                timings.push((db.backend(), new, again, steady));
            }
            for (backend, new, again, steady) in &timings {
                println!(
                    "arbiter: {shape}: {backend:?}: 10000 messages: new CPEs {new} ms, \
                     duplicates {again} ms, known CPEs {steady} ms"
                );
            }
            if let [(_, s_new, _, s_steady), (_, p_new, _, p_steady)] = timings[..] {
                println!(
                    "arbiter: {shape}: PostgreSQL / SQLite time: new CPEs {:.2}, known CPEs {:.2}",
                    p_new as f64 / s_new.max(1) as f64,
                    p_steady as f64 / s_steady.max(1) as f64
                );
            }
        }
    }
}
