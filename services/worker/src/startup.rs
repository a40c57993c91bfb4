//! Wires the runner to Redis, serves `/healthz` and `/metrics`, and handles signals.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, HandlerKind};
use crate::handler::{FailureKnobs, Http, Simulate, TaskHandler};
use crate::runner::{Runner, RunnerSettings, heartbeat_timeout};

/// A worker ready to run: its metrics listener is bound.
pub struct Worker {
    /// One runner per partition of the queue (`QUEUE_PARTITIONS`), sharing the execution slots.
    runners: Vec<Runner>,
    metrics_listener: TcpListener,
}

impl Worker {
    /// Validates the configuration, binds the metrics address and prepares the Redis connections
    /// (made lazily: the worker starts while Redis is down and connects when it comes).
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        config.validate()?;
        let handler: Arc<dyn TaskHandler> = match config.handler {
            HandlerKind::Simulate => Arc::new(Simulate {
                work: config.work,
                knobs: FailureKnobs {
                    transient_rate: config.fail_rate,
                    permanent_rate: config.permanent_fail_rate,
                    fail_first_attempts: config.fail_first_attempts,
                },
            }),
            HandlerKind::Http => Arc::new(Http::new(
                config.agent_url.clone().unwrap_or_default(),
                config.agent_timeout,
            )?),
        };
        let block = Duration::from_millis(500);
        let redis = config.redis.settings();
        let mut blocking = redis.clone();
        blocking.response_timeout = redis.response_timeout + block;
        // The heartbeat's own connection, its waits bounded too: a heartbeat that comes too late
        // to keep this worker alive is worth nothing, the next one is due.
        let beat_timeout = heartbeat_timeout(config.heartbeat, config.liveness.worker_dead_after);
        let mut beating = redis.clone();
        beating.response_timeout = redis.response_timeout.min(beat_timeout);
        beating.connect_timeout = redis.connect_timeout.min(beat_timeout);
        let metrics_listener = TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on METRICS_ADDR {} (is the port in use?)",
                    config.metrics_addr
                )
            })?;
        let settings = RunnerSettings {
            concurrency: config.concurrency as usize,
            retry_base: config.retry_base,
            retry_max: config.retry_max,
            heartbeat: config.heartbeat,
            dead_after: config.liveness.worker_dead_after,
            lease: config.lease,
            shutdown_grace: config.shutdown_grace,
            task_timeout: config.task_timeout,
            block,
        };
        let worker_id: Arc<str> = config.resolved_worker_id().into();
        let (slots, claim_turn) = Runner::shared_slots(settings.concurrency);
        // Claims, finishes and heartbeats of every partition share one multiplexed connection
        // each; a blocking read holds its connection, so each partition has its own.
        let conn = redis.connection()?;
        let heartbeat_conn = beating.connection()?;
        let partitions = config.redis.partitions(config.queue_config());
        let runners = partitions
            .all()
            .iter()
            .map(|queue| {
                Ok(Runner {
                    queue: queue.clone(),
                    conn: conn.clone(),
                    blocking_conn: blocking.connection()?,
                    heartbeat_conn: heartbeat_conn.clone(),
                    handler: Arc::clone(&handler),
                    worker_id: Arc::clone(&worker_id),
                    settings: settings.clone(),
                    slots: Arc::clone(&slots),
                    claim_turn: Arc::clone(&claim_turn),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            runners,
            metrics_listener,
        })
    }

    /// Where `/healthz` and `/metrics` are served.
    pub fn metrics_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.metrics_listener.local_addr()?)
    }

    /// This worker's consumer name.
    pub fn worker_id(&self) -> Arc<str> {
        Arc::clone(&self.runners[0].worker_id)
    }

    /// Runs until `shutdown` is cancelled, then drains.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let metrics = taskq::support::metrics_handle();
        let app = Router::new()
            .route(
                "/healthz",
                get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
            )
            .route(
                "/metrics",
                get(move || {
                    let metrics = metrics.clone();
                    async move {
                        (
                            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            metrics.render(),
                        )
                            .into_response()
                    }
                }),
            );
        let server_stop = CancellationToken::new();
        let server = {
            let server_stop = server_stop.clone();
            let listener = self.metrics_listener;
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(server_stop.cancelled_owned())
                    .await
            })
        };
        let runs = self
            .runners
            .into_iter()
            .map(|runner| tokio::spawn(runner.run(shutdown.clone())));
        let mut result = Ok(());
        for run in futures::future::join_all(runs).await {
            let outcome = run.map_err(anyhow::Error::from).and_then(|ran| ran);
            if result.is_ok() {
                result = outcome;
            }
        }
        server_stop.cancel();
        let _ = server.await;
        result
    }
}

/// Runs the worker until SIGTERM or Ctrl-C.
pub async fn run_until_stopped(config: Config) -> anyhow::Result<()> {
    let worker = Worker::build(&config).await?;
    tracing::info!(
        worker_id = %worker.worker_id(),
        redis_url = %config.redis.redacted_url(),
        metrics_addr = %worker.metrics_addr()?,
        key_prefix = %config.redis.key_prefix,
        "worker configured"
    );
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received: finishing in-flight tasks");
        trigger.cancel();
    });
    worker.run(shutdown).await
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
