//! `/priorities/{p}/pause` and `/priorities/{p}/resume`: stop and restart the start of a
//! priority level's queued tasks. A paused level keeps accepting tasks; a running task of it
//! taken over from a dead worker still runs.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use taskq::Priority;

use crate::error::AppError;
use crate::routes::tasks::AppPath;
use crate::startup::AppState;

fn priority(raw: &str) -> Result<Priority, AppError> {
    raw.parse::<i64>()
        .ok()
        .and_then(|p| Priority::parse(p).ok())
        .ok_or_else(|| AppError::BadRequest("priority must be an integer from 1 to 10".into()))
}

async fn set_paused(state: AppState, raw: &str, paused: bool) -> Result<Response, AppError> {
    let priority = priority(raw)?;
    let mut conn = state.redis.clone();
    state
        .with_timeout(state.queue.set_paused(&mut conn, priority, paused))
        .await?;
    tracing::info!(
        priority = priority.get(),
        paused,
        "priority level paused or resumed"
    );
    Ok(Json(json!({ "priority": priority.get(), "paused": paused })).into_response())
}

/// `POST /priorities/{p}/pause`.
pub async fn pause(
    State(state): State<AppState>,
    AppPath(raw): AppPath<String>,
) -> Result<Response, AppError> {
    set_paused(state, &raw, true).await
}

/// `POST /priorities/{p}/resume`.
pub async fn resume(
    State(state): State<AppState>,
    AppPath(raw): AppPath<String>,
) -> Result<Response, AppError> {
    set_paused(state, &raw, false).await
}
