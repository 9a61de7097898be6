//! The benchmark run: processes, loads and measurements, in the order the table reads.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_control_plane::publish::{RedisTransport, SnapshotTransport as _};
use airlock_e2e::oidc::{OidcClient, OidcConfig, OidcProvider, Ttl};
use airlock_e2e::{binary, free_port, Airlock, PostgresDb, Process};
use airlock_shared::keys::RedisNames;
use anyhow::{bail, Context as _, Result};
use serde_json::json;

use crate::fixture::{self, Size};
use crate::load::{self, Target};
use crate::pingora_proxy::Flavor;
use crate::procs::{self, CpuPlan};
use crate::report::{self, Measured, Report};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// A short run with a small environment that only checks the harness works (CI).
    #[arg(long)]
    pub smoke: bool,
    /// Seconds per load run (wrk and each oha rate) [default: 10, 1 with --smoke].
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Connections per load generator.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// Keep the work directory (configs, process logs) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// Size of the environment loaded into the data plane: keys,functions,secrets (default
    /// 10000,1000,10000; 100,10,20 with --smoke).
    #[arg(long, value_parser = parse_size)]
    pub environment: Option<Size>,
    /// Start everything, print each scenario's URL and process id, and wait (until killed)
    /// instead of measuring: for profiling one process under a load of your own.
    #[arg(long)]
    pub hold: bool,
}

/// Scenario letters and what each measures, in table order.
pub const SCENARIOS: [(&str, &str); 5] = [
    ("A", "direct to nginx"),
    ("B", "nginx reverse proxy"),
    ("C", "bare Pingora proxy"),
    ("D", "Airlock, warm"),
    ("F", "Airlock, OAuth token"),
];

struct System {
    /// The process whose CPU and memory are measured for each scenario.
    pids: [u32; 5],
    targets: [Target; 5],
}

/// Scenario F's client at the OAuth provider.
const OAUTH_CLIENT_ID: &str = "airlock-bench";
const OAUTH_SCOPE: &str = "api:read";

/// The OAuth provider of scenario F (oidc-provider under Node.js), with one
/// client-credentials client whose tokens live a day: no refresh during a run.
async fn oauth_provider(dir: &Path, client_secret: &str) -> Result<OidcProvider> {
    let day = 86_400;
    OidcProvider::start(
        dir,
        OidcConfig {
            clients: vec![OidcClient::service(OAUTH_CLIENT_ID, client_secret).scope(OAUTH_SCOPE)],
            ttl: Ttl {
                access_token: day,
                client_credentials: day,
                ..Ttl::default()
            },
            ..OidcConfig::default()
        },
    )
    .await
    .context("starting the OAuth provider of scenario F (e2e/oidc-provider)")
}

/// Run everything; `Ok(false)` when some request failed or scenario F did not make exactly
/// one token request (the numbers are then not valid).
pub async fn run(options: Options) -> Result<bool> {
    let plan = CpuPlan::detect()?;
    plan.pin_self()?;
    for tool in ["wrk", "oha", "taskset"] {
        if which(tool).is_none() {
            bail!(
                "{tool} is not installed: run scripts/bench, which installs what the harness needs"
            );
        }
    }
    let smoke = options.smoke;
    let seconds = Duration::from_secs(options.seconds.unwrap_or(if smoke { 1 } else { 10 }));
    let size = options.environment.unwrap_or(if smoke {
        Size {
            keys: 100,
            functions: 10,
            secrets: 20,
        }
    } else {
        Size {
            keys: 10_000,
            functions: 1_000,
            secrets: 10_000,
        }
    });
    let work = tempfile::Builder::new()
        .prefix("airlock-bench-")
        .tempdir()?;
    let dir = work.path().to_path_buf();
    println!(
        "CPUs: load generator {}, upstream {}, proxy under test {}; {} s per load run; environment: {} keys, {} functions, {} secrets",
        plan.generator, plan.upstream, plan.proxy, seconds.as_secs(), size.keys, size.functions, size.secrets
    );

    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let names = RedisNames::new(format!("airlock-bench-{run}"));
    let publisher = RedisTransport::connect("redis://127.0.0.1:6379", names.clone()).await?;

    let (upstream_port, nginx_port, pingora_port, airlock_port) =
        (free_port(), free_port(), free_port(), free_port());
    let mut processes: Vec<Process> = Vec::new();
    processes.push(crate::nginx::upstream(&plan.upstream, upstream_port, &dir)?);
    processes.push(crate::nginx::proxy(
        &plan.proxy,
        nginx_port,
        upstream_port,
        &dir,
    )?);
    processes.push(pingora_proxy(
        &plan,
        pingora_port,
        upstream_port,
        Flavor::ProxyHttp { chunked: false },
        &dir,
    )?);
    let chunked_port = free_port();
    processes.push(pingora_proxy(
        &plan,
        chunked_port,
        upstream_port,
        Flavor::ProxyHttp { chunked: true },
        &dir,
    )?);
    let key_file = dir.join("seal.key");
    let sealing = airlock_control_plane::files::keygen(&key_file)?;
    let upstream_url = format!("http://127.0.0.1:{upstream_port}");
    let oauth_secret = format!("bench-client-secret-{run}");
    let provider = oauth_provider(&dir, &oauth_secret).await?;
    let token_url = provider.token_endpoint();
    let oauth = fixture::OAuthProvider {
        issuer: provider.issuer(),
        token_url: &token_url,
        client_id: OAUTH_CLIENT_ID,
        client_secret: &oauth_secret,
        scope: OAUTH_SCOPE,
    };
    let built = Instant::now();
    let mut fixture = fixture::build(&run, size, &upstream_url, &oauth, &sealing, 1)?;
    println!(
        "built and sealed the environment in {} ms ({:.1} MB of {} snapshot, {:.1} MB as JSON)",
        built.elapsed().as_millis(),
        publisher.encoding().encode(&fixture.snapshot)?.len() as f64 / 1e6,
        publisher.encoding(),
        serde_json::to_vec(&fixture.snapshot)?.len() as f64 / 1e6
    );
    publisher.send(&fixture.snapshot).await?;
    let started = Instant::now();
    processes.push(procs::spawn_pinned(
        "airlock-data-plane",
        &plan.proxy,
        &binary("airlock-data-plane"),
        &[
            format!("--listen=127.0.0.1:{airlock_port}"),
            "--redis-url=redis://127.0.0.1:6379".into(),
            format!("--redis-prefix={}", names.prefix()),
            format!("--seal-key-file={}", key_file.display()),
            "--threads=1".into(),
        ],
        &[("RUST_LOG", "warn".into())],
        &dir,
    )?);
    let sessions_port = free_port();
    processes.push(pingora_proxy(
        &plan,
        sessions_port,
        upstream_port,
        Flavor::Sessions,
        &dir,
    )?);
    let airlock_url = format!("http://127.0.0.1:{airlock_port}");
    let result = measure(
        &options,
        &plan,
        seconds,
        size,
        &dir,
        &mut processes,
        &publisher,
        &mut fixture,
        [
            upstream_port,
            nginx_port,
            pingora_port,
            airlock_port,
            chunked_port,
            sessions_port,
        ],
        started,
        &airlock_url,
        &run,
        &provider,
    )
    .await;
    // Stopped first, so that no late event or report recreates a key.
    drop(processes);
    drop(provider);
    if let Err(error) = airlock_e2e::delete_redis_keys(names.prefix()).await {
        eprintln!(
            "could not delete the run's Redis keys ({}:*): {error:#}",
            names.prefix()
        );
    }
    if options.keep || result.is_err() {
        let kept = work.keep();
        eprintln!("work directory (configs, logs) kept: {}", kept.display());
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    options: &Options,
    plan: &CpuPlan,
    seconds: Duration,
    size: Size,
    dir: &Path,
    processes: &mut [Process],
    publisher: &RedisTransport,
    fixture: &mut fixture::Fixture,
    ports: [u16; 6],
    started: Instant,
    airlock_url: &str,
    run: &str,
    provider: &OidcProvider,
) -> Result<bool> {
    let client = reqwest::Client::new();
    let static_auth = (
        "Authorization".to_string(),
        format!("Bearer {}", fixture.key),
    );
    let function = fixture::function_name(0);
    let plain = |port: u16| Target {
        url: format!("http://127.0.0.1:{port}/{function}"),
        method: "GET",
        headers: vec![static_auth.clone()],
        body: None,
    };
    let system = System {
        pids: [
            processes[0].id(),
            processes[1].id(),
            processes[2].id(),
            processes[4].id(),
            processes[4].id(),
        ],
        targets: [
            plain(ports[0]),
            plain(ports[1]),
            plain(ports[2]),
            invoke_target(airlock_url, &function, &fixture.key),
            invoke_target(airlock_url, fixture::OAUTH_FUNCTION, &fixture.key),
        ],
    };

    // Everything answers before anything is measured.
    for process in processes.iter_mut().take(4) {
        process.check_running()?;
    }
    for target in &system.targets[..3] {
        wait_for_200(&client, target, Duration::from_secs(10)).await?;
    }
    wait_for_200(&client, &system.targets[3], Duration::from_secs(60))
        .await
        .context("Airlock's data plane never served the benchmark function")?;
    let first_serve = started.elapsed();
    let (rss_loaded, _) = procs::rss_bytes(system.pids[3])?;
    // F's first request obtains the token (client credentials); every later one reuses it.
    let tokens_before = provider.token_requests().await?.total;
    wait_for_200(&client, &system.targets[4], Duration::from_secs(30))
        .await
        .context("Airlock's data plane never served the OAuth function (scenario F)")?;
    let tokens_warm = provider.token_requests().await?.total;
    if options.hold {
        for (i, (letter, what)) in SCENARIOS.iter().enumerate() {
            let target = &system.targets[i];
            println!(
                "{letter} {what}: pid {} {} {} headers {:?} body {:?}",
                system.pids[i], target.method, target.url, target.headers, target.body
            );
        }
        println!("holding; stop with Ctrl-C or SIGTERM");
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        return Ok(true);
    }

    let mut measured: Vec<Measured> = Vec::new();
    for (i, (letter, what)) in SCENARIOS.iter().enumerate() {
        let target = &system.targets[i];
        // Warm-up: fill connection pools and caches; not measured.
        load::wrk(
            &plan.generator,
            target,
            Duration::from_secs(1),
            options.connections,
            dir,
        )?;
        let cpu_before = procs::cpu_micros(system.pids[i])?;
        let peak = load::wrk(&plan.generator, target, seconds, options.connections, dir)?;
        let cpu = procs::cpu_micros(system.pids[i])? - cpu_before;
        println!(
            "{letter} {what}: {:.0} req/s, {} non-2xx, {} socket errors",
            peak.rate(),
            peak.non_2xx,
            peak.socket_errors
        );
        measured.push(Measured::new(letter, what, peak, cpu));
    }
    let decomposition = decompose(
        options,
        plan,
        seconds,
        dir,
        &system,
        &processes[3],
        ports[4],
        &processes[5],
        ports[5],
        airlock_url,
        &fixture.key,
    )
    .await?;
    // The loads (50 % and 80 % of B's peak), then 50 % of D's own peak: a rate
    // Airlock can sustain, so its latency there is not queueing.
    let (b_peak, d_peak) = (measured[1].peak.rate(), measured[3].peak.rate());
    for (load_index, rate) in [b_peak * 0.5, b_peak * 0.8, d_peak * 0.5]
        .into_iter()
        .enumerate()
    {
        let rate = rate.max(10.0);
        for (i, entry) in measured.iter_mut().enumerate() {
            let cpu_before = procs::cpu_micros(system.pids[i])?;
            let latency = load::oha(
                &plan.generator,
                &system.targets[i],
                rate,
                seconds,
                options.connections,
            )?;
            let cpu = procs::cpu_micros(system.pids[i])? - cpu_before;
            println!(
                "{} at {:.0} req/s (achieved {:.0}): p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, {} failed",
                entry.letter,
                rate,
                latency.achieved,
                latency.micros("p50"),
                latency.micros("p99"),
                latency.micros("p99.9"),
                latency.failures()
            );
            entry.set_latency(load_index, latency, cpu);
        }
    }
    for (i, entry) in measured.iter_mut().enumerate() {
        entry.rss = procs::rss_bytes(system.pids[i])?;
    }
    let oauth_tokens = report::TokenRequests {
        first_use: tokens_warm - tokens_before,
        during_runs: provider.token_requests().await?.total - tokens_warm,
    };

    let cold = cold_secrets(
        &client,
        dir,
        publisher,
        fixture,
        run,
        airlock_url,
        &system.targets[0].url,
        size,
        options.smoke,
    )
    .await?;
    let rebuild =
        rebuild_times(&client, publisher, fixture, run, airlock_url, options.smoke).await?;
    let propagation = propagation_times(
        &client,
        &format!("http://127.0.0.1:{}", ports[0]),
        options.smoke,
    )
    .await?;
    // The data plane returns freed memory once changes have stopped for a second, on a thread
    // that runs when its CPU is otherwise idle (`data-plane/src/memory.rs`); the propagation
    // step just run shares that CPU. Its resident set is read once it has had that quiet.
    if !options.smoke {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let report = Report {
        smoke: options.smoke,
        size,
        first_serve,
        rss_loaded,
        rss_after: procs::rss_bytes(system.pids[3])?,
        scenarios: measured,
        cold,
        rebuild,
        propagation,
        decomposition,
        oauth_tokens,
    };
    report::print(&report);
    Ok(report.valid())
}

/// Scenario C (or a variant of the C-to-D steps, by `flavor`): this binary's
/// `pingora-proxy` on the proxy's CPUs.
fn pingora_proxy(
    plan: &CpuPlan,
    port: u16,
    upstream_port: u16,
    flavor: Flavor,
    dir: &Path,
) -> Result<Process> {
    let mut args = vec![
        "pingora-proxy".to_string(),
        format!("--listen=127.0.0.1:{port}"),
        format!("--upstream=127.0.0.1:{upstream_port}"),
        "--threads=1".into(),
    ];
    let name = match flavor {
        Flavor::ProxyHttp { chunked: false } => "pingora-proxy",
        Flavor::ProxyHttp { chunked: true } => {
            args.push("--chunked".into());
            "pingora-proxy-chunked"
        }
        Flavor::Sessions => {
            args.push("--sessions".into());
            "pingora-sessions-proxy"
        }
    };
    procs::spawn_pinned(
        name,
        &plan.proxy,
        &std::env::current_exe()?,
        &args,
        &[("RUST_LOG", "warn".into())],
        dir,
    )
}

/// `POST {airlock_url}/v1/functions/{function}/invoke` with `{}` and API key `key`.
pub(crate) fn invoke_target(airlock_url: &str, function: &str, key: &str) -> Target {
    Target {
        url: format!("{airlock_url}/v1/functions/{function}/invoke"),
        method: "POST",
        headers: vec![
            ("Authorization".into(), format!("Bearer {key}")),
            ("Content-Type".into(), "application/json".into()),
        ],
        body: Some("{}".into()),
    }
}

/// Peak throughput of the steps between C and D: Pingora sending responses chunked (as
/// Airlock does for the compressed responses it decodes to redact; identity ones keep their
/// `content-length`), C written on pingora-core's sessions instead of `ProxyHttp` (as the data
/// plane is), and Airlock invoking a function that injects no secret (no redaction, no
/// `secret.used` event).
#[allow(clippy::too_many_arguments)]
async fn decompose(
    options: &Options,
    plan: &CpuPlan,
    seconds: Duration,
    dir: &Path,
    system: &System,
    chunked: &Process,
    chunked_port: u16,
    sessions: &Process,
    sessions_port: u16,
    airlock_url: &str,
    key: &str,
) -> Result<Vec<report::Step>> {
    let chunked_target = Target {
        url: format!(
            "http://127.0.0.1:{chunked_port}/{}",
            fixture::function_name(0)
        ),
        ..system.targets[2].clone()
    };
    let sessions_target = Target {
        url: format!(
            "http://127.0.0.1:{sessions_port}/{}",
            fixture::function_name(0)
        ),
        ..system.targets[2].clone()
    };
    let plain_target = invoke_target(airlock_url, fixture::PLAIN_FUNCTION, key);
    let client = reqwest::Client::new();
    wait_for_200(&client, &chunked_target, Duration::from_secs(10)).await?;
    wait_for_200(&client, &sessions_target, Duration::from_secs(10)).await?;
    wait_for_200(&client, &plain_target, Duration::from_secs(10)).await?;
    let mut steps = Vec::new();
    for (what, target, pid) in [
        ("C, responses chunked", chunked_target, chunked.id()),
        (
            "C on pingora-core's sessions (no ProxyHttp)",
            sessions_target,
            sessions.id(),
        ),
        ("D, function without secrets", plain_target, system.pids[3]),
    ] {
        load::wrk(
            &plan.generator,
            &target,
            Duration::from_secs(1),
            options.connections,
            dir,
        )?;
        let cpu_before = procs::cpu_micros(pid)?;
        let peak = load::wrk(&plan.generator, &target, seconds, options.connections, dir)?;
        let cpu = procs::cpu_micros(pid)? - cpu_before;
        println!(
            "{what}: {:.0} req/s, {} non-2xx, {} socket errors",
            peak.rate(),
            peak.non_2xx,
            peak.socket_errors
        );
        steps.push(report::Step { what, peak, cpu });
    }
    Ok(steps)
}

/// GET/POST `target` until it answers 200 (at most `within`).
async fn wait_for_200(client: &reqwest::Client, target: &Target, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let response = send(client, target).await;
        match response {
            Ok(response) if response.status() == 200 => return Ok(()),
            Ok(response) if Instant::now() > deadline => {
                let status = response.status();
                bail!(
                    "{} answered {status}: {}",
                    target.url,
                    response.text().await.unwrap_or_default()
                )
            }
            Err(error) if Instant::now() > deadline => bail!("{} unreachable: {error}", target.url),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

pub(crate) async fn send(
    client: &reqwest::Client,
    target: &Target,
) -> reqwest::Result<reqwest::Response> {
    let mut request = client.request(target.method.parse().expect("a method"), &target.url);
    for (name, value) in &target.headers {
        request = request.header(name, value);
    }
    if let Some(body) = &target.body {
        request = request.body(body.clone());
    }
    request.send().await
}

/// Latencies (µs) of `targets` sent open loop at `rate` per second: each is measured from
/// when it was due, not from when it was sent, so a slow answer is not hidden by the next
/// request waiting for it.
async fn open_loop(client: &reqwest::Client, targets: Vec<Target>, rate: f64) -> Result<Vec<f64>> {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(targets.len());
    for (i, target) in targets.into_iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let response = send(&client, &target).await?;
            let status = response.status();
            response.bytes().await?;
            let micros = due.elapsed().as_secs_f64() * 1e6;
            anyhow::ensure!(status == 200, "{} answered {status}", target.url);
            Ok::<f64, anyhow::Error>(micros)
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    for task in tasks {
        latencies.push(task.await??);
    }
    Ok(latencies)
}

/// Scenario E: every request injects a secret not used since its snapshot was applied.
/// Each round republishes the environment (a new revision: every secret cold again), then
/// invokes each function once (each injects its own secret), open loop; the same requests
/// again (warm) and directly to the upstream (A) are the comparison. Every latency, with
/// when it was due after the round's go-live, is written to `e-latencies.csv` in `dir`
/// (kept with `--keep`): where in a round the slow requests fall.
#[allow(clippy::too_many_arguments)]
async fn cold_secrets(
    client: &reqwest::Client,
    dir: &Path,
    publisher: &RedisTransport,
    fixture: &mut fixture::Fixture,
    run: &str,
    airlock_url: &str,
    direct_url: &str,
    size: Size,
    smoke: bool,
) -> Result<report::Cold> {
    let rounds = if smoke { 1 } else { 3 };
    let rate = 500.0;
    let functions: Vec<usize> = (1..size.functions).collect();
    let key = fixture.key.clone();
    let invoke = |i: usize| invoke_target(airlock_url, &fixture::function_name(i), &key);
    let direct_base = direct_url
        .rsplit_once('/')
        .map_or(direct_url, |(base, _)| base);
    let direct = |i: usize| Target {
        url: format!("{direct_base}/{}", fixture::function_name(i)),
        method: "GET",
        headers: vec![("Authorization".into(), format!("Bearer {key}"))],
        body: None,
    };
    let (mut cold, mut warm, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    let mut csv = String::from("round,phase,due_ms,latency_us\n");
    for round in 0..rounds {
        republish(client, publisher, fixture, run, airlock_url).await?;
        let live = Instant::now();
        for (phase, latencies, targets) in [
            (
                "cold",
                &mut cold,
                functions.iter().map(|&i| invoke(i)).collect::<Vec<_>>(),
            ),
            (
                "warm",
                &mut warm,
                functions.iter().map(|&i| invoke(i)).collect(),
            ),
            (
                "direct",
                &mut baseline,
                functions.iter().map(|&i| direct(i)).collect(),
            ),
        ] {
            let offset = live.elapsed().as_secs_f64() * 1e3;
            let measured = open_loop(client, targets, rate).await?;
            for (i, micros) in measured.iter().enumerate() {
                let due_ms = offset + i as f64 * 1e3 / rate;
                csv.push_str(&format!("{round},{phase},{due_ms:.1},{micros:.0}\n"));
            }
            latencies.extend(measured);
        }
    }
    std::fs::write(dir.join("e-latencies.csv"), csv).context("cannot write e-latencies.csv")?;
    Ok(report::Cold {
        rate,
        cold: report::percentiles(cold),
        warm: report::percentiles(warm),
        direct: report::percentiles(baseline),
    })
}

/// Publish the environment again with one more key; returns once the data plane accepts that
/// key, and how long that took after the publish.
async fn republish(
    client: &reqwest::Client,
    publisher: &RedisTransport,
    fixture: &mut fixture::Fixture,
    run: &str,
    airlock_url: &str,
) -> Result<Duration> {
    let marker = fixture.next_revision_with_marker(run);
    let snapshot = &fixture.snapshot;
    let probe = invoke_target(airlock_url, &fixture::function_name(0), &marker);
    let published = Instant::now();
    publisher.send(snapshot).await?;
    let deadline = published + Duration::from_secs(30);
    loop {
        if send(client, &probe).await?.status() == 200 {
            return Ok(published.elapsed());
        }
        if Instant::now() > deadline {
            bail!(
                "revision {} was not served within 30 s of its publish",
                snapshot.revision
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// How long a snapshot of the benchmark's size takes from publish to served (Redis GET,
/// parse, compile, swap), several times.
async fn rebuild_times(
    client: &reqwest::Client,
    publisher: &RedisTransport,
    fixture: &mut fixture::Fixture,
    run: &str,
    airlock_url: &str,
    smoke: bool,
) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    for _ in 0..if smoke { 2 } else { 10 } {
        times.push(republish(client, publisher, fixture, run, airlock_url).await?);
    }
    Ok(times)
}

/// A change made through the control plane's GraphQL API (a new API key), until both data
/// planes of a split deployment (`airlock serve` + two `airlock-data-plane`, PostgreSQL,
/// Redis) accept it; measured from when the mutation was sent.
async fn propagation_times(
    client: &reqwest::Client,
    upstream: &str,
    smoke: bool,
) -> Result<Vec<Duration>> {
    let database = PostgresDb::create()?;
    let prefix = format!(
        "airlock-bench-cp-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut airlock = Airlock::split(&database.url, &prefix).await?;
    let second = airlock.add_data_plane().await?;
    let planes = [airlock.data_url.clone(), second];
    let tenant = airlock
        .graphql_ok(
            "mutation { createTenant(input: {name: \"bench\"}) { id } }",
            json!({}),
        )
        .await?["createTenant"]["id"]
        .as_str()
        .context("no tenant id")?
        .to_string();
    let env = airlock
        .graphql_ok(
            "mutation($t: ID!) { createEnvironment(input: {tenantId: $t, name: \"prod\"}) { id } }",
            json!({"t": tenant}),
        )
        .await?["createEnvironment"]["id"]
        .as_str()
        .context("no environment id")?
        .to_string();
    airlock
        .graphql_ok(
            "mutation($input: CreateFunctionInput!) { createFunction(input: $input) { id } }",
            json!({"input": {"tenantId": tenant, "name": "probe", "method": "GET",
                             "url": format!("{upstream}/probe")}}),
        )
        .await?;
    let mut times = Vec::new();
    for i in 0..if smoke { 3 } else { 100 } {
        let sent = Instant::now();
        let key = airlock
            .graphql_ok(
                "mutation($e: ID!, $n: String!) { createApiKey(input: {environmentId: $e, name: $n, functions: [\"probe\"]}) { key } }",
                json!({"e": env, "n": format!("k{i}")}),
            )
            .await?["createApiKey"]["key"]
            .as_str()
            .context("no key")?
            .to_string();
        let mut slowest = Duration::ZERO;
        for plane in &planes {
            let url = format!("{plane}/v1/functions/probe/invoke");
            loop {
                let status = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await?
                    .status();
                if status == 200 {
                    break;
                }
                if sent.elapsed() > Duration::from_secs(10) {
                    bail!(
                        "a new key was not accepted by {plane} within 10 s (last status {status})"
                    );
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            slowest = slowest.max(sent.elapsed());
        }
        times.push(slowest);
    }
    airlock.check_running()?;
    drop(airlock);
    airlock_e2e::delete_redis_keys(&prefix).await?;
    Ok(times)
}

pub(crate) fn parse_size(text: &str) -> Result<Size, String> {
    let numbers: Vec<usize> = text
        .split(',')
        .map(|n| n.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| "expected KEYS,FUNCTIONS,SECRETS, three numbers".to_string())?;
    match numbers[..] {
        [keys, functions, secrets] if keys >= 1 && functions >= 2 && secrets >= functions => {
            Ok(Size { keys, functions, secrets })
        }
        _ => Err("expected KEYS,FUNCTIONS,SECRETS with at least 1 key, 2 functions and a secret per function".into()),
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|path| path.exists())
    })
}
