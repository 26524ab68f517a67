//! `smtpguard-loadgen`: N simulated agents — real MQTT connections on loopback, real
//! signatures, each logging in with its own broker password — against R controller
//! replicas (this binary again, in child processes) that share one database. With the
//! embedded broker (one replica: the broker lives in its process; logins checked, topic
//! ACLs on), or against mosquitto with the shipped layout (`deploy/mosquitto/`: per-router
//! password file as `cpe export-mosquitto` makes it, the shipped ACL, client id = user name
//! on the routers' listener, the controllers on their own listener, splitting the ingest
//! through `$share/controllers/...` when there are several).
//!
//! A run:
//! 1. enrols the fleet, starts the broker and the replicas, waits until a probe message is
//!    stored (the ingest's session exists, so nothing published later is dropped);
//! 2. connects the agents, signs a fleet policy and times until every agent's ack is stored
//!    (`policy_ack_s`);
//! 3. for `--duration-secs`, each agent sends telemetry every `--telemetry-secs` (a window
//!    with `--devices` devices and the household's public address) and about
//!    `--alert-percent` of them one alert each at a random time, all QoS 1; a PUBACK makes a
//!    message `expected`. Every alert is followed through the operator API until its device
//!    shows the verdict (`alert_to_noc_p99_ms`; the slowest are printed with when they
//!    were sent, to tell a kill's share from a backlog). With `--kill-replica`, replica 0 is
//!    SIGKILLed at mid-run and started again `--restart-after-secs` later with the same
//!    client id, as systemd would;
//! 4. after the agents stop, waits (bounded) until the store has caught up, then counts what
//!    was stored per `(cpe_id, seq)`, what is missing (`lost`) and rows stored twice
//!    (`duplicates`), and fetches the NOC fleet page 20 times as a signed-in operator.
//!
//! The last line is machine-readable:
//! `loadgen: agents=N replicas=R database=sqlite stored=X expected=Y lost=Z duplicates=U
//! policy_ack_s=T alert_to_noc_p99_ms=A fleet_page_p95_ms=P fleet_page_kb=K` (one line).
//!
//! Every agent costs one descriptor of this process and one of the broker's, so the
//! open-file limit caps `--agents` at about that limit. Bounded: at most 20,000 agents,
//! everything on 127.0.0.1, and the whole run ends after `--timeout-secs`. Raises its own
//! open-file limit to the hard limit.
//!
//! ```sh
//! cargo run --release -p smtpguard-tools --bin smtpguard-loadgen -- --agents 2000 \
//!     --replicas 2 --mosquitto --telemetry-secs 10 --duration-secs 60 --kill-replica
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rand::Rng;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use smtpguard_common::now_ms;
use smtpguard_controller::config::{redact_url as redact, Config, DatabaseUrl};
use smtpguard_controller::db_params;
use smtpguard_controller::policy::{self, Target};
use smtpguard_controller::store::db::{DbError, Sql as _};
use smtpguard_controller::store::Store;
use smtpguard_controller::{registry, serve};
use smtpguard_protocol::{
    keys, seal, topic, verify, AckOutcome, Action, AgentStats, Alert, Body, DeviceCounters,
    DeviceReport, Freshness, KeyStatus, MacAddr, Observed, Policy, PolicyAck, PolicyScope, State,
    Status, Telemetry, Topic, Verdict,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The ACL shipped for mosquitto.
const SHIPPED_ACL: &str = include_str!("../../../deploy/mosquitto/acl");

/// Fleet page fetches at the end of a run.
const PAGE_FETCHES: usize = 20;
/// How often an alert's device is looked up through the API until it shows the verdict.
const ALERT_POLL: Duration = Duration::from_millis(50);
/// Most API look-ups in flight at once.
const ALERT_POLLERS: usize = 32;
/// How long an alert may take to reach the API before it counts as not shown.
const ALERT_GIVE_UP: Duration = Duration::from_secs(60);
/// How long agents may wait for their last PUBACKs after they stop sending.
const DRAIN: Duration = Duration::from_secs(30);
/// How long a controller replica may take to serve HTTP.
const REPLICA_START: Duration = Duration::from_secs(60);
/// How long the store may take to catch up once nothing is in flight.
const CATCH_UP: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(
    name = "smtpguard-loadgen",
    about = "simulated agents against controller replicas sharing one database"
)]
struct Args {
    /// Number of simulated agents (1-20000).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Controller replicas sharing the database; more than one needs `--mosquitto` (the
    /// embedded broker lives in one controller process).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// The database: `postgres://user@host:port/db`, or a SQLite file (`/path/x.db` or
    /// `sqlite:/path/x.db`; a fresh one in a temporary directory when not given).
    #[arg(long)]
    database: Option<String>,
    /// Telemetry period of every agent, in seconds.
    #[arg(long, default_value_t = 10)]
    telemetry_secs: u64,
    /// How long the agents send telemetry and alerts once connected, in seconds.
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    /// SIGKILL replica 0 at mid-run and start it again with the same client id.
    #[arg(long)]
    kill_replica: bool,
    /// With `--kill-replica`: how long the killed replica stays down before it is started
    /// again (systemd's `RestartSec=`). The broker keeps the
    /// down replica's share of the fleet's messages in its session meanwhile, so this is
    /// what those messages wait. Longer than `--telemetry-secs`, its agents' newer
    /// messages reach the other replicas while its broker session still holds older ones.
    #[arg(long, default_value_t = 1)]
    restart_after_secs: u64,
    /// Devices in each telemetry window (each household's devices: 10,000 agents report
    /// 100,000 devices with the default).
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Share of the agents that send one alert (an infection) during the run, in percent.
    #[arg(long, default_value_t = 5.0)]
    alert_percent: f64,
    /// Give up after this many seconds (the embedded broker's logins take about a minute
    /// for 10,000 agents on two cores: rumqttd scans every retained message per new
    /// subscription).
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// New connections per second while the fleet connects.
    #[arg(long, default_value_t = 2000)]
    connect_rate: u64,
    /// Use a mosquitto the load generator starts itself (loopback only, the shipped ACL,
    /// a password per agent, the controllers on their own listener) instead of the
    /// embedded broker. mosquitto runs in its own process, so the agents' and the broker's
    /// sockets do not share one open-file limit.
    #[arg(long)]
    mosquitto: bool,
    /// Internal: run as controller replica `--replica` of a load run, with this database
    /// (the broker password comes in `SMTPGUARD_LOADGEN_BROKER_PASSWORD`, the operator
    /// token in `SMTPGUARD_OPERATOR_TOKEN`); ends when stdin closes.
    #[arg(long, hide = true)]
    serve_controller: Option<String>,
    /// Internal: the replica's number (its MQTT client id).
    #[arg(long, hide = true, default_value_t = 0)]
    replica: usize,
    /// Internal: the directory of the run (policy key).
    #[arg(long, hide = true)]
    work_dir: Option<PathBuf>,
    /// Internal: the controller child's broker port (embedded) or mosquitto's controller port.
    #[arg(long, hide = true, default_value_t = 0)]
    controller_port: u16,
    /// Internal: the replica's HTTP port.
    #[arg(long, hide = true, default_value_t = 0)]
    http_port: u16,
}

/// The environment variable the controller child reads its broker password from.
const PASSWORD_ENV: &str = "SMTPGUARD_LOADGEN_BROKER_PASSWORD";
/// The environment variable the controller reads the operator token from.
const TOKEN_ENV: &str = "SMTPGUARD_OPERATOR_TOKEN";

/// Where the run's data lives, from `--database`.
#[derive(Debug, Clone, PartialEq)]
enum Database {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by URL.
    Postgres(String),
}

impl Database {
    /// Parses `--database`: a `postgres://` URL, a path or a `sqlite:` URL.
    fn parse(text: &str) -> anyhow::Result<Database> {
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Ok(Database::Postgres(text.to_string()));
        }
        let path = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
            .unwrap_or(text);
        if path.is_empty() || path.contains("://") {
            bail!("--database {text}: expected a SQLite file path or sqlite: URL");
        }
        Ok(Database::Sqlite(PathBuf::from(path)))
    }

    /// The name on the last line.
    fn kind(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }

    /// The URL the controller's `database` setting takes.
    fn url(&self) -> String {
        match self {
            Database::Sqlite(path) => format!("sqlite:{}", path.display()),
            Database::Postgres(url) => url.clone(),
        }
    }

    /// Opens (and migrates) it.
    fn open(&self) -> anyhow::Result<Store> {
        Store::open_url(&self.url())
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", redact(&self.url())))
    }
}

/// The controller's configuration for replica `replica` of a run: database `db`, the
/// policy key in `work_dir`, brokers on loopback `port` (embedded, or mosquitto's
/// controller listener), the web server on `http_port`.
fn controller_config(
    db: &Database,
    work_dir: &Path,
    port: u16,
    http_port: u16,
    password: String,
    args: &Args,
) -> Config {
    let mut config = Config {
        db_path: work_dir.join("controller.db"),
        database: Some(DatabaseUrl::new(db.url())),
        policy_key_path: work_dir.join("policy.key"),
        http_listen: ([127, 0, 0, 1], http_port).into(),
        ..Config::default()
    };
    config.broker.embedded_listen = ([127, 0, 0, 1], port).into();
    config.broker.password = password;
    config.broker.client_id = format!("loadgen-controller-{}", args.replica);
    config.broker.max_connections = args.agents + 100;
    if args.mosquitto {
        config.broker.url = Some(format!("mqtt://127.0.0.1:{port}"));
        // One replica subscribes plainly (see `IngestConfig::shared_subscription`);
        // several split the ingest through the shared group.
        config.ingest.shared_subscription = args.replicas > 1;
    }
    config
}

/// The controller child: `serve` until the parent closes our stdin (or dies).
fn serve_controller(args: &Args, db: &str) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let password = std::env::var(PASSWORD_ENV).context(PASSWORD_ENV)?;
    let work_dir = args.work_dir.clone().context("--work-dir")?;
    let config = controller_config(
        &Database::parse(db)?,
        &work_dir,
        args.controller_port,
        args.http_port,
        password,
        args,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
        let _ = closed_tx.send(());
    });
    let stdin_closed = async move {
        let _ = closed_rx.await;
    };
    runtime.block_on(async { serve::run(config, stdin_closed).await.context("controller") })
}

fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            // Root may raise the hard limit too; everyone else gets the hard limit.
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max.max(65_536),
                rlim_max: lim.rlim_max.max(65_536),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return wanted.rlim_cur;
            }
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            return lim.rlim_cur;
        }
    }
    0
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(1..=20_000).contains(&args.agents) {
        bail!("--agents must be 1-20000");
    }
    if !(1..=16).contains(&args.replicas) {
        bail!("--replicas must be 1-16");
    }
    if args.replicas > 1 && !args.mosquitto {
        bail!("--replicas above 1 needs --mosquitto: the embedded broker lives in one controller process");
    }
    if args.telemetry_secs == 0 {
        bail!("--telemetry-secs must be at least 1");
    }
    if !(0.0..=100.0).contains(&args.alert_percent) {
        bail!("--alert-percent must be 0-100");
    }
    if args.devices > smtpguard_protocol::messages::MAX_DEVICES_PER_TELEMETRY {
        bail!(
            "--devices must be at most {}",
            smtpguard_protocol::messages::MAX_DEVICES_PER_TELEMETRY
        );
    }
    let nofile = raise_nofile();
    if let Some(db) = &args.serve_controller {
        return serve_controller(&args, db);
    }
    let database = match &args.database {
        Some(text) => Some(Database::parse(text)?),
        None => None,
    };
    println!("open-file limit: {nofile}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(args.timeout_secs), run(&args, database))
            .await
            .context("timed out (--timeout-secs)")?
    })
}

/// One controller replica's process and how to start it again.
struct Replica {
    command: std::process::Command,
    child: Option<Child>,
}

impl Replica {
    fn start(&mut self) -> anyhow::Result<()> {
        let mut child = self
            .command
            .spawn()
            .context("starting a controller replica")?;
        self.child = Some(Child(child.stdin.take(), child));
        Ok(())
    }

    /// SIGKILL, as a crash or the OOM killer would.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.0 = None;
            let _ = c.1.kill();
            let _ = c.1.wait();
        }
    }
}

/// What an agent reports when it stops.
struct AgentOutcome {
    cpe_id: String,
    /// Sequence numbers the broker acknowledged (PUBACK).
    acked: Vec<u64>,
}

/// An alert sent, to follow through the API.
struct SentAlert {
    cpe_id: String,
    mac: MacAddr,
    sent: Instant,
}

async fn run(args: &Args, database: Option<Database>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let database = database.unwrap_or_else(|| Database::Sqlite(dir.path().join("loadgen.db")));
    let free_port = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let port = free_port()?;
    let http_ports = (0..args.replicas)
        .map(|_| free_port())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let password = smtpguard_controller::households::new_secret("loadgen_");
    let token = smtpguard_controller::households::new_secret("op_");
    let config = controller_config(&database, dir.path(), port, http_ports[0], password, args);
    let policy_key = keys::generate();
    let controller_pub = policy_key.verifying_key();

    // This run's CPE ids, distinct from earlier runs on the same database.
    let tag: u16 = rand::random();
    let prefix = format!("lg{tag:04x}-");
    let agents_from = format!("{prefix}a");
    let agents_to = format!("{prefix}b");
    let probe_id = format!("{prefix}probe");

    // Enrol the fleet (and the probe) in one transaction, each agent with its own broker
    // password, hashed as `cpe add` hashes it (on four threads).
    let mut agent_keys: Vec<(String, ed25519_dalek::SigningKey, String)> = (0..args.agents)
        .map(|i| {
            let password = smtpguard_controller::households::new_secret("");
            (format!("{agents_from}{i:05}"), keys::generate(), password)
        })
        .collect();
    agent_keys.push((
        probe_id.clone(),
        keys::generate(),
        smtpguard_controller::households::new_secret(""),
    ));
    let hashes: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = agent_keys
            .chunks(agent_keys.len().div_ceil(4).max(1))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(_, _, pw)| registry::hash_password(pw, &rand::random::<[u8; 12]>()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    // The schema migrated once, here, before any replica opens the database.
    let store = blocking(|| database.open())?;
    blocking(|| {
        store.db().transaction(|tx| {
            for ((id, k, _), hash) in agent_keys.iter().zip(&hashes) {
                tx.execute(
                    "INSERT INTO cpes (cpe_id, public_key, enrolled_at_ms, broker_password_hash)
                     VALUES (?1, ?2, 0, ?3)",
                    db_params![id, &keys::public_key_text(&k.verifying_key()), hash],
                )?;
            }
            Ok::<_, DbError>(())
        })
    })?;
    let probe = agent_keys.pop().context("probe")?;
    let mut agent_port = port;
    let _mosquitto = if args.mosquitto {
        // The shipped layout: routers on one listener (their password file, client id =
        // user name), the controllers on another (their password file), the shipped ACL.
        agent_port = free_port()?;
        let d = dir.path();
        std::fs::write(d.join("acl"), SHIPPED_ACL)?;
        std::fs::write(
            d.join("cpes.passwd"),
            blocking(|| registry::mosquitto_password_file(&store))?,
        )?;
        std::fs::write(
            d.join("controller.passwd"),
            format!(
                "{}:{}\n",
                config.broker.username,
                registry::hash_password(&config.broker.password, &rand::random::<[u8; 12]>())
            ),
        )?;
        let conf = d.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings true\n\
                 listener {agent_port} 127.0.0.1\nuse_username_as_clientid true\n\
                 allow_anonymous false\npassword_file {d}/cpes.passwd\nacl_file {d}/acl\n\
                 listener {port} 127.0.0.1\nallow_anonymous false\n\
                 password_file {d}/controller.passwd\nacl_file {d}/acl\n\
                 max_connections -1\nmax_inflight_messages 500\nmax_queued_messages 0\n\
                 max_queued_bytes 536870912\nmax_packet_size 66560\nuser root\n",
                d = d.display()
            ),
        )?;
        Some(Child(
            None,
            std::process::Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("starting mosquitto (is it installed? scripts/setup.sh)")?,
        ))
    } else {
        None
    };
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
        && args.mosquitto
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The controllers in their own processes, so their descriptors and the agents' do not
    // share one open-file limit.
    let mut replicas = Vec::with_capacity(args.replicas);
    for (i, http_port) in http_ports.iter().enumerate() {
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command
            .arg("--serve-controller")
            .arg(database.url())
            .arg("--work-dir")
            .arg(dir.path())
            .arg("--replica")
            .arg(i.to_string())
            .arg("--replicas")
            .arg(args.replicas.to_string())
            .arg("--controller-port")
            .arg(port.to_string())
            .arg("--http-port")
            .arg(http_port.to_string())
            .arg("--agents")
            .arg(args.agents.to_string())
            .env(PASSWORD_ENV, &config.broker.password)
            .env(TOKEN_ENV, &token)
            .stdin(std::process::Stdio::piped());
        if args.mosquitto {
            command.arg("--mosquitto");
        }
        let mut replica = Replica {
            command,
            child: None,
        };
        // One at a time: replicas opening a fresh database together would race on its
        // migrations.
        replica.start()?;
        wait_for_web(i, *http_port).await?;
        replicas.push(replica);
    }
    // The API is read on the last replica (replica 0 is the one killed).
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], http_ports[args.replicas - 1]));
    // Nothing is kept for a topic nobody subscribes to: wait until a probe message is
    // stored, so the ingest's session exists before the agents publish.
    wait_for_ingest(&probe, agent_port, &store).await?;
    println!("{} controller replica(s) ingesting", args.replicas);

    let connected = Arc::new(AtomicUsize::new(0));
    let (go_tx, go_rx) = tokio::sync::watch::channel(None::<Instant>);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (alert_tx, mut alert_rx) = tokio::sync::mpsc::unbounded_channel::<SentAlert>();
    let started = Instant::now();
    let run_length = Duration::from_secs(args.duration_secs);
    let mut rng = rand::thread_rng();
    let alerting =
        ((args.agents as f64 * args.alert_percent / 100.0).round() as usize).min(args.agents);
    let mut alert_agents: HashSet<usize> = HashSet::new();
    while alert_agents.len() < alerting {
        alert_agents.insert(rng.gen_range(0..args.agents));
    }
    // Paced by the clock rather than by a sleep per agent: the timer's 1 ms resolution
    // would otherwise cap the rate at 1,000 a second.
    let rate = args.connect_rate.max(1) as f64;
    let mut handles = Vec::with_capacity(args.agents);
    for (i, (id, key, password)) in agent_keys.into_iter().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let plan = Plan {
            index: i,
            telemetry: Duration::from_secs(args.telemetry_secs),
            first_telemetry: Duration::from_millis(
                rng.gen_range(0..args.telemetry_secs.saturating_mul(1000).max(1)),
            ),
            alert_at: alert_agents.contains(&i).then(|| {
                Duration::from_millis(
                    rng.gen_range(0..args.duration_secs.saturating_mul(1000).max(1)),
                )
            }),
            devices: args.devices,
            tag,
        };
        handles.push(tokio::spawn(agent(
            id,
            key,
            password,
            agent_port,
            controller_pub,
            connected.clone(),
            plan,
            go_rx.clone(),
            stop_rx.clone(),
            alert_tx.clone(),
        )));
    }
    drop(alert_tx);
    let mut last_report = Instant::now();
    while connected.load(Ordering::Relaxed) < args.agents {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            println!(
                "  {} connected after {:.0} s",
                connected.load(Ordering::Relaxed),
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "{} agents connected and subscribed in {:.1} s",
        args.agents,
        started.elapsed().as_secs_f64()
    );
    let run_start = Instant::now();
    let _ = go_tx.send(Some(run_start));

    // Alerts are followed through the API as they come.
    let watcher = {
        let token = token.clone();
        tokio::spawn(async move {
            let gate = Arc::new(tokio::sync::Semaphore::new(ALERT_POLLERS));
            let mut tasks = Vec::new();
            while let Some(sent) = alert_rx.recv().await {
                tasks.push(tokio::spawn(follow_alert(
                    sent,
                    api,
                    token.clone(),
                    gate.clone(),
                )));
            }
            let mut shown = Vec::new();
            let mut missed = 0usize;
            for t in tasks {
                match t.await {
                    Ok(Some(s)) => shown.push(s),
                    _ => missed += 1,
                }
            }
            (shown, missed)
        })
    };

    // One fleet policy; wait until every agent's ack is stored.
    let stored_policy = blocking(|| -> anyhow::Result<_> {
        let mut store = database.open()?;
        Ok(policy::sign(
            &mut store,
            &policy_key,
            Policy {
                rate_limit_per_minute: 5,
                ..Policy::default()
            },
            &Target::Fleet,
            &config.safety_context(),
            now_ms(),
        )?)
    })?;
    let t = Instant::now();
    policy::publish(
        &config.broker,
        "loadgen-noc",
        std::slice::from_ref(&stored_policy),
        Duration::from_secs(30),
    )
    .await?;
    let acked = loop {
        let n: i64 = blocking(|| {
            store.db().query_one(
                "SELECT COUNT(*) FROM policy_acks WHERE version = ?1 AND outcome = 'applied'
                 AND cpe_id >= ?2 AND cpe_id < ?3",
                db_params![stored_policy.version, &agents_from, &agents_to],
            )
        })?;
        if n as usize >= args.agents {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let policy_ack = t.elapsed();
    println!(
        "policy v{} acknowledged by {acked}/{} agents in {:.2} s (acks verified and stored)",
        stored_policy.version,
        args.agents,
        policy_ack.as_secs_f64()
    );

    if args.kill_replica {
        tokio::time::sleep_until((run_start + run_length / 2).into()).await;
        let victim = &mut replicas[0];
        victim.kill();
        println!(
            "replica 0 SIGKILLed at {:.1} s; starting it again in {} s",
            run_start.elapsed().as_secs_f64(),
            args.restart_after_secs
        );
        tokio::time::sleep(Duration::from_secs(args.restart_after_secs)).await;
        victim.start()?;
    }
    tokio::time::sleep_until((run_start + run_length).into()).await;
    let _ = stop_tx.send(true);
    let mut outcomes = Vec::with_capacity(handles.len());
    let drain_until = Instant::now() + DRAIN;
    for h in handles {
        let left = drain_until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, h).await {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => bail!("an agent task failed: {e}"),
            Err(_) => bail!(
                "agents still waiting for PUBACKs {} s after the run",
                DRAIN.as_secs()
            ),
        }
    }
    let expected: usize = outcomes.iter().map(|o| o.acked.len()).sum();
    println!(
        "agents stopped after {:.1} s; {expected} messages acknowledged by the broker",
        run_start.elapsed().as_secs_f64()
    );

    // Wait (bounded) until the store holds every acknowledged message.
    let count_stored = || -> anyhow::Result<usize> {
        let n: i64 = blocking(|| {
            store.db().query_one(
                "SELECT COUNT(*) FROM messages WHERE cpe_id >= ?1 AND cpe_id < ?2",
                db_params![&agents_from, &agents_to],
            )
        })?;
        Ok(n as usize)
    };
    let catch_up_until = Instant::now() + CATCH_UP;
    while count_stored()? < expected && Instant::now() < catch_up_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut in_db: HashSet<(String, u64)> = HashSet::new();
    let mut by_kind: Vec<(String, i64)> = Vec::new();
    blocking(|| -> anyhow::Result<()> {
        let db = store.db();
        let range = db_params![&agents_from, &agents_to];
        for row in db.query(
            "SELECT cpe_id, seq FROM messages WHERE cpe_id >= ?1 AND cpe_id < ?2",
            range,
        )? {
            in_db.insert((row.get(0)?, row.get(1)?));
        }
        for row in db.query(
            "SELECT kind, COUNT(*) FROM messages WHERE cpe_id >= ?1 AND cpe_id < ?2
             GROUP BY kind ORDER BY kind",
            range,
        )? {
            by_kind.push((row.get(0)?, row.get(1)?));
        }
        let devices: i64 = db.query_one(
            "SELECT COUNT(*) FROM devices WHERE cpe_id >= ?1 AND cpe_id < ?2",
            range,
        )?;
        println!("household devices stored: {devices}");
        Ok(())
    })?;
    let stored = in_db.len();
    let lost = outcomes
        .iter()
        .flat_map(|o| o.acked.iter().map(move |seq| (o.cpe_id.clone(), *seq)))
        .filter(|key| !in_db.contains(key))
        .count();
    let duplicates = blocking(|| duplicate_rows(&store, &agents_from, &agents_to))?;
    println!(
        "stored by kind: {}",
        by_kind
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let rejections = blocking(|| store.rejection_counts())?;
    println!(
        "rejections (all runs on this database): {}",
        rejections
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{}={n}", r.as_str()))
            .collect::<Vec<_>>()
            .join(" ")
    );

    let (mut shown, missed) = tokio::time::timeout(ALERT_GIVE_UP + DRAIN, watcher)
        .await
        .context("following alerts")?
        .context("alert watcher")?;
    // The slowest, with when they were sent: shows whether the tail is the killed
    // replica's share (sent around the kill) or a backlog spread over the run.
    shown.sort_by_key(|&(_, took)| std::cmp::Reverse(took));
    println!(
        "slowest alerts (sent at s into the run: took ms): {}",
        shown
            .iter()
            .take(10)
            .map(|(at, took)| format!(
                "{:.1}:{}",
                at.saturating_duration_since(run_start).as_secs_f64(),
                took.as_millis()
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut shown: Vec<Duration> = shown.into_iter().map(|(_, took)| took).collect();
    shown.sort();
    let ms = |p: f64| percentile(&shown, p).map_or(0, |d| d.as_millis());
    println!(
        "alerts: {} shown through the API, {missed} not within {} s; p50 {} ms, p90 {} ms, \
         p99 {} ms, max {} ms",
        shown.len(),
        ALERT_GIVE_UP.as_secs(),
        ms(50.0),
        ms(90.0),
        ms(99.0),
        ms(100.0),
    );
    let alert_p99 = if missed > 0 {
        // An alert that never showed is a failure, not a sample to leave out.
        "missed".to_string()
    } else {
        percentile(&shown, 99.0).map_or("none".into(), |d| d.as_millis().to_string())
    };

    // The fleet page as an operator opens it: signed in, the first page.
    let cookie = login(api, &token).await?;
    let mut page_times = Vec::with_capacity(PAGE_FETCHES);
    let mut page_bytes = 0usize;
    for _ in 0..PAGE_FETCHES {
        let t = Instant::now();
        let (status, body) = http_get(api, "/noc", &[("Cookie", &cookie)]).await?;
        page_times.push(t.elapsed());
        if status != 200 {
            bail!("GET /noc answered {status}");
        }
        page_bytes = body.len();
    }
    page_times.sort();
    let page_p95 = percentile(&page_times, 95.0).unwrap_or_default();

    drop(replicas);
    println!(
        "loadgen: agents={} replicas={} database={} stored={stored} expected={expected} \
         lost={lost} duplicates={duplicates} policy_ack_s={:.2} alert_to_noc_p99_ms={alert_p99} \
         fleet_page_p95_ms={} fleet_page_kb={:.1}",
        args.agents,
        args.replicas,
        database.kind(),
        policy_ack.as_secs_f64(),
        page_p95.as_millis(),
        page_bytes as f64 / 1024.0,
    );
    Ok(())
}

/// Waits (bounded) until replica `i` serves HTTP on `port`.
async fn wait_for_web(i: usize, port: u16) -> anyhow::Result<()> {
    let until = Instant::now() + REPLICA_START;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > until {
            bail!(
                "controller replica {i} serves no HTTP on port {port} after {} s (its log is on stderr)",
                REPLICA_START.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The `p`th percentile (nearest rank) of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Runs a blocking database call from the load generator's async code (the database
/// handles block; the runtime keeps its other tasks going meanwhile).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Rows stored more than once for this run's CPEs: messages and telemetry per
/// `(cpe_id, seq)`, alerts and device reports per `(cpe_id, seq, mac)`, device rows per
/// `(cpe_id, mac)`. The primary keys should make every count zero; this checks that they do.
fn duplicate_rows(store: &Store, from: &str, to: &str) -> anyhow::Result<i64> {
    let mut total = 0i64;
    for (table, key) in [
        ("messages", "cpe_id, seq"),
        ("telemetry", "cpe_id, seq"),
        ("alerts", "cpe_id, seq, mac"),
        ("device_reports", "cpe_id, seq, mac"),
        ("devices", "cpe_id, mac"),
    ] {
        let n: i64 = store.db().query_one(
            &format!(
                "SELECT CAST(COALESCE(SUM(n - 1), 0) AS BIGINT) FROM (SELECT COUNT(*) AS n
                 FROM {table} WHERE cpe_id >= ?1 AND cpe_id < ?2 GROUP BY {key}
                 HAVING COUNT(*) > 1) AS repeated"
            ),
            db_params![from, to],
        )?;
        if n > 0 {
            println!("duplicates in {table}: {n}");
        }
        total += n;
    }
    Ok(total)
}

/// Publishes signed state messages as the probe CPE until one is stored: then an ingest
/// session subscribes and the broker keeps what the agents publish for it.
async fn wait_for_ingest(
    probe: &(String, ed25519_dalek::SigningKey, String),
    port: u16,
    store: &Store,
) -> anyhow::Result<()> {
    let (id, key, password) = probe;
    let mut o = MqttOptions::new(id.clone(), "127.0.0.1", port);
    o.set_credentials(id.clone(), password.clone())
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(o, 16);
    let mut seq = 1u64;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if blocking(|| store.has_message(id, seq.saturating_sub(1).max(1)))? {
                    break;
                }
                let state = Body::State(State {
                    status: Status::Online,
                    agent_version: "loadgen-probe".into(),
                    fleet_policy_version: None,
                    cpe_policy_version: None,
                    public_ip: None,
                });
                if let Ok(bytes) = seal(&state, id, seq, now_ms(), key) {
                    if client
                        .try_publish(Topic::State(id.clone()).to_string(), QoS::AtLeastOnce, false, bytes)
                        .is_ok()
                    {
                        seq += 1;
                    }
                }
            }
            event = eventloop.poll() => {
                if event.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let _ = client.try_disconnect();
    Ok(())
}

/// Looks the alert's device up through the operator API until it shows the verdict;
/// when it was sent and how long it took, `None` when it does not show within
/// [`ALERT_GIVE_UP`].
async fn follow_alert(
    sent: SentAlert,
    api: std::net::SocketAddr,
    token: String,
    gate: Arc<tokio::sync::Semaphore>,
) -> Option<(Instant, Duration)> {
    let path = format!("/api/cpes/{}", sent.cpe_id);
    let auth = format!("Bearer {token}");
    let mac = sent.mac.to_string();
    while sent.sent.elapsed() < ALERT_GIVE_UP {
        let shown = {
            let _permit = gate.acquire().await.ok()?;
            match http_get(api, &path, &[("Authorization", &auth)]).await {
                Ok((200, body)) => shows_infected(&body, &mac),
                _ => false,
            }
        };
        if shown {
            return Some((sent.sent, sent.sent.elapsed()));
        }
        tokio::time::sleep(ALERT_POLL).await;
    }
    None
}

/// Whether the `GET /api/cpes/{id}` answer lists device `mac` as infected.
fn shows_infected(body: &[u8], mac: &str) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    v["devices"].as_array().is_some_and(|devices| {
        devices.iter().any(|d| {
            d["mac"]
                .as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case(mac))
                && d["verdict"] == "infected"
        })
    })
}

/// Signs in through the login form with the operator token; the session cookie.
async fn login(addr: std::net::SocketAddr, token: &str) -> anyhow::Result<String> {
    let body = format!("token={token}");
    let (status, head, _) = http(
        addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
    .await?;
    if status != 303 {
        bail!("POST /login answered {status}");
    }
    let cookies: Vec<&str> = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.split(';').next())
        .map(str::trim)
        .collect();
    if cookies.is_empty() {
        bail!("no session cookie after signing in");
    }
    Ok(cookies.join("; "))
}

/// A GET on loopback: status and body.
async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let (status, _, body) = http(addr, "GET", path, headers, b"").await?;
    Ok((status, body))
}

/// One HTTP/1.1 request with `Connection: close`: status, header text and body (chunked
/// bodies decoded). Loopback only; bounded by the run's timeout and a 16 MiB answer.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, String, Vec<u8>)> {
    const MAX_ANSWER: u64 = 16 << 20;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    (&mut s).take(MAX_ANSWER).read_to_end(&mut raw).await?;
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response headers")?;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("status line")?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")
        })
    });
    let rest = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Ok((status, head, body))
}

/// Decodes a chunked body (stops at the last chunk or at anything malformed).
fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&s[..eol])
            .ok()
            .and_then(|t| usize::from_str_radix(t.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(n) = size else { break };
        let rest = &s[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// A child process of the run (mosquitto, a controller replica), ended when the run ends:
/// its stdin closed when it has one (the controller then stops), killed otherwise or when
/// it does not stop within 5 s.
struct Child(Option<std::process::ChildStdin>, std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                if matches!(self.1.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.1.kill();
        let _ = self.1.wait();
    }
}

/// What one agent sends during the run.
struct Plan {
    index: usize,
    telemetry: Duration,
    first_telemetry: Duration,
    /// When (after the run starts) it reports an infection, if it does.
    alert_at: Option<Duration>,
    devices: usize,
    tag: u16,
}

impl Plan {
    /// The household's public address: 198.18.0.0/15, one per agent.
    fn public_ip(&self) -> IpAddr {
        let i = self.index as u32;
        IpAddr::V4(Ipv4Addr::from(0xC612_0000 | (i & 0x1_ffff)))
    }

    /// Device `d` of the household (locally administered, tagged by run and agent).
    fn mac(&self, d: usize) -> MacAddr {
        let [t0, t1] = self.tag.to_be_bytes();
        let [_, i1, i2, i3] = (self.index as u32).to_be_bytes();
        MacAddr([0x02 | (t0 & 0xfc), t1, i1, i2, i3, d as u8])
    }

    fn device(&self, d: usize, verdict: Verdict) -> DeviceReport {
        let infected = verdict == Verdict::Infected;
        DeviceReport {
            mac: self.mac(d),
            ips: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10 + (d % 240) as u8))],
            hostname: Some(format!("device-{d}")),
            vendor: None,
            verdict,
            score: if infected { 0.97 } else { 0.02 },
            action: if infected {
                Action::Block
            } else {
                Action::Monitor
            },
            action_until_ms: None,
            counters: DeviceCounters::default(),
            evidence: if infected {
                vec!["312 connections to 287 distinct mail servers in 10 minutes".into()]
            } else {
                Vec::new()
            },
        }
    }

    fn telemetry(&self, now: u64) -> Body {
        Body::Telemetry(Telemetry {
            window_start_ms: now.saturating_sub(self.telemetry.as_millis() as u64),
            window_secs: self.telemetry.as_secs() as u32,
            public_ip: Some(self.public_ip()),
            stats: AgentStats::default(),
            devices: (0..self.devices)
                .map(|d| self.device(d, Verdict::Clean))
                .collect(),
            connections: Vec::new(),
        })
    }

    /// The infected device is one the telemetry does not report.
    fn alert(&self, now: u64) -> Body {
        Body::Alert(Alert {
            device: self.device(255, Verdict::Infected),
            previous: Verdict::Clean,
            at_ms: now,
            observed: Observed::default(),
        })
    }
}

/// One simulated agent: connect with its own login, subscribe to policy, announce itself
/// online, answer every verified policy with a signed ack, and once the run starts send
/// its telemetry and alert. Returns the sequence numbers the broker acknowledged.
#[allow(clippy::too_many_arguments)]
async fn agent(
    id: String,
    key: ed25519_dalek::SigningKey,
    password: String,
    port: u16,
    controller: ed25519_dalek::VerifyingKey,
    connected: Arc<AtomicUsize>,
    plan: Plan,
    mut go: tokio::sync::watch::Receiver<Option<Instant>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    alerts: tokio::sync::mpsc::UnboundedSender<SentAlert>,
) -> AgentOutcome {
    let mut o = MqttOptions::new(id.clone(), "127.0.0.1", port);
    o.set_credentials(id.clone(), password)
        .set_keep_alive(Duration::from_secs(60))
        .set_max_packet_size(70_000, 70_000);
    let (client, mut eventloop) = AsyncClient::new(o, 16);
    let mut seq = 1u64;
    let mut counted = false;
    // Sequence numbers in the order they were handed to the client; rumqttc reports the
    // packet id of each (`Outgoing::Publish`) in that order.
    let mut queued: VecDeque<u64> = VecDeque::new();
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let mut acked = Vec::new();
    let publish = |client: &AsyncClient,
                   topic: Topic,
                   body: &Body,
                   retain: bool,
                   seq: &mut u64,
                   queued: &mut VecDeque<u64>| {
        let Ok(bytes) = seal(body, &id, *seq, now_ms(), &key) else {
            return false;
        };
        if client
            .try_publish(topic.to_string(), QoS::AtLeastOnce, retain, bytes)
            .is_err()
        {
            return false;
        }
        queued.push_back(*seq);
        *seq += 1;
        true
    };
    let mut start: Option<Instant> = None;
    let mut next_telemetry = Instant::now();
    let mut alert_due: Option<Instant> = None;
    let mut stopped = false;
    let far = Duration::from_secs(86_400);
    loop {
        if stopped && queued.is_empty() && in_flight.is_empty() {
            break;
        }
        let telemetry_at = if start.is_some() && !stopped {
            next_telemetry
        } else {
            Instant::now() + far
        };
        let alert_at = alert_due
            .filter(|_| !stopped)
            .unwrap_or(Instant::now() + far);
        tokio::select! {
            changed = go.changed(), if start.is_none() => {
                if changed.is_err() {
                    stopped = true;
                    continue;
                }
                if let Some(t) = *go.borrow() {
                    start = Some(t);
                    next_telemetry = t + plan.first_telemetry;
                    alert_due = plan.alert_at.map(|a| t + a);
                }
            }
            changed = stop.changed(), if !stopped => {
                if changed.is_err() || *stop.borrow() {
                    stopped = true;
                }
            }
            () = tokio::time::sleep_until(telemetry_at.into()) => {
                let body = plan.telemetry(now_ms());
                publish(&client, Topic::Telemetry(id.clone()), &body, false, &mut seq, &mut queued);
                next_telemetry += plan.telemetry;
            }
            () = tokio::time::sleep_until(alert_at.into()) => {
                alert_due = None;
                let body = plan.alert(now_ms());
                let sent = Instant::now();
                if publish(&client, Topic::Alert(id.clone()), &body, false, &mut seq, &mut queued) {
                    let _ = alerts.send(SentAlert { cpe_id: id.clone(), mac: plan.mac(255), sent });
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let filters = topic::agent_filters(&id)
                        .into_iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce));
                    let _ = client.try_subscribe_many(filters);
                    let state = Body::State(State {
                        status: Status::Online,
                        agent_version: "loadgen".into(),
                        fleet_policy_version: None,
                        cpe_policy_version: None,
                        public_ip: Some(plan.public_ip()),
                    });
                    publish(&client, Topic::State(id.clone()), &state, true, &mut seq, &mut queued);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if !counted {
                        counted = true;
                        connected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    // A publish sent again after a reconnect keeps its packet id and its
                    // entry; only new ones take the next queued number.
                    if let std::collections::hash_map::Entry::Vacant(slot) = in_flight.entry(pkid) {
                        if let Some(s) = queued.pop_front() {
                            slot.insert(s);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(s) = in_flight.remove(&ack.pkid) {
                        acked.push(s);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let any_age = Freshness {
                        max_age_ms: u64::MAX,
                        max_future_ms: u64::MAX,
                    };
                    let Ok(env) = verify(
                        &p.topic,
                        &p.payload,
                        |_| KeyStatus::Active(controller),
                        None,
                        None,
                        now_ms(),
                        &any_age,
                    ) else {
                        continue;
                    };
                    let Body::Policy(policy) = env.body else {
                        continue;
                    };
                    let ack = Body::PolicyAck(PolicyAck {
                        scope: PolicyScope::Fleet,
                        policy_version: policy.policy_version,
                        outcome: AckOutcome::Applied,
                    });
                    publish(&client, Topic::PolicyAck(id.clone()), &ack, false, &mut seq, &mut queued);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    AgentOutcome { cpe_id: id, acked }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        assert_eq!(
            Database::parse("sqlite:/tmp/x.db").unwrap(),
            Database::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            Database::parse("/tmp/x.db").unwrap(),
            Database::Sqlite("/tmp/x.db".into())
        );
        let pg = Database::parse("postgres://sg:hunter2@127.0.0.1/sg").unwrap();
        assert_eq!(pg.kind(), "postgres");
        assert_eq!(pg.url(), "postgres://sg:hunter2@127.0.0.1/sg");
        assert!(!redact(&pg.url()).contains("hunter2"));
        assert!(Database::parse("mysql://h/db").is_err());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&ms, 95.0), Some(Duration::from_millis(95)));
        assert_eq!(percentile(&[], 95.0), None);
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }
}
