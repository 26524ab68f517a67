//! The processes an end-to-end test starts (controller, agent): each logs to its own file,
//! is killed when the test ends however it ends, and every wait fails early, with the logs,
//! when one of them died.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::mqtt::terminate;

/// A child process with its log file (stdout and stderr), killed on drop unless stopped.
pub struct Proc {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with `RUST_LOG=info`, its output in `log`.
    pub fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = file
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot share {}: {e}", log.display()));
        // The agent logs info on stdout and warnings on stderr (procd's two streams).
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(file)
            .stderr(err)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name,
            child: Some(child),
            log,
        }
    }

    /// Its log so far, headed by its name.
    pub fn log(&self) -> String {
        format!(
            "--- {} log ---\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Fails the test when the process has already exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let exited = child
                .try_wait()
                .unwrap_or_else(|e| panic!("cannot check {}: {e}", self.name));
            if let Some(status) = exited {
                panic!("{} exited early ({status})\n{}", self.name, self.log());
            }
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits (at most 10 s, then SIGKILL); its exit status, unless it was
    /// stopped already.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        terminate(&mut child).unwrap_or_else(|e| panic!("cannot stop {}: {e}", self.name));
        Some(
            child
                .wait()
                .unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.name)),
        )
    }

    /// [`Proc::terminate`], failing the test unless it exits cleanly.
    pub fn stop(&mut self) {
        if let Some(status) = self.terminate() {
            assert!(
                status.success(),
                "{} exited with {status}\n{}",
                self.name,
                self.log()
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 100 ms until it gives a value; fails with the processes' logs when a
/// process exits first or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    procs: &mut [&mut Proc],
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        for p in procs.iter_mut() {
            p.assert_running();
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.log()).collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`wait_for`] a condition.
pub fn wait_until_true(
    what: &str,
    timeout: Duration,
    procs: &mut [&mut Proc],
    mut check: impl FnMut() -> bool,
) {
    wait_for(what, timeout, procs, || check().then_some(()));
}

/// Runs a command to completion, failing the test with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The value after `label` on a line of `text` (`cpe_id: cpe-…`).
pub fn field(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {label:?} in {text:?}"))
}
