//! Event ingestion on SQLite and PostgreSQL: the in-process source of `airlock dev`, the Redis
//! Streams consumer against a real Redis (unique key prefix per test, entries added by hand
//! as a data plane would), and the `events` GraphQL query.

mod common;

use std::time::Duration;

use airlock_control_plane::domain::audit::{self, Actor, AuditFilter};
use airlock_control_plane::domain::events::{self, EventFilter};
use airlock_control_plane::events::{
    EventIngester, InProcessEvents, RedisEvents, RedisEventsConfig,
};
use airlock_shared::events::{EventKind, GatewayEvent};
use airlock_shared::keys::{RedisNames, EVENTS_GROUP};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use chrono::{DateTime, SubsecRound, Utc};
use common::{TestApp, REDIS_URL};
use redis::AsyncCommands;
use sea_orm::DatabaseConnection;
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

on_both_backends!(
    in_process_events_are_stored_once_with_a_secret_use_audit_entry,
    shutdown_stores_everything_already_sent,
    redis_entries_are_stored_and_acknowledged,
    a_live_consumer_claims_entries_a_dead_one_left_pending,
    the_consumer_waits_for_redis_and_then_catches_up,
    events_query_filters_and_paginates,
);

fn event(kind: EventKind, tenant: Option<Uuid>, environment: Option<Uuid>) -> GatewayEvent {
    GatewayEvent {
        id: Uuid::now_v7(),
        at: Utc::now().trunc_subsecs(6),
        kind,
        tenant_id: tenant,
        environment_id: environment,
        request_id: format!("req-{}", Uuid::new_v4().simple()),
        function: Some("get_user".into()),
        api_key_id: tenant.map(|_| Uuid::new_v4()),
        secrets: vec![],
        upstream_host: Some("api.example.com".into()),
        status: 200,
        message: "ok".into(),
        oauth_connection: None,
    }
}

fn secret_used(tenant: Uuid, environment: Uuid) -> GatewayEvent {
    GatewayEvent {
        secrets: vec!["API_TOKEN".into(), "API_SIGNING_KEY".into()],
        message: "secrets injected".into(),
        ..event(EventKind::SecretUsed, Some(tenant), Some(environment))
    }
}

async fn all_events(db: &DatabaseConnection) -> Vec<GatewayEvent> {
    events::list(db, &EventFilter::default(), events::MAX_PAGE_SIZE, None)
        .await
        .unwrap()
        .events
}

async fn secret_use_audit(db: &DatabaseConnection) -> Vec<audit::AuditRecord> {
    let filter = AuditFilter {
        action: Some("secret.used".into()),
        ..Default::default()
    };
    audit::list(db, &filter, audit::MAX_PAGE_SIZE, None)
        .await
        .unwrap()
        .entries
}

/// Poll `check` until it holds (10 s at most).
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

async fn ids(app: &TestApp) -> (Uuid, Uuid) {
    let tenant = app.create_tenant("acme").await;
    let environment = app.create_environment(&tenant, "prod").await;
    (tenant.parse().unwrap(), environment.parse().unwrap())
}

fn sorted_newest_first(mut events: Vec<GatewayEvent>) -> Vec<GatewayEvent> {
    events.sort_by_key(|e| std::cmp::Reverse((e.at, e.id)));
    events
}

async fn in_process_events_are_stored_once_with_a_secret_use_audit_entry(app: TestApp) {
    let db = app.state.db.clone();
    let (tenant, environment) = ids(&app).await;
    let used = secret_used(tenant, environment);
    let denied = GatewayEvent {
        status: 401,
        message: "missing or unknown API key".into(),
        function: None,
        upstream_host: None,
        ..event(EventKind::AuthDenied, None, None)
    };
    // A tenant and environment that no longer exist: still stored.
    let orphan = GatewayEvent {
        status: 502,
        // PostgreSQL refuses NUL in text; the event is stored with it replaced.
        message: "upstream failed\0 badly".into(),
        ..event(
            EventKind::UpstreamError,
            Some(Uuid::new_v4()),
            Some(Uuid::new_v4()),
        )
    };

    let (sender, source) = InProcessEvents::channel();
    let ingester = EventIngester::start(db.clone(), source);
    for event in [&used, &denied, &used, &orphan] {
        sender.send(event.clone().into()).unwrap();
    }
    eventually("three events are stored", || {
        let db = db.clone();
        async move { all_events(&db).await.len() == 3 }
    })
    .await;
    // Sent again later (a data plane retrying): still once.
    sender.send(used.clone().into()).unwrap();
    let stats = ingester.shutdown().await;
    assert_eq!(stats.stored, 3);
    assert_eq!(stats.duplicates, 2);
    assert_eq!(stats.rejected + stats.unstored, 0);
    assert!(
        sender.send(used.clone().into()).is_err(),
        "closed after shutdown"
    );

    let stored = all_events(&db).await;
    let expected_orphan = GatewayEvent {
        message: "upstream failed\u{FFFD} badly".into(),
        ..orphan.clone()
    };
    assert_eq!(
        stored,
        sorted_newest_first(vec![used.clone(), denied.clone(), expected_orphan])
    );

    let audit = secret_use_audit(&db).await;
    assert_eq!(audit.len(), 1, "one audit entry per use, not per delivery");
    let entry = &audit[0];
    assert_eq!(entry.actor, Actor::DataPlane);
    assert_eq!(entry.action, "secret.used");
    assert_eq!(entry.tenant_id, Some(tenant));
    assert_eq!(entry.environment_id, Some(environment));
    assert_eq!(entry.request_id.as_deref(), Some(used.request_id.as_str()));
    assert_eq!(entry.at, used.at);
    assert_eq!(entry.detail["function"], "get_user");
    assert_eq!(
        entry.detail["apiKeyId"],
        json!(used.api_key_id.unwrap().to_string())
    );
    assert_eq!(
        entry.detail["secrets"],
        json!(["API_TOKEN", "API_SIGNING_KEY"])
    );
    assert_eq!(entry.detail["eventId"], json!(used.id.to_string()));
    // Only the secret use is audited.
    let all = audit::list(&db, &AuditFilter::default(), audit::MAX_PAGE_SIZE, None)
        .await
        .unwrap()
        .entries;
    assert_eq!(
        all.iter().filter(|e| e.actor == Actor::DataPlane).count(),
        1
    );
}

async fn shutdown_stores_everything_already_sent(app: TestApp) {
    let db = app.state.db.clone();
    let (sender, source) = InProcessEvents::channel();
    let ingester = EventIngester::start(db.clone(), source);
    let sent: Vec<GatewayEvent> = (0..600)
        .map(|_| event(EventKind::ScopeDenied, None, None))
        .collect();
    for event in &sent {
        sender.send(event.clone().into()).unwrap();
    }
    // No waiting: shutdown itself drains the channel (more than two batches).
    let stats = ingester.shutdown().await;
    assert_eq!(stats.stored, 600);
    let page = events::list(&db, &EventFilter::default(), 500, None)
        .await
        .unwrap();
    assert!(page.has_next_page);
    let cursor = events::EventCursor::of(page.events.last().unwrap());
    let rest = events::list(&db, &EventFilter::default(), 500, Some(cursor))
        .await
        .unwrap();
    assert_eq!(page.events.len() + rest.events.len(), 600);
    assert!(!rest.has_next_page);
}

// --- Redis -------------------------------------------------------------------------------

fn unique_names() -> RedisNames {
    RedisNames::new(format!("airlock_test_{}", Uuid::new_v4().simple()))
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn cleanup(names: &RedisNames) {
    let mut connection = redis().await;
    let keys: Vec<String> = connection
        .keys(format!("{}:*", names.prefix()))
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = connection.del(keys).await.unwrap();
    }
}

/// What a data plane does: `XADD <stream> MAXLEN ~ 100000 * events <json array>` (or, before
/// batched entries, `... * event <json>`).
async fn xadd(names: &RedisNames, field: &str, payload: &str) -> String {
    redis::cmd("XADD")
        .arg(names.events_stream())
        .arg("MAXLEN")
        .arg("~")
        .arg(airlock_data_plane::STREAM_MAX_LEN)
        .arg("*")
        .arg(field)
        .arg(payload)
        .query_async(&mut redis().await)
        .await
        .unwrap()
}

async fn send_over_redis(names: &RedisNames, event: &GatewayEvent) -> String {
    xadd(names, "event", &serde_json::to_string(event).unwrap()).await
}

/// Number of entries of the group not acknowledged yet.
async fn pending_count(names: &RedisNames) -> usize {
    let reply: redis::streams::StreamPendingReply = redis()
        .await
        .xpending(names.events_stream(), EVENTS_GROUP)
        .await
        .unwrap();
    reply.count()
}

fn fast_config(names: &RedisNames, url: &str) -> RedisEventsConfig {
    RedisEventsConfig {
        block: Duration::from_millis(200),
        claim_min_idle: Duration::from_millis(300),
        claim_interval: Duration::from_millis(200),
        ..RedisEventsConfig::new(url, names.clone())
    }
}

async fn redis_entries_are_stored_and_acknowledged(app: TestApp) {
    let db = app.state.db.clone();
    let names = unique_names();
    let (tenant, environment) = ids(&app).await;
    let used = secret_used(tenant, environment);
    let timeout = GatewayEvent {
        status: 504,
        ..event(EventKind::UpstreamTimeout, Some(tenant), Some(environment))
    };
    // Sent before any control plane runs: the group starts at the beginning of the stream.
    send_over_redis(&names, &used).await;
    send_over_redis(&names, &used).await;
    xadd(&names, "event", "{not json").await;
    xadd(&names, "something-else", "{}").await;
    xadd(&names, "event", r#"{"id":"x"}"#).await;
    // A data plane's batched entry: consecutive events in one array.
    let error = GatewayEvent {
        status: 502,
        ..event(EventKind::UpstreamError, Some(tenant), Some(environment))
    };
    let unreachable = GatewayEvent {
        status: 502,
        ..event(
            EventKind::UpstreamUnreachable,
            Some(tenant),
            Some(environment),
        )
    };
    xadd(
        &names,
        "events",
        &serde_json::to_string(&[&error, &unreachable]).unwrap(),
    )
    .await;
    // One bad event in an array: the whole entry is skipped (and acknowledged).
    let skipped = event(EventKind::UpstreamError, Some(tenant), Some(environment));
    xadd(
        &names,
        "events",
        &format!(
            r#"[{},{{"id":"x"}}]"#,
            serde_json::to_string(&skipped).unwrap()
        ),
    )
    .await;

    let source = RedisEvents::new(fast_config(&names, REDIS_URL)).unwrap();
    let consumer = source.consumer().to_string();
    let ingester = EventIngester::start(db.clone(), source);
    send_over_redis(&names, &timeout).await;
    eventually(
        "the four events are stored and every entry acknowledged",
        || {
            let db = db.clone();
            let names = names.clone();
            async move { all_events(&db).await.len() == 4 && pending_count(&names).await == 0 }
        },
    )
    .await;
    // The same event again (a re-delivery): stored once, acknowledged.
    let last = send_over_redis(&names, &timeout).await;
    eventually("the re-delivery is read and acknowledged", || {
        let names = names.clone();
        let last = last.clone();
        async move {
            let info: redis::streams::StreamInfoGroupsReply = redis()
                .await
                .xinfo_groups(names.events_stream())
                .await
                .unwrap();
            info.groups[0].last_delivered_id == last && info.groups[0].pending == 0
        }
    })
    .await;
    let stats = ingester.shutdown().await;
    assert_eq!(stats.stored, 4);
    assert_eq!(stats.duplicates, 2);

    assert_eq!(
        all_events(&db).await,
        sorted_newest_first(vec![
            used.clone(),
            timeout.clone(),
            error.clone(),
            unreachable.clone()
        ])
    );
    assert_eq!(secret_use_audit(&db).await.len(), 1);
    assert_eq!(pending_count(&names).await, 0);
    // A clean shutdown removes the consumer from the group (it held nothing pending).
    let consumers: redis::streams::StreamInfoConsumersReply = redis()
        .await
        .xinfo_consumers(names.events_stream(), EVENTS_GROUP)
        .await
        .unwrap();
    assert!(
        consumers.consumers.iter().all(|c| c.name != consumer),
        "consumer {consumer} left behind"
    );
    cleanup(&names).await;
}

async fn a_live_consumer_claims_entries_a_dead_one_left_pending(app: TestApp) {
    let db = app.state.db.clone();
    let names = unique_names();
    let (tenant, environment) = ids(&app).await;
    let first = secret_used(tenant, environment);
    let second = event(EventKind::ScopeDenied, Some(tenant), Some(environment));
    let mut connection = redis().await;
    let _: () = connection
        .xgroup_create_mkstream(names.events_stream(), EVENTS_GROUP, "0")
        .await
        .unwrap();
    send_over_redis(&names, &first).await;
    send_over_redis(&names, &second).await;
    // A consumer reads both, then dies without acknowledging.
    let options = redis::streams::StreamReadOptions::default()
        .group(EVENTS_GROUP, "dead-consumer")
        .count(10);
    let read: redis::streams::StreamReadReply = connection
        .xread_options(&[names.events_stream()], &[">"], &options)
        .await
        .unwrap();
    assert_eq!(read.keys[0].ids.len(), 2);
    assert_eq!(pending_count(&names).await, 2);

    let source = RedisEvents::new(fast_config(&names, REDIS_URL)).unwrap();
    let ingester = EventIngester::start(db.clone(), source);
    eventually(
        "the dead consumer's entries are claimed, stored and acknowledged",
        || {
            let db = db.clone();
            let names = names.clone();
            async move { all_events(&db).await.len() == 2 && pending_count(&names).await == 0 }
        },
    )
    .await;
    let stats = ingester.shutdown().await;
    assert_eq!(stats.stored, 2);
    assert_eq!(
        all_events(&db).await,
        sorted_newest_first(vec![first, second])
    );
    assert_eq!(secret_use_audit(&db).await.len(), 1);
    cleanup(&names).await;
}

/// Forward connections from `listener` to the real Redis, so a test decides when "Redis" is
/// reachable.
async fn forward_to_redis(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:6379").await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

async fn the_consumer_waits_for_redis_and_then_catches_up(app: TestApp) {
    let db = app.state.db.clone();
    let names = unique_names();
    let (tenant, environment) = ids(&app).await;
    let used = secret_used(tenant, environment);
    send_over_redis(&names, &used).await;

    // Nothing listens on this port yet: the consumer retries with backoff, never gives up.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let source =
        RedisEvents::new(fast_config(&names, &format!("redis://127.0.0.1:{port}"))).unwrap();
    let ingester = EventIngester::start(db.clone(), source);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(all_events(&db).await.is_empty());

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let proxy = tokio::spawn(forward_to_redis(listener));
    eventually("the event is stored once Redis is reachable", || {
        let db = db.clone();
        let names = names.clone();
        async move { all_events(&db).await.len() == 1 && pending_count(&names).await == 0 }
    })
    .await;
    assert_eq!(ingester.shutdown().await.stored, 1);
    proxy.abort();
    cleanup(&names).await;
}

// --- GraphQL -----------------------------------------------------------------------------

const EVENTS: &str = r#"
query($filter: EventFilter, $first: Int, $after: String) {
  events(filter: $filter, first: $first, after: $after) {
    edges { cursor node { id at kind tenantId environmentId requestId function apiKeyId secrets upstreamHost status message } }
    pageInfo { hasNextPage hasPreviousPage endCursor }
  }
}"#;

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_775_000_000 + seconds, 123_456_000).unwrap()
}

async fn page(app: &TestApp, variables: Value) -> Value {
    app.ok(EVENTS, variables).await["events"].clone()
}

fn node_ids(page: &Value) -> Vec<String> {
    page["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|edge| edge["node"]["id"].as_str().unwrap().to_string())
        .collect()
}

async fn events_query_filters_and_paginates(app: TestApp) {
    let db = app.state.db.clone();
    let (tenant, prod) = ids(&app).await;
    let staging: Uuid = app
        .create_environment(&tenant.to_string(), "staging")
        .await
        .parse()
        .unwrap();
    let other_tenant = Uuid::new_v4();
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(GatewayEvent {
            at: at(i),
            ..secret_used(tenant, prod)
        });
    }
    sent.push(GatewayEvent {
        at: at(10),
        status: 502,
        ..event(EventKind::UpstreamError, Some(tenant), Some(staging))
    });
    // Two events at the same instant: ordered by id, and pages split between them.
    let same = at(20);
    sent.push(GatewayEvent {
        at: same,
        ..event(EventKind::AuthDenied, None, None)
    });
    sent.push(GatewayEvent {
        at: same,
        ..event(EventKind::AuthDenied, None, None)
    });
    sent.push(GatewayEvent {
        at: at(30),
        ..event(
            EventKind::ScopeDenied,
            Some(other_tenant),
            Some(Uuid::new_v4()),
        )
    });
    events::store(&db, &sent).await.unwrap();
    let newest_first: Vec<String> = sorted_newest_first(sent.clone())
        .iter()
        .map(|e| e.id.to_string())
        .collect();

    // Every field.
    let first = page(&app, json!({ "first": 1 })).await;
    let node = &first["edges"][0]["node"];
    let expected = sent.last().unwrap();
    assert_eq!(node["id"], expected.id.to_string());
    assert_eq!(
        DateTime::parse_from_rfc3339(node["at"].as_str().unwrap()).unwrap(),
        expected.at
    );
    assert_eq!(node["kind"], "scope.denied");
    assert_eq!(node["tenantId"], other_tenant.to_string());
    assert_eq!(node["requestId"], expected.request_id);
    assert_eq!(node["function"], "get_user");
    assert_eq!(node["apiKeyId"], expected.api_key_id.unwrap().to_string());
    assert_eq!(node["secrets"], json!([]));
    assert_eq!(node["upstreamHost"], "api.example.com");
    assert_eq!(node["status"], 200);
    assert_eq!(node["message"], "ok");
    assert_eq!(first["pageInfo"]["hasNextPage"], true);
    assert_eq!(first["pageInfo"]["hasPreviousPage"], false);

    // Pages of 2 walk through everything, newest first, ties included.
    let mut walked = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let current = page(&app, json!({ "first": 2, "after": after })).await;
        walked.extend(node_ids(&current));
        assert_eq!(current["pageInfo"]["hasPreviousPage"], after.is_some());
        if current["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = Some(
            current["pageInfo"]["endCursor"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(walked, newest_first);
    // The default page holds them all.
    assert_eq!(node_ids(&page(&app, json!({})).await), newest_first);

    // Filters.
    let by_tenant = page(&app, json!({ "filter": { "tenantId": tenant } })).await;
    assert_eq!(node_ids(&by_tenant).len(), 6);
    let used_in_prod = page(
        &app,
        json!({ "filter": { "environmentId": prod, "kind": "secret.used" }, "first": 3 }),
    )
    .await;
    assert_eq!(node_ids(&used_in_prod), newest_first[4..7].to_vec());
    assert_eq!(
        used_in_prod["edges"][0]["node"]["secrets"],
        json!(["API_TOKEN", "API_SIGNING_KEY"])
    );
    let rest = page(
        &app,
        json!({
            "filter": { "environmentId": prod, "kind": "secret.used" },
            "after": used_in_prod["pageInfo"]["endCursor"],
        }),
    )
    .await;
    assert_eq!(node_ids(&rest), newest_first[7..9].to_vec());
    assert_eq!(rest["pageInfo"]["hasNextPage"], false);
    let in_staging = page(&app, json!({ "filter": { "environmentId": staging } })).await;
    assert_eq!(node_ids(&in_staging), vec![sent[5].id.to_string()]);
    assert_eq!(in_staging["edges"][0]["node"]["kind"], "upstream.error");
    let by_request = page(
        &app,
        json!({ "filter": { "requestId": sent[2].request_id } }),
    )
    .await;
    assert_eq!(node_ids(&by_request), vec![sent[2].id.to_string()]);
    let nothing = page(
        &app,
        json!({ "filter": { "tenantId": tenant, "kind": "auth.denied" } }),
    )
    .await;
    assert_eq!(nothing["edges"], json!([]));
    assert_eq!(nothing["pageInfo"]["hasNextPage"], false);

    // Bad input: a clear INVALID_INPUT naming the argument.
    for (variables, field) in [
        (json!({ "filter": { "kind": "secret_used" } }), "kind"),
        (json!({ "filter": { "tenantId": "nope" } }), "tenantId"),
        (json!({ "first": 0 }), "first"),
        (json!({ "first": 501 }), "first"),
        (json!({ "after": "not-a-cursor" }), "after"),
    ] {
        let error = app.error(EVENTS, variables.clone()).await;
        assert_eq!(error["extensions"]["code"], "INVALID_INPUT", "{variables}");
        assert_eq!(error["extensions"]["field"], field, "{variables}");
    }
    assert_eq!(
        node_ids(&page(&app, json!({ "first": 500 })).await).len(),
        sent.len()
    );
}

#[tokio::test]
async fn events_need_an_admin_token() {
    let app = TestApp::new(common::Backend::Sqlite).await;
    events::store(&app.state.db, &[event(EventKind::AuthDenied, None, None)])
        .await
        .unwrap();
    let body = json!({ "query": "{ events { edges { node { id } } } }" }).to_string();
    let response = airlock_control_plane::app(app.state.clone())
        .oneshot(
            Request::post("/graphql")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    assert!(body.get("data").is_none());
}
