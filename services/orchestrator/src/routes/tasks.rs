//! `/tasks`: create, read, list, cancel and retry tasks.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use taskq::queue::{CancelOutcome, ListQuery, MAX_LIST_LIMIT, RetryOutcome};
use taskq::{
    Description, EnqueueOutcome, NewTask, Priority, Schedule, Status, TaskId, TaskRecord,
    TaskTimeout,
};

use crate::error::AppError;
use crate::guard;
use crate::startup::AppState;

/// `axum::Json`, with rejections turned into [`AppError`] so every error has the JSON body.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(AppError))]
pub struct AppJson<T>(pub T);

/// `axum::extract::Path`, with rejections turned into [`AppError`] (JSON body).
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(Path), rejection(AppError))]
pub struct AppPath<T>(pub T);

/// Body of `POST /tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskRequest {
    /// What to do: 1–10,000 characters, not all whitespace.
    pub description: String,
    /// 1 (most urgent) to 10; 5 when absent. An explicit `null` is a type error, not "absent".
    #[serde(default, deserialize_with = "present_integer")]
    pub priority: Option<i64>,
    /// Execution deadline, 1 ms to one day; the worker's `TASK_TIMEOUT` when absent.
    #[serde(default, deserialize_with = "present_integer")]
    pub timeout_ms: Option<i64>,
    /// Start this many milliseconds from now (0 to 30 days); not with `run_at`.
    #[serde(default, deserialize_with = "present_integer")]
    pub delay_ms: Option<i64>,
    /// Start at this RFC 3339 time (at most 30 days ahead; past: at once); not with `delay_ms`.
    #[serde(default, deserialize_with = "present_string")]
    pub run_at: Option<String>,
}

fn present_integer<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    i64::deserialize(deserializer).map(Some)
}

fn present_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    String::deserialize(deserializer).map(Some)
}

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, AppError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = raw
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN)
        .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            AppError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            ))
        })?;
    Ok(Some(key))
}

fn task_response(status: StatusCode, record: &TaskRecord) -> Response {
    let location = format!("/tasks/{}", record.id);
    let mut response = (status, Json(record)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// `POST /tasks`: validates, enqueues atomically, answers 201 with the record. A replayed
/// `Idempotency-Key` (the caller's own, see [`guard::idempotency_scope`]) answers 200 with the
/// task it created first, or 422 `idempotency_key_reused` when that task was asked for with
/// another description, priority or timeout.
pub async fn create_task(
    State(state): State<AppState>,
    headers: HeaderMap,
    AppJson(request): AppJson<CreateTaskRequest>,
) -> Result<Response, AppError> {
    let description = Description::parse(request.description)?;
    let priority = request
        .priority
        .map(Priority::parse)
        .transpose()?
        .unwrap_or_default();
    let timeout = request
        .timeout_ms
        .map(TaskTimeout::from_millis)
        .transpose()?;
    let schedule = Schedule::parse(
        request.delay_ms,
        request.run_at.as_deref(),
        time::OffsetDateTime::now_utc(),
    )?;
    let key = idempotency_key(&headers)?;
    let scope = match key {
        Some(_) => guard::idempotency_scope(&state.tokens, &headers),
        None => taskq::IdempotencyScope::open(),
    };
    let task = NewTask {
        description,
        priority,
        timeout,
        schedule,
    };
    let mut conn = state.redis.clone();
    let enqueue = state
        .queue
        .for_new_task(&scope, key)
        .enqueue_in_scope(&mut conn, &task, &scope, key);
    let outcome = state.with_timeout_unknown_outcome(enqueue).await?;
    match outcome {
        EnqueueOutcome::Created(record) => {
            metrics::counter!("agent_tasks_enqueued_total", "priority" => priority.get().to_string())
                .increment(1);
            tracing::debug!(task_id = %record.id, priority = priority.get(), "task enqueued");
            Ok(task_response(StatusCode::CREATED, &record))
        }
        EnqueueOutcome::Replayed(task_id) => {
            let record = state
                .with_timeout(state.queue.of_task(&task_id).get(&mut conn, &task_id))
                .await?
                .ok_or_else(|| {
                    AppError::Conflict(format!(
                        "Idempotency-Key was used for task {task_id}, which has expired"
                    ))
                })?;
            let mut response = task_response(StatusCode::OK, &record);
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
    }
}

/// `GET /tasks/{id}`.
pub async fn get_task(
    State(state): State<AppState>,
    AppPath(raw_id): AppPath<String>,
) -> Result<Response, AppError> {
    let task_id = TaskId::parse(&raw_id)?;
    let mut conn = state.redis.clone();
    let record = state
        .with_timeout(state.queue.of_task(&task_id).get(&mut conn, &task_id))
        .await?
        .ok_or_else(|| AppError::TaskNotFound(task_id.to_string()))?;
    Ok(Json(record).into_response())
}

/// `DELETE /tasks/{id}`: cancels a task that has not started (queued or waiting for a retry);
/// 409 once it runs or has finished.
pub async fn cancel_task(
    State(state): State<AppState>,
    AppPath(raw_id): AppPath<String>,
) -> Result<Response, AppError> {
    let task_id = TaskId::parse(&raw_id)?;
    let mut conn = state.redis.clone();
    match state
        .with_timeout(state.queue.of_task(&task_id).cancel(&mut conn, &task_id))
        .await?
    {
        CancelOutcome::NotFound => Err(AppError::TaskNotFound(task_id.to_string())),
        CancelOutcome::NotCancellable(status) => Err(AppError::Conflict(format!(
            "task {task_id} is {status} and can no longer be cancelled"
        ))),
        CancelOutcome::Cancelled => {
            let record = state
                .with_timeout(state.queue.of_task(&task_id).get(&mut conn, &task_id))
                .await?
                .ok_or_else(|| AppError::TaskNotFound(task_id.to_string()))?;
            Ok(Json(record).into_response())
        }
    }
}

/// `POST /tasks/{id}/retry`: queues a `dead` or `cancelled` task again (a new attempt series; the
/// record keeps its last error); 409 for a task in any other state.
pub async fn retry_task(
    State(state): State<AppState>,
    AppPath(raw_id): AppPath<String>,
) -> Result<Response, AppError> {
    let task_id = TaskId::parse(&raw_id)?;
    let mut conn = state.redis.clone();
    match state
        .with_timeout(state.queue.of_task(&task_id).retry(&mut conn, &task_id))
        .await?
    {
        RetryOutcome::NotFound => Err(AppError::TaskNotFound(task_id.to_string())),
        RetryOutcome::NotRetryable(status) => Err(AppError::Conflict(format!(
            "task {task_id} is {status}; only dead or cancelled tasks can be retried"
        ))),
        RetryOutcome::Queued => {
            metrics::counter!("agent_tasks_retried_total").increment(1);
            let record = state
                .with_timeout(state.queue.of_task(&task_id).get(&mut conn, &task_id))
                .await?
                .ok_or_else(|| AppError::TaskNotFound(task_id.to_string()))?;
            Ok(Json(record).into_response())
        }
    }
}

/// Page size of `GET /tasks` when the query gives none.
pub const DEFAULT_LIST_LIMIT: usize = 100;

/// Reads the query of `GET /tasks`: `status` (required), `priority`, `limit`, `cursor`, each at
/// most once; anything else is a 400 naming the parameter.
fn list_query(
    partitions: &taskq::Partitions,
    pairs: Vec<(String, String)>,
) -> Result<ListQuery, AppError> {
    let bad = |message: String| AppError::BadRequest(message);
    let (mut status, mut priority, mut limit, mut cursor) = (None, None, None, None);
    for (name, value) in pairs {
        let slot = match name.as_str() {
            "status" => &mut status,
            "priority" => &mut priority,
            "limit" => &mut limit,
            "cursor" => &mut cursor,
            other => {
                return Err(bad(format!(
                    "unknown query parameter {other:?}; expected status, priority, limit, cursor"
                )));
            }
        };
        if slot.replace(value).is_some() {
            return Err(bad(format!("query parameter {name} given twice")));
        }
    }
    let status: Status = status
        .ok_or_else(|| bad("query parameter status is required".into()))?
        .parse()
        .map_err(|_| {
            bad(
                "status must be one of queued, scheduled, running, retrying, dead, succeeded, \
                 cancelled"
                    .into(),
            )
        })?;
    let priority = priority
        .map(|raw| {
            raw.parse::<i64>()
                .ok()
                .and_then(|p| Priority::parse(p).ok())
                .ok_or_else(|| bad("priority must be an integer from 1 to 10".into()))
        })
        .transpose()?;
    let limit = limit
        .map(|raw| {
            raw.parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                .ok_or_else(|| {
                    bad(format!(
                        "limit must be an integer from 1 to {MAX_LIST_LIMIT}"
                    ))
                })
        })
        .transpose()?
        .unwrap_or(DEFAULT_LIST_LIMIT);
    let cursor = cursor
        .map(|raw| {
            partitions
                .parse_cursor(status, &raw)
                .map_err(|err| bad(err.to_string()))
        })
        .transpose()?;
    Ok(ListQuery {
        status,
        priority,
        limit,
        cursor,
    })
}

/// `GET /tasks?status=S&priority=P&limit=N&cursor=C`: one page of the tasks in one status
/// (`{"tasks": [...], "next_cursor": ...}`), its cost bounded by `limit`: a page may hold fewer
/// tasks than `limit` while `next_cursor` is not null. Finished tasks are listed while retained.
pub async fn list_tasks(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(pairs) = query.map_err(|err| AppError::BadRequest(err.body_text()))?;
    let query = list_query(&state.queue, pairs)?;
    let mut conn = state.redis.clone();
    let page = state
        .with_timeout(state.queue.list(&mut conn, &query))
        .await?;
    Ok(Json(json!({
        "tasks": page.tasks,
        "next_cursor": page.next_cursor.map(|c| c.to_string()),
    }))
    .into_response())
}
