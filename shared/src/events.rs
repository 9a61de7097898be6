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

/// The JSON array of `events`, byte for byte what `serde_json::to_vec` makes of them.
///
/// Written directly because a data plane writes one event per request that injects a secret:
/// serde's path (escaping every string byte by byte, UUIDs and the timestamp through
/// `Display`) was 9 300 instructions per event, about 6 % of such a request (`callgrind`,
/// `docs/BENCHMARKS.md`). The format is the derived `Serialize`'s; a test compares both.
pub fn events_json(events: &[&GatewayEvent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() * 512);
    out.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        event.write_json(&mut out);
    }
    out.push(b']');
    out
}

impl GatewayEvent {
    /// Append this event's JSON (see [`events_json`]).
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":");
        json::uuid(out, &self.id);
        out.extend_from_slice(b",\"at\":");
        json::timestamp(out, &self.at);
        out.extend_from_slice(b",\"kind\":");
        // A unit variant: serde's own name for it (snake_case, not `as_str`), cheap to write.
        let _ = serde_json::to_writer(&mut *out, &self.kind);
        out.extend_from_slice(b",\"tenantId\":");
        json::optional_uuid(out, self.tenant_id.as_ref());
        out.extend_from_slice(b",\"environmentId\":");
        json::optional_uuid(out, self.environment_id.as_ref());
        out.extend_from_slice(b",\"requestId\":");
        json::string(out, &self.request_id);
        out.extend_from_slice(b",\"function\":");
        json::optional_string(out, self.function.as_deref());
        out.extend_from_slice(b",\"apiKeyId\":");
        json::optional_uuid(out, self.api_key_id.as_ref());
        out.extend_from_slice(b",\"secrets\":[");
        for (i, secret) in self.secrets.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json::string(out, secret);
        }
        out.extend_from_slice(b"],\"upstreamHost\":");
        json::optional_string(out, self.upstream_host.as_deref());
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(json::Digits::of(u64::from(self.status)).as_bytes());
        out.extend_from_slice(b",\"message\":");
        json::string(out, &self.message);
        if let Some(connection) = &self.oauth_connection {
            out.extend_from_slice(b",\"oauthConnection\":");
            json::string(out, connection);
        }
        out.push(b'}');
    }
}

/// JSON values written the way serde_json writes them.
mod json {
    use chrono::{DateTime, Datelike as _, Timelike as _, Utc};
    use uuid::Uuid;

    /// A JSON string: `"`, `\\` and control characters escaped as serde_json does (`\n`,
    /// `\t`... or `\u00XX`), everything else (UTF-8 included) as is.
    pub fn string(out: &mut Vec<u8>, value: &str) {
        out.push(b'"');
        let bytes = value.as_bytes();
        let mut start = 0;
        for (i, &byte) in bytes.iter().enumerate() {
            let escaped: &[u8] = match byte {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0x00..=0x1f => {
                    out.extend_from_slice(&bytes[start..i]);
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(byte >> 4)]);
                    out.push(HEX[usize::from(byte & 0xf)]);
                    start = i + 1;
                    continue;
                }
                _ => continue,
            };
            out.extend_from_slice(&bytes[start..i]);
            out.extend_from_slice(escaped);
            start = i + 1;
        }
        out.extend_from_slice(&bytes[start..]);
        out.push(b'"');
    }

    pub fn optional_string(out: &mut Vec<u8>, value: Option<&str>) {
        match value {
            Some(value) => string(out, value),
            None => out.extend_from_slice(b"null"),
        }
    }

    pub fn uuid(out: &mut Vec<u8>, value: &Uuid) {
        let mut buffer = [0u8; uuid::fmt::Hyphenated::LENGTH];
        out.push(b'"');
        out.extend_from_slice(value.hyphenated().encode_lower(&mut buffer).as_bytes());
        out.push(b'"');
    }

    pub fn optional_uuid(out: &mut Vec<u8>, value: Option<&Uuid>) {
        match value {
            Some(value) => uuid(out, value),
            None => out.extend_from_slice(b"null"),
        }
    }

    /// RFC 3339 as chrono's `Serialize` writes it: `Z`, and a fraction of 3, 6 or 9 digits,
    /// as few as the value needs (none for whole seconds).
    pub fn timestamp(out: &mut Vec<u8>, at: &DateTime<Utc>) {
        let (date, time) = (at.date_naive(), at.time());
        let year = date.year();
        if !(0..=9999).contains(&year) {
            // Outside what four digits hold chrono signs and widens the year: its own format.
            out.push(b'"');
            out.extend_from_slice(
                at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                    .as_bytes(),
            );
            out.push(b'"');
            return;
        }
        out.push(b'"');
        pad(out, year.unsigned_abs(), 4);
        out.push(b'-');
        pad(out, date.month(), 2);
        out.push(b'-');
        pad(out, date.day(), 2);
        out.push(b'T');
        pad(out, time.hour(), 2);
        out.push(b':');
        pad(out, time.minute(), 2);
        out.push(b':');
        // A leap second is kept in the nanoseconds (chrono shows it as second 60).
        let nanos = time.nanosecond();
        let (second, nanos) = if nanos >= 1_000_000_000 {
            (time.second() + 1, nanos - 1_000_000_000)
        } else {
            (time.second(), nanos)
        };
        pad(out, second, 2);
        if nanos != 0 {
            out.push(b'.');
            if nanos % 1_000_000 == 0 {
                pad(out, nanos / 1_000_000, 3);
            } else if nanos % 1_000 == 0 {
                pad(out, nanos / 1_000, 6);
            } else {
                pad(out, nanos, 9);
            }
        }
        out.extend_from_slice(b"Z\"");
    }

    /// `value` in decimal, zero-padded to `width` digits.
    fn pad(out: &mut Vec<u8>, value: u32, width: usize) {
        let digits = Digits::of(u64::from(value));
        for _ in digits.as_bytes().len()..width {
            out.push(b'0');
        }
        out.extend_from_slice(digits.as_bytes());
    }

    /// The decimal digits of an integer, without allocating.
    pub struct Digits {
        buffer: [u8; 20],
        start: usize,
    }

    impl Digits {
        pub fn of(mut value: u64) -> Self {
            let mut buffer = [0u8; 20];
            let mut start = buffer.len();
            loop {
                start -= 1;
                buffer[start] = b'0' + (value % 10) as u8;
                value /= 10;
                if value == 0 {
                    return Self { buffer, start };
                }
            }
        }

        pub fn as_bytes(&self) -> &[u8] {
            &self.buffer[self.start..]
        }
    }
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

    fn event_with(message: &str, at: DateTime<Utc>, oauth: Option<&str>) -> GatewayEvent {
        GatewayEvent {
            id: Uuid::now_v7(),
            at,
            kind: EventKind::OAuthRefreshFailed,
            tenant_id: Some(Uuid::new_v4()),
            environment_id: None,
            request_id: "01a24205-5a82-74b8-b5c1-65d8ee822b80".into(),
            function: Some(message.to_string()),
            api_key_id: Some(Uuid::nil()),
            secrets: vec!["TOKEN".into(), message.to_string()],
            upstream_host: None,
            status: 502,
            message: message.to_string(),
            oauth_connection: oauth.map(str::to_string),
        }
    }

    #[test]
    fn events_json_is_what_serde_writes_byte_for_byte() {
        use chrono::TimeZone as _;
        let texts = [
            "",
            "plain ascii, with spaces",
            "quote \" backslash \\ slash / done",
            "newline\n return\r tab\t backspace\u{8} formfeed\u{c} nul\u{0} unit\u{1f} del\u{7f}",
            "unicode: é 漢字 🦀 \u{2028}",
        ];
        let base = Utc.with_ymd_and_hms(2026, 12, 4, 7, 5, 9).unwrap();
        let times = [
            base,
            base + chrono::Duration::milliseconds(120),
            base + chrono::Duration::microseconds(123_400),
            base + chrono::Duration::nanoseconds(123_456_789),
            base + chrono::Duration::nanoseconds(1),
            Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc::now(),
        ];
        let mut events = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            for (j, at) in times.iter().enumerate() {
                let oauth = ((i + j) % 2 == 0).then_some(*text);
                events.push(event_with(text, *at, oauth));
            }
        }
        let mut plain = event_with("x", base, None);
        plain.kind = EventKind::SecretUsed;
        plain.secrets.clear();
        plain.function = None;
        plain.tenant_id = None;
        plain.upstream_host = Some("api.example.com".into());
        events.push(plain);
        // A leap second (chrono keeps it in the nanoseconds).
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        events.push(event_with("leap", leap, None));

        let refs: Vec<&GatewayEvent> = events.iter().collect();
        let written = events_json(&refs);
        assert_eq!(
            String::from_utf8(written.clone()).unwrap(),
            serde_json::to_string(&refs).unwrap()
        );
        assert_eq!(
            serde_json::from_slice::<Vec<GatewayEvent>>(&written).unwrap(),
            events
        );
        for event in &refs {
            assert_eq!(
                events_json(&[*event]),
                serde_json::to_vec(&[*event]).unwrap()
            );
        }
        assert_eq!(events_json(&[]), b"[]");
    }
}
