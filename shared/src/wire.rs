//! Wire types shared by the planes: the config snapshot and the gateway error body.
//!
//! The control plane builds one [`EnvironmentSnapshot`] per environment from the database and
//! publishes it (in-process under `airlock dev`, through Redis otherwise). The data plane
//! compiles it once and serves every request from that immutable compiled form.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api_key::ApiKeyHash;
use crate::hosts::HostPattern;
use crate::oauth::{OAuthClientSpec, OAuthConnectionSpec, PendingAuthorization};
use crate::seal::SealedSecret;

/// Everything a data plane needs to serve one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentSnapshot {
    pub tenant_id: Uuid,
    pub environment_id: Uuid,
    /// Strictly increasing per environment; a data plane never replaces a snapshot with an
    /// older revision (notifications can arrive out of order).
    pub revision: i64,
    /// Functions of the tenant, by name. Defined once per tenant, run in this environment.
    pub functions: BTreeMap<String, FunctionSpec>,
    /// Current version of each secret of this environment, by name, sealed, with its binding.
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
