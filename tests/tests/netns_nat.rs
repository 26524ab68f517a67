//! The router's NAT translation, read from the real kernel, names the device behind an
//! abuse report. Three network namespaces this test creates:
//!
//! ```text
//!  lan (192.168.77.14, MAC 02:5b:00:00:00:14) ── rtr (192.168.77.1 | WAN 100.64.77.2,
//!      nft masquerade to ports 40000-40999) ── srv (100.64.77.25, a mail server on :25)
//! ```
//!
//! A TCP connection from the LAN host through the router: the server records the peer it
//! saw. Inside the router's namespace, the agent's ctnetlink lookup must return exactly
//! that peer (the WAN address and the translated port, not the LAN port), and the WAN
//! address probe must return the router's WAN address. Then the agent core itself, with
//! the live capture on the router's LAN side and conntrack, logs a second connection with
//! its translation; that telemetry stored in a controller database makes an abuse report
//! with the server's (ip, port, time) answer `exact` with the LAN host's MAC, and a report
//! with a port no translation has falls back to the time-window guess.
//!
//! Needs root, iproute2 and nftables (CI runs as root); it fails, never skips, without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use smtpguard_agent::capture::{Capture, CaptureOptions};
use smtpguard_agent::core::{Agent, Output, Settings};
use smtpguard_agent::engine::EngineConfig;
use smtpguard_agent::nat::conntrack::Conntrack;
use smtpguard_agent::nat::{wan, NatQuery};
use smtpguard_common::now_ms;
use smtpguard_controller::abuse::{self, mapping::Confidence};
use smtpguard_controller::store::{Received, Store};
use smtpguard_protocol::envelope::Envelope;
use smtpguard_protocol::{Body, ConnRecord, MacAddr, Policy};
use smtpguard_tests::process::{self, field, run, Proc};

const LAN_MAC: &str = "02:5b:00:00:00:14";
const ROUTER_LAN_MAC: &str = "02:5b:00:00:00:01";
const LAN_IP: &str = "192.168.77.14";
const ROUTER_LAN_IP: &str = "192.168.77.1";
const WAN_IP: &str = "100.64.77.2";
const SERVER_IP: &str = "100.64.77.25";
/// Longest wait for anything the kernel or the core should do.
const WAIT: Duration = Duration::from_secs(15);

/// A network namespace removed on drop, also when the test fails.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("sgn-{tag}-{}", std::process::id());
        let st = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(
            matches!(st, Ok(s) if s.success()),
            "cannot create network namespace {name}: this test needs root and iproute2 ({st:?})"
        );
        Netns(name)
    }

    /// `ip netns exec NAME`, to which the program and its arguments are added.
    fn exec(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]);
        cmd
    }

    fn sh(&self, args: &[&str]) {
        run(self.exec().args(args));
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it opens live there).
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&self.0);
                f()
            })
            .join()
            .unwrap()
        })
    }
}

/// Moves the calling thread (one of the test's own) into namespace `name`.
fn enter(name: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{name}")).unwrap();
    // SAFETY: `file` is an open namespace file; setns only changes this thread's network
    // namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Lab {
    lan: Netns,
    rtr: Netns,
    srv: Netns,
}

/// The three namespaces, `tag` telling apart those of tests running at the same time.
fn lab(tag: &str) -> Lab {
    let (lan, rtr, srv) = (
        Netns::new(&format!("{tag}lan")),
        Netns::new(&format!("{tag}rtr")),
        Netns::new(&format!("{tag}srv")),
    );
    for ns in [&lan, &rtr, &srv] {
        ns.sh(&["ip", "link", "set", "lo", "up"]);
    }
    lan.sh(&[
        "ip", "link", "add", "l0", "address", LAN_MAC, "type", "veth", "peer", "name", "r0",
        "netns", &rtr.0,
    ]);
    rtr.sh(&[
        "ip", "link", "add", "w0", "type", "veth", "peer", "name", "s0", "netns", &srv.0,
    ]);
    lan.sh(&["ip", "addr", "add", &format!("{LAN_IP}/24"), "dev", "l0"]);
    lan.sh(&["ip", "link", "set", "l0", "up"]);
    lan.sh(&["ip", "route", "add", "default", "via", ROUTER_LAN_IP]);
    // The LAN host's own ports stay out of the NAT's range below: masquerading keeps a source
    // port that is free and within the range, and the tests tell the two sides apart by it.
    lan.sh(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=50000 60999"]);
    rtr.sh(&["ip", "link", "set", "r0", "address", ROUTER_LAN_MAC]);
    rtr.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{ROUTER_LAN_IP}/24"),
        "dev",
        "r0",
    ]);
    rtr.sh(&["ip", "addr", "add", &format!("{WAN_IP}/24"), "dev", "w0"]);
    rtr.sh(&["ip", "link", "set", "r0", "up"]);
    rtr.sh(&["ip", "link", "set", "w0", "up"]);
    rtr.sh(&["ip", "route", "add", "default", "via", SERVER_IP]);
    rtr.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // Ports far from the LAN side's, so a lookup that returned the original tuple fails.
    rtr.sh(&[
        "nft",
        "add table ip sgnat; \
         add chain ip sgnat post { type nat hook postrouting priority srcnat; }; \
         add rule ip sgnat post oifname w0 meta l4proto tcp masquerade to :40000-40999",
    ]);
    srv.sh(&["ip", "addr", "add", &format!("{SERVER_IP}/24"), "dev", "s0"]);
    srv.sh(&["ip", "link", "set", "s0", "up"]);
    Lab { lan, rtr, srv }
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// A listener on the server's port 25 in `srv`; each accepted peer address is sent back.
/// The connections stay open until the test ends.
fn serve(lab: &Lab) -> mpsc::Receiver<SocketAddr> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (peer_tx, peer_rx) = mpsc::channel();
    let name = lab.srv.0.clone();
    std::thread::spawn(move || {
        enter(&name);
        let listener = TcpListener::bind(sa(SERVER_IP, 25)).unwrap();
        ready_tx.send(()).unwrap();
        let mut keep = Vec::new();
        for s in listener.incoming() {
            let Ok(s) = s else { break };
            let Ok(peer) = s.peer_addr() else { break };
            keep.push(s);
            if peer_tx.send(peer).is_err() {
                break;
            }
        }
    });
    ready_rx.recv_timeout(WAIT).unwrap();
    peer_rx
}

/// Connects from the LAN host to the server; the stream stays open for the test.
fn connect(lab: &Lab) -> TcpStream {
    lab.lan
        .run(|| TcpStream::connect_timeout(&sa(SERVER_IP, 25), WAIT).unwrap())
}

#[test]
fn conntrack_names_the_translation_the_server_saw_and_the_controller_maps_it_exactly() {
    let lab = lab("k");
    let peers = serve(&lab);

    // 1. The lookup alone, against what the server saw.
    let client = connect(&lab);
    let lan_side = client.local_addr().unwrap();
    let seen = peers.recv_timeout(WAIT).unwrap();
    assert_eq!(seen.ip(), WAN_IP.parse::<IpAddr>().unwrap());
    assert!((40_000..=40_999).contains(&seen.port()), "{seen}");
    assert_ne!(seen.port(), lan_side.port());
    let (found, missing, wan_route, wan_named) = lab.rtr.run(|| {
        let mut ct = Conntrack::open().unwrap();
        let q = [
            NatQuery {
                id: 1,
                client: lan_side,
                server: sa(SERVER_IP, 25),
            },
            // A connection that never was.
            NatQuery {
                id: 2,
                client: sa(LAN_IP, 9),
                server: sa(SERVER_IP, 25),
            },
        ];
        let mut out = Vec::new();
        ct.lookup(&q, &mut out).unwrap();
        out.sort();
        (
            out[0],
            out.get(1).copied(),
            wan::wan_address(None, None),
            wan::wan_address(Some("w0"), None),
        )
    });
    assert_eq!(found, (1, Some(seen)), "the translation the server saw");
    assert_eq!(missing, Some((2, None)));
    let wan_ip: IpAddr = WAN_IP.parse().unwrap();
    assert_eq!(
        wan_route,
        Some(wan_ip),
        "the default route's source address"
    );
    assert_eq!(wan_named, Some(wan_ip), "the named WAN interface's address");

    // 2. The agent core with the live capture on the router's LAN side and conntrack.
    let (ready_tx, ready_rx) = mpsc::channel();
    let (tele_tx, tele_rx) = mpsc::channel();
    let rtr_name = lab.rtr.0.clone();
    let core_thread = std::thread::spawn(move || {
        enter(&rtr_name);
        let result = {
            let start = now_ms();
            let mut agent = Agent::new(
                Settings {
                    engine: EngineConfig {
                        router_macs: vec![ROUTER_LAN_MAC.parse().unwrap()],
                        router_ips: vec![ROUTER_LAN_IP.parse().unwrap()],
                        ..EngineConfig::default()
                    },
                    telemetry: true,
                    nat_lookups: true,
                    ..Settings::default()
                },
                Policy::default(),
                start,
            );
            agent.set_public_ip(wan::wan_address(None, None));
            let mut capture = Capture::open(
                "r0",
                &CaptureOptions {
                    poll_interval: Duration::from_millis(50),
                    ..CaptureOptions::default()
                },
            )
            .unwrap();
            let mut ct = Conntrack::open().unwrap();
            ready_tx.send(()).unwrap();
            let (mut queries, mut answers) = (Vec::new(), Vec::new());
            let deadline = Instant::now() + WAIT;
            while agent.nat_stats().translated == 0 {
                assert!(Instant::now() < deadline, "no translation logged");
                if let Some(frame) = capture.next_frame().unwrap() {
                    agent.handle_frame(frame.ts_ms, frame.data);
                }
                let now = now_ms();
                queries.clear();
                agent.nat_queries(now, 32, &mut queries);
                answers.clear();
                ct.lookup(&queries, &mut answers).unwrap();
                for (id, t) in answers.drain(..) {
                    agent.nat_answer(id, t);
                }
            }
            agent.close_telemetry_window(now_ms());
            std::iter::from_fn(|| agent.poll_output())
                .find_map(|o| match o {
                    Output::Telemetry(t) => Some(t),
                    _ => None,
                })
                .unwrap()
        };
        tele_tx.send(result).unwrap();
    });
    ready_rx.recv_timeout(WAIT).unwrap();
    let second = connect(&lab);
    let seen2 = peers.recv_timeout(WAIT).unwrap();
    let telemetry = tele_rx.recv_timeout(WAIT * 2).unwrap();
    core_thread.join().unwrap();
    drop((client, second));

    assert_eq!(telemetry.public_ip, Some(wan_ip));
    let bot: MacAddr = LAN_MAC.parse().unwrap();
    let rec = telemetry
        .connections
        .iter()
        .find(|c| c.mac == bot && c.nat_port.is_some())
        .unwrap_or_else(|| panic!("{:?}", telemetry.connections))
        .clone();
    assert_eq!(rec.nat_ip, Some(seen2.ip()));
    assert_eq!(rec.nat_port, Some(seen2.port()));
    assert_eq!(rec.dst, SERVER_IP.parse::<IpAddr>().unwrap());

    // 3. The controller: the report with what the server saw names this device, exactly.
    let reported_at = rec.at_ms + 3_000;
    let mut telemetry = telemetry;
    // Another device of the household, busier, with other ports: the window guess would
    // name it, the translation must not.
    let laptop: MacAddr = "02:5b:00:00:00:77".parse().unwrap();
    for i in 0..3u16 {
        telemetry.connections.push(ConnRecord {
            mac: laptop,
            at_ms: rec.at_ms - 1_000 * u64::from(i + 1),
            src_port: 51_000 + i,
            dst: SERVER_IP.parse().unwrap(),
            dst_port: 25,
            nat_port: Some(41_000 + i),
            nat_ip: Some(wan_ip),
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.db");
    let store = Store::open(&path).unwrap();
    store
        .write_batch(
            &[Received {
                envelope: Envelope {
                    version: 1,
                    cpe_id: "cpe-nat-lab".into(),
                    seq: 1,
                    sent_at_ms: now_ms(),
                    body: Body::Telemetry(telemetry),
                },
                wire: vec![1],
                received_at_ms: now_ms(),
            }],
            &[],
        )
        .unwrap();
    // The store's connection has every table, the abuse desk's included.
    let conn = store.db().clone();
    let report = format!(
        r#"{{"public_ip":"{}","source_port":{},"time":{reported_at}}}"#,
        seen2.ip(),
        seen2.port()
    );
    let r = abuse::submit(&*conn, "application/json", report.as_bytes(), now_ms()).unwrap();
    assert_eq!(r.answer.confidence, Confidence::Exact);
    assert_eq!(r.answer.cpe_id.as_deref(), Some("cpe-nat-lab"));
    assert_eq!(r.answer.mac, Some(bot));
    assert!(r.answer.evidence.iter().all(|c| c.mac == bot));

    let unknown_port = if seen2.port() == 40_999 {
        40_998
    } else {
        40_999
    };
    let report = format!(
        r#"{{"public_ip":"{}","source_port":{unknown_port},"time":{reported_at}}}"#,
        seen2.ip()
    );
    let r = abuse::submit(&*conn, "application/json", report.as_bytes(), now_ms()).unwrap();
    assert_eq!(r.answer.confidence, Confidence::TimeWindow);
    assert_eq!(r.answer.mac, Some(laptop));
}

/// Polls `check` until it gives a value, failing early with the processes' logs when one
/// died, and after [`LIVE_WAIT`].
fn wait_for<T>(what: &str, procs: &mut [&mut Proc], check: impl FnMut() -> Option<T>) -> T {
    process::wait_for(what, LIVE_WAIT, procs, check)
}

/// Longest wait for the live processes (start, MQTT connect, a telemetry window).
const LIVE_WAIT: Duration = Duration::from_secs(60);
const OPERATOR_TOKEN: &str = "nat-operator-token-0123456789";

fn query_one(db: &std::path::Path, sql: &str, cpe: &str) -> Option<String> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    conn.busy_timeout(Duration::from_secs(2)).ok()?;
    conn.query_row(sql, [cpe], |r| r.get(0)).ok()
}

/// One HTTP/1.1 request to the controller in `srv`, as a script's curl would make it;
/// the status and the JSON body.
fn http(lab: &Lab, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {SERVER_IP}\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let raw = lab.srv.run(|| {
        let mut s = TcpStream::connect_timeout(&sa(SERVER_IP, 8080), WAIT).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// The real binaries: `smtpguard-controller serve` in the server's namespace (broker and
/// HTTP on its address), `smtpguard-agent run` in the router's namespace capturing on its
/// LAN side, with its uplink through the router's own WAN. The agent reports its WAN
/// address (retained state, shown by `GET /api/cpes/{id}`) and the translation of the LAN
/// host's mail connection; `POST /api/abuse` with what the server saw answers `exact`.
#[test]
fn live_agent_behind_nat_reports_its_wan_address_and_the_api_maps_the_report_exactly() {
    let controller_bin = smtpguard_tests::mqtt::controller_binary().unwrap();
    let agent_bin = smtpguard_tests::mqtt::agent_binary().unwrap();
    let lab = lab("l");
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    let db = dir.join("controller.db");
    let token = dir.join("operator.token");
    std::fs::write(&token, format!("{OPERATOR_TOKEN}\n")).unwrap();
    let controller_config = dir.join("controller.toml");
    std::fs::write(
        &controller_config,
        format!(
            "db_path = \"{db}\"\npolicy_key_path = \"{key}\"\nhttp_listen = \"{SERVER_IP}:8080\"\n\n\
             [broker]\nembedded_listen = \"{SERVER_IP}:1883\"\n\
             password = \"controller-secret\"\nclient_id = \"controller-nat\"\n\n\
             [web]\noperator_token_file = \"{token}\"\n",
            db = db.display(),
            key = dir.join("policy.key").display(),
            token = token.display(),
        ),
    )
    .unwrap();
    let controller = |args: &[&str]| {
        let out = run(Command::new(&controller_bin)
            .arg("--config")
            .arg(&controller_config)
            .args(args));
        String::from_utf8(out.stdout).unwrap()
    };
    let controller_public_key = controller(&["keygen"]).trim().to_string();
    let state_dir = dir.join("agent-state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let printed = run(Command::new(&agent_bin)
        .arg("keygen")
        .arg("--key")
        .arg(state_dir.join("agent.key")));
    let printed = String::from_utf8(printed.stdout).unwrap();
    let cpe_id = field(&printed, "cpe_id:");
    let enrolled = controller(&["cpe", "add", &cpe_id, &field(&printed, "public_key:")]);
    let broker_password = smtpguard_tests::mqtt::printed_password(&enrolled).unwrap();

    let mut controller_proc = Proc::spawn(
        "controller",
        lab.srv
            .exec()
            .arg(&controller_bin)
            .arg("--config")
            .arg(&controller_config)
            .arg("serve"),
        dir.join("controller.log"),
    );
    wait_for(
        "the broker and the web to listen",
        &mut [&mut controller_proc],
        || {
            lab.srv
                .run(|| {
                    TcpStream::connect_timeout(&sa(SERVER_IP, 1883), WAIT).is_ok()
                        && TcpStream::connect_timeout(&sa(SERVER_IP, 8080), WAIT).is_ok()
                })
                .then_some(())
        },
    );
    let peers = serve(&lab);

    let policy_file = dir.join("policy.toml");
    std::fs::write(&policy_file, "telemetry_interval_secs = 5\n").unwrap();
    let agent_config = dir.join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "state_dir = \"{state}\"\npolicy_file = \"{policy}\"\n\n\
             [capture]\ninterface = \"r0\"\n\n\
             [enforce]\nbackend = \"none\"\n\n\
             [uplink]\nenabled = true\nbroker_url = \"mqtt://{SERVER_IP}:1883\"\n\
             username = \"{cpe_id}\"\npassword = \"{broker_password}\"\n\
             controller_public_key = \"{controller_public_key}\"\n",
            state = state_dir.display(),
            policy = policy_file.display(),
        ),
    )
    .unwrap();
    let mut agent_proc = Proc::spawn(
        "agent",
        lab.rtr
            .exec()
            .arg(&agent_bin)
            .arg("run")
            .arg("--config")
            .arg(&agent_config),
        dir.join("agent.log"),
    );

    // The WAN address in the router's retained state.
    let stored = wait_for(
        "the router's state with its WAN address",
        &mut [&mut controller_proc, &mut agent_proc],
        || {
            query_one(
                &db,
                "SELECT public_ip FROM cpe_state WHERE cpe_id = ?1",
                &cpe_id,
            )
        },
    );
    assert_eq!(stored, WAN_IP);
    let (status, cpe) = http(&lab, "GET", &format!("/api/cpes/{cpe_id}"), "");
    assert_eq!(status, 200, "{cpe}");
    assert_eq!(cpe["cpe"]["public_ip"], WAN_IP);

    // A mail connection from the LAN host; the translation the server saw reaches the log.
    let client = connect(&lab);
    let seen = peers.recv_timeout(WAIT).unwrap();
    let logged = wait_for(
        "the connection with its translation in the controller's log",
        &mut [&mut controller_proc, &mut agent_proc],
        || {
            query_one(
                &db,
                "SELECT nat_ip || ':' || nat_port || ' ' || mac || ' ' || at_ms FROM connections
                 WHERE cpe_id = ?1 AND nat_port IS NOT NULL",
                &cpe_id,
            )
        },
    );
    drop(client);
    let mut parts = logged.split(' ');
    assert_eq!(parts.next(), Some(seen.to_string().as_str()), "{logged}");
    assert_eq!(parts.next(), Some(LAN_MAC));
    let at_ms: u64 = parts.next().unwrap().parse().unwrap();

    let (status, report) = http(
        &lab,
        "POST",
        "/api/abuse",
        &format!(
            r#"{{"public_ip":"{}","source_port":{},"time":{}}}"#,
            seen.ip(),
            seen.port(),
            at_ms + 2_000
        ),
    );
    assert_eq!(status, 201, "{report}");
    assert_eq!(report["answer"]["confidence"], "exact", "{report}");
    assert_eq!(report["answer"]["cpe_id"], cpe_id.as_str());
    assert_eq!(report["answer"]["mac"], LAN_MAC);
    assert_eq!(report["answer"]["evidence"][0]["nat_port"], seen.port());
}
