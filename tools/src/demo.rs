//! `smtpguard-demo`: the whole product on loopback. A controller (embedded broker, ingest,
//! SQLite, web UI) and either live simulated households whose routers run the real agent core
//! ([`crate::demo_live`]) or, with `--seeded`, the controller's seeded fleet
//! (`smtpguard_controller::demo::seed`). Prints the URLs and sign-in codes.

use std::net::IpAddr;

use smtpguard_controller::demo::{seed, DemoError};
use smtpguard_controller::households;
use smtpguard_controller::store::Store;

/// `smtpguard-demo` options.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "smtpguard-demo",
    version,
    about = "Run smtpguard on loopback: a controller (embedded broker, SQLite, web UI) and live \
             simulated households whose routers run the real agent core, or --seeded data; \
             prints the URLs and sign-in codes"
)]
pub struct DemoArgs {
    /// Web UI address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: std::net::SocketAddr,
    /// Embedded MQTT broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt: std::net::SocketAddr,
    /// Keep the database, keys and tokens here (default: a temporary directory removed on
    /// exit).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Serve a fixed, seeded data set instead of live simulated households (what the
    /// browser tests and screenshots use).
    #[arg(long)]
    pub seeded: bool,
}

/// Runs the demo until `shutdown` resolves: a controller (embedded broker, ingest, SQLite,
/// web UI) on loopback, and either live simulated households (see [`crate::demo_live`]) or,
/// with `--seeded`, the seeded fleet. Prints the URLs and login tokens.
///
/// # Errors
/// [`DemoError`] when the directory, keys, database or controller cannot start.
pub async fn run(
    args: DemoArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DemoError> {
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| DemoError::Web(format!("{}: {e}", d.display())))?;
            d.clone()
        }
        None => {
            temp = tempfile_dir()?;
            temp.0.clone()
        }
    };
    let db = dir.join("controller.db");
    let key_path = dir.join("policy.key");
    let token_path = dir.join("operator.token");
    let (policy_key, _) = smtpguard_protocol::keys::load_or_create(&key_path)
        .map_err(|e| DemoError::Web(format!("policy key: {e}")))?;
    let operator = households::new_secret("noc_");
    std::fs::write(&token_path, &operator)
        .map_err(|e| DemoError::Web(format!("operator token: {e}")))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut config = smtpguard_controller::config::Config {
        db_path: db.clone(),
        policy_key_path: key_path,
        http_listen: args.http,
        ..Default::default()
    };
    config.broker.embedded_listen = args.mqtt;
    config.policy.isp_relays = vec![crate::demo_live::isp_relay()];
    config.web.operator_token_file = token_path;
    config.web.portal_time_zone = "Europe/Berlin".into();
    config.web.support_contact =
        Some("call 0800 555 0100 (free, daily 8 am to 8 pm) or write to help@isp.example".into());
    config
        .resolve_broker_password()
        .map_err(|e| DemoError::Web(e.to_string()))?;
    config
        .validate()
        .map_err(|e| DemoError::Web(e.to_string()))?;
    let base = format!("http://{}", args.http);
    if args.seeded {
        let seeded = seed(&db, now)?;
        println!("smtpguard demo (seeded data)");
        println!("  data directory: {}", dir.display());
        println!("  MQTT broker:    mqtt://{}", args.mqtt);
        println!("  NOC:            {base}/login   operator token: {operator}");
        for h in &seeded.households {
            println!(
                "  portal:         {base}/login   {:<20} letter code: {}  token: {}",
                h.name, h.letter_code, h.token
            );
        }
        print_tail(
            &base,
            &operator,
            seeded.households[0].public_ip,
            seeded.abuse_example.0,
        );
        return smtpguard_controller::serve::run(config, shutdown)
            .await
            .map_err(|e| DemoError::Web(e.to_string()));
    }

    let live = crate::demo_live::enroll(&db, &policy_key, &config.safety_context(), now)?;
    println!("smtpguard demo (live simulated households)");
    println!("  data directory: {}", dir.display());
    println!("  MQTT broker:    mqtt://{}", args.mqtt);
    println!("  NOC:            {base}/login   operator token: {operator}");
    for h in &live {
        println!(
            "  portal:         {base}/login   {:<20} {:<18} token: {}",
            h.name, h.cpe_id, h.token
        );
    }
    println!("  households:");
    for h in &live {
        println!(
            "    {:<18} {:<15} {}",
            h.cpe_id,
            h.public_ip,
            h.scenario.describe()
        );
    }
    let abuse_ip = live
        .iter()
        .find(|h| h.scenario == crate::demo_live::Scenario::DirectToMx)
        .map_or(IpAddr::from([203, 0, 113, 10]), |h| h.public_ip);
    println!("  Infected devices appear on the NOC page within a minute.");
    print_tail(&base, &operator, abuse_ip, now);

    // Agents stop first (publishing their offline state through the still running broker),
    // then the controller.
    let (stop_agents, agents_stop) = tokio::sync::watch::channel(false);
    let agents = crate::demo_live::spawn(
        &live,
        args.mqtt,
        policy_key.verifying_key(),
        &crate::demo_live::state_dir(&dir),
        &agents_stop,
    );
    let controller_shutdown = async move {
        shutdown.await;
        let _ = stop_agents.send(true);
        for a in agents {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(8), a).await;
        }
        // Let the ingest store the offline states before it stops (bounded).
        for _ in 0..30 {
            let all_offline = Store::open(&db)
                .and_then(|s| s.rollout())
                .is_ok_and(|rows| rows.iter().all(|r| r.status.as_deref() != Some("online")));
            if all_offline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    smtpguard_controller::serve::run(config, controller_shutdown)
        .await
        .map_err(|e| DemoError::Web(e.to_string()))
}

fn print_tail(base: &str, operator: &str, abuse_ip: IpAddr, abuse_time: u64) {
    println!("  metrics:        {base}/metrics");
    println!("  abuse API:      curl -H 'Authorization: Bearer {operator}' -H 'Content-Type: application/json' \\");
    println!(
        "                    -d '{{\"public_ip\":\"{abuse_ip}\",\"time\":{abuse_time}}}' {base}/api/abuse"
    );
    println!("Ctrl-C stops the demo.");
}

/// A temporary directory removed when dropped (no extra crate for one use).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> Result<TempDir, DemoError> {
    let path = std::env::temp_dir().join(format!("smtpguard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&path)
        .map_err(|e| DemoError::Web(format!("{}: {e}", path.display())))?;
    Ok(TempDir(path))
}
