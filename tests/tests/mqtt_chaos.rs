//! No alert lost, none duplicated: three agents send 200 alerts each while mosquitto is
//! restarted 10 times and the controller process is SIGKILLed 3 times. Real processes: the
//! mosquitto broker and the `smtpguard-controller` binary (enrolment through its CLI,
//! `serve`, then SIGTERM at the end); the agents are the uplink library in this process.
//!
//! Needs the Debian package `mosquitto`. The controller binary is built by
//! [`smtpguard_tests::mqtt::controller_binary`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use smtpguard_agent::uplink::{Settings, Uplink, UplinkHandle};
use smtpguard_controller::store::Store;
use smtpguard_protocol::keys;
use smtpguard_tests::mqtt::{
    alert, controller_binary, free_port, terminate, wait_until, Mosquitto,
};

const AGENTS: usize = 3;
const ALERTS_PER_AGENT: u32 = 200;

fn spawn_controller(bin: &Path, config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(bin)
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_is_stored_exactly_once_across_broker_restarts_and_controller_kills() {
    let bin = tokio::task::spawn_blocking(controller_binary)
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let mut users = vec![("controller".to_string(), "controller-pw".to_string())];
    let agent_keys: Vec<(String, ed25519_dalek::SigningKey)> = (0..AGENTS)
        .map(|i| (format!("cpe-{i}"), keys::generate()))
        .collect();
    for (id, _) in &agent_keys {
        users.push((id.clone(), format!("pw-{id}")));
    }
    let user_refs: Vec<(&str, &str)> = users
        .iter()
        .map(|(u, p)| (u.as_str(), p.as_str()))
        .collect();
    let mut mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), port, &user_refs).unwrap();

    let db = dir.path().join("controller.db");
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "db_path = \"{}\"\npolicy_key_path = \"{}\"\n\n[broker]\nurl = \"mqtt://127.0.0.1:{port}\"\n\
             username = \"controller\"\npassword = \"controller-pw\"\nclient_id = \"controller-chaos\"\n\n\
             [ingest]\nshared_subscription = false\n",
            db.display(),
            dir.path().join("policy.key").display()
        ),
    )
    .unwrap();
    // Enrolment through the CLI, as an operator would.
    for (id, key) in &agent_keys {
        let out = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .args([
                "cpe",
                "add",
                id,
                &keys::public_key_text(&key.verifying_key()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = dir.path().join("controller.log");
    let mut controller = spawn_controller(&bin, &config, &log);
    mosquitto
        .wait_for_subscription("smtpguard/v1/cpe/+/alert", Duration::from_secs(20))
        .unwrap();

    // The agents and their senders: one alert every 40 ms each (about 8 s).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut handles: Vec<UplinkHandle> = Vec::new();
    let mut senders = Vec::new();
    for (id, key) in &agent_keys {
        let mut settings = Settings::new(
            id.clone(),
            dir.path().join(id),
            format!("mqtt://127.0.0.1:{port}"),
            keys::generate().verifying_key(),
        );
        settings.password = Some(format!("pw-{id}"));
        settings.reconnect_min_ms = 50;
        settings.reconnect_max_ms = 1000;
        let mut stop = stop_rx.clone();
        let uplink = Uplink::start(settings, key.clone(), async move {
            let _ = stop.changed().await;
        })
        .await
        .unwrap();
        let handle = uplink.handle.clone();
        senders.push(tokio::spawn(async move {
            for n in 0..ALERTS_PER_AGENT {
                handle.send_alert(alert(n)).unwrap();
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }));
        handles.push(uplink.handle);
    }

    // Chaos: 10 broker restarts, 3 controller SIGKILLs, spread over the sending.
    let chaos = tokio::task::spawn_blocking(move || {
        for round in 0..10 {
            std::thread::sleep(Duration::from_millis(700));
            mosquitto.restart().unwrap();
            if round % 3 == 1 {
                controller.kill().unwrap();
                controller.wait().unwrap();
                std::thread::sleep(Duration::from_millis(200));
                controller = spawn_controller(&bin, &config, &log);
            }
        }
        (mosquitto, controller)
    });
    for s in senders {
        s.await.unwrap();
    }
    let (mosquitto, mut controller) = chaos.await.unwrap();

    let total = AGENTS as u64 * u64::from(ALERTS_PER_AGENT);
    let db2 = db.clone();
    let hs = handles.clone();
    let waited = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(60), "every alert stored", || {
            Store::open(&db2).unwrap().alert_count(None).unwrap() >= total
                && hs.iter().all(|h| h.stats().alerts_queued == 0)
        })
    })
    .await
    .unwrap();
    if let Err(e) = waited {
        let stored = Store::open(&db).unwrap().alert_count(None).unwrap();
        let stats: Vec<_> = handles.iter().map(|h| h.stats()).collect();
        panic!(
            "{e}: stored {stored} of {total}; agents {stats:?}\ncontroller log:\n{}\nbroker log:\n{}",
            std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default(),
            mosquitto.log()
        );
    }

    // Exactly once: every (agent, alert number) stored, and nothing else.
    let store = Store::open(&db).unwrap();
    assert_eq!(store.alert_count(None).unwrap(), total);
    for (id, _) in &agent_keys {
        let conn = store.db().sqlite_connection().unwrap();
        let mut stmt = conn
            .prepare("SELECT evidence_json FROM alerts WHERE cpe_id = ?1")
            .unwrap();
        let got: Vec<String> = stmt
            .query_map([id], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let unique: BTreeSet<&String> = got.iter().collect();
        assert_eq!(got.len(), unique.len(), "{id}: duplicates stored");
        let expected: BTreeSet<String> = (0..ALERTS_PER_AGENT)
            .map(|n| format!("[\"alert #{n}\"]"))
            .collect();
        assert_eq!(
            unique.into_iter().cloned().collect::<BTreeSet<_>>(),
            expected,
            "{id}"
        );
    }

    let _ = stop_tx.send(true);
    // SIGTERM stops the controller cleanly.
    terminate(&mut controller).unwrap();
    assert!(controller.wait().unwrap().success());
    drop(mosquitto);
}
