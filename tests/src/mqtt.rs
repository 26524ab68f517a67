//! Real MQTT peers for the `mqtt_*` end-to-end tests.
//!
//! - [`Mosquitto`]: the Debian `mosquitto` broker started by the test itself on 127.0.0.1,
//!   on an ephemeral port, with a password file made by `mosquitto_passwd` and the ACL of
//!   `deploy/mosquitto/acl` (CPEs write only under `smtpguard/v1/cpe/<their user>/`).
//! - [`controller_binary`]: the `smtpguard-controller` executable. The tests crate cannot
//!   use `CARGO_BIN_EXE_*` for another package's binary, so it runs
//!   `cargo build -p smtpguard-controller --bin smtpguard-controller` (a no-op when up to
//!   date) and takes the file from the same target directory as the running test.
//! - [`agent_binary`]: the `smtpguard-agent` executable, found and built the same way.
//! - [`wait_until`]: bounded polling.

pub use smtpguard_common::now_ms;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use smtpguard_protocol::{Action, Alert, DeviceReport, MacAddr, Observed, Verdict};

/// An unused loopback TCP port.
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
///
/// # Errors
/// When the time runs out, naming `what`.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// The ACL shipped in `deploy/mosquitto/acl`.
pub fn deploy_acl() -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto/acl");
    std::fs::read_to_string(&path).with_context(|| path.display().to_string())
}

/// A mosquitto process owned by the test.
#[derive(Debug)]
pub struct Mosquitto {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// Writes a configuration (listener on 127.0.0.1:`port`, no anonymous access, password
    /// file with `users`, the deploy ACL, persistence in `dir`) and starts mosquitto.
    ///
    /// # Errors
    /// When mosquitto or mosquitto_passwd is missing or the broker does not come up.
    pub fn start(dir: &Path, port: u16, users: &[(&str, &str)]) -> anyhow::Result<Mosquitto> {
        std::fs::create_dir_all(dir)?;
        let passwd = dir.join("passwd");
        let _ = std::fs::remove_file(&passwd);
        std::fs::File::create(&passwd)?;
        for (user, pass) in users {
            let status = Command::new("mosquitto_passwd")
                .arg("-b")
                .arg(&passwd)
                .arg(user)
                .arg(pass)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("running mosquitto_passwd (install the Debian package `mosquitto`)")?;
            if !status.success() {
                bail!("mosquitto_passwd failed for {user}");
            }
        }
        std::fs::write(dir.join("acl"), deploy_acl()?)?;
        let mut conf = std::fs::File::create(dir.join("mosquitto.conf"))?;
        write!(
            conf,
            "listener {port} 127.0.0.1\n\
             allow_anonymous false\n\
             password_file {dir}/passwd\n\
             acl_file {dir}/acl\n\
             persistence true\n\
             persistence_location {dir}/\n\
             autosave_interval 1\n\
             max_queued_messages 0\n\
             max_inflight_messages 200\n\
             max_packet_size 300000\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n\
             log_type subscribe\n\
             log_type unsubscribe\n\
             user root\n",
            dir = dir.display()
        )?;
        let mut m = Mosquitto {
            port,
            dir: dir.to_owned(),
            child: None,
        };
        m.spawn()?;
        Ok(m)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mosquitto (install the Debian package `mosquitto`)")?;
        self.child = Some(child);
        let port = self.port;
        wait_until(Duration::from_secs(10), "mosquitto to listen", || {
            port_open(port)
        })
    }

    /// Stops it gracefully (SIGTERM: it saves its persistence file) and waits for it.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child)?;
        }
        Ok(())
    }

    /// Stops and starts it again on the same port with the same state.
    ///
    /// # Errors
    /// As [`Mosquitto::stop`] and [`Mosquitto::start`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// Waits until some client subscribed to `filter` (the broker logs subscriptions).
    ///
    /// # Errors
    /// When nobody subscribes within `timeout`.
    pub fn wait_for_subscription(&self, filter: &str, timeout: Duration) -> anyhow::Result<()> {
        wait_until(timeout, &format!("a subscription to {filter}"), || {
            self.log().contains(filter)
        })
    }

    /// Where the broker logs.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("mosquitto.log")
    }

    /// The broker's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends SIGTERM to a child process and waits (at most 10 s, then SIGKILL).
///
/// # Errors
/// When `kill` cannot be run.
pub fn terminate(child: &mut Child) -> anyhow::Result<()> {
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// The `smtpguard-controller` binary, built if needed (see the module docs).
///
/// # Errors
/// When the build fails or the file is not where cargo puts it.
pub fn controller_binary() -> anyhow::Result<PathBuf> {
    workspace_binary("smtpguard-controller", "smtpguard-controller")
}

/// Runs `smtpguard-controller --config CONFIG ARGS...` to completion and returns what it
/// printed; fails the test with its stderr when it fails.
pub fn run_controller(config: &Path, args: &[&str]) -> String {
    let binary = controller_binary().unwrap_or_else(|e| panic!("controller binary: {e}"));
    let out = Command::new(binary)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running the controller {args:?}: {e}"));
    assert!(
        out.status.success(),
        "controller {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `smtpguard-agent` binary, built if needed, the same way as [`controller_binary`].
///
/// # Errors
/// When the build fails or the file is not where cargo puts it.
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    workspace_binary("smtpguard-agent", "smtpguard-agent")
}

/// The `smtpguard-demo` binary (tools crate), built if needed, the same way.
///
/// # Errors
/// When the build fails or the file is not where cargo puts it.
pub fn demo_binary() -> anyhow::Result<PathBuf> {
    workspace_binary("smtpguard-tools", "smtpguard-demo")
}

/// The `smtpguard-loadgen` binary (tools crate), built if needed, the same way.
///
/// # Errors
/// When the build fails or the file is not where cargo puts it.
pub fn loadgen_binary() -> anyhow::Result<PathBuf> {
    workspace_binary("smtpguard-tools", "smtpguard-loadgen")
}

/// Builds `bin` of workspace package `package` into the running test's target directory
/// and profile (a no-op when up to date) and returns its path.
fn workspace_binary(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target directory")?
        .to_owned();
    let target_dir = profile_dir
        .parent()
        .context("no target directory")?
        .to_owned();
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "-p", package, "--bin", bin])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().context("running cargo build")?;
    if !status.success() {
        bail!("building {package} failed");
    }
    let path = profile_dir.join(bin);
    if !path.exists() {
        bail!("{} not found after the build", path.display());
    }
    Ok(path)
}

/// The broker password in the output of `smtpguard-controller cpe add` or
/// `cpe rotate-password` (the line `password = "..."`).
pub fn printed_password(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let v = l.trim().strip_prefix("password = ")?;
        Some(v.trim_matches('"').to_string())
    })
}

/// Alert number `n` of a test run: an infected device whose MAC and evidence carry `n`,
/// so stored alerts can be counted and told apart.
pub fn alert(n: u32) -> Alert {
    Alert {
        device: DeviceReport {
            mac: MacAddr([2, 0, 0, 0, (n >> 8) as u8, n as u8]),
            ips: vec![],
            hostname: None,
            vendor: None,
            verdict: Verdict::Infected,
            score: 0.9,
            action: Action::Block,
            action_until_ms: None,
            counters: Default::default(),
            evidence: vec![format!("alert #{n}")],
        },
        previous: Verdict::Clean,
        at_ms: now_ms(),
        observed: Observed::default(),
    }
}

/// Polls `eventloop` until the broker answers its login (at most 10 s): `Ok(())` for an
/// accepted ConnAck, `Err(why)` for a refusal (the return code), a dropped connection or no
/// answer.
pub async fn connack(eventloop: &mut rumqttc::EventLoop) -> Result<(), String> {
    use rumqttc::{ConnectReturnCode, Event, Packet};
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return if ack.code == ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(format!("{:?}", ack.code))
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no answer".into()))
}
