//! The vault end to end: host binding against exfiltration, redaction of real httpbin echoes
//! (plain, encoded, gzip), tampered ciphertext failing closed, rotation under continuous load
//! across two data planes, and a canary scan of every place a secret could leak to.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_e2e::{body_mask, is_body_mask, Airlock, Httpbin, PostgresDb};
use anyhow::Result;
use serde_json::{json, Value};

/// A canary value with characters that change under every encoding the redactor knows.
fn canary(tag: &str) -> String {
    format!("canary-{tag}/+={}", uuid::Uuid::new_v4().simple())
}

/// Poll until `key` may call `function` on `data_url` (split mode is eventually consistent).
async fn wait_live(airlock: &Airlock, data_url: &str, function: &str, key: &str, args: Value) {
    let started = Instant::now();
    loop {
        let status = airlock
            .invoke_at(data_url, function, key, args.clone())
            .await
            .unwrap()
            .status();
        if status != 401 && status != 404 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "config not live after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// A secret only goes to the hosts it is bound to, whether a function or a client tries to
/// send it elsewhere; the upstream receives nothing and an event records the attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exfiltration_is_refused_and_recorded() -> Result<()> {
    let airlock = Airlock::dev().await?;
    let httpbin = Httpbin::start(airlock.data_dir.path()).await?;
    let env = airlock.test_env("vault").await?;
    let token = canary("exfil");
    airlock.set_secret(&env, "TOKEN", &token).await?;
    // `localhost` is the same server as 127.0.0.1, but not a host TOKEN is bound to.
    let elsewhere = httpbin.url.replace("127.0.0.1", "localhost");
    let marker = uuid::Uuid::new_v4().simple().to_string();
    airlock
        .create_function(
            &env,
            json!({"name": "leak_header", "method": "GET",
               "url": format!("{elsewhere}/anything/{marker}-header"),
               "headers": [{"name": "X-Leak", "value": "{{secrets.TOKEN}}"}]}),
        )
        .await?;
    airlock
        .create_function(
            &env,
            json!({"name": "echo_elsewhere", "method": "GET",
               "url": format!("{elsewhere}/anything/{marker}-ref?v={{{{args.v}}}}")}),
        )
        .await?;
    airlock
        .create_function(
            &env,
            json!({"name": "echo_bound", "method": "GET",
               "url": format!("{}/anything/{marker}-bound?v={{{{args.v}}}}", httpbin.url)}),
        )
        .await?;

    let resp = airlock.invoke("leak_header", &env.key, json!({})).await?;
    assert_eq!(error_code(resp).await, (403, "secret_host_denied".into()));
    let reference = json!({"v": {"$secret": "TOKEN"}});
    let resp = airlock
        .invoke("echo_elsewhere", &env.key, reference.clone())
        .await?;
    assert_eq!(error_code(resp).await, (403, "secret_host_denied".into()));

    // The same reference into a function bound to the right host works, redacted.
    let resp = airlock.invoke("echo_bound", &env.key, reference).await?;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await?;
    // A body mask as long as the value stands where it was.
    assert_eq!(body["args"]["v"], body_mask(token.len()));
    let bound = httpbin
        .request_line_containing(&format!("{marker}-bound"))
        .await?;
    assert!(!bound.contains("-header") && !bound.contains("-ref"));

    // Nothing reached httpbin for the refused calls.
    let requests = httpbin.settled_requests().await;
    assert!(
        !requests
            .iter()
            .any(|(line, _)| line.contains(&format!("{marker}-header"))
                || line.contains(&format!("{marker}-ref"))),
        "a refused request reached the upstream: {requests:?}"
    );

    // Both refusals are events naming the secret and the host, never the value.
    let events = airlock
        .graphql_ok(
            "query($e: ID!) { events(filter: {environmentId: $e, kind: \"secret.host_denied\"}) {
               nodes { kind function secrets upstreamHost status message } } }",
            json!({"e": env.env_id}),
        )
        .await?;
    let nodes = events["events"]["nodes"].as_array().unwrap();
    let functions: HashSet<&str> = nodes
        .iter()
        .filter_map(|n| n["function"].as_str())
        .collect();
    assert_eq!(
        functions,
        HashSet::from(["leak_header", "echo_elsewhere"]),
        "{events}"
    );
    for node in nodes {
        assert_eq!(node["secrets"], json!(["TOKEN"]));
        assert_eq!(node["upstreamHost"], "localhost");
        assert_eq!(node["status"], 403);
    }
    assert!(!events.to_string().contains(&token));
    assert!(!airlock.logs().contains(&token), "secret value in logs");
    Ok(())
}

/// httpbin echoes injected secrets back in bodies, headers, URLs and gzip-compressed bodies;
/// the client never sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_secrets_are_redacted() -> Result<()> {
    let airlock = Airlock::dev().await?;
    let httpbin = Httpbin::start(airlock.data_dir.path()).await?;
    let env = airlock.test_env("vault").await?;
    let token = canary("redact");
    airlock.set_secret(&env, "TOKEN", &token).await?;
    let auth = json!([{"name": "Authorization", "value": "Bearer {{secrets.TOKEN}}"}]);
    for (name, path) in [
        ("headers", "/headers"),
        ("gzip", "/gzip"),
        ("query", "/anything?token={{secrets.TOKEN}}"),
        (
            "response_header",
            "/response-headers?X-Echo={{secrets.TOKEN}}",
        ),
    ] {
        airlock
            .create_function(
                &env,
                json!({"name": name, "method": "GET", "url": format!("{}{path}", httpbin.url),
                   "headers": auth}),
            )
            .await?;
    }

    // /headers: the Authorization header comes back in the JSON body.
    let body: Value = airlock
        .invoke("headers", &env.key, json!({}))
        .await?
        .json()
        .await?;
    assert_eq!(
        body["headers"]["Authorization"],
        format!("Bearer {}", body_mask(token.len()))
    );

    // /gzip: a gzip-compressed echo, decoded and redacted by the gateway.
    let resp = airlock.invoke("gzip", &env.key, json!({})).await?;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-encoding").is_none());
    let bytes = resp.bytes().await?;
    let body: Value = serde_json::from_slice(&bytes)?;
    assert_eq!(body["gzipped"], true);
    assert_eq!(
        body["headers"]["Authorization"],
        format!("Bearer {}", body_mask(token.len()))
    );

    // /anything?token=...: echoed parsed (plain) and in the URL (percent-encoded).
    let resp = airlock.invoke("query", &env.key, json!({})).await?;
    let text = resp.text().await?;
    let body: Value = serde_json::from_str(&text)?;
    assert_eq!(body["args"]["token"], body_mask(token.len()));
    assert!(
        body["url"].as_str().unwrap().contains("[REDACTED"),
        "{text}"
    );

    // /response-headers: echoed as a response header and in the body.
    let resp = airlock
        .invoke("response_header", &env.key, json!({}))
        .await?;
    // Header values get the plain marker, bodies a mask of the value's length.
    assert_eq!(resp.headers()["x-echo"], "[REDACTED]");
    let text = resp.text().await?;
    assert!(text.contains(&body_mask(token.len())), "{text}");

    // And httpbin really received the secret each time.
    let received: Vec<_> = httpbin
        .settled_requests()
        .await
        .into_iter()
        .map(|(_, auth)| auth)
        .collect();
    assert_eq!(received.len(), 5, "{received:?}"); // the readiness probe + 4 invokes
    assert!(received[1..]
        .iter()
        .all(|a| *a == format!("Bearer {token}")));

    // Nothing the client saw, nor the logs, holds the value in any form.
    for text in [
        text.as_str(),
        &String::from_utf8_lossy(&bytes),
        &airlock.logs(),
    ] {
        assert!(!text.contains(&token));
        assert!(!text.contains(&token.replace('/', "%2F")));
    }
    Ok(())
}

/// A ciphertext copied onto another secret, or altered, does not open: the invoke fails
/// closed and the upstream receives nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_or_swapped_ciphertext_fails_closed() -> Result<()> {
    let db = PostgresDb::create()?;
    let prefix = format!("airlock-e2e-{}", uuid::Uuid::new_v4().simple());
    let airlock = Airlock::split(&db.url, &prefix).await?;
    let httpbin = Httpbin::start(airlock.data_dir.path()).await?;
    let env = airlock.test_env("vault").await?;
    airlock.set_secret(&env, "A", &canary("a")).await?;
    let b = airlock.set_secret(&env, "B", &canary("b")).await?;
    let marker = uuid::Uuid::new_v4().simple().to_string();
    airlock
        .create_function(
            &env,
            json!({"name": "uses_b", "method": "GET",
               "url": format!("{}/anything/{marker}", httpbin.url),
               "headers": [{"name": "X-B", "value": "{{secrets.B}}"}]}),
        )
        .await?;
    wait_live(&airlock, &airlock.data_url, "uses_b", &env.key, json!({})).await;
    assert_eq!(
        airlock
            .invoke("uses_b", &env.key, json!({}))
            .await?
            .status(),
        200
    );
    let before = httpbin.settled_requests().await.len();

    let republish = || async {
        // Changing B's hosts republishes the environment from the database as it now is.
        airlock
            .graphql_ok(
                "mutation($s: ID!) { setSecretHosts(input: {secretId: $s, allowedHosts: [\"127.0.0.1\"]}) { id } }",
                json!({"s": b}),
            )
            .await
    };
    let sql = |statement: &str| {
        let out = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                &db.name,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                statement,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Invokes until the data plane serves the republished state; returns how many succeeded
    // (the old state) before the first failure. Each success sent exactly one request.
    let (airlock_ref, key) = (&airlock, env.key.as_str());
    let until_status = |want: u16| async move {
        let started = Instant::now();
        let mut successes = 0;
        loop {
            let (status, code) =
                error_code(airlock_ref.invoke("uses_b", key, json!({})).await.unwrap()).await;
            if status == want {
                if want == 500 {
                    assert_eq!(code, "secret_unavailable");
                }
                return successes + usize::from(want == 200);
            }
            assert_eq!(status, if want == 500 { 200 } else { 500 });
            successes += usize::from(status == 200);
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "the change was not noticed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut successes = 0;

    // Swap: B's current version gets A's ciphertext (valid, but bound to A's identity).
    sql("CREATE TABLE b_backup AS SELECT v.id, v.sealed FROM secret_versions v JOIN secrets s ON s.id = v.secret_id WHERE s.name = 'B'");
    sql("UPDATE secret_versions SET sealed = (SELECT v.sealed FROM secret_versions v JOIN secrets s ON s.id = v.secret_id WHERE s.name = 'A') \
         WHERE secret_id = (SELECT id FROM secrets WHERE name = 'B')");
    republish().await?;
    successes += until_status(500).await;

    // Restore B's own ciphertext: it opens again.
    sql("UPDATE secret_versions SET sealed = b_backup.sealed FROM b_backup WHERE secret_versions.id = b_backup.id");
    republish().await?;
    successes += until_status(200).await;

    // Tamper: swap two characters of the ciphertext.
    sql("UPDATE secret_versions SET sealed = regexp_replace(sealed, '\"ciphertext\":\"(.)(.)', '\"ciphertext\":\"\\2\\1') \
         WHERE secret_id = (SELECT id FROM secrets WHERE name = 'B')");
    republish().await?;
    successes += until_status(500).await;
    for _ in 0..5 {
        assert_eq!(
            error_code(airlock.invoke("uses_b", &env.key, json!({})).await?)
                .await
                .0,
            500
        );
    }

    // The upstream saw exactly the requests that succeeded: none after a failure to open.
    let after: Vec<_> = httpbin
        .settled_requests()
        .await
        .into_iter()
        .skip(before)
        .collect();
    assert_eq!(after.len(), successes, "{after:?}");
    Ok(())
}

/// Rotation while invokes run continuously against two data planes: no request fails, every
/// request carries exactly one of the values that were set (never a mix, never empty), and
/// the last value is live in both data planes within a second. Then nothing anywhere (logs,
/// events, audit, GraphQL, Redis, PostgreSQL) holds a value in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_load_across_two_data_planes() -> Result<()> {
    let db = PostgresDb::create()?;
    let prefix = format!("airlock-e2e-{}", uuid::Uuid::new_v4().simple());
    let mut airlock = Airlock::split(&db.url, &prefix).await?;
    let second = airlock.add_data_plane().await?;
    let planes = [airlock.data_url.clone(), second];
    let httpbin = Httpbin::start(airlock.data_dir.path()).await?;
    let env = airlock.test_env("vault").await?;
    let mut values = vec![canary("v0")];
    airlock.set_secret(&env, "TOKEN", &values[0]).await?;
    airlock
        .create_function(
            &env,
            json!({"name": "bearer", "method": "GET", "url": format!("{}/bearer", httpbin.url),
               "headers": [{"name": "Authorization", "value": "Bearer {{secrets.TOKEN}}"}]}),
        )
        .await?;
    for plane in &planes {
        wait_live(&airlock, plane, "bearer", &env.key, json!({})).await;
    }

    let airlock = Arc::new(airlock);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (airlock, stop, key) = (airlock.clone(), stop.clone(), env.key.clone());
        let plane = planes[worker % 2].clone();
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let resp = airlock
                    .invoke_at(&plane, "bearer", &key, json!({}))
                    .await
                    .unwrap();
                statuses.push(resp.status().as_u16());
                let body: Value = resp.json().await.unwrap();
                // Whichever value was current, the whole field is its mask.
                let token = body["token"].as_str().unwrap();
                assert!(is_body_mask(token) && token.len() >= 10, "{body}");
            }
            statuses
        }));
    }
    for round in 1..=10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let value = canary(&format!("v{round}"));
        airlock.set_secret(&env, "TOKEN", &value).await?;
        values.push(value);
    }
    // The last value reaches both data planes within a second.
    let rotated = Instant::now();
    let last = format!("Bearer {}", values.last().unwrap());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let recent: Vec<_> = httpbin.requests().into_iter().rev().take(40).collect();
        if recent.iter().filter(|(_, auth)| *auth == last).count() >= 8 {
            break;
        }
        assert!(
            rotated.elapsed() < Duration::from_secs(1),
            "last rotation not live after 1 s"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for worker in workers {
        let statuses = worker.await?;
        total += statuses.len();
        assert!(
            statuses.iter().all(|s| *s == 200),
            "a request failed during rotation"
        );
    }
    assert!(total > 100, "only {total} requests ran");
    let allowed: HashSet<String> = values.iter().map(|v| format!("Bearer {v}")).collect();
    for (line, auth) in httpbin.requests() {
        if line.starts_with("GET /bearer") {
            assert!(
                allowed.contains(&auth),
                "upstream got an unexpected Authorization: {auth:?}"
            );
        }
    }

    // Canary scan.
    let mut seen = airlock.logs();
    for query in [
        "query($e: ID!) { events(filter: {environmentId: $e}, first: 500) { nodes { message secrets function } } }",
        "query($e: ID!) { auditLog(filter: {environmentId: $e}, first: 500) { entries { action detail targetName } } }",
        "query($e: ID!) { secrets(environmentId: $e) { id name version allowedHosts } }",
    ] {
        let data = airlock.graphql_ok(query, json!({"e": env.env_id})).await?;
        seen.push_str(&data.to_string());
    }
    let audit = airlock
        .graphql_ok(
            "query($e: ID!) { auditLog(filter: {environmentId: $e, action: \"secret.used\"}, first: 5) { entries { action } } }",
            json!({"e": env.env_id}),
        )
        .await?;
    assert!(
        !audit["auditLog"]["entries"].as_array().unwrap().is_empty(),
        "secret uses are audited"
    );
    let dump = std::process::Command::new("pg_dump")
        .args(["-h", "127.0.0.1", "-U", "postgres", "--data-only", &db.name])
        .output()?;
    assert!(dump.status.success());
    seen.push_str(&String::from_utf8_lossy(&dump.stdout));
    let (keys, redis_contents) = airlock_e2e::take_redis_contents(&prefix).await?;
    assert!(keys > 0);
    seen.push_str(&String::from_utf8_lossy(&redis_contents));
    for value in &values {
        assert!(!seen.contains(value.as_str()), "a secret value leaked");
        assert!(
            !seen.contains(&value.replace('/', "%2F")),
            "a secret value leaked encoded"
        );
    }
    assert!(!seen.contains(&env.key), "the API key leaked");
    Ok(())
}
