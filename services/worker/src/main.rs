//! The `worker` binary: parses configuration, then hands over to the library.

use std::process::ExitCode;

use worker::config::{Command, Config};

fn main() -> ExitCode {
    let (config, deprecated) = Config::load();
    // WORKER_THREADS: one thread by default (no cross-thread wake-ups per task), or a pool.
    let mut builder = if config.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(usize::from(config.threads));
        builder
    };
    match builder.enable_all().build() {
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
