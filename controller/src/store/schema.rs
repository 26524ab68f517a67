//! The one SQLite schema of the controller and its migrations, versioned with
//! `PRAGMA user_version`: the ingest's tables, the web UI's product tables (households,
//! sessions, operators, audit log, rollouts, ...) and everything added since, in one list.
//!
//! Each entry of [`MIGRATIONS`] moves the database from version `i` to `i + 1`; they run in
//! one transaction each, so a database is never left half-migrated. Never edit a released
//! migration: append a new one at the end of the list.
//!
//! Databases made before the list was one: the product tables then had their own counter
//! in a `product_schema` table, migrated after the ingest's. [`migrate`] adopts such a
//! database in place (see [`LEGACY_STORE_MIGRATIONS`]) and drops `product_schema`.
//!
//! Conventions other modules rely on: times are Unix milliseconds in `*_ms` columns; verdict
//! and action names are the protocol's (`clean`, `rate-limit`, ...); MACs are `aa:bb:..`;
//! lists are JSON arrays in `*_json` columns.

use rusqlite::{Connection, OptionalExtension};

use super::StoreError;

/// The migrations, in order. The database's `user_version` is the number applied.
pub const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
CREATE TABLE cpes (
    cpe_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    label TEXT,
    enrolled_at_ms INTEGER,
    revoked_at_ms INTEGER
);

CREATE TABLE messages (
    cpe_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    wire BLOB NOT NULL,
    PRIMARY KEY (cpe_id, seq)
);

CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    cpe_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    mac TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    previous TEXT NOT NULL,
    verdict TEXT NOT NULL,
    score REAL NOT NULL,
    action TEXT NOT NULL,
    action_until_ms INTEGER,
    hostname TEXT,
    vendor TEXT,
    ips_json TEXT NOT NULL,
    evidence_json TEXT NOT NULL,
    observed_json TEXT NOT NULL,
    UNIQUE (cpe_id, seq)
);
CREATE INDEX alerts_by_device ON alerts (cpe_id, mac, at_ms);
CREATE INDEX alerts_by_time ON alerts (at_ms);

CREATE TABLE telemetry (
    cpe_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    window_start_ms INTEGER NOT NULL,
    window_secs INTEGER NOT NULL,
    public_ip TEXT,
    stats_json TEXT NOT NULL,
    PRIMARY KEY (cpe_id, seq)
);
CREATE INDEX telemetry_by_time ON telemetry (cpe_id, window_start_ms);

CREATE TABLE device_reports (
    cpe_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    mac TEXT NOT NULL,
    verdict TEXT NOT NULL,
    score REAL NOT NULL,
    action TEXT NOT NULL,
    action_until_ms INTEGER,
    hostname TEXT,
    vendor TEXT,
    ips_json TEXT NOT NULL,
    counters_json TEXT NOT NULL,
    evidence_json TEXT NOT NULL
);
CREATE INDEX device_reports_by_device ON device_reports (cpe_id, mac, seq);

CREATE TABLE connections (
    cpe_id TEXT NOT NULL,
    mac TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    src_port INTEGER NOT NULL,
    dst TEXT NOT NULL,
    dst_port INTEGER NOT NULL,
    nat_port INTEGER
);
CREATE INDEX connections_by_time ON connections (cpe_id, at_ms);

CREATE TABLE public_ips (
    cpe_id TEXT NOT NULL,
    ip TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (cpe_id, ip, first_seen_ms)
);
CREATE INDEX public_ips_by_ip ON public_ips (ip, first_seen_ms);

CREATE TABLE cpe_state (
    cpe_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    agent_version TEXT,
    fleet_policy_version INTEGER,
    cpe_policy_version INTEGER,
    public_ip TEXT,
    updated_ms INTEGER NOT NULL
);

CREATE TABLE policies (
    version INTEGER PRIMARY KEY,
    scope TEXT NOT NULL,
    cpe_id TEXT,
    policy_json TEXT NOT NULL,
    wire BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE policy_acks (
    cpe_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    version INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (cpe_id, scope, version)
);

CREATE TABLE rejections (
    reason TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
"#,
    // 2: verdict history kept at ingest (`store::history`), filled from the alerts stored
    // so far; the newest known verdict per device from alerts and telemetry.
    r#"
CREATE TABLE verdict_changes (
    id INTEGER PRIMARY KEY,
    cpe_id TEXT NOT NULL,
    mac TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    previous TEXT NOT NULL,
    verdict TEXT NOT NULL,
    score REAL NOT NULL,
    action TEXT NOT NULL,
    action_until_ms INTEGER,
    evidence_json TEXT NOT NULL,
    source TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX verdict_changes_by_device ON verdict_changes (cpe_id, mac, at_ms);

CREATE TABLE device_verdicts (
    cpe_id TEXT NOT NULL,
    mac TEXT NOT NULL,
    verdict TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (cpe_id, mac)
);

INSERT INTO verdict_changes (cpe_id, mac, at_ms, previous, verdict, score, action,
    action_until_ms, evidence_json, source, seq)
SELECT cpe_id, mac, at_ms, previous, verdict, score, action, action_until_ms, evidence_json,
    'alert', seq
FROM alerts ORDER BY at_ms, id;

INSERT INTO device_verdicts (cpe_id, mac, verdict, at_ms)
SELECT cpe_id, mac, verdict, at_ms FROM (
    SELECT d.cpe_id, d.mac, d.verdict, t.window_start_ms + t.window_secs * 1000 AS at_ms
    FROM device_reports d JOIN telemetry t ON t.cpe_id = d.cpe_id AND t.seq = d.seq
    UNION ALL
    SELECT cpe_id, mac, verdict, at_ms FROM alerts
) WHERE true
ORDER BY at_ms
ON CONFLICT (cpe_id, mac) DO UPDATE SET verdict = excluded.verdict, at_ms = excluded.at_ms
WHERE excluded.at_ms >= device_verdicts.at_ms;
"#,
    // 3: each CPE's broker password, stored only as mosquitto's `$7$` hash (PBKDF2-SHA512)
    // so one hash serves the embedded broker and `cpe export-mosquitto`.
    r#"
ALTER TABLE cpes ADD COLUMN broker_password_hash TEXT;
"#,
    // 4: the router's NAT translation of each logged connection (its WAN address; the
    // translated port was already `nat_port`), so an abuse report's (IP, port, time) finds
    // the exact device (`abuse::mapping`, confidence `exact`).
    r#"
ALTER TABLE connections ADD COLUMN nat_ip TEXT;
CREATE INDEX connections_by_translation ON connections (nat_ip, nat_port, at_ms);
"#,
    // 5: signed commands to one router (`store::commands`) and every answer the routers
    // sent, the current outcome kept on the command.
    r#"
CREATE TABLE commands (
    cpe_id TEXT NOT NULL,
    command_id INTEGER NOT NULL,
    action TEXT NOT NULL,
    mac TEXT NOT NULL,
    secs INTEGER NOT NULL,
    issued_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    wire BLOB NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    ack_ms INTEGER,
    release_request_id INTEGER,
    PRIMARY KEY (cpe_id, command_id)
);
CREATE INDEX commands_by_request ON commands (release_request_id);

CREATE TABLE command_acks (
    id INTEGER PRIMARY KEY,
    cpe_id TEXT NOT NULL,
    command_id INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    at_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE INDEX command_acks_by_command ON command_acks (cpe_id, command_id);
"#,
    // 6: how often each command was published: once when issued, again each time its
    // router came back online while the command was still unanswered and unexpired.
    r#"
ALTER TABLE commands ADD COLUMN sends INTEGER NOT NULL DEFAULT 1;
"#,
    // 7: what the NOC's policy editor keeps with a fleet version: the text it was
    // published from (comments and all), the change note and who published it.
    r#"
ALTER TABLE policies ADD COLUMN source_text TEXT;
ALTER TABLE policies ADD COLUMN note TEXT;
ALTER TABLE policies ADD COLUMN actor TEXT;
"#,
    // 8: the notification outbox (`store::notifications`), filled in the ingest's
    // transaction and emptied by `notify`.
    r#"
CREATE TABLE notifications (
    id INTEGER PRIMARY KEY,
    event TEXT NOT NULL,
    cpe_id TEXT NOT NULL,
    mac TEXT NOT NULL,
    device TEXT NOT NULL,
    detail TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    dedup TEXT NOT NULL UNIQUE,
    webhook_state TEXT NOT NULL DEFAULT 'pending',
    email_state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    last_error TEXT
);
CREATE INDEX notifications_due ON notifications (next_attempt_ms);
"#,
    // 9 (product 1): the web UI's tables: households and their routers, subscriber
    // tokens, web sessions, release requests, abuse reports, campaigns.
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
    // 10 (product 2): named operators with roles (`crate::operators`), sessions that name their
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
    // 11 (product 3): each household's contact for notifications (`crate::notify`) and its opt-out.
    r#"
ALTER TABLE households ADD COLUMN email TEXT;
ALTER TABLE households ADD COLUMN notify_email INTEGER NOT NULL DEFAULT 1;
"#,
    // 12 (product 4): staged policy rollouts (`crate::rollout`): the candidate, its cohort, its
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
    // 13 (product 5): the household's time zone for the portal's times (an IANA name; NULL: the
    // controller's `web.portal_time_zone`).
    r#"
ALTER TABLE households ADD COLUMN time_zone TEXT;
"#,
    // 14 (product 6): the abuse desk's workflow: who complained, whether the complaint was answered
    // (and by whom, when), and the reports of one router listed quickly.
    r#"
ALTER TABLE abuse_reports ADD COLUMN reporter TEXT;
ALTER TABLE abuse_reports ADD COLUMN status TEXT NOT NULL DEFAULT 'open'
    CHECK (status IN ('open', 'answered'));
ALTER TABLE abuse_reports ADD COLUMN answered_ms INTEGER;
ALTER TABLE abuse_reports ADD COLUMN answered_by TEXT;
CREATE INDEX abuse_reports_by_cpe ON abuse_reports (cpe_id, id);
"#,
    // 15: retention (`store::retention`): an index on the time column of every table it
    // trims (messages by kind, so one kind's window does not walk another's rows; device
    // reports by their telemetry message), the rows it deleted so far per table (and per
    // message kind) for `/metrics`, and its last pass.
    r#"
CREATE INDEX messages_by_kind_received ON messages (kind, received_at_ms);
CREATE INDEX telemetry_by_window_start ON telemetry (window_start_ms);
CREATE INDEX device_reports_by_message ON device_reports (cpe_id, seq);
CREATE INDEX connections_by_at ON connections (at_ms);
CREATE INDEX public_ips_by_last_seen ON public_ips (last_seen_ms);
CREATE INDEX verdict_changes_by_time ON verdict_changes (at_ms);
CREATE TABLE retention_deleted (
    table_name TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    deleted INTEGER NOT NULL,
    PRIMARY KEY (table_name, kind)
);
CREATE TABLE retention_runs (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    finished_ms INTEGER NOT NULL,
    complete INTEGER NOT NULL
);
"#,
    // 16: device state kept at ingest (`store::devices`): one row per household device, the
    // fold of its alerts and reports; it takes over `device_verdicts` (the newest verdict
    // and as of when are its `verdict` and `last_seen_ms`). Filled from the stored alerts
    // and reports by `devices::backfill` when the store opens.
    r#"
CREATE TABLE devices (
    cpe_id TEXT NOT NULL,
    mac TEXT NOT NULL,
    hostname TEXT,
    vendor TEXT,
    ips_json TEXT NOT NULL,
    verdict TEXT NOT NULL,
    severity INTEGER NOT NULL,
    score REAL NOT NULL,
    since_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    last_fact TEXT NOT NULL,
    action TEXT NOT NULL,
    action_until_ms INTEGER,
    evidence_json TEXT NOT NULL,
    counters_json TEXT,
    window_secs INTEGER,
    observed_json TEXT NOT NULL,
    PRIMARY KEY (cpe_id, mac)
);
CREATE INDEX devices_by_severity ON devices (severity, since_ms);
CREATE INDEX devices_by_mac ON devices (mac);
CREATE INDEX devices_by_last_seen ON devices (last_seen_ms);
DROP TABLE device_verdicts;
"#,
    // 17: what the ingest's admission decides with across replicas (`store::arbiter`): each
    // CPE's highest stored sequence number and the policy version counter, both started
    // from what is stored; and the time of each device report (its telemetry window's
    // start), which PostgreSQL partitions it by and retention deletes it by.
    r#"
CREATE TABLE cpe_seq (
    cpe_id TEXT PRIMARY KEY,
    highest_seq INTEGER
);
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO cpe_seq (cpe_id, highest_seq)
    SELECT cpe_id, MAX(seq) FROM messages WHERE kind != 'state' GROUP BY cpe_id;
INSERT INTO counters (name, value)
    SELECT 'policy_version', COALESCE(MAX(version), 0) FROM policies;
ALTER TABLE device_reports ADD COLUMN at_ms INTEGER;
UPDATE device_reports SET at_ms = (SELECT t.window_start_ms FROM telemetry t
    WHERE t.cpe_id = device_reports.cpe_id AND t.seq = device_reports.seq);
"#,
    // 18: the abuse desk's list sorted by the reported time, and filtered by address.
    r#"
CREATE INDEX abuse_reports_by_at ON abuse_reports (at_ms);
CREATE INDEX abuse_reports_by_ip ON abuse_reports (public_ip);
"#,
    // 19: a router's current address period, which the ingest reads for every telemetry
    // window (see `POSTGRES`'s same index).
    r#"
CREATE INDEX public_ips_by_cpe_seen ON public_ips (cpe_id, last_seen_ms);
"#,
];

/// The schema version this build writes: the number of [`MIGRATIONS`].
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How many of [`MIGRATIONS`] were the ingest's own list before there was one list: a
/// database with a `product_schema` table at product version `P` had all of these applied
/// (the web UI opened the store first) and the first `P` product migrations, which follow
/// them here; it is at version `LEGACY_STORE_MIGRATIONS + P` of the one list.
pub const LEGACY_STORE_MIGRATIONS: u32 = 8;

/// How many product migrations the separate `product_schema` counter ever had (they are
/// [`MIGRATIONS`] `8..14`).
pub const LEGACY_PRODUCT_MIGRATIONS: u32 = 6;

/// The PostgreSQL migrations, applied by [`super::db::Db::migrate`] (version in
/// `schema_version`). PostgreSQL support starts at SQLite's version 17: the first entry is
/// that schema in PostgreSQL's types, with the tables that grow with time partitioned by
/// day (`store::partitions` keeps the partitions ahead of the clock; a `DEFAULT` partition
/// catches anything outside them) and the audit log's append-only triggers as a PL/pgSQL
/// function. A change of the schema from here on appends one entry to both lists.
pub const POSTGRES: &[super::db::Migration] = &[
    super::db::Migration {
        name: "the schema of SQLite version 17",
        sqlite: "",
        postgres: r#"
CREATE TABLE cpes (
    cpe_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    label TEXT,
    enrolled_at_ms BIGINT,
    revoked_at_ms BIGINT,
    broker_password_hash TEXT
);
CREATE TABLE messages (
    cpe_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    sent_at_ms BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    wire BYTEA NOT NULL,
    PRIMARY KEY (cpe_id, seq)
);
CREATE TABLE alerts (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY,
    cpe_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    mac TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    previous TEXT NOT NULL,
    verdict TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    action TEXT NOT NULL,
    action_until_ms BIGINT,
    hostname TEXT,
    vendor TEXT,
    ips_json TEXT NOT NULL,
    evidence_json TEXT NOT NULL,
    observed_json TEXT NOT NULL,
    PRIMARY KEY (id, at_ms),
    UNIQUE (cpe_id, seq, at_ms)
) PARTITION BY RANGE (at_ms);
CREATE TABLE alerts_default PARTITION OF alerts DEFAULT;
CREATE INDEX alerts_by_device ON alerts (cpe_id, mac, at_ms);
CREATE INDEX alerts_by_time ON alerts (at_ms);
CREATE TABLE telemetry (
    cpe_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    window_start_ms BIGINT NOT NULL,
    window_secs BIGINT NOT NULL,
    public_ip TEXT,
    stats_json TEXT NOT NULL,
    PRIMARY KEY (cpe_id, seq, window_start_ms)
) PARTITION BY RANGE (window_start_ms);
CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;
CREATE INDEX telemetry_by_time ON telemetry (cpe_id, window_start_ms);
CREATE TABLE device_reports (
    cpe_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    mac TEXT NOT NULL,
    verdict TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    action TEXT NOT NULL,
    action_until_ms BIGINT,
    hostname TEXT,
    vendor TEXT,
    ips_json TEXT NOT NULL,
    counters_json TEXT NOT NULL,
    evidence_json TEXT NOT NULL,
    at_ms BIGINT NOT NULL
) PARTITION BY RANGE (at_ms);
CREATE TABLE device_reports_default PARTITION OF device_reports DEFAULT;
CREATE INDEX device_reports_by_device ON device_reports (cpe_id, mac, seq);
CREATE TABLE connections (
    cpe_id TEXT NOT NULL,
    mac TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    src_port BIGINT NOT NULL,
    dst TEXT NOT NULL,
    dst_port BIGINT NOT NULL,
    nat_port BIGINT,
    nat_ip TEXT
) PARTITION BY RANGE (at_ms);
CREATE TABLE connections_default PARTITION OF connections DEFAULT;
CREATE INDEX connections_by_time ON connections (cpe_id, at_ms);
CREATE TABLE public_ips (
    cpe_id TEXT NOT NULL,
    ip TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    PRIMARY KEY (cpe_id, ip, first_seen_ms)
);
CREATE INDEX public_ips_by_ip ON public_ips (ip, first_seen_ms);
CREATE TABLE cpe_state (
    cpe_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    agent_version TEXT,
    fleet_policy_version BIGINT,
    cpe_policy_version BIGINT,
    public_ip TEXT,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE policies (
    version BIGINT PRIMARY KEY,
    scope TEXT NOT NULL,
    cpe_id TEXT,
    policy_json TEXT NOT NULL,
    wire BYTEA NOT NULL,
    created_ms BIGINT NOT NULL
, source_text TEXT, note TEXT, actor TEXT);
CREATE TABLE policy_acks (
    cpe_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    version BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (cpe_id, scope, version)
);
CREATE TABLE rejections (
    reason TEXT PRIMARY KEY,
    count BIGINT NOT NULL
);
CREATE TABLE verdict_changes (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY,
    cpe_id TEXT NOT NULL,
    mac TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    previous TEXT NOT NULL,
    verdict TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    action TEXT NOT NULL,
    action_until_ms BIGINT,
    evidence_json TEXT NOT NULL,
    source TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (id, at_ms)
) PARTITION BY RANGE (at_ms);
CREATE TABLE verdict_changes_default PARTITION OF verdict_changes DEFAULT;
CREATE INDEX verdict_changes_by_device ON verdict_changes (cpe_id, mac, at_ms);
CREATE INDEX connections_by_translation ON connections (nat_ip, nat_port, at_ms);
CREATE TABLE commands (
    cpe_id TEXT NOT NULL,
    command_id BIGINT NOT NULL,
    action TEXT NOT NULL,
    mac TEXT NOT NULL,
    secs BIGINT NOT NULL,
    issued_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    wire BYTEA NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    ack_ms BIGINT,
    release_request_id BIGINT, sends BIGINT NOT NULL DEFAULT 1,
    PRIMARY KEY (cpe_id, command_id)
);
CREATE INDEX commands_by_request ON commands (release_request_id);
CREATE TABLE command_acks (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    cpe_id TEXT NOT NULL,
    command_id BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    at_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL
);
CREATE INDEX command_acks_by_command ON command_acks (cpe_id, command_id);
CREATE TABLE notifications (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    event TEXT NOT NULL,
    cpe_id TEXT NOT NULL,
    mac TEXT NOT NULL,
    device TEXT NOT NULL,
    detail TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    dedup TEXT NOT NULL UNIQUE,
    webhook_state TEXT NOT NULL DEFAULT 'pending',
    email_state TEXT NOT NULL DEFAULT 'pending',
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    last_error TEXT
);
CREATE INDEX notifications_due ON notifications (next_attempt_ms);
CREATE TABLE households (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    created_ms BIGINT NOT NULL
, email TEXT, notify_email BIGINT NOT NULL DEFAULT 1, time_zone TEXT);
CREATE TABLE household_cpes (
    cpe_id TEXT PRIMARY KEY,
    household_id BIGINT NOT NULL REFERENCES households(id)
);
CREATE INDEX household_cpes_by_household ON household_cpes (household_id);
CREATE TABLE subscriber_tokens (
    token_hash TEXT PRIMARY KEY,
    household_id BIGINT NOT NULL REFERENCES households(id),
    created_ms BIGINT NOT NULL
);
CREATE TABLE web_sessions (
    session_hash TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    household_id BIGINT,
    csrf TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
, operator_id BIGINT);
CREATE TABLE release_requests (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    household_id BIGINT NOT NULL REFERENCES households(id),
    cpe_id TEXT NOT NULL,
    mac TEXT NOT NULL,
    requested_ms BIGINT NOT NULL,
    note TEXT NOT NULL,
    status TEXT NOT NULL,
    decided_ms BIGINT
);
CREATE TABLE abuse_reports (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    received_ms BIGINT NOT NULL,
    source TEXT NOT NULL,
    public_ip TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    dest_ip TEXT,
    dest_port BIGINT,
    source_port BIGINT,
    feedback_type TEXT,
    message_id TEXT,
    confidence TEXT NOT NULL,
    cpe_id TEXT,
    mac TEXT,
    result_json TEXT NOT NULL
, reporter TEXT, status TEXT NOT NULL DEFAULT 'open'
    CHECK (status IN ('open', 'answered')), answered_ms BIGINT, answered_by TEXT);
CREATE TABLE campaigns (
    id TEXT PRIMARY KEY,
    first_seen_ms BIGINT NOT NULL,
    pushed_version BIGINT,
    pushed_ms BIGINT
);
CREATE TABLE operators (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    secret_hash TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE TABLE audit_log (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_by_actor ON audit_log (actor, id);
CREATE INDEX audit_by_action ON audit_log (action, id);
CREATE TABLE rollouts (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('canary', 'promoted', 'rolled_back', 'halted')),
    candidate_json TEXT NOT NULL,
    source_text TEXT,
    note TEXT NOT NULL,
    base_version BIGINT,
    cohort_json TEXT NOT NULL,
    max_refusals BIGINT NOT NULL,
    max_flagged_rise DOUBLE PRECISION NOT NULL,
    promote_after_secs BIGINT,
    flagged_before DOUBLE PRECISION NOT NULL,
    started_by TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    ended_by TEXT,
    ended_ms BIGINT,
    end_reason TEXT,
    fleet_version BIGINT
);
CREATE UNIQUE INDEX one_canary ON rollouts (status) WHERE status = 'canary';
CREATE TABLE rollout_targets (
    rollout_id BIGINT NOT NULL REFERENCES rollouts(id),
    stage TEXT NOT NULL CHECK (stage IN ('canary', 'restore')),
    cpe_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, cpe_id, version)
);
CREATE TABLE allowed_devices (
    cpe_id TEXT NOT NULL,
    mac TEXT NOT NULL,
    note TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (cpe_id, mac)
);
CREATE TABLE derived_overrides (
    cpe_id TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);
CREATE TABLE sender_declarations (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    household_id BIGINT NOT NULL REFERENCES households(id),
    cpe_id TEXT NOT NULL,
    mac TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('server', 'program')),
    reason TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'declined')),
    requested_ms BIGINT NOT NULL,
    decided_by TEXT,
    decided_ms BIGINT
);
CREATE INDEX abuse_reports_by_cpe ON abuse_reports (cpe_id, id);
CREATE INDEX messages_by_kind_received ON messages (kind, received_at_ms);
CREATE INDEX telemetry_by_window_start ON telemetry (window_start_ms);
CREATE INDEX device_reports_by_message ON device_reports (cpe_id, seq);
CREATE INDEX connections_by_at ON connections (at_ms);
CREATE INDEX public_ips_by_last_seen ON public_ips (last_seen_ms);
CREATE INDEX verdict_changes_by_time ON verdict_changes (at_ms);
CREATE TABLE retention_deleted (
    table_name TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    deleted BIGINT NOT NULL,
    PRIMARY KEY (table_name, kind)
);
CREATE TABLE retention_runs (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    finished_ms BIGINT NOT NULL,
    complete BIGINT NOT NULL
);
CREATE TABLE devices (
    cpe_id TEXT NOT NULL,
    mac TEXT NOT NULL,
    hostname TEXT,
    vendor TEXT,
    ips_json TEXT NOT NULL,
    verdict TEXT NOT NULL,
    severity BIGINT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    since_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    last_fact TEXT NOT NULL,
    action TEXT NOT NULL,
    action_until_ms BIGINT,
    evidence_json TEXT NOT NULL,
    counters_json TEXT,
    window_secs BIGINT,
    observed_json TEXT NOT NULL,
    PRIMARY KEY (cpe_id, mac)
);
CREATE INDEX devices_by_severity ON devices (severity, since_ms);
CREATE INDEX devices_by_mac ON devices (mac);
CREATE INDEX devices_by_last_seen ON devices (last_seen_ms);
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TABLE cpe_seq (
    cpe_id TEXT PRIMARY KEY,
    highest_seq BIGINT
);
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('policy_version', 0);
"#,
    },
    super::db::Migration {
        name: "SQLite version 18: abuse reports by reported time and by address",
        sqlite: "",
        postgres: r#"
CREATE INDEX abuse_reports_by_at ON abuse_reports (at_ms);
CREATE INDEX abuse_reports_by_ip ON abuse_reports (public_ip);
"#,
    },
    // PostgreSQL only (SQLite has `PRAGMA data_version`): every statement that changes the
    // enrolled routers bumps one counter, so each replica's ingest polls one row to know
    // when to reload the keys, instead of digesting the whole registry per batch.
    super::db::Migration {
        name: "a change counter of the enrolled routers",
        sqlite: "",
        postgres: r#"
INSERT INTO counters (name, value) VALUES ('registry', 0) ON CONFLICT (name) DO NOTHING;
CREATE FUNCTION cpes_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'registry';
    RETURN NULL;
END $$;
CREATE TRIGGER cpes_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON cpes
FOR EACH STATEMENT EXECUTE FUNCTION cpes_changed();
"#,
    },
    // A router's current address period, read for every telemetry window (`ORDER BY
    // last_seen_ms DESC LIMIT 1` of one CPE). Without it PostgreSQL's plan for that read
    // could walk `public_ips_by_last_seen` from the newest row of the whole fleet: 0.7 ms
    // per window instead of 0.02 in one 10,000-agent load run.
    super::db::Migration {
        name: "SQLite version 19: public addresses by router and last seen",
        sqlite: "",
        postgres: r#"
CREATE INDEX public_ips_by_cpe_seen ON public_ips (cpe_id, last_seen_ms);
"#,
    },
];

/// Brings the database up to [`SCHEMA_VERSION`], adopting a database of the two old
/// migration systems first.
///
/// # Errors
/// [`StoreError::TooNew`] for a database written by a newer build; [`StoreError::Sqlite`]
/// otherwise, with the failing migration rolled back.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    adopt_product_schema(conn)?;
    let current = version(conn)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        apply(conn, i, sql)?;
    }
    Ok(())
}

fn version(conn: &Connection) -> Result<u32, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// Applies migration `i` (0-based) in its own transaction, unless another process that
/// opened the same database at the same time already did: the write lock is taken first
/// (`IMMEDIATE`) and the version read under it, so each migration runs once.
fn apply(conn: &mut Connection, i: usize, sql: &str) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if version(&tx)? as usize > i {
        return Ok(());
    }
    tx.execute_batch(sql)?;
    tx.pragma_update(None, "user_version", i + 1)?;
    tx.commit()?;
    Ok(())
}

/// A database of the old layout: the ingest's migrations counted by `user_version`, the
/// product ones by `product_schema`. The ingest's missing ones (an old controller whose web
/// UI never ran after an upgrade of the ingest) are applied first, then the version becomes
/// the one list's and `product_schema` goes, in one transaction: a crash leaves either the
/// old layout or the new one.
fn adopt_product_schema(conn: &mut Connection) -> Result<(), StoreError> {
    let legacy: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'product_schema'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if legacy.is_none() {
        return Ok(());
    }
    let store = version(conn)?;
    let product: u32 = conn
        .query_row("SELECT version FROM product_schema", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    if store > LEGACY_STORE_MIGRATIONS || product > LEGACY_PRODUCT_MIGRATIONS {
        // Only a build of the old layout newer than any that existed could write this.
        return Err(StoreError::TooNew {
            found: store.max(LEGACY_STORE_MIGRATIONS + product),
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(LEGACY_STORE_MIGRATIONS as usize)
        .skip(store as usize)
    {
        apply(conn, i, sql)?;
    }
    let tx = conn.transaction()?;
    tx.pragma_update(None, "user_version", LEGACY_STORE_MIGRATIONS + product)?;
    tx.execute_batch("DROP TABLE product_schema")?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// What the ingest's `migrate` did before there was one list: its own migrations,
    /// counted by `user_version`.
    fn old_store_migrate(conn: &mut Connection, upto: u32) {
        for (i, sql) in MIGRATIONS.iter().enumerate().take(upto as usize) {
            let tx = conn.transaction().unwrap();
            tx.execute_batch(sql).unwrap();
            tx.pragma_update(None, "user_version", i + 1).unwrap();
            tx.commit().unwrap();
        }
    }

    /// What `web::schema::migrate` did: the product migrations (here `8..14`), counted in
    /// `product_schema`.
    fn old_product_migrate(conn: &mut Connection, upto: u32) {
        conn.execute_batch("CREATE TABLE IF NOT EXISTS product_schema (version INTEGER NOT NULL)")
            .unwrap();
        let product = &MIGRATIONS[LEGACY_STORE_MIGRATIONS as usize..];
        for (i, sql) in product.iter().enumerate().take(upto as usize) {
            let tx = conn.transaction().unwrap();
            tx.execute_batch(sql).unwrap();
            tx.execute("DELETE FROM product_schema", []).unwrap();
            tx.execute("INSERT INTO product_schema (version) VALUES (?1)", [i + 1])
                .unwrap();
            tx.commit().unwrap();
        }
    }

    fn user_version(conn: &Connection) -> u32 {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    fn has_table(conn: &Connection, name: &str) -> bool {
        conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 1
    }

    fn old_database(path: &std::path::Path, store: u32, product: Option<u32>) {
        let mut conn = Connection::open(path).unwrap();
        old_store_migrate(&mut conn, store);
        conn.execute(
            "INSERT INTO cpes (cpe_id, public_key, label, enrolled_at_ms)
             VALUES ('cpe-old', 'ed25519:00', 'attic', 5)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO alerts (cpe_id, seq, mac, at_ms, previous, verdict, score, action,
                ips_json, evidence_json, observed_json)
             VALUES ('cpe-old', 7, '02:00:00:00:00:01', 1000, 'clean', 'infected', 0.9,
                'block', '[]', '[\"312 connections\"]', '{}')",
            [],
        )
        .unwrap();
        if let Some(p) = product {
            old_product_migrate(&mut conn, p);
            conn.execute(
                "INSERT INTO households (id, name, created_ms) VALUES (3, 'Smith', 9)",
                [],
            )
            .unwrap();
            if p >= 2 {
                conn.execute(
                    "INSERT INTO audit_log (at_ms, actor, action, target, outcome, detail)
                     VALUES (10, 'alice', 'login', 'noc', 'ok', '')",
                    [],
                )
                .unwrap();
            }
        }
    }

    fn assert_old_data_is_there(conn: &Connection, product: bool) {
        let label: String = conn
            .query_row("SELECT label FROM cpes WHERE cpe_id = 'cpe-old'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(label, "attic");
        let evidence: String = conn
            .query_row("SELECT evidence_json FROM alerts WHERE seq = 7", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(evidence, "[\"312 connections\"]");
        if product {
            let name: String = conn
                .query_row("SELECT name FROM households WHERE id = 3", [], |r| r.get(0))
                .unwrap();
            assert_eq!(name, "Smith");
        }
    }

    /// Replicas started together on a new database: every one opens it, each migration
    /// runs once.
    #[test]
    fn processes_opening_a_new_database_together_migrate_it_once() {
        for round in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("new-{round}.db"));
            let opened: Vec<_> = (0..4)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || crate::store::Store::open(&path).map(drop))
                })
                .collect();
            for o in opened {
                o.join().unwrap().unwrap();
            }
            let conn = Connection::open(&path).unwrap();
            assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        }
    }

    #[test]
    fn a_database_of_both_old_migration_systems_is_adopted_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        old_database(
            &path,
            LEGACY_STORE_MIGRATIONS,
            Some(LEGACY_PRODUCT_MIGRATIONS),
        );

        let store = Store::open(&path).unwrap();
        let guard = store.db().sqlite_connection().unwrap();
        let conn = &*guard;
        assert_eq!(user_version(conn), SCHEMA_VERSION);
        assert!(!has_table(conn, "product_schema"));
        assert_old_data_is_there(conn, true);
        // The product migrations' objects came along: the audit log is still append-only,
        // the abuse desk's columns are there, and so are the tables added since.
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM audit_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        assert!(conn.execute("DELETE FROM audit_log", []).is_err());
        conn.execute("UPDATE abuse_reports SET status = 'answered'", [])
            .unwrap();
        assert!(has_table(conn, "retention_deleted"));
        drop(guard);
        drop(store);
        // Opening again changes nothing.
        let store = Store::open(&path).unwrap();
        assert_eq!(
            user_version(&store.db().sqlite_connection().unwrap()),
            SCHEMA_VERSION
        );
        // The web server's open runs the same migration.
        drop(store);
        let db = crate::web::open_db(&path).unwrap();
        let conn = db.sqlite_connection().unwrap();
        assert_eq!(user_version(&conn), SCHEMA_VERSION);
        assert_old_data_is_there(&conn, true);
    }

    #[test]
    fn the_old_versions_map_onto_the_one_list() {
        for (store, product, expected) in [
            (LEGACY_STORE_MIGRATIONS, 6, 14),
            (LEGACY_STORE_MIGRATIONS, 2, 10),
            (LEGACY_STORE_MIGRATIONS, 0, 8),
            // An ingest upgraded while the web UI was not: caught up first.
            (5, 4, 12),
        ] {
            let mut conn = Connection::open_in_memory().unwrap();
            old_store_migrate(&mut conn, store);
            old_product_migrate(&mut conn, product);
            adopt_product_schema(&mut conn).unwrap();
            assert_eq!(
                user_version(&conn),
                expected,
                "store {store}, product {product}"
            );
            assert!(!has_table(&conn, "product_schema"));
            // The ingest's later migrations ran: migration 6's column and 8's table.
            conn.execute("UPDATE commands SET sends = 2", []).unwrap();
            assert!(has_table(&conn, "notifications"));
            migrate(&mut conn).unwrap();
            assert_eq!(user_version(&conn), SCHEMA_VERSION);
        }
    }

    #[test]
    fn a_store_only_database_gets_the_product_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ingest-only.db");
        old_database(&path, LEGACY_STORE_MIGRATIONS, None);
        let store = Store::open(&path).unwrap();
        assert_eq!(
            user_version(&store.db().sqlite_connection().unwrap()),
            SCHEMA_VERSION
        );
        assert_old_data_is_there(&store.db().sqlite_connection().unwrap(), false);
        assert!(has_table(
            &store.db().sqlite_connection().unwrap(),
            "households"
        ));
        assert!(has_table(
            &store.db().sqlite_connection().unwrap(),
            "audit_log"
        ));
        assert!(!has_table(
            &store.db().sqlite_connection().unwrap(),
            "product_schema"
        ));
    }

    #[test]
    fn a_database_from_a_newer_build_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(StoreError::TooNew { found, supported })
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION
        ));
        // So is an old-layout one with more product migrations than ever existed.
        let mut conn = Connection::open_in_memory().unwrap();
        old_store_migrate(&mut conn, LEGACY_STORE_MIGRATIONS);
        old_product_migrate(&mut conn, LEGACY_PRODUCT_MIGRATIONS);
        conn.execute("UPDATE product_schema SET version = 7", [])
            .unwrap();
        assert!(matches!(migrate(&mut conn), Err(StoreError::TooNew { .. })));
    }
}

#[cfg(test)]
mod postgres_tests {
    use std::collections::{BTreeMap, BTreeSet};

    use crate::store::db::Db;

    /// Tables and their column names, without the bookkeeping tables of either backend.
    type Columns = BTreeMap<String, BTreeSet<String>>;

    fn sqlite_columns() -> Columns {
        let db = Db::open_sqlite(None).unwrap();
        super::migrate(&mut db.sqlite_connection().unwrap()).unwrap();
        let tables = db
            .query(
                "SELECT name FROM sqlite_master WHERE type = 'table'
                 AND name NOT IN ('sqlite_sequence', 'schema_version') ORDER BY name",
                &[],
            )
            .unwrap();
        let mut out = Columns::new();
        for t in tables {
            let table: String = t.get(0).unwrap();
            let columns = db
                .query(
                    "SELECT name FROM pragma_table_info(?1)",
                    crate::db_params![&table],
                )
                .unwrap();
            out.insert(table, columns.iter().map(|c| c.get(0).unwrap()).collect());
        }
        out
    }

    fn postgres_columns(db: &Db) -> Columns {
        // Partitions are tables of their own in information_schema: only the parents count.
        let rows = db
            .query(
                "SELECT c.table_name, c.column_name FROM information_schema.columns c
                 JOIN pg_class k ON k.relname = c.table_name
                 JOIN pg_namespace n ON n.oid = k.relnamespace AND n.nspname = c.table_schema
                 WHERE c.table_schema = current_schema() AND NOT k.relispartition
                 AND c.table_name != 'schema_version'",
                &[],
            )
            .unwrap();
        let mut out = Columns::new();
        for r in rows {
            out.entry(r.get::<String>(0).unwrap())
                .or_default()
                .insert(r.get(1).unwrap());
        }
        out
    }

    #[test]
    fn a_fresh_postgres_database_has_the_tables_and_columns_of_a_fresh_sqlite_one() {
        let db = Db::open(&smtpguard_pgtest::database()).unwrap();
        db.migrate(super::POSTGRES).unwrap();
        let (sqlite, postgres) = (sqlite_columns(), postgres_columns(&db));
        let names = |c: &Columns| c.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&postgres), names(&sqlite), "tables");
        for (table, columns) in &sqlite {
            assert_eq!(&postgres[table], columns, "columns of {table}");
        }
        // The partitioned tables are compared by their parents.
        assert!(
            postgres.contains_key("device_reports") && !postgres.contains_key("telemetry_default")
        );
    }
}
