//! Past the embedded broker's checks (the messages come through the controller's own login,
//! which may publish anywhere, as through a broker without ACLs), the controller rejects
//! every kind of bad message with the right, counted reason, and stores good ones once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ed25519_dalek::SigningKey;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use smtpguard_controller::config::Config;
use smtpguard_controller::store::Store;
use smtpguard_controller::{registry, serve};
use smtpguard_protocol::{keys, seal, Body, RejectionReason};
use smtpguard_tests::mqtt::{self, connack, free_port, now_ms, port_open, wait_until};

/// The shared fixture alert `n`, as a message body.
fn alert(n: u32) -> Body {
    Body::Alert(mqtt::alert(n))
}

struct Harness {
    db: std::path::PathBuf,
    client: AsyncClient,
}

impl Harness {
    fn counts(&self) -> Vec<(RejectionReason, u64)> {
        Store::open(&self.db).unwrap().rejection_counts().unwrap()
    }

    /// Publishes one message and waits until exactly one rejection was counted, under
    /// `expected`.
    async fn expect_rejection(&self, topic: &str, payload: Vec<u8>, expected: RejectionReason) {
        let before = self.counts();
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        let total = |c: &[(RejectionReason, u64)]| c.iter().map(|(_, n)| n).sum::<u64>();
        let db = self.db.clone();
        let want = total(&before) + 1;
        tokio::task::spawn_blocking(move || {
            wait_until(Duration::from_secs(10), "a counted rejection", || {
                let c = Store::open(&db).unwrap().rejection_counts().unwrap();
                c.iter().map(|(_, n)| n).sum::<u64>() >= want
            })
        })
        .await
        .unwrap()
        .unwrap();
        let after = self.counts();
        let changed: Vec<_> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b.1 != a.1)
            .map(|(_, a)| (a.0, a.1))
            .collect();
        assert_eq!(total(&after), want, "exactly one rejection: {changed:?}");
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert_eq!(changed[0].0, expected, "rejected as {:?}", changed[0].0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_message_is_rejected_with_its_reason_even_when_the_broker_lets_it_through() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let mut config = Config {
        db_path: dir.path().join("controller.db"),
        policy_key_path: dir.path().join("policy.key"),
        ..Config::default()
    };
    config.broker.embedded_listen = ([127, 0, 0, 1], port).into();
    config.broker.password = "controller-secret".into();
    config.broker.client_id = "controller-test".into();

    let key_a = keys::generate();
    let key_r = keys::generate();
    {
        let mut store = Store::open(&config.db_path).unwrap();
        let pk = |k: &SigningKey| keys::public_key_text(&k.verifying_key());
        registry::add(&mut store, "cpe-a", &pk(&key_a), None, 0).unwrap();
        registry::add(&mut store, "cpe-r", &pk(&key_r), None, 0).unwrap();
        registry::revoke(&mut store, "cpe-r", 1).unwrap();
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(serve::run(config.clone(), async move {
        let _ = stop_rx.await;
    }));
    tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(10), "embedded broker", || {
            port_open(port)
        })
    })
    .await
    .unwrap()
    .unwrap();

    // The bad messages below all come through one connection with the controller's
    // login, which the broker lets publish anywhere: the ingest checks stand on their own.
    let mut options = MqttOptions::new("forger", "127.0.0.1", port);
    options.set_credentials("controller", "controller-secret");
    options.set_max_packet_size(200_000, 200_000);
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) | Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    // Give the ingest time to subscribe before the first publish.
    let db = config.db_path.clone();
    let h = Harness {
        db: db.clone(),
        client,
    };
    let alert_topic = "smtpguard/v1/cpe/cpe-a/alert";
    let now = now_ms();

    // A good alert is stored (retry until the ingest's subscription is in place).
    let good = seal(&alert(1), "cpe-a", 1, now, &key_a).unwrap();
    let stored = tokio::task::spawn_blocking({
        let db = db.clone();
        let client = h.client.clone();
        let good = good.clone();
        move || {
            let mut seq_bump = 0u64;
            wait_until(Duration::from_secs(15), "the first alert stored", || {
                if Store::open(&db).unwrap().alert_count(None).unwrap() == 1 {
                    return true;
                }
                seq_bump += 1;
                if seq_bump % 10 == 1 {
                    let _ = client.try_publish(alert_topic, QoS::AtLeastOnce, false, good.clone());
                }
                false
            })
        }
    })
    .await
    .unwrap();
    stored.unwrap();
    // Retries of the first alert may have been counted as replays; start from here.

    // Replayed: the same bytes again.
    h.expect_rejection(alert_topic, good.clone(), RejectionReason::Replay)
        .await;
    // Tampered: one byte of the signature flipped.
    let mut tampered = seal(&alert(2), "cpe-a", 2, now, &key_a).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    h.expect_rejection(alert_topic, tampered, RejectionReason::BadSignature)
        .await;
    // Forged: cpe-a's id, someone else's key.
    let forged = seal(&alert(3), "cpe-a", 3, now, &keys::generate()).unwrap();
    h.expect_rejection(alert_topic, forged, RejectionReason::BadSignature)
        .await;
    // Wrong topic: cpe-a's alert on another CPE's topic, and on the wrong leaf.
    let own = seal(&alert(4), "cpe-a", 4, now, &key_a).unwrap();
    h.expect_rejection(
        "smtpguard/v1/cpe/cpe-b/alert",
        own.clone(),
        RejectionReason::TopicMismatch,
    )
    .await;
    h.expect_rejection(
        "smtpguard/v1/cpe/cpe-a/telemetry",
        own,
        RejectionReason::TopicMismatch,
    )
    .await;
    // Unknown key: a CPE nobody enrolled.
    let stranger = seal(&alert(5), "cpe-x", 1, now, &keys::generate()).unwrap();
    h.expect_rejection(
        "smtpguard/v1/cpe/cpe-x/alert",
        stranger,
        RejectionReason::UnknownKey,
    )
    .await;
    // Revoked: correctly signed by the revoked CPE's key.
    let revoked = seal(&alert(6), "cpe-r", 1, now, &key_r).unwrap();
    h.expect_rejection(
        "smtpguard/v1/cpe/cpe-r/alert",
        revoked,
        RejectionReason::RevokedKey,
    )
    .await;
    // Stale: sent eight days ago. From the future: an hour ahead.
    let stale = seal(&alert(7), "cpe-a", 7, now - 8 * 24 * 3600 * 1000, &key_a).unwrap();
    h.expect_rejection(alert_topic, stale, RejectionReason::Stale)
        .await;
    let future = seal(&alert(8), "cpe-a", 8, now + 3600 * 1000, &key_a).unwrap();
    h.expect_rejection(alert_topic, future, RejectionReason::FromFuture)
        .await;
    // Oversize: above the protocol's 64 KiB, within the broker's packet limit (payload
    // plus 512 bytes; a larger packet never reaches the ingest, see mqtt_hostile).
    h.expect_rejection(alert_topic, vec![0xa2; 65_800], RejectionReason::Oversize)
        .await;
    // Malformed: not CBOR at all.
    h.expect_rejection(
        alert_topic,
        b"hello, controller".to_vec(),
        RejectionReason::Malformed,
    )
    .await;
    // Rolled back: after seq 5000 is accepted, seq 9 is below the replay window.
    let ahead = seal(&alert(9), "cpe-a", 5000, now, &key_a).unwrap();
    h.client
        .publish(alert_topic, QoS::AtLeastOnce, false, ahead)
        .await
        .unwrap();
    tokio::task::spawn_blocking({
        let db = db.clone();
        move || {
            wait_until(Duration::from_secs(10), "seq 5000 stored", || {
                Store::open(&db).unwrap().alert_count(None).unwrap() == 2
            })
        }
    })
    .await
    .unwrap()
    .unwrap();
    let rolled_back = seal(&alert(10), "cpe-a", 9, now, &key_a).unwrap();
    h.expect_rejection(alert_topic, rolled_back, RejectionReason::Replay)
        .await;

    // Only the two good alerts were stored, each once, with the raw signed bytes.
    let store = Store::open(&db).unwrap();
    assert_eq!(store.alert_count(None).unwrap(), 2);
    let wire: Vec<u8> = store
        .db()
        .sqlite_connection()
        .unwrap()
        .query_row(
            "SELECT wire FROM messages WHERE cpe_id = 'cpe-a' AND seq = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(wire, good);

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), controller).await;
}

/// How a login as `user`/`pass` to the broker on `port` ends: `Ok(())` for an accepted
/// ConnAck, `Err(why)` for a refusal or a dropped connection.
async fn try_login(port: u16, client_id: &str, user: &str, pass: &str) -> Result<(), String> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_credentials(user, pass);
    let (_client, mut eventloop) = AsyncClient::new(options, 10);
    connack(&mut eventloop).await
}

/// Finding row 1 of issue 17: with no password configured, the controller makes a random
/// one for its embedded broker (kept with mode 0600 in its data directory); user
/// `controller` with an empty or a wrong password is refused, the generated one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_login_needs_its_generated_password() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let mut config = Config {
        db_path: dir.path().join("controller.db"),
        policy_key_path: dir.path().join("policy.key"),
        ..Config::default()
    };
    config.broker.embedded_listen = ([127, 0, 0, 1], port).into();
    config.web.enabled = false;
    assert!(config.broker.password.is_empty());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(serve::run(config.clone(), async move {
        let _ = stop_rx.await;
    }));
    tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(10), "embedded broker", || {
            port_open(port)
        })
    })
    .await
    .unwrap()
    .unwrap();
    let file = dir
        .path()
        .join(smtpguard_controller::config::BROKER_PASSWORD_FILE);
    let password = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(password.len() >= 32, "{password}");

    let empty = try_login(port, "attacker-1", "controller", "").await;
    assert!(empty.is_err(), "an empty password was accepted");
    let wrong = try_login(port, "attacker-2", "controller", "controller-secret").await;
    assert!(wrong.is_err(), "a wrong password was accepted");
    try_login(port, "noc-test", "controller", &password)
        .await
        .unwrap();

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), controller).await;
}
