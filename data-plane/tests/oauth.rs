//! OAuth on the data plane, end to end within the crate: a real RFC 6749 token endpoint (axum,
//! form-encoded requests, JSON answers) that counts its requests, an API that only accepts the
//! endpoint's current token, and data planes fed in-process or through Redis.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_data_plane::{ConfigSource, EventSink};
use airlock_shared::events::{DataPlaneMessage, EventKind};
use airlock_shared::hosts::HostPattern;
use airlock_shared::keys::RedisNames;
use airlock_shared::oauth::{
    pkce_identity_name, state_hash, token_identity, token_identity_name, ConnectionStatus,
    OAuthClientSpec, OAuthConnectionSpec, OAuthGrant, PendingAuthorization, SealedTokenSet,
    TokenAuthMethod, TokenKind,
};
use airlock_shared::seal::{OpeningKey, SecretIdentity};
use airlock_shared::wire::EnvironmentSnapshot;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use common::*;
use uuid::Uuid;

const API_KEY: &str = "ak_oauth_test_key";
const OTHER_KEY: &str = "ak_oauth_other_key";
const CLIENT_SECRET: &str = "client-secret-value-42";

/// How the token endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    InvalidGrant,
    ServerError,
}

/// The form fields and the Authorization header of one token request.
type TokenRequest = (HashMap<String, String>, Option<String>);

#[derive(Default)]
struct ProviderState {
    token_requests: AtomicUsize,
    /// Form fields and the Authorization header of each token request.
    requests: Mutex<Vec<TokenRequest>>,
    /// The access token the API accepts (the latest issued, unless revoked).
    current: Mutex<Option<String>>,
    mode: Mutex<Option<Mode>>,
    expires_in: Mutex<Option<u64>>,
    api_calls: AtomicUsize,
    /// Answer tokens slowly, so concurrent requests pile up behind one refresh.
    slow: AtomicBool,
}

/// A token endpoint (`/token`) and a protected API (`/api`, echoes what it saw).
struct Provider {
    addr: SocketAddr,
    state: Arc<ProviderState>,
}

impl Provider {
    async fn start() -> Self {
        let state = Arc::new(ProviderState::default());
        *state.expires_in.lock().unwrap() = Some(3600);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/token", axum::routing::post(token))
            .route("/api", axum::routing::any(api))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    fn last_request(&self) -> TokenRequest {
        self.state.requests.lock().unwrap().last().cloned().unwrap()
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = Some(mode);
    }

    /// The API refuses every token issued so far.
    fn revoke(&self) {
        *self.state.current.lock().unwrap() = None;
    }

    fn current(&self) -> Option<String> {
        self.state.current.lock().unwrap().clone()
    }
}

async fn token(
    State(state): State<Arc<ProviderState>>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Response {
    let n = state.token_requests.fetch_add(1, Ordering::SeqCst) + 1;
    let form: HashMap<String, String> = url_form(&body);
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    state.requests.lock().unwrap().push((form, auth));
    if state.slow.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mode = state.mode.lock().unwrap().unwrap_or(Mode::Ok);
    match mode {
        Mode::InvalidGrant => (
            axum::http::StatusCode::BAD_REQUEST,
            [("content-type", "application/json")],
            r#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#,
        )
            .into_response(),
        Mode::ServerError => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "text/plain")],
            "down",
        )
            .into_response(),
        Mode::Ok => {
            let access = format!("at-{n}-{}", Uuid::new_v4().simple());
            *state.current.lock().unwrap() = Some(access.clone());
            let mut body = serde_json::json!({
                "access_token": access,
                "token_type": "Bearer",
                "refresh_token": format!("rt-{n}-{}", Uuid::new_v4().simple()),
            });
            if let Some(expires_in) = *state.expires_in.lock().unwrap() {
                body["expires_in"] = expires_in.into();
            }
            (
                [
                    ("content-type", "application/json"),
                    ("cache-control", "no-store"),
                ],
                body.to_string(),
            )
                .into_response()
        }
    }
}

async fn api(State(state): State<Arc<ProviderState>>, headers: axum::http::HeaderMap) -> Response {
    state.api_calls.fetch_add(1, Ordering::SeqCst);
    let seen = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let current = state.current.lock().unwrap().clone();
    if current.is_none_or(|c| seen != format!("Bearer {c}")) {
        return (axum::http::StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    (
        [("content-type", "application/json")],
        serde_json::json!({ "seen": seen }).to_string(),
    )
        .into_response()
}

fn url_form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

/// The client `idp`, for `provider`, with its secret in the vault bound to 127.0.0.1.
fn client(provider: &Provider, allowed: &[&str]) -> OAuthClientSpec {
    OAuthClientSpec {
        id: Uuid::new_v4(),
        name: "idp".into(),
        issuer: None,
        token_url: provider.url("/token"),
        authorize_url: Some(provider.url("/authorize")),
        client_id: "airlock-client".into(),
        client_secret: Some("IDP_SECRET".into()),
        auth_method: TokenAuthMethod::ClientSecretBasic,
        scopes: vec!["read".into(), "write".into()],
        extra_token_params: vec![("audience".into(), "https://api.example".into())],
        allowed_hosts: allowed
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect(),
        refresh_skew_seconds: 60,
        redirect_uri: Some("http://127.0.0.1/v1/oauth/callback".into()),
    }
}

fn connection(name: &str, grant: OAuthGrant, status: ConnectionStatus) -> OAuthConnectionSpec {
    OAuthConnectionSpec {
        id: Uuid::new_v4(),
        name: name.into(),
        client: "idp".into(),
        grant,
        status,
        tokens: None,
    }
}

/// An environment with the `crm` connection of `grant`, a function `call` that sends its
/// token to the provider's API, and `echo` that sends it to an API echoing it back.
fn environment(
    key: &OpeningKey,
    provider: &Provider,
    env: Uuid,
    grant: OAuthGrant,
) -> EnvironmentSnapshot {
    let status = ConnectionStatus::Pending;
    let mut snapshot = SnapshotBuilder::new(env, 1)
        .secret(key, "IDP_SECRET", CLIENT_SECRET)
        .function(
            "call",
            "GET",
            &provider.url("/api"),
            &[("authorization", "Bearer {{oauth.crm}}")],
            None,
            5000,
        )
        .function(
            "with_handle",
            "GET",
            &provider.url("/api"),
            &[("authorization", "Bearer {{args.auth}}")],
            None,
            5000,
        )
        .key(API_KEY, &["*"])
        .key(OTHER_KEY, &["*"])
        .build();
    snapshot
        .oauth_clients
        .insert("idp".into(), client(provider, &["127.0.0.1"]));
    snapshot
        .oauth_connections
        .insert("crm".into(), connection("crm", grant, status));
    snapshot
}

/// The first OAuth report (already received or arriving within 5 s) that `matches`.
async fn oauth_report(
    events: &mut EventReceiver,
    matches: impl Fn(&airlock_shared::oauth::OAuthConnectionReport) -> bool,
) -> airlock_shared::oauth::OAuthConnectionReport {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(report) = events.2.iter().find(|r| matches(r)) {
            return report.clone();
        }
        let message = tokio::time::timeout_at(deadline, events.0.recv())
            .await
            .expect("an OAuth report within 5 s")
            .expect("event channel open");
        if let DataPlaneMessage::OAuth(report) = message {
            events.2.push(report);
        }
    }
}

async fn json(response: reqwest::Response) -> serde_json::Value {
    response.json().await.unwrap()
}

#[tokio::test]
async fn client_credentials_token_is_fetched_once_injected_and_redacted() {
    let key = OpeningKey::generate();
    let provider = Provider::start().await;
    provider.state.slow.store(true, Ordering::SeqCst);
    let env = Uuid::new_v4();
    let snapshot = environment(&key, &provider, env, OAuthGrant::ClientCredentials);
    let (plane, mut events) =
        TestPlane::start_with_events(key.clone().into(), vec![snapshot]).await;

    // Many concurrent first uses: one token request (in-process single flight).
    let calls = (0..50).map(|_| plane.invoke("call", Some(API_KEY), ""));
    let responses = futures::future::join_all(calls).await;
    let token = provider.current().unwrap();
    for response in responses {
        assert_eq!(response.status(), 200);
        let body = response.text().await.unwrap();
        // The API echoes the token: the client gets it redacted.
        assert!(!body.contains(&token), "{body}");
        assert!(body.contains("[REDACTED"), "{body}");
    }
    assert_eq!(provider.token_requests(), 1);
    assert_eq!(provider.state.api_calls.load(Ordering::SeqCst), 50);

    // RFC 6749 client credentials, HTTP Basic, scopes and extra parameters.
    let (form, auth) = provider.last_request();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "read write");
    assert_eq!(form["audience"], "https://api.example");
    assert!(!form.contains_key("client_secret"));
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("airlock-client:{CLIENT_SECRET}"));
    assert_eq!(auth.as_deref(), Some(format!("Basic {basic}").as_str()));

    // A valid token is reused without asking again.
    assert_eq!(plane.invoke("call", Some(API_KEY), "").await.status(), 200);
    assert_eq!(provider.token_requests(), 1);

    // The report carries sealed tokens only; secret.used names the connection.
    let used = loop {
        let event = events.next().await;
        assert!(!serde_json::to_string(&event).unwrap().contains(&token));
        if event.kind == EventKind::SecretUsed {
            break event;
        }
    };
    assert_eq!(used.oauth_connection.as_deref(), Some("crm"));
    assert!(
        used.message.contains("OAuth tokens of `crm`"),
        "{}",
        used.message
    );
    let report = oauth_report(&mut events, |_| true).await;
    assert_eq!(report.status, ConnectionStatus::Connected);
    assert_eq!(report.tokens.as_ref().unwrap().generation, 1);
    assert!(!serde_json::to_string(&report).unwrap().contains(&token));
    plane.shutdown().await;
}

#[tokio::test]
async fn tokens_only_go_to_the_clients_hosts() {
    let key = OpeningKey::generate();
    let provider = Provider::start().await;
    let env = Uuid::new_v4();
    let mut snapshot = environment(&key, &provider, env, OAuthGrant::ClientCredentials);
    snapshot
        .oauth_clients
        .insert("idp".into(), client(&provider, &["api.example.com"]));
    let plane = TestPlane::start(&key, vec![snapshot]).await;

    let (status, code, message) =
        gateway_error(plane.invoke("call", Some(API_KEY), "").await).await;
    assert_eq!((status, code.as_str()), (403, "oauth_host_denied"));
    assert!(
        message.contains("`crm`") && message.contains("127.0.0.1"),
        "{message}"
    );
    // Nothing was sent anywhere: no token requested, no API call.
    assert_eq!(provider.token_requests(), 0);
    assert_eq!(provider.state.api_calls.load(Ordering::SeqCst), 0);
    plane.shutdown().await;
}

#[tokio::test]
async fn a_client_secret_not_bound_to_the_token_host_is_never_sent() {
    let key = OpeningKey::generate();
    let provider = Provider::start().await;
    let env = Uuid::new_v4();
    let mut snapshot = environment(&key, &provider, env, OAuthGrant::ClientCredentials);
    let bound_elsewhere = SnapshotBuilder::new(env, 1)
        .secret_bound(&key, "IDP_SECRET", CLIENT_SECRET, &["idp.example.com"])
        .build();
    snapshot.secrets = bound_elsewhere.secrets;
    let plane = TestPlane::start(&key, vec![snapshot]).await;

    let (status, code, message) =
        gateway_error(plane.invoke("call", Some(API_KEY), "").await).await;
    assert_eq!((status, code.as_str()), (502, "oauth_token_unavailable"));
    assert!(message.contains("IDP_SECRET"), "{message}");
    assert!(!message.contains(CLIENT_SECRET));
    assert_eq!(provider.token_requests(), 0);
    plane.shutdown().await;
}

#[tokio::test]
async fn a_refused_refresh_breaks_the_connection_and_stops_asking() {
    let key = OpeningKey::generate();
    let provider = Provider::start().await;
    let env = Uuid::new_v4();
    let mut snapshot = environment(&key, &provider, env, OAuthGrant::AuthorizationCode);
    // Connected earlier (generation 1), access token expired: the next use refreshes.
    let connection = snapshot.oauth_connections.get_mut("crm").unwrap();
    connection.status = ConnectionStatus::Connected;
    connection.tokens = Some(sealed_tokens(
        &key,
        env,
        connection.id,
        1,
        "old-access",
        Some("old-refresh"),
        chrono::Utc::now() - chrono::Duration::seconds(10),
    ));
    provider.set_mode(Mode::InvalidGrant);
    let (plane, mut events) =
        TestPlane::start_with_events(key.clone().into(), vec![snapshot]).await;

    let (status, code, message) =
        gateway_error(plane.invoke("call", Some(API_KEY), "").await).await;
    assert_eq!((status, code.as_str()), (502, "oauth_connection_broken"));
    assert!(
        message.contains("invalid_grant") && message.contains("startOAuthConnection"),
        "{message}"
    );
    let (form, _) = provider.last_request();
    assert_eq!(form["grant_type"], "refresh_token");
    assert_eq!(form["refresh_token"], "old-refresh");

    // Broken: later requests fail at once, the provider is not asked again.
    let (_, code, _) = gateway_error(plane.invoke("call", Some(API_KEY), "").await).await;
    assert_eq!(code, "oauth_connection_broken");
    assert_eq!(provider.token_requests(), 1);

    let failed = loop {
        let event = events.next().await;
        if event.kind == EventKind::OAuthRefreshFailed {
            break event;
        }
    };
    assert_eq!(failed.oauth_connection.as_deref(), Some("crm"));
    assert!(
        failed.message.contains("invalid_grant"),
        "{}",
        failed.message
    );
    let report = oauth_report(&mut events, |r| r.status == ConnectionStatus::Broken).await;
    assert!(report.error.as_deref().unwrap().contains("invalid_grant"));
    assert!(report.tokens.is_none());
    plane.shutdown().await;
}

#[tokio::test]
async fn transient_token_failures_are_shared_not_hammered() {
    let key = OpeningKey::generate();
    let provider = Provider::start().await;
    provider.set_mode(Mode::ServerError);
    let env = Uuid::new_v4();
    let snapshot = environment(&key, &provider, env, OAuthGrant::ClientCredentials);
    let plane = TestPlane::start(&key, vec![snapshot]).await;

    let calls = (0..20).map(|_| plane.invoke("call", Some(API_KEY), ""));
    for response in futures::future::join_all(calls).await {
        let (status, code, _) = gateway_error(response).await;
        assert_eq!((status, code.as_str()), (502, "oauth_token_unavailable"));
    }
    assert_eq!(provider.token_requests(), 1);
    // Not broken: once the provider is back (after the backoff), it works.
    provider.set_mode(Mode::Ok);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(plane.invoke("call", Some(API_KEY), "").await.status(), 200);
    assert_eq!(provider.token_requests(), 2);
    plane.shutdown().await;
}

#[tokio::test]
async fn a_refused_token_is_replaced_and_the_request_retried_once() {
    let key = OpeningKey::generate();
    let provider = Provider::start().await;
    let env = Uuid::new_v4();
    let snapshot = environment(&key, &provider, env, OAuthGrant::ClientCredentials);
    let plane = TestPlane::start(&key, vec![snapshot]).await;

    assert_eq!(plane.invoke("call", Some(API_KEY), "").await.status(), 200);
    assert_eq!(provider.token_requests(), 1);

    // The provider revokes the token before its expiry: every request gets a 401 once,
    // the data plane refreshes once for all of them and retries each.
    provider.revoke();
    provider.state.slow.store(true, Ordering::SeqCst);
    let calls = (0..20).map(|_| plane.invoke("call", Some(API_KEY), ""));
    for response in futures::future::join_all(calls).await {
        assert_eq!(response.status(), 200);
    }
    assert_eq!(provider.token_requests(), 2);
    assert_eq!(provider.state.api_calls.load(Ordering::SeqCst), 1 + 20 + 20);

    // A 401 that persists with a fresh token: one retry only, then the upstream's answer.
    provider.state.slow.store(false, Ordering::SeqCst);
    provider.set_mode(Mode::ServerError);
    provider.revoke();
    let before = provider.state.api_calls.load(Ordering::SeqCst);
    let response = plane.invoke("call", Some(API_KEY), "").await;
    // The replacement failed (provider down): the gateway says why.
    let (status, code, _) = gateway_error(response).await;
    assert_eq!((status, code.as_str()), (502, "oauth_token_unavailable"));
    assert_eq!(provider.state.api_calls.load(Ordering::SeqCst), before + 1);
    plane.shutdown().await;
}

#[tokio::test]
async fn a_persistent_401_is_retried_once_then_returned() {
    let key = OpeningKey::generate();
    let provider = Provider::start().await;
    let env = Uuid::new_v4();
    let mut snapshot = environment(&key, &provider, env, OAuthGrant::ClientCredentials);
    // An API that refuses everything.
    let upstream = Upstream::start().await;
    snapshot = {
        let extra = SnapshotBuilder::new(env, 1)
            .function(
                "refused",
                "POST",
                &upstream.url("/status/401"),
                &[("authorization", "Bearer {{oauth.crm}}")],
                Some(r#"{"n": "{{args.n}}"}"#),
                5000,
            )
            .build();
        snapshot.functions.extend(extra.functions);
        snapshot
    };
    let mut client = client(&provider, &["127.0.0.1"]);
    client.allowed_hosts = vec![HostPattern::parse("127.0.0.1").unwrap()];
    snapshot.oauth_clients.insert("idp".into(), client);
    let plane = TestPlane::start(&key, vec![snapshot]).await;

    let response = plane
        .invoke("refused", Some(API_KEY), r#"{"n": "7"}"#)
        .await;
    assert_eq!(response.status(), 401);
    // Two attempts upstream, each with the rendered body; two tokens.
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, br#"{"n": "7"}"#);
    assert_ne!(
        seen[0].header("authorization"),
        seen[1].header("authorization")
    );
    assert_eq!(provider.token_requests(), 2);
    plane.shutdown().await;
}

#[tokio::test]
async fn handles_stand_for_a_connection_of_one_key() {
    let key = OpeningKey::generate();
    let provider = Provider::start().await;
    let env = Uuid::new_v4();
    let snapshot = environment(&key, &provider, env, OAuthGrant::ClientCredentials);
    let plane = TestPlane::start(&key, vec![snapshot]).await;
    let issue = |api_key: Option<&'static str>, name: &'static str| {
        let mut request = plane
            .client
            .post(format!("{}/v1/oauth/connections/{name}/handle", plane.base));
        if let Some(api_key) = api_key {
            request = request.bearer_auth(api_key);
        }
        request.send()
    };

    let response = issue(Some(API_KEY), "crm").await.unwrap();
    assert_eq!(response.status(), 200);
    let body = json(response).await;
    let handle = body["handle"].as_str().unwrap().to_string();
    assert_eq!(body["connection"], "crm");
    let expires_at: chrono::DateTime<chrono::Utc> =
        body["expiresAt"].as_str().unwrap().parse().unwrap();
    assert!(expires_at > chrono::Utc::now() + chrono::Duration::minutes(59));

    // The handle stands for the token; the application never sees the token.
    let args = serde_json::json!({ "auth": { "$oauth": handle } }).to_string();
    let response = plane.invoke("with_handle", Some(API_KEY), &args).await;
    assert_eq!(response.status(), 200);
    let token = provider.current().unwrap();
    assert!(!response.text().await.unwrap().contains(&token));
    assert!(!handle.contains(&token));

    // Another key of the same environment cannot use it; a forged one is refused.
    let response = plane.invoke("with_handle", Some(OTHER_KEY), &args).await;
    let (status, code, _) = gateway_error(response).await;
    assert_eq!((status, code.as_str()), (400, "invalid_oauth_handle"));
    let mut forged = handle.clone();
    forged.pop();
    forged.push(if handle.ends_with('A') { 'B' } else { 'A' });
    let forged = serde_json::json!({ "auth": { "$oauth": forged } }).to_string();
    let (status, code, _) =
        gateway_error(plane.invoke("with_handle", Some(API_KEY), &forged).await).await;
    assert_eq!((status, code.as_str()), (400, "invalid_oauth_handle"));

    // Issuing needs a key and an existing connection.
    let (status, code, _) = gateway_error(issue(None, "crm").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    let (status, code, _) = gateway_error(issue(Some(API_KEY), "nope").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (404, "oauth_connection_not_found"));

    // A data plane with another key (another installation) does not accept it.
    let other_key = OpeningKey::generate();
    let other_snapshot = environment(&other_key, &provider, env, OAuthGrant::ClientCredentials);
    let other = TestPlane::start(&other_key, vec![other_snapshot]).await;
    let (_, code, _) = gateway_error(other.invoke("with_handle", Some(API_KEY), &args).await).await;
    assert_eq!(code, "invalid_oauth_handle");
    other.shutdown().await;
    plane.shutdown().await;
}

/// A pending authorization of connection `crm` for `state`, with its PKCE verifier sealed.
fn authorization(
    key: &OpeningKey,
    env: Uuid,
    state: &str,
    verifier: &str,
    expires_in: chrono::Duration,
) -> PendingAuthorization {
    let id = Uuid::new_v4();
    let name = pkce_identity_name(id);
    let identity = SecretIdentity {
        tenant_id: TENANT,
        environment_id: env,
        name: &name,
        version: 1,
    };
    PendingAuthorization {
        id,
        connection: "crm".into(),
        state_hash: state_hash(state),
        code_verifier: key.sealing_key().seal(identity, verifier).unwrap(),
        redirect_uri: "http://127.0.0.1:9/v1/oauth/callback".into(),
        expires_at: chrono::Utc::now() + expires_in,
    }
}

#[tokio::test]
async fn the_callback_completes_an_authorization_once() {
    let key = OpeningKey::generate();
    let provider = Provider::start().await;
    let env = Uuid::new_v4();
    let mut snapshot = environment(&key, &provider, env, OAuthGrant::AuthorizationCode);
    let verifier = "v".repeat(64);
    snapshot.oauth_authorizations = vec![
        authorization(
            &key,
            env,
            "good-state",
            &verifier,
            chrono::Duration::minutes(10),
        ),
        authorization(
            &key,
            env,
            "expired-state",
            &verifier,
            chrono::Duration::seconds(-1),
        ),
        authorization(
            &key,
            env,
            "denied-state",
            &verifier,
            chrono::Duration::minutes(10),
        ),
    ];
    let good_id = snapshot.oauth_authorizations[0].id;
    let denied_id = snapshot.oauth_authorizations[2].id;
    let (plane, mut events) =
        TestPlane::start_with_events(key.clone().into(), vec![snapshot]).await;
    let callback = |query: &str| {
        plane
            .client
            .get(format!("{}/v1/oauth/callback?{query}", plane.base))
            .send()
    };

    // Not connected yet.
    let (status, code, _) = gateway_error(plane.invoke("call", Some(API_KEY), "").await).await;
    assert_eq!((status, code.as_str()), (409, "oauth_not_connected"));

    // Forged, expired and provider-refused states: 400, never echoing code or state.
    for query in [
        "code=the-code-1&state=forged-state",
        "code=the-code-1&state=expired-state",
        "error=access_denied&error_description=user+said+no&state=denied-state",
        "code=the-code-1",
    ] {
        let response = callback(query).await.unwrap();
        assert_eq!(response.status(), 400, "{query}");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let page = response.text().await.unwrap();
        for secret in [
            "the-code-1",
            "forged-state",
            "expired-state",
            "denied-state",
        ] {
            assert!(!page.contains(secret), "{page}");
        }
    }
    assert_eq!(provider.token_requests(), 0);

    // The real one: code exchanged with the verifier and redirect URI.
    let response = callback("code=the-code-2&state=good-state").await.unwrap();
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert!(page.contains("close this window"), "{page}");
    assert!(!page.contains("the-code-2") && !page.contains("good-state"));
    assert_eq!(provider.token_requests(), 1);
    let (form, auth) = provider.last_request();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "the-code-2");
    assert_eq!(form["code_verifier"], verifier);
    assert_eq!(form["redirect_uri"], "http://127.0.0.1:9/v1/oauth/callback");
    assert!(auth.unwrap().starts_with("Basic "));

    // The connection works now.
    assert_eq!(plane.invoke("call", Some(API_KEY), "").await.status(), 200);
    assert_eq!(provider.token_requests(), 1);

    // A replay is refused.
    let response = callback("code=the-code-2&state=good-state").await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(provider.token_requests(), 1);

    let mut kinds = Vec::new();
    loop {
        let event = events.next().await;
        kinds.push(event.kind);
        if kinds
            .iter()
            .filter(|k| **k == EventKind::OAuthCallbackRefused)
            .count()
            == 5
        {
            break;
        }
    }
    assert!(kinds.contains(&EventKind::OAuthConnected), "{kinds:?}");
    let report = oauth_report(&mut events, |r| r.status == ConnectionStatus::Connected).await;
    assert_eq!(report.authorization_id, Some(good_id));
    assert_eq!(report.tokens.as_ref().unwrap().generation, 1);
    // The provider's refusal was reported too, with its error and authorization.
    let denied = oauth_report(&mut events, |r| {
        r.error
            .as_deref()
            .is_some_and(|e| e.contains("access_denied"))
    })
    .await;
    assert_eq!(denied.authorization_id, Some(denied_id));
    plane.shutdown().await;
}

/// Tokens sealed as a data plane seals them.
fn sealed_tokens(
    key: &OpeningKey,
    env: Uuid,
    connection_id: Uuid,
    generation: i64,
    access: &str,
    refresh: Option<&str>,
    expires_at: chrono::DateTime<chrono::Utc>,
) -> SealedTokenSet {
    let seal = |kind, value: &str| {
        let name = token_identity_name(connection_id, kind);
        key.sealing_key()
            .seal(token_identity(TENANT, env, &name, generation), value)
            .unwrap()
    };
    SealedTokenSet {
        generation,
        access_token: seal(TokenKind::Access, access),
        refresh_token: refresh.map(|r| seal(TokenKind::Refresh, r)),
        expires_at: Some(expires_at),
        obtained_at: chrono::Utc::now(),
    }
}

const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Two data planes sharing `snapshot` through Redis under a fresh prefix.
struct RedisPlanes {
    names: RedisNames,
    redis: redis::aio::MultiplexedConnection,
    planes: Vec<(airlock_data_plane::DataPlaneHandle, String, reqwest::Client)>,
    reports: tokio::sync::mpsc::UnboundedReceiver<DataPlaneMessage>,
    env: Uuid,
    connection_id: Uuid,
}

impl RedisPlanes {
    async fn start(key: &OpeningKey, snapshot: &EnvironmentSnapshot) -> Self {
        let env = snapshot.environment_id;
        let connection_id = snapshot.oauth_connections["crm"].id;
        let names = RedisNames::new(format!("airlock-test-oauth-{}", Uuid::new_v4().simple()));
        let mut redis = redis::Client::open(REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("Redis at 127.0.0.1:6379");
        redis::pipe()
            .atomic()
            .set(
                names.environment_snapshot(&env),
                serde_json::to_string(snapshot).unwrap(),
            )
            .hset(names.snapshot_index(), env.to_string(), snapshot.revision)
            .query_async::<()>(&mut redis)
            .await
            .unwrap();
        let (reports_tx, reports) = tokio::sync::mpsc::unbounded_channel();
        let mut planes = Vec::new();
        for _ in 0..2 {
            let handle = start_plane(
                key.clone(),
                ConfigSource::Redis {
                    url: REDIS_URL.into(),
                    names: names.clone(),
                },
                None,
                EventSink::InProcess(reports_tx.clone()),
            )
            .await;
            let base = format!("http://{}", handle.listen_addr());
            let client = reqwest::Client::new();
            eventually(Duration::from_secs(5), || {
                let (client, base) = (client.clone(), base.clone());
                async move {
                    client
                        .get(format!("{base}/readyz"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200)
                }
            })
            .await;
            planes.push((handle, base, client));
        }
        Self {
            names,
            redis,
            planes,
            reports,
            env,
            connection_id,
        }
    }

    /// `n` concurrent invocations of `call`, alternating between the planes; their statuses.
    async fn invoke_many(&self, n: usize) -> Vec<u16> {
        let calls = (0..n).map(|i| {
            let (_, base, client) = &self.planes[i % 2];
            client
                .post(format!("{base}/v1/functions/call/invoke"))
                .bearer_auth(API_KEY)
                .send()
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.unwrap().status().as_u16())
            .collect()
    }

    /// The shared record's generation and JSON.
    async fn record(&mut self) -> (Option<String>, Option<String>) {
        redis::cmd("HMGET")
            .arg(self.names.oauth_tokens(&self.connection_id))
            .arg("generation")
            .arg("record")
            .query_async(&mut self.redis)
            .await
            .unwrap()
    }

    /// OAuth reports received so far.
    fn reports(&mut self) -> Vec<airlock_shared::oauth::OAuthConnectionReport> {
        let mut reports = Vec::new();
        while let Ok(message) = self.reports.try_recv() {
            if let DataPlaneMessage::OAuth(report) = message {
                reports.push(report);
            }
        }
        reports
    }

    async fn stop(mut self) {
        for (handle, _, _) in self.planes.drain(..) {
            tokio::task::spawn_blocking(move || handle.shutdown())
                .await
                .unwrap();
        }
        redis::cmd("DEL")
            .arg(self.names.environment_snapshot(&self.env))
            .arg(self.names.snapshot_index())
            .arg(self.names.oauth_tokens(&self.connection_id))
            .arg(self.names.oauth_refresh_lock(&self.connection_id))
            .query_async::<()>(&mut self.redis)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn two_data_planes_over_redis_ask_for_a_token_once() {
    let key = OpeningKey::generate();
    let provider = Provider::start().await;
    provider.state.slow.store(true, Ordering::SeqCst);
    // Valid for 2 s: the 60 s refresh skew is capped at half that, so it is refreshed
    // after 1 s.
    *provider.state.expires_in.lock().unwrap() = Some(2);
    let env = Uuid::new_v4();
    let snapshot = environment(&key, &provider, env, OAuthGrant::ClientCredentials);
    let mut planes = RedisPlanes::start(&key, &snapshot).await;

    // 200 concurrent first uses over two processes: one token request.
    assert!(planes.invoke_many(200).await.iter().all(|s| *s == 200));
    assert_eq!(provider.token_requests(), 1);

    // Redis holds the sealed tokens only, at generation 1.
    let (generation, record) = planes.record().await;
    assert_eq!(generation.as_deref(), Some("1"));
    let token = provider.current().unwrap();
    assert!(!record.unwrap().contains(&token));

    // At expiry, 200 more over both planes: one more token request, generation 2, which
    // the other plane adopted (the API only accepts the newest token).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(planes.invoke_many(200).await.iter().all(|s| *s == 200));
    assert_eq!(provider.token_requests(), 2);
    assert_eq!(planes.record().await.0.as_deref(), Some("2"));

    let reports = planes.reports();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert!(reports
        .iter()
        .all(|r| r.status == ConnectionStatus::Connected && r.tokens.is_some()));
    planes.stop().await;
}

#[tokio::test]
async fn a_connection_broken_on_one_plane_is_broken_on_all() {
    let key = OpeningKey::generate();
    let provider = Provider::start().await;
    provider.set_mode(Mode::InvalidGrant);
    provider.state.slow.store(true, Ordering::SeqCst);
    let env = Uuid::new_v4();
    let snapshot = environment(&key, &provider, env, OAuthGrant::ClientCredentials);
    let mut planes = RedisPlanes::start(&key, &snapshot).await;

    assert!(planes.invoke_many(40).await.iter().all(|s| *s == 502));
    assert_eq!(provider.token_requests(), 1);
    let (generation, record) = planes.record().await;
    assert_eq!(generation.as_deref(), Some("1"));
    let record: serde_json::Value = serde_json::from_str(&record.unwrap()).unwrap();
    assert_eq!(record["status"], "broken");
    assert!(record["error"].as_str().unwrap().contains("invalid_grant"));

    // Both planes keep refusing without asking the provider again.
    provider.set_mode(Mode::Ok);
    assert!(planes.invoke_many(10).await.iter().all(|s| *s == 502));
    assert_eq!(provider.token_requests(), 1);
    let broken: Vec<_> = planes
        .reports()
        .into_iter()
        .filter(|r| r.status == ConnectionStatus::Broken)
        .collect();
    assert_eq!(broken.len(), 1);
    planes.stop().await;
}

#[tokio::test]
async fn a_broken_connection_is_tried_again_once_the_control_plane_resets_it() {
    let key = OpeningKey::generate();
    let provider = Provider::start().await;
    provider.set_mode(Mode::InvalidGrant);
    let env = Uuid::new_v4();
    let snapshot = environment(&key, &provider, env, OAuthGrant::ClientCredentials);
    let plane = TestPlane::start(&key, vec![snapshot.clone()]).await;
    let (_, code, _) = gateway_error(plane.invoke("call", Some(API_KEY), "").await).await;
    assert_eq!(code, "oauth_connection_broken");

    // The control plane learns it is broken and republishes it so: still broken, no request.
    let mut broken = snapshot.clone();
    broken.revision = 2;
    broken.oauth_connections.get_mut("crm").unwrap().status = ConnectionStatus::Broken;
    apply(&plane, broken.clone()).await;
    provider.set_mode(Mode::Ok);
    let (_, code, _) = gateway_error(plane.invoke("call", Some(API_KEY), "").await).await;
    assert_eq!(code, "oauth_connection_broken");
    assert_eq!(provider.token_requests(), 1);

    // Reset (e.g. the client secret was fixed): the next use asks again.
    let mut reset = broken;
    reset.revision = 3;
    reset.oauth_connections.get_mut("crm").unwrap().status = ConnectionStatus::Pending;
    apply(&plane, reset).await;
    assert_eq!(plane.invoke("call", Some(API_KEY), "").await.status(), 200);
    assert_eq!(provider.token_requests(), 2);
    plane.shutdown().await;
}

/// Hand `snapshot` to the plane and wait until it is live.
async fn apply(plane: &TestPlane, snapshot: EnvironmentSnapshot) {
    let (applied, done) = tokio::sync::oneshot::channel();
    plane
        .sender
        .send(airlock_data_plane::SnapshotDelivery {
            snapshot,
            applied: Some(applied),
        })
        .unwrap();
    done.await.unwrap();
}

#[tokio::test]
async fn a_callback_is_single_use_across_planes_and_its_tokens_are_shared() {
    let key = OpeningKey::generate();
    let provider = Provider::start().await;
    let env = Uuid::new_v4();
    let mut snapshot = environment(&key, &provider, env, OAuthGrant::AuthorizationCode);
    let verifier = "w".repeat(50);
    snapshot.oauth_authorizations = vec![authorization(
        &key,
        env,
        "state-x",
        &verifier,
        chrono::Duration::minutes(10),
    )];
    let mut planes = RedisPlanes::start(&key, &snapshot).await;
    let callback = |plane: usize| {
        let (_, base, client) = &planes.planes[plane];
        client
            .get(format!("{base}/v1/oauth/callback?code=c1&state=state-x"))
            .send()
    };

    assert_eq!(callback(0).await.unwrap().status(), 200);
    // The same callback on the other plane (a replay): refused there too.
    assert_eq!(callback(1).await.unwrap().status(), 400);
    assert_eq!(provider.token_requests(), 1);
    assert_eq!(planes.record().await.0.as_deref(), Some("1"));

    // The other plane uses the tokens the first one stored.
    assert!(planes.invoke_many(10).await.iter().all(|s| *s == 200));
    assert_eq!(provider.token_requests(), 1);
    let claim = planes.names.oauth_state_claim(&state_hash("state-x"));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&claim)
        .query_async(&mut planes.redis)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 600_000, "{ttl}");
    let _: () = redis::cmd("DEL")
        .arg(&claim)
        .query_async(&mut planes.redis)
        .await
        .unwrap();
    planes.stop().await;
}

#[tokio::test]
async fn a_transient_failure_is_shared_by_every_plane() {
    let key = OpeningKey::generate();
    let provider = Provider::start().await;
    provider.set_mode(Mode::ServerError);
    provider.state.slow.store(true, Ordering::SeqCst);
    let env = Uuid::new_v4();
    let snapshot = environment(&key, &provider, env, OAuthGrant::ClientCredentials);
    let mut planes = RedisPlanes::start(&key, &snapshot).await;

    // Both planes' requests within the second after the failure share it: one token request.
    assert!(planes.invoke_many(40).await.iter().all(|s| *s == 502));
    assert_eq!(provider.token_requests(), 1);
    assert!(planes.invoke_many(10).await.iter().all(|s| *s == 502));
    assert_eq!(provider.token_requests(), 1);
    // Nothing broken, nothing stored; after the backoff the provider is asked again.
    assert_eq!(planes.record().await.0, None);
    provider.set_mode(Mode::Ok);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(planes.invoke_many(10).await.iter().all(|s| *s == 200));
    assert_eq!(provider.token_requests(), 2);
    planes.stop().await;
}

#[tokio::test]
async fn unknown_connections_fail_closed() {
    let key = OpeningKey::generate();
    let provider = Provider::start().await;
    let env = Uuid::new_v4();
    let mut snapshot = environment(&key, &provider, env, OAuthGrant::ClientCredentials);
    let ghost = SnapshotBuilder::new(env, 1)
        .function(
            "ghost",
            "GET",
            &provider.url("/api"),
            &[("authorization", "Bearer {{oauth.ghost}}")],
            None,
            5000,
        )
        .build();
    snapshot.functions.extend(ghost.functions);
    let plane = TestPlane::start(&key, vec![snapshot]).await;
    let (status, code, message) =
        gateway_error(plane.invoke("ghost", Some(API_KEY), "").await).await;
    assert_eq!((status, code.as_str()), (500, "oauth_connection_missing"));
    assert!(message.contains("`ghost`"), "{message}");
    assert_eq!(provider.state.api_calls.load(Ordering::SeqCst), 0);
    plane.shutdown().await;
}
