//! The HTTP surface through `app(state)` with tower's `oneshot`: authentication, GraphiQL,
//! health, GraphQL-over-HTTP status codes and the body size cap.

mod common;

use airlock_control_plane::http::MAX_BODY_BYTES;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{json_body, send, Backend, TestApp};
use serde_json::json;
use tower::ServiceExt;

async fn setup() -> (TestApp, String) {
    let app = TestApp::new(Backend::Sqlite).await;
    let token = app.admin_token.clone();
    (app, token)
}

fn graphql_post(token: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post("/graphql").header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(body.into()).unwrap()
}

fn query(text: &str) -> String {
    json!({ "query": text }).to_string()
}

#[tokio::test]
async fn graphql_requires_a_known_admin_token() {
    let (app, token) = setup().await;
    let tenants = query("{ tenants { id } }");

    for request in [
        graphql_post(None, tenants.clone()),
        graphql_post(Some("atk_not-a-real-token"), tenants.clone()),
        graphql_post(Some(""), tenants.clone()),
        Request::post("/graphql")
            .header(header::AUTHORIZATION, format!("Basic {token}"))
            .body(Body::from(tenants.clone()))
            .unwrap(),
    ] {
        let response = send(&app, request).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let body = json_body(response).await;
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
        assert!(body.get("data").is_none());
    }

    // Nothing ran: a mutation without a token writes nothing.
    let before = app.db.row_counts().await;
    let response = send(
        &app,
        graphql_post(
            None,
            query("mutation { createTenant(input: {name: \"x\"}) { id } }"),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.db.row_counts().await, before);

    let response = send(&app, graphql_post(Some(&token), tenants)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/graphql-response+json"
    );
    assert_eq!(
        json_body(response).await,
        json!({ "data": { "tenants": [] } })
    );
}

#[tokio::test]
async fn graphiql_loads_without_a_token() {
    let (app, _) = setup().await;
    let response = send(&app, Request::get("/graphql").body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let html = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(html.to_lowercase().contains("graphiql"));
    assert!(html.contains("/graphql"));
}

#[tokio::test]
async fn health_and_readiness() {
    let (app, _) = setup().await;
    let response = send(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_body(response).await["status"], "ok");

    let response = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_body(response).await["status"], "ready");

    // With the database gone, the process is alive but not ready.
    let router = airlock_control_plane::app(app.state.clone());
    app.db.db.clone().close().await.unwrap();
    let response = router
        .clone()
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let response = router
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn request_errors_are_400_and_field_errors_200() {
    let (app, token) = setup().await;

    // Parse error.
    let response = send(&app, graphql_post(Some(&token), query("{ tenants { id "))).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(!json_body(response).await["errors"]
        .as_array()
        .unwrap()
        .is_empty());

    // Validation error: unknown field.
    let response = send(
        &app,
        graphql_post(Some(&token), query("{ tenants { password } }")),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Not JSON at all, and batches.
    let response = send(&app, graphql_post(Some(&token), "{not json")).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json_body(response).await["errors"][0]["extensions"]["code"],
        "INVALID_INPUT"
    );
    let batch = json!([{ "query": "{ tenants { id } }" }, { "query": "{ tenants { id } }" }]);
    let response = send(&app, graphql_post(Some(&token), batch.to_string())).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // A resolver error is a normal GraphQL response with its code.
    let response = send(
        &app,
        graphql_post(
            Some(&token),
            query("{ tenant(id: \"00000000-0000-0000-0000-000000000000\") { id } }"),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_body(response).await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "NOT_FOUND");
    assert_eq!(body["errors"][0]["path"], json!(["tenant"]));
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let (app, token) = setup().await;
    let padding = "x".repeat(MAX_BODY_BYTES + 1);
    let body =
        json!({ "query": "{ tenants { id } }", "variables": { "pad": padding } }).to_string();

    // Declared length: refused before reading.
    let response = send(&app, graphql_post(Some(&token), body.clone())).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Streamed without a length: refused once the limit is reached.
    let chunks: Vec<Result<String, std::io::Error>> = body
        .as_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let stream = Body::from_stream(futures::stream::iter(chunks));
    let response = send(&app, graphql_post(Some(&token), stream)).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Unauthenticated large bodies are refused without being read as well.
    let response = send(&app, graphql_post(None, body)).await;
    assert!(matches!(
        response.status(),
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNAUTHORIZED
    ));
}

#[tokio::test]
async fn graphql_requests_act_as_their_admin_token_and_links_use_the_host() {
    let (app, token) = setup().await;
    let token_id = app.admin_token_id;
    let run = |state: airlock_control_plane::state::AppState,
               host: Option<&'static str>,
               body: String| {
        let token = token.clone();
        async move {
            let mut request = graphql_post(Some(&token), body);
            if let Some(host) = host {
                request
                    .headers_mut()
                    .insert(header::HOST, header::HeaderValue::from_static(host));
            }
            let response = airlock_control_plane::app(state)
                .oneshot(request)
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let body = json_body(response).await;
            assert!(body.get("errors").is_none(), "{body}");
            body["data"].clone()
        }
    };

    let tenant = run(
        app.state.clone(),
        None,
        query("mutation { createTenant(input: {name: \"acme\"}) { id } }"),
    )
    .await;
    let tenant = tenant["createTenant"]["id"].as_str().unwrap().to_string();
    let environment = run(
        app.state.clone(),
        None,
        json!({
            "query": "mutation($t: ID!) { createEnvironment(input: {tenantId: $t, name: \"prod\"}) { id } }",
            "variables": { "t": tenant }
        })
        .to_string(),
    )
    .await;
    let environment = environment["createEnvironment"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The audit log names the token the request authenticated with.
    let log = run(
        app.state.clone(),
        None,
        query("{ auditLog { entries { action actor { type id } } } }"),
    )
    .await;
    assert_eq!(
        log["auditLog"]["entries"],
        json!([
            { "action": "environment.create", "actor": { "type": "ADMIN_TOKEN", "id": token_id.to_string() } },
            { "action": "tenant.create", "actor": { "type": "ADMIN_TOKEN", "id": token_id.to_string() } },
        ])
    );

    // Provisioning links: the request's Host by default, AIRLOCK_PUBLIC_URL when configured.
    let create_link = json!({
        "query": "mutation($e: ID!) { createProvisioningLink(input: {environmentId: $e, secrets: [{name: \"T\", allowedHosts: [\"api.example.com\"]}]}) { url } }",
        "variables": { "e": environment }
    })
    .to_string();
    let link = run(
        app.state.clone(),
        Some("airlock.internal:8080"),
        create_link.clone(),
    )
    .await;
    let url = link["createProvisioningLink"]["url"].as_str().unwrap();
    assert!(
        url.starts_with("http://airlock.internal:8080/provision/apl_"),
        "{url}"
    );
    let configured = airlock_control_plane::state::AppState {
        public_url: Some("https://vault.example.com/airlock".into()),
        data_plane_url: None,
        ..app.state.clone()
    };
    let link = run(configured, Some("airlock.internal:8080"), create_link).await;
    let url = link["createProvisioningLink"]["url"].as_str().unwrap();
    assert!(
        url.starts_with("https://vault.example.com/airlock/provision/apl_"),
        "{url}"
    );

    // The link works through the same router, without the admin token.
    let path = url
        .strip_prefix("https://vault.example.com/airlock")
        .unwrap();
    let response = send(&app, Request::get(path).body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = send(
        &app,
        Request::get("/provision/apl_nope")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "an admin token opens nothing"
    );
}
