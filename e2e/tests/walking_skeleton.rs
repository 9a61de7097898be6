//! The walking skeleton end to end: real `airlock` binaries, real httpbin, real Redis and
//! PostgreSQL. Each scenario runs in both deployment modes:
//! - `airlock dev` (one process, SQLite, in-process config);
//! - `airlock serve` + `airlock-data-plane` as separate processes over Redis, on PostgreSQL.

use std::time::{Duration, Instant};

use airlock_e2e::{body_mask, free_port, Airlock, Httpbin, PostgresDb};
use anyhow::Result;
use serde_json::{json, Value};

const CREATE_TENANT: &str =
    "mutation($name: String!) { createTenant(input: {name: $name}) { id name } }";
const CREATE_ENV: &str = "mutation($t: ID!, $name: String!) {
    createEnvironment(input: {tenantId: $t, name: $name}) { id name } }";
const CREATE_FUNCTION: &str = "mutation($input: CreateFunctionInput!) {
    createFunction(input: $input) { id name } }";
const SET_SECRET: &str = "mutation($e: ID!, $name: String!, $value: String!, $hosts: [String!]) {
    setSecret(input: {environmentId: $e, name: $name, value: $value, allowedHosts: $hosts}) {
      id name version allowedHosts } }";
const CREATE_KEY: &str = "mutation($e: ID!, $name: String!, $functions: [String!]!) {
    createApiKey(input: {environmentId: $e, name: $name, functions: $functions}) {
      apiKey { id name prefix } key } }";

/// A tenant with one environment, functions against httpbin, a secret and two keys.
struct Fixture {
    tenant_id: String,
    env_id: String,
    /// Granted every function (`*`).
    key_all: String,
    /// Granted only `bearer`.
    key_bearer_only: String,
    token: String,
}

async fn setup(airlock: &Airlock, httpbin: &Httpbin) -> Result<Fixture> {
    let tenant = airlock
        .graphql_ok(CREATE_TENANT, json!({"name": "acme"}))
        .await?;
    let tenant_id = tenant["createTenant"]["id"].as_str().unwrap().to_string();
    let env = airlock
        .graphql_ok(CREATE_ENV, json!({"t": tenant_id, "name": "prod"}))
        .await?;
    let env_id = env["createEnvironment"]["id"].as_str().unwrap().to_string();

    let functions = [
        json!({"tenantId": tenant_id, "name": "bearer", "method": "GET",
               "url": format!("{}/bearer", httpbin.url),
               "headers": [{"name": "Authorization", "value": "Bearer {{secrets.TOKEN}}"}]}),
        json!({"tenantId": tenant_id, "name": "anything", "method": "POST",
               "url": format!("{}/anything/{{{{args.x}}}}?q={{{{args.x}}}}&n={{{{args.n}}}}", httpbin.url),
               "headers": [{"name": "X-Arg", "value": "{{args.h}}"}],
               "body": r#"{"text": "{{args.x}}", "raw": {{args.x}}, "n": {{args.n}}}"#}),
        json!({"tenantId": tenant_id, "name": "slow", "method": "GET",
               "url": format!("{}/delay/3", httpbin.url), "timeoutMs": 500}),
        json!({"tenantId": tenant_id, "name": "unreachable", "method": "GET",
               "url": format!("http://127.0.0.1:{}/nothing-listens-here", free_port())}),
        json!({"tenantId": tenant_id, "name": "needs_missing_secret", "method": "GET",
               "url": format!("{}/anything", httpbin.url),
               "headers": [{"name": "X-Api-Key", "value": "{{secrets.NOT_SET}}"}]}),
    ];
    for input in functions {
        airlock
            .graphql_ok(CREATE_FUNCTION, json!({"input": input}))
            .await?;
    }
    create_probe_function(airlock, httpbin, &tenant_id, "TOKEN").await?;

    let token = format!("canary-token-{}", uuid::Uuid::new_v4().simple());
    let secret = airlock
        .graphql_ok(
            SET_SECRET,
            // httpbin listens on 127.0.0.1: the only host TOKEN may be sent to.
            json!({"e": env_id, "name": "TOKEN", "value": token, "hosts": ["127.0.0.1"]}),
        )
        .await?;
    assert_eq!(secret["setSecret"]["version"], 1);

    let key_all = airlock
        .graphql_ok(
            CREATE_KEY,
            json!({"e": env_id, "name": "all", "functions": ["*"]}),
        )
        .await?["createApiKey"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let key_bearer_only = airlock
        .graphql_ok(
            CREATE_KEY,
            json!({"e": env_id, "name": "bearer-only", "functions": ["bearer"]}),
        )
        .await?["createApiKey"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    // Configuration reaches the data plane asynchronously; within a second by contract.
    wait_until_key_works(airlock, &key_bearer_only, "bearer").await?;
    wait_until_key_works(airlock, &key_all, "bearer").await?;
    Ok(Fixture {
        tenant_id,
        env_id,
        key_all,
        key_bearer_only,
        token,
    })
}

/// Poll until `key` may invoke `function`; fails if that takes more than one second.
async fn wait_until_key_works(airlock: &Airlock, key: &str, function: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let status = airlock.invoke(function, key, json!({})).await?.status();
        if status == 200 {
            return Ok(());
        }
        assert_eq!(status, 401, "unexpected status while waiting for a new key");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "new key not live after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `bearer_probe`: GET httpbin's `/bearer?probe=...` with `secret` in the Authorization
/// header. The probe argument lets a test find its request in httpbin's access log.
async fn create_probe_function(
    airlock: &Airlock,
    httpbin: &Httpbin,
    tenant_id: &str,
    secret: &str,
) -> Result<()> {
    airlock
        .graphql_ok(
            CREATE_FUNCTION,
            json!({"input": {"tenantId": tenant_id, "name": "bearer_probe", "method": "GET",
                   "url": format!("{}/bearer?probe={{{{args.probe}}}}", httpbin.url),
                   "headers": [{"name": "Authorization",
                                "value": format!("Bearer {{{{secrets.{secret}}}}}")}]}}),
        )
        .await?;
    Ok(())
}

/// Invoke `bearer_probe` and return the bearer token httpbin actually received (responses
/// to the client are redacted, so the upstream's access log is the witness).
async fn token_seen_by_upstream(airlock: &Airlock, httpbin: &Httpbin, key: &str) -> Result<String> {
    let probe = uuid::Uuid::new_v4().simple().to_string();
    let resp = airlock
        .invoke("bearer_probe", key, json!({"probe": probe}))
        .await?;
    assert_eq!(resp.status(), 200);
    let line = httpbin
        .request_line_containing(&format!("probe={probe}"))
        .await?;
    let (_, authorization) = line.split_once('\t').expect("tab-separated access log");
    Ok(authorization
        .strip_prefix("Bearer ")
        .unwrap_or(authorization)
        .to_string())
}

/// The secret reaches httpbin's `/bearer` in the Authorization header; httpbin's echo of it
/// comes back redacted.
async fn bearer_gets_secret_injected(
    airlock: &Airlock,
    httpbin: &Httpbin,
    f: &Fixture,
) -> Result<()> {
    let resp = airlock
        .invoke("bearer", &f.key_bearer_only, json!({}))
        .await?;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-airlock-request-id"));
    assert!(resp.headers()["content-type"]
        .to_str()?
        .starts_with("application/json"));
    let body: Value = resp.json().await?;
    assert_eq!(body["authenticated"], true);
    // The echo is a body mask as long as the token.
    assert_eq!(body["token"], body_mask(f.token.len()));
    assert_eq!(
        token_seen_by_upstream(airlock, httpbin, &f.key_all).await?,
        f.token
    );
    Ok(())
}

/// Arguments land in a path segment, a query value, a header and a JSON body, each encoded.
async fn arguments_are_encoded_where_they_land(
    airlock: &Airlock,
    httpbin: &Httpbin,
    f: &Fixture,
) -> Result<()> {
    for x in [
        "plain",
        "with space",
        "slash/and?question&amp=eq",
        "quote\" and 'single' and \\ backslash",
        "unicode ü 日本 🚀",
        "../../etc/passwd",
        "percent %2F already",
    ] {
        let resp = airlock
            .invoke(
                "anything",
                &f.key_all,
                json!({"x": x, "n": 42, "h": "header value"}),
            )
            .await?;
        assert_eq!(resp.status(), 200, "x = {x:?}");
        let body: Value = resp.json().await?;
        // Query: parsed back by httpbin into exactly the argument, and nothing else leaked in.
        assert_eq!(body["args"]["q"], x, "query for {x:?}: {body}");
        assert_eq!(body["args"]["n"], "42");
        assert_eq!(body["args"].as_object().unwrap().len(), 2, "{body}");
        // JSON body: string in a string, value in value position.
        assert_eq!(body["json"]["text"], x);
        assert_eq!(body["json"]["raw"], x);
        assert_eq!(body["json"]["n"], 42);
        // Path: one percent-encoded segment, as it arrived on the wire.
        let marker = format!("q={}&", percent_encode(x));
        let line = httpbin.request_line_containing(&marker).await?;
        let path = line
            .strip_prefix("POST /anything/")
            .and_then(|rest| rest.split_once('?'))
            .unwrap_or_else(|| panic!("unexpected request line {line}"))
            .0;
        assert_eq!(path, percent_encode(x), "path for {x:?}: {line}");
        assert_eq!(percent_decode(path), x);
        assert_eq!(body["headers"]["X-Arg"], "header value");
        assert_eq!(body["method"], "POST");
    }
    // The client's API key never reaches the upstream.
    let resp = airlock
        .invoke("anything", &f.key_all, json!({"x": "k", "n": 1, "h": "v"}))
        .await?;
    let text = resp.text().await?;
    assert!(!text.contains(&f.key_all), "API key forwarded upstream");
    Ok(())
}

/// Reference encoding: everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Result<Value> {
    assert_eq!(resp.status(), status, "expected {status} {code}");
    let request_id = resp.headers()["x-airlock-request-id"].to_str()?.to_string();
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    assert_eq!(body["error"]["requestId"], request_id.as_str());
    Ok(body)
}

/// Every gateway error status of the issue, with its JSON body.
async fn gateway_errors(airlock: &Airlock, f: &Fixture) -> Result<()> {
    expect_error(
        airlock.invoke_raw("bearer", None, "{}").await?,
        401,
        "unauthorized",
    )
    .await?;
    expect_error(
        airlock
            .invoke("bearer", "ak_not-a-real-key", json!({}))
            .await?,
        401,
        "unauthorized",
    )
    .await?;
    expect_error(
        airlock
            .invoke("anything", &f.key_bearer_only, json!({}))
            .await?,
        403,
        "forbidden",
    )
    .await?;
    // A key limited to other functions cannot find out whether a function exists.
    expect_error(
        airlock
            .invoke("no_such_function", &f.key_bearer_only, json!({}))
            .await?,
        403,
        "forbidden",
    )
    .await?;
    expect_error(
        airlock
            .invoke("no_such_function", &f.key_all, json!({}))
            .await?,
        404,
        "function_not_found",
    )
    .await?;
    expect_error(
        airlock
            .invoke_raw("anything", Some(&f.key_all), "{not json")
            .await?,
        400,
        "invalid_json",
    )
    .await?;
    expect_error(
        airlock
            .invoke_raw("anything", Some(&f.key_all), "[1, 2]")
            .await?,
        400,
        "invalid_json",
    )
    .await?;
    let body = expect_error(
        airlock
            .invoke("anything", &f.key_all, json!({"n": 1, "h": "v"}))
            .await?,
        400,
        "missing_argument",
    )
    .await?;
    assert!(body["error"]["message"].as_str().unwrap().contains('x'));
    expect_error(
        airlock.invoke("unreachable", &f.key_all, json!({})).await?,
        502,
        "upstream_unreachable",
    )
    .await?;
    let started = Instant::now();
    expect_error(
        airlock.invoke("slow", &f.key_all, json!({})).await?,
        504,
        "upstream_timeout",
    )
    .await?;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "timeout not applied"
    );
    // A missing secret fails closed: an error, never a request with an empty value.
    let body = expect_error(
        airlock
            .invoke("needs_missing_secret", &f.key_all, json!({}))
            .await?,
        500,
        "secret_unavailable",
    )
    .await?;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("NOT_SET"));
    Ok(())
}

/// A change through GraphQL is live in the data plane within one second, without a restart.
/// Returns the rotated secret value (another canary).
async fn changes_are_live_within_one_second(
    airlock: &Airlock,
    httpbin: &Httpbin,
    f: &Fixture,
) -> Result<String> {
    let rotated = format!("canary-rotated-{}", uuid::Uuid::new_v4().simple());
    airlock
        .graphql_ok(
            SET_SECRET,
            json!({"e": f.env_id, "name": "TOKEN", "value": rotated}),
        )
        .await?;
    let changed = Instant::now();
    loop {
        if token_seen_by_upstream(airlock, httpbin, &f.key_all).await? == rotated {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "rotation not live after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A key created now works within one second too.
    let key = airlock
        .graphql_ok(
            CREATE_KEY,
            json!({"e": f.env_id, "name": "late", "functions": ["bearer"]}),
        )
        .await?["createApiKey"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until_key_works(airlock, &key, "bearer").await?;
    Ok(rotated)
}

/// Bad GraphQL input gets a stable code and writes nothing.
async fn bad_graphql_input_changes_nothing(airlock: &Airlock, f: &Fixture) -> Result<()> {
    let count = |v: &Value, field: &str| v[field].as_array().map(Vec::len).unwrap_or(0);
    let before = airlock
        .graphql_ok(
            "query($t: ID!) { tenants { id } functions(tenantId: $t) { id } }",
            json!({"t": f.tenant_id}),
        )
        .await?;
    let cases = [
        (CREATE_TENANT, json!({"name": ""}), "INVALID_INPUT"),
        (CREATE_TENANT, json!({"name": "acme"}), "ALREADY_EXISTS"),
        (
            CREATE_ENV,
            json!({"t": uuid::Uuid::new_v4().to_string(), "name": "x"}),
            "NOT_FOUND",
        ),
        (
            CREATE_FUNCTION,
            json!({"input": {"tenantId": f.tenant_id, "name": "broken", "method": "GET",
                             "url": "http://127.0.0.1/{{args.x"}}),
            "TEMPLATE_MALFORMED",
        ),
        (
            CREATE_FUNCTION,
            json!({"input": {"tenantId": f.tenant_id, "name": "broken", "method": "GET",
                             "url": "http://127.0.0.1/{{env.HOME}}"}}),
            "TEMPLATE_UNKNOWN_NAMESPACE",
        ),
        (
            CREATE_FUNCTION,
            json!({"input": {"tenantId": f.tenant_id, "name": "bearer", "method": "GET",
                             "url": "http://127.0.0.1/"}}),
            "ALREADY_EXISTS",
        ),
    ];
    for (query, variables, code) in cases {
        let body = airlock.graphql(query, variables.clone()).await?;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], code,
            "{variables} -> {body}"
        );
    }
    let after = airlock
        .graphql_ok(
            "query($t: ID!) { tenants { id } functions(tenantId: $t) { id } }",
            json!({"t": f.tenant_id}),
        )
        .await?;
    assert_eq!(count(&before, "tenants"), count(&after, "tenants"));
    assert_eq!(count(&before, "functions"), count(&after, "functions"));

    // Without the admin token nothing is answered.
    let resp = reqwest::Client::new()
        .post(format!("{}/graphql", airlock.control_url))
        .json(&json!({"query": "{ tenants { id } }"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    Ok(())
}

/// No secret value is ever returned by the control plane or printed in a log.
async fn secrets_never_leave_the_vault(airlock: &Airlock, f: &Fixture) -> Result<()> {
    let listing = airlock
        .graphql_ok(
            "query($e: ID!) { secrets(environmentId: $e) { id name version } }",
            json!({"e": f.env_id}),
        )
        .await?;
    assert!(!listing.to_string().contains(&f.token));
    let logs = airlock.logs();
    assert!(!logs.contains(&f.token), "secret value in logs");
    assert!(!logs.contains(&f.key_all), "API key in logs");
    Ok(())
}

/// Runs every scenario; returns the secret values and keys planted (canaries to scan for).
async fn run_all(airlock: &mut Airlock, httpbin: &Httpbin) -> Result<Vec<String>> {
    let fixture = setup(airlock, httpbin).await?;
    bearer_gets_secret_injected(airlock, httpbin, &fixture).await?;
    arguments_are_encoded_where_they_land(airlock, httpbin, &fixture).await?;
    gateway_errors(airlock, &fixture).await?;
    bad_graphql_input_changes_nothing(airlock, &fixture).await?;
    let rotated = changes_are_live_within_one_second(airlock, httpbin, &fixture).await?;
    secrets_never_leave_the_vault(airlock, &fixture).await?;
    airlock.check_running()?;
    Ok(vec![
        fixture.token,
        rotated,
        fixture.key_all,
        fixture.key_bearer_only,
    ])
}

fn assert_no_canary(haystack: &[u8], canaries: &[String], place: &str) {
    for canary in canaries {
        assert!(
            !haystack
                .windows(canary.len())
                .any(|w| w == canary.as_bytes()),
            "a secret value or API key is stored in plaintext in {place}"
        );
    }
}

/// Under `airlock dev` a mutation returns only once the data plane serves its effect, so a
/// script may use a key or a rotated secret right away.
async fn dev_mode_reads_its_own_writes(airlock: &Airlock, httpbin: &Httpbin) -> Result<()> {
    let tenant = airlock
        .graphql_ok(CREATE_TENANT, json!({"name": "rw"}))
        .await?;
    let tenant_id = tenant["createTenant"]["id"].as_str().unwrap();
    let env = airlock
        .graphql_ok(CREATE_ENV, json!({"t": tenant_id, "name": "dev"}))
        .await?;
    let env_id = env["createEnvironment"]["id"].as_str().unwrap();
    create_probe_function(airlock, httpbin, tenant_id, "T").await?;
    for version in 1..=3 {
        let value = format!("rw-{version}-{}", uuid::Uuid::new_v4().simple());
        airlock
            .graphql_ok(
                SET_SECRET,
                json!({"e": env_id, "name": "T", "value": value, "hosts": ["127.0.0.1"]}),
            )
            .await?;
        let key = airlock
            .graphql_ok(
                CREATE_KEY,
                json!({"e": env_id, "name": format!("k{version}"), "functions": ["bearer_probe"]}),
            )
            .await?["createApiKey"]["key"]
            .as_str()
            .unwrap()
            .to_string();
        // token_seen_by_upstream asserts the first invoke with the new key succeeds.
        assert_eq!(
            token_seen_by_upstream(airlock, httpbin, &key).await?,
            value,
            "the new secret version must be live at once"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_one_process() -> Result<()> {
    let mut airlock = Airlock::dev().await?;
    let httpbin = Httpbin::start(airlock.data_dir.path()).await?;
    let mut result = run_all(&mut airlock, &httpbin).await;
    if result.is_ok() {
        if let Err(error) = dev_mode_reads_its_own_writes(&airlock, &httpbin).await {
            result = Err(error);
        }
    }
    if result.is_err() {
        eprintln!("--- airlock output ---\n{}", airlock.logs());
    }
    let canaries = result?;

    // The bootstrap admin token file is private to its owner.
    use std::os::unix::fs::PermissionsExt;
    let state = airlock.data_dir.path().join("state");
    let mode = std::fs::metadata(state.join("admin-token"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin-token mode {mode:o}");
    let mode = std::fs::metadata(state.join("seal.key"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "seal.key mode {mode:o}");

    // Neither the SQLite database (with its WAL) nor anything else in the data dir holds a
    // secret value or an API key in plaintext.
    airlock.processes[0].terminate()?;
    for entry in std::fs::read_dir(&state)? {
        let path = entry?.path();
        assert_no_canary(
            &std::fs::read(&path)?,
            &canaries,
            &path.display().to_string(),
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_mode_over_redis_and_postgres() -> Result<()> {
    let db = PostgresDb::create()?;
    let prefix = format!("airlock-e2e-{}", uuid::Uuid::new_v4().simple());
    let mut airlock = Airlock::split(&db.url, &prefix).await?;
    let httpbin = Httpbin::start(airlock.data_dir.path()).await?;
    let result = run_all(&mut airlock, &httpbin).await;
    if result.is_err() {
        eprintln!("--- airlock output ---\n{}", airlock.logs());
    }

    // Every Redis key and value of this installation, and a dump of the whole database,
    // hold no secret value or API key in plaintext.
    let (keys, redis_dump) = airlock_e2e::take_redis_contents(&prefix).await?;
    let canaries = result?;
    assert!(keys > 0, "no snapshot was published to Redis");
    assert_no_canary(&redis_dump, &canaries, "Redis");
    let dump = std::process::Command::new("pg_dump")
        .args(["-h", "127.0.0.1", "-U", "postgres", "--data-only", &db.name])
        .output()?;
    assert!(dump.status.success(), "pg_dump failed");
    assert!(dump.stdout.len() > 100, "empty database dump");
    assert_no_canary(&dump.stdout, &canaries, "PostgreSQL");
    Ok(())
}

/// A data plane restarted with no control plane running still loads every snapshot from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_mode_data_plane_serves_after_control_plane_stops() -> Result<()> {
    let db = PostgresDb::create()?;
    let prefix = format!("airlock-e2e-{}", uuid::Uuid::new_v4().simple());
    let mut airlock = Airlock::split(&db.url, &prefix).await?;
    let httpbin = Httpbin::start(airlock.data_dir.path()).await?;
    let f = setup(&airlock, &httpbin).await?;
    // Stop the control plane: the data plane keeps serving from its snapshot.
    let status = airlock.processes[0].terminate()?;
    assert!(status.success(), "control plane exit status {status}");
    bearer_gets_secret_injected(&airlock, &httpbin, &f).await?;
    Ok(())
}
