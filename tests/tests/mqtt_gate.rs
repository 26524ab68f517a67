//! The embedded broker's gate, where it bridges clients into rumqttd's router through
//! in-process links, as a hostile (or broken) client would probe it: against the real
//! controller binary on loopback, every attempt is closed and counted in `/metrics`, and a
//! well-behaved router keeps being served throughout.
//!
//! - a connection that sends nothing is closed after the CONNECT timeout (10 s);
//! - a logged-in client silent past 1.5 × its keep-alive is closed;
//! - packets that would make rumqttd's router drop (or, for a late "ready", crash on) a
//!   link — an unsolicited PUBACK, QoS 2, PUBREL, a SUBACK from a client — are refused by
//!   the gate, and the router goes on serving others;
//! - a CPE that subscribes and then never reads, while the controller sends it 64 MB,
//!   holds a bounded amount of the controller's memory and does not slow anybody else;
//! - a CPE gets its own commands and none of another's (all CPEs' subscriptions to their
//!   own command and policy topics share one router filter each, sorted out by the gate);
//! - a second login of the same router takes the session over: the first connection is
//!   closed and its last will is published once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, PubAck, PubRel, Publish as RawPublish, Subscribe};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use smtpguard_tests::mqtt::{
    connack, controller_binary, free_port, port_open, printed_password, run_controller, terminate,
    wait_until,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONTROLLER_PASSWORD: &str = "gate-test-controller-password";

/// Growth of the controller's RSS allowed while a CPE that never reads is sent 64 MB:
/// rumqttd's log of the topic (4 × 4 MiB), the link's queue (200 packets) and the gate's
/// one batch, with room for the allocator.
const RSS_GROWTH_BOUND_KIB: u64 = 48 * 1024;

struct Setup {
    dir: PathBuf,
    port: u16,
    http: SocketAddr,
    controller: Child,
    /// (id, broker password) of cpe-a and cpe-b.
    cpes: Vec<(String, String)>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = terminate(&mut self.controller);
    }
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap().keep();
    let port = free_port().unwrap();
    let http_port = free_port().unwrap();
    let token = dir.join("operator.token");
    std::fs::write(&token, "gate-operator-token-0123456789ab\n").unwrap();
    let config = dir.join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "db_path = \"{db}\"\npolicy_key_path = \"{key}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n\n\
             [broker]\nembedded_listen = \"127.0.0.1:{port}\"\nusername = \"controller\"\n\
             password = \"{CONTROLLER_PASSWORD}\"\nclient_id = \"controller-gate\"\n\n\
             [ingest]\nshared_subscription = false\n\n\
             [web]\noperator_token_file = \"{token}\"\n",
            db = dir.join("controller.db").display(),
            key = dir.join("policy.key").display(),
            token = token.display(),
        ),
    )
    .unwrap();
    run_controller(&config, &["keygen"]);
    let cpes = ["cpe-a", "cpe-b"]
        .iter()
        .map(|id| {
            let key = smtpguard_protocol::keys::generate();
            let out = run_controller(
                &config,
                &[
                    "cpe",
                    "add",
                    id,
                    &smtpguard_protocol::keys::public_key_text(&key.verifying_key()),
                ],
            );
            (id.to_string(), printed_password(&out).unwrap())
        })
        .collect();
    let log = std::fs::File::create(dir.join("controller.log")).unwrap();
    let controller = Command::new(controller_binary().unwrap())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "controller up", || {
        port_open(port) && port_open(http_port)
    })
    .unwrap();
    Setup {
        dir,
        port,
        http: ([127, 0, 0, 1], http_port).into(),
        controller,
        cpes,
    }
}

impl Setup {
    fn metric(&self, series: &str) -> u64 {
        smtpguard_tests::metrics::get(self.http, series)
    }

    async fn wait_metric(&self, series: &str, at_least: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.metric(series) < at_least {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} stayed below {at_least}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.join("controller.log")).unwrap_or_default();
        s.chars()
            .skip(s.chars().count().saturating_sub(6000))
            .collect()
    }

    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.controller.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn cpe(&self, i: usize) -> (&str, &str) {
        let (id, pw) = &self.cpes[i];
        (id, pw)
    }
}

/// A raw connection logged in as `cpe` (keep-alive `keep_alive` s), its CONNACK read.
async fn raw_login(port: u16, cpe: (&str, &str), keep_alive: u16) -> TcpStream {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut connect = Connect::new(cpe.0);
    connect.set_login(cpe.0, cpe.1);
    connect.keep_alive = keep_alive;
    let mut buf = BytesMut::new();
    connect.write(&mut buf).unwrap();
    sock.write_all(&buf).await.unwrap();
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), sock.read_exact(&mut ack))
        .await
        .expect("CONNACK in time")
        .unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "login of {}", cpe.0);
    sock
}

/// Whether the peer closes `sock` within `within` (whatever it sends first is skipped).
async fn closed_within(sock: &mut TcpStream, within: Duration) -> bool {
    let mut sink = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match sock.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A rumqttc client logged in with `user`/`pass` as `client_id`, its event loop polled in
/// the background; publishes it receives go to the returned channel.
async fn client(
    port: u16,
    client_id: &str,
    user: &str,
    pass: &str,
    will: Option<LastWill>,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_credentials(user, pass)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    if let Some(w) = will {
        o.set_last_will(w);
    }
    let (c, mut el) = AsyncClient::new(o, 64);
    connack(&mut el).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = gone_tx.send(());
                    return;
                }
            }
        }
    });
    (c, rx, gone_rx)
}

async fn subscribed(c: &AsyncClient, filter: &str) {
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
}

/// Waits (bounded) for a publish on `topic` with `payload`.
async fn receives(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    topic: &str,
    payload: &[u8],
    within: Duration,
) -> bool {
    tokio::time::timeout(within, async {
        while let Some((t, p)) = rx.recv().await {
            if t == topic && p == payload {
                return;
            }
        }
        std::future::pending::<()>().await;
    })
    .await
    .is_ok()
}

/// cpe-b, a well-behaved router, still gets a command the controller sends it.
async fn still_served(s: &Setup, round: u8) {
    let (b, b_pw) = s.cpe(1);
    let (cb, mut rx, _gone) = client(s.port, b, b, b_pw, None).await;
    let topic = format!("smtpguard/v1/cpe/{b}/command");
    subscribed(&cb, &topic).await;
    let (ctl, _crx, _cgone) = client(
        s.port,
        &format!("probe-{round}"),
        "controller",
        CONTROLLER_PASSWORD,
        None,
    )
    .await;
    let payload = vec![round; 32];
    // Subscriptions are processed in order with the publishes of other links only once
    // the SUBACK is back; publish until it arrives (bounded).
    let mut got = false;
    for _ in 0..50 {
        ctl.publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
        if receives(&mut rx, &topic, &payload, Duration::from_millis(200)).await {
            got = true;
            break;
        }
    }
    assert!(got, "cpe-b not served (round {round})\n{}", s.log());
    // cpe-a, subscribed to its own command topic (carried on the filter all CPEs share),
    // gets its own command and none of cpe-b's: the router takes one link's messages in
    // order, so a leak would have arrived before.
    let (a, a_pw) = s.cpe(0);
    let (ca, mut a_rx, _agone) = client(s.port, a, a, a_pw, None).await;
    let a_topic = format!("smtpguard/v1/cpe/{a}/command");
    subscribed(&ca, &a_topic).await;
    let mut own = false;
    for _ in 0..50 {
        ctl.publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
        ctl.publish(a_topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), a_rx.recv()).await;
        if let Ok(Some((t, _))) = got {
            assert_eq!(t, a_topic, "cpe-a got another CPE's message");
            own = true;
            break;
        }
    }
    assert!(own, "cpe-a not served (round {round})");
    let _ = ca.disconnect().await;
    let _ = cb.disconnect().await;
    let _ = ctl.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_at_the_gate_are_closed_and_counted_and_others_are_served() {
    let s = tokio::task::spawn_blocking(setup).await.unwrap();
    let a = s.cpe(0);
    let violation = "smtpguard_broker_dropped_total{reason=\"protocol_violation\"}";

    // A connection that never sends its CONNECT.
    let timeouts = "smtpguard_broker_dropped_total{reason=\"timeout\"}";
    let before = s.metric(timeouts);
    let mut silent = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(20)).await,
        "silent connection kept open"
    );
    s.wait_metric(timeouts, before + 1).await;

    // Logged in, then silent past 1.5 × a 1 s keep-alive.
    let keep_alive = "smtpguard_broker_dropped_total{reason=\"keep_alive_timeout\"}";
    let before = s.metric(keep_alive);
    let mut quiet = raw_login(s.port, a, 1).await;
    assert!(closed_within(&mut quiet, Duration::from_secs(10)).await);
    s.wait_metric(keep_alive, before + 1).await;

    // What would make the router drop the link on its own, or panic on the link's next
    // "ready": refused by the gate.
    let mut frames: Vec<BytesMut> = Vec::new();
    let mut f = BytesMut::new();
    PubAck::new(7).write(&mut f).unwrap();
    frames.push(f);
    let mut f = BytesMut::new();
    let mut qos2 = RawPublish::new(
        format!("smtpguard/v1/cpe/{}/telemetry", a.0),
        QoS::ExactlyOnce,
        vec![1u8; 8],
    );
    qos2.pkid = 1;
    qos2.write(&mut f).unwrap();
    frames.push(f);
    let mut f = BytesMut::new();
    PubRel::new(3).write(&mut f).unwrap();
    frames.push(f);
    frames.push(BytesMut::from(&[0x90u8, 0x03, 0x00, 0x01, 0x00][..]));
    for (i, frame) in frames.iter().enumerate() {
        let before = s.metric(violation);
        let mut sock = raw_login(s.port, a, 30).await;
        sock.write_all(frame).await.unwrap();
        assert!(
            closed_within(&mut sock, Duration::from_secs(10)).await,
            "frame {i} let through"
        );
        s.wait_metric(violation, before + 1).await;
    }
    still_served(&s, 1).await;

    // cpe-a subscribes to its command topic and then reads nothing while the controller
    // sends it 4,000 × 16 KiB.
    let baseline = s.rss_kib();
    let mut stuck = raw_login(s.port, a, 600).await;
    let topic = format!("smtpguard/v1/cpe/{}/command", a.0);
    let mut buf = BytesMut::new();
    let mut sub = Subscribe::new(topic.clone(), QoS::AtLeastOnce);
    sub.pkid = 1;
    sub.write(&mut buf).unwrap();
    stuck.write_all(&buf).await.unwrap();
    let mut suback = [0u8; 5];
    stuck.read_exact(&mut suback).await.unwrap();
    assert_eq!(suback[0], 0x90);
    let (b, b_pw) = s.cpe(1);
    let (cb, mut b_rx, _bgone) = client(s.port, b, b, b_pw, None).await;
    let b_topic = format!("smtpguard/v1/cpe/{b}/command");
    subscribed(&cb, &b_topic).await;
    let (ctl, _rx, _gone) =
        client(s.port, "flooder", "controller", CONTROLLER_PASSWORD, None).await;
    let payload = vec![0x5a; 16 * 1024];
    for _ in 0..4000 {
        ctl.publish(topic.clone(), QoS::AtMostOnce, false, payload.clone())
            .await
            .unwrap();
    }
    // The router takes one link's packets in order: once the flooder's next message
    // reached cpe-b, the whole flood has been through the router.
    let mut got = false;
    for round in 0..50u8 {
        let marker = vec![round; 8];
        ctl.publish(b_topic.clone(), QoS::AtLeastOnce, false, marker.clone())
            .await
            .unwrap();
        if receives(&mut b_rx, &b_topic, &marker, Duration::from_secs(2)).await {
            got = true;
            break;
        }
    }
    assert!(got, "cpe-b starved behind the stuck reader\n{}", s.log());
    let _ = cb.disconnect().await;
    let after = s.rss_kib();
    eprintln!("controller RSS {baseline} KiB before the stuck reader, {after} KiB after");
    assert!(
        after <= baseline + RSS_GROWTH_BOUND_KIB,
        "RSS grew from {baseline} KiB to {after} KiB"
    );
    drop(stuck);
    let _ = ctl.disconnect().await;

    // A second login of cpe-b takes its session over; the first one's will is published.
    let (b, b_pw) = s.cpe(1);
    let state = format!("smtpguard/v1/cpe/{b}/state");
    let (probe, mut seen, _pgone) = client(
        s.port,
        "will-probe",
        "controller",
        CONTROLLER_PASSWORD,
        None,
    )
    .await;
    subscribed(&probe, &state).await;
    let taken = "smtpguard_broker_sessions_ended_total{reason=\"taken_over\"}";
    let before = s.metric(taken);
    let will = LastWill::new(&state, b"offline".to_vec(), QoS::AtLeastOnce, false);
    let (_first, _frx, first_gone) = client(s.port, b, b, b_pw, Some(will.clone())).await;
    let (_second, _srx, _sgone) = client(s.port, b, b, b_pw, Some(will)).await;
    tokio::time::timeout(Duration::from_secs(10), first_gone)
        .await
        .expect("first session closed")
        .unwrap();
    s.wait_metric(taken, before + 1).await;
    assert!(
        receives(&mut seen, &state, b"offline", Duration::from_secs(10)).await,
        "the taken-over session's will was not published"
    );
}
