//! Issue 13's notifications, with real components: the controller as its own process, a
//! webhook receiver (HTTP on loopback) and the ISP's relay (aiosmtpd with STARTTLS and AUTH,
//! `tests/netns/smtp_server.py`). A router reports an infected device: the ISP's webhook
//! (signed) and the household's mailbox each get exactly one notification, also when the
//! webhook is down at first and the controller is killed in the middle and started again.
//! A household that opted out gets no e-mail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use smtpguard_controller::households;
use smtpguard_protocol::{keys, seal, Alert, Body, Topic};
use smtpguard_tests::mqtt::{self, connack, controller_binary, free_port, now_ms, port_open};
use smtpguard_tests::process::{run, wait_until_true, Proc};

const WEBHOOK_SECRET: &str = "webhook-secret-0123456789abcdef";
const RELAY_USER: &str = "smtpguard";
const RELAY_PASSWORD: &str = "relay-password-0123";

/// One request the webhook receiver got: its headers (lower-case names) and body, and the
/// status it answered.
#[derive(Debug, Clone)]
struct Hit {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    status: u16,
}

impl Hit {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A webhook receiver answering every request with the current `status`.
fn webhook(status: Arc<AtomicU16>, hits: Arc<Mutex<Vec<Hit>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.trim().split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            let code = status.load(Ordering::SeqCst);
            let _ = write!(
                conn,
                "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            hits.lock().unwrap().push(Hit {
                headers,
                body,
                status: code,
            });
        }
    });
    port
}

/// A CA and a server certificate for `localhost` signed by it (rustls refuses a CA
/// certificate as the server's own).
fn certificates(dir: &Path) {
    let sh = |args: &str| {
        run(Command::new("sh").arg("-c").arg(args).current_dir(dir));
    };
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca \
        -keyout ca.key -out ca.crt 2>/dev/null",
    );
    sh(
        "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout relay.key \
        -out relay.csr 2>/dev/null",
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    sh(
        "openssl x509 -req -in relay.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile ext.cnf -out relay.crt 2>/dev/null",
    );
}

fn mails(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn successes(hits: &Mutex<Vec<Hit>>) -> Vec<Hit> {
    hits.lock()
        .unwrap()
        .iter()
        .filter(|h| h.status == 200)
        .cloned()
        .collect()
}

fn outbox_states(db: &Path) -> Vec<(String, String, String)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut stmt = conn
        .prepare("SELECT event, webhook_state, email_state FROM notifications ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn an_infection_is_notified_once_by_webhook_and_email_across_a_controller_crash() {
    let controller_bin = controller_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    certificates(dir);

    // The ISP's relay: STARTTLS before AUTH, AUTH before MAIL.
    let smtp_port = free_port().unwrap();
    let mail_log = dir.join("mail.log");
    std::fs::write(&mail_log, "").unwrap();
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("netns/smtp_server.py");
    let mut relay = Proc::spawn(
        "relay",
        Command::new("/usr/bin/python3")
            .arg(&here)
            .arg("submission")
            .arg(&mail_log)
            .arg(dir.join("relay.crt"))
            .arg(dir.join("relay.key"))
            .arg(RELAY_USER)
            .arg(RELAY_PASSWORD)
            .arg(smtp_port.to_string()),
        dir.join("relay.log"),
    );
    wait_until_true(
        "the relay listening",
        Duration::from_secs(20),
        &mut [&mut relay],
        || port_open(smtp_port),
    );

    // The ISP's webhook, down at first.
    let status = Arc::new(AtomicU16::new(503));
    let hits = Arc::new(Mutex::new(Vec::new()));
    let hook_port = webhook(status.clone(), hits.clone());

    let broker_port = free_port().unwrap();
    let http_port = free_port().unwrap();
    let db = dir.join("controller.db");
    std::fs::write(dir.join("webhook.secret"), WEBHOOK_SECRET).unwrap();
    std::fs::write(dir.join("relay.password"), RELAY_PASSWORD).unwrap();
    std::fs::write(
        dir.join("operator.token"),
        "operator-token-0123456789abcdef",
    )
    .unwrap();
    let config = dir.join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "db_path = \"{d}/controller.db\"\npolicy_key_path = \"{d}/policy.key\"\n\
             http_listen = \"127.0.0.1:{http_port}\"\n\n\
             [broker]\nembedded_listen = \"127.0.0.1:{broker_port}\"\n\
             password = \"broker-password-0123456789\"\nclient_id = \"controller-notify\"\n\n\
             [web]\noperator_token_file = \"{d}/operator.token\"\n\n\
             [notifications]\nwebhook_url = \"http://127.0.0.1:{hook_port}/hooks/smtpguard\"\n\
             webhook_secret_file = \"{d}/webhook.secret\"\n\
             smtp_relay = \"localhost:{smtp_port}\"\nsmtp_ca_file = \"{d}/ca.crt\"\n\
             smtp_username = \"{RELAY_USER}\"\nsmtp_password_file = \"{d}/relay.password\"\n\
             mail_from = \"Your ISP security <security@isp.test>\"\n\
             portal_url = \"https://my.isp.test\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let controller = |args: &[&str]| -> String {
        let out = run(Command::new(&controller_bin)
            .arg("--config")
            .arg(&config)
            .args(args));
        String::from_utf8(out.stdout).unwrap()
    };
    controller(&["keygen"]);
    // Two routers: one household wants e-mail, the other opted out.
    let mut routers = Vec::new();
    for (cpe, email, notify) in [
        ("cpe-notify-a", "family-a@home.test", true),
        ("cpe-notify-b", "family-b@home.test", false),
    ] {
        let key = keys::generate();
        let printed = controller(&[
            "cpe",
            "add",
            cpe,
            &keys::public_key_text(&key.verifying_key()),
        ]);
        let password = mqtt::printed_password(&printed).unwrap();
        let db_handle = smtpguard_controller::web::open_db(&db).unwrap();
        let (hh, _) =
            households::create(&db_handle, &format!("Family {cpe}"), &[cpe], now_ms()).unwrap();
        households::set_contact(&db_handle, hh, Some(email), notify).unwrap();
        routers.push((cpe, key, password));
    }

    let serve = |log: &str| {
        Proc::spawn(
            "controller",
            Command::new(&controller_bin)
                .arg("--config")
                .arg(&config)
                .arg("serve"),
            dir.join(log),
        )
    };
    let mut ctl = serve("controller.log");
    wait_until_true(
        "the broker",
        Duration::from_secs(30),
        &mut [&mut ctl],
        || port_open(broker_port) && port_open(http_port),
    );

    // Each router reports one infected device.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let alerts: Vec<Alert> = (0..2).map(|i| mqtt::alert(700 + i)).collect();
    for ((cpe, key, password), alert) in routers.iter().zip(&alerts) {
        let wire = seal(&Body::Alert(alert.clone()), cpe, 1, now_ms(), key).unwrap();
        runtime.block_on(async {
            let mut o = MqttOptions::new(*cpe, "127.0.0.1", broker_port);
            o.set_credentials(*cpe, password.as_str());
            o.set_keep_alive(Duration::from_secs(5));
            let (client, mut ev) = AsyncClient::new(o, 10);
            // The broker answers "unavailable" until the ingest has subscribed.
            let mut tries = 0;
            loop {
                match connack(&mut ev).await {
                    Ok(()) => break,
                    Err(e) if tries < 50 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = e;
                    }
                    Err(e) => panic!("router login: {e}"),
                }
            }
            let topic = Topic::Alert((*cpe).to_string()).to_string();
            client
                .publish(topic, QoS::AtLeastOnce, false, wire)
                .await
                .unwrap();
            // Until the broker acknowledged it.
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) =
                        ev.poll().await
                    {
                        break;
                    }
                }
            })
            .await
            .unwrap();
        });
    }

    // The webhook is tried and refused; the e-mail to family A goes out; none to B.
    wait_until_true(
        "a refused webhook try",
        Duration::from_secs(30),
        &mut [&mut ctl, &mut relay],
        || !hits.lock().unwrap().is_empty(),
    );
    wait_until_true(
        "family A's e-mail",
        Duration::from_secs(30),
        &mut [&mut ctl, &mut relay],
        || !mails(&mail_log).is_empty(),
    );

    // The controller dies in the middle; the webhook comes back; a new controller starts.
    let pid = ctl.pid().unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let killed = ctl.terminate().unwrap();
    assert!(!killed.success(), "killed, not stopped: {killed}");
    status.store(200, Ordering::SeqCst);
    let mut ctl = serve("controller2.log");
    wait_until_true(
        "both webhooks delivered",
        Duration::from_secs(60),
        &mut [&mut ctl, &mut relay],
        || {
            successes(&hits).len() >= 2
                && outbox_states(&db)
                    .iter()
                    .all(|(_, w, e)| w == "sent" && (e == "sent" || e == "off"))
        },
    );

    // Exactly one of each per infection.
    let ok = successes(&hits);
    assert_eq!(ok.len(), 2, "{ok:#?}");
    let mut delivered: Vec<String> = ok
        .iter()
        .map(|h| h.header("x-smtpguard-delivery").unwrap().to_string())
        .collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 2, "one delivery per infection");
    for h in &ok {
        let body: serde_json::Value = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(body["event"], "infected");
        assert_eq!(
            h.header("x-smtpguard-signature"),
            Some(smtpguard_controller::notify::signature(WEBHOOK_SECRET, &h.body).as_str()),
            "signed with the shared secret"
        );
        assert_eq!(body["portal_url"], "https://my.isp.test/my");
    }
    let mac_a = alerts[0].device.mac.to_string();
    assert!(ok.iter().any(|h| {
        let b: serde_json::Value = serde_json::from_slice(&h.body).unwrap();
        b["cpe_id"] == "cpe-notify-a"
            && b["mac"] == mac_a.as_str()
            && b["household"] == "Family cpe-notify-a"
    }));
    let sent = mails(&mail_log);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("to=family-a@home.test"), "{}", sent[0]);
    assert!(sent[0].contains("from=security@isp.test"), "{}", sent[0]);
    assert!(
        sent[0].contains("subject=A device in your home is sending junk e-mail"),
        "{}",
        sent[0]
    );
    assert_eq!(
        outbox_states(&db),
        vec![
            (
                "infected".to_string(),
                "sent".to_string(),
                "sent".to_string()
            ),
            (
                "infected".to_string(),
                "sent".to_string(),
                "off".to_string()
            ),
        ]
    );
    let metrics = smtpguard_tests::metrics::scrape(([127, 0, 0, 1], http_port).into());
    assert!(
        metrics.contains("smtpguard_notifications{channel=\"webhook\",state=\"sent\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("smtpguard_notifications{channel=\"email\",state=\"off\"} 1"),
        "{metrics}"
    );
    drop(ctl);
    drop(relay);
}
