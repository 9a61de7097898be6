//! Talking to a provider's token endpoint (RFC 6749), with the `oauth2` crate.
//!
//! Requests are form-encoded; the client authenticates as its [`TokenAuthMethod`] says
//! (HTTP Basic, `client_secret` in the body, or a public client sending only `client_id`).
//! The HTTP client never follows redirects (a token request must not be replayed, with its
//! credentials, somewhere else), has connect and total timeouts, and trusts the system roots
//! plus the data plane's extra upstream CA file, like upstream TLS.
//!
//! Nothing here logs or returns a token, a secret, a code or a verifier: errors carry the
//! provider's error code and description only (a response body that does not parse is never
//! quoted: it could hold a token).

use std::path::Path;
use std::time::Duration;

use airlock_shared::oauth::{OAuthClientSpec, TokenAuthMethod};
use airlock_shared::seal::SecretValue;
use anyhow::Context as _;
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, PkceCodeVerifier, RedirectUrl,
    RefreshToken, RequestTokenError, Scope, TokenResponse as _, TokenUrl,
};

/// Connect timeout of token requests.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-exchange timeout of token requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest provider error description copied into events and errors.
const MAX_DESCRIPTION: usize = 200;

/// The HTTP client for token requests: no redirects, timeouts, system roots plus `extra_ca`.
pub fn http_client(extra_ca: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .tls_built_in_root_certs(false)
        .user_agent("airlock-data-plane");
    match pingora::tls::load_native_certs() {
        Ok(certs) => {
            for cert in certs {
                if let Ok(cert) = reqwest::Certificate::from_der(cert.as_ref()) {
                    builder = builder.add_root_certificate(cert);
                }
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot load the system CA roots for token requests")
        }
    }
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read upstream CA file {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("upstream CA file {} is not PEM", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .context("cannot build the HTTP client for token requests")
}

/// Which grant to ask for.
pub enum Grant<'a> {
    ClientCredentials,
    RefreshToken(&'a str),
    AuthorizationCode {
        code: &'a str,
        verifier: &'a str,
        redirect_uri: &'a str,
    },
}

/// Tokens the endpoint returned.
#[derive(Debug)]
pub struct ObtainedTokens {
    pub access: SecretValue,
    pub refresh: Option<SecretValue>,
    pub expires_in: Option<Duration>,
}

/// Why a token request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The provider answered with an OAuth error (`invalid_grant`...).
    #[error("the provider refused the token request: {code}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        code: String,
        description: Option<String>,
    },
    /// Network trouble, a 5xx, a response that is not a token response.
    #[error("the token endpoint failed: {0}")]
    Failed(String),
    /// The client is misconfigured here (bad URL...).
    #[error("the OAuth client is misconfigured: {0}")]
    Misconfigured(String),
}

impl EndpointError {
    /// Whether the failure is final for the connection until someone acts: the refresh token
    /// (or the client's grant) was refused, or the client itself was.
    pub fn breaks_connection(&self) -> bool {
        matches!(self, Self::Refused { code, .. }
            if matches!(code.as_str(), "invalid_grant" | "invalid_client" | "unauthorized_client"))
    }
}

fn truncate(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_DESCRIPTION)
        .collect();
    clean
}

/// Ask `client`'s token endpoint for tokens. `secret` is the client secret (already checked
/// to be bound to the endpoint's host); `None` for public clients.
pub async fn request_tokens(
    http: &reqwest::Client,
    client: &OAuthClientSpec,
    secret: Option<&str>,
    grant: Grant<'_>,
) -> Result<ObtainedTokens, EndpointError> {
    let token_url = TokenUrl::new(client.token_url.clone())
        .map_err(|_| EndpointError::Misconfigured("the token URL is not a URL".into()))?;
    let auth_type = match client.auth_method {
        TokenAuthMethod::ClientSecretBasic => AuthType::BasicAuth,
        TokenAuthMethod::ClientSecretPost | TokenAuthMethod::None => AuthType::RequestBody,
    };
    let mut oauth = BasicClient::new(ClientId::new(client.client_id.clone()))
        .set_token_uri(token_url)
        .set_auth_type(auth_type);
    if client.auth_method != TokenAuthMethod::None {
        let secret = secret.ok_or_else(|| {
            EndpointError::Misconfigured("the client needs a client secret and has none".into())
        })?;
        oauth = oauth.set_client_secret(ClientSecret::new(secret.to_string()));
    }
    let extra = &client.extra_token_params;
    let response = match grant {
        Grant::ClientCredentials => {
            let mut request = oauth
                .exchange_client_credentials()
                .add_scopes(client.scopes.iter().cloned().map(Scope::new));
            for (name, value) in extra {
                request = request.add_extra_param(name.clone(), value.clone());
            }
            request.request_async(http).await
        }
        Grant::RefreshToken(refresh) => {
            let refresh = RefreshToken::new(refresh.to_string());
            let mut request = oauth.exchange_refresh_token(&refresh);
            for (name, value) in extra {
                request = request.add_extra_param(name.clone(), value.clone());
            }
            request.request_async(http).await
        }
        Grant::AuthorizationCode {
            code,
            verifier,
            redirect_uri,
        } => {
            let redirect = RedirectUrl::new(redirect_uri.to_string()).map_err(|_| {
                EndpointError::Misconfigured("the redirect URI is not a URL".into())
            })?;
            let mut request = oauth
                .exchange_code(AuthorizationCode::new(code.to_string()))
                .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
                .set_redirect_uri(std::borrow::Cow::Owned(redirect));
            for (name, value) in extra {
                request = request.add_extra_param(name.clone(), value.clone());
            }
            request.request_async(http).await
        }
    };
    match response {
        Ok(tokens) => {
            let access = tokens.access_token().secret();
            if access.is_empty() {
                return Err(EndpointError::Failed(
                    "the token response holds an empty access token".into(),
                ));
            }
            Ok(ObtainedTokens {
                access: SecretValue::new(access.clone()),
                refresh: tokens
                    .refresh_token()
                    .map(|r| SecretValue::new(r.secret().clone())),
                expires_in: tokens.expires_in(),
            })
        }
        Err(RequestTokenError::ServerResponse(error)) => {
            let code = match error.error() {
                BasicErrorResponseType::Extension(code) => truncate(code),
                other => other.as_ref().to_string(),
            };
            Err(EndpointError::Refused {
                code,
                description: error.error_description().map(|d| truncate(d)),
            })
        }
        // Never quote the body: a response that does not parse may still hold a token.
        Err(RequestTokenError::Parse(_, _)) => Err(EndpointError::Failed(
            "the token endpoint's answer is not a token response".into(),
        )),
        Err(RequestTokenError::Request(error)) => Err(EndpointError::Failed(describe(&error))),
        Err(RequestTokenError::Other(reason)) => Err(EndpointError::Failed(truncate(&reason))),
    }
}

/// A network error, without the URL (a token URL could carry a secret in its query).
fn describe(error: &oauth2::HttpClientError<reqwest::Error>) -> String {
    match error {
        oauth2::HttpClientError::Reqwest(inner) if inner.is_timeout() => {
            "the token endpoint did not answer in time".into()
        }
        oauth2::HttpClientError::Reqwest(inner) if inner.is_connect() => {
            "the token endpoint could not be reached".into()
        }
        oauth2::HttpClientError::Reqwest(inner) if inner.is_redirect() => {
            "the token endpoint answered with a redirect (not followed)".into()
        }
        _ => "the token request failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refused_grants_and_clients_break_a_connection() {
        let refused = |code: &str| EndpointError::Refused {
            code: code.into(),
            description: None,
        };
        for code in ["invalid_grant", "invalid_client", "unauthorized_client"] {
            assert!(refused(code).breaks_connection(), "{code}");
        }
        for code in [
            "invalid_request",
            "invalid_scope",
            "temporarily_unavailable",
        ] {
            assert!(!refused(code).breaks_connection(), "{code}");
        }
        assert!(!EndpointError::Failed("x".into()).breaks_connection());
        let described = EndpointError::Refused {
            code: "invalid_grant".into(),
            description: Some("grant revoked".into()),
        };
        assert_eq!(
            described.to_string(),
            "the provider refused the token request: invalid_grant (grant revoked)"
        );
        assert_eq!(truncate(&"a\nb".repeat(300)).len(), MAX_DESCRIPTION);
    }
}
