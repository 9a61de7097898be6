//! Event ingestion: [`GatewayEvent`]s reported by data planes, stored in the database.
//!
//! Two sources sit behind one [`EventSource`] interface:
//! - [`InProcessEvents`]: the channel the data plane of `airlock dev` sends into;
//! - [`RedisEvents`]: the Redis Stream data planes `XADD` to, read in the consumer group
//!   [`airlock_shared::keys::EVENTS_GROUP`] so that several control planes share the work and
//!   an entry is acknowledged only once it is stored.
//!
//! The [`EventIngester`] task takes batches from a source, stores them
//! ([`crate::domain::events::store`], idempotent per event id) and then acknowledges them.
//! While the database is unreachable it keeps the batch and retries with backoff; nothing is
//! acknowledged that is not stored. On shutdown it stores what it has already received
//! (the in-process channel is drained) and stops.
//!
//! The same transport carries key usage reports ([`airlock_shared::events::KeyUsageReport`]):
//! they are not events and create no event row; the ingester moves `api_keys.last_used_at`
//! forward with them ([`crate::domain::api_keys::record_uses`]), once, best effort (a report
//! lost while the database is down is superseded by the next one a second later).
//!
//! It also carries OAuth connection reports ([`OAuthConnectionReport`]): new sealed tokens,
//! completed authorizations and failures. The ingester applies them to the connection rows
//! ([`crate::domain::oauth::reports::apply`], idempotent), retrying while the database is
//! unreachable like events, and republishes an environment whose connection changed status or
//! consumed an authorization (when it was started with a publisher).

mod in_process;
mod redis_stream;

use std::time::Duration;

use std::collections::BTreeSet;

use airlock_shared::events::{GatewayEvent, KeyUse};
use airlock_shared::oauth::OAuthConnectionReport;
use async_trait::async_trait;
use sea_orm::DatabaseConnection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::domain::api_keys;
use crate::domain::events::{self, StoreOutcome};
use crate::domain::oauth::reports;
use crate::publish::ConfigPublisher;

pub use in_process::InProcessEvents;
pub use redis_stream::{RedisEvents, RedisEventsConfig};

/// Most messages taken from a source at once: in-process messages, or Redis stream entries
/// (each up to [`airlock_shared::events::ENTRY_MAX_EVENTS`] events). The events of one such
/// batch are stored in one transaction.
pub const MAX_BATCH: usize = 256;

/// First delay before retrying a failed store; doubles up to [`MAX_STORE_RETRY_DELAY`].
const FIRST_STORE_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_STORE_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Attempts left to store a batch once shutdown has begun and the database is down.
const STORE_ATTEMPTS_AFTER_STOP: u32 = 3;

/// Events a source handed over, and what acknowledges them once stored.
pub struct ReceivedEvents<R> {
    pub events: Vec<GatewayEvent>,
    /// Key uses reported in the same batch (not events).
    pub key_usage: Vec<KeyUse>,
    /// OAuth connection reports of the same batch (not events).
    pub oauth: Vec<OAuthConnectionReport>,
    pub receipt: R,
}

/// Where events come from. One implementation per transport.
#[async_trait]
pub trait EventSource: Send + 'static {
    /// Acknowledges a batch (stream entry ids for Redis; nothing in process).
    type Receipt: Send;

    /// The next batch, waiting for one. Returns `None` once `stop` is set and everything the
    /// source had already taken in has been returned.
    async fn receive(&mut self, stop: &mut StopSignal) -> Option<ReceivedEvents<Self::Receipt>>;

    /// The batch behind `receipt` is stored: the source may forget it.
    async fn acknowledge(&mut self, receipt: Self::Receipt);

    /// The ingester is done with this source (called once, after the last acknowledgement).
    async fn close(&mut self) {}
}

/// Tells a running source that shutdown has begun.
#[derive(Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Whether shutdown has begun.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown has begun (at once if it already has).
    pub async fn stopped(&mut self) {
        // An error means the sender is gone, which also means stop.
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }

    /// Sleep for `delay`, or less if shutdown begins meanwhile.
    pub async fn sleep(&mut self, delay: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.stopped() => {}
        }
    }
}

/// Counts over an ingester's life.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestStats {
    /// Events stored.
    pub stored: usize,
    /// Events that were already stored (re-deliveries).
    pub duplicates: usize,
    /// Events the database refused while it was otherwise working (logged, acknowledged).
    pub rejected: usize,
    /// Events received but not stored because shutdown came while the database was down.
    /// Redis keeps them pending for another consumer; in process they are lost (logged).
    pub unstored: usize,
    /// Key uses received in usage reports.
    pub key_uses: usize,
    /// OAuth connection reports applied (including those for unknown connections, dropped).
    pub oauth_reports: usize,
}

/// A running ingestion task.
pub struct EventIngester {
    stop: watch::Sender<bool>,
    task: JoinHandle<IngestStats>,
}

impl EventIngester {
    /// Start storing events from `source` into `db`. OAuth reports are applied without
    /// republishing (see [`EventIngester::start_with_publisher`]).
    pub fn start<S: EventSource>(db: DatabaseConnection, source: S) -> Self {
        Self::spawn(db, source, None)
    }

    /// Start storing events from `source` into `db`; environments whose OAuth connections a
    /// report changed are republished through `publisher`.
    pub fn start_with_publisher<S: EventSource>(
        db: DatabaseConnection,
        source: S,
        publisher: ConfigPublisher,
    ) -> Self {
        Self::spawn(db, source, Some(publisher))
    }

    fn spawn<S: EventSource>(
        db: DatabaseConnection,
        source: S,
        publisher: Option<ConfigPublisher>,
    ) -> Self {
        let (stop, stop_signal) = watch::channel(false);
        let task = tokio::spawn(run(db, source, publisher, StopSignal(stop_signal)));
        Self { stop, task }
    }

    /// Stop: store what was already received, acknowledge it, and return the counts.
    pub async fn shutdown(self) -> IngestStats {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(stats) => stats,
            Err(error) => {
                tracing::error!(%error, "the event ingester task failed");
                IngestStats::default()
            }
        }
    }
}

async fn run<S: EventSource>(
    db: DatabaseConnection,
    mut source: S,
    publisher: Option<ConfigPublisher>,
    mut stop: StopSignal,
) -> IngestStats {
    let mut stats = IngestStats::default();
    while let Some(received) = source.receive(&mut stop).await {
        if !received.oauth.is_empty() {
            stats.oauth_reports += received.oauth.len();
            let changed = apply_oauth_reports(&db, &received.oauth, &mut stop).await;
            if let Some(publisher) = &publisher {
                for environment_id in changed {
                    publisher.publish_environment(environment_id).await;
                }
            }
        }
        if !received.key_usage.is_empty() {
            if let Err(error) = api_keys::record_uses(&db, &received.key_usage).await {
                tracing::warn!(error = %error.detail(), keys = received.key_usage.len(), "could not record API key usage; the next report will");
            }
            stats.key_uses += received.key_usage.len();
        }
        let count = received.events.len();
        if count == 0 {
            source.acknowledge(received.receipt).await;
            continue;
        }
        match store_with_retry(&db, &received.events, &mut stop).await {
            Some(outcome) => {
                stats.stored += outcome.stored;
                stats.duplicates += outcome.duplicates;
                stats.rejected += count - outcome.stored - outcome.duplicates;
                source.acknowledge(received.receipt).await;
            }
            None => {
                stats.unstored += count;
                tracing::error!(
                    events = count,
                    "shutting down while the database is unreachable: events not stored"
                );
            }
        }
    }
    source.close().await;
    tracing::debug!(?stats, "event ingester stopped");
    stats
}

/// Store a batch. While the database is unreachable, retry with backoff (a few times only
/// once shutdown has begun; then `None`). When the database works but refuses the batch,
/// store the events one by one so that one bad event cannot hold up the rest; the events it
/// refuses are logged and counted as rejected (not in the outcome).
async fn store_with_retry(
    db: &DatabaseConnection,
    batch: &[GatewayEvent],
    stop: &mut StopSignal,
) -> Option<StoreOutcome> {
    let mut delay = FIRST_STORE_RETRY_DELAY;
    let mut attempts_after_stop = 0;
    loop {
        let error = match events::store(db, batch).await {
            Ok(outcome) => return Some(outcome),
            Err(error) => error,
        };
        if db.ping().await.is_ok() {
            tracing::warn!(error = %error.detail(), events = batch.len(), "storing a batch of events failed; storing them one by one");
            if let Some(outcome) = store_one_by_one(db, batch).await {
                return Some(outcome);
            }
        } else {
            tracing::warn!(error = %error.detail(), retry_in_ms = delay.as_millis() as u64, "cannot store events: database unreachable");
        }
        if stop.is_stopped() {
            attempts_after_stop += 1;
            if attempts_after_stop >= STORE_ATTEMPTS_AFTER_STOP {
                return None;
            }
        }
        stop.sleep(delay).await;
        delay = (delay * 2).min(MAX_STORE_RETRY_DELAY);
    }
}

/// Apply OAuth reports in order, each retried while the database is unreachable (a few times
/// only once shutdown has begun). Returns the environments to republish.
async fn apply_oauth_reports(
    db: &DatabaseConnection,
    batch: &[OAuthConnectionReport],
    stop: &mut StopSignal,
) -> BTreeSet<uuid::Uuid> {
    let mut republish = BTreeSet::new();
    for report in batch {
        let mut delay = FIRST_STORE_RETRY_DELAY;
        let mut attempts_after_stop = 0;
        loop {
            match reports::apply(db, report).await {
                Ok(Some(outcome)) => {
                    if outcome.republish {
                        republish.insert(outcome.environment_id);
                    }
                    break;
                }
                Ok(None) => break,
                Err(error) => {
                    // Ids only: a report's tokens are sealed, but are not logged either.
                    let reachable = db.ping().await.is_ok();
                    tracing::warn!(
                        error = %error.detail(),
                        connection_id = %report.connection_id,
                        "could not apply an OAuth connection report"
                    );
                    if reachable {
                        // The database refuses this report: retrying cannot help.
                        break;
                    }
                    if stop.is_stopped() {
                        attempts_after_stop += 1;
                        if attempts_after_stop >= STORE_ATTEMPTS_AFTER_STOP {
                            tracing::error!(connection_id = %report.connection_id, "shutting down while the database is unreachable: OAuth report not applied");
                            break;
                        }
                    }
                    stop.sleep(delay).await;
                    delay = (delay * 2).min(MAX_STORE_RETRY_DELAY);
                }
            }
        }
    }
    republish
}

/// Store each event in its own transaction. `None` if the database stopped answering
/// meanwhile (the caller retries the whole batch; stored events are not stored twice).
async fn store_one_by_one(db: &DatabaseConnection, batch: &[GatewayEvent]) -> Option<StoreOutcome> {
    let mut total = StoreOutcome::default();
    for event in batch {
        match events::store(db, std::slice::from_ref(event)).await {
            Ok(outcome) => {
                total.stored += outcome.stored;
                total.duplicates += outcome.duplicates;
            }
            Err(error) => {
                if db.ping().await.is_err() {
                    return None;
                }
                tracing::error!(
                    event_id = %event.id,
                    kind = event.kind.as_str(),
                    error = %error.detail(),
                    "the database refused an event; skipping it"
                );
            }
        }
    }
    Some(total)
}
