//! `smtpguard-demo`: the main job on loopback (see `smtpguard_tools::demo`).

use clap::Parser;
use smtpguard_tools::demo::{self, DemoArgs};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = DemoArgs::parse();
    tokio::runtime::Runtime::new()?.block_on(demo::run(
        args,
        smtpguard_controller::serve::shutdown_signal(),
    ))?;
    Ok(())
}
