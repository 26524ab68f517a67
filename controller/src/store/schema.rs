//! The SQLite schema and its migrations, versioned with `PRAGMA user_version`.
//!
//! Each entry of [`MIGRATIONS`] moves the database from version `i` to `i + 1`; they run in
//! one transaction each, so a database is never left half-migrated. Never edit a released
//! migration: append a new one.
//!
//! Conventions other modules rely on: times are Unix milliseconds in `*_ms` columns; verdict
//! and action names are the protocol's (`clean`, `rate-limit`, ...); MACs are `aa:bb:..`;
//! lists are JSON arrays in `*_json` columns.

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
    // 9: device state kept at ingest (`store::devices`): one row per household device, the
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
];

/// The schema version this build writes: the number of [`MIGRATIONS`].
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;
