//! What the NOC pages keep that belongs to no other store module: the campaigns found among
//! the fleet's infected devices (table `campaigns`), each recorded once when first found,
//! with the fleet policy version its indicators were pushed in ([`campaign`],
//! [`campaign_pushed`]). Finding campaigns is `crate::campaigns`'s; only the record is here.

use super::db::Sql;
use super::StoreError;
use crate::db_params;

/// Records campaign `id`, first found at `first_ms`, unless it was already; the fleet
/// policy version its indicators were pushed in, if they were.
///
/// # Errors
/// [`StoreError::Db`].
pub fn campaign(db: &impl Sql, id: &str, first_ms: u64) -> Result<Option<i64>, StoreError> {
    db.execute(
        "INSERT INTO campaigns (id, first_seen_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        db_params![id, first_ms],
    )?;
    let row = db.query_opt(
        "SELECT pushed_version FROM campaigns WHERE id = ?1",
        db_params![id],
    )?;
    Ok(match row {
        Some(r) => r.get(0)?,
        None => None,
    })
}

/// Notes that campaign `id`'s indicators were pushed in fleet policy `version` at `now_ms`.
///
/// # Errors
/// [`StoreError::Db`].
pub fn campaign_pushed(
    db: &impl Sql,
    id: &str,
    version: u64,
    now_ms: u64,
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE campaigns SET pushed_version = ?2, pushed_ms = ?3 WHERE id = ?1",
        db_params![id, version, now_ms],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A campaign is recorded once, however often it is found, and comes back with the
    /// version its indicators were pushed in.
    #[test]
    fn campaigns_are_recorded_once_with_their_pushed_version_on_both_backends() {
        for (url, _dir) in crate::store::db::tests::backends() {
            let store = crate::store::Store::open_url(&url).unwrap();
            let db = &**store.db();
            assert_eq!(campaign(db, "c-1", 10).unwrap(), None, "{url}");
            assert_eq!(campaign(db, "c-1", 20).unwrap(), None, "{url}");
            campaign_pushed(db, "c-1", 12, 30).unwrap();
            assert_eq!(campaign(db, "c-1", 40).unwrap(), Some(12), "{url}");
            let first: i64 = db
                .query_one("SELECT first_seen_ms FROM campaigns WHERE id = 'c-1'", &[])
                .unwrap();
            assert_eq!(first, 10, "{url}");
            let rows: i64 = db.query_one("SELECT COUNT(*) FROM campaigns", &[]).unwrap();
            assert_eq!(rows, 1, "{url}");
        }
    }
}
