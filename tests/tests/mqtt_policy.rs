//! Policy rollout with real agents (the uplink) on the embedded broker: a signed policy
//! reaches every connected agent, each acks it, and the rollout view shows it; a policy
//! signed with the wrong key, an older version, or one that would cut the uplink is
//! refused by every agent and the refusal with its reason shows in `policy status`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use smtpguard_common::now_ms;
use std::path::Path;
use std::time::Duration;

use smtpguard_agent::uplink::{Settings, Uplink, UplinkHandle};
use smtpguard_controller::config::Config;
use smtpguard_controller::policy::{self, Target};
use smtpguard_controller::store::{RolloutRow, Store};
use smtpguard_controller::{registry, serve};
use smtpguard_protocol::envelope::FLEET_ID;
use smtpguard_protocol::{keys, seal, Body, Policy, PolicyScope, SafetyContext};
use smtpguard_tests::mqtt::{free_port, port_open, wait_until};

async fn wait_rollout(
    db: &Path,
    what: &str,
    check: impl Fn(&[RolloutRow]) -> bool + Send + 'static,
) {
    let db = db.to_owned();
    let db2 = db.clone();
    let what = what.to_string();
    tokio::task::spawn_blocking(move || {
        let db = db2;
        wait_until(Duration::from_secs(20), &what, || {
            let rows = Store::open(&db).unwrap().rollout().unwrap();
            check(&rows)
        })
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| {
        let rows = Store::open(db.as_path()).unwrap().rollout().unwrap();
        panic!("{e}: {}", policy::format_status(None, &rows))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reaches_every_agent_and_bad_policy_is_refused_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let mut config = Config {
        db_path: dir.path().join("controller.db"),
        policy_key_path: dir.path().join("policy.key"),
        ..Config::default()
    };
    config.broker.embedded_listen = ([127, 0, 0, 1], port).into();
    config.broker.password = "controller-secret".into();
    config.broker.client_id = "controller-policy-test".into();
    let policy_key = keys::generate();

    let mut agent_keys = Vec::new();
    {
        let mut store = Store::open(&config.db_path).unwrap();
        for i in 0..3 {
            let key = keys::generate();
            let id = format!("cpe-{i}");
            let enrolled = registry::add(
                &mut store,
                &id,
                &keys::public_key_text(&key.verifying_key()),
                None,
                0,
            )
            .unwrap();
            agent_keys.push((id, key, enrolled.broker_password));
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop = stop_rx.clone();
    tokio::spawn(serve::run(config.clone(), async move {
        let _ = stop.changed().await;
    }));
    tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(10), "embedded broker", || {
            port_open(port)
        })
    })
    .await
    .unwrap()
    .unwrap();

    // Three agents; their "run loop" applies every policy it is handed and acks it.
    let mut handles: Vec<UplinkHandle> = Vec::new();
    for (id, key, password) in &agent_keys {
        let mut settings = Settings::new(
            id.clone(),
            dir.path().join(id),
            format!("mqtt://127.0.0.1:{port}"),
            policy_key.verifying_key(),
        );
        settings.username = Some(id.clone());
        settings.password = Some(password.clone());
        settings.reconnect_min_ms = 50;
        settings.reconnect_max_ms = 500;
        let mut stop = stop_rx.clone();
        let mut uplink = Uplink::start(settings, key.clone(), async move {
            let _ = stop.changed().await;
        })
        .await
        .unwrap();
        let handle = uplink.handle.clone();
        tokio::spawn(async move {
            while let Some(update) = uplink.policies.recv().await {
                handle.ack(update.applied()).unwrap();
            }
        });
        handles.push(uplink.handle);
    }
    let db = config.db_path.clone();
    wait_rollout(&db, "all agents online", |rows| {
        rows.iter().all(|r| r.status.as_deref() == Some("online"))
    })
    .await;

    // 1. A fleet policy reaches all three and each acks it.
    let mut p = Policy {
        rate_limit_per_minute: 5,
        ..Policy::default()
    };
    let v1 = {
        let mut store = Store::open(&db).unwrap();
        policy::sign(
            &mut store,
            &policy_key,
            p.clone(),
            &Target::Fleet,
            &config.safety_context(),
            now_ms(),
        )
        .unwrap()
    };
    policy::publish(
        &config.broker,
        "noc-1",
        std::slice::from_ref(&v1),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    wait_rollout(&db, "fleet v1 applied everywhere", |rows| {
        rows.len() == 3 && rows.iter().all(|r| r.fleet_policy_version == Some(1))
    })
    .await;

    // 2. A per-CPE override reaches only its CPE.
    let v2 = {
        let mut store = Store::open(&db).unwrap();
        policy::sign(
            &mut store,
            &policy_key,
            p.clone(),
            &Target::Cpe("cpe-0".into()),
            &config.safety_context(),
            now_ms(),
        )
        .unwrap()
    };
    policy::publish(&config.broker, "noc-2", &[v2], Duration::from_secs(5))
        .await
        .unwrap();
    wait_rollout(&db, "cpe-0 override applied", |rows| {
        rows.iter()
            .all(|r| r.cpe_policy_version == (r.cpe_id == "cpe-0").then_some(2))
    })
    .await;

    // 3. Signed with the wrong key (claiming a high version): refused by all, reported
    // with the reason.
    let mut forged = p.clone();
    forged.policy_version = 100;
    let forged = seal(
        &Body::Policy(forged),
        FLEET_ID,
        100,
        now_ms(),
        &keys::generate(),
    )
    .unwrap();
    policy::publish_raw(
        &config.broker,
        "attacker",
        vec![("smtpguard/v1/policy/fleet".into(), forged)],
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    wait_rollout(&db, "forged policy refused by all", |rows| {
        rows.iter().all(|r| {
            r.refusals
                .iter()
                .any(|(s, v, why)| s == "fleet" && *v == 100 && why.contains("bad_signature"))
        })
    })
    .await;

    // 4. An older version (the genuine v1 again, after v3): refused as a rollback.
    p.rate_limit_per_minute = 7;
    let v3 = {
        let mut store = Store::open(&db).unwrap();
        policy::sign(
            &mut store,
            &policy_key,
            p.clone(),
            &Target::Fleet,
            &config.safety_context(),
            now_ms(),
        )
        .unwrap()
    };
    assert_eq!(v3.version, 3);
    policy::publish(&config.broker, "noc-3", &[v3], Duration::from_secs(5))
        .await
        .unwrap();
    wait_rollout(&db, "fleet v3 applied everywhere", |rows| {
        rows.iter().all(|r| r.fleet_policy_version == Some(3))
    })
    .await;
    policy::publish_raw(
        &config.broker,
        "replayer",
        vec![("smtpguard/v1/policy/fleet".into(), v1.wire.clone())],
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    wait_rollout(&db, "rolled-back policy refused by all", |rows| {
        rows.iter().all(|r| {
            r.refusals
                .iter()
                .any(|(s, v, why)| s == "fleet" && *v == 1 && why.contains("policy_rollback"))
        })
    })
    .await;

    // 5. Genuine but dangerous: an indicator network covering the broker.
    // The controller's own safety check refuses to sign it (the broker listens there)...
    p.indicators.mail_servers = vec!["127.0.0.0/8".parse().unwrap()];
    {
        let mut store = Store::open(&db).unwrap();
        let err = policy::sign(
            &mut store,
            &policy_key,
            p.clone(),
            &Target::Fleet,
            &config.safety_context(),
            now_ms(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("covers the broker address 127.0.0.1"),
            "{err}"
        );
    }
    // ...and a controller that does not know the broker's address signs it, but every
    // agent refuses it.
    let v4 = {
        let mut store = Store::open(&db).unwrap();
        policy::sign(
            &mut store,
            &policy_key,
            p.clone(),
            &Target::Fleet,
            &SafetyContext::default(),
            now_ms(),
        )
        .unwrap()
    };
    policy::publish(&config.broker, "noc-4", &[v4], Duration::from_secs(5))
        .await
        .unwrap();
    wait_rollout(&db, "uplink-cutting policy refused by all", |rows| {
        rows.iter().all(|r| {
            r.refusals.iter().any(|(s, v, why)| {
                s == "fleet" && *v == 4 && why.contains("covers the broker address 127.0.0.1")
            })
        })
    })
    .await;

    // The rollout view as `policy status` prints it.
    let store = Store::open(&db).unwrap();
    let latest = store
        .latest_policy(PolicyScope::Fleet, None)
        .unwrap()
        .map(|p| p.version);
    let text = policy::format_status(latest, &policy::status(&store).unwrap());
    assert!(text.contains("latest fleet policy: 4"), "{text}");
    for id in ["cpe-0", "cpe-1", "cpe-2"] {
        let line = text.lines().find(|l| l.starts_with(id)).unwrap();
        assert!(line.contains("fleet v100: bad signature"), "{line}");
        assert!(
            line.contains("fleet v4: policy field `indicators.mail_servers`: entry 127.0.0.0/8"),
            "{line}"
        );
    }
    for h in &handles {
        assert!(h.stats().connected);
    }
    let _ = stop_tx.send(true);
}
