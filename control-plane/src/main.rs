//! `airlock`: parse the command line, then hand over to the library.

use std::process::ExitCode;

use airlock_control_plane::config::Cli;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    airlock_control_plane::init_logging();
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("airlock: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("airlock: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(airlock_control_plane::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("airlock: {error:#}");
            ExitCode::FAILURE
        }
    }
}
