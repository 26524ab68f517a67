//! `smtpguard-agent`: the edge agent binary.
//!
//! This file only parses the command line, sets up tracing and dispatches to library
//! functions; each subcommand's logic lives in its own module of `smtpguard_agent`.
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.

use std::process::ExitCode;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use smtpguard_agent::cli::{self, Command, Invocation};
use smtpguard_agent::config::AgentConfig;

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
        Command::Keygen { key, config, show } => {
            let key = match key {
                Some(k) => k,
                None => smtpguard_agent::run::key_path(&load_config(&config)?),
            };
            runtime(smtpguard_agent::uplink::keygen::command(&key, show))
        }
    }
}

/// Logs at `info`, or as `RUST_LOG` says: a default level and per-module levels, e.g. `debug`
/// or `info,smtpguard_agent::uplink=debug` (no regular expressions). Warnings and errors go to
/// stderr, the rest to stdout, so procd's logread shows them as `daemon.err` and
/// `daemon.info` (the init script asks procd to log both).
fn init_tracing() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    let default = || Targets::new().with_default(LevelFilter::INFO);
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) => spec.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("RUST_LOG={spec:?} ignored ({e}); logging at info");
            default()
        }),
        Err(_) => default(),
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer().with_writer(
                std::io::stderr
                    .with_max_level(tracing::Level::WARN)
                    .or_else(std::io::stdout),
            ),
        )
        .with(filter)
        .init();
}

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Invocation::Command(c)) => c,
        Ok(Invocation::Help(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Version) => {
            println!("{}", cli::version());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing();
    match dispatch(command) {
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
