//! Events reported by data planes: stored once per event id, listed newest first.
//!
//! Storing is idempotent: a stream entry delivered twice (a consumer died before acknowledging
//! it, or a data plane retried) inserts nothing the second time. Every `secret.used` event
//! also becomes an audit entry, in the same transaction as its row and only when the row is
//! new, so the audit log records each use exactly once.

use airlock_shared::events::{EventKind, GatewayEvent};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as CURSOR_B64;
use base64::Engine;
use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, actions, targets, Actor, AuditEntry};
use super::begin_write;
use crate::entity::event;
use crate::error::AppError;

/// Page size when the caller gives none.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Largest page a caller may ask for.
pub const MAX_PAGE_SIZE: u64 = 500;

/// Longest `message` kept, in bytes. Data planes send a sentence; a hand-made stream entry
/// must not be able to bloat the database.
const MAX_MESSAGE_LEN: usize = 4096;
/// Longest request id, function name, host or secret name kept, in bytes.
const MAX_NAME_LEN: usize = 256;
/// Most secret names kept per event.
const MAX_SECRET_NAMES: usize = 64;

/// Every kind, for parsing dotted names back. [`kind_index`] fails to compile when a kind is
/// added to `EventKind` without being added here.
const ALL_KINDS: [EventKind; 13] = [
    EventKind::SecretUsed,
    EventKind::AuthDenied,
    EventKind::ScopeDenied,
    EventKind::SecretUnavailable,
    EventKind::SecretHostDenied,
    EventKind::UpstreamUnreachable,
    EventKind::UpstreamTimeout,
    EventKind::UpstreamError,
    EventKind::RequestInvalid,
    EventKind::FunctionNotFound,
    EventKind::OAuthRefreshFailed,
    EventKind::OAuthCallbackRefused,
    EventKind::OAuthConnected,
];

/// Position of `kind` in [`ALL_KINDS`]; an exhaustive match, so a new kind is a compile error.
const fn kind_index(kind: EventKind) -> usize {
    match kind {
        EventKind::SecretUsed => 0,
        EventKind::AuthDenied => 1,
        EventKind::ScopeDenied => 2,
        EventKind::SecretUnavailable => 3,
        EventKind::SecretHostDenied => 4,
        EventKind::UpstreamUnreachable => 5,
        EventKind::UpstreamTimeout => 6,
        EventKind::UpstreamError => 7,
        EventKind::RequestInvalid => 8,
        EventKind::FunctionNotFound => 9,
        EventKind::OAuthRefreshFailed => 10,
        EventKind::OAuthCallbackRefused => 11,
        EventKind::OAuthConnected => 12,
    }
}

// Every kind has its own place in `ALL_KINDS`, checked at compile time.
const _: () = {
    let mut i = 0;
    while i < ALL_KINDS.len() {
        assert!(kind_index(ALL_KINDS[i]) == i);
        i += 1;
    }
};

/// The kind with dotted name `name` (`secret.used`, ...).
pub fn kind_from_name(name: &str) -> Option<EventKind> {
    ALL_KINDS.into_iter().find(|kind| kind.as_str() == name)
}

/// Dotted names of every kind, for error messages and documentation.
pub fn kind_names() -> impl Iterator<Item = &'static str> {
    ALL_KINDS.into_iter().map(EventKind::as_str)
}

/// What one call to [`store`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreOutcome {
    /// Events stored now.
    pub stored: usize,
    /// Events already stored before (re-deliveries); nothing was written for them.
    pub duplicates: usize,
}

/// Store `events` in one transaction: each is inserted unless its id is already stored, and
/// each newly stored `secret.used` event is also recorded in the audit log.
pub async fn store(
    db: &DatabaseConnection,
    events: &[GatewayEvent],
) -> Result<StoreOutcome, AppError> {
    let mut outcome = StoreOutcome::default();
    if events.is_empty() {
        return Ok(outcome);
    }
    let txn = begin_write(db).await?;
    for event in events {
        if insert_one(&txn, event).await? {
            outcome.stored += 1;
        } else {
            outcome.duplicates += 1;
        }
    }
    txn.commit().await?;
    Ok(outcome)
}

/// Insert one event (and its audit entry) unless its id is stored; `true` if it was new.
async fn insert_one(db: &impl ConnectionTrait, event: &GatewayEvent) -> Result<bool, AppError> {
    let secrets: Vec<String> = event
        .secrets
        .iter()
        .take(MAX_SECRET_NAMES)
        .map(|name| clean_text(name, MAX_NAME_LEN))
        .collect();
    let row = event::ActiveModel {
        id: Set(event.id),
        at: Set(stored_time(event.at)),
        kind: Set(event.kind.as_str().to_string()),
        tenant_id: Set(event.tenant_id),
        environment_id: Set(event.environment_id),
        request_id: Set(clean_text(&event.request_id, MAX_NAME_LEN)),
        function: Set(event
            .function
            .as_deref()
            .map(|f| clean_text(f, MAX_NAME_LEN))),
        api_key_id: Set(event.api_key_id),
        secrets: Set(serde_json::to_string(&secrets).map_err(AppError::internal)?),
        upstream_host: Set(event
            .upstream_host
            .as_deref()
            .map(|h| clean_text(h, MAX_NAME_LEN))),
        status: Set(i32::from(event.status)),
        message: Set(clean_text(&event.message, MAX_MESSAGE_LEN)),
        oauth_connection: Set(event
            .oauth_connection
            .as_deref()
            .map(|c| clean_text(c, MAX_NAME_LEN))),
    };
    let inserted = event::Entity::insert(row)
        .on_conflict(
            OnConflict::column(event::Column::Id)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    if inserted == 0 {
        return Ok(false);
    }
    if event.kind == EventKind::SecretUsed {
        audit::record(db, secret_use_entry(event, &secrets)).await?;
    }
    Ok(true)
}

/// The audit entry of a `secret.used` event: which secrets and OAuth connection (by name)
/// went out with which function, key and request. Never a value: the event holds none. A
/// request that injected only an OAuth token is an entry about the connection.
fn secret_use_entry(event: &GatewayEvent, secrets: &[String]) -> AuditEntry {
    let connection = event
        .oauth_connection
        .as_deref()
        .map(|c| clean_text(c, MAX_NAME_LEN));
    let (target, target_name) = match &connection {
        Some(connection) if secrets.is_empty() => (targets::OAUTH_CONNECTION, connection.clone()),
        _ => (targets::SECRET, secrets.join(", ")),
    };
    let mut entry = AuditEntry::new(Actor::DataPlane, actions::SECRET_USED, target)
        .at(stored_time(event.at))
        .target_name(target_name)
        .request_id(clean_text(&event.request_id, MAX_NAME_LEN))
        .detail(json!({
            "eventId": event.id,
            "function": event.function.as_deref().map(|f| clean_text(f, MAX_NAME_LEN)),
            "apiKeyId": event.api_key_id,
            "secrets": secrets,
            "oauthConnection": connection,
            "upstreamHost": event.upstream_host.as_deref().map(|h| clean_text(h, MAX_NAME_LEN)),
            "status": event.status,
        }));
    if let Some(tenant_id) = event.tenant_id {
        entry = entry.tenant(tenant_id);
    }
    if let Some(environment_id) = event.environment_id {
        entry = entry.environment(environment_id);
    }
    entry
}

/// Stored precision: microseconds, what PostgreSQL keeps, so an event (and a cursor made from
/// it) reads back equal on every backend.
fn stored_time(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// `text` without NUL characters (PostgreSQL refuses them in text columns, and one such event
/// must not block the stream) and cut to at most `max` bytes on a character boundary.
fn clean_text(text: &str, max: usize) -> String {
    let mut cleaned: String = text
        .chars()
        .map(|c| if c == '\0' { '\u{FFFD}' } else { c })
        .collect();
    if cleaned.len() > max {
        let mut end = max;
        while !cleaned.is_char_boundary(end) {
            end -= 1;
        }
        cleaned.truncate(end);
    }
    cleaned
}

/// Which events to list. Every field narrows the result; none set lists all.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EventFilter {
    pub tenant_id: Option<Uuid>,
    pub environment_id: Option<Uuid>,
    pub kind: Option<EventKind>,
    pub request_id: Option<String>,
}

/// Position in the newest-first order: events strictly after it come next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventCursor {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

impl EventCursor {
    /// The cursor just past `event`.
    pub fn of(event: &GatewayEvent) -> Self {
        Self {
            at: event.at,
            id: event.id,
        }
    }

    /// Opaque text form (URL-safe base64 of `<microseconds>:<id>`).
    pub fn encode(&self) -> String {
        CURSOR_B64.encode(format!("{}:{}", self.at.timestamp_micros(), self.id))
    }

    /// Parse [`EventCursor::encode`]'s output; `None` if it is not one.
    pub fn decode(text: &str) -> Option<Self> {
        let bytes = CURSOR_B64.decode(text.trim()).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let (micros, id) = text.split_once(':')?;
        Some(Self {
            at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

/// One page of events, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    pub events: Vec<GatewayEvent>,
    /// More events match after the last one of this page.
    pub has_next_page: bool,
}

/// Up to `first` (1 to [`MAX_PAGE_SIZE`]) events matching `filter`, newest first (by time,
/// then id), starting after `after`.
pub async fn list(
    db: &impl ConnectionTrait,
    filter: &EventFilter,
    first: u64,
    after: Option<EventCursor>,
) -> Result<EventPage, AppError> {
    if !(1..=MAX_PAGE_SIZE).contains(&first) {
        return Err(AppError::invalid(
            "first",
            format!("must be between 1 and {MAX_PAGE_SIZE}"),
        ));
    }
    let mut condition = Condition::all();
    if let Some(tenant_id) = filter.tenant_id {
        condition = condition.add(event::Column::TenantId.eq(tenant_id));
    }
    if let Some(environment_id) = filter.environment_id {
        condition = condition.add(event::Column::EnvironmentId.eq(environment_id));
    }
    if let Some(kind) = filter.kind {
        condition = condition.add(event::Column::Kind.eq(kind.as_str()));
    }
    if let Some(request_id) = &filter.request_id {
        condition = condition.add(event::Column::RequestId.eq(request_id.as_str()));
    }
    if let Some(cursor) = after {
        condition = condition.add(
            Condition::any().add(event::Column::At.lt(cursor.at)).add(
                Condition::all()
                    .add(event::Column::At.eq(cursor.at))
                    .add(event::Column::Id.lt(cursor.id)),
            ),
        );
    }
    // One more than asked: tells whether another page follows.
    let mut rows = event::Entity::find()
        .filter(condition)
        .order_by_desc(event::Column::At)
        .order_by_desc(event::Column::Id)
        .limit(first + 1)
        .all(db)
        .await?;
    let has_next_page = rows.len() as u64 > first;
    rows.truncate(first as usize);
    let events = rows
        .into_iter()
        .map(from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EventPage {
        events,
        has_next_page,
    })
}

/// A stored row back as the event it was.
fn from_row(row: event::Model) -> Result<GatewayEvent, AppError> {
    let kind = kind_from_name(&row.kind).ok_or_else(|| {
        AppError::internal(anyhow::anyhow!(
            "event {} has an unknown kind `{}`",
            row.id,
            row.kind
        ))
    })?;
    let secrets: Vec<String> = serde_json::from_str(&row.secrets).map_err(|e| {
        AppError::internal(anyhow::anyhow!(
            "event {} has a malformed secrets list: {e}",
            row.id
        ))
    })?;
    let status = u16::try_from(row.status).map_err(|_| {
        AppError::internal(anyhow::anyhow!(
            "event {} has an out-of-range status {}",
            row.id,
            row.status
        ))
    })?;
    Ok(GatewayEvent {
        id: row.id,
        at: row.at,
        kind,
        tenant_id: row.tenant_id,
        environment_id: row.environment_id,
        request_id: row.request_id,
        function: row.function,
        api_key_id: row.api_key_id,
        secrets,
        upstream_host: row.upstream_host,
        status,
        message: row.message,
        oauth_connection: row.oauth_connection,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_back_from_its_dotted_name() {
        for kind in ALL_KINDS {
            assert_eq!(kind_from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(kind_from_name("secret_used"), None);
        assert_eq!(kind_names().count(), ALL_KINDS.len());
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = EventCursor {
            at: stored_time(Utc::now()),
            id: Uuid::now_v7(),
        };
        assert_eq!(EventCursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(EventCursor::decode("not a cursor"), None);
        assert_eq!(EventCursor::decode(&CURSOR_B64.encode("12:nope")), None);
        assert_eq!(EventCursor::decode(""), None);
    }

    #[test]
    fn text_is_cut_on_a_character_boundary_and_loses_nul() {
        assert_eq!(clean_text("a\0b", 10), "a\u{FFFD}b");
        assert_eq!(clean_text("ééé", 5), "éé");
        assert_eq!(clean_text("short", 256), "short");
    }
}
