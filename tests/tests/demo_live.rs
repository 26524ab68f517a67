//! The README's main command as a user meets it: `smtpguard-demo` starts the
//! controller (embedded broker, ingest, SQLite, web UI) and live simulated households whose
//! agents run the real engine and uplink, on loopback ephemeral ports. Within a bounded
//! time the NOC API lists the two infected devices with evidence, the bot household's
//! subscriber page explains its device in plain language, and Ctrl-C (SIGINT) stops
//! everything cleanly and removes the temporary data directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod web_common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use web_common::{http, login};

/// Kills the demo if the test fails half-way.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn household_line<'a>(printed: &'a [String], name: &str) -> (&'a str, &'a str) {
    let line = printed
        .iter()
        .find(|l| l.contains("portal:") && l.contains(name))
        .unwrap_or_else(|| panic!("no portal line for {name} in {printed:?}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let token = words.last().copied().unwrap();
    let cpe = words
        .iter()
        .find(|w| w.starts_with("cpe-"))
        .copied()
        .unwrap();
    (cpe, token)
}

#[test]
fn demo_shows_live_infections_to_the_noc_and_the_subscriber_and_stops_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = smtpguard_tests::mqtt::demo_binary().unwrap();
    let http_port = smtpguard_tests::mqtt::free_port().unwrap();
    let mqtt_port = smtpguard_tests::mqtt::free_port().unwrap();
    let mut child = Command::new(bin)
        .args([
            "--http",
            &format!("127.0.0.1:{http_port}"),
            "--mqtt",
            &format!("127.0.0.1:{mqtt_port}"),
        ])
        .env("TMPDIR", tmp.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut guard = Guard(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.starts_with("Ctrl-C stops the demo.");
        printed.push(line);
        if done {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});

    let data_dir: PathBuf = printed
        .iter()
        .find_map(|l| l.split("data directory: ").nth(1))
        .map(|d| PathBuf::from(d.trim()))
        .unwrap_or_else(|| panic!("no data directory in {printed:?}"));
    assert!(data_dir.starts_with(tmp.path()), "{}", data_dir.display());
    assert!(data_dir.join("controller.db").exists());
    let operator = printed
        .iter()
        .find_map(|l| l.split("operator token: ").nth(1))
        .unwrap()
        .trim()
        .to_string();
    let (bot_cpe, bot_token) = household_line(&printed, "The Weber family");
    let (stolen_cpe, stolen_token) = household_line(&printed, "Fischer household");
    let clean_cpes: Vec<&str> = ["Becker household", "Wagner household"]
        .iter()
        .map(|n| household_line(&printed, n).0)
        .collect();

    // The NOC's view, polled (bounded) until both infections arrived through the ingest.
    let addr: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let bearer = format!("Bearer {operator}");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    let infected_of = |fleet: &Value, cpe: &str| -> Option<Value> {
        fleet["devices"]
            .as_array()?
            .iter()
            .find_map(|d| (d["cpe_id"] == cpe && d["verdict"] == "infected").then(|| d.clone()))
    };
    let fleet = loop {
        if let Ok(r) = http(
            addr,
            "GET",
            "/api/fleet",
            &[("Authorization", &bearer)],
            b"",
        ) {
            if r.status == 200 {
                let v: Value = serde_json::from_str(&r.body).unwrap();
                if infected_of(&v, bot_cpe).is_some() && infected_of(&v, stolen_cpe).is_some() {
                    break v;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the NOC did not list both infected devices within 90 s"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!(
        "infected devices listed {:.1} s after the demo printed its URLs",
        started.elapsed().as_secs_f64()
    );
    let bot = infected_of(&fleet, bot_cpe).unwrap();
    let bot_evidence = bot["evidence"].as_array().unwrap();
    assert!(
        bot_evidence.iter().any(|e| e
            .as_str()
            .unwrap()
            .contains("distinct mail servers on port 25")),
        "{bot}"
    );
    assert_eq!(bot["action"], "block", "{bot}");
    let stolen = infected_of(&fleet, stolen_cpe).unwrap();
    assert!(
        stolen["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains("submitted in the last hour")),
        "{stolen}"
    );
    // Clean households have nothing flagged; every router is online.
    for d in fleet["devices"].as_array().unwrap() {
        assert!(
            !clean_cpes.contains(&d["cpe_id"].as_str().unwrap()),
            "clean household flagged: {d}"
        );
    }
    let cpes = fleet["cpes"].as_array().unwrap();
    assert_eq!(cpes.len(), 4, "{cpes:?}");
    assert!(cpes.iter().all(|c| c["status"] == "online"), "{cpes:?}");

    // The bot household's subscriber sees the device explained in plain language.
    let cookie = login(addr, bot_token).unwrap();
    let page = http(addr, "GET", "/my", &[("Cookie", &cookie)], b"").unwrap();
    assert_eq!(page.status, 200);
    let bot_name = bot["name"].as_str().unwrap();
    assert!(page.body.contains(bot_name), "{}", page.body);
    assert!(page.body.contains("Infected"));
    assert!(
        page.body.contains("tried to send mail directly to"),
        "{}",
        page.body
    );
    assert!(page.body.contains("different mail servers"));
    assert!(!page.body.contains(stolen["name"].as_str().unwrap()));
    // Its history holds the change the live agent alerted (issue 11: it used to read "No
    // changes recorded"), on the portal and on the NOC's page of the router.
    let history = http(
        addr,
        "GET",
        &format!("/my/devices/{bot_cpe}/{}", bot["mac"].as_str().unwrap()),
        &[("Cookie", &cookie)],
        b"",
    )
    .unwrap();
    assert_eq!(history.status, 200);
    assert!(
        !history.body.contains("No changes recorded"),
        "{}",
        history.body
    );
    assert!(history
        .body
        .contains(r#"class="change" data-verdict="infected""#));
    let noc_cookie = login(addr, &operator).unwrap();
    let cpe_page = http(
        addr,
        "GET",
        &format!("/noc/cpe/{bot_cpe}"),
        &[("Cookie", &noc_cookie)],
        b"",
    )
    .unwrap();
    assert!(
        !cpe_page.body.contains("No verdict changes"),
        "{}",
        cpe_page.body
    );
    let cookie = login(addr, stolen_token).unwrap();
    let page = http(addr, "GET", "/my", &[("Cookie", &cookie)], b"").unwrap();
    assert!(
        page.body.contains("through a mail account"),
        "{}",
        page.body
    );

    // Ctrl-C: a clean exit, and the temporary directory is gone.
    let pid = guard.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = guard.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    assert!(!data_dir.exists(), "{} left behind", data_dir.display());
}
