//! criterion benchmarks of the orchestrator's router in-process: requests go through every
//! middleware and handler with `tower::ServiceExt::oneshot`, no socket, against a real local
//! `redis-server` (`appendfsync everysec`, so the disk stays out of the figures).
//!
//! - `post_tasks`: `POST /tasks` (validation, one enqueue round trip, the 201 record).
//! - `get_task`: `GET /tasks/{id}` (one `HGETALL`, decoding, JSON).
//! - `post_tasks_invalid`: a 422 answered before Redis: the HTTP stack and middleware alone.
//!
//! Run with `cargo bench -p orchestrator`; `redis-server` must be on the `PATH`.

use std::hint::black_box;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use criterion::{Criterion, Throughput};
use http_body_util::BodyExt;
use orchestrator::config::Config;
use orchestrator::startup::{AppState, app};
use testkit::{Persistence, RedisServer};
use tower::ServiceExt;

const BODY: &str =
    r#"{"description":"Resize thumbnail images for customer 4711 (order 2024-118)","priority":5}"#;

fn post(body: &'static str) -> Request<Body> {
    Request::post("/tasks")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("request")
}

/// Sends one request and reads the whole answer, as a client would.
async fn send(router: &Router, request: Request<Body>) -> (StatusCode, Bytes) {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

fn router_benches(c: &mut Criterion) {
    let redis = RedisServer::start_with(Persistence::AofEverysec);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let config = Config::for_tests(&redis.url(), "bench-router");
    let router = runtime.block_on(async {
        let state = AppState::new(&config).expect("valid config");
        app(state, &config)
    });
    let task_id = runtime.block_on(async {
        let (status, body) = send(&router, post(BODY)).await;
        assert_eq!(status, StatusCode::CREATED, "{body:?}");
        let record: serde_json::Value = serde_json::from_slice(&body).expect("json");
        record["id"].as_str().expect("id").to_owned()
    });
    let get_uri = format!("/tasks/{task_id}");

    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    group.bench_function("post_tasks", |b| {
        b.to_async(&runtime).iter(|| async {
            let (status, body) = send(&router, post(BODY)).await;
            assert_eq!(status, StatusCode::CREATED, "{body:?}");
            black_box(body)
        })
    });
    group.bench_function("get_task", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = Request::get(get_uri.as_str())
                .body(Body::empty())
                .expect("request");
            let (status, body) = send(&router, request).await;
            assert_eq!(status, StatusCode::OK, "{body:?}");
            black_box(body)
        })
    });
    group.bench_function("post_tasks_invalid", |b| {
        b.to_async(&runtime).iter(|| async {
            let (status, body) = send(&router, post(r#"{"description":"x","priority":11}"#)).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body:?}");
            black_box(body)
        })
    });
    group.finish();
    drop(router);
    drop(runtime);
    drop(redis);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

// What `criterion_group!` and `criterion_main!` expand to, without their undocumented `pub fn`.
fn main() {
    let mut criterion = config().configure_from_args();
    router_benches(&mut criterion);
    criterion.final_summary();
}
