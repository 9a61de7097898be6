//! Command line and environment of the `airlock-data-plane` binary, parsed into one
//! [`DataPlaneConfig`] and validated once.

use std::net::SocketAddr;
use std::path::PathBuf;

use airlock_shared::keys::{RedisNames, DEFAULT_PREFIX};
use airlock_shared::seal::OpeningKeyring;
use anyhow::{bail, Context as _};
use zeroize::Zeroizing;

use crate::{ConfigSource, DataPlaneConfig, EventSink, DEFAULT_THREADS};

/// Environment variable holding the base64 opening key(s), comma-separated, when no key file
/// is given. Not a flag: command lines are visible to every user of the machine.
pub const SEAL_KEY_ENV: &str = "AIRLOCK_SEAL_KEY";

/// Where the binary sends its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventsTarget {
    /// The Redis stream `<prefix>:events`, in the Redis holding the snapshots.
    Redis,
    /// Nowhere (counted and logged at debug level only).
    Disabled,
}

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
    /// File holding base64 seal opening keys, comma- or newline-separated (otherwise the
    /// AIRLOCK_SEAL_KEY variable). Repeat it during a sealing-key rotation: secrets sealed to
    /// any of the keys open.
    #[arg(long, env = "AIRLOCK_SEAL_KEY_FILE")]
    pub seal_key_file: Vec<PathBuf>,
    /// Where gateway events go.
    #[arg(long, env = "AIRLOCK_DATA_EVENTS", value_enum, default_value_t = EventsTarget::Redis)]
    pub events: EventsTarget,
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
        let opening_keys = load_opening_keys(&self.seal_key_file, seal_key_env)?;
        let names = RedisNames::new(self.redis_prefix);
        let events = match self.events {
            EventsTarget::Redis => EventSink::Redis {
                url: self.redis_url.clone(),
                names: names.clone(),
            },
            EventsTarget::Disabled => EventSink::Disabled,
        };
        Ok(DataPlaneConfig {
            listen: self.listen,
            opening_keys,
            source: ConfigSource::Redis {
                url: self.redis_url,
                names,
            },
            events,
            threads: self.threads,
            upstream_ca_file: self.upstream_ca_file,
        })
    }
}

/// Every key of every key file, or else of the environment variable.
fn load_opening_keys(
    files: &[PathBuf],
    env_value: Option<String>,
) -> anyhow::Result<OpeningKeyring> {
    let env_value = env_value.map(Zeroizing::new);
    if files.is_empty() {
        let Some(value) = env_value else {
            bail!("no seal key: set --seal-key-file / AIRLOCK_SEAL_KEY_FILE or {SEAL_KEY_ENV}")
        };
        return OpeningKeyring::from_base64_list(&value)
            .with_context(|| format!("invalid {SEAL_KEY_ENV}"));
    }
    let mut texts = Vec::with_capacity(files.len());
    for path in files {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the seal key file {}", path.display()))?,
        );
        // Parsed alone first, so an error names the file it comes from.
        OpeningKeyring::from_base64_list(&text)
            .with_context(|| format!("invalid seal key file {}", path.display()))?;
        texts.push(text);
    }
    // Sized up front: a growing buffer would leave copies of the keys behind.
    let mut all = Zeroizing::new(String::with_capacity(
        texts.iter().map(|t| t.len() + 1).sum(),
    ));
    for text in &texts {
        all.push_str(text);
        all.push('\n');
    }
    Ok(OpeningKeyring::from_base64_list(&all)?)
}

#[cfg(test)]
mod tests {
    use airlock_shared::seal::OpeningKey;
    use clap::Parser as _;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut argv = vec!["airlock-data-plane"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap()
    }

    fn key_ids(ring: &OpeningKeyring) -> Vec<String> {
        ring.key_ids().map(str::to_string).collect()
    }

    fn id(key: &OpeningKey) -> String {
        key.sealing_key().key_id().to_string()
    }

    #[test]
    fn valid_config_from_env_keys() {
        let (old, new) = (OpeningKey::generate(), OpeningKey::generate());
        let config = cli(&[
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--redis-prefix",
            "t1",
        ])
        .into_config(Some(format!(
            "{},{}",
            old.to_base64().as_str(),
            new.to_base64().as_str()
        )))
        .unwrap();
        assert_eq!(config.listen.port(), 8081);
        assert_eq!(key_ids(&config.opening_keys), [id(&old), id(&new)]);
        match config.source {
            ConfigSource::Redis { names, .. } => assert_eq!(names.prefix(), "t1"),
            ConfigSource::InProcess(_) => panic!("expected Redis"),
        }
        // Events go to the same Redis and prefix by default.
        match config.events {
            EventSink::Redis { url, names } => {
                assert_eq!(url, "redis://127.0.0.1:6379");
                assert_eq!(names.events_stream(), "t1:events");
            }
            other => panic!("expected Redis events, got {other:?}"),
        }
    }

    #[test]
    fn events_can_be_disabled() {
        let config = cli(&["--redis-url", "redis://127.0.0.1", "--events", "disabled"])
            .into_config(Some(OpeningKey::generate().to_base64().to_string()))
            .unwrap();
        assert!(matches!(config.events, EventSink::Disabled));
    }

    #[test]
    fn key_files_win_over_env_and_may_be_repeated() {
        let (a, b, c) = (
            OpeningKey::generate(),
            OpeningKey::generate(),
            OpeningKey::generate(),
        );
        let first = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(first.path(), format!("{}\n", a.to_base64().as_str())).unwrap();
        // A second file holding two keys, comma-separated.
        let second = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            second.path(),
            format!("{},{}\n", b.to_base64().as_str(), c.to_base64().as_str()),
        )
        .unwrap();
        let config = cli(&[
            "--redis-url",
            "redis://127.0.0.1",
            "--seal-key-file",
            first.path().to_str().unwrap(),
            "--seal-key-file",
            second.path().to_str().unwrap(),
        ])
        .into_config(Some("garbage".into()))
        .unwrap();
        assert_eq!(key_ids(&config.opening_keys), [id(&a), id(&b), id(&c)]);

        let bad = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(bad.path(), "bm90LWEta2V5LXNlY3JldA==").unwrap();
        let err = cli(&[
            "--redis-url",
            "redis://127.0.0.1",
            "--seal-key-file",
            first.path().to_str().unwrap(),
            "--seal-key-file",
            bad.path().to_str().unwrap(),
        ])
        .into_config(None)
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(bad.path().to_str().unwrap()), "{text}");
        assert!(!text.contains("bm90LWEta2V5"), "{text}");
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
