//! Configuration: command-line flags, then environment variables, then defaults (clap applies
//! that precedence), parsed into one [`Config`] and validated once, before anything starts.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use airlock_shared::keys::{RedisNames, DEFAULT_PREFIX};
use airlock_shared::seal::SealingKey;
use airlock_shared::wire::SnapshotEncoding;
use clap::{Args, Parser, Subcommand};

/// A configuration problem, reported before startup.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn config_error(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

/// `airlock`: the Airlock control plane.
#[derive(Debug, Parser)]
#[command(
    name = "airlock",
    version,
    about = "Airlock: a self-hosted secretless API gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run the control plane and a data plane in one process (SQLite, no Redis).
    Dev(DevArgs),
    /// Run the control plane alone, publishing config to data planes through Redis.
    Serve(ServeArgs),
    /// Write a new data-plane opening key and print the public key for the control plane.
    Keygen(KeygenArgs),
    /// Re-seal every stored secret version from an old sealing key to a new one (key rotation;
    /// see docs/OPERATIONS.md).
    Reseal(ResealArgs),
}

/// Flags shared by `dev` and `serve`.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Directory for the SQLite database, the admin token file and (dev) the seal key.
    #[arg(long, env = "AIRLOCK_DATA_DIR", default_value = ".airlock")]
    pub data_dir: PathBuf,
    /// Address the control plane (GraphQL) listens on.
    #[arg(long, env = "AIRLOCK_CONTROL_ADDR", default_value = "127.0.0.1:8080", value_parser = parse_addr)]
    pub control_addr: SocketAddr,
    /// Database URL (`postgres://...` or `sqlite://...`); default: SQLite in the data directory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Base URL people reach this control plane at (`https://airlock.example.com`), used in
    /// the provisioning links it hands out; default: `http://` + the request's `Host`.
    #[arg(long, env = "AIRLOCK_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Base URL browsers reach the data planes at (`https://gateway.example.com`): OAuth
    /// redirect URIs default to it + `/v1/oauth/callback`. Default in `airlock dev`: the dev
    /// data plane's address.
    #[arg(long, env = "AIRLOCK_DATA_PLANE_URL")]
    pub data_plane_url: Option<String>,
    #[command(flatten)]
    pub oidc: OidcArgs,
}

/// OpenID Connect sign-in (console) and bearer JWTs (API). All optional; without them only
/// admin tokens authenticate.
#[derive(Debug, Args)]
pub struct OidcArgs {
    /// Issuer URL of the OpenID provider (`https://login.example.com/realms/acme`), exactly as
    /// its tokens' `iss`. Enables console sign-in and bearer JWTs.
    #[arg(long, env = "AIRLOCK_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Client id of Airlock's console at the provider.
    #[arg(long, env = "AIRLOCK_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,
    /// Client secret (prefer AIRLOCK_OIDC_CLIENT_SECRET_FILE: a flag shows in `ps`).
    #[arg(long, env = "AIRLOCK_OIDC_CLIENT_SECRET", hide_env_values = true)]
    pub oidc_client_secret: Option<String>,
    /// File holding the client secret (one line).
    #[arg(long, env = "AIRLOCK_OIDC_CLIENT_SECRET_FILE")]
    pub oidc_client_secret_file: Option<PathBuf>,
    /// The `aud` bearer JWTs must carry; default: the client id.
    #[arg(long, env = "AIRLOCK_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
}

/// `airlock dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Address the in-process data plane listens on.
    #[arg(long, env = "AIRLOCK_DATA_ADDR", default_value = "127.0.0.1:8081", value_parser = parse_addr)]
    pub data_addr: SocketAddr,
    /// Extra CA certificate (PEM) the data plane trusts for upstream TLS.
    #[arg(long, env = "AIRLOCK_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,
}

/// `airlock serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Redis URL; data planes read config from the same Redis.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel; must match the data planes'.
    #[arg(long, env = "AIRLOCK_REDIS_PREFIX", default_value = DEFAULT_PREFIX)]
    pub redis_prefix: String,
    /// Base64 public key secrets are sealed to (printed by `airlock keygen`).
    #[arg(long, env = "AIRLOCK_SEAL_PUBLIC_KEY")]
    pub seal_public_key: Option<String>,
    /// How snapshots are encoded in Redis: `binary` (compact, fast to decode; data planes
    /// since it exists read it) or `json` (every data plane reads it). See
    /// `docs/OPERATIONS.md`, "Snapshot encoding", for upgrades.
    #[arg(long, env = "AIRLOCK_SNAPSHOT_ENCODING", default_value_t = SnapshotEncoding::Binary)]
    pub snapshot_encoding: SnapshotEncoding,
}

/// `airlock keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// File to write the opening key to (created with mode 0600; never overwritten).
    #[arg(long)]
    pub out: PathBuf,
}

/// `airlock reseal`.
#[derive(Debug, Args)]
pub struct ResealArgs {
    /// File holding the old opening (private) key, as written by `airlock keygen` (several
    /// keys: one per line or comma-separated). Keys are read from this file only.
    #[arg(long)]
    pub from_key_file: PathBuf,
    /// The new base64 public key (printed by `airlock keygen`) to re-seal to.
    #[arg(long)]
    pub to_public_key: String,
    /// Directory holding the default SQLite database.
    #[arg(long, env = "AIRLOCK_DATA_DIR", default_value = ".airlock")]
    pub data_dir: PathBuf,
    /// Database URL (`postgres://...` or `sqlite://...`); default: SQLite in the data directory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Redis URL: republish the snapshots of every affected environment there.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel; must match the data planes'.
    #[arg(long, env = "AIRLOCK_REDIS_PREFIX", default_value = DEFAULT_PREFIX)]
    pub redis_prefix: String,
    /// How snapshots are encoded in Redis: `binary` (compact, fast to decode; data planes
    /// since it exists read it) or `json` (every data plane reads it). See
    /// `docs/OPERATIONS.md`, "Snapshot encoding", for upgrades.
    #[arg(long, env = "AIRLOCK_SNAPSHOT_ENCODING", default_value_t = SnapshotEncoding::Binary)]
    pub snapshot_encoding: SnapshotEncoding,
    /// Secret versions re-sealed per transaction.
    #[arg(long, default_value_t = crate::domain::reseal::DEFAULT_BATCH_SIZE)]
    pub batch_size: u64,
    /// Check and count only: open every version with the old key, write and publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `HOST:PORT`, where HOST is an IP address or a name that resolves.
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("`{text}` is not a HOST:PORT address"))
}

/// Validated configuration of one command.
pub enum Config {
    Dev(DevConfig),
    Serve(ServeConfig),
    Keygen(KeygenConfig),
    Reseal(ResealConfig),
}

/// What both server commands need.
pub struct ControlConfig {
    pub data_dir: PathBuf,
    pub control_addr: SocketAddr,
    /// `None`: SQLite in the data directory.
    pub database_url: Option<String>,
    /// Validated public base URL (no trailing slash); `None`: from each request's `Host`.
    pub public_url: Option<String>,
    /// Validated data-plane base URL (no trailing slash), for OAuth redirect URIs.
    pub data_plane_url: Option<String>,
    /// OpenID Connect sign-in and bearer JWTs; `None`: admin tokens only.
    pub oidc: Option<OidcConfig>,
}

/// OpenID Connect settings, validated: all of them or none.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: ClientSecretValue,
    /// The `aud` required of bearer JWTs.
    pub audience: String,
    /// `<public URL>/auth/callback`: the redirect URI to register at the provider.
    pub redirect_url: String,
}

/// The OIDC client secret. `Debug` hides it; it is wiped from memory when dropped.
#[derive(Clone)]
pub struct ClientSecretValue(zeroize::Zeroizing<String>);

impl ClientSecretValue {
    pub fn new(secret: String) -> Self {
        Self(zeroize::Zeroizing::new(secret))
    }

    /// The secret itself, for the token request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecretValue(..)")
    }
}

impl ControlConfig {
    /// The database URL to connect to.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| crate::db::sqlite_url(&self.data_dir))
    }
}

/// `airlock dev`, validated.
pub struct DevConfig {
    pub control: ControlConfig,
    pub data_addr: SocketAddr,
    pub upstream_ca_file: Option<PathBuf>,
}

/// `airlock serve`, validated.
pub struct ServeConfig {
    pub control: ControlConfig,
    pub redis_url: String,
    pub redis_names: RedisNames,
    pub sealing_key: SealingKey,
    /// How snapshots are encoded in Redis.
    pub snapshot_encoding: SnapshotEncoding,
}

/// `airlock keygen`, validated.
pub struct KeygenConfig {
    pub out: PathBuf,
}

/// `airlock reseal`, validated. Holds no private key: the key file is read when the command
/// runs, so the key lives no longer than the run.
pub struct ResealConfig {
    pub from_key_file: PathBuf,
    pub to_key: SealingKey,
    /// `None`: SQLite in `data_dir`, which must already exist.
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    /// Where to republish affected environments; `None`: not republished.
    pub redis: Option<(String, RedisNames)>,
    /// How republished snapshots are encoded.
    pub snapshot_encoding: SnapshotEncoding,
    pub batch_size: u64,
    pub dry_run: bool,
}

impl Cli {
    /// Validate the parsed command line into a [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        match self.command {
            CliCommand::Dev(args) => {
                let control = control_config(args.control)?;
                if args.data_addr == control.control_addr && args.data_addr.port() != 0 {
                    return Err(config_error(format!(
                        "--control-addr and --data-addr are both {}; they need different ports",
                        args.data_addr
                    )));
                }
                if let Some(ca) = &args.upstream_ca_file {
                    if !ca.is_file() {
                        return Err(config_error(format!(
                            "AIRLOCK_UPSTREAM_CA_FILE / --upstream-ca-file: {} is not a readable file",
                            ca.display()
                        )));
                    }
                }
                Ok(Config::Dev(DevConfig {
                    control,
                    data_addr: args.data_addr,
                    upstream_ca_file: args.upstream_ca_file,
                }))
            }
            CliCommand::Serve(args) => {
                let control = control_config(args.control)?;
                let redis_url = non_empty(args.redis_url).ok_or_else(|| {
                    config_error("REDIS_URL (or --redis-url) is required: `airlock serve` publishes config to data planes through Redis")
                })?;
                check_redis_url(&redis_url)?;
                let prefix = args.redis_prefix;
                check_redis_prefix(&prefix)?;
                let public_key = non_empty(args.seal_public_key).ok_or_else(|| {
                    config_error("AIRLOCK_SEAL_PUBLIC_KEY (or --seal-public-key) is required: the base64 public key printed by `airlock keygen`")
                })?;
                let sealing_key = SealingKey::from_base64(&public_key)
                    .map_err(|e| config_error(format!("AIRLOCK_SEAL_PUBLIC_KEY: {e}")))?;
                Ok(Config::Serve(ServeConfig {
                    control,
                    redis_url,
                    redis_names: RedisNames::new(prefix),
                    sealing_key,
                    snapshot_encoding: args.snapshot_encoding,
                }))
            }
            CliCommand::Keygen(args) => Ok(Config::Keygen(KeygenConfig { out: args.out })),
            CliCommand::Reseal(args) => reseal_config(args).map(Config::Reseal),
        }
    }
}

fn check_redis_url(url: &str) -> Result<(), ConfigError> {
    redis::Client::open(url).map(drop).map_err(|_| {
        config_error("REDIS_URL is not a valid Redis URL (expected redis://HOST[:PORT][/DB] or rediss://...)")
    })
}

fn check_redis_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(config_error(
            "AIRLOCK_REDIS_PREFIX must be non-empty and contain no whitespace",
        ));
    }
    Ok(())
}

fn reseal_config(args: ResealArgs) -> Result<ResealConfig, ConfigError> {
    if !args.from_key_file.is_file() {
        return Err(config_error(format!(
            "--from-key-file: {} is not a readable file",
            args.from_key_file.display()
        )));
    }
    let to_key = SealingKey::from_base64(&args.to_public_key)
        .map_err(|e| config_error(format!("--to-public-key: {e}")))?;
    let database_url = check_database_url(non_empty(args.database_url))?;
    if database_url.is_none() && !crate::db::sqlite_path(&args.data_dir).is_file() {
        return Err(config_error(format!(
            "no database at {}: pass --database-url (or DATABASE_URL), or the --data-dir of the control plane",
            crate::db::sqlite_path(&args.data_dir).display()
        )));
    }
    let redis = match non_empty(args.redis_url) {
        Some(url) => {
            check_redis_url(&url)?;
            check_redis_prefix(&args.redis_prefix)?;
            Some((url, RedisNames::new(args.redis_prefix)))
        }
        None => None,
    };
    if args.batch_size == 0 {
        return Err(config_error("--batch-size must be at least 1"));
    }
    Ok(ResealConfig {
        from_key_file: args.from_key_file,
        to_key,
        database_url,
        data_dir: args.data_dir,
        redis,
        snapshot_encoding: args.snapshot_encoding,
        batch_size: args.batch_size,
        dry_run: args.dry_run,
    })
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn check_database_url(url: Option<String>) -> Result<Option<String>, ConfigError> {
    if let Some(url) = &url {
        let known = ["postgres://", "postgresql://", "sqlite:"];
        if !known.iter().any(|scheme| url.starts_with(scheme)) {
            return Err(config_error(
                "DATABASE_URL must start with postgres://, postgresql:// or sqlite:",
            ));
        }
    }
    Ok(url)
}

/// `http(s)://host[:port][/path]`, without query, fragment or credentials; returned without
/// a trailing slash.
fn check_public_url(url: &str) -> Result<String, ConfigError> {
    check_base_url(
        "AIRLOCK_PUBLIC_URL / --public-url",
        "https://airlock.example.com",
        url,
    )
}

/// [`check_public_url`] for `AIRLOCK_DATA_PLANE_URL`.
fn check_data_plane_url(url: &str) -> Result<String, ConfigError> {
    check_base_url(
        "AIRLOCK_DATA_PLANE_URL / --data-plane-url",
        "https://gateway.example.com",
        url,
    )
}

fn check_base_url(setting: &str, example: &str, url: &str) -> Result<String, ConfigError> {
    let bad = || {
        config_error(format!(
            "{setting}: `{url}` is not an http(s) base URL (like {example})"
        ))
    };
    let uri: axum::http::Uri = url.trim().parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let authority = uri.authority().ok_or_else(bad)?;
    if !scheme_ok || authority.as_str().contains('@') || uri.query().is_some() || url.contains('#')
    {
        return Err(bad());
    }
    Ok(url.trim().trim_end_matches('/').to_string())
}

fn control_config(args: ControlArgs) -> Result<ControlConfig, ConfigError> {
    if args.data_dir.as_os_str().is_empty() {
        return Err(config_error("--data-dir must not be empty"));
    }
    if args.data_dir.exists() && !args.data_dir.is_dir() {
        return Err(config_error(format!(
            "--data-dir {} exists and is not a directory",
            args.data_dir.display()
        )));
    }
    let database_url = check_database_url(non_empty(args.database_url))?;
    let public_url = non_empty(args.public_url)
        .map(|url| check_public_url(&url))
        .transpose()?;
    let data_plane_url = non_empty(args.data_plane_url)
        .map(|url| check_data_plane_url(&url))
        .transpose()?;
    let oidc = oidc_config(args.oidc, public_url.as_deref(), args.control_addr)?;
    Ok(ControlConfig {
        data_dir: args.data_dir,
        control_addr: args.control_addr,
        database_url,
        public_url,
        data_plane_url,
        oidc,
    })
}

/// All of issuer, client id and client secret, or none of them (nor an audience).
fn oidc_config(
    args: OidcArgs,
    public_url: Option<&str>,
    control_addr: SocketAddr,
) -> Result<Option<OidcConfig>, ConfigError> {
    let issuer = non_empty(args.oidc_issuer);
    let client_id = non_empty(args.oidc_client_id);
    let secret = non_empty(args.oidc_client_secret);
    let secret_file = args
        .oidc_client_secret_file
        .filter(|path| !path.as_os_str().is_empty());
    let audience = non_empty(args.oidc_audience);
    if issuer.is_none()
        && client_id.is_none()
        && secret.is_none()
        && secret_file.is_none()
        && audience.is_none()
    {
        return Ok(None);
    }
    let mut missing = Vec::new();
    if issuer.is_none() {
        missing.push("AIRLOCK_OIDC_ISSUER");
    }
    if client_id.is_none() {
        missing.push("AIRLOCK_OIDC_CLIENT_ID");
    }
    if secret.is_none() && secret_file.is_none() {
        missing.push("AIRLOCK_OIDC_CLIENT_SECRET (or AIRLOCK_OIDC_CLIENT_SECRET_FILE)");
    }
    let (Some(issuer), Some(client_id)) = (issuer, client_id) else {
        return Err(oidc_incomplete(&missing));
    };
    let client_secret = match (secret, secret_file) {
        (Some(_), Some(_)) => {
            return Err(config_error(
                "set AIRLOCK_OIDC_CLIENT_SECRET or AIRLOCK_OIDC_CLIENT_SECRET_FILE, not both",
            ))
        }
        (Some(secret), None) => secret.trim().to_string(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                config_error(format!(
                    "AIRLOCK_OIDC_CLIENT_SECRET_FILE: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            let secret = text.trim().to_string();
            if secret.is_empty() {
                return Err(config_error(format!(
                    "AIRLOCK_OIDC_CLIENT_SECRET_FILE: {} is empty",
                    path.display()
                )));
            }
            secret
        }
        (None, None) => return Err(oidc_incomplete(&missing)),
    };
    check_issuer(&issuer)?;
    let base = match public_url {
        Some(url) => url.to_string(),
        None if !control_addr.ip().is_unspecified() => format!("http://{control_addr}"),
        None => {
            return Err(config_error(format!(
                "AIRLOCK_PUBLIC_URL (or --public-url) is required with OpenID Connect when \
                 listening on {control_addr}: it makes the redirect URI (<public URL>/auth/callback)"
            )))
        }
    };
    Ok(Some(OidcConfig {
        audience: audience.unwrap_or_else(|| client_id.clone()),
        issuer,
        client_id,
        client_secret: ClientSecretValue::new(client_secret),
        redirect_url: format!("{base}/auth/callback"),
    }))
}

fn oidc_incomplete(missing: &[&str]) -> ConfigError {
    config_error(format!(
        "OpenID Connect needs AIRLOCK_OIDC_ISSUER, AIRLOCK_OIDC_CLIENT_ID and a client secret \
         together; missing: {}",
        missing.join(", ")
    ))
}

/// An https URL without query, fragment or credentials; plain http only on a loopback host
/// (a local test provider).
fn check_issuer(issuer: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| config_error(format!("AIRLOCK_OIDC_ISSUER `{issuer}`: {why}"));
    let uri: axum::http::Uri = issuer.parse().map_err(|_| bad("is not a URL"))?;
    let host = uri.host().ok_or_else(|| bad("has no host"))?;
    if uri.query().is_some() || issuer.contains('#') || issuer.contains('@') {
        return Err(bad("must not have a query, fragment or credentials"));
    }
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if loopback => Ok(()),
        Some("http") => Err(bad("must be https (http is accepted for localhost only)")),
        _ => Err(bad("must be an https URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("airlock").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.into_config().map_err(|e| e.to_string())
    }

    fn public_key() -> String {
        airlock_shared::seal::OpeningKey::generate()
            .sealing_key()
            .to_base64()
    }

    #[test]
    fn dev_flags_are_parsed() {
        let Ok(Config::Dev(dev)) = parse(&[
            "dev",
            "--data-dir",
            "/tmp/x",
            "--control-addr",
            "127.0.0.1:9000",
            "--data-addr",
            "127.0.0.1:9001",
        ]) else {
            panic!("dev config expected");
        };
        assert_eq!(dev.control.control_addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(dev.data_addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(dev.control.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn dev_defaults_use_sqlite_in_the_data_dir() {
        let Ok(Config::Dev(dev)) = parse(&["dev", "--database-url", ""]) else {
            panic!("dev config expected");
        };
        assert_eq!(
            dev.control.database_url(),
            "sqlite://.airlock/airlock.db?mode=rwc"
        );
    }

    #[test]
    fn bad_addresses_are_errors_not_panics() {
        let error = parse(&["dev", "--control-addr", "nope"]).err().unwrap();
        assert!(error.contains("not a HOST:PORT address"), "{error}");
        let error = parse(&[
            "dev",
            "--control-addr",
            "127.0.0.1:9000",
            "--data-addr",
            "127.0.0.1:9000",
        ])
        .err()
        .unwrap();
        assert!(error.contains("different ports"), "{error}");
    }

    #[test]
    fn serve_requires_redis_and_a_valid_public_key() {
        let key = public_key();
        let error = parse(&["serve", "--redis-url", "", "--seal-public-key", &key])
            .err()
            .unwrap();
        assert!(error.contains("REDIS_URL"), "{error}");
        let error = parse(&[
            "serve",
            "--redis-url",
            "redis://127.0.0.1",
            "--seal-public-key",
            "abc",
        ])
        .err()
        .unwrap();
        assert!(error.contains("AIRLOCK_SEAL_PUBLIC_KEY"), "{error}");
        let error = parse(&[
            "serve",
            "--redis-url",
            "http://x",
            "--seal-public-key",
            &key,
        ])
        .err()
        .unwrap();
        assert!(error.contains("not a valid Redis URL"), "{error}");
        let error = parse(&[
            "serve",
            "--redis-url",
            "redis://127.0.0.1",
            "--seal-public-key",
            &key,
            "--database-url",
            "mysql://x",
        ])
        .err()
        .unwrap();
        assert!(error.contains("DATABASE_URL"), "{error}");

        let Ok(Config::Serve(serve)) = parse(&[
            "serve",
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--redis-prefix",
            "t1",
            "--seal-public-key",
            &key,
        ]) else {
            panic!("serve config expected");
        };
        assert_eq!(serve.redis_names.prefix(), "t1");
        assert_eq!(serve.sealing_key.to_base64(), key);
        assert_eq!(serve.snapshot_encoding, SnapshotEncoding::Binary);

        let serve_with = |encoding: &str| {
            parse(&[
                "serve",
                "--redis-url",
                "redis://127.0.0.1:6379",
                "--seal-public-key",
                &key,
                "--snapshot-encoding",
                encoding,
            ])
        };
        let Ok(Config::Serve(serve)) = serve_with("json") else {
            panic!("serve config expected");
        };
        assert_eq!(serve.snapshot_encoding, SnapshotEncoding::Json);
        let error = serve_with("msgpack").err().unwrap();
        assert!(error.contains("json or binary"), "{error}");
    }

    #[test]
    fn public_url_is_validated_and_normalised() {
        let Ok(Config::Dev(dev)) = parse(&["dev", "--public-url", "https://airlock.example.com/"])
        else {
            panic!("dev config expected");
        };
        assert_eq!(
            dev.control.public_url.as_deref(),
            Some("https://airlock.example.com")
        );
        let Ok(Config::Dev(dev)) = parse(&["dev", "--public-url", "http://10.0.0.1:8080/airlock"])
        else {
            panic!("dev config expected");
        };
        assert_eq!(
            dev.control.public_url.as_deref(),
            Some("http://10.0.0.1:8080/airlock")
        );
        for bad in [
            "airlock.example.com",
            "ftp://airlock.example.com",
            "https://user:pw@airlock.example.com",
            "https://airlock.example.com/?x=1",
            "https://airlock.example.com/#frag",
        ] {
            let error = parse(&["dev", "--public-url", bad]).err().unwrap();
            assert!(error.contains("AIRLOCK_PUBLIC_URL"), "{bad}: {error}");
        }
    }

    #[test]
    fn data_plane_url_is_validated_and_normalised() {
        let Ok(Config::Dev(dev)) = parse(&["dev", "--data-plane-url", "https://gw.example.com/"])
        else {
            panic!("dev config expected");
        };
        assert_eq!(
            dev.control.data_plane_url.as_deref(),
            Some("https://gw.example.com")
        );
        let Ok(Config::Dev(dev)) = parse(&["dev"]) else {
            panic!("dev config expected");
        };
        assert_eq!(dev.control.data_plane_url, None);
        for bad in [
            "gw.example.com",
            "https://u:p@gw.example.com",
            "https://gw.example.com/#x",
        ] {
            let error = parse(&["dev", "--data-plane-url", bad]).err().unwrap();
            assert!(error.contains("AIRLOCK_DATA_PLANE_URL"), "{bad}: {error}");
        }
    }

    #[test]
    fn reseal_needs_a_key_file_a_public_key_and_an_existing_database() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("old.key");
        std::fs::write(&key_file, "k").unwrap();
        let key_path = key_file.to_str().unwrap();
        let data_dir = dir.path().to_str().unwrap();
        let public = public_key();
        let base = |extra: &[&str]| {
            let mut args = vec!["reseal", "--from-key-file", key_path, "--to-public-key"];
            args.extend_from_slice(extra);
            parse(&args)
        };

        let error = base(&[&public, "--data-dir", data_dir]).err().unwrap();
        assert!(error.contains("no database at"), "{error}");
        let error = base(&["not-a-key", "--database-url", "sqlite://x.db"])
            .err()
            .unwrap();
        assert!(error.contains("--to-public-key"), "{error}");
        let error = parse(&[
            "reseal",
            "--from-key-file",
            "/nonexistent/old.key",
            "--to-public-key",
            &public,
            "--database-url",
            "sqlite://x.db",
        ])
        .err()
        .unwrap();
        assert!(error.contains("--from-key-file"), "{error}");
        let error = base(&[&public, "--database-url", "mysql://x"])
            .err()
            .unwrap();
        assert!(error.contains("DATABASE_URL"), "{error}");
        let error = base(&[
            &public,
            "--database-url",
            "sqlite://x.db",
            "--batch-size",
            "0",
        ])
        .err()
        .unwrap();
        assert!(error.contains("--batch-size"), "{error}");
        let error = base(&[
            &public,
            "--database-url",
            "sqlite://x.db",
            "--redis-url",
            "http://x",
        ])
        .err()
        .unwrap();
        assert!(error.contains("not a valid Redis URL"), "{error}");
        // The private key is never a flag.
        assert!(base(&[
            &public,
            "--database-url",
            "sqlite://x.db",
            "--from-key",
            "k"
        ])
        .is_err());

        std::fs::write(crate::db::sqlite_path(dir.path()), "").unwrap();
        let Ok(Config::Reseal(reseal)) = base(&[
            &public,
            "--data-dir",
            data_dir,
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--redis-prefix",
            "t1",
            "--dry-run",
        ]) else {
            panic!("reseal config expected");
        };
        assert_eq!(reseal.to_key.to_base64(), public);
        assert_eq!(reseal.database_url, None);
        assert_eq!(reseal.batch_size, crate::domain::reseal::DEFAULT_BATCH_SIZE);
        assert!(reseal.dry_run);
        let (url, names) = reseal.redis.unwrap();
        assert_eq!(
            (url.as_str(), names.prefix()),
            ("redis://127.0.0.1:6379", "t1")
        );
    }

    #[test]
    fn oidc_settings_are_all_or_nothing() {
        let Ok(Config::Dev(dev)) = parse(&["dev"]) else {
            panic!("dev config expected");
        };
        assert!(dev.control.oidc.is_none());
        for (args, wanted) in [
            (
                &["--oidc-issuer", "https://idp.example.com"][..],
                "missing: AIRLOCK_OIDC_CLIENT_ID, AIRLOCK_OIDC_CLIENT_SECRET",
            ),
            (
                &["--oidc-client-id", "c", "--oidc-client-secret", "s"][..],
                "missing: AIRLOCK_OIDC_ISSUER",
            ),
            (
                &["--oidc-audience", "api"][..],
                "missing: AIRLOCK_OIDC_ISSUER",
            ),
            (
                &[
                    "--oidc-issuer",
                    "http://idp.example.com",
                    "--oidc-client-id",
                    "c",
                    "--oidc-client-secret",
                    "s",
                ][..],
                "must be https",
            ),
            (
                &[
                    "--oidc-issuer",
                    "https://idp.example.com",
                    "--oidc-client-id",
                    "c",
                    "--oidc-client-secret-file",
                    "/nonexistent/secret",
                ][..],
                "cannot read /nonexistent/secret",
            ),
        ] {
            let mut all = vec!["dev"];
            all.extend_from_slice(args);
            let error = parse(&all).err().unwrap();
            assert!(error.contains(wanted), "{args:?}: {error}");
        }

        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, "s3cret\n").unwrap();
        let Ok(Config::Dev(dev)) = parse(&[
            "dev",
            "--control-addr",
            "127.0.0.1:9000",
            "--oidc-issuer",
            "http://127.0.0.1:4000",
            "--oidc-client-id",
            "console",
            "--oidc-client-secret-file",
            secret_file.to_str().unwrap(),
        ]) else {
            panic!("dev config expected");
        };
        let oidc = dev.control.oidc.unwrap();
        assert_eq!(oidc.client_secret.expose(), "s3cret");
        assert!(!format!("{oidc:?}").contains("s3cret"));
        assert_eq!(
            oidc.audience, "console",
            "the audience defaults to the client id"
        );
        assert_eq!(oidc.redirect_url, "http://127.0.0.1:9000/auth/callback");

        let Ok(Config::Dev(dev)) = parse(&[
            "dev",
            "--public-url",
            "https://airlock.example.com/",
            "--oidc-issuer",
            "https://idp.example.com/realms/acme",
            "--oidc-client-id",
            "console",
            "--oidc-client-secret",
            "s",
            "--oidc-audience",
            "https://api.airlock.example.com",
        ]) else {
            panic!("dev config expected");
        };
        let oidc = dev.control.oidc.unwrap();
        assert_eq!(oidc.audience, "https://api.airlock.example.com");
        assert_eq!(
            oidc.redirect_url,
            "https://airlock.example.com/auth/callback"
        );
        let error = parse(&[
            "dev",
            "--control-addr",
            "0.0.0.0:9000",
            "--oidc-issuer",
            "https://idp.example.com",
            "--oidc-client-id",
            "c",
            "--oidc-client-secret",
            "s",
        ])
        .err()
        .unwrap();
        assert!(error.contains("AIRLOCK_PUBLIC_URL"), "{error}");
    }

    #[test]
    fn keygen_requires_out() {
        assert!(parse(&["keygen"]).is_err());
        assert!(matches!(
            parse(&["keygen", "--out", "k"]),
            Ok(Config::Keygen(_))
        ));
    }
}
