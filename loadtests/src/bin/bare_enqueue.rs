//! `bare_enqueue`: the bench-only minimal enqueue server (see `loadtests::perf::bare`).
//!
//! `bare_enqueue REDIS_URL LISTEN_ADDR`, e.g. `bare_enqueue redis://127.0.0.1:6379 127.0.0.1:8100`.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(redis_url), Some(listen)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bare_enqueue REDIS_URL LISTEN_ADDR");
    };
    let app = loadtests::perf::bare::app(&redis_url)
        .await
        .with_context(|| format!("connecting to {redis_url}"))?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    axum::serve(listener, app).await.context("serving")
}
