//! Issue 13, subscriber-declared senders against the real web server over the seeded
//! database: a subscriber declares their own mail server, a viewer cannot decide it, an
//! operator approves it and the router gets a per-CPE policy whose allowlist holds the
//! device; `POST /noc/cpe/{id}/allow` does the same for any NOC page. Hostile clients: a
//! household declaring another household's device, a viewer approving or allowing, form
//! posts without the session's CSRF token. Each refusal leaves the database as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod web_common;

use std::path::Path;

use smtpguard_controller::operators::{self, Level};
use smtpguard_controller::store::Store;
use smtpguard_protocol::{MacAddr, Policy, PolicyScope};
use web_common::{csrf_of, http, login, now_ms, post_form, Server};

fn count(db: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// The per-CPE policy stored for `cpe` (its version and allowlist), if any.
fn cpe_policy(db: &Path, cpe: &str) -> Option<(u64, Vec<MacAddr>)> {
    let store = Store::open(db).unwrap();
    store
        .latest_policy(PolicyScope::Cpe, Some(cpe))
        .unwrap()
        .map(|p| {
            let policy: Policy = serde_json::from_str(&p.policy_json).unwrap();
            (p.version, policy.allow_macs)
        })
}

fn add_operator(db: &Path, name: &str, level: Level) -> String {
    let db_handle = smtpguard_controller::web::open_db(db).unwrap();
    operators::add(&db_handle, name, level, now_ms()).unwrap()
}

#[test]
fn a_declared_sender_is_allowed_on_its_router_only_by_an_operator_and_only_for_its_household() {
    let s = Server::start().unwrap();
    let a = &s.seeded.households[0];
    let b = &s.seeded.households[1];
    let (a_mac, _) = a.flagged.clone().unwrap();
    let (b_mac, _) = b.flagged.clone().unwrap();
    let declarations = |s: &Server| count(&s.db, "SELECT COUNT(*) FROM sender_declarations");

    // The subscriber's page lists their own devices only.
    let hh = login(s.addr, &a.token).unwrap();
    let page = http(s.addr, "GET", "/my/senders", &[("Cookie", &hh)], b"").unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(&format!("{} {a_mac}", a.cpe_id)),
        "{}",
        page.body
    );
    assert!(!page.body.contains(&b_mac.to_string()), "{}", page.body);
    // A subscriber reads nothing of the NOC's rollouts.
    for path in ["/api/rollouts", "/noc/policy/rollouts", "/noc/senders"] {
        let r = http(s.addr, "GET", path, &[("Cookie", &hh)], b"").unwrap();
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
    let my = http(s.addr, "GET", "/my", &[("Cookie", &hh)], b"").unwrap();
    assert!(my.body.contains(r#"href="/my/senders""#));
    let csrf = csrf_of(&page.body).unwrap();

    // Hostile: another household's device, a forged device, no or a wrong CSRF token.
    let other = format!("{} {b_mac}", b.cpe_id);
    let r = post_form(
        s.addr,
        "/my/senders",
        &hh,
        &[
            ("csrf", &csrf),
            ("device", &other),
            ("kind", "server"),
            ("reason", "mine now"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    let forged = format!("{} 02:00:00:00:00:99", a.cpe_id);
    let r = post_form(
        s.addr,
        "/my/senders",
        &hh,
        &[
            ("csrf", &csrf),
            ("device", &forged),
            ("kind", "server"),
            ("reason", "x"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    let mine = format!("{} {a_mac}", a.cpe_id);
    for token in ["", "forged-token"] {
        let r = post_form(
            s.addr,
            "/my/senders",
            &hh,
            &[
                ("csrf", token),
                ("device", &mine),
                ("kind", "server"),
                ("reason", "x"),
            ],
        )
        .unwrap();
        assert_eq!(r.status, 403, "{}", r.body);
    }
    assert_eq!(declarations(&s), 0);

    // The real declaration.
    let r = post_form(
        s.addr,
        "/my/senders",
        &hh,
        &[
            ("csrf", &csrf),
            ("device", &mine),
            ("kind", "server"),
            ("reason", "Raspberry Pi running Postfix"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(declarations(&s), 1);
    let page = http(s.addr, "GET", "/my/senders", &[("Cookie", &hh)], b"").unwrap();
    assert!(page.body.contains("waiting for the NOC"), "{}", page.body);
    let id: i64 = count(&s.db, "SELECT MAX(id) FROM sender_declarations");

    // A viewer sees it but cannot approve it, even with their own valid CSRF token.
    let viewer = login(s.addr, &add_operator(&s.db, "vera", Level::Viewer)).unwrap();
    let noc = http(s.addr, "GET", "/noc/senders", &[("Cookie", &viewer)], b"").unwrap();
    assert_eq!(noc.status, 200);
    assert!(
        noc.body.contains("Raspberry Pi running Postfix"),
        "{}",
        noc.body
    );
    assert!(!noc.body.contains("Approve"), "{}", noc.body);
    let viewer_csrf = csrf_of(&noc.body).unwrap();
    let r = post_form(
        s.addr,
        &format!("/noc/senders/{id}"),
        &viewer,
        &[("csrf", &viewer_csrf), ("decision", "approve")],
    )
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    let r = post_form(
        s.addr,
        &format!("/noc/cpe/{}/allow", a.cpe_id),
        &viewer,
        &[
            ("csrf", &viewer_csrf),
            ("mac", &a_mac.to_string()),
            ("note", "x"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    // A subscriber cannot decide either.
    let r = post_form(
        s.addr,
        &format!("/noc/senders/{id}"),
        &hh,
        &[("csrf", &csrf), ("decision", "approve")],
    )
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        count(
            &s.db,
            "SELECT COUNT(*) FROM sender_declarations WHERE status = 'pending'"
        ),
        1
    );
    assert_eq!(count(&s.db, "SELECT COUNT(*) FROM allowed_devices"), 0);
    assert_eq!(cpe_policy(&s.db, &a.cpe_id), None);

    // An operator without the CSRF token is refused; with it, approves.
    let oscar = login(s.addr, &add_operator(&s.db, "oscar", Level::Operator)).unwrap();
    let noc = http(s.addr, "GET", "/noc/senders", &[("Cookie", &oscar)], b"").unwrap();
    assert!(noc.body.contains("Approve"), "{}", noc.body);
    let oscar_csrf = csrf_of(&noc.body).unwrap();
    let r = post_form(
        s.addr,
        &format!("/noc/senders/{id}"),
        &oscar,
        &[("csrf", &viewer_csrf), ("decision", "approve")],
    )
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(count(&s.db, "SELECT COUNT(*) FROM allowed_devices"), 0);
    let r = post_form(
        s.addr,
        &format!("/noc/senders/{id}"),
        &oscar,
        &[("csrf", &oscar_csrf), ("decision", "approve")],
    )
    .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    let (v1, allowed) = cpe_policy(&s.db, &a.cpe_id).expect("no per-CPE policy signed");
    assert_eq!(allowed, vec![a_mac]);
    assert_eq!(
        cpe_policy(&s.db, &b.cpe_id),
        None,
        "another router got a policy"
    );
    let page = http(s.addr, "GET", "/my/senders", &[("Cookie", &hh)], b"").unwrap();
    assert!(page.body.contains("approved"), "{}", page.body);
    // The router's page says so in the device's row, and no longer offers to allow it.
    let cpe_page = http(
        s.addr,
        "GET",
        &format!("/noc/cpe/{}", a.cpe_id),
        &[("Cookie", &oscar)],
        b"",
    )
    .unwrap();
    let row = cpe_page
        .body
        .split(r#"id="device-actions""#)
        .nth(1)
        .unwrap_or_else(|| panic!("no device actions: {}", cpe_page.body))
        .split(&format!(r#"<tr data-mac="{a_mac}">"#))
        .nth(1)
        .and_then(|rest| rest.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row for {a_mac}: {}", cpe_page.body));
    assert!(row.contains("Allowed on this router"), "{row}");
    assert!(!row.contains("/allow\""), "{row}");
    // Deciding again is refused: it is no longer pending.
    let r = post_form(
        s.addr,
        &format!("/noc/senders/{id}"),
        &oscar,
        &[("csrf", &oscar_csrf), ("decision", "decline")],
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);

    // The reusable route: another device on the same router, kept with the first.
    let extra: MacAddr = "02:00:5e:00:00:42".parse().unwrap();
    let r = post_form(
        s.addr,
        &format!("/noc/cpe/{}/allow", a.cpe_id),
        &oscar,
        &[("mac", &extra.to_string()), ("note", "no csrf")],
    )
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    let r = post_form(
        s.addr,
        &format!("/noc/cpe/{}/allow", a.cpe_id),
        &oscar,
        &[
            ("csrf", &oscar_csrf),
            ("mac", &extra.to_string()),
            ("note", "print server relay"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    let (v2, allowed) = cpe_policy(&s.db, &a.cpe_id).unwrap();
    assert!(v2 > v1);
    assert!(
        allowed.len() == 2 && allowed.contains(&a_mac) && allowed.contains(&extra),
        "{allowed:?}"
    );
    let r = post_form(
        s.addr,
        "/noc/cpe/cpe-nobody/allow",
        &oscar,
        &[
            ("csrf", &oscar_csrf),
            ("mac", &extra.to_string()),
            ("note", "x"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("no enrolled router"), "{}", r.body);

    // The audit log names who did what.
    let admin = format!("Bearer {}", s.operator);
    let log = http(
        s.addr,
        "GET",
        "/api/audit?limit=200",
        &[("Authorization", &admin)],
        b"",
    )
    .unwrap();
    let log: serde_json::Value = serde_json::from_str(&log.body).unwrap();
    let entries = log["entries"].as_array().unwrap();
    let has = |action: &str, actor: &str, outcome: &str| {
        entries
            .iter()
            .any(|e| e["action"] == action && e["actor"] == actor && e["outcome"] == outcome)
    };
    let declared = |outcome: &str| {
        entries.iter().any(|e| {
            e["action"] == "sender_declare"
                && e["outcome"] == outcome
                && e["actor"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("household "))
        })
    };
    assert!(declared("refused") && declared("ok"), "{entries:?}");
    assert!(has("sender_decision", "oscar", "approved"), "{entries:?}");
    assert!(has("device_allow", "oscar", "ok"), "{entries:?}");
    assert!(has("device_allow", "oscar", "refused"), "{entries:?}");
}
