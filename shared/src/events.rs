//! Events: what a data plane reports to the control plane.
//!
//! Every failure, every denied request and every use of a secret becomes a [`GatewayEvent`].
//! Data planes send them over Redis Streams ([`crate::keys::RedisNames::events_stream`],
//! consumed by the control planes in a consumer group, acknowledged once stored) or, under
//! `airlock dev`, over an in-process channel. Events carry names and ids, never a secret value
//! or an API key.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::oauth::OAuthConnectionReport;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Secrets were injected into an upstream request (the audit trail of secret use).
    SecretUsed,
    /// Missing or unknown API key.
    AuthDenied,
    /// The key is not granted the function.
    ScopeDenied,
    /// A secret the request needs is not set, or could not be opened: the request failed closed.
    SecretUnavailable,
    /// A secret would have gone to a host it is not bound to: refused, nothing sent.
    SecretHostDenied,
    /// The upstream could not be reached.
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream answered with a 5xx status.
    UpstreamError,
    /// A known API key sent a request the gateway could not use: a body that is not a JSON
    /// object of arguments, a missing or unusable argument, a body too large.
    RequestInvalid,
    /// A known API key, granted the name by a pattern, named a function that does not exist.
    FunctionNotFound,
    /// A data plane could not obtain or refresh a connection's token (the provider refused,
    /// or could not be reached). `oauth_connection` names it; on `invalid_grant` the
    /// connection is now broken.
    OAuthRefreshFailed,
    /// An authorization callback was refused: unknown (forged) state, replayed, expired, or
    /// the provider returned an error.
    OAuthCallbackRefused,
    /// An authorization-code flow completed: the connection holds tokens.
    OAuthConnected,
}

impl EventKind {
    /// Stable dotted name, as used in queries and sinks (`secret.used`, `auth.denied`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SecretUsed => "secret.used",
            Self::AuthDenied => "auth.denied",
            Self::ScopeDenied => "scope.denied",
            Self::SecretUnavailable => "secret.unavailable",
            Self::SecretHostDenied => "secret.host_denied",
            Self::UpstreamUnreachable => "upstream.unreachable",
            Self::UpstreamTimeout => "upstream.timeout",
            Self::UpstreamError => "upstream.error",
            Self::RequestInvalid => "request.invalid",
            Self::FunctionNotFound => "function.not_found",
            Self::OAuthRefreshFailed => "oauth.refresh_failed",
            Self::OAuthCallbackRefused => "oauth.callback_refused",
            Self::OAuthConnected => "oauth.connected",
        }
    }
}

/// One event from a data plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayEvent {
    /// Unique id (UUID v7: sortable by time); consumers deduplicate on it.
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    /// Unknown when the API key was not recognised.
    pub tenant_id: Option<Uuid>,
    pub environment_id: Option<Uuid>,
    /// The `x-airlock-request-id` of the request.
    pub request_id: String,
    pub function: Option<String>,
    pub api_key_id: Option<Uuid>,
    /// Names of the secrets involved (used, missing or refused). Never values.
    pub secrets: Vec<String>,
    /// Destination host of the upstream request, when known.
    pub upstream_host: Option<String>,
    /// Status returned to the client.
    pub status: u16,
    /// Human-readable detail. Never contains a secret value or an API key.
    pub message: String,
    /// The OAuth connection involved, by name (OAuth events, and requests that used one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_connection: Option<String>,
}

/// Field of a Redis stream entry that holds one [`GatewayEvent`]'s JSON (what data planes
/// before batched entries wrote; still read).
pub const EVENT_FIELD: &str = "event";
/// Field of a Redis stream entry that holds a JSON array of consecutive [`GatewayEvent`]s of
/// one data plane, in the order they happened (at most [`ENTRY_MAX_EVENTS`]).
pub const EVENTS_FIELD: &str = "events";
/// Most events a data plane puts in one stream entry. With one `XADD` per event Redis spent
/// 3.3 µs of CPU per request that injects a secret, with entries of up to 16 it spends 1.5 µs
/// (`docs/BENCHMARKS.md`); an entry stays small (about 7 KB) and the stream's length, in
/// entries, still bounds its memory.
pub const ENTRY_MAX_EVENTS: usize = 16;
/// Field of a Redis stream entry that holds a [`KeyUsageReport`]'s JSON.
pub const KEY_USAGE_FIELD: &str = "key_usage";
/// Field of a Redis stream entry that holds an [`OAuthConnectionReport`]'s JSON.
pub const OAUTH_FIELD: &str = "oauth";

/// When API keys were last used, reported by a data plane about once a second (one report
/// for every key used since the previous one). Not an event: the control plane only moves
/// `api_keys.last_used_at` forward with it and stores no row for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyUsageReport {
    pub uses: Vec<KeyUse>,
}

/// The latest use of one key seen by the reporting data plane (millisecond precision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyUse {
    pub api_key_id: Uuid,
    pub last_used_at: DateTime<Utc>,
}

/// What a data plane sends to the control plane over the event transport (the Redis stream,
/// or the in-process channel of `airlock dev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataPlaneMessage {
    Event(GatewayEvent),
    KeyUsage(KeyUsageReport),
    /// New sealed tokens, a completed authorization or a failure of an OAuth connection.
    OAuth(OAuthConnectionReport),
}

impl From<OAuthConnectionReport> for DataPlaneMessage {
    fn from(report: OAuthConnectionReport) -> Self {
        Self::OAuth(report)
    }
}

impl From<GatewayEvent> for DataPlaneMessage {
    fn from(event: GatewayEvent) -> Self {
        Self::Event(event)
    }
}

impl From<KeyUsageReport> for DataPlaneMessage {
    fn from(report: KeyUsageReport) -> Self {
        Self::KeyUsage(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_usage_round_trips_as_camel_case_json() {
        let report = KeyUsageReport {
            uses: vec![KeyUse {
                api_key_id: Uuid::nil(),
                last_used_at: Utc::now(),
            }],
        };
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["uses"][0]["apiKeyId"].is_string());
        assert!(json["uses"][0]["lastUsedAt"].is_string());
        assert_eq!(
            serde_json::from_value::<KeyUsageReport>(json).unwrap(),
            report
        );
    }

    #[test]
    fn event_round_trips_as_camel_case_json() {
        let event = GatewayEvent {
            id: Uuid::now_v7(),
            at: Utc::now(),
            kind: EventKind::SecretHostDenied,
            tenant_id: Some(Uuid::nil()),
            environment_id: None,
            request_id: "r".into(),
            function: Some("f".into()),
            api_key_id: None,
            secrets: vec!["TOKEN".into()],
            upstream_host: Some("evil.example".into()),
            status: 403,
            message: "m".into(),
            oauth_connection: None,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "secret_host_denied");
        assert_eq!(json["requestId"], "r");
        assert_eq!(serde_json::from_value::<GatewayEvent>(json).unwrap(), event);
        assert_eq!(EventKind::SecretHostDenied.as_str(), "secret.host_denied");
    }
}
