//! A live router's story as the NOC and the subscriber read it, through a real controller
//! (`serve::run`: embedded broker, ingest, SQLite, web UI on loopback) and a router that
//! speaks through the agent's uplink library:
//!
//! - the bot's alert (clean → infected, blocked) is its history on the portal's device page
//!   and the NOC's CPE page; a second device whose alert was lost shows its change rebuilt
//!   from telemetry, marked as such;
//! - the summary beside the evidence carries no number that could disagree with it;
//! - after the NOC approves the subscriber's release, a signed release command goes to the
//!   router; until the router answers, the portal says the block still applies (the card
//!   above still says "blocked until"); once it answered, the portal says when the router
//!   lifted it, and "lifted" alone once the router reports the device unrestricted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod web_common;

use std::net::SocketAddr;
use std::time::Duration;

use smtpguard_agent::uplink::{Settings, Uplink, UplinkHandle};
use smtpguard_controller::config::Config;
use smtpguard_controller::store::Store;
use smtpguard_controller::{households, registry, serve, web};
use smtpguard_protocol::{
    keys, AckOutcome, Action, AgentStats, Alert, CommandAck, CommandAction, DeviceCounters,
    DeviceReport, MacAddr, Observed, Telemetry, Verdict,
};
use smtpguard_tests::mqtt::{free_port, now_ms, wait_until};
use web_common::{csrf_of, http, login};

const CPE: &str = "cpe-live-hist";
const OPERATOR: &str = "noc-live-history-token-0123";
const BOT: MacAddr = MacAddr([2, 0x5e, 0x20, 0, 0, 0x66]);
const LAPTOP: MacAddr = MacAddr([2, 0x5e, 0x20, 0, 0, 0x21]);
const BOT_EVIDENCE: &str =
    "38 connections to 31 distinct mail servers on port 25 (12 networks) in 10 min";
const LAPTOP_EVIDENCE: &str =
    "125 messages submitted in the last hour; this device's baseline is 0.5 per hour (12.0 a day)";
/// [`LAPTOP_EVIDENCE`] as the pages print it (HTML-escaped).
const LAPTOP_EVIDENCE_HTML: &str = "125 messages submitted in the last hour; this device&#39;s baseline is 0.5 per hour (12.0 a day)";

fn device(
    mac: MacAddr,
    host: &str,
    verdict: Verdict,
    action: Action,
    until: Option<u64>,
) -> DeviceReport {
    DeviceReport {
        mac,
        ips: vec!["192.168.1.14".parse().unwrap()],
        hostname: Some(host.into()),
        vendor: None,
        verdict,
        score: if verdict == Verdict::Clean { 0.0 } else { 0.9 },
        action,
        action_until_ms: until,
        counters: DeviceCounters::default(),
        evidence: vec![],
    }
}

fn telemetry(devices: Vec<DeviceReport>) -> Telemetry {
    let now = now_ms();
    Telemetry {
        window_start_ms: now - 600_000,
        window_secs: 600,
        public_ip: None,
        stats: AgentStats::default(),
        devices,
        connections: vec![],
    }
}

fn get(addr: SocketAddr, path: &str, cookie: &str) -> String {
    let r = http(addr, "GET", path, &[("Cookie", cookie)], b"").unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r.body
}

fn post(addr: SocketAddr, path: &str, cookie: &str, body: &str) -> u16 {
    http(
        addr,
        "POST",
        path,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", cookie),
        ],
        body.as_bytes(),
    )
    .unwrap()
    .status
}

/// Waits until the controller stored `n` telemetry messages of the router.
fn wait_telemetry(db: &std::path::Path, n: i64) {
    let db = db.to_owned();
    wait_until(Duration::from_secs(30), "telemetry stored", move || {
        Store::open(&db)
            .ok()
            .and_then(|s| {
                s.db()
                    .sqlite_connection()
                    .unwrap()
                    .query_row("SELECT COUNT(*) FROM telemetry", [], |r| r.get::<_, i64>(0))
                    .ok()
            })
            .is_some_and(|c| c >= n)
    })
    .unwrap();
}

/// The text of the card's summary paragraph for the device `mac` on `/my`.
fn summary_of(page: &str, mac: MacAddr) -> String {
    let card = page
        .split(&format!(r#"data-mac="{mac}""#))
        .nth(1)
        .unwrap_or_else(|| panic!("no card for {mac}: {page}"));
    let card = card.split("</section>").next().unwrap();
    card.split(r#"<p class="what summary">"#)
        .nth(1)
        .and_then(|s| s.split("</p>").next())
        .unwrap_or_else(|| panic!("no summary for {mac}: {card}"))
        .to_string()
}

#[test]
fn live_history_evidence_and_release_words_are_true_on_both_pages() {
    let dir = tempfile::tempdir().unwrap();
    let broker_port = free_port().unwrap();
    let http_port = free_port().unwrap();
    let mut config = Config {
        db_path: dir.path().join("controller.db"),
        policy_key_path: dir.path().join("policy.key"),
        http_listen: ([127, 0, 0, 1], http_port).into(),
        ..Config::default()
    };
    config.broker.embedded_listen = ([127, 0, 0, 1], broker_port).into();
    config.broker.password = "controller-secret-history".into();
    config.broker.client_id = "controller-history".into();
    config.web.operator_token_file = dir.path().join("operator.token");
    std::fs::write(&config.web.operator_token_file, OPERATOR).unwrap();
    let (policy_key, _) = keys::load_or_create(&config.policy_key_path).unwrap();

    let router_key = keys::generate();
    let (token, broker_password) = {
        let mut store = Store::open(&config.db_path).unwrap();
        let enrolled = registry::add(
            &mut store,
            CPE,
            &keys::public_key_text(&router_key.verifying_key()),
            Some("history test"),
            0,
        )
        .unwrap();
        let db_handle = web::open_db(&config.db_path).unwrap();
        let token = households::create(&db_handle, "The Live family", &[CPE], now_ms())
            .unwrap()
            .1;
        (token, enrolled.broker_password)
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let controller = {
        let config = config.clone();
        let mut stop = stop_rx.clone();
        rt.spawn(serve::run(config, async move {
            let _ = stop.changed().await;
        }))
    };
    let uplink: Uplink = rt.block_on(async {
        let mut settings = Settings::new(
            CPE,
            dir.path().join("router"),
            format!("mqtt://127.0.0.1:{broker_port}"),
            policy_key.verifying_key(),
        );
        settings.password = Some(broker_password);
        settings.reconnect_min_ms = 50;
        settings.reconnect_max_ms = 500;
        let mut stop = stop_rx.clone();
        Uplink::start(settings, router_key.clone(), async move {
            let _ = stop.changed().await;
        })
        .await
        .unwrap()
    });
    let handle: UplinkHandle = uplink.handle.clone();
    let mut commands = uplink.commands;

    // Both devices clean; then the bot's alert; then telemetry in which the laptop turned
    // infected without an alert (lost).
    let db = config.db_path.clone();
    handle
        .send_telemetry(telemetry(vec![
            device(BOT, "weber-desktop", Verdict::Clean, Action::Monitor, None),
            device(
                LAPTOP,
                "annas-laptop",
                Verdict::Clean,
                Action::Monitor,
                None,
            ),
        ]))
        .unwrap();
    wait_telemetry(&db, 1);
    let block_until = now_ms() + 3_600_000;
    let mut bot = device(
        BOT,
        "weber-desktop",
        Verdict::Infected,
        Action::Block,
        Some(block_until),
    );
    bot.evidence = vec![BOT_EVIDENCE.into()];
    handle
        .send_alert(Alert {
            device: bot.clone(),
            previous: Verdict::Clean,
            at_ms: now_ms(),
            observed: Observed::default(),
        })
        .unwrap();
    let mut laptop = device(
        LAPTOP,
        "annas-laptop",
        Verdict::Infected,
        Action::RateLimit,
        Some(block_until),
    );
    laptop.counters = DeviceCounters {
        submission_connections: 43,
        messages: 43,
        ..DeviceCounters::default()
    };
    laptop.evidence = vec![LAPTOP_EVIDENCE.into()];
    let mut bot_now = bot.clone();
    bot_now.counters = DeviceCounters {
        smtp_connections: 38,
        distinct_mail_servers: 31,
        ..DeviceCounters::default()
    };
    handle
        .send_telemetry(telemetry(vec![bot_now.clone(), laptop.clone()]))
        .unwrap();
    wait_telemetry(&db, 2);

    let addr: SocketAddr = ([127, 0, 0, 1], http_port).into();
    wait_until(Duration::from_secs(20), "the web server", || {
        http(addr, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200)
    })
    .unwrap();
    let me = login(addr, &token).unwrap();
    let noc = login(addr, OPERATOR).unwrap();

    // History on the portal: the bot's alert; the laptop's change rebuilt from telemetry.
    let bot_page = get(addr, &format!("/my/devices/{CPE}/{BOT}"), &me);
    assert!(!bot_page.contains("No changes recorded"), "{bot_page}");
    assert_eq!(
        bot_page.matches(r#"class="change""#).count(),
        1,
        "{bot_page}"
    );
    assert!(bot_page.contains(r#"data-verdict="infected""#));
    assert!(bot_page.contains(BOT_EVIDENCE));
    assert!(!bot_page.contains(r#"data-source="telemetry""#));
    let laptop_page = get(addr, &format!("/my/devices/{CPE}/{LAPTOP}"), &me);
    assert!(
        !laptop_page.contains("No changes recorded"),
        "{laptop_page}"
    );
    assert!(
        laptop_page.contains(r#"data-source="telemetry""#),
        "{laptop_page}"
    );
    assert!(laptop_page.contains(LAPTOP_EVIDENCE_HTML), "{laptop_page}");
    // The same on the NOC's CPE page.
    let cpe_page = get(addr, &format!("/noc/cpe/{CPE}"), &noc);
    assert!(!cpe_page.contains("No verdict changes"), "{cpe_page}");
    assert_eq!(
        cpe_page.matches(r#"class="change""#).count(),
        2,
        "{cpe_page}"
    );
    assert!(cpe_page.contains(&format!(r#"data-mac="{BOT}" data-verdict="infected""#)));
    assert!(cpe_page.contains(&format!(r#"data-mac="{LAPTOP}" data-verdict="infected""#)));

    // The summaries beside the evidence: no count of their own.
    let my = get(addr, "/my", &me);
    for (mac, words) in [
        (
            BOT,
            "tried to send mail directly to many different mail servers",
        ),
        (LAPTOP, "sent many messages through a mail account"),
    ] {
        let summary = summary_of(&my, mac);
        assert!(summary.contains(words), "{summary}");
        assert!(!summary.chars().any(|c| c.is_ascii_digit()), "{summary}");
    }
    assert!(my.contains(LAPTOP_EVIDENCE_HTML), "{my}");
    assert!(!my.contains("43 messages"), "{my}");

    // The subscriber asks for a release; the NOC approves it.
    let csrf = csrf_of(&my).unwrap();
    let status = post(
        addr,
        "/my/release",
        &me,
        &format!("csrf={csrf}&cpe_id={CPE}&mac={BOT}&note=scanned"),
    );
    assert_eq!(status, 303);
    let id = {
        let db_handle = web::open_db(&db).unwrap();
        households::release_requests(&db_handle, None).unwrap()[0].id
    };
    let releases = get(addr, "/noc/releases", &noc);
    let noc_csrf = csrf_of(&releases).unwrap();
    assert_eq!(
        post(
            addr,
            &format!("/noc/releases/{id}"),
            &noc,
            &format!("csrf={noc_csrf}&decision=approve"),
        ),
        303
    );
    // The release is on its way but the router has not answered: the card says blocked,
    // and so do the words below it.
    let my = get(addr, "/my", &me);
    let card = my
        .split(&format!(r#"data-mac="{BOT}""#))
        .nth(1)
        .unwrap()
        .split("</section>")
        .next()
        .unwrap()
        .to_string();
    assert!(card.contains("blocked until"), "{card}");
    assert!(card.contains(r#"data-progress="release-sent""#), "{card}");
    assert!(
        card.contains("still applies until the router confirms"),
        "{card}"
    );
    assert!(!card.contains("being lifted"), "{card}");
    let cpe_page = get(addr, &format!("/noc/cpe/{CPE}"), &noc);
    assert!(cpe_page.contains("approved — release sent"), "{cpe_page}");
    assert!(
        cpe_page.contains(r#"data-command="1" data-status="sent""#),
        "{cpe_page}"
    );

    // The router gets the signed release for the bot and answers that it applied it: the
    // card says when it was lifted.
    let command = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), commands.recv()).await })
        .unwrap()
        .unwrap();
    assert_eq!(command.target, CPE);
    assert_eq!(command.command_id, 1);
    assert_eq!(
        command.action,
        CommandAction::Release {
            mac: BOT,
            grace_secs: config.commands.release_grace_secs
        }
    );
    handle
        .command_ack(CommandAck {
            command_id: 1,
            outcome: AckOutcome::Applied,
            at_ms: now_ms(),
        })
        .unwrap();
    wait_until(Duration::from_secs(20), "the release acknowledged", || {
        get(addr, "/my", &me).contains(r#"data-progress="release-acknowledged""#)
    })
    .unwrap();
    let my = get(addr, "/my", &me);
    assert!(my.contains("your router lifted the restriction at"), "{my}");
    assert!(!my.contains("being lifted"), "{my}");
    let cpe_page = get(addr, &format!("/noc/cpe/{CPE}"), &noc);
    assert!(
        cpe_page.contains("approved — lifted by the router"),
        "{cpe_page}"
    );

    // The router reports the bot unrestricted: now, and only now, it is lifted.
    let mut released = bot_now;
    released.action = Action::Monitor;
    released.action_until_ms = None;
    handle
        .send_telemetry(telemetry(vec![released, laptop]))
        .unwrap();
    wait_telemetry(&db, 3);
    let my = get(addr, "/my", &me);
    let card = my
        .split(&format!(r#"data-mac="{BOT}""#))
        .nth(1)
        .unwrap()
        .split("</section>")
        .next()
        .unwrap()
        .to_string();
    assert!(card.contains(r#"data-progress="lifted""#), "{card}");
    assert!(card.contains("has been lifted"), "{card}");
    assert!(!card.contains("blocked until"), "{card}");

    let _ = stop_tx.send(true);
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), controller)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    });
}
