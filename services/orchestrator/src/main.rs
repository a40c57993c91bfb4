//! The `orchestrator` binary: parses configuration, then hands over to the library.

use std::process::ExitCode;

use orchestrator::config::{Command, Config};

/// mimalloc instead of glibc's malloc: a request allocates and frees many small buffers across
/// two runtime threads, and under wrk load the orchestrator's CPU per `POST /tasks` fell from
/// about 35 µs to about 20 µs with it (docs/benchmarks.md, "Changes").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let (config, deprecated) = Config::load();
    // ORCHESTRATOR_THREADS: a pool of one thread per core by default.
    match taskq::support::runtime(config.threads) {
        Ok(runtime) => runtime.block_on(run(config, deprecated)),
        Err(err) => {
            eprintln!("orchestrator: starting the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, deprecated: Vec<taskq::support::Deprecated>) -> ExitCode {
    let result = match config.command {
        Some(Command::Healthcheck) => healthcheck::check(config.listen_addr.port()).await,
        None => {
            taskq::support::init_tracing(config.redis.log_format);
            taskq::support::warn_deprecated(&deprecated);
            orchestrator::startup::run_until_stopped(config).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("orchestrator: {err:#}");
            ExitCode::FAILURE
        }
    }
}
