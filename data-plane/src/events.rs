//! Getting [`GatewayEvent`]s from the request path to the control plane without slowing it.
//!
//! The request path calls [`EventEmitter::emit`], which only tries to push the event into a
//! bounded in-memory queue ([`EVENT_QUEUE_CAPACITY`]): it never waits, and when the queue is
//! full the event is dropped and counted (with a warning every [`DROP_WARN_EVERY`] drops). A
//! Pingora background service, [`EventDelivery`], drains the queue in batches to the
//! [`EventSink`]:
//!
//! - Redis: one pipeline per batch, in which consecutive events share stream entries of up to
//!   [`ENTRY_MAX_EVENTS`]: `XADD <stream> MAXLEN ~ 100000 * events <JSON array>`. When Redis
//!   is unreachable the batch is kept and retried with backoff; meanwhile the queue keeps
//!   absorbing events up to its capacity.
//! - In-process (`airlock dev`): each event is sent on the control plane's channel.
//!
//! Events carry names and ids only: building them is the caller's job, and
//! [`crate::proxy`] never puts a secret value or an API key into one.
//!
//! The same queue and transport carry [`KeyUsageReport`]s: [`KeyUsageReporter`] collects
//! the keys used since its last round from the snapshot store (atomics written by the
//! request path) every [`KEY_USAGE_INTERVAL`] and queues one report for all of them. On Redis
//! a report is an entry of its own with a `key_usage` field; in process it is a
//! [`DataPlaneMessage::KeyUsage`]. The control plane applies it to `api_keys.last_used_at`
//! and stores no event for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_shared::events::{
    events_json, DataPlaneMessage, GatewayEvent, KeyUsageReport, ENTRY_MAX_EVENTS, EVENTS_FIELD,
    KEY_USAGE_FIELD, OAUTH_FIELD,
};
use airlock_shared::keys::RedisNames;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::snapshot::SnapshotStore;

/// Where events go.
pub enum EventSink {
    /// Events are dropped (still counted and logged at debug level).
    Disabled,
    /// `airlock dev`: to the control plane in the same process (events and key usage).
    InProcess(mpsc::UnboundedSender<DataPlaneMessage>),
    /// Redis Streams: `XADD <names.events_stream()> MAXLEN ~ 100000 * events <[GatewayEvent] JSON>`
    /// (and `... * key_usage <KeyUsageReport JSON>` for key usage).
    Redis {
        /// `redis://`, `rediss://` or `unix://` URL.
        url: String,
        /// Key names (prefix) shared with the control plane.
        names: RedisNames,
    },
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disabled => f.write_str("Disabled"),
            Self::InProcess(_) => f.write_str("InProcess"),
            // The URL may carry a Redis password.
            Self::Redis { names, .. } => f
                .debug_struct("Redis")
                .field("stream", &names.events_stream())
                .finish_non_exhaustive(),
        }
    }
}

/// Events held in memory at most, waiting for delivery.
pub const EVENT_QUEUE_CAPACITY: usize = 10_000;
/// Approximate length, in entries, the Redis stream is trimmed to. An entry holds up to
/// [`ENTRY_MAX_EVENTS`] events (or one report), so a stream nobody reads keeps up to 1.6
/// million events under load, at most about 0.8 GB of Redis memory (an event is about 450
/// bytes of JSON), and fewer when events are rare (a delivery round then finds one, and
/// reports take entries too).
pub const STREAM_MAX_LEN: usize = 100_000;
/// A warning is logged for the first dropped event and then every this many.
pub const DROP_WARN_EVERY: u64 = 1_000;
/// How often key usage is collected and reported (the delay of `lastUsedAt`).
pub const KEY_USAGE_INTERVAL: Duration = Duration::from_secs(1);
/// Events sent to the sink in one go.
const BATCH_SIZE: usize = 256;
/// How long a batch that is not full waits for more events before it is written. Under load
/// (every invoke that injects a secret emits `secret.used`) this turns one Redis round trip
/// and one wake-up per event into one per few dozen; when idle it delays an event by at most
/// this much.
const BATCH_LINGER: Duration = Duration::from_millis(5);
/// Connect and per-command timeout for Redis.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Time left, once the server stops, to deliver what is still queued. Pingora gives background
/// services `graceful_shutdown_timeout_seconds` (1 s, see `server_conf`) before dropping them.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_millis(800);

/// Counts kept by the emitter.
#[derive(Debug, Default)]
struct EventCounters {
    /// Lost: the queue was full, or the sink was gone.
    dropped: AtomicU64,
    /// Not sent anywhere because the sink is [`EventSink::Disabled`].
    discarded: AtomicU64,
}

impl EventCounters {
    fn count_drop(&self, why: &'static str) {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if dropped == 1 || dropped.is_multiple_of(DROP_WARN_EVERY) {
            tracing::warn!(
                dropped_total = dropped,
                why,
                "gateway events are being dropped"
            );
        }
    }
}

/// The request path's handle on the event queue. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct EventEmitter {
    /// `None` when events are disabled.
    queue: Option<mpsc::Sender<DataPlaneMessage>>,
    counters: Arc<EventCounters>,
}

impl EventEmitter {
    /// Queue `event` for delivery, or drop it (counted) if the queue is full. Never waits.
    pub(crate) fn emit(&self, event: GatewayEvent) {
        let Some(queue) = &self.queue else {
            self.counters.discarded.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                kind = event.kind.as_str(),
                request_id = %event.request_id,
                function = event.function.as_deref(),
                status = event.status,
                "event not delivered (events are disabled)"
            );
            return;
        };
        match queue.try_send(event.into()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.counters.count_drop("queue full"),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counters.count_drop("delivery stopped")
            }
        }
    }

    /// Queue a key usage report, or drop it (counted) if the queue is full. Never waits.
    pub(crate) fn report_usage(&self, report: KeyUsageReport) {
        let Some(queue) = &self.queue else {
            return;
        };
        if queue.try_send(report.into()).is_err() {
            self.counters.count_drop("queue full (key usage)");
        }
    }

    /// Queue an OAuth connection report (new sealed tokens, a completed authorization, a
    /// failure), or drop it (counted) if the queue is full. Never waits. The control plane
    /// also learns about newer tokens from the next report, and data planes share them in
    /// Redis meanwhile.
    pub(crate) fn report_oauth(&self, report: airlock_shared::oauth::OAuthConnectionReport) {
        let Some(queue) = &self.queue else {
            self.counters.discarded.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if queue.try_send(report.into()).is_err() {
            self.counters.count_drop("queue full (oauth report)");
        }
    }

    /// Events lost so far (queue full or sink gone).
    pub(crate) fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Events not sent because events are disabled.
    pub(crate) fn discarded(&self) -> u64 {
        self.counters.discarded.load(Ordering::Relaxed)
    }
}

/// The emitter for `sink` and, unless events are disabled, the background service that
/// delivers its queue.
pub(crate) fn event_pipeline(
    sink: EventSink,
    capacity: usize,
) -> (EventEmitter, Option<EventDelivery>) {
    let counters = Arc::new(EventCounters::default());
    let target = match sink {
        EventSink::Disabled => {
            return (
                EventEmitter {
                    queue: None,
                    counters,
                },
                None,
            )
        }
        EventSink::InProcess(sender) => Target::InProcess(sender),
        EventSink::Redis { url, names } => Target::Redis {
            url,
            stream: names.events_stream(),
        },
    };
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    let emitter = EventEmitter {
        queue: Some(sender),
        counters: counters.clone(),
    };
    let delivery = EventDelivery {
        parts: Mutex::new(Some((receiver, target))),
        counters,
    };
    (emitter, Some(delivery))
}

enum Target {
    InProcess(mpsc::UnboundedSender<DataPlaneMessage>),
    Redis { url: String, stream: String },
}

/// The background service that drains the event queue to the sink.
pub(crate) struct EventDelivery {
    /// Taken by the first `start`; Pingora starts a background service once.
    parts: Mutex<Option<(mpsc::Receiver<DataPlaneMessage>, Target)>>,
    counters: Arc<EventCounters>,
}

#[async_trait]
impl BackgroundService for EventDelivery {
    async fn start(&self, shutdown: ShutdownWatch) {
        let parts = self
            .parts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Some((receiver, target)) = parts else {
            tracing::warn!("event delivery started twice; ignoring");
            return;
        };
        let mut writer = match target {
            Target::InProcess(sender) => Writer::InProcess {
                sender,
                counters: self.counters.clone(),
            },
            Target::Redis { url, stream } => match redis::Client::open(url.as_str()) {
                Ok(client) => Writer::Redis(Box::new(RedisWriter {
                    client,
                    stream,
                    connection: None,
                })),
                Err(_) => {
                    // The binary validates the URL at startup; a library caller gets a loud
                    // log (without the URL: it may hold a password).
                    tracing::error!("invalid Redis URL for events; events will be dropped");
                    Writer::Nowhere {
                        counters: self.counters.clone(),
                    }
                }
            },
        };
        deliver(receiver, &mut writer, shutdown).await;
    }
}

/// Resolves when the server is shutting down (or its shutdown sender is gone).
async fn shutting_down(shutdown: &mut ShutdownWatch) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Top `batch` up with what arrives within [`BATCH_LINGER`], until it is full. It sleeps
/// instead of waiting on the queue, so the request path's sends wake nobody meanwhile (a
/// waiting receiver would be woken, across threads, for every single event).
async fn linger(
    receiver: &mut mpsc::Receiver<DataPlaneMessage>,
    batch: &mut Vec<DataPlaneMessage>,
) {
    if batch.len() >= BATCH_SIZE {
        return;
    }
    tokio::time::sleep(BATCH_LINGER).await;
    while batch.len() < BATCH_SIZE {
        match receiver.try_recv() {
            Ok(message) => batch.push(message),
            // Empty, or every emitter is gone: the caller finds out on its next receive.
            Err(_) => break,
        }
    }
}

async fn deliver(
    mut receiver: mpsc::Receiver<DataPlaneMessage>,
    writer: &mut Writer,
    mut shutdown: ShutdownWatch,
) {
    let mut batch = Vec::with_capacity(BATCH_SIZE);
    let mut backoff = BACKOFF_MIN;
    loop {
        if batch.is_empty() {
            tokio::select! {
                received = receiver.recv_many(&mut batch, BATCH_SIZE) => {
                    if received == 0 {
                        return; // every emitter is gone
                    }
                }
                _ = shutting_down(&mut shutdown) => break,
            }
            linger(&mut receiver, &mut batch).await;
        }
        match writer.write(&batch).await {
            Ok(()) => {
                batch.clear();
                backoff = BACKOFF_MIN;
            }
            Err(error) => {
                // The batch is kept and retried; new events wait in the queue meanwhile.
                tracing::warn!(
                    %error,
                    pending = batch.len(),
                    retry_in = ?backoff,
                    "cannot deliver gateway events; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutting_down(&mut shutdown) => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    // Stopping: one last, bounded attempt at what is still queued.
    while let Ok(event) = receiver.try_recv() {
        batch.push(event);
    }
    if batch.is_empty() {
        return;
    }
    let pending = batch.len();
    let delivered = tokio::time::timeout(FINAL_FLUSH_TIMEOUT, async {
        for chunk in batch.chunks(BATCH_SIZE) {
            writer.write(chunk).await?;
        }
        Ok::<_, DeliveryError>(())
    })
    .await;
    if !matches!(delivered, Ok(Ok(()))) {
        tracing::warn!(pending, "gateway events still queued at shutdown were lost");
    }
}

#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {REDIS_TIMEOUT:?}")]
    Timeout,
}

/// Writes batches of events to the sink.
enum Writer {
    InProcess {
        sender: mpsc::UnboundedSender<DataPlaneMessage>,
        counters: Arc<EventCounters>,
    },
    // Boxed: the connection makes it much larger than the other variants.
    Redis(Box<RedisWriter>),
    Nowhere {
        counters: Arc<EventCounters>,
    },
}

impl Writer {
    async fn write(&mut self, batch: &[DataPlaneMessage]) -> Result<(), DeliveryError> {
        match self {
            Self::InProcess { sender, counters } => {
                for event in batch {
                    if sender.send(event.clone()).is_err() {
                        counters.count_drop("the in-process receiver is gone");
                    }
                }
                Ok(())
            }
            Self::Redis(redis) => redis.write(batch).await,
            Self::Nowhere { counters } => {
                for _ in batch {
                    counters.count_drop("no usable sink");
                }
                Ok(())
            }
        }
    }
}

struct RedisWriter {
    client: redis::Client,
    stream: String,
    connection: Option<redis::aio::MultiplexedConnection>,
}

impl RedisWriter {
    /// Append `batch` to the stream in one pipeline: runs of consecutive events as entries of
    /// up to [`ENTRY_MAX_EVENTS`], each report as an entry of its own. On error the connection
    /// is dropped, so the next attempt reconnects.
    async fn write(&mut self, batch: &[DataPlaneMessage]) -> Result<(), DeliveryError> {
        let mut pipeline = redis::pipe();
        let mut events: Vec<&GatewayEvent> = Vec::with_capacity(ENTRY_MAX_EVENTS);
        for message in batch {
            let (field, json) = match message {
                DataPlaneMessage::Event(event) => {
                    events.push(event);
                    if events.len() == ENTRY_MAX_EVENTS {
                        self.append(&mut pipeline, EVENTS_FIELD, Ok(events_json(&events)));
                        events.clear();
                    }
                    continue;
                }
                DataPlaneMessage::KeyUsage(report) => (KEY_USAGE_FIELD, serde_json::to_vec(report)),
                DataPlaneMessage::OAuth(report) => (OAUTH_FIELD, serde_json::to_vec(report)),
            };
            // A report keeps its place after the events before it.
            if !events.is_empty() {
                self.append(&mut pipeline, EVENTS_FIELD, Ok(events_json(&events)));
                events.clear();
            }
            self.append(&mut pipeline, field, json);
        }
        if !events.is_empty() {
            self.append(&mut pipeline, EVENTS_FIELD, Ok(events_json(&events)));
        }
        let result = async {
            let connection = match &mut self.connection {
                Some(connection) => connection,
                None => {
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(REDIS_TIMEOUT))
                        .set_response_timeout(Some(REDIS_TIMEOUT));
                    let connection = tokio::time::timeout(
                        REDIS_TIMEOUT,
                        self.client
                            .get_multiplexed_async_connection_with_config(&config),
                    )
                    .await
                    .map_err(|_| DeliveryError::Timeout)??;
                    self.connection.insert(connection)
                }
            };
            tokio::time::timeout(REDIS_TIMEOUT, pipeline.query_async::<()>(connection))
                .await
                .map_err(|_| DeliveryError::Timeout)??;
            Ok(())
        }
        .await;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    /// Add `XADD <stream> MAXLEN ~ STREAM_MAX_LEN * <field> <json>` to `pipeline`.
    fn append(
        &self,
        pipeline: &mut redis::Pipeline,
        field: &'static str,
        json: serde_json::Result<Vec<u8>>,
    ) {
        // Serializing ids, names and plain strings cannot fail; skip rather than stall.
        let Ok(json) = json else {
            tracing::error!(field, "cannot serialize a message for the event stream");
            return;
        };
        pipeline
            .cmd("XADD")
            .arg(&self.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAX_LEN)
            .arg("*")
            .arg(field)
            .arg(json)
            .ignore();
    }
}

/// The background service that reports key usage every [`KEY_USAGE_INTERVAL`].
pub(crate) struct KeyUsageReporter {
    store: Arc<SnapshotStore>,
    emitter: EventEmitter,
}

impl KeyUsageReporter {
    pub(crate) fn new(store: Arc<SnapshotStore>, emitter: EventEmitter) -> Self {
        Self { store, emitter }
    }

    /// Queue one report of the keys used since the last round, if any.
    fn report(&self) {
        let uses = self.store.take_uses();
        if !uses.is_empty() {
            self.emitter.report_usage(KeyUsageReport { uses });
        }
    }
}

#[async_trait]
impl BackgroundService for KeyUsageReporter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticks = tokio::time::interval(KEY_USAGE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.report(),
                _ = shutting_down(&mut shutdown) => break,
            }
        }
        // What the last second saw, for the final flush of the event delivery.
        self.report();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use airlock_shared::events::EventKind;
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;

    fn event(request_id: &str) -> GatewayEvent {
        GatewayEvent {
            id: Uuid::now_v7(),
            at: Utc::now(),
            kind: EventKind::AuthDenied,
            tenant_id: None,
            environment_id: None,
            request_id: request_id.into(),
            function: Some("f".into()),
            api_key_id: None,
            secrets: vec![],
            upstream_host: None,
            status: 401,
            message: "missing or invalid API key".into(),
            oauth_connection: None,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (sender, _receiver) = mpsc::unbounded_channel();
        let (emitter, delivery) = event_pipeline(EventSink::InProcess(sender), 3);
        assert!(delivery.is_some());
        for i in 0..10 {
            emitter.emit(event(&i.to_string()));
        }
        assert_eq!(emitter.dropped(), 7);
        assert_eq!(emitter.discarded(), 0);
    }

    #[test]
    fn disabled_events_are_counted_not_queued() {
        let (emitter, delivery) = event_pipeline(EventSink::Disabled, 3);
        assert!(delivery.is_none());
        emitter.emit(event("r"));
        assert_eq!((emitter.dropped(), emitter.discarded()), (0, 1));
    }

    #[tokio::test]
    async fn delivery_drains_the_queue_in_order_and_flushes_on_shutdown() {
        let (sender, mut received) = mpsc::unbounded_channel();
        let (emitter, delivery) = event_pipeline(EventSink::InProcess(sender), 100);
        let delivery = delivery.unwrap();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move { delivery.start(shutdown).await });
        for i in 0..5 {
            emitter.emit(event(&i.to_string()));
        }
        for i in 0..5 {
            let got = tokio::time::timeout(Duration::from_secs(2), received.recv())
                .await
                .unwrap()
                .unwrap();
            let DataPlaneMessage::Event(got) = got else {
                panic!("expected an event, got {got:?}");
            };
            assert_eq!(got.request_id, i.to_string());
        }
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
        // Once delivery has stopped, emitting counts a drop instead of blocking.
        emitter.emit(event("late"));
        assert_eq!(emitter.dropped(), 1);
    }

    /// Consecutive events share entries of up to `ENTRY_MAX_EVENTS`; a report is an entry of
    /// its own and keeps its place in the order (real Redis at 127.0.0.1:6379).
    #[tokio::test]
    async fn redis_entries_group_consecutive_events_and_keep_the_order() {
        let stream = format!("test-{}:events", Uuid::new_v4());
        let mut writer = RedisWriter {
            client: redis::Client::open("redis://127.0.0.1:6379").unwrap(),
            stream: stream.clone(),
            connection: None,
        };
        let report = KeyUsageReport {
            uses: vec![airlock_shared::events::KeyUse {
                api_key_id: Uuid::nil(),
                last_used_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            }],
        };
        let mut batch: Vec<DataPlaneMessage> = (0..20)
            .map(|i| DataPlaneMessage::Event(event(&format!("a{i}"))))
            .collect();
        batch.push(DataPlaneMessage::KeyUsage(report.clone()));
        batch.extend((0..3).map(|i| DataPlaneMessage::Event(event(&format!("b{i}")))));
        writer.write(&batch).await.unwrap();
        writer
            .write(&[DataPlaneMessage::Event(event("c0"))])
            .await
            .unwrap();

        let mut con = writer
            .client
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .query_async(&mut con)
            .await
            .unwrap();
        redis::cmd("DEL")
            .arg(&stream)
            .query_async::<()>(&mut con)
            .await
            .unwrap();
        let shape: Vec<(String, Vec<String>)> = entries
            .into_iter()
            .map(|(_, fields)| {
                assert_eq!(fields.len(), 1, "{fields:?}");
                let (field, json) = fields.into_iter().next().unwrap();
                let ids = if field == EVENTS_FIELD {
                    serde_json::from_str::<Vec<GatewayEvent>>(&json)
                        .unwrap()
                        .into_iter()
                        .map(|event| event.request_id)
                        .collect()
                } else {
                    assert_eq!(
                        serde_json::from_str::<KeyUsageReport>(&json).unwrap(),
                        report
                    );
                    vec![]
                };
                (field, ids)
            })
            .collect();
        let ids = |prefix: &str, range: std::ops::Range<usize>| -> Vec<String> {
            range.map(|i| format!("{prefix}{i}")).collect()
        };
        assert_eq!(
            shape,
            vec![
                (EVENTS_FIELD.to_string(), ids("a", 0..ENTRY_MAX_EVENTS)),
                (EVENTS_FIELD.to_string(), ids("a", ENTRY_MAX_EVENTS..20)),
                (KEY_USAGE_FIELD.to_string(), vec![]),
                (EVENTS_FIELD.to_string(), ids("b", 0..3)),
                (EVENTS_FIELD.to_string(), ids("c", 0..1)),
            ]
        );
    }

    #[test]
    fn debug_never_shows_the_redis_url() {
        let sink = EventSink::Redis {
            url: "redis://:hunter2@127.0.0.1".into(),
            names: RedisNames::new("p"),
        };
        let debug = format!("{sink:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("p:events"), "{debug}");
    }
}
