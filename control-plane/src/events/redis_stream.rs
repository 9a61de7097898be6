//! Events from data planes through a Redis Stream, read in a consumer group.
//!
//! Data planes `XADD <prefix>:events MAXLEN ~ 100000 * events <JSON array of GatewayEvents>`
//! (up to [`airlock_shared::events::ENTRY_MAX_EVENTS`] consecutive events per entry; entries
//! of one `event` each, from data planes before batched entries, are read too). Every
//! control plane reads with `XREADGROUP GROUP control-plane <consumer> ... BLOCK`, so each
//! entry goes to one of them; an entry is `XACK`ed only after it is stored. Entries a consumer
//! took and never acknowledged (it died) stay pending: every consumer claims such entries
//! once they have been idle for a while (`XAUTOCLAIM`), at start and periodically, so a
//! dead control plane's entries are stored by a live one. Storing is idempotent, so an entry
//! stored twice (claimed from a consumer that was only slow) is harmless.

use std::time::Duration;

use airlock_shared::events::{GatewayEvent, KeyUsageReport};
use airlock_shared::keys::{RedisNames, EVENTS_GROUP};
use airlock_shared::oauth::OAuthConnectionReport;
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamPendingCountReply,
    StreamReadOptions, StreamReadReply,
};
use redis::{AsyncCommands, AsyncConnectionConfig, RedisError};
use tokio::time::Instant;

use super::{EventSource, ReceivedEvents, StopSignal, MAX_BATCH};

pub use airlock_shared::events::{EVENTS_FIELD, EVENT_FIELD, KEY_USAGE_FIELD, OAUTH_FIELD};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Allowed on top of the `BLOCK` time before a read counts as failed.
const RESPONSE_MARGIN: Duration = Duration::from_secs(5);
/// First delay before reconnecting; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// How the consumer reads. [`RedisEventsConfig::new`] gives production defaults; tests
/// shorten the times.
#[derive(Debug, Clone)]
pub struct RedisEventsConfig {
    /// Redis URL (`redis://...`, `rediss://...`).
    pub url: String,
    pub names: RedisNames,
    /// This consumer's name in the group; unique per process.
    pub consumer: String,
    /// How long one `XREADGROUP` waits for new entries. Shutdown waits for at most one such
    /// read to end, so it stays short.
    pub block: Duration,
    /// Entries pending (delivered, never acknowledged) for longer than this are claimed from
    /// whichever consumer holds them. Longer than storing a batch ever takes.
    pub claim_min_idle: Duration,
    /// How often to look for such entries (also once at start).
    pub claim_interval: Duration,
    /// Most entries read or claimed at once (an entry holds up to
    /// [`airlock_shared::events::ENTRY_MAX_EVENTS`] events).
    pub batch: usize,
}

impl RedisEventsConfig {
    /// Defaults: a unique consumer name (`cp-<pid>-<random>`), 2 s reads, entries idle for
    /// 60 s claimed, checked every 30 s.
    pub fn new(url: impl Into<String>, names: RedisNames) -> Self {
        Self {
            url: url.into(),
            names,
            consumer: format!(
                "cp-{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            block: Duration::from_secs(2),
            claim_min_idle: Duration::from_secs(60),
            claim_interval: Duration::from_secs(30),
            batch: MAX_BATCH,
        }
    }
}

/// The consumer. Connects lazily and reconnects with backoff: Redis being down delays
/// ingestion, it never stops it.
pub struct RedisEvents {
    client: redis::Client,
    config: RedisEventsConfig,
    stream: String,
    connection: Option<MultiplexedConnection>,
    /// Where the current `XAUTOCLAIM` scan continues; `0-0` starts a new one.
    claim_cursor: String,
    /// When the next scan for stale entries starts; `None` when Redis cannot claim
    /// (`XAUTOCLAIM` needs Redis 6.2).
    next_claim: Option<Instant>,
    retry_delay: Duration,
    /// Stored entries whose `XACK` failed; sent again before the next read.
    unacknowledged: Vec<String>,
}

/// Stream entry ids of a batch: every entry read, including malformed ones (acknowledged so
/// they are not delivered again).
pub struct StreamReceipt(Vec<String>);

impl RedisEvents {
    /// A consumer for `config`. Fails only on an invalid URL; Redis is contacted on the
    /// first read.
    pub fn new(config: RedisEventsConfig) -> Result<Self, RedisError> {
        let client = redis::Client::open(config.url.as_str())?;
        Ok(Self {
            client,
            stream: config.names.events_stream(),
            config,
            connection: None,
            claim_cursor: "0-0".to_string(),
            next_claim: Some(Instant::now()),
            retry_delay: FIRST_RETRY_DELAY,
            unacknowledged: Vec::new(),
        })
    }

    /// This consumer's name in the group.
    pub fn consumer(&self) -> &str {
        &self.config.consumer
    }

    /// The connection, connecting (and creating the group if missing) when there is none.
    async fn connection(&mut self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.config.block + RESPONSE_MARGIN));
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.ensure_group(&mut connection).await?;
        tracing::info!(
            stream = %self.stream,
            group = EVENTS_GROUP,
            consumer = %self.config.consumer,
            "reading events from Redis"
        );
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    /// Create the consumer group (and the stream) if missing. A new group starts at the
    /// beginning of the stream: events sent before any control plane ran are stored too.
    async fn ensure_group(&self, connection: &mut MultiplexedConnection) -> Result<(), RedisError> {
        match connection
            .xgroup_create_mkstream::<_, _, _, ()>(&self.stream, EVENTS_GROUP, "0")
            .await
        {
            Ok(()) => {
                tracing::info!(stream = %self.stream, group = EVENTS_GROUP, "created the events consumer group");
                Ok(())
            }
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Forget the connection after an error and wait before the next attempt.
    async fn failed(&mut self, error: RedisError, stop: &mut StopSignal) {
        if error.code() == Some("NOGROUP") {
            // The stream or group was deleted under us: recreate it at once.
            tracing::warn!(stream = %self.stream, "the events consumer group is gone; recreating it");
            self.connection = None;
            return;
        }
        tracing::warn!(
            %error,
            retry_in_ms = self.retry_delay.as_millis() as u64,
            "cannot read events from Redis; retrying"
        );
        self.connection = None;
        stop.sleep(self.retry_delay).await;
        self.retry_delay = (self.retry_delay * 2).min(MAX_RETRY_DELAY);
    }

    /// Claim entries idle for longer than `claim_min_idle`, one page of the scan. Returns
    /// what was claimed (possibly nothing) and schedules the next scan when this one is done.
    async fn claim(
        &mut self,
        connection: &mut MultiplexedConnection,
    ) -> Result<Vec<StreamId>, RedisError> {
        let reply: StreamAutoClaimReply = connection
            .xautoclaim_options(
                &self.stream,
                EVENTS_GROUP,
                &self.config.consumer,
                self.config.claim_min_idle.as_millis() as u64,
                &self.claim_cursor,
                StreamAutoClaimOptions::default().count(self.config.batch),
            )
            .await?;
        if !reply.deleted_ids.is_empty() {
            // Trimmed from the stream (MAXLEN) before anyone stored them.
            tracing::warn!(
                entries = reply.deleted_ids.len(),
                "pending events were trimmed from the stream before they were stored"
            );
        }
        if !reply.claimed.is_empty() {
            tracing::info!(
                entries = reply.claimed.len(),
                consumer = %self.config.consumer,
                "claimed events left pending by another consumer"
            );
        }
        if reply.next_stream_id == "0-0" {
            self.claim_cursor = "0-0".to_string();
            self.next_claim = Some(Instant::now() + self.config.claim_interval);
        } else {
            self.claim_cursor = reply.next_stream_id;
        }
        Ok(reply.claimed)
    }

    /// New entries for this consumer, waiting up to `block`.
    async fn read(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> Result<Vec<StreamId>, RedisError> {
        let options = StreamReadOptions::default()
            .group(EVENTS_GROUP, &self.config.consumer)
            .count(self.config.batch)
            .block(self.config.block.as_millis() as usize);
        let reply: Option<StreamReadReply> = connection
            .xread_options(&[&self.stream], &[">"], &options)
            .await?;
        Ok(reply
            .map(|reply| reply.keys.into_iter().flat_map(|key| key.ids).collect())
            .unwrap_or_default())
    }

    /// Retry acknowledgements that failed earlier.
    async fn flush_acknowledgements(
        &mut self,
        connection: &mut MultiplexedConnection,
    ) -> Result<(), RedisError> {
        if self.unacknowledged.is_empty() {
            return Ok(());
        }
        connection
            .xack::<_, _, _, ()>(&self.stream, EVENTS_GROUP, &self.unacknowledged)
            .await?;
        self.unacknowledged.clear();
        Ok(())
    }

    /// Parse entries into events; malformed ones are logged and only acknowledged.
    fn parse(&self, entries: Vec<StreamId>) -> ReceivedEvents<StreamReceipt> {
        let mut events = Vec::with_capacity(entries.len());
        let mut key_usage = Vec::new();
        let mut oauth = Vec::new();
        let mut ids = Vec::with_capacity(entries.len());
        for entry in entries {
            match parse_entry(&entry) {
                Ok(StreamMessage::Event(event)) => events.push(*event),
                Ok(StreamMessage::Events(batch)) => events.extend(batch),
                Ok(StreamMessage::KeyUsage(report)) => key_usage.extend(report.uses),
                Ok(StreamMessage::OAuth(report)) => oauth.push(*report),
                // The reason names the problem, never the content (which could be anything).
                Err(reason) => tracing::warn!(
                    stream = %self.stream,
                    entry = %entry.id,
                    reason,
                    "skipping a malformed event entry"
                ),
            }
            ids.push(entry.id);
        }
        ReceivedEvents {
            events,
            key_usage,
            oauth,
            receipt: StreamReceipt(ids),
        }
    }
}

fn is_unknown_command(error: &RedisError) -> bool {
    error.code() == Some("ERR")
        && error
            .detail()
            .is_some_and(|detail| detail.contains("unknown command"))
}

/// What a stream entry holds.
#[derive(Debug, PartialEq)]
enum StreamMessage {
    Event(Box<GatewayEvent>),
    /// Consecutive events of one data plane.
    Events(Vec<GatewayEvent>),
    KeyUsage(KeyUsageReport),
    OAuth(Box<OAuthConnectionReport>),
}

/// The event (or key usage report, or OAuth connection report) in a stream entry, or why
/// there is none.
fn parse_entry(entry: &StreamId) -> Result<StreamMessage, String> {
    if let Some(value) = entry.map.get(KEY_USAGE_FIELD) {
        return parse_field(KEY_USAGE_FIELD, "KeyUsageReport", value).map(StreamMessage::KeyUsage);
    }
    if let Some(value) = entry.map.get(OAUTH_FIELD) {
        return parse_field(OAUTH_FIELD, "OAuthConnectionReport", value)
            .map(|report| StreamMessage::OAuth(Box::new(report)));
    }
    if let Some(value) = entry.map.get(EVENTS_FIELD) {
        return parse_field(EVENTS_FIELD, "GatewayEvent array", value).map(StreamMessage::Events);
    }
    let Some(value) = entry.map.get(EVENT_FIELD) else {
        return Err(format!("no `{EVENTS_FIELD}` or `{EVENT_FIELD}` field"));
    };
    parse_field(EVENT_FIELD, "GatewayEvent", value)
        .map(|event| StreamMessage::Event(Box::new(event)))
}

fn parse_field<T: serde::de::DeserializeOwned>(
    field: &str,
    type_name: &str,
    value: &redis::Value,
) -> Result<T, String> {
    let bytes = match value {
        redis::Value::BulkString(bytes) => bytes.as_slice(),
        redis::Value::SimpleString(text) | redis::Value::VerbatimString { text, .. } => {
            text.as_bytes()
        }
        _ => return Err(format!("the `{field}` field is not a string")),
    };
    serde_json::from_slice(bytes).map_err(|error| {
        format!(
            "not a {type_name} ({:?} error at line {} column {})",
            error.classify(),
            error.line(),
            error.column()
        )
    })
}

#[async_trait]
impl EventSource for RedisEvents {
    type Receipt = StreamReceipt;

    async fn receive(&mut self, stop: &mut StopSignal) -> Option<ReceivedEvents<StreamReceipt>> {
        loop {
            // Entries are only taken from Redis while running: once taken, they are stored
            // before shutdown completes. A read in progress is let finish (at most `block`).
            if stop.is_stopped() {
                return None;
            }
            let mut connection = match self.connection().await {
                Ok(connection) => connection,
                Err(error) => {
                    self.failed(error, stop).await;
                    continue;
                }
            };
            if let Err(error) = self.flush_acknowledgements(&mut connection).await {
                self.failed(error, stop).await;
                continue;
            }
            let claiming = self.next_claim.is_some_and(|at| Instant::now() >= at);
            let entries = if claiming {
                self.claim(&mut connection).await
            } else {
                self.read(&mut connection).await
            };
            match entries {
                Ok(entries) => {
                    self.retry_delay = FIRST_RETRY_DELAY;
                    if !entries.is_empty() {
                        return Some(self.parse(entries));
                    }
                }
                Err(error) if claiming && is_unknown_command(&error) => {
                    tracing::error!(
                        "this Redis has no XAUTOCLAIM (Redis 6.2 or later is needed): events left pending by a control plane that died are not stored until it is upgraded"
                    );
                    self.next_claim = None;
                }
                Err(error) => self.failed(error, stop).await,
            }
        }
    }

    async fn acknowledge(&mut self, receipt: StreamReceipt) {
        let StreamReceipt(ids) = receipt;
        if ids.is_empty() {
            return;
        }
        let result = match self.connection().await {
            Ok(mut connection) => {
                connection
                    .xack::<_, _, _, ()>(&self.stream, EVENTS_GROUP, &ids)
                    .await
            }
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            // Stored but still pending: retried before the next read. Should this consumer
            // die first, another one claims and stores them again, which changes nothing.
            tracing::warn!(%error, entries = ids.len(), "cannot acknowledge stored events; will retry");
            self.connection = None;
            self.unacknowledged.extend(ids);
        }
    }

    /// Leave the group tidy: delete this consumer if it holds no pending entries (deleting
    /// one that does would drop them from the group's pending list).
    async fn close(&mut self) {
        let Ok(mut connection) = self.connection().await else {
            return;
        };
        if self.flush_acknowledgements(&mut connection).await.is_err() {
            return;
        }
        let pending: Result<StreamPendingCountReply, _> = connection
            .xpending_consumer_count(
                &self.stream,
                EVENTS_GROUP,
                "-",
                "+",
                1,
                &self.config.consumer,
            )
            .await;
        if matches!(pending, Ok(reply) if reply.ids.is_empty()) {
            let _: Result<i64, _> = connection
                .xgroup_delconsumer(&self.stream, EVENTS_GROUP, &self.config.consumer)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use airlock_shared::events::EventKind;
    use redis::Value;

    use super::*;

    fn entry(fields: &[(&str, Value)]) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_parse_into_events_or_say_why_not_without_quoting_them() {
        let event = GatewayEvent {
            id: uuid::Uuid::now_v7(),
            at: chrono::Utc::now(),
            kind: EventKind::AuthDenied,
            tenant_id: None,
            environment_id: None,
            request_id: "r1".into(),
            function: None,
            api_key_id: None,
            secrets: vec![],
            upstream_host: None,
            status: 401,
            message: "missing or unknown API key".into(),
            oauth_connection: None,
        };
        let json = serde_json::to_vec(&event).unwrap();
        assert_eq!(
            parse_entry(&entry(&[(EVENT_FIELD, Value::BulkString(json))])),
            Ok(StreamMessage::Event(Box::new(event.clone())))
        );
        let second = GatewayEvent {
            id: uuid::Uuid::now_v7(),
            request_id: "r2".into(),
            ..event.clone()
        };
        let json = serde_json::to_vec(&[&event, &second]).unwrap();
        assert_eq!(
            parse_entry(&entry(&[(EVENTS_FIELD, Value::BulkString(json))])),
            Ok(StreamMessage::Events(vec![event.clone(), second.clone()]))
        );
        // One bad event refuses its whole entry, without quoting it.
        let reason = parse_entry(&entry(&[(
            EVENTS_FIELD,
            Value::BulkString(
                format!(
                    r#"[{},{{"id":"canary-content-e93"}}]"#,
                    serde_json::to_string(&event).unwrap()
                )
                .into_bytes(),
            ),
        )]))
        .unwrap_err();
        assert!(reason.contains("not a GatewayEvent array"), "{reason}");
        assert!(!reason.contains("canary"), "{reason}");
        assert!(parse_entry(&entry(&[(
            EVENTS_FIELD,
            Value::BulkString(serde_json::to_vec(&event).unwrap())
        )]))
        .unwrap_err()
        .contains("not a GatewayEvent array"));

        let report = KeyUsageReport {
            uses: vec![airlock_shared::events::KeyUse {
                api_key_id: uuid::Uuid::nil(),
                last_used_at: chrono::Utc::now(),
            }],
        };
        let json = serde_json::to_vec(&report).unwrap();
        assert_eq!(
            parse_entry(&entry(&[(KEY_USAGE_FIELD, Value::BulkString(json))])),
            Ok(StreamMessage::KeyUsage(report))
        );

        let report = OAuthConnectionReport {
            tenant_id: uuid::Uuid::nil(),
            environment_id: uuid::Uuid::nil(),
            connection_id: uuid::Uuid::nil(),
            connection: "github".into(),
            authorization_id: None,
            status: airlock_shared::oauth::ConnectionStatus::Broken,
            tokens: None,
            at: chrono::Utc::now(),
            error: Some("invalid_grant".into()),
        };
        let json = serde_json::to_vec(&report).unwrap();
        assert_eq!(
            parse_entry(&entry(&[(OAUTH_FIELD, Value::BulkString(json))])),
            Ok(StreamMessage::OAuth(Box::new(report)))
        );
        let reason = parse_entry(&entry(&[(
            OAUTH_FIELD,
            Value::BulkString(br#"{"accessToken":"canary-token-e92"}"#.to_vec()),
        )]))
        .unwrap_err();
        assert!(reason.contains("not a OAuthConnectionReport"), "{reason}");
        assert!(!reason.contains("canary"), "{reason}");

        assert!(
            parse_entry(&entry(&[("other", Value::BulkString(b"{}".to_vec()))]))
                .unwrap_err()
                .contains("no `events` or `event` field")
        );
        assert!(parse_entry(&entry(&[(EVENT_FIELD, Value::Array(vec![]))]))
            .unwrap_err()
            .contains("not a string"));
        let reason = parse_entry(&entry(&[(
            EVENT_FIELD,
            Value::BulkString(br#"{"id":"canary-content-e91"}"#.to_vec()),
        )]))
        .unwrap_err();
        assert!(reason.contains("not a GatewayEvent"), "{reason}");
        assert!(!reason.contains("canary"), "{reason}");
    }

    #[test]
    fn consumer_names_are_unique_per_process() {
        let names = RedisNames::new("t");
        let a = RedisEventsConfig::new("redis://127.0.0.1", names.clone());
        let b = RedisEventsConfig::new("redis://127.0.0.1", names);
        assert_ne!(a.consumer, b.consumer);
        assert!(a
            .consumer
            .starts_with(&format!("cp-{}-", std::process::id())));
    }
}
