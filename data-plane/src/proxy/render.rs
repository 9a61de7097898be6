//! Turning invoke arguments into the upstream request, and checking where its secrets go.
//!
//! Host binding (security invariant 3): every secret injected into the rendered request, from
//! a template or from a `{"$secret": NAME}` argument, must be bound to the request's
//! destination host; so must every OAuth access token (`{{oauth.NAME}}` or a `{"$oauth":
//! HANDLE}` argument), by its client's `allowed_hosts`. Otherwise the invocation is refused
//! before anything is sent.

use std::sync::Arc;
use std::time::Duration;

use airlock_shared::hosts::is_allowed;
use airlock_shared::template::{RenderError, RenderValues, Scheme};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use serde_json::{Map, Value};

use super::error::GatewayError;
use super::redact::decodable_accept_encoding;
use crate::oauth::LiveTokens;
use crate::snapshot::{CompiledEnvironment, CompiledFunction};

/// The request to send upstream, fully rendered. Header values and the body may hold secret
/// values: `Debug` shows neither, and header values are marked sensitive so Pingora's own
/// debug logging of request heads prints `Sensitive` instead.
pub struct Invocation {
    pub method: Method,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub authority: HeaderValue,
    pub path_and_query: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Bytes>,
    pub timeout: Duration,
    /// Names of the secrets injected, once each.
    pub secrets: Vec<String>,
    /// Names of the OAuth connections whose access tokens were injected, once each.
    pub oauth: Vec<String>,
}

impl std::fmt::Debug for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invocation")
            .field("method", &self.method)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("body_len", &self.body.as_ref().map(Bytes::len))
            .field("secrets", &self.secrets)
            .field("oauth", &self.oauth)
            .finish_non_exhaustive()
    }
}

/// Parse the invoke body: empty means no arguments, anything else must be a JSON object.
pub fn parse_arguments(body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(args)) => Ok(args),
        Ok(_) => Err(GatewayError::InvalidJson("expected a JSON object".into())),
        // serde_json messages give a position, never the input.
        Err(error) => Err(GatewayError::InvalidJson(error.to_string())),
    }
}

/// The OAuth tokens obtained for one invocation, and the handles among its arguments that
/// were verified (handle, connection name).
#[derive(Debug, Default)]
pub struct OAuthValues {
    pub tokens: Vec<(String, Arc<LiveTokens>)>,
    pub handles: Vec<(String, String)>,
}

impl OAuthValues {
    fn token(&self, connection: &str) -> Option<&LiveTokens> {
        self.tokens
            .iter()
            .find(|(name, _)| name == connection)
            .map(|(_, tokens)| &**tokens)
    }
}

/// What rendering reads: the environment's secrets, and the tokens fetched for this request.
struct EnvironmentValues<'s> {
    environment: &'s CompiledEnvironment,
    oauth: Option<&'s OAuthValues>,
}

impl<'s> RenderValues<'s> for EnvironmentValues<'s> {
    fn secret(&self, name: &str) -> Option<&'s str> {
        self.environment.secret(name)
    }

    fn oauth_token(&self, connection: &str) -> Option<&'s str> {
        self.oauth?.token(connection).map(LiveTokens::access_token)
    }

    fn oauth_handle(&self, handle: &str) -> Option<(&'s str, &'s str)> {
        let oauth = self.oauth?;
        let (_, connection) = oauth.handles.iter().find(|(h, _)| h == handle)?;
        let token = oauth.token(connection)?.access_token();
        Some((connection.as_str(), token))
    }
}

/// Render `function` with `args` and the environment's secrets. A missing secret fails the
/// invocation: a request is never sent without one. So does a secret not bound to the
/// function's host.
pub fn render(
    function: &CompiledFunction,
    environment: &CompiledEnvironment,
    args: &Map<String, Value>,
) -> Result<Invocation, GatewayError> {
    render_with_oauth(function, environment, args, None)
}

/// [`render`], with the OAuth tokens fetched for this request; each connection used must be
/// allowed to send its token to the function's host.
pub fn render_with_oauth(
    function: &CompiledFunction,
    environment: &CompiledEnvironment,
    args: &Map<String, Value>,
    oauth: Option<&OAuthValues>,
) -> Result<Invocation, GatewayError> {
    let values = EnvironmentValues { environment, oauth };
    let rendered = function
        .template
        .render_with(args, &values)
        .map_err(|error| match error {
            RenderError::MissingSecret(name) if environment.is_unopened(&name) => {
                GatewayError::SecretNotOpened(name)
            }
            error => GatewayError::Render(error),
        })?;
    for name in &rendered.secrets_used {
        let allowed = environment.secret_allowed_hosts(name).unwrap_or_default();
        if !is_allowed(allowed, &rendered.host) {
            return Err(GatewayError::SecretHostDenied {
                secret: name.clone(),
                host: rendered.host.clone(),
            });
        }
    }
    for connection in &rendered.oauth_used {
        let allowed = environment
            .oauth
            .client_of(connection)
            .map(|client| client.allowed_hosts.as_slice())
            .unwrap_or_default();
        if !is_allowed(allowed, &rendered.host) {
            return Err(GatewayError::OAuthHostDenied {
                connection: connection.clone(),
                host: rendered.host.clone(),
            });
        }
    }

    // The template already refused control characters; these conversions only fail on a
    // template/http disagreement, which is a bug, not the caller's fault.
    let internal = |what: &str| {
        tracing::error!(function = %function.name, what, "rendered request is not valid HTTP");
        GatewayError::Internal
    };
    let method = Method::from_bytes(rendered.method.as_bytes()).map_err(|_| internal("method"))?;
    let authority =
        HeaderValue::from_str(&rendered.authority).map_err(|_| internal("authority"))?;
    let redacting = !rendered.secrets_used.is_empty() || !rendered.oauth_used.is_empty();
    let mut headers = Vec::with_capacity(rendered.headers.len());
    for (name, value) in rendered.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| internal("header name"))?;
        let mut value = if redacting && name == http::header::ACCEPT_ENCODING {
            // The response must be redacted, so it may only come in a coding that can be
            // decoded (see `redact`).
            HeaderValue::from_str(&decodable_accept_encoding(&value))
        } else {
            HeaderValue::from_str(&value)
        }
        .map_err(|_| internal("header value"))?;
        value.set_sensitive(true);
        headers.push((name, value));
    }
    Ok(Invocation {
        method,
        tls: rendered.scheme == Scheme::Https,
        host: rendered.host,
        port: rendered.port,
        authority,
        path_and_query: rendered.path_and_query,
        headers,
        body: rendered.body.map(Bytes::from),
        timeout: Duration::from_millis(function.template.timeout_ms.max(1)),
        secrets: rendered.secrets_used,
        oauth: rendered.oauth_used,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use airlock_shared::hosts::HostPattern;
    use airlock_shared::seal::{OpeningKey, SecretIdentity};
    use airlock_shared::wire::{EnvironmentSnapshot, FunctionSpec, HeaderSpec, SecretEntry};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    const TENANT: Uuid = Uuid::from_u128(1);
    const ENV: Uuid = Uuid::from_u128(2);

    type SecretDef<'a> = (&'a str, &'a str, &'a [&'a str]);
    type FunctionDef<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

    /// A snapshot with `secrets` (name, value, bound hosts) sealed to `key`, and `functions`
    /// (name, URL, headers).
    fn snapshot(
        key: &OpeningKey,
        secrets: &[SecretDef<'_>],
        functions: &[FunctionDef<'_>],
    ) -> EnvironmentSnapshot {
        let mut snapshot = EnvironmentSnapshot {
            tenant_id: TENANT,
            environment_id: ENV,
            revision: 1,
            functions: BTreeMap::new(),
            secrets: BTreeMap::new(),
            api_keys: vec![],
            oauth_clients: Default::default(),
            oauth_connections: Default::default(),
            oauth_authorizations: Default::default(),
        };
        for (name, value, hosts) in secrets {
            let identity = SecretIdentity {
                tenant_id: TENANT,
                environment_id: ENV,
                name,
                version: 1,
            };
            snapshot.secrets.insert(
                name.to_string(),
                SecretEntry {
                    sealed: key.sealing_key().seal(identity, value).unwrap(),
                    allowed_hosts: hosts
                        .iter()
                        .map(|h| HostPattern::parse(h).unwrap())
                        .collect(),
                },
            );
        }
        for (name, url, headers) in functions {
            snapshot.functions.insert(
                name.to_string(),
                FunctionSpec {
                    id: Uuid::new_v4(),
                    name: name.to_string(),
                    method: "GET".into(),
                    url: url.to_string(),
                    headers: headers
                        .iter()
                        .map(|(n, v)| HeaderSpec {
                            name: n.to_string(),
                            value: v.to_string(),
                        })
                        .collect(),
                    body: None,
                    timeout_ms: 1000,
                },
            );
        }
        snapshot
    }

    fn environment(
        secrets: &[SecretDef<'_>],
        functions: &[FunctionDef<'_>],
    ) -> CompiledEnvironment {
        let key = OpeningKey::generate();
        CompiledEnvironment::compile(snapshot(&key, secrets, functions), &key.into())
    }

    fn invoke(
        env: &CompiledEnvironment,
        function: &str,
        args: Value,
    ) -> Result<Invocation, GatewayError> {
        render(
            env.function(function).unwrap(),
            env,
            args.as_object().unwrap(),
        )
    }

    #[test]
    fn secrets_only_go_to_their_bound_hosts() {
        let env = environment(
            &[
                ("TOKEN", "token-value", &["api.example.com"]),
                ("WILD", "wild-value", &["*.example.com"]),
                ("NOWHERE", "nowhere-value", &[]),
            ],
            &[
                (
                    "bound",
                    "https://API.example.com/x",
                    &[("authorization", "{{secrets.TOKEN}}")],
                ),
                (
                    "elsewhere",
                    "https://evil.example.net/x",
                    &[("authorization", "{{secrets.TOKEN}}")],
                ),
                (
                    "wild",
                    "https://eu.example.com/x",
                    &[("authorization", "{{secrets.WILD}}")],
                ),
                (
                    "wild_too_deep",
                    "https://a.eu.example.com/x",
                    &[("authorization", "{{secrets.WILD}}")],
                ),
                (
                    "nowhere",
                    "https://api.example.com/x",
                    &[("authorization", "{{secrets.NOWHERE}}")],
                ),
                (
                    "passthrough",
                    "https://evil.example.net/x",
                    &[("x-value", "{{args.v}}")],
                ),
            ],
        );
        let ok = invoke(&env, "bound", json!({})).unwrap();
        assert_eq!(ok.secrets, ["TOKEN"]);
        assert_eq!(invoke(&env, "wild", json!({})).unwrap().secrets, ["WILD"]);

        let denied = |function: &str, args: Value| match invoke(&env, function, args) {
            Err(GatewayError::SecretHostDenied { secret, host }) => (secret, host),
            other => panic!("{function}: expected a host denial, got {other:?}"),
        };
        assert_eq!(
            denied("elsewhere", json!({})),
            ("TOKEN".to_string(), "evil.example.net".to_string())
        );
        assert_eq!(denied("wild_too_deep", json!({})).0, "WILD");
        assert_eq!(denied("nowhere", json!({})).0, "NOWHERE");
        // A reference passed by the client is held to the same rule.
        assert_eq!(
            denied("passthrough", json!({"v": {"$secret": "TOKEN"}})),
            ("TOKEN".to_string(), "evil.example.net".to_string())
        );
        // Plain arguments are not secrets.
        assert!(invoke(&env, "passthrough", json!({"v": "TOKEN"}))
            .unwrap()
            .secrets
            .is_empty());
    }

    #[test]
    fn a_secret_that_did_not_open_is_reported_as_such() {
        let foreign = OpeningKey::generate();
        let snapshot = snapshot(
            &foreign,
            &[("TOKEN", "token-value", &["h.example.com"])],
            &[(
                "f",
                "https://h.example.com/",
                &[("authorization", "{{secrets.TOKEN}}")],
            )],
        );
        let env = CompiledEnvironment::compile(snapshot, &OpeningKey::generate().into());
        assert!(env.is_unopened("TOKEN"));
        let error = invoke(&env, "f", json!({})).unwrap_err();
        assert_eq!(error, GatewayError::SecretNotOpened("TOKEN".into()));
        assert_eq!((error.status(), error.code()), (500, "secret_unavailable"));
    }

    #[test]
    fn accept_encoding_is_narrowed_only_when_secrets_are_injected() {
        let env = environment(
            &[("TOKEN", "token-value", &["h.example.com"])],
            &[
                (
                    "with_secret",
                    "https://h.example.com/",
                    &[
                        ("authorization", "{{secrets.TOKEN}}"),
                        ("accept-encoding", "br, gzip"),
                    ],
                ),
                (
                    "without",
                    "https://h.example.com/",
                    &[("accept-encoding", "br, gzip")],
                ),
            ],
        );
        let header = |invocation: Invocation| {
            invocation
                .headers
                .iter()
                .find(|(n, _)| n == http::header::ACCEPT_ENCODING)
                .map(|(_, v)| v.to_str().unwrap().to_string())
                .unwrap()
        };
        assert_eq!(
            header(invoke(&env, "with_secret", json!({})).unwrap()),
            "gzip"
        );
        assert_eq!(
            header(invoke(&env, "without", json!({})).unwrap()),
            "br, gzip"
        );
    }

    #[test]
    fn arguments_must_be_an_object() {
        assert!(parse_arguments(b"").unwrap().is_empty());
        assert!(parse_arguments(b"  \n").unwrap().is_empty());
        assert_eq!(parse_arguments(br#"{"a":1}"#).unwrap()["a"], 1);
        for bad in [&b"[1]"[..], b"1", b"\"s\"", b"{", b"null"] {
            assert_eq!(
                parse_arguments(bad).unwrap_err().code(),
                "invalid_json",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
