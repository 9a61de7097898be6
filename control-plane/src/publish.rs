//! Publishing config snapshots to data planes.
//!
//! After every committed change the control plane rebuilds the snapshot of each affected
//! environment from the database and hands it to a [`SnapshotTransport`]: in-process to the
//! data plane of `airlock dev` ([`InProcessTransport`]), or through Redis to any number of
//! data planes ([`RedisTransport`]). A failed publish never fails the change that caused it
//! (that change is committed): it is logged and retried in the background until it succeeds.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_data_plane::SnapshotDelivery;
use airlock_shared::keys::RedisNames;
use airlock_shared::wire::{EnvironmentSnapshot, SnapshotEncodeError, SnapshotEncoding};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sea_orm::DatabaseConnection;
use tokio::sync::mpsc::UnboundedSender;
use uuid::Uuid;

use crate::domain::snapshot;
use crate::error::AppError;

/// Why a snapshot could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The in-process data plane has stopped; retrying cannot help.
    #[error("the in-process data plane is no longer receiving snapshots")]
    Closed,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("could not encode the snapshot: {0}")]
    Encode(#[from] SnapshotEncodeError),
    #[error("could not build the snapshot: {}", .0.detail())]
    Build(#[source] AppError),
}

impl PublishError {
    fn is_permanent(&self) -> bool {
        matches!(self, Self::Closed)
    }
}

/// Where snapshots go. One implementation per delivery mechanism.
#[async_trait]
pub trait SnapshotTransport: Send + Sync + 'static {
    /// Deliver one snapshot. Receivers keep the highest revision per environment, so a
    /// transport need not preserve order.
    async fn send(&self, snapshot: &EnvironmentSnapshot) -> Result<(), PublishError>;
}

/// How long an in-process publish waits for the data plane to apply a snapshot before it
/// returns anyway (the snapshot still goes live when the data plane gets to it).
const IN_PROCESS_APPLY_WAIT: Duration = Duration::from_secs(2);

/// Hands snapshots to a data plane in the same process, and waits until each is live there,
/// so that under `airlock dev` a mutation's effect is visible once the mutation returns.
pub struct InProcessTransport {
    sender: UnboundedSender<SnapshotDelivery>,
}

impl InProcessTransport {
    /// Send into `sender`; the data plane holds the receiver.
    pub fn new(sender: UnboundedSender<SnapshotDelivery>) -> Self {
        Self { sender }
    }
}

#[async_trait]
impl SnapshotTransport for InProcessTransport {
    async fn send(&self, snapshot: &EnvironmentSnapshot) -> Result<(), PublishError> {
        let (applied, live) = tokio::sync::oneshot::channel();
        self.sender
            .send(SnapshotDelivery {
                snapshot: snapshot.clone(),
                applied: Some(applied),
            })
            .map_err(|_| PublishError::Closed)?;
        // Before the data plane has started (startup publish) nobody applies yet: don't wait
        // for long. A dropped ack means the data plane is gone.
        match tokio::time::timeout(IN_PROCESS_APPLY_WAIT, live).await {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(_)) => Err(PublishError::Closed),
        }
    }
}

/// Publishes through Redis, in one `MULTI`/`EXEC`:
/// `SET <environment_snapshot(id)> <snapshot>`, `HSET <snapshot_index> <id> <revision>`,
/// `PUBLISH <config_channel> <id>`. The snapshot is encoded in [`SnapshotEncoding::Binary`]
/// unless [`Self::with_encoding`] says otherwise (`--snapshot-encoding json` for data planes
/// that predate the binary encoding: `docs/OPERATIONS.md`).
pub struct RedisTransport {
    connection: ConnectionManager,
    names: RedisNames,
    encoding: SnapshotEncoding,
}

impl RedisTransport {
    /// Connect to Redis. The connection reconnects by itself after failures.
    pub async fn connect(url: &str, names: RedisNames) -> Result<Self, PublishError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let connection = client.get_connection_manager_with_config(config).await?;
        Ok(Self {
            connection,
            names,
            encoding: SnapshotEncoding::default(),
        })
    }

    /// Publish in `encoding` instead.
    pub fn with_encoding(self, encoding: SnapshotEncoding) -> Self {
        Self { encoding, ..self }
    }

    /// The encoding snapshots are published in.
    pub fn encoding(&self) -> SnapshotEncoding {
        self.encoding
    }

    /// The key and channel names in use.
    pub fn names(&self) -> &RedisNames {
        &self.names
    }
}

#[async_trait]
impl SnapshotTransport for RedisTransport {
    async fn send(&self, snapshot: &EnvironmentSnapshot) -> Result<(), PublishError> {
        let encoded = self.encoding.encode(snapshot)?;
        let id = snapshot.environment_id.to_string();
        let mut connection = self.connection.clone();
        redis::pipe()
            .atomic()
            .set(
                self.names.environment_snapshot(&snapshot.environment_id),
                encoded,
            )
            .ignore()
            .hset(self.names.snapshot_index(), &id, snapshot.revision)
            .ignore()
            .publish(self.names.config_channel(), &id)
            .ignore()
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }
}

/// Issues snapshot revisions: microseconds since the epoch, but always above the last one
/// this process issued (the clock can step back, and two publishes can share a microsecond).
#[derive(Debug, Default)]
pub struct RevisionClock {
    last: AtomicI64,
}

impl RevisionClock {
    /// The next revision: `max(now in µs, last + 1)`.
    pub fn next(&self) -> i64 {
        let now = chrono::Utc::now().timestamp_micros();
        let previous = self
            .last
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last.saturating_add(1)))
            })
            .unwrap_or_else(|last| last);
        now.max(previous.saturating_add(1))
    }
}

/// First delay before retrying a failed publish; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Builds snapshots from the database and publishes them.
#[derive(Clone)]
pub struct ConfigPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    transport: Box<dyn SnapshotTransport>,
    clock: RevisionClock,
    /// Environments with a background retry running, so failures do not pile up tasks.
    retrying: Mutex<HashSet<Uuid>>,
}

impl ConfigPublisher {
    /// A publisher reading from `db` and sending through `transport`.
    pub fn new(db: DatabaseConnection, transport: impl SnapshotTransport) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                transport: Box::new(transport),
                clock: RevisionClock::default(),
                retrying: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Publish the current snapshot of one environment. Never fails: a failure is logged and
    /// retried in the background.
    pub async fn publish_environment(&self, environment_id: Uuid) {
        if let Err(error) = self.try_publish(environment_id).await {
            self.handle_failure(environment_id, error);
        }
    }

    /// Publish every environment of a tenant (after a change to its functions).
    pub async fn publish_tenant(&self, tenant_id: Uuid) {
        match snapshot::environment_ids_of_tenant(&self.inner.db, tenant_id).await {
            Ok(ids) => self.publish_many(ids).await,
            Err(error) => {
                tracing::warn!(%tenant_id, error = %error.detail(), "could not list environments to publish; retrying in the background");
                let publisher = self.clone();
                tokio::spawn(async move { publisher.retry_tenant(tenant_id).await });
            }
        }
    }

    async fn retry_tenant(&self, tenant_id: Uuid) {
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            tokio::time::sleep(delay).await;
            match snapshot::environment_ids_of_tenant(&self.inner.db, tenant_id).await {
                Ok(ids) => return self.publish_many(ids).await,
                Err(error) => {
                    tracing::warn!(%tenant_id, error = %error.detail(), "still cannot list environments to publish");
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }

    /// Publish every environment (at startup).
    pub async fn publish_all(&self) -> Result<usize, AppError> {
        let ids = snapshot::all_environment_ids(&self.inner.db).await?;
        let count = ids.len();
        self.publish_many(ids).await;
        Ok(count)
    }

    async fn publish_many(&self, ids: Vec<Uuid>) {
        futures::future::join_all(ids.into_iter().map(|id| self.publish_environment(id))).await;
    }

    /// One attempt. The revision is taken before the database is read: a snapshot read later
    /// then always carries a higher revision, so a slow publish of an older read can never
    /// replace a newer one in a data plane.
    async fn try_publish(&self, environment_id: Uuid) -> Result<(), PublishError> {
        let revision = self.inner.clock.next();
        let Some(snapshot) = snapshot::build(&self.inner.db, environment_id, revision)
            .await
            .map_err(PublishError::Build)?
        else {
            // Deleted since the change was made: nothing to publish.
            return Ok(());
        };
        self.inner.transport.send(&snapshot).await?;
        tracing::debug!(%environment_id, revision, "published config snapshot");
        Ok(())
    }

    fn handle_failure(&self, environment_id: Uuid, error: PublishError) {
        if error.is_permanent() {
            tracing::error!(%environment_id, %error, "could not publish config snapshot");
            return;
        }
        tracing::warn!(%environment_id, %error, "could not publish config snapshot; retrying in the background");
        let newly_retrying = self
            .inner
            .retrying
            .lock()
            .map(|mut set| set.insert(environment_id))
            .unwrap_or(false);
        if !newly_retrying {
            return;
        }
        let publisher = self.clone();
        tokio::spawn(async move { publisher.retry(environment_id).await });
    }

    async fn retry(&self, environment_id: Uuid) {
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            tokio::time::sleep(delay).await;
            match self.try_publish(environment_id).await {
                Ok(()) => {
                    tracing::info!(%environment_id, "published config snapshot after retrying");
                    break;
                }
                Err(error) if error.is_permanent() => {
                    tracing::error!(%environment_id, %error, "giving up publishing config snapshot");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%environment_id, %error, retry_in_ms = delay.as_millis() as u64, "still cannot publish config snapshot");
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
        if let Ok(mut set) = self.inner.retrying.lock() {
            set.remove(&environment_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_strictly_increase_and_track_the_clock() {
        let clock = RevisionClock::default();
        let before = chrono::Utc::now().timestamp_micros();
        let mut last = clock.next();
        assert!(last >= before);
        for _ in 0..10_000 {
            let next = clock.next();
            assert!(next > last);
            last = next;
        }
    }

    #[test]
    fn revisions_never_go_back_when_the_clock_does() {
        let clock = RevisionClock::default();
        let future = chrono::Utc::now().timestamp_micros() + 60_000_000;
        clock.last.store(future, Ordering::SeqCst);
        assert_eq!(clock.next(), future + 1);
        assert_eq!(clock.next(), future + 2);
    }
}
