//! OAuth without code, end to end against a real OAuth 2 / OpenID server (panva's
//! oidc-provider) with short token lifetimes, a real upstream (httpbin's `/bearer`), and the
//! real binaries:
//! - client credentials: discovered endpoints, token obtained on first use, injected, echoed
//!   token redacted, refreshed before expiry; handles in invoke arguments; host binding;
//! - authorization code + PKCE driven through the provider's login, the callback refusing
//!   replayed and forged states, refresh with refresh-token rotation, then `invalid_grant`
//!   breaking the connection with an event and an invoke error that names it;
//! - 200 concurrent invokes across two data-plane processes at expiry: one token request;
//! - tokens, client secrets, codes and states never appear in logs, GraphQL, events, Redis
//!   or the database.

use std::time::{Duration, Instant};

use airlock_e2e::oidc::{decode_jwt_unverified, OidcClient, OidcConfig, OidcProvider, Ttl};
use airlock_e2e::{free_port, is_body_mask, Airlock, AirlockOptions, Httpbin, PostgresDb, TestEnv};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// Access token lifetime at the provider, seconds.
const TOKEN_TTL: u64 = 4;
/// Airlock refreshes this many seconds before expiry.
const SKEW: u64 = 1;

const CREATE_CLIENT: &str = "mutation($input: CreateOAuthClientInput!) {
    createOAuthClient(input: $input) { id name issuer tokenUrl authorizeUrl clientSecret } }";
const CREATE_CONNECTION: &str = "mutation($c: ID!, $name: String!) {
    createOAuthConnection(input: {clientId: $c, name: $name}) { id name status grant } }";
const START_CONNECTION: &str = "mutation($e: ID!, $c: ID!, $name: String!) {
    startOAuthConnection(input: {environmentId: $e, clientId: $c, connection: $name}) {
      authorizeUrl expiresAt connection { id name status grant } } }";
const CONNECTIONS: &str = "query($e: ID!) { oauthConnections(environmentId: $e) {
    id name status grant expiresAt lastRefreshAt lastError connectedAt tokenGeneration } }";
const EVENTS: &str = "query($e: ID!) { events(filter: {environmentId: $e}, first: 500) {
    nodes { kind message status function oauthConnection secrets } } }";

/// A function `name` calling httpbin's `/bearer` at `base` with `authorization`.
async fn bearer_function(
    airlock: &Airlock,
    env: &TestEnv,
    name: &str,
    base: &str,
    authorization: &str,
) -> Result<()> {
    airlock
        .create_function(
            env,
            json!({"name": name, "method": "GET", "url": format!("{base}/bearer"),
               "headers": [{"name": "Authorization", "value": authorization}]}),
        )
        .await
}

/// An OAuth client configured by discovery from `idp`, its secret in vault secret
/// `secret_name`, tokens allowed to 127.0.0.1; returns its id.
async fn oauth_client(
    airlock: &Airlock,
    env: &TestEnv,
    idp: &OidcProvider,
    name: &str,
    client_id: &str,
    secret_name: &str,
    scopes: &[&str],
) -> Result<String> {
    let data = airlock
        .graphql_ok(
            CREATE_CLIENT,
            json!({"input": {
                "environmentId": env.env_id, "name": name, "issuer": idp.issuer(),
                "clientId": client_id, "clientSecret": secret_name, "scopes": scopes,
                "allowedHosts": ["127.0.0.1"], "refreshSkewSeconds": SKEW,
            }}),
        )
        .await?;
    let client = &data["createOAuthClient"];
    // Discovery found the provider's endpoints.
    assert_eq!(client["tokenUrl"], idp.token_endpoint(), "{client}");
    assert_eq!(client["authorizeUrl"], idp.authorization_endpoint());
    assert_eq!(client["clientSecret"], secret_name);
    Ok(client["id"].as_str().unwrap().to_string())
}

/// The connection named `name`, as GraphQL shows it.
async fn connection(airlock: &Airlock, env: &TestEnv, name: &str) -> Result<Value> {
    let data = airlock
        .graphql_ok(CONNECTIONS, json!({"e": env.env_id}))
        .await?;
    data["oauthConnections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .with_context(|| format!("no connection {name}"))
}

/// Poll the connection until `done` holds (reports reach the control plane asynchronously).
async fn connection_until(
    airlock: &Airlock,
    env: &TestEnv,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let started = Instant::now();
    loop {
        let state = connection(airlock, env, name).await?;
        if done(&state) {
            return Ok(state);
        }
        if started.elapsed() > Duration::from_secs(5) {
            bail!("connection {name}: {what} not seen within 5 s: {state}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sleep until Airlock must refresh a token that expires at `expires_at`.
async fn sleep_until_refresh_due(expires_at: &Value) {
    let expires_at: DateTime<Utc> = expires_at.as_str().unwrap().parse().unwrap();
    let due =
        expires_at - chrono::Duration::seconds(SKEW as i64) + chrono::Duration::milliseconds(300);
    if let Ok(wait) = (due - Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
}

/// Events of the environment, polled until `kind` has appeared `count` times.
async fn events_until(
    airlock: &Airlock,
    env: &TestEnv,
    kind: &str,
    count: usize,
) -> Result<Vec<Value>> {
    let started = Instant::now();
    loop {
        let data = airlock.graphql_ok(EVENTS, json!({"e": env.env_id})).await?;
        let events: Vec<Value> = data["events"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .cloned()
            .collect();
        if events.len() >= count {
            return Ok(events);
        }
        if started.elapsed() > Duration::from_secs(5) {
            bail!("{count} {kind} events not seen within 5 s: {data}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn error_of(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
        body["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

/// The bearer tokens httpbin received on `/bearer`, in order.
fn upstream_tokens(httpbin: &Httpbin) -> Vec<String> {
    httpbin
        .requests()
        .into_iter()
        .filter(|(line, _)| line.starts_with("GET /bearer"))
        .filter_map(|(_, auth)| auth.strip_prefix("Bearer ").map(str::to_string))
        .collect()
}

/// Invoke and check the upstream saw a bearer token while the client only saw its mask.
async fn invoke_ok(
    airlock: &Airlock,
    data_url: &str,
    function: &str,
    key: &str,
    args: Value,
) -> Result<()> {
    let resp = airlock.invoke_at(data_url, function, key, args).await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if status != 200 {
        bail!("{function}: {status} {body}");
    }
    assert_eq!(body["authenticated"], true, "{body}");
    let echoed = body["token"].as_str().unwrap();
    assert!(is_body_mask(echoed), "the echoed token is redacted: {body}");
    Ok(())
}

/// Everything Airlock stored on disk under its state directory (the SQLite database...).
fn state_files(airlock: &Airlock) -> Result<Vec<u8>> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(airlock.data_dir.path().join("state"))? {
        let path = entry?.path();
        if path.is_file() {
            all.extend(std::fs::read(&path)?);
        }
    }
    Ok(all)
}

/// Airlock's logs and what GraphQL shows of the environment: where a token must never be.
async fn observable(airlock: &Airlock, env: &TestEnv) -> Result<String> {
    let mut seen = airlock.logs();
    for query in [
        CONNECTIONS,
        EVENTS,
        "query($e: ID!) { oauthClients(environmentId: $e) { id name clientId clientSecret tokenUrl } }",
        "query($e: ID!) { auditLog(filter: {environmentId: $e}, first: 500) { entries { action detail targetName } } }",
    ] {
        seen.push_str(&airlock.graphql_ok(query, json!({"e": env.env_id})).await?.to_string());
    }
    Ok(seen)
}

fn assert_absent(haystack: &[u8], needles: &[String], where_: &str) {
    for needle in needles {
        assert!(
            !haystack
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            "a token or secret ({} bytes) leaked into {where_}",
            needle.len()
        );
    }
}

fn short_ttl() -> Ttl {
    Ttl {
        access_token: TOKEN_TTL,
        client_credentials: TOKEN_TTL,
        ..Ttl::default()
    }
}

/// Client credentials end to end in `airlock dev`, plus handles and host binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_are_obtained_injected_and_refreshed() -> Result<()> {
    let idp_dir = tempfile::tempdir()?;
    let client_secret = format!("canary-cc-{}", uuid::Uuid::new_v4().simple());
    let idp = OidcProvider::start(
        idp_dir.path(),
        OidcConfig {
            clients: vec![OidcClient::service("airlock-svc", &client_secret).scope("api:read")],
            ttl: short_ttl(),
            ..OidcConfig::default()
        },
    )
    .await?;
    let airlock = Airlock::dev().await?;
    let httpbin = Httpbin::start(airlock.data_dir.path()).await?;
    let env = airlock.test_env("oauth-cc").await?;
    airlock
        .set_secret(&env, "CRM_CLIENT_SECRET", &client_secret)
        .await?;
    let client = oauth_client(
        &airlock,
        &env,
        &idp,
        "crm",
        "airlock-svc",
        "CRM_CLIENT_SECRET",
        &["api:read"],
    )
    .await?;
    let created = airlock
        .graphql_ok(CREATE_CONNECTION, json!({"c": client, "name": "crm"}))
        .await?;
    assert_eq!(created["createOAuthConnection"]["status"], "PENDING");
    assert_eq!(
        created["createOAuthConnection"]["grant"],
        "CLIENT_CREDENTIALS"
    );
    bearer_function(
        &airlock,
        &env,
        "whoami",
        &httpbin.url,
        "Bearer {{oauth.crm}}",
    )
    .await?;
    idp.reset_token_requests().await?;

    // First use: one token request, the JWT goes upstream, its echo is redacted.
    invoke_ok(&airlock, &airlock.data_url, "whoami", &env.key, json!({})).await?;
    for _ in 0..5 {
        invoke_ok(&airlock, &airlock.data_url, "whoami", &env.key, json!({})).await?;
    }
    assert_eq!(
        idp.token_requests().await?.requests("client_credentials"),
        1
    );
    let first = httpbin.settled_requests().await;
    let tokens = upstream_tokens(&httpbin);
    assert_eq!(tokens.len(), 6, "{first:?}");
    assert!(tokens.iter().all(|t| t == &tokens[0]), "one token, reused");
    let (_, claims) = decode_jwt_unverified(&tokens[0])?;
    assert_eq!(claims["client_id"], "airlock-svc");
    assert_eq!(claims["aud"], idp.audience());
    let state = connection_until(&airlock, &env, "crm", "CONNECTED", |c| {
        c["status"] == "CONNECTED" && c["tokenGeneration"] == 1
    })
    .await?;
    // Each token use is audited under the connection's name.
    let started = Instant::now();
    let audit = loop {
        let audit = airlock
            .graphql_ok(
                "query($e: ID!) { auditLog(filter: {environmentId: $e, action: \"secret.used\"}, first: 50) { entries { targetName detail } } }",
                json!({"e": env.env_id}),
            )
            .await?;
        if !audit["auditLog"]["entries"].as_array().unwrap().is_empty() {
            break audit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "token uses are audited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let entries = audit["auditLog"]["entries"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .all(|e| e["targetName"] == "crm" && e["detail"]["oauthConnection"] == "crm"),
        "{audit}"
    );
    assert!(
        state["lastRefreshAt"].is_string() && state["lastError"].is_null(),
        "{state}"
    );

    // Before expiry (minus the skew) it is refreshed: a new token, generation 2.
    sleep_until_refresh_due(&state["expiresAt"]).await;
    invoke_ok(&airlock, &airlock.data_url, "whoami", &env.key, json!({})).await?;
    assert_eq!(
        idp.token_requests().await?.requests("client_credentials"),
        2
    );
    httpbin.settled_requests().await;
    let tokens = upstream_tokens(&httpbin);
    assert_ne!(
        tokens.last(),
        tokens.first(),
        "a fresh token after the refresh"
    );
    connection_until(&airlock, &env, "crm", "generation 2", |c| {
        c["tokenGeneration"] == 2
    })
    .await?;

    // A handle: the application references the connection without ever holding the token.
    let http = reqwest::Client::new();
    let handle_url = format!("{}/v1/oauth/connections/crm/handle", airlock.data_url);
    let resp = http.post(&handle_url).bearer_auth(&env.key).send().await?;
    assert_eq!(resp.status(), 200);
    let handle_body = resp.text().await?;
    let handle: Value = serde_json::from_str(&handle_body)?;
    let handle = handle["handle"].as_str().context("a handle")?.to_string();
    bearer_function(
        &airlock,
        &env,
        "with_handle",
        &httpbin.url,
        "Bearer {{args.auth}}",
    )
    .await?;
    invoke_ok(
        &airlock,
        &airlock.data_url,
        "with_handle",
        &env.key,
        json!({"auth": {"$oauth": handle}}),
    )
    .await?;
    // Only with the key it was issued to, and only unmodified.
    let other_key = airlock.create_api_key(&env.env_id, "other").await?;
    let resp = airlock
        .invoke(
            "with_handle",
            &other_key,
            json!({"auth": {"$oauth": handle}}),
        )
        .await?;
    assert_eq!(error_of(resp).await.1, "invalid_oauth_handle");
    let mut tampered = handle.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered)?;
    let resp = airlock
        .invoke(
            "with_handle",
            &env.key,
            json!({"auth": {"$oauth": tampered}}),
        )
        .await?;
    assert_eq!(error_of(resp).await.1, "invalid_oauth_handle");
    let resp = http.post(&handle_url).send().await?;
    assert_eq!(resp.status(), 401, "a handle needs an API key");

    // Tokens only go to the client's allowed hosts: `localhost` is not one of them.
    let elsewhere = httpbin.url.replace("127.0.0.1", "localhost");
    bearer_function(&airlock, &env, "leak", &elsewhere, "Bearer {{oauth.crm}}").await?;
    let before = httpbin.settled_requests().await.len();
    let (status, code, _) = error_of(airlock.invoke("leak", &env.key, json!({})).await?).await;
    assert_eq!((status, code.as_str()), (403, "oauth_host_denied"));
    assert_eq!(
        httpbin.settled_requests().await.len(),
        before,
        "nothing was sent"
    );

    // A wrong client secret: the provider refuses the next token request (invalid_client),
    // the connection breaks; once the secret is fixed, a reset brings it back.
    let wrong_secret = format!("canary-wrong-{}", uuid::Uuid::new_v4().simple());
    airlock
        .set_secret(&env, "CRM_CLIENT_SECRET", &wrong_secret)
        .await?;
    let state = connection(&airlock, &env, "crm").await?;
    sleep_until_refresh_due(&state["expiresAt"]).await;
    let (status, code, message) =
        error_of(airlock.invoke("whoami", &env.key, json!({})).await?).await;
    assert_eq!(
        (status, code.as_str()),
        (502, "oauth_connection_broken"),
        "{message}"
    );
    assert!(message.contains("invalid_client"), "{message}");
    let broken =
        connection_until(&airlock, &env, "crm", "BROKEN", |c| c["status"] == "BROKEN").await?;
    airlock
        .set_secret(&env, "CRM_CLIENT_SECRET", &client_secret)
        .await?;
    let reset = airlock
        .graphql_ok(
            "mutation($c: ID!) { resetOAuthConnection(input: {id: $c}) { status } }",
            json!({"c": broken["id"]}),
        )
        .await?;
    assert_eq!(reset["resetOAuthConnection"]["status"], "PENDING");
    invoke_ok(&airlock, &airlock.data_url, "whoami", &env.key, json!({})).await?;
    connection_until(&airlock, &env, "crm", "CONNECTED after the reset", |c| {
        c["status"] == "CONNECTED" && c["lastError"].is_null()
    })
    .await?;

    // Canary scan: no token and no client secret anywhere Airlock writes or answers.
    let mut needles = upstream_tokens(&httpbin);
    needles.dedup();
    needles.push(client_secret.clone());
    needles.push(wrong_secret.clone());
    assert_absent(
        observable(&airlock, &env).await?.as_bytes(),
        &needles,
        "logs or GraphQL",
    );
    assert_absent(&state_files(&airlock)?, &needles, "the SQLite database");
    assert_absent(handle_body.as_bytes(), &needles, "the handle response");
    Ok(())
}

/// Authorization code + PKCE through the provider's login, callback replay/forgery refused,
/// refresh with rotation, then `invalid_grant` breaking the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_code_refresh_rotation_and_invalid_grant() -> Result<()> {
    let data_port = free_port();
    let callback = format!("http://127.0.0.1:{data_port}/v1/oauth/callback");
    let idp_dir = tempfile::tempdir()?;
    let client_secret = format!("canary-ac-{}", uuid::Uuid::new_v4().simple());
    let idp = OidcProvider::start(
        idp_dir.path(),
        OidcConfig {
            clients: vec![OidcClient::web("airlock-web", &client_secret, &callback)],
            ttl: short_ttl(),
            ..OidcConfig::default()
        },
    )
    .await?;
    let airlock = Airlock::dev_with(AirlockOptions {
        data_port: Some(data_port),
        ..AirlockOptions::default()
    })
    .await?;
    let httpbin = Httpbin::start(airlock.data_dir.path()).await?;
    let env = airlock.test_env("oauth-ac").await?;
    airlock
        .set_secret(&env, "WEB_CLIENT_SECRET", &client_secret)
        .await?;
    let client = oauth_client(
        &airlock,
        &env,
        &idp,
        "crm_web",
        "airlock-web",
        "WEB_CLIENT_SECRET",
        &["openid", "api:read"],
    )
    .await?;
    bearer_function(
        &airlock,
        &env,
        "as_alice",
        &httpbin.url,
        "Bearer {{oauth.alice_crm}}",
    )
    .await?;

    // No such connection yet: the invoke fails closed and says which.
    let (status, code, message) =
        error_of(airlock.invoke("as_alice", &env.key, json!({})).await?).await;
    assert_eq!((status, code.as_str()), (500, "oauth_connection_missing"));
    assert!(message.contains("alice_crm"), "{message}");

    let started = airlock
        .graphql_ok(
            START_CONNECTION,
            json!({"e": env.env_id, "c": client, "name": "alice_crm"}),
        )
        .await?;
    let authorize_url = started["startOAuthConnection"]["authorizeUrl"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        started["startOAuthConnection"]["connection"]["status"],
        "PENDING"
    );
    let parsed = reqwest::Url::parse(&authorize_url)?;
    let param = |name: &str| {
        parsed
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_string())
    };
    assert!(authorize_url.starts_with(&idp.authorization_endpoint()));
    assert_eq!(param("code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(param("redirect_uri").as_deref(), Some(callback.as_str()));
    assert_eq!(param("client_id").as_deref(), Some("airlock-web"));
    let oauth_state = param("state").context("state")?;
    // Started but not completed: the connection exists and says it is not connected.
    let (status, code, _) = error_of(airlock.invoke("as_alice", &env.key, json!({})).await?).await;
    assert_eq!((status, code.as_str()), (409, "oauth_not_connected"));

    idp.reset_token_requests().await?;
    let redirect = idp.login(&authorize_url, "alice").await?;
    assert!(redirect.as_str().starts_with(&callback), "{redirect}");
    let auth_code = redirect
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.to_string())
        .context("a code")?;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let resp = browser.get(redirect.clone()).send().await?;
    assert_eq!(resp.status(), 200);
    let page = resp.text().await?;
    assert!(
        !page.contains(&auth_code) && !page.contains(&oauth_state),
        "the page echoes nothing"
    );
    assert_eq!(
        idp.token_requests()
            .await?
            .grant("authorization_code")
            .succeeded,
        1
    );
    let connected = connection_until(&airlock, &env, "alice_crm", "CONNECTED", |c| {
        c["status"] == "CONNECTED"
    })
    .await?;
    assert_eq!(connected["grant"], "AUTHORIZATION_CODE");
    assert!(connected["connectedAt"].is_string(), "{connected}");

    // The token acts for alice.
    invoke_ok(&airlock, &airlock.data_url, "as_alice", &env.key, json!({})).await?;
    httpbin.settled_requests().await;
    let (_, claims) = decode_jwt_unverified(upstream_tokens(&httpbin).last().unwrap())?;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"], "airlock-web");

    // A replayed callback and a forged one are refused, and recorded.
    let resp = browser.get(redirect.clone()).send().await?;
    assert_eq!(resp.status(), 400, "replay refused");
    let mut forged = redirect.clone();
    forged
        .query_pairs_mut()
        .clear()
        .append_pair("code", &auth_code)
        .append_pair("state", "forged-state");
    assert_eq!(
        browser.get(forged).send().await?.status(),
        400,
        "forged state refused"
    );
    // The replay is recorded as such in the environment (the used state's claim remembers
    // it); the forged state belongs to no environment: the platform operator sees both.
    let replayed = events_until(&airlock, &env, "oauth.callback_refused", 1).await?;
    assert!(
        replayed[0]["message"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{replayed:?}"
    );
    assert_eq!(replayed[0]["oauthConnection"], "alice_crm");
    let started = Instant::now();
    loop {
        let data = airlock
            .graphql_ok(
                "{ events(filter: {kind: \"oauth.callback_refused\"}, first: 50) { nodes { kind status message } } }",
                json!({}),
            )
            .await?;
        let refused = data["events"]["nodes"].as_array().unwrap();
        if refused.len() >= 2 {
            assert!(refused.iter().all(|e| e["status"] == 400), "{data}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refusals not recorded: {data}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        idp.token_requests()
            .await?
            .grant("authorization_code")
            .requests,
        1,
        "refused callbacks never reach the provider"
    );

    // Refresh twice: the second refresh only works if the rotated refresh token was kept
    // (oidc-provider revokes the whole grant when a consumed refresh token is reused).
    for round in 1..=2u64 {
        let state = connection(&airlock, &env, "alice_crm").await?;
        sleep_until_refresh_due(&state["expiresAt"]).await;
        invoke_ok(&airlock, &airlock.data_url, "as_alice", &env.key, json!({})).await?;
        let refreshes = idp.token_requests().await?.grant("refresh_token");
        assert_eq!(
            (refreshes.succeeded, refreshes.failed),
            (round, 0),
            "round {round}"
        );
        connection_until(&airlock, &env, "alice_crm", "next generation", |c| {
            c["tokenGeneration"].as_u64() == Some(round + 1)
        })
        .await?;
    }

    // The user's grant is revoked at the provider: the next refresh gets invalid_grant.
    assert!(idp.revoke_grants(Some("airlock-web"), None).await? >= 1);
    let state = connection(&airlock, &env, "alice_crm").await?;
    sleep_until_refresh_due(&state["expiresAt"]).await;
    let (status, code, message) =
        error_of(airlock.invoke("as_alice", &env.key, json!({})).await?).await;
    assert_eq!(
        (status, code.as_str()),
        (502, "oauth_connection_broken"),
        "{message}"
    );
    assert!(
        message.contains("alice_crm") && message.contains("invalid_grant"),
        "{message}"
    );
    let broken = connection_until(&airlock, &env, "alice_crm", "BROKEN", |c| {
        c["status"] == "BROKEN"
    })
    .await?;
    assert!(
        broken["lastError"]
            .as_str()
            .unwrap_or("")
            .contains("invalid_grant"),
        "{broken}"
    );
    let failed = events_until(&airlock, &env, "oauth.refresh_failed", 1).await?;
    assert_eq!(failed[0]["oauthConnection"], "alice_crm");
    // Broken stays broken: no more token requests until it is connected again.
    let before = idp.token_requests().await?.requests("refresh_token");
    let (_, code, _) = error_of(airlock.invoke("as_alice", &env.key, json!({})).await?).await;
    assert_eq!(code, "oauth_connection_broken");
    assert_eq!(
        idp.token_requests().await?.requests("refresh_token"),
        before
    );

    // Reconnecting: the user authorizes again and the same connection works again.
    let again = airlock
        .graphql_ok(
            START_CONNECTION,
            json!({"e": env.env_id, "c": client, "name": "alice_crm"}),
        )
        .await?;
    let again_url = again["startOAuthConnection"]["authorizeUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let redirect_again = idp.login(&again_url, "alice").await?;
    let resp = browser.get(redirect_again.clone()).send().await?;
    assert_eq!(resp.status(), 200, "second authorization");
    connection_until(&airlock, &env, "alice_crm", "CONNECTED again", |c| {
        c["status"] == "CONNECTED" && c["lastError"].is_null()
    })
    .await?;
    invoke_ok(&airlock, &airlock.data_url, "as_alice", &env.key, json!({})).await?;
    let second_code = redirect_again
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.to_string())
        .context("a code")?;

    // Canary scan: tokens, the client secret, the codes and the state.
    let mut needles = upstream_tokens(&httpbin);
    needles.dedup();
    needles.extend([
        client_secret.clone(),
        auth_code.clone(),
        second_code.clone(),
        oauth_state.clone(),
    ]);
    assert_absent(
        observable(&airlock, &env).await?.as_bytes(),
        &needles,
        "logs or GraphQL",
    );
    assert_absent(&state_files(&airlock)?, &needles, "the SQLite database");
    Ok(())
}

/// Two data-plane processes, 200 concurrent invokes at the moment the token must be
/// refreshed: exactly one token request reaches the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_token_request_for_200_concurrent_invokes_across_two_data_planes() -> Result<()> {
    let db = PostgresDb::create()?;
    let prefix = format!("e2e-oauth-{}", uuid::Uuid::new_v4().simple());
    let idp_dir = tempfile::tempdir()?;
    let client_secret = format!("canary-sf-{}", uuid::Uuid::new_v4().simple());
    let idp = OidcProvider::start(
        idp_dir.path(),
        OidcConfig {
            clients: vec![OidcClient::service("airlock-svc", &client_secret).scope("api:read")],
            ttl: Ttl {
                access_token: 6,
                client_credentials: 6,
                ..Ttl::default()
            },
            ..OidcConfig::default()
        },
    )
    .await?;
    let mut airlock = Airlock::split(&db.url, &prefix).await?;
    let second = airlock.add_data_plane().await?;
    let planes = [airlock.data_url.clone(), second];
    let httpbin = Httpbin::start(airlock.data_dir.path()).await?;
    let env = airlock.test_env("oauth-sf").await?;
    airlock
        .set_secret(&env, "CRM_CLIENT_SECRET", &client_secret)
        .await?;
    let client = oauth_client(
        &airlock,
        &env,
        &idp,
        "crm",
        "airlock-svc",
        "CRM_CLIENT_SECRET",
        &["api:read"],
    )
    .await?;
    airlock
        .graphql_ok(CREATE_CONNECTION, json!({"c": client, "name": "crm"}))
        .await?;
    bearer_function(
        &airlock,
        &env,
        "whoami",
        &httpbin.url,
        "Bearer {{oauth.crm}}",
    )
    .await?;
    idp.reset_token_requests().await?;

    // Warm both planes (split mode is eventually consistent): the second adopts the first's
    // token from Redis instead of asking the provider again.
    for plane in &planes {
        let started = Instant::now();
        loop {
            let resp = airlock
                .invoke_at(plane, "whoami", &env.key, json!({}))
                .await?;
            if resp.status() == 200 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{plane}: {}",
                resp.status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        idp.token_requests().await?.total,
        1,
        "one token for both planes"
    );
    let state = connection_until(&airlock, &env, "crm", "CONNECTED", |c| {
        c["tokenGeneration"] == 1
    })
    .await?;

    // At the moment of refresh, 200 concurrent invokes split over the two processes.
    sleep_until_refresh_due(&state["expiresAt"]).await;
    idp.reset_token_requests().await?;
    let before = upstream_tokens(&httpbin).len();
    let airlock = std::sync::Arc::new(airlock);
    let invokes = (0..200).map(|i| {
        let (airlock, plane, key) = (airlock.clone(), planes[i % 2].clone(), env.key.clone());
        tokio::spawn(async move {
            let resp = airlock
                .invoke_at(&plane, "whoami", &key, json!({}))
                .await
                .unwrap();
            resp.status().as_u16()
        })
    });
    let statuses = futures::future::join_all(invokes).await;
    let ok = statuses.iter().filter(|s| matches!(s, Ok(200))).count();
    assert_eq!(ok, 200, "{statuses:?}");
    let stats = idp.token_requests().await?;
    assert_eq!(stats.total, 1, "exactly one token request: {stats:?}");
    httpbin.settled_requests().await;
    let tokens = upstream_tokens(&httpbin);
    let refreshed = &tokens[before..];
    assert_eq!(refreshed.len(), 200);
    assert!(
        refreshed.iter().all(|t| t == &refreshed[0]),
        "every invoke used the new token"
    );
    assert_ne!(refreshed[0], tokens[0]);
    connection_until(&airlock, &env, "crm", "generation 2", |c| {
        c["tokenGeneration"] == 2
    })
    .await?;

    // Canary scan, Redis and PostgreSQL included.
    let mut needles = tokens.clone();
    needles.sort();
    needles.dedup();
    needles.push(client_secret.clone());
    assert_absent(
        observable(&airlock, &env).await?.as_bytes(),
        &needles,
        "logs or GraphQL",
    );
    let dump = std::process::Command::new("pg_dump")
        .args(["-h", "127.0.0.1", "-U", "postgres", "--data-only", &db.name])
        .output()?;
    assert!(dump.status.success());
    let dump = String::from_utf8_lossy(&dump.stdout).to_string();
    assert!(
        dump.contains("oauth_connections"),
        "the dump covers the OAuth tables"
    );
    assert_absent(dump.as_bytes(), &needles, "PostgreSQL");
    let (keys, redis_contents) = airlock_e2e::take_redis_contents(&prefix).await?;
    assert!(keys > 0);
    let redis_text = String::from_utf8_lossy(&redis_contents).to_string();
    assert!(
        redis_text.contains("oauth"),
        "Redis holds the shared (sealed) tokens"
    );
    assert_absent(&redis_contents, &needles, "Redis");
    Ok(())
}
