//! `smtpguard-agent`: the edge agent binary.
//!
//! This file only parses the command line, sets up tracing and dispatches to library
//! functions; each subcommand's logic lives in its own module of `smtpguard_agent`.
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use smtpguard_agent::config::{self, AgentConfig};

/// smtpguard edge agent for home routers.
#[derive(Debug, Parser)]
#[command(name = "smtpguard-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// One variant per subcommand; each dispatches to one library function.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: live capture on the LAN, detection, enforcement, uplink.
    Run {
        /// Agent configuration: TOML, or OpenWrt UCI (`/etc/config/smtpguard`).
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Show the running agent's devices, verdicts and the blocks in force in the kernel.
    Status {
        /// Agent configuration: TOML, or OpenWrt UCI (`/etc/config/smtpguard`).
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Analyse a capture offline with the detection engine and print one report.
    Replay(smtpguard_agent::replay::ReplayArgs),
    /// Lift the block or rate limit on one device by hand; the agent then leaves it alone
    /// for its release grace period (`enforce.release_grace_secs`).
    Release {
        /// The device's MAC address, e.g. 02:11:22:33:44:05.
        mac: smtpguard_protocol::MacAddr,
        /// Agent configuration: TOML, or OpenWrt UCI (`/etc/config/smtpguard`).
        #[arg(long, short, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Create this router's signing key (mode 0600, never overwriting one) and print its
    /// CPE id and public key for enrollment on the controller.
    Keygen {
        /// Where to write the key.
        #[arg(long, default_value = smtpguard_agent::uplink::keygen::DEFAULT_KEY_PATH)]
        key: PathBuf,
        /// Print the CPE id and public key of the key already there instead of making one.
        #[arg(long)]
        show: bool,
    },
}

/// A failure, classified for the exit code.
enum Failure {
    /// Bad configuration: exit code 2, like a usage error.
    Config(anyhow::Error),
    /// Anything that went wrong while running: exit code 1.
    Runtime(anyhow::Error),
}

fn load_config(path: &std::path::Path) -> Result<AgentConfig, Failure> {
    AgentConfig::load(path).map_err(|e| Failure::Config(e.into()))
}

fn runtime<E: std::error::Error + Send + Sync + 'static>(
    result: Result<(), E>,
) -> Result<ExitCode, Failure> {
    result
        .map(|()| ExitCode::SUCCESS)
        .map_err(|e| Failure::Runtime(e.into()))
}

fn dispatch(command: Command) -> Result<ExitCode, Failure> {
    match command {
        Command::Replay(args) => Ok(smtpguard_agent::replay::main(args)),
        Command::Run { config } => runtime(smtpguard_agent::run::run_until_signal(load_config(
            &config,
        )?)),
        Command::Status { config } => {
            runtime(smtpguard_agent::run::print_status(&load_config(&config)?))
        }
        Command::Release { mac, config } => runtime(smtpguard_agent::run::release_command(
            &load_config(&config)?,
            mac,
        )),
        Command::Keygen { key, show } => {
            runtime(smtpguard_agent::uplink::keygen::command(&key, show))
        }
    }
}

/// Logs to stderr at `info`, or as `RUST_LOG` says: a default level and per-module levels,
/// e.g. `debug` or `info,smtpguard_agent::uplink=debug` (no regular expressions).
fn init_tracing() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let default = || Targets::new().with_default(LevelFilter::INFO);
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) => spec.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("RUST_LOG={spec:?} ignored ({e}); logging at info");
            default()
        }),
        Err(_) => default(),
    };
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(Failure::Config(e)) => {
            eprintln!("smtpguard-agent: configuration error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("smtpguard-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}
