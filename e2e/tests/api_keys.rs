//! API key lifecycle against the running data planes: a rotated key keeps working for its
//! grace period and stops within a second after it; a revoked key is refused by every data
//! plane within a second; `lastUsedAt` is set after an invoke. In `airlock dev` and in split
//! mode with two data planes over Redis (PostgreSQL). The measured times are printed.

use std::time::{Duration, Instant};

use airlock_e2e::{Airlock, Httpbin, PostgresDb};
use anyhow::{bail, Result};
use serde_json::{json, Value};

/// Grace period given to the old key.
const GRACE: Duration = Duration::from_secs(3);
/// How late after its deadline a key may still be accepted.
const VISIBILITY_BOUND: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(10);

struct Fixture {
    env_id: String,
    key_id: String,
    key: String,
}

async fn setup(airlock: &Airlock, httpbin: &Httpbin) -> Result<Fixture> {
    let tenant = airlock
        .graphql_ok(
            "mutation { createTenant(input: {name: \"acme\"}) { id } }",
            json!({}),
        )
        .await?["createTenant"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let env_id = airlock
        .graphql_ok(
            "mutation($t: ID!) { createEnvironment(input: {tenantId: $t, name: \"prod\"}) { id } }",
            json!({ "t": tenant }),
        )
        .await?["createEnvironment"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    airlock
        .graphql_ok(
            "mutation($input: CreateFunctionInput!) { createFunction(input: $input) { id } }",
            json!({ "input": { "tenantId": tenant, "name": "echo_get", "method": "GET",
                               "url": format!("{}/get", httpbin.url) } }),
        )
        .await?;
    let created = airlock
        .graphql_ok(
            "mutation($e: ID!) { createApiKey(input: {environmentId: $e, name: \"app\", functions: [\"echo_*\"]}) { apiKey { id } key } }",
            json!({ "e": env_id }),
        )
        .await?;
    Ok(Fixture {
        env_id,
        key_id: created["createApiKey"]["apiKey"]["id"]
            .as_str()
            .unwrap()
            .to_string(),
        key: created["createApiKey"]["key"].as_str().unwrap().to_string(),
    })
}

/// Status of one invoke of `echo_get` with `key` at `data_url`.
async fn status(airlock: &Airlock, data_url: &str, key: &str) -> Result<u16> {
    Ok(airlock
        .invoke_at(data_url, "echo_get", key, json!({}))
        .await?
        .status()
        .as_u16())
}

/// Wait until `key` is refused (401) at `data_url`; the time since `since`. Until then every
/// answer must be 200.
async fn refused_after(
    airlock: &Airlock,
    data_url: &str,
    key: &str,
    since: Instant,
    give_up: Duration,
) -> Result<Duration> {
    loop {
        match status(airlock, data_url, key).await? {
            401 => return Ok(since.elapsed()),
            200 => {}
            other => bail!("unexpected status {other} at {data_url}"),
        }
        if since.elapsed() > give_up {
            bail!("the key still works at {data_url} after {give_up:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn lifecycle(airlock: &Airlock, httpbin: &Httpbin, data_urls: &[String]) -> Result<()> {
    let f = setup(airlock, httpbin).await?;
    for url in data_urls {
        // Split mode: the new key reaches each data plane through Redis.
        let deadline = Instant::now() + Duration::from_secs(5);
        while status(airlock, url, &f.key).await? != 200 {
            if Instant::now() > deadline {
                bail!("the new key never worked at {url}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    // lastUsedAt: set within a few seconds of a use (reports every second).
    let started = Instant::now();
    loop {
        let keys = airlock
            .graphql_ok(
                "query($e: ID!) { apiKeys(environmentId: $e) { id lastUsedAt status } }",
                json!({ "e": f.env_id }),
            )
            .await?;
        let key = &keys["apiKeys"][0];
        assert_eq!(key["id"], f.key_id.as_str());
        if key["lastUsedAt"].is_string() {
            println!(
                "lastUsedAt visible {} ms after the first use",
                started.elapsed().as_millis()
            );
            break;
        }
        if started.elapsed() > Duration::from_secs(5) {
            bail!("lastUsedAt not set 5 s after an invoke: {key}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Rotation with a grace period: both keys work, then only the new one.
    let rotated = airlock
        .graphql_ok(
            "mutation($id: ID!, $g: Int!) { rotateApiKey(input: {id: $id, gracePeriodSeconds: $g}) { apiKey { id rotatedFromId } key previousKeyExpiresAt } }",
            json!({ "id": f.key_id, "g": GRACE.as_secs() }),
        )
        .await?;
    let rotated_at = Instant::now();
    let rotated = &rotated["rotateApiKey"];
    assert_eq!(rotated["apiKey"]["rotatedFromId"], f.key_id.as_str());
    let new_key = rotated["key"].as_str().unwrap().to_string();
    let new_id = rotated["apiKey"]["id"].as_str().unwrap().to_string();
    for url in data_urls {
        let deadline = Instant::now() + VISIBILITY_BOUND;
        while status(airlock, url, &new_key).await? != 200 {
            if Instant::now() > deadline {
                bail!("the rotated key does not work at {url} within {VISIBILITY_BOUND:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(
            status(airlock, url, &f.key).await?,
            200,
            "old key during grace at {url}"
        );
    }
    for url in data_urls {
        let stopped = refused_after(
            airlock,
            url,
            &f.key,
            rotated_at,
            GRACE + Duration::from_secs(5),
        )
        .await?;
        println!(
            "old key refused {} ms after rotateApiKey (grace {} ms) at {url}",
            stopped.as_millis(),
            GRACE.as_millis()
        );
        assert!(
            stopped >= GRACE - Duration::from_millis(200),
            "the old key stopped before its grace period ended: {stopped:?}"
        );
        assert!(
            stopped <= GRACE + VISIBILITY_BOUND,
            "old key stopped late: {stopped:?}"
        );
        assert_eq!(status(airlock, url, &new_key).await?, 200);
    }

    // Revocation: refused by every data plane within a second.
    let revoke_started = Instant::now();
    let revoked = airlock
        .graphql_ok(
            "mutation($id: ID!) { revokeApiKey(id: $id) { id status revokedAt } }",
            json!({ "id": new_id }),
        )
        .await?;
    assert_eq!(revoked["revokeApiKey"]["status"], "REVOKED");
    let answered = revoke_started.elapsed();
    for url in data_urls {
        let visible = refused_after(
            airlock,
            url,
            &new_key,
            revoke_started,
            Duration::from_secs(5),
        )
        .await?;
        println!(
            "revocation visible after {} ms at {url} (revokeApiKey answered after {} ms)",
            visible.as_millis(),
            answered.as_millis()
        );
        assert!(
            visible <= VISIBILITY_BOUND,
            "revocation took {visible:?} at {url}"
        );
    }
    let keys: Value = airlock
        .graphql_ok(
            "query($e: ID!) { apiKeys(environmentId: $e) { id status } }",
            json!({ "e": f.env_id }),
        )
        .await?;
    let statuses: Vec<&str> = keys["apiKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["REVOKED", "EXPIRED"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_rotation_and_revocation_timing() -> Result<()> {
    let mut airlock = Airlock::dev().await?;
    let httpbin = Httpbin::start(airlock.data_dir.path()).await?;
    let data_urls = vec![airlock.data_url.clone()];
    let result = lifecycle(&airlock, &httpbin, &data_urls).await;
    if result.is_err() {
        eprintln!("--- airlock output ---\n{}", airlock.logs());
    }
    airlock.check_running()?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_mode_two_data_planes_rotation_and_revocation_timing() -> Result<()> {
    let db = PostgresDb::create()?;
    let prefix = format!("airlock-e2e-{}", uuid::Uuid::new_v4().simple());
    let mut airlock = Airlock::split(&db.url, &prefix).await?;
    let second = airlock.add_data_plane().await?;
    let httpbin = Httpbin::start(airlock.data_dir.path()).await?;
    let data_urls = vec![airlock.data_url.clone(), second];
    let result = lifecycle(&airlock, &httpbin, &data_urls).await;
    if result.is_err() {
        eprintln!("--- airlock output ---\n{}", airlock.logs());
    }
    airlock.check_running()?;
    result
}
