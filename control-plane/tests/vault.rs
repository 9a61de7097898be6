//! The vault: host binding, secret versions (rollback, delete), the audit log and
//! provisioning links (GraphQL and the HTTP form), on SQLite and on PostgreSQL.

mod common;

use airlock_control_plane::domain::audit::{self, Actor, AuditEntry};
use airlock_shared::seal::SecretIdentity;
use airlock_shared::wire::EnvironmentSnapshot;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{TestApp, TEST_HOST, TEST_ORIGIN};
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

on_both_backends!(
    secrets_are_bound_to_hosts,
    bad_host_changes_write_nothing,
    versions_can_be_listed_and_rolled_back,
    deleting_a_secret_removes_it_and_its_versions,
    every_mutation_is_audited_without_values,
    audit_log_pages_newest_first,
    audit_record_commits_with_its_transaction,
    mutations_need_an_actor,
    provisioning_links_are_managed_through_graphql,
    bad_provisioning_links_write_nothing,
    a_provisioning_link_sets_secrets_once,
    unusable_links_reveal_nothing,
    an_incomplete_form_writes_nothing_and_keeps_the_link,
    concurrent_submissions_use_a_link_once,
);

const SET_SECRET: &str = r#"
mutation($e: ID!, $name: String!, $value: String!, $hosts: [String!]) {
  setSecret(input: {environmentId: $e, name: $name, value: $value, allowedHosts: $hosts}) {
    id environmentId name version allowedHosts createdAt updatedAt
  }
}"#;

const SET_SECRET_HOSTS: &str = r#"
mutation($id: ID!, $hosts: [String!]!) {
  setSecretHosts(input: {secretId: $id, allowedHosts: $hosts}) { id name version allowedHosts }
}"#;

const SECRET_VERSIONS: &str = r#"
query($id: ID!) { secretVersions(secretId: $id) { version createdAt actor { type id } current } }"#;

const ROLLBACK: &str = r#"
mutation($id: ID!, $v: Int!) { rollbackSecret(input: {secretId: $id, version: $v}) { id name version allowedHosts } }"#;

const DELETE: &str = r#"mutation($id: ID!) { deleteSecret(input: {secretId: $id}) }"#;

const AUDIT_LOG: &str = r#"
query($filter: AuditLogFilter, $first: Int, $after: String) {
  auditLog(filter: $filter, first: $first, after: $after) {
    entries {
      id at actor { type id } action tenantId environmentId targetType targetId targetName
      requestId detail
    }
    nextCursor
  }
}"#;

const CREATE_LINK: &str = r#"
mutation($input: CreateProvisioningLinkInput!) {
  createProvisioningLink(input: $input) {
    link {
      id environmentId secretNames secrets { name allowedHosts } createdAt expiresAt usedAt revokedAt
    }
    url
  }
}"#;

const LINKS: &str = r#"
query($e: ID!) {
  provisioningLinks(environmentId: $e) { id environmentId secretNames secrets { name allowedHosts } expiresAt usedAt revokedAt }
}"#;

const REVOKE_LINK: &str =
    r#"mutation($id: ID!) { revokeProvisioningLink(id: $id) { id usedAt revokedAt } }"#;

/// A tenant `acme` with an environment `prod`; returns (tenant id, environment id).
async fn acme_prod(app: &mut TestApp) -> (String, String) {
    let tenant = app.create_tenant("acme").await;
    let environment = app.create_environment(&tenant, "prod").await;
    app.take_snapshots();
    (tenant, environment)
}

fn id_of(value: &Value) -> String {
    value["id"].as_str().unwrap().to_string()
}

/// The one snapshot published since the last take.
fn single_snapshot(app: &mut TestApp) -> EnvironmentSnapshot {
    let mut snapshots = app.take_snapshots();
    assert_eq!(snapshots.len(), 1, "exactly one snapshot published");
    snapshots.remove(0)
}

/// Open a secret of a snapshot with the data planes' key, as its current version.
fn open(app: &TestApp, snapshot: &EnvironmentSnapshot, name: &str) -> String {
    let entry = &snapshot.secrets[name];
    let identity = SecretIdentity {
        tenant_id: snapshot.tenant_id,
        environment_id: snapshot.environment_id,
        name,
        version: entry.sealed.version,
    };
    app.opening_key
        .open(identity, &entry.sealed)
        .unwrap()
        .expose()
        .to_string()
}

fn hosts_of(snapshot: &EnvironmentSnapshot, name: &str) -> Vec<String> {
    snapshot.secrets[name]
        .allowed_hosts
        .iter()
        .map(|h| h.as_str().to_string())
        .collect()
}

/// No value anywhere: database rows (audit log included) and the SQLite files.
async fn assert_nowhere_in_storage(app: &TestApp, values: &[&str]) {
    let rows = app.db.all_rows_as_text().await;
    for value in values {
        for row in &rows {
            assert!(!row.contains(value), "plaintext value in a row: {row}");
        }
        if let Some(path) = &app.db.sqlite_path {
            for file in [path.clone(), path.with_extension("db-wal")] {
                if let Ok(bytes) = std::fs::read(&file) {
                    assert!(
                        !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                        "plaintext value in {}",
                        file.display()
                    );
                }
            }
        }
    }
}

async fn secrets_are_bound_to_hosts(mut app: TestApp) {
    let (_, environment) = acme_prod(&mut app).await;

    // Created with hosts: normalised (lower case), repeats dropped, order kept.
    let data = app
        .ok(
            SET_SECRET,
            json!({ "e": environment, "name": "TOKEN", "value": "one",
                    "hosts": ["API.Example.com", "*.example.org", "api.example.com", "127.0.0.1"] }),
        )
        .await;
    let secret = &data["setSecret"];
    assert_eq!(
        secret["allowedHosts"],
        json!(["api.example.com", "*.example.org", "127.0.0.1"])
    );
    let secret_id = id_of(secret);
    let snapshot = single_snapshot(&mut app);
    assert_eq!(
        hosts_of(&snapshot, "TOKEN"),
        ["api.example.com", "*.example.org", "127.0.0.1"]
    );

    // A later version without hosts keeps them.
    let data = app
        .ok(
            SET_SECRET,
            json!({ "e": environment, "name": "TOKEN", "value": "two", "hosts": null }),
        )
        .await;
    assert_eq!(data["setSecret"]["version"], 2);
    assert_eq!(
        data["setSecret"]["allowedHosts"].as_array().unwrap().len(),
        3
    );
    let snapshot = single_snapshot(&mut app);
    assert_eq!(hosts_of(&snapshot, "TOKEN").len(), 3);
    assert_eq!(open(&app, &snapshot, "TOKEN"), "two");

    // A later version with hosts replaces them.
    let data = app
        .ok(
            SET_SECRET,
            json!({ "e": environment, "name": "TOKEN", "value": "three", "hosts": ["billing.example.net"] }),
        )
        .await;
    assert_eq!(
        data["setSecret"]["allowedHosts"],
        json!(["billing.example.net"])
    );
    assert_eq!(
        hosts_of(&single_snapshot(&mut app), "TOKEN"),
        ["billing.example.net"]
    );

    // setSecretHosts: only the binding changes, not the version.
    let data = app
        .ok(
            SET_SECRET_HOSTS,
            json!({ "id": secret_id, "hosts": ["*.Stripe.com", "api.stripe.com"] }),
        )
        .await;
    let updated = &data["setSecretHosts"];
    assert_eq!(
        updated["allowedHosts"],
        json!(["*.stripe.com", "api.stripe.com"])
    );
    assert_eq!(updated["version"], 3);
    let snapshot = single_snapshot(&mut app);
    assert_eq!(
        hosts_of(&snapshot, "TOKEN"),
        ["*.stripe.com", "api.stripe.com"]
    );
    assert_eq!(snapshot.secrets["TOKEN"].sealed.version, 3);

    let data = app
        .ok(
            "query($e: ID!) { secrets(environmentId: $e) { name allowedHosts } }",
            json!({ "e": environment }),
        )
        .await;
    assert_eq!(
        data["secrets"],
        json!([{ "name": "TOKEN", "allowedHosts": ["*.stripe.com", "api.stripe.com"] }])
    );
}

async fn bad_host_changes_write_nothing(mut app: TestApp) {
    let (_, environment) = acme_prod(&mut app).await;
    let secret = app.set_secret(&environment, "TOKEN", "v").await;
    let secret_id = id_of(&secret);
    app.take_snapshots();

    let cases: Vec<(&str, Value, &str, Option<&str>)> = vec![
        (
            SET_SECRET_HOSTS,
            json!({ "id": secret_id, "hosts": [] }),
            "INVALID_INPUT",
            Some("allowedHosts"),
        ),
        (
            SET_SECRET_HOSTS,
            json!({ "id": secret_id, "hosts": ["ok.example.com", "*.com"] }),
            "INVALID_INPUT",
            Some("allowedHosts"),
        ),
        (
            SET_SECRET_HOSTS,
            json!({ "id": secret_id, "hosts": ["example.com:443"] }),
            "INVALID_INPUT",
            Some("allowedHosts"),
        ),
        (
            SET_SECRET_HOSTS,
            json!({ "id": Uuid::new_v4(), "hosts": ["ok.example.com"] }),
            "NOT_FOUND",
            None,
        ),
        (
            SET_SECRET_HOSTS,
            json!({ "id": "nope", "hosts": ["ok.example.com"] }),
            "INVALID_INPUT",
            Some("secretId"),
        ),
        (
            SET_SECRET,
            json!({ "e": environment, "name": "TOKEN", "value": "v2", "hosts": [] }),
            "INVALID_INPUT",
            Some("allowedHosts"),
        ),
        (
            SET_SECRET,
            json!({ "e": environment, "name": "NEW", "value": "v", "hosts": null }),
            "INVALID_INPUT",
            Some("allowedHosts"),
        ),
    ];
    for (query, variables, code, field) in cases {
        let before = app.db.row_counts().await;
        let error = app.error(query, variables.clone()).await;
        assert_eq!(error["extensions"]["code"], code, "{variables}: {error}");
        if let Some(field) = field {
            assert_eq!(error["extensions"]["field"], field, "{variables}: {error}");
        }
        assert_eq!(app.db.row_counts().await, before, "{variables} wrote");
        assert!(app.take_snapshots().is_empty(), "{variables} published");
    }
    // The error names the bad entry.
    let error = app
        .error(
            SET_SECRET_HOSTS,
            json!({ "id": secret_id, "hosts": ["ok.example.com", "https://evil.example/x"] }),
        )
        .await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("`https://evil.example/x`"),
        "{error}"
    );
    let data = app
        .ok(
            "query($e: ID!) { secrets(environmentId: $e) { allowedHosts version } }",
            json!({ "e": environment }),
        )
        .await;
    assert_eq!(
        data["secrets"],
        json!([{ "allowedHosts": [TEST_HOST], "version": 1 }])
    );
}

async fn versions_can_be_listed_and_rolled_back(mut app: TestApp) {
    let (_, environment) = acme_prod(&mut app).await;
    let secret_id = id_of(&app.set_secret(&environment, "TOKEN", "value-1").await);
    app.set_secret(&environment, "TOKEN", "value-2").await;
    app.set_secret(&environment, "TOKEN", "value-3").await;
    app.take_snapshots();

    let data = app.ok(SECRET_VERSIONS, json!({ "id": secret_id })).await;
    let versions = data["secretVersions"].as_array().unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|v| (
                v["version"].as_i64().unwrap(),
                v["current"].as_bool().unwrap()
            ))
            .collect::<Vec<_>>(),
        [(3, true), (2, false), (1, false)]
    );
    for version in versions {
        assert_eq!(
            version["actor"],
            json!({ "type": "ADMIN_TOKEN", "id": app.admin_token_id.to_string() })
        );
        assert!(
            chrono::DateTime::parse_from_rfc3339(version["createdAt"].as_str().unwrap()).is_ok()
        );
    }
    // Metadata only: the type has no field that could carry a value.
    let fields = app
        .ok(
            "{ __type(name: \"SecretVersion\") { fields { name } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        fields["__type"]["fields"],
        json!([{ "name": "version" }, { "name": "createdAt" }, { "name": "actor" }, { "name": "current" }])
    );

    // Roll back to 1: the published snapshot carries version 1's ciphertext, still bound to
    // version 1.
    let data = app.ok(ROLLBACK, json!({ "id": secret_id, "v": 1 })).await;
    assert_eq!(data["rollbackSecret"]["version"], 1);
    let snapshot = single_snapshot(&mut app);
    assert_eq!(snapshot.secrets["TOKEN"].sealed.version, 1);
    assert_eq!(open(&app, &snapshot, "TOKEN"), "value-1");
    let wrong = SecretIdentity {
        tenant_id: snapshot.tenant_id,
        environment_id: snapshot.environment_id,
        name: "TOKEN",
        version: 3,
    };
    assert!(app
        .opening_key
        .open(wrong, &snapshot.secrets["TOKEN"].sealed)
        .is_err());
    let data = app.ok(SECRET_VERSIONS, json!({ "id": secret_id })).await;
    assert_eq!(
        data["secretVersions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["current"] == true)
            .map(|v| v["version"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1]
    );

    // The next value never reuses a number: version 4, not 2.
    let next = app.set_secret(&environment, "TOKEN", "value-4").await;
    assert_eq!(next["version"], 4);
    let snapshot = single_snapshot(&mut app);
    assert_eq!(open(&app, &snapshot, "TOKEN"), "value-4");

    // Forward again to 3.
    app.ok(ROLLBACK, json!({ "id": secret_id, "v": 3 })).await;
    let snapshot = single_snapshot(&mut app);
    assert_eq!(open(&app, &snapshot, "TOKEN"), "value-3");

    // Unknown versions and secrets: NOT_FOUND, nothing written, nothing published.
    for variables in [
        json!({ "id": secret_id, "v": 9 }),
        json!({ "id": secret_id, "v": 0 }),
        json!({ "id": secret_id, "v": -1 }),
        json!({ "id": Uuid::new_v4(), "v": 1 }),
    ] {
        let before = app.db.row_counts().await;
        let error = app.error(ROLLBACK, variables.clone()).await;
        assert_eq!(error["extensions"]["code"], "NOT_FOUND", "{variables}");
        assert_eq!(app.db.row_counts().await, before);
        assert!(app.take_snapshots().is_empty());
    }
    let error = app
        .error(SECRET_VERSIONS, json!({ "id": Uuid::new_v4() }))
        .await;
    assert_eq!(error["extensions"]["code"], "NOT_FOUND");
    let error = app.error(ROLLBACK, json!({ "id": "x", "v": 1 })).await;
    assert_eq!(error["extensions"]["field"], "secretId");
}

async fn deleting_a_secret_removes_it_and_its_versions(mut app: TestApp) {
    let (_, environment) = acme_prod(&mut app).await;
    let token_id = id_of(&app.set_secret(&environment, "TOKEN", "a").await);
    app.set_secret(&environment, "TOKEN", "b").await;
    app.set_secret(&environment, "OTHER", "c").await;
    app.take_snapshots();
    assert_eq!(app.db.row_counts().await["secret_versions"], 3);

    let data = app.ok(DELETE, json!({ "id": token_id })).await;
    assert_eq!(data["deleteSecret"], token_id.as_str());
    let snapshot = single_snapshot(&mut app);
    assert!(!snapshot.secrets.contains_key("TOKEN"));
    assert!(snapshot.secrets.contains_key("OTHER"));
    assert_eq!(app.db.row_counts().await["secrets"], 1);
    assert_eq!(app.db.row_counts().await["secret_versions"], 1);
    let data = app
        .ok(
            "query($e: ID!) { secrets(environmentId: $e) { name } }",
            json!({ "e": environment }),
        )
        .await;
    assert_eq!(data["secrets"], json!([{ "name": "OTHER" }]));

    // Gone: NOT_FOUND everywhere, nothing written.
    let before = app.db.row_counts().await;
    for (query, variables) in [
        (DELETE, json!({ "id": token_id })),
        (SECRET_VERSIONS, json!({ "id": token_id })),
        (ROLLBACK, json!({ "id": token_id, "v": 1 })),
        (
            SET_SECRET_HOSTS,
            json!({ "id": token_id, "hosts": ["a.example.com"] }),
        ),
    ] {
        let error = app.error(query, variables).await;
        assert_eq!(error["extensions"]["code"], "NOT_FOUND", "{error}");
    }
    assert_eq!(app.db.row_counts().await, before);
    assert!(app.take_snapshots().is_empty());

    // Setting it again starts over at version 1 and needs hosts again.
    let error = app
        .error(
            SET_SECRET,
            json!({ "e": environment, "name": "TOKEN", "value": "d", "hosts": null }),
        )
        .await;
    assert_eq!(error["extensions"]["field"], "allowedHosts");
    let again = app.set_secret(&environment, "TOKEN", "d").await;
    assert_eq!(again["version"], 1);
    assert_ne!(id_of(&again), token_id);
}

async fn every_mutation_is_audited_without_values(app: TestApp) {
    const CANARY: &str = "canary-audit-5e2d7a-never-stored";
    let admin = app.admin_token_id.to_string();
    let tenant = app.create_tenant("acme").await;
    let environment = app.create_environment(&tenant, "prod").await;
    let function = app.create_function(&tenant, "get_user").await;
    let key = app
        .ok(
            "mutation($e: ID!) { createApiKey(input: {environmentId: $e, name: \"billing\", functions: [\"get_user\"]}) { apiKey { id } key } }",
            json!({ "e": environment }),
        )
        .await;
    let key_id = key["createApiKey"]["apiKey"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let plaintext_key = key["createApiKey"]["key"].as_str().unwrap().to_string();
    let secret = app
        .ok(
            SET_SECRET,
            json!({ "e": environment, "name": "API_TOKEN", "value": CANARY, "hosts": ["api.example.com"] }),
        )
        .await;
    let secret_id = id_of(&secret["setSecret"]);
    app.ok(
        SET_SECRET,
        json!({ "e": environment, "name": "API_TOKEN", "value": format!("{CANARY}-2"), "hosts": null }),
    )
    .await;
    app.ok(
        SET_SECRET_HOSTS,
        json!({ "id": secret_id, "hosts": ["api.example.com", "*.example.org"] }),
    )
    .await;
    app.ok(ROLLBACK, json!({ "id": secret_id, "v": 1 })).await;
    let link = app
        .ok(
            CREATE_LINK,
            json!({ "input": { "environmentId": environment, "secrets": [{ "name": "API_TOKEN" }] } }),
        )
        .await;
    let link_id = id_of(&link["createProvisioningLink"]["link"]);
    let url = link["createProvisioningLink"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    app.ok(REVOKE_LINK, json!({ "id": link_id })).await;
    app.ok(DELETE, json!({ "id": secret_id })).await;

    let rows = app.audit_rows().await;
    let summary: Vec<(String, String, Option<String>)> = rows
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_string(),
                r["targetType"].as_str().unwrap().to_string(),
                r["targetId"].as_str().map(str::to_string),
            )
        })
        .collect();
    let s = |a: &str, t: &str, id: &str| (a.to_string(), t.to_string(), Some(id.to_string()));
    assert_eq!(
        summary,
        [
            s("tenant.create", "tenant", &tenant),
            s("environment.create", "environment", &environment),
            s("function.create", "function", &function),
            s("api_key.create", "api_key", &key_id),
            s("secret.set", "secret", &secret_id),
            s("secret.set", "secret", &secret_id),
            s("secret.hosts", "secret", &secret_id),
            s("secret.rollback", "secret", &secret_id),
            s("provisioning_link.create", "provisioning_link", &link_id),
            s("provisioning_link.revoke", "provisioning_link", &link_id),
            s("secret.delete", "secret", &secret_id),
        ]
    );
    for row in &rows {
        assert_eq!(row["actorType"], "admin_token", "{row}");
        assert_eq!(row["actorId"], admin.as_str(), "{row}");
        assert_eq!(row["tenantId"], tenant.as_str(), "{row}");
    }
    for row in &rows[1..] {
        if row["targetType"] != "function" {
            assert_eq!(row["environmentId"], environment.as_str(), "{row}");
        }
    }
    assert_eq!(rows[4]["targetName"], "API_TOKEN");
    assert_eq!(
        rows[4]["detail"],
        json!({ "version": 1, "created": true, "allowedHosts": ["api.example.com"] })
    );
    assert_eq!(rows[5]["detail"], json!({ "version": 2, "created": false }));
    assert_eq!(
        rows[6]["detail"],
        json!({ "from": ["api.example.com"], "to": ["api.example.com", "*.example.org"] })
    );
    assert_eq!(
        rows[7]["detail"],
        json!({ "fromVersion": 2, "toVersion": 1 })
    );
    assert_eq!(
        rows[10]["detail"],
        json!({ "currentVersion": 1, "versions": 2 })
    );

    // Never a value, a key or a link token: not in the audit table, not anywhere stored.
    let token = url.rsplit('/').next().unwrap();
    assert!(token.starts_with("apl_"));
    let all_rows = app.db.all_rows_as_text().await;
    for row in all_rows.iter().filter(|r| r.contains("secret.set")) {
        assert!(!row.contains(CANARY), "{row}");
    }
    for row in &all_rows {
        assert!(!row.contains(CANARY), "value stored: {row}");
        assert!(!row.contains(&plaintext_key), "key stored: {row}");
        assert!(!row.contains(token), "link token stored: {row}");
    }
    let page = app.ok(AUDIT_LOG, json!({ "first": 500 })).await;
    let text = page.to_string();
    assert!(!text.contains(CANARY) && !text.contains(&plaintext_key) && !text.contains(token));
    assert_eq!(page["auditLog"]["entries"].as_array().unwrap().len(), 11);
}

async fn audit_log_pages_newest_first(mut app: TestApp) {
    let (tenant, environment) = acme_prod(&mut app).await;
    let other_tenant = app.create_tenant("globex").await;
    let other_environment = app.create_environment(&other_tenant, "prod").await;
    let a = id_of(&app.set_secret(&environment, "A", "1").await);
    for i in 2..=6 {
        app.set_secret(&environment, "A", &i.to_string()).await;
    }
    let b = id_of(&app.set_secret(&environment, "B", "1").await);
    app.set_secret(&other_environment, "A", "1").await;

    // Everything, newest first.
    let all = app.ok(AUDIT_LOG, json!({ "first": 500 })).await;
    let entries = all["auditLog"]["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 2 + 2 + 7 + 1);
    assert!(all["auditLog"]["nextCursor"].is_null());
    assert_eq!(entries[0]["environmentId"], other_environment.as_str());
    assert_eq!(entries.last().unwrap()["action"], "tenant.create");
    let at = |entry: &Value| {
        chrono::DateTime::parse_from_rfc3339(entry["at"].as_str().unwrap()).unwrap()
    };
    for pair in entries.windows(2) {
        assert!(at(&pair[0]) >= at(&pair[1]), "newest first");
    }

    // Pages of 2 walk the same entries, without gaps or repeats.
    let mut walked = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = app
            .ok(AUDIT_LOG, json!({ "first": 2, "after": after }))
            .await;
        let page = &page["auditLog"];
        let got = page["entries"].as_array().unwrap();
        assert!(got.len() <= 2);
        walked.extend(got.iter().map(|e| e["id"].clone()));
        match page["nextCursor"].as_str() {
            Some(cursor) => after = Some(cursor.to_string()),
            None => break,
        }
    }
    assert_eq!(
        walked,
        entries.iter().map(|e| e["id"].clone()).collect::<Vec<_>>()
    );

    // Filters.
    let filtered = |filter: Value| {
        let app = &app;
        async move {
            app.ok(AUDIT_LOG, json!({ "filter": filter, "first": 500 }))
                .await["auditLog"]["entries"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let by_environment = filtered(json!({ "environmentId": environment })).await;
    assert_eq!(by_environment.len(), 1 + 7);
    assert!(by_environment
        .iter()
        .all(|e| e["environmentId"] == environment.as_str()));
    let by_tenant = filtered(json!({ "tenantId": tenant })).await;
    assert_eq!(by_tenant.len(), 2 + 7);
    let by_target = filtered(json!({ "targetId": a })).await;
    assert_eq!(by_target.len(), 6);
    assert_eq!(by_target[0]["detail"]["version"], 6);
    assert_eq!(by_target[5]["detail"]["version"], 1);
    let by_action = filtered(json!({ "action": "secret.set", "environmentId": environment })).await;
    assert_eq!(by_action.len(), 7);
    assert_eq!(by_action[0]["targetId"], b.as_str());
    assert!(filtered(json!({ "action": "secret.delete" }))
        .await
        .is_empty());

    // Default page size is 50; bad paging is INVALID_INPUT with its field.
    let default = app.ok(AUDIT_LOG, json!({})).await;
    assert_eq!(default["auditLog"]["entries"].as_array().unwrap().len(), 12);
    for (variables, field) in [
        (json!({ "first": 0 }), "first"),
        (json!({ "first": 501 }), "first"),
        (json!({ "after": "not-a-cursor" }), "after"),
        (json!({ "after": "" }), "after"),
        (json!({ "filter": { "tenantId": "x" } }), "tenantId"),
    ] {
        let error = app.error(AUDIT_LOG, variables.clone()).await;
        assert_eq!(error["extensions"]["code"], "INVALID_INPUT", "{variables}");
        assert_eq!(error["extensions"]["field"], field, "{variables}");
    }
}

async fn audit_record_commits_with_its_transaction(app: TestApp) {
    let db = &app.db.db;
    // Entries may name ids that no longer exist; the environment filtered on must exist.
    let tenant_id = app.create_tenant("acme").await;
    let environment_id: Uuid = app
        .create_environment(&tenant_id, "prod")
        .await
        .parse()
        .unwrap();
    db.execute_unprepared("DELETE FROM audit_log")
        .await
        .unwrap();
    let secret_id = Uuid::new_v4();
    let entry = || {
        AuditEntry::new(
            Actor::DataPlane,
            audit::actions::SECRET_USED,
            audit::targets::SECRET,
        )
        .tenant(tenant_id.parse().unwrap())
        .environment(environment_id)
        .target(secret_id, "API_TOKEN")
        .request_id("req-123")
        .detail(json!({ "function": "get_user", "upstreamHost": "api.example.com" }))
    };

    // Rolled back: nothing.
    let txn = db.begin().await.unwrap();
    audit::record(&txn, entry()).await.unwrap();
    txn.rollback().await.unwrap();
    assert_eq!(app.db.row_counts().await["audit_log"], 0);

    // Committed: there, as the data plane's.
    let txn = db.begin().await.unwrap();
    audit::record(&txn, entry()).await.unwrap();
    txn.commit().await.unwrap();
    // Directly on the connection works too.
    audit::record(db, entry()).await.unwrap();
    let page = app
        .ok(
            AUDIT_LOG,
            json!({ "filter": { "environmentId": environment_id, "action": "secret.used" } }),
        )
        .await;
    let entries = page["auditLog"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        entries[0]["actor"],
        json!({ "type": "DATA_PLANE", "id": null })
    );
    assert_eq!(entries[0]["requestId"], "req-123");
    assert_eq!(entries[0]["targetName"], "API_TOKEN");
    assert_eq!(entries[0]["detail"]["upstreamHost"], "api.example.com");

    // A malformed entry is refused (a caller bug), and writes nothing.
    let error = audit::record(db, entry().detail(json!(["not", "an", "object"])))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "INTERNAL");
    let mut bad = entry();
    bad.action = "Secret Used".to_string();
    let error = audit::record(db, bad).await.unwrap_err();
    assert_eq!(error.code(), "INTERNAL");
    assert_eq!(app.db.row_counts().await["audit_log"], 2);
}

async fn mutations_need_an_actor(mut app: TestApp) {
    let (_, environment) = acme_prod(&mut app).await;
    let before = app.db.row_counts().await;
    for (query, variables) in [
        (
            "mutation { createTenant(input: {name: \"x\"}) { id } }",
            json!({}),
        ),
        (
            SET_SECRET,
            json!({ "e": environment, "name": "T", "value": "v", "hosts": ["a.example.com"] }),
        ),
        (
            CREATE_LINK,
            json!({ "input": { "environmentId": environment, "secrets": [{ "name": "T", "allowedHosts": ["a.example.com"] }] } }),
        ),
    ] {
        let response = app.exec_anonymous(query, variables).await;
        let error = serde_json::to_value(&response.errors[0]).unwrap();
        assert_eq!(error["extensions"]["code"], "UNAUTHENTICATED");
    }
    assert_eq!(app.db.row_counts().await, before);
}

async fn provisioning_links_are_managed_through_graphql(mut app: TestApp) {
    let (_, environment) = acme_prod(&mut app).await;
    app.set_secret(&environment, "EXISTING", "old").await;
    app.take_snapshots();

    let data = app
        .ok(
            CREATE_LINK,
            json!({ "input": {
                "environmentId": environment,
                "secrets": [
                    { "name": "NEW_TOKEN", "allowedHosts": ["API.partner.example"] },
                    { "name": "EXISTING" }
                ]
            }}),
        )
        .await;
    let created = &data["createProvisioningLink"];
    let link = &created["link"];
    let url = created["url"].as_str().unwrap();
    let prefix = format!("{TEST_ORIGIN}/provision/apl_");
    assert!(url.starts_with(&prefix), "{url}");
    assert_eq!(url.len(), prefix.len() + 43);
    assert_eq!(link["environmentId"], environment.as_str());
    assert_eq!(link["secretNames"], json!(["NEW_TOKEN", "EXISTING"]));
    assert_eq!(
        link["secrets"],
        json!([
            { "name": "NEW_TOKEN", "allowedHosts": ["api.partner.example"] },
            { "name": "EXISTING", "allowedHosts": [] }
        ])
    );
    assert!(link["usedAt"].is_null() && link["revokedAt"].is_null());
    let created_at =
        chrono::DateTime::parse_from_rfc3339(link["createdAt"].as_str().unwrap()).unwrap();
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(link["expiresAt"].as_str().unwrap()).unwrap();
    assert_eq!(
        (expires_at - created_at).num_seconds(),
        86_400,
        "default lifetime: one day"
    );
    assert!(app.take_snapshots().is_empty(), "a link changes no config");

    // Custom lifetime; listing is newest first.
    let short = app
        .ok(
            CREATE_LINK,
            json!({ "input": { "environmentId": environment, "expiresInSeconds": 60,
                               "secrets": [{ "name": "EXISTING" }] } }),
        )
        .await;
    let short_link = &short["createProvisioningLink"]["link"];
    let created_at =
        chrono::DateTime::parse_from_rfc3339(short_link["createdAt"].as_str().unwrap()).unwrap();
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(short_link["expiresAt"].as_str().unwrap()).unwrap();
    assert_eq!((expires_at - created_at).num_seconds(), 60);
    let links = app.ok(LINKS, json!({ "e": environment })).await;
    let ids: Vec<&str> = links["provisioningLinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            short_link["id"].as_str().unwrap(),
            link["id"].as_str().unwrap()
        ]
    );

    // Only the token's hash is stored.
    let token = url.rsplit('/').next().unwrap();
    let rows = app.db.all_rows_as_text().await;
    assert!(rows.iter().all(|r| !r.contains(token)));
    let hash = airlock_control_plane::domain::provisioning::token_hash(token);
    assert!(rows.iter().any(|r| r.contains(&hash)));

    // Revoke: once changes it, twice changes nothing (and audits nothing more).
    let revoked = app.ok(REVOKE_LINK, json!({ "id": link["id"] })).await;
    let revoked_at = revoked["revokeProvisioningLink"]["revokedAt"].clone();
    assert!(revoked_at.is_string());
    let audit_before = app.db.row_counts().await["audit_log"];
    let again = app.ok(REVOKE_LINK, json!({ "id": link["id"] })).await;
    assert_eq!(again["revokeProvisioningLink"]["revokedAt"], revoked_at);
    assert_eq!(app.db.row_counts().await["audit_log"], audit_before);
    let links = app.ok(LINKS, json!({ "e": environment })).await;
    assert_eq!(links["provisioningLinks"][1]["revokedAt"], revoked_at);

    let error = app
        .error(REVOKE_LINK, json!({ "id": Uuid::new_v4() }))
        .await;
    assert_eq!(error["extensions"]["code"], "NOT_FOUND");
    let error = app.error(LINKS, json!({ "e": Uuid::new_v4() })).await;
    assert_eq!(error["extensions"]["code"], "NOT_FOUND");
}

async fn bad_provisioning_links_write_nothing(mut app: TestApp) {
    let (_, environment) = acme_prod(&mut app).await;
    let input = |overrides: Value| {
        let mut input = json!({
            "environmentId": environment,
            "secrets": [{ "name": "TOKEN", "allowedHosts": ["api.example.com"] }]
        });
        for (k, v) in overrides.as_object().unwrap() {
            input[k] = v.clone();
        }
        json!({ "input": input })
    };
    let cases: Vec<(Value, &str, Option<&str>)> = vec![
        (
            input(json!({ "expiresInSeconds": 59 })),
            "INVALID_INPUT",
            Some("expiresInSeconds"),
        ),
        (
            input(json!({ "expiresInSeconds": 604_801 })),
            "INVALID_INPUT",
            Some("expiresInSeconds"),
        ),
        (
            input(json!({ "expiresInSeconds": -1 })),
            "INVALID_INPUT",
            Some("expiresInSeconds"),
        ),
        (
            input(json!({ "secrets": [] })),
            "INVALID_INPUT",
            Some("secrets"),
        ),
        (
            input(json!({ "secrets": [{ "name": "1bad", "allowedHosts": ["a.example.com"] }] })),
            "INVALID_INPUT",
            Some("secrets"),
        ),
        (
            input(json!({ "secrets": [
                { "name": "T", "allowedHosts": ["a.example.com"] },
                { "name": "T", "allowedHosts": ["a.example.com"] }
            ] })),
            "INVALID_INPUT",
            Some("secrets"),
        ),
        (
            input(json!({ "secrets": [{ "name": "NEW" }] })),
            "INVALID_INPUT",
            Some("allowedHosts"),
        ),
        (
            input(json!({ "secrets": [{ "name": "NEW", "allowedHosts": [] }] })),
            "INVALID_INPUT",
            Some("allowedHosts"),
        ),
        (
            input(json!({ "secrets": [{ "name": "NEW", "allowedHosts": ["*"] }] })),
            "INVALID_INPUT",
            Some("allowedHosts"),
        ),
        (
            input(
                json!({ "secrets": (0..33).map(|i| json!({ "name": format!("S{i}"), "allowedHosts": ["a.example.com"] })).collect::<Vec<_>>() }),
            ),
            "INVALID_INPUT",
            Some("secrets"),
        ),
        (
            input(json!({ "environmentId": Uuid::new_v4() })),
            "NOT_FOUND",
            None,
        ),
        (
            input(json!({ "environmentId": "nope" })),
            "INVALID_INPUT",
            Some("environmentId"),
        ),
    ];
    for (variables, code, field) in cases {
        let before = app.db.row_counts().await;
        let error = app.error(CREATE_LINK, variables.clone()).await;
        assert_eq!(error["extensions"]["code"], code, "{variables}: {error}");
        if let Some(field) = field {
            assert_eq!(error["extensions"]["field"], field, "{variables}: {error}");
        }
        assert_eq!(app.db.row_counts().await, before, "{variables} wrote");
    }
}

// ---- The HTTP side of provisioning links -------------------------------------------------

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(app: &TestApp, request: Request<Body>) -> Page {
    let response = airlock_control_plane::app(app.state.clone())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    Page {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

fn path_of(url: &str) -> String {
    url.strip_prefix(TEST_ORIGIN).unwrap().to_string()
}

async fn get_page(app: &TestApp, path: &str) -> Page {
    send(app, Request::get(path).body(Body::empty()).unwrap()).await
}

async fn post_form(app: &TestApp, path: &str, fields: &[(&str, &str)]) -> Page {
    let body = fields
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&");
    send(
        app,
        Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap(),
    )
    .await
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn assert_protective_headers(page: &Page) {
    let h = |name: header::HeaderName| page.headers[name].to_str().unwrap().to_string();
    assert_eq!(
        h(header::CONTENT_SECURITY_POLICY),
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
    );
    assert_eq!(h(header::REFERRER_POLICY), "no-referrer");
    assert_eq!(h(header::CACHE_CONTROL), "no-store");
    assert_eq!(h(header::X_FRAME_OPTIONS), "DENY");
    assert_eq!(h(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert!(h(header::CONTENT_TYPE).starts_with("text/html"));
    // Self-contained: nothing to load from anywhere.
    let lower = page.body.to_lowercase();
    for external in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!lower.contains(external), "page loads {external}");
    }
}

/// Create a link for NEW_TOKEN (new, bound to api.partner.example) and EXISTING (kept
/// hosts); returns (link id, path).
async fn two_secret_link(app: &mut TestApp, environment: &str) -> (String, String) {
    let data = app
        .ok(
            CREATE_LINK,
            json!({ "input": {
                "environmentId": environment,
                "secrets": [
                    { "name": "NEW_TOKEN", "allowedHosts": ["api.partner.example"] },
                    { "name": "EXISTING" }
                ]
            }}),
        )
        .await;
    let created = &data["createProvisioningLink"];
    (
        id_of(&created["link"]),
        path_of(created["url"].as_str().unwrap()),
    )
}

async fn a_provisioning_link_sets_secrets_once(mut app: TestApp) {
    const NEW_VALUE: &str = "canary-prov-new-8c1f <&> \"quoted\" é";
    const EXISTING_VALUE: &str = "canary-prov-existing-42aa";
    let (_, environment) = acme_prod(&mut app).await;
    let existing_id = id_of(&app.set_secret(&environment, "EXISTING", "old").await);
    let (link_id, path) = two_secret_link(&mut app, &environment).await;
    app.take_snapshots();

    // The form: one password input per secret, and the protective headers.
    let page = get_page(&app, &path).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_protective_headers(&page);
    assert!(
        page.body.contains("name=\"NEW_TOKEN\" type=\"password\""),
        "{}",
        page.body
    );
    assert!(page.body.contains("name=\"EXISTING\" type=\"password\""));
    assert!(page.body.contains("<form method=\"post\""));

    // Submit: both secrets get a new sealed version, in one go.
    let page = post_form(
        &app,
        &path,
        &[("NEW_TOKEN", NEW_VALUE), ("EXISTING", EXISTING_VALUE)],
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_protective_headers(&page);
    assert!(page.body.contains("2 secrets were stored"));
    assert!(!page.body.contains(NEW_VALUE) && !page.body.contains("canary-prov"));

    let snapshot = single_snapshot(&mut app);
    assert_eq!(open(&app, &snapshot, "NEW_TOKEN"), NEW_VALUE);
    assert_eq!(open(&app, &snapshot, "EXISTING"), EXISTING_VALUE);
    assert_eq!(snapshot.secrets["NEW_TOKEN"].sealed.version, 1);
    assert_eq!(snapshot.secrets["EXISTING"].sealed.version, 2);
    assert_eq!(hosts_of(&snapshot, "NEW_TOKEN"), ["api.partner.example"]);
    assert_eq!(
        hosts_of(&snapshot, "EXISTING"),
        [TEST_HOST],
        "kept its hosts"
    );
    assert!(!serde_json::to_string(&snapshot)
        .unwrap()
        .contains("canary-prov"));

    // Used: a second submission and the form itself are gone.
    let before = app.db.row_counts().await;
    let page = post_form(
        &app,
        &path,
        &[("NEW_TOKEN", "again"), ("EXISTING", "again")],
    )
    .await;
    assert_eq!(page.status, StatusCode::GONE);
    assert_protective_headers(&page);
    assert_eq!(app.db.row_counts().await, before);
    assert!(app.take_snapshots().is_empty());
    assert_eq!(get_page(&app, &path).await.status, StatusCode::GONE);

    // The audit trail names the link as the actor, never a value.
    let rows = app.audit_rows().await;
    let by_link: Vec<&Value> = rows
        .iter()
        .filter(|r| r["actorType"] == "provisioning_link")
        .collect();
    assert_eq!(by_link.len(), 3);
    assert!(by_link.iter().all(|r| r["actorId"] == link_id.as_str()));
    assert_eq!(by_link[0]["action"], "secret.set");
    assert_eq!(by_link[0]["targetName"], "NEW_TOKEN");
    assert_eq!(by_link[1]["action"], "secret.set");
    assert_eq!(by_link[1]["targetId"], existing_id.as_str());
    assert_eq!(by_link[2]["action"], "provisioning_link.use");
    assert_eq!(by_link[2]["targetId"], link_id.as_str());

    // The admin's views show that it happened, never what was submitted.
    let views = [
        app.ok(LINKS, json!({ "e": environment })).await,
        app.ok(
            "query($e: ID!) { secrets(environmentId: $e) { id name version allowedHosts createdAt updatedAt } }",
            json!({ "e": environment }),
        )
        .await,
        app.ok(SECRET_VERSIONS, json!({ "id": existing_id })).await,
        app.ok(AUDIT_LOG, json!({ "first": 500 })).await,
    ];
    assert!(views[0]["provisioningLinks"][0]["usedAt"].is_string());
    assert_eq!(
        views[2]["secretVersions"][0]["actor"],
        json!({ "type": "PROVISIONING_LINK", "id": link_id })
    );
    for view in &views {
        let text = view.to_string();
        assert!(
            !text.contains("canary-prov"),
            "a value in an admin view: {text}"
        );
    }
    assert_nowhere_in_storage(&app, &[NEW_VALUE, EXISTING_VALUE, "canary-prov"]).await;
}

async fn unusable_links_reveal_nothing(mut app: TestApp) {
    let (_, environment) = acme_prod(&mut app).await;
    app.set_secret(&environment, "EXISTING", "old").await;

    // Unknown tokens: 404, whatever their shape.
    for path in [
        "/provision/apl_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string(),
        "/provision/not-a-token".to_string(),
    ] {
        let page = get_page(&app, &path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND);
        assert_protective_headers(&page);
        let page = post_form(&app, &path, &[("EXISTING", "x")]).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND);
    }

    // Revoked.
    let (revoked_id, revoked) = two_secret_link(&mut app, &environment).await;
    app.ok(REVOKE_LINK, json!({ "id": revoked_id })).await;
    // Expired (moved into the past directly in the database).
    let (expired_id, expired) = two_secret_link(&mut app, &environment).await;
    let backend = app.db.db.get_database_backend();
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    app.db
        .db
        .execute_raw(Statement::from_sql_and_values(
            backend,
            match backend {
                sea_orm::DbBackend::Postgres => {
                    "UPDATE provisioning_links SET expires_at = $1 WHERE id = $2"
                }
                _ => "UPDATE provisioning_links SET expires_at = ? WHERE id = ?",
            },
            [past.into(), Uuid::parse_str(&expired_id).unwrap().into()],
        ))
        .await
        .unwrap();
    app.take_snapshots();

    let unknown_body = get_page(&app, "/provision/apl_unknown").await.body;
    for path in [&revoked, &expired] {
        let before = app.db.row_counts().await;
        let page = get_page(&app, path).await;
        assert_eq!(page.status, StatusCode::GONE, "{path}");
        assert_protective_headers(&page);
        // Nothing about the link: not the secrets it asked for, not why it is unusable.
        assert!(!page.body.contains("NEW_TOKEN") && !page.body.contains("EXISTING"));
        assert_eq!(page.body, unknown_body, "same page as an unknown link");
        let page = post_form(&app, path, &[("NEW_TOKEN", "v"), ("EXISTING", "v")]).await;
        assert_eq!(page.status, StatusCode::GONE, "{path}");
        assert!(!page.body.contains("NEW_TOKEN"));
        assert_eq!(app.db.row_counts().await, before);
        assert!(app.take_snapshots().is_empty());
    }
    // An unusable link with a malformed form is still just gone.
    let page = send(
        &app,
        Request::post(revoked.as_str())
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("garbage"))
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, StatusCode::GONE);
}

async fn an_incomplete_form_writes_nothing_and_keeps_the_link(mut app: TestApp) {
    let (_, environment) = acme_prod(&mut app).await;
    app.set_secret(&environment, "EXISTING", "old").await;
    let (_, path) = two_secret_link(&mut app, &environment).await;
    app.take_snapshots();

    let bad_forms: Vec<(Vec<(&str, &str)>, StatusCode)> = vec![
        (
            vec![("NEW_TOKEN", "canary-incomplete-1")],
            StatusCode::BAD_REQUEST,
        ),
        (
            vec![("NEW_TOKEN", "canary-incomplete-1"), ("EXISTING", "")],
            StatusCode::BAD_REQUEST,
        ),
        (vec![], StatusCode::BAD_REQUEST),
        (
            vec![
                ("NEW_TOKEN", "canary-incomplete-1"),
                ("EXISTING", "canary-incomplete-2"),
                ("OTHER", "x"),
            ],
            StatusCode::BAD_REQUEST,
        ),
        (
            vec![
                ("NEW_TOKEN", "canary-incomplete-1"),
                ("NEW_TOKEN", "canary-incomplete-3"),
                ("EXISTING", "canary-incomplete-2"),
            ],
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (fields, status) in bad_forms {
        let before = app.db.row_counts().await;
        let page = post_form(&app, &path, &fields).await;
        assert_eq!(page.status, status, "{fields:?}: {}", page.body);
        assert_protective_headers(&page);
        assert!(page.body.contains("Nothing was saved"), "{}", page.body);
        assert!(
            !page.body.contains("canary-incomplete"),
            "values are never echoed"
        );
        assert_eq!(app.db.row_counts().await, before, "{fields:?} wrote");
        assert!(app.take_snapshots().is_empty());
    }
    // Not a form at all.
    let before = app.db.row_counts().await;
    let page = send(
        &app,
        Request::post(path.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{\"NEW_TOKEN\": \"x\"}"))
            .unwrap(),
    )
    .await;
    assert!(page.status.is_client_error(), "{}", page.status);
    assert_eq!(app.db.row_counts().await, before);

    // The link still works.
    assert_eq!(get_page(&app, &path).await.status, StatusCode::OK);
    let page = post_form(&app, &path, &[("NEW_TOKEN", "n"), ("EXISTING", "e")]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let snapshot = single_snapshot(&mut app);
    assert_eq!(open(&app, &snapshot, "NEW_TOKEN"), "n");
    assert_eq!(open(&app, &snapshot, "EXISTING"), "e");
    assert_nowhere_in_storage(&app, &["canary-incomplete"]).await;
}

async fn concurrent_submissions_use_a_link_once(mut app: TestApp) {
    let (_, environment) = acme_prod(&mut app).await;
    app.set_secret(&environment, "EXISTING", "old").await;
    let (_, path) = two_secret_link(&mut app, &environment).await;
    app.take_snapshots();

    let submissions = (0..4).map(|i| {
        let value = format!("value-{i}");
        let app = &app;
        let path = path.clone();
        async move {
            post_form(app, &path, &[("NEW_TOKEN", &value), ("EXISTING", &value)])
                .await
                .status
        }
    });
    let statuses = futures::future::join_all(submissions).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::OK || *s == StatusCode::GONE));
    // One new version each, from the one winner.
    let counts = app.db.row_counts().await;
    assert_eq!(counts["secret_versions"], 1 + 2);
    let snapshot = single_snapshot(&mut app);
    assert_eq!(
        open(&app, &snapshot, "NEW_TOKEN"),
        open(&app, &snapshot, "EXISTING")
    );
}
