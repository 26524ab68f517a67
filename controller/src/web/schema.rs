//! The product tables the web UI owns (households, subscriber tokens, sessions, release
//! requests, abuse reports, campaigns), migrated after the ingest's schema.
//!
//! The ingest's migrations use `PRAGMA user_version`; these keep their own version in
//! `product_schema`, so the two sets evolve independently. Append, never edit.

use rusqlite::{Connection, OptionalExtension};

/// The migrations, in order.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE households (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE household_cpes (
    cpe_id TEXT PRIMARY KEY,
    household_id INTEGER NOT NULL REFERENCES households(id)
);
CREATE INDEX household_cpes_by_household ON household_cpes (household_id);
CREATE TABLE subscriber_tokens (
    token_hash TEXT PRIMARY KEY,
    household_id INTEGER NOT NULL REFERENCES households(id),
    created_ms INTEGER NOT NULL
);
CREATE TABLE web_sessions (
    session_hash TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    household_id INTEGER,
    csrf TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE release_requests (
    id INTEGER PRIMARY KEY,
    household_id INTEGER NOT NULL REFERENCES households(id),
    cpe_id TEXT NOT NULL,
    mac TEXT NOT NULL,
    requested_ms INTEGER NOT NULL,
    note TEXT NOT NULL,
    status TEXT NOT NULL,
    decided_ms INTEGER
);
CREATE TABLE abuse_reports (
    id INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    public_ip TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    dest_ip TEXT,
    dest_port INTEGER,
    source_port INTEGER,
    feedback_type TEXT,
    message_id TEXT,
    confidence TEXT NOT NULL,
    cpe_id TEXT,
    mac TEXT,
    result_json TEXT NOT NULL
);
CREATE TABLE campaigns (
    id TEXT PRIMARY KEY,
    first_seen_ms INTEGER NOT NULL,
    pushed_version INTEGER,
    pushed_ms INTEGER
);
"#,
    // 2: named operators with roles (`crate::operators`), sessions that name their
    // operator, and the append-only audit log (`crate::audit`).
    r#"
CREATE TABLE operators (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    secret_hash TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
ALTER TABLE web_sessions ADD COLUMN operator_id INTEGER;
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_by_actor ON audit_log (actor, id);
CREATE INDEX audit_by_action ON audit_log (action, id);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#,
    // 3: each household's contact for notifications (`crate::notify`) and its opt-out.
    r#"
ALTER TABLE households ADD COLUMN email TEXT;
ALTER TABLE households ADD COLUMN notify_email INTEGER NOT NULL DEFAULT 1;
"#,
    // 4: staged policy rollouts (`crate::rollout`): the candidate, its cohort, its
    // thresholds and every version signed for it; the devices a router must never throttle
    // or block (`crate::policy::allow_device`), the per-CPE versions derived from them;
    // subscriber-declared senders (`crate::web::senders`).
    r#"
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('canary', 'promoted', 'rolled_back', 'halted')),
    candidate_json TEXT NOT NULL,
    source_text TEXT,
    note TEXT NOT NULL,
    base_version INTEGER,
    cohort_json TEXT NOT NULL,
    max_refusals INTEGER NOT NULL,
    max_flagged_rise REAL NOT NULL,
    promote_after_secs INTEGER,
    flagged_before REAL NOT NULL,
    started_by TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_by TEXT,
    ended_ms INTEGER,
    end_reason TEXT,
    fleet_version INTEGER
);
CREATE UNIQUE INDEX one_canary ON rollouts (status) WHERE status = 'canary';
CREATE TABLE rollout_targets (
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id),
    stage TEXT NOT NULL CHECK (stage IN ('canary', 'restore')),
    cpe_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, cpe_id, version)
);
CREATE TABLE allowed_devices (
    cpe_id TEXT NOT NULL,
    mac TEXT NOT NULL,
    note TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (cpe_id, mac)
);
CREATE TABLE derived_overrides (
    cpe_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE sender_declarations (
    id INTEGER PRIMARY KEY,
    household_id INTEGER NOT NULL REFERENCES households(id),
    cpe_id TEXT NOT NULL,
    mac TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('server', 'program')),
    reason TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'declined')),
    requested_ms INTEGER NOT NULL,
    decided_by TEXT,
    decided_ms INTEGER
);
"#,
    // 5: the household's time zone for the portal's times (an IANA name; NULL: the
    // controller's `web.portal_time_zone`).
    r#"
ALTER TABLE households ADD COLUMN time_zone TEXT;
"#,
    // 6: the abuse desk's workflow: who complained, whether the complaint was answered
    // (and by whom, when), and the reports of one router listed quickly.
    r#"
ALTER TABLE abuse_reports ADD COLUMN reporter TEXT;
ALTER TABLE abuse_reports ADD COLUMN status TEXT NOT NULL DEFAULT 'open'
    CHECK (status IN ('open', 'answered'));
ALTER TABLE abuse_reports ADD COLUMN answered_ms INTEGER;
ALTER TABLE abuse_reports ADD COLUMN answered_by TEXT;
CREATE INDEX abuse_reports_by_cpe ON abuse_reports (cpe_id, id);
"#,
];

/// Brings the product tables up to date. Call after the store has migrated its schema.
///
/// # Errors
/// SQLite errors; a half-applied migration is rolled back.
pub fn migrate(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS product_schema (version INTEGER NOT NULL)")?;
    let current: u32 = conn
        .query_row("SELECT version FROM product_schema", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute("DELETE FROM product_schema", [])?;
        tx.execute("INSERT INTO product_schema (version) VALUES (?1)", [i + 1])?;
        tx.commit()?;
    }
    Ok(())
}
