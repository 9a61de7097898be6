//! OAuth, the control plane's half: clients (validation, discovery against real local HTTP
//! servers), connections, authorization-code starts (state + PKCE verifier sealed to the data
//! planes), the published snapshot, and the data planes' reports over both transports. On
//! SQLite and PostgreSQL; tokens never appear in plaintext anywhere.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use airlock_control_plane::events::{
    EventIngester, InProcessEvents, RedisEvents, RedisEventsConfig,
};
use airlock_control_plane::graphql::build_schema;
use airlock_control_plane::state::AppState;
use airlock_shared::events::{DataPlaneMessage, EventKind, GatewayEvent, OAUTH_FIELD};
use airlock_shared::keys::RedisNames;
use airlock_shared::oauth::{
    pkce_identity_name, state_hash, token_identity, token_identity_name, ConnectionStatus,
    OAuthConnectionReport, OAuthGrant, SealedTokenSet, TokenAuthMethod, TokenKind,
    AUTHORIZATION_TTL_SECONDS, CALLBACK_PATH,
};
use airlock_shared::seal::{SealingKey, SecretIdentity};
use airlock_shared::wire::EnvironmentSnapshot;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{Backend, TestApp, REDIS_URL};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

on_both_backends!(
    clients_are_created_listed_updated_and_deleted,
    bad_client_input_is_refused_and_changes_nothing,
    a_client_in_use_cannot_be_deleted,
    client_credentials_connections_start_pending,
    start_builds_a_pkce_authorization_and_publishes_it,
    start_refuses_what_cannot_be_authorized,
    reports_store_newer_tokens_and_follow_the_status,
    a_broken_client_credentials_connection_is_reset,
    tokens_never_appear_in_plaintext,
);

const CLIENT_FIELDS: &str = "id environmentId name issuer authorizeUrl tokenUrl clientId clientSecret scopes tokenEndpointAuthMethod extraTokenParams { name value } allowedHosts refreshSkewSeconds redirectUri createdAt updatedAt";

const CONNECTION_FIELDS: &str = "id environmentId name client { id name } grant status expiresAt lastRefreshAt lastError connectedAt tokenGeneration createdAt updatedAt";

fn create_client_mutation() -> String {
    format!("mutation($input: CreateOAuthClientInput!) {{ createOAuthClient(input: $input) {{ {CLIENT_FIELDS} }} }}")
}

fn update_client_mutation() -> String {
    format!("mutation($input: UpdateOAuthClientInput!) {{ updateOAuthClient(input: $input) {{ {CLIENT_FIELDS} }} }}")
}

fn start_mutation() -> String {
    format!("mutation($e: ID!, $c: ID!, $n: String!) {{ startOAuthConnection(input: {{environmentId: $e, clientId: $c, connection: $n}}) {{ id authorizeUrl expiresAt connection {{ {CONNECTION_FIELDS} }} }} }}")
}

const CREATE_CONNECTION: &str = "mutation($c: ID!, $n: String!) { createOAuthConnection(input: {clientId: $c, name: $n}) { id name grant status tokenGeneration client { name } } }";

/// A valid client input for `environment`; tests override fields.
fn client_input(environment: &str, name: &str) -> Value {
    json!({
        "environmentId": environment,
        "name": name,
        "authorizeUrl": "https://github.com/login/oauth/authorize?allow_signup=false",
        "tokenUrl": "https://github.com/login/oauth/access_token",
        "clientId": "Iv1.abc",
        "clientSecret": "GITHUB_CLIENT_SECRET",
        "scopes": ["repo", "read:org"],
        "allowedHosts": ["api.github.com"],
        "redirectUri": "https://gw.example.com/v1/oauth/callback",
    })
}

fn with(mut base: Value, patch: Value) -> Value {
    for (key, value) in patch.as_object().unwrap() {
        base[key] = value.clone();
    }
    base
}

async fn environment(app: &TestApp) -> (String, String) {
    let tenant = app.create_tenant("acme").await;
    let environment = app.create_environment(&tenant, "prod").await;
    (tenant, environment)
}

async fn create_client(app: &TestApp, input: Value) -> Value {
    app.ok(&create_client_mutation(), json!({ "input": input }))
        .await["createOAuthClient"]
        .clone()
}

fn last_snapshot(app: &mut TestApp) -> EnvironmentSnapshot {
    app.take_snapshots()
        .pop()
        .expect("a snapshot was published")
}

fn code(error: &Value) -> &str {
    error["extensions"]["code"].as_str().unwrap_or_default()
}

async fn clients_are_created_listed_updated_and_deleted(mut app: TestApp) {
    let (_, env) = environment(&app).await;
    app.take_snapshots();
    let client = create_client(&app, client_input(&env, "github")).await;
    assert_eq!(client["name"], "github");
    assert_eq!(client["environmentId"], env);
    assert_eq!(client["issuer"], Value::Null);
    assert_eq!(
        client["authorizeUrl"],
        "https://github.com/login/oauth/authorize?allow_signup=false"
    );
    assert_eq!(client["clientSecret"], "GITHUB_CLIENT_SECRET");
    assert_eq!(client["scopes"], json!(["repo", "read:org"]));
    // Defaults.
    assert_eq!(client["tokenEndpointAuthMethod"], "CLIENT_SECRET_BASIC");
    assert_eq!(client["refreshSkewSeconds"], 60);
    assert_eq!(client["extraTokenParams"], json!([]));
    assert_eq!(client["allowedHosts"], json!(["api.github.com"]));
    let id = client["id"].as_str().unwrap().to_string();

    // Published: the data planes get the spec by name.
    let snapshot = last_snapshot(&mut app);
    let spec = &snapshot.oauth_clients["github"];
    assert_eq!(spec.id.to_string(), id);
    assert_eq!(
        spec.token_url,
        "https://github.com/login/oauth/access_token"
    );
    assert_eq!(spec.client_secret.as_deref(), Some("GITHUB_CLIENT_SECRET"));
    assert_eq!(spec.auth_method, TokenAuthMethod::ClientSecretBasic);
    assert_eq!(spec.allowed_hosts[0].as_str(), "api.github.com");
    assert_eq!(
        spec.redirect_uri.as_deref(),
        Some("https://gw.example.com/v1/oauth/callback")
    );

    // A public client with extra parameters.
    let public = create_client(
        &app,
        with(
            client_input(&env, "spa"),
            json!({
                "clientSecret": null,
                "tokenEndpointAuthMethod": "NONE",
                "extraTokenParams": [{"name": "audience", "value": "https://api.example.com"}],
                "refreshSkewSeconds": 0,
                "scopes": [],
            }),
        ),
    )
    .await;
    assert_eq!(public["tokenEndpointAuthMethod"], "NONE");
    assert_eq!(public["clientSecret"], Value::Null);
    assert_eq!(
        public["extraTokenParams"],
        json!([{"name": "audience", "value": "https://api.example.com"}])
    );
    assert_eq!(public["refreshSkewSeconds"], 0);

    // Same name twice.
    let error = app
        .error(
            &create_client_mutation(),
            json!({ "input": client_input(&env, "github") }),
        )
        .await;
    assert_eq!(code(&error), "ALREADY_EXISTS");

    let listed = app
        .ok(
            &format!("query($e: ID!) {{ oauthClients(environmentId: $e) {{ {CLIENT_FIELDS} }} }}"),
            json!({ "e": env }),
        )
        .await;
    let names: Vec<&str> = listed["oauthClients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["github", "spa"]);

    // Update: some fields, clear a nullable one, leave the rest.
    app.take_snapshots();
    let updated = app
        .ok(
            &update_client_mutation(),
            json!({ "input": {
                "id": id,
                "scopes": ["repo"],
                "redirectUri": null,
                "tokenEndpointAuthMethod": "CLIENT_SECRET_POST",
                "refreshSkewSeconds": 120,
            }}),
        )
        .await["updateOAuthClient"]
        .clone();
    assert_eq!(updated["scopes"], json!(["repo"]));
    assert_eq!(updated["redirectUri"], Value::Null);
    assert_eq!(updated["tokenEndpointAuthMethod"], "CLIENT_SECRET_POST");
    assert_eq!(updated["refreshSkewSeconds"], 120);
    assert_eq!(updated["clientSecret"], "GITHUB_CLIENT_SECRET");
    assert_eq!(updated["tokenUrl"], client["tokenUrl"]);
    assert_eq!(updated["createdAt"], client["createdAt"]);
    let snapshot = last_snapshot(&mut app);
    assert_eq!(snapshot.oauth_clients["github"].scopes, ["repo"]);
    assert_eq!(
        snapshot.oauth_clients["github"].auth_method,
        TokenAuthMethod::ClientSecretPost
    );
    assert_eq!(snapshot.oauth_clients["github"].redirect_uri, None);

    // A bad update changes nothing: clearing the secret of a confidential client.
    let error = app
        .error(
            &update_client_mutation(),
            json!({ "input": { "id": id, "clientSecret": null } }),
        )
        .await;
    assert_eq!(code(&error), "INVALID_INPUT");
    assert_eq!(error["extensions"]["field"], "clientSecret");
    assert!(app.take_snapshots().is_empty());
    // Renaming onto another client's name.
    let error = app
        .error(
            &update_client_mutation(),
            json!({ "input": { "id": id, "name": "spa" } }),
        )
        .await;
    assert_eq!(code(&error), "ALREADY_EXISTS");

    let deleted = app
        .ok(
            "mutation($id: ID!) { deleteOAuthClient(input: {id: $id}) }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(deleted["deleteOAuthClient"], id);
    let snapshot = last_snapshot(&mut app);
    assert!(!snapshot.oauth_clients.contains_key("github"));
    assert!(snapshot.oauth_clients.contains_key("spa"));
    let error = app
        .error(
            "mutation($id: ID!) { deleteOAuthClient(input: {id: $id}) }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(code(&error), "NOT_FOUND");

    let actions: Vec<String> = app
        .audit_rows()
        .await
        .into_iter()
        .map(|row| row["action"].as_str().unwrap().to_string())
        .filter(|a| a.starts_with("oauth"))
        .collect();
    assert_eq!(
        actions,
        [
            "oauth_client.create",
            "oauth_client.create",
            "oauth_client.update",
            "oauth_client.delete"
        ]
    );
}

async fn bad_client_input_is_refused_and_changes_nothing(mut app: TestApp) {
    let (_, env) = environment(&app).await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("bad name", json!({"name": "1github"}), "name"),
        ("name with a dot", json!({"name": "git.hub"}), "name"),
        (
            "relative token URL",
            json!({"tokenUrl": "/token"}),
            "tokenUrl",
        ),
        (
            "ftp token URL",
            json!({"tokenUrl": "ftp://idp.example.com/t"}),
            "tokenUrl",
        ),
        (
            "credentials in a URL",
            json!({"tokenUrl": "https://u:p@idp.example.com/t"}),
            "tokenUrl",
        ),
        (
            "fragment",
            json!({"authorizeUrl": "https://idp.example.com/a#x"}),
            "authorizeUrl",
        ),
        (
            "neither issuer nor token URL",
            json!({"tokenUrl": null}),
            "tokenUrl",
        ),
        (
            "issuer with a query",
            json!({"issuer": "https://idp.example.com/?x=1"}),
            "issuer",
        ),
        (
            "basic without secret",
            json!({"clientSecret": null}),
            "clientSecret",
        ),
        (
            "none with a secret",
            json!({"tokenEndpointAuthMethod": "NONE"}),
            "clientSecret",
        ),
        (
            "bad secret name",
            json!({"clientSecret": "a b"}),
            "clientSecret",
        ),
        ("empty client id", json!({"clientId": ""}), "clientId"),
        ("empty scope", json!({"scopes": ["read", ""]}), "scopes"),
        (
            "scope with a space",
            json!({"scopes": ["read write"]}),
            "scopes",
        ),
        (
            "reserved extra parameter",
            json!({"extraTokenParams": [{"name": "client_secret", "value": "x"}]}),
            "extraTokenParams",
        ),
        (
            "reserved extra parameter, other case",
            json!({"extraTokenParams": [{"name": "Grant_Type", "value": "x"}]}),
            "extraTokenParams",
        ),
        ("no hosts", json!({"allowedHosts": []}), "allowedHosts"),
        (
            "a URL as host",
            json!({"allowedHosts": ["https://api.github.com/"]}),
            "allowedHosts",
        ),
        (
            "allow-all host",
            json!({"allowedHosts": ["*"]}),
            "allowedHosts",
        ),
        (
            "negative skew",
            json!({"refreshSkewSeconds": -1}),
            "refreshSkewSeconds",
        ),
        (
            "skew above an hour",
            json!({"refreshSkewSeconds": 3601}),
            "refreshSkewSeconds",
        ),
        (
            "relative redirect URI",
            json!({"redirectUri": "/v1/oauth/callback"}),
            "redirectUri",
        ),
    ];
    app.take_snapshots();
    let before = app.db.row_counts().await;
    for (what, patch, field) in cases {
        let error = app
            .error(
                &create_client_mutation(),
                json!({ "input": with(client_input(&env, "github"), patch) }),
            )
            .await;
        assert_eq!(code(&error), "INVALID_INPUT", "{what}: {error}");
        assert_eq!(error["extensions"]["field"], field, "{what}: {error}");
    }
    assert_eq!(app.db.row_counts().await, before, "nothing was stored");
    assert!(app.take_snapshots().is_empty(), "nothing was published");

    // Unknown environment.
    let error = app
        .error(
            &create_client_mutation(),
            json!({ "input": client_input(&Uuid::new_v4().to_string(), "github") }),
        )
        .await;
    assert_eq!(code(&error), "NOT_FOUND");
    // A bad connection name.
    let client = create_client(&app, client_input(&env, "github")).await;
    app.take_snapshots();
    let before = app.db.row_counts().await;
    for bad in ["", "a b", "{{x}}", "1x"] {
        let error = app
            .error(CREATE_CONNECTION, json!({ "c": client["id"], "n": bad }))
            .await;
        assert_eq!(code(&error), "INVALID_INPUT", "{bad:?}");
        let error = app
            .error(
                &start_mutation(),
                json!({ "e": env, "c": client["id"], "n": bad }),
            )
            .await;
        assert_eq!(code(&error), "INVALID_INPUT", "{bad:?}");
        assert_eq!(error["extensions"]["field"], "connection");
    }
    assert_eq!(app.db.row_counts().await, before);
    assert!(app.take_snapshots().is_empty());
}

async fn a_client_in_use_cannot_be_deleted(mut app: TestApp) {
    let (_, env) = environment(&app).await;
    let client = create_client(&app, client_input(&env, "github")).await;
    let connection = app
        .ok(
            CREATE_CONNECTION,
            json!({ "c": client["id"], "n": "github" }),
        )
        .await["createOAuthConnection"]
        .clone();
    app.take_snapshots();
    let before = app.db.all_rows_as_text().await;
    let error = app
        .error(
            "mutation($id: ID!) { deleteOAuthClient(input: {id: $id}) }",
            json!({ "id": client["id"] }),
        )
        .await;
    assert_eq!(code(&error), "OAUTH_CLIENT_IN_USE", "{error}");
    assert!(error["message"].as_str().unwrap().contains("github"));
    assert_eq!(app.db.all_rows_as_text().await, before);
    assert!(app.take_snapshots().is_empty());

    let deleted = app
        .ok(
            "mutation($id: ID!) { deleteOAuthConnection(input: {id: $id}) }",
            json!({ "id": connection["id"] }),
        )
        .await;
    assert_eq!(deleted["deleteOAuthConnection"], connection["id"]);
    assert!(last_snapshot(&mut app).oauth_connections.is_empty());
    app.ok(
        "mutation($id: ID!) { deleteOAuthClient(input: {id: $id}) }",
        json!({ "id": client["id"] }),
    )
    .await;
    assert!(last_snapshot(&mut app).oauth_clients.is_empty());
}

async fn client_credentials_connections_start_pending(mut app: TestApp) {
    let (_, env) = environment(&app).await;
    let client = create_client(&app, client_input(&env, "billing")).await;
    app.take_snapshots();
    let connection = app
        .ok(
            CREATE_CONNECTION,
            json!({ "c": client["id"], "n": "billing_api" }),
        )
        .await["createOAuthConnection"]
        .clone();
    assert_eq!(connection["grant"], "CLIENT_CREDENTIALS");
    assert_eq!(connection["status"], "PENDING");
    assert_eq!(connection["tokenGeneration"], 0);
    assert_eq!(connection["client"]["name"], "billing");
    let snapshot = last_snapshot(&mut app);
    let spec = &snapshot.oauth_connections["billing_api"];
    assert_eq!(spec.client, "billing");
    assert_eq!(spec.grant, OAuthGrant::ClientCredentials);
    assert_eq!(spec.status, ConnectionStatus::Pending);
    assert_eq!(spec.tokens, None);

    let error = app
        .error(
            CREATE_CONNECTION,
            json!({ "c": client["id"], "n": "billing_api" }),
        )
        .await;
    assert_eq!(code(&error), "ALREADY_EXISTS");
    // A public client has no credentials of its own.
    let public = create_client(
        &app,
        with(
            client_input(&env, "spa"),
            json!({"clientSecret": null, "tokenEndpointAuthMethod": "NONE"}),
        ),
    )
    .await;
    let error = app
        .error(CREATE_CONNECTION, json!({ "c": public["id"], "n": "spa" }))
        .await;
    assert_eq!(code(&error), "INVALID_INPUT");
    assert_eq!(error["extensions"]["field"], "clientId");

    let listed = app
        .ok(
            &format!(
                "query($e: ID!) {{ oauthConnections(environmentId: $e) {{ {CONNECTION_FIELDS} }} }}"
            ),
            json!({ "e": env }),
        )
        .await;
    let listed = listed["oauthConnections"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "billing_api");
    assert_eq!(listed[0]["lastError"], Value::Null);
}

const RESET: &str =
    "mutation($c: ID!) { resetOAuthConnection(input: {id: $c}) { id status lastError } }";

/// A broken client-credentials connection goes back to PENDING (published, audited); a
/// connection that is not broken, or one that needs the user again, is refused unchanged.
async fn a_broken_client_credentials_connection_is_reset(mut app: TestApp) {
    let (tenant, env) = environment(&app).await;
    let client = create_client(&app, client_input(&env, "billing")).await;
    let connection = app
        .ok(
            CREATE_CONNECTION,
            json!({ "c": client["id"], "n": "billing_api" }),
        )
        .await["createOAuthConnection"]
        .clone();
    let id = connection["id"].as_str().unwrap().to_string();

    // Not broken: nothing to reset.
    app.take_snapshots();
    let error = app.error(RESET, json!({ "c": id })).await;
    assert_eq!(code(&error), "INVALID_INPUT");
    assert!(app.take_snapshots().is_empty(), "nothing published");
    assert_eq!(
        connection_state(&app, &env, "billing_api").await["status"],
        "PENDING"
    );

    // Broken by a data plane's report (the provider said invalid_client).
    let broken = OAuthConnectionReport {
        tenant_id: tenant.parse().unwrap(),
        environment_id: env.parse().unwrap(),
        connection_id: id.parse().unwrap(),
        connection: "billing_api".into(),
        authorization_id: None,
        status: ConnectionStatus::Broken,
        tokens: None,
        at: chrono::Utc::now(),
        error: Some("invalid_client: bad secret".into()),
    };
    airlock_control_plane::domain::oauth::reports::apply(&app.db.db, &broken)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        connection_state(&app, &env, "billing_api").await["status"],
        "BROKEN"
    );
    app.take_snapshots();
    let reset = app.ok(RESET, json!({ "c": id })).await["resetOAuthConnection"].clone();
    assert_eq!(reset["status"], "PENDING");
    // The last error stays readable until a data plane connects it again.
    assert_eq!(reset["lastError"], "invalid_client: bad secret");
    let snapshot = last_snapshot(&mut app);
    assert_eq!(
        snapshot.oauth_connections["billing_api"].status,
        ConnectionStatus::Pending
    );
    let audited = app
        .ok(
            "query($e: ID!) { auditLog(filter: {environmentId: $e, action: \"oauth_connection.reset\"}) { entries { targetName detail } } }",
            json!({ "e": env }),
        )
        .await;
    let entries = audited["auditLog"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audited}");
    assert_eq!(entries[0]["targetName"], "billing_api");
    // Reset twice: it is no longer broken.
    assert_eq!(
        code(&app.error(RESET, json!({ "c": id })).await),
        "INVALID_INPUT"
    );

    // An authorization-code connection reconnects with startOAuthConnection instead.
    let github = create_client(&app, client_input(&env, "github")).await;
    let started = app
        .ok(
            &start_mutation(),
            json!({ "e": env, "c": github["id"], "n": "octocat" }),
        )
        .await["startOAuthConnection"]
        .clone();
    let octocat: Uuid = started["connection"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    airlock_control_plane::domain::oauth::reports::apply(
        &app.db.db,
        &OAuthConnectionReport {
            connection_id: octocat,
            connection: "octocat".into(),
            error: Some("invalid_grant".into()),
            at: chrono::Utc::now(),
            ..broken.clone()
        },
    )
    .await
    .unwrap()
    .unwrap();
    let error = app.error(RESET, json!({ "c": octocat.to_string() })).await;
    assert_eq!(code(&error), "INVALID_INPUT");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("startOAuthConnection"),
        "{error}"
    );
    assert_eq!(
        code(
            &app.error(RESET, json!({ "c": Uuid::new_v4().to_string() }))
                .await
        ),
        "NOT_FOUND"
    );
}

/// Query parameters of a URL, by name (each name once).
fn query_of(url: &str) -> (reqwest::Url, HashMap<String, String>) {
    let parsed = reqwest::Url::parse(url).unwrap();
    let mut params = HashMap::new();
    for (name, value) in parsed.query_pairs() {
        assert!(
            params.insert(name.to_string(), value.to_string()).is_none(),
            "{name} twice in {url}"
        );
    }
    (parsed, params)
}

async fn start_builds_a_pkce_authorization_and_publishes_it(mut app: TestApp) {
    let (tenant, env) = environment(&app).await;
    let client = create_client(&app, client_input(&env, "github")).await;
    app.take_snapshots();
    let started = app
        .ok(
            &start_mutation(),
            json!({ "e": env, "c": client["id"], "n": "octocat" }),
        )
        .await["startOAuthConnection"]
        .clone();
    let connection = &started["connection"];
    assert_eq!(connection["name"], "octocat");
    assert_eq!(connection["grant"], "AUTHORIZATION_CODE");
    assert_eq!(connection["status"], "PENDING");

    let (url, params) = query_of(started["authorizeUrl"].as_str().unwrap());
    assert_eq!(url.scheme(), "https");
    assert_eq!(url.host_str(), Some("github.com"));
    assert_eq!(url.path(), "/login/oauth/authorize");
    // The endpoint's own query is kept.
    assert_eq!(params["allow_signup"], "false");
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], "Iv1.abc");
    assert_eq!(
        params["redirect_uri"],
        "https://gw.example.com/v1/oauth/callback"
    );
    assert_eq!(params["scope"], "repo read:org");
    assert_eq!(params["code_challenge_method"], "S256");
    let state = &params["state"];
    assert_eq!(URL_SAFE_NO_PAD.decode(state).unwrap().len(), 32);
    assert_eq!(params.len(), 8, "{params:?}");

    // Expires after the TTL.
    let expires_at: chrono::DateTime<chrono::Utc> =
        started["expiresAt"].as_str().unwrap().parse().unwrap();
    let ttl = expires_at - chrono::Utc::now();
    assert!(
        ttl <= chrono::Duration::seconds(AUTHORIZATION_TTL_SECONDS)
            && ttl > chrono::Duration::seconds(AUTHORIZATION_TTL_SECONDS - 30),
        "{ttl}"
    );

    // The published snapshot holds the flow: the state's hash and the verifier sealed to the
    // data planes, which is the only way to learn it.
    let snapshot = last_snapshot(&mut app);
    assert_eq!(
        snapshot.oauth_connections["octocat"].grant,
        OAuthGrant::AuthorizationCode
    );
    assert_eq!(snapshot.oauth_authorizations.len(), 1);
    let pending = &snapshot.oauth_authorizations[0];
    assert_eq!(pending.id.to_string(), started["id"]);
    assert_eq!(pending.connection, "octocat");
    assert_eq!(pending.state_hash, state_hash(state));
    assert_eq!(
        pending.redirect_uri,
        "https://gw.example.com/v1/oauth/callback"
    );
    let identity_name = pkce_identity_name(pending.id);
    let verifier = app
        .opening_key
        .open(
            SecretIdentity {
                tenant_id: tenant.parse().unwrap(),
                environment_id: env.parse().unwrap(),
                name: &identity_name,
                version: 1,
            },
            &pending.code_verifier,
        )
        .expect("the verifier opens with the data planes' key for its identity");
    assert_eq!(verifier.expose().len(), 43);
    assert_eq!(
        params["code_challenge"],
        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.expose().as_bytes()))
    );
    // Bound to its identity: it does not open as another authorization's verifier.
    let other = pkce_identity_name(Uuid::new_v4());
    assert!(app
        .opening_key
        .open(
            SecretIdentity {
                tenant_id: tenant.parse().unwrap(),
                environment_id: env.parse().unwrap(),
                name: &other,
                version: 1,
            },
            &pending.code_verifier,
        )
        .is_err());
    // Neither the state nor the verifier is stored in plaintext.
    let rows = app.db.all_rows_as_text().await.join("\n");
    assert!(!rows.contains(state.as_str()));
    assert!(!rows.contains(verifier.expose()));

    // Starting again keeps the connection and adds a second flow.
    let again = app
        .ok(
            &start_mutation(),
            json!({ "e": env, "c": client["id"], "n": "octocat" }),
        )
        .await["startOAuthConnection"]
        .clone();
    assert_eq!(again["connection"]["id"], connection["id"]);
    assert_ne!(again["authorizeUrl"], started["authorizeUrl"]);
    assert_eq!(last_snapshot(&mut app).oauth_authorizations.len(), 2);

    // Without a redirect URI of its own, the client's flows go to the data plane URL.
    let plain = create_client(
        &app,
        with(
            client_input(&env, "plain"),
            json!({"redirectUri": null, "scopes": []}),
        ),
    )
    .await;
    let schema = build_schema(AppState {
        data_plane_url: Some("http://127.0.0.1:8081".into()),
        ..app.state.clone()
    });
    let response = schema
        .execute(
            async_graphql::Request::new(start_mutation())
                .variables(async_graphql::Variables::from_json(
                    json!({ "e": env, "c": plain["id"], "n": "plain_conn" }),
                ))
                .data(app.superadmin()),
        )
        .await;
    assert!(response.errors.is_empty(), "{:?}", response.errors);
    let data = response.data.into_json().unwrap();
    let (_, params) = query_of(
        data["startOAuthConnection"]["authorizeUrl"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(
        params["redirect_uri"],
        format!("http://127.0.0.1:8081{CALLBACK_PATH}")
    );
    // No scopes: no scope parameter.
    assert!(!params.contains_key("scope"), "{params:?}");

    let actions: Vec<String> = app
        .audit_rows()
        .await
        .into_iter()
        .filter_map(|row| row["action"].as_str().map(str::to_string))
        .filter(|a| a.starts_with("oauth_connection"))
        .collect();
    assert_eq!(
        actions,
        [
            "oauth_connection.create",
            "oauth_connection.start",
            "oauth_connection.start",
            "oauth_connection.create",
            "oauth_connection.start"
        ]
    );
}

async fn start_refuses_what_cannot_be_authorized(mut app: TestApp) {
    let (tenant, env) = environment(&app).await;
    let other_env = app.create_environment(&tenant, "stage").await;
    let no_authorize = create_client(
        &app,
        with(client_input(&env, "machine"), json!({"authorizeUrl": null})),
    )
    .await;
    let no_redirect = create_client(
        &app,
        with(
            client_input(&env, "noredirect"),
            json!({"redirectUri": null}),
        ),
    )
    .await;
    let good = create_client(&app, client_input(&env, "github")).await;
    app.ok(
        CREATE_CONNECTION,
        json!({ "c": good["id"], "n": "machine_conn" }),
    )
    .await;
    app.take_snapshots();
    let before = app.db.all_rows_as_text().await;

    let error = app
        .error(
            &start_mutation(),
            json!({ "e": env, "c": no_authorize["id"], "n": "x" }),
        )
        .await;
    assert_eq!(code(&error), "OAUTH_CLIENT_INCOMPLETE");
    assert!(error["message"].as_str().unwrap().contains("authorize URL"));
    let error = app
        .error(
            &start_mutation(),
            json!({ "e": env, "c": no_redirect["id"], "n": "x" }),
        )
        .await;
    assert_eq!(code(&error), "OAUTH_CLIENT_INCOMPLETE");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("AIRLOCK_DATA_PLANE_URL"));
    // A client-credentials connection needs no authorization.
    let error = app
        .error(
            &start_mutation(),
            json!({ "e": env, "c": good["id"], "n": "machine_conn" }),
        )
        .await;
    assert_eq!(code(&error), "INVALID_INPUT");
    assert_eq!(error["extensions"]["field"], "connection");
    // The client of another environment is not one of this environment's.
    let error = app
        .error(
            &start_mutation(),
            json!({ "e": other_env, "c": good["id"], "n": "x" }),
        )
        .await;
    assert_eq!(code(&error), "NOT_FOUND");

    assert_eq!(app.db.all_rows_as_text().await, before);
    assert!(app.take_snapshots().is_empty());
}

/// A token set of `generation` for `connection`, sealed like a data plane seals it.
fn sealed_tokens(
    key: &SealingKey,
    tenant: Uuid,
    environment: Uuid,
    connection: Uuid,
    generation: i64,
    access: &str,
    refresh: &str,
) -> SealedTokenSet {
    let access_name = token_identity_name(connection, TokenKind::Access);
    let refresh_name = token_identity_name(connection, TokenKind::Refresh);
    SealedTokenSet {
        generation,
        access_token: key
            .seal(
                token_identity(tenant, environment, &access_name, generation),
                access,
            )
            .unwrap(),
        refresh_token: Some(
            key.seal(
                token_identity(tenant, environment, &refresh_name, generation),
                refresh,
            )
            .unwrap(),
        ),
        expires_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        obtained_at: chrono::Utc::now(),
    }
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn connection_state(app: &TestApp, env: &str, name: &str) -> Value {
    let listed = app
        .ok(
            &format!(
                "query($e: ID!) {{ oauthConnections(environmentId: $e) {{ {CONNECTION_FIELDS} }} }}"
            ),
            json!({ "e": env }),
        )
        .await;
    listed["oauthConnections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Wait until `check` holds of the connection's state.
async fn until_connection(app: &TestApp, env: &str, name: &str, check: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = connection_state(app, env, name).await;
        if check(&state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out; connection is {state}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

struct Flow {
    tenant: Uuid,
    environment: Uuid,
    connection: Uuid,
    authorization: Uuid,
}

/// A started authorization-code flow for connection `octocat`.
async fn started_flow(app: &mut TestApp) -> Flow {
    let (tenant, env) = environment(app).await;
    let client = create_client(app, client_input(&env, "github")).await;
    let started = app
        .ok(
            &start_mutation(),
            json!({ "e": env, "c": client["id"], "n": "octocat" }),
        )
        .await["startOAuthConnection"]
        .clone();
    app.take_snapshots();
    Flow {
        tenant: tenant.parse().unwrap(),
        environment: env.parse().unwrap(),
        connection: started["connection"]["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
        authorization: started["id"].as_str().unwrap().parse().unwrap(),
    }
}

fn report(flow: &Flow, status: ConnectionStatus) -> OAuthConnectionReport {
    OAuthConnectionReport {
        tenant_id: flow.tenant,
        environment_id: flow.environment,
        connection_id: flow.connection,
        connection: "octocat".into(),
        authorization_id: None,
        status,
        tokens: None,
        at: chrono::Utc::now(),
        error: None,
    }
}

async fn reports_store_newer_tokens_and_follow_the_status(mut app: TestApp) {
    let flow = started_flow(&mut app).await;
    let env = flow.environment.to_string();
    let key = app.opening_key.sealing_key().clone();
    let (sender, source) = InProcessEvents::channel();
    let ingester =
        EventIngester::start_with_publisher(app.db.db.clone(), source, app.state.publisher.clone());

    // The callback completed: first tokens, the authorization consumed, republished.
    let first = sealed_tokens(
        &key,
        flow.tenant,
        flow.environment,
        flow.connection,
        1,
        "at-1",
        "rt-1",
    );
    let mut connected = report(&flow, ConnectionStatus::Connected);
    connected.authorization_id = Some(flow.authorization);
    connected.tokens = Some(first.clone());
    sender
        .send(DataPlaneMessage::OAuth(connected.clone()))
        .unwrap();
    until_connection(&app, &env, "octocat", |c| c["status"] == "CONNECTED").await;
    let state = connection_state(&app, &env, "octocat").await;
    assert_eq!(state["tokenGeneration"], 1);
    assert_ne!(state["connectedAt"], Value::Null);
    assert_ne!(state["lastRefreshAt"], Value::Null);
    assert_ne!(state["expiresAt"], Value::Null);
    assert_eq!(state["lastError"], Value::Null);
    eventually("the connected state is republished", || {
        let snapshots = app.take_snapshots();
        let done = snapshots
            .last()
            .is_some_and(|s| s.oauth_connections["octocat"].status == ConnectionStatus::Connected);
        if let Some(snapshot) = snapshots.last() {
            if done {
                // The consumed authorization is gone; the stored tokens are published.
                assert!(snapshot.oauth_authorizations.is_empty());
                assert_eq!(
                    snapshot.oauth_connections["octocat"].tokens,
                    Some(first.clone())
                );
            }
        }
        async move { done }
    })
    .await;

    // A re-delivery changes nothing and publishes nothing.
    sender
        .send(DataPlaneMessage::OAuth(connected.clone()))
        .unwrap();
    // A refresh: newer tokens stored, not republished (data planes share them in Redis).
    let second = sealed_tokens(
        &key,
        flow.tenant,
        flow.environment,
        flow.connection,
        2,
        "at-2",
        "rt-2",
    );
    let mut refreshed = report(&flow, ConnectionStatus::Connected);
    refreshed.tokens = Some(second.clone());
    sender.send(DataPlaneMessage::OAuth(refreshed)).unwrap();
    until_connection(&app, &env, "octocat", |c| c["tokenGeneration"] == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        app.take_snapshots().is_empty(),
        "a refresh is not republished"
    );
    // An older generation never replaces a newer one.
    let mut stale = report(&flow, ConnectionStatus::Connected);
    stale.tokens = Some(first.clone());
    sender.send(DataPlaneMessage::OAuth(stale)).unwrap();

    // The provider refused the refresh token: broken, with the error; republished, audited.
    let mut broken = report(&flow, ConnectionStatus::Broken);
    broken.error = Some("invalid_grant: the refresh token was revoked".into());
    sender
        .send(DataPlaneMessage::OAuth(broken.clone()))
        .unwrap();
    until_connection(&app, &env, "octocat", |c| c["status"] == "BROKEN").await;
    let state = connection_state(&app, &env, "octocat").await;
    assert_eq!(state["tokenGeneration"], 2);
    assert_eq!(
        state["lastError"],
        "invalid_grant: the refresh token was revoked"
    );
    eventually("the broken state is republished", || {
        let done = app.take_snapshots().last().is_some_and(|s| {
            let spec = &s.oauth_connections["octocat"];
            spec.status == ConnectionStatus::Broken && spec.tokens == Some(second.clone())
        });
        async move { done }
    })
    .await;

    // A report older than the last one applied does not undo it.
    let mut late = report(&flow, ConnectionStatus::Connected);
    late.at = broken.at - chrono::Duration::seconds(5);
    sender.send(DataPlaneMessage::OAuth(late)).unwrap();
    // A report for a connection that does not exist (or of another environment) is dropped.
    let mut unknown = report(&flow, ConnectionStatus::Connected);
    unknown.connection_id = Uuid::new_v4();
    sender.send(DataPlaneMessage::OAuth(unknown)).unwrap();
    let mut elsewhere = report(&flow, ConnectionStatus::Connected);
    elsewhere.environment_id = Uuid::new_v4();
    sender.send(DataPlaneMessage::OAuth(elsewhere)).unwrap();
    drop(sender);
    let stats = ingester.shutdown().await;
    assert_eq!(stats.oauth_reports, 8);
    let state = connection_state(&app, &env, "octocat").await;
    assert_eq!(state["status"], "BROKEN");
    assert_eq!(state["tokenGeneration"], 2);

    // Reconnecting a broken connection: it stays broken, with its tokens, until the callback.
    app.take_snapshots();
    let client = state["client"]["id"].clone();
    let again = app
        .ok(
            &start_mutation(),
            json!({ "e": env, "c": client, "n": "octocat" }),
        )
        .await["startOAuthConnection"]
        .clone();
    assert_eq!(again["connection"]["status"], "BROKEN");
    assert_eq!(again["connection"]["tokenGeneration"], 2);
    let snapshot = last_snapshot(&mut app);
    assert_eq!(
        snapshot.oauth_connections["octocat"].status,
        ConnectionStatus::Broken
    );
    assert_eq!(snapshot.oauth_authorizations.len(), 1);
    let mut reconnected = report(&flow, ConnectionStatus::Connected);
    reconnected.authorization_id = Some(again["id"].as_str().unwrap().parse().unwrap());
    reconnected.tokens = Some(sealed_tokens(
        &key,
        flow.tenant,
        flow.environment,
        flow.connection,
        3,
        "at-3",
        "rt-3",
    ));
    let outcome = airlock_control_plane::domain::oauth::reports::apply(&app.db.db, &reconnected)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.republish && outcome.tokens_stored);
    let state = connection_state(&app, &env, "octocat").await;
    assert_eq!(state["status"], "CONNECTED");
    assert_eq!(state["tokenGeneration"], 3);
    assert_eq!(state["lastError"], Value::Null);
    // Applying it again changes nothing.
    let outcome = airlock_control_plane::domain::oauth::reports::apply(&app.db.db, &reconnected)
        .await
        .unwrap()
        .unwrap();
    assert!(!outcome.republish && !outcome.tokens_stored);

    let audited: Vec<(String, String)> = app
        .audit_rows()
        .await
        .into_iter()
        .filter(|row| row["actorType"] == "data_plane")
        .map(|row| {
            (
                row["action"].as_str().unwrap().to_string(),
                row["targetName"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        audited,
        [
            (
                "oauth_connection.connected".to_string(),
                "octocat".to_string()
            ),
            ("oauth_connection.broken".to_string(), "octocat".to_string()),
            (
                "oauth_connection.connected".to_string(),
                "octocat".to_string()
            ),
        ]
    );
}

async fn tokens_never_appear_in_plaintext(mut app: TestApp) {
    let flow = started_flow(&mut app).await;
    let env = flow.environment.to_string();
    let key = app.opening_key.sealing_key().clone();
    let access = "canary-access-7f3a91";
    let refresh = "canary-refresh-2bc4e8";
    let (sender, source) = InProcessEvents::channel();
    let ingester =
        EventIngester::start_with_publisher(app.db.db.clone(), source, app.state.publisher.clone());
    let mut connected = report(&flow, ConnectionStatus::Connected);
    connected.authorization_id = Some(flow.authorization);
    connected.tokens = Some(sealed_tokens(
        &key,
        flow.tenant,
        flow.environment,
        flow.connection,
        1,
        access,
        refresh,
    ));
    sender.send(DataPlaneMessage::OAuth(connected)).unwrap();
    // An OAuth event about it, too.
    let event = GatewayEvent {
        id: Uuid::now_v7(),
        at: chrono::Utc::now(),
        kind: EventKind::OAuthConnected,
        tenant_id: Some(flow.tenant),
        environment_id: Some(flow.environment),
        request_id: "r-oauth-1".into(),
        function: None,
        api_key_id: None,
        secrets: vec![],
        upstream_host: None,
        status: 200,
        message: "connected".into(),
        oauth_connection: Some("octocat".into()),
    };
    sender.send(event.into()).unwrap();
    until_connection(&app, &env, "octocat", |c| c["status"] == "CONNECTED").await;
    eventually("the event is stored", || {
        let app = &app;
        async move {
            let data = app
                .ok(
                    "query($t: ID) { events(filter: {tenantId: $t, kind: \"oauth.connected\"}) { nodes { kind oauthConnection } } }",
                    json!({ "t": flow.tenant }),
                )
                .await;
            data["events"]["nodes"]
                == json!([{ "kind": "oauth.connected", "oauthConnection": "octocat" }])
        }
    })
    .await;
    drop(sender);
    ingester.shutdown().await;

    let rows = app.db.all_rows_as_text().await.join("\n");
    assert!(rows.contains("accessToken"), "the sealed tokens are stored");
    for canary in [access, refresh, "canary"] {
        assert!(!rows.contains(canary), "{canary} in the database");
    }
    let responses = [
        app.ok(
            &format!("query($e: ID!) {{ oauthConnections(environmentId: $e) {{ {CONNECTION_FIELDS} client {{ {CLIENT_FIELDS} }} }} }}"),
            json!({ "e": env }),
        )
        .await,
        app.ok(
            &format!("query($e: ID!) {{ oauthClients(environmentId: $e) {{ {CLIENT_FIELDS} }} }}"),
            json!({ "e": env }),
        )
        .await,
        app.ok(
            "{ auditLog { entries { action detail targetName } } }",
            json!({}),
        )
        .await,
        app.ok(
            "{ events { nodes { kind message oauthConnection } } }",
            json!({}),
        )
        .await,
    ];
    for response in responses {
        assert!(!response.to_string().contains("canary"), "{response}");
    }
    // The published snapshot carries them sealed, and they open only for their identity.
    let snapshot = app
        .take_snapshots()
        .pop()
        .expect("the connection was republished");
    let tokens = snapshot.oauth_connections["octocat"]
        .tokens
        .clone()
        .unwrap();
    assert!(!serde_json::to_string(&snapshot).unwrap().contains("canary"));
    let name = token_identity_name(flow.connection, TokenKind::Access);
    let opened = app
        .opening_key
        .open(
            token_identity(flow.tenant, flow.environment, &name, 1),
            &tokens.access_token,
        )
        .unwrap();
    assert_eq!(opened.expose(), access);
}

/// Provider metadata served by a real local HTTP server at `path`, naming `issuer`.
async fn metadata_server(
    path_for: impl Fn(&str) -> String,
    issuer_for: impl Fn(&str) -> String,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let issuer = issuer_for(&base);
    let document = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/oauth/token"),
        "jwks_uri": format!("{base}/jwks"),
    });
    let router = axum::Router::new().route(
        &path_for(&base),
        axum::routing::get(move || {
            let document = document.clone();
            async move { axum::Json(document) }
        }),
    );
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (base, server)
}

#[tokio::test]
async fn discovery_finds_endpoints_and_refuses_other_issuers() {
    let mut app = TestApp::new(Backend::Sqlite).await;
    let (_, env) = environment(&app).await;
    let discovered = |name: &str, issuer: &str| {
        json!({
            "environmentId": env,
            "name": name,
            "issuer": issuer,
            "clientId": "c",
            "clientSecret": "S",
            "allowedHosts": ["api.example.com"],
        })
    };

    // OpenID Connect discovery.
    let (oidc, oidc_server) = metadata_server(
        |_| "/.well-known/openid-configuration".into(),
        |base| base.to_string(),
    )
    .await;
    let client = create_client(&app, discovered("oidc", &oidc)).await;
    assert_eq!(client["issuer"], oidc);
    assert_eq!(client["tokenUrl"], format!("{oidc}/oauth/token"));
    assert_eq!(client["authorizeUrl"], format!("{oidc}/oauth/authorize"));
    // Explicit endpoints win over discovered ones.
    let client = create_client(
        &app,
        with(
            discovered("explicit", &oidc),
            json!({"tokenUrl": "https://other.example.com/token"}),
        ),
    )
    .await;
    assert_eq!(client["tokenUrl"], "https://other.example.com/token");
    assert_eq!(client["authorizeUrl"], format!("{oidc}/oauth/authorize"));

    // RFC 8414 only, issuer with a path: the well-known segment goes before the path.
    let (rfc, rfc_server) = metadata_server(
        |_| "/.well-known/oauth-authorization-server/tenant-a".into(),
        |base| format!("{base}/tenant-a"),
    )
    .await;
    let issuer = format!("{rfc}/tenant-a");
    let client = create_client(&app, discovered("rfc8414", &issuer)).await;
    assert_eq!(client["tokenUrl"], format!("{rfc}/oauth/token"));
    assert_eq!(client["issuer"], issuer);

    // Setting an issuer in an update discovers again.
    let updated = app
        .ok(
            &update_client_mutation(),
            json!({ "input": { "id": client["id"], "issuer": oidc } }),
        )
        .await;
    assert_eq!(
        updated["updateOAuthClient"]["tokenUrl"],
        format!("{oidc}/oauth/token")
    );

    app.take_snapshots();
    let before = app.db.all_rows_as_text().await;
    // Metadata for another issuer: refused.
    let (evil, evil_server) = metadata_server(
        |_| "/.well-known/openid-configuration".into(),
        |_| "https://idp.example.com".into(),
    )
    .await;
    let error = app
        .error(
            &create_client_mutation(),
            json!({ "input": discovered("evil", &evil) }),
        )
        .await;
    assert_eq!(code(&error), "OAUTH_DISCOVERY_FAILED", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("https://idp.example.com"), "{message}");
    assert!(
        message.contains(&format!("{evil}/.well-known/openid-configuration")),
        "{message}"
    );
    // Nothing there at all: both URLs tried are named.
    let error = app
        .error(
            &create_client_mutation(),
            json!({ "input": discovered("nothing", &format!("{rfc}/other")) }),
        )
        .await;
    assert_eq!(code(&error), "OAUTH_DISCOVERY_FAILED", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{rfc}/other/.well-known/openid-configuration")),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "{rfc}/.well-known/oauth-authorization-server/other"
        )),
        "{message}"
    );
    assert!(message.contains("404"), "{message}");
    // Nobody listening.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let error = app
        .error(
            &create_client_mutation(),
            json!({ "input": discovered("closed", &closed) }),
        )
        .await;
    assert_eq!(code(&error), "OAUTH_DISCOVERY_FAILED", "{error}");
    assert_eq!(app.db.all_rows_as_text().await, before);
    assert!(app.take_snapshots().is_empty());

    for server in [oidc_server, rfc_server, evil_server] {
        server.abort();
    }
}

#[tokio::test]
async fn redis_stream_reports_are_applied() {
    use redis::AsyncCommands;
    let mut app = TestApp::new(Backend::Sqlite).await;
    let flow = started_flow(&mut app).await;
    let env = flow.environment.to_string();
    let names = RedisNames::new(format!("t-oauth-{}", Uuid::new_v4().simple()));
    let mut redis = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut connected = report(&flow, ConnectionStatus::Connected);
    connected.authorization_id = Some(flow.authorization);
    connected.tokens = Some(sealed_tokens(
        app.opening_key.sealing_key(),
        flow.tenant,
        flow.environment,
        flow.connection,
        1,
        "a",
        "r",
    ));
    let _: String = redis
        .xadd(
            names.events_stream(),
            "*",
            &[(OAUTH_FIELD, serde_json::to_string(&connected).unwrap())],
        )
        .await
        .unwrap();
    let mut config = RedisEventsConfig::new(REDIS_URL, names.clone());
    config.block = Duration::from_millis(200);
    let source = RedisEvents::new(config).unwrap();
    let ingester =
        EventIngester::start_with_publisher(app.db.db.clone(), source, app.state.publisher.clone());
    until_connection(&app, &env, "octocat", |c| {
        c["status"] == "CONNECTED" && c["tokenGeneration"] == 1
    })
    .await;
    let stats = ingester.shutdown().await;
    assert_eq!(stats.oauth_reports, 1);
    let snapshot = app.take_snapshots().pop().expect("republished");
    assert!(snapshot.oauth_authorizations.is_empty());
    assert_eq!(
        snapshot.oauth_connections["octocat"].status,
        ConnectionStatus::Connected
    );
    let _: () = redis.del(names.events_stream()).await.unwrap();
}
