//! `smtpguard-controller`: the controller binary. Parses the command line, sets up tracing
//! and calls into the library; no logic lives here.

use smtpguard_common::now_ms;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use smtpguard_controller::config::Config;
use smtpguard_controller::policy::{self, Target};
use smtpguard_controller::store::Store;
use smtpguard_controller::{audit, households, operators, registry, serve, web};
use smtpguard_protocol::{keys, PolicyScope};

#[derive(Parser)]
#[command(
    name = "smtpguard-controller",
    version,
    about = "smtpguard fleet controller"
)]
struct Cli {
    /// Controller configuration (TOML).
    #[arg(long, global = true, default_value = "/etc/smtpguard/controller.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (embedded unless configured otherwise) and the ingest.
    Serve,
    /// Create the policy-signing key (mode 0600) and print its public key for the agents.
    Keygen {
        /// Where to write it (default: policy_key_path from the configuration).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Enroll, list and revoke routers.
    Cpe {
        #[command(subcommand)]
        command: CpeCommand,
    },
    /// Sign and publish policy; show the rollout.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Add, list and revoke the NOC's operators (viewer, operator, admin).
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Add subscriber households and issue the sign-in codes printed on their letters.
    Household {
        #[command(subcommand)]
        command: HouseholdCommand,
    },
}

#[derive(Subcommand)]
enum HouseholdCommand {
    /// Add a household with its routers and print its sign-in code for the letter (shown once).
    Add {
        /// The subscriber's name or account, shown in the NOC.
        name: String,
        /// An enrolled router of the household (repeat for several).
        #[arg(long = "cpe", required = true)]
        cpes: Vec<String>,
    },
    /// Issue another sign-in code for a household (e.g. a lost letter); old codes keep working.
    Code {
        /// The household's id (as `household add` printed it).
        id: i64,
    },
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Add an operator and print their sign-in secret (shown once).
    Add {
        /// A unique name (letters, digits, . _ - @), shown in the NOC and the audit log.
        name: String,
        /// viewer (reads), operator (also releases, abuse reports, device commands) or
        /// admin (also policy and campaigns).
        #[arg(long)]
        role: String,
    },
    /// List operators.
    List,
    /// Revoke an operator: their secret stops working and their sessions end.
    Revoke {
        /// The operator's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum CpeCommand {
    /// Enroll a router with the public key its agent printed.
    Add {
        /// The CPE id.
        id: String,
        /// Its public key (`ed25519:...`).
        public_key: String,
        /// A label for operators.
        #[arg(long)]
        label: Option<String>,
    },
    /// Issue a new broker password for a router (printed once); the old one stops working.
    RotatePassword {
        /// The CPE id.
        id: String,
    },
    /// Write mosquitto's password file for every enrolled, unrevoked router (the same
    /// hashes the embedded broker checks), to FILE or standard output.
    ExportMosquitto {
        /// Where to write it (mode 0600); standard output when left out.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List enrolled routers.
    List,
    /// Revoke a router: its messages are rejected from now on.
    Revoke {
        /// The CPE id.
        id: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Sign a policy file (TOML) with the next version and publish it retained.
    Set {
        /// The policy file.
        file: PathBuf,
        /// Make it an override for one router instead of the fleet policy.
        #[arg(long)]
        cpe: Option<String>,
    },
    /// Show each router's applied versions and refusals.
    Status,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let load = || Config::load(&cli.config).context("loading the configuration");
    match cli.command {
        Command::Serve => {
            let config = load()?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(serve::run(config, serve::shutdown_signal()))?;
        }
        Command::Keygen { key } => {
            let path = match key {
                Some(p) => p,
                None => load()?.policy_key_path,
            };
            let secret = keys::generate();
            keys::write_secret(&path, &secret)?;
            println!("{}", keys::public_key_text(&secret.verifying_key()));
            eprintln!(
                "policy key written to {}; install the public key above as the agents' uplink.controller_public_key",
                path.display()
            );
        }
        Command::Cpe { command } => {
            let config = load()?;
            let mut store = Store::open(&config.db_path)?;
            match command {
                CpeCommand::Add {
                    id,
                    public_key,
                    label,
                } => {
                    let enrolled =
                        registry::add(&mut store, &id, &public_key, label.as_deref(), now_ms())?;
                    audit_cli(&config.db_path, "cpe_add", &id, &public_key)?;
                    println!("enrolled {id}");
                    print_broker_login(&id, &enrolled.broker_password);
                }
                CpeCommand::RotatePassword { id } => {
                    let password = registry::rotate_password(&mut store, &id)?;
                    audit_cli(&config.db_path, "cpe_rotate_password", &id, "")?;
                    println!("new broker password for {id}");
                    print_broker_login(&id, &password);
                }
                CpeCommand::ExportMosquitto { out } => {
                    let file = registry::mosquitto_password_file(&store)?;
                    match out {
                        None => print!("{file}"),
                        Some(path) => {
                            write_private(&path, file.as_bytes())
                                .with_context(|| path.display().to_string())?;
                            eprintln!(
                                "wrote {} router(s) to {}; add the controller with `mosquitto_passwd {} controller` and reload mosquitto",
                                file.lines().count(),
                                path.display(),
                                path.display()
                            );
                        }
                    }
                }
                CpeCommand::List => {
                    for c in store.cpes()? {
                        let state = if c.revoked_at_ms.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        println!(
                            "{}\t{}\t{}\t{}",
                            c.cpe_id,
                            state,
                            c.public_key,
                            c.label.unwrap_or_default()
                        );
                    }
                }
                CpeCommand::Revoke { id } => {
                    registry::revoke(&mut store, &id, now_ms())?;
                    audit_cli(&config.db_path, "cpe_revoke", &id, "")?;
                    println!("revoked {id}");
                }
            }
        }
        Command::Policy { command } => {
            let config = load()?;
            let mut store = Store::open(&config.db_path)?;
            match command {
                PolicyCommand::Set { file, cpe } => {
                    let key = keys::read_secret(&config.policy_key_path)?;
                    let policy_doc = policy::load_file(&file)?;
                    let target = cpe.map_or(Target::Fleet, Target::Cpe);
                    let stored = policy::sign(
                        &mut store,
                        &key,
                        policy_doc,
                        &target,
                        &config.safety_context(),
                        now_ms(),
                    )?;
                    let runtime = tokio::runtime::Runtime::new()?;
                    runtime.block_on(policy::publish(
                        &config.broker,
                        &format!("{}-cli-{}", config.broker.client_id, std::process::id()),
                        std::slice::from_ref(&stored),
                        Duration::from_secs(10),
                    ))?;
                    audit_cli(
                        &config.db_path,
                        "policy_publish",
                        &policy::topic_of(&stored).to_string(),
                        &format!("version {} from {}", stored.version, file.display()),
                    )?;
                    println!(
                        "published policy version {} to {}",
                        stored.version,
                        policy::topic_of(&stored)
                    );
                }
                PolicyCommand::Status => {
                    let latest = store
                        .latest_policy(PolicyScope::Fleet, None)?
                        .map(|p| p.version);
                    print!(
                        "{}",
                        policy::format_status(latest, &policy::status(&store)?)
                    );
                }
            }
        }
        Command::Household { command } => {
            let config = load()?;
            let db = web::open_db(&config.db_path)
                .map_err(|e| anyhow::anyhow!("opening {}: {e}", config.db_path.display()))?;
            let (id, detail) = match command {
                HouseholdCommand::Add { name, cpes } => {
                    let store = Store::open(&config.db_path)?;
                    for cpe in &cpes {
                        if store.cpe(cpe)?.is_none_or(|c| c.revoked_at_ms.is_some()) {
                            anyhow::bail!(
                                "{cpe} is not an enrolled router (smtpguard-controller cpe add)"
                            );
                        }
                    }
                    let refs: Vec<&str> = cpes.iter().map(String::as_str).collect();
                    let now = now_ms();
                    // All of it or nothing: a router taken by another household adds none.
                    let (id, _) = db.transaction(|tx| households::create(tx, &name, &refs, now))?;
                    (id, format!("added {name:?} with {}", cpes.join(", ")))
                }
                HouseholdCommand::Code { id } => {
                    households::household(&db, id).map_err(|e| match e {
                        households::HouseholdError::NotFound => {
                            anyhow::anyhow!("there is no household {id}")
                        }
                        e => e.into(),
                    })?;
                    (id, "another sign-in code".to_string())
                }
            };
            let code = households::add_letter_code(&db, id, now_ms())?;
            audit::record(
                &db,
                now_ms(),
                "cli",
                "household_code",
                &format!("household:{id}"),
                "ok",
                &detail,
            )?;
            println!(
                "household {id}: {detail}; sign-in code for the letter (shown once):\n  {code}"
            );
        }
        Command::Operator { command } => {
            let config = load()?;
            let db = web::open_db(&config.db_path)
                .map_err(|e| anyhow::anyhow!("opening {}: {e}", config.db_path.display()))?;
            match command {
                OperatorCommand::Add { name, role } => {
                    let level = operators::Level::parse(&role)?;
                    let secret = operators::add(&db, &name, level, now_ms())?;
                    audit::record(
                        &db,
                        now_ms(),
                        "cli",
                        "operator_add",
                        &name,
                        "ok",
                        level.as_str(),
                    )?;
                    println!(
                        "added {name} ({}); sign-in secret (shown once, give it to {name} only):\n  {secret}",
                        level.as_str()
                    );
                }
                OperatorCommand::List => {
                    for op in operators::list(&db)? {
                        let state = if op.revoked_ms.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        println!("{}\t{}\t{state}", op.name, op.level.as_str());
                    }
                }
                OperatorCommand::Revoke { name } => {
                    operators::revoke(&db, &name, now_ms())?;
                    audit::record(&db, now_ms(), "cli", "operator_revoke", &name, "ok", "")?;
                    println!("revoked {name}");
                }
            }
        }
    }
    Ok(())
}

/// Records what the command line did in the audit log (actor `cli`).
fn audit_cli(db: &std::path::Path, action: &str, target: &str, detail: &str) -> anyhow::Result<()> {
    let db = web::open_db(db).map_err(|e| anyhow::anyhow!("opening {}: {e}", db.display()))?;
    audit::record(&db, now_ms(), "cli", action, target, "ok", detail)?;
    Ok(())
}

/// Prints what the router's operator puts in its uplink configuration. The password is
/// shown only now: the controller keeps only its hash.
fn print_broker_login(id: &str, password: &str) {
    println!(
        "broker login (shown once; set on the router, UCI `smtpguard.uplink` or TOML `[uplink]`):\n  \
         username = \"{id}\"\n  password = \"{password}\"\n\
         (client id = username; for mosquitto run `smtpguard-controller cpe export-mosquitto --out FILE`)"
    );
}

/// Writes `bytes` to `path`, readable by its owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
