//! The audit log: who did what to which target, when, and how it ended. Append-only: the
//! database refuses to change or delete a row, and PostgreSQL to truncate the table
//! (triggers); nothing in the controller tries. [`crate::store::audit`] keeps the rows.
//!
//! Recorded: sign-ins (also refused ones), policy publishes (with what changed), campaign
//! pushes, release decisions, commands sent to routers, abuse lookups, enrollments,
//! revocations and password rotations of CPEs, operators added and revoked. The actor is an
//! operator's name, [`crate::operators::TOKEN_OPERATOR`], `cli` for the controller's command
//! line, or `demo` for the demo's own set-up.

use serde::Serialize;

use crate::store::db::{DbError, Sql};

/// Longest detail kept per entry (bytes); longer ones are cut at a character boundary.
pub const DETAIL_MAX: usize = 4096;

/// Entries one page of the log shows at most.
pub const PAGE_MAX: usize = 200;

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Row id: increases with every entry.
    pub id: i64,
    /// When (Unix ms).
    pub at_ms: u64,
    /// Who.
    pub actor: String,
    /// What, e.g. `sign_in`, `policy_publish`, `release_decision`, `command`.
    pub action: String,
    /// On what: a CPE id, `cpe/mac`, a policy scope, a report id.
    pub target: String,
    /// How it ended: `ok`, `refused`, `failed`, or the decision.
    pub outcome: String,
    /// More, in words (what changed, why refused).
    pub detail: String,
}

/// What to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only targets containing this text.
    pub target: Option<String>,
    /// Only entries older than this id (the next page).
    pub before_id: Option<i64>,
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends an entry.
///
/// # Errors
/// [`DbError`].
pub fn record(
    db: &impl Sql,
    at_ms: u64,
    actor: &str,
    action: &str,
    target: &str,
    outcome: &str,
    detail: &str,
) -> Result<(), DbError> {
    crate::store::audit::insert(
        db,
        at_ms,
        cut(actor, 200),
        cut(action, 64),
        cut(target, 200),
        cut(outcome, 64),
        cut(detail, DETAIL_MAX),
    )
}

/// Entries matching `filter`, newest first, at most `limit` (capped at [`PAGE_MAX`]).
///
/// # Errors
/// [`DbError`].
pub fn list(db: &impl Sql, filter: &Filter, limit: usize) -> Result<Vec<Entry>, DbError> {
    let limit = i64::try_from(limit.clamp(1, PAGE_MAX)).unwrap_or(1);
    crate::store::audit::list(db, filter, limit)
}

/// What changed from `old` to `new`, `key: old -> new` per changed setting, for a policy
/// publish's entry; `no change` when nothing did.
pub fn policy_diff<T: Serialize>(old: &T, new: &T) -> String {
    let changes = policy_changes(old, new);
    if changes.is_empty() {
        "no change".into()
    } else {
        changes.join("; ")
    }
}

/// What changed from `old` to `new`: one `key: old -> new` per changed setting (nested keys
/// dotted, values as JSON), in key order.
pub fn policy_changes<T: Serialize>(old: &T, new: &T) -> Vec<String> {
    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    if let (Ok(old), Ok(new)) = (serde_json::to_value(old), serde_json::to_value(new)) {
        flatten("", &old, &mut a);
        flatten("", &new, &mut b);
    }
    let old: std::collections::BTreeMap<_, _> = a.into_iter().collect();
    let new: std::collections::BTreeMap<_, _> = b.into_iter().collect();
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let none = String::from("(none)");
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| {
            format!(
                "{k}: {} -> {}",
                old.get(k).unwrap_or(&none),
                new.get(k).unwrap_or(&none)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::tests::backends;
    use crate::store::Store;

    #[test]
    fn entries_are_appended_filtered_and_paged() {
        for (url, _g) in backends() {
            let store = Store::open_url(&url).unwrap();
            entries_on(store.db());
        }
    }

    fn entries_on(conn: &crate::store::db::Db) {
        for i in 0..5u64 {
            let actor = if i % 2 == 0 { "alice" } else { "bob" };
            record(
                conn,
                1_000 + i,
                actor,
                "command",
                &format!("cpe-{i}"),
                "ok",
                "",
            )
            .unwrap();
        }
        record(
            conn,
            2_000,
            "cli",
            "cpe_add",
            "cpe-9",
            "ok",
            &"é".repeat(5_000),
        )
        .unwrap();
        let all = list(conn, &Filter::default(), 50).unwrap();
        assert_eq!(all.len(), 6);
        assert_eq!(all[0].action, "cpe_add");
        assert!(all[0].detail.len() <= DETAIL_MAX);
        let alice = Filter {
            actor: Some("alice".into()),
            ..Filter::default()
        };
        let page1 = list(conn, &alice, 2).unwrap();
        assert_eq!(
            page1.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(),
            ["cpe-4", "cpe-2"]
        );
        let page2 = list(
            conn,
            &Filter {
                before_id: Some(page1[1].id),
                ..alice
            },
            2,
        )
        .unwrap();
        assert_eq!(page2.len(), 1);
        assert_eq!(page2[0].target, "cpe-0");
        let by_target = Filter {
            target: Some("cpe-3".into()),
            ..Filter::default()
        };
        assert_eq!(list(conn, &by_target, 10).unwrap().len(), 1);
        // What a policy publish records.
        let old = serde_json::json!({"mode": "monitor", "thresholds": {"infected": 0.7}});
        let new = serde_json::json!({"mode": "enforce", "thresholds": {"infected": 0.7}, "x": 1});
        assert_eq!(
            policy_diff(&old, &new),
            r#"mode: "monitor" -> "enforce"; x: (none) -> 1"#
        );
        assert_eq!(policy_diff(&old, &old), "no change");
        // A target filter is plain text, not a pattern.
        let pattern = Filter {
            target: Some("cpe-%".into()),
            ..Filter::default()
        };
        assert!(list(conn, &pattern, 10).unwrap().is_empty());
        // Append-only: `store::audit`'s tests.
    }
}
