//! Load generators: `wrk` for peak throughput (closed loop), `oha` at a fixed rate with
//! latency correction for latency (open loop: a slow response does not slow the arrivals, so
//! queueing shows in the percentiles instead of hiding as coordinated omission).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

/// What a scenario's clients send.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub method: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

/// wrk's outcome.
#[derive(Debug, Clone)]
pub struct Peak {
    pub requests: u64,
    pub seconds: f64,
    /// Responses whose status was not 2xx/3xx.
    pub non_2xx: u64,
    /// Connect, read, write and timeout errors.
    pub socket_errors: u64,
}

impl Peak {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// wrk prints its summary through this `done` hook as one JSON line, so nothing is scraped
/// from its human-readable output.
const WRK_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_SUMMARY {"requests":%d,"duration_us":%d,"status":%d,"socket":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout))
end
"#;

/// Peak throughput: `wrk` with one thread and `connections` connections for `duration`.
pub fn wrk(
    cpus: &str,
    target: &Target,
    duration: Duration,
    connections: u32,
    work_dir: &Path,
) -> Result<Peak> {
    let script = work_dir.join("wrk.lua");
    let mut lua = format!("wrk.method = {:?}\n", target.method);
    if let Some(body) = &target.body {
        lua.push_str(&format!("wrk.body = {body:?}\n"));
    }
    for (name, value) in &target.headers {
        lua.push_str(&format!("wrk.headers[{name:?}] = {value:?}\n"));
    }
    lua.push_str(WRK_SCRIPT);
    std::fs::write(&script, lua)?;
    let out = Command::new("taskset")
        .args(["-c", cpus, "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("-s")
        .arg(&script)
        .arg(&target.url)
        .output()
        .context("running wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRK_SUMMARY "))
        .with_context(|| format!("wrk printed no summary: {stdout}"))?;
    let summary: Value = serde_json::from_str(line)?;
    let field = |name: &str| summary[name].as_u64().unwrap_or(0);
    Ok(Peak {
        requests: field("requests"),
        seconds: field("duration_us") as f64 / 1e6,
        non_2xx: field("status"),
        socket_errors: field("socket"),
    })
}

/// oha's outcome at one rate.
#[derive(Debug, Clone)]
pub struct Latency {
    pub rate: f64,
    /// Achieved requests per second.
    pub achieved: f64,
    /// Percentiles in microseconds, by name (`p50`, `p99`, `p99.9`).
    pub percentiles: BTreeMap<String, f64>,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no response (connection errors, timeouts), by oha's description.
    pub errors: BTreeMap<String, u64>,
}

impl Latency {
    pub fn micros(&self, percentile: &str) -> f64 {
        self.percentiles
            .get(percentile)
            .copied()
            .unwrap_or(f64::NAN)
    }

    /// Requests that did not get a 2xx response.
    pub fn failures(&self) -> u64 {
        let bad_statuses: u64 = self
            .statuses
            .iter()
            .filter(|(code, _)| !(200..300).contains(*code))
            .map(|(_, n)| n)
            .sum();
        bad_statuses + self.errors.values().sum::<u64>()
    }
}

/// Latency at a fixed arrival rate: `oha -q RATE --latency-correction`, waiting for the
/// requests still open at the deadline.
pub fn oha(
    cpus: &str,
    target: &Target,
    rate: f64,
    duration: Duration,
    connections: u32,
) -> Result<Latency> {
    let mut command = Command::new("taskset");
    command
        .args(["-c", cpus, "oha", "--no-tui", "--output-format", "json"])
        .args(["-z", &format!("{}s", duration.as_secs().max(1))])
        .arg("-w")
        .args(["-q", &format!("{rate:.0}"), "--latency-correction"])
        .args(["-c", &connections.to_string()])
        .args(["-m", target.method]);
    for (name, value) in &target.headers {
        command.args(["-H", &format!("{name}: {value}")]);
    }
    if let Some(body) = &target.body {
        command.args(["-d", body]);
    }
    let out = command.arg(&target.url).output().context("running oha")?;
    if !out.status.success() {
        bail!(
            "oha failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: Value =
        serde_json::from_slice(&out.stdout).context("oha printed no JSON report")?;
    let percentiles = report["latencyPercentiles"]
        .as_object()
        .context("no latencyPercentiles in oha's report")?
        .iter()
        .filter_map(|(name, seconds)| Some((name.clone(), seconds.as_f64()? * 1e6)))
        .collect();
    let statuses = report["statusCodeDistribution"]
        .as_object()
        .map(|codes| {
            codes
                .iter()
                .filter_map(|(code, n)| Some((code.parse().ok()?, n.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let errors = report["errorDistribution"]
        .as_object()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|(what, n)| Some((what.clone(), n.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Latency {
        rate,
        achieved: report["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        percentiles,
        statuses,
        errors,
    })
}
