//! `perf_report`: the benchmark run behind `just bench` (see `loadtests::perf`).
//!
//! Run from the workspace root after `cargo build --release -p orchestrator -p worker -p
//! loadtests`; `perf_report --help` lists the options.

use anyhow::Context;
use clap::Parser;
use loadtests::perf::{Options, report};

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let command = std::iter::once("perf_report".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = runtime.block_on(loadtests::perf::run(&options, command))?;
    // Hand-written notes at the end of the previous report survive the rewrite.
    let previous = std::fs::read_to_string(&options.out_md).unwrap_or_default();
    let kept = report::kept_notes(&previous);
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&options.out_json, json + "\n")
        .with_context(|| format!("writing {}", options.out_json.display()))?;
    std::fs::write(&options.out_md, report::render_markdown(&report, kept))
        .with_context(|| format!("writing {}", options.out_md.display()))?;
    eprintln!(
        "perf_report: wrote {} and {} in {:.0} s",
        options.out_md.display(),
        options.out_json.display(),
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
