//! Events end to end through the `airlock` binary: under `airlock dev` the in-process data
//! plane's events are stored and queryable, and shutdown stores what was already sent; under
//! `airlock serve` entries a data plane adds to the Redis stream are stored and acknowledged.

mod common;

use std::process::Stdio;
use std::time::Duration;

use airlock_e2e::free_port;
use airlock_shared::events::{EventKind, GatewayEvent};
use airlock_shared::keys::{RedisNames, EVENTS_GROUP};
use airlock_shared::seal::OpeningKey;
use common::REDIS_URL;
use redis::AsyncCommands;
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use uuid::Uuid;

const BINARY: &str = env!("CARGO_BIN_EXE_airlock");

fn airlock() -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    command
}

fn spawn(command: &mut Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn wait_for_line(lines: &mut Lines<BufReader<ChildStdout>>, prefix: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no `{prefix}` line within 30 s"))
            .unwrap()
            .unwrap_or_else(|| panic!("stdout closed before a `{prefix}` line"));
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.trim().to_string();
        }
    }
}

async fn graphql(url: &str, token: &str, query: &str, variables: Value) -> Value {
    let body: Value = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body.get("errors").is_none(), "{body}");
    body["data"].clone()
}

async fn terminate(mut child: Child) {
    let pid = child.id().unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "clean shutdown exits 0, got {exit}");
}

const EVENTS: &str = r#"
query($filter: EventFilter) {
  events(filter: $filter, first: 500) { edges { node { id kind requestId function status } } }
}"#;

/// Poll the `events` query until `count` events match `filter`.
async fn wait_for_events(url: &str, token: &str, filter: Value, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let data = graphql(url, token, EVENTS, json!({ "filter": filter })).await;
        let edges = data["events"]["edges"].as_array().unwrap().clone();
        if edges.len() >= count {
            assert_eq!(edges.len(), count, "{edges:?}");
            return edges.into_iter().map(|e| e["node"].clone()).collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} events after 10 s",
            edges.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn dev_stores_the_data_plane_events_and_drains_them_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let data_addr = format!("127.0.0.1:{}", free_port());
    let (child, mut lines) = spawn(
        airlock()
            .args([
                "dev",
                "--control-addr",
                "127.0.0.1:0",
                "--data-addr",
                &data_addr,
                "--data-dir",
            ])
            .arg(dir.path()),
    );
    let url = wait_for_line(&mut lines, "control plane:").await;
    let data_plane = wait_for_line(&mut lines, "data plane:").await;
    let token = wait_for_line(&mut lines, "admin token:").await;

    let client = reqwest::Client::new();
    let invoke = format!("{data_plane}/v1/functions/anything/invoke");
    let response = client
        .post(&invoke)
        .bearer_auth("ak_unknown")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let request_id = response.headers()["x-airlock-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let stored = wait_for_events(
        &url,
        &token,
        json!({ "requestId": request_id, "kind": "auth.denied" }),
        1,
    )
    .await;
    assert_eq!(stored[0]["status"], 401);

    // Sent just before shutdown: stored by the time the process exits.
    for _ in 0..20 {
        let response = client
            .post(&invoke)
            .bearer_auth("ak_unknown")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    terminate(child).await;

    let db = Database::connect(airlock_control_plane::db::sqlite_url(dir.path()))
        .await
        .unwrap();
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM events WHERE kind = 'auth.denied'",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<i64>("", "n").unwrap(), 21);
    db.close().await.unwrap();
}

#[tokio::test]
async fn serve_stores_events_from_the_redis_stream() {
    let dir = tempfile::tempdir().unwrap();
    let names = RedisNames::new(format!("airlock_flow_{}", Uuid::new_v4().simple()));
    let (child, mut lines) = spawn(
        airlock()
            .args(["serve", "--control-addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("REDIS_URL", REDIS_URL)
            .env("AIRLOCK_REDIS_PREFIX", names.prefix())
            .env(
                "AIRLOCK_SEAL_PUBLIC_KEY",
                OpeningKey::generate().sealing_key().to_base64(),
            ),
    );
    let url = wait_for_line(&mut lines, "control plane:").await;
    let token = wait_for_line(&mut lines, "admin token:").await;

    let event = GatewayEvent {
        id: Uuid::now_v7(),
        at: chrono::Utc::now(),
        kind: EventKind::UpstreamTimeout,
        tenant_id: Some(Uuid::new_v4()),
        environment_id: Some(Uuid::new_v4()),
        request_id: format!("req-{}", Uuid::new_v4().simple()),
        function: Some("slow_report".into()),
        api_key_id: Some(Uuid::new_v4()),
        secrets: vec![],
        upstream_host: Some("reports.example.com".into()),
        status: 504,
        message: "the upstream did not answer within 30000 ms".into(),
        oauth_connection: None,
    };
    let mut redis = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(names.events_stream())
        .arg("MAXLEN")
        .arg("~")
        .arg(airlock_data_plane::STREAM_MAX_LEN)
        .arg("*")
        .arg(airlock_shared::events::EVENTS_FIELD)
        .arg(serde_json::to_string(&[&event]).unwrap())
        .query_async(&mut redis)
        .await
        .unwrap();

    let stored = wait_for_events(&url, &token, json!({ "requestId": event.request_id }), 1).await;
    assert_eq!(stored[0]["id"], event.id.to_string());
    assert_eq!(stored[0]["kind"], "upstream.timeout");
    assert_eq!(stored[0]["function"], "slow_report");
    // Acknowledged right after it is stored.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let pending: redis::streams::StreamPendingReply = redis
            .xpending(names.events_stream(), EVENTS_GROUP)
            .await
            .unwrap();
        if pending.count() == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still pending after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    terminate(child).await;

    let keys: Vec<String> = redis.keys(format!("{}:*", names.prefix())).await.unwrap();
    let _: () = redis.del(keys).await.unwrap();
}
