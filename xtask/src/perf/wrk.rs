//! Closed-model maximum-rate load with `wrk`: a fixed number of connections, each sending its
//! next `POST /tasks` as soon as the previous one is answered. wrk is the lightest generator at
//! hand, so it leaves the most of the 2 shared cores to the server; its Lua `done` hook prints
//! the exact latency percentiles as one JSON line.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use testkit::process::cpu_seconds;

/// How wrk is run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct WrkLoad {
    /// wrk threads (`-t`).
    pub threads: u32,
    /// Open connections (`-c`).
    pub connections: u32,
    /// Measured run (`-d`).
    pub duration: Duration,
}

/// What wrk's `done` hook reports.
#[derive(Debug, Clone, Deserialize)]
struct WrkSummary {
    requests: u64,
    duration_us: u64,
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

/// One wrk run's figures.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct WrkResult {
    /// The command line.
    pub command: String,
    /// Completed requests.
    pub requests: u64,
    /// Requests per second over the run.
    pub rate_per_s: f64,
    /// Latency percentiles and maximum, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest request.
    pub max_ms: f64,
    /// Socket errors (connect, read, write, timeout) plus answers with a status ≥ 400.
    pub errors: u64,
    /// CPU seconds wrk itself used.
    pub wrk_cpu_s: f64,
    /// Wall-clock seconds of the run.
    pub wall_s: f64,
}

/// Writes the Lua script: POST with a JSON body, and a `done` hook printing one JSON line.
pub fn write_post_script(path: &Path, body: &str) -> anyhow::Result<()> {
    let lua_body = body.replace('\\', "\\\\").replace('\'', "\\'");
    let script = format!(
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{lua_body}'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"#
    );
    std::fs::write(path, script).with_context(|| format!("writing {}", path.display()))
}

/// Runs wrk against `url` with `script`; samples wrk's own CPU time while it runs.
pub fn run(url: &str, script: &Path, load: &WrkLoad) -> anyhow::Result<WrkResult> {
    let seconds = load.duration.as_secs().max(1).to_string();
    let threads = load.threads.to_string();
    let connections = load.connections.to_string();
    let script_text = script.display().to_string();
    let args = [
        "-t",
        threads.as_str(),
        "-c",
        connections.as_str(),
        "-d",
        &format!("{seconds}s"),
        "--timeout",
        "5s",
        "-s",
        script_text.as_str(),
        url,
    ];
    let command = format!(
        "wrk -t{} -c{} -d{seconds}s --timeout 5s -s post.lua {url}",
        load.threads, load.connections
    );
    let started = Instant::now();
    let child = Command::new("wrk")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk: is it installed? (apt-get install wrk)")?;
    let pid = child.id();
    // wrk's CPU time: the last sample before it exits (every 100 ms, so a little short).
    let sampler = std::thread::spawn(move || {
        let mut last = 0.0;
        while let Some(cpu) = cpu_seconds(pid) {
            last = cpu;
            std::thread::sleep(Duration::from_millis(100));
        }
        last
    });
    let output = child.wait_with_output().context("waiting for wrk")?;
    let wall_s = started.elapsed().as_secs_f64();
    let wrk_cpu_s = sampler.join().unwrap_or(0.0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "{command}: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let json = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRK_JSON "))
        .with_context(|| format!("{command}: no summary line in its output:\n{stdout}"))?;
    let summary: WrkSummary = serde_json::from_str(json).context("parsing wrk's summary")?;
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(WrkResult {
        command,
        requests: summary.requests,
        rate_per_s: summary.requests as f64 / (summary.duration_us.max(1) as f64 / 1e6),
        p50_ms: ms(summary.p50_us),
        p90_ms: ms(summary.p90_us),
        p99_ms: ms(summary.p99_us),
        p999_ms: ms(summary.p999_us),
        max_ms: ms(summary.max_us),
        errors: summary.connect + summary.read + summary.write + summary.timeout + summary.status,
        wrk_cpu_s,
        wall_s,
    })
}
