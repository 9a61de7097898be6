//! Airlock data plane: a Pingora proxy that invokes trained functions.
//!
//! An application calls `POST /v1/functions/{name}/invoke` with its API key and a JSON object
//! of arguments. The data plane authenticates the key, checks that the key may invoke the
//! function, renders the function's upstream request (arguments and secrets encoded for where
//! they land), refuses it if a secret would go to a host it is not bound to, forwards it
//! through Pingora's pooled upstream connections and returns the upstream's answer with every
//! injected secret redacted. Everything it needs comes from an immutable, pre-compiled
//! snapshot that a background service keeps fresh ([`ConfigSource`]); nothing on the request
//! path talks to a database or Redis. What happened is reported as events ([`EventSink`]),
//! queued in memory and delivered by another background service.
//!
//! [`spawn`] runs the whole thing on its own thread, so the same code serves the standalone
//! binary and `airlock dev` (which feeds snapshots in-process).

pub mod config;
mod events;
pub mod log_writer;
mod memory;
mod oauth;
mod proxy;
pub mod scope;
pub mod snapshot;
mod sync;
mod tls;

/// The request-path steps that `benches/hot_path.rs` measures and that are otherwise internal
/// to the proxy: rendering an invocation (template, secrets, host binding, HTTP types) and
/// redacting a response body. Re-exported as they are, so the benchmarks run the code the
/// proxy runs; not meant for other crates.
pub mod hot_path {
    pub use crate::proxy::redact::{RedactionIndex, RequestRedaction, StreamRedactor};
    pub use crate::proxy::render::{render, Invocation};
}

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use tokio::sync::watch;

pub use crate::events::{EventSink, EVENT_QUEUE_CAPACITY, KEY_USAGE_INTERVAL, STREAM_MAX_LEN};
use crate::proxy::Gateway;
use crate::snapshot::SnapshotStore;
use crate::sync::ConfigSync;

/// Everything [`spawn`] needs to run a data plane.
#[derive(Debug)]
pub struct DataPlaneConfig {
    /// Address the proxy listens on (port 0 is refused: callers need to know the port).
    pub listen: SocketAddr,
    /// Opens sealed secrets; several keys during a sealing-key rotation. Only data planes
    /// hold them.
    pub opening_keys: airlock_shared::seal::OpeningKeyring,
    /// Where environment snapshots come from.
    pub source: ConfigSource,
    /// Where events go.
    pub events: EventSink,
    /// Pingora worker threads (default 2).
    pub threads: usize,
    /// Extra PEM CA file trusted for upstream TLS, on top of the system roots.
    pub upstream_ca_file: Option<PathBuf>,
}

/// One snapshot handed to an in-process data plane.
#[derive(Debug)]
pub struct SnapshotDelivery {
    pub snapshot: airlock_shared::wire::EnvironmentSnapshot,
    /// Completed once the snapshot is live (or was ignored as stale), so the in-process
    /// control plane can answer a mutation only after its effect is visible: read-your-writes
    /// for `airlock dev`.
    pub applied: Option<tokio::sync::oneshot::Sender<()>>,
}

impl From<airlock_shared::wire::EnvironmentSnapshot> for SnapshotDelivery {
    fn from(snapshot: airlock_shared::wire::EnvironmentSnapshot) -> Self {
        Self {
            snapshot,
            applied: None,
        }
    }
}

/// Where the data plane gets its environment snapshots from.
pub enum ConfigSource {
    /// `airlock dev`: the in-process control plane sends every changed environment snapshot.
    InProcess(tokio::sync::mpsc::UnboundedReceiver<SnapshotDelivery>),
    /// Separate processes: snapshots in Redis.
    Redis {
        /// `redis://`, `rediss://` or `unix://` URL.
        url: String,
        /// Key and channel names (prefix) shared with the control plane.
        names: airlock_shared::keys::RedisNames,
    },
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InProcess(_) => f.write_str("InProcess"),
            // The URL may carry a Redis password.
            Self::Redis { names, .. } => f
                .debug_struct("Redis")
                .field("prefix", &names.prefix())
                .finish_non_exhaustive(),
        }
    }
}

/// Default number of Pingora worker threads.
pub const DEFAULT_THREADS: usize = 2;

/// How long [`spawn`] waits for the listener to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`DataPlaneHandle::shutdown`] lets in-flight invocations finish. Matches the
/// default upstream timeout, so a request that started just before shutdown can complete.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(airlock_shared::wire::DEFAULT_TIMEOUT_MS);

/// A running data plane. Dropping it stops the server without waiting for it.
pub struct DataPlaneHandle {
    listen: SocketAddr,
    gateway_state: Arc<proxy::GatewayState>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DataPlaneHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlaneHandle")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl DataPlaneHandle {
    /// The address the proxy accepts connections on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Whether the first sync from the config source has completed (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        self.gateway_state.store.is_synced()
    }

    /// Events lost so far because the queue was full or the sink was gone.
    pub fn dropped_events(&self) -> u64 {
        self.gateway_state.events.dropped()
    }

    /// Events not delivered because the sink is [`EventSink::Disabled`].
    pub fn discarded_events(&self) -> u64 {
        self.gateway_state.events.discarded()
    }

    /// Stop gracefully: report not-ready, let in-flight invocations finish (bounded), then stop
    /// Pingora and join its thread.
    pub fn shutdown(mut self) {
        self.gateway_state.begin_drain();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.gateway_state.in_flight() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("data plane server thread panicked");
            }
        }
        tracing::info!(listen = %self.listen, "data plane stopped");
    }
}

impl Drop for DataPlaneHandle {
    fn drop(&mut self) {
        // Without an explicit shutdown, at least tell the server to stop.
        let _ = self.stop.send(true);
    }
}

/// Pingora's shutdown hook, driven by [`DataPlaneHandle`] instead of Unix signals.
struct HandleShutdown(watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for HandleShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let mut stop = self.0.clone();
        // An error means the handle is gone: stop as well.
        let _ = stop.wait_for(|stop| *stop).await;
        ShutdownSignal::GracefulTerminate
    }
}

/// Start the data plane on its own thread.
///
/// Pingora's `Server::run` owns its tokio runtimes and cannot run inside another runtime, so it
/// gets a plain `std::thread`; this function may be called from inside a tokio runtime. Returns
/// once the listener accepts TCP connections, or an error (address in use, bad CA file...).
pub fn spawn(config: DataPlaneConfig) -> anyhow::Result<DataPlaneHandle> {
    let DataPlaneConfig {
        listen,
        opening_keys,
        source,
        events,
        threads,
        upstream_ca_file,
    } = config;
    if listen.port() == 0 {
        bail!("listen address {listen} needs an explicit port");
    }
    // Pingora binds inside its runtime and only logs (then retries for 30 s) when the address is
    // taken; binding here first turns that into an immediate, clear error.
    TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;

    let threads = threads.max(1);
    let conf = server_conf(threads);
    let mut client_options = ConnectorOptions::from_server_conf(&conf);
    // Kept until the upstream connector (which reads it) has been built.
    let ca_bundle = tls::upstream_ca_bundle(upstream_ca_file.as_deref())?;
    client_options.ca_file = ca_bundle.as_ref().map(tls::CaBundle::path);
    let connector = Connector::new(Some(client_options));
    drop(ca_bundle);

    let token_store = match &source {
        ConfigSource::Redis { url, names } => Some(oauth::store::RedisTokenStore::new(
            redis::Client::open(url.as_str()).context("invalid Redis URL")?,
            names.clone(),
        )),
        ConfigSource::InProcess(_) => None,
    };
    let token_http = oauth::endpoint::http_client(upstream_ca_file.as_deref())?;
    let store = Arc::new(SnapshotStore::new(opening_keys.clone()));
    let (emitter, event_delivery) = events::event_pipeline(events, EVENT_QUEUE_CAPACITY);
    let usage_reporter = event_delivery
        .as_ref()
        .map(|_| events::KeyUsageReporter::new(store.clone(), emitter.clone()));
    let tokens = oauth::TokenManager::new(opening_keys, token_store, token_http, emitter.clone());
    let gateway_state = Arc::new(proxy::GatewayState::new(
        store.clone(),
        emitter,
        tokens,
        connector,
    ));
    let mut proxy_service = Service::new(
        "airlock data plane".to_string(),
        Gateway::new(gateway_state.clone()),
    );
    proxy_service.add_tcp(&listen.to_string());
    let sync_service = background_service("config sync", ConfigSync::new(store, source));
    let event_service =
        event_delivery.map(|delivery| background_service("event delivery", delivery));
    let usage_service =
        usage_reporter.map(|reporter| background_service("key usage reports", reporter));

    let (stop, stop_rx) = watch::channel(false);
    let conf = server_conf(threads);
    let thread = std::thread::Builder::new()
        .name("airlock-data-plane".into())
        .spawn(move || {
            let mut server = Server::new_with_opt_and_conf(None, conf);
            server.bootstrap();
            server.add_service(sync_service);
            if let Some(event_service) = event_service {
                server.add_service(event_service);
            }
            if let Some(usage_service) = usage_service {
                server.add_service(usage_service);
            }
            server.add_service(proxy_service);
            server.run(RunArgs {
                shutdown_signal: Box::new(HandleShutdown(stop_rx)),
            });
        })
        .context("cannot start the data plane thread")?;

    let mut handle = DataPlaneHandle {
        listen,
        gateway_state,
        stop,
        thread: Some(thread),
    };
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
            tracing::info!(%listen, threads, "data plane listening");
            return Ok(handle);
        }
        let exited = handle.thread.as_ref().is_none_or(JoinHandle::is_finished);
        if exited || Instant::now() >= deadline {
            let _ = handle.stop.send(true);
            if let Some(thread) = handle.thread.take() {
                let _ = thread.join();
            }
            bail!("the data plane did not start listening on {listen}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn server_conf(threads: usize) -> ServerConf {
    ServerConf {
        threads,
        // Draining is done by DataPlaneHandle::shutdown before Pingora is told to stop, so
        // Pingora's own fixed grace sleep is not needed.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

/// A per-layer log filter that drops Pingora's events below INFO.
///
/// At DEBUG, Pingora logs every upstream request head it sends. Rendered header values are
/// marked sensitive (printed as `Sensitive`), but a function may put a secret into its URL
/// (`?key={{secrets.KEY}}`), and that would reach the log. Every subscriber that can be
/// turned up to DEBUG in a process running a data plane (the binary, `airlock dev`) should add
/// this filter to its output layer.
pub fn hide_pingora_debug_logs(
) -> tracing_subscriber::filter::FilterFn<fn(&tracing::Metadata<'_>) -> bool> {
    fn keep(metadata: &tracing::Metadata<'_>) -> bool {
        !(metadata.target().starts_with("pingora") && *metadata.level() > tracing::Level::INFO)
    }
    tracing_subscriber::filter::FilterFn::new(keep as fn(&tracing::Metadata<'_>) -> bool)
}

/// SIGTERM and SIGINT handlers for the binary, registered when created: before the ready
/// line is printed, so a supervisor that signals as soon as it reads that line is not lost.
pub struct ShutdownSignals {
    runtime: tokio::runtime::Runtime,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Register the handlers.
    pub fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot build the signal runtime")?;
        let (terminate, interrupt) = runtime.block_on(async {
            anyhow::Ok((
                signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
                signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            ))
        })?;
        Ok(Self {
            runtime,
            terminate,
            interrupt,
        })
    }

    /// Block until SIGTERM or SIGINT arrives.
    pub fn wait(mut self) {
        self.runtime.block_on(async {
            tokio::select! {
                _ = self.terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = self.interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
            }
        });
    }
}
