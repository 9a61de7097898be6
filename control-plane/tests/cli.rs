//! The `airlock` binary: keygen, configuration errors, and `serve` / `dev` end to end
//! (ready lines, admin token bootstrap, a GraphQL change reaching Redis or the in-process
//! data plane, clean exit on SIGTERM).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use airlock_e2e::free_port;
use airlock_shared::seal::OpeningKey;
use common::REDIS_URL;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const BINARY: &str = env!("CARGO_BIN_EXE_airlock");

/// Variables that would change what the binary does; each test sets what it needs.
const CONFIG_VARS: &[&str] = &[
    "AIRLOCK_DATA_DIR",
    "AIRLOCK_PUBLIC_URL",
    "AIRLOCK_CONTROL_ADDR",
    "AIRLOCK_DATA_ADDR",
    "AIRLOCK_REDIS_PREFIX",
    "AIRLOCK_SEAL_PUBLIC_KEY",
    "AIRLOCK_UPSTREAM_CA_FILE",
    "DATABASE_URL",
    "REDIS_URL",
];

fn airlock() -> Command {
    let mut command = Command::new(BINARY);
    for var in CONFIG_VARS {
        command.env_remove(var);
    }
    // Warnings and errors only, so a failing test's output stays readable.
    command.env("RUST_LOG", "warn").kill_on_drop(true);
    command
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn keygen_writes_a_private_key_prints_the_public_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data-plane.key");
    let output = airlock()
        .args(["keygen", "--out"])
        .arg(&out)
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let public = stdout
        .trim()
        .strip_prefix("AIRLOCK_SEAL_PUBLIC_KEY=")
        .expect("prints AIRLOCK_SEAL_PUBLIC_KEY=...");
    let key = OpeningKey::from_base64(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(key.sealing_key().to_base64(), public);
    assert!(
        !stdout.contains(key.to_base64().as_str()),
        "the private key is not printed"
    );
    #[cfg(unix)]
    assert_eq!(mode(&out), 0o600);

    let before = std::fs::read(&out).unwrap();
    let output = airlock()
        .args(["keygen", "--out"])
        .arg(&out)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

type BadConfigCase<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

#[tokio::test]
async fn bad_configuration_is_a_clear_error_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let public = OpeningKey::generate().sealing_key().to_base64();
    // (arguments, environment, what stderr must mention)
    let cases: Vec<BadConfigCase> = vec![
        (
            vec!["serve"],
            vec![("AIRLOCK_SEAL_PUBLIC_KEY", &public)],
            "REDIS_URL",
        ),
        (
            vec!["serve"],
            vec![("REDIS_URL", REDIS_URL)],
            "AIRLOCK_SEAL_PUBLIC_KEY",
        ),
        (
            vec!["serve"],
            vec![
                ("REDIS_URL", REDIS_URL),
                ("AIRLOCK_SEAL_PUBLIC_KEY", "short"),
            ],
            "AIRLOCK_SEAL_PUBLIC_KEY",
        ),
        (
            vec!["dev"],
            vec![("AIRLOCK_CONTROL_ADDR", "not-an-address")],
            "not a HOST:PORT",
        ),
        (
            vec!["dev", "--data-addr", "nowhere"],
            vec![],
            "not a HOST:PORT",
        ),
        (
            vec!["dev"],
            vec![("DATABASE_URL", "mysql://x")],
            "DATABASE_URL",
        ),
        (
            vec!["dev"],
            vec![("AIRLOCK_PUBLIC_URL", "ftp://airlock.example.com")],
            "AIRLOCK_PUBLIC_URL",
        ),
    ];
    for (args, env, expected) in cases {
        let output = airlock()
            .args(&args)
            .arg("--data-dir")
            .arg(dir.path())
            .envs(env.iter().copied())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} {env:?} should fail");
        assert!(stderr.contains(expected), "{args:?} {env:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Read stdout lines until one starts with `prefix`; returns its remainder.
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
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
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

fn spawn(command: &mut Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

#[tokio::test]
async fn serve_publishes_to_redis_and_bootstraps_the_admin_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let opening_key = OpeningKey::generate();
    let prefix = format!("airlock_cli_{}", uuid::Uuid::new_v4().simple());
    let serve = || {
        let mut command = airlock();
        command
            // The flag wins over the environment.
            .args(["serve", "--control-addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("AIRLOCK_CONTROL_ADDR", "127.0.0.1:1")
            .env("REDIS_URL", REDIS_URL)
            .env("AIRLOCK_REDIS_PREFIX", &prefix)
            .env(
                "AIRLOCK_SEAL_PUBLIC_KEY",
                opening_key.sealing_key().to_base64(),
            );
        command
    };

    let (child, mut lines) = spawn(&mut serve());
    let url = wait_for_line(&mut lines, "control plane:").await;
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/graphql"),
        "{url}"
    );
    assert!(!url.starts_with("http://127.0.0.1:1/"));
    let token = wait_for_line(&mut lines, "admin token:").await;
    assert!(token.starts_with("atk_"));
    let token_file = dir.path().join("admin-token");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);
    #[cfg(unix)]
    assert_eq!(mode(&token_file), 0o600);
    assert!(
        dir.path().join("airlock.db").is_file(),
        "SQLite in the data dir by default"
    );

    let health = reqwest::get(url.replace("/graphql", "/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let tenant = graphql(
        &url,
        &token,
        "mutation { createTenant(input: {name: \"acme\"}) { id } }",
        json!({}),
    )
    .await;
    let environment = graphql(
        &url,
        &token,
        "mutation($t: ID!) { createEnvironment(input: {tenantId: $t, name: \"prod\"}) { id } }",
        json!({ "t": tenant["createTenant"]["id"] }),
    )
    .await;
    let environment_id: uuid::Uuid = environment["createEnvironment"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let names = airlock_shared::keys::RedisNames::new(prefix.clone());
    let mut redis = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stored: Vec<u8> =
        redis::AsyncCommands::get(&mut redis, names.environment_snapshot(&environment_id))
            .await
            .unwrap();
    let published = airlock_shared::wire::decode_snapshot(&stored).unwrap();
    assert_eq!(published.environment_id, environment_id);
    terminate(child).await;

    assert_eq!(
        airlock_shared::wire::SnapshotEncoding::of(&stored),
        airlock_shared::wire::SnapshotEncoding::Binary
    );

    // Second start: no new token; says where the first one is. It publishes every
    // environment again, here as JSON (for data planes older than the binary encoding).
    let (child, mut lines) = spawn(serve().env("AIRLOCK_SNAPSHOT_ENCODING", "json"));
    wait_for_line(&mut lines, "control plane:").await;
    let notice = wait_for_line(&mut lines, "admin token:").await;
    assert!(
        notice.contains("admin-token") && !notice.contains("atk_"),
        "{notice}"
    );
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);
    let stored: String =
        redis::AsyncCommands::get(&mut redis, names.environment_snapshot(&environment_id))
            .await
            .unwrap();
    let republished: airlock_shared::wire::EnvironmentSnapshot =
        serde_json::from_str(&stored).unwrap();
    assert_eq!(republished.environment_id, environment_id);
    assert!(republished.revision > published.revision);
    terminate(child).await;

    let keys: Vec<String> = redis::AsyncCommands::keys(&mut redis, format!("{prefix}:*"))
        .await
        .unwrap();
    let _: () = redis::AsyncCommands::del(&mut redis, keys).await.unwrap();
}

#[tokio::test]
async fn dev_runs_both_planes_and_changes_are_live_in_the_data_plane() {
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
    assert_eq!(data_plane, format!("http://{data_addr}"));
    let token = wait_for_line(&mut lines, "admin token:").await;
    assert!(token.starts_with("atk_"));
    let seal_key = dir.path().join("seal.key");
    OpeningKey::from_base64(&std::fs::read_to_string(&seal_key).unwrap()).unwrap();
    #[cfg(unix)]
    assert_eq!(mode(&seal_key), 0o600);

    // A function whose upstream is the control plane's own /healthz.
    let health_url = url.replace("/graphql", "/healthz");
    let tenant = graphql(
        &url,
        &token,
        "mutation { createTenant(input: {name: \"acme\"}) { id } }",
        json!({}),
    )
    .await;
    let tenant_id = tenant["createTenant"]["id"].clone();
    let environment = graphql(
        &url,
        &token,
        "mutation($t: ID!) { createEnvironment(input: {tenantId: $t, name: \"dev\"}) { id } }",
        json!({ "t": tenant_id }),
    )
    .await;
    graphql(
        &url,
        &token,
        "mutation($t: ID!, $u: String!) { createFunction(input: {tenantId: $t, name: \"health\", method: \"GET\", url: $u}) { id } }",
        json!({ "t": tenant_id, "u": health_url }),
    )
    .await;
    let key = graphql(
        &url,
        &token,
        "mutation($e: ID!) { createApiKey(input: {environmentId: $e, name: \"app\", functions: [\"health\"]}) { key } }",
        json!({ "e": environment["createEnvironment"]["id"] }),
    )
    .await;
    let key = key["createApiKey"]["key"].as_str().unwrap().to_string();

    // Live within a second of the mutation returning.
    let client = reqwest::Client::new();
    let invoke = format!("{data_plane}/v1/functions/health/invoke");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let response = loop {
        let response = client
            .post(&invoke)
            .bearer_auth(&key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        if response.status() == 200 || tokio::time::Instant::now() >= deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");

    let unknown = client
        .post(&invoke)
        .bearer_auth("ak_unknown")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401);
    terminate(child).await;
}

/// A provisioning link, end to end: the admin creates it (its URL built from the address the
/// admin used), someone opens the form and submits the value, and the in-process data plane
/// injects it from then on. Before that, the function fails closed.
#[tokio::test]
async fn dev_provisioning_link_sets_a_secret_the_data_plane_uses() {
    const VALUE: &str = "canary-cli-provisioned-9d41";
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
    let base = url.trim_end_matches("/graphql").to_string();

    let tenant = graphql(
        &url,
        &token,
        "mutation { createTenant(input: {name: \"acme\"}) { id } }",
        json!({}),
    )
    .await;
    let tenant_id = tenant["createTenant"]["id"].clone();
    let environment = graphql(
        &url,
        &token,
        "mutation($t: ID!) { createEnvironment(input: {tenantId: $t, name: \"dev\"}) { id } }",
        json!({ "t": tenant_id }),
    )
    .await;
    let environment_id = environment["createEnvironment"]["id"].clone();
    graphql(
        &url,
        &token,
        "mutation($t: ID!, $u: String!) { createFunction(input: {tenantId: $t, name: \"health\", method: \"GET\", url: $u, headers: [{name: \"X-Probe\", value: \"{{secrets.PROBE}}\"}]}) { id } }",
        json!({ "t": tenant_id, "u": format!("{base}/healthz") }),
    )
    .await;
    let key = graphql(
        &url,
        &token,
        "mutation($e: ID!) { createApiKey(input: {environmentId: $e, name: \"app\", functions: [\"health\"]}) { key } }",
        json!({ "e": environment_id }),
    )
    .await;
    let key = key["createApiKey"]["key"].as_str().unwrap().to_string();
    let client = reqwest::Client::new();
    let invoke = format!("{data_plane}/v1/functions/health/invoke");
    let response = client
        .post(&invoke)
        .bearer_auth(&key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500, "fails closed without the secret");

    let link = graphql(
        &url,
        &token,
        "mutation($e: ID!) { createProvisioningLink(input: {environmentId: $e, secrets: [{name: \"PROBE\", allowedHosts: [\"127.0.0.1\"]}]}) { url } }",
        json!({ "e": environment_id }),
    )
    .await;
    let link = link["createProvisioningLink"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        link.starts_with(&format!("{base}/provision/apl_")),
        "{link}"
    );

    let form = client.get(&link).send().await.unwrap();
    assert_eq!(form.status(), 200);
    assert_eq!(form.headers()["cache-control"], "no-store");
    assert!(form.text().await.unwrap().contains("name=\"PROBE\""));
    let submitted = client
        .post(&link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("PROBE={VALUE}"))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 200);
    let again = client
        .post(&link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("PROBE=other")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 410);

    // Live in the data plane once the submission returns.
    let response = client
        .post(&invoke)
        .bearer_auth(&key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "ok");

    // The admin sees that it was set, by the link, never the value.
    let versions = graphql(
        &url,
        &token,
        "query($e: ID!) { secrets(environmentId: $e) { id name version allowedHosts } }",
        json!({ "e": environment_id }),
    )
    .await;
    assert_eq!(versions["secrets"][0]["allowedHosts"], json!(["127.0.0.1"]));
    let log = graphql(
        &url,
        &token,
        "{ auditLog(filter: {action: \"provisioning_link.use\"}) { entries { actor { type } } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        log["auditLog"]["entries"][0]["actor"]["type"],
        "PROVISIONING_LINK"
    );
    assert!(!versions.to_string().contains(VALUE) && !log.to_string().contains(VALUE));
    terminate(child).await;
}
