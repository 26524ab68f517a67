//! Issue 13, what each NOC role can and cannot do, in a real browser (headless Chromium over
//! WebDriver) against the real `smtpguard-demo --seeded` process. Operators are made the
//! way an ISP makes them, with `smtpguard-controller operator add NAME --role ROLE`. Each
//! signs in through the login form and the NOC header names them and their role; what a
//! lower role must not do is then *posted* with that operator's own session and CSRF token
//! (the server must refuse it, whatever the buttons show), answered 403, and the database
//! shows nothing changed. Screenshots of the new NOC pages (audit log, policy rollout
//! stages, declared senders) land in `target/screenshots/`, and in `docs/screenshots/`
//! when `SMTPGUARD_DOC_SCREENSHOTS=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod web_common;

use std::path::Path;
use std::time::{Duration, Instant};

use web_common::{csrf_of, http, login, post_form, Browser, Server};

/// `operator add NAME --role ROLE` on the demo's database; returns the printed secret.
fn add_operator(config: &Path, name: &str, role: &str) -> String {
    let printed =
        smtpguard_tests::mqtt::run_controller(config, &["operator", "add", name, "--role", role]);
    printed
        .split_whitespace()
        .find(|w| w.starts_with("op_"))
        .unwrap_or_else(|| panic!("no secret in {printed}"))
        .to_string()
}

fn scalar(db: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Signs in through the form and checks the header names the operator and role.
fn sign_in(b: &Browser, s: &Server, secret: &str, who: &str) {
    b.goto(&s.url("/login")).unwrap();
    b.type_into("#token", secret).unwrap();
    b.follow("#signin").unwrap();
    assert!(
        b.url_ends_with("/noc"),
        "{who} not signed in: {:?}",
        b.url()
    );
    let header = b.find("#signed-in").unwrap();
    assert_eq!(b.text(&header).unwrap(), who);
}

fn sign_out(b: &Browser) {
    b.follow("form[action='/logout'] button").unwrap();
}

#[test]
fn each_role_does_what_it_may_and_the_server_refuses_the_rest() {
    let s = Server::start_demo_process().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("controller.toml");
    std::fs::write(&config, format!("db_path = \"{}\"\n", s.db.display())).unwrap();
    let viewer = add_operator(&config, "vic", "viewer");
    let operator = add_operator(&config, "olga", "operator");
    let admin = add_operator(&config, "ada", "admin");
    let highest_version = || scalar(&s.db, "SELECT COALESCE(MAX(version), 0) FROM policies");
    let rollouts = || scalar(&s.db, "SELECT COUNT(*) FROM rollouts");
    let pending = || {
        scalar(
            &s.db,
            "SELECT COUNT(*) FROM sender_declarations WHERE status = 'pending'",
        )
    };

    // A subscriber declares their own mail server (the page operators decide on).
    let hh = &s.seeded.households[0];
    let (mac, _) = hh.flagged.clone().unwrap();
    let b = Browser::start(1366, 1400).unwrap();
    b.goto(&s.url("/login")).unwrap();
    b.type_into("#token", &hh.token).unwrap();
    b.follow("#signin").unwrap();
    b.follow("#senders-link").unwrap();
    assert!(b.url_ends_with("/my/senders"), "{:?}", b.url());
    b.type_into("#reason", "My home server runs Postfix for the family")
        .unwrap();
    b.follow("#declare").unwrap();
    assert!(b.page_text().unwrap().contains("waiting for the NOC"));
    sign_out(&b);
    assert_eq!(pending(), 1);
    let declaration = scalar(&s.db, "SELECT MAX(id) FROM sender_declarations");
    let candidate = "mode = \"enforce\"\nrate_limit_per_minute = 30\n";

    // Viewer: reads everything, changes nothing.
    sign_in(&b, &s, &viewer, "vic · viewer");
    b.goto(&s.url("/noc/policy")).unwrap();
    let text = b.page_text().unwrap();
    assert!(text.contains("Only admins change policy"), "{text}");
    assert!(b.find("#start-rollout").is_err());
    b.goto(&s.url("/noc/senders")).unwrap();
    assert!(b.page_text().unwrap().contains("Postfix for the family"));
    assert!(b.find("button[value=approve]").is_err());
    let session = login(s.addr, &viewer).unwrap();
    let csrf = csrf_of(
        &http(s.addr, "GET", "/noc/senders", &[("Cookie", &session)], b"")
            .unwrap()
            .body,
    )
    .unwrap();
    let (version, count) = (highest_version(), rollouts());
    for (path, fields) in [
        (
            "/noc/policy".to_string(),
            vec![
                ("policy", candidate),
                ("note", "viewer tries"),
                ("action", "publish"),
            ],
        ),
        (
            "/noc/policy/rollouts".to_string(),
            vec![
                ("policy", candidate),
                ("note", "viewer tries"),
                ("cohort", "50%"),
            ],
        ),
        (
            format!("/noc/senders/{declaration}"),
            vec![("decision", "approve")],
        ),
        (
            format!("/noc/cpe/{}/allow", hh.cpe_id),
            vec![("mac", "02:00:00:00:00:01"), ("note", "viewer tries")],
        ),
    ] {
        let mut fields = fields;
        fields.push(("csrf", &csrf));
        let r = post_form(s.addr, &path, &session, &fields).unwrap();
        assert_eq!(r.status, 403, "viewer posting {path}: {}", r.body);
    }
    assert_eq!(
        (highest_version(), rollouts(), pending()),
        (version, count, 1)
    );
    sign_out(&b);

    // Operator: decides declarations; policy stays the admins'.
    sign_in(&b, &s, &operator, "olga · operator");
    b.goto(&s.url("/noc/policy")).unwrap();
    assert!(b.find("#start-rollout").is_err());
    let session = login(s.addr, &operator).unwrap();
    let csrf = csrf_of(
        &http(s.addr, "GET", "/noc/senders", &[("Cookie", &session)], b"")
            .unwrap()
            .body,
    )
    .unwrap();
    for (path, fields) in [
        (
            "/noc/policy",
            vec![
                ("policy", candidate),
                ("note", "operator tries"),
                ("action", "publish"),
            ],
        ),
        (
            "/noc/policy/rollouts",
            vec![
                ("policy", candidate),
                ("note", "operator tries"),
                ("cohort", "50%"),
            ],
        ),
        ("/noc/policy/rollback/1", vec![]),
    ] {
        let mut fields = fields;
        fields.push(("csrf", &csrf));
        let r = post_form(s.addr, path, &session, &fields).unwrap();
        assert_eq!(r.status, 403, "operator posting {path}: {}", r.body);
    }
    assert_eq!((highest_version(), rollouts()), (version, count));
    // Without the CSRF token even the operator's own decision is refused.
    let r = post_form(
        s.addr,
        &format!("/noc/senders/{declaration}"),
        &session,
        &[("decision", "approve")],
    )
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(pending(), 1);
    b.goto(&s.url("/noc/senders")).unwrap();
    b.follow("button[value=approve]").unwrap();
    assert!(b.page_text().unwrap().contains("decided"));
    assert_eq!(pending(), 0);
    assert_eq!(
        scalar(
            &s.db,
            &format!("SELECT COUNT(*) FROM allowed_devices WHERE mac = '{mac}'")
        ),
        1
    );
    assert!(highest_version() > version, "no per-CPE policy signed");
    b.screenshot("noc-senders").unwrap();
    sign_out(&b);

    // Admin: starts a canary rollout from the editor; the stages refresh in place.
    sign_in(&b, &s, &admin, "ada · admin");
    b.goto(&s.url("/noc/policy")).unwrap();
    b.clear("#policy").unwrap();
    b.type_into("#policy", candidate).unwrap();
    b.type_into("#note", "canary: gentler rate limit").unwrap();
    b.clear("#cohort").unwrap();
    b.type_into("#cohort", "50%").unwrap();
    b.follow("#start-rollout").unwrap();
    assert_eq!(rollouts(), 1, "{}", b.page_text().unwrap());
    assert_eq!(
        scalar(
            &s.db,
            "SELECT COUNT(*) FROM rollouts WHERE started_by = 'ada' AND status = 'canary'"
        ),
        1
    );
    b.goto(&s.url("/noc/policy#rollouts")).unwrap();
    let section = b.find("article.rollout[data-status=canary]").unwrap();
    let text = b.text(&section).unwrap();
    assert!(text.contains("Rollout 1"), "{text}");
    assert!(
        text.contains("started by ada") || text.contains("Started by ada"),
        "{text}"
    );
    assert!(text.contains("Canary"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.find("#rollouts[data-refreshed]").is_err() {
        assert!(
            Instant::now() < deadline,
            "the rollout section did not refresh itself"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    b.screenshot("noc-policy-rollout").unwrap();

    // `GET /api/audit` on the seeded demo: its start-up policy publish, and each
    // operator's sign-in and steps under their own name.
    let log = http(
        s.addr,
        "GET",
        "/api/audit?limit=500",
        &[("Cookie", &session)],
        b"",
    )
    .unwrap();
    assert_eq!(log.status, 200, "{}", log.body);
    let log: serde_json::Value = serde_json::from_str(&log.body).unwrap();
    let entries = log["entries"].as_array().unwrap();
    let has = |actor: &str, action: &str, outcome: &str| {
        entries
            .iter()
            .any(|e| e["actor"] == actor && e["action"] == action && e["outcome"] == outcome)
    };
    assert!(has("demo", "policy_publish", "ok"), "{entries:?}");
    for who in ["vic", "olga", "ada"] {
        assert!(has(who, "sign_in", "ok"), "{who}: {entries:?}");
    }
    assert!(has("olga", "sender_decision", "approved"), "{entries:?}");
    assert!(has("olga", "device_allow", "ok"), "{entries:?}");
    assert!(has("ada", "rollout_start", "ok"), "{entries:?}");

    b.goto(&s.url("/noc/audit")).unwrap();
    let text = b.page_text().unwrap();
    for needle in [
        "rollout_start",
        "ada",
        "sender_decision",
        "olga",
        "device_allow",
    ] {
        assert!(
            text.contains(needle),
            "{needle} not in the audit log: {text}"
        );
    }
    b.screenshot("noc-audit").unwrap();
}
