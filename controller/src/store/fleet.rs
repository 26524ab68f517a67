//! The fleet as the NOC reads it: every enrolled CPE with its last state, its household and
//! how many of its devices are flagged ([`CpeRow`]), searched, filtered, sorted and paged in
//! one statement ([`search`]) so a page weighs the same at twenty routers or two hundred
//! thousand; the counts by status; and the few facts one router's page adds.
//!
//! The web layer parses its query strings into a [`Filter`] and a [`Sort`]
//! (`crate::web::fleet`) and renders what comes back.

use super::db::{DbError, Row, Sql};
use super::StoreError;
use crate::db_params;

/// One CPE as the NOC sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CpeRow {
    /// Its id.
    pub cpe_id: String,
    /// Operator label.
    pub label: Option<String>,
    /// `online`/`offline`, if it ever reported state.
    pub status: Option<String>,
    /// Agent version.
    pub agent_version: Option<String>,
    /// Applied fleet policy.
    pub fleet_policy_version: Option<i64>,
    /// Public address.
    pub public_ip: Option<String>,
    /// Last state update.
    pub updated_ms: Option<i64>,
    /// Revoked?
    pub revoked: bool,
    /// Owning household name.
    pub household: Option<String>,
    /// Its devices whose newest verdict is not clean.
    #[serde(skip)]
    pub flagged: u32,
}

impl CpeRow {
    /// The status word the list shows and filters on: `revoked`, `never` (never reported
    /// state), or the router's own `online`/`offline`.
    pub fn status_word(&self) -> &str {
        match (self.revoked, self.status.as_deref()) {
            (true, _) => "revoked",
            (_, None) => "never",
            (_, Some(s)) => s,
        }
    }
}

const SELECT: &str = "SELECT c.cpe_id, c.label, s.status, s.agent_version, s.fleet_policy_version,
        s.public_ip, s.updated_ms, c.revoked_at_ms IS NOT NULL, h.name,
        (SELECT COUNT(*) FROM devices dv WHERE dv.cpe_id = c.cpe_id
            AND dv.verdict <> 'clean')";

const FROM: &str = " FROM cpes c LEFT JOIN cpe_state s ON s.cpe_id = c.cpe_id
        LEFT JOIN household_cpes hc ON hc.cpe_id = c.cpe_id
        LEFT JOIN households h ON h.id = hc.household_id";

/// [`CpeRow::status_word`] in SQL.
const STATUS: &str = "CASE WHEN c.revoked_at_ms IS NOT NULL THEN 'revoked'
        WHEN s.status IS NULL THEN 'never' ELSE s.status END";

fn row(r: &Row) -> Result<CpeRow, DbError> {
    Ok(CpeRow {
        cpe_id: r.get(0)?,
        label: r.get(1)?,
        status: r.get(2)?,
        agent_version: r.get(3)?,
        fleet_policy_version: r.get(4)?,
        public_ip: r.get(5)?,
        updated_ms: r.get(6)?,
        revoked: r.get(7)?,
        household: r.get(8)?,
        flagged: r.get(9)?,
    })
}

/// What a fleet list asks for; every field narrows it (`None`: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Exactly this CPE.
    pub cpe: Option<String>,
    /// `%text%` (LIKE-escaped with `\`) against id, label, household and host names.
    pub text: Option<String>,
    /// A device MAC, canonical form.
    pub mac: Option<String>,
    /// A public address, ever held.
    pub ip: Option<String>,
    /// With [`Filter::ip`] and a time: the CPE that held it then (`Some("")`: nobody did).
    pub holder: Option<String>,
    /// Status word ([`CpeRow::status_word`]).
    pub status: Option<&'static str>,
    /// Verdicts a device must have.
    pub verdicts: Option<(&'static str, &'static str)>,
    /// Agent version.
    pub agent: Option<String>,
    /// Fleet policy version.
    pub policy: Option<i64>,
}

/// Column to sort the CPE list by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// CPE id.
    #[default]
    Cpe,
    /// Household name.
    Household,
    /// Status word.
    Status,
    /// Last state update.
    Seen,
    /// Current public address.
    Ip,
    /// Agent version.
    Agent,
    /// Applied fleet policy version.
    Policy,
    /// Count of flagged devices.
    Flagged,
}

impl Sort {
    fn column(self) -> &'static str {
        match self {
            Sort::Cpe => "c.cpe_id",
            Sort::Household => "h.name",
            Sort::Status => STATUS,
            Sort::Seen => "s.updated_ms",
            Sort::Ip => "s.public_ip",
            Sort::Agent => "s.agent_version",
            Sort::Policy => "s.fleet_policy_version",
            Sort::Flagged => "10",
        }
    }
}

/// The CPEs matching `f`: how many in all, and `limit` of them from `offset` in `sort`
/// order (ties by CPE id).
///
/// # Errors
/// [`StoreError::Db`].
pub fn search(
    db: &impl Sql,
    f: &Filter,
    sort: Sort,
    desc: bool,
    limit: u32,
    offset: u64,
) -> Result<(u64, Vec<CpeRow>), StoreError> {
    // Every optional filter is typed, so that PostgreSQL knows its parameter's type when it
    // is NULL; the text search ignores case on both backends.
    let filter = format!(
        " WHERE (CAST(?1 AS TEXT) IS NULL OR c.cpe_id = ?1)
          AND (CAST(?2 AS TEXT) IS NULL OR c.cpe_id = ?2)
          AND (CAST(?3 AS TEXT) IS NULL OR LOWER(c.cpe_id) LIKE LOWER(?3) ESCAPE '\\'
               OR LOWER(c.label) LIKE LOWER(?3) ESCAPE '\\'
               OR LOWER(h.name) LIKE LOWER(?3) ESCAPE '\\'
               OR c.cpe_id IN (SELECT cpe_id FROM devices
                   WHERE LOWER(hostname) LIKE LOWER(?3) ESCAPE '\\'))
          AND (CAST(?4 AS TEXT) IS NULL
               OR c.cpe_id IN (SELECT cpe_id FROM devices WHERE mac = ?4))
          AND (CAST(?5 AS TEXT) IS NULL OR ?2 IS NOT NULL OR s.public_ip = ?5
               OR c.cpe_id IN (SELECT cpe_id FROM public_ips WHERE ip = ?5))
          AND (CAST(?6 AS TEXT) IS NULL OR {STATUS} = ?6)
          AND (CAST(?7 AS TEXT) IS NULL OR c.cpe_id IN
               (SELECT cpe_id FROM devices WHERE verdict IN (?7, CAST(?8 AS TEXT))))
          AND (CAST(?9 AS TEXT) IS NULL OR s.agent_version = ?9)
          AND (CAST(?10 AS BIGINT) IS NULL OR s.fleet_policy_version = ?10)"
    );
    let (v1, v2) = f.verdicts.unzip();
    let params = db_params![
        f.cpe.as_ref(),
        f.holder.as_ref(),
        f.text.as_ref(),
        f.mac.as_ref(),
        f.ip.as_ref(),
        f.status,
        v1,
        v2,
        f.agent.as_ref(),
        f.policy,
    ];
    let total: u64 = db.query_one(&format!("SELECT COUNT(*){FROM}{filter}"), params)?;
    let dir = if desc { "DESC" } else { "ASC" };
    let sql = format!(
        "{SELECT}{FROM}{filter} ORDER BY {} {dir} NULLS LAST, c.cpe_id {dir} LIMIT {limit} OFFSET {offset}",
        sort.column()
    );
    let rows = db
        .query(&sql, params)?
        .iter()
        .map(row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((total, rows))
}

/// One CPE with its state and household, if it is enrolled (revoked or not).
///
/// # Errors
/// [`StoreError::Db`].
pub fn one(db: &impl Sql, cpe_id: &str) -> Result<Option<CpeRow>, StoreError> {
    let filter = Filter {
        cpe: Some(cpe_id.to_string()),
        ..Filter::default()
    };
    Ok(search(db, &filter, Sort::default(), false, 1, 0)?.1.pop())
}

/// How many CPEs are online, offline, never seen and revoked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// Online now.
    pub online: u64,
    /// Reported themselves offline (or their last will did).
    pub offline: u64,
    /// Enrolled, never reported state.
    pub never: u64,
    /// Revoked.
    pub revoked: u64,
}

/// Counts CPEs by status word.
///
/// # Errors
/// [`StoreError::Db`].
pub fn status_counts(db: &impl Sql) -> Result<StatusCounts, StoreError> {
    let mut out = StatusCounts::default();
    let rows = db.query(
        &format!(
            "SELECT {STATUS}, COUNT(*) FROM cpes c LEFT JOIN cpe_state s ON s.cpe_id = c.cpe_id
             GROUP BY 1"
        ),
        &[],
    )?;
    for r in rows {
        let (word, n): (String, u64) = (r.get(0)?, r.get(1)?);
        match word.as_str() {
            "online" => out.online += n,
            "never" => out.never += n,
            "revoked" => out.revoked += n,
            _ => out.offline += n,
        }
    }
    Ok(out)
}

/// How many CPEs are enrolled and not revoked: the routers a fleet policy reaches.
///
/// # Errors
/// [`StoreError::Db`].
pub fn active_count(db: &impl Sql) -> Result<u64, StoreError> {
    Ok(db.query_one("SELECT COUNT(*) FROM cpes WHERE revoked_at_ms IS NULL", &[])?)
}

/// The per-CPE policy version `cpe_id` last reported applied, if any.
///
/// # Errors
/// [`StoreError::Db`].
pub fn cpe_policy_version(db: &impl Sql, cpe_id: &str) -> Result<Option<i64>, StoreError> {
    let row = db.query_opt(
        "SELECT cpe_policy_version FROM cpe_state WHERE cpe_id = ?1",
        db_params![cpe_id],
    )?;
    Ok(match row {
        Some(r) => r.get(0)?,
        None => None,
    })
}

/// Rows the tests set a fleet up with, written directly (no signed messages).
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// Enrolls `cpe_id` (key `k`, at 0) with a label, revoked at `revoked_ms` if given.
    pub(crate) fn cpe(db: &impl Sql, cpe_id: &str, label: Option<&str>, revoked_ms: Option<u64>) {
        db.execute(
            "INSERT INTO cpes (cpe_id, public_key, label, enrolled_at_ms, revoked_at_ms)
             VALUES (?1, 'k', ?2, 0, ?3)",
            db_params![cpe_id, label, revoked_ms],
        )
        .unwrap();
    }

    /// The state `cpe_id` last reported, at `updated_ms`.
    pub(crate) fn state(
        db: &impl Sql,
        cpe_id: &str,
        status: &str,
        agent: Option<&str>,
        fleet_policy: Option<u64>,
        public_ip: Option<&str>,
        updated_ms: u64,
    ) {
        db.execute(
            "INSERT INTO cpe_state (cpe_id, status, agent_version, fleet_policy_version,
                public_ip, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            db_params![cpe_id, status, agent, fleet_policy, public_ip, updated_ms],
        )
        .unwrap();
    }

    /// `cpe_id` held the public address `ip` from `first_ms` to `last_ms`.
    pub(crate) fn held(db: &impl Sql, cpe_id: &str, ip: &str, first_ms: u64, last_ms: u64) {
        db.execute(
            "INSERT INTO public_ips (cpe_id, ip, first_seen_ms, last_seen_ms)
             VALUES (?1, ?2, ?3, ?4)",
            db_params![cpe_id, ip, first_ms, last_ms],
        )
        .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{cpe, held, state};
    use super::*;

    /// Four routers: cpe-a (online, household "Müller", agent 1.2, policy 3, an infected
    /// laptop, address 203.0.113.7 now), cpe-b (offline, held 203.0.113.7 earlier),
    /// cpe-c (never seen), cpe-d (revoked).
    fn fleet(db: &impl Sql) {
        cpe(db, "cpe-a", Some("Kitchen"), None);
        cpe(db, "cpe-b", None, None);
        cpe(db, "cpe-c", None, None);
        cpe(db, "cpe-d", None, Some(5));
        state(
            db,
            "cpe-a",
            "online",
            Some("1.2"),
            Some(3),
            Some("203.0.113.7"),
            100,
        );
        state(
            db,
            "cpe-b",
            "offline",
            Some("1.1"),
            Some(2),
            Some("198.51.100.9"),
            100,
        );
        let household: i64 = db
            .query_one(
                "INSERT INTO households (name, created_ms) VALUES ('Müller', 0) RETURNING id",
                &[],
            )
            .unwrap();
        db.execute(
            "INSERT INTO household_cpes (cpe_id, household_id) VALUES ('cpe-a', ?1)",
            db_params![household],
        )
        .unwrap();
        db.execute(
            "INSERT INTO devices (cpe_id, mac, hostname, ips_json, verdict, severity, score,
                since_ms, last_seen_ms, last_fact, action, evidence_json, observed_json)
             VALUES ('cpe-a', '02:00:00:00:00:01', 'Laptop-Anna', '[]', 'infected', 2, 0.9,
                1, 1, 'alert', 'block', '[]', '{}')",
            &[],
        )
        .unwrap();
        held(
            db,
            "cpe-b",
            "203.0.113.7",
            1_764_500_000_000,
            1_764_503_600_000,
        );
    }

    fn ids(db: &impl Sql, f: Filter) -> Vec<String> {
        let (total, rows) = search(db, &f, Sort::Cpe, false, 50, 0).unwrap();
        assert_eq!(total as usize, rows.len());
        rows.into_iter().map(|r| r.cpe_id).collect()
    }

    #[test]
    fn every_fleet_filter_works_on_both_backends() {
        for (url, _dir) in crate::store::db::tests::backends() {
            let store = crate::store::Store::open_url(&url).unwrap();
            let db = &**store.db();
            fleet(db);
            let text = |t: &str| Filter {
                text: Some(format!("%{t}%")),
                ..Filter::default()
            };
            assert_eq!(ids(db, Filter::default()).len(), 4, "{url}");
            // Text, case-insensitive, against id, label, household and host names.
            assert_eq!(ids(db, text("kitchen")), ["cpe-a"], "{url}");
            // (ASCII letters only: SQLite folds no others.)
            assert_eq!(ids(db, text("MüLLER")).len(), 1, "{url}");
            assert_eq!(ids(db, text("laptop-anna")), ["cpe-a"], "{url}");
            assert_eq!(ids(db, text("CPE-")).len(), 4, "{url}");
            let mac = Filter {
                mac: Some("02:00:00:00:00:01".into()),
                ..Filter::default()
            };
            assert_eq!(ids(db, mac), ["cpe-a"], "{url}");
            // An address: every router that ever held it (or holds it now); with the holder
            // at a time, only that one, and nobody when nobody held it.
            let ip = |holder: Option<&str>| Filter {
                ip: Some("203.0.113.7".into()),
                holder: holder.map(Into::into),
                ..Filter::default()
            };
            assert_eq!(ids(db, ip(None)), ["cpe-a", "cpe-b"], "{url}");
            assert_eq!(ids(db, ip(Some("cpe-b"))), ["cpe-b"], "{url}");
            assert!(ids(db, ip(Some(""))).is_empty(), "{url}");
            let status = |s: &'static str| Filter {
                status: Some(s),
                ..Filter::default()
            };
            assert_eq!(ids(db, status("online")), ["cpe-a"], "{url}");
            assert_eq!(ids(db, status("offline")), ["cpe-b"], "{url}");
            assert_eq!(ids(db, status("never")), ["cpe-c"], "{url}");
            assert_eq!(ids(db, status("revoked")), ["cpe-d"], "{url}");
            let verdicts = |v| Filter {
                verdicts: Some(v),
                ..Filter::default()
            };
            assert_eq!(
                ids(db, verdicts(("infected", "suspicious"))),
                ["cpe-a"],
                "{url}"
            );
            assert!(
                ids(db, verdicts(("suspicious", "suspicious"))).is_empty(),
                "{url}"
            );
            let agent = Filter {
                agent: Some("1.1".into()),
                ..Filter::default()
            };
            assert_eq!(ids(db, agent), ["cpe-b"], "{url}");
            let policy = Filter {
                policy: Some(3),
                ..Filter::default()
            };
            assert_eq!(ids(db, policy), ["cpe-a"], "{url}");
            // Sorted by flagged devices, most first; a page of one; the row as the API
            // shows it.
            let (total, rows) = search(db, &Filter::default(), Sort::Flagged, true, 1, 0).unwrap();
            assert_eq!((total, rows.len()), (4, 1), "{url}");
            let first = &rows[0];
            assert_eq!(first.cpe_id, "cpe-a", "{url}");
            assert_eq!(first.flagged, 1, "{url}");
            assert_eq!(first.household.as_deref(), Some("Müller"), "{url}");
            assert_eq!(first.fleet_policy_version, Some(3), "{url}");
            assert_eq!(first.status_word(), "online", "{url}");
            assert!(!first.revoked, "{url}");
            let (_, second) = search(db, &Filter::default(), Sort::Flagged, true, 1, 1).unwrap();
            assert_eq!(second[0].cpe_id, "cpe-d", "ties by id, descending: {url}");
            let revoked = one(db, "cpe-d").unwrap().unwrap();
            assert_eq!(revoked.status_word(), "revoked", "{url}");
            assert!(one(db, "nope").unwrap().is_none(), "{url}");
            let counts = status_counts(db).unwrap();
            assert_eq!(
                (counts.online, counts.offline, counts.never, counts.revoked),
                (1, 1, 1, 1),
                "{url}"
            );
            assert_eq!(active_count(db).unwrap(), 3, "{url}");
            assert_eq!(cpe_policy_version(db, "cpe-a").unwrap(), None, "{url}");
            db.execute(
                "UPDATE cpe_state SET cpe_policy_version = 7 WHERE cpe_id = 'cpe-a'",
                &[],
            )
            .unwrap();
            assert_eq!(cpe_policy_version(db, "cpe-a").unwrap(), Some(7), "{url}");
            assert_eq!(cpe_policy_version(db, "cpe-c").unwrap(), None, "{url}");
        }
    }
}
