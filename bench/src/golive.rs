//! `airlock-bench go-live`: where a large snapshot's time to go live goes, without load.
//!
//! Starts one or more data planes (`--data-plane`, default the one built beside this
//! binary), each on its own Redis prefix with the harness's environment, then republishes a
//! new revision (one new key) to each, round by round, alternating between them, and times
//! each from the publish to the first request the new key gets through, as the harness's
//! "snapshot go-live" does (`docs/BENCHMARKS.md`). Per publish it prints the publisher's
//! share (encoding the snapshot, then `SET`/`HSET`/`PUBLISH`), the data plane's own phases
//! from its debug log (read, decode, compile, swap) and its minor page faults over the cycle;
//! at the end how often and how long it returned freed memory to the system, and its RSS now
//! and at its peak.
//!
//! No load generator runs: it can measure beside other work (read the ratios between data
//! planes of one run, not the absolute times). The probe's function points at a closed port,
//! so an accepted key answers 502 quickly; a key not yet live answers 401.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock_control_plane::publish::{RedisTransport, SnapshotTransport as _};
use airlock_e2e::{binary, free_port, Process};
use airlock_shared::keys::RedisNames;
use airlock_shared::wire::SnapshotEncoding;
use anyhow::{bail, Context as _, Result};

use crate::fixture::{self, Size};
use crate::procs;
use crate::report::percentiles;
use crate::scenarios::{invoke_target, parse_size, send};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Size of the environment: keys,functions,secrets.
    #[arg(long, value_parser = parse_size, default_value = "10000,1000,10000")]
    pub environment: Size,
    /// Timed publishes per data plane.
    #[arg(long, default_value_t = 10)]
    pub publishes: usize,
    /// Pause between rounds of publishes, in milliseconds (0: back to back, as the harness
    /// publishes; over a second: each publish finds the data plane's freed memory returned
    /// to the system, as after a quiet while).
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
    /// CPUs the data planes run on (a `taskset -c` list).
    #[arg(long, default_value = "1")]
    pub cpus: String,
    /// A data plane binary to measure, optionally followed by `=ENCODING`: the snapshot
    /// encoding it is sent, `binary` (the default) or `json`. Repeat to compare binaries or
    /// encodings in one run (they alternate, publish by publish); default:
    /// `airlock-data-plane` beside this binary.
    #[arg(long = "data-plane", value_parser = parse_plane)]
    pub data_planes: Vec<PlaneSpec>,
    /// Keep the work directory (the data planes' logs).
    #[arg(long)]
    pub keep: bool,
}

/// A data plane to measure and the encoding it is sent.
#[derive(Debug, Clone)]
pub struct PlaneSpec {
    binary: PathBuf,
    encoding: SnapshotEncoding,
}

fn parse_plane(text: &str) -> Result<PlaneSpec, String> {
    let (path, encoding) = match text.rsplit_once('=') {
        Some((path, name)) => (path, name.parse().map_err(|e| format!("{e}"))?),
        None => (text, SnapshotEncoding::default()),
    };
    Ok(PlaneSpec {
        binary: PathBuf::from(path),
        encoding,
    })
}

/// One data plane under measurement.
struct Plane {
    spec: PlaneSpec,
    process: Process,
    publisher: RedisTransport,
    fixture: fixture::Fixture,
    url: String,
    cycles: Vec<Cycle>,
}

/// One timed publish.
#[derive(Debug, Default, Clone)]
struct Cycle {
    /// Encoding the snapshot (the publisher's CPU work), measured on its own.
    encode: Duration,
    /// `RedisTransport::send`: encoding again, then the `MULTI` round trip.
    send: Duration,
    /// Publish to first accepted request.
    live: Duration,
    /// Bytes published.
    bytes: usize,
    /// The data plane's minor page faults from this publish to the next.
    minor_faults: u64,
    /// From the data plane's log, µs.
    read_us: Option<u64>,
    decode_us: Option<u64>,
    compile_us: Option<u64>,
    swap_us: Option<u64>,
}

pub async fn run(options: Options) -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix("airlock-golive-")
        .tempdir()?;
    let dir = work.path().to_path_buf();
    let specs = if options.data_planes.is_empty() {
        vec![PlaneSpec {
            binary: binary("airlock-data-plane"),
            encoding: SnapshotEncoding::default(),
        }]
    } else {
        options.data_planes.clone()
    };
    let key_file = dir.join("seal.key");
    let sealing = airlock_control_plane::files::keygen(&key_file)?;
    // Nothing listens there: an accepted key gets a quick 502, an unknown one a 401.
    let upstream = format!("http://127.0.0.1:{}", free_port());
    let oauth = fixture::OAuthProvider {
        issuer: "http://127.0.0.1:9/",
        token_url: "http://127.0.0.1:9/token",
        client_id: "golive",
        client_secret: "golive-client-secret",
        scope: "api:read",
    };
    let result = measure(&options, &specs, &dir, &key_file, |run| {
        fixture::build(run, options.environment, &upstream, &oauth, &sealing, 1)
    })
    .await;
    if options.keep || result.is_err() {
        eprintln!("work directory (logs) kept: {}", work.keep().display());
    }
    result
}

async fn measure(
    options: &Options,
    specs: &[PlaneSpec],
    dir: &std::path::Path,
    key_file: &std::path::Path,
    build: impl Fn(&str) -> Result<fixture::Fixture>,
) -> Result<()> {
    let mut planes = Vec::new();
    let mut prefixes = Vec::new();
    let result = async {
        for (i, spec) in specs.iter().enumerate() {
            let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
            let names = RedisNames::new(format!("airlock-golive-{run}"));
            prefixes.push(names.prefix().to_string());
            let publisher = RedisTransport::connect("redis://127.0.0.1:6379", names.clone())
                .await?
                .with_encoding(spec.encoding);
            let fixture = build(&run)?;
            publisher.send(&fixture.snapshot).await?;
            let port = free_port();
            let process = procs::spawn_pinned(
                &format!("data-plane-{i}"),
                &options.cpus,
                &spec.binary,
                &[
                    format!("--listen=127.0.0.1:{port}"),
                    "--redis-url=redis://127.0.0.1:6379".into(),
                    format!("--redis-prefix={}", names.prefix()),
                    format!("--seal-key-file={}", key_file.display()),
                    "--threads=1".into(),
                ],
                &[(
                    "RUST_LOG",
                    "warn,airlock_data_plane::sync=debug,airlock_data_plane::snapshot=info,airlock_data_plane::memory=debug".into(),
                )],
                dir,
            )?;
            planes.push(Plane {
                spec: spec.clone(),
                process,
                publisher,
                url: format!("http://127.0.0.1:{port}"),
                fixture,
                cycles: Vec::new(),
            });
        }
        let client = reqwest::Client::new();
        for plane in &mut planes {
            let probe = invoke_target(&plane.url, &fixture::function_name(0), &plane.fixture.key);
            wait_until_accepted(&client, &probe, Duration::from_secs(60))
                .await
                .with_context(|| format!("{} never served", plane.spec.binary.display()))?;
        }
        for round in 0..options.publishes {
            if round > 0 && options.pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(options.pause_ms)).await;
            }
            for plane in &mut planes {
                let cycle = republish(&client, plane).await?;
                plane.cycles.push(cycle);
            }
        }
        // The last cycle's log lines, and a return of freed memory that waits for the config to
        // be quiet for a second.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        for plane in &mut planes {
            let faults = minor_faults(plane.process.id())?;
            close_fault_counts(&mut plane.cycles, faults);
            let log = plane.process.output();
            attach_log_phases(&mut plane.cycles, &log);
            print(plane, &trims(&log))?;
        }
        Ok(())
    }
    .await;
    drop(planes);
    for prefix in prefixes {
        if let Err(error) = airlock_e2e::delete_redis_keys(&prefix).await {
            eprintln!("could not delete the Redis keys {prefix}:*: {error:#}");
        }
    }
    result
}

/// Publish a new revision with one new key and wait until the data plane accepts that key.
async fn republish(client: &reqwest::Client, plane: &mut Plane) -> Result<Cycle> {
    let marker = plane.fixture.next_revision_with_marker("golive");
    let snapshot = &plane.fixture.snapshot;
    let probe = invoke_target(&plane.url, &fixture::function_name(0), &marker);
    let encode_started = Instant::now();
    let bytes = plane.spec.encoding.encode(snapshot)?.len();
    let encode = encode_started.elapsed();
    let faults_before = minor_faults(plane.process.id())?;
    let published = Instant::now();
    plane.publisher.send(snapshot).await?;
    let send = published.elapsed();
    wait_until_accepted(client, &probe, Duration::from_secs(30)).await?;
    let live = published.elapsed();
    // Faults are counted from this publish to the next one (closed by the next cycle).
    if let Some(previous) = plane.cycles.last_mut() {
        previous.minor_faults = faults_before - previous.minor_faults;
    }
    Ok(Cycle {
        encode,
        send,
        live,
        bytes,
        minor_faults: faults_before,
        ..Cycle::default()
    })
}

/// Until then each cycle's `minor_faults` holds the count at its start.
fn close_fault_counts(cycles: &mut [Cycle], now: u64) {
    if let Some(last) = cycles.last_mut() {
        last.minor_faults = now - last.minor_faults;
    }
}

async fn wait_until_accepted(
    client: &reqwest::Client,
    probe: &crate::load::Target,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(response) = send(client, probe).await {
            if response.status() != 401 && response.status() != 503 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{} was not accepted within {within:?}", probe.url);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Minor page faults of a process so far (all its threads: `/proc/PID/stat` field 10).
fn minor_faults(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    Ok(rest
        .split_whitespace()
        .nth(7)
        .context("short /proc/<pid>/stat")?
        .parse()?)
}

/// The value of `name=` on a log line, as a number.
fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
}

/// The data plane's phases of each timed publish, from its log: the first snapshot read and
/// applied is the initial load, then one of each per publish.
fn attach_log_phases(cycles: &mut [Cycle], log: &str) {
    let lines = |message: &str| -> Vec<&str> {
        log.lines()
            .filter(|line| line.contains(message))
            .skip(1)
            .collect()
    };
    // Before the binary encoding the decode was logged as `parse_us`.
    let reads = lines("snapshot read from Redis");
    let applied = lines("environment snapshot applied");
    for (i, cycle) in cycles.iter_mut().enumerate() {
        if let Some(line) = reads.get(i) {
            cycle.read_us = field(line, "read_us");
            cycle.decode_us = field(line, "decode_us").or_else(|| field(line, "parse_us"));
        }
        if let Some(line) = applied.get(i) {
            cycle.compile_us = field(line, "compile_us");
            cycle.swap_us = field(line, "swap_us");
        }
    }
}

/// How long each return of freed memory to the system took, µs, in the order logged.
fn trims(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains("returned freed memory to the system"))
        .filter_map(|line| field(line, "elapsed_us"))
        .collect()
}

fn ms(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1e3)
}

fn us_as_ms(us: Option<u64>) -> String {
    us.map_or_else(|| "—".into(), |us| format!("{:.1}", us as f64 / 1e3))
}

fn print(plane: &Plane, trims: &[u64]) -> Result<()> {
    let (rss, peak) = procs::rss_bytes(plane.process.id())?;
    println!(
        "\n{} ({} snapshot, {} bytes)",
        plane.spec.binary.display(),
        plane.spec.encoding,
        plane.cycles.first().map_or(0, |c| c.bytes)
    );
    println!("| publish | live ms | encode ms | send ms | read ms | decode ms | compile ms | swap ms | minor faults |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, c) in plane.cycles.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            ms(c.live),
            ms(c.encode),
            ms(c.send),
            us_as_ms(c.read_us),
            us_as_ms(c.decode_us),
            us_as_ms(c.compile_us),
            us_as_ms(c.swap_us),
            c.minor_faults
        );
    }
    let median = |values: Vec<f64>| percentiles(values).p50;
    let of = |f: fn(&Cycle) -> Option<u64>| {
        median(
            plane
                .cycles
                .iter()
                .filter_map(f)
                .map(|us| us as f64 / 1e3)
                .collect(),
        )
    };
    let live = percentiles(
        plane
            .cycles
            .iter()
            .map(|c| c.live.as_secs_f64() * 1e3)
            .collect(),
    );
    println!(
        "live: p50 {:.1} ms, max {:.1} ms; medians: encode {:.1}, send {:.1}, read {:.1}, decode {:.1}, compile {:.1}, swap {:.1} ms, {:.0} minor faults; {} trims (median {:.1} ms); RSS {:.1} MB, peak {:.1} MB",
        live.p50,
        live.max,
        median(plane.cycles.iter().map(|c| c.encode.as_secs_f64() * 1e3).collect()),
        median(plane.cycles.iter().map(|c| c.send.as_secs_f64() * 1e3).collect()),
        of(|c| c.read_us),
        of(|c| c.decode_us),
        of(|c| c.compile_us),
        of(|c| c.swap_us),
        median(plane.cycles.iter().map(|c| c.minor_faults as f64).collect()),
        trims.len(),
        median(trims.iter().map(|&us| us as f64 / 1e3).collect()),
        rss as f64 / 1e6,
        peak as f64 / 1e6,
    );
    Ok(())
}
