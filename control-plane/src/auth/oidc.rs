//! OpenID Connect: console sign-in (authorization code with PKCE, through the `openidconnect`
//! crate) and bearer JWT access tokens (through [`JwtValidator`]), against one issuer.
//!
//! [`Oidc::discover`] reads the issuer's discovery document and keys once, at startup. The
//! ID token's signature, `iss`, `aud`, `exp` and `nonce` are checked by `openidconnect`; access
//! tokens by [`JwtValidator`] (which refetches the JWKS on an unknown `kid`, rate-limited).
//! No error message or log line here carries a token, a code or the client secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet,
    CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, JsonWebKeySetUrl, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    SignatureVerificationError, TokenResponse,
};

use super::jwt::{error_chain, JwtError, JwtValidator, JwtValidatorConfig};
use crate::config::OidcConfig;
use crate::domain::sessions::{LoginSecrets, PendingLogin};
use crate::domain::users::Identity;

/// The client `from_provider_metadata` builds: authorization endpoint set, token and userinfo
/// endpoints as discovered.
type ConsoleClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Bound on one request to the provider.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Least time between two refetches of the ID-token keys (after an ID token signed with a key
/// the known set lacks: the provider rotated its keys).
const ID_TOKEN_KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Why a console sign-in could not be completed. Messages are safe to show and log.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// The provider could not be reached or did not exchange the code (a bad, used or
    /// expired code, a wrong verifier).
    #[error("the identity provider did not accept the sign-in: {0}")]
    CodeExchange(String),
    /// The token response has no ID token.
    #[error("the identity provider returned no ID token")]
    NoIdToken,
    /// The ID token failed verification (signature, issuer, audience, expiry or nonce).
    #[error("the ID token is not valid: {0}")]
    InvalidIdToken(String),
}

/// Why the provider could not be set up at startup.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OidcSetupError(String);

/// Sign-in and bearer-token validation against the configured issuer. Cheap to clone.
#[derive(Clone)]
pub struct Oidc {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    client: ConsoleClient,
    http: reqwest::Client,
    jwt: JwtValidator,
    secure_cookies: bool,
    /// What a fresh ID-token verifier needs besides the keys.
    config: OidcConfig,
    issuer_url: IssuerUrl,
    jwks_url: JsonWebKeySetUrl,
    id_token_algs: Vec<CoreJwsSigningAlgorithm>,
    /// ID-token keys refetched after a key miss; `None`: the ones read at discovery.
    refreshed_keys: ArcSwapOption<CoreJsonWebKeySet>,
    /// When the ID-token keys were last refetched; held during a refetch.
    last_key_refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.inner.issuer)
            .finish_non_exhaustive()
    }
}

impl Oidc {
    /// Discover the issuer and load its keys; one attempt.
    pub async fn discover(config: &OidcConfig) -> Result<Oidc, OidcSetupError> {
        // No redirects: the openidconnect crate's advice against SSRF through the provider.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PROVIDER_TIMEOUT)
            .build()
            .map_err(|e| OidcSetupError(format!("HTTP client: {e}")))?;
        let issuer_url = IssuerUrl::new(config.issuer.clone())
            .map_err(|e| OidcSetupError(format!("AIRLOCK_OIDC_ISSUER is not a URL: {e}")))?;
        let metadata = CoreProviderMetadata::discover_async(issuer_url, &http)
            .await
            .map_err(|e| {
                OidcSetupError(format!(
                    "OpenID Connect discovery at {} failed: {}",
                    config.issuer,
                    error_chain(&e)
                ))
            })?;
        let jwks_url = metadata.jwks_uri().clone();
        let jwks_uri = jwks_url.url().to_string();
        let issuer_url = metadata.issuer().clone();
        let id_token_algs = metadata.id_token_signing_alg_values_supported().clone();
        let redirect = RedirectUrl::new(config.redirect_url.clone())
            .map_err(|e| OidcSetupError(format!("redirect URL: {e}")))?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(config.client_secret.expose().to_string())),
        )
        .set_redirect_uri(redirect);
        let mut jwt_config =
            JwtValidatorConfig::new(config.issuer.clone(), config.audience.clone());
        jwt_config.jwks_uri = Some(jwks_uri);
        let jwt = JwtValidator::new(jwt_config, http.clone())
            .await
            .map_err(|e| OidcSetupError(e.to_string()))?;
        Ok(Oidc {
            inner: Arc::new(Inner {
                issuer: config.issuer.clone(),
                client,
                http,
                jwt,
                secure_cookies: config.redirect_url.starts_with("https://"),
                config: config.clone(),
                issuer_url,
                jwks_url,
                id_token_algs,
                refreshed_keys: ArcSwapOption::empty(),
                last_key_refresh: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// [`discover`](Self::discover), retried with backoff for up to `patience` (the provider
    /// may be starting alongside Airlock); then the last error.
    pub async fn discover_with_retry(
        config: &OidcConfig,
        patience: Duration,
    ) -> Result<Oidc, OidcSetupError> {
        let deadline = Instant::now() + patience;
        let mut wait = Duration::from_millis(250);
        loop {
            match Self::discover(config).await {
                Ok(oidc) => return Ok(oidc),
                Err(error) if Instant::now() + wait < deadline => {
                    tracing::warn!(%error, retry_in = ?wait, "OpenID provider not ready; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// Whether cookies get `Secure` (the redirect URL, so the public URL, is https).
    pub fn secure_cookies(&self) -> bool {
        self.inner.secure_cookies
    }

    /// Where to send the browser for `pending`: the provider's authorization endpoint with
    /// `state`, `nonce`, PKCE S256 and the scopes `openid email`.
    pub fn authorize_url(&self, pending: &PendingLogin) -> String {
        let verifier = PkceCodeVerifier::new(pending.secrets.pkce_verifier.clone());
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&verifier);
        let state = pending.state.clone();
        let nonce = pending.secrets.nonce.clone();
        let (url, _, _) = self
            .inner
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .add_scope(Scope::new("email".to_string()))
            .set_pkce_challenge(challenge)
            .url();
        url.to_string()
    }

    /// Exchange `code` with the sign-in's verifier and verify the ID token; who signed in.
    pub async fn complete(
        &self,
        code: &str,
        secrets: &LoginSecrets,
    ) -> Result<Identity, SignInError> {
        let client = &self.inner.client;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|_| SignInError::CodeExchange("the provider has no token endpoint".into()))?
            .set_pkce_verifier(PkceCodeVerifier::new(secrets.pkce_verifier.clone()))
            .request_async(&self.inner.http)
            .await
            .map_err(|error| SignInError::CodeExchange(token_error(&error)))?;
        let id_token = response.id_token().ok_or(SignInError::NoIdToken)?;
        let nonce = Nonce::new(secrets.nonce.clone());
        let keys = self.inner.refreshed_keys.load_full();
        let invalid =
            |error: ClaimsVerificationError| SignInError::InvalidIdToken(error.to_string());
        match self.verify_id_token(id_token, &nonce, keys.as_deref()) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                let keys = self.refresh_id_token_keys().await;
                self.verify_id_token(id_token, &nonce, keys.as_deref())
                    .map_err(invalid)
            }
            verified => verified.map_err(invalid),
        }
    }

    /// Signature (with `keys`, or the keys read at discovery), `iss`, `aud`, `exp`, `nonce`.
    fn verify_id_token(
        &self,
        id_token: &CoreIdToken,
        nonce: &Nonce,
        keys: Option<&CoreJsonWebKeySet>,
    ) -> Result<Identity, ClaimsVerificationError> {
        let verifier = match keys {
            None => self.inner.client.id_token_verifier(),
            Some(keys) => CoreIdTokenVerifier::new_confidential_client(
                ClientId::new(self.inner.config.client_id.clone()),
                ClientSecret::new(self.inner.config.client_secret.expose().to_string()),
                self.inner.issuer_url.clone(),
                keys.clone(),
            )
            .set_allowed_algs(self.inner.id_token_algs.clone()),
        };
        let claims = id_token.claims(&verifier, nonce)?;
        Ok(Identity::new(
            claims.issuer().as_str(),
            claims.subject().as_str(),
            claims.email().map(|email| email.as_str()),
            claims.email_verified().unwrap_or(false),
        ))
    }

    /// Refetch the provider's keys, at most once per [`ID_TOKEN_KEY_REFRESH_INTERVAL`]; the
    /// newest refetched set (`None`: none could be fetched yet).
    async fn refresh_id_token_keys(&self) -> Option<Arc<CoreJsonWebKeySet>> {
        let mut last = self.inner.last_key_refresh.lock().await;
        if last.is_some_and(|at| at.elapsed() < ID_TOKEN_KEY_REFRESH_INTERVAL) {
            return self.inner.refreshed_keys.load_full();
        }
        *last = Some(Instant::now());
        match CoreJsonWebKeySet::fetch_async(&self.inner.jwks_url, &self.inner.http).await {
            Ok(keys) => {
                let keys = Arc::new(keys);
                self.inner.refreshed_keys.store(Some(Arc::clone(&keys)));
                tracing::info!(
                    jwks_uri = %self.inner.jwks_url.url(),
                    "refetched the OpenID provider's keys after an ID token with an unknown key"
                );
                Some(keys)
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "refetching the OpenID provider's keys failed");
                self.inner.refreshed_keys.load_full()
            }
        }
    }

    /// Validate a bearer access token; who it was issued to.
    pub async fn validate_bearer(&self, token: &str) -> Result<Identity, JwtError> {
        let verified = self.inner.jwt.validate(token).await?;
        Ok(Identity::new(
            verified.issuer,
            verified.subject,
            verified.email.as_deref(),
            verified.email_verified,
        ))
    }
}

/// A token endpoint failure, described without the response body (it could hold tokens).
fn token_error<RE, T>(error: &RequestTokenError<RE, T>) -> String
where
    RE: std::error::Error + 'static,
    T: openidconnect::ErrorResponse + 'static,
{
    match error {
        RequestTokenError::ServerResponse(response) => {
            // The OAuth error code only (`invalid_grant`, ...): the description is free text.
            let code = serde_json::to_value(response)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| "error".to_string());
            format!("the token endpoint answered `{code}`")
        }
        RequestTokenError::Request(error) => {
            format!("cannot reach the token endpoint: {}", error_chain(error))
        }
        RequestTokenError::Parse(_, _) => {
            "the token endpoint's answer is not a token response".into()
        }
        RequestTokenError::Other(_) => "unexpected answer from the token endpoint".into(),
    }
}
