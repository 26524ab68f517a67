//! Issue 13, staged policy rollout with the real binaries: `smtpguard-controller serve`
//! (embedded broker, ingest, web UI, rollout watch) and four `smtpguard-agent run`
//! processes (capturing on `lo`, enforcement carried out by the `none` backend, each with
//! its own broker login). Everything is driven the way an admin does it, through the
//! policy page's forms with a named admin's session, and read from `GET /api/rollouts`,
//! the policy page, `GET /api/audit` and each router's own `policy-versions.json`.
//!
//! 1. A fleet version is published from the editor; all four routers apply it.
//! 2. A canary rollout to two named routers: the two apply the candidate as their
//!    per-CPE policy, the other two never see it; the page shows the canary stage.
//! 3. Promotion by hand: the candidate becomes the next fleet version and all four apply it.
//! 4. A second rollout, to 50 % of the fleet, of a policy the routers refuse (an indicator
//!    covering a mail relay the routers have in their local `isp_relays` and the NOC's
//!    configuration lacks): the refusals show on the page, then the controller is restarted
//!    with a short watch interval, and the watch, reading the rollout from the database,
//!    halts it and sends the cohort the live fleet policy again, which they apply.
//! 5. Every step is in the audit log with its operator (the halt as the rollout watch).
//!
//! Waits on conditions (polling), never on fixed sleeps. Needs no root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod web_common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use smtpguard_tests::mqtt::{agent_binary, controller_binary, free_port, port_open};
use smtpguard_tests::process::{field, run, wait_until_true, Proc};
use web_common::{csrf_of, http, login, post_form};

const OPERATOR: &str = "noc-rollout-token-0123456789";
const BROKER_PASSWORD: &str = "controller-rollout-secret";
/// A mail relay the routers have in their local `isp_relays`; the controller does not know it.
const LOCAL_RELAY: &str = "203.0.113.25";
const WAIT: Duration = Duration::from_secs(90);

struct Router {
    cpe: String,
    state_dir: PathBuf,
    proc: Proc,
}

/// The router's applied policy versions (`uplink/policy-versions.json`): (fleet, per-CPE).
fn applied(state_dir: &Path) -> (Option<u64>, Option<u64>) {
    let v: Value = std::fs::read(state_dir.join("uplink").join("policy-versions.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    (v["fleet"].as_u64(), v["cpe"].as_u64())
}

fn write_controller_config(path: &Path, dir: &Path, http_port: u16, broker_port: u16, check: u64) {
    std::fs::write(
        path,
        format!(
            "db_path = \"{db}\"\npolicy_key_path = \"{key}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n\n\
             [broker]\nembedded_listen = \"127.0.0.1:{broker_port}\"\n\
             password = \"{BROKER_PASSWORD}\"\nclient_id = \"controller-rollout\"\n\n\
             [web]\noperator_token_file = \"{token}\"\nrollout_check_secs = {check}\n",
            db = dir.join("controller.db").display(),
            key = dir.join("policy.key").display(),
            token = dir.join("operator.token").display(),
        ),
    )
    .unwrap();
}

fn rollouts(addr: SocketAddr, cookie: &str) -> Vec<Value> {
    http(addr, "GET", "/api/rollouts", &[("Cookie", cookie)], b"")
        .ok()
        .filter(|r| r.status == 200)
        .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
        .and_then(|v| v["rollouts"].as_array().cloned())
        .unwrap_or_default()
}

fn rollout(addr: SocketAddr, cookie: &str, id: i64) -> Option<Value> {
    rollouts(addr, cookie)
        .into_iter()
        .find(|r| r["rollout"]["id"].as_i64() == Some(id))
}

fn stage(r: &Value, name: &str) -> Option<Value> {
    r["stages"]
        .as_array()?
        .iter()
        .find(|s| s["stage"] == name)
        .cloned()
}

fn count(r: &Option<Value>, stage_name: &str, what: &str) -> u64 {
    r.as_ref()
        .and_then(|r| stage(r, stage_name))
        .and_then(|s| s[what].as_u64())
        .unwrap_or(0)
}

fn policy_page(addr: SocketAddr, cookie: &str) -> String {
    let r = http(addr, "GET", "/noc/policy", &[("Cookie", cookie)], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

fn audit(addr: SocketAddr, cookie: &str) -> Vec<Value> {
    let r = http(
        addr,
        "GET",
        "/api/audit?limit=200",
        &[("Cookie", cookie)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["entries"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_canary_goes_to_its_cohort_is_promoted_and_a_refused_one_halts_itself_across_a_restart() {
    let started = Instant::now();
    let controller_bin = controller_binary().unwrap();
    let agent_bin = agent_binary().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let broker_port = free_port().unwrap();
    let http_port = free_port().unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], http_port).into();
    std::fs::write(dir.join("operator.token"), OPERATOR).unwrap();
    let config = dir.join("controller.toml");
    // The first controller checks rollouts only once an hour: the halt in step 4 can only
    // come from the restarted one.
    write_controller_config(&config, dir, http_port, broker_port, 3600);
    let controller = |args: &[&str]| -> String {
        let out = run(Command::new(&controller_bin)
            .arg("--config")
            .arg(&config)
            .args(args));
        String::from_utf8(out.stdout).unwrap()
    };
    let controller_key = controller(&["keygen"]).trim().to_string();
    let printed = controller(&["operator", "add", "alice", "--role", "admin"]);
    let secret_of = |printed: &str| {
        printed
            .split_whitespace()
            .find(|w| w.starts_with("op_"))
            .unwrap_or_else(|| panic!("no secret in {printed}"))
            .to_string()
    };
    let alice = secret_of(&printed);
    let oscar = secret_of(&controller(&[
        "operator", "add", "oscar", "--role", "operator",
    ]));

    // Four routers, enrolled, each with the local relay the NOC does not know.
    let mut routers = Vec::new();
    let policy_file = dir.join("local-policy.toml");
    std::fs::write(&policy_file, "mode = \"monitor\"\n").unwrap();
    for i in 0..4 {
        let state_dir = dir.join(format!("agent-{i}"));
        std::fs::create_dir_all(&state_dir).unwrap();
        let printed = String::from_utf8(
            run(Command::new(&agent_bin)
                .arg("keygen")
                .arg("--key")
                .arg(state_dir.join("agent.key")))
            .stdout,
        )
        .unwrap();
        let cpe = field(&printed, "cpe_id:");
        let enrolled = controller(&["cpe", "add", &cpe, &field(&printed, "public_key:")]);
        let password = smtpguard_tests::mqtt::printed_password(&enrolled).unwrap();
        let agent_config = state_dir.join("agent.toml");
        std::fs::write(
            &agent_config,
            format!(
                "state_dir = \"{state}\"\npolicy_file = \"{policy}\"\n\
                 isp_relays = [\"{LOCAL_RELAY}:25\"]\n\n\
                 [capture]\ninterface = \"lo\"\n\n[enforce]\nbackend = \"none\"\n\n\
                 [uplink]\nenabled = true\nbroker_url = \"mqtt://127.0.0.1:{broker_port}\"\n\
                 username = \"{cpe}\"\npassword = \"{password}\"\n\
                 controller_public_key = \"{controller_key}\"\n",
                state = state_dir.display(),
                policy = policy_file.display(),
            ),
        )
        .unwrap();
        routers.push((cpe, state_dir, agent_config));
    }
    let start_controller = |log: &str| {
        Proc::spawn(
            "controller",
            Command::new(&controller_bin)
                .arg("--config")
                .arg(&config)
                .arg("serve"),
            dir.join(log),
        )
    };
    let mut ctl = start_controller("controller-1.log");
    wait_until_true(
        "the broker and the web server",
        WAIT,
        &mut [&mut ctl],
        || {
            port_open(broker_port)
                && http(addr, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200)
        },
    );
    let mut routers: Vec<Router> = routers
        .into_iter()
        .enumerate()
        .map(|(i, (cpe, state_dir, agent_config))| Router {
            proc: Proc::spawn(
                "agent",
                Command::new(&agent_bin)
                    .arg("run")
                    .arg("--config")
                    .arg(&agent_config),
                dir.join(format!("agent-{i}.log")),
            ),
            cpe,
            state_dir,
        })
        .collect();
    let mut sorted: Vec<String> = routers.iter().map(|r| r.cpe.clone()).collect();
    sorted.sort();

    let cookie = login(addr, &alice).unwrap();
    let csrf = csrf_of(&policy_page(addr, &cookie)).unwrap();

    // 1. A fleet version from the editor, applied by all four.
    let base = "mode = \"enforce\"\ntelemetry_interval_secs = 5\n";
    let r = post_form(
        addr,
        "/noc/policy",
        &cookie,
        &[
            ("csrf", &csrf),
            ("policy", base),
            ("note", "enforce everywhere"),
            ("action", "publish"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    let v1 = r
        .header("location")
        .and_then(|l| l.split("saved=").nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    {
        let mut procs: Vec<&mut Proc> = routers.iter_mut().map(|r| &mut r.proc).collect();
        procs.push(&mut ctl);
        wait_until_true(
            "every router on the fleet version",
            WAIT,
            &mut procs,
            || (0..4).all(|i| applied(&dir.join(format!("agent-{i}"))).0 == Some(v1)),
        );
    }
    let fleet_applied_at = Instant::now();

    // 2. A canary to two named routers.
    let cohort = vec![sorted[1].clone(), sorted[3].clone()];
    let candidate = "mode = \"enforce\"\ntelemetry_interval_secs = 5\nrate_limit_per_minute = 20\n";
    let r = post_form(
        addr,
        "/noc/policy/rollouts",
        &cookie,
        &[
            ("csrf", &csrf),
            ("policy", candidate),
            ("note", "gentler rate limit"),
            ("cohort", &cohort.join(", ")),
            ("max_refusals", "0"),
            ("max_flagged_rise", "20"),
            ("promote_after_secs", ""),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    let canary_started = Instant::now();
    {
        let mut procs: Vec<&mut Proc> = routers.iter_mut().map(|r| &mut r.proc).collect();
        procs.push(&mut ctl);
        wait_until_true("the cohort applied the canary", WAIT, &mut procs, || {
            count(&rollout(addr, &cookie, 1), "canary", "applied") == 2
        });
    }
    let canary_secs = canary_started.elapsed().as_secs_f64();
    let r1 = rollout(addr, &cookie, 1).unwrap();
    assert_eq!(r1["rollout"]["status"], "canary", "{r1}");
    assert_eq!(r1["rollout"]["cohort"], serde_json::json!(cohort), "{r1}");
    let canary = stage(&r1, "canary").unwrap();
    assert_eq!(canary["behind"], 0, "{r1}");
    assert_eq!(canary["refused"], 0, "{r1}");
    for router in &routers {
        let (fleet, cpe) = applied(&router.state_dir);
        assert_eq!(fleet, Some(v1), "{}", router.cpe);
        if cohort.contains(&router.cpe) {
            assert!(cpe.is_some_and(|v| v > v1), "{} runs no canary", router.cpe);
        } else {
            assert_eq!(
                cpe, None,
                "{} outside the cohort got a per-CPE policy",
                router.cpe
            );
        }
    }
    let page = policy_page(addr, &cookie);
    assert!(
        page.contains(r#"data-rollout="1" data-status="canary""#),
        "{page}"
    );
    assert!(page.contains(r#"<tr data-stage="canary">"#), "{page}");
    assert!(
        page.contains(r#"<section id="rollouts" data-refresh="#),
        "{page}"
    );
    assert!(page.contains("Promote to the fleet"), "{page}");
    // While the canary runs, the editor refuses to publish to the whole fleet.
    let r = post_form(
        addr,
        "/noc/policy",
        &cookie,
        &[
            ("csrf", &csrf),
            ("policy", "mode = \"monitor\"\n"),
            ("note", "sideways"),
            ("action", "publish"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("in its canary stage"), "{}", r.body);

    // Hostile: an operator (not an admin) promoting or rolling back with their own valid
    // session and CSRF token, and the admin's session without the token, are refused and
    // change nothing.
    let oscar_cookie = login(addr, &oscar).unwrap();
    let oscar_csrf = csrf_of(&policy_page(addr, &oscar_cookie)).unwrap();
    assert!(!policy_page(addr, &oscar_cookie).contains("Promote to the fleet"));
    for action in ["promote", "rollback"] {
        let path = format!("/noc/policy/rollouts/1/{action}");
        let r = post_form(addr, &path, &oscar_cookie, &[("csrf", &oscar_csrf)]).unwrap();
        assert_eq!(r.status, 403, "operator {action}: {}", r.body);
        let r = post_form(addr, &path, &cookie, &[("reason", "no token")]).unwrap();
        assert_eq!(r.status, 403, "{action} without CSRF: {}", r.body);
    }
    assert_eq!(
        rollout(addr, &cookie, 1).unwrap()["rollout"]["status"],
        "canary"
    );

    // 3. Promotion by hand: all four apply the candidate as the fleet policy.
    let r = post_form(
        addr,
        "/noc/policy/rollouts/1/promote",
        &cookie,
        &[("csrf", &csrf)],
    )
    .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    let promoted_at = Instant::now();
    {
        let mut procs: Vec<&mut Proc> = routers.iter_mut().map(|r| &mut r.proc).collect();
        procs.push(&mut ctl);
        wait_until_true(
            "the fleet applied the promoted version",
            WAIT,
            &mut procs,
            || count(&rollout(addr, &cookie, 1), "fleet", "applied") == 4,
        );
    }
    let promote_secs = promoted_at.elapsed().as_secs_f64();
    let r1 = rollout(addr, &cookie, 1).unwrap();
    assert_eq!(r1["rollout"]["status"], "promoted", "{r1}");
    let v2 = r1["rollout"]["fleet_version"].as_u64().unwrap();
    for router in &routers {
        assert_eq!(applied(&router.state_dir).0, Some(v2), "{}", router.cpe);
    }

    // 4. A policy the routers refuse, to half the fleet.
    let refused = format!(
        "mode = \"enforce\"\ntelemetry_interval_secs = 5\nrate_limit_per_minute = 20\n\n[indicators]\nmail_servers = [\"{LOCAL_RELAY}/32\"]\n"
    );
    let r = post_form(
        addr,
        "/noc/policy/rollouts",
        &cookie,
        &[
            ("csrf", &csrf),
            ("policy", &refused),
            ("note", "block a spam server"),
            ("cohort", "50%"),
            ("max_refusals", "0"),
            ("max_flagged_rise", "20"),
            ("promote_after_secs", "3600"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    {
        let mut procs: Vec<&mut Proc> = routers.iter_mut().map(|r| &mut r.proc).collect();
        procs.push(&mut ctl);
        wait_until_true("the cohort refused the candidate", WAIT, &mut procs, || {
            count(&rollout(addr, &cookie, 2), "canary", "refused") == 2
        });
    }
    let r2 = rollout(addr, &cookie, 2).unwrap();
    assert_eq!(
        r2["rollout"]["status"], "canary",
        "the slow watch acted: {r2}"
    );
    let cohort2: Vec<String> = serde_json::from_value(r2["rollout"]["cohort"].clone()).unwrap();
    assert_eq!(cohort2.len(), 2, "{r2}");
    let page = policy_page(addr, &cookie);
    assert!(page.contains("behind or refused"), "{page}");
    assert!(
        page.contains(LOCAL_RELAY),
        "the refusal's reason is not on the page: {page}"
    );

    // The controller restarts with a short watch interval; the watch finds the rollout in
    // the database and halts it.
    ctl.stop();
    write_controller_config(&config, dir, http_port, broker_port, 1);
    let mut ctl = start_controller("controller-2.log");
    let restarted_at = Instant::now();
    let cookie = {
        let mut got = None;
        wait_until_true("the restarted web server", WAIT, &mut [&mut ctl], || {
            got = login(addr, &alice).ok();
            got.is_some()
        });
        got.unwrap()
    };
    {
        let mut procs: Vec<&mut Proc> = routers.iter_mut().map(|r| &mut r.proc).collect();
        procs.push(&mut ctl);
        wait_until_true("the halted cohort restored", WAIT, &mut procs, || {
            let r = rollout(addr, &cookie, 2);
            r.as_ref()
                .is_some_and(|r| r["rollout"]["status"] == "halted")
                && count(&r, "restore", "applied") == 2
        });
    }
    let halt_secs = restarted_at.elapsed().as_secs_f64();
    let r2 = rollout(addr, &cookie, 2).unwrap();
    assert_eq!(r2["rollout"]["ended_by"], "rollout watch", "{r2}");
    let reason = r2["rollout"]["end_reason"].as_str().unwrap();
    assert!(reason.contains("2 of 2 cohort routers refused"), "{reason}");
    assert!(reason.contains(LOCAL_RELAY), "{reason}");
    let page = policy_page(addr, &cookie);
    assert!(
        page.contains(r#"data-rollout="2" data-status="halted""#),
        "{page}"
    );
    assert!(page.contains("Halted by rollout watch"), "{page}");
    // The cohort runs the live fleet content again; the fleet itself never saw the candidate.
    for router in &routers {
        let (fleet, cpe) = applied(&router.state_dir);
        assert_eq!(fleet, Some(v2), "{}", router.cpe);
        if cohort2.contains(&router.cpe) {
            let restore = stage(&r2, "restore").unwrap();
            let v = restore["routers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["cpe_id"] == router.cpe.as_str())
                .and_then(|t| t["version"].as_u64())
                .unwrap();
            assert_eq!(cpe, Some(v), "{}", router.cpe);
        }
    }

    // 5. The audit log, newest first, with each step's operator.
    let entries = audit(addr, &cookie);
    let find = |action: &str, target: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["target"] == target)
            .unwrap_or_else(|| panic!("no {action} on {target} in {entries:?}"))
            .clone()
    };
    for (action, target, actor) in [
        ("rollout_start", "rollout 1", "alice"),
        ("rollout_promote", "rollout 1", "alice"),
        ("rollout_start", "rollout 2", "alice"),
        ("rollout_halt", "rollout 2", "rollout watch"),
    ] {
        let e = find(action, target);
        assert_eq!(e["actor"], actor, "{e}");
        assert_eq!(e["outcome"], "ok", "{e}");
    }
    assert!(find("rollout_halt", "rollout 2")["detail"]
        .as_str()
        .unwrap()
        .contains("started by alice"));
    assert!(find("rollout_promote", "rollout 1")["detail"]
        .as_str()
        .unwrap()
        .contains("rate_limit_per_minute"));
    eprintln!(
        "fleet v1 applied by 4 routers after {:.1} s; canary applied by its 2 routers in {canary_secs:.1} s; \
         promotion applied by 4 in {promote_secs:.1} s; halt and restore {halt_secs:.1} s after the restart; \
         whole test {:.1} s ({:.1} s since v1)",
        fleet_applied_at.duration_since(started).as_secs_f64(),
        started.elapsed().as_secs_f64(),
        fleet_applied_at.elapsed().as_secs_f64(),
    );
    for mut router in routers {
        router.proc.stop();
    }
    ctl.stop();
}
