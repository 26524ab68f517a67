//! A throwaway PostgreSQL cluster for tests: Debian's `postgresql` package, one cluster per
//! test binary, one fresh database per test.
//!
//! # Layout
//! - [`database`]: the URL of a new, empty database on the cluster of this test binary,
//!   starting the cluster on first use. Tests run in parallel on it, each in its own database.
//! - [`cluster`]: that cluster (port, binaries), for tests that need more than a URL.
//!
//! # Life of the cluster
//! The first call runs `initdb` in a new temporary directory and `pg_ctl start` on a free
//! loopback port, with the Unix socket in that directory too, so nothing of the machine's own
//! PostgreSQL (if any) is touched. `initdb` refuses to run as root, so as root (CI) the
//! directory is given to the `postgres` user and every server command runs through
//! `runuser -u postgres --`; otherwise it all runs as the current user. `pg_ctl start -w`
//! returns once the server accepts connections, and `pg_isready` confirms it, both bounded.
//!
//! Two things stop it: an `atexit` handler stops the cluster (`pg_ctl stop -m fast -w`) and
//! removes the directory when the test binary exits; and a watchdog process, which waits for
//! end-of-file on a pipe whose only writer is the test binary, does the same if the binary was
//! killed (the pipe closes with the process, however it ends). No postmaster outlives its
//! test run.
//!
//! # Missing PostgreSQL
//! A test that asks for a database on a machine without PostgreSQL fails, with a message that
//! says what to install (`scripts/setup.sh` installs it); it is never skipped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How long `pg_ctl` may take to start or stop the server.
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(60);

/// How many random ports are tried when the one picked was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// The user that owns the cluster when the tests run as root.
const SERVER_USER: &str = "postgres";

/// A running throwaway cluster.
#[derive(Debug)]
pub struct Cluster {
    bindir: PathBuf,
    /// The temporary directory: `data/` (the cluster), the socket and `server.log`.
    dir: PathBuf,
    port: u16,
    /// Whether server commands run as [`SERVER_USER`] (we are root).
    as_server_user: bool,
    next_database: AtomicU64,
    /// The watchdog and the write end of its pipe; held open until the process ends.
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The cluster of this test binary, started on first use.
///
/// # Panics
/// When PostgreSQL is not installed or the cluster cannot start: the test fails with the
/// reason (and what to install).
pub fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(start) {
        Ok(c) => c,
        Err(e) => panic!("test PostgreSQL cluster: {e}"),
    }
}

/// The URL (`postgres://postgres@127.0.0.1:PORT/NAME`) of a new, empty database on this test
/// binary's cluster.
///
/// # Panics
/// As [`cluster`], and when the database cannot be created.
pub fn database() -> String {
    let c = cluster();
    match c.create_database() {
        Ok(url) => url,
        Err(e) => panic!("test PostgreSQL cluster: {e}"),
    }
}

impl Cluster {
    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server binaries in use.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The URL of database `name` as the superuser `postgres` (trust authentication).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{SERVER_USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    ///
    /// # Errors
    /// `createdb`'s message when it fails.
    pub fn create_database(&self) -> Result<String, String> {
        let n = self.next_database.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{n}");
        let out = Command::new(self.bindir.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", SERVER_USER, &name])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running createdb: {e}"))?;
        check("createdb", &out)?;
        Ok(self.url(&name))
    }

    fn server_command(&self, program: &str) -> Command {
        server_command(&self.bindir, self.as_server_user, program)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Stops the server (fast shutdown, waiting for it) and removes the directory.
    fn stop(&self) {
        let _ = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "-t"])
            .arg(PG_CTL_TIMEOUT.as_secs().to_string())
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `program` from `bindir`, run as the server user when we are root.
fn server_command(bindir: &Path, as_server_user: bool, program: &str) -> Command {
    let path = bindir.join(program);
    if as_server_user {
        let mut c = Command::new("runuser");
        c.args(["-u", SERVER_USER, "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn check(what: &str, out: &Output) -> Result<(), String> {
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: `$SMTPGUARD_PG_BINDIR`, then
/// `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin` (Debian's layout).
fn find_bindir() -> Result<PathBuf, String> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("SMTPGUARD_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if has_server(&dir) {
            return Ok(dir);
        }
        return Err(format!(
            "SMTPGUARD_PG_BINDIR={} has no initdb and pg_ctl",
            dir.display()
        ));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's \
         `postgresql` package (scripts/setup.sh does), or set SMTPGUARD_PG_BINDIR"
            .to_string()
    })
}

/// The uid and gid of `user`.
fn user_ids(user: &str) -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .map_err(|e| format!("running id: {e}"))?;
        check(&format!("id {flag} {user}"), &out)?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|e| format!("id {flag} {user}: {e}"))
    };
    Ok((id("-u")?, id("-g")?))
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

fn start() -> Result<Cluster, String> {
    let bindir = find_bindir()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let as_server_user = unsafe { libc::geteuid() } == 0;
    let dir = tempfile::Builder::new()
        .prefix("smtpguard-pg-")
        .tempdir()
        .map_err(|e| format!("making the cluster's directory: {e}"))?
        .keep();
    if as_server_user {
        let (uid, gid) = user_ids(SERVER_USER).map_err(|e| {
            format!("running as root needs the `{SERVER_USER}` user of Debian's postgresql package: {e}")
        })?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|e| format!("giving {} to {SERVER_USER}: {e}", dir.display()))?;
    }
    let mut cluster = Cluster {
        bindir,
        dir,
        port: 0,
        as_server_user,
        next_database: AtomicU64::new(0),
        watchdog: Mutex::new(None),
    };
    // From here on the directory (and soon the server) exist: the watchdog owns their end.
    if let Err(e) = cluster.spawn_watchdog() {
        cluster.stop();
        return Err(e);
    }
    match cluster.init_and_start() {
        Ok(()) => {
            // SAFETY: `stop_at_exit` is an `extern "C" fn()` that does not unwind out.
            unsafe { libc::atexit(stop_at_exit) };
            Ok(cluster)
        }
        Err(e) => {
            cluster.stop();
            Err(e)
        }
    }
}

extern "C" fn stop_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(Ok(cluster)) = CLUSTER.get() {
            cluster.stop();
        }
    });
}

impl Cluster {
    /// Starts the watchdog: a shell in its own process group (a Ctrl-C to the test run does
    /// not kill it before it has cleaned up) that reads its stdin to the end, which comes
    /// when this process ends, then stops the server and removes the directory.
    fn spawn_watchdog(&self) -> Result<(), String> {
        use std::os::unix::process::CommandExt as _;
        let pg_ctl = self.bindir.join("pg_ctl");
        let script = r#"cat >/dev/null
if [ "$AS_SERVER_USER" = 1 ]; then
    runuser -u postgres -- "$PG_CTL" -D "$DIR/data" -m immediate stop
else
    "$PG_CTL" -D "$DIR/data" -m immediate stop
fi
rm -rf "$DIR""#;
        let mut child = Command::new("sh")
            .args(["-c", script])
            .env("PG_CTL", pg_ctl)
            .env("DIR", &self.dir)
            .env(
                "AS_SERVER_USER",
                if self.as_server_user { "1" } else { "0" },
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting the cluster's watchdog: {e}"))?;
        let Some(stdin) = child.stdin.take() else {
            return Err("the watchdog has no stdin pipe".into());
        };
        if let Ok(mut w) = self.watchdog.lock() {
            *w = Some((child, stdin));
        }
        Ok(())
    }

    fn init_and_start(&mut self) -> Result<(), String> {
        let out = self
            .server_command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", SERVER_USER, "-A", "trust", "-E", "UTF8", "--locale=C"])
            // No fsync of the new files: a throwaway cluster.
            .arg("--no-sync")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running initdb: {e}"))?;
        check("initdb", &out)?;
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
                self.dir.display()
            );
            let out = self
                .server_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t"])
                .arg(PG_CTL_TIMEOUT.as_secs().to_string())
                .args(["-o", &options, "start"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("running pg_ctl start: {e}"))?;
            match check("pg_ctl start", &out) {
                Ok(()) => {
                    self.port = port;
                    return self.wait_ready();
                }
                Err(e) => {
                    let log =
                        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                    last_error = format!("{e}\nserver log:\n{log}");
                    // Another process took the port between our probe and the server's
                    // bind: try another one. Anything else will not get better.
                    if !log.contains("could not bind") && !log.contains("already in use") {
                        break;
                    }
                }
            }
        }
        Err(last_error)
    }

    /// `pg_ctl -w` already waited for the server to accept connections; `pg_isready`
    /// confirms it over TCP, bounded by its own timeout.
    fn wait_ready(&self) -> Result<(), String> {
        let out = Command::new(self.bindir.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U"])
            .arg(SERVER_USER)
            .args(["-t", &PG_CTL_TIMEOUT.as_secs().to_string()])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running pg_isready: {e}"))?;
        check("pg_isready", &out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_test_gets_its_own_empty_database_on_one_running_cluster() {
        let a = database();
        let b = database();
        assert_ne!(a, b);
        let c = cluster();
        assert!(a.starts_with(&format!("postgres://postgres@127.0.0.1:{}/", c.port())));
        let psql = |url: &str, sql: &str| {
            let out = Command::new(c.bindir().join("psql"))
                .args([url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        psql(&a, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
        assert_eq!(psql(&a, "SELECT count(*) FROM t"), "1");
        // The other database does not see it.
        assert_eq!(
            psql(&b, "SELECT count(*) FROM pg_tables WHERE tablename = 't'"),
            "0"
        );
        // The server lives in our temporary directory, not in the machine's cluster.
        let data = psql(&a, "SHOW data_directory");
        assert!(data.starts_with(&c.dir.display().to_string()), "{data}");
    }
}
