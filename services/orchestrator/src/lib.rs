//! The orchestrator: Agent System's HTTP API.
//!
//! - [`config`]: flags with environment fallbacks.
//! - [`startup`]: builds the router ([`startup::app`]) and serves it with graceful shutdown.
//! - [`routes`]: one handler per action (`create_task`, `get_task`, `cancel_task`, ...).
//! - [`error`]: [`error::AppError`], the one error type every handler returns; it renders the
//!   JSON error body and never leaks internals.
//! - [`guard`]: bearer-token authentication and per-client rate limiting.
//! - [`telemetry`]: HTTP metrics.

pub mod config;
pub mod error;
pub mod guard;
pub mod routes;
pub mod startup;
pub mod telemetry;

use anyhow::Context;

/// Exit status for container health checks: GETs this process's own `/healthz`.
pub async fn healthcheck(config: &config::Config) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{}/healthz", config.listen_addr.port());
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .context("building http client")?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    Ok(())
}
