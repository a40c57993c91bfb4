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
    let dead_letters = state
        .with_timeout(state.queue.dead_letters(&mut conn, NEWEST_DEAD_LETTERS))
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
        "oldest_queued_age_ms": by_priority(&stats.oldest_queued_age_ms),
        "scheduled": stats.scheduled,
        "succeeded_total": stats.succeeded_total,
        "paused": (1..=10).filter(|p| stats.paused[p - 1]).collect::<Vec<usize>>(),
        "dead_letters": dead_letters
            .iter()
            .map(|d| {
                json!({
                    "id": d.task_id,
                    "error": d.error,
                    "at": time::OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(d.at_ms) * 1_000_000
                    )
                    .ok()
                    .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
                })
            })
            .collect::<Vec<_>>(),
    })))
}

/// How many of the newest dead letters `/stats` lists.
pub const NEWEST_DEAD_LETTERS: usize = 10;

/// `GET /metrics`: Prometheus text format. Queue gauges are read from Redis at scrape time.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut conn = state.redis.clone();
    match state
        .with_timeout(state.queue.stats(&mut conn, state.worker_dead_after))
        .await
    {
        Ok(stats) => {
            metrics::gauge!("agent_redis_up").set(1.0);
            for (i, priority) in (1..=10).map(|p: u8| p.to_string()).enumerate() {
                metrics::gauge!("agent_queue_depth", "priority" => priority.clone())
                    .set(stats.queued[i] as f64);
                metrics::gauge!("agent_tasks_in_flight", "priority" => priority.clone())
                    .set(stats.in_flight[i] as f64);
                metrics::gauge!("agent_consumer_lag_seconds", "priority" => priority)
                    .set(stats.oldest_queued_age_ms[i] as f64 / 1000.0);
            }
            metrics::gauge!("agent_retry_scheduled").set(stats.retry_scheduled as f64);
            metrics::gauge!("agent_dead_letter_size").set(stats.dead_lettered as f64);
            metrics::gauge!("agent_live_workers").set(stats.live_workers as f64);
        }
        Err(_) => metrics::gauge!("agent_redis_up").set(0.0),
    }
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
