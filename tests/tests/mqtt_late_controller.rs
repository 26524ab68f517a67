//! Routers that have something to say before the controller listens lose nothing: every
//! alert they published is stored exactly once once the controller is up.
//!
//! - Embedded broker: the routers (the agent's uplink library, each with its own disk
//!   queue) start first and queue their alerts while nothing listens; then the controller
//!   starts (`serve::run`). Its broker refuses routers until the ingest has subscribed, so
//!   none of their publishes goes to a broker without a subscriber.
//! - mosquitto: the controller's first start creates its persistent session with the shared
//!   subscription (`$share/controllers/...`, as replicas use it); the controller stops; the
//!   routers then publish all their alerts to the broker while no controller runs; the
//!   controller starts again and stores every one.
//!
//! Needs the Debian package `mosquitto` for the second test; it fails, never skips,
//! without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use smtpguard_agent::uplink::{Settings, Uplink, UplinkHandle};
use smtpguard_controller::config::Config;
use smtpguard_controller::store::Store;
use smtpguard_controller::{registry, serve};
use smtpguard_protocol::keys;
use smtpguard_tests::mqtt::{alert, free_port, port_open, wait_until, Mosquitto};

const ROUTERS: usize = 3;
const ALERTS_PER_ROUTER: u32 = 40;

async fn blocking_wait(
    what: &'static str,
    secs: u64,
    check: impl FnMut() -> bool + Send + 'static,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || wait_until(Duration::from_secs(secs), what, check)).await?
}

fn routers() -> Vec<(String, SigningKey)> {
    (0..ROUTERS)
        .map(|i| (format!("cpe-late-{i}"), keys::generate()))
        .collect()
}

/// Enrolls every router; returns each one's broker password (issued at enrollment).
fn enroll(db: &Path, routers: &[(String, SigningKey)]) -> HashMap<String, String> {
    let mut store = Store::open(db).unwrap();
    routers
        .iter()
        .map(|(id, key)| {
            let enrolled = registry::add(
                &mut store,
                id,
                &keys::public_key_text(&key.verifying_key()),
                None,
                0,
            )
            .unwrap();
            (id.clone(), enrolled.broker_password)
        })
        .collect()
}

/// Starts one uplink per router against `port` and queues [`ALERTS_PER_ROUTER`] alerts on
/// each (durable on disk before `send_alert` returns).
async fn start_routers(
    dir: &Path,
    port: u16,
    routers: &[(String, SigningKey)],
    password: impl Fn(&str) -> Option<String>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<UplinkHandle> {
    let mut handles = Vec::new();
    for (id, key) in routers {
        let mut settings = Settings::new(
            id.clone(),
            dir.join(id),
            format!("mqtt://127.0.0.1:{port}"),
            keys::generate().verifying_key(),
        );
        settings.password = password(id);
        settings.reconnect_min_ms = 50;
        settings.reconnect_max_ms = 500;
        let mut stop = stop.clone();
        let uplink = Uplink::start(settings, key.clone(), async move {
            let _ = stop.changed().await;
        })
        .await
        .unwrap();
        for n in 0..ALERTS_PER_ROUTER {
            uplink.handle.send_alert(alert(n)).unwrap();
        }
        handles.push(uplink.handle);
    }
    handles
}

/// Every (router, alert number) stored once, nothing else.
fn assert_each_alert_stored_once(db: &Path, routers: &[(String, SigningKey)]) {
    let store = Store::open(db).unwrap();
    assert_eq!(
        store.alert_count(None).unwrap(),
        ROUTERS as u64 * u64::from(ALERTS_PER_ROUTER)
    );
    let expected: BTreeSet<String> = (0..ALERTS_PER_ROUTER)
        .map(|n| format!("[\"alert #{n}\"]"))
        .collect();
    for (id, _) in routers {
        let conn = store.db().sqlite_connection().unwrap();
        let mut stmt = conn
            .prepare("SELECT evidence_json FROM alerts WHERE cpe_id = ?1")
            .unwrap();
        let got: Vec<String> = stmt
            .query_map([id], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let unique: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(got.len(), unique.len(), "{id}: an alert stored twice");
        assert_eq!(unique, expected, "{id}");
    }
}

async fn wait_all_stored(db: &Path, handles: &[UplinkHandle], log: impl Fn() -> String) {
    let total = ROUTERS as u64 * u64::from(ALERTS_PER_ROUTER);
    let db2 = db.to_owned();
    let hs = handles.to_vec();
    let waited = blocking_wait("every alert stored", 60, move || {
        Store::open(&db2).unwrap().alert_count(None).unwrap() >= total
            && hs.iter().all(|h| h.stats().alerts_queued == 0)
    })
    .await;
    if let Err(e) = waited {
        let stored = Store::open(db).unwrap().alert_count(None).unwrap();
        let stats: Vec<_> = handles.iter().map(UplinkHandle::stats).collect();
        panic!(
            "{e}: stored {stored} of {total}; routers {stats:?}\n{}",
            log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_started_before_the_controller_with_its_embedded_broker_lose_no_alert() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let mut config = Config {
        db_path: dir.path().join("controller.db"),
        policy_key_path: dir.path().join("policy.key"),
        ..Config::default()
    };
    config.broker.embedded_listen = ([127, 0, 0, 1], port).into();
    config.broker.password = "controller-secret-late".into();
    config.broker.client_id = "controller-late".into();
    config.web.enabled = false;
    let routers = routers();
    let passwords = enroll(&config.db_path, &routers);

    // The routers first: nothing listens, so every alert waits in their disk queues.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let handles = start_routers(
        dir.path(),
        port,
        &routers,
        |id| passwords.get(id).cloned(),
        &stop_rx,
    )
    .await;
    assert!(!port_open(port));
    for h in &handles {
        assert_eq!(h.stats().alerts_queued, u64::from(ALERTS_PER_ROUTER));
    }

    // Then the controller; the routers connect as soon as its broker lets them.
    let (stop_controller, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(serve::run(config.clone(), async move {
        let _ = stopped.await;
    }));
    wait_all_stored(&config.db_path, &handles, String::new).await;
    assert_each_alert_stored_once(&config.db_path, &routers);

    let _ = stop_tx.send(true);
    let _ = stop_controller.send(());
    tokio::time::timeout(Duration::from_secs(10), controller)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_published_while_the_controller_is_down_reach_it_through_its_shared_session() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let routers = routers();
    let mut users = vec![("controller".to_string(), "controller-pw".to_string())];
    for (id, _) in &routers {
        users.push((id.clone(), format!("pw-{id}")));
    }
    let user_refs: Vec<(&str, &str)> = users
        .iter()
        .map(|(u, p)| (u.as_str(), p.as_str()))
        .collect();
    let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"), port, &user_refs).unwrap();

    let mut config = Config {
        db_path: dir.path().join("controller.db"),
        policy_key_path: dir.path().join("policy.key"),
        ..Config::default()
    };
    config.broker.url = Some(format!("mqtt://127.0.0.1:{port}"));
    config.broker.username = "controller".into();
    config.broker.password = "controller-pw".into();
    config.broker.client_id = "controller-late-mosq".into();
    config.web.enabled = false;
    // The default: a shared subscription, as several replicas would use it.
    assert!(config.ingest.shared_subscription);
    enroll(&config.db_path, &routers);

    // First start: the session and its subscriptions are created, then the controller stops.
    let (stop_first, first_stopped) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn(serve::run(config.clone(), async move {
        let _ = first_stopped.await;
    }));
    mosquitto
        .wait_for_subscription(
            "$share/controllers/smtpguard/v1/cpe/+/alert",
            Duration::from_secs(20),
        )
        .unwrap();
    let _ = stop_first.send(());
    tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // The routers publish everything while no controller runs: the broker takes it all.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let handles = start_routers(
        dir.path(),
        port,
        &routers,
        |id| Some(format!("pw-{id}")),
        &stop_rx,
    )
    .await;
    let hs = handles.clone();
    blocking_wait("the broker to acknowledge every alert", 30, move || {
        hs.iter().all(|h| h.stats().alerts_queued == 0)
    })
    .await
    .unwrap();
    assert_eq!(
        Store::open(&config.db_path)
            .unwrap()
            .alert_count(None)
            .unwrap(),
        0
    );

    // The controller again: its session hands over what was kept for it.
    let (stop_controller, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(serve::run(config.clone(), async move {
        let _ = stopped.await;
    }));
    wait_all_stored(&config.db_path, &handles, || mosquitto.log()).await;
    assert_each_alert_stored_once(&config.db_path, &routers);

    let _ = stop_tx.send(true);
    let _ = stop_controller.send(());
    tokio::time::timeout(Duration::from_secs(10), controller)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
