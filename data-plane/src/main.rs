//! `airlock-data-plane`: the standalone data plane, fed from Redis.

use std::process::ExitCode;

use airlock_data_plane::config::{Cli, SEAL_KEY_ENV};
use airlock_data_plane::log_writer::LogWriter;
use clap::Parser as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = LogWriter::stderr();
    init_tracing(log.clone());
    let result = run(cli);
    // The access lines still buffered (log_writer module docs).
    log.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("airlock-data-plane: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.into_config(std::env::var(SEAL_KEY_ENV).ok())?;
    let handle = airlock_data_plane::spawn(config)?;
    let signals = airlock_data_plane::ShutdownSignals::install()?;
    println!(
        "airlock-data-plane listening on http://{}",
        handle.listen_addr()
    );
    signals.wait();
    handle.shutdown();
    Ok(())
}

fn init_tracing(log: LogWriter) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(log)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(airlock_data_plane::hide_pingora_debug_logs()),
        )
        .init();
}
