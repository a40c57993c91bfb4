//! The `worker` binary: parses configuration, then hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use worker::config::{Command, Config};

/// mimalloc instead of glibc's malloc: the hot paths allocate and free many small buffers per
/// task, and glibc's bookkeeping for them cost about a fifth of the CPU (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let result = match config.command {
        Some(Command::Healthcheck) => worker::healthcheck(&config).await,
        None => {
            taskq::support::init_tracing(config.log_format);
            worker::startup::run_until_stopped(config).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("worker: {err:#}");
            ExitCode::FAILURE
        }
    }
}
