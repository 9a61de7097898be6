//! Publishing: the Redis transport against a real Redis (unique key prefix per test), the
//! publisher end to end over Redis, and background retries when a publish fails.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use airlock_control_plane::authz::Authz;
use airlock_control_plane::graphql::build_schema;
use airlock_control_plane::publish::{
    ConfigPublisher, PublishError, RedisTransport, SnapshotTransport,
};
use airlock_control_plane::state::AppState;
use airlock_shared::keys::RedisNames;
use airlock_shared::seal::OpeningKey;
use airlock_shared::wire::{decode_snapshot, EnvironmentSnapshot, SnapshotEncoding};
use async_trait::async_trait;
use common::{bootstrap_superadmin, Backend, TestDb, REDIS_URL};
use futures::StreamExt;
use redis::AsyncCommands;
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

fn unique_names() -> RedisNames {
    RedisNames::new(format!("airlock_test_{}", Uuid::new_v4().simple()))
}

async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Remove every key under the test's prefix.
async fn cleanup(names: &RedisNames) {
    let mut connection = redis_connection().await;
    let keys: Vec<String> = connection
        .keys(format!("{}:*", names.prefix()))
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = connection.del(keys).await.unwrap();
    }
}

fn sample_snapshot(revision: i64) -> EnvironmentSnapshot {
    EnvironmentSnapshot {
        tenant_id: Uuid::new_v4(),
        environment_id: Uuid::new_v4(),
        revision,
        functions: Default::default(),
        secrets: Default::default(),
        api_keys: Vec::new(),
        oauth_clients: Default::default(),
        oauth_connections: Default::default(),
        oauth_authorizations: Default::default(),
    }
}

#[tokio::test]
async fn redis_transport_sets_the_key_the_index_and_notifies() {
    let names = unique_names();
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(names.config_channel()).await.unwrap();

    let transport = RedisTransport::connect(REDIS_URL, names.clone())
        .await
        .unwrap();
    let snapshot = sample_snapshot(1_700_000_000_000_000);
    transport.send(&snapshot).await.unwrap();

    let message = tokio::time::timeout(Duration::from_secs(5), pubsub.on_message().next())
        .await
        .expect("notification within 5 s")
        .unwrap();
    assert_eq!(message.get_channel_name(), names.config_channel());
    assert_eq!(
        message.get_payload::<String>().unwrap(),
        snapshot.environment_id.to_string()
    );

    let mut connection = redis_connection().await;
    let stored: Vec<u8> = connection
        .get(names.environment_snapshot(&snapshot.environment_id))
        .await
        .unwrap();
    // Binary unless configured otherwise.
    assert_eq!(SnapshotEncoding::of(&stored), SnapshotEncoding::Binary);
    assert_eq!(decode_snapshot(&stored).unwrap(), snapshot);
    let revision: i64 = connection
        .hget(names.snapshot_index(), snapshot.environment_id.to_string())
        .await
        .unwrap();
    assert_eq!(revision, snapshot.revision);
    cleanup(&names).await;
}

/// `--snapshot-encoding json`: what data planes that predate the binary encoding read.
#[tokio::test]
async fn redis_transport_publishes_json_when_asked() {
    let names = unique_names();
    let transport = RedisTransport::connect(REDIS_URL, names.clone())
        .await
        .unwrap()
        .with_encoding(SnapshotEncoding::Json);
    assert_eq!(transport.encoding(), SnapshotEncoding::Json);
    let snapshot = sample_snapshot(1_700_000_000_000_001);
    transport.send(&snapshot).await.unwrap();
    let mut connection = redis_connection().await;
    let stored: String = connection
        .get(names.environment_snapshot(&snapshot.environment_id))
        .await
        .unwrap();
    // Exactly what an older data plane parses: serde_json of the wire type.
    assert_eq!(
        serde_json::from_str::<EnvironmentSnapshot>(&stored).unwrap(),
        snapshot
    );
    assert_eq!(stored, serde_json::to_string(&snapshot).unwrap());
    cleanup(&names).await;
}

#[tokio::test]
async fn mutations_are_published_through_redis() {
    const CANARY: &str = "canary-redis-4b1d";
    let names = unique_names();
    let db = TestDb::new(Backend::Sqlite).await;
    let opening_key = OpeningKey::generate();
    let transport = RedisTransport::connect(REDIS_URL, names.clone())
        .await
        .unwrap();
    let caller = bootstrap_superadmin(&db).await;
    let state = AppState {
        db: db.db.clone(),
        sealing_key: opening_key.sealing_key().clone(),
        publisher: ConfigPublisher::new(db.db.clone(), transport),
        public_url: None,
        data_plane_url: None,
        authz: Authz::load(db.db.clone()).await.unwrap(),
        oidc: None,
    };
    let schema = build_schema(state);
    let run = |query: &'static str, variables: serde_json::Value| {
        let schema = schema.clone();
        let caller = caller.clone();
        async move {
            let response = schema
                .execute(
                    async_graphql::Request::new(query)
                        .variables(async_graphql::Variables::from_json(variables))
                        .data(caller.clone()),
                )
                .await;
            assert!(response.errors.is_empty(), "{:?}", response.errors);
            response.data.into_json().unwrap()
        }
    };

    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(names.config_channel()).await.unwrap();
    let mut messages = pubsub.into_on_message();

    let tenant = run(
        "mutation { createTenant(input: {name: \"acme\"}) { id } }",
        json!({}),
    )
    .await;
    let tenant = tenant["createTenant"]["id"].as_str().unwrap().to_string();
    let environment = run(
        "mutation($t: ID!) { createEnvironment(input: {tenantId: $t, name: \"prod\"}) { id } }",
        json!({ "t": tenant }),
    )
    .await;
    let environment = environment["createEnvironment"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let environment_id: Uuid = environment.parse().unwrap();
    run(
        "mutation($t: ID!) { createFunction(input: {tenantId: $t, name: \"get_user\", method: \"GET\", url: \"https://api.example.com/u/{{args.id}}\"}) { id } }",
        json!({ "t": tenant }),
    )
    .await;
    run(
        "mutation($e: ID!, $v: String!) { setSecret(input: {environmentId: $e, name: \"TOKEN\", value: $v, allowedHosts: [\"api.example.com\"]}) { version } }",
        json!({ "e": environment, "v": CANARY }),
    )
    .await;

    // One notification per publish, each naming the environment.
    for _ in 0..3 {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("notification within 5 s")
            .unwrap();
        assert_eq!(message.get_payload::<String>().unwrap(), environment);
    }

    let mut connection = redis_connection().await;
    let stored: Vec<u8> = connection
        .get(names.environment_snapshot(&environment_id))
        .await
        .unwrap();
    assert!(
        !stored.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
        "Redis holds secrets sealed only"
    );
    let snapshot = decode_snapshot(&stored).unwrap();
    assert!(snapshot.functions.contains_key("get_user"));
    assert_eq!(snapshot.secrets["TOKEN"].sealed.version, 1);
    let revision: i64 = connection
        .hget(names.snapshot_index(), &environment)
        .await
        .unwrap();
    assert_eq!(revision, snapshot.revision);
    cleanup(&names).await;
}

/// Fails the first `failures` sends, then forwards to a channel.
struct FlakyTransport {
    failures: usize,
    attempts: Arc<AtomicUsize>,
    delivered: mpsc::UnboundedSender<EnvironmentSnapshot>,
}

#[async_trait]
impl SnapshotTransport for FlakyTransport {
    async fn send(&self, snapshot: &EnvironmentSnapshot) -> Result<(), PublishError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
        if attempt < self.failures {
            return Err(PublishError::Redis(redis::RedisError::from(
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "redis is down"),
            )));
        }
        let _ = self.delivered.send(snapshot.clone());
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_publish_does_not_fail_the_mutation_and_is_retried() {
    let db = TestDb::new(Backend::Sqlite).await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let (delivered, mut received) = mpsc::unbounded_channel();
    let transport = FlakyTransport {
        failures: 2,
        attempts: attempts.clone(),
        delivered,
    };
    let actor = bootstrap_superadmin(&db).await;
    let state = AppState {
        db: db.db.clone(),
        sealing_key: OpeningKey::generate().sealing_key().clone(),
        publisher: ConfigPublisher::new(db.db.clone(), transport),
        public_url: None,
        data_plane_url: None,
        authz: Authz::load(db.db.clone()).await.unwrap(),
        oidc: None,
    };
    let schema = build_schema(state);
    let tenant = schema
        .execute(
            async_graphql::Request::new(
                "mutation { createTenant(input: {name: \"acme\"}) { id } }",
            )
            .data(actor.clone()),
        )
        .await;
    let tenant = tenant.data.into_json().unwrap()["createTenant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let response = schema
        .execute(
            async_graphql::Request::new(format!(
                "mutation {{ createEnvironment(input: {{tenantId: \"{tenant}\", name: \"prod\"}}) {{ id }} }}"
            ))
            .data(actor.clone()),
        )
        .await;
    assert!(
        response.errors.is_empty(),
        "the change is committed: {:?}",
        response.errors
    );
    let environment = response.data.into_json().unwrap()["createEnvironment"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(attempts.load(Ordering::SeqCst), 1);

    let snapshot = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("retried within 10 s")
        .unwrap();
    assert_eq!(snapshot.environment_id.to_string(), environment);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_stopped_in_process_data_plane_does_not_fail_mutations() {
    let mut app = common::TestApp::new(Backend::Sqlite).await;
    let tenant = app.create_tenant("acme").await;
    app.snapshots.close();
    let environment = app.create_environment(&tenant, "prod").await;
    assert!(!environment.is_empty());
}
