//! The configuration the data plane serves during the benchmark: one environment with many
//! keys, functions and secrets (the sizes the performance targets are stated for), sealed to
//! a real key and published to Redis exactly as the control plane publishes it. It also holds
//! one OAuth client and connection (client credentials) for scenario F.

use std::collections::BTreeMap;

use airlock_shared::api_key::ApiKeyHash;
use airlock_shared::hosts::HostPattern;
use airlock_shared::oauth::{
    ConnectionStatus, OAuthClientSpec, OAuthConnectionSpec, OAuthGrant, TokenAuthMethod,
};
use airlock_shared::seal::{SealingKey, SecretIdentity};
use airlock_shared::wire::{
    ApiKeyGrant, EnvironmentSnapshot, FunctionSpec, HeaderSpec, SecretEntry,
};
use anyhow::Result;
use uuid::Uuid;

/// How much configuration is loaded.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub keys: usize,
    pub functions: usize,
    pub secrets: usize,
}

/// The environment and what the benchmark clients use of it.
pub struct Fixture {
    pub snapshot: EnvironmentSnapshot,
    /// Granted `*`; what the load generators send.
    pub key: String,
}

impl Fixture {
    /// Make the snapshot its next revision, with one more key (granted `*`) that only this
    /// revision has: the key answers 200 once the revision is live. Returns that key.
    pub fn next_revision_with_marker(&mut self, run: &str) -> String {
        let snapshot = &mut self.snapshot;
        snapshot.revision += 1;
        let marker = api_key(run, 900_000 + snapshot.revision as usize);
        snapshot.api_keys.push(airlock_shared::wire::ApiKeyGrant {
            id: uuid::Uuid::new_v4(),
            name: format!("marker {}", snapshot.revision),
            hash: airlock_shared::api_key::ApiKeyHash::of(&marker),
            functions: vec!["*".into()],
            expires_at: None,
        });
        marker
    }
}

/// The API key of index `i` (the plaintext a client would hold).
pub fn api_key(run: &str, i: usize) -> String {
    format!("ak_bench_{run}_{i:06}")
}

/// A function that injects no secret (so its responses are not redacted either).
pub const PLAIN_FUNCTION: &str = "plain";

/// Scenario F's function: D's request (`GET {upstream}/fn_0000`), with the access token of
/// [`OAUTH_CONNECTION`] injected instead of a secret.
pub const OAUTH_FUNCTION: &str = "oauth";

/// The OAuth connection (and its client) [`OAUTH_FUNCTION`] injects a token of.
pub const OAUTH_CONNECTION: &str = "bench";

/// The vault secret holding the OAuth client's secret.
pub const OAUTH_CLIENT_SECRET: &str = "OAUTH_CLIENT_SECRET";

/// The OAuth provider's side of scenario F: where tokens come from and the credentials of
/// the client registered there.
pub struct OAuthProvider<'a> {
    pub issuer: &'a str,
    pub token_url: &'a str,
    pub client_id: &'a str,
    pub client_secret: &'a str,
    pub scope: &'a str,
}

/// Name of function `i`; function `i` injects secret `SECRET_{i}`.
pub fn function_name(i: usize) -> String {
    format!("fn_{i:04}")
}

/// A token-like value, distinct per secret and per run.
fn secret_value(run: &str, i: usize) -> String {
    format!("sk_live_{run}_{i:06}_9f8e7d6c5b4a39281706")
}

/// Key `i`'s function patterns: a mix of what real keys hold (one exact name, a glob, a
/// short list, everything).
fn patterns(i: usize, functions: usize) -> Vec<String> {
    match i % 4 {
        0 => vec!["*".into()],
        1 => vec![function_name(i % functions)],
        2 => vec![format!("fn_0{}*", i % 10)],
        _ => (0..5).map(|j| function_name((i + j) % functions)).collect(),
    }
}

/// Build the environment: function `i` is `GET {upstream}/fn_i` with
/// `Authorization: Bearer {{secrets.SECRET_i}}` (the first `functions` secrets are used, the
/// rest are loaded but idle, as in a real vault), plus [`PLAIN_FUNCTION`] and
/// [`OAUTH_FUNCTION`] with its OAuth client (client credentials from `oauth`, its secret a
/// vault secret bound to 127.0.0.1 like the others) and connection.
pub fn build(
    run: &str,
    size: Size,
    upstream: &str,
    oauth: &OAuthProvider<'_>,
    sealing: &SealingKey,
    revision: i64,
) -> Result<Fixture> {
    let tenant_id = Uuid::new_v4();
    let environment_id = Uuid::new_v4();
    let mut functions: BTreeMap<String, FunctionSpec> = (0..size.functions)
        .map(|i| {
            let name = function_name(i);
            let spec = FunctionSpec {
                id: Uuid::new_v4(),
                name: name.clone(),
                method: "GET".into(),
                url: format!("{upstream}/{name}"),
                headers: vec![HeaderSpec {
                    name: "Authorization".into(),
                    value: format!("Bearer {{{{secrets.SECRET_{i}}}}}"),
                }],
                body: None,
                timeout_ms: 5_000,
            };
            (name, spec)
        })
        .collect();
    functions.insert(
        PLAIN_FUNCTION.into(),
        FunctionSpec {
            id: Uuid::new_v4(),
            name: PLAIN_FUNCTION.into(),
            method: "GET".into(),
            url: format!("{upstream}/{PLAIN_FUNCTION}"),
            headers: Vec::new(),
            body: None,
            timeout_ms: 5_000,
        },
    );
    functions.insert(
        OAUTH_FUNCTION.into(),
        FunctionSpec {
            id: Uuid::new_v4(),
            name: OAUTH_FUNCTION.into(),
            method: "GET".into(),
            url: format!("{upstream}/{}", function_name(0)),
            headers: vec![HeaderSpec {
                name: "Authorization".into(),
                value: format!("Bearer {{{{oauth.{OAUTH_CONNECTION}}}}}"),
            }],
            body: None,
            timeout_ms: 5_000,
        },
    );
    let hosts = vec![HostPattern::parse("127.0.0.1")?];
    let mut secrets = BTreeMap::new();
    let values = (0..size.secrets)
        .map(|i| (format!("SECRET_{i}"), secret_value(run, i)))
        .chain([(OAUTH_CLIENT_SECRET.to_string(), oauth.client_secret.into())]);
    for (name, value) in values {
        let identity = SecretIdentity {
            tenant_id,
            environment_id,
            name: &name,
            version: 1,
        };
        let sealed = sealing.seal(identity, &value)?;
        secrets.insert(
            name,
            SecretEntry {
                sealed,
                allowed_hosts: hosts.clone(),
            },
        );
    }
    let oauth_clients = BTreeMap::from([(
        OAUTH_CONNECTION.to_string(),
        OAuthClientSpec {
            id: Uuid::new_v4(),
            name: OAUTH_CONNECTION.into(),
            issuer: Some(oauth.issuer.into()),
            token_url: oauth.token_url.into(),
            authorize_url: None,
            client_id: oauth.client_id.into(),
            client_secret: Some(OAUTH_CLIENT_SECRET.into()),
            auth_method: TokenAuthMethod::ClientSecretBasic,
            scopes: vec![oauth.scope.into()],
            extra_token_params: Vec::new(),
            allowed_hosts: hosts.clone(),
            refresh_skew_seconds: airlock_shared::oauth::DEFAULT_REFRESH_SKEW_SECONDS,
            redirect_uri: None,
        },
    )]);
    let oauth_connections = BTreeMap::from([(
        OAUTH_CONNECTION.to_string(),
        OAuthConnectionSpec {
            id: Uuid::new_v4(),
            name: OAUTH_CONNECTION.into(),
            client: OAUTH_CONNECTION.into(),
            grant: OAuthGrant::ClientCredentials,
            status: ConnectionStatus::Pending,
            tokens: None,
        },
    )]);
    let api_keys = (0..size.keys)
        .map(|i| ApiKeyGrant {
            id: Uuid::new_v4(),
            name: format!("bench key {i}"),
            hash: ApiKeyHash::of(&api_key(run, i)),
            functions: patterns(i, size.functions),
            expires_at: None,
        })
        .collect();
    Ok(Fixture {
        snapshot: EnvironmentSnapshot {
            tenant_id,
            environment_id,
            revision,
            functions,
            secrets,
            api_keys,
            oauth_clients,
            oauth_connections,
            oauth_authorizations: Default::default(),
        },
        key: api_key(run, 0),
    })
}
