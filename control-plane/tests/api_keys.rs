//! API key lifecycle through `schema.execute`, on SQLite and on PostgreSQL: expiry, rotation
//! with a grace period, revocation, function patterns, and `lastUsedAt` from usage reports.

mod common;

use airlock_control_plane::events::{EventIngester, InProcessEvents};
use airlock_shared::api_key::ApiKeyHash;
use airlock_shared::events::{DataPlaneMessage, KeyUsageReport, KeyUse};
use airlock_shared::wire::EnvironmentSnapshot;
use chrono::{DateTime, Duration, Utc};
use common::TestApp;
use serde_json::{json, Value};
use uuid::Uuid;

on_both_backends!(
    a_key_can_expire_and_the_snapshot_says_when,
    rotation_issues_a_new_key_and_shortens_the_old_one,
    revocation_removes_the_key_and_is_idempotent,
    function_patterns_are_checked_when_saved,
    bad_lifecycle_input_is_refused_and_writes_nothing,
    usage_reports_move_last_used_at_forward_without_events,
);

const KEY_FIELDS: &str = "id environmentId name prefix functions createdAt expiresAt revokedAt rotatedAt rotatedFromId lastUsedAt status";

fn create_api_key() -> String {
    format!(
        "mutation($e: ID!, $name: String!, $functions: [String!]!, $expiresAt: DateTime) {{
           createApiKey(input: {{environmentId: $e, name: $name, functions: $functions, expiresAt: $expiresAt}}) {{
             apiKey {{ {KEY_FIELDS} }} key
           }}
         }}"
    )
}

fn rotate_api_key() -> String {
    format!(
        "mutation($id: ID!, $grace: Int!, $expiresAt: DateTime) {{
           rotateApiKey(input: {{id: $id, gracePeriodSeconds: $grace, expiresAt: $expiresAt}}) {{
             apiKey {{ {KEY_FIELDS} }} key previousKeyExpiresAt
           }}
         }}"
    )
}

fn revoke_api_key() -> String {
    format!("mutation($id: ID!) {{ revokeApiKey(id: $id) {{ {KEY_FIELDS} }} }}")
}

fn api_keys() -> String {
    format!("query($e: ID!) {{ apiKeys(environmentId: $e) {{ {KEY_FIELDS} }} }}")
}

fn time(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .parse()
        .unwrap()
}

/// A tenant with functions `get_user` and `billing_refund`, and one environment.
async fn setup(app: &mut TestApp) -> String {
    let tenant = app.create_tenant("acme").await;
    let environment = app.create_environment(&tenant, "prod").await;
    app.create_function(&tenant, "get_user").await;
    app.create_function(&tenant, "billing_refund").await;
    app.take_snapshots();
    environment
}

/// The one snapshot published since the last call.
fn published(app: &mut TestApp) -> EnvironmentSnapshot {
    let mut snapshots = app.take_snapshots();
    assert_eq!(snapshots.len(), 1, "one snapshot published");
    snapshots.remove(0)
}

fn grant_of<'s>(
    snapshot: &'s EnvironmentSnapshot,
    key: &str,
) -> Option<&'s airlock_shared::wire::ApiKeyGrant> {
    let hash = ApiKeyHash::of(key);
    snapshot.api_keys.iter().find(|grant| grant.hash == hash)
}

async fn a_key_can_expire_and_the_snapshot_says_when(mut app: TestApp) {
    let environment = setup(&mut app).await;
    let expires_at = Utc::now() + Duration::hours(1);
    let data = app
        .ok(
            &create_api_key(),
            json!({ "e": environment, "name": "ci", "functions": ["get_user"], "expiresAt": expires_at.to_rfc3339() }),
        )
        .await;
    let created = &data["createApiKey"];
    let key = created["key"].as_str().unwrap();
    let api_key = &created["apiKey"];
    // Stored to the microsecond.
    assert!(
        (time(&api_key["expiresAt"]) - expires_at)
            .num_microseconds()
            .unwrap()
            .abs()
            < 1
    );
    assert_eq!(api_key["status"], "ACTIVE");
    assert_eq!(api_key["revokedAt"], Value::Null);
    assert_eq!(api_key["lastUsedAt"], Value::Null);
    assert_eq!(api_key["rotatedFromId"], Value::Null);

    let snapshot = published(&mut app);
    let grant = grant_of(&snapshot, key).expect("the key is published");
    assert_eq!(
        grant.expires_at.map(|at| at.timestamp_micros()),
        Some(expires_at.timestamp_micros())
    );

    // Without expiry: never expires.
    let data = app
        .ok(
            &create_api_key(),
            json!({ "e": environment, "name": "forever", "functions": ["*"] }),
        )
        .await;
    assert_eq!(data["createApiKey"]["apiKey"]["expiresAt"], Value::Null);
    let snapshot = published(&mut app);
    let key = data["createApiKey"]["key"].as_str().unwrap();
    assert_eq!(grant_of(&snapshot, key).unwrap().expires_at, None);
}

async fn rotation_issues_a_new_key_and_shortens_the_old_one(mut app: TestApp) {
    let environment = setup(&mut app).await;
    let (old_id, old_key) =
        create_key(&app, &environment, "app", json!(["get_user", "billing_*"])).await;
    app.take_snapshots();

    let before = Utc::now();
    let data = app
        .ok(&rotate_api_key(), json!({ "id": old_id, "grace": 3600 }))
        .await;
    let after = Utc::now();
    let rotated = &data["rotateApiKey"];
    let new_key = rotated["key"].as_str().unwrap().to_string();
    assert_ne!(new_key, old_key);
    let new = &rotated["apiKey"];
    assert_ne!(new["id"], old_id);
    assert_eq!(new["rotatedFromId"], old_id);
    assert_eq!(new["name"], "app");
    assert_eq!(new["environmentId"], environment);
    assert_eq!(new["functions"], json!(["get_user", "billing_*"]));
    assert_eq!(new["expiresAt"], Value::Null);
    assert_eq!(new["status"], "ACTIVE");
    let grace_end = time(&rotated["previousKeyExpiresAt"]);
    assert!(grace_end >= before + Duration::seconds(3600) - Duration::milliseconds(1));
    assert!(grace_end <= after + Duration::seconds(3600));

    // Both keys are published; the old one with its shortened expiry.
    let snapshot = published(&mut app);
    assert_eq!(grant_of(&snapshot, &new_key).unwrap().expires_at, None);
    assert_eq!(
        grant_of(&snapshot, &old_key)
            .unwrap()
            .expires_at
            .map(|at| at.timestamp_micros()),
        Some(grace_end.timestamp_micros())
    );

    // The list shows both, newest first, the old one rotated but still active.
    let keys = app.ok(&api_keys(), json!({ "e": environment })).await["apiKeys"].clone();
    assert_eq!(keys.as_array().unwrap().len(), 2);
    assert_eq!(keys[0]["id"], new["id"]);
    assert_eq!(keys[1]["id"], old_id);
    assert_eq!(keys[1]["status"], "ACTIVE");
    assert!(keys[1]["rotatedAt"].is_string());
    assert_eq!(time(&keys[1]["expiresAt"]), grace_end);

    // The old key cannot be rotated again; the error names its successor.
    let error = app
        .error(&rotate_api_key(), json!({ "id": old_id, "grace": 0 }))
        .await;
    assert_eq!(error["extensions"]["code"], "INVALID_INPUT");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains(new["id"].as_str().unwrap()),
        "{error}"
    );
    // The name belongs to the current key.
    let error = app
        .error(
            &create_api_key(),
            json!({ "e": environment, "name": "app", "functions": ["*"] }),
        )
        .await;
    assert_eq!(error["extensions"]["code"], "ALREADY_EXISTS");

    // Grace 0: the old key stops at once and leaves the snapshot; a rotation never extends
    // an earlier expiry.
    let new_id = new["id"].as_str().unwrap().to_string();
    let data = app
        .ok(&rotate_api_key(), json!({ "id": new_id, "grace": 0 }))
        .await;
    let third_key = data["rotateApiKey"]["key"].as_str().unwrap().to_string();
    let snapshot = published(&mut app);
    assert!(
        grant_of(&snapshot, &new_key).is_none(),
        "grace 0: gone at once"
    );
    assert!(grant_of(&snapshot, &third_key).is_some());
    let keys = app.ok(&api_keys(), json!({ "e": environment })).await["apiKeys"].clone();
    let second = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == new_id.as_str())
        .unwrap();
    assert_eq!(second["status"], "EXPIRED");

    // A new expiry for the new key, and an old expiry earlier than the grace end is kept.
    let soon = Utc::now() + Duration::minutes(10);
    let data = app
        .ok(
            &create_api_key(),
            json!({ "e": environment, "name": "short", "functions": ["*"], "expiresAt": soon.to_rfc3339() }),
        )
        .await;
    let short_id = data["createApiKey"]["apiKey"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let later = Utc::now() + Duration::days(90);
    let data = app
        .ok(
            &rotate_api_key(),
            json!({ "id": short_id, "grace": 86_400, "expiresAt": later.to_rfc3339() }),
        )
        .await;
    assert_eq!(
        time(&data["rotateApiKey"]["previousKeyExpiresAt"]).timestamp_micros(),
        soon.timestamp_micros()
    );
    assert_eq!(
        time(&data["rotateApiKey"]["apiKey"]["expiresAt"]).timestamp_micros(),
        later.timestamp_micros()
    );

    let rotations = audit_count(&app, "api_key.rotate").await;
    assert_eq!(rotations, 3);
}

async fn revocation_removes_the_key_and_is_idempotent(mut app: TestApp) {
    let environment = setup(&mut app).await;
    let (id, key) = create_key(&app, &environment, "app", json!(["*"])).await;
    app.take_snapshots();

    let revoked = app.ok(&revoke_api_key(), json!({ "id": id })).await["revokeApiKey"].clone();
    assert_eq!(revoked["id"], id);
    assert_eq!(revoked["status"], "REVOKED");
    let revoked_at = time(&revoked["revokedAt"]);
    let snapshot = published(&mut app);
    assert!(
        grant_of(&snapshot, &key).is_none(),
        "revoked keys are not published"
    );

    // Again: the same answer, nothing written.
    let rows = app.db.row_counts().await;
    let again = app.ok(&revoke_api_key(), json!({ "id": id })).await["revokeApiKey"].clone();
    assert_eq!(time(&again["revokedAt"]), revoked_at);
    assert_eq!(app.db.row_counts().await, rows);
    let revocations = audit_count(&app, "api_key.revoke").await;
    assert_eq!(revocations, 1);

    // A revoked key cannot be rotated; its name is free again.
    let error = app
        .error(&rotate_api_key(), json!({ "id": id, "grace": 60 }))
        .await;
    assert_eq!(error["extensions"]["code"], "INVALID_INPUT");
    assert_eq!(error["extensions"]["field"], "id");
    app.ok(
        &create_api_key(),
        json!({ "e": environment, "name": "app", "functions": ["*"] }),
    )
    .await;

    // Revoking the old key of a rotation ends its grace period early.
    let (old_id, old_key) = create_key(&app, &environment, "rotating", json!(["*"])).await;
    let data = app
        .ok(&rotate_api_key(), json!({ "id": old_id, "grace": 3600 }))
        .await;
    let new_key = data["rotateApiKey"]["key"].as_str().unwrap().to_string();
    app.take_snapshots();
    app.ok(&revoke_api_key(), json!({ "id": old_id })).await;
    let snapshot = published(&mut app);
    assert!(grant_of(&snapshot, &old_key).is_none());
    assert!(grant_of(&snapshot, &new_key).is_some());
}

async fn function_patterns_are_checked_when_saved(mut app: TestApp) {
    let environment = setup(&mut app).await;
    let data = app
        .ok(
            &create_api_key(),
            json!({ "e": environment, "name": "globs", "functions": ["billing_*", "get_?ser", "crm-*", "get_user", "billing_*"] }),
        )
        .await;
    // Repeats dropped; globs kept even when they match nothing yet.
    assert_eq!(
        data["createApiKey"]["apiKey"]["functions"],
        json!(["billing_*", "get_?ser", "crm-*", "get_user"])
    );
    let snapshot = published(&mut app);
    let key = data["createApiKey"]["key"].as_str().unwrap();
    let grant = grant_of(&snapshot, key).unwrap();
    // The data plane decides with these patterns (data-plane/src/scope.rs tests).
    assert_eq!(
        grant.functions,
        ["billing_*", "get_?ser", "crm-*", "get_user"]
    );
}

async fn bad_lifecycle_input_is_refused_and_writes_nothing(mut app: TestApp) {
    let environment = setup(&mut app).await;
    let (id, _) = create_key(&app, &environment, "app", json!(["*"])).await;
    app.take_snapshots();
    let unknown = Uuid::new_v4().to_string();
    let past = (Utc::now() - Duration::seconds(1)).to_rfc3339();

    let create = |name: &str, functions: Value, expires_at: Value| {
        (
            create_api_key(),
            json!({ "e": environment, "name": name, "functions": functions, "expiresAt": expires_at }),
        )
    };
    let mut cases: Vec<BadCase> = vec![
        (
            "expiry in the past",
            create("late", json!(["*"]), json!(past)),
            "INVALID_INPUT",
            Some("expiresAt"),
        ),
        (
            "expiry now-ish",
            create("late", json!(["*"]), json!(Utc::now().to_rfc3339())),
            "INVALID_INPUT",
            Some("expiresAt"),
        ),
        (
            "negative grace",
            (rotate_api_key(), json!({ "id": id, "grace": -1 })),
            "INVALID_INPUT",
            Some("gracePeriodSeconds"),
        ),
        (
            "grace over 30 days",
            (
                rotate_api_key(),
                json!({ "id": id, "grace": 30 * 86_400 + 1 }),
            ),
            "INVALID_INPUT",
            Some("gracePeriodSeconds"),
        ),
        (
            "rotation to a past expiry",
            (
                rotate_api_key(),
                json!({ "id": id, "grace": 10, "expiresAt": past }),
            ),
            "INVALID_INPUT",
            Some("expiresAt"),
        ),
        (
            "rotate an unknown key",
            (rotate_api_key(), json!({ "id": unknown, "grace": 10 })),
            "NOT_FOUND",
            None,
        ),
        (
            "revoke an unknown key",
            (revoke_api_key(), json!({ "id": unknown })),
            "NOT_FOUND",
            None,
        ),
        (
            "revoke a malformed id",
            (revoke_api_key(), json!({ "id": "not-a-uuid" })),
            "INVALID_INPUT",
            Some("id"),
        ),
    ];
    for bad in [
        "crm.*",
        ".*",
        "a,b",
        "\"get_user\"",
        "'x'",
        "(a|b)",
        "[ab]",
        "a b",
        "",
        "get_user/x",
        "{a,b}",
        "\\w+",
        "^get_user$",
        "get_user\n",
    ] {
        cases.push((
            "bad pattern",
            create("bad", json!(["get_user", bad]), Value::Null),
            "INVALID_INPUT",
            Some("functions"),
        ));
    }
    cases.push((
        "pattern too long",
        create("bad", json!(["a".repeat(65)]), Value::Null),
        "INVALID_INPUT",
        Some("functions"),
    ));
    cases.push((
        "unknown exact name",
        create("bad", json!(["get_users"]), Value::Null),
        "INVALID_INPUT",
        Some("functions"),
    ));

    for (what, (query, variables), code, field) in cases {
        let before = app.db.all_rows_as_text().await;
        let error = app.error(&query, variables.clone()).await;
        assert_eq!(
            error["extensions"]["code"], code,
            "{what} {variables}: {error}"
        );
        if let Some(field) = field {
            assert_eq!(error["extensions"]["field"], field, "{what}: {error}");
        }
        assert_eq!(
            app.db.all_rows_as_text().await,
            before,
            "{what} wrote something"
        );
        assert!(app.take_snapshots().is_empty(), "{what} published");
    }
}

/// What was tried, the operation and its variables, the expected code and field.
type BadCase = (
    &'static str,
    (String, Value),
    &'static str,
    Option<&'static str>,
);

async fn usage_reports_move_last_used_at_forward_without_events(mut app: TestApp) {
    let environment = setup(&mut app).await;
    let (id, _) = create_key(&app, &environment, "app", json!(["*"])).await;
    let id: Uuid = id.parse().unwrap();
    let (sender, source) = InProcessEvents::channel();
    let ingester = EventIngester::start(app.db.db.clone(), source);
    let report = |at: DateTime<Utc>| {
        DataPlaneMessage::KeyUsage(KeyUsageReport {
            uses: vec![
                KeyUse {
                    api_key_id: id,
                    last_used_at: at,
                },
                // A key that does not exist (deleted meanwhile) is ignored.
                KeyUse {
                    api_key_id: Uuid::new_v4(),
                    last_used_at: at,
                },
            ],
        })
    };
    let used_at = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();

    sender.send(report(used_at)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while last_used(&app, &environment).await.is_null() {
        assert!(std::time::Instant::now() < deadline, "lastUsedAt never set");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(time(&last_used(&app, &environment).await), used_at);

    // An older report (another data plane, late) does not move it back; a newer one does.
    sender
        .send(report(used_at - Duration::seconds(30)))
        .unwrap();
    let newer = used_at + Duration::milliseconds(1500);
    sender.send(report(newer)).unwrap();
    let stats = ingester.shutdown().await;
    assert_eq!(stats.key_uses, 6);
    assert_eq!(stats.stored, 0);
    assert_eq!(time(&last_used(&app, &environment).await), newer);
    assert_eq!(
        app.db.row_counts().await["events"],
        0,
        "usage is not an event"
    );
}

/// Create a key; its id and the key.
async fn create_key(
    app: &TestApp,
    environment: &str,
    name: &str,
    functions: Value,
) -> (String, String) {
    let data = app
        .ok(
            &create_api_key(),
            json!({ "e": environment, "name": name, "functions": functions }),
        )
        .await;
    let created = &data["createApiKey"];
    (
        created["apiKey"]["id"].as_str().unwrap().to_string(),
        created["key"].as_str().unwrap().to_string(),
    )
}

/// Audit entries with `action`.
async fn audit_count(app: &TestApp, action: &str) -> usize {
    app.audit_rows()
        .await
        .into_iter()
        .filter(|row| row["action"] == action)
        .count()
}

async fn last_used(app: &TestApp, environment: &str) -> Value {
    app.ok(&api_keys(), json!({ "e": environment })).await["apiKeys"][0]["lastUsedAt"].clone()
}
