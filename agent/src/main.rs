//! `smtpguard-agent`: the edge agent binary.
//!
//! This file only parses the command line, sets up tracing and dispatches to library
//! functions; each subcommand's logic lives in its own module of `smtpguard_agent`.
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.

use std::process::ExitCode;

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
    smtpguard_agent::log::init();
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
