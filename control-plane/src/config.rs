//! Configuration: command-line flags, then environment variables, then defaults (clap applies
//! that precedence), parsed into one [`Config`] and validated once, before anything starts.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use airlock_shared::keys::{RedisNames, DEFAULT_PREFIX};
use airlock_shared::seal::SealingKey;
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
}

/// `airlock keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// File to write the opening key to (created with mode 0600; never overwritten).
    #[arg(long)]
    pub out: PathBuf,
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
}

/// What both server commands need.
pub struct ControlConfig {
    pub data_dir: PathBuf,
    pub control_addr: SocketAddr,
    /// `None`: SQLite in the data directory.
    pub database_url: Option<String>,
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
}

/// `airlock keygen`, validated.
pub struct KeygenConfig {
    pub out: PathBuf,
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
                redis::Client::open(redis_url.as_str()).map_err(|_| {
                    config_error("REDIS_URL is not a valid Redis URL (expected redis://HOST[:PORT][/DB] or rediss://...)")
                })?;
                let prefix = args.redis_prefix;
                if prefix.is_empty() || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(config_error(
                        "AIRLOCK_REDIS_PREFIX must be non-empty and contain no whitespace",
                    ));
                }
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
                }))
            }
            CliCommand::Keygen(args) => Ok(Config::Keygen(KeygenConfig { out: args.out })),
        }
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
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
    let database_url = non_empty(args.database_url);
    if let Some(url) = &database_url {
        let known = ["postgres://", "postgresql://", "sqlite:"];
        if !known.iter().any(|scheme| url.starts_with(scheme)) {
            return Err(config_error(
                "DATABASE_URL must start with postgres://, postgresql:// or sqlite:",
            ));
        }
    }
    Ok(ControlConfig {
        data_dir: args.data_dir,
        control_addr: args.control_addr,
        database_url,
    })
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
