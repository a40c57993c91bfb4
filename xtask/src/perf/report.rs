//! The benchmark report: what was measured, with which tool and command, and the table of
//! targets (issue 6) against the measured figures. Serialised to JSON as is, and rendered to
//! Markdown by [`render_markdown`].

use std::fmt::Write as _;

use serde::Serialize;

use crate::perf::open_loop::FixedRateResult;
use crate::perf::redis_benchmark::RedisBenchResult;
use crate::perf::redis_server::{Fsync, LatencyEvent};
use crate::perf::wrk::WrkResult;

/// The whole run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Report {
    /// When the run started (RFC 3339, UTC).
    pub generated_at: String,
    /// Wall-clock seconds of the whole run.
    pub run_seconds: f64,
    /// The command that produced this report.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// Tool and code versions.
    pub versions: Versions,
    /// Settings of the services during the run.
    pub settings: Vec<String>,
    /// One block per Redis persistence mode.
    pub modes: Vec<ModeReport>,
    /// Worker-kill recovery runs (Redis with `appendfsync always`).
    pub recovery: Vec<RecoveryResult>,
    /// Issue 6's targets against the measured figures.
    pub targets: Vec<TargetRow>,
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// `uname -sr`.
    pub kernel: String,
    /// OS name.
    pub os: String,
    /// Share of the machine busy with other work just before the run, percent.
    pub background_busy_percent: f64,
}

/// Versions of what was measured and of the tools.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Versions {
    /// `rustc --version`.
    pub rustc: String,
    /// `redis-server --version`.
    pub redis_server: String,
    /// `wrk -v`.
    pub wrk: String,
    /// `git describe --always --dirty`.
    pub git: String,
}

/// Where CPU time went during one measurement (seconds), to read rates as shares of 2 cores.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct CpuUse {
    /// Wall-clock seconds of the measurement.
    pub wall_s: f64,
    /// The server under test (orchestrator, bare server, or all workers).
    pub server_s: f64,
    /// redis-server's main process (its `INFO cpu`).
    pub redis_s: f64,
    /// redis-server's children that finished meanwhile: automatic AOF rewrites.
    pub redis_rewrite_s: f64,
    /// The load generator (wrk, or this process for fixed-rate load and bulk enqueue).
    pub generator_s: f64,
    /// Everything else that ran on the machine meanwhile (other processes: noise).
    pub other_s: f64,
}

impl CpuUse {
    /// Microseconds of CPU per operation, for `ops` operations: (server, redis, generator).
    pub fn per_op_us(&self, ops: u64) -> (f64, f64, f64) {
        let per = |s: f64| s * 1e6 / ops.max(1) as f64;
        (per(self.server_s), per(self.redis_s), per(self.generator_s))
    }
}

/// A wrk measurement with its CPU accounting.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct WrkMeasurement {
    /// What ran.
    pub server: String,
    /// wrk connections.
    pub connections: u32,
    /// wrk's figures.
    pub wrk: WrkResult,
    /// CPU accounting.
    pub cpu: CpuUse,
    /// Peak RSS of the server after the run, KiB.
    pub server_peak_rss_kib: u64,
}

/// A fixed-rate measurement with enqueue-to-start latencies of the same tasks.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FixedRateMeasurement {
    /// The HTTP figures (tool: this binary's open-model generator).
    pub http: FixedRateResult,
    /// Workers consuming meanwhile.
    pub workers: usize,
    /// `started_at − created_at` of the same tasks (Redis's clock, 1 ms resolution).
    pub enqueue_to_start: Option<LatencySummary>,
    /// From sending each POST to the start of its execution (microseconds, from the worker's
    /// `task_executed` line): enqueue-to-start plus the POST's way in, an upper bound.
    pub send_to_start: Option<LatencySummary>,
    /// From the POST's answer to the start of its execution: a lower bound of enqueue-to-start
    /// (negative when the task started before its answer arrived).
    pub answer_to_start: Option<LatencySummary>,
    /// CPU accounting (server: orchestrator + workers).
    pub cpu: CpuUse,
    /// Stalls Redis's latency monitor recorded during the measurement (1 ms and longer).
    pub redis_stalls: Vec<LatencyEvent>,
}

/// Percentiles of a latency distribution, milliseconds.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LatencySummary {
    /// Samples.
    pub samples: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Resolution of the underlying timestamps.
    pub resolution_ms: f64,
}

/// One drain: `tasks` no-op tasks enqueued in bulk, then `workers` worker processes started.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DrainResult {
    /// Worker processes.
    pub workers: usize,
    /// `WORKER_CONCURRENCY` of each.
    pub concurrency: u32,
    /// Tasks drained.
    pub tasks: u64,
    /// Bulk enqueue rate (taskq `Queue::enqueue`, 1,024 in flight over one connection).
    pub bulk_enqueue_per_s: f64,
    /// From starting the worker processes to an empty queue with nothing in flight, seconds.
    pub drain_s: f64,
    /// `tasks / drain_s`.
    pub rate_per_s: f64,
    /// First `started_at` to last `finished_at` (Redis's clock), seconds.
    pub redis_clock_s: f64,
    /// `task_executed` lines the workers wrote.
    pub executions_logged: u64,
    /// Largest worker peak RSS, KiB.
    pub worker_peak_rss_kib: u64,
    /// CPU accounting (server: all workers).
    pub cpu: CpuUse,
    /// Redis commands' calls and time during the drain (`INFO commandstats`).
    pub redis_commands: Vec<(String, u64, u64)>,
}

/// The worker's default `WORKER_CONCURRENCY`.
pub const DEFAULT_CONCURRENCY: u32 = 16;

/// One drain by the bare batched consumer (`cargo xtask bare-consume`): the same tasks, the
/// same Redis, `consumers` processes.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BareDrainResult {
    /// Consumer processes.
    pub consumers: usize,
    /// Tasks drained.
    pub tasks: u64,
    /// From starting the consumers until the last exited (a read found nothing), seconds.
    pub drain_s: f64,
    /// `tasks / drain_s`.
    pub rate_per_s: f64,
    /// CPU accounting (server: all consumers, as they measured themselves).
    pub cpu: CpuUse,
}

/// A worker drain's rate over the bare consumer's with as many processes, same mode, same run.
pub fn bare_drain_ratio(mode: &ModeReport, drain: &DrainResult) -> Option<f64> {
    mode.bare_drain
        .iter()
        .find(|b| b.consumers == drain.workers && b.rate_per_s > 0.0)
        .map(|b| drain.rate_per_s / b.rate_per_s)
}

/// Everything measured against one Redis persistence mode.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ModeReport {
    /// `appendfsync` setting.
    pub fsync: Fsync,
    /// How Redis was started.
    pub redis_command: String,
    /// `redis-benchmark` ceilings.
    pub redis_benchmark: Vec<RedisBenchResult>,
    /// The bare axum enqueue server under wrk, one run per connection count.
    pub bare: Vec<WrkMeasurement>,
    /// The orchestrator under wrk, one run per connection count.
    pub post: Vec<WrkMeasurement>,
    /// The orchestrator at fixed rates, with workers consuming.
    pub fixed_rate: Vec<FixedRateMeasurement>,
    /// No-op drains.
    pub drain: Vec<DrainResult>,
    /// The same drains by the bare batched consumer, one per consumer count.
    #[serde(default)]
    pub bare_drain: Vec<BareDrainResult>,
    /// The bare enqueue server at the highest fixed rate, two workers consuming its tasks.
    #[serde(default)]
    pub bare_fixed_rate: Vec<FixedRateMeasurement>,
    /// Orchestrator peak RSS over the whole mode, KiB.
    pub orchestrator_peak_rss_kib: u64,
    /// POST and drain on a Redis Cluster, one per shard count (`--phases shards`).
    #[serde(default)]
    pub shards: Vec<ShardResult>,
}

/// The system on a Redis Cluster of `shards` primaries ([`crate::perf::shards`]).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ShardResult {
    /// Primaries (and `QUEUE_PARTITIONS`).
    pub shards: usize,
    /// The orchestrator under wrk.
    pub post: WrkResult,
    /// Orchestrator CPU per request, µs.
    pub post_orchestrator_us_per_task: f64,
    /// Redis CPU per request over every primary, µs.
    pub post_redis_us_per_task: f64,
    /// Each primary's share of that Redis CPU, percent.
    pub post_redis_share: Vec<f64>,
    /// Tasks the drain started with.
    pub drained: u64,
    /// Drain rate, two workers, tasks per second.
    pub drain_rate_per_s: f64,
    /// Workers' CPU per task, µs.
    pub drain_workers_us_per_task: f64,
    /// Redis CPU per task over every primary, µs.
    pub drain_redis_us_per_task: f64,
    /// Each primary's share of that Redis CPU, percent.
    pub drain_redis_share: Vec<f64>,
    /// Script calls (claims, finishes, heartbeats, promotions...) per task drained: the fewer,
    /// the larger the batches.
    #[serde(default)]
    pub drain_scripts_per_task: f64,
}

/// One worker-kill recovery.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RecoveryResult {
    /// Tasks the killed worker held (running).
    pub tasks_held: usize,
    /// Age of the killed worker's last heartbeat when it was killed, ms.
    pub heartbeat_age_at_kill_ms: i64,
    /// From SIGKILL until every held task was started again by the live worker, ms.
    pub restarted_ms: i64,
    /// From SIGKILL until every held task succeeded, ms.
    pub completed_ms: i64,
    /// `WORKER_WORK` of both workers, in milliseconds.
    pub work_ms: u64,
}

/// One target of issue 6 and what was measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TargetRow {
    /// What.
    pub name: String,
    /// The goal, as text (`≥ 36,000/s`).
    pub target: String,
    /// The measured figure, as text.
    pub measured: String,
    /// Whether the goal was met (`None`: not measured).
    pub met: Option<bool>,
    /// Which tool produced the figure.
    pub tool: String,
    /// CPU share (percent of the 2 cores) that other processes used during the measurement.
    pub other_load_percent: Option<f64>,
}

/// Share of the 2 cores that other processes used during a measurement, in percent.
pub fn other_percent(cpu: &CpuUse) -> f64 {
    100.0 * cpu.other_s / (2.0 * cpu.wall_s.max(1e-9))
}

fn kib_to_mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "not measured",
    }
}

/// Computes the target rows from the measurements.
pub fn targets(report: &Report) -> Vec<TargetRow> {
    let mut rows = Vec::new();
    for mode in &report.modes {
        let fsync = mode.fsync.as_str();
        let (rate_goal, label) = match mode.fsync {
            Fsync::Everysec => (36_000.0, "≥ 36,000/s"),
            Fsync::Always => (30_000.0, "≥ 30,000/s"),
        };
        let best = |runs: &[WrkMeasurement]| {
            runs.iter()
                .max_by(|a, b| a.wrk.rate_per_s.total_cmp(&b.wrk.rate_per_s))
                .cloned()
        };
        if let Some(post) = best(&mode.post) {
            let share = best(&mode.bare)
                .map(|bare| {
                    format!(
                        " ({:.0} % of the bare server's {}/s)",
                        100.0 * post.wrk.rate_per_s / bare.wrk.rate_per_s,
                        thousands(bare.wrk.rate_per_s)
                    )
                })
                .unwrap_or_default();
            if let Some(bare) = best(&mode.bare) {
                let share = post.wrk.rate_per_s / bare.wrk.rate_per_s;
                rows.push(TargetRow {
                    name: format!("POST /tasks max rate, {fsync}: share of the bare server"),
                    target: "≥ 85 %, p99 ≤ 5 ms".into(),
                    measured: format!(
                        "{:.0} % ({}/s of {}/s, same run), p99 {:.2} ms",
                        100.0 * share,
                        thousands(post.wrk.rate_per_s),
                        thousands(bare.wrk.rate_per_s),
                        post.wrk.p99_ms
                    ),
                    met: Some(share >= 0.85 && post.wrk.p99_ms <= 5.0 && post.wrk.errors == 0),
                    tool: "wrk".into(),
                    other_load_percent: Some(other_percent(&post.cpu)),
                });
            }
            rows.push(TargetRow {
                name: format!("POST /tasks max rate, {fsync}"),
                target: label.into(),
                measured: format!(
                    "{}/s with {} connections{share}",
                    thousands(post.wrk.rate_per_s),
                    post.connections
                ),
                met: Some(post.wrk.rate_per_s >= rate_goal && post.wrk.errors == 0),
                tool: "wrk".into(),
                other_load_percent: Some(other_percent(&post.cpu)),
            });
            // The p99 at the target rate: the lowest among runs that reached it.
            let at_rate = mode
                .post
                .iter()
                .filter(|m| m.wrk.rate_per_s >= rate_goal)
                .min_by(|a, b| a.wrk.p99_ms.total_cmp(&b.wrk.p99_ms))
                .cloned()
                .unwrap_or(post);
            rows.push(TargetRow {
                name: format!("POST /tasks p99 at that rate, {fsync}"),
                target: "≤ 5 ms".into(),
                measured: format!(
                    "{:.2} ms at {}/s, {} connections (p50 {:.2}, max {:.1})",
                    at_rate.wrk.p99_ms,
                    thousands(at_rate.wrk.rate_per_s),
                    at_rate.connections,
                    at_rate.wrk.p50_ms,
                    at_rate.wrk.max_ms
                ),
                met: Some(at_rate.wrk.p99_ms <= 5.0 && at_rate.wrk.rate_per_s >= rate_goal),
                tool: "wrk".into(),
                other_load_percent: Some(other_percent(&at_rate.cpu)),
            });
        }
        for fixed in &mode.fixed_rate {
            let http = &fixed.http;
            if http.rate_per_s == 5000 {
                let bare = mode
                    .bare_fixed_rate
                    .iter()
                    .find(|b| b.http.rate_per_s == 5000)
                    .map_or(String::new(), |b| {
                        format!(
                            "; bare server, same workers, same run: p99 {:.2} ms, max {:.1}",
                            b.http.p99_ms, b.http.max_ms
                        )
                    });
                rows.push(TargetRow {
                    name: format!("POST /tasks p99 at 5,000/s, {fsync}"),
                    target: "≤ 2 ms".into(),
                    measured: format!(
                        "{:.2} ms (p50 {:.2}, max {:.1}; {} errors){bare}",
                        http.p99_ms, http.p50_ms, http.max_ms, http.errors
                    ),
                    met: Some(http.p99_ms <= 2.0 && http.errors == 0),
                    tool: "open-model generator (cargo xtask bench)".into(),
                    other_load_percent: Some(other_percent(&fixed.cpu)),
                });
            }
            if http.rate_per_s == 1000
                && let Some(e2s) = &fixed.enqueue_to_start
            {
                let precise = fixed.send_to_start.as_ref();
                let precise_text = match (precise, fixed.answer_to_start.as_ref()) {
                    (Some(upper), Some(lower)) => format!(
                        "; to the µs, between the POST's answer and its sending: p99 {:.2}–{:.2} ms, p50 {:.2}–{:.2}",
                        lower.p99_ms, upper.p99_ms, lower.p50_ms, upper.p50_ms
                    ),
                    (Some(upper), None) => format!(
                        "; to the µs, from the POST's sending: p99 ≤ {:.2} ms, p50 ≤ {:.2}",
                        upper.p99_ms, upper.p50_ms
                    ),
                    _ => String::new(),
                };
                rows.push(TargetRow {
                    name: format!("enqueue-to-start p99 at 1,000/s, {fsync}"),
                    target: "≤ 1.5 ms".into(),
                    measured: format!(
                        "records: p99 {:.0} ms, p50 {:.0}, mean {:.2} (1 ms resolution){precise_text}",
                        e2s.p99_ms, e2s.p50_ms, e2s.mean_ms
                    ),
                    // Met only if the upper bound is within the goal (the records' p99 is
                    // whole milliseconds); without it, the records' p99.
                    met: Some(precise.map_or(e2s.p99_ms, |p| p.p99_ms) <= 1.5),
                    tool: "open-model generator + task records + worker log".into(),
                    other_load_percent: Some(other_percent(&fixed.cpu)),
                });
            }
        }
        let two: Vec<&DrainResult> = mode.drain.iter().filter(|d| d.workers == 2).collect();
        if let Some(best) = two
            .iter()
            .max_by(|a, b| a.rate_per_s.total_cmp(&b.rate_per_s))
        {
            let others: Vec<String> = two
                .iter()
                .filter(|d| d.concurrency != best.concurrency)
                .map(|d| format!("{}/s at {}", thousands(d.rate_per_s), d.concurrency))
                .collect();
            let others = if others.is_empty() {
                String::new()
            } else {
                format!("; {}", others.join(", "))
            };
            rows.push(TargetRow {
                name: format!("no-op tasks end to end, 2 workers, {fsync}"),
                target: "≥ 50,000/s".into(),
                measured: format!(
                    "{}/s at WORKER_CONCURRENCY={}{others}",
                    thousands(best.rate_per_s),
                    best.concurrency
                ),
                met: Some(best.rate_per_s >= 50_000.0 && best.executions_logged >= best.tasks),
                tool: "bulk enqueue + stats polling".into(),
                other_load_percent: Some(other_percent(&best.cpu)),
            });
            if let Some(default) = two.iter().find(|d| d.concurrency == DEFAULT_CONCURRENCY)
                && let Some(ratio) = bare_drain_ratio(mode, default)
            {
                rows.push(TargetRow {
                    name: format!(
                        "no-op drain, 2 workers, default settings, {fsync}: share of the bare consumer"
                    ),
                    target: "≥ 60 %".into(),
                    measured: format!(
                        "{:.0} % ({}/s of {}/s, same run)",
                        100.0 * ratio,
                        thousands(default.rate_per_s),
                        thousands(default.rate_per_s / ratio)
                    ),
                    met: Some(ratio >= 0.6 && default.executions_logged >= default.tasks),
                    tool: "bulk enqueue + stats polling; bare consumer processes".into(),
                    other_load_percent: Some(other_percent(&default.cpu)),
                });
            }
        }
    }
    if !report.recovery.is_empty() {
        let worst = report
            .recovery
            .iter()
            .map(|r| r.restarted_ms)
            .max()
            .unwrap_or_default();
        let all: Vec<String> = report
            .recovery
            .iter()
            .map(|r| format!("{:.2}", r.restarted_ms as f64 / 1000.0))
            .collect();
        rows.push(TargetRow {
            name: "worker-kill recovery (defaults: heartbeat 1 s, dead after 3 s)".into(),
            target: "≤ 3 s".into(),
            measured: format!(
                "worst {:.2} s (runs: {} s)",
                worst as f64 / 1000.0,
                all.join(", ")
            ),
            met: Some(worst <= 3000),
            tool: "SIGKILL + task records".into(),
            other_load_percent: None,
        });
    }
    // Under the max-rate load: VmHWM after the wrk runs (which come first). The fixed-rate runs
    // that follow may push it further: an overloaded open model holds a connection per request
    // in flight; that peak is shown beside it.
    let max_rate_rss = report
        .modes
        .iter()
        .flat_map(|m| m.post.iter().map(|w| w.server_peak_rss_kib))
        .max()
        .unwrap_or_default();
    let rss = report
        .modes
        .iter()
        .map(|m| m.orchestrator_peak_rss_kib)
        .max()
        .unwrap_or_default();
    if max_rate_rss > 0 {
        rows.push(TargetRow {
            name: "orchestrator peak RSS under the max-rate load".into(),
            target: "≤ 30 MB".into(),
            measured: format!(
                "{:.1} MB (VmHWM after the wrk runs; {:.1} MB after the fixed rates too)",
                kib_to_mb(max_rate_rss),
                kib_to_mb(rss)
            ),
            met: Some(kib_to_mb(max_rate_rss) <= 30.0),
            tool: "/proc/PID/status".into(),
            other_load_percent: None,
        });
    }
    rows
}

fn cpu_line(cpu: &CpuUse, ops: u64, server: &str, generator: &str) -> String {
    let (s, r, g) = cpu.per_op_us(ops);
    let rewrite = if cpu.redis_rewrite_s > 0.0 {
        format!(
            ", redis AOF rewrite {:.1} µs",
            cpu.redis_rewrite_s * 1e6 / ops.max(1) as f64
        )
    } else {
        String::new()
    };
    format!(
        "{server} {s:.1} µs, redis {r:.1} µs{rewrite}, {generator} {g:.1} µs per task; \
         other processes {:.0} % of the 2 cores",
        100.0 * cpu.other_s / (2.0 * cpu.wall_s.max(1e-9))
    )
}

/// The line after which `docs/benchmarks.md` holds hand-written notes that a new run keeps.
pub const KEPT_MARKER: &str =
    "<!-- Hand-written below this line: perf_report keeps it when it rewrites this file. -->";

/// The hand-written tail of an earlier report (from [`KEPT_MARKER`] on), if any.
pub fn kept_notes(previous: &str) -> Option<&str> {
    previous.find(KEPT_MARKER).map(|at| &previous[at..])
}

/// Renders the report as Markdown; `kept` (from [`kept_notes`]) goes at the end unchanged.
pub fn render_markdown(report: &Report, kept: Option<&str>, curves_svg: &str) -> String {
    let mut md = String::new();
    let m = &report.machine;
    let v = &report.versions;
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `{}` on {} ({:.0} s). Every figure below was measured in that one run on the machine described here; \
         the JSON twin is `docs/benchmarks.json`. Reproduce with `just bench`.\n",
        report.command, report.generated_at, report.run_seconds
    );
    let _ = writeln!(
        md,
        "![POST /tasks latency against rate, per persistence mode: p50 and p99 at fixed rates, \
         p99 at the maximum rate of the orchestrator and of the bare server]({curves_svg})\n"
    );
    let _ = writeln!(md, "## Machine and versions\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(
        md,
        "| CPU | {} × {} logical cores (shared by load generator, servers and Redis) |",
        m.cpu, m.cores
    );
    let _ = writeln!(md, "| memory | {:.0} GiB |", m.memory_gib);
    let _ = writeln!(md, "| OS, kernel | {}, {} |", m.os, m.kernel);
    let _ = writeln!(
        md,
        "| background load before the run | {:.0} % of the machine |",
        m.background_busy_percent
    );
    let _ = writeln!(md, "| rustc | {} |", v.rustc);
    let _ = writeln!(md, "| redis-server | {} |", v.redis_server);
    let _ = writeln!(md, "| wrk | {} |", v.wrk);
    let _ = writeln!(md, "| code | `{}` |", v.git);
    let _ = writeln!(md);
    let _ = writeln!(md, "Service settings: {}.\n", report.settings.join("; "));

    let _ = writeln!(md, "## Targets (issue 6) against measured figures\n");
    let _ = writeln!(
        md,
        "| target | goal | measured | met | tool | other load meanwhile |\n|---|---|---|---|---|---|"
    );
    for row in &report.targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            row.name,
            row.target,
            row.measured,
            mark(row.met),
            row.tool,
            row.other_load_percent
                .map_or("–".to_owned(), |p| format!("{p:.0} %"))
        );
    }
    let _ = writeln!(md);
    md.push_str(METHOD);
    md.push_str(&bounds(report));

    for mode in &report.modes {
        let fsync = mode.fsync.as_str();
        let _ = writeln!(md, "## Redis `appendfsync {fsync}`\n");
        let _ = writeln!(md, "Redis: `{}`\n", mode.redis_command);
        if !mode.redis_benchmark.is_empty() || !mode.bare.is_empty() || !mode.post.is_empty() {
            let _ = writeln!(md, "### Ceilings\n");
            let _ = writeln!(
                md,
                "| what | tool | rate | p50 | p99 | max |\n|---|---|---|---|---|---|"
            );
            for rb in &mode.redis_benchmark {
                let _ = writeln!(
                    md,
                    "| {} (`-P {}`, {} clients) | redis-benchmark | {}/s | {:.2} ms | {:.2} ms | {:.2} ms |",
                    rb.name,
                    rb.pipeline,
                    rb.clients,
                    thousands(rb.rate_per_s),
                    rb.p50_ms,
                    rb.p99_ms,
                    rb.max_ms
                );
            }
            for w in mode.bare.iter().chain(&mode.post) {
                let _ = writeln!(
                    md,
                    "| {}, {} connections | wrk | {}/s | {:.2} ms | {:.2} ms | {:.1} ms |",
                    w.server,
                    w.connections,
                    thousands(w.wrk.rate_per_s),
                    w.wrk.p50_ms,
                    w.wrk.p99_ms,
                    w.wrk.max_ms
                );
            }
            let _ = writeln!(md);
            let _ = writeln!(md, "Commands:\n");
            let _ = writeln!(md, "```sh");
            for rb in &mode.redis_benchmark {
                let _ = writeln!(md, "{}", rb.command);
            }
            for w in mode.bare.iter().chain(&mode.post) {
                let _ = writeln!(md, "{}   # {}", w.wrk.command, w.server);
            }
            let _ = writeln!(md, "```\n");
        }
        for w in mode.bare.iter().chain(&mode.post) {
            let _ = writeln!(
                md,
                "- {}, {} connections: {} requests, {} errors, p90 {:.2} ms, p99.9 {:.2} ms; CPU: {}; peak RSS {:.1} MB.",
                w.server,
                w.connections,
                thousands(w.wrk.requests as f64),
                w.wrk.errors,
                w.wrk.p90_ms,
                w.wrk.p999_ms,
                cpu_line(&w.cpu, w.wrk.requests, "server", "wrk"),
                kib_to_mb(w.server_peak_rss_kib)
            );
        }
        if !mode.bare.is_empty() || !mode.post.is_empty() {
            let _ = writeln!(md);
        }
        if !mode.fixed_rate.is_empty() {
            let _ = writeln!(
                md,
                "### Fixed rate (open model, orchestrator, workers consuming)\n"
            );
            let _ = writeln!(
                md,
                "| rate | sent | errors | p50 | p90 | p99 | p99.9 | max | p99 from schedule | pacer p99 late | enqueue-to-start (records, 1 ms) p50 / p99 / max / mean | start − POST sent / − answer received (µs): p50, p99 |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
            );
            let runs = || {
                mode.fixed_rate.iter().map(|f| (f, "")).chain(
                    mode.bare_fixed_rate
                        .iter()
                        .map(|f| (f, ", bare server (same workers)")),
                )
            };
            for (f, server) in runs() {
                let h = &f.http;
                let e2s = f.enqueue_to_start.as_ref().map_or("–".to_owned(), |e| {
                    format!(
                        "{:.0} / {:.0} / {:.0} / {:.2} ms",
                        e.p50_ms, e.p99_ms, e.max_ms, e.mean_ms
                    )
                });
                let s2s = match (f.send_to_start.as_ref(), f.answer_to_start.as_ref()) {
                    (Some(u), Some(l)) => format!(
                        "{:.2} / {:.2} ms, {:.2} / {:.2} ms",
                        u.p50_ms, l.p50_ms, u.p99_ms, l.p99_ms
                    ),
                    _ => "–".to_owned(),
                };
                let _ = writeln!(
                    md,
                    "| {}/s{server} | {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} ms | {:.2} ms | {:.2} ms | {} | {} |",
                    thousands(f64::from(h.rate_per_s)),
                    thousands(h.sent as f64),
                    h.errors,
                    h.p50_ms,
                    h.p90_ms,
                    h.p99_ms,
                    h.p999_ms,
                    h.max_ms,
                    h.p99_from_schedule_ms,
                    h.pacer_lateness_p99_ms,
                    e2s,
                    s2s
                );
            }
            let _ = writeln!(md);
            for (f, server) in runs() {
                let stalls = if f.redis_stalls.is_empty() {
                    "none".to_owned()
                } else {
                    f.redis_stalls
                        .iter()
                        .map(|e| format!("`{}` up to {} ms", e.event, e.max_ms))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let _ = writeln!(
                    md,
                    "- {}/s{server}, {} workers: CPU {}. Stalls Redis recorded (latency monitor, ≥ 1 ms): {stalls}.",
                    thousands(f64::from(f.http.rate_per_s)),
                    f.workers,
                    cpu_line(
                        &f.cpu,
                        f.http.sent,
                        if server.is_empty() {
                            "orchestrator + workers"
                        } else {
                            "bare server + workers"
                        },
                        "generator"
                    )
                );
            }
            let _ = writeln!(md);
        }
        if !mode.drain.is_empty() {
            let _ = writeln!(
                md,
                "### No-op drain (tasks enqueued in bulk, then workers started)\n"
            );
            let _ = writeln!(
                md,
                "| workers | `WORKER_CONCURRENCY` | tasks | drain time | rate | of the bare consumer | Redis-clock span | executions logged | worker peak RSS | worker CPU / task | Redis CPU / task | AOF rewrite CPU / task | other processes |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
            );
            for d in &mode.drain {
                let (w, r, _) = d.cpu.per_op_us(d.tasks);
                let ratio = bare_drain_ratio(mode, d)
                    .map_or("–".to_owned(), |ratio| format!("{:.0} %", 100.0 * ratio));
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.2} s | {}/s | {ratio} | {:.2} s | {} | {:.1} MB | {:.1} µs | {:.1} µs | {:.1} µs | {:.0} % |",
                    d.workers,
                    d.concurrency,
                    thousands(d.tasks as f64),
                    d.drain_s,
                    thousands(d.rate_per_s),
                    d.redis_clock_s,
                    thousands(d.executions_logged as f64),
                    kib_to_mb(d.worker_peak_rss_kib),
                    w,
                    r,
                    d.cpu.redis_rewrite_s * 1e6 / d.tasks.max(1) as f64,
                    100.0 * d.cpu.other_s / (2.0 * d.cpu.wall_s.max(1e-9))
                );
            }
            let _ = writeln!(md);
        }
        if !mode.bare_drain.is_empty() {
            let _ = writeln!(
                md,
                "The same drains by the bare batched consumer (`cargo xtask bare-consume`: \
                 `XREADGROUP COUNT {}` over the ten streams, one pipelined `HSET status running` \
                 per task, then `HSET status succeeded` + `XACK` per task; no script, log line, \
                 ownership check or lease), one process per worker:\n",
                super::bare_consumer::COUNT
            );
            let _ = writeln!(
                md,
                "| consumers | tasks | drain time | rate | consumer CPU / task | Redis CPU / task |\n|---|---|---|---|---|---|"
            );
            for b in &mode.bare_drain {
                let (c, r, _) = b.cpu.per_op_us(b.tasks);
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.2} s | {}/s | {c:.1} µs | {r:.1} µs |",
                    b.consumers,
                    thousands(b.tasks as f64),
                    b.drain_s,
                    thousands(b.rate_per_s),
                );
            }
            let _ = writeln!(md);
        }
        if mode.orchestrator_peak_rss_kib > 0 {
            let _ = writeln!(
                md,
                "Orchestrator peak RSS over this mode (VmHWM): {:.1} MB.\n",
                kib_to_mb(mode.orchestrator_peak_rss_kib)
            );
        }
    }
    for mode in report.modes.iter().filter(|m| !m.shards.is_empty()) {
        shard_section(&mut md, mode);
    }
    if !report.recovery.is_empty() {
        let _ = writeln!(
            md,
            "## Worker-kill recovery (`appendfsync always`, default heartbeat 1 s and dead-after 3 s)\n"
        );
        let _ = writeln!(
            md,
            "| run | tasks held | heartbeat age at kill | kill → all restarted | kill → all succeeded |\n|---|---|---|---|---|"
        );
        for (i, r) in report.recovery.iter().enumerate() {
            let _ = writeln!(
                md,
                "| {} | {} | {} ms | {} ms | {} ms |",
                i + 1,
                r.tasks_held,
                r.heartbeat_age_at_kill_ms,
                r.restarted_ms,
                r.completed_ms
            );
        }
        let _ = writeln!(md);
    }
    match kept {
        Some(notes) => md.push_str(notes),
        None => {
            let _ = writeln!(md, "{KEPT_MARKER}");
        }
    }
    md
}

/// The table of the `shards` phase of one mode.
fn shard_section(md: &mut String, mode: &ModeReport) {
    let _ = writeln!(
        md,
        "## Redis Cluster by shard count (`appendfsync {}`)\n",
        mode.fsync.as_str()
    );
    let _ = writeln!(
        md,
        "`QUEUE_PARTITIONS` = shards, no replicas, every process on the same 2 cores: the \
         rates cannot grow with shards here; the CPU per task and its spread over the \
         primaries are the figures to read (docs/scaling.md).\n"
    );
    let _ = writeln!(
        md,
        "| shards | POST rate | p99 | orchestrator µs/request | Redis µs/request | share per primary | drain rate (2 workers) | workers µs/task | Redis µs/task | script calls/task | share per primary |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let shares = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.0} %"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for r in &mode.shards {
        let _ = writeln!(
            md,
            "| {} | {}/s | {:.2} ms | {:.1} | {:.1} | {} | {}/s ({} tasks) | {:.1} | {:.1} | {:.3} | {} |",
            r.shards,
            thousands(r.post.rate_per_s),
            r.post.p99_ms,
            r.post_orchestrator_us_per_task,
            r.post_redis_us_per_task,
            shares(&r.post_redis_share),
            thousands(r.drain_rate_per_s),
            r.drained,
            r.drain_workers_us_per_task,
            r.drain_redis_us_per_task,
            r.drain_scripts_per_task,
            shares(&r.drain_redis_share),
        );
    }
    let _ = writeln!(md);
}

/// How the figures were taken (the same every run).
const METHOD: &str = "\
## How the figures were taken

- **One machine, shared.** The load generator, the services and Redis run on the same 2 cores, \
  so every request costs generator CPU too. Each measurement records where the CPU went \
  (service, Redis, Redis's AOF rewrite child, generator) and how much CPU everything else used \
  meanwhile (*other processes*: other work on the machine, and kernel threads such as the \
  writeback of the AOF); a measurement with a high share there was disturbed. Before each \
  measurement the run flushes dirty pages (`sync`) and waits, within a budget, for the machine \
  to be quiet.
- **Maximum rates and ceilings: wrk** (closed model: each connection sends its next request \
  when the previous one is answered), the lightest generator at hand, with a Lua script for \
  the JSON body; one run per connection count, after a 2 s warm-up. Redis's own ceiling: \
  `redis-benchmark` with the enqueue script (`EVALSHA`, the same script text the services load) \
  and plain `XADD`. The bare server is `cargo xtask bare-enqueue` (`xtask/src/perf/bare.rs`): one axum route that \
  runs the same enqueue script over one multiplexed connection, nothing else, on the same \
  async runtime as the orchestrator's default (one thread per core).
- **Fixed rates: an open-model generator** in `cargo xtask bench` (`xtask/src/perf/open_loop.rs`): \
  a pacer thread sends each request at its scheduled instant whatever earlier answers do \
  (wrk2 is not packaged in Debian; goose has no open model), on its own single-threaded \
  runtime. Latency runs from sending to the end of the answer; the pacer's lateness and the \
  latency counted from the scheduled instant are shown too. Two workers consume meanwhile.
- **Enqueue-to-start** of the same tasks: `started_at − created_at` from the task records \
  (Redis's clock, whole milliseconds, so a single figure is up to 1 ms off; with requests \
  evenly spaced the rounding can lean one way for a whole run), and, to the microsecond, \
  bracketed: the start implied by the worker's `task_executed` line (its timestamp minus its \
  `duration_ms`) minus the instant the POST was sent (an upper bound: the task did not exist \
  yet) and minus the instant its answer arrived (a lower bound: the task existed by then).
- **No-op drain:** tasks are enqueued in bulk first (taskq's `Queue::enqueue`, 1,024 in \
  flight), then the worker processes start (`WORKER_WORK=0ms`, the `task_executed` line on, \
  stdout to a file); the drain ends when nothing is queued or in flight (polled every 20 ms). \
  The count of `task_executed` lines is checked against the tasks.
- **Recovery:** a worker holds running tasks (`WORKER_WORK=2s`), a second worker is \
  live, the first is SIGKILLed at a point spread over the heartbeat period; the figure is the \
  time until every held task has been started again by the live worker (Redis's clock against \
  the kill instant, same machine).
- **Memory:** peak resident set (`VmHWM` in `/proc/PID/status`) at the end of each phase.
- **Redis:** a fresh `redis-server` per persistence mode, default settings besides those shown \
  (so automatic AOF rewrites happen, as in production; their CPU is shown apart). Before each \
  phase: `FLUSHALL` and a finished `BGREWRITEAOF`, so every phase starts from the same state.

";

fn per_op(seconds: f64, ops: u64) -> f64 {
    seconds * 1e6 / ops.max(1) as f64
}

/// What bounds the figures, computed from them.
fn bounds(report: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## What bounds the figures\n");
    for mode in &report.modes {
        let fsync = mode.fsync.as_str();
        let best = |runs: &[WrkMeasurement]| {
            runs.iter()
                .max_by(|a, b| a.wrk.rate_per_s.total_cmp(&b.wrk.rate_per_s))
                .cloned()
        };
        if let Some(post) = best(&mode.post) {
            let n = post.wrk.requests;
            let c = &post.cpu;
            let (server, redis, wrk, rewrite) = (
                per_op(c.server_s, n),
                per_op(c.redis_s, n),
                per_op(c.generator_s, n),
                per_op(c.redis_rewrite_s, n),
            );
            let total = server + redis + wrk + rewrite;
            let bare = best(&mode.bare).map_or(String::new(), |b| {
                format!(
                    " The bare server needs {:.1} µs per request and reached {}/s.",
                    per_op(b.cpu.server_s, b.wrk.requests),
                    thousands(b.wrk.rate_per_s)
                )
            });
            let pipelined = mode
                .redis_benchmark
                .iter()
                .find(|r| r.name.starts_with("EVALSHA") && r.pipeline > 1)
                .map_or(String::new(), |r| {
                    format!(
                        " Redis alone, one core, would take about {}/s at that cost (`redis-benchmark -P {}`: {}/s).",
                        thousands(1e6 / redis.max(0.1)),
                        r.pipeline,
                        thousands(r.rate_per_s)
                    )
                });
            let _ = writeln!(
                md,
                "- **POST /tasks, `{fsync}`:** a request cost the orchestrator {server:.1} µs of CPU, Redis \
                 {redis:.1} µs (+ {rewrite:.1} µs in AOF rewrites) and wrk {wrk:.1} µs: {total:.1} µs, so \
                 the 2 cores allow at most about {}/s; wrk measured {}/s (the rest is time a core \
                 waits for another: wake-ups, scheduling).{bare}{pipelined}",
                thousands(2e6 / total.max(0.1)),
                thousands(post.wrk.rate_per_s)
            );
        }
        let two: Vec<&DrainResult> = mode.drain.iter().filter(|d| d.workers == 2).collect();
        if let Some(best) = two
            .iter()
            .max_by(|a, b| a.rate_per_s.total_cmp(&b.rate_per_s))
        {
            let redis = per_op(best.cpu.redis_s, best.tasks);
            let worker = per_op(best.cpu.server_s, best.tasks);
            let busy = 100.0 * best.cpu.redis_s / best.drain_s.max(1e-9);
            let default = two.iter().find(|d| d.concurrency == 16).map_or(String::new(), |d| {
                format!(
                    " With the default `WORKER_CONCURRENCY=16` a claim takes at most 16 tasks, so \
                     each task carries more per-call work: Redis {:.1} µs and the workers {:.1} µs per \
                     task, {}/s.",
                    per_op(d.cpu.redis_s, d.tasks),
                    per_op(d.cpu.server_s, d.tasks),
                    thousands(d.rate_per_s)
                )
            });
            let _ = writeln!(
                md,
                "- **No-op drain, 2 workers, `{fsync}`:** Redis spent {redis:.1} µs of CPU per task \
                 (its one thread was busy {busy:.0} % of the drain) and the workers {worker:.1} µs, at \
                 `WORKER_CONCURRENCY={}`: {}/s. Redis's single thread bounds the drain at about {}/s \
                 (each task is two atomic scripts: start, with `HMGET` + `HSET` of the record, and \
                 finish, with `HMGET` + `HSET` + `EXPIRE` and a share of one `XACK`/`XDEL` per batch), \
                 and it shares the 2 cores with the workers.{default}",
                best.concurrency,
                thousands(best.rate_per_s),
                thousands(1e6 / redis.max(0.1))
            );
        }
        if let Some(low) = mode.fixed_rate.iter().min_by_key(|f| f.http.rate_per_s) {
            let n = low.http.sent;
            let _ = writeln!(
                md,
                "- **Low rates, `{fsync}`:** at {}/s a task cost the orchestrator and workers {:.0} µs \
                 of CPU and Redis {:.0} µs, several times the per-task cost under full load: at low \
                 rates every request wakes threads and makes system calls of its own, nothing is \
                 batched.{}",
                thousands(f64::from(low.http.rate_per_s)),
                per_op(low.cpu.server_s, n),
                per_op(low.cpu.redis_s, n),
                if mode.fsync == Fsync::Always {
                    " With `appendfsync always` Redis also writes and fsyncs the AOF in every event-loop \
                     iteration that changed data, before it answers: a round trip waits for the disk."
                } else {
                    ""
                }
            );
        }
    }
    if !report.recovery.is_empty() {
        let lo = report
            .recovery
            .iter()
            .map(|r| r.restarted_ms)
            .min()
            .unwrap_or(0);
        let hi = report
            .recovery
            .iter()
            .map(|r| r.restarted_ms)
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            md,
            "- **Worker-kill recovery** took {:.2}–{:.2} s. With the defaults it cannot be shorter \
             than `WORKER_DEAD_AFTER` (3 s) minus the age of the victim's last heartbeat (sent \
             every `WORKER_HEARTBEAT`, 1 s), and a live worker looks for dead ones once per \
             heartbeat: kill → restart lies between about 2 and 4 s, and ≤ 3 s holds only when the \
             victim's last heartbeat was older than the wait for the live worker's next pass.",
            lo as f64 / 1000.0,
            hi as f64 / 1000.0
        );
    }
    let _ = writeln!(md);
    md
}
