//! `cargo xtask <command>`: packaging and developer chores.
//!
//! ```text
//! cargo xtask images [--force] [--only worker]     # build the container images when stale
//! cargo xtask bench [--phases drain] ...           # benchmark a local system (just bench)
//! cargo xtask bare-enqueue REDIS_URL LISTEN_ADDR   # the bench-only minimal enqueue server
//! ```

mod perf;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "Packaging and developer chores of Agent System"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the container images agent-redis, agent-orchestrator, agent-worker when stale.
    Images(xtask::images::ImagesArgs),
    /// Benchmark a local system and write docs/benchmarks.md and .json (`just bench`).
    Bench(Box<perf::Options>),
    /// The bench-only minimal enqueue server the benchmark measures as a ceiling.
    BareEnqueue {
        /// `redis://host:port` of the Redis to enqueue into.
        redis_url: String,
        /// Address to listen on, e.g. `127.0.0.1:8100`.
        listen_addr: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Images(args) => xtask::images::run(&args),
        Command::Bench(options) => perf::bench(&options),
        Command::BareEnqueue {
            redis_url,
            listen_addr,
        } => bare_enqueue(&redis_url, &listen_addr),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn bare_enqueue(redis_url: &str, listen_addr: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let app = perf::bare::app(redis_url)
            .await
            .with_context(|| format!("connecting to {redis_url}"))?;
        let listener = tokio::net::TcpListener::bind(listen_addr)
            .await
            .with_context(|| format!("listening on {listen_addr}"))?;
        axum::serve(listener, app).await.context("serving")
    })
}
