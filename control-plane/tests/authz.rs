//! Access control through the GraphQL schema: every role against every operation (checked
//! against the role table written out below, independently of `policy.csv`), every operation
//! on tenant A tried with credentials of tenant B, grants and revocations in force at once,
//! and admin token self-service.

mod common;

use std::collections::BTreeMap;

use airlock_control_plane::authz::{Caller, Principal};
use airlock_control_plane::domain::admin_tokens;
use airlock_control_plane::domain::audit::Actor;
use airlock_control_plane::domain::users::{self, Identity};
use common::{Backend, TestApp};
use serde_json::{json, Value};
use uuid::Uuid;

const ROLES: [&str; 5] = ["owner", "admin", "developer", "provisioner", "viewer"];

/// The role table, as documented in docs/ACCESS.md: which tenant roles may run each
/// operation on the tenant's resources. (`superadmin` may run all of them; a caller with no
/// role in the tenant gets `NOT_FOUND`.)
const MATRIX: &[(&str, &[&str])] = &[
    (
        "tenant",
        &["owner", "admin", "developer", "provisioner", "viewer"],
    ),
    (
        "environments",
        &["owner", "admin", "developer", "provisioner", "viewer"],
    ),
    ("functions", &["owner", "admin", "developer", "viewer"]),
    (
        "secrets",
        &["owner", "admin", "developer", "provisioner", "viewer"],
    ),
    (
        "secretVersions",
        &["owner", "admin", "developer", "provisioner", "viewer"],
    ),
    ("apiKeys", &["owner", "admin", "developer", "viewer"]),
    ("auditLog", &["owner", "admin"]),
    ("provisioningLinks", &["owner", "admin"]),
    ("events", &["owner", "admin", "developer"]),
    ("roleAssignments", &["owner", "admin"]),
    (
        "oauthClients",
        &["owner", "admin", "developer", "provisioner", "viewer"],
    ),
    (
        "oauthConnections",
        &["owner", "admin", "developer", "provisioner", "viewer"],
    ),
    ("createTenant", &[]),
    ("createEnvironment", &["owner", "admin"]),
    ("createFunction", &["owner", "admin", "developer"]),
    ("setSecret", &["owner", "admin", "provisioner"]),
    ("setSecretHosts", &["owner", "admin", "provisioner"]),
    ("rollbackSecret", &["owner", "admin", "provisioner"]),
    ("deleteSecret", &["owner", "admin", "provisioner"]),
    ("createApiKey", &["owner", "admin", "developer"]),
    ("rotateApiKey", &["owner", "admin", "developer"]),
    ("revokeApiKey", &["owner", "admin", "developer"]),
    ("createProvisioningLink", &["owner", "admin"]),
    ("revokeProvisioningLink", &["owner", "admin"]),
    ("grantRole", &["owner", "admin"]),
    ("grantOwner", &["owner"]),
    ("revokeRole", &["owner", "admin"]),
    ("createOAuthClient", &["owner", "admin"]),
    ("updateOAuthClient", &["owner", "admin"]),
    ("deleteOAuthClient", &["owner", "admin"]),
    // Connecting an account is provisioning credentials.
    ("createOAuthConnection", &["owner", "admin", "provisioner"]),
    ("startOAuthConnection", &["owner", "admin", "provisioner"]),
    ("resetOAuthConnection", &["owner", "admin", "provisioner"]),
    ("deleteOAuthConnection", &["owner", "admin"]),
    // About the caller itself: any authenticated caller, with a role or without.
    (
        "me",
        &["owner", "admin", "developer", "provisioner", "viewer"],
    ),
];

/// Resources of one tenant an operation can point at. Fresh ones for every attempt, so that
/// one attempt (a delete, a revoke) cannot change what the next one sees.
#[derive(Debug, Clone)]
struct Fixture {
    tenant: String,
    environment: String,
    secret: String,
    link: String,
    assignment: String,
    api_key: String,
    /// An OAuth client no connection uses (so deleting it is allowed).
    oauth_client: String,
    /// A connection, of another client.
    oauth_connection: String,
}

const CREATE_OAUTH_CLIENT: &str = "mutation($e: ID!, $n: String!) { createOAuthClient(input: {environmentId: $e, name: $n, tokenUrl: \"https://idp.example.com/token\", authorizeUrl: \"https://idp.example.com/authorize\", redirectUri: \"https://gw.example.com/v1/oauth/callback\", clientId: \"c\", clientSecret: \"C_SECRET\", allowedHosts: [\"api.example.com\"]}) { id } }";

impl Fixture {
    /// Create the resources in `tenant`/`environment`, as the superadmin.
    async fn create(app: &TestApp, tenant: &str, environment: &str) -> Fixture {
        let name = format!("S_{}", Uuid::new_v4().simple());
        let secret = app.set_secret(environment, &name, "one").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        app.set_secret(environment, &name, "two").await;
        let link = app
            .ok(
                "mutation($e: ID!) { createProvisioningLink(input: {environmentId: $e, secrets: [{name: \"NEW\", allowedHosts: [\"api.example.com\"]}]}) { link { id } } }",
                json!({ "e": environment }),
            )
            .await["createProvisioningLink"]["link"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let assignment = app
            .ok(
                GRANT,
                json!({ "p": format!("email:v{}@example.com", Uuid::new_v4().simple()), "r": "VIEWER", "t": tenant, "e": null }),
            )
            .await["grantRole"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let api_key = app
            .ok(
                "mutation($e: ID!, $n: String!) { createApiKey(input: {environmentId: $e, name: $n, functions: [\"*\"]}) { apiKey { id } } }",
                json!({ "e": environment, "n": format!("k_{}", Uuid::new_v4().simple()) }),
            )
            .await["createApiKey"]["apiKey"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let oauth_client = |name: String| async move {
            app.ok(CREATE_OAUTH_CLIENT, json!({ "e": environment, "n": name }))
                .await["createOAuthClient"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let used_client = oauth_client(format!("c_{}", Uuid::new_v4().simple())).await;
        let free_client = oauth_client(format!("c_{}", Uuid::new_v4().simple())).await;
        let oauth_connection = app
            .ok(
                "mutation($c: ID!, $n: String!) { createOAuthConnection(input: {clientId: $c, name: $n}) { id } }",
                json!({ "c": used_client, "n": format!("conn_{}", Uuid::new_v4().simple()) }),
            )
            .await["createOAuthConnection"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        // Broken, as a data plane reports it, so that resetOAuthConnection has work to do.
        let broken = airlock_shared::oauth::OAuthConnectionReport {
            tenant_id: tenant.parse().unwrap(),
            environment_id: environment.parse().unwrap(),
            connection_id: oauth_connection.parse().unwrap(),
            connection: "fixture".into(),
            authorization_id: None,
            status: airlock_shared::oauth::ConnectionStatus::Broken,
            tokens: None,
            at: chrono::Utc::now(),
            error: Some("invalid_client".into()),
        };
        airlock_control_plane::domain::oauth::reports::apply(&app.db.db, &broken)
            .await
            .unwrap()
            .expect("the fixture connection exists");
        Fixture {
            tenant: tenant.to_string(),
            environment: environment.to_string(),
            secret,
            link,
            assignment,
            api_key,
            oauth_client: free_client,
            oauth_connection,
        }
    }

    /// Ids that exist nowhere.
    fn ghost() -> Fixture {
        let id = || Uuid::new_v4().to_string();
        Fixture {
            tenant: id(),
            environment: id(),
            secret: id(),
            link: id(),
            assignment: id(),
            api_key: id(),
            oauth_client: id(),
            oauth_connection: id(),
        }
    }

    fn ids(&self) -> [&str; 8] {
        [
            &self.tenant,
            &self.environment,
            &self.secret,
            &self.link,
            &self.assignment,
            &self.api_key,
            &self.oauth_client,
            &self.oauth_connection,
        ]
    }
}

const GRANT: &str = r#"mutation($p: String!, $r: Role!, $t: ID, $e: ID) {
  grantRole(input: {principal: $p, role: $r, tenantId: $t, environmentId: $e}) { id principal role tenantId environmentId }
}"#;

/// The operation `name`, pointed at `f`: (query, variables).
fn operation(name: &str, f: &Fixture) -> (&'static str, Value) {
    let unique = Uuid::new_v4().simple().to_string();
    match name {
        "tenant" => ("query($t: ID!) { tenant(id: $t) { id name } }", json!({ "t": f.tenant })),
        "environments" => (
            "query($t: ID!) { environments(tenantId: $t) { id } }",
            json!({ "t": f.tenant }),
        ),
        "functions" => (
            "query($t: ID!) { functions(tenantId: $t) { id } }",
            json!({ "t": f.tenant }),
        ),
        "secrets" => (
            "query($e: ID!) { secrets(environmentId: $e) { id name } }",
            json!({ "e": f.environment }),
        ),
        "secretVersions" => (
            "query($s: ID!) { secretVersions(secretId: $s) { version } }",
            json!({ "s": f.secret }),
        ),
        "apiKeys" => (
            "query($e: ID!) { apiKeys(environmentId: $e) { id } }",
            json!({ "e": f.environment }),
        ),
        "auditLog" => (
            "query($t: ID) { auditLog(filter: {tenantId: $t}) { entries { id } } }",
            json!({ "t": f.tenant }),
        ),
        "provisioningLinks" => (
            "query($e: ID!) { provisioningLinks(environmentId: $e) { id } }",
            json!({ "e": f.environment }),
        ),
        "events" => (
            "query($t: ID) { events(filter: {tenantId: $t}) { nodes { id } } }",
            json!({ "t": f.tenant }),
        ),
        "roleAssignments" => (
            "query($t: ID) { roleAssignments(tenantId: $t) { id } }",
            json!({ "t": f.tenant }),
        ),
        "createTenant" => (
            "mutation($n: String!) { createTenant(input: {name: $n}) { id } }",
            json!({ "n": format!("t_{unique}") }),
        ),
        "createEnvironment" => (
            "mutation($t: ID!, $n: String!) { createEnvironment(input: {tenantId: $t, name: $n}) { id } }",
            json!({ "t": f.tenant, "n": format!("e_{unique}") }),
        ),
        "createFunction" => (
            "mutation($t: ID!, $n: String!) { createFunction(input: {tenantId: $t, name: $n, method: \"GET\", url: \"https://api.example.com/x\", headers: []}) { id } }",
            json!({ "t": f.tenant, "n": format!("f_{unique}") }),
        ),
        "setSecret" => (
            "mutation($e: ID!, $n: String!) { setSecret(input: {environmentId: $e, name: $n, value: \"v\", allowedHosts: [\"api.example.com\"]}) { id } }",
            json!({ "e": f.environment, "n": format!("S_{unique}") }),
        ),
        "setSecretHosts" => (
            "mutation($s: ID!) { setSecretHosts(input: {secretId: $s, allowedHosts: [\"api.example.com\"]}) { id } }",
            json!({ "s": f.secret }),
        ),
        "rollbackSecret" => (
            "mutation($s: ID!) { rollbackSecret(input: {secretId: $s, version: 1}) { id } }",
            json!({ "s": f.secret }),
        ),
        "deleteSecret" => (
            "mutation($s: ID!) { deleteSecret(input: {secretId: $s}) }",
            json!({ "s": f.secret }),
        ),
        "createApiKey" => (
            "mutation($e: ID!, $n: String!) { createApiKey(input: {environmentId: $e, name: $n, functions: [\"*\"]}) { apiKey { id } } }",
            json!({ "e": f.environment, "n": format!("k_{unique}") }),
        ),
        "rotateApiKey" => (
            "mutation($k: ID!) { rotateApiKey(input: {id: $k, gracePeriodSeconds: 60}) { apiKey { id } key } }",
            json!({ "k": f.api_key }),
        ),
        "revokeApiKey" => (
            "mutation($k: ID!) { revokeApiKey(id: $k) { id revokedAt } }",
            json!({ "k": f.api_key }),
        ),
        "createProvisioningLink" => (
            "mutation($e: ID!) { createProvisioningLink(input: {environmentId: $e, secrets: [{name: \"NEW\", allowedHosts: [\"api.example.com\"]}]}) { link { id } } }",
            json!({ "e": f.environment }),
        ),
        "revokeProvisioningLink" => (
            "mutation($l: ID!) { revokeProvisioningLink(id: $l) { id } }",
            json!({ "l": f.link }),
        ),
        "grantRole" => (
            GRANT,
            json!({ "p": format!("email:g{unique}@example.com"), "r": "DEVELOPER", "t": f.tenant, "e": null }),
        ),
        "grantOwner" => (
            GRANT,
            json!({ "p": format!("email:o{unique}@example.com"), "r": "OWNER", "t": f.tenant, "e": null }),
        ),
        "revokeRole" => (
            "mutation($a: ID!) { revokeRole(id: $a) { id } }",
            json!({ "a": f.assignment }),
        ),
        "me" => ("{ me { kind principal roles { role } } }", json!({})),
        "oauthClients" => (
            "query($e: ID!) { oauthClients(environmentId: $e) { id name } }",
            json!({ "e": f.environment }),
        ),
        "oauthConnections" => (
            "query($e: ID!) { oauthConnections(environmentId: $e) { id name status } }",
            json!({ "e": f.environment }),
        ),
        "createOAuthClient" => (
            CREATE_OAUTH_CLIENT,
            json!({ "e": f.environment, "n": format!("c_{unique}") }),
        ),
        "updateOAuthClient" => (
            "mutation($c: ID!) { updateOAuthClient(input: {id: $c, scopes: [\"read\"]}) { id } }",
            json!({ "c": f.oauth_client }),
        ),
        "deleteOAuthClient" => (
            "mutation($c: ID!) { deleteOAuthClient(input: {id: $c}) }",
            json!({ "c": f.oauth_client }),
        ),
        "createOAuthConnection" => (
            "mutation($c: ID!, $n: String!) { createOAuthConnection(input: {clientId: $c, name: $n}) { id } }",
            json!({ "c": f.oauth_client, "n": format!("conn_{unique}") }),
        ),
        "startOAuthConnection" => (
            "mutation($e: ID!, $c: ID!, $n: String!) { startOAuthConnection(input: {environmentId: $e, clientId: $c, connection: $n}) { authorizeUrl expiresAt } }",
            json!({ "e": f.environment, "c": f.oauth_client, "n": format!("conn_{unique}") }),
        ),
        "deleteOAuthConnection" => (
            "mutation($c: ID!) { deleteOAuthConnection(input: {id: $c}) }",
            json!({ "c": f.oauth_connection }),
        ),
        "resetOAuthConnection" => (
            "mutation($c: ID!) { resetOAuthConnection(input: {id: $c}) { id status } }",
            json!({ "c": f.oauth_connection }),
        ),
        other => panic!("no operation {other}"),
    }
}

/// A standalone admin token holding `role` in `tenant` (or nothing, with `None`).
async fn principal_with(app: &TestApp, name: &str, role: Option<(&str, &str)>) -> Caller {
    let (model, _) = admin_tokens::create(
        &app.db.db,
        Actor::AdminToken(app.admin_token_id),
        name,
        None,
    )
    .await
    .unwrap();
    if let Some((role, tenant)) = role {
        app.ok(
            GRANT,
            json!({ "p": format!("token:{}", model.id), "r": role.to_uppercase(), "t": tenant, "e": null }),
        )
        .await;
    }
    Caller {
        actor: Actor::AdminToken(model.id),
        principal: Principal::Token(model.id),
    }
}

/// A person signed in with OpenID Connect holding `role` in `tenant`: resolvers must treat
/// users like tokens (the audit actor differs, nothing else).
async fn user_with(app: &TestApp, name: &str, role: &str, tenant: &str) -> Caller {
    let signed_in = users::sign_in(
        &app.db.db,
        &Identity::new("https://idp.example.test", name, None, false),
    )
    .await
    .unwrap();
    let id = signed_in.user.id;
    app.ok(
        GRANT,
        json!({ "p": format!("user:{id}"), "r": role.to_uppercase(), "t": tenant, "e": null }),
    )
    .await;
    Caller {
        actor: Actor::User(id),
        principal: Principal::User(id),
    }
}

/// The error code of a response, or `None` when it succeeded.
fn error_code(response: &async_graphql::Response) -> Option<String> {
    response.errors.first().map(|error| {
        error
            .extensions
            .as_ref()
            .and_then(|e| e.get("code"))
            .map(|code| code.to_string().trim_matches('"').to_string())
            .unwrap_or_default()
    })
}

struct World {
    app: TestApp,
    tenant_a: String,
    environment_a: String,
    tenant_b: String,
}

async fn world() -> World {
    let app = TestApp::new(Backend::Sqlite).await;
    let tenant_a = app.create_tenant("acme").await;
    let environment_a = app.create_environment(&tenant_a, "prod").await;
    app.create_function(&tenant_a, "get_user").await;
    let tenant_b = app.create_tenant("globex").await;
    let environment_b = app.create_environment(&tenant_b, "prod").await;
    app.set_secret(&environment_b, "B_TOKEN", "b").await;
    World {
        app,
        tenant_a,
        environment_a,
        tenant_b,
    }
}

#[tokio::test]
async fn every_role_against_every_operation_follows_the_role_table() {
    let world = world().await;
    let app = &world.app;
    let mut callers = Vec::new();
    for role in ROLES {
        callers.push((
            role,
            principal_with(app, &format!("as_{role}"), Some((role, &world.tenant_a))).await,
        ));
        callers.push((
            role,
            user_with(app, &format!("user_{role}"), role, &world.tenant_a).await,
        ));
    }
    let nobody = principal_with(app, "as_nobody", None).await;

    let mut mismatches = Vec::new();
    for (operation_name, allowed) in MATRIX {
        for (role, caller) in &callers {
            let fixture = Fixture::create(app, &world.tenant_a, &world.environment_a).await;
            let (query, variables) = operation(operation_name, &fixture);
            let response = app.exec_as(caller, query, variables).await;
            let got = error_code(&response);
            let want = if allowed.contains(role) {
                None
            } else {
                Some("FORBIDDEN".to_string())
            };
            if got != want {
                mismatches.push(format!(
                    "{role} ({:?}) {operation_name}: got {got:?}, want {want:?} ({:?})",
                    caller.actor.actor_type(),
                    response.errors
                ));
            }
        }
        // No role in the tenant: nothing there exists (creating a tenant is a platform
        // permission, so that is FORBIDDEN).
        let fixture = Fixture::create(app, &world.tenant_a, &world.environment_a).await;
        let (query, variables) = operation(operation_name, &fixture);
        let got = error_code(&app.exec_as(&nobody, query, variables).await);
        let want = match *operation_name {
            "createTenant" => Some("FORBIDDEN"),
            "me" => None,
            _ => Some("NOT_FOUND"),
        };
        if got.as_deref() != want {
            mismatches.push(format!(
                "nobody {operation_name}: got {got:?}, want {want:?}"
            ));
        }
        // The superadmin may do everything.
        let fixture = Fixture::create(app, &world.tenant_a, &world.environment_a).await;
        let (query, variables) = operation(operation_name, &fixture);
        let response = app.exec(query, variables).await;
        if !response.errors.is_empty() {
            mismatches.push(format!(
                "superadmin {operation_name}: {:?}",
                response.errors
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[tokio::test]
async fn credentials_of_tenant_b_neither_read_nor_change_tenant_a() {
    let world = world().await;
    let app = &world.app;
    let mut intruders = vec![principal_with(app, "nobody", None).await];
    for role in ROLES {
        intruders
            .push(principal_with(app, &format!("b_{role}"), Some((role, &world.tenant_b))).await);
    }
    // A role on one environment of tenant B as well.
    let b_environment = app.create_environment(&world.tenant_b, "stage").await;
    let env_admin = principal_with(app, "b_env_admin", None).await;
    app.ok(
        GRANT,
        json!({ "p": env_admin.principal.to_string(), "r": "ADMIN", "t": world.tenant_b, "e": b_environment }),
    )
    .await;
    intruders.push(env_admin);

    let fixture = Fixture::create(app, &world.tenant_a, &world.environment_a).await;
    let ghost = Fixture::ghost();
    let before = app.db.all_rows_as_text().await;
    for intruder in &intruders {
        for (operation_name, _) in MATRIX {
            let (query, variables) = operation(operation_name, &fixture);
            let real = app.exec_as(intruder, query, variables).await;
            if matches!(*operation_name, "createTenant" | "me") {
                continue; // Not about tenant A; the matrix covers it.
            }
            assert_eq!(
                error_code(&real).as_deref(),
                Some("NOT_FOUND"),
                "{} {operation_name}: {:?}",
                intruder.principal,
                real.errors
            );
            // Exactly what an id that does not exist gets.
            let (query, variables) = operation(operation_name, &ghost);
            let missing = app.exec_as(intruder, query, variables).await;
            let mut expected = missing.errors[0].message.clone();
            for (ghost_id, real_id) in ghost.ids().into_iter().zip(fixture.ids()) {
                expected = expected.replace(ghost_id, real_id);
            }
            assert_eq!(real.errors[0].message, expected, "{operation_name}");
            assert!(real.data.into_json().unwrap().is_null());
        }
        // Lists show tenant B only.
        let tenants = app
            .exec_as(intruder, "{ tenants { id } }", json!({}))
            .await
            .data
            .into_json()
            .unwrap();
        assert!(!tenants.to_string().contains(&world.tenant_a), "{tenants}");
        // Unfiltered logs are the platform's.
        for query in [
            "{ auditLog { entries { id } } }",
            "{ events { nodes { id } } }",
            "{ roleAssignments { id } }",
        ] {
            let response = app.exec_as(intruder, query, json!({})).await;
            assert_eq!(
                error_code(&response).as_deref(),
                Some("FORBIDDEN"),
                "{query}"
            );
        }
    }
    // Nothing was written (not even an audit entry).
    assert_eq!(app.db.all_rows_as_text().await, before);
}

#[tokio::test]
async fn an_environment_role_reaches_that_environment_only() {
    let world = world().await;
    let app = &world.app;
    let stage = app.create_environment(&world.tenant_a, "stage").await;
    let provisioner = principal_with(app, "prov", None).await;
    app.ok(
        GRANT,
        json!({ "p": provisioner.principal.to_string(), "r": "PROVISIONER", "t": world.tenant_a, "e": stage }),
    )
    .await;
    let set = "mutation($e: ID!) { setSecret(input: {environmentId: $e, name: \"TOKEN\", value: \"v\", allowedHosts: [\"api.example.com\"]}) { id } }";
    let response = app.exec_as(&provisioner, set, json!({ "e": stage })).await;
    assert!(response.errors.is_empty(), "{:?}", response.errors);
    let response = app
        .exec_as(&provisioner, set, json!({ "e": world.environment_a }))
        .await;
    assert_eq!(error_code(&response).as_deref(), Some("FORBIDDEN"));
    // It sees the tenant's name and its one environment, nothing else.
    let data = app
        .exec_as(
            &provisioner,
            "query($t: ID!) { tenant(id: $t) { name environments { id } } }",
            json!({ "t": world.tenant_a }),
        )
        .await
        .data
        .into_json()
        .unwrap();
    assert_eq!(data["tenant"]["environments"], json!([{ "id": stage }]));
    // Bad grants are refused and write nothing.
    let counts = app.db.row_counts().await;
    for (variables, code) in [
        (
            json!({ "p": "token:nope", "r": "ADMIN", "t": world.tenant_a, "e": null }),
            "INVALID_INPUT",
        ),
        (
            json!({ "p": "email:x@example.com", "r": "SUPERADMIN", "t": world.tenant_a, "e": null }),
            "INVALID_INPUT",
        ),
        (
            json!({ "p": "email:x@example.com", "r": "OWNER", "t": world.tenant_a, "e": stage }),
            "INVALID_INPUT",
        ),
        (
            json!({ "p": "email:x@example.com", "r": "ADMIN", "t": world.tenant_b, "e": stage }),
            "INVALID_INPUT",
        ),
        (
            json!({ "p": format!("user:{}", Uuid::new_v4()), "r": "ADMIN", "t": world.tenant_a, "e": null }),
            "NOT_FOUND",
        ),
        (
            json!({ "p": provisioner.principal.to_string(), "r": "PROVISIONER", "t": world.tenant_a, "e": stage }),
            "ALREADY_EXISTS",
        ),
    ] {
        let response = app.exec(GRANT, variables.clone()).await;
        assert_eq!(error_code(&response).as_deref(), Some(code), "{variables}");
    }
    assert_eq!(app.db.row_counts().await, counts);
}

#[tokio::test]
async fn grants_and_revocations_are_in_force_at_once() {
    let world = world().await;
    let app = &world.app;
    let caller = principal_with(app, "dev", None).await;
    let query = "query($t: ID!) { functions(tenantId: $t) { name } }";
    let variables = json!({ "t": world.tenant_a });
    assert_eq!(
        error_code(&app.exec_as(&caller, query, variables.clone()).await).as_deref(),
        Some("NOT_FOUND")
    );
    let granted = app
        .ok(
            GRANT,
            json!({ "p": caller.principal.to_string(), "r": "DEVELOPER", "t": world.tenant_a, "e": null }),
        )
        .await;
    let response = app.exec_as(&caller, query, variables.clone()).await;
    assert!(response.errors.is_empty(), "{:?}", response.errors);
    app.ok(
        "mutation($a: ID!) { revokeRole(id: $a) { id } }",
        json!({ "a": granted["grantRole"]["id"] }),
    )
    .await;
    assert_eq!(
        error_code(&app.exec_as(&caller, query, variables).await).as_deref(),
        Some("NOT_FOUND")
    );

    // The last superadmin cannot be revoked.
    let platform = app
        .ok("{ roleAssignments { id role principal } }", json!({}))
        .await;
    let assignments = platform["roleAssignments"].as_array().unwrap();
    assert_eq!(assignments.len(), 1);
    let response = app
        .exec(
            "mutation($a: ID!) { revokeRole(id: $a) { id } }",
            json!({ "a": assignments[0]["id"] }),
        )
        .await;
    assert_eq!(error_code(&response).as_deref(), Some("INVALID_INPUT"));

    // Grants and revocations are audited.
    let actions: Vec<String> = app
        .audit_rows()
        .await
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_string())
        .filter(|a| a.starts_with("role."))
        .collect();
    assert_eq!(actions, ["role.grant", "role.revoke"]);
}

#[tokio::test]
async fn admin_tokens_are_created_listed_and_revoked_by_their_owner() {
    let world = world().await;
    let app = &world.app;
    let admin = principal_with(app, "acme_admin", Some(("admin", &world.tenant_a))).await;
    let other = principal_with(app, "globex_admin", Some(("admin", &world.tenant_b))).await;

    // A token that acts for its creator carries the creator's roles.
    let created = app
        .exec_as(
            &admin,
            "mutation { createAdminToken(input: {name: \"ci\"}) { token adminToken { id actsFor } } }",
            json!({}),
        )
        .await
        .data
        .into_json()
        .unwrap();
    let token = created["createAdminToken"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let token_id = created["createAdminToken"]["adminToken"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        created["createAdminToken"]["adminToken"]["actsFor"],
        admin.principal.to_string()
    );
    let caller = admin_tokens::authenticate(&app.db.db, &token)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(caller.principal, admin.principal);
    let response = app
        .exec_as(
            &caller,
            "query($t: ID!) { tenant(id: $t) { name } }",
            json!({ "t": world.tenant_a }),
        )
        .await;
    assert!(response.errors.is_empty());

    // Listed to its owner, not to someone else; revocable by its owner only.
    let names = |caller: &Caller| {
        let caller = caller.clone();
        async move {
            let data = app
                .exec_as(&caller, "{ adminTokens { name } }", json!({}))
                .await
                .data
                .into_json()
                .unwrap();
            data["adminTokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names(&admin).await, ["acme_admin", "ci"]);
    assert_eq!(names(&other).await, ["globex_admin"]);
    let revoke = "mutation($id: ID!) { revokeAdminToken(id: $id) { revokedAt } }";
    let response = app.exec_as(&other, revoke, json!({ "id": token_id })).await;
    assert_eq!(error_code(&response).as_deref(), Some("NOT_FOUND"));
    assert!(admin_tokens::authenticate(&app.db.db, &token)
        .await
        .unwrap()
        .is_some());
    let response = app.exec_as(&admin, revoke, json!({ "id": token_id })).await;
    assert!(response.errors.is_empty(), "{:?}", response.errors);
    assert!(admin_tokens::authenticate(&app.db.db, &token)
        .await
        .unwrap()
        .is_none());

    // The superadmin sees every token; only hashes are stored.
    assert!(names(&app.superadmin()).await.len() >= 4);
    let rows = app.db.all_rows_as_text().await;
    assert!(rows.iter().all(|r| !r.contains(&token)));
    let counts: BTreeMap<_, _> = app.db.row_counts().await;
    assert!(counts["admin_tokens"] >= 4);
}

/// Operations outside the role table, with why: they act on the caller's own things or
/// filter by the caller's grants, and have tests of their own.
const SELF_SERVICE: &[&str] = &[
    // Lists only the tenants the caller holds a role in (cross-tenant test below).
    "tenants",
    // A caller's own admin tokens (`admin_tokens_are_created_listed_and_revoked_by_their_owner`).
    "adminTokens",
    "createAdminToken",
    "revokeAdminToken",
];

/// The matrix covers the whole API: every query and mutation in the schema is either in the
/// role table or a self-service operation, so a new resolver cannot slip past the test.
#[test]
fn the_matrix_names_every_query_and_mutation() {
    let sdl = include_str!("../schema.graphql");
    let mut missing = Vec::new();
    for root in ["type Query {", "type Mutation {"] {
        let body = sdl
            .split(root)
            .nth(1)
            .expect(root)
            .split("\n}")
            .next()
            .unwrap();
        let mut in_doc = false;
        for line in body.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with("\"\"\"") {
                // A doc string: one line (`"""text"""`) or until the closing `"""`.
                let one_line = trimmed.len() > 3 && trimmed.ends_with("\"\"\"");
                if !one_line {
                    in_doc = !in_doc;
                }
                continue;
            }
            if in_doc || trimmed.is_empty() {
                continue;
            }
            let name = trimmed.split(['(', ':']).next().unwrap();
            let known = MATRIX.iter().any(|(op, _)| *op == name) || SELF_SERVICE.contains(&name);
            if !known {
                missing.push(name.to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in MATRIX nor SELF_SERVICE: {missing:?}"
    );
}
