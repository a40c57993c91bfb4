//! The bench-only bare enqueue server: one axum route, `POST /tasks`, that runs the enqueue
//! script (task hash + stream entry) over one multiplexed Redis connection and answers 201 with
//! the id. No validation beyond JSON, no middleware, no metrics, no logs: the ceiling of what
//! axum plus Redis allow on this machine, to read the orchestrator's figures against.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use redis::Script;
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use taskq::model::RECORD_VERSION;
use taskq::{Keys, Priority, TaskId};

use crate::perf::script::enqueue_script_source;

/// Key prefix of the bare server's tasks, apart from the orchestrator's.
pub const BARE_PREFIX: &str = "bare";

#[derive(Clone)]
struct Bare {
    conn: MultiplexedConnection,
    script: Arc<Script>,
    keys: Arc<Keys>,
}

#[derive(Deserialize)]
struct NewTask {
    description: String,
    priority: Option<i64>,
}

async fn create_task(State(bare): State<Bare>, Json(task): Json<NewTask>) -> Response {
    let Ok(priority) = Priority::parse(task.priority.unwrap_or(5)) else {
        return StatusCode::UNPROCESSABLE_ENTITY.into_response();
    };
    let task_id = TaskId::new();
    let mut conn = bare.conn.clone();
    // {outcome, id, created_ms, due_ms, fresh_ms}: enqueue.lua's answer
    let reply: redis::RedisResult<(i64, String, i64, i64, i64)> = bare
        .script
        .key(bare.keys.task(&task_id))
        .key(bare.keys.stream(priority))
        .arg(task_id.to_string())
        .arg(task.description)
        .arg(priority.get())
        .arg(5)
        .arg(86_400)
        .arg(RECORD_VERSION)
        .invoke_async(&mut conn)
        .await;
    match reply {
        Ok((_, id, _, _, _)) => {
            (StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response()
        }
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// The router over one multiplexed connection to `redis_url`.
pub async fn app(redis_url: &str) -> anyhow::Result<Router> {
    let client = redis::Client::open(redis_url)?;
    let conn = client.get_multiplexed_async_connection().await?;
    let bare = Bare {
        conn,
        script: Arc::new(Script::new(&enqueue_script_source())),
        keys: Arc::new(Keys::new(BARE_PREFIX)),
    };
    Ok(Router::new()
        .route("/tasks", post(create_task))
        .with_state(bare))
}
