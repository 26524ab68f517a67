//! `smtpguard-agent`: the edge agent binary.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// smtpguard edge agent for home routers.
#[derive(Debug, Parser)]
#[command(name = "smtpguard-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Analyse a capture offline with the detection engine and print one report.
    Replay(smtpguard_agent::replay::ReplayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Replay(args) => smtpguard_agent::replay::main(args),
    }
}
