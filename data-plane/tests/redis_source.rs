//! The Redis config source against the real Redis at 127.0.0.1:6379, one key prefix per test.

mod common;

use std::time::Duration;

use airlock_data_plane::{ConfigSource, EventSink};
use airlock_shared::keys::RedisNames;
use airlock_shared::seal::OpeningKey;
use airlock_shared::wire::EnvironmentSnapshot;
use common::*;
use uuid::Uuid;

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const API_KEY: &str = "ak_redis_test_key";

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis at 127.0.0.1:6379")
}

/// Publish exactly as the control plane does: one MULTI with SET, HSET and PUBLISH.
async fn publish(
    con: &mut redis::aio::MultiplexedConnection,
    names: &RedisNames,
    s: &EnvironmentSnapshot,
) {
    redis::pipe()
        .atomic()
        .set(
            names.environment_snapshot(&s.environment_id),
            serde_json::to_string(s).unwrap(),
        )
        .hset(
            names.snapshot_index(),
            s.environment_id.to_string(),
            s.revision,
        )
        .publish(names.config_channel(), s.environment_id.to_string())
        .query_async::<()>(con)
        .await
        .unwrap();
}

/// Store a snapshot without notifying (a lost pub/sub message).
async fn store_silently(
    con: &mut redis::aio::MultiplexedConnection,
    names: &RedisNames,
    s: &EnvironmentSnapshot,
) {
    redis::pipe()
        .atomic()
        .set(
            names.environment_snapshot(&s.environment_id),
            serde_json::to_string(s).unwrap(),
        )
        .hset(
            names.snapshot_index(),
            s.environment_id.to_string(),
            s.revision,
        )
        .query_async::<()>(con)
        .await
        .unwrap();
}

async fn cleanup(con: &mut redis::aio::MultiplexedConnection, names: &RedisNames, envs: &[Uuid]) {
    let mut keys = vec![names.snapshot_index()];
    keys.extend(envs.iter().map(|e| names.environment_snapshot(e)));
    redis::cmd("DEL")
        .arg(keys)
        .query_async::<()>(con)
        .await
        .unwrap();
}

fn snapshot(upstream: &Upstream, env: Uuid, revision: i64, path: &str) -> EnvironmentSnapshot {
    SnapshotBuilder::new(env, revision)
        .function("call", "GET", &upstream.url(path), &[], None, 2_000)
        .key(API_KEY, &["call"])
        .build()
}

async fn start(key: &OpeningKey, names: &RedisNames) -> TestPlane {
    let handle = start_plane(
        key.clone(),
        ConfigSource::Redis {
            url: REDIS_URL.into(),
            names: names.clone(),
        },
        None,
        EventSink::Disabled,
    )
    .await;
    let (sender, _) = tokio::sync::mpsc::unbounded_channel();
    let plane = TestPlane {
        base: format!("http://{}", handle.listen_addr()),
        handle: Some(handle),
        sender,
        client: reqwest::Client::new(),
    };
    plane.wait_ready().await;
    plane
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_published_in_redis_are_served_and_changes_are_live_within_a_second() {
    let names = RedisNames::new(format!("test-{}", Uuid::new_v4()));
    let key = OpeningKey::generate();
    let upstream = Upstream::start().await;
    let env = Uuid::new_v4();
    let mut con = redis().await;
    publish(&mut con, &names, &snapshot(&upstream, env, 1, "/v1")).await;

    let plane = start(&key, &names).await;
    assert_eq!(plane.invoke("call", Some(API_KEY), "").await.status(), 200);
    assert_eq!(upstream.last().target, "/v1");

    publish(&mut con, &names, &snapshot(&upstream, env, 2, "/v2")).await;
    eventually(Duration::from_secs(1), || async {
        plane.invoke("call", Some(API_KEY), "").await.status() == 200
            && upstream.last().target == "/v2"
    })
    .await;

    // A late, older revision is ignored.
    publish(&mut con, &names, &snapshot(&upstream, env, 1, "/old")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(plane.invoke("call", Some(API_KEY), "").await.status(), 200);
    assert_eq!(upstream.last().target, "/v2");

    // A second environment appears while running.
    let env2 = Uuid::new_v4();
    let other = SnapshotBuilder::new(env2, 1)
        .function("call", "GET", &upstream.url("/env2"), &[], None, 2_000)
        .key("ak_redis_second_env", &["*"])
        .build();
    publish(&mut con, &names, &other).await;
    eventually(Duration::from_secs(1), || async {
        plane
            .invoke("call", Some("ak_redis_second_env"), "")
            .await
            .status()
            == 200
    })
    .await;
    assert_eq!(upstream.last().target, "/env2");

    plane.shutdown().await;
    cleanup(&mut con, &names, &[env, env2]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missed_notification_is_caught_by_the_periodic_resync() {
    let names = RedisNames::new(format!("test-{}", Uuid::new_v4()));
    let key = OpeningKey::generate();
    let upstream = Upstream::start().await;
    let env = Uuid::new_v4();
    let mut con = redis().await;
    publish(&mut con, &names, &snapshot(&upstream, env, 1, "/v1")).await;
    let plane = start(&key, &names).await;

    store_silently(&mut con, &names, &snapshot(&upstream, env, 2, "/v2")).await;
    eventually(Duration::from_secs(7), || async {
        plane.invoke("call", Some(API_KEY), "").await.status() == 200
            && upstream.last().target == "/v2"
    })
    .await;

    plane.shutdown().await;
    cleanup(&mut con, &names, &[env]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_redis_the_plane_is_alive_but_not_ready() {
    let key = OpeningKey::generate();
    let handle = start_plane(
        key.clone(),
        ConfigSource::Redis {
            url: format!("redis://127.0.0.1:{}", free_port()),
            names: RedisNames::new("unreachable"),
        },
        None,
        EventSink::Disabled,
    )
    .await;
    let base = format!("http://{}", handle.listen_addr());
    let client = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, code, _) =
        gateway_error(client.get(format!("{base}/readyz")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (503, "not_ready"));
    assert!(!handle.is_ready());
    let invoke = client
        .post(format!("{base}/v1/functions/call/invoke"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(invoke.status(), 401);
    tokio::task::spawn_blocking(move || handle.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_keeps_the_last_snapshot_and_resyncs_on_reconnect() {
    let names = RedisNames::new(format!("test-{}", Uuid::new_v4()));
    let key = OpeningKey::generate();
    let upstream = Upstream::start().await;
    let env = Uuid::new_v4();
    let mut con = redis().await;
    publish(&mut con, &names, &snapshot(&upstream, env, 1, "/v1")).await;

    let flaky = FlakyRedis::start().await;
    let handle = start_plane(
        key.clone(),
        ConfigSource::Redis {
            url: flaky.url(),
            names: names.clone(),
        },
        None,
        EventSink::Disabled,
    )
    .await;
    let (sender, _) = tokio::sync::mpsc::unbounded_channel();
    let plane = TestPlane {
        base: format!("http://{}", handle.listen_addr()),
        handle: Some(handle),
        sender,
        client: reqwest::Client::new(),
    };
    plane.wait_ready().await;
    assert_eq!(plane.invoke("call", Some(API_KEY), "").await.status(), 200);

    // Outage: the subscription is cut and reconnects fail. The last snapshot keeps serving.
    flaky.set_up(false);
    publish(&mut con, &names, &snapshot(&upstream, env, 2, "/v2")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(plane.invoke("call", Some(API_KEY), "").await.status(), 200);
    assert_eq!(upstream.last().target, "/v1");

    // Back: the reconnect re-reads the index and picks up what was missed (backoff < 2 s).
    flaky.set_up(true);
    eventually(Duration::from_secs(4), || async {
        plane.invoke("call", Some(API_KEY), "").await.status() == 200
            && upstream.last().target == "/v2"
    })
    .await;

    plane.shutdown().await;
    cleanup(&mut con, &names, &[env]).await;
}
