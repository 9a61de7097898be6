//! Airlock control plane: the GraphQL configuration API over the database, and publishing of
//! config snapshots to data planes. `airlock dev` also runs a data plane in the same process.
//!
//! - [`run`] starts a command from a validated [`config::Config`];
//! - [`app`] is the HTTP router (GraphQL, GraphiQL, health), testable without a socket;
//! - [`graphql::build_schema`] is the schema, testable with `schema.execute`.

#![forbid(unsafe_code)]

pub mod auth;
pub mod authz;
pub mod config;
pub mod db;
mod dev;
pub mod domain;
pub mod entity;
pub mod error;
pub mod events;
pub mod files;
pub mod graphql;
pub mod http;
pub mod publish;
mod reseal;
pub mod state;

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use axum::Router;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;

use crate::authz::Authz;
use crate::config::{Config, ControlConfig, DevConfig, ServeConfig};
use crate::domain::admin_tokens;
use crate::events::{EventIngester, InProcessEvents, RedisEvents, RedisEventsConfig};
use crate::publish::{ConfigPublisher, InProcessTransport, RedisTransport};
use crate::state::AppState;

/// The HTTP application: `/graphql` (POST: authenticated GraphQL, GET: GraphiQL), `/healthz`,
/// `/readyz`.
pub fn app(state: AppState) -> Router {
    http::router(state)
}

/// Log to stderr (stdout carries the ready lines scripts wait for). `RUST_LOG` overrides the
/// default `info` level.
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // `airlock dev` runs a data plane in this process: keep Pingora's DEBUG output (which can
    // show rendered upstream URLs) out of the log, as the data-plane binary does.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(airlock_data_plane::hide_pingora_debug_logs()),
        )
        .try_init();
}

/// Run one command until it finishes (servers: until Ctrl-C or SIGTERM).
pub async fn run(config: Config) -> anyhow::Result<()> {
    match config {
        Config::Keygen(keygen) => {
            let public = files::keygen(&keygen.out)?;
            println!("AIRLOCK_SEAL_PUBLIC_KEY={}", public.to_base64());
            Ok(())
        }
        Config::Dev(dev) => run_dev(dev).await,
        Config::Serve(serve) => run_serve(serve).await,
        Config::Reseal(reseal) => reseal::run(reseal).await,
    }
}

async fn run_dev(config: DevConfig) -> anyhow::Result<()> {
    let data_dir = &config.control.data_dir;
    files::ensure_data_dir(data_dir)?;
    let (opening_key, created) =
        files::load_or_create_opening_key(&data_dir.join(files::SEAL_KEY_FILE))?;
    if created {
        tracing::info!(path = %data_dir.join(files::SEAL_KEY_FILE).display(), "created the dev seal key");
    }
    let db = open_database(&config.control).await?;
    let token = bootstrap_admin_token(&db, data_dir).await?;

    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let publisher = ConfigPublisher::new(db.clone(), InProcessTransport::new(sender));
    let sealing_key = opening_key.sealing_key().clone();
    let authz = load_authz(&db).await?;
    let oidc = start_oidc(&config.control).await?;
    let listener = bind(config.control.control_addr).await?;
    // The data plane reports events over a channel; they are stored like those from Redis.
    let (events_sender, events) = InProcessEvents::channel();
    let ingester = EventIngester::start_with_publisher(db.clone(), events, publisher.clone());
    let data_plane = dev::start_data_plane(
        config.data_addr,
        opening_key,
        receiver,
        config.upstream_ca_file.clone(),
        airlock_data_plane::EventSink::InProcess(events_sender),
    )
    .await?;
    // OAuth redirect URIs point at the dev data plane unless told otherwise.
    let data_plane_url = config
        .control
        .data_plane_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", data_plane.listen_addr()));
    let state = AppState {
        publisher,
        sealing_key,
        db: db.clone(),
        public_url: config.control.public_url.clone(),
        data_plane_url: Some(data_plane_url),
        authz,
        oidc,
    };
    // Each publish returns once the data plane has applied it, so everything is live before
    // the ready lines below are printed.
    let environments = state.publisher.publish_all().await?;
    tracing::info!(environments, "published every environment");
    let shutdown = shutdown_signal()?;
    println!("control plane: http://{}/graphql", listener.local_addr()?);
    print_sign_in(&state, &config.control);
    println!("data plane: http://{}", data_plane.listen_addr());
    print_admin_token(token, data_dir);

    let served = serve(listener, state, shutdown).await;
    dev::stop_data_plane(data_plane).await;
    // After the data plane: what it flushed while stopping is in the channel, and is stored.
    let stats = ingester.shutdown().await;
    tracing::info!(?stats, "event ingestion stopped");
    db.close().await.context("closing the database")?;
    served
}

async fn run_serve(config: ServeConfig) -> anyhow::Result<()> {
    let data_dir = &config.control.data_dir;
    files::ensure_data_dir(data_dir)?;
    let db = open_database(&config.control).await?;
    let token = bootstrap_admin_token(&db, data_dir).await?;

    let transport = RedisTransport::connect(&config.redis_url, config.redis_names.clone())
        .await
        .context("cannot connect to Redis (REDIS_URL)")?
        .with_encoding(config.snapshot_encoding);
    let state = AppState {
        publisher: ConfigPublisher::new(db.clone(), transport),
        sealing_key: config.sealing_key.clone(),
        db: db.clone(),
        public_url: config.control.public_url.clone(),
        data_plane_url: config.control.data_plane_url.clone(),
        authz: load_authz(&db).await?,
        oidc: start_oidc(&config.control).await?,
    };
    let environments = state.publisher.publish_all().await?;
    tracing::info!(
        environments,
        prefix = config.redis_names.prefix(),
        encoding = %config.snapshot_encoding,
        "published every environment to Redis"
    );
    let events = RedisEvents::new(RedisEventsConfig::new(
        config.redis_url.clone(),
        config.redis_names.clone(),
    ))
    .context("cannot read events from Redis (REDIS_URL)")?;
    let ingester = EventIngester::start_with_publisher(db.clone(), events, state.publisher.clone());

    let listener = bind(config.control.control_addr).await?;
    let shutdown = shutdown_signal()?;
    println!("control plane: http://{}/graphql", listener.local_addr()?);
    print_sign_in(&state, &config.control);
    print_admin_token(token, data_dir);

    let served = serve(listener, state, shutdown).await;
    let stats = ingester.shutdown().await;
    tracing::info!(?stats, "event ingestion stopped");
    db.close().await.context("closing the database")?;
    served
}

/// How long startup waits for the OpenID provider's discovery document before giving up.
const OIDC_STARTUP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Discover the OpenID provider, when one is configured. An unreachable provider is retried
/// for [`OIDC_STARTUP_PATIENCE`], then startup fails: serving without sign-in would look like
/// a working installation that nobody can sign in to.
async fn start_oidc(config: &ControlConfig) -> anyhow::Result<Option<auth::oidc::Oidc>> {
    let Some(oidc) = &config.oidc else {
        return Ok(None);
    };
    let started = auth::oidc::Oidc::discover_with_retry(oidc, OIDC_STARTUP_PATIENCE)
        .await
        .map_err(|e| anyhow::anyhow!("OpenID Connect (AIRLOCK_OIDC_ISSUER): {e}"))?;
    tracing::info!(
        issuer = %oidc.issuer,
        client_id = %oidc.client_id,
        audience = %oidc.audience,
        redirect_uri = %oidc.redirect_url,
        "OpenID Connect sign-in enabled"
    );
    Ok(Some(started))
}

/// Connect and migrate. Errors name the setting, never the URL (it may hold a password).
async fn open_database(config: &ControlConfig) -> anyhow::Result<DatabaseConnection> {
    let url = config.database_url();
    let what = if config.database_url.is_some() {
        "the database (DATABASE_URL)".to_string()
    } else {
        format!("the database in {}", config.data_dir.display())
    };
    db::connect(&url)
        .await
        .with_context(|| format!("cannot open {what}"))
}

/// On first start, create the admin token and store it in `<data-dir>/admin-token` (0600).
/// Load the role assignments, and keep them fresh with changes made by other replicas.
async fn load_authz(db: &DatabaseConnection) -> anyhow::Result<Authz> {
    let authz = Authz::load(db.clone())
        .await
        .map_err(|e| anyhow::anyhow!("loading role assignments: {}", e.detail()))?;
    authz.spawn_periodic_reload();
    Ok(authz)
}

async fn bootstrap_admin_token(
    db: &DatabaseConnection,
    data_dir: &Path,
) -> anyhow::Result<Option<admin_tokens::NewAdminToken>> {
    let path = files::admin_token_path(data_dir);
    // A token file left by another database (say `airlock dev` before `airlock serve` in the
    // same data dir) is adopted by a fresh database rather than overwritten.
    let existing = std::fs::read_to_string(&path)
        .ok()
        .map(|text| text.trim().to_string());
    let token = admin_tokens::ensure_bootstrap(db, existing.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the admin token: {}", e.detail()))?;
    match token {
        Some(token) if existing.as_deref() == Some(token.plaintext.as_str()) => {
            tracing::info!(path = %path.display(), "this database adopted the admin token already in the data dir");
            Ok(None)
        }
        Some(token) => {
            files::replace_private(&path, &format!("{}\n", token.plaintext))
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(Some(token))
        }
        None => Ok(None),
    }
}

/// With OpenID Connect, where people sign in.
fn print_sign_in(state: &AppState, config: &ControlConfig) {
    if let (Some(_), Some(oidc)) = (&state.oidc, &config.oidc) {
        let login = oidc.redirect_url.trim_end_matches("/callback");
        println!("console sign-in: {login}/login");
    }
}

fn print_admin_token(token: Option<admin_tokens::NewAdminToken>, data_dir: &Path) {
    let path = files::admin_token_path(data_dir);
    match token {
        // Shown this once; the database only has its hash.
        Some(token) => println!("admin token: {}", token.plaintext),
        None if path.is_file() => println!("admin token: stored in {}", path.display()),
        None => println!(
            "admin token: created on an earlier start (not in {})",
            path.display()
        ),
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Serve until `shutdown` resolves, then finish in-flight requests.
async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("control plane server failed")
}

/// Register the SIGINT and SIGTERM handlers now, before the ready lines are printed (a
/// supervisor may signal as soon as it reads them), and return a future that resolves on the
/// first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("interrupted, shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
        }
    })
}
