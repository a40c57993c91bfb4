//! Builds the application and serves it until SIGTERM or Ctrl-C.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{BoxError, Router, middleware};
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::ExposeSecret;
use taskq::Partitions;
use taskq::support::RedisConn;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::error::AppError;
use crate::guard::{self, SubmitLimiter, Tokens};
use crate::routes::{meta, priorities, tasks, ui};
use crate::telemetry;

/// What every handler shares, behind one `Arc`: axum clones the state for every request, and
/// one reference count is cheaper than one per field (the clone and drop of the fields were the
/// costliest user-space symbol under load). Fields are reached through `Deref`.
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl std::ops::Deref for AppState {
    type Target = SharedState;
    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// The fields of [`AppState`]. The Redis connection is multiplexed: one for all requests.
pub struct SharedState {
    /// The queue protocol, one [`taskq::queue::Queue`] per partition (`QUEUE_PARTITIONS`).
    pub queue: Partitions,
    /// One multiplexed, self-reconnecting connection shared by all requests.
    pub redis: RedisConn,
    /// Longest wait for one Redis call.
    pub redis_timeout: Duration,
    /// Heartbeat age after which a worker counts as gone.
    pub worker_dead_after: Duration,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Tokens accepted on the task routes (empty: open).
    pub tokens: Tokens,
    /// Token accepted on `/metrics` (empty: open).
    pub metrics_tokens: Tokens,
    /// Per-client limit on `POST /tasks`.
    pub submit_limiter: SubmitLimiter,
}

impl AppState {
    /// State for this configuration. Does not contact Redis: the connection is made lazily, so the
    /// API starts (and answers 503) while Redis is down.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        Ok(Self(Arc::new(SharedState {
            queue: config
                .redis
                .partitions(config.queue_config())
                .with_replica_acks(config.replica_acks, config.redis.redis_timeout / 2),
            redis: config.redis.settings().connection()?,
            redis_timeout: config.redis.redis_timeout,
            worker_dead_after: config.liveness.worker_dead_after,
            metrics: taskq::support::metrics_handle(),
            tokens: Tokens::load(
                config.auth_tokens.as_ref().map(ExposeSecret::expose_secret),
                config.auth_tokens_file.as_deref(),
            )?,
            metrics_tokens: Tokens::load(
                config
                    .metrics_token
                    .as_ref()
                    .map(ExposeSecret::expose_secret),
                None,
            )?,
            submit_limiter: SubmitLimiter::new(
                config.rate_limit_per_s,
                config.rate_limit_burst,
                config.auth_tokens.is_some() || config.auth_tokens_file.is_some(),
            ),
        })))
    }

    /// Runs a write whose effect must not be guessed: a refused connection means nothing was
    /// sent, and a refusal by Redis (`BUSY`, `OOM`, `READONLY`, ...) that nothing was applied
    /// (503 `store_unavailable`); a timeout or a dropped connection means it may have been
    /// applied (503 `outcome_unknown`). On a Redis Cluster every such failure may have been
    /// applied: the client sends a command again after a dropped connection, so a refusal can
    /// answer a later try of a write the first try applied ([`RedisConn::may_resend`]).
    pub async fn with_timeout_unknown_outcome<T>(
        &self,
        operation: impl Future<Output = Result<T, taskq::QueueError>>,
    ) -> Result<T, AppError> {
        match tokio::time::timeout(self.redis_timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) if !self.redis.may_resend() && nothing_applied(&err) => {
                Err(AppError::Unavailable)
            }
            Ok(Err(err)) if err.is_unavailable() => Err(AppError::OutcomeUnknown),
            Ok(Err(err)) => Err(AppError::from(err)),
            Err(_) => Err(AppError::OutcomeUnknown),
        }
    }

    /// Runs a Redis operation with the Redis timeout; a slow or unreachable Redis becomes 503.
    pub async fn with_timeout<T>(
        &self,
        operation: impl Future<Output = Result<T, taskq::QueueError>>,
    ) -> Result<T, AppError> {
        match tokio::time::timeout(self.redis_timeout, operation).await {
            Ok(result) => result.map_err(AppError::from),
            Err(_) => Err(AppError::Unavailable),
        }
    }
}

/// A failure of the one try of a write that proves it was not applied: no connection could be
/// made, or Redis refused before running it ([`taskq::QueueError::is_refusal`]).
fn nothing_applied(err: &taskq::QueueError) -> bool {
    matches!(err, taskq::QueueError::Redis(err) if err.is_connection_refusal()) || err.is_refusal()
}

/// The router with every route and middleware; tests drive it with `oneshot`.
pub fn app(state: AppState, config: &Config) -> Router {
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    // The guards are layered only when configured: each layer costs every request a clone of
    // the inner service, even when it then lets the request through untouched.
    let mut create = post(tasks::create_task);
    if state.submit_limiter.is_enabled() {
        create = create.route_layer(middleware::from_fn_with_state(
            state.submit_limiter.clone(),
            guard::limit_submits,
        ));
    }
    let mut task_routes = Router::new()
        .route("/tasks", create.get(tasks::list_tasks))
        .route(
            "/tasks/{id}",
            get(tasks::get_task).delete(tasks::cancel_task),
        )
        .route("/tasks/{id}/retry", post(tasks::retry_task))
        .route("/priorities/{p}/pause", post(priorities::pause))
        .route("/priorities/{p}/resume", post(priorities::resume))
        .route("/stats", get(meta::stats));
    if !state.tokens.is_empty() {
        task_routes = task_routes.route_layer(middleware::from_fn_with_state(
            state.tokens.clone(),
            guard::require_token,
        ));
    }
    let mut metrics_routes = Router::new().route("/metrics", get(meta::metrics));
    if !state.metrics_tokens.is_empty() {
        metrics_routes = metrics_routes.route_layer(middleware::from_fn_with_state(
            state.metrics_tokens.clone(),
            guard::require_token,
        ));
    }
    Router::new()
        .merge(task_routes)
        .merge(metrics_routes)
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .route("/openapi.json", get(meta::openapi))
        .route("/ui", get(ui::dashboard))
        .fallback(|| async { AppError::RouteNotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .route_layer(middleware::from_fn(telemetry::track_http))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(TraceLayer::new_for_http())
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(HandleErrorLayer::new(|err: BoxError| async move {
                    if err.is::<tower::load_shed::error::Overloaded>() {
                        AppError::Overloaded
                    } else {
                        AppError::Timeout
                    }
                }))
                .load_shed()
                .concurrency_limit(config.max_concurrent_requests.max(1))
                .timeout(config.request_timeout),
        )
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish for
/// at most `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> anyhow::Result<()> {
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    });
    tokio::select! {
        result = server => result.context("serving http"),
        () = async {
            // Only fires once shutdown began and in-flight requests overstay the grace period.
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(?grace, "in-flight requests did not finish within the grace period");
            Ok(())
        }
    }
}

/// Binds the listen address, returning a clear error when it is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on LISTEN_ADDR {addr} (is the port in use?)"))
}

/// Runs the orchestrator until SIGTERM or Ctrl-C.
pub async fn run_until_stopped(config: Config) -> anyhow::Result<()> {
    let state = AppState::new(&config)?;
    let listener = bind(config.listen_addr).await?;
    tracing::info!(
        listen_addr = %listener.local_addr()?,
        redis_url = %config.redis.redacted_url(),
        key_prefix = %config.redis.key_prefix,
        "orchestrator listening"
    );
    serve(
        listener,
        app(state, &config),
        shutdown_signal(),
        config.shutdown_grace,
    )
    .await?;
    tracing::info!("orchestrator stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
