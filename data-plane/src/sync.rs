//! The background service that keeps the snapshot fresh.
//!
//! Runs as a Pingora `BackgroundService` on its own runtime, so compiling snapshots (template
//! compilation, HPKE opening) never competes with request handling on the proxy's threads.
//!
//! Redis protocol (see `airlock_shared::keys::RedisNames`): the control plane `SET`s the
//! snapshot (JSON or binary, `airlock_shared::wire::encoding`; both are read), `HSET`s its
//! revision in the index and `PUBLISH`es the environment id, in one `MULTI`. Here: subscribe
//! first, then read the whole index (so nothing published in between is missed), then fetch
//! the environment named by every message; every few seconds and after every reconnect the
//! index is read again to catch lost messages. Redis being down never stops the data plane:
//! it keeps serving the last snapshot and retries with backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_shared::keys::RedisNames;
use airlock_shared::wire::{decode_snapshot, EnvironmentSnapshot, SnapshotEncoding};
use async_trait::async_trait;
use futures::StreamExt as _;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::AsyncCommands as _;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::SnapshotDelivery;
use uuid::Uuid;

use crate::memory::TrimSchedule;
use crate::snapshot::{ApplyOutcome, SnapshotStore};
use crate::ConfigSource;

/// How often the index is re-read to catch missed notifications.
const RESYNC_INTERVAL: Duration = Duration::from_secs(5);
/// Connect and per-command timeout for Redis.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Keeps the [`SnapshotStore`] in step with a [`ConfigSource`].
pub(crate) struct ConfigSync {
    store: Arc<SnapshotStore>,
    /// Taken by the first `start`; Pingora starts a background service once.
    source: Mutex<Option<ConfigSource>>,
}

impl ConfigSync {
    pub(crate) fn new(store: Arc<SnapshotStore>, source: ConfigSource) -> Self {
        Self {
            store,
            source: Mutex::new(Some(source)),
        }
    }
}

#[async_trait]
impl BackgroundService for ConfigSync {
    async fn start(&self, shutdown: ShutdownWatch) {
        let source = self
            .source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        match source {
            Some(ConfigSource::InProcess(receiver)) => {
                run_in_process(&self.store, receiver, shutdown).await
            }
            Some(ConfigSource::Redis { url, names }) => match redis::Client::open(url.as_str()) {
                Ok(client) => {
                    RedisSync {
                        client,
                        names,
                        store: self.store.clone(),
                        unusable: HashMap::new(),
                        trim: TrimSchedule::default(),
                    }
                    .run(shutdown)
                    .await
                }
                // The binary validates the URL at startup; a library caller gets a loud log.
                Err(error) => tracing::error!(%error, "invalid Redis URL; config sync disabled"),
            },
            None => tracing::warn!("config sync started twice; ignoring"),
        }
    }
}

/// Resolves when the server is shutting down (or its shutdown sender is gone).
async fn shutting_down(shutdown: &mut ShutdownWatch) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn run_in_process(
    store: &SnapshotStore,
    mut receiver: UnboundedReceiver<SnapshotDelivery>,
    mut shutdown: ShutdownWatch,
) {
    let mut trim = TrimSchedule::default();
    // Everything queued before the service started is the initial sync.
    while let Ok(delivery) = receiver.try_recv() {
        deliver(store, delivery, &mut trim);
    }
    store.mark_synced();
    loop {
        tokio::select! {
            received = receiver.recv() => match received {
                Some(delivery) => deliver(store, delivery, &mut trim),
                None => {
                    tracing::info!("in-process config channel closed; serving the last snapshot");
                    trim.trim(store.reclaimer());
                    shutting_down(&mut shutdown).await;
                    return;
                }
            },
            _ = trim.wait() => trim.trim(store.reclaimer()),
            _ = shutting_down(&mut shutdown) => return,
        }
    }
}

fn deliver(store: &SnapshotStore, delivery: SnapshotDelivery, trim: &mut TrimSchedule) {
    apply(store, delivery.snapshot, trim);
    if let Some(applied) = delivery.applied {
        // The sender may have stopped waiting; nothing to do then.
        let _ = applied.send(());
    }
}

fn apply(store: &SnapshotStore, snapshot: EnvironmentSnapshot, trim: &mut TrimSchedule) {
    let environment_id = snapshot.environment_id;
    let revision = snapshot.revision;
    match store.apply(snapshot) {
        // The decoded snapshot was just freed and the replaced environment handed to the
        // reclaimer: returned to the system once snapshots stop coming (`memory` module docs).
        ApplyOutcome::Applied => trim.applied(tokio::time::Instant::now()),
        ApplyOutcome::Stale { held } => {
            tracing::debug!(%environment_id, revision, held, "ignoring a snapshot that is not newer");
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {REDIS_TIMEOUT:?}")]
    Timeout,
    #[error("the config subscription was closed")]
    SubscriptionClosed,
}

async fn within<T>(
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, SyncError> {
    Ok(tokio::time::timeout(REDIS_TIMEOUT, future)
        .await
        .map_err(|_| SyncError::Timeout)??)
}

struct RedisSync {
    client: redis::Client,
    names: RedisNames,
    store: Arc<SnapshotStore>,
    /// Revisions whose snapshot could not be read, so each is logged once, not every resync.
    unusable: HashMap<Uuid, i64>,
    /// When to return the memory applied snapshots freed.
    trim: TrimSchedule,
}

impl RedisSync {
    async fn run(mut self, mut shutdown: ShutdownWatch) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let error = tokio::select! {
                result = self.session(&mut backoff) => result,
                _ = shutting_down(&mut shutdown) => return,
            };
            tracing::warn!(
                error = %error,
                retry_in = ?backoff,
                "config sync from Redis interrupted; serving the last snapshot"
            );
            // No snapshot comes while disconnected: a pending trim need not wait for one.
            if self.trim.due().is_some() {
                self.trim.trim(self.store.reclaimer());
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutting_down(&mut shutdown) => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connected period: subscribe, full sync, then follow notifications until an error.
    async fn session(&mut self, backoff: &mut Duration) -> SyncError {
        match self.follow(backoff).await {
            Ok(never) => match never {},
            Err(error) => error,
        }
    }

    async fn follow(
        &mut self,
        backoff: &mut Duration,
    ) -> Result<std::convert::Infallible, SyncError> {
        let mut pubsub = within(self.client.get_async_pubsub()).await?;
        within(pubsub.subscribe(self.names.config_channel())).await?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let mut conn = within(
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await?;

        // Subscribed before reading the index: a publish in between is seen either way.
        self.full_sync(&mut conn).await?;
        self.store.mark_synced();
        *backoff = BACKOFF_MIN;
        tracing::info!(channel = %self.names.config_channel(), "following config changes in Redis");

        let mut messages = pubsub.on_message();
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.reset();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let message = message.ok_or(SyncError::SubscriptionClosed)?;
                    match message.get_payload::<String>().ok().and_then(|p| p.parse::<Uuid>().ok()) {
                        Some(environment_id) => self.fetch(&mut conn, environment_id, None).await?,
                        None => tracing::warn!("ignoring a config notification that is not an environment id"),
                    }
                }
                _ = resync.tick() => self.full_sync(&mut conn).await?,
                _ = self.trim.wait() => self.trim.trim(self.store.reclaimer()),
            }
        }
    }

    /// Read the index and fetch every environment whose published revision is newer than the
    /// one held.
    async fn full_sync(
        &mut self,
        conn: &mut redis::aio::MultiplexedConnection,
    ) -> Result<(), SyncError> {
        let index: HashMap<String, i64> = conn.hgetall(self.names.snapshot_index()).await?;
        for (environment, revision) in index {
            let Ok(environment_id) = environment.parse::<Uuid>() else {
                tracing::warn!(entry = %environment, "ignoring a snapshot index entry that is not an environment id");
                continue;
            };
            let newer = self
                .store
                .revision_of(&environment_id)
                .is_none_or(|held| revision > held);
            if newer && self.unusable.get(&environment_id) != Some(&revision) {
                self.fetch(conn, environment_id, Some(revision)).await?;
            }
        }
        Ok(())
    }

    /// Fetch and apply one environment's snapshot. A snapshot that is missing or unreadable is
    /// logged and skipped (it is the publisher's problem, not a reason to reconnect).
    async fn fetch(
        &mut self,
        conn: &mut redis::aio::MultiplexedConnection,
        environment_id: Uuid,
        indexed_revision: Option<i64>,
    ) -> Result<(), SyncError> {
        let started = std::time::Instant::now();
        let bytes: Option<Vec<u8>> = conn
            .get(self.names.environment_snapshot(&environment_id))
            .await?;
        let Some(bytes) = bytes else {
            tracing::warn!(%environment_id, "notified of a snapshot that is not in Redis");
            return Ok(());
        };
        let read_us = started.elapsed().as_micros();
        // JSON or binary, whichever the control plane published (`wire::encoding`).
        let decoded = decode_snapshot(&bytes);
        // Where a snapshot's time to go live goes (`docs/BENCHMARKS.md`); the apply logs the
        // rest.
        tracing::debug!(
            %environment_id,
            encoding = %SnapshotEncoding::of(&bytes),
            bytes = bytes.len(),
            read_us,
            decode_us = started.elapsed().as_micros() - read_us,
            "snapshot read from Redis"
        );
        // Megabytes for a large environment: not kept while the snapshot compiles.
        drop(bytes);
        let problem = match decoded {
            Ok(snapshot) if snapshot.environment_id == environment_id => {
                self.unusable.remove(&environment_id);
                apply(&self.store, snapshot, &mut self.trim);
                return Ok(());
            }
            Ok(_) => "it belongs to another environment".to_string(),
            // The messages name positions and versions; a snapshot holds no plaintext secret.
            Err(error) => format!("it is not a valid snapshot: {error}"),
        };
        if let Some(revision) = indexed_revision {
            // Remembered so the periodic resync does not log the same problem every time.
            self.unusable.insert(environment_id, revision);
        }
        tracing::error!(%environment_id, problem, "ignoring the snapshot stored in Redis");
        Ok(())
    }
}
