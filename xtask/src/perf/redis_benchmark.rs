//! Redis's own ceiling for the commands the enqueue path uses, measured with `redis-benchmark`:
//! `EVALSHA` of the enqueue script (task hash + stream entry) and a bare `XADD`, each without
//! pipelining (one command per round trip per client) and with `-P 16`.

use serde::Serialize;

use crate::perf::process::output_of;

/// One `redis-benchmark` run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RedisBenchResult {
    /// What was measured, e.g. `EVALSHA enqueue`.
    pub name: String,
    /// Commands per pipeline (`-P`).
    pub pipeline: u32,
    /// Parallel clients (`-c`).
    pub clients: u32,
    /// Commands sent (`-n`).
    pub requests: u64,
    /// Commands per second.
    pub rate_per_s: f64,
    /// Latency percentiles, milliseconds (per pipeline round trip with `-P`).
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// The command line.
    pub command: String,
}

/// Runs `redis-benchmark --csv` with `command` (its arguments may hold `__rand_int__`).
pub fn run(
    port: u16,
    name: &str,
    clients: u32,
    pipeline: u32,
    requests: u64,
    command: &[&str],
) -> anyhow::Result<RedisBenchResult> {
    let port_text = port.to_string();
    let clients_text = clients.to_string();
    let pipeline_text = pipeline.to_string();
    let requests_text = requests.to_string();
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        port_text.as_str(),
        "-c",
        clients_text.as_str(),
        "-P",
        pipeline_text.as_str(),
        "-n",
        requests_text.as_str(),
        "-r",
        "100000000",
        "--csv",
    ];
    args.extend_from_slice(command);
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') || a.is_empty() || *a == "*" {
                format!("'{a}'")
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    let command_line = format!("redis-benchmark {}", shown.join(" "));
    let out = output_of("redis-benchmark", &args)?;
    let row = out
        .lines()
        .filter(|l| !l.starts_with("\"test\""))
        .find(|l| l.starts_with('"'))
        .ok_or_else(|| anyhow::anyhow!("{command_line}: no result row in:\n{out}"))?;
    let fields: Vec<f64> = row
        .split("\",\"")
        .skip(1)
        .map(|f| f.trim_matches('"').parse().unwrap_or(0.0))
        .collect();
    // rps, avg, min, p50, p95, p99, max
    anyhow::ensure!(fields.len() >= 7, "{command_line}: unexpected row {row}");
    Ok(RedisBenchResult {
        name: name.to_owned(),
        pipeline,
        clients,
        requests,
        rate_per_s: fields[0],
        p50_ms: fields[3],
        p99_ms: fields[5],
        max_ms: fields[6],
        command: command_line,
    })
}
