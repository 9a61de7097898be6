//! The tokens data planes share in Redis, with a refresh lock and fenced writes.
//!
//! Per connection (`airlock_shared::keys::RedisNames`):
//! - `oauth_tokens(id)`: a hash with `generation` (the fencing number) and `record` (JSON
//!   [`TokenRecord`]: the sealed tokens or the broken state). Never a plaintext token.
//!   A third field, `failure` (`<unix ms>|<message>`), records the last transient failure of
//!   the token endpoint, so that every plane shares it for a second instead of asking again.
//! - `oauth_refresh_lock(id)`: `SET NX PX 15000` with a random value by the one data plane
//!   that talks to the token endpoint.
//!
//! A write is a Lua script ([`FENCED_WRITE`]) that stores the new record only if the lock
//! still holds the writer's value AND the stored generation is still the one the writer read
//! before asking the provider, then releases the lock. A writer whose lock expired while it
//! waited for the provider, or that lost a race to a newer generation, writes nothing and
//! adopts what is stored instead. Callbacks (which complete a new authorization rather than
//! refresh) write with [`MONOTONIC_WRITE`]: only if their generation is newer than the
//! stored one.

use std::time::Duration;

use airlock_shared::keys::RedisNames;
use airlock_shared::oauth::{ConnectionStatus, SealedTokenSet};
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How long the refresh lock is held at most (a crashed holder blocks others this long).
pub const LOCK_TTL: Duration = Duration::from_millis(15_000);
/// How often a data plane waiting for another one's refresh re-reads the record.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Redis command timeout.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Store `record` at `generation` if the lock still holds our value and the stored generation
/// is still the expected one (`""` for none); then release the lock. Returns 1 when written.
pub const FENCED_WRITE: &str = r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
local stored = redis.call('HGET', KEYS[1], 'generation')
if stored == false then stored = '' end
if stored ~= ARGV[2] then
  redis.call('DEL', KEYS[2])
  return 0
end
redis.call('HSET', KEYS[1], 'generation', ARGV[3], 'record', ARGV[4])
redis.call('HDEL', KEYS[1], 'failure')
redis.call('DEL', KEYS[2])
return 1
"#;

/// Store `record` at `generation` if no newer or equal generation is stored. Returns 1 when
/// written.
pub const MONOTONIC_WRITE: &str = r#"
local stored = tonumber(redis.call('HGET', KEYS[1], 'generation') or '0') or 0
if stored >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'generation', ARGV[1], 'record', ARGV[2])
redis.call('HDEL', KEYS[1], 'failure')
return 1
"#;

/// Release the lock if it still holds our value.
pub const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// What Redis holds about a connection's tokens (the `record` field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub status: ConnectionStatus,
    #[serde(default)]
    pub tokens: Option<SealedTokenSet>,
    /// The provider's error when broken (never a token).
    #[serde(default)]
    pub error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// A record as read, with its generation (`None`: nothing stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub generation: Option<i64>,
    pub record: Option<TokenRecord>,
    /// The last transient failure: when (Unix ms) and what.
    pub failure: Option<(i64, String)>,
}

impl StoredRecord {
    /// The generation as the fencing script compares it.
    pub fn fence(&self) -> String {
        self.generation.map(|g| g.to_string()).unwrap_or_default()
    }
}

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer in time")]
    Timeout,
}

/// The shared token store.
#[derive(Clone)]
pub struct RedisTokenStore {
    client: redis::Client,
    names: RedisNames,
    connection: std::sync::Arc<tokio::sync::OnceCell<ConnectionManager>>,
}

impl std::fmt::Debug for RedisTokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTokenStore")
            .field("prefix", &self.names.prefix())
            .finish_non_exhaustive()
    }
}

async fn bounded<T>(
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(REDIS_TIMEOUT, future)
        .await
        .map_err(|_| StoreError::Timeout)?
        .map_err(StoreError::from)
}

impl RedisTokenStore {
    pub fn new(client: redis::Client, names: RedisNames) -> Self {
        Self {
            client,
            names,
            connection: Default::default(),
        }
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let client = self.client.clone();
        let manager = self
            .connection
            .get_or_try_init(|| async move {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(REDIS_TIMEOUT));
                bounded(ConnectionManager::new_with_config(client, config)).await
            })
            .await?;
        Ok(manager.clone())
    }

    /// Read a connection's record. A record that does not parse counts as absent (with its
    /// generation kept, so a writer still fences against it).
    pub async fn read(&self, connection_id: Uuid) -> Result<StoredRecord, StoreError> {
        let mut connection = self.connection().await?;
        let (generation, record, failure): (Option<String>, Option<String>, Option<String>) =
            bounded(
                redis::cmd("HMGET")
                    .arg(self.names.oauth_tokens(&connection_id))
                    .arg("generation")
                    .arg("record")
                    .arg("failure")
                    .query_async(&mut connection),
            )
            .await?;
        let mut stored = parse_stored(generation.as_deref(), record.as_deref());
        stored.failure = failure.as_deref().and_then(|f| {
            let (at, message) = f.split_once('|')?;
            Some((at.parse().ok()?, message.to_string()))
        });
        Ok(stored)
    }

    /// Record a transient token-endpoint failure for the other planes (see the module docs).
    pub async fn record_failure(
        &self,
        connection_id: Uuid,
        message: &str,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let value = format!("{}|{message}", Utc::now().timestamp_millis());
        let _: i64 = bounded(
            redis::cmd("HSET")
                .arg(self.names.oauth_tokens(&connection_id))
                .arg("failure")
                .arg(value)
                .query_async(&mut connection),
        )
        .await?;
        Ok(())
    }

    /// Try to take the refresh lock with `value`.
    pub async fn try_lock(&self, connection_id: Uuid, value: &str) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let set: Option<String> = bounded(
            redis::cmd("SET")
                .arg(self.names.oauth_refresh_lock(&connection_id))
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL.as_millis() as u64)
                .query_async(&mut connection),
        )
        .await?;
        Ok(set.is_some())
    }

    /// Whether someone holds the refresh lock.
    pub async fn is_locked(&self, connection_id: Uuid) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let exists: bool = bounded(
            redis::cmd("EXISTS")
                .arg(self.names.oauth_refresh_lock(&connection_id))
                .query_async(&mut connection),
        )
        .await?;
        Ok(exists)
    }

    /// Release the lock if it is still ours.
    pub async fn release(&self, connection_id: Uuid, value: &str) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let _: i64 = bounded(
            redis::Script::new(RELEASE)
                .key(self.names.oauth_refresh_lock(&connection_id))
                .arg(value)
                .invoke_async(&mut connection),
        )
        .await?;
        Ok(())
    }

    /// [`FENCED_WRITE`]: `true` when written.
    pub async fn fenced_write(
        &self,
        connection_id: Uuid,
        lock_value: &str,
        expected: &StoredRecord,
        generation: i64,
        record: &TokenRecord,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(record).map_err(|_| StoreError::Timeout)?;
        let mut connection = self.connection().await?;
        let written: i64 = bounded(
            redis::Script::new(FENCED_WRITE)
                .key(self.names.oauth_tokens(&connection_id))
                .key(self.names.oauth_refresh_lock(&connection_id))
                .arg(lock_value)
                .arg(expected.fence())
                .arg(generation)
                .arg(json)
                .invoke_async(&mut connection),
        )
        .await?;
        Ok(written == 1)
    }

    /// [`MONOTONIC_WRITE`]: `true` when written.
    pub async fn monotonic_write(
        &self,
        connection_id: Uuid,
        generation: i64,
        record: &TokenRecord,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(record).map_err(|_| StoreError::Timeout)?;
        let mut connection = self.connection().await?;
        let written: i64 = bounded(
            redis::Script::new(MONOTONIC_WRITE)
                .key(self.names.oauth_tokens(&connection_id))
                .arg(generation)
                .arg(json)
                .invoke_async(&mut connection),
        )
        .await?;
        Ok(written == 1)
    }

    /// Claim an authorization's state for `ttl` (`SET NX PX`): `true` for the first claim.
    pub async fn claim_state(
        &self,
        state_hash: &str,
        ttl: Duration,
        claimed_for: &str,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let set: Option<String> = bounded(
            redis::cmd("SET")
                .arg(self.names.oauth_state_claim(state_hash))
                .arg(claimed_for)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .query_async(&mut connection),
        )
        .await?;
        Ok(set.is_some())
    }

    /// What a claimed state was claimed for ([`Self::claim_state`]'s `claimed_for`), while
    /// the claim lasts: tells a replayed callback from a forged one after the authorization
    /// has left the snapshot.
    pub async fn claimed_state(&self, state_hash: &str) -> Result<Option<String>, StoreError> {
        let mut connection = self.connection().await?;
        bounded(
            redis::cmd("GET")
                .arg(self.names.oauth_state_claim(state_hash))
                .query_async(&mut connection),
        )
        .await
    }
}

/// Parse the two fields of a token hash.
pub fn parse_stored(generation: Option<&str>, record: Option<&str>) -> StoredRecord {
    let generation = generation.and_then(|g| g.parse::<i64>().ok());
    let record = record.and_then(|json| match serde_json::from_str::<TokenRecord>(json) {
        Ok(record) => Some(record),
        Err(error) => {
            tracing::error!(%error, "stored OAuth token record does not parse; ignoring it");
            None
        }
    });
    StoredRecord {
        generation,
        record,
        failure: None,
    }
}

#[cfg(test)]
mod tests {
    use airlock_shared::seal::SealedSecret;

    use super::*;

    fn record() -> TokenRecord {
        TokenRecord {
            status: ConnectionStatus::Connected,
            tokens: Some(SealedTokenSet {
                generation: 3,
                access_token: SealedSecret {
                    version: 3,
                    key_id: "k".into(),
                    enc: "e".into(),
                    ciphertext: "c".into(),
                },
                refresh_token: None,
                expires_at: None,
                obtained_at: Utc::now(),
            }),
            error: None,
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn records_parse_and_bad_ones_are_ignored() {
        let json = serde_json::to_string(&record()).unwrap();
        assert!(json.contains("\"updatedAt\""));
        let stored = parse_stored(Some("3"), Some(&json));
        assert_eq!(stored.generation, Some(3));
        assert_eq!(
            stored.record,
            Some(record()).map(|mut r| {
                r.updated_at = stored.record.as_ref().unwrap().updated_at;
                r.tokens.as_mut().unwrap().obtained_at = stored
                    .record
                    .as_ref()
                    .unwrap()
                    .tokens
                    .as_ref()
                    .unwrap()
                    .obtained_at;
                r
            })
        );
        assert_eq!(stored.fence(), "3");
        let broken = parse_stored(Some("4"), Some("{not json"));
        assert_eq!(broken.generation, Some(4));
        assert_eq!(broken.record, None);
        let empty = parse_stored(None, None);
        assert_eq!(empty.fence(), "");
    }

    /// Unique Redis names for one test.
    fn test_store() -> Option<RedisTokenStore> {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let client = redis::Client::open(url).ok()?;
        Some(RedisTokenStore::new(
            client,
            RedisNames::new(format!("airlock-test-oauth-{}", Uuid::new_v4().simple())),
        ))
    }

    #[tokio::test]
    async fn fencing_lets_exactly_one_of_two_writers_win() {
        let store = test_store().expect("redis client");
        let connection = Uuid::new_v4();
        let before = store
            .read(connection)
            .await
            .expect("redis at 127.0.0.1:6379");
        assert_eq!(before.generation, None);

        // Writer A takes the lock; writer B cannot.
        assert!(store.try_lock(connection, "a").await.unwrap());
        assert!(!store.try_lock(connection, "b").await.unwrap());
        // B cannot write with a lock it does not hold.
        assert!(!store
            .fenced_write(connection, "b", &before, 1, &record())
            .await
            .unwrap());
        assert!(store
            .fenced_write(connection, "a", &before, 1, &record())
            .await
            .unwrap());
        // The write released the lock.
        assert!(!store.is_locked(connection).await.unwrap());
        let after = store.read(connection).await.unwrap();
        assert_eq!(after.generation, Some(1));
        assert!(after.record.is_some());

        // B now takes the lock but read the record before A wrote: fenced out, lock released.
        assert!(store.try_lock(connection, "b").await.unwrap());
        assert!(!store
            .fenced_write(connection, "b", &before, 1, &record())
            .await
            .unwrap());
        assert!(!store.is_locked(connection).await.unwrap());
        assert_eq!(store.read(connection).await.unwrap().generation, Some(1));

        // Monotonic writes (callbacks) only move forward.
        assert!(!store
            .monotonic_write(connection, 1, &record())
            .await
            .unwrap());
        assert!(store
            .monotonic_write(connection, 2, &record())
            .await
            .unwrap());
        assert_eq!(store.read(connection).await.unwrap().generation, Some(2));

        // Release only removes our own lock.
        assert!(store.try_lock(connection, "c").await.unwrap());
        store.release(connection, "d").await.unwrap();
        assert!(store.is_locked(connection).await.unwrap());
        store.release(connection, "c").await.unwrap();
        assert!(!store.is_locked(connection).await.unwrap());

        // A recorded failure is read back, and cleared by the next successful write.
        store
            .record_failure(connection, "the token endpoint failed")
            .await
            .unwrap();
        let failed = store.read(connection).await.unwrap();
        assert_eq!(
            failed.failure.as_ref().unwrap().1,
            "the token endpoint failed"
        );
        assert!(store
            .monotonic_write(connection, 3, &record())
            .await
            .unwrap());
        assert_eq!(store.read(connection).await.unwrap().failure, None);

        // Claims are single use, and remember what they were for.
        assert_eq!(store.claimed_state("abc").await.unwrap(), None);
        assert!(store
            .claim_state("abc", Duration::from_secs(5), "env/conn")
            .await
            .unwrap());
        assert!(!store
            .claim_state("abc", Duration::from_secs(5), "other/conn")
            .await
            .unwrap());
        assert_eq!(
            store.claimed_state("abc").await.unwrap().as_deref(),
            Some("env/conn")
        );

        let mut raw = store.connection().await.unwrap();
        let names = &store.names;
        let _: () = redis::cmd("DEL")
            .arg(names.oauth_tokens(&connection))
            .arg(names.oauth_refresh_lock(&connection))
            .arg(names.oauth_state_claim("abc"))
            .query_async(&mut raw)
            .await
            .unwrap();
    }
}
