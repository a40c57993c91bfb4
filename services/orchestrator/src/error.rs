//! [`AppError`]: every failure a handler can return, rendered as
//! `{"error": {"code": "...", "message": "..."}}` with the right status.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use taskq::{QueueError, ValidationError};

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// A failure, mapped to an HTTP status and a JSON body.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The body is not valid JSON (400).
    #[error("{0}")]
    MalformedJson(String),
    /// The body is not `application/json` (415).
    #[error("expected a body with content type application/json")]
    UnsupportedMediaType,
    /// The body is larger than the limit (413).
    #[error("request body is too large")]
    PayloadTooLarge,
    /// Well-formed JSON with missing fields, wrong types or out-of-range values (422).
    #[error("{0}")]
    Validation(String),
    /// The `Idempotency-Key` created a task for another request body (422).
    #[error(
        "Idempotency-Key was already used with another request body; send a new key for a new task"
    )]
    IdempotencyKeyReused,
    /// A header or path parameter is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such task (404).
    #[error("no task with id {0}")]
    TaskNotFound(String),
    /// No such route (404).
    #[error("no route for this path")]
    RouteNotFound,
    /// The method is not supported on this route (405).
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The task cannot change this way in its current state (409).
    #[error("{0}")]
    Conflict(String),
    /// Redis is unreachable, too slow, or refuses for now (`BUSY`, `OOM`, `READONLY`, ...: not
    /// the client's fault) (503 with `Retry-After`).
    #[error("the task store is unavailable; retry shortly")]
    Unavailable,
    /// Redis did not answer an enqueue in time: the task may or may not exist (503 with
    /// `Retry-After`; retry with the same `Idempotency-Key` to find out without a duplicate).
    #[error(
        "the task store did not confirm in time; the task may have been queued. Retry with the same Idempotency-Key"
    )]
    OutcomeUnknown,
    /// `MAX_QUEUED` tasks wait already; nothing was queued (503 with `Retry-After`).
    #[error("the queue is full ({waiting} tasks waiting, limit {limit}); retry later")]
    QueueFull {
        /// Tasks waiting when the enqueue was refused.
        waiting: u64,
        /// `MAX_QUEUED`.
        limit: u64,
    },
    /// Too many requests in progress; shed at once (503 with `Retry-After`).
    #[error("the server is overloaded; retry shortly")]
    Overloaded,
    /// The request took longer than the configured limit (503 with `Retry-After`).
    #[error("the request timed out; retry shortly")]
    Timeout,
    /// Anything else (500); the cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl AppError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::MalformedJson(_) | AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Validation(_) | AppError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            AppError::TaskNotFound(_) | AppError::RouteNotFound => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Unavailable
            | AppError::QueueFull { .. }
            | AppError::Timeout
            | AppError::Overloaded
            | AppError::OutcomeUnknown => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable error code.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::MalformedJson(_) => "malformed_json",
            AppError::UnsupportedMediaType => "unsupported_media_type",
            AppError::PayloadTooLarge => "payload_too_large",
            AppError::Validation(_) => "validation_failed",
            AppError::IdempotencyKeyReused => "idempotency_key_reused",
            AppError::BadRequest(_) => "bad_request",
            AppError::TaskNotFound(_) => "task_not_found",
            AppError::RouteNotFound => "not_found",
            AppError::MethodNotAllowed => "method_not_allowed",
            AppError::Conflict(_) => "conflict",
            AppError::Unavailable => "store_unavailable",
            AppError::QueueFull { .. } => "queue_full",
            AppError::Timeout => "timeout",
            AppError::Overloaded => "overloaded",
            AppError::OutcomeUnknown => "outcome_unknown",
            AppError::Internal(_) => "internal",
        }
    }
}

impl From<ValidationError> for AppError {
    fn from(err: ValidationError) -> Self {
        match err {
            ValidationError::InvalidTaskId(_) => AppError::BadRequest(err.to_string()),
            _ => AppError::Validation(err.to_string()),
        }
    }
}

impl From<QueueError> for AppError {
    fn from(err: QueueError) -> Self {
        if let QueueError::QueueFull { waiting, limit } = err {
            AppError::QueueFull { waiting, limit }
        } else if let QueueError::IdempotencyKeyReused { .. } = err {
            AppError::IdempotencyKeyReused
        } else if let QueueError::NotReplicated { acked, wanted } = err {
            // Applied on the primary, not confirmed by enough replicas: a failover may undo it.
            tracing::warn!(
                acked,
                wanted,
                "a write was not confirmed by REPLICA_ACKS replicas"
            );
            AppError::OutcomeUnknown
        } else if err.is_unavailable() {
            AppError::Unavailable
        } else {
            AppError::Internal(err.into())
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(err) => AppError::Validation(err.body_text()),
            JsonRejection::JsonSyntaxError(err) => AppError::MalformedJson(err.body_text()),
            JsonRejection::MissingJsonContentType(_) => AppError::UnsupportedMediaType,
            JsonRejection::BytesRejection(err) if err.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                AppError::PayloadTooLarge
            }
            other => AppError::BadRequest(other.body_text()),
        }
    }
}

impl From<PathRejection> for AppError {
    fn from(rejection: PathRejection) -> Self {
        AppError::BadRequest(rejection.body_text())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let AppError::Internal(cause) = &self {
            tracing::error!(error = ?cause, "request failed");
        }
        let message = match &self {
            AppError::PayloadTooLarge => "request body is too large".to_owned(),
            other => other.to_string(),
        };
        let body = json!({ "error": { "code": self.code(), "message": message } });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}
