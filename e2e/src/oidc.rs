//! A real OpenID Connect / OAuth 2 authorization server as a test peer: panva's
//! `oidc-provider` (npm) under Node.js, from `e2e/oidc-provider/server.mjs` (which documents
//! the configuration, token formats and test endpoints in detail).
//!
//! ```ignore
//! let idp = OidcProvider::start(dir.path(), OidcConfig {
//!     clients: vec![OidcClient::web("console", "s3cret", "http://127.0.0.1:8080/callback")],
//!     ..OidcConfig::default()
//! }).await?;
//! let pkce = Pkce::new();
//! let url = idp.authorize_url("console", "http://127.0.0.1:8080/callback", "openid email", "st", Some(&pkce));
//! let callback = idp.login(url.as_str(), "alice").await?; // .../callback?code=...&state=st
//! ```
//!
//! Accounts: any login name signs in (any password); `sub` is the login name and `email`
//! is `<login>@example.test`. Access tokens are RS256 JWTs for [`Resource::audience`].
//! Needs `npm ci` in `e2e/oidc-provider` (`scripts/test` does it via `ensure_oidc_provider`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{free_port, wait_ready, Process};

/// The password the harness types into the login form (the provider accepts any).
const PASSWORD: &str = "any-password";

/// Where the Node.js server lives.
fn server_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc-provider")
}

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenAuthMethod {
    /// HTTP Basic with client_id and client_secret.
    ClientSecretBasic,
    /// client_id and client_secret in the form body.
    ClientSecretPost,
    /// A public client: client_id only, PKCE required.
    None,
}

/// One registered client (oidc-provider client metadata).
#[derive(Debug, Clone, Serialize)]
pub struct OidcClient {
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    pub redirect_uris: Vec<String>,
    /// Any of `authorization_code`, `refresh_token`, `client_credentials`.
    pub grant_types: Vec<String>,
    pub token_endpoint_auth_method: TokenAuthMethod,
    /// Space-separated scopes the client may request (None: any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl OidcClient {
    /// A confidential web client (client_secret_basic) for authorization code + refresh.
    pub fn web(client_id: &str, secret: &str, redirect_uri: &str) -> Self {
        Self {
            client_id: client_id.to_string(),
            client_secret: Some(secret.to_string()),
            redirect_uris: vec![redirect_uri.to_string()],
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            token_endpoint_auth_method: TokenAuthMethod::ClientSecretBasic,
            scope: None,
        }
    }

    /// A public client (no secret, PKCE S256 required) for authorization code + refresh.
    pub fn public(client_id: &str, redirect_uri: &str) -> Self {
        Self {
            client_secret: None,
            token_endpoint_auth_method: TokenAuthMethod::None,
            ..Self::web(client_id, "", redirect_uri)
        }
    }

    /// A machine client (client_secret_basic) for client_credentials only.
    pub fn service(client_id: &str, secret: &str) -> Self {
        Self {
            redirect_uris: Vec::new(),
            grant_types: vec!["client_credentials".into()],
            ..Self::web(client_id, secret, "")
        }
    }

    pub fn auth_method(mut self, method: TokenAuthMethod) -> Self {
        self.token_endpoint_auth_method = method;
        self
    }

    pub fn grant_types(mut self, grant_types: &[&str]) -> Self {
        self.grant_types = grant_types.iter().map(|g| g.to_string()).collect();
        self
    }

    pub fn redirect_uri(mut self, uri: &str) -> Self {
        self.redirect_uris.push(uri.to_string());
        self
    }

    pub fn scope(mut self, scope: &str) -> Self {
        self.scope = Some(scope.to_string());
        self
    }
}

/// The API the access tokens are for (an RFC 8707 resource indicator).
#[derive(Debug, Clone, Serialize)]
pub struct Resource {
    /// The resource indicator; every token request without `resource` defaults to it.
    pub indicator: String,
    /// The `aud` of the access token JWTs.
    pub audience: String,
    /// Space-separated scopes of this API (granted on request; go into the JWT's `scope`).
    pub scope: String,
}

impl Default for Resource {
    fn default() -> Self {
        Self {
            indicator: "https://api.airlock.test".into(),
            audience: "https://api.airlock.test".into(),
            scope: "api:read api:write".into(),
        }
    }
}

/// Token lifetimes in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Ttl {
    #[serde(rename = "AccessToken")]
    pub access_token: u64,
    #[serde(rename = "ClientCredentials")]
    pub client_credentials: u64,
    #[serde(rename = "RefreshToken")]
    pub refresh_token: u64,
    #[serde(rename = "IdToken")]
    pub id_token: u64,
    #[serde(rename = "AuthorizationCode")]
    pub authorization_code: u64,
}

impl Default for Ttl {
    fn default() -> Self {
        Self {
            access_token: 3600,
            client_credentials: 3600,
            refresh_token: 86400,
            id_token: 3600,
            authorization_code: 60,
        }
    }
}

/// Which clients must use PKCE (S256 is the only method offered).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PkcePolicy {
    /// Public clients (token_endpoint_auth_method `none`) only.
    #[default]
    Public,
    /// Every client.
    Always,
}

/// When the code and refresh grants return a refresh token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshTokenPolicy {
    /// Whenever the client may use the refresh_token grant.
    #[default]
    Always,
    /// Only when `offline_access` was granted (oidc-provider's default rule; note that it
    /// drops `offline_access` from authorization requests without `prompt=consent`).
    OfflineAccess,
}

/// What [`OidcProvider::start`] configures (serialized into the server's JSON config file).
#[derive(Debug, Clone, Default, Serialize)]
pub struct OidcConfig {
    pub clients: Vec<OidcClient>,
    pub resource: Resource,
    /// Extra scopes beyond openid, email, profile, offline_access and the resource's.
    pub scopes: Vec<String>,
    pub ttl: Ttl,
    #[serde(rename = "requirePkce")]
    pub require_pkce: PkcePolicy,
    #[serde(rename = "refreshTokens")]
    pub refresh_tokens: RefreshTokenPolicy,
}

/// Token endpoint requests for one grant type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct GrantStats {
    pub requests: u64,
    pub succeeded: u64,
    pub failed: u64,
}

/// Token endpoint requests the provider has answered so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Stats {
    pub total: u64,
    /// By `grant_type` (`unknown` when the request had none).
    pub grant_types: BTreeMap<String, GrantStats>,
    /// Failed requests by OAuth `error` code (e.g. `invalid_grant`).
    pub errors: BTreeMap<String, u64>,
}

impl Stats {
    /// Requests with this grant type.
    pub fn requests(&self, grant_type: &str) -> u64 {
        self.grant(grant_type).requests
    }

    /// Successful / failed requests with this grant type.
    pub fn grant(&self, grant_type: &str) -> GrantStats {
        self.grant_types
            .get(grant_type)
            .copied()
            .unwrap_or_default()
    }

    /// Failed requests with this OAuth error code.
    pub fn errors(&self, error: &str) -> u64 {
        self.errors.get(error).copied().unwrap_or_default()
    }
}

/// A PKCE pair (RFC 7636, S256).
#[derive(Debug, Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub const METHOD: &'static str = "S256";

    /// A random verifier (43 characters) and its challenge.
    pub fn new() -> Self {
        let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        Self {
            challenge: Self::challenge_for(&verifier),
            verifier,
        }
    }

    /// BASE64URL(SHA256(verifier)).
    pub fn challenge_for(verifier: &str) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

/// How a request authenticates the client at the token endpoint.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    Basic { client_id: String, secret: String },
    Post { client_id: String, secret: String },
    Public { client_id: String },
}

impl ClientAuth {
    pub fn basic(client_id: &str, secret: &str) -> Self {
        Self::Basic {
            client_id: client_id.into(),
            secret: secret.into(),
        }
    }

    pub fn post(client_id: &str, secret: &str) -> Self {
        Self::Post {
            client_id: client_id.into(),
            secret: secret.into(),
        }
    }

    pub fn public(client_id: &str) -> Self {
        Self::Public {
            client_id: client_id.into(),
        }
    }
}

/// A token endpoint answer, successful or not.
#[derive(Debug, Clone)]
pub struct TokenReply {
    pub status: StatusCode,
    pub body: Value,
}

impl TokenReply {
    /// The body of a 2xx answer, or an error showing the answer.
    pub fn ok(self) -> Result<Value> {
        ensure!(
            self.status.is_success(),
            "token request failed: {} {}",
            self.status,
            self.body
        );
        Ok(self.body)
    }

    /// The OAuth `error` code of a failed answer.
    pub fn error(&self) -> Option<&str> {
        self.body["error"].as_str()
    }
}

/// What the harness does at the consent prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consent {
    Approve,
    Abort,
}

/// A running oidc-provider; killed when dropped.
pub struct OidcProvider {
    issuer: String,
    config: OidcConfig,
    client: reqwest::Client,
    process: Process,
}

impl OidcProvider {
    /// Start the provider on a free port with `config`; its log and config file go to
    /// `log_dir`. Returns once the discovery document is served.
    pub async fn start(log_dir: &Path, config: OidcConfig) -> Result<Self> {
        Self::start_on(log_dir, config, free_port()).await
    }

    /// [`start`](Self::start) on `port`: the same issuer as a provider that ran there
    /// before (with a new signing key: a key rotation, as its relying parties see it).
    pub async fn start_on(log_dir: &Path, config: OidcConfig, port: u16) -> Result<Self> {
        let dir = server_dir();
        ensure!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "{}/node_modules is missing: run `npm ci` there (scripts/test does it)",
            dir.display()
        );
        let issuer = format!("http://127.0.0.1:{port}");
        let mut file = serde_json::to_value(&config)?;
        file["issuer"] = json!(issuer);
        file["port"] = json!(port);
        let config_path = log_dir.join(format!("oidc-provider-{port}.json"));
        std::fs::write(&config_path, serde_json::to_vec_pretty(&file)?)
            .with_context(|| format!("writing {}", config_path.display()))?;

        let mut command = Command::new("node");
        command.arg(dir.join("server.mjs")).arg(&config_path);
        let mut process = Process::spawn(&format!("oidc-provider-{port}"), command, log_dir)?;
        wait_ready(
            &format!("{issuer}/.well-known/openid-configuration"),
            &mut process,
        )
        .await?;
        Ok(Self {
            issuer,
            config,
            client: reqwest::Client::new(),
            process,
        })
    }

    /// `http://127.0.0.1:<port>` (no trailing slash), the `iss` of every token.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of the access tokens.
    pub fn audience(&self) -> &str {
        &self.config.resource.audience
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    pub fn authorization_endpoint(&self) -> String {
        format!("{}/auth", self.issuer)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// Everything the provider printed so far.
    pub fn output(&self) -> String {
        self.process.output()
    }

    /// Fail if the provider has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.process.check_running()
    }

    /// The discovery document.
    pub async fn discovery(&self) -> Result<Value> {
        self.get_json(&self.discovery_url()).await
    }

    /// The public signing keys.
    pub async fn jwks(&self) -> Result<Value> {
        self.get_json(&self.jwks_uri()).await
    }

    /// Token endpoint requests so far, per grant type and outcome.
    pub async fn token_requests(&self) -> Result<Stats> {
        let stats = self
            .get_json(&format!("{}/_test/stats", self.issuer))
            .await?;
        Ok(serde_json::from_value(stats)?)
    }

    /// Start counting token endpoint requests from zero.
    pub async fn reset_token_requests(&self) -> Result<()> {
        let resp = self
            .client
            .delete(format!("{}/_test/stats", self.issuer))
            .send()
            .await?;
        ensure!(resp.status().is_success(), "reset stats: {}", resp.status());
        Ok(())
    }

    /// Revoke every grant (of `client_id` and/or `account_id` when given): the grants and
    /// every token issued under them are deleted, so their refresh tokens then fail with
    /// `invalid_grant` (already issued JWT access tokens stay valid until they expire).
    /// Returns how many grants were revoked.
    pub async fn revoke_grants(
        &self,
        client_id: Option<&str>,
        account_id: Option<&str>,
    ) -> Result<u64> {
        let mut filter = json!({});
        if let Some(client_id) = client_id {
            filter["client_id"] = json!(client_id);
        }
        if let Some(account_id) = account_id {
            filter["account_id"] = json!(account_id);
        }
        let resp = self
            .client
            .post(format!("{}/_test/revoke-grants", self.issuer))
            .json(&filter)
            .send()
            .await?;
        ensure!(
            resp.status().is_success(),
            "revoke grants: {}",
            resp.status()
        );
        let body: Value = resp.json().await?;
        body["revoked"].as_u64().context("no revoked count")
    }

    /// POST to the token endpoint with `params` (grant_type included), authenticating as
    /// `auth`. Returns the answer whatever its status.
    pub async fn token_request(
        &self,
        auth: &ClientAuth,
        params: &[(&str, &str)],
    ) -> Result<TokenReply> {
        let mut form: Vec<(&str, &str)> = params.to_vec();
        let mut request = self.client.post(self.token_endpoint());
        match auth {
            ClientAuth::Basic { client_id, secret } => {
                request = request.basic_auth(form_encode(client_id), Some(form_encode(secret)));
            }
            ClientAuth::Post { client_id, secret } => {
                form.push(("client_id", client_id));
                form.push(("client_secret", secret));
            }
            ClientAuth::Public { client_id } => form.push(("client_id", client_id)),
        }
        let resp = request.form(&form).send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(TokenReply { status, body })
    }

    /// A client_credentials access token (a JWT) for `client_id` with client_secret_basic,
    /// for `resource` (None: the configured one).
    pub async fn client_credentials_token(
        &self,
        client_id: &str,
        secret: &str,
        resource: Option<&str>,
    ) -> Result<String> {
        let mut params = vec![("grant_type", "client_credentials")];
        if let Some(resource) = resource {
            params.push(("resource", resource));
        }
        let body = self
            .token_request(&ClientAuth::basic(client_id, secret), &params)
            .await?
            .ok()?;
        body["access_token"]
            .as_str()
            .map(str::to_string)
            .context("no access_token in the answer")
    }

    /// Exchange an authorization code (with the PKCE verifier, if one was used).
    pub async fn exchange_code(
        &self,
        auth: &ClientAuth,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
    ) -> Result<TokenReply> {
        let mut params = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
        ];
        if let Some(verifier) = verifier {
            params.push(("code_verifier", verifier));
        }
        self.token_request(auth, &params).await
    }

    /// Use a refresh token.
    pub async fn refresh(&self, auth: &ClientAuth, refresh_token: &str) -> Result<TokenReply> {
        self.token_request(
            auth,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }

    /// An authorization request URL (response_type=code), for tests that play the client.
    pub fn authorize_url(
        &self,
        client_id: &str,
        redirect_uri: &str,
        scope: &str,
        state: &str,
        pkce: Option<&Pkce>,
    ) -> Url {
        let mut url = Url::parse(&self.authorization_endpoint()).expect("valid issuer URL");
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("scope", scope)
                .append_pair("state", state);
            if let Some(pkce) = pkce {
                query
                    .append_pair("code_challenge", &pkce.challenge)
                    .append_pair("code_challenge_method", Pkce::METHOD);
            }
        }
        url
    }

    /// Play the user's browser: GET `authorize_url` (any URL leading to this provider's
    /// authorization endpoint, e.g. the redirect Airlock answered with), sign in as
    /// `login_name` and approve the consent prompt, following the provider's redirects with a
    /// fresh cookie jar. Returns the first redirect that leaves the provider (to the client's
    /// redirect_uri, with `code`, `state` and `iss`, or with `error`) without fetching it.
    pub async fn login(&self, authorize_url: &str, login_name: &str) -> Result<Url> {
        self.drive(authorize_url, login_name, Consent::Approve)
            .await
    }

    /// Like [`login`](Self::login), but the user cancels at the consent prompt: returns the
    /// redirect to the client with `error=access_denied`.
    pub async fn login_and_deny(&self, authorize_url: &str, login_name: &str) -> Result<Url> {
        self.drive(authorize_url, login_name, Consent::Abort).await
    }

    async fn drive(&self, authorize_url: &str, login_name: &str, consent: Consent) -> Result<Url> {
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let origin = Url::parse(&self.issuer)?.origin();
        let mut url = Url::parse(authorize_url).context("authorize URL")?;
        let mut request = browser.get(url.clone());
        let mut trail = Vec::new();
        for _ in 0..20 {
            trail.push(url.to_string());
            let resp = request.send().await.with_context(|| format!("GET {url}"))?;
            let status = resp.status();
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .context("redirect without Location")?
                    .to_str()?;
                let next = url.join(location)?;
                if next.origin() != origin {
                    return Ok(next);
                }
                url = next;
                request = browser.get(url.clone());
                continue;
            }
            let body = resp.text().await?;
            if status != StatusCode::OK || !url.path().starts_with("/interaction/") {
                bail!("unexpected {status} at {url} (after {trail:?}):\n{body}");
            }
            // A login page (fields `login`, `password`) or a consent page (a bare form, and
            // an abort link at <page>/abort).
            let action = url.join(&form_action(&body).context("no form on the page")?)?;
            if body.contains(r#"name="login""#) {
                request = browser
                    .post(action.clone())
                    .form(&[("login", login_name), ("password", PASSWORD)]);
                url = action;
            } else if consent == Consent::Abort {
                url = url.join(&format!("{}/abort", url.path()))?;
                request = browser.get(url.clone());
            } else {
                request = browser.post(action.clone()).form(&[("confirm", "yes")]);
                url = action;
            }
        }
        bail!("no redirect to the client after {trail:?}")
    }

    async fn get_json(&self, url: &str) -> Result<Value> {
        let resp = self.client.get(url).send().await?;
        ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
        Ok(resp.json().await?)
    }
}

/// The `action` of the first `<form>` in `html` (the provider's pages are simple).
fn form_action(html: &str) -> Option<String> {
    let form = &html[html.find("<form")?..];
    let form = &form[..form.find('>')?];
    let start = form.find("action=\"")? + "action=\"".len();
    let end = start + form[start..].find('"')?;
    Some(form[start..end].replace("&amp;", "&"))
}

/// client_id and secret are form-encoded before HTTP Basic (RFC 6749 section 2.3.1).
fn form_encode(value: &str) -> String {
    url_form(&[("", value)]).trim_start_matches('=').to_string()
}

fn url_form(pairs: &[(&str, &str)]) -> String {
    let mut url = Url::parse("http://x/").expect("static URL");
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or_default().to_string()
}

/// A JWT's header and claims, decoded without verifying the signature.
pub fn decode_jwt_unverified(token: &str) -> Result<(Value, Value)> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("not a JWS compact serialization: {token}");
    };
    let decode = |part: &str| -> Result<Value> {
        Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part)?)?)
    };
    Ok((decode(header)?, decode(claims)?))
}
