//! Processes under test: started pinned to CPUs with `taskset`, measured through `/proc`.

use std::path::Path;
use std::process::Command;

use airlock_e2e::Process;
use anyhow::{bail, Context as _, Result};

/// Which CPUs the load generator, the upstream and the proxy under test run on.
#[derive(Debug, Clone)]
pub struct CpuPlan {
    pub generator: String,
    pub upstream: String,
    pub proxy: String,
}

impl CpuPlan {
    /// Separate cores when there are three or more; on two cores the generator and the
    /// upstream share core 0 and the proxy has core 1 to itself. `AIRLOCK_BENCH_CPUS`
    /// (`generator,upstream,proxy`, each a `taskset -c` list) overrides.
    pub fn detect() -> Result<Self> {
        if let Ok(spec) = std::env::var("AIRLOCK_BENCH_CPUS") {
            let parts: Vec<&str> = spec.split(',').collect();
            let [generator, upstream, proxy] = parts[..] else {
                bail!("AIRLOCK_BENCH_CPUS must be generator,upstream,proxy (for example 0,1,2)");
            };
            return Ok(Self {
                generator: generator.into(),
                upstream: upstream.into(),
                proxy: proxy.into(),
            });
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(match cpus {
            0 | 1 => {
                bail!("the harness needs at least 2 CPUs to keep the proxy apart from the load")
            }
            2 => Self {
                generator: "0".into(),
                upstream: "0".into(),
                proxy: "1".into(),
            },
            _ => Self {
                generator: "0".into(),
                upstream: "1".into(),
                proxy: "2".into(),
            },
        })
    }

    /// Pin the harness itself (all its threads) to the generator's CPUs: the harness runs the
    /// generators and its own small clients there.
    pub fn pin_self(&self) -> Result<()> {
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", &self.generator])
            .arg(std::process::id().to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .context("running taskset (util-linux)")?;
        if !status.success() {
            bail!(
                "taskset could not pin the harness to CPUs {}",
                self.generator
            );
        }
        Ok(())
    }
}

/// `program args...` started on `cpus` (`taskset -c`; the pid is the program's, taskset
/// execs it), output in `<log_dir>/<name>.log`.
pub fn spawn_pinned(
    name: &str,
    cpus: &str,
    program: &Path,
    args: &[String],
    envs: &[(&str, String)],
    log_dir: &Path,
) -> Result<Process> {
    let mut command = Command::new("taskset");
    command
        .args(["-c", cpus])
        .arg(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v)));
    Process::spawn(name, command, log_dir)
}

/// CPU time (user + system, all threads) a process has used so far, in microseconds.
pub fn cpu_micros(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: fields are counted after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .context("short /proc/<pid>/stat")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<u64, _>>()?;
    Ok(ticks * 1_000_000 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Resident set size now and at its peak (`VmRSS`, `VmHWM`), in bytes.
pub fn rss_bytes(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .context("malformed memory line")?
            .parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
