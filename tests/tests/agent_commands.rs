//! Issue 11, commands end to end with the real binaries: `smtpguard-controller serve`
//! (embedded broker, ingest, web API on loopback) and `smtpguard-agent run` (capturing on
//! `lo`, enforcement planned but carried out by the `none` backend, uplink to the embedded
//! broker with its own broker credentials). Everything is driven and read the way an
//! operator's shell script would: `POST /api/cpes/{cpe}/devices/{mac}/block` and
//! `.../release` with the operator token, `GET /api/cpes/{cpe}/commands` for the status, and
//! the agent's own `enforce-state.json` for what the router enforces.
//!
//! 1. A block sent through the API blocks the device on the router and shows `applied`.
//! 2. A release sent through the API lifts it (a grace period starts on the router) and
//!    shows `applied` with its ack time.
//! 3. Published on the router's command topic with the controller's broker login (as a
//!    compromised broker or a replaying attacker could): a replay of the applied block, a
//!    block signed with another key, an expired block signed with the controller key and a
//!    block for another router are all refused by the agent, with the reason in the
//!    answers the controller stores; the device stays released.
//! 4. After the agent restarts, replaying the release is still refused (the last command
//!    id is persisted).
//!
//! Waits on conditions (polling), never on fixed sleeps. Needs no root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod web_common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use smtpguard_controller::config::BrokerConfig;
use smtpguard_protocol::{keys, seal, Body, CommandAction, MacAddr, Topic};
use smtpguard_tests::mqtt::{agent_binary, controller_binary, free_port, now_ms, port_open};
use smtpguard_tests::process::{field, run, wait_until_true, Proc};
use web_common::http;

const OPERATOR: &str = "noc-commands-token-0123456789";
const BROKER_PASSWORD: &str = "controller-commands-secret";
const DEVICE: MacAddr = MacAddr([0x02, 0x5c, 0x0d, 0, 0, 0x42]);
const WAIT: Duration = Duration::from_secs(60);

/// Polls `check` until it holds, failing early with the processes' logs when one died.
fn wait_for(what: &str, procs: &mut [&mut Proc], check: impl FnMut() -> bool) {
    wait_until_true(what, WAIT, procs, check);
}

struct Api {
    addr: SocketAddr,
}

impl Api {
    /// `POST` with the operator token: the JSON answer and the status code.
    fn post(&self, path: &str) -> (u16, Value) {
        let auth = format!("Bearer {OPERATOR}");
        let r = http(self.addr, "POST", path, &[("Authorization", &auth)], b"").unwrap();
        (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::Null),
        )
    }

    /// The router's commands as `GET /api/cpes/{cpe}/commands` lists them.
    fn commands(&self, cpe: &str) -> Vec<Value> {
        let auth = format!("Bearer {OPERATOR}");
        let r = http(
            self.addr,
            "GET",
            &format!("/api/cpes/{cpe}/commands"),
            &[("Authorization", &auth)],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        v["commands"].as_array().cloned().unwrap_or_default()
    }

    fn command(&self, cpe: &str, id: u64) -> Option<Value> {
        self.commands(cpe)
            .into_iter()
            .find(|c| c["command_id"].as_u64() == Some(id))
    }

    fn status_of(&self, cpe: &str, id: u64) -> Option<String> {
        self.command(cpe, id)
            .and_then(|c| c["status"].as_str().map(str::to_string))
    }
}

/// The agent's saved enforcement state (`enforce-state.json`).
fn enforcement(state_dir: &Path) -> Value {
    std::fs::read(state_dir.join("enforce-state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn blocked(state_dir: &Path, mac: MacAddr) -> bool {
    enforcement(state_dir)["entries"]
        .as_array()
        .is_some_and(|es| {
            es.iter().any(|e| {
                e["mac"].as_str() == Some(&mac.to_string()) && e["action"].as_str() == Some("block")
            })
        })
}

fn released_until(state_dir: &Path, mac: MacAddr) -> Option<u64> {
    enforcement(state_dir)["manual_releases"]
        .as_array()?
        .iter()
        .find(|r| r["mac"].as_str() == Some(&mac.to_string()))
        .and_then(|r| r["until_ms"].as_u64())
}

/// A refusal the controller stored for `command_id` from `cpe` whose reason contains
/// `needle`.
fn refusal_stored(db: &Path, cpe: &str, command_id: u64, needle: &str) -> bool {
    let Ok(conn) = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        return false;
    };
    let _ = conn.busy_timeout(Duration::from_secs(2));
    conn.query_row(
        "SELECT COUNT(*) FROM command_acks WHERE cpe_id = ?1 AND command_id = ?2
         AND outcome = 'refused' AND reason LIKE ?3",
        rusqlite::params![cpe, command_id as i64, format!("%{needle}%")],
        |r| r.get::<_, i64>(0),
    )
    .is_ok_and(|n| n > 0)
}

fn command_wire(db: &Path, cpe: &str, command_id: u64) -> Vec<u8> {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT wire FROM commands WHERE cpe_id = ?1 AND command_id = ?2",
        rusqlite::params![cpe, command_id as i64],
        |r| r.get(0),
    )
    .unwrap()
}

/// Publishes `bytes` on `cpe`'s command topic with the controller's broker login, waiting
/// for the broker's acknowledgement. Each call logs in with a client id of its own: the
/// previous call's session may still be closing in the broker, and a login with the same id
/// would take it over (and can lose its own connection in that race).
fn publish_command(broker_port: u16, cpe: &str, bytes: Vec<u8>) {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let broker = BrokerConfig {
        embedded_listen: ([127, 0, 0, 1], broker_port).into(),
        password: BROKER_PASSWORD.into(),
        ..BrokerConfig::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(smtpguard_controller::policy::publish_with(
        &broker,
        &format!("controller-commands-attacker-{call}"),
        vec![(Topic::Command(cpe.into()).to_string(), bytes)],
        false,
        Duration::from_secs(10),
    ))
    .unwrap();
}

fn block_command(target: &str, id: u64, expires_ms: u64) -> Body {
    Body::Command(smtpguard_protocol::Command {
        target: target.into(),
        command_id: id,
        issued_ms: now_ms(),
        expires_ms,
        action: CommandAction::Block {
            mac: DEVICE,
            ttl_secs: 600,
        },
    })
}

#[test]
fn api_commands_reach_a_live_agent_and_forged_replayed_or_expired_ones_are_refused() {
    let controller_bin = controller_binary().unwrap();
    let agent_bin = agent_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    let broker_port = free_port().unwrap();
    let http_port = free_port().unwrap();
    let db = dir.join("controller.db");
    let policy_key = dir.join("policy.key");
    let token_file = dir.join("operator.token");
    std::fs::write(&token_file, OPERATOR).unwrap();
    let controller_config = dir.join("controller.toml");
    std::fs::write(
        &controller_config,
        format!(
            "db_path = \"{db}\"\npolicy_key_path = \"{key}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n\n\
             [broker]\nembedded_listen = \"127.0.0.1:{broker_port}\"\n\
             password = \"{BROKER_PASSWORD}\"\nclient_id = \"controller-commands\"\n\n\
             [web]\noperator_token_file = \"{token}\"\n\n\
             [commands]\nrelease_grace_secs = 900\nexpiry_secs = 300\n",
            db = db.display(),
            key = policy_key.display(),
            token = token_file.display(),
        ),
    )
    .unwrap();
    let controller = |args: &[&str]| -> String {
        let out = run(Command::new(&controller_bin)
            .arg("--config")
            .arg(&controller_config)
            .args(args));
        String::from_utf8(out.stdout).unwrap()
    };
    let controller_public_key = controller(&["keygen"]).trim().to_string();

    let state_dir = dir.join("agent-state");
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
    let broker_password = smtpguard_tests::mqtt::printed_password(&enrolled).unwrap();

    let mut controller_proc = Proc::spawn(
        "controller",
        Command::new(&controller_bin)
            .arg("--config")
            .arg(&controller_config)
            .arg("serve"),
        dir.join("controller.log"),
    );
    let api = Api {
        addr: ([127, 0, 0, 1], http_port).into(),
    };
    wait_for(
        "the broker and the web server",
        &mut [&mut controller_proc],
        || {
            port_open(broker_port)
                && http(api.addr, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200)
        },
    );

    let policy_file = dir.join("policy.toml");
    std::fs::write(
        &policy_file,
        "mode = \"enforce\"\ntelemetry_interval_secs = 5\n",
    )
    .unwrap();
    let agent_config = dir.join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "state_dir = \"{state}\"\npolicy_file = \"{policy}\"\n\n\
             [capture]\ninterface = \"lo\"\n\n\
             [enforce]\nbackend = \"none\"\n\n\
             [uplink]\nenabled = true\nbroker_url = \"mqtt://127.0.0.1:{broker_port}\"\n\
             username = \"{cpe}\"\npassword = \"{broker_password}\"\n\
             controller_public_key = \"{controller_public_key}\"\n",
            state = state_dir.display(),
            policy = policy_file.display(),
        ),
    )
    .unwrap();
    let start_agent = |log: &str| {
        Proc::spawn(
            "agent",
            Command::new(&agent_bin)
                .arg("run")
                .arg("--config")
                .arg(&agent_config),
            dir.join(log),
        )
    };
    let mut agent = start_agent("agent.log");
    let online = |api: &Api| {
        let auth = format!("Bearer {OPERATOR}");
        http(
            api.addr,
            "GET",
            &format!("/api/cpes/{cpe}"),
            &[("Authorization", &auth)],
            b"",
        )
        .ok()
        .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
        .is_some_and(|v| v["cpe"]["status"].as_str() == Some("online"))
    };
    wait_for(
        "the agent online",
        &mut [&mut agent, &mut controller_proc],
        || online(&api),
    );

    // 1. Block through the API.
    let (code, body) = api.post(&format!(
        "/api/cpes/{cpe}/devices/{DEVICE}/block?ttl_secs=600"
    ));
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["command_id"], 1);
    assert_eq!(body["status"], "sent");
    wait_for(
        "the block applied",
        &mut [&mut agent, &mut controller_proc],
        || api.status_of(&cpe, 1).as_deref() == Some("applied"),
    );
    assert!(blocked(&state_dir, DEVICE), "{}", enforcement(&state_dir));

    // 2. Release through the API: lifted, with the configured grace period.
    let before = now_ms();
    let (code, body) = api.post(&format!("/api/cpes/{cpe}/devices/{DEVICE}/release"));
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["command_id"], 2);
    wait_for(
        "the release applied",
        &mut [&mut agent, &mut controller_proc],
        || api.status_of(&cpe, 2).as_deref() == Some("applied"),
    );
    let release = api.command(&cpe, 2).unwrap();
    assert_eq!(release["action"], "release");
    assert_eq!(release["secs"], 900);
    assert!(
        release["ack_ms"].as_u64().is_some_and(|t| t >= before),
        "{release}"
    );
    assert!(release["reason"].is_null(), "{release}");
    assert!(!blocked(&state_dir, DEVICE), "{}", enforcement(&state_dir));
    let until = released_until(&state_dir, DEVICE).expect("a grace period on the router");
    assert!(until >= before + 900_000, "grace until {until}");

    // Bad input to the API: refused, nothing sent.
    let (code, _) = api.post(&format!("/api/cpes/{cpe}/devices/not-a-mac/block"));
    assert_eq!(code, 400);
    let (code, _) = api.post(&format!("/api/cpes/cpe-nobody/devices/{DEVICE}/block"));
    assert_eq!(code, 404);
    let r = http(
        api.addr,
        "POST",
        &format!("/api/cpes/{cpe}/devices/{DEVICE}/block"),
        &[("Authorization", "Bearer wrong-token-0123456789")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(api.commands(&cpe).len(), 2);

    // 3. Hostile commands on the router's own topic.
    publish_command(broker_port, &cpe, command_wire(&db, &cpe, 1));
    let forger = keys::generate();
    let forged = seal(
        &block_command(&cpe, 10, now_ms() + 60_000),
        &cpe,
        10,
        now_ms(),
        &forger,
    )
    .unwrap();
    publish_command(broker_port, &cpe, forged);
    let key = keys::read_secret(&policy_key).unwrap();
    let expired = seal(
        &block_command(&cpe, 11, now_ms() - 1),
        &cpe,
        11,
        now_ms(),
        &key,
    )
    .unwrap();
    publish_command(broker_port, &cpe, expired);
    let foreign = seal(
        &block_command("cpe-someone-else", 12, now_ms() + 60_000),
        &cpe,
        12,
        now_ms(),
        &key,
    )
    .unwrap();
    publish_command(broker_port, &cpe, foreign);
    for (id, why) in [
        (1, "replayed"),
        (10, "bad_signature"),
        (11, "expired"),
        (12, "cpe-someone-else"),
    ] {
        wait_for(
            &format!("the refusal of command {id} ({why})"),
            &mut [&mut agent, &mut controller_proc],
            || refusal_stored(&db, &cpe, id, why),
        );
    }
    assert!(!blocked(&state_dir, DEVICE), "{}", enforcement(&state_dir));
    // The applied commands stay applied; nothing unknown was added to the list.
    assert_eq!(api.status_of(&cpe, 1).as_deref(), Some("applied"));
    assert_eq!(api.status_of(&cpe, 2).as_deref(), Some("applied"));
    assert_eq!(api.commands(&cpe).len(), 2);

    // 4. A command issued while the router is offline reaches it when it is back (routers
    //    keep no broker session: the controller sends unanswered commands again when the
    //    router says it is online); a restart does not reopen the replay window.
    agent.stop();
    wait_for("the agent offline", &mut [&mut controller_proc], || {
        !online(&api)
    });
    let (code, body) = api.post(&format!(
        "/api/cpes/{cpe}/devices/{DEVICE}/block?ttl_secs=600"
    ));
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["command_id"], 3);
    assert_eq!(api.status_of(&cpe, 3).as_deref(), Some("sent"));
    let mut agent = start_agent("agent2.log");
    wait_for(
        "the agent online again",
        &mut [&mut agent, &mut controller_proc],
        || online(&api),
    );
    wait_for(
        "the block issued while offline applied",
        &mut [&mut agent, &mut controller_proc],
        || api.status_of(&cpe, 3).as_deref() == Some("applied"),
    );
    wait_for(
        "the block in the router's state",
        &mut [&mut agent, &mut controller_proc],
        || blocked(&state_dir, DEVICE),
    );
    let metrics = smtpguard_tests::metrics::scrape(api.addr);
    let metric = |name: &str| -> u64 {
        smtpguard_tests::metrics::value(&metrics, &format!("{name} "))
            .unwrap_or_else(|| panic!("no metric {name} in {metrics}"))
    };
    assert_eq!(metric("smtpguard_commands{status=\"applied\"}"), 3);
    assert_eq!(metric("smtpguard_commands{status=\"sent\"}"), 0);
    // Three commands issued, the one issued while the router was offline sent again.
    assert!(
        metric("smtpguard_command_publishes_total") >= 4,
        "{metrics}"
    );
    publish_command(broker_port, &cpe, command_wire(&db, &cpe, 2));
    wait_for(
        "the refusal of the replayed release after a restart",
        &mut [&mut agent, &mut controller_proc],
        || refusal_stored(&db, &cpe, 2, "replayed"),
    );

    // 5. A subscriber's release request, approved in the NOC, becomes a release command;
    //    once the router answered, the API and the pages say it was lifted and when.
    {
        // The router reported the device once (the portal takes requests only for those).
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        // As the ingest keeps it (`store::devices`).
        conn.execute(
            "INSERT INTO devices (cpe_id, mac, ips_json, verdict, severity, score, since_ms,
                last_seen_ms, last_fact, action, evidence_json, observed_json)
             VALUES (?1, ?2, '[]', 'infected', 2, 0.9, 1, 1, 'report', 'block', '[]', '{}')",
            rusqlite::params![cpe, DEVICE.to_string()],
        )
        .unwrap();
    }
    let household_token = {
        let db_handle = smtpguard_controller::web::open_db(&db).unwrap();
        smtpguard_controller::households::create(
            &db_handle,
            "The Command family",
            &[cpe.as_str()],
            now_ms(),
        )
        .unwrap()
        .1
    };
    let me = web_common::login(api.addr, &household_token).unwrap();
    let my = http(api.addr, "GET", "/my", &[("Cookie", &me)], b"").unwrap();
    let csrf = web_common::csrf_of(&my.body).expect("a CSRF token on /my");
    let form = format!(
        "cpe_id={cpe}&mac={}&note=scanned&csrf={csrf}",
        DEVICE.to_string().replace(':', "%3A")
    );
    let r = http(
        api.addr,
        "POST",
        "/my/release",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &me),
        ],
        form.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    let noc = web_common::login(api.addr, OPERATOR).unwrap();
    let releases = http(api.addr, "GET", "/noc/releases", &[("Cookie", &noc)], b"").unwrap();
    let request_id: i64 = releases
        .body
        .split(r#"action="/noc/releases/"#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pending request on /noc/releases: {}", releases.body));
    let csrf = web_common::csrf_of(&releases.body).unwrap();
    let r = http(
        api.addr,
        "POST",
        &format!("/noc/releases/{request_id}"),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &noc),
        ],
        format!("decision=approve&csrf={csrf}").as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    wait_for(
        "the approved release applied",
        &mut [&mut agent, &mut controller_proc],
        || {
            api.command(&cpe, 4).is_some_and(|c| {
                c["status"] == "applied" && c["release_request_id"].as_i64() == Some(request_id)
            })
        },
    );
    let ack_ms = api.command(&cpe, 4).unwrap()["ack_ms"].as_u64().unwrap();
    let auth = format!("Bearer {household_token}");
    let mine = http(
        api.addr,
        "GET",
        "/api/my/devices",
        &[("Authorization", &auth)],
        b"",
    )
    .unwrap();
    let mine: Value = serde_json::from_str(&mine.body).unwrap();
    let request = &mine["release_requests"][0];
    assert_eq!(request["status"], "approved", "{mine}");
    assert_eq!(request["command"]["state"], "acknowledged", "{mine}");
    assert_eq!(request["command"]["at_ms"].as_u64(), Some(ack_ms), "{mine}");
    let page = http(
        api.addr,
        "GET",
        &format!("/noc/cpe/{cpe}"),
        &[("Cookie", &noc)],
        b"",
    )
    .unwrap();
    assert!(
        page.body
            .contains(r#"data-command="4" data-status="applied""#)
            && page
                .body
                .contains(r#"data-command="1" data-status="applied""#),
        "{}",
        page.body
    );
    drop(agent);
    drop(controller_proc);
}
