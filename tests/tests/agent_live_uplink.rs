//! The live agent's verdicts reach the controller over MQTT, end to end with the real
//! binaries: `smtpguard-controller serve` (embedded broker on loopback), a router key made
//! by `smtpguard-agent keygen` and enrolled with `smtpguard-controller cpe add`, and
//! `smtpguard-agent run` capturing on the host end of a veth pair whose other end sits in a
//! network namespace the test creates. From that namespace a "spam bot" knocks on port 25
//! of many mail servers in distinct /24s; the test then checks the controller's database as
//! an operator would: an alert for the bot's MAC from this router, telemetry from it, and,
//! after the agent is stopped with SIGTERM (exit 0), the router shown offline.
//!
//! Needs root, iproute2 and netcat-openbsd (CI runs as root and installs them); it fails,
//! never skips, without them. The host forwards nothing from the veth (per-interface
//! `forwarding = 0`), so the bot's SYNs never leave the machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smtpguard_protocol::MacAddr;
use smtpguard_tests::mqtt::{agent_binary, controller_binary, free_port, port_open};
use smtpguard_tests::process::{field, run, wait_until_true, Proc};

/// Distinct mail servers the bot tries, one per /24: above the default policy's
/// `fanout_networks` (10) and `fanout_servers` (20), and the default `syn_storm` (50).
const TARGETS: u8 = 50;
/// Longest wait for anything the controller should store.
const STORE_WAIT: Duration = Duration::from_secs(60);

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// A namespace holding the "household device" end of a veth pair whose other end stays in
/// the root namespace for the agent to capture on. Both are deleted on drop.
struct Household {
    ns: String,
    host_if: String,
    device_mac: MacAddr,
}

impl Household {
    fn create() -> Household {
        let id = std::process::id();
        // A locally administered MAC and a /24 that differ per run.
        let device_mac = MacAddr([
            0x02,
            0x5b,
            0x10,
            (id >> 16) as u8,
            (id >> 8) as u8,
            id as u8,
        ]);
        let net = format!("10.{}.{}", 200 + (id % 50), (id >> 8) % 250);
        let h = Household {
            ns: format!("sglive-{id}"),
            host_if: format!("sgl{id}h"),
            device_mac,
        };
        let dev_if = format!("sgl{id}d");
        let st = Command::new("ip").args(["netns", "add", &h.ns]).status();
        assert!(
            matches!(st, Ok(s) if s.success()),
            "cannot create network namespace {}: this test needs root and iproute2 ({st:?})",
            h.ns
        );
        ip(&[
            "link", "add", &h.host_if, "type", "veth", "peer", "name", &dev_if, "netns", &h.ns,
        ]);
        // Nothing the bot sends is forwarded by the host: it only has to be seen.
        run(Command::new("sysctl")
            .args(["-qw", &format!("net.ipv4.conf.{}.forwarding=0", h.host_if)]));
        ip(&["addr", "add", &format!("{net}.1/24"), "dev", &h.host_if]);
        ip(&["link", "set", &h.host_if, "up"]);
        ip(&[
            "-n",
            &h.ns,
            "link",
            "set",
            &dev_if,
            "address",
            &device_mac.to_string(),
        ]);
        ip(&[
            "-n",
            &h.ns,
            "addr",
            "add",
            &format!("{net}.2/24"),
            "dev",
            &dev_if,
        ]);
        ip(&["-n", &h.ns, "link", "set", "lo", "up"]);
        ip(&["-n", &h.ns, "link", "set", &dev_if, "up"]);
        ip(&[
            "-n",
            &h.ns,
            "route",
            "add",
            "default",
            "via",
            &format!("{net}.1"),
        ]);
        h
    }

    /// The bot: one port-25 connection attempt to each of [`TARGETS`] servers in distinct
    /// /24s, all at once, each giving up after a second.
    fn spam_burst(&self) {
        let script = format!(
            "for i in $(seq 1 {TARGETS}); do nc -z -w1 198.18.$i.1 25 & done; wait; exit 0"
        );
        run(Command::new("timeout")
            .args(["30", "ip", "netns", "exec", &self.ns, "sh", "-c", &script]));
    }
}

impl Drop for Household {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `query` (one row, one column) against the controller's database; `None` while the
/// database or the row does not exist yet.
fn query_one<T: rusqlite::types::FromSql>(
    db: &Path,
    query: &str,
    params: impl rusqlite::Params,
) -> Option<T> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    conn.busy_timeout(Duration::from_secs(2)).ok()?;
    conn.query_row(query, params, |r| r.get(0)).ok()
}

/// Polls until `check` holds, failing early with the processes' logs when one died.
fn wait_for(what: &str, procs: &mut [&mut Proc], check: impl FnMut() -> bool) {
    wait_until_true(what, STORE_WAIT, procs, check);
}

#[test]
fn live_agent_alerts_and_telemetry_reach_the_controller_and_it_goes_offline_on_stop() {
    let started = Instant::now();
    let controller_bin = controller_binary().unwrap();
    let agent_bin = agent_binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    // The controller: embedded broker on loopback, web off, its policy key.
    let broker_port = free_port().unwrap();
    let db = dir.join("controller.db");
    let controller_config = dir.join("controller.toml");
    std::fs::write(
        &controller_config,
        format!(
            "db_path = \"{db}\"\npolicy_key_path = \"{key}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\n\
             [broker]\nembedded_listen = \"127.0.0.1:{broker_port}\"\n\
             password = \"controller-secret\"\nclient_id = \"controller-liveup\"\n\n\
             [web]\nenabled = false\n",
            db = db.display(),
            key = dir.join("policy.key").display(),
            http = free_port().unwrap(),
        ),
    )
    .unwrap();
    let controller = |args: &[&str]| -> String {
        let out = run(Command::new(&controller_bin)
            .arg("--config")
            .arg(&controller_config)
            .args(args));
        String::from_utf8(out.stdout).unwrap()
    };
    let controller_public_key = controller(&["keygen"]).trim().to_string();
    assert!(
        controller_public_key.starts_with("ed25519:"),
        "{controller_public_key}"
    );

    // The router's key, made by the agent and enrolled as an operator would.
    let state_dir = dir.join("agent-state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let out = run(Command::new(&agent_bin)
        .arg("keygen")
        .arg("--key")
        .arg(state_dir.join("agent.key")));
    let printed = String::from_utf8(out.stdout).unwrap();
    let cpe_id = field(&printed, "cpe_id:");
    let agent_public_key = field(&printed, "public_key:");
    // An operator who lost that output reads the same identity back from the key.
    let shown = run(Command::new(&agent_bin)
        .args(["keygen", "--show", "--key"])
        .arg(state_dir.join("agent.key")));
    assert_eq!(String::from_utf8(shown.stdout).unwrap(), printed);
    let enrolled = controller(&["cpe", "add", &cpe_id, &agent_public_key]);
    let broker_password = smtpguard_tests::mqtt::printed_password(&enrolled).unwrap();

    let mut controller_proc = Proc::spawn(
        "controller",
        Command::new(&controller_bin)
            .arg("--config")
            .arg(&controller_config)
            .arg("serve"),
        dir.join("controller.log"),
    );
    wait_for(
        "the embedded broker to listen",
        &mut [&mut controller_proc],
        || port_open(broker_port),
    );

    // The household and the agent on its router side.
    let household = Household::create();
    let policy_file = dir.join("policy.toml");
    std::fs::write(&policy_file, "telemetry_interval_secs = 5\n").unwrap();
    let agent_config = dir.join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "state_dir = \"{state}\"\npolicy_file = \"{policy}\"\n\n\
             [capture]\ninterface = \"{iface}\"\n\n\
             [enforce]\nbackend = \"none\"\n\n\
             [uplink]\nenabled = true\nbroker_url = \"mqtt://127.0.0.1:{broker_port}\"\n\
             username = \"{cpe_id}\"\npassword = \"{broker_password}\"\n\
             controller_public_key = \"{controller_public_key}\"\n",
            state = state_dir.display(),
            policy = policy_file.display(),
            iface = household.host_if,
        ),
    )
    .unwrap();
    let mut agent_proc = Proc::spawn(
        "agent",
        Command::new(&agent_bin)
            .arg("run")
            .arg("--config")
            .arg(&agent_config),
        dir.join("agent.log"),
    );
    // The agent is online once the controller has its state message.
    let online = "SELECT status FROM cpe_state WHERE cpe_id = ?1";
    wait_for(
        "the agent to come online",
        &mut [&mut agent_proc, &mut controller_proc],
        || query_one::<String>(&db, online, [&cpe_id]).as_deref() == Some("online"),
    );

    // Online means the uplink is up; the capture opens a moment later. The agent writes its
    // status file once it captures: wait for that before the bot sends anything.
    let status_file = state_dir.join("status.json");
    let agent_pid = agent_proc.pid().unwrap();
    wait_for(
        "the agent to capture (its status file)",
        &mut [&mut agent_proc, &mut controller_proc],
        || {
            std::fs::read_to_string(&status_file)
                .is_ok_and(|s| s.contains(&format!("\"pid\": {agent_pid}")))
        },
    );
    household.spam_burst();

    let mac = household.device_mac.to_string();
    let alert = "SELECT verdict FROM alerts WHERE cpe_id = ?1 AND mac = ?2 \
                 AND verdict IN ('suspicious', 'infected') ORDER BY id LIMIT 1";
    wait_for(
        "an alert for the bot from this router",
        &mut [&mut agent_proc, &mut controller_proc],
        || query_one::<String>(&db, alert, [&cpe_id, &mac]).is_some(),
    );
    let telemetry = "SELECT COUNT(*) FROM telemetry WHERE cpe_id = ?1";
    wait_for(
        "telemetry from this router",
        &mut [&mut agent_proc, &mut controller_proc],
        || query_one::<i64>(&db, telemetry, [&cpe_id]).is_some_and(|n| n >= 1),
    );
    // Nothing was stored under any other router's name.
    let others = "SELECT COUNT(*) FROM alerts WHERE cpe_id != ?1";
    assert_eq!(query_one::<i64>(&db, others, [&cpe_id]), Some(0));

    // A clean stop: exit code 0, and the router shows offline.
    agent_proc.stop();
    wait_for(
        "the router to show offline",
        &mut [&mut controller_proc],
        || query_one::<String>(&db, online, [&cpe_id]).as_deref() == Some("offline"),
    );

    controller_proc.terminate();
    eprintln!("end to end in {:.1} s", started.elapsed().as_secs_f64());
}
