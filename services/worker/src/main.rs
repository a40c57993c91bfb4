//! The `worker` binary: parses configuration, then hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use worker::config::{Command, Config};

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
