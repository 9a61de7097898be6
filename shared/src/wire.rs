//! Wire types shared by the planes: the config snapshot and the gateway error body.
//!
//! The control plane builds one [`EnvironmentSnapshot`] per environment from the database and
//! publishes it (in-process under `airlock dev`, through Redis otherwise). The data plane
//! compiles it once and serves every request from that immutable compiled form. Through
//! Redis it travels in one of two encodings, JSON or a compact binary one ([`encoding`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api_key::ApiKeyHash;
use crate::hosts::HostPattern;
use crate::oauth::{OAuthClientSpec, OAuthConnectionSpec, PendingAuthorization};
use crate::seal::SealedSecret;

pub mod encoding;

pub use encoding::{decode_snapshot, SnapshotDecodeError, SnapshotEncodeError, SnapshotEncoding};

/// Everything a data plane needs to serve one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentSnapshot {
    pub tenant_id: Uuid,
    pub environment_id: Uuid,
    /// Strictly increasing per environment; a data plane never replaces a snapshot with an
    /// older revision (notifications can arrive out of order).
    pub revision: i64,
    /// Functions of the tenant, by name. Defined once per tenant, run in this environment.
    #[serde(deserialize_with = "sorted_map::deserialize")]
    pub functions: BTreeMap<String, FunctionSpec>,
    /// Current version of each secret of this environment, by name, sealed, with its binding.
    #[serde(deserialize_with = "sorted_map::deserialize")]
    pub secrets: BTreeMap<String, SecretEntry>,
    /// API keys of this environment.
    pub api_keys: Vec<ApiKeyGrant>,
    /// OAuth clients of this environment, by name ([`crate::oauth`]).
    #[serde(default)]
    pub oauth_clients: BTreeMap<String, OAuthClientSpec>,
    /// OAuth connections of this environment, by name.
    #[serde(default)]
    pub oauth_connections: BTreeMap<String, OAuthConnectionSpec>,
    /// Authorization-code flows waiting for their callback (unexpired, unused).
    #[serde(default)]
    pub oauth_authorizations: Vec<PendingAuthorization>,
}

/// Maps of a snapshot arrive in key order (they were serialized from `BTreeMap`s): collected
/// into a `Vec` first, they become a `BTreeMap` in one sorted bulk build (`FromIterator`)
/// instead of a search from the root per entry. Any order still works; a repeated key keeps
/// its last value, as `insert` would.
mod sorted_map {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

    pub fn deserialize<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
    where
        D: Deserializer<'de>,
        V: Deserialize<'de>,
    {
        struct Entries<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
            type Value = BTreeMap<String, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
                while let Some(entry) = map.next_entry::<String, V>()? {
                    entries.push(entry);
                }
                Ok(entries.into_iter().collect())
            }
        }
        deserializer.deserialize_map(Entries(PhantomData))
    }
}

/// One secret as a data plane receives it: the sealed current version and the hosts it may
/// be sent to. An empty `allowed_hosts` means the secret may be sent nowhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretEntry {
    pub sealed: SealedSecret,
    pub allowed_hosts: Vec<HostPattern>,
}

/// A trained function as stored: the template sources. See [`crate::template`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub id: Uuid,
    pub name: String,
    /// HTTP method, upper case.
    pub method: String,
    /// Absolute `http(s)` URL template; scheme and authority are literal.
    pub url: String,
    /// Header name and value template, in order.
    pub headers: Vec<HeaderSpec>,
    /// JSON body template, if the function sends a body.
    pub body: Option<String>,
    /// Upstream timeout (connect + whole response), milliseconds.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderSpec {
    pub name: String,
    pub value: String,
}

/// An API key as the data plane knows it: its hash, what it may invoke and until when.
///
/// Revoked keys are never in a snapshot; keys already expired when the snapshot is built are
/// left out too, and the data plane refuses the others once the clock passes `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyGrant {
    pub id: Uuid,
    pub name: String,
    pub hash: ApiKeyHash,
    /// Function patterns this key may invoke ([`crate::grants`]): exact names, `*` for every
    /// function, or globs such as `billing_*`.
    pub functions: Vec<String>,
    /// When the key stops working (set at creation, or shortened by a rotation's grace
    /// period); `None` means never.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

impl ApiKeyGrant {
    /// Whether the key has expired at `now`.
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|expires_at| now >= expires_at)
    }
}

/// Default upstream timeout when a function does not set one.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// Body of every error the data plane itself produces:
/// `{"error":{"code":"...","message":"...","requestId":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayErrorBody {
    pub error: GatewayErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayErrorDetail {
    pub code: String,
    pub message: String,
    pub request_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_inclusive_and_old_snapshots_still_parse() {
        let now = Utc::now();
        let grant = ApiKeyGrant {
            id: Uuid::nil(),
            name: "k".into(),
            hash: ApiKeyHash::of("k"),
            functions: vec!["*".into()],
            expires_at: Some(now),
        };
        assert!(grant.is_expired_at(now));
        assert!(!grant.is_expired_at(now - chrono::Duration::milliseconds(1)));
        let mut json = serde_json::to_value(&grant).unwrap();
        json.as_object_mut().unwrap().remove("expires_at");
        let parsed: ApiKeyGrant = serde_json::from_value(json).unwrap();
        assert_eq!(parsed.expires_at, None);
    }

    #[test]
    fn snapshot_maps_parse_in_any_order_and_a_repeated_name_keeps_its_last_value() {
        let function = |url: &str| {
            serde_json::json!({"id": Uuid::nil(), "name": "f", "method": "GET", "url": url,
                "headers": [], "body": null, "timeout_ms": 1000})
        };
        let snapshot = |functions: &str| {
            format!(
                r#"{{"tenant_id":"{nil}","environment_id":"{nil}","revision":1,
                "functions":{functions},"secrets":{{}},"api_keys":[]}}"#,
                nil = Uuid::nil()
            )
        };
        let (a, b, c) = (
            function("https://a"),
            function("https://b"),
            function("https://c"),
        );
        let parsed: EnvironmentSnapshot = serde_json::from_str(&snapshot(&format!(
            r#"{{"b":{b},"a":{a},"c":{c},"a":{c}}}"#
        )))
        .unwrap();
        let urls: Vec<(&str, &str)> = parsed
            .functions
            .iter()
            .map(|(name, spec)| (name.as_str(), spec.url.as_str()))
            .collect();
        assert_eq!(
            urls,
            [("a", "https://c"), ("b", "https://b"), ("c", "https://c")]
        );
        // Round trip: what the control plane publishes parses back to itself.
        let json = serde_json::to_string(&parsed).unwrap();
        assert_eq!(
            serde_json::from_str::<EnvironmentSnapshot>(&json).unwrap(),
            parsed
        );
        assert!(serde_json::from_str::<EnvironmentSnapshot>(&snapshot("[]")).is_err());
    }

    #[test]
    fn error_body_uses_camel_case() {
        let body = GatewayErrorBody {
            error: GatewayErrorDetail {
                code: "unauthorized".into(),
                message: "m".into(),
                request_id: "r".into(),
            },
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["error"]["requestId"], "r");
    }
}
