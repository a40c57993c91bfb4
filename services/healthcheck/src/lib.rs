//! The `healthcheck` subcommand shared by the orchestrator and the worker binaries: container
//! health checks run it inside the image, which has no shell or curl.
//!
//! A crate of its own because `taskq`, the one crate both services share, knows nothing of HTTP.

use std::time::Duration;

use anyhow::Context;

/// How long the check waits for an answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// GETs `http://127.0.0.1:{port}/healthz`; `Ok` iff it answers 2xx within [`TIMEOUT`]. The
/// binary turns the result into its exit status.
pub async fn check(port: u16) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{port}/healthz");
    let response = reqwest::Client::builder()
        .timeout(TIMEOUT)
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

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;

    async fn serve(status: StatusCode) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let app = Router::new().route("/healthz", get(move || async move { status }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    #[tokio::test]
    async fn passes_on_200_and_fails_on_an_error_status_or_no_server() {
        super::check(serve(StatusCode::OK).await)
            .await
            .expect("200 is healthy");
        let err = super::check(serve(StatusCode::SERVICE_UNAVAILABLE).await)
            .await
            .expect_err("503 is not");
        assert!(err.to_string().contains("503"), "{err}");
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        super::check(closed).await.expect_err("nothing listening");
    }
}
