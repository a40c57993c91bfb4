//! The benchmark run behind `just bench` (`cargo xtask bench`): one command that starts local
//! systems, measures what issue 6 lists, and writes `docs/benchmarks.md` and its JSON twin.
//!
//! For each Redis persistence mode (`appendfsync everysec`, then `always`) it starts a fresh
//! `redis-server` and release builds of the services as processes on loopback, and measures:
//!
//! - **ceilings**: `redis-benchmark` for the enqueue script and `XADD`, with and without
//!   pipelining ([`redis_benchmark`]), and the bench-only [`bare`] axum server under wrk;
//! - **maximum POST rate**: the orchestrator under wrk, closed model ([`wrk`]);
//! - **fixed rates** (1,000 and 5,000/s): the orchestrator under an open-model generator
//!   ([`open_loop`]) with two workers consuming, and the enqueue-to-start latency of the same
//!   tasks from their records (`started_at − created_at`, Redis's clock, 1 ms resolution);
//! - **no-op drain** with 1, 2 and 4 worker processes (`WORKER_WORK=0ms`, the `task_executed`
//!   line on): tasks enqueued in bulk first, then the time until the queue is empty;
//! - **peak RSS** (`VmHWM`) of the orchestrator and the workers.
//!
//! Then, once, the **recovery** after SIGKILL of a worker holding tasks, with the default
//! heartbeat (1 s) and dead-after (3 s). Every measurement also records where the CPU went
//! (server, Redis, generator, other processes), because the 2 cores are shared by all of them.
//!
//! Modules: [`process`] (the machine's CPU, helper commands), [`redis_server`], [`wrk`], [`open_loop`],
//! [`redis_benchmark`], [`bare`], [`script`], [`phases`] (the run itself) and [`report`];
//! [`instructions`] is `cargo xtask redis-cost` (Redis's instructions per drained task).

pub mod bare;
pub mod bare_consumer;
pub mod curves;
pub mod instructions;
pub mod open_loop;
pub mod phases;
pub mod process;
pub mod redis_benchmark;
pub mod redis_server;
pub mod report;
pub mod script;
pub mod shards;
pub mod wrk;

use std::path::PathBuf;
use std::time::Duration;

pub use phases::run;
pub use redis_server::Fsync;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// `redis-benchmark` and the bare enqueue server.
    Ceilings,
    /// The orchestrator's maximum POST rate under wrk.
    Post,
    /// Fixed-rate POST latency and enqueue-to-start latency.
    Fixed,
    /// No-op drain with 1, 2, 4 workers.
    Drain,
    /// Worker-kill recovery.
    Recovery,
    /// POST and drain on a Redis Cluster of each `--shards` count (not in the default run).
    Shards,
}

/// Options of `cargo xtask bench`; the defaults are what `just bench` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Directory holding release builds of `orchestrator`, `worker` and `xtask` (for `bare-enqueue`).
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Markdown report to write.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub out_md: PathBuf,
    /// JSON report to write.
    #[arg(long, default_value = "docs/benchmarks.json")]
    pub out_json: PathBuf,
    /// SVG of the latency-vs-rate curves to write (the Markdown report links it).
    #[arg(long, default_value = "docs/benchmarks.svg")]
    pub out_svg: PathBuf,
    /// Measure nothing: render the Markdown and the SVG again from the JSON report of an earlier
    /// run (`--out-json`).
    #[arg(long)]
    pub render_only: bool,
    /// Scratch directory for Redis data and service logs (emptied first).
    #[arg(long, default_value = "target/bench-run")]
    pub work_dir: PathBuf,
    /// Redis persistence modes to measure.
    #[arg(long, value_delimiter = ',', default_values = ["everysec", "always"])]
    pub fsync: Vec<Fsync>,
    /// Phases to run.
    #[arg(long, value_delimiter = ',', default_values = ["ceilings", "post", "fixed", "drain", "recovery"])]
    pub phases: Vec<Phase>,
    /// Measured duration of each wrk and fixed-rate run (each also gets a 2 s warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    pub wrk_threads: u32,
    /// wrk connection counts to run with (each a separate run): the highest rate over them is
    /// the maximum; fewer connections give lower latency at a slightly lower rate.
    #[arg(long, value_delimiter = ',', default_values_t = [32, 64])]
    pub wrk_connections: Vec<u32>,
    /// Fixed rates to measure, requests per second.
    #[arg(long, value_delimiter = ',', default_values_t = [500, 1000, 2500, 5000])]
    pub fixed_rates: Vec<u32>,
    /// Tasks per drain.
    #[arg(long, default_value_t = 100_000)]
    pub drain_tasks: u64,
    /// Worker counts to drain with.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4])]
    pub drain_workers: Vec<usize>,
    /// `WORKER_CONCURRENCY` values to drain with (16 is the default; a worker claims at most
    /// as many tasks per round trip as it has free slots, so no-op tasks drain faster with more).
    #[arg(long, value_delimiter = ',', default_values_t = [16, 512])]
    pub drain_concurrency: Vec<u32>,
    /// Before each measurement, wait up to this long for the machine to be quiet (other
    /// processes below `--quiet-percent` of the cores over one second); 0 never waits.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub quiet_wait: Duration,
    /// Longest total time spent waiting for quiet over the whole run (keeps the run bounded).
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    pub quiet_budget: Duration,
    /// Busy share of the machine (percent) under which it counts as quiet.
    #[arg(long, default_value_t = 10.0)]
    pub quiet_percent: f64,
    /// Shard counts of the `shards` phase (a Redis Cluster of that many primaries each).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 3])]
    pub shards: Vec<usize>,
    /// Worker-kill recovery runs.
    #[arg(long, default_value_t = 3)]
    pub recovery_runs: usize,
    /// Extra environment for every worker process, `KEY=VALUE` (repeatable).
    #[arg(long = "worker-env")]
    pub worker_env: Vec<String>,
    /// Extra environment for the orchestrator, `KEY=VALUE` (repeatable).
    #[arg(long = "orchestrator-env")]
    pub orchestrator_env: Vec<String>,
}

/// `target` as a link from a document at `document`: its file name when both share a directory,
/// else `target` as given.
fn pathdiff(target: &std::path::Path, document: &std::path::Path) -> String {
    match (target.parent(), document.parent(), target.file_name()) {
        (Some(a), Some(b), Some(name)) if a == b => name.to_string_lossy().into_owned(),
        _ => target.display().to_string(),
    }
}

/// Runs the benchmark and writes the Markdown and JSON reports, keeping the hand-written notes
/// at the end of the previous Markdown report.
pub fn bench(options: &Options) -> anyhow::Result<()> {
    use anyhow::Context;
    let command = std::iter::once("xtask".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let runtime = taskq::support::runtime(Some(2)).context("starting the tokio runtime")?;
    let report = if options.render_only {
        let json = std::fs::read_to_string(&options.out_json)
            .with_context(|| format!("reading {}", options.out_json.display()))?;
        serde_json::from_str::<report::Report>(&json).with_context(|| {
            format!(
                "{} is not a report of this version",
                options.out_json.display()
            )
        })?
    } else {
        let report = runtime.block_on(run(options, command));
        if let Some(bar) = phases::progress() {
            bar.finish_and_clear();
        }
        let report = report?;
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(&options.out_json, json + "\n")
            .with_context(|| format!("writing {}", options.out_json.display()))?;
        report
    };
    let previous = std::fs::read_to_string(&options.out_md).unwrap_or_default();
    let kept = report::kept_notes(&previous);
    let svg = curves::render_svg(&curves::caption(&report), &curves::panels(&report))?;
    std::fs::write(&options.out_svg, svg)
        .with_context(|| format!("writing {}", options.out_svg.display()))?;
    // linked from the Markdown by its path relative to the Markdown's directory
    let svg_link = pathdiff(&options.out_svg, &options.out_md);
    std::fs::write(
        &options.out_md,
        report::render_markdown(&report, kept, &svg_link),
    )
    .with_context(|| format!("writing {}", options.out_md.display()))?;
    eprintln!(
        "bench: wrote {}, {} and {} in {:.0} s",
        options.out_md.display(),
        options.out_json.display(),
        options.out_svg.display(),
        report.run_seconds
    );
    for row in &report.targets {
        eprintln!(
            "  {:<60} goal {:<12} measured {}",
            row.name, row.target, row.measured
        );
    }
    Ok(())
}
