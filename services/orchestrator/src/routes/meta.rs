//! Operational routes: `/healthz`, `/readyz`, `/stats`, `/metrics`, `/openapi.json`.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::AppError;
use crate::startup::AppState;

/// The OpenAPI document, maintained by hand next to the handlers.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// `GET /healthz`: the process is alive (does not touch Redis).
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: Redis answers a PING within the Redis timeout.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, AppError> {
    let mut conn = state.redis.clone();
    let ping = async {
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(taskq::QueueError::from)
    };
    state.with_timeout(ping).await?;
    Ok(Json(json!({ "status": "ready" })))
}

/// `GET /stats`: queue depth per priority, in flight, retry-scheduled, dead-lettered, live
/// workers.
pub async fn stats(State(state): State<AppState>) -> Result<Json<Value>, AppError> {
    let mut conn = state.redis.clone();
    let stats = state
        .with_timeout(state.queue.stats(&mut conn, state.worker_dead_after))
        .await?;
    let by_priority = |counts: &[u64; 10]| {
        counts
            .iter()
            .enumerate()
            .map(|(i, n)| ((i + 1).to_string(), json!(n)))
            .collect::<serde_json::Map<_, _>>()
    };
    Ok(Json(json!({
        "queued": by_priority(&stats.queued),
        "queued_total": stats.queued.iter().sum::<u64>(),
        "in_flight": stats.in_flight.iter().sum::<u64>(),
        "in_flight_by_priority": by_priority(&stats.in_flight),
        "retry_scheduled": stats.retry_scheduled,
        "dead_lettered": stats.dead_lettered,
        "live_workers": stats.live_workers,
    })))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}
