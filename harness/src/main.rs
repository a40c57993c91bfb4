//! `harness`: run fault scenarios against the Agent System services.
//!
//! ```text
//! harness run scenarios/kill-redis.toml [--runtime docker|process] [--report r.json] [--seed N] [--time-scale F] [--no-progress]
//! harness run kill-redis worker-restart      # names resolve to scenarios/NAME.toml
//! harness list                               # the shipped scenarios
//! harness up [--workers 2]                   # a cluster to poke at; Ctrl-C removes it
//! harness sweep                              # remove leftovers of crashed runs
//! harness check run.history.jsonl [--scenario kill-redis] [--report r.json]   # judge a history again
//! ```
//!
//! On a terminal `run` shows a live line per running scenario (phase, elapsed, counts); log
//! lines go through [`harness::progress::LogWriter`] so they never cut through it.
//!
//! Exit status: 0 when every expectation of every scenario held, 1 when one failed, 2 on a usage
//! or setup error, 130 after Ctrl-C (everything created is removed first).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use harness::{
    Prepare, RunOptions, Scenario,
    cluster::{self, Cluster, ClusterSpec},
    report,
    scenario::{Persistence, RuntimeKind},
};

#[derive(Parser)]
#[command(
    name = "harness",
    version,
    about = "Fault-injection harness for Agent System"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files (or names from scenarios/) and check their expectations.
    Run(RunArgs),
    /// List the scenarios in a directory.
    List {
        /// Directory holding the scenario files.
        #[arg(long, default_value = "scenarios")]
        dir: PathBuf,
    },
    /// Start a cluster, print its endpoints, and wait for Ctrl-C.
    Up(UpArgs),
    /// Remove containers, networks, volumes and run directories left by crashed runs.
    Sweep,
    /// Judge a saved history again: exit 0 when every expectation holds, 1 when one fails, 2
    /// when the input cannot be read.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The history (`harness run --history FILE`, or the `.history.jsonl` beside a report).
    history: PathBuf,
    /// Take the expectations from this scenario file or name (default: no anomaly allowed).
    #[arg(long)]
    scenario: Option<String>,
    /// Write the JSON report (and the pictures beside it) here.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Scenario files, or names resolved as scenarios/NAME.toml.
    #[arg(required = true)]
    files: Vec<String>,
    /// Runtime to use (default: HARNESS_RUNTIME, the scenario's, or docker when an engine answers).
    #[arg(long)]
    runtime: Option<RuntimeKind>,
    /// Write the JSON report here (an object for one scenario, an array for several); the
    /// history and the pictures (`.history.jsonl`, `.html`) go beside it.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the run's history here as JSON Lines (several scenarios: `FILE.NAME.jsonl`).
    #[arg(long)]
    history: Option<PathBuf>,
    /// Seed for chaos faults (overrides the file's).
    #[arg(long)]
    seed: Option<u64>,
    /// Multiply step offsets and load duration (e.g. 0.25 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Do not build images or binaries first.
    #[arg(long)]
    no_build: bool,
    /// Save every service's logs under DIR/<run id>/.
    #[arg(long)]
    logs_dir: Option<PathBuf>,
    /// No live progress line on a terminal: a plain log line per phase, as when not a terminal.
    #[arg(long)]
    no_progress: bool,
}

#[derive(clap::Args)]
struct UpArgs {
    /// Runtime to use.
    #[arg(long)]
    runtime: Option<RuntimeKind>,
    /// Worker replicas.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Redis persistence: aof-always, aof-everysec or none.
    #[arg(long, default_value = "aof-always", value_parser = parse_persistence)]
    persistence: Persistence,
    /// Do not build images or binaries first.
    #[arg(long)]
    no_build: bool,
}

fn parse_persistence(raw: &str) -> Result<Persistence, String> {
    match raw {
        "aof-always" => Ok(Persistence::AofAlways),
        "aof-everysec" => Ok(Persistence::AofEverysec),
        "aof-no" => Ok(Persistence::AofNo),
        "none" => Ok(Persistence::None),
        other => Err(format!(
            "unknown persistence `{other}`, expected aof-always, aof-everysec, aof-no or none"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "harness=info,goose=error,warn".into()),
        )
        // stderr, hiding the progress bars (if any) while a line is written.
        .with_writer(harness::progress::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    harness::cleanup::install_interrupt_handler();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: building the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run(args).await,
        Command::Check(args) => check(&args),
        Command::List { dir } => list(&dir),
        Command::Up(args) => up(args).await,
        Command::Sweep => {
            let docker = match harness::cleanup::docker_client().await {
                Ok(docker) => Some(docker),
                Err(e) => {
                    eprintln!("no docker engine ({e:#}); sweeping process-runtime runs only");
                    None
                }
            };
            let swept = harness::cleanup::sweep_leftovers(docker.as_ref()).await?;
            println!(
                "removed {} container(s), {} network(s), {} volume(s)",
                swept.containers.len(),
                swept.networks.len(),
                swept.volumes.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn resolve_scenario_path(arg: &str) -> PathBuf {
    let path = PathBuf::from(arg);
    if path.exists() {
        return path;
    }
    let by_name = PathBuf::from("scenarios").join(format!("{arg}.toml"));
    if by_name.exists() { by_name } else { path }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if !(args.time_scale > 0.0 && args.time_scale.is_finite()) {
        anyhow::bail!("--time-scale must be a positive number");
    }
    // Parse everything first: a typo in the third file should not cost two runs.
    let scenarios = args
        .files
        .iter()
        .map(|f| Scenario::from_file(resolve_scenario_path(f)))
        .collect::<Result<Vec<_>, _>>()?;
    let options = RunOptions {
        runtime: args.runtime,
        seed: args.seed,
        time_scale: args.time_scale,
        prepare: if args.no_build {
            Prepare::Skip
        } else {
            Prepare::Build
        },
        logs_dir: args.logs_dir,
    };
    harness::progress::enable_bars(!args.no_progress);
    let mut reports = Vec::new();
    for scenario in &scenarios {
        let report = harness::run_scenario(scenario, &options).await;
        println!("{}", report.summary());
        let paths = report::artifact_paths(
            &scenario.name,
            scenarios.len(),
            args.report.as_deref(),
            args.history.as_deref(),
        );
        report::write_artifacts(&report, &paths)?;
        for path in paths.histories.iter().chain(paths.html.iter()) {
            println!("written: {}", path.display());
        }
        reports.push(report);
    }
    if let Some(path) = &args.report {
        std::fs::write(path, report::to_json(&reports)?)
            .with_context(|| format!("writing the report to {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    let passed = reports.iter().filter(|r| r.passed).count();
    println!("{passed} passed, {} failed", reports.len() - passed);
    Ok(if passed == reports.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `harness check`: the run's judgement again, from its history alone.
fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let events = match harness::history::read(&args.history) {
        Ok(events) => events,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let (name, expect, partitions) = match &args.scenario {
        Some(file) => {
            let scenario = Scenario::from_file(resolve_scenario_path(file))?;
            let shards = scenario.cluster.redis.shards as u16;
            (scenario.name, scenario.expect, shards)
        }
        None => (
            args.history.display().to_string(),
            harness::scenario::Expectations::default(),
            1,
        ),
    };
    let mut report = harness::Report {
        scenario: name.clone(),
        file: args.history.display().to_string(),
        ..harness::Report::default()
    };
    match harness::judge::steps_from_history(&events) {
        Ok(steps) => report.steps = steps,
        Err(e) => {
            eprintln!("error: {}: {e}", args.history.display());
            return Ok(ExitCode::from(2));
        }
    }
    harness::judge::judge(&mut report, &expect, partitions, events);
    println!("{}", report.summary());
    if let Some(path) = &args.report {
        std::fs::write(path, report::to_json(std::slice::from_ref(&report))?)
            .with_context(|| format!("writing the report to {}", path.display()))?;
        let paths = report::artifact_paths(&name, 1, Some(path), None);
        report::write_artifacts(
            &report,
            &report::ArtifactPaths {
                histories: Vec::new(),
                html: paths.html,
            },
        )?;
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn list(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    let mut broken = 0;
    for path in paths {
        match Scenario::from_file(&path) {
            Ok(s) => println!("{:<22} {}", s.name, s.description),
            Err(e) => {
                broken += 1;
                println!("{:<22} INVALID: {e}", path.display());
            }
        }
    }
    Ok(if broken == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let (runtime, why) = cluster::choose_runtime(args.runtime, None).await?;
    eprintln!("runtime {runtime}: {why}");
    if !args.no_build {
        harness::runner::prepare_runtime(runtime).await?;
    }
    let mut spec = ClusterSpec::new("up", args.workers);
    spec.persistence = args.persistence;
    let started = std::time::Instant::now();
    let cluster = Cluster::start(runtime, spec).await?;
    let phases = cluster.startup_times();
    println!(
        "cluster up in {:.2}s (redis {:.2}s, orchestrator {:.2}s, workers {:.2}s):\n{}",
        started.elapsed().as_secs_f64(),
        phases.redis.as_secs_f64(),
        phases.orchestrator.as_secs_f64(),
        phases.workers.as_secs_f64(),
        serde_json::to_string_pretty(&cluster.endpoints())?
    );
    println!("Ctrl-C stops it and removes everything it created");
    // The interrupt handler (cleanup::install_interrupt_handler) removes the cluster and exits.
    std::future::pending::<()>().await;
    cluster.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}
