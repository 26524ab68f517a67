//! Households as an ISP provisions them: `smtpguard-controller household add NAME --cpe ID`
//! prints the short code for the subscriber's letter, which signs in to the portal and shows
//! that household; `household code ID` issues another (a lost letter) while the first keeps
//! working; a router that is not enrolled, or an unknown household, is refused with a clear
//! message and changes nothing; each code issued is in the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod web_common;

use std::path::Path;
use std::process::Command;

use ed25519_dalek::SigningKey;
use smtpguard_protocol::keys::{cpe_id_for, public_key_text};
use web_common::{http, login, Server};

/// The code printed on the line after "sign-in code".
fn code_of(printed: &str) -> String {
    printed
        .lines()
        .skip_while(|l| !l.contains("sign-in code"))
        .nth(1)
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| panic!("no code in {printed}"))
}

/// Runs the controller and returns (success, stdout, stderr).
fn try_controller(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(smtpguard_tests::mqtt::controller_binary().unwrap())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn count(db: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn a_household_added_on_the_command_line_signs_in_with_the_code_on_its_letter() {
    let s = Server::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("controller.toml");
    std::fs::write(&config, format!("db_path = \"{}\"\n", s.db.display())).unwrap();
    let run = |args: &[&str]| smtpguard_tests::mqtt::run_controller(&config, args);

    let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    let cpe = cpe_id_for(&key);
    let households_before = count(&s.db, "SELECT COUNT(*) FROM households");

    // A router that is not enrolled yet is refused, and no household is made.
    let (ok, _, err) = try_controller(
        &config,
        &["household", "add", "Familie Weber", "--cpe", &cpe],
    );
    assert!(!ok);
    assert!(err.contains("is not an enrolled router"), "{err}");
    assert_eq!(
        count(&s.db, "SELECT COUNT(*) FROM households"),
        households_before
    );

    run(&["cpe", "add", &cpe, &public_key_text(&key)]);
    let printed = run(&["household", "add", "Familie Weber", "--cpe", &cpe]);
    let first = code_of(&printed);
    // Three groups of four, as printed on a letter.
    assert_eq!(first.len(), 14, "{first}");
    assert_eq!(first.split('-').count(), 3, "{first}");
    let id: i64 = printed
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.trim_end_matches(':').parse().ok())
        .unwrap_or_else(|| panic!("no household id in {printed}"));

    // The code signs in, typed in lower case with spaces as a subscriber might, and the
    // portal is that household's.
    let typed = first.to_lowercase().replace('-', " ");
    let cookie = login(s.addr, &typed.replace(' ', "+")).unwrap();
    let my = http(s.addr, "GET", "/my", &[("Cookie", &cookie)], b"").unwrap();
    assert_eq!(my.status, 200);
    assert!(my.body.contains("Familie Weber"), "{}", my.body);

    // Another code for a lost letter; both work.
    let second = code_of(&run(&["household", "code", &id.to_string()]));
    assert_ne!(first, second);
    login(s.addr, &second).unwrap();
    login(s.addr, &first).unwrap();
    // An unknown household is refused.
    let (ok, _, err) = try_controller(&config, &["household", "code", "999999"]);
    assert!(!ok);
    assert!(err.contains("there is no household 999999"), "{err}");

    assert_eq!(
        count(
            &s.db,
            &format!(
                "SELECT COUNT(*) FROM audit_log WHERE action = 'household_code' AND target = 'household:{id}' AND actor = 'cli'"
            )
        ),
        2
    );
}
