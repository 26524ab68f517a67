//! Against a real mosquitto with the deploy ACL: a CPE cannot publish under another CPE's
//! topic (nor replace its own retained policy), and an agent that was offline for a while
//! (and restarted meanwhile) delivers every queued alert when the broker comes back, with
//! dropped telemetry counted and the queue bounded.
//!
//! Needs the Debian package `mosquitto` (mosquitto and mosquitto_passwd).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use smtpguard_agent::uplink::{Settings, Uplink};
use smtpguard_controller::config::Config;
use smtpguard_controller::store::db::Sql;
use smtpguard_controller::store::Store;
use smtpguard_controller::{registry, serve};
use smtpguard_protocol::{keys, seal, topic, AgentStats, Body, Telemetry};
use smtpguard_tests::mqtt::{alert, connack, free_port, now_ms, wait_until, Mosquitto};

fn telemetry() -> Telemetry {
    Telemetry {
        window_start_ms: now_ms(),
        window_secs: 60,
        public_ip: Some("203.0.113.9".parse().unwrap()),
        stats: AgentStats::default(),
        devices: vec![],
        connections: vec![],
    }
}

fn controller_config(dir: &Path, port: u16) -> Config {
    let mut config = Config {
        db_path: dir.join("controller.db"),
        policy_key_path: dir.join("policy.key"),
        ..Config::default()
    };
    config.broker.url = Some(format!("mqtt://127.0.0.1:{port}"));
    config.broker.username = "controller".into();
    config.broker.password = "controller-pw".into();
    config.broker.client_id = "controller-mosq-test".into();
    // One controller; its plain subscription survives broker restarts (see
    // IngestConfig::shared_subscription).
    config.ingest.shared_subscription = false;
    config
}

async fn blocking_wait(
    what: &'static str,
    secs: u64,
    check: impl FnMut() -> bool + Send + 'static,
) {
    tokio::task::spawn_blocking(move || wait_until(Duration::from_secs(secs), what, check))
        .await
        .unwrap()
        .unwrap();
}

/// Waits (at most 15 s) until the broker's log has `line`.
async fn wait_for_log(mosquitto: &Mosquitto, what: &'static str, line: &'static str) {
    let log = mosquitto.log_path();
    blocking_wait(what, 15, move || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(line)
    })
    .await;
}

/// Publishes at QoS 1 with mosquitto_pub as an MQTT v5 client and returns the PUBACK
/// reason code it reports (0 success, 135 not authorized).
fn v5_publish(port: u16, user: &str, pass: &str, topic: &str, payload: &[u8]) -> u8 {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), payload).unwrap();
    let out = std::process::Command::new("mosquitto_pub")
        .args(["-V", "mqttv5", "-h", "127.0.0.1", "-q", "1", "-d"])
        .args([
            "-p",
            &port.to_string(),
            "-u",
            user,
            "-P",
            pass,
            "-i",
            user,
            "-t",
            topic,
        ])
        .arg("-f")
        .arg(file.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let rc = text
        .lines()
        .find_map(|l| l.split("received PUBACK").nth(1))
        .and_then(|rest| rest.split("RC:").nth(1))
        .and_then(|rc| rc.trim_end_matches(')').trim().parse().ok());
    rc.unwrap_or_else(|| panic!("no PUBACK from mosquitto_pub: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpe_cannot_publish_under_another_cpes_topic() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let mosquitto = Mosquitto::start(
        &dir.path().join("mosquitto"),
        port,
        &[
            ("controller", "controller-pw"),
            ("cpe-a", "pa"),
            ("cpe-b", "pb"),
        ],
    )
    .unwrap();
    let config = controller_config(dir.path(), port);
    let key_a = keys::generate();
    let key_b = keys::generate();
    {
        let mut store = Store::open(&config.db_path).unwrap();
        for (id, k) in [("cpe-a", &key_a), ("cpe-b", &key_b)] {
            registry::add(
                &mut store,
                id,
                &keys::public_key_text(&k.verifying_key()),
                None,
                0,
            )
            .unwrap();
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve::run(config.clone(), async move {
        let _ = stop_rx.await;
    }));
    // The ingest's subscription is in place before anything is published: alerts come
    // in a session of their own.
    wait_for_log(
        &mosquitto,
        "the ingest's alert subscription",
        "controller-mosq-test-alerts 1 smtpguard/v1/cpe/+/alert",
    )
    .await;

    // cpe-a holds a genuine message of cpe-b (say, captured earlier) and tries to inject
    // it on cpe-b's topic: the broker refuses it.
    let b_msg = seal(&Body::Alert(alert(1)), "cpe-b", 1, now_ms(), &key_b).unwrap();
    let reason = v5_publish(port, "cpe-a", "pa", "smtpguard/v1/cpe/cpe-b/alert", &b_msg);
    assert_eq!(
        reason,
        135,
        "not authorized; broker log:\n{}",
        mosquitto.log()
    );
    // Nor may it replace its own retained policy override.
    let reason = v5_publish(port, "cpe-a", "pa", "smtpguard/v1/cpe/cpe-a/policy", &[1]);
    assert_eq!(reason, 135, "not authorized");

    // Its own alert on its own topic goes through and is stored (so the ingest was
    // listening all along).
    let a_msg = seal(&Body::Alert(alert(2)), "cpe-a", 1, now_ms(), &key_a).unwrap();
    let reason = v5_publish(port, "cpe-a", "pa", "smtpguard/v1/cpe/cpe-a/alert", &a_msg);
    assert_eq!(reason, 0, "success");
    let db = config.db_path.clone();
    blocking_wait("cpe-a's alert stored", 15, move || {
        Store::open(&db)
            .unwrap()
            .alert_count(Some("cpe-a"))
            .unwrap()
            == 1
    })
    .await;
    let store = Store::open(&config.db_path).unwrap();
    assert_eq!(store.alert_count(Some("cpe-b")).unwrap(), 0);
    let rejected: u64 = store
        .rejection_counts()
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        rejected, 0,
        "the injected message never reached the controller"
    );
    let _ = stop_tx.send(());
}

/// A controller upgraded from one ingest session to two finds its old session on the
/// broker, still subscribed to alerts: it drops that subscription, so an alert is not
/// delivered (and refused as a replay) twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_kept_from_before_the_alert_lane_stops_taking_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let mosquitto = Mosquitto::start(
        &dir.path().join("mosquitto"),
        port,
        &[("controller", "controller-pw"), ("cpe-a", "pa")],
    )
    .unwrap();
    let config = controller_config(dir.path(), port);
    let key = keys::generate();
    {
        let mut store = Store::open(&config.db_path).unwrap();
        registry::add(
            &mut store,
            "cpe-a",
            &keys::public_key_text(&key.verifying_key()),
            None,
            0,
        )
        .unwrap();
    }
    // The session as a controller without lanes left it: every filter, one client id.
    {
        let mut options = rumqttc::MqttOptions::new("controller-mosq-test", "127.0.0.1", port);
        options
            .set_credentials("controller", "controller-pw")
            .set_clean_session(false);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
        connack(&mut eventloop).await.unwrap();
        for f in topic::controller_filters() {
            client
                .subscribe(topic::strip_share(&f), rumqttc::QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        let mut acked = 0;
        while acked < 5 {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) =
                eventloop.poll().await.unwrap()
            {
                acked += 1;
            }
        }
        client.disconnect().await.unwrap();
        while eventloop.poll().await.is_ok() {}
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve::run(config.clone(), async move {
        let _ = stop_rx.await;
    }));
    wait_for_log(
        &mosquitto,
        "the alerts' subscription",
        "controller-mosq-test-alerts 1 smtpguard/v1/cpe/+/alert",
    )
    .await;
    wait_for_log(
        &mosquitto,
        "the old session's alert subscription dropped",
        "controller-mosq-test smtpguard/v1/cpe/+/alert",
    )
    .await;

    // An alert, then telemetry: the old session would hand its copy of the alert to the
    // bulk lane before the telemetry, so once the telemetry is stored a copy would have
    // been counted.
    let sealed = [
        (
            seal(&Body::Alert(alert(1)), "cpe-a", 1, now_ms(), &key).unwrap(),
            "alert",
        ),
        (
            seal(&Body::Telemetry(telemetry()), "cpe-a", 2, now_ms(), &key).unwrap(),
            "telemetry",
        ),
    ];
    for (msg, leaf) in &sealed {
        let topic = format!("smtpguard/v1/cpe/cpe-a/{leaf}");
        assert_eq!(v5_publish(port, "cpe-a", "pa", &topic, msg), 0, "success");
    }
    let db = config.db_path.clone();
    blocking_wait("the alert and the telemetry stored", 15, move || {
        let n: i64 = Store::open(&db)
            .unwrap()
            .db()
            .query_one("SELECT COUNT(*) FROM messages", &[])
            .unwrap();
        n == 2
    })
    .await;
    let store = Store::open(&config.db_path).unwrap();
    assert_eq!(store.alert_count(Some("cpe-a")).unwrap(), 1);
    let rejected: Vec<_> = store
        .rejection_counts()
        .unwrap()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert!(rejected.is_empty(), "no copy came: {rejected:?}");
    let _ = stop_tx.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_offline_for_a_while_delivers_its_queued_alerts_when_back() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let controller_pub = keys::generate().verifying_key();
    let key = keys::generate();
    let state_dir = dir.path().join("agent");
    let settings = || {
        let mut s = Settings::new(
            "cpe-off",
            state_dir.clone(),
            format!("mqtt://127.0.0.1:{port}"),
            controller_pub,
        );
        s.password = Some("po".into());
        s.telemetry_queue_len = 8;
        s.reconnect_min_ms = 50;
        s.reconnect_max_ms = 500;
        s
    };

    // The controller has its persistent session on the broker before the outage (a broker
    // drops messages nobody subscribed to, so the controller must have subscribed once).
    let mut mosquitto = Mosquitto::start(
        &dir.path().join("mosquitto"),
        port,
        &[("controller", "controller-pw"), ("cpe-off", "po")],
    )
    .unwrap();
    let config = controller_config(dir.path(), port);
    {
        let mut store = Store::open(&config.db_path).unwrap();
        registry::add(
            &mut store,
            "cpe-off",
            &keys::public_key_text(&key.verifying_key()),
            None,
            0,
        )
        .unwrap();
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve::run(config.clone(), async move {
        let _ = stop_rx.await;
    }));
    mosquitto
        .wait_for_subscription("smtpguard/v1/cpe/+/alert", Duration::from_secs(10))
        .unwrap();
    // The outage begins.
    mosquitto.stop().unwrap();

    // No broker yet. First run: 20 alerts, then the agent restarts (still offline).
    let (stop1_tx, stop1_rx) = tokio::sync::oneshot::channel::<()>();
    let first = Uplink::start(settings(), key.clone(), async move {
        let _ = stop1_rx.await;
    })
    .await
    .unwrap();
    for n in 0..20 {
        first.handle.send_alert(alert(n)).unwrap();
    }
    assert_eq!(first.handle.stats().alerts_queued, 20);
    assert!(!first.handle.stats().connected);
    let _ = stop1_tx.send(());
    first.task.await.unwrap();

    // Second run, still offline: 20 more alerts and 100 telemetry reports.
    let (_stop2_tx, stop2_rx) = tokio::sync::oneshot::channel::<()>();
    let second = Uplink::start(settings(), key.clone(), async move {
        let _ = stop2_rx.await;
    })
    .await
    .unwrap();
    for n in 20..40 {
        second.handle.send_alert(alert(n)).unwrap();
        for _ in 0..5 {
            second.handle.send_telemetry(telemetry()).unwrap();
        }
    }
    let stats = second.handle.stats();
    assert_eq!(stats.alerts_queued, 40, "alerts from both runs are on disk");
    assert_eq!(stats.telemetry_dropped, 100 - 8, "the ring keeps only 8");

    // The broker comes back.
    mosquitto.restart().unwrap();
    let db = config.db_path.clone();
    let handle = second.handle.clone();
    blocking_wait("all 40 alerts stored", 30, move || {
        Store::open(&db)
            .unwrap()
            .alert_count(Some("cpe-off"))
            .unwrap()
            == 40
            && handle.stats().alerts_queued == 0
    })
    .await;

    // Every alert exactly once, in the agent's order.
    let store = Store::open(&config.db_path).unwrap();
    let evidence: Vec<String> = store
        .db()
        .query(
            "SELECT evidence_json FROM alerts WHERE cpe_id = 'cpe-off' ORDER BY seq",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0).unwrap())
        .collect();
    let expected: Vec<String> = (0..40).map(|n| format!("[\"alert #{n}\"]")).collect();
    assert_eq!(evidence, expected);

    // The next report tells the controller how many reports were dropped.
    second.handle.send_telemetry(telemetry()).unwrap();
    let db = config.db_path.clone();
    blocking_wait("the drop count reported", 15, move || {
        Store::open(&db)
            .unwrap()
            .db()
            .sqlite_connection()
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM telemetry WHERE cpe_id = 'cpe-off'
                 AND json_extract(stats_json, '$.telemetry_dropped') = 92",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            >= 1
    })
    .await;
    // The 8 reports the ring kept were delivered too.
    let kept: i64 = Store::open(&config.db_path)
        .unwrap()
        .db()
        .sqlite_connection()
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM telemetry WHERE cpe_id = 'cpe-off'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, 9);
    let _ = stop_tx.send(());
}
