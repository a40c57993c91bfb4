//! The `worker` binary: parses configuration, then hands over to the library.

use std::process::ExitCode;

use worker::config::{Command, Config};

fn main() -> ExitCode {
    let (config, deprecated) = Config::load();
    // WORKER_THREADS: one thread by default (no cross-thread wake-ups per task), or a pool.
    match taskq::support::runtime(Some(config.threads)) {
        Ok(runtime) => runtime.block_on(run(config, deprecated)),
        Err(err) => {
            eprintln!("worker: starting the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, deprecated: Vec<taskq::support::Deprecated>) -> ExitCode {
    let result = match config.command {
        Some(Command::Healthcheck) => healthcheck::check(config.metrics_addr.port()).await,
        None => {
            taskq::support::init_tracing_buffered(config.redis.log_format);
            taskq::support::warn_deprecated(&deprecated);
            worker::startup::run_until_stopped(config).await
        }
    };
    taskq::log_buffer::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("worker: {err:#}");
            ExitCode::FAILURE
        }
    }
}
