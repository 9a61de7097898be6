//! `airlock-bench`: the end-to-end benchmark harness (docs/BENCHMARKS.md).
//!
//! `airlock-bench run` starts, on loopback and pinned to CPUs:
//! - A: nginx as the upstream (`return 200`, small JSON body), hit directly;
//! - B: nginx as a reverse proxy in front of it (static header, keepalive);
//! - C: a bare Pingora proxy (this binary's `pingora-proxy` subcommand);
//! - D: Airlock's data plane with a large environment loaded from Redis (key auth, scope,
//!   render, secret injection, response redaction), warm;
//! - E: the same with its secrets cold (the first use of each after a snapshot is applied);
//! - F: D's request with an OAuth access token injected instead of a secret (client
//!   credentials from a real OAuth server, oidc-provider, obtained on the first request);
//!
//! then measures peak throughput (wrk), latency at 50 % and 80 % of B's peak (oha, open loop,
//! latency-corrected), CPU time per request and RSS of the process under test, how long a
//! snapshot of that size takes to go live, and how long a change made through the control
//! plane's GraphQL API takes to reach two data planes. It prints its tables and the targets.
//! `--smoke` runs everything briefly with a small environment, only to check that it works.
//!
//! `airlock-bench go-live` measures only the snapshot go-live, phase by phase, without load
//! (`golive.rs`).

mod fixture;
mod golive;
mod load;
mod nginx;
mod pingora_proxy;
mod procs;
mod report;
mod scenarios;

use std::net::SocketAddr;

use clap::Parser as _;

#[derive(Debug, clap::Parser)]
#[command(
    name = "airlock-bench",
    about = "Airlock's end-to-end benchmark harness"
)]
enum Cli {
    /// Run every scenario and print the results table.
    Run(scenarios::Options),
    /// Snapshot go-live only, phase by phase, without load (one or more data planes).
    GoLive(golive::Options),
    /// Scenario C: a bare Pingora reverse proxy adding one static header.
    PingoraProxy {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Send responses chunked (drop the upstream's content-length).
        #[arg(long, conflicts_with = "sessions")]
        chunked: bool,
        /// Drive pingora-core's HTTP sessions directly instead of pingora-proxy's `ProxyHttp`.
        #[arg(long)]
        sessions: bool,
    },
}

fn main() -> std::process::ExitCode {
    match Cli::parse() {
        Cli::PingoraProxy {
            listen,
            upstream,
            threads,
            chunked,
            sessions,
        } => {
            let flavor = if sessions {
                pingora_proxy::Flavor::Sessions
            } else {
                pingora_proxy::Flavor::ProxyHttp { chunked }
            };
            pingora_proxy::run(listen, upstream, threads, flavor)
        }
        Cli::GoLive(options) => match current_thread_runtime().block_on(golive::run(options)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("airlock-bench go-live: {error:#}");
                std::process::ExitCode::FAILURE
            }
        },
        Cli::Run(options) => {
            let runtime = current_thread_runtime();
            match runtime.block_on(scenarios::run(options)) {
                Ok(true) => std::process::ExitCode::SUCCESS,
                Ok(false) => std::process::ExitCode::from(2),
                Err(error) => {
                    eprintln!("airlock-bench: {error:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
