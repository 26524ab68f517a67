//! The NOC at fleet size, in a real browser (headless Chromium over WebDriver): 20,000 extra
//! routers seeded through the store's ingest path next to the demo fleet; the operator finds
//! one by a device's MAC and one by the public address it held at a given time, and the
//! fleet page stays small. Page weights are printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod web_common;

use std::net::IpAddr;

use smtpguard_controller::abuse::date::format_utc_secs;
use smtpguard_controller::store::{Received, Store};
use smtpguard_protocol::{
    Action, Body, DeviceCounters, DeviceReport, Envelope, MacAddr, State, Status, Telemetry,
    Verdict,
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
    let mut store = Store::open(db).unwrap();
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
    store.conn().execute_batch("BEGIN").unwrap();
    for i in 0..EXTRA {
        store
            .upsert_cpe(&bulk_id(i), "ed25519:bulk", None, now - 6 * HOUR)
            .unwrap();
    }
    store.conn().execute_batch("COMMIT").unwrap();
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
    b.type_into("#d-q", &bulk_mac(wanted).to_string()).unwrap();
    b.follow("#d-go").unwrap();
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
    // From the campaign to the device's reports.
    b.goto(&s.url("/noc/campaigns")).unwrap();
    b.follow(&format!("a[href*='mac={bot_mac}']")).unwrap();
    assert_eq!(b.find_all("#abuse-list tbody tr").unwrap().len(), 1);
    assert!(report_url.contains("/noc/abuse/"));
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
    let mut store = Store::open(&s.db).unwrap();
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
