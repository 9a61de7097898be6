//! The Redis config source against the real Redis at 127.0.0.1:6379, one key prefix per test.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use airlock_data_plane::{ConfigSource, EventSink};
use airlock_shared::keys::RedisNames;
use airlock_shared::seal::OpeningKey;
use airlock_shared::wire::encoding::{BINARY_MARKER, BINARY_VERSION};
use airlock_shared::wire::{EnvironmentSnapshot, SnapshotEncoding};
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

/// Publish exactly as the control plane does: one MULTI with SET, HSET and PUBLISH, in the
/// encoding control planes publish by default.
async fn publish(
    con: &mut redis::aio::MultiplexedConnection,
    names: &RedisNames,
    s: &EnvironmentSnapshot,
) {
    publish_encoded(con, names, s, SnapshotEncoding::default()).await;
}

async fn publish_encoded(
    con: &mut redis::aio::MultiplexedConnection,
    names: &RedisNames,
    s: &EnvironmentSnapshot,
    encoding: SnapshotEncoding,
) {
    let bytes = encoding.encode(s).unwrap();
    publish_bytes(con, names, s.environment_id, s.revision, bytes).await;
}

/// Publish `bytes` as the snapshot of `env` at `revision`, whatever they are.
async fn publish_bytes(
    con: &mut redis::aio::MultiplexedConnection,
    names: &RedisNames,
    env: Uuid,
    revision: i64,
    bytes: Vec<u8>,
) {
    redis::pipe()
        .atomic()
        .set(names.environment_snapshot(&env), bytes)
        .hset(names.snapshot_index(), env.to_string(), revision)
        .publish(names.config_channel(), env.to_string())
        .query_async::<()>(con)
        .await
        .unwrap();
}

/// Everything the data planes of this test binary log at `warn` and above, and the sync's
/// debug lines (one global subscriber: each test looks for its own environment id).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("warn,airlock_data_plane::sync=debug")
            .with_ansi(false)
            .with_writer(move || LogSink(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        logs
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured log lines that mention `env`.
fn log_lines_of(logs: &Mutex<Vec<u8>>, env: Uuid) -> Vec<String> {
    let env = env.to_string();
    String::from_utf8_lossy(&logs.lock().unwrap())
        .lines()
        .filter(|line| line.contains(&env))
        .map(str::to_string)
        .collect()
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
            SnapshotEncoding::default().encode(s).unwrap(),
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

#[tokio::test(flavor = "multi_thread")]
async fn json_and_binary_snapshots_are_both_served() {
    // A rolling upgrade: this data plane is new, the control planes publish JSON until they
    // are upgraded too, then binary; one rolled back publishes JSON again.
    let names = RedisNames::new(format!("test-{}", Uuid::new_v4()));
    let key = OpeningKey::generate();
    let upstream = Upstream::start().await;
    let env = Uuid::new_v4();
    let mut con = redis().await;
    let logs = captured_logs();
    let first = snapshot(&upstream, env, 1, "/json");
    publish_encoded(&mut con, &names, &first, SnapshotEncoding::Json).await;

    let plane = start(&key, &names).await;
    assert_eq!(plane.invoke("call", Some(API_KEY), "").await.status(), 200);
    assert_eq!(upstream.last().target, "/json");

    for (revision, encoding, path) in [
        (2, SnapshotEncoding::Binary, "/binary"),
        (3, SnapshotEncoding::Json, "/json-again"),
        (4, SnapshotEncoding::Binary, "/binary-again"),
    ] {
        let next = snapshot(&upstream, env, revision, path);
        publish_encoded(&mut con, &names, &next, encoding).await;
        eventually(Duration::from_secs(2), || async {
            plane.invoke("call", Some(API_KEY), "").await.status() == 200
                && upstream.last().target == path
        })
        .await;
    }
    // The sync says which encoding it read.
    let reads: Vec<String> = log_lines_of(&logs, env)
        .into_iter()
        .filter(|line| line.contains("snapshot read from Redis"))
        .collect();
    assert!(
        reads.iter().any(|l| l.contains("encoding=json")),
        "{reads:#?}"
    );
    assert!(
        reads.iter().any(|l| l.contains("encoding=binary")),
        "{reads:#?}"
    );
    assert!(reads.iter().all(|l| l.contains("decode_us=")), "{reads:#?}");

    plane.shutdown().await;
    cleanup(&mut con, &names, &[env]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_garbled_snapshot_is_refused_with_a_clear_log_and_nothing_applied() {
    let names = RedisNames::new(format!("test-{}", Uuid::new_v4()));
    let key = OpeningKey::generate();
    let upstream = Upstream::start().await;
    let env = Uuid::new_v4();
    let mut con = redis().await;
    let logs = captured_logs();
    publish(&mut con, &names, &snapshot(&upstream, env, 1, "/good")).await;
    let plane = start(&key, &names).await;
    assert_eq!(plane.invoke("call", Some(API_KEY), "").await.status(), 200);

    // Each would route `call` to /bad and let a new key in, had it been applied.
    let bad = |revision: i64| {
        SnapshotBuilder::new(env, revision)
            .function("call", "GET", &upstream.url("/bad"), &[], None, 2_000)
            .key(API_KEY, &["call"])
            .key("ak_redis_from_a_bad_snapshot", &["*"])
            .build()
    };
    let binary = |revision| SnapshotEncoding::Binary.encode(&bad(revision)).unwrap();
    let truncated = {
        let mut bytes = binary(2);
        bytes.truncate(bytes.len() - 20);
        bytes
    };
    let newer_layout = {
        let mut bytes = binary(3);
        bytes[BINARY_MARKER.len()] = BINARY_VERSION + 1;
        bytes
    };
    let extended = {
        let mut bytes = binary(4);
        bytes.extend_from_slice(b"junk");
        bytes
    };
    let mut bad_json = SnapshotEncoding::Json.encode(&bad(5)).unwrap();
    bad_json.truncate(bad_json.len() / 2);
    let cases: [(i64, Vec<u8>, &str); 6] = [
        (2, truncated, "invalid binary snapshot (layout version 1)"),
        (3, newer_layout, "published by a newer control plane"),
        (4, extended, "4 bytes after its end"),
        (5, bad_json, "invalid JSON snapshot"),
        (
            6,
            b"\0not the marker".to_vec(),
            "neither JSON nor a binary snapshot",
        ),
        (7, Vec::new(), "invalid JSON snapshot"),
    ];
    for (revision, bytes, says) in cases {
        publish_bytes(&mut con, &names, env, revision, bytes).await;
        eventually(Duration::from_secs(2), || async {
            log_lines_of(&logs, env).iter().any(|line| {
                line.contains("ERROR")
                    && line.contains("ignoring the snapshot stored in Redis")
                    && line.contains(says)
            })
        })
        .await;
        // Nothing of it is live: the last good snapshot still serves.
        assert_eq!(plane.invoke("call", Some(API_KEY), "").await.status(), 200);
        assert_eq!(upstream.last().target, "/good", "revision {revision}");
        let refused = plane
            .invoke("call", Some("ak_redis_from_a_bad_snapshot"), "")
            .await;
        assert_eq!(refused.status(), 401, "revision {revision}");
    }
    // A good snapshot after them goes live.
    publish(&mut con, &names, &snapshot(&upstream, env, 8, "/fixed")).await;
    eventually(Duration::from_secs(2), || async {
        plane.invoke("call", Some(API_KEY), "").await.status() == 200
            && upstream.last().target == "/fixed"
    })
    .await;

    plane.shutdown().await;
    cleanup(&mut con, &names, &[env]).await;
}
