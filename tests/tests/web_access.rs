//! The controller's web server over real HTTP on loopback with a seeded database: who can
//! see and do what, abuse-report mapping, hostile input and `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod web_common;

use smtpguard_controller::store::db::Sql as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use web_common::{
    csrf_of, http, http_from, login, now_ms, test_settings, urlencode, Server, AGENT_BROKER,
    OPERATOR_TOKEN,
};

/// The address of the test server's ISP relay ([`web_common::ISP_RELAY`]).
const ISP_RELAY_IP: &str = "198.51.100.7";

fn form(cookie: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "Content-Type",
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("Cookie", cookie.to_string()),
    ]
}

fn hdrs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, s)| (*k, s.as_str())).collect()
}

/// A viewer, an operator and an admin (vera, olga, ada) added to the server's database;
/// returns the connection and their sign-in secrets.
fn three_operators(
    s: &Server,
) -> (
    std::sync::Arc<smtpguard_controller::store::db::Db>,
    String,
    String,
    String,
) {
    use smtpguard_controller::operators::{self, Level};
    let conn = smtpguard_controller::web::open_db(&s.db).unwrap();
    let now = now_ms();
    let vera = operators::add(&conn, "vera", Level::Viewer, now).unwrap();
    let olga = operators::add(&conn, "olga", Level::Operator, now).unwrap();
    let ada = operators::add(&conn, "ada", Level::Admin, now).unwrap();
    (conn, vera, olga, ada)
}

fn highest_policy_version(s: &Server) -> u64 {
    smtpguard_controller::store::Store::open(&s.db)
        .unwrap()
        .highest_policy_version()
        .unwrap()
}

#[test]
fn a_subscriber_sees_and_acts_on_their_own_household_only() {
    let s = Server::start().unwrap();
    let a = &s.seeded.households[0];
    let b = &s.seeded.households[1];
    let (a_mac, a_name) = a.flagged.clone().unwrap();
    let (b_mac, b_name) = b.flagged.clone().unwrap();

    // No or wrong credentials.
    assert_eq!(
        http(s.addr, "GET", "/api/my/devices", &[], b"")
            .unwrap()
            .status,
        401
    );
    let wrong = http(
        s.addr,
        "GET",
        "/api/my/devices",
        &[("Authorization", "Bearer hh_0000")],
        b"",
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    let r = http(
        s.addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"token=hh_guess",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    assert!(r.body.contains("not valid"));
    assert!(r.header("set-cookie").is_none());
    // Pages without a session go to the login form.
    let r = http(s.addr, "GET", "/my", &[], b"").unwrap();
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login"));

    // Household A's API token shows A's devices and nothing of B's.
    let bearer = format!("Bearer {}", a.token);
    let r = http(
        s.addr,
        "GET",
        "/api/my/devices",
        &[("Authorization", &bearer)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let devices = v["devices"].as_array().unwrap();
    assert!(devices.iter().all(|d| d["cpe_id"] == a.cpe_id.as_str()));
    assert!(devices
        .iter()
        .any(|d| d["mac"] == a_mac.to_string().as_str() && d["verdict"] == "infected"));
    assert!(!r.body.contains(&b_name));
    // Operator endpoints are not for subscribers.
    assert_eq!(
        http(
            s.addr,
            "GET",
            "/api/fleet",
            &[("Authorization", &bearer)],
            b""
        )
        .unwrap()
        .status,
        403
    );

    // The same through the login form and pages.
    let cookie = login(s.addr, &a.token).unwrap();
    assert!(cookie.starts_with("sg_session="));
    let page = http(s.addr, "GET", "/my", &[("Cookie", &cookie)], b"").unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains(&a_name));
    assert!(!page.body.contains(&b_name));
    assert!(!page.body.contains(&b.cpe_id));
    assert_eq!(
        http(s.addr, "GET", "/noc", &[("Cookie", &cookie)], b"")
            .unwrap()
            .status,
        403
    );
    // Another household's device, a guessed device, a malformed id: all 404.
    for path in [
        format!("/my/devices/{}/{}", b.cpe_id, b_mac),
        format!("/my/devices/{}/02:5e:10:01:00:99", a.cpe_id),
        format!("/my/devices/{}/not-a-mac", a.cpe_id),
        "/my/devices/cpe-guess/02:5e:10:01:00:66".to_string(),
    ] {
        let r = http(s.addr, "GET", &path, &[("Cookie", &cookie)], b"").unwrap();
        assert_eq!(r.status, 404, "{path}");
        assert!(!r.body.contains(&b_name));
    }
    let own = http(
        s.addr,
        "GET",
        &format!("/my/devices/{}/{}", a.cpe_id, a_mac),
        &[("Cookie", &cookie)],
        b"",
    )
    .unwrap();
    assert_eq!(own.status, 200);
    assert!(own.body.contains("History"));

    // Release requests: CSRF token required, other household's device refused.
    let csrf = csrf_of(&page.body).unwrap();
    let h = form(&cookie);
    let body = format!("csrf=wrong&cpe_id={}&mac={}&note=", a.cpe_id, a_mac);
    assert_eq!(
        http(s.addr, "POST", "/my/release", &hdrs(&h), body.as_bytes())
            .unwrap()
            .status,
        403
    );
    let mut cross = h.clone();
    cross.push(("Origin", "http://evil.example".to_string()));
    let body = format!("csrf={csrf}&cpe_id={}&mac={}&note=", a.cpe_id, a_mac);
    assert_eq!(
        http(
            s.addr,
            "POST",
            "/my/release",
            &hdrs(&cross),
            body.as_bytes()
        )
        .unwrap()
        .status,
        403
    );
    let body = format!("csrf={csrf}&cpe_id={}&mac={}&note=", b.cpe_id, b_mac);
    assert_eq!(
        http(s.addr, "POST", "/my/release", &hdrs(&h), body.as_bytes())
            .unwrap()
            .status,
        404
    );
    let body = format!(
        "csrf={csrf}&cpe_id={}&mac={}&note=scanned+it",
        a.cpe_id, a_mac
    );
    let r = http(s.addr, "POST", "/my/release", &hdrs(&h), body.as_bytes()).unwrap();
    assert_eq!(r.status, 303);
    // B's portal shows no request; the NOC sees A's.
    let b_cookie = login(s.addr, &b.token).unwrap();
    let b_page = http(s.addr, "GET", "/my", &[("Cookie", &b_cookie)], b"").unwrap();
    assert!(!b_page.body.contains("Release requested"));
    let noc = login(s.addr, OPERATOR_TOKEN).unwrap();
    let rel = http(s.addr, "GET", "/noc/releases", &[("Cookie", &noc)], b"").unwrap();
    assert!(rel.body.contains("scanned it"));
    assert!(rel.body.contains(&a.name));

    // Logging out ends the session.
    let body = format!("csrf={csrf}");
    assert_eq!(
        http(s.addr, "POST", "/logout", &hdrs(&h), body.as_bytes())
            .unwrap()
            .status,
        303
    );
    assert_eq!(
        http(s.addr, "GET", "/my", &[("Cookie", &cookie)], b"")
            .unwrap()
            .status,
        303
    );
}

#[test]
fn hostile_host_names_are_escaped() {
    let s = Server::start().unwrap();
    let c = &s.seeded.households[2];
    let cookie = login(s.addr, &c.token).unwrap();
    let page = http(s.addr, "GET", "/my", &[("Cookie", &cookie)], b"").unwrap();
    assert!(page
        .body
        .contains("&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;"));
    assert!(!page.body.contains("<script>"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'"));
    let noc = login(s.addr, OPERATOR_TOKEN).unwrap();
    let cpe = http(
        s.addr,
        "GET",
        &format!("/noc/cpe/{}", c.cpe_id),
        &[("Cookie", &noc)],
        b"",
    )
    .unwrap();
    assert_eq!(cpe.status, 200);
    assert!(!cpe.body.contains("<script>"));
}

fn arf(source_ip: &str, arrival: &str, port: u16, dest: &str) -> String {
    format!(
        "Content-Type: multipart/report; report-type=feedback-report; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSpam report\r\n--b1\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nVersion: 1\r\nArrival-Date: {arrival}\r\nSource-IP: {source_ip}\r\nSource-Port: {port}\r\n\r\n--b1\r\nContent-Type: text/rfc822-headers\r\n\r\nReceived: from COZOXORY.club ([{source_ip}]:{port}) by mx.mailbox.example ([{dest}]) with ESMTP id 1; {arrival}\r\nMessage-ID: <spam-1@shop-deals.example>\r\nDate: {arrival}\r\n\r\n--b1--\r\n"
    )
}

fn rfc5322(ms: u64) -> String {
    // The UI's formatter gives "YYYY-MM-DD HH:MM:SS UTC"; rebuild the RFC 5322 form.
    let t = smtpguard_controller::abuse::date::format_utc_secs(ms);
    let (date, time) = t.split_once(' ').unwrap();
    let time = time.trim_end_matches(" UTC");
    let mut p = date.split('-');
    let (y, m, d) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][m.parse::<usize>().unwrap() - 1];
    format!("{} {mon} {y} {time} +0000", d.trim_start_matches('0'))
}

#[test]
fn abuse_reports_map_to_the_device_and_bad_ones_are_refused_and_counted() {
    let s = Server::start().unwrap();
    let a = &s.seeded.households[0];
    let (a_mac, _) = a.flagged.clone().unwrap();
    let (at, nat_port, dest) = s.seeded.abuse_example;
    let auth = format!("Bearer {OPERATOR_TOKEN}");

    // An ARF report as a mailbox provider sends it.
    let report = arf(
        &a.public_ip.to_string(),
        &rfc5322(at + 3000),
        nat_port,
        &dest.to_string(),
    );
    let r = http(
        s.addr,
        "POST",
        "/api/abuse",
        &[("Authorization", &auth), ("Content-Type", "message/rfc822")],
        report.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["answer"]["cpe_id"], a.cpe_id.as_str());
    assert_eq!(v["answer"]["mac"], a_mac.to_string().as_str());
    assert_eq!(v["answer"]["confidence"], "exact-port");
    assert_eq!(v["answer"]["evidence"][0]["nat_port"], nat_port);
    assert_eq!(v["message_id"], "<spam-1@shop-deals.example>");

    // The plain JSON form, without a port: the busiest sender around that time.
    let json = format!(r#"{{"public_ip":"{}","time":{}}}"#, a.public_ip, at);
    let r = http(
        s.addr,
        "POST",
        "/api/abuse",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        json.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 201);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["answer"]["mac"], a_mac.to_string().as_str());

    // An address no router had: stored and listed, not dropped.
    let json = r#"{"public_ip":"192.0.2.200","time":"2025-03-04T13:05:09Z"}"#;
    let r = http(
        s.addr,
        "POST",
        "/api/abuse",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        json.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 201);
    let list = http(
        s.addr,
        "GET",
        "/api/abuse?unmatched=true",
        &[("Authorization", &auth)],
        b"",
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["reports"].as_array().unwrap().len(), 1);
    assert_eq!(v["reports"][0]["public_ip"], "192.0.2.200");

    // Hostile input: clear 4xx, counted.
    let bad_date = arf(
        &a.public_ip.to_string(),
        "yesterday at noon",
        1,
        "198.51.100.1",
    );
    for (ct, body, status) in [
        ("message/rfc822", bad_date.into_bytes(), 400),
        (
            "message/rfc822",
            b"Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\nno end".to_vec(),
            400,
        ),
        (
            "application/json",
            br#"{"public_ip":"1.2.3.4"}"#.to_vec(),
            400,
        ),
        ("message/rfc822", vec![b'A'; 300 * 1024], 413),
    ] {
        let r = http(
            s.addr,
            "POST",
            "/api/abuse",
            &[("Authorization", &auth), ("Content-Type", ct)],
            &body,
        )
        .unwrap();
        assert_eq!(r.status, status, "{}", r.body);
    }
    // Only the operator may submit.
    let sub = format!("Bearer {}", a.token);
    assert_eq!(
        http(
            s.addr,
            "POST",
            "/api/abuse",
            &[("Authorization", &sub)],
            json.as_bytes()
        )
        .unwrap()
        .status,
        403
    );
    assert_eq!(
        http(s.addr, "POST", "/api/abuse", &[], json.as_bytes())
            .unwrap()
            .status,
        401
    );
    let forged = http(
        s.addr,
        "POST",
        "/api/abuse",
        &[("Authorization", "Bearer noc-guess")],
        json.as_bytes(),
    )
    .unwrap();
    assert_eq!(forged.status, 401);

    let m = http(s.addr, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(m.status, 200);
    let metric = |line: &str| -> u64 {
        m.body
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line} in\n{}", m.body))
    };
    assert_eq!(
        metric("smtpguard_abuse_rejected_total{reason=\"bad_date\"}"),
        1
    );
    assert_eq!(
        metric("smtpguard_abuse_rejected_total{reason=\"broken_mime\"}"),
        1
    );
    assert_eq!(
        metric("smtpguard_abuse_rejected_total{reason=\"bad_json\"}"),
        1
    );
    assert_eq!(
        metric("smtpguard_abuse_rejected_total{reason=\"too_large\"}"),
        1
    );
    assert_eq!(
        metric("smtpguard_abuse_reports_total{result=\"device\"}"),
        2
    );
    assert_eq!(
        metric("smtpguard_abuse_reports_total{result=\"no_device\"}"),
        1
    );
    // Every rejection reason is exported, zero or not.
    for r in smtpguard_protocol::RejectionReason::ALL {
        assert_eq!(
            metric(&format!(
                "smtpguard_rejections_total{{reason=\"{}\"}}",
                r.as_str()
            )),
            0
        );
    }
    assert_eq!(metric("smtpguard_infected_devices "), 3);
    assert_eq!(metric("smtpguard_cpes_online "), 3);
    assert_eq!(metric("smtpguard_cpes{status=\"offline\"}"), 1);
    assert_eq!(metric("smtpguard_policy_applied_cpes{version=\"1\"}"), 2);
    assert!(metric("smtpguard_messages_stored_total{kind=\"telemetry\"}") >= 16);
    assert_eq!(metric("smtpguard_web_auth_failures_total"), 1);
}

#[test]
fn the_noc_groups_the_campaign_and_pushes_its_indicators_to_fleet_policy() {
    let s = Server::start().unwrap();
    let auth = format!("Bearer {OPERATOR_TOKEN}");
    let r = http(
        s.addr,
        "GET",
        "/api/campaigns",
        &[("Authorization", &auth)],
        b"",
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["total"], 1, "{}", r.body);
    let list = v["campaigns"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{}", r.body);
    assert_eq!(list[0]["households"], 2);
    assert_eq!(list[0]["ehlo_names"][0], "cozoxory.club");
    let id = list[0]["id"].as_str().unwrap().to_string();

    let noc = login(s.addr, OPERATOR_TOKEN).unwrap();
    let list = http(s.addr, "GET", "/noc/campaigns", &[("Cookie", &noc)], b"").unwrap();
    assert!(
        list.body
            .contains(&format!(r#"href="/noc/campaigns/{id}""#)),
        "{}",
        list.body
    );
    let page = http(
        s.addr,
        "GET",
        &format!("/noc/campaigns/{id}"),
        &[("Cookie", &noc)],
        b"",
    )
    .unwrap();
    let csrf = csrf_of(&page.body).unwrap();
    let h = form(&noc);
    // The campaign's page lists the servers and asks for confirmation; unconfirmed, nothing
    // is pushed.
    assert!(page.body.contains(r#"name="confirm" value="1" required"#));
    let r = http(
        s.addr,
        "POST",
        &format!("/noc/campaigns/{id}/push"),
        &hdrs(&h),
        format!("csrf={csrf}").as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("tick the box to confirm"));
    let r = http(
        s.addr,
        "POST",
        &format!("/noc/campaigns/{id}/push"),
        &hdrs(&h),
        format!("csrf={csrf}&confirm=1").as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/noc/campaigns?pushed=2"));
    let policy = http(s.addr, "GET", "/noc/policy", &[("Cookie", &noc)], b"").unwrap();
    assert!(policy.body.contains("cozoxory.club"), "{}", policy.body);
    assert!(policy.body.contains("shop-deals.example"));
    // The refusal of one router is shown with its reason.
    assert!(policy
        .body
        .contains("does not verify against the installed key"));

    // A broken policy is refused with the field named, and nothing is published.
    let r = http(
        s.addr,
        "POST",
        "/noc/policy",
        &hdrs(&h),
        format!("csrf={csrf}&policy=%5Bthresholds%5D%0Ainfected+%3D+7").as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("thresholds.infected"));
    let r = http(
        s.addr,
        "POST",
        &format!("/noc/campaigns/{id}/push"),
        &hdrs(&h),
        b"csrf=nope",
    )
    .unwrap();
    assert_eq!(r.status, 403);
}

/// Finding rows 5 and 6 of issue 17 at the NOC: a catch-all indicator, an indicator covering
/// the ISP relay of the controller's configuration in a policy that empties `allow_relays`,
/// and one covering the broker are refused before signing, with the reason in the editor,
/// and nothing is signed or published; a safe policy of the same shape is.
#[test]
fn the_noc_refuses_to_sign_a_policy_that_would_convict_everyone_or_the_isp_relay() {
    let s = Server::start().unwrap();
    let noc = login(s.addr, OPERATOR_TOKEN).unwrap();
    let page = http(s.addr, "GET", "/noc/policy", &[("Cookie", &noc)], b"").unwrap();
    let csrf = csrf_of(&page.body).unwrap();
    let h = form(&noc);
    let before = highest_policy_version(&s);
    let post = |text: &str| {
        http(
            s.addr,
            "POST",
            "/noc/policy",
            &hdrs(&h),
            format!("csrf={csrf}&note=safety+test&policy={}", urlencode(text)).as_bytes(),
        )
        .unwrap()
    };
    let broker_net = format!("{AGENT_BROKER}/32");
    for (text, reason) in [
        (
            "mode = \"enforce\"\n[indicators]\nmail_servers = [\"0.0.0.0/0\"]\n".to_string(),
            "entry 0.0.0.0/0 is a catch-all".to_string(),
        ),
        (
            "mode = \"enforce\"\nallow_relays = []\n[indicators]\nmail_servers = [\"198.51.100.7/32\"]\n"
                .to_string(),
            "entry 198.51.100.7/32 covers the local ISP relay 198.51.100.7/32:587".to_string(),
        ),
        (
            format!("[indicators]\nmail_servers = [\"{broker_net}\"]\n"),
            format!("covers the broker address {AGENT_BROKER}"),
        ),
    ] {
        let r = post(&text);
        assert_eq!(r.status, 400, "{text}: {}", r.body);
        assert!(
            r.body.contains("Not published")
                && r.body.contains("indicators.mail_servers")
                && r.body.contains(&reason),
            "{text}: {}",
            r.body
        );
        // The editor keeps the operator's text to fix.
        assert!(r.body.contains("mail_servers"), "{}", r.body);
        assert_eq!(highest_policy_version(&s), before, "nothing signed for {text}");
    }

    let r = post("mode = \"enforce\"\nallow_relays = []\n[indicators]\nmail_servers = [\"203.0.113.0/24\"]\n");
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(highest_policy_version(&s), before + 1);
}

/// A campaign push with its mail servers never convicts an allowlisted relay: a server the
/// fleet policy allowlists is left out of the pushed indicators, the others go in.
#[test]
fn campaign_pushes_leave_out_allowlisted_relays() {
    let s = Server::start().unwrap();
    let noc = login(s.addr, OPERATOR_TOKEN).unwrap();
    let page = http(s.addr, "GET", "/noc/policy", &[("Cookie", &noc)], b"").unwrap();
    let csrf = csrf_of(&page.body).unwrap();
    let h = form(&noc);
    // The seeded campaign's two bots share mail servers 198.51.100.11-30; allowlist one.
    let r = http(
        s.addr,
        "POST",
        "/noc/policy",
        &hdrs(&h),
        format!(
            "csrf={csrf}&note=allowlist+a+relay&policy={}",
            urlencode("allow_relays = [\"198.51.100.20:25\"]\n")
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    let auth = format!("Bearer {OPERATOR_TOKEN}");
    let r = http(
        s.addr,
        "GET",
        "/api/campaigns",
        &[("Authorization", &auth)],
        b"",
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let id = v["campaigns"][0]["id"].as_str().unwrap().to_string();
    let r = http(
        s.addr,
        "POST",
        &format!("/noc/campaigns/{id}/push"),
        &hdrs(&h),
        format!("csrf={csrf}&with_servers=on&confirm=1").as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    let store = smtpguard_controller::store::Store::open(&s.db).unwrap();
    let pushed = store
        .latest_policy(smtpguard_protocol::PolicyScope::Fleet, None)
        .unwrap()
        .unwrap();
    let policy: smtpguard_protocol::Policy = serde_json::from_str(&pushed.policy_json).unwrap();
    let servers: Vec<String> = policy
        .indicators
        .mail_servers
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        servers.contains(&"198.51.100.21/32".to_string()),
        "{servers:?}"
    );
    assert!(
        !servers.contains(&"198.51.100.20/32".to_string()),
        "{servers:?}"
    );
    smtpguard_protocol::check_policy_safety(&policy, &web_common::test_settings().policy_safety)
        .unwrap();
}

fn metric_of(s: &Server, name: &str) -> u64 {
    let m = http(s.addr, "GET", "/metrics", &[], b"").unwrap();
    m.body
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Finding row 7 of issue 17: a client hammering wrong tokens is answered 429 with
/// `Retry-After` after a few failures, for a wait that doubles, without its tries being
/// looked at (not even the right token); every refusal is counted; another address still
/// signs in with the right token. The server's clock is the test's.
#[test]
fn a_client_hammering_wrong_tokens_is_made_to_wait_and_counted() {
    let now = Arc::new(AtomicU64::new(now_ms()));
    let clock_now = now.clone();
    let s = Server::start_with(
        test_settings(),
        Arc::new(move || clock_now.load(Ordering::SeqCst)),
    )
    .unwrap();
    let hostile: IpAddr = "127.0.0.2".parse().unwrap();
    let try_token = |from: IpAddr, token: &str| {
        http_from(
            from,
            s.addr,
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            format!("token={token}").as_bytes(),
        )
        .unwrap()
    };
    let mut statuses = Vec::new();
    for i in 0..40 {
        let r = try_token(hostile, &format!("guess-{i:04}-0123456789abcdef"));
        if r.status == 429 {
            assert_eq!(r.header("retry-after"), Some("1"), "{}", r.body);
        }
        statuses.push(r.status);
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // The right token from the hostile address waits too, and so does the API.
    assert_eq!(try_token(hostile, OPERATOR_TOKEN).status, 429);
    let bearer = format!("Bearer {OPERATOR_TOKEN}");
    let r = http_from(
        hostile,
        s.addr,
        "GET",
        "/api/fleet",
        &[("Authorization", &bearer)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(metric_of(&s, "smtpguard_web_auth_failures_total"), 5);
    assert_eq!(metric_of(&s, "smtpguard_web_login_throttled_total"), 37);
    assert_eq!(metric_of(&s, "smtpguard_web_login_backoff_addresses"), 1);

    // Another address signs in with the right token.
    let r = try_token("127.0.0.3".parse().unwrap(), OPERATOR_TOKEN);
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(r.header("set-cookie").unwrap().starts_with("sg_session="));

    // After the wait, one more wrong try is looked at, and the next wait is twice as long;
    // a wrong bearer token counts like a wrong access code.
    now.fetch_add(1_000, Ordering::SeqCst);
    let r = http_from(
        hostile,
        s.addr,
        "GET",
        "/api/fleet",
        &[("Authorization", "Bearer wrong-wrong-wrong-wrong")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    let r = try_token(hostile, "guess-again-0123456789abcdef");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("2"));
    now.fetch_add(2_000, Ordering::SeqCst);
    let r = try_token(hostile, OPERATOR_TOKEN);
    assert_eq!(r.status, 303, "the right token works once the wait is over");
    // ...and that success clears the address.
    assert_eq!(metric_of(&s, "smtpguard_web_login_backoff_addresses"), 0);
}

/// The session cookie is `Secure` when the site is configured as public over https, or a
/// trusted proxy says the request came over https; not otherwise. A trusted proxy's
/// `X-Forwarded-For` names the client for the back-off.
#[test]
fn cookies_are_secure_when_configured_or_behind_an_https_proxy() {
    let cookie_of = |s: &Server, headers: &[(&str, &str)]| {
        let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
        h.extend_from_slice(headers);
        let r = http(
            s.addr,
            "POST",
            "/login",
            &h,
            format!("token={OPERATOR_TOKEN}").as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 303);
        r.header("set-cookie").unwrap().to_string()
    };
    let plain = Server::start().unwrap();
    let c = cookie_of(&plain, &[("X-Forwarded-Proto", "https")]);
    assert!(!c.contains("Secure"), "untrusted peer: {c}");

    let mut settings = test_settings();
    settings.secure_cookies = true;
    let secure = Server::start_with(settings, smtpguard_controller::web::system_clock()).unwrap();
    let c = cookie_of(&secure, &[]);
    assert!(c.contains("; Secure") && c.contains("HttpOnly"), "{c}");

    let mut settings = test_settings();
    settings.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let proxied = Server::start_with(settings, smtpguard_controller::web::system_clock()).unwrap();
    let c = cookie_of(&proxied, &[("X-Forwarded-Proto", "https")]);
    assert!(c.contains("; Secure"), "{c}");
    let c = cookie_of(&proxied, &[]);
    assert!(!c.contains("Secure"), "{c}");
    // Behind the proxy, clients are told apart by X-Forwarded-For.
    let wrong = |client: &str| {
        http(
            proxied.addr,
            "POST",
            "/login",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-Forwarded-For", client),
            ],
            b"token=wrong-wrong-wrong-wrong",
        )
        .unwrap()
        .status
    };
    let statuses: Vec<u16> = (0..6).map(|_| wrong("198.51.100.66")).collect();
    assert_eq!(statuses, vec![401, 401, 401, 401, 401, 429]);
    assert_eq!(wrong("10.1.2.3, 198.51.100.67"), 401);
    let c = cookie_of(&proxied, &[("X-Forwarded-For", "198.51.100.68")]);
    assert!(c.starts_with("sg_session="));
}

/// Issue 13's operators and roles, checked on the server (not by hidden buttons): a viewer
/// reads everything and changes nothing; an operator decides releases and abuse reports
/// but cannot publish policy; an admin publishes policy. Every sign-in, refusal and action
/// lands in the audit log under the operator's name, and revoking an operator ends their
/// session at once.
#[test]
fn operators_can_do_what_their_role_allows_and_everything_is_audited() {
    let s = Server::start().unwrap();
    let (conn, vera, olga, ada) = three_operators(&s);

    // A subscriber asks for a release, to have something to decide.
    let a = &s.seeded.households[0];
    let (a_mac, _) = a.flagged.clone().unwrap();
    let hh = login(s.addr, &a.token).unwrap();
    let my = http(s.addr, "GET", "/my", &[("Cookie", &hh)], b"").unwrap();
    let body = format!(
        "csrf={}&cpe_id={}&mac={}&note=cleaned",
        csrf_of(&my.body).unwrap(),
        a.cpe_id,
        a_mac
    );
    let r = http(
        s.addr,
        "POST",
        "/my/release",
        &hdrs(&form(&hh)),
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 303);
    let request_id: i64 = conn
        .query_one("SELECT MAX(id) FROM release_requests", &[])
        .unwrap();

    let policy_form = |csrf: &str, mode: &str| {
        format!(
            "csrf={csrf}&note=roles+test&policy={}",
            urlencode(&format!("mode = \"{mode}\"\n"))
        )
    };
    let post = |cookie: &str, path: &str, body: String| {
        http(s.addr, "POST", path, &hdrs(&form(cookie)), body.as_bytes()).unwrap()
    };

    // Viewer: reads every NOC page and the audit log, is refused every change.
    let v = login(s.addr, &vera).unwrap();
    let fleet = http(s.addr, "GET", "/noc", &[("Cookie", &v)], b"").unwrap();
    assert_eq!(fleet.status, 200);
    assert!(
        fleet.body.contains(r#"id="signed-in">vera · viewer<"#),
        "{}",
        fleet.body
    );
    let csrf = csrf_of(&fleet.body).unwrap();
    for path in ["/noc/policy", "/noc/abuse", "/noc/releases", "/noc/audit"] {
        assert_eq!(
            http(s.addr, "GET", path, &[("Cookie", &v)], b"")
                .unwrap()
                .status,
            200,
            "{path}"
        );
    }
    assert_eq!(
        post(&v, "/noc/policy", policy_form(&csrf, "monitor")).status,
        403
    );
    assert_eq!(
        post(
            &v,
            &format!("/noc/releases/{request_id}"),
            format!("decision=approve&csrf={csrf}")
        )
        .status,
        403
    );
    let bearer = format!("Bearer {vera}");
    let r = http(
        s.addr,
        "POST",
        "/api/abuse",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        br#"{"public_ip":"203.0.113.10","time":1700000000000}"#,
    )
    .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(
        http(
            s.addr,
            "GET",
            "/api/audit",
            &[("Authorization", &bearer)],
            b""
        )
        .unwrap()
        .status,
        200
    );

    // Operator: decides the release and maps an abuse report; policy stays out of reach.
    let o = login(s.addr, &olga).unwrap();
    let page = http(s.addr, "GET", "/noc/releases", &[("Cookie", &o)], b"").unwrap();
    let csrf = csrf_of(&page.body).unwrap();
    assert_eq!(
        post(&o, "/noc/policy", policy_form(&csrf, "monitor")).status,
        403
    );
    let r = post(
        &o,
        &format!("/noc/releases/{request_id}"),
        format!("decision=deny&csrf={csrf}"),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let report = urlencode(&format!(
        r#"{{"public_ip":"{}","time":{}}}"#,
        a.public_ip, s.seeded.abuse_example.0
    ));
    let r = post(&o, "/noc/abuse", format!("csrf={csrf}&report={report}"));
    assert_eq!(r.status, 303, "{}", r.body);

    // Admin: publishes policy (the audit entry says what changed).
    let ad = login(s.addr, &ada).unwrap();
    let page = http(s.addr, "GET", "/noc/policy", &[("Cookie", &ad)], b"").unwrap();
    let csrf = csrf_of(&page.body).unwrap();
    let r = post(&ad, "/noc/policy", policy_form(&csrf, "monitor"));
    assert_eq!(r.status, 303, "{}", r.body);

    // A wrong secret is refused and audited too.
    assert!(login(s.addr, "op_0000000000000000000000000000000000000000").is_err());

    let audit = http(
        s.addr,
        "GET",
        "/api/audit?limit=100",
        &[("Authorization", &bearer)],
        b"",
    )
    .unwrap();
    let entries: serde_json::Value = serde_json::from_str(&audit.body).unwrap();
    let entries = entries["entries"].as_array().unwrap().clone();
    let has = |actor: &str, action: &str, outcome: &str, detail: &str| {
        entries.iter().any(|e| {
            e["actor"] == actor
                && e["action"] == action
                && e["outcome"] == outcome
                && e["detail"].as_str().is_some_and(|d| d.contains(detail))
        })
    };
    for who in ["vera", "olga", "ada"] {
        assert!(has(who, "sign_in", "ok", ""), "{who}: {entries:#?}");
    }
    assert!(has("unknown", "sign_in", "refused", ""), "{entries:#?}");
    assert!(
        has(
            "olga",
            "release_decision",
            "denied",
            &format!("request {request_id}")
        ),
        "{entries:#?}"
    );
    assert!(has("olga", "abuse_lookup", "ok", &a.cpe_id), "{entries:#?}");
    assert!(
        has(
            "ada",
            "policy_publish",
            "ok",
            r#"mode: "enforce" -> "monitor""#
        ),
        "{entries:#?}"
    );
    // Newest first.
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]));
    // Filters, and the page shows the same.
    let only = http(
        s.addr,
        "GET",
        "/api/audit?actor=ada&action=policy_publish",
        &[("Authorization", &bearer)],
        b"",
    )
    .unwrap();
    let only: serde_json::Value = serde_json::from_str(&only.body).unwrap();
    assert_eq!(only["entries"].as_array().unwrap().len(), 1);
    let page = http(
        s.addr,
        "GET",
        "/noc/audit?actor=olga",
        &[("Cookie", &v)],
        b"",
    )
    .unwrap();
    assert!(page.body.contains("release_decision") && !page.body.contains(">ada<"));

    // Revoked: the session ends at its next request, the secret no longer signs in.
    smtpguard_controller::operators::revoke(&conn, "vera", now_ms()).unwrap();
    assert_ne!(
        http(s.addr, "GET", "/noc", &[("Cookie", &v)], b"")
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        http(
            s.addr,
            "GET",
            "/api/audit",
            &[("Authorization", &bearer)],
            b""
        )
        .unwrap()
        .status,
        401
    );
    assert!(login(s.addr, &vera).is_err());
    let metrics = http(s.addr, "GET", "/metrics", &[], b"").unwrap().body;
    let forbidden: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("smtpguard_web_forbidden_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(forbidden >= 4, "{forbidden}");
}

/// Issue 13's policy editor: the live version with its author and note, numbers as
/// written, a check that signs nothing but says what would change and how many routers get
/// it, no publish without a change note or without a change, the operator's own text
/// (comments too) kept with the version, and a rollback that publishes old content as a new
/// version.
#[test]
fn the_policy_editor_checks_before_signing_keeps_text_and_notes_and_rolls_back() {
    let s = Server::start().unwrap();
    let noc = login(s.addr, OPERATOR_TOKEN).unwrap();
    let page = http(s.addr, "GET", "/noc/policy", &[("Cookie", &noc)], b"").unwrap();
    assert!(
        page.body.contains("Live: <strong>version 1</strong>"),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains("policy_version"),
        "the version is not for editing"
    );
    assert!(!page.body.contains("0.4000000059604645"), "{}", page.body);
    assert!(page.body.contains("suspicious = 0.4"), "{}", page.body);
    let csrf = csrf_of(&page.body).unwrap();
    let h = form(&noc);
    let post =
        |path: &str, body: String| http(s.addr, "POST", path, &hdrs(&h), body.as_bytes()).unwrap();
    let edit = |text: &str, note: &str, action: &str| {
        post(
            "/noc/policy",
            format!(
                "csrf={csrf}&action={action}&note={}&policy={}",
                urlencode(note),
                urlencode(text)
            ),
        )
    };
    let text = "# quieter while we investigate\nmode = \"monitor\"\n";
    let before = highest_policy_version(&s);

    // Check: what would change and who gets it; nothing signed.
    let r = edit(text, "", "check");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("Check passed; nothing was signed"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("mode: &quot;enforce&quot; -&gt; &quot;monitor&quot;"),
        "{}",
        r.body
    );
    assert!(r.body.contains("4 routers will receive this"), "{}", r.body);
    assert_eq!(highest_policy_version(&s), before);
    // A check of something unsafe says why, and signs nothing either.
    let r = edit(
        "[indicators]\nmail_servers = [\"0.0.0.0/0\"]\n",
        "",
        "check",
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Not published") && r.body.contains("indicators.mail_servers"));

    // Publishing needs a note, and a change.
    let r = edit(text, " ", "publish");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("change note"), "{}", r.body);
    let r = edit("mode = \"enforce\"\n", "again", "publish");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("nothing changed"), "{}", r.body);
    assert_eq!(highest_policy_version(&s), before);

    let r = edit(text, "Monitor only during the incident", "publish");
    assert_eq!(r.status, 303, "{}", r.body);
    let v2 = highest_policy_version(&s);
    assert_eq!(v2, before + 1);
    let page = http(s.addr, "GET", "/noc/policy", &[("Cookie", &noc)], b"").unwrap();
    assert!(page
        .body
        .contains(&format!("Live: <strong>version {v2}</strong>")));
    assert!(page.body.contains("Monitor only during the incident"));
    assert!(
        page.body.contains("# quieter while we investigate"),
        "comments kept"
    );
    assert!(page
        .body
        .contains(&format!(r#"<tr data-version="{before}">"#)));

    // Roll back to the first version: its content as a new, higher version.
    let r = post(
        &format!("/noc/policy/rollback/{before}"),
        format!("csrf={csrf}"),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let v3 = highest_policy_version(&s);
    assert_eq!(v3, v2 + 1);
    let store = smtpguard_controller::store::Store::open(&s.db).unwrap();
    let latest = store
        .latest_policy(smtpguard_protocol::PolicyScope::Fleet, None)
        .unwrap()
        .unwrap();
    let policy: smtpguard_protocol::Policy = serde_json::from_str(&latest.policy_json).unwrap();
    assert_eq!(policy.mode, smtpguard_protocol::Mode::Enforce);
    let page = http(s.addr, "GET", "/noc/policy", &[("Cookie", &noc)], b"").unwrap();
    assert!(page.body.contains(&format!("rollback to version {before}")));
    // Rolling back to what is live publishes nothing.
    let r = post(
        &format!("/noc/policy/rollback/{before}"),
        format!("csrf={csrf}"),
    );
    assert_eq!(r.status, 400);
    assert_eq!(highest_policy_version(&s), v3);
    let r = post("/noc/policy/rollback/999", format!("csrf={csrf}"));
    assert_eq!(r.status, 404);
    // All of it is in the audit log.
    let auth = format!("Bearer {OPERATOR_TOKEN}");
    let audit = http(
        s.addr,
        "GET",
        "/api/audit?action=policy_rollback",
        &[("Authorization", &auth)],
        b"",
    )
    .unwrap();
    assert!(audit.body.contains("back to v"), "{}", audit.body);
}

/// Issue 13's exports: flagged devices, abuse reports and the audit log as CSV and JSON,
/// for the NOC only; a LAN host name cannot become a spreadsheet formula.
#[test]
fn flagged_devices_abuse_reports_and_the_audit_log_export_as_csv_and_json() {
    let s = Server::start().unwrap();
    let auth = format!("Bearer {OPERATOR_TOKEN}");
    let get = |path: &str| http(s.addr, "GET", path, &[("Authorization", &auth)], b"").unwrap();
    let infected = get("/api/export/devices?verdict=infected&format=json");
    assert_eq!(infected.status, 200, "{}", infected.body);
    let v: serde_json::Value = serde_json::from_str(&infected.body).unwrap();
    let devices = v["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 3, "{v}");
    assert!(devices.iter().all(|d| d["verdict"] == "infected"));
    let a = &s.seeded.households[0];
    let (a_mac, _) = a.flagged.clone().unwrap();
    assert!(devices
        .iter()
        .any(|d| d["cpe_id"] == a.cpe_id.as_str() && d["mac"] == a_mac.to_string().as_str()));

    let csv = get("/api/export/devices");
    assert_eq!(csv.status, 200);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let mut lines = csv.body.lines();
    assert_eq!(
        lines.next(),
        Some("cpe_id,mac,hostname,vendor,verdict,score,action,since,last_seen,evidence")
    );
    assert!(lines.count() >= 3);
    assert!(
        !csv.body.contains("\n="),
        "a field starting a formula: {}",
        csv.body
    );

    // The abuse desk's reports, after one lookup.
    let (at, _, _) = s.seeded.abuse_example;
    let r = http(
        s.addr,
        "POST",
        "/api/abuse",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        format!(r#"{{"public_ip":"{}","time":{at}}}"#, a.public_ip).as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 201);
    let reports = get("/api/export/abuse?format=csv");
    assert!(reports.body.contains(&a.cpe_id), "{}", reports.body);
    let audit = get("/api/export/audit?format=json");
    let v: serde_json::Value = serde_json::from_str(&audit.body).unwrap();
    assert!(v["audit"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "abuse_lookup" && e["actor"] == "operator-token"));

    // Bad parameters and callers.
    assert_eq!(get("/api/export/devices?format=xlsx").status, 400);
    assert_eq!(get("/api/export/devices?verdict=purple").status, 400);
    // Every device with `verdict=all`, one with its MAC, the list's filters otherwise.
    let all = get("/api/export/devices?verdict=all&format=json");
    let v: serde_json::Value = serde_json::from_str(&all.body).unwrap();
    let all = v["devices"].as_array().unwrap();
    assert!(all.len() > devices.len() + 2, "{v}");
    assert!(all.iter().any(|d| d["verdict"] == "clean"));
    let one = get(&format!(
        "/api/export/devices?format=json&verdict=all&q={a_mac}"
    ));
    let v: serde_json::Value = serde_json::from_str(&one.body).unwrap();
    assert_eq!(v["devices"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(get("/api/export/passwords").status, 404);
    assert_eq!(
        http(s.addr, "GET", "/api/export/audit", &[], b"")
            .unwrap()
            .status,
        401
    );
    let hh = format!("Bearer {}", a.token);
    assert_eq!(
        http(
            s.addr,
            "GET",
            "/api/export/devices",
            &[("Authorization", &hh)],
            b""
        )
        .unwrap()
        .status,
        403
    );
}

#[test]
fn router_actions_are_for_operators_overrides_for_admins_and_hostile_posts_are_refused() {
    let s = Server::start().unwrap();
    let (conn, vera, olga, ada) = three_operators(&s);
    let a = &s.seeded.households[0];
    let (mac, _) = a.flagged.clone().unwrap();
    let command = format!("/noc/cpe/{}/command", a.cpe_id);
    let override_path = format!("/noc/cpe/{}/policy", a.cpe_id);
    let post = |cookie: &str, path: &str, body: &str, extra: &[(&'static str, String)]| {
        let mut h = form(cookie);
        h.extend(extra.iter().cloned());
        http(s.addr, "POST", path, &hdrs(&h), body.as_bytes()).unwrap()
    };
    let session = |secret: &str| {
        let c = login(s.addr, secret).unwrap();
        let page = http(
            s.addr,
            "GET",
            &format!("/noc/cpe/{}", a.cpe_id),
            &[("Cookie", &c)],
            b"",
        )
        .unwrap();
        assert_eq!(page.status, 200);
        let csrf = csrf_of(&page.body).unwrap();
        (c, csrf, page.body)
    };

    // The page: last seen, links to the household's reports and history, the actions.
    let (o, o_csrf, page) = session(&olga);
    assert!(page.contains(r#"id="link-abuse""#), "{page}");
    assert!(page.contains(&format!("/noc/audit?target={}", a.cpe_id)));
    assert!(page.contains(r#"value="release">Lift restriction"#));
    assert!(page.contains("Extend block"));
    assert!(
        page.contains("Only an administrator can change a router"),
        "an operator sees no override form"
    );

    // A subscriber and a viewer are refused; so is a post without the session's token or
    // from another site.
    let hh = login(s.addr, &a.token).unwrap();
    let ok_body = format!("csrf={o_csrf}&mac={mac}&action=block&ttl_secs=3600");
    assert_eq!(post(&hh, &command, &ok_body, &[]).status, 403);
    let (v, v_csrf, _) = session(&vera);
    let v_body = format!("csrf={v_csrf}&mac={mac}&action=release");
    assert_eq!(post(&v, &command, &v_body, &[]).status, 403);
    assert_eq!(
        post(
            &o,
            &command,
            &format!("csrf=forged&mac={mac}&action=release"),
            &[]
        )
        .status,
        403
    );
    assert_eq!(
        post(
            &o,
            &command,
            &ok_body,
            &[("Origin", "https://evil.example".to_string())]
        )
        .status,
        403
    );

    // Hostile and wrong input: named, escaped, nothing sent.
    let r = post(
        &o,
        &command,
        &format!(
            "csrf={o_csrf}&mac={}&action=release",
            urlencode("<script>x</script>")
        ),
        &[],
    );
    assert_eq!(r.status, 400);
    assert!(!r.body.contains("<script>x"));
    let r = post(
        &o,
        &command,
        &format!("csrf={o_csrf}&mac={mac}&action=block&ttl_secs=99999999"),
        &[],
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("choose how long to block"), "{}", r.body);
    let r = post(
        &o,
        "/noc/cpe/cpe-nobody/command",
        &format!("csrf={o_csrf}&mac={mac}&action=release"),
        &[],
    );
    assert_eq!(r.status, 404);

    // A well-formed command goes to the command path (this test server has no broker, so it
    // is refused there) and is audited either way.
    let r = post(&o, &command, &ok_body, &[]);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("The command was not sent"), "{}", r.body);

    // Overrides: not for operators; an admin must confirm; a policy that would cut off the
    // ISP relay is never signed; a good one is signed for this router only.
    let policy = |text: &str, confirm: bool, csrf: &str| {
        format!(
            "csrf={csrf}&policy={}{}",
            urlencode(text),
            if confirm { "&confirm=1" } else { "" }
        )
    };
    assert_eq!(
        post(
            &o,
            &override_path,
            &policy("mode = \"monitor\"\n", true, &o_csrf),
            &[]
        )
        .status,
        403
    );
    let (ad, ad_csrf, page) = session(&ada);
    assert!(page.contains(r#"id="override-policy""#));
    let before = highest_policy_version(&s);
    let r = post(
        &ad,
        &override_path,
        &policy("mode = \"monitor\"\n", false, &ad_csrf),
        &[],
    );
    assert_eq!(r.status, 400);
    let r = post(
        &ad,
        &override_path,
        &policy(
            &format!("allow_relays = []\n[indicators]\nmail_servers = [\"{ISP_RELAY_IP}/32\"]\n"),
            true,
            &ad_csrf,
        ),
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("covers the local ISP relay"), "{}", r.body);
    assert_eq!(highest_policy_version(&s), before, "nothing signed");
    let r = post(
        &ad,
        &override_path,
        &policy("mode = \"monitor\"\n", true, &ad_csrf),
        &[],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let v = highest_policy_version(&s);
    assert_eq!(v, before + 1);
    let page = http(
        s.addr,
        "GET",
        r.header("location").unwrap(),
        &[("Cookie", &ad)],
        b"",
    )
    .unwrap();
    assert!(
        page.body.contains(&format!("v{v}, not yet applied")),
        "{}",
        page.body
    );
    let scope: String = conn
        .query_one(
            "SELECT scope || ' ' || cpe_id FROM policies WHERE version = ?1",
            smtpguard_controller::db_params![v],
        )
        .unwrap();
    assert_eq!(scope, format!("cpe {}", a.cpe_id));

    // Everything is in the audit log, refused attempts included.
    let audit = http(
        s.addr,
        "GET",
        &format!("/api/audit?limit=100&target={}", a.cpe_id),
        &[("Authorization", &format!("Bearer {OPERATOR_TOKEN}"))],
        b"",
    )
    .unwrap();
    let entries: serde_json::Value = serde_json::from_str(&audit.body).unwrap();
    let entries = entries["entries"].as_array().unwrap().clone();
    let has = |actor: &str, action: &str, outcome: &str| {
        entries
            .iter()
            .any(|e| e["actor"] == actor && e["action"] == action && e["outcome"] == outcome)
    };
    assert!(has("olga", "command", "refused"), "{entries:#?}");
    assert!(has("ada", "policy_override", "refused"), "{entries:#?}");
    assert!(has("ada", "policy_override", "ok"), "{entries:#?}");
}

/// The abuse desk's and the portal's new forms: roles, CSRF, foreign origins and hostile
/// input; a rejected paste comes back with its text.
#[test]
fn abuse_desk_and_time_zone_forms_refuse_wrong_roles_forged_posts_and_hostile_input() {
    let s = Server::start().unwrap();
    let (conn, vera, _, _) = three_operators(&s);
    let a = &s.seeded.households[0];
    let post = |cookie: &str, path: &str, body: &str, extra: &[(&'static str, String)]| {
        let mut h = form(cookie);
        h.extend(extra.iter().cloned());
        http(s.addr, "POST", path, &hdrs(&h), body.as_bytes()).unwrap()
    };
    let noc = login(s.addr, OPERATOR_TOKEN).unwrap();
    let page = http(s.addr, "GET", "/noc/abuse", &[("Cookie", &noc)], b"").unwrap();
    let csrf = csrf_of(&page.body).unwrap();
    let (at, _, _) = s.seeded.abuse_example;
    let when = smtpguard_controller::abuse::date::format_utc_secs(at);
    let (date, time) = when.trim_end_matches(" UTC").split_once(' ').unwrap();
    let lookup = |csrf: &str, ip: &str, reporter: &str| {
        format!(
            "csrf={csrf}&ip={}&date={date}&time={}&zone=UTC&port=&reporter={}",
            urlencode(ip),
            urlencode(time),
            urlencode(reporter)
        )
    };

    // Forged, foreign, wrong role: refused, nothing stored.
    let count = || -> i64 {
        conn.query_opt("SELECT COUNT(*) FROM abuse_reports", &[])
            .unwrap()
            .unwrap()
            .get(0)
            .unwrap()
    };
    let before = count();
    let ip = a.public_ip.to_string();
    assert_eq!(
        post(&noc, "/noc/abuse/lookup", &lookup("forged", &ip, ""), &[]).status,
        403
    );
    assert_eq!(
        post(
            &noc,
            "/noc/abuse/lookup",
            &lookup(&csrf, &ip, ""),
            &[("Origin", "https://evil.example".to_string())]
        )
        .status,
        403
    );
    let v = login(s.addr, &vera).unwrap();
    let v_page = http(s.addr, "GET", "/noc/abuse", &[("Cookie", &v)], b"").unwrap();
    let v_csrf = csrf_of(&v_page.body).unwrap();
    assert_eq!(
        post(&v, "/noc/abuse/lookup", &lookup(&v_csrf, &ip, ""), &[]).status,
        403
    );
    let hh = login(s.addr, &a.token).unwrap();
    assert_eq!(
        post(&hh, "/noc/abuse/lookup", &lookup(&csrf, &ip, ""), &[]).status,
        403
    );
    assert_eq!(count(), before);

    // Hostile input is named and escaped, and kept in the form.
    let r = post(
        &noc,
        "/noc/abuse/lookup",
        &lookup(&csrf, "<script>alert(1)</script>", "<b>x</b>"),
        &[],
    );
    assert_eq!(r.status, 400);
    assert!(!r.body.contains("<script>alert"), "{}", r.body);
    assert!(r.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(r.body.contains(r#"value="&lt;b&gt;x&lt;/b&gt;""#));
    let pasted = "Subject: spam\r\n\r\n<img src=x onerror=alert(1)>";
    let r = post(
        &noc,
        "/noc/abuse",
        &format!("csrf={csrf}&report={}", urlencode(pasted)),
        &[],
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(!r.body.contains("<img src=x"));
    assert!(r.body.contains(r#"id="abuse-list""#) || r.body.contains("No reports here"));
    assert_eq!(count(), before);

    // A good lookup, with its reporter; viewers cannot mark it answered, operators can.
    let r = post(
        &noc,
        "/noc/abuse/lookup",
        &lookup(&csrf, &ip, "abuse@bigmail.example"),
        &[],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let location = r.header("location").unwrap().to_string();
    let id: i64 = location.rsplit('/').next().unwrap().parse().unwrap();
    let report = http(s.addr, "GET", &location, &[("Cookie", &noc)], b"").unwrap();
    assert!(report.body.contains("abuse@bigmail.example"));
    assert_eq!(
        post(
            &v,
            &format!("/noc/abuse/{id}/answered"),
            &format!("csrf={v_csrf}"),
            &[]
        )
        .status,
        403
    );
    assert_eq!(
        post(
            &noc,
            &format!("/noc/abuse/{id}/answered"),
            "csrf=forged",
            &[]
        )
        .status,
        403
    );
    let r = post(
        &noc,
        &format!("/noc/abuse/{id}/answered"),
        &format!("csrf={csrf}"),
        &[],
    );
    assert_eq!(r.status, 303);
    let status: String = conn
        .query_one(
            "SELECT status FROM abuse_reports WHERE id = ?1",
            smtpguard_controller::db_params![id],
        )
        .unwrap();
    assert_eq!(status, "answered");
    assert_eq!(
        post(
            &noc,
            "/noc/abuse/999999/answered",
            &format!("csrf={csrf}"),
            &[]
        )
        .status,
        404
    );

    // The household's time zone: its own session and token only; a name the system does not
    // know is refused; the NOC cannot set it.
    let my = http(s.addr, "GET", "/my", &[("Cookie", &hh)], b"").unwrap();
    let hh_csrf = csrf_of(&my.body).unwrap();
    assert_eq!(
        post(
            &hh,
            "/my/time-zone",
            "csrf=forged&time_zone=Europe%2FBerlin",
            &[]
        )
        .status,
        403
    );
    assert_eq!(
        post(
            &noc,
            "/my/time-zone",
            &format!("csrf={csrf}&time_zone=Europe%2FBerlin"),
            &[]
        )
        .status,
        403
    );
    let r = post(
        &hh,
        "/my/time-zone",
        &format!(
            "csrf={hh_csrf}&time_zone={}",
            urlencode("<script>x</script>")
        ),
        &[],
    );
    assert_eq!(r.status, 400);
    assert!(!r.body.contains("<script>x"));
    let r = post(
        &hh,
        "/my/time-zone",
        &format!("csrf={hh_csrf}&time_zone=Europe%2FBerlin"),
        &[],
    );
    assert_eq!(r.status, 303);
    let my = http(s.addr, "GET", "/my", &[("Cookie", &hh)], b"").unwrap();
    assert!(
        my.body.contains(" CET") || my.body.contains(" CEST"),
        "{}",
        my.body
    );
    assert!(my.body.contains(r#"value="Europe/Berlin""#));
}

/// The device list (`/noc/devices`, `/api/devices`): found by MAC, by host name, by the
/// public IP a router held at a time, filtered by verdict and by the router's action, paged;
/// bad queries are refused with the field named; NOC only.
#[test]
fn the_device_list_is_searched_filtered_and_paged_on_the_server() {
    let s = Server::start().unwrap();
    let auth = format!("Bearer {OPERATOR_TOKEN}");
    let get = |path: &str| http(s.addr, "GET", path, &[("Authorization", &auth)], b"").unwrap();
    let json = |path: &str| -> serde_json::Value {
        let r = get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        serde_json::from_str(&r.body).unwrap()
    };
    let everything = json("/api/devices?per_page=500");
    let total = everything["total"].as_u64().unwrap();
    assert!(total >= 8, "{everything}");
    let a = &s.seeded.households[0];
    let (a_mac, a_host) = a.flagged.clone().unwrap();

    let by_mac = json(&format!("/api/devices?q={a_mac}"));
    assert_eq!(by_mac["total"], 1, "{by_mac}");
    assert_eq!(by_mac["devices"][0]["cpe_id"], a.cpe_id.as_str());
    let by_host = json(&format!("/api/devices?q={}", a_host.replace(' ', "%20")));
    assert!(by_host["devices"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["mac"] == a_mac.to_string().as_str()));
    // The public address at the time of the abuse example: that household's devices only.
    let (at, _, _) = s.seeded.abuse_example;
    let when = smtpguard_controller::abuse::date::format_utc_secs(at);
    let when = format!("{}Z", when.trim_end_matches(" UTC").replacen(' ', "T", 1));
    let by_ip = json(&format!("/api/devices?q={}&at={when}", a.public_ip));
    let hits = by_ip["devices"].as_array().unwrap();
    assert!(!hits.is_empty(), "{by_ip}");
    assert!(
        hits.iter().all(|d| d["cpe_id"] == a.cpe_id.as_str()),
        "{by_ip}"
    );

    let infected = json("/api/devices?verdict=infected");
    assert!(infected["devices"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["verdict"] == "infected"));
    let blocked = json("/api/devices?action=block");
    assert!(blocked["devices"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["action"] == "block"));

    // Pages of 3: together they are the whole list, each device once.
    let mut seen = std::collections::BTreeSet::new();
    let pages = total.div_ceil(3);
    for p in 1..=pages {
        let page = json(&format!("/api/devices?per_page=3&page={p}&sort=cpe"));
        for d in page["devices"].as_array().unwrap() {
            assert!(
                seen.insert(format!("{}/{}", d["cpe_id"], d["mac"])),
                "{d} twice"
            );
        }
    }
    assert_eq!(seen.len() as u64, total);

    // The page: the count line, the filter kept in the next-page link, one row per device.
    let html = get("/noc/devices?verdict=all&sort=cpe&dir=asc");
    assert_eq!(html.status, 200);
    assert!(
        html.body.contains(&format!("of {total} devices")),
        "{}",
        html.body
    );
    assert!(html.body.contains(r#"aria-current="page">Devices"#));
    let one = get(&format!("/noc/devices?q={a_mac}"));
    assert_eq!(one.body.matches(r#"<tr class="dev "#).count(), 1);

    for (bad, field) in [
        ("verdict=purple", "verdict"),
        ("action=explode", "action"),
        ("sort=colour", "sort"),
        ("page=0", "page"),
        ("per_page=100000", "per_page"),
    ] {
        let r = get(&format!("/api/devices?{bad}"));
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.body.contains(field), "{bad}: {}", r.body);
    }
    assert_eq!(
        http(s.addr, "GET", "/api/devices", &[], b"")
            .unwrap()
            .status,
        401
    );
    let hh = format!("Bearer {}", a.token);
    assert_eq!(
        http(
            s.addr,
            "GET",
            "/noc/devices",
            &[("Authorization", &hh)],
            b""
        )
        .unwrap()
        .status,
        403
    );
}
