//! The NOC at fleet size, in a real browser (headless Chromium over WebDriver): 20,000 extra
//! routers seeded through the store's ingest path next to the demo fleet; the operator finds
//! one by a device's MAC and one by the public address it held at a given time, and the
//! fleet page stays small. Page weights are printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod web_common;

use std::net::IpAddr;

use smtpguard_controller::abuse::{self, date::format_utc_secs, AbuseQuery};
use smtpguard_controller::store::{Received, Store};
use smtpguard_protocol::{
    Action, Alert, Body, DeviceCounters, DeviceReport, Envelope, MacAddr, Observed, State, Status,
    Telemetry, Verdict,
};
use web_common::{http, login, now_ms, Browser, Server};

/// Extra routers seeded.
const EXTRA: u32 = 20_000;
/// Largest fleet page, in bytes.
const PAGE_MAX_BYTES: usize = 200 * 1024;
/// The address first held by one router, then by another.
const MOVED_IP: &str = "100.127.0.1";

const HOUR: u64 = 3_600_000;

fn bulk_id(i: u32) -> String {
    format!("cpe-bulk-{i:05}")
}

fn bulk_ip(i: u32) -> IpAddr {
    IpAddr::from([100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

fn bulk_mac(i: u32) -> MacAddr {
    MacAddr([0x02, 0xb0, 0x00, (i >> 8) as u8, i as u8, 0x01])
}

fn telemetry(i: u32, at_ms: u64, ip: IpAddr) -> Body {
    Body::Telemetry(Telemetry {
        window_start_ms: at_ms,
        window_secs: 600,
        public_ip: Some(ip),
        stats: Default::default(),
        devices: vec![DeviceReport {
            mac: bulk_mac(i),
            ips: vec![IpAddr::from([192, 168, 1, 20])],
            hostname: Some(format!("laptop-{i}")),
            vendor: Some("Acme".into()),
            verdict: Verdict::Clean,
            score: 0.01,
            action: Action::Monitor,
            action_until_ms: None,
            counters: DeviceCounters::default(),
            evidence: Vec::new(),
        }],
        connections: Vec::new(),
    })
}

/// Seeds `EXTRA` routers the way the ingest stores them: state, then telemetry with the
/// public address. Router `early` held [`MOVED_IP`] five to three hours ago and then got
/// its own; router `late` has held it for the last hour.
fn seed_bulk(db: &std::path::Path, now: u64, early: u32, late: u32) {
    let store = Store::open(db).unwrap();
    let moved: IpAddr = MOVED_IP.parse().unwrap();
    let mut batch = Vec::new();
    let push = |batch: &mut Vec<Received>, cpe: &str, seq: u64, at: u64, body: Body| {
        batch.push(Received {
            envelope: Envelope {
                version: smtpguard_protocol::PROTOCOL_VERSION,
                cpe_id: cpe.to_string(),
                seq,
                sent_at_ms: at,
                body,
            },
            wire: Vec::new(),
            received_at_ms: at,
        });
    };
    // Enrolment in one transaction (the registry enrols one router at a time).
    store
        .db()
        .sqlite_connection()
        .unwrap()
        .execute_batch("BEGIN")
        .unwrap();
    for i in 0..EXTRA {
        store
            .upsert_cpe(&bulk_id(i), "ed25519:bulk", None, now - 6 * HOUR)
            .unwrap();
    }
    store
        .db()
        .sqlite_connection()
        .unwrap()
        .execute_batch("COMMIT")
        .unwrap();
    for i in 0..EXTRA {
        let id = bulk_id(i);
        let status = if i % 10 == 3 {
            Status::Offline
        } else {
            Status::Online
        };
        let own = if i == late { moved } else { bulk_ip(i) };
        push(
            &mut batch,
            &id,
            1,
            now - 6 * HOUR,
            Body::State(State {
                status,
                agent_version: if i % 7 == 0 { "0.1.1" } else { "0.1.0" }.into(),
                fleet_policy_version: Some(1),
                cpe_policy_version: None,
                public_ip: Some(own),
            }),
        );
        if i == early {
            push(
                &mut batch,
                &id,
                2,
                now - 5 * HOUR,
                telemetry(i, now - 5 * HOUR, moved),
            );
            push(
                &mut batch,
                &id,
                3,
                now - 3 * HOUR,
                telemetry(i, now - 3 * HOUR, moved),
            );
            push(
                &mut batch,
                &id,
                4,
                now - 2 * HOUR,
                telemetry(i, now - 2 * HOUR, own),
            );
        } else if i == late {
            push(
                &mut batch,
                &id,
                2,
                now - HOUR,
                telemetry(i, now - HOUR, moved),
            );
            push(
                &mut batch,
                &id,
                3,
                now - HOUR / 2,
                telemetry(i, now - HOUR / 2, moved),
            );
        } else {
            push(
                &mut batch,
                &id,
                2,
                now - HOUR / 2,
                telemetry(i, now - HOUR / 2, own),
            );
        }
        if batch.len() >= 2000 {
            store.write_batch(&batch, &[]).unwrap();
            batch.clear();
        }
    }
    store.write_batch(&batch, &[]).unwrap();
}

/// An ISO time a person would type, from Unix ms.
fn iso(ms: u64) -> String {
    format_utc_secs(ms)
        .replacen(' ', "T", 1)
        .replace(" UTC", "Z")
}

/// The texts of the elements `selector` finds.
fn texts(b: &Browser, selector: &str) -> Vec<String> {
    b.find_all(selector)
        .unwrap()
        .iter()
        .map(|r| b.text(r).unwrap())
        .collect()
}

fn rows(b: &Browser) -> Vec<String> {
    texts(b, "#cpe-list tbody tr")
}

#[test]
fn among_20000_routers_the_noc_finds_one_by_mac_and_by_public_ip_at_a_time() {
    let s = Server::start().unwrap();
    let now = now_ms();
    let (early, late) = (7, 12_345);
    let started = std::time::Instant::now();
    seed_bulk(&s.db, now, early, late);
    println!(
        "seeded {EXTRA} extra routers in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Page weight, as the server sends it, for the plain fleet page, a few filters and the
    // other NOC lists (the policy page's rollout lists at most 50 lagging routers).
    let cookie = login(s.addr, &s.operator).unwrap();
    for path in [
        "/noc",
        "/noc?status=online",
        "/noc?sort=seen&dir=desc&page=200",
        "/noc?q=laptop-1",
        "/noc/campaigns",
        "/noc/abuse",
        "/noc/policy",
        "/noc/senders",
        "/noc/audit",
        "/noc/devices",
        "/noc/devices?verdict=all&sort=seen&dir=desc&page=300",
        "/noc/devices?q=laptop-1",
    ] {
        let t = std::time::Instant::now();
        let r = http(s.addr, "GET", path, &[("Cookie", &cookie)], b"").unwrap();
        let ms = t.elapsed().as_millis();
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        println!("page weight {path}: {} bytes, {ms} ms", r.body.len());
        assert!(
            r.body.len() < PAGE_MAX_BYTES,
            "{path} weighs {} bytes",
            r.body.len()
        );
    }
    let r = http(s.addr, "GET", "/noc", &[("Cookie", &cookie)], b"").unwrap();
    assert!(r.body.contains("of 20004 CPEs"));

    let b = Browser::start(1280, 1000).unwrap();
    b.goto(&s.url("/login")).unwrap();
    b.type_into("#token", &s.operator).unwrap();
    b.follow("#signin").unwrap();
    assert!(b.url_ends_with("/noc"), "not signed in: {:?}", b.url());
    let count = b.text(&b.find("#cpe-count").unwrap()).unwrap();
    assert_eq!(count, "1–50 of 20004 CPEs");
    assert_eq!(rows(&b).len(), 50);

    // By a device's MAC address.
    let wanted = 4_321;
    b.type_into("#f-q", &bulk_mac(wanted).to_string()).unwrap();
    b.follow("#f-go").unwrap();
    assert!(b.url_ends_with("#cpes"));
    let found = rows(&b);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains(&bulk_id(wanted)), "{found:?}");
    assert_eq!(
        b.text(&b.find("#cpe-count").unwrap()).unwrap(),
        "1–1 of 1 CPE"
    );
    b.screenshot("noc-fleet-search-mac").unwrap();

    // By the public address at a time: four hours ago it was the early router's; the late
    // router holds it now; without a time, both ever held it.
    b.goto(&s.url(&format!(
        "/noc?q={MOVED_IP}&at={}",
        iso(now - 4 * HOUR).replace(':', "%3A")
    )))
    .unwrap();
    let found = rows(&b);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains(&bulk_id(early)), "{found:?}");
    // The same through the form, as a person types it.
    b.goto(&s.url("/noc")).unwrap();
    b.type_into("#f-q", MOVED_IP).unwrap();
    b.type_into("#f-at", &iso(now - HOUR / 4)).unwrap();
    b.follow("#f-go").unwrap();
    assert!(b.url_ends_with("#cpes"));
    let found = rows(&b);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains(&bulk_id(late)), "{found:?}");
    b.goto(&s.url(&format!("/noc?q={MOVED_IP}"))).unwrap();
    assert_eq!(rows(&b).len(), 2);

    // The stat card leads to the list it counts.
    b.goto(&s.url("/noc")).unwrap();
    let offline: u64 = b
        .text(&b.find("#stat-offline b").unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(offline, u64::from(EXTRA / 10) + 1, "every tenth, and Novak");
    b.follow("#stat-offline").unwrap();
    assert!(b.url_ends_with("status=offline#cpes"));
    let count = b.text(&b.find("#cpe-count").unwrap()).unwrap();
    assert_eq!(count, format!("1–50 of {offline} CPEs"));
    assert!(rows(&b).iter().all(|r| r.contains("offline")));

    // Sorting and paging stay on the server: the last page of the offline list.
    b.goto(&s.url("/noc?status=offline&sort=cpe&dir=desc"))
        .unwrap();
    let first = rows(&b);
    assert!(first[0].contains("cpe-wien-0815"), "{:?}", first[0]);
    b.follow("a[rel=next]").unwrap();
    assert!(b.url_ends_with("page=2#cpes"));

    // The export is of the filtered list.
    let r = http(
        s.addr,
        "GET",
        "/api/export/cpes?format=csv&status=offline&agent=0.1.1",
        &[("Cookie", &cookie)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let lines: Vec<&str> = r.body.lines().collect();
    let expected = (0..EXTRA).filter(|i| i % 10 == 3 && i % 7 == 0).count();
    assert_eq!(lines.len(), expected + 1, "{}", lines[0]);
    assert!(lines[0].starts_with("cpe_id,"));
    assert!(lines[1..].iter().all(|l| l.contains(",offline,")));

    // The device list, among the 20,000 routers' devices: by MAC through the form, by host
    // name, and by the public address at a time; the fleet's own counts link to it.
    b.goto(&s.url("/noc/devices")).unwrap();
    let count = b.text(&b.find("#device-count").unwrap()).unwrap();
    assert!(count.starts_with("1–50 of 200"), "{count}");
    b.type_into("#f-q", &bulk_mac(wanted).to_string()).unwrap();
    b.follow("#f-go").unwrap();
    assert_eq!(
        b.text(&b.find("#device-count").unwrap()).unwrap(),
        "1–1 of 1 device"
    );
    let found = texts(&b, "#device-list tbody tr");
    assert!(found[0].contains(&format!("laptop-{wanted}")), "{found:?}");
    b.screenshot("noc-devices-search-mac").unwrap();
    b.goto(&s.url(&format!(
        "/noc/devices?q={MOVED_IP}&at={}",
        iso(now - 4 * HOUR).replace(':', "%3A")
    )))
    .unwrap();
    let found = texts(&b, "#device-list tbody tr");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains(&bulk_id(early)), "{found:?}");
    b.goto(&s.url("/noc")).unwrap();
    b.follow("#stat-infected").unwrap();
    assert!(b.url_ends_with("/noc/devices?verdict=infected"));
    let infected = texts(&b, "#device-list tbody tr");
    assert!(!infected.is_empty() && infected.iter().all(|r| r.contains("Infected")));
}

/// Every page at phone width (390×844) and at 1280 px: no horizontal overflow, WCAG 2.1 AA
/// contrast of all visible text, tables with caption, `thead` and `scope`, the current
/// section marked in the navigation, a skip link ([`web_common::AUDIT_JS`]). Phone
/// screenshots of each page.
#[test]
fn every_page_fits_a_phone_and_passes_the_contrast_and_semantics_check() {
    let s = Server::start_demo_process().unwrap();
    let a = &s.seeded.households[0];
    let (bot_mac, _) = a.flagged.clone().unwrap();
    // An abuse report to show.
    let (at, _, _) = s.seeded.abuse_example;
    let r = http(
        s.addr,
        "POST",
        "/api/abuse",
        &[
            ("Authorization", &format!("Bearer {}", s.operator)),
            ("Content-Type", "application/json"),
        ],
        format!(r#"{{"public_ip":"{}","time":{at}}}"#, a.public_ip).as_bytes(),
    )
    .unwrap();
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    let report: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let report_id = report["id"].as_i64().unwrap();

    let r = http(
        s.addr,
        "GET",
        "/api/campaigns",
        &[("Authorization", &format!("Bearer {}", s.operator))],
        b"",
    )
    .unwrap();
    let campaigns: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let campaign_id = campaigns["campaigns"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let b = Browser::start(390, 844).unwrap();
    let mut problems = Vec::new();
    let mut check = |b: &Browser, name: &str, path: &str| {
        b.goto(&s.url(path)).unwrap();
        for (width, height) in [(390, 844), (1280, 900)] {
            b.resize(width, height).unwrap();
            let found = b.audit().unwrap();
            println!("{path} at {width} px: {} problems", found.len());
            for p in found {
                problems.push(format!("{path} at {width} px: {p}"));
            }
            if width == 390 {
                b.screenshot(&format!("phone-{name}")).unwrap();
            }
        }
    };
    check(&b, "sign-in", "/login");
    b.type_into("#token", &s.operator).unwrap();
    b.follow("#signin").unwrap();
    assert!(b.url_ends_with("/noc"));
    for (name, path) in [
        ("noc-fleet", "/noc".to_string()),
        ("noc-devices", "/noc/devices".into()),
        ("noc-cpe", format!("/noc/cpe/{}", a.cpe_id)),
        ("noc-campaigns", "/noc/campaigns".into()),
        ("noc-campaign", format!("/noc/campaigns/{campaign_id}")),
        ("noc-policy", "/noc/policy".into()),
        ("noc-senders", "/noc/senders".into()),
        ("noc-abuse", "/noc/abuse".into()),
        ("noc-abuse-answer", format!("/noc/abuse/{report_id}")),
        ("noc-releases", "/noc/releases".into()),
        ("noc-audit", "/noc/audit".into()),
    ] {
        check(&b, name, &path);
    }
    b.follow("form[action='/logout'] button").unwrap();
    b.goto(&s.url("/login")).unwrap();
    b.type_into("#token", &a.letter_code).unwrap();
    b.follow("#signin").unwrap();
    assert!(b.url_ends_with("/my"));
    check(&b, "portal", "/my");
    check(&b, "portal-senders", "/my/senders");
    check(
        &b,
        "portal-device",
        &format!("/my/devices/{}/{bot_mac}", a.cpe_id),
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The abuse desk: a rejected paste comes back with the text and the list; the simple form
/// (address, date, time, time zone) keeps what was typed on an error and then names the
/// device; the report has a reporter, a reply, an open/answered status, one confidence word
/// on the list and the report, and links to the router and the campaign and back.
#[test]
fn the_abuse_desk_keeps_input_on_error_and_answers_from_the_simple_form() {
    let s = Server::start_demo_process().unwrap();
    let a = &s.seeded.households[0];
    let (bot_mac, bot_name) = a.flagged.clone().unwrap();
    let b = Browser::start(1280, 1000).unwrap();
    b.goto(&s.url("/login")).unwrap();
    b.type_into("#token", &s.operator).unwrap();
    b.follow("#signin").unwrap();
    assert!(b.url_ends_with("/noc"));

    // A paste that is not a report.
    b.goto(&s.url("/noc/abuse")).unwrap();
    let pasted = "Hello, your customer 203.0.113.7 spammed us yesterday afternoon!";
    b.type_into("#report", pasted).unwrap();
    b.follow("#paste-form button[type=submit]").unwrap();
    let err = b.find("#abuse-error").unwrap();
    assert!(!b.text(&err).unwrap().is_empty());
    let kept = b
        .execute("return document.getElementById('report').value")
        .unwrap();
    assert_eq!(kept, pasted);
    b.screenshot("noc-abuse-paste-kept").unwrap();

    // The simple form, in UTC+1 (Etc/GMT-1), with a date written the wrong way first.
    let (at, _, _) = s.seeded.abuse_example;
    let local = format_utc_secs(at + HOUR);
    let (date, time) = local.trim_end_matches(" UTC").split_once(' ').unwrap();
    b.type_into("#a-ip", &a.public_ip.to_string()).unwrap();
    b.type_into("#a-date", "yesterday").unwrap();
    b.type_into("#a-time", time).unwrap();
    b.execute("document.getElementById('a-zone').value='Etc/GMT-1'; return null")
        .unwrap();
    b.type_into("#a-reporter", "abuse@bigmail.example").unwrap();
    b.follow("#lookup-go").unwrap();
    // The paste's error was on the page before; wait for the form's.
    assert!(b.wait_until(
        "(document.getElementById('abuse-error')||{textContent:''}).textContent.includes('date')"
    ));
    let value = |id: &str| {
        b.execute(&format!("return document.getElementById('{id}').value"))
            .unwrap()
    };
    assert_eq!(value("a-ip"), a.public_ip.to_string());
    assert_eq!(value("a-time"), time);
    assert_eq!(value("a-zone"), "Etc/GMT-1");
    assert_eq!(value("a-reporter"), "abuse@bigmail.example");
    b.execute("document.getElementById('a-date').value=''; return null")
        .unwrap();
    b.type_into("#a-date", date).unwrap();
    b.follow("#lookup-go").unwrap();
    let answer = b
        .find("#answer")
        .unwrap_or_else(|e| panic!("{e}\n{}", b.page_text().unwrap_or_default()));
    let answer_text = b.text(&answer).unwrap();
    assert!(answer_text.contains(&bot_name), "{answer_text}");
    let text = b.page_text().unwrap();
    assert!(text.contains("abuse@bigmail.example"), "{text}");
    // One confidence word: the report's badge opens its explanation.
    let word = b.text(&b.find("[data-confidence]").unwrap()).unwrap();
    let explained = b.text(&b.find("#confidence").unwrap()).unwrap();
    assert!(
        explained.starts_with(&format!("{word}:")),
        "{word} / {explained}"
    );
    assert!(b.find("#campaign a").is_ok(), "no campaign link: {text}");
    let reply = value("reply");
    assert!(
        reply.as_str().unwrap().contains("We identified the device"),
        "{reply}"
    );
    assert!(b
        .text(&b.find("#report-status").unwrap())
        .unwrap()
        .contains("open"));
    b.screenshot("noc-abuse-report").unwrap();
    b.follow("#mark-answered").unwrap();
    assert!(b.wait_until("!document.getElementById('mark-answered')"));
    let status = b.find("#report-status").unwrap();
    assert!(b.text(&status).unwrap().contains("answered by"));
    let report_url = b.url().unwrap();

    // From the router to its reports, and the list's word is the report's.
    b.goto(&s.url(&format!("/noc/cpe/{}", a.cpe_id))).unwrap();
    b.follow("#link-abuse").unwrap();
    let rows = b.find_all("#abuse-list tbody tr").unwrap();
    assert_eq!(rows.len(), 1);
    let row = b.text(&rows[0]).unwrap();
    assert!(row.contains(&word) && row.contains("answered"), "{row}");
    assert!(row.contains(&bot_mac.to_string()));
    // From the report to its campaign, and from the campaign to the device's reports.
    assert!(report_url.contains("/noc/abuse/"));
    b.goto(&report_url).unwrap();
    b.follow("#campaign a").unwrap();
    assert!(b.url().unwrap().contains("/noc/campaigns/c-"));
    b.follow(&format!("a[href*='mac={bot_mac}']")).unwrap();
    assert_eq!(b.find_all("#abuse-list tbody tr").unwrap().len(), 1);
}

/// The fleet view refreshes itself: a router enrolled after the page was opened appears in
/// the list and the stat cards within the refresh period, without a reload (a marker set
/// in the page survives).
#[test]
fn the_fleet_view_refreshes_itself_without_a_reload() {
    let s = Server::start().unwrap();
    let b = Browser::start(1280, 900).unwrap();
    b.goto(&s.url("/login")).unwrap();
    b.type_into("#token", &s.operator).unwrap();
    b.follow("#signin").unwrap();
    assert!(b.url_ends_with("/noc"));
    assert_eq!(
        b.text(&b.find("#cpe-count").unwrap()).unwrap(),
        "1–4 of 4 CPEs"
    );
    b.execute("window.notReloaded = true; return null").unwrap();
    let store = Store::open(&s.db).unwrap();
    store
        .upsert_cpe("cpe-new-0001", "ed25519:new", None, now_ms())
        .unwrap();
    // The page asks every 30 s.
    assert!(
        b.wait_until_within(
            "document.getElementById('cpe-count').textContent === '1–5 of 5 CPEs'",
            std::time::Duration::from_secs(45)
        ),
        "{}",
        b.page_text().unwrap()
    );
    assert!(b.wait_until("window.notReloaded === true"));
    assert_eq!(b.text(&b.find("#stat-never b").unwrap()).unwrap(), "1");
    assert!(b.find("tr[data-cpe='cpe-new-0001']").is_ok());
}

/// Campaigns seeded next to the demo's one: two households each, linked by their own EHLO
/// name.
const CAMPAIGNS: u32 = 120;
/// Abuse reports seeded: report `i` is about campaign `i`'s first router, received in order,
/// with reported times running the other way; every third answered.
const REPORTS: u32 = 120;

fn camp_cpe(k: u32, side: u8) -> String {
    format!("cpe-camp-{k:03}-{}", char::from(b'a' + side))
}

fn camp_ip(k: u32, side: u8) -> IpAddr {
    IpAddr::from([100, 80, k as u8, 1 + side])
}

fn report_ip(i: u32) -> IpAddr {
    camp_ip(i, 0)
}

fn reporter(i: u32) -> String {
    format!("abuse@isp{}.example", i % 4)
}

/// [`CAMPAIGNS`] campaigns of two infected devices in two households each, the newest first
/// (campaign `k`'s alerts are `k + 1` minutes old), and [`REPORTS`] abuse reports.
fn seed_lists(db: &std::path::Path, now: u64) {
    let store = Store::open(db).unwrap();
    let mut batch = Vec::new();
    for k in 0..CAMPAIGNS {
        for side in 0..2u8 {
            let cpe = camp_cpe(k, side);
            store
                .upsert_cpe(&cpe, "ed25519:camp", None, now - 2 * HOUR)
                .unwrap();
            let at = now - u64::from(k + 1) * 60_000;
            let mac = MacAddr([0x02, 0xca, 0, k as u8, side, 0x66]);
            let envelope = |seq: u64, at: u64, body: Body| Received {
                envelope: Envelope {
                    version: smtpguard_protocol::PROTOCOL_VERSION,
                    cpe_id: cpe.clone(),
                    seq,
                    sent_at_ms: at,
                    body,
                },
                wire: Vec::new(),
                received_at_ms: at,
            };
            batch.push(envelope(
                1,
                now - 2 * HOUR,
                Body::State(State {
                    status: Status::Online,
                    agent_version: "0.1.0".into(),
                    fleet_policy_version: Some(1),
                    cpe_policy_version: None,
                    public_ip: Some(camp_ip(k, side)),
                }),
            ));
            batch.push(envelope(
                2,
                at,
                Body::Alert(Alert {
                    device: DeviceReport {
                        mac,
                        ips: vec![IpAddr::from([192, 168, 1, 66])],
                        hostname: Some(format!("bot-{k}-{side}")),
                        vendor: None,
                        verdict: Verdict::Infected,
                        score: 0.95,
                        action: Action::Block,
                        action_until_ms: Some(at + HOUR),
                        counters: DeviceCounters::default(),
                        evidence: vec![format!("EHLO camp-{k:03}.example")],
                    },
                    previous: Verdict::Clean,
                    at_ms: at,
                    observed: Observed {
                        ehlo_names: vec![format!("camp-{k:03}.example")],
                        mail_from_domains: Vec::new(),
                        mail_servers: Vec::new(),
                    },
                }),
            ));
            // The address history the abuse mapping reads.
            for (seq, ago) in [(3, 30 * 60_000), (4, 5 * 60_000)] {
                batch.push(envelope(
                    seq,
                    now - ago,
                    Body::Telemetry(Telemetry {
                        window_start_ms: now - ago - 600_000,
                        window_secs: 600,
                        public_ip: Some(camp_ip(k, side)),
                        stats: Default::default(),
                        devices: Vec::new(),
                        connections: Vec::new(),
                    }),
                ));
            }
        }
    }
    store.write_batch(&batch, &[]).unwrap();
    drop(store);
    let conn = smtpguard_controller::web::open_db(db).unwrap();
    for i in 0..REPORTS {
        let q = AbuseQuery {
            public_ip: report_ip(i),
            at_ms: now - 10 * 60_000 - u64::from(i) * 1000,
            dest_ip: None,
            dest_port: None,
            source_port: None,
        };
        let r = abuse::submit_query(&*conn, "json", q, None, None, now + u64::from(i)).unwrap();
        abuse::set_reporter(&*conn, r.id, &reporter(i)).unwrap();
        if i % 3 == 0 {
            assert!(abuse::mark_answered(&*conn, r.id, "ops", now).unwrap());
        }
    }
}

fn text_of(b: &Browser, css: &str) -> String {
    b.text(&b.find(css).unwrap()).unwrap()
}

fn get_json(s: &Server, path: &str) -> (u16, serde_json::Value) {
    let r = http(
        s.addr,
        "GET",
        path,
        &[("Authorization", &format!("Bearer {}", s.operator))],
        b"",
    )
    .unwrap();
    let v = serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status, v)
}

/// The campaign list, the abuse report list and `GET /api/fleet` at more than a page: 121
/// campaigns and 120 abuse reports are searched, filtered, sorted and paged on the server;
/// "page X of Y" is right, the next link keeps the filters, the exports hold exactly the
/// filtered rows, the API pages with `per_page`, and each page stays small (printed).
#[test]
fn campaigns_abuse_reports_and_the_fleet_api_are_searched_filtered_and_paged() {
    let s = Server::start().unwrap();
    let now = now_ms();
    seed_lists(&s.db, now);
    let cookie = login(s.addr, &s.operator).unwrap();

    // Everything is there, through the API, and paged there too.
    let (_, v) = get_json(&s, "/api/campaigns?q=camp-&per_page=500");
    assert_eq!(v["total"], CAMPAIGNS, "{v}");
    assert_eq!(v["campaigns"].as_array().unwrap().len(), CAMPAIGNS as usize);
    let (_, v) = get_json(&s, "/api/campaigns?sort=seen&dir=asc&per_page=7&page=2");
    assert_eq!(v["total"], CAMPAIGNS + 1, "the demo's campaign too: {v}");
    assert_eq!(v["campaigns"].as_array().unwrap().len(), 7);
    assert_eq!(v["page"], 2);
    assert_eq!(v["per_page"], 7);
    let (status, _) = get_json(&s, "/api/campaigns?per_page=501");
    assert_eq!(status, 400);
    let (_, v) = get_json(&s, "/api/abuse?status=open&per_page=20&page=4");
    let open = (0..REPORTS).filter(|i| i % 3 != 0).count();
    assert_eq!(v["total"], open as u64, "{v}");
    assert_eq!(v["reports"].as_array().unwrap().len(), 20);
    assert!(v["reports"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "open"));
    // One confidence word: the reports that name a device are those with a MAC.
    let (_, all) = get_json(&s, "/api/abuse?per_page=500");
    let named = all["reports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["mac"].is_null())
        .count();
    let (_, v) = get_json(&s, "/api/abuse?confidence=device&per_page=500");
    assert_eq!(v["total"], named as u64, "{v}");
    // Each report has one of the words.
    let by_word: u64 = [
        "exact",
        "strong",
        "good",
        "fair",
        "household-only",
        "no-match",
    ]
    .iter()
    .map(|w| {
        get_json(&s, &format!("/api/abuse?confidence={w}")).1["total"]
            .as_u64()
            .unwrap()
    })
    .sum();
    assert_eq!(by_word, u64::from(REPORTS));
    assert_eq!(get_json(&s, "/api/abuse?confidence=sure").0, 400);
    let cpes = 4 + 2 * CAMPAIGNS as u64;
    let (_, v) = get_json(&s, "/api/fleet?per_page=10&page=2&sort=cpe");
    assert_eq!(v["total"], cpes, "{v}");
    assert_eq!(v["page"], 2);
    assert_eq!(v["cpes"].as_array().unwrap().len(), 10);
    let (_, v) = get_json(&s, "/api/fleet");
    assert_eq!(v["per_page"], 50);
    assert_eq!(v["cpes"].as_array().unwrap().len(), 50);
    let (_, v) = get_json(&s, "/api/fleet?q=cpe-camp-007&per_page=5");
    assert_eq!(v["total"], 2, "{v}");
    let devices = v["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{v}");
    assert!(devices.iter().all(|d| d["verdict"] == "infected"));
    let (_, v) = get_json(&s, "/api/fleet?status=offline");
    assert_eq!(v["total"], 1, "Novak: {v}");
    let (status, _) = get_json(&s, "/api/fleet?per_page=501");
    assert_eq!(status, 400);

    // Page weight of each list, as the server sends it.
    let (_, v) = get_json(&s, "/api/campaigns?q=camp-042");
    let camp_042 = v["campaigns"][0]["id"].as_str().unwrap().to_string();
    for path in [
        "/noc/campaigns".to_string(),
        "/noc/campaigns?page=3".into(),
        format!("/noc/campaigns/{camp_042}"),
        "/noc/abuse".into(),
        "/noc/abuse?status=open&page=2".into(),
    ] {
        let r = http(s.addr, "GET", &path, &[("Cookie", &cookie)], b"").unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        println!("page weight {path}: {} bytes", r.body.len());
        assert!(
            r.body.len() < PAGE_MAX_BYTES,
            "{path}: {} bytes",
            r.body.len()
        );
    }

    let b = Browser::start(1280, 1000).unwrap();
    b.goto(&s.url("/login")).unwrap();
    b.type_into("#token", &s.operator).unwrap();
    b.follow("#signin").unwrap();
    assert!(b.url_ends_with("/noc"));

    // Abuse reports: three pages, newest first.
    b.goto(&s.url("/noc/abuse")).unwrap();
    assert_eq!(text_of(&b, "#report-count"), "1–50 of 120 reports");
    assert_eq!(text_of(&b, "#report-page"), "page 1 of 3");
    let rows = b.find_all("#abuse-list tbody tr").unwrap();
    assert_eq!(rows.len(), 50);
    let newest = report_ip(REPORTS - 1).to_string();
    assert!(b.text(&rows[0]).unwrap().contains(&newest));
    // Found by its public address.
    let wanted = report_ip(77).to_string();
    b.type_into("#f-q", &wanted).unwrap();
    b.follow("#f-go").unwrap();
    let rows = b.find_all("#abuse-list tbody tr").unwrap();
    assert_eq!(rows.len(), 1);
    let row = b.text(&rows[0]).unwrap();
    assert!(
        row.contains(&wanted) && row.contains(&camp_cpe(77, 0)),
        "{row}"
    );
    assert_eq!(text_of(&b, "#report-count"), "1–1 of 1 report");
    // Open ones only: the next page keeps the filter and the order.
    b.goto(&s.url("/noc/abuse")).unwrap();
    b.execute("document.getElementById('f-status').value='open'; return null")
        .unwrap();
    b.follow("#f-go").unwrap();
    assert_eq!(
        text_of(&b, "#report-count"),
        format!("1–50 of {open} reports")
    );
    assert_eq!(text_of(&b, "#report-page"), "page 1 of 2");
    b.follow("#abuse-list thead a[href*='sort=time']").unwrap();
    let first = b.find_all("#abuse-list tbody tr").unwrap();
    // Latest reported time first: report 1 (report 0 is answered).
    assert!(
        b.text(&first[0])
            .unwrap()
            .contains(&report_ip(1).to_string()),
        "{}",
        b.text(&first[0]).unwrap()
    );
    b.follow("a[rel=next]").unwrap();
    let url = b.url().unwrap();
    assert!(
        url.contains("status=open") && url.contains("sort=time") && url.contains("page=2"),
        "{url}"
    );
    assert_eq!(
        text_of(&b, "#report-count"),
        format!("51–{open} of {open} reports")
    );
    assert_eq!(text_of(&b, "#report-page"), "page 2 of 2");
    let rows = b.find_all("#abuse-list tbody tr").unwrap();
    assert_eq!(rows.len(), open - 50);
    assert!(rows.iter().all(|r| b.text(r).unwrap().contains("open")));
    b.screenshot("noc-abuse-page-2").unwrap();
    // The export holds exactly the filtered reports.
    let export = http(
        s.addr,
        "GET",
        "/api/export/abuse?format=csv&status=open&q=isp1",
        &[("Cookie", &cookie)],
        b"",
    )
    .unwrap();
    assert_eq!(export.status, 200, "{}", export.body);
    let lines: Vec<&str> = export.body.lines().collect();
    let expected: Vec<u32> = (0..REPORTS).filter(|i| i % 3 != 0 && i % 4 == 1).collect();
    assert_eq!(lines.len(), expected.len() + 1, "{}", export.body);
    assert!(lines[1..]
        .iter()
        .all(|l| l.contains(",open") && l.contains("abuse@isp1.example")));
    let (_, v) = get_json(&s, "/api/export/abuse?format=json&status=answered");
    assert_eq!(
        v["abuse_reports"].as_array().unwrap().len(),
        (0..REPORTS).filter(|i| i % 3 == 0).count()
    );

    // Campaigns: three pages; a search and its filters survive the next links.
    b.goto(&s.url("/noc/campaigns")).unwrap();
    assert_eq!(
        text_of(&b, "#campaign-count"),
        format!("1–50 of {} campaigns", CAMPAIGNS + 1)
    );
    assert_eq!(text_of(&b, "#campaign-page"), "page 1 of 3");
    assert_eq!(b.find_all("#campaign-list tbody tr").unwrap().len(), 50);
    b.type_into("#f-q", "camp-").unwrap();
    b.type_into("#f-min", "2").unwrap();
    b.follow("#f-go").unwrap();
    assert_eq!(text_of(&b, "#campaign-count"), "1–50 of 120 campaigns");
    b.follow("#campaign-list thead a[href*='sort=seen']")
        .unwrap();
    let first = b.find_all("#campaign-list tbody tr").unwrap();
    assert!(b.text(&first[0]).unwrap().contains("2 households"));
    b.follow("a[rel=next]").unwrap();
    b.follow("a[rel=next]").unwrap();
    let url = b.url().unwrap();
    assert!(
        url.contains("q=camp-") && url.contains("min=2") && url.contains("sort=seen"),
        "{url}"
    );
    assert_eq!(text_of(&b, "#campaign-count"), "101–120 of 120 campaigns");
    assert_eq!(text_of(&b, "#campaign-page"), "page 3 of 3");
    assert!(b.find("a[rel=next]").is_err());
    // Newest alert first: the last page has the oldest campaigns, the oldest last.
    let rows = b.find_all("#campaign-list tbody tr").unwrap();
    assert_eq!(rows.len(), 20);
    let last = rows.last().unwrap();
    assert!(
        b.text(last)
            .unwrap()
            .contains(&format!("camp-{:03}.example", CAMPAIGNS - 1)),
        "{}",
        b.text(last).unwrap()
    );
    b.screenshot("noc-campaigns-page-3").unwrap();
    // One campaign by its EHLO name, and its page.
    b.goto(&s.url("/noc/campaigns?q=CAMP-042.example")).unwrap();
    let rows = b.find_all("#campaign-list tbody tr").unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(text_of(&b, "#campaign-count"), "1–1 of 1 campaign");
    b.follow("#campaign-list tbody a").unwrap();
    assert!(b.url_ends_with(&format!("/noc/campaigns/{camp_042}")));
    let devices = b.find_all("#campaign-devices tbody tr").unwrap();
    assert_eq!(devices.len(), 2);
    assert!(b.text(&devices[0]).unwrap().contains(&camp_cpe(42, 0)));
    // Nothing pushed yet.
    b.goto(&s.url("/noc/campaigns?status=pushed")).unwrap();
    assert_eq!(text_of(&b, "#campaign-count"), "No campaign matches.");
    // A filter that makes no sense is named, with the search form kept.
    let r = http(
        s.addr,
        "GET",
        "/noc/abuse?q=isp1&confidence=certain",
        &[("Cookie", &cookie)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("confidence must be"), "{}", r.body);
    assert!(r.body.contains(r#"name="q" value="isp1""#), "{}", r.body);
    // The export is of the filtered list.
    let export = http(
        s.addr,
        "GET",
        "/api/export/campaigns?format=csv&q=camp-&min=2",
        &[("Cookie", &cookie)],
        b"",
    )
    .unwrap();
    assert_eq!(export.status, 200, "{}", export.body);
    let lines: Vec<&str> = export.body.lines().collect();
    assert_eq!(lines.len(), CAMPAIGNS as usize + 1);
    assert!(lines[0].starts_with("id,households,devices,"));
    assert!(lines[1..].iter().all(|l| l.contains("camp-")));
    let (_, v) = get_json(&s, "/api/export/campaigns?format=json&q=camp-042");
    assert_eq!(v["campaigns"].as_array().unwrap().len(), 1, "{v}");
}
