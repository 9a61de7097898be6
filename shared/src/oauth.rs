//! OAuth 2 without code: what the planes agree on.
//!
//! An environment has **OAuth clients** (a provider's token endpoint, a client id, a client
//! secret held in the vault by reference, scopes...) and **connections**: one set of tokens
//! obtained with a client, by name. A function template writes `{{oauth.CONNECTION}}` where
//! the access token goes (`authorization: Bearer {{oauth.github}}`); an application may also
//! pass `{"$oauth": "HANDLE"}` as an argument, where HANDLE came from the data plane's handle
//! endpoint. The application never sees a token.
//!
//! Who does what:
//! - The control plane stores clients and connections, discovers the provider's endpoints,
//!   starts authorization-code flows (state + PKCE), and publishes all of it in the
//!   environment's snapshot. It never holds a token in plaintext: it cannot open the client
//!   secret either, so it never talks to the token endpoint.
//! - Data planes obtain, refresh and inject tokens, serve the authorization callback
//!   ([`CALLBACK_PATH`]), and seal every token they obtain ([`token_identity`]) before it
//!   leaves the process: to Redis (shared by the data planes, with a refresh lock) and to
//!   the control plane ([`OAuthConnectionReport`], over the event transport), which keeps the
//!   sealed tokens in the database.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::hosts::HostPattern;
use crate::seal::{SealedSecret, SecretIdentity};

/// Where the data plane serves the authorization-code callback (the redirect URI's path).
pub const CALLBACK_PATH: &str = "/v1/oauth/callback";

/// Data-plane endpoint that issues a handle for a connection:
/// `POST /v1/oauth/connections/{name}/handle` with the application's API key.
pub const HANDLE_PATH_PREFIX: &str = "/v1/oauth/connections/";

/// Key of an OAuth handle argument, `{"$oauth": "HANDLE"}`.
pub const OAUTH_REFERENCE_KEY: &str = "$oauth";

/// Refresh this long before the access token expires, unless the client says otherwise.
pub const DEFAULT_REFRESH_SKEW_SECONDS: u32 = 60;

/// How long an authorization started with `startOAuthConnection` may be completed.
pub const AUTHORIZATION_TTL_SECONDS: i64 = 600;

/// How a client authenticates at the token endpoint (RFC 6749 section 2.3, OpenID names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenAuthMethod {
    /// HTTP Basic with the client id and secret (the default of RFC 6749).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A public client: `client_id` in the body, no secret (authorization code + PKCE only).
    None,
}

/// How a connection gets its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthGrant {
    /// The client's own credentials (RFC 6749 section 4.4); fully automatic.
    ClientCredentials,
    /// A user's delegated access (authorization code + PKCE, then refresh tokens).
    AuthorizationCode,
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// No token yet: a client-credentials connection before its first use, or an
    /// authorization-code connection waiting for its callback.
    Pending,
    /// Tokens are held (and refreshed as needed).
    Connected,
    /// The provider refused the refresh token or the client (`invalid_grant`...): nothing
    /// is sent with this connection until it is connected again.
    Broken,
}

/// An OAuth client as a data plane receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuthClientSpec {
    pub id: Uuid,
    pub name: String,
    /// The provider's issuer, when configured by discovery (informational).
    #[serde(default)]
    pub issuer: Option<String>,
    /// Token endpoint (absolute http(s) URL).
    pub token_url: String,
    /// Authorization endpoint, needed for the authorization-code grant.
    #[serde(default)]
    pub authorize_url: Option<String>,
    pub client_id: String,
    /// Name of the vault secret of this environment that holds the client secret; `None`
    /// for public clients ([`TokenAuthMethod::None`]). Like any secret, it is only sent to
    /// the hosts it is bound to: the token endpoint's host must be one of them.
    #[serde(default)]
    pub client_secret: Option<String>,
    pub auth_method: TokenAuthMethod,
    /// Scopes requested (space-joined on the wire).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Extra parameters sent with every token request (`audience`, `resource`...), in order.
    #[serde(default)]
    pub extra_token_params: Vec<(String, String)>,
    /// Hosts this client's access tokens may be sent to (like a secret's binding); empty
    /// means nowhere.
    #[serde(default)]
    pub allowed_hosts: Vec<HostPattern>,
    /// Refresh this many seconds before expiry.
    #[serde(default = "default_skew")]
    pub refresh_skew_seconds: u32,
    /// Redirect URI registered at the provider (a data plane's [`CALLBACK_PATH`]).
    #[serde(default)]
    pub redirect_uri: Option<String>,
}

fn default_skew() -> u32 {
    DEFAULT_REFRESH_SKEW_SECONDS
}

/// A connection as a data plane receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuthConnectionSpec {
    pub id: Uuid,
    pub name: String,
    /// Name of the client (in [`crate::wire::EnvironmentSnapshot::oauth_clients`]).
    pub client: String,
    pub grant: OAuthGrant,
    pub status: ConnectionStatus,
    /// The latest tokens the control plane has stored. Data planes also share newer ones in
    /// Redis; the higher [`SealedTokenSet::generation`] wins.
    #[serde(default)]
    pub tokens: Option<SealedTokenSet>,
}

/// A connection's tokens, sealed (see [`token_identity`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SealedTokenSet {
    /// 1 for the first tokens of a connection, +1 on every refresh; part of each token's
    /// sealed identity, and the fencing number of concurrent writers.
    pub generation: i64,
    pub access_token: SealedSecret,
    /// The refresh token; kept from the previous generation when a refresh returns none.
    #[serde(default)]
    pub refresh_token: Option<SealedSecret>,
    /// When the access token expires (`None`: the provider did not say).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// When these tokens were obtained.
    pub obtained_at: DateTime<Utc>,
}

/// An authorization-code flow waiting for its callback, as a data plane receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingAuthorization {
    pub id: Uuid,
    /// The connection it will fill.
    pub connection: String,
    /// [`state_hash`] of the `state` parameter; the state itself is never stored.
    pub state_hash: String,
    /// The PKCE code verifier, sealed with identity [`pkce_identity`].
    pub code_verifier: SealedSecret,
    /// The redirect URI sent in the authorization request (sent again with the code).
    pub redirect_uri: String,
    pub expires_at: DateTime<Utc>,
}

/// Which token of a [`SealedTokenSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Access,
    Refresh,
}

/// The sealed identity name of a connection's token: bound to the connection's id, so a
/// ciphertext moved onto another connection does not open. The version is the generation.
pub fn token_identity_name(connection_id: Uuid, kind: TokenKind) -> String {
    let kind = match kind {
        TokenKind::Access => "access",
        TokenKind::Refresh => "refresh",
    };
    format!("oauth:{connection_id}:{kind}")
}

/// The identity a token is sealed for. `name` must come from [`token_identity_name`].
pub fn token_identity<'a>(
    tenant_id: Uuid,
    environment_id: Uuid,
    name: &'a str,
    generation: i64,
) -> SecretIdentity<'a> {
    SecretIdentity {
        tenant_id,
        environment_id,
        name,
        // Generations past i32::MAX would need a billion refreshes; saturate, never wrap.
        version: i32::try_from(generation).unwrap_or(i32::MAX),
    }
}

/// The sealed identity name of a pending authorization's PKCE verifier (version 1).
pub fn pkce_identity_name(authorization_id: Uuid) -> String {
    format!("oauth-pkce:{authorization_id}")
}

/// SHA-256 (hex) of an authorization's `state`: what snapshots, Redis and the database hold.
pub fn state_hash(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

/// What a data plane tells the control plane about a connection: new tokens (sealed), a
/// completed authorization, or a failure. Sent over the event transport (Redis stream field
/// [`crate::events::OAUTH_FIELD`]). Never holds a token in plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuthConnectionReport {
    pub tenant_id: Uuid,
    pub environment_id: Uuid,
    pub connection_id: Uuid,
    pub connection: String,
    /// Set when the report completes an authorization-code flow (the callback).
    #[serde(default)]
    pub authorization_id: Option<Uuid>,
    pub status: ConnectionStatus,
    /// New tokens, when some were obtained.
    #[serde(default)]
    pub tokens: Option<SealedTokenSet>,
    /// When the data plane last talked to the token endpoint for this connection.
    pub at: DateTime<Utc>,
    /// What went wrong (the provider's error code and description, never a token).
    #[serde(default)]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_bind_connection_kind_and_generation() {
        let id = Uuid::from_u128(7);
        let access = token_identity_name(id, TokenKind::Access);
        let refresh = token_identity_name(id, TokenKind::Refresh);
        assert_ne!(access, refresh);
        assert!(access.contains(&id.to_string()));
        let identity = token_identity(Uuid::nil(), Uuid::nil(), &access, 3);
        assert_eq!(identity.version, 3);
        assert_eq!(
            token_identity(Uuid::nil(), Uuid::nil(), &access, i64::MAX).version,
            i32::MAX
        );
        assert_ne!(pkce_identity_name(id), access);
    }

    #[test]
    fn state_hash_is_hex_sha256() {
        assert_eq!(
            state_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn client_spec_defaults_keep_old_snapshots_parsing() {
        let json = serde_json::json!({
            "id": Uuid::nil(),
            "name": "c",
            "tokenUrl": "https://idp.example/token",
            "clientId": "id",
            "authMethod": "client_secret_basic",
        });
        let spec: OAuthClientSpec = serde_json::from_value(json).unwrap();
        assert_eq!(spec.refresh_skew_seconds, DEFAULT_REFRESH_SKEW_SECONDS);
        assert!(spec.allowed_hosts.is_empty());
        assert_eq!(spec.client_secret, None);
    }
}
