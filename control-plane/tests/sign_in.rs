//! Console sessions through `app(state)`: cookie-authenticated GraphQL needs the session's
//! CSRF token, bearer tokens do not; GraphQL over GET never runs; logout and expiry end a
//! session; sessions are stored hashed; email invitations move to a user only with a
//! verified address. (The sign-in flow against a real provider is in e2e/tests/oidc_sign_in.rs.)

mod common;

use airlock_control_plane::authz::Principal;
use airlock_control_plane::domain::sessions;
use airlock_control_plane::domain::users::{self, Identity};
use airlock_control_plane::http::auth::{CSRF_HEADER, SESSION_COOKIE};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{json_body, send, Backend, TestApp};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.example.test";
const CREATE_FUNCTION: &str = "mutation($t: ID!, $n: String!) { createFunction(input: {tenantId: $t, name: $n, method: \"GET\", url: \"https://api.example.com/x\", headers: []}) { id } }";

/// POST /graphql with the session cookie, and the CSRF header when given.
fn cookie_post(session: &str, csrf: Option<&str>, query: &str, variables: Value) -> Request<Body> {
    let mut request = Request::post("/graphql")
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::COOKIE,
            format!("theme=dark; {SESSION_COOKIE}={session}"),
        );
    if let Some(csrf) = csrf {
        request = request.header(CSRF_HEADER, csrf);
    }
    request
        .body(Body::from(
            json!({ "query": query, "variables": variables }).to_string(),
        ))
        .unwrap()
}

/// A tenant, `dana@example.test` invited as its developer, dana signed in (verified email),
/// and a session for her.
async fn signed_in() -> (TestApp, String, uuid::Uuid, sessions::NewSession) {
    let app = TestApp::new(Backend::Sqlite).await;
    let tenant = app.create_tenant("acme").await;
    app.ok(
        "mutation($t: ID!) { grantRole(input: {principal: \"email:dana@example.test\", role: DEVELOPER, tenantId: $t}) { id } }",
        json!({ "t": tenant }),
    )
    .await;
    let signed_in = users::sign_in(
        &app.db.db,
        &Identity::new(ISSUER, "dana", Some("Dana@Example.test"), true),
    )
    .await
    .unwrap();
    assert_eq!(signed_in.claimed_invitations, 1);
    app.state.authz.reload().await.unwrap();
    let session = sessions::create(&app.db.db, signed_in.user.id)
        .await
        .unwrap();
    (app, tenant, signed_in.user.id, session)
}

#[tokio::test]
async fn cookie_authenticated_graphql_needs_the_csrf_token() {
    let (app, tenant, user, session) = signed_in().await;
    let csrf = sessions::csrf_token(&session.token);
    let variables = json!({ "t": tenant, "n": "get_user" });

    let before = app.db.row_counts().await;
    for header in [None, Some("wrong"), Some(""), Some(session.token.as_str())] {
        let response = send(
            &app,
            cookie_post(&session.token, header, CREATE_FUNCTION, variables.clone()),
        )
        .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{header:?}");
        let body = json_body(response).await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "CSRF_TOKEN_INVALID",
            "{body}"
        );
        assert!(body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("X-CSRF-Token"));
    }
    assert_eq!(app.db.row_counts().await, before, "nothing ran");

    let response = send(
        &app,
        cookie_post(&session.token, Some(&csrf), CREATE_FUNCTION, variables),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_body(response).await;
    assert!(body["data"]["createFunction"]["id"].is_string(), "{body}");
    // Done as the user.
    let audit = app.audit_rows().await;
    let created = audit
        .iter()
        .find(|r| r["action"] == "function.create")
        .unwrap();
    assert_eq!(created["actorType"], "user");
    assert_eq!(created["actorId"], user.to_string());

    let response = send(
        &app,
        cookie_post(
            &session.token,
            Some(&csrf),
            "{ me { kind principal email roles { role tenantId } } }",
            json!({}),
        ),
    )
    .await;
    assert_eq!(
        json_body(response).await["data"]["me"],
        json!({
            "kind": "USER",
            "principal": format!("user:{user}"),
            "email": "dana@example.test",
            "roles": [{ "role": "DEVELOPER", "tenantId": tenant }],
        })
    );
}

#[tokio::test]
async fn bearer_requests_need_no_csrf_token_and_bad_bearers_are_401() {
    let (app, _, _, session) = signed_in().await;
    // A bearer token decides, whatever cookie comes along: no CSRF header needed.
    let mut request = cookie_post(&session.token, None, "{ me { kind } }", json!({}));
    request.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {}", app.admin_token).parse().unwrap(),
    );
    let response = send(&app, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_body(response).await["data"]["me"]["kind"], "TOKEN");

    // A JWT-looking bearer without OIDC configured, or a bad admin token, is 401, and the
    // answer does not repeat it.
    for bearer in [
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "atk_forged",
        "opaque-token-1234",
    ] {
        let mut request = cookie_post(&session.token, None, "{ me { kind } }", json!({}));
        request.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Bearer {bearer}").parse().unwrap(),
        );
        let response = send(&app, request).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{bearer}");
        let body = json_body(response).await;
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
        assert!(!body.to_string().contains(bearer), "{body}");
    }
}

#[tokio::test]
async fn graphql_over_get_never_runs() {
    let (app, tenant, _, session) = signed_in().await;
    let csrf = sessions::csrf_token(&session.token);
    let before = app.db.row_counts().await;
    let query = format!(
        "/graphql?query=mutation%7BcreateTenant(input%3A%7Bname%3A%22x%22%7D)%7Bid%7D%7D&t={tenant}"
    );
    let response = send(
        &app,
        Request::get(query.as_str())
            .header(
                header::COOKIE,
                format!("{SESSION_COOKIE}={}", session.token),
            )
            .header(CSRF_HEADER, &csrf)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        json_body(response).await["errors"][0]["extensions"]["code"],
        "METHOD_NOT_ALLOWED"
    );
    assert_eq!(app.db.row_counts().await, before);
    // GraphiQL itself still loads.
    let response = send(&app, Request::get("/graphql").body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn sessions_are_stored_hashed_and_end_at_logout_or_expiry() {
    let (app, _, user, session) = signed_in().await;
    let csrf = sessions::csrf_token(&session.token);
    let rows = app.db.all_rows_as_text().await.join("\n");
    assert!(
        !rows.contains(&session.token),
        "session id stored in plaintext"
    );
    assert!(!rows.contains(&csrf), "CSRF token stored");

    let session_get = |token: &str| {
        Request::get("/auth/session")
            .header(header::COOKIE, format!("{SESSION_COOKIE}={token}"))
            .body(Body::empty())
            .unwrap()
    };
    let response = send(&app, session_get(&session.token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    let body = json_body(response).await;
    assert_eq!(body["user"]["id"], user.to_string());
    assert_eq!(body["user"]["email"], "dana@example.test");
    assert_eq!(body["user"]["issuer"], ISSUER);
    assert_eq!(body["roles"][0]["role"], "developer");
    assert_eq!(body["csrfToken"], csrf);

    // Logout needs the CSRF header, then the session is gone.
    let logout = |csrf: Option<&str>| {
        let mut request = Request::post("/auth/logout").header(
            header::COOKIE,
            format!("{SESSION_COOKIE}={}", session.token),
        );
        if let Some(csrf) = csrf {
            request = request.header(CSRF_HEADER, csrf);
        }
        request.body(Body::empty()).unwrap()
    };
    let response = send(&app, logout(None)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.db.row_counts().await["sessions"], 1);
    let response = send(&app, logout(Some(&csrf))).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let cleared = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.starts_with("airlock_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(app.db.row_counts().await["sessions"], 0);
    let response = send(&app, session_get(&session.token)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = send(
        &app,
        cookie_post(&session.token, Some(&csrf), "{ me { kind } }", json!({})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // An expired session authenticates nothing.
    let later = sessions::create(&app.db.db, user).await.unwrap();
    app.db
        .db
        .execute_raw(Statement::from_string(
            app.db.db.get_database_backend(),
            "UPDATE sessions SET expires_at = '2020-01-01T00:00:00+00:00'",
        ))
        .await
        .unwrap();
    let response = send(
        &app,
        cookie_post(
            &later.token,
            Some(&sessions::csrf_token(&later.token)),
            "{ me { kind } }",
            json!({}),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Nor does a made-up one.
    let response = send(&app, session_get("ses_made-up")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn invitations_move_to_a_user_only_with_a_verified_email() {
    let app = TestApp::new(Backend::Sqlite).await;
    let tenant = app.create_tenant("acme").await;
    app.ok(
        "mutation($t: ID!) { grantRole(input: {principal: \"email:erin@example.test\", role: VIEWER, tenantId: $t}) { id } }",
        json!({ "t": tenant }),
    )
    .await;
    let invitation = Principal::Email("erin@example.test".into());
    let tenant_id = uuid::Uuid::parse_str(&tenant).unwrap();

    // An unverified address takes nothing.
    let unverified = users::sign_in(
        &app.db.db,
        &Identity::new(ISSUER, "erin-unverified", Some("erin@example.test"), false),
    )
    .await
    .unwrap();
    assert_eq!(unverified.claimed_invitations, 0);
    app.state.authz.reload().await.unwrap();
    assert!(app.state.authz.sees_tenant(&invitation, tenant_id));
    assert!(!app
        .state
        .authz
        .sees_tenant(&Principal::User(unverified.user.id), tenant_id));

    // A verified one takes the role, once.
    let erin = users::sign_in(
        &app.db.db,
        &Identity::new(ISSUER, "erin", Some("ERIN@example.test"), true),
    )
    .await
    .unwrap();
    assert_eq!(erin.claimed_invitations, 1);
    app.state.authz.reload().await.unwrap();
    assert!(app
        .state
        .authz
        .sees_tenant(&Principal::User(erin.user.id), tenant_id));
    assert!(!app.state.authz.sees_tenant(&invitation, tenant_id));
    let claims: Vec<_> = app
        .audit_rows()
        .await
        .into_iter()
        .filter(|r| r["action"] == "role.claim")
        .collect();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["actorType"], "user");

    // Same issuer and subject: the same user, sign-in recorded. Another issuer with the same
    // subject is someone else, and finds no invitation left.
    let again = users::sign_in(
        &app.db.db,
        &Identity::new(ISSUER, "erin", Some("erin@example.test"), true),
    )
    .await
    .unwrap();
    assert_eq!(again.user.id, erin.user.id);
    assert!(again.user.last_sign_in_at >= erin.user.last_sign_in_at);
    let elsewhere = users::find_or_create(
        &app.db.db,
        &Identity::new(
            "https://other.example.test",
            "erin",
            Some("erin@example.test"),
            true,
        ),
    )
    .await
    .unwrap();
    assert_ne!(elsewhere.user.id, erin.user.id);
    assert_eq!(elsewhere.claimed_invitations, 0);
    assert_eq!(
        elsewhere.user.last_sign_in_at, None,
        "a bearer token is not a sign-in"
    );
}

#[tokio::test]
async fn sign_in_routes_without_oidc_say_so() {
    let app = TestApp::new(Backend::Sqlite).await;
    for path in ["/auth/login", "/auth/callback?code=c&state=s"] {
        let response = send(&app, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("AIRLOCK_OIDC_ISSUER"));
    }
    let response = send(
        &app,
        Request::get("/auth/session").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn pending_sign_ins_are_bounded() {
    let app = TestApp::new(Backend::Sqlite).await;
    let fill = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
         INSERT INTO login_attempts (id, state_hash, binding_hash, return_to, created_at, expires_at) \
         SELECT lower(hex(randomblob(16))), 'h' || i, 'b', '/', '2026-01-01T00:00:00+00:00', \
         '2999-01-01T00:00:00+00:00' FROM n",
        sessions::MAX_PENDING_LOGINS
    );
    app.db.db.execute_unprepared(&fill).await.unwrap();
    let error = sessions::start_login(&app.db.db, "/").await.unwrap_err();
    assert_eq!(error.code(), "RATE_LIMITED");
    assert_eq!(error.http_status(), StatusCode::TOO_MANY_REQUESTS);
    // Expired attempts make room again.
    app.db
        .db
        .execute_unprepared("UPDATE login_attempts SET expires_at = '2020-01-01T00:00:00+00:00'")
        .await
        .unwrap();
    sessions::start_login(&app.db.db, "/").await.unwrap();
    assert_eq!(app.db.row_counts().await["login_attempts"], 1);
}
