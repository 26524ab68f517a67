//! `smtpguard-loadgen`: N simulated agents — real MQTT connections on loopback, real
//! signatures, each logging in with its own broker password — against one controller (this
//! binary again, in a child process) with its embedded broker (logins checked, topic ACLs
//! on), or against mosquitto
//! with the shipped layout (`deploy/mosquitto/`: per-router password file as
//! `cpe export-mosquitto` makes it, the shipped ACL, client id = user name on the routers'
//! listener, the controller on its own listener). Measures how long the fleet takes to
//! connect and how long a fleet policy takes to be acknowledged by every agent (acks
//! verified and stored by the ingest).
//!
//! Every agent costs one descriptor of this process and one of the controller's (the
//! embedded broker's gate bridges each client into rumqttd in-process) or of mosquitto's,
//! so the open-file limit, per process, caps `--agents` at about that limit.
//!
//! Bounded: at most `--agents` connections (≤ 20,000), everything on 127.0.0.1, and the
//! whole run ends after `--timeout-secs`. Raises its own open-file limit to the hard limit.
//!
//! ```sh
//! cargo run --release -p smtpguard-tools --bin smtpguard-loadgen -- --agents 10000
//! ```

use smtpguard_common::now_ms;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use smtpguard_controller::config::Config;
use smtpguard_controller::policy::{self, Target};
use smtpguard_controller::{registry, serve};

/// The ACL shipped for mosquitto.
const SHIPPED_ACL: &str = include_str!("../../../deploy/mosquitto/acl");
use smtpguard_controller::store::Store;
use smtpguard_protocol::{
    keys, seal, topic, verify, AckOutcome, Body, Freshness, KeyStatus, Policy, PolicyAck,
    PolicyScope, State, Status, Topic,
};

#[derive(Parser)]
#[command(
    name = "smtpguard-loadgen",
    about = "simulated agents against one controller"
)]
struct Args {
    /// Number of simulated agents (1-20000).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Give up after this many seconds (the embedded broker's logins take about a minute
    /// for 10,000 agents on two cores: rumqttd scans every retained message per new
    /// subscription).
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// New connections per second while the fleet connects.
    #[arg(long, default_value_t = 2000)]
    connect_rate: u64,
    /// Use a mosquitto the load generator starts itself (loopback only, the shipped ACL,
    /// a password per agent, the controller on its own listener) instead of the embedded
    /// broker. mosquitto runs in its own process, so the agents' and the broker's sockets
    /// do not share one open-file limit.
    #[arg(long)]
    mosquitto: bool,
    /// Internal: run as the controller child of a load run, with this database (the broker
    /// password comes in `SMTPGUARD_LOADGEN_BROKER_PASSWORD`); ends when stdin closes.
    #[arg(long, hide = true)]
    serve_controller: Option<std::path::PathBuf>,
    /// Internal: the controller child's broker port (embedded) or mosquitto's controller port.
    #[arg(long, hide = true, default_value_t = 0)]
    controller_port: u16,
}

/// The environment variable the controller child reads its broker password from.
const PASSWORD_ENV: &str = "SMTPGUARD_LOADGEN_BROKER_PASSWORD";

/// The controller's configuration for a run: database `db` (the policy key beside it),
/// brokers on loopback `port` (embedded, or mosquitto's controller listener).
fn controller_config(
    db: &std::path::Path,
    port: u16,
    password: String,
    agents: usize,
    mosquitto: bool,
) -> Config {
    let dir = db.parent().unwrap_or(std::path::Path::new("."));
    let mut config = Config {
        db_path: db.to_path_buf(),
        policy_key_path: dir.join("policy.key"),
        ..Config::default()
    };
    config.broker.embedded_listen = ([127, 0, 0, 1], port).into();
    config.broker.password = password;
    config.broker.client_id = "loadgen-controller".into();
    config.broker.max_connections = agents + 100;
    if mosquitto {
        config.broker.url = Some(format!("mqtt://127.0.0.1:{port}"));
        config.ingest.shared_subscription = false;
    }
    config
}

/// The controller child: `serve` until the parent closes our stdin (or dies).
fn serve_controller(args: &Args, db: &std::path::Path) -> anyhow::Result<()> {
    let password = std::env::var(PASSWORD_ENV).context(PASSWORD_ENV)?;
    let config = controller_config(
        db,
        args.controller_port,
        password,
        args.agents,
        args.mosquitto,
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
    let nofile = raise_nofile();
    if let Some(db) = &args.serve_controller {
        return serve_controller(&args, db);
    }
    println!("open-file limit: {nofile}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(args.timeout_secs), run(&args))
            .await
            .context("timed out")?
    })
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = controller_config(
        &dir.path().join("loadgen.db"),
        port,
        smtpguard_controller::households::new_secret("loadgen_"),
        args.agents,
        args.mosquitto,
    );
    let policy_key = keys::generate();
    let controller_pub = policy_key.verifying_key();

    // Enrol the fleet in one transaction, each agent with its own broker password, hashed
    // as `cpe add` hashes it (on four threads).
    let agent_keys: Vec<(String, ed25519_dalek::SigningKey, String)> = (0..args.agents)
        .map(|i| {
            let password = smtpguard_controller::households::new_secret("");
            (format!("lg-{i:05}"), keys::generate(), password)
        })
        .collect();
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
    {
        let store = Store::open(&config.db_path)?;
        let tx = store.conn().unchecked_transaction()?;
        for ((id, k, _), hash) in agent_keys.iter().zip(&hashes) {
            tx.execute(
                "INSERT INTO cpes (cpe_id, public_key, enrolled_at_ms, broker_password_hash)
                 VALUES (?1, ?2, 0, ?3)",
                (id, keys::public_key_text(&k.verifying_key()), hash),
            )?;
        }
        tx.commit()?;
    }
    let mut agent_port = port;
    let _mosquitto = if args.mosquitto {
        // The shipped layout: routers on one listener (their password file, client id =
        // user name), the controller on another (its own password file), the shipped ACL.
        agent_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let d = dir.path();
        std::fs::write(d.join("acl"), SHIPPED_ACL)?;
        let store = Store::open(&config.db_path)?;
        std::fs::write(
            d.join("cpes.passwd"),
            registry::mosquitto_password_file(&store)?,
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
                .context("starting mosquitto")?,
        ))
    } else {
        None
    };
    // The controller in its own process, so its descriptors and the agents' do not share
    // one open-file limit.
    let mut controller = std::process::Command::new(std::env::current_exe()?);
    controller
        .arg("--serve-controller")
        .arg(&config.db_path)
        .arg("--controller-port")
        .arg(port.to_string())
        .arg("--agents")
        .arg(args.agents.to_string())
        .env(PASSWORD_ENV, &config.broker.password)
        .stdin(std::process::Stdio::piped());
    if args.mosquitto {
        controller.arg("--mosquitto");
    }
    let mut controller = controller.spawn().context("starting the controller")?;
    let controller = Child(controller.stdin.take(), controller);
    while tokio::net::TcpStream::connect(("127.0.0.1", agent_port))
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let connected = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    // Paced by the clock rather than by a sleep per agent: the timer's 1 ms resolution
    // would otherwise cap the rate at 1,000 a second.
    let rate = args.connect_rate.max(1) as f64;
    for (i, (id, key, password)) in agent_keys.into_iter().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        tokio::spawn(agent(
            id,
            key,
            password,
            agent_port,
            controller_pub,
            connected.clone(),
        ));
    }
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
    let connect_time = started.elapsed();
    println!(
        "{} agents connected and subscribed in {:.1} s",
        args.agents,
        connect_time.as_secs_f64()
    );

    // One fleet policy; wait until every agent's ack is stored.
    let stored = {
        let mut store = Store::open(&config.db_path)?;
        policy::sign(
            &mut store,
            &policy_key,
            Policy {
                rate_limit_per_minute: 5,
                ..Policy::default()
            },
            &Target::Fleet,
            &config.safety_context(),
            now_ms(),
        )?
    };
    let t = Instant::now();
    policy::publish(
        &config.broker,
        "loadgen-noc",
        std::slice::from_ref(&stored),
        Duration::from_secs(30),
    )
    .await?;
    let store = Store::open(&config.db_path)?;
    let acked = loop {
        let n: i64 = store.conn().query_row(
            "SELECT COUNT(*) FROM policy_acks WHERE version = ?1 AND outcome = 'applied'",
            [stored.version as i64],
            |r| r.get(0),
        )?;
        if n as usize >= args.agents {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "policy v{} acknowledged by {acked}/{} agents in {:.2} s (acks verified and stored)",
        stored.version,
        args.agents,
        t.elapsed().as_secs_f64()
    );
    let rejected: u64 = store.rejection_counts()?.iter().map(|(_, n)| n).sum();
    println!("rejections: {rejected}");
    drop(controller);
    Ok(())
}

/// A child process of the run (mosquitto, the controller), ended when the run ends: its
/// stdin closed when it has one (the controller then stops), killed otherwise or when it
/// does not stop within 5 s.
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

/// One simulated agent: connect with its own login, subscribe to policy, announce itself online, and answer
/// every verified policy with a signed ack.
async fn agent(
    id: String,
    key: ed25519_dalek::SigningKey,
    password: String,
    port: u16,
    controller: ed25519_dalek::VerifyingKey,
    connected: Arc<AtomicUsize>,
) {
    let mut o = MqttOptions::new(id.clone(), "127.0.0.1", port);
    o.set_credentials(id.clone(), password)
        .set_keep_alive(Duration::from_secs(60))
        .set_max_packet_size(70_000, 70_000);
    let (client, mut eventloop) = AsyncClient::new(o, 16);
    let mut seq = 1u64;
    let mut counted = false;
    loop {
        match eventloop.poll().await {
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
                    public_ip: None,
                });
                if let Ok(bytes) = seal(&state, &id, seq, now_ms(), &key) {
                    seq += 1;
                    let topic = Topic::State(id.clone()).to_string();
                    let _ = client.try_publish(topic, QoS::AtLeastOnce, true, bytes);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if !counted {
                    counted = true;
                    connected.fetch_add(1, Ordering::Relaxed);
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
                if let Ok(bytes) = seal(&ack, &id, seq, now_ms(), &key) {
                    seq += 1;
                    let topic = Topic::PolicyAck(id.clone()).to_string();
                    let _ = client.try_publish(topic, QoS::AtLeastOnce, false, bytes);
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
