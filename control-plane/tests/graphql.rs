//! GraphQL operations through `schema.execute`, on SQLite and on PostgreSQL.

mod common;

use std::collections::BTreeMap;

use airlock_control_plane::authz::{Authz, Permission, Principal, Scope};
use airlock_control_plane::domain::admin_tokens;
use airlock_control_plane::domain::audit::Actor;
use airlock_shared::api_key::ApiKeyHash;
use airlock_shared::seal::SecretIdentity;
use common::{TestApp, TestDb};
use serde_json::{json, Value};
use uuid::Uuid;

on_both_backends!(
    every_operation_works,
    bad_input_gets_its_code_and_writes_nothing,
    duplicate_names_are_already_exists,
    names_are_scoped_to_their_parent,
    secret_values_never_leave_the_vault,
    every_mutation_publishes_a_snapshot,
    admin_token_is_bootstrapped_once,
    a_fresh_database_adopts_the_token_file,
    query_limits_are_enforced,
    concurrent_changes_do_not_conflict,
);

const CREATE_FUNCTION: &str = r#"
mutation($input: CreateFunctionInput!) {
  createFunction(input: $input) {
    id tenantId name method url headers { name value } body timeoutMs createdAt
  }
}"#;

const CREATE_API_KEY: &str = r#"
mutation($e: ID!, $name: String!, $functions: [String!]!) {
  createApiKey(input: {environmentId: $e, name: $name, functions: $functions}) {
    apiKey { id environmentId name prefix functions createdAt }
    key
  }
}"#;

async fn every_operation_works(app: TestApp) {
    // createTenant
    let data = app
        .ok(
            "mutation { createTenant(input: {name: \"acme\"}) { id name createdAt environments { id } functions { id } } }",
            json!({}),
        )
        .await;
    let tenant = &data["createTenant"];
    assert_eq!(tenant["name"], "acme");
    assert_eq!(tenant["environments"], json!([]));
    assert_eq!(tenant["functions"], json!([]));
    assert!(chrono::DateTime::parse_from_rfc3339(tenant["createdAt"].as_str().unwrap()).is_ok());
    let tenant_id = tenant["id"].as_str().unwrap().to_string();
    Uuid::parse_str(&tenant_id).unwrap();

    // createEnvironment
    let data = app
        .ok(
            "mutation($t: ID!) { createEnvironment(input: {tenantId: $t, name: \"prod\"}) { id tenantId name createdAt } }",
            json!({ "t": tenant_id }),
        )
        .await;
    let environment = &data["createEnvironment"];
    assert_eq!(environment["tenantId"], tenant_id.as_str());
    assert_eq!(environment["name"], "prod");
    let prod = environment["id"].as_str().unwrap().to_string();
    let dev = app.create_environment(&tenant_id, "dev").await;

    // createFunction, every field
    let data = app
        .ok(
            CREATE_FUNCTION,
            json!({ "input": {
                "tenantId": tenant_id,
                "name": "create_user",
                "method": "post",
                "url": "https://api.example.com/v1/users?team={{args.team}}",
                "headers": [
                    { "name": "Authorization", "value": "Bearer {{secrets.API_TOKEN}}" },
                    { "name": "X-Trace", "value": "airlock" }
                ],
                "body": "{\"name\": \"{{args.name}}\", \"age\": {{args.age}}}",
                "timeoutMs": 5000
            }}),
        )
        .await;
    let function = &data["createFunction"];
    assert_eq!(function["name"], "create_user");
    assert_eq!(function["method"], "POST", "methods are stored upper case");
    assert_eq!(function["tenantId"], tenant_id.as_str());
    assert_eq!(
        function["url"],
        "https://api.example.com/v1/users?team={{args.team}}"
    );
    assert_eq!(
        function["headers"],
        json!([
            { "name": "Authorization", "value": "Bearer {{secrets.API_TOKEN}}" },
            { "name": "X-Trace", "value": "airlock" }
        ])
    );
    assert_eq!(
        function["body"],
        "{\"name\": \"{{args.name}}\", \"age\": {{args.age}}}"
    );
    assert_eq!(function["timeoutMs"], 5000);

    // createFunction, optional fields omitted
    let data = app
        .ok(
            CREATE_FUNCTION,
            json!({ "input": {
                "tenantId": tenant_id,
                "name": "get-user",
                "method": "GET",
                "url": "https://api.example.com/v1/users/{{args.id}}"
            }}),
        )
        .await;
    let function = &data["createFunction"];
    assert_eq!(function["headers"], json!([]));
    assert_eq!(function["body"], Value::Null);
    assert_eq!(function["timeoutMs"], 30_000);

    // setSecret: version 1, then 2
    let first = app.set_secret(&prod, "API_TOKEN", "s3cr3t-one").await;
    assert_eq!(first["name"], "API_TOKEN");
    assert_eq!(first["environmentId"], prod.as_str());
    assert_eq!(first["version"], 1);
    let second = app.set_secret(&prod, "API_TOKEN", "s3cr3t-two").await;
    assert_eq!(second["version"], 2);
    assert_eq!(second["id"], first["id"], "same secret, new version");
    assert_eq!(second["createdAt"], first["createdAt"]);
    let other = app.set_secret(&dev, "API_TOKEN", "dev-value").await;
    assert_eq!(other["version"], 1, "versions count per environment");

    // createApiKey
    let data = app
        .ok(
            CREATE_API_KEY,
            json!({ "e": prod, "name": "billing service", "functions": ["create_user", "get-user", "create_user"] }),
        )
        .await;
    let created = &data["createApiKey"];
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("ak_"));
    assert!(key.starts_with(created["apiKey"]["prefix"].as_str().unwrap()));
    assert_eq!(created["apiKey"]["name"], "billing service");
    assert_eq!(created["apiKey"]["environmentId"], prod.as_str());
    assert_eq!(
        created["apiKey"]["functions"],
        json!(["create_user", "get-user"]),
        "repeats are dropped, order kept"
    );
    let all = app
        .ok(
            CREATE_API_KEY,
            json!({ "e": dev, "name": "ops", "functions": ["*"] }),
        )
        .await;
    assert_eq!(all["createApiKey"]["apiKey"]["functions"], json!(["*"]));

    // Queries
    let data = app.ok("{ tenants { id name } }", json!({})).await;
    assert_eq!(
        data["tenants"],
        json!([{ "id": tenant_id, "name": "acme" }])
    );

    let data = app
        .ok(
            "query($id: ID!) { tenant(id: $id) { name environments { name } functions { name method } } }",
            json!({ "id": tenant_id }),
        )
        .await;
    assert_eq!(
        data["tenant"],
        json!({
            "name": "acme",
            "environments": [{ "name": "dev" }, { "name": "prod" }],
            "functions": [
                { "name": "create_user", "method": "POST" },
                { "name": "get-user", "method": "GET" }
            ]
        })
    );

    let data = app
        .ok(
            "query($t: ID!) { environments(tenantId: $t) { id name tenantId } }",
            json!({ "t": tenant_id }),
        )
        .await;
    assert_eq!(
        data["environments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["dev", "prod"]
    );

    let data = app
        .ok(
            "query($t: ID!) { functions(tenantId: $t) { name headers { name } timeoutMs } }",
            json!({ "t": tenant_id }),
        )
        .await;
    assert_eq!(data["functions"][0]["name"], "create_user");
    assert_eq!(data["functions"][0]["timeoutMs"], 5000);
    assert_eq!(data["functions"][1]["headers"], json!([]));

    let data = app
        .ok(
            "query($e: ID!) { secrets(environmentId: $e) { id environmentId name version createdAt updatedAt } }",
            json!({ "e": prod }),
        )
        .await;
    assert_eq!(data["secrets"].as_array().unwrap().len(), 1);
    assert_eq!(data["secrets"][0]["name"], "API_TOKEN");
    assert_eq!(data["secrets"][0]["version"], 2);

    let data = app
        .ok(
            "query($e: ID!) { apiKeys(environmentId: $e) { id environmentId name prefix functions createdAt } }",
            json!({ "e": prod }),
        )
        .await;
    assert_eq!(data["apiKeys"].as_array().unwrap().len(), 1);
    assert_eq!(data["apiKeys"][0], created["apiKey"]);
}

/// One bad operation: what it is, and the code (and field) it must fail with.
struct BadCase {
    what: &'static str,
    query: &'static str,
    variables: Value,
    code: &'static str,
    field: Option<&'static str>,
}

fn case(what: &'static str, query: &'static str, variables: Value, code: &'static str) -> BadCase {
    BadCase {
        what,
        query,
        variables,
        code,
        field: None,
    }
}

fn invalid(
    what: &'static str,
    query: &'static str,
    variables: Value,
    field: &'static str,
) -> BadCase {
    BadCase {
        what,
        query,
        variables,
        code: "INVALID_INPUT",
        field: Some(field),
    }
}

fn function_input(tenant_id: &str, overrides: Value) -> Value {
    let mut input = json!({
        "tenantId": tenant_id,
        "name": "fresh_function",
        "method": "GET",
        "url": "https://api.example.com/x"
    });
    for (k, v) in overrides.as_object().unwrap() {
        input[k] = v.clone();
    }
    json!({ "input": input })
}

async fn bad_input_gets_its_code_and_writes_nothing(mut app: TestApp) {
    let tenant = app.create_tenant("acme").await;
    let environment = app.create_environment(&tenant, "prod").await;
    app.create_function(&tenant, "get_user").await;
    app.take_snapshots();
    let unknown = Uuid::new_v4().to_string();

    const CREATE_TENANT: &str =
        "mutation($name: String!) { createTenant(input: {name: $name}) { id } }";
    const CREATE_ENVIRONMENT: &str =
        "mutation($t: ID!, $name: String!) { createEnvironment(input: {tenantId: $t, name: $name}) { id } }";
    const SET_SECRET: &str =
        "mutation($e: ID!, $name: String!, $value: String!, $hosts: [String!] = [\"api.example.com\"]) { setSecret(input: {environmentId: $e, name: $name, value: $value, allowedHosts: $hosts}) { id } }";

    let cases = vec![
        invalid(
            "empty tenant name",
            CREATE_TENANT,
            json!({ "name": "" }),
            "name",
        ),
        invalid(
            "tenant name with a space",
            CREATE_TENANT,
            json!({ "name": "a b" }),
            "name",
        ),
        invalid(
            "tenant name too long",
            CREATE_TENANT,
            json!({ "name": "a".repeat(65) }),
            "name",
        ),
        invalid(
            "tenant name with a slash",
            CREATE_TENANT,
            json!({ "name": "a/b" }),
            "name",
        ),
        invalid(
            "empty environment name",
            CREATE_ENVIRONMENT,
            json!({ "t": tenant, "name": "" }),
            "name",
        ),
        invalid(
            "malformed tenant id",
            CREATE_ENVIRONMENT,
            json!({ "t": "not-a-uuid", "name": "dev" }),
            "tenantId",
        ),
        case(
            "unknown tenant id",
            CREATE_ENVIRONMENT,
            json!({ "t": unknown, "name": "dev" }),
            "NOT_FOUND",
        ),
        invalid(
            "empty function name",
            CREATE_FUNCTION,
            function_input(&tenant, json!({ "name": "" })),
            "name",
        ),
        invalid(
            "function name with a dot",
            CREATE_FUNCTION,
            function_input(&tenant, json!({ "name": "get.user" })),
            "name",
        ),
        case(
            "function in unknown tenant",
            CREATE_FUNCTION,
            function_input(&unknown, json!({})),
            "NOT_FOUND",
        ),
        case(
            "unclosed placeholder",
            CREATE_FUNCTION,
            function_input(
                &tenant,
                json!({ "url": "https://api.example.com/{{args.id" }),
            ),
            "TEMPLATE_MALFORMED",
        ),
        case(
            "bad placeholder",
            CREATE_FUNCTION,
            function_input(
                &tenant,
                json!({ "url": "https://api.example.com/{{nonsense}}" }),
            ),
            "TEMPLATE_MALFORMED",
        ),
        case(
            "unknown namespace",
            CREATE_FUNCTION,
            function_input(
                &tenant,
                json!({ "url": "https://api.example.com/{{env.HOME}}" }),
            ),
            "TEMPLATE_UNKNOWN_NAMESPACE",
        ),
        case(
            "relative url",
            CREATE_FUNCTION,
            function_input(&tenant, json!({ "url": "/users" })),
            "INVALID_URL",
        ),
        case(
            "ftp url",
            CREATE_FUNCTION,
            function_input(&tenant, json!({ "url": "ftp://example.com/x" })),
            "INVALID_URL",
        ),
        case(
            "placeholder in host",
            CREATE_FUNCTION,
            function_input(&tenant, json!({ "url": "https://{{args.host}}/x" })),
            "INVALID_URL",
        ),
        case(
            "bad method",
            CREATE_FUNCTION,
            function_input(&tenant, json!({ "method": "BREW" })),
            "INVALID_METHOD",
        ),
        case(
            "bad header name",
            CREATE_FUNCTION,
            function_input(
                &tenant,
                json!({ "headers": [{ "name": "Bad Header", "value": "x" }] }),
            ),
            "INVALID_HEADER",
        ),
        case(
            "reserved header",
            CREATE_FUNCTION,
            function_input(
                &tenant,
                json!({ "headers": [{ "name": "Host", "value": "evil.example" }] }),
            ),
            "INVALID_HEADER",
        ),
        case(
            "header value with newline",
            CREATE_FUNCTION,
            function_input(
                &tenant,
                json!({ "headers": [{ "name": "X-A", "value": "a\r\nX-B: b" }] }),
            ),
            "INVALID_HEADER",
        ),
        case(
            "body not JSON",
            CREATE_FUNCTION,
            function_input(&tenant, json!({ "method": "POST", "body": "{not json" })),
            "INVALID_BODY",
        ),
        invalid(
            "zero timeout",
            CREATE_FUNCTION,
            function_input(&tenant, json!({ "timeoutMs": 0 })),
            "timeoutMs",
        ),
        invalid(
            "huge timeout",
            CREATE_FUNCTION,
            function_input(&tenant, json!({ "timeoutMs": 300_001 })),
            "timeoutMs",
        ),
        invalid(
            "empty secret name",
            SET_SECRET,
            json!({ "e": environment, "name": "", "value": "v" }),
            "name",
        ),
        invalid(
            "secret name with a dot",
            SET_SECRET,
            json!({ "e": environment, "name": "a.b", "value": "v" }),
            "name",
        ),
        invalid(
            "secret name starting with a digit",
            SET_SECRET,
            json!({ "e": environment, "name": "1abc", "value": "v" }),
            "name",
        ),
        invalid(
            "empty secret value",
            SET_SECRET,
            json!({ "e": environment, "name": "TOKEN", "value": "" }),
            "value",
        ),
        invalid(
            "secret value over 64 KiB",
            SET_SECRET,
            json!({ "e": environment, "name": "TOKEN", "value": "x".repeat(64 * 1024 + 1) }),
            "value",
        ),
        invalid(
            "new secret without allowedHosts",
            SET_SECRET,
            json!({ "e": environment, "name": "TOKEN", "value": "v", "hosts": null }),
            "allowedHosts",
        ),
        invalid(
            "new secret with an empty allowedHosts",
            SET_SECRET,
            json!({ "e": environment, "name": "TOKEN", "value": "v", "hosts": [] }),
            "allowedHosts",
        ),
        invalid(
            "allow-all host pattern",
            SET_SECRET,
            json!({ "e": environment, "name": "TOKEN", "value": "v", "hosts": ["*"] }),
            "allowedHosts",
        ),
        invalid(
            "host with a scheme",
            SET_SECRET,
            json!({ "e": environment, "name": "TOKEN", "value": "v", "hosts": ["api.example.com", "https://evil.example"] }),
            "allowedHosts",
        ),
        invalid(
            "malformed environment id",
            SET_SECRET,
            json!({ "e": "nope", "name": "TOKEN", "value": "v" }),
            "environmentId",
        ),
        case(
            "secret in unknown environment",
            SET_SECRET,
            json!({ "e": unknown, "name": "TOKEN", "value": "v" }),
            "NOT_FOUND",
        ),
        invalid(
            "empty function list",
            CREATE_API_KEY,
            json!({ "e": environment, "name": "k", "functions": [] }),
            "functions",
        ),
        invalid(
            "unknown function",
            CREATE_API_KEY,
            json!({ "e": environment, "name": "k", "functions": ["get_user", "delete_everything"] }),
            "functions",
        ),
        invalid(
            "empty key name",
            CREATE_API_KEY,
            json!({ "e": environment, "name": "", "functions": ["*"] }),
            "name",
        ),
        invalid(
            "key name with a control character",
            CREATE_API_KEY,
            json!({ "e": environment, "name": "a\u{7}b", "functions": ["*"] }),
            "name",
        ),
        invalid(
            "key name too long",
            CREATE_API_KEY,
            json!({ "e": environment, "name": "k".repeat(65), "functions": ["*"] }),
            "name",
        ),
        case(
            "key in unknown environment",
            CREATE_API_KEY,
            json!({ "e": unknown, "name": "k", "functions": ["*"] }),
            "NOT_FOUND",
        ),
        case(
            "unknown tenant",
            "query($id: ID!) { tenant(id: $id) { id } }",
            json!({ "id": unknown }),
            "NOT_FOUND",
        ),
        case(
            "environments of unknown tenant",
            "query($id: ID!) { environments(tenantId: $id) { id } }",
            json!({ "id": unknown }),
            "NOT_FOUND",
        ),
        case(
            "functions of unknown tenant",
            "query($id: ID!) { functions(tenantId: $id) { id } }",
            json!({ "id": unknown }),
            "NOT_FOUND",
        ),
        case(
            "secrets of unknown environment",
            "query($id: ID!) { secrets(environmentId: $id) { id } }",
            json!({ "id": unknown }),
            "NOT_FOUND",
        ),
        case(
            "keys of unknown environment",
            "query($id: ID!) { apiKeys(environmentId: $id) { id } }",
            json!({ "id": unknown }),
            "NOT_FOUND",
        ),
    ];

    for case in cases {
        let before = app.db.row_counts().await;
        let error = app.error(case.query, case.variables.clone()).await;
        assert_eq!(
            error["extensions"]["code"], case.code,
            "{}: {error}",
            case.what
        );
        if let Some(field) = case.field {
            assert_eq!(
                error["extensions"]["field"], field,
                "{}: {error}",
                case.what
            );
        }
        assert!(!error["message"].as_str().unwrap().is_empty());
        assert_eq!(
            app.db.row_counts().await,
            before,
            "{} wrote something",
            case.what
        );
        assert!(app.take_snapshots().is_empty(), "{} published", case.what);
    }
}

async fn duplicate_names_are_already_exists(app: TestApp) {
    let tenant = app.create_tenant("acme").await;
    let environment = app.create_environment(&tenant, "prod").await;
    app.create_function(&tenant, "get_user").await;
    app.ok(
        CREATE_API_KEY,
        json!({ "e": environment, "name": "billing", "functions": ["*"] }),
    )
    .await;

    let duplicates = [
        (
            "mutation { createTenant(input: {name: \"acme\"}) { id } }",
            json!({}),
        ),
        (
            "mutation($t: ID!) { createEnvironment(input: {tenantId: $t, name: \"prod\"}) { id } }",
            json!({ "t": tenant }),
        ),
        (
            CREATE_FUNCTION,
            function_input(&tenant, json!({ "name": "get_user" })),
        ),
        (
            CREATE_API_KEY,
            json!({ "e": environment, "name": "billing", "functions": ["get_user"] }),
        ),
    ];
    for (query, variables) in duplicates {
        let before = app.db.row_counts().await;
        let error = app.error(query, variables).await;
        assert_eq!(error["extensions"]["code"], "ALREADY_EXISTS", "{error}");
        assert_eq!(app.db.row_counts().await, before);
    }
}

async fn names_are_scoped_to_their_parent(app: TestApp) {
    let acme = app.create_tenant("acme").await;
    let globex = app.create_tenant("globex").await;
    // The same names under another tenant / environment are fine.
    let acme_prod = app.create_environment(&acme, "prod").await;
    let globex_prod = app.create_environment(&globex, "prod").await;
    app.create_function(&acme, "get_user").await;
    app.create_function(&globex, "get_user").await;
    app.set_secret(&acme_prod, "API_TOKEN", "a").await;
    let globex_secret = app.set_secret(&globex_prod, "API_TOKEN", "b").await;
    assert_eq!(globex_secret["version"], 1);

    // Tenant A's function cannot be granted to a key in tenant B's environment.
    let only_acme = app.create_function(&acme, "acme_only").await;
    assert!(!only_acme.is_empty());
    let error = app
        .error(
            CREATE_API_KEY,
            json!({ "e": globex_prod, "name": "k", "functions": ["acme_only"] }),
        )
        .await;
    assert_eq!(error["extensions"]["code"], "INVALID_INPUT");

    // Lists are scoped.
    let data = app
        .ok(
            "query($t: ID!) { functions(tenantId: $t) { name } }",
            json!({ "t": globex }),
        )
        .await;
    assert_eq!(data["functions"], json!([{ "name": "get_user" }]));
    let data = app
        .ok(
            "query($e: ID!) { secrets(environmentId: $e) { name version } }",
            json!({ "e": globex_prod }),
        )
        .await;
    assert_eq!(
        data["secrets"],
        json!([{ "name": "API_TOKEN", "version": 1 }])
    );
}

async fn secret_values_never_leave_the_vault(mut app: TestApp) {
    const CANARY: &str = "canary-7f3a9c1e-do-not-leak";
    let tenant = app.create_tenant("acme").await;
    let environment = app.create_environment(&tenant, "prod").await;
    app.create_function(&tenant, "get_user").await;
    app.take_snapshots();

    // The mutation's own response.
    let response = app
        .exec(
            "mutation($e: ID!, $v: String!) { setSecret(input: {environmentId: $e, name: \"API_TOKEN\", value: $v, allowedHosts: [\"api.example.com\"]}) { id environmentId name version allowedHosts createdAt updatedAt } }",
            json!({ "e": environment, "v": CANARY }),
        )
        .await;
    assert!(response.errors.is_empty());
    assert!(!serde_json::to_string(&response).unwrap().contains(CANARY));

    // No field anywhere can return a value: the Secret type has none, and no query leaks it.
    let introspection = app
        .ok(
            "{ __type(name: \"Secret\") { fields { name } } }",
            json!({}),
        )
        .await;
    let fields: Vec<&str> = introspection["__type"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "id",
            "environmentId",
            "name",
            "version",
            "allowedHosts",
            "createdAt",
            "updatedAt"
        ]
    );
    let everything = app
        .ok(
            "query($t: ID!, $e: ID!) { tenants { id name environments { id name } functions { name url headers { name value } body } } tenant(id: $t) { name } environments(tenantId: $t) { id } functions(tenantId: $t) { id } secrets(environmentId: $e) { id environmentId name version createdAt updatedAt } apiKeys(environmentId: $e) { id } }",
            json!({ "t": tenant, "e": environment }),
        )
        .await;
    assert!(!everything.to_string().contains(CANARY));
    let error = app
        .error(
            "query($e: ID!) { secrets(environmentId: $e) { value } }",
            json!({ "e": environment }),
        )
        .await;
    assert!(!error.to_string().contains(CANARY));

    // Not in any database row, including the sealed version (and not in the SQLite files).
    let rows = app.db.all_rows_as_text().await;
    assert!(
        rows.iter().any(|r| r.contains("ciphertext")),
        "the sealed row is among the scanned rows"
    );
    for row in &rows {
        assert!(!row.contains(CANARY), "plaintext secret in a row: {row}");
    }
    if let Some(path) = &app.db.sqlite_path {
        for file in [path.clone(), path.with_extension("db-wal")] {
            if let Ok(bytes) = std::fs::read(&file) {
                assert!(
                    !bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
                    "plaintext secret in {}",
                    file.display()
                );
            }
        }
    }

    // The published snapshot carries it sealed, and only the data planes' key opens it.
    let snapshots = app.take_snapshots();
    assert_eq!(snapshots.len(), 1);
    let snapshot = &snapshots[0];
    assert!(!serde_json::to_string(snapshot).unwrap().contains(CANARY));
    let sealed = &snapshot.secrets["API_TOKEN"];
    let identity = SecretIdentity {
        tenant_id: snapshot.tenant_id,
        environment_id: snapshot.environment_id,
        name: "API_TOKEN",
        version: 1,
    };
    assert_eq!(
        app.opening_key
            .open(identity, &sealed.sealed)
            .unwrap()
            .expose(),
        CANARY
    );
    let wrong_identity = SecretIdentity {
        name: "OTHER",
        ..identity
    };
    assert!(app
        .opening_key
        .open(wrong_identity, &sealed.sealed)
        .is_err());
}

async fn every_mutation_publishes_a_snapshot(mut app: TestApp) {
    let tenant = app.create_tenant("acme").await;
    assert!(
        app.take_snapshots().is_empty(),
        "a tenant alone has nothing to publish"
    );

    // createEnvironment: the new, empty environment.
    let prod = app.create_environment(&tenant, "prod").await;
    let snapshots = app.take_snapshots();
    assert_eq!(snapshots.len(), 1);
    let first = &snapshots[0];
    assert_eq!(first.environment_id.to_string(), prod);
    assert_eq!(first.tenant_id.to_string(), tenant);
    assert!(first.functions.is_empty() && first.secrets.is_empty() && first.api_keys.is_empty());
    let dev = app.create_environment(&tenant, "dev").await;
    app.take_snapshots();

    // createFunction: every environment of the tenant.
    let function_id = app.create_function(&tenant, "get_user").await;
    let snapshots = app.take_snapshots();
    let by_environment: BTreeMap<String, _> = snapshots
        .iter()
        .map(|s| (s.environment_id.to_string(), s))
        .collect();
    assert_eq!(snapshots.len(), 2);
    assert!(by_environment.contains_key(&prod) && by_environment.contains_key(&dev));
    for snapshot in &snapshots {
        let function = &snapshot.functions["get_user"];
        assert_eq!(function.id.to_string(), function_id);
        assert_eq!(function.method, "GET");
        assert_eq!(function.url, "https://api.example.com/users/{{args.id}}");
        assert_eq!(function.headers[0].name, "Authorization");
        assert_eq!(
            function.timeout_ms,
            airlock_shared::wire::DEFAULT_TIMEOUT_MS
        );
    }
    assert!(by_environment[&prod].revision > first.revision);

    // setSecret: only that environment, with the current version.
    app.set_secret(&prod, "API_TOKEN", "one").await;
    app.set_secret(&prod, "API_TOKEN", "two").await;
    let snapshots = app.take_snapshots();
    assert_eq!(snapshots.len(), 2);
    assert!(snapshots
        .iter()
        .all(|s| s.environment_id.to_string() == prod));
    assert!(snapshots[1].revision > snapshots[0].revision);
    let latest = &snapshots[1];
    assert_eq!(latest.secrets["API_TOKEN"].sealed.version, 2);
    let identity = SecretIdentity {
        tenant_id: latest.tenant_id,
        environment_id: latest.environment_id,
        name: "API_TOKEN",
        version: 2,
    };
    assert_eq!(
        app.opening_key
            .open(identity, &latest.secrets["API_TOKEN"].sealed)
            .unwrap()
            .expose(),
        "two"
    );
    assert_eq!(latest.functions.len(), 1, "functions stay in the snapshot");

    // createApiKey: the key's hash and grants.
    let data = app
        .ok(
            CREATE_API_KEY,
            json!({ "e": prod, "name": "billing", "functions": ["get_user"] }),
        )
        .await;
    let key = data["createApiKey"]["key"].as_str().unwrap();
    let snapshots = app.take_snapshots();
    assert_eq!(snapshots.len(), 1);
    let grants = &snapshots[0].api_keys;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].hash, ApiKeyHash::of(key));
    assert_eq!(grants[0].name, "billing");
    assert_eq!(grants[0].functions, ["get_user"]);
    assert_eq!(snapshots[0].secrets["API_TOKEN"].sealed.version, 2);
    assert!(
        !serde_json::to_string(&snapshots[0]).unwrap().contains(key),
        "snapshots carry hashes, not keys"
    );

    // publish_all (startup) sends every environment.
    let count = app.state.publisher.publish_all().await.unwrap();
    assert_eq!(count, 2);
    assert_eq!(app.take_snapshots().len(), 2);
}

/// A fresh database adopts a well-formed token from the data dir instead of minting one, and
/// refuses anything that does not look like a token.
async fn a_fresh_database_adopts_the_token_file(app: TestApp) {
    let existing = "atk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let fresh = TestDb::new(app.db.backend).await;
    assert!(admin_tokens::ensure_bootstrap(&fresh.db, Some("garbage"))
        .await
        .unwrap()
        .is_some_and(|t| t.plaintext != "garbage"));
    let other = TestDb::new(app.db.backend).await;
    let adopted = admin_tokens::ensure_bootstrap(&other.db, Some(existing))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(adopted.plaintext, existing);
    let caller = admin_tokens::authenticate(&other.db, existing)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(caller.actor, Actor::AdminToken(adopted.id));
}

/// The bootstrap token is created once, holds `superadmin`, and only its hash is stored.
async fn admin_token_is_bootstrapped_once(app: TestApp) {
    let fresh = TestDb::new(app.db.backend).await;
    let db = &fresh.db;
    let token = admin_tokens::ensure_bootstrap(db, None)
        .await
        .unwrap()
        .unwrap();
    assert!(token.plaintext.starts_with("atk_"));
    assert!(admin_tokens::ensure_bootstrap(db, None)
        .await
        .unwrap()
        .is_none());
    // Once a token exists, a token file offered for adoption is ignored.
    assert!(admin_tokens::ensure_bootstrap(db, Some(&token.plaintext))
        .await
        .unwrap()
        .is_none());
    let caller = admin_tokens::authenticate(db, &token.plaintext)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(caller.principal, Principal::Token(token.id));
    let authz = Authz::load(db.clone()).await.unwrap();
    assert!(authz.allows(&caller.principal, Scope::PLATFORM, Permission::TenantCreate));
    assert_eq!(
        admin_tokens::authenticate(db, "atk_wrong").await.unwrap(),
        None
    );
    // Only the hash is stored.
    let rows = fresh.all_rows_as_text().await;
    assert!(rows.iter().all(|r| !r.contains(&token.plaintext)));
    assert!(rows
        .iter()
        .any(|r| r.contains(&admin_tokens::token_hash(&token.plaintext))));
    let counts = fresh.row_counts().await;
    assert_eq!(counts["admin_tokens"], 1);
    assert_eq!(counts["role_assignments"], 1);
    assert_eq!(counts["audit_log"], 1);
}

async fn query_limits_are_enforced(app: TestApp) {
    // What GraphiQL sends on load (the graphql-js introspection query) must pass.
    let introspection = app.exec(INTROSPECTION_QUERY, json!({})).await;
    assert!(
        introspection.errors.is_empty(),
        "{:?}",
        introspection.errors
    );

    // A query nested past the depth limit is refused before it runs.
    let mut deep = String::from("__typename");
    for _ in 0..20 {
        deep = format!("ofType {{ {deep} }}");
    }
    let response = app
        .exec(
            &format!("{{ __type(name: \"Tenant\") {{ {deep} }} }}"),
            json!({}),
        )
        .await;
    assert!(!response.errors.is_empty());
    assert!(
        response.errors[0]
            .message
            .to_lowercase()
            .contains("nested too deep"),
        "{:?}",
        response.errors
    );

    // So is one selecting too many fields.
    let wide = (0..600)
        .map(|i| format!("t{i}: tenants {{ id }}"))
        .collect::<Vec<_>>()
        .join(" ");
    let response = app.exec(&format!("{{ {wide} }}"), json!({})).await;
    assert!(!response.errors.is_empty());
    assert!(
        response.errors[0]
            .message
            .to_lowercase()
            .contains("complex"),
        "{:?}",
        response.errors
    );
}

async fn concurrent_changes_do_not_conflict(app: TestApp) {
    // Concurrent sets of one secret each get their own version, none fails.
    let tenant = app.create_tenant("acme").await;
    let environment = app.create_environment(&tenant, "prod").await;
    let sets = (0..8).map(|i| {
        app.exec(
            "mutation($e: ID!, $v: String!) { setSecret(input: {environmentId: $e, name: \"TOKEN\", value: $v, allowedHosts: [\"api.example.com\"]}) { version } }",
            json!({ "e": environment, "v": format!("value-{i}") }),
        )
    });
    let mut versions: Vec<i64> = futures::future::join_all(sets)
        .await
        .into_iter()
        .map(|r| {
            assert!(r.errors.is_empty(), "{:?}", r.errors);
            r.data.into_json().unwrap()["setSecret"]["version"]
                .as_i64()
                .unwrap()
        })
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
    assert_eq!(app.db.row_counts().await["secret_versions"], 8);

    // Concurrent creates of one name: exactly one wins, the others are ALREADY_EXISTS.
    let creates = (0..6).map(|_| {
        app.exec(
            "mutation { createTenant(input: {name: \"contested\"}) { id } }",
            json!({}),
        )
    });
    let results = futures::future::join_all(creates).await;
    let winners = results.iter().filter(|r| r.errors.is_empty()).count();
    assert_eq!(winners, 1);
    for result in results.iter().filter(|r| !r.errors.is_empty()) {
        let error = serde_json::to_value(&result.errors[0]).unwrap();
        assert_eq!(error["extensions"]["code"], "ALREADY_EXISTS", "{error}");
    }
}

/// `getIntrospectionQuery()` from graphql-js 16.
const INTROSPECTION_QUERY: &str = r#"
query IntrospectionQuery {
  __schema {
    queryType { name }
    mutationType { name }
    subscriptionType { name }
    types { ...FullType }
    directives { name description locations args { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) {
    name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason
  }
  inputFields { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue {
  name description type { ...TypeRef } defaultValue
}
fragment TypeRef on __Type {
  kind name
  ofType { kind name ofType { kind name ofType { kind name ofType { kind name
    ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } }
}
"#;
