//! Harness for Airlock's end-to-end tests: starts the real binaries (`airlock`,
//! `airlock-data-plane`) and real peers (httpbin under gunicorn, PostgreSQL, Redis), all on
//! 127.0.0.1, each test with its own ports, data dir, database and Redis prefix.
//!
//! The binaries must be built first (`cargo build --bins`; `scripts/test` does it).

pub mod oidc;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// How long a process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the data plane puts in a response body where `len` bytes of a secret's form were (spelled
/// out here, not taken from the data plane): a mask as long as they were, `[REDACTED***]` from
/// 10 bytes on, `***` below. Response header values get the plain `[REDACTED]` instead.
pub fn body_mask(len: usize) -> String {
    if len < 10 {
        "*".repeat(len)
    } else {
        format!("[REDACTED{}]", "*".repeat(len - 10))
    }
}

/// Whether `text` is one body mask, whole (see [`body_mask`]).
pub fn is_body_mask(text: &str) -> bool {
    text == body_mask(text.len())
}

/// A free TCP port on 127.0.0.1 (the listener is closed again before the port is used),
/// below the kernel's ephemeral range.
///
/// The port is only bound later, by the process it is given to, and tests start peers (an
/// OAuth server, Airlock) in between. A port from the ephemeral range (what binding port 0
/// returns) can be taken meanwhile by any outgoing connection of the tests running beside
/// this one, as the kernel picks those from the same range ("Address already in use" at
/// start). Below it, only a listener can take it; each test process starts its search at a
/// random place, so two tests rarely try the same port.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    const LOWEST: u16 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOWEST);
    if span > 0 {
        let start = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        for i in 0..u64::from(span) {
            let port =
                LOWEST + u16::try_from((start.wrapping_add(i)) % u64::from(span)).unwrap_or(0);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Path of a workspace binary built beside the running executable: a test in
/// `target/<profile>/deps/` or a program (the benchmark harness) in `target/<profile>/`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("an executable lives in a directory");
    let candidates = [Some(dir), dir.parent()];
    let found = candidates
        .into_iter()
        .flatten()
        .map(|dir| dir.join(name))
        .find(|path| path.exists());
    found.unwrap_or_else(|| {
        panic!(
            "{name} not found beside {}: build the binaries first (`cargo build --bins`)",
            exe.display()
        )
    })
}

/// A child process that is killed when dropped. Its stdout and stderr go to files.
pub struct Process {
    name: String,
    child: Child,
    pub log_path: PathBuf,
}

impl Process {
    /// Spawn `command`, sending its output to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> Result<Self> {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log_path,
        })
    }

    /// The operating system's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Fail if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; output:\n{}",
                self.name,
                self.output()
            );
        }
        Ok(())
    }

    /// Send SIGTERM and wait for the process to exit, returning its exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                bail!("{} did not exit within 10 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `url` until it answers 200, while checking `process` is still alive.
pub async fn wait_ready(url: &str, process: &mut Process) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        process.check_running()?;
        if let Ok(resp) = client.get(url).send().await {
            if resp.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{url} not ready after {READY_TIMEOUT:?}; output:\n{}",
                process.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// httpbin (the PyPI package) served by gunicorn on a free port: a real upstream API.
pub struct Httpbin {
    pub url: String,
    /// gunicorn's access log: per request, the raw request line (`POST /path?query HTTP/1.1`)
    /// exactly as it arrived on the wire (httpbin's own answers show decoded URLs), a tab, and
    /// the `Authorization` header received (`-` when none). Lets tests see what the upstream
    /// really got, even when the response to the client is redacted.
    pub access_log: PathBuf,
    _process: Process,
}

impl Httpbin {
    /// Every access log entry so far: (request line, Authorization header or `-`).
    pub fn requests(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(line, auth)| (line.to_string(), auth.to_string()))
            .collect()
    }

    /// Every access log entry once the log has stopped growing for 200 ms (at most 5 s):
    /// gunicorn writes a line just after its response has gone out, so a count taken right
    /// after a response can be one short.
    pub async fn settled_requests(&self) -> Vec<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = self.requests();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.requests();
            if now.len() == seen.len() || Instant::now() > deadline {
                return now;
            }
            seen = now;
        }
    }

    /// The last raw request line containing `needle`. gunicorn writes its access log just
    /// after the response has gone out, so this waits briefly for the line to appear.
    pub async fn request_line_containing(&self, needle: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = std::fs::read_to_string(&self.access_log).unwrap_or_default();
            if let Some(line) = log.lines().rev().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if Instant::now() > deadline {
                bail!("httpbin received no request containing {needle:?}; access log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn start(log_dir: &Path) -> Result<Self> {
        let port = free_port();
        let access_log = log_dir.join("httpbin-access.log");
        let mut command = Command::new("gunicorn");
        command
            .arg("--access-logfile")
            .arg(&access_log)
            .args(["--access-logformat", "%(r)s\t%({authorization}i)s"]);
        command.args([
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--workers",
            "2",
            "--threads",
            "8",
            "--log-level",
            "warning",
            "httpbin:app",
        ]);
        let mut process = Process::spawn("httpbin", command, log_dir)?;
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{url}/get"), &mut process).await?;
        Ok(Self {
            url,
            access_log,
            _process: process,
        })
    }
}

/// A PostgreSQL database of its own, dropped at the end of the test.
pub struct PostgresDb {
    pub name: String,
    pub url: String,
}

impl PostgresDb {
    pub fn create() -> Result<Self> {
        let name = format!("airlock_e2e_{}", uuid::Uuid::new_v4().simple());
        psql(&format!("CREATE DATABASE {name}"))?;
        Ok(Self {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        })
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        let _ = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

fn psql(sql: &str) -> Result<()> {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Extra settings for the `airlock` process (`airlock dev` / `airlock serve`).
#[derive(Debug, Clone, Default)]
pub struct AirlockOptions {
    /// Port of the control plane; `None`: a free one. Set it when a peer must know the URL
    /// before Airlock starts (an OpenID provider's redirect URI).
    pub control_port: Option<u16>,
    /// Port of the (first) data plane; `None`: a free one. Set it when a peer must know the
    /// data plane's URL first (an OAuth provider's redirect URI to its callback).
    pub data_port: Option<u16>,
    /// Extra environment variables (`AIRLOCK_OIDC_ISSUER`, ...).
    pub env: Vec<(String, String)>,
}

impl AirlockOptions {
    /// Add one environment variable.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_string(), value.into()));
        self
    }
}

/// A running Airlock: either `airlock dev` (one process) or `airlock serve` +
/// `airlock-data-plane` over Redis.
/// What [`Airlock::test_env`] creates.
#[derive(Debug, Clone)]
pub struct TestEnv {
    pub tenant_id: String,
    pub env_id: String,
    /// Plaintext of the key granted every function.
    pub key: String,
}

pub struct Airlock {
    pub control_url: String,
    pub data_url: String,
    pub admin_token: String,
    pub data_dir: tempfile::TempDir,
    pub processes: Vec<Process>,
    /// Split mode: the Redis prefix and the data planes' sealing key file.
    split: Option<(String, PathBuf)>,
    client: reqwest::Client,
}

impl Airlock {
    /// `airlock dev`: both planes in one process, SQLite, no Redis.
    pub async fn dev() -> Result<Self> {
        Self::dev_with(AirlockOptions::default()).await
    }

    /// [`dev`](Self::dev) with extra settings.
    pub async fn dev_with(options: AirlockOptions) -> Result<Self> {
        let data_dir = tempfile::tempdir()?;
        let control_port = options.control_port.unwrap_or_else(free_port);
        let data_port = options.data_port.unwrap_or_else(free_port);
        let mut command = Command::new(binary("airlock"));
        command
            .arg("dev")
            .arg("--data-dir")
            .arg(data_dir.path().join("state"))
            .args(["--control-addr", &format!("127.0.0.1:{control_port}")])
            .args(["--data-addr", &format!("127.0.0.1:{data_port}")])
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "debug")
            .envs(options.env.iter().map(|(k, v)| (k, v)));
        let mut process = Process::spawn("airlock-dev", command, data_dir.path())?;
        let control_url = format!("http://127.0.0.1:{control_port}");
        let data_url = format!("http://127.0.0.1:{data_port}");
        wait_ready(&format!("{control_url}/healthz"), &mut process).await?;
        wait_ready(&format!("{data_url}/healthz"), &mut process).await?;
        let admin_token = read_token(&data_dir.path().join("state"))?;
        Ok(Self {
            control_url,
            data_url,
            admin_token,
            data_dir,
            processes: vec![process],
            split: None,
            client: reqwest::Client::new(),
        })
    }

    /// `airlock serve` and `airlock-data-plane` as separate processes over Redis, with
    /// PostgreSQL as the database.
    pub async fn split(database_url: &str, redis_prefix: &str) -> Result<Self> {
        Self::split_with(database_url, redis_prefix, AirlockOptions::default()).await
    }

    /// [`split`](Self::split) with extra settings for `airlock serve`.
    pub async fn split_with(
        database_url: &str,
        redis_prefix: &str,
        options: AirlockOptions,
    ) -> Result<Self> {
        let data_dir = tempfile::tempdir()?;
        let key_file = data_dir.path().join("seal.key");
        let keygen = Command::new(binary("airlock"))
            .arg("keygen")
            .arg("--out")
            .arg(&key_file)
            .output()?;
        if !keygen.status.success() {
            bail!(
                "airlock keygen failed: {}",
                String::from_utf8_lossy(&keygen.stderr)
            );
        }
        let stdout = String::from_utf8(keygen.stdout)?;
        let public_key = stdout
            .lines()
            .find_map(|l| l.strip_prefix("AIRLOCK_SEAL_PUBLIC_KEY="))
            .context("keygen printed no AIRLOCK_SEAL_PUBLIC_KEY= line")?
            .trim()
            .to_string();

        let control_port = options.control_port.unwrap_or_else(free_port);
        let mut serve = Command::new(binary("airlock"));
        serve
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir.path().join("state"))
            .args(["--control-addr", &format!("127.0.0.1:{control_port}")])
            .env("DATABASE_URL", database_url)
            .env("REDIS_URL", "redis://127.0.0.1:6379")
            .env("AIRLOCK_REDIS_PREFIX", redis_prefix)
            .env("AIRLOCK_SEAL_PUBLIC_KEY", &public_key)
            .env("RUST_LOG", "debug")
            .envs(options.env.iter().map(|(k, v)| (k, v)));
        let mut control = Process::spawn("airlock-serve", serve, data_dir.path())?;
        let control_url = format!("http://127.0.0.1:{control_port}");
        wait_ready(&format!("{control_url}/healthz"), &mut control).await?;

        let (data, data_url) = start_data_plane(
            "airlock-data-plane",
            data_dir.path(),
            redis_prefix,
            &key_file,
            options.data_port.unwrap_or_else(free_port),
        )
        .await?;

        let admin_token = read_token(&data_dir.path().join("state"))?;
        Ok(Self {
            control_url,
            data_url,
            admin_token,
            data_dir,
            processes: vec![control, data],
            split: Some((redis_prefix.to_string(), key_file)),
            client: reqwest::Client::new(),
        })
    }

    /// Split mode: start one more data plane on the same Redis; returns its URL.
    pub async fn add_data_plane(&mut self) -> Result<String> {
        let (prefix, key_file) = self
            .split
            .clone()
            .context("only split mode has separate data planes")?;
        let name = format!("airlock-data-plane-{}", self.processes.len());
        let (process, url) =
            start_data_plane(&name, self.data_dir.path(), &prefix, &key_file, free_port()).await?;
        self.processes.push(process);
        Ok(url)
    }

    /// `POST /v1/functions/{name}/invoke` on the data plane at `data_url`.
    pub async fn invoke_at(
        &self,
        data_url: &str,
        function: &str,
        key: &str,
        args: Value,
    ) -> Result<reqwest::Response> {
        Ok(self
            .client
            .post(format!("{data_url}/v1/functions/{function}/invoke"))
            .bearer_auth(key)
            .json(&args)
            .send()
            .await?)
    }

    /// Run a GraphQL operation with the admin token; returns the whole response body.
    pub async fn graphql(&self, query: &str, variables: Value) -> Result<Value> {
        let resp = self
            .client
            .post(format!("{}/graphql", self.control_url))
            .bearer_auth(&self.admin_token)
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await?;
        Ok(resp.json().await?)
    }

    /// Run a GraphQL operation that must succeed; returns its `data`.
    pub async fn graphql_ok(&self, query: &str, variables: Value) -> Result<Value> {
        let body = self.graphql(query, variables).await?;
        if body.get("errors").is_some() {
            bail!("GraphQL errors: {body}");
        }
        Ok(body["data"].clone())
    }

    /// A new tenant `tenant`, an environment `prod` in it and an API key `app` granted every
    /// function: where most end-to-end tests start.
    pub async fn test_env(&self, tenant: &str) -> Result<TestEnv> {
        let t = self
            .graphql_ok(
                "mutation($n: String!) { createTenant(input: {name: $n}) { id } }",
                json!({"n": tenant}),
            )
            .await?;
        let tenant_id = t["createTenant"]["id"].as_str().unwrap().to_string();
        let e = self
            .graphql_ok(
                "mutation($t: ID!) { createEnvironment(input: {tenantId: $t, name: \"prod\"}) { id } }",
                json!({"t": tenant_id}),
            )
            .await?;
        let env_id = e["createEnvironment"]["id"].as_str().unwrap().to_string();
        let key = self.create_api_key(&env_id, "app").await?;
        Ok(TestEnv {
            tenant_id,
            env_id,
            key,
        })
    }

    /// A new API key `name` in environment `env_id`, granted every function; its plaintext.
    pub async fn create_api_key(&self, env_id: &str, name: &str) -> Result<String> {
        let k = self
            .graphql_ok(
                "mutation($e: ID!, $n: String!) { createApiKey(input: {environmentId: $e, name: $n, functions: [\"*\"]}) { key } }",
                json!({"e": env_id, "n": name}),
            )
            .await?;
        Ok(k["createApiKey"]["key"].as_str().unwrap().to_string())
    }

    /// `createFunction` with `input` (a `CreateFunctionInput` without its tenant) in `env`'s
    /// tenant.
    pub async fn create_function(&self, env: &TestEnv, mut input: Value) -> Result<()> {
        input["tenantId"] = json!(env.tenant_id);
        self.graphql_ok(
            "mutation($input: CreateFunctionInput!) { createFunction(input: $input) { id } }",
            json!({"input": input}),
        )
        .await?;
        Ok(())
    }

    /// Set secret `name` in `env`, bound to 127.0.0.1 (where every test upstream listens);
    /// returns its id.
    pub async fn set_secret(&self, env: &TestEnv, name: &str, value: &str) -> Result<String> {
        let data = self
            .graphql_ok(
                "mutation($e: ID!, $name: String!, $value: String!) {
                   setSecret(input: {environmentId: $e, name: $name, value: $value, allowedHosts: [\"127.0.0.1\"]}) { id } }",
                json!({"e": env.env_id, "name": name, "value": value}),
            )
            .await?;
        Ok(data["setSecret"]["id"].as_str().unwrap().to_string())
    }

    /// `POST /v1/functions/{name}/invoke` with `key` and a raw body.
    pub async fn invoke_raw(
        &self,
        function: &str,
        key: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Result<reqwest::Response> {
        let mut request = self
            .client
            .post(format!("{}/v1/functions/{function}/invoke", self.data_url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        Ok(request.send().await?)
    }

    /// Invoke with JSON arguments.
    pub async fn invoke(
        &self,
        function: &str,
        key: &str,
        args: Value,
    ) -> Result<reqwest::Response> {
        self.invoke_raw(function, Some(key), args.to_string()).await
    }

    /// Everything the Airlock processes printed so far (for leak scans and failure reports).
    pub fn logs(&self) -> String {
        self.processes
            .iter()
            .map(Process::output)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Fail if any Airlock process died.
    pub fn check_running(&mut self) -> Result<()> {
        self.processes
            .iter_mut()
            .try_for_each(Process::check_running)
    }
}

/// Start `airlock-data-plane` on `port`, fed from Redis under `prefix`.
async fn start_data_plane(
    name: &str,
    log_dir: &Path,
    prefix: &str,
    key_file: &Path,
    port: u16,
) -> Result<(Process, String)> {
    let mut command = Command::new(binary("airlock-data-plane"));
    command
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("REDIS_URL", "redis://127.0.0.1:6379")
        .env("AIRLOCK_REDIS_PREFIX", prefix)
        .env("AIRLOCK_SEAL_KEY_FILE", key_file)
        .env("RUST_LOG", "debug");
    let mut process = Process::spawn(name, command, log_dir)?;
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{url}/readyz"), &mut process).await?;
    Ok((process, url))
}

fn read_token(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("admin-token");
    let token =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(token.trim().to_string())
}

/// Every key and value Airlock keeps in Redis under `prefix` (strings, hashes, streams),
/// concatenated, for canary scans; then deletes those keys. Returns an error on an unknown type.
pub async fn take_redis_contents(prefix: &str) -> Result<(usize, Vec<u8>)> {
    let (mut conn, keys) = redis_keys(prefix).await?;
    let mut contents = Vec::new();
    for key in &keys {
        let kind: String = redis::cmd("TYPE").arg(key).query_async(&mut conn).await?;
        let command = match kind.as_str() {
            "string" => redis::cmd("GET").arg(key).clone(),
            "hash" => redis::cmd("HGETALL").arg(key).clone(),
            "stream" => redis::cmd("XRANGE").arg(key).arg("-").arg("+").clone(),
            other => bail!("unexpected Redis type {other} for {key}"),
        };
        let value: redis::Value = command.query_async(&mut conn).await?;
        contents.extend_from_slice(key.as_bytes());
        contents.extend_from_slice(&redis_bytes(&value));
    }
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok((keys.len(), contents))
}

/// Delete every Redis key under `prefix` without reading them (`UNLINK`: Redis frees them in
/// the background); returns how many there were. For a benchmark's keys, which can hold
/// hundreds of megabytes of events.
pub async fn delete_redis_keys(prefix: &str) -> Result<usize> {
    let (mut conn, keys) = redis_keys(prefix).await?;
    if !keys.is_empty() {
        redis::cmd("UNLINK")
            .arg(&keys)
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok(keys.len())
}

/// A connection to the local Redis and the keys under `prefix`.
async fn redis_keys(prefix: &str) -> Result<(redis::aio::MultiplexedConnection, Vec<String>)> {
    let client = redis::Client::open("redis://127.0.0.1:6379")?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await?;
    Ok((conn, keys))
}

/// Every string inside a Redis reply, concatenated.
fn redis_bytes(value: &redis::Value) -> Vec<u8> {
    match value {
        redis::Value::BulkString(bytes) => bytes.clone(),
        redis::Value::SimpleString(text) => text.clone().into_bytes(),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().flat_map(redis_bytes).collect()
        }
        redis::Value::Map(pairs) => pairs
            .iter()
            .flat_map(|(k, v)| [redis_bytes(k), redis_bytes(v)].concat())
            .collect(),
        _ => Vec::new(),
    }
}
