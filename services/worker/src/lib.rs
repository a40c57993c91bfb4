//! The worker: a consumer-group member that claims tasks from Redis and executes them.
//!
//! - [`config`]: flags with environment fallbacks.
//! - [`handler`]: the [`handler::TaskHandler`] trait and the built-in `simulate` and `http`
//!   handlers.
//! - [`runner`]: the claim → execute → finish loop, heartbeats, reclaiming the entries of dead
//!   workers, retry promotion and graceful shutdown.
//! - [`startup`]: wires the runner to Redis, serves `/healthz` and `/metrics`, handles signals.

pub mod config;
pub mod handler;
pub mod runner;
pub mod startup;

use anyhow::Context;

/// Exit status for container health checks: GETs this process's own `/healthz`.
pub async fn healthcheck(config: &config::Config) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{}/healthz", config.metrics_addr.port());
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
