//! Command line and environment of the `airlock-data-plane` binary, parsed into one
//! [`DataPlaneConfig`] and validated once.

use std::net::SocketAddr;
use std::path::PathBuf;

use airlock_shared::keys::{RedisNames, DEFAULT_PREFIX};
use airlock_shared::seal::OpeningKey;
use anyhow::{bail, Context as _};
use zeroize::Zeroizing;

use crate::{ConfigSource, DataPlaneConfig, DEFAULT_THREADS};

/// Environment variable holding the base64 opening key when no key file is given. Not a flag:
/// command lines are visible to every user of the machine.
pub const SEAL_KEY_ENV: &str = "AIRLOCK_SEAL_KEY";

/// Airlock data plane: serves function invocations from config snapshots published in Redis.
#[derive(Debug, clap::Parser)]
#[command(name = "airlock-data-plane", version)]
pub struct Cli {
    /// Address to listen on.
    #[arg(long, env = "AIRLOCK_DATA_ADDR", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Redis holding the config snapshots (redis:// or rediss://).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: String,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "AIRLOCK_REDIS_PREFIX", default_value = DEFAULT_PREFIX)]
    pub redis_prefix: String,
    /// File holding the base64 seal opening key (otherwise the AIRLOCK_SEAL_KEY variable).
    #[arg(long, env = "AIRLOCK_SEAL_KEY_FILE")]
    pub seal_key_file: Option<PathBuf>,
    /// Pingora worker threads.
    #[arg(long, env = "AIRLOCK_DATA_THREADS", default_value_t = DEFAULT_THREADS)]
    pub threads: usize,
    /// Extra PEM CA file trusted for upstream TLS, on top of the system roots.
    #[arg(long, env = "AIRLOCK_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,
}

impl Cli {
    /// Validate and turn into the library's config. `seal_key_env` is the value of
    /// [`SEAL_KEY_ENV`], passed in so that tests need not touch the process environment.
    pub fn into_config(self, seal_key_env: Option<String>) -> anyhow::Result<DataPlaneConfig> {
        // Messages never echo the URL (it may carry a password) nor any part of the key.
        redis::Client::open(self.redis_url.as_str())
            .map_err(|_| {
                anyhow::anyhow!(
                    "invalid Redis URL (--redis-url / REDIS_URL): expected redis://, rediss:// or unix://"
                )
            })?;
        if self.redis_prefix.is_empty() {
            bail!("the Redis prefix must not be empty");
        }
        if self.threads == 0 {
            bail!("--threads must be at least 1");
        }
        let opening_key = load_opening_key(self.seal_key_file.as_deref(), seal_key_env)?;
        Ok(DataPlaneConfig {
            listen: self.listen,
            opening_key,
            source: ConfigSource::Redis {
                url: self.redis_url,
                names: RedisNames::new(self.redis_prefix),
            },
            threads: self.threads,
            upstream_ca_file: self.upstream_ca_file,
        })
    }
}

fn load_opening_key(
    file: Option<&std::path::Path>,
    env_value: Option<String>,
) -> anyhow::Result<OpeningKey> {
    let (text, origin) = match (file, env_value) {
        (Some(path), _) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the seal key file {}", path.display()))?,
            format!("seal key file {}", path.display()),
        ),
        (None, Some(value)) => (value, SEAL_KEY_ENV.to_string()),
        (None, None) => {
            bail!("no seal key: set --seal-key-file / AIRLOCK_SEAL_KEY_FILE or {SEAL_KEY_ENV}")
        }
    };
    let text = Zeroizing::new(text);
    OpeningKey::from_base64(&text).with_context(|| format!("invalid {origin}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut argv = vec!["airlock-data-plane"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap()
    }

    #[test]
    fn valid_config_from_env_key() {
        let key = OpeningKey::generate();
        let config = cli(&[
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--redis-prefix",
            "t1",
        ])
        .into_config(Some(key.to_base64().to_string()))
        .unwrap();
        assert_eq!(config.listen.port(), 8081);
        assert_eq!(
            config.opening_key.sealing_key().key_id(),
            key.sealing_key().key_id()
        );
        match config.source {
            ConfigSource::Redis { names, .. } => assert_eq!(names.prefix(), "t1"),
            ConfigSource::InProcess(_) => panic!("expected Redis"),
        }
    }

    #[test]
    fn key_file_wins_over_env() {
        let key = OpeningKey::generate();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("{}\n", key.to_base64().as_str())).unwrap();
        let config = cli(&[
            "--redis-url",
            "redis://127.0.0.1",
            "--seal-key-file",
            file.path().to_str().unwrap(),
        ])
        .into_config(Some("garbage".into()))
        .unwrap();
        assert_eq!(
            config.opening_key.sealing_key().key_id(),
            key.sealing_key().key_id()
        );
    }

    #[test]
    fn clear_errors_without_leaking() {
        let err = cli(&["--redis-url", "redis://127.0.0.1"])
            .into_config(None)
            .unwrap_err();
        assert!(format!("{err:#}").contains("no seal key"), "{err:#}");

        let err = cli(&["--redis-url", "redis://127.0.0.1"])
            .into_config(Some("bm90LWEta2V5LXNlY3JldA==".into()))
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(SEAL_KEY_ENV), "{text}");
        assert!(!text.contains("bm90LWEta2V5"), "{text}");

        let err = cli(&["--redis-url", "http://user:hunter2@host"])
            .into_config(Some(OpeningKey::generate().to_base64().to_string()))
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("invalid Redis URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");

        assert!(Cli::try_parse_from(["airlock-data-plane"]).is_err());
    }
}
