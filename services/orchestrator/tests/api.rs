//! The HTTP API against a real `redis-server` (started by the tests on a free port).
//!
//! Requests go through the full router with `tower::ServiceExt::oneshot`; no socket needed.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use orchestrator::config::Config;
use orchestrator::startup::{AppState, app};
use serde_json::{Value, json};
use testkit::{RedisServer, free_port};
use tower::ServiceExt;

fn router_for(redis_url: &str) -> Router {
    let config = Config::for_tests(redis_url, "api-test");
    app(AppState::new(&config).expect("valid config"), &config)
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn post_json(body: impl Into<Body>) -> Request<Body> {
    Request::post("/tasks")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("request")
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

fn delete(uri: &str) -> Request<Body> {
    Request::delete(uri).body(Body::empty()).expect("request")
}

fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(
        reply.status, status,
        "expected {status} for {:?}",
        reply.body
    );
    assert_eq!(
        reply.body["error"]["code"], code,
        "error body: {:?}",
        reply.body
    );
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn create_then_get_returns_the_queued_record_with_location() {
    let redis = RedisServer::start();
    let router = router_for(&redis.url());

    let created = send(
        &router,
        post_json(r#"{"description":"summarise","priority":2}"#),
    )
    .await;

    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["status"], "queued");
    assert_eq!(created.body["priority"], 2);
    let id = created.body["id"].as_str().expect("id");
    assert_eq!(
        created.headers[header::LOCATION],
        format!("/tasks/{id}").as_str()
    );
    assert!(created.headers.contains_key("x-request-id"));
    let fetched = send(&router, get(&format!("/tasks/{id}"))).await;
    assert_eq!(fetched.status, StatusCode::OK);
    for field in [
        "id",
        "description",
        "priority",
        "status",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
        "worker",
        "result",
        "error",
    ] {
        assert!(
            fetched.body.get(field).is_some(),
            "GET lacks {field}: {:?}",
            fetched.body
        );
    }
    assert_eq!(fetched.body["description"], "summarise");
}

#[tokio::test]
async fn priority_defaults_to_five() {
    let redis = RedisServer::start();
    let router = router_for(&redis.url());
    let created = send(&router, post_json(r#"{"description":"x"}"#)).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["priority"], 5);
}

#[tokio::test]
async fn an_idempotency_key_replay_returns_the_first_task_and_creates_nothing() {
    let redis = RedisServer::start();
    let router = router_for(&redis.url());
    let request = || {
        Request::post("/tasks")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", "order-42")
            .body(Body::from(r#"{"description":"once"}"#))
            .expect("request")
    };

    let first = send(&router, request()).await;
    let replay = send(&router, request()).await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.body["id"], first.body["id"]);
    let stats = send(&router, get("/stats")).await;
    assert_eq!(
        stats.body["queued_total"], 1,
        "a replay must not enqueue: {:?}",
        stats.body
    );
}

#[tokio::test]
async fn cancelling_a_queued_task_succeeds_once_and_is_idempotent() {
    let redis = RedisServer::start();
    let router = router_for(&redis.url());
    let created = send(&router, post_json(r#"{"description":"never mind"}"#)).await;
    let uri = format!("/tasks/{}", created.body["id"].as_str().expect("id"));

    let cancelled = send(&router, delete(&uri)).await;
    let again = send(&router, delete(&uri)).await;

    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    assert!(cancelled.body["finished_at"].is_string());
    assert_eq!(again.status, StatusCode::OK);
    let stats = send(&router, get("/stats")).await;
    assert_eq!(
        stats.body["queued_total"], 0,
        "a cancelled task leaves the queue"
    );
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_a_json_error() {
    let redis = RedisServer::start();
    let router = router_for(&redis.url());
    let too_long = format!(r#"{{"description":"{}"}}"#, "a".repeat(10_001));
    let longest = format!(r#"{{"description":"{}"}}"#, "é".repeat(10_000));
    let cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
        (
            "malformed json",
            post_json(r#"{"description": "#),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "not an object",
            post_json("[1,2]"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "missing description",
            post_json(r#"{"priority":1}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "description is a number",
            post_json(r#"{"description":5}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "priority is a string",
            post_json(r#"{"description":"x","priority":"high"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "priority is fractional",
            post_json(r#"{"description":"x","priority":1.5}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "unknown field",
            post_json(r#"{"description":"x","priorty":1}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "empty description",
            post_json(r#"{"description":""}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "10,001 characters",
            post_json(too_long),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "priority 0",
            post_json(r#"{"description":"x","priority":0}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "priority 11",
            post_json(r#"{"description":"x","priority":11}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "wrong content type",
            Request::post("/tasks")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from(r#"{"description":"x"}"#))
                .expect("request"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "no content type",
            Request::post("/tasks")
                .body(Body::from(r#"{"description":"x"}"#))
                .expect("request"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "3 MB body",
            post_json(format!(
                r#"{{"description":"{}"}}"#,
                "a".repeat(3 * 1024 * 1024)
            )),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "unknown id",
            get("/tasks/0190c5d2-6a8e-7cc3-9a43-0d5f1e1e2a01"),
            StatusCode::NOT_FOUND,
            "task_not_found",
        ),
        (
            "non-UUID id",
            get("/tasks/not-a-uuid"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "cancel unknown id",
            delete("/tasks/0190c5d2-6a8e-7cc3-9a43-0d5f1e1e2a01"),
            StatusCode::NOT_FOUND,
            "task_not_found",
        ),
        (
            "cancel non-UUID id",
            delete("/tasks/42"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "blank idempotency key",
            Request::post("/tasks")
                .header(header::CONTENT_TYPE, "application/json")
                .header("idempotency-key", "")
                .body(Body::from(r#"{"description":"x"}"#))
                .expect("request"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "unknown route",
            get("/nope"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "wrong method",
            Request::put("/tasks").body(Body::empty()).expect("request"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (name, request, status, code) in cases {
        let reply = send(&router, request).await;
        assert_eq!(reply.status, status, "{name}: {:?}", reply.body);
        assert_eq!(
            reply.body["error"]["code"], code,
            "{name}: {:?}",
            reply.body
        );
    }
    let accepted = send(&router, post_json(longest)).await;
    assert_eq!(
        accepted.status,
        StatusCode::CREATED,
        "10,000 characters are allowed"
    );
}

#[tokio::test]
async fn while_redis_is_unreachable_requests_get_a_quick_503_with_retry_after() {
    let router = router_for(&format!("redis://127.0.0.1:{}", free_port()));
    let started = Instant::now();

    let created = send(&router, post_json(r#"{"description":"x"}"#)).await;
    let ready = send(&router, get("/readyz")).await;
    let healthy = send(&router, get("/healthz")).await;

    assert_error(
        &created,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
    );
    assert_eq!(created.headers[header::RETRY_AFTER], "1");
    assert_error(&ready, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    assert_eq!(
        healthy.status,
        StatusCode::OK,
        "liveness must not depend on redis"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answers must not hang: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn metrics_and_openapi_are_served() {
    let redis = RedisServer::start();
    let router = router_for(&redis.url());
    send(&router, post_json(r#"{"description":"x"}"#)).await;

    let metrics = send(&router, get("/metrics")).await;
    let openapi = send(&router, get("/openapi.json")).await;

    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.body.as_str().expect("metrics are text");
    assert!(text.contains("agent_http_requests_total"), "{text}");
    assert!(text.contains("agent_tasks_enqueued_total"), "{text}");
    assert_eq!(openapi.status, StatusCode::OK);
    let paths = openapi.body["paths"].as_object().expect("openapi paths");
    for path in [
        "/tasks",
        "/tasks/{id}",
        "/stats",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(path), "openapi.json lacks {path}");
    }
}

#[tokio::test]
async fn stats_count_queued_tasks_per_priority() {
    let redis = RedisServer::start();
    let router = router_for(&redis.url());
    for priority in [1, 1, 7] {
        let body = json!({"description": "x", "priority": priority}).to_string();
        assert_eq!(
            send(&router, post_json(body)).await.status,
            StatusCode::CREATED
        );
    }

    let stats = send(&router, get("/stats")).await;

    assert_eq!(stats.status, StatusCode::OK);
    assert_eq!(stats.body["queued"]["1"], 2);
    assert_eq!(stats.body["queued"]["7"], 1);
    assert_eq!(stats.body["queued_total"], 3);
    assert_eq!(stats.body["live_workers"], 0);
}

fn router_with(redis_url: &str, adjust: impl FnOnce(&mut Config)) -> Router {
    let mut config = Config::for_tests(redis_url, "api-test");
    adjust(&mut config);
    app(AppState::new(&config).expect("valid config"), &config)
}

fn with_token(mut request: Request<Body>, token: &str) -> Request<Body> {
    request.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    request
}

const TOKEN: &str = "0123456789abcdef-token";

#[tokio::test]
async fn with_auth_enabled_requests_without_a_valid_token_get_401_and_do_nothing() {
    let redis = RedisServer::start();
    let router = router_with(&redis.url(), |c| c.auth_tokens = Some(TOKEN.into()));

    let anonymous = send(&router, post_json(r#"{"description":"x"}"#)).await;
    let wrong = send(
        &router,
        with_token(
            post_json(r#"{"description":"x"}"#),
            "0123456789abcdef-wrong",
        ),
    )
    .await;
    let no_read = send(&router, get("/stats")).await;
    let authorized = send(
        &router,
        with_token(post_json(r#"{"description":"x"}"#), TOKEN),
    )
    .await;
    let stats = send(&router, with_token(get("/stats"), TOKEN)).await;

    assert_error(&anonymous, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(anonymous.headers[header::WWW_AUTHENTICATE], "Bearer");
    assert_error(&wrong, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_error(&no_read, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(authorized.status, StatusCode::CREATED);
    assert_eq!(
        stats.body["queued_total"], 1,
        "only the authorized request enqueued: {:?}",
        stats.body
    );
    assert_eq!(
        send(&router, get("/healthz")).await.status,
        StatusCode::OK,
        "health stays open"
    );
    assert_eq!(
        send(&router, get("/readyz")).await.status,
        StatusCode::OK,
        "readiness stays open"
    );
    assert_eq!(
        send(&router, get("/metrics")).await.status,
        StatusCode::OK,
        "metrics have their own token"
    );
}

#[tokio::test]
async fn metrics_can_be_protected_separately() {
    let redis = RedisServer::start();
    let router = router_with(&redis.url(), |c| {
        c.metrics_token = Some("metrics-token-0123456789".into())
    });

    let anonymous = send(&router, get("/metrics")).await;
    let scraper = send(
        &router,
        with_token(get("/metrics"), "metrics-token-0123456789"),
    )
    .await;

    assert_error(&anonymous, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(scraper.status, StatusCode::OK);
    assert_eq!(
        send(&router, post_json(r#"{"description":"x"}"#))
            .await
            .status,
        StatusCode::CREATED,
        "task routes stay open"
    );
}

#[tokio::test]
async fn a_client_over_its_submit_rate_gets_429_with_retry_after() {
    let redis = RedisServer::start();
    let router = router_with(&redis.url(), |c| {
        c.rate_limit_per_s = 1;
        c.rate_limit_burst = 2;
    });

    let first = send(&router, post_json(r#"{"description":"x"}"#)).await;
    let second = send(&router, post_json(r#"{"description":"x"}"#)).await;
    let third = send(&router, post_json(r#"{"description":"x"}"#)).await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(second.status, StatusCode::CREATED);
    assert_error(&third, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(third.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(
        send(&router, get("/stats")).await.body["queued_total"],
        2,
        "a limited request enqueues nothing"
    );
}

#[tokio::test]
async fn queue_gauges_are_exported_at_scrape_time() {
    let redis = RedisServer::start();
    let router = router_for(&redis.url());
    send(&router, post_json(r#"{"description":"x","priority":3}"#)).await;

    let metrics = send(&router, get("/metrics")).await;

    let text = metrics.body.as_str().expect("text");
    for family in [
        "agent_queue_depth",
        "agent_consumer_lag_seconds",
        "agent_tasks_in_flight",
        "agent_live_workers",
        "agent_redis_up",
    ] {
        assert!(text.contains(family), "{family} missing from /metrics");
    }
}

mod hostile_input {
    //! Property tests: whatever the input, the API answers with a client error or a success,
    //! never a 5xx, and always with a JSON error body. Each property shares one redis-server
    //! across its cases (dropped, so killed, at the end of the test).

    use proptest::prelude::*;
    use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

    use super::*;

    const CASES: u32 = 256;

    fn check<S: Strategy>(
        strategy: S,
        property: impl Fn(&tokio::runtime::Runtime, &Router, S::Value) -> Result<(), TestCaseError>,
    ) where
        S::Value: std::fmt::Debug,
    {
        let redis = RedisServer::start();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let router = runtime.block_on(async { router_for(&redis.url()) });
        let mut runner = TestRunner::new(ProptestConfig::with_cases(CASES));
        if let Err(failure) = runner.run(&strategy, |value| property(&runtime, &router, value)) {
            panic!("{failure}");
        }
    }

    #[test]
    fn arbitrary_bodies_never_cause_a_server_error() {
        check(
            proptest::collection::vec(any::<u8>(), 0..512),
            |runtime, router, body| {
                let reply = runtime.block_on(send(router, post_json(body)));
                prop_assert!(
                    reply.status.is_client_error() || reply.status == StatusCode::CREATED,
                    "status {}",
                    reply.status
                );
                if reply.status.is_client_error() {
                    prop_assert!(
                        reply.body["error"]["code"].is_string(),
                        "body {:?}",
                        reply.body
                    );
                }
                Ok(())
            },
        );
    }

    #[test]
    fn valid_json_is_accepted_exactly_when_the_fields_are_in_range() {
        let priorities = prop_oneof![
            Just(None),
            (-5i64..16).prop_map(Some),
            any::<i64>().prop_map(Some)
        ];
        check(
            ("\\PC{0,40}", priorities),
            |runtime, router, (description, priority)| {
                let mut body = json!({ "description": description });
                if let Some(priority) = priority {
                    body["priority"] = json!(priority);
                }
                let reply = runtime.block_on(send(router, post_json(body.to_string())));
                let valid =
                    !description.is_empty() && priority.is_none_or(|p| (1..=10).contains(&p));
                if valid {
                    prop_assert_eq!(reply.status, StatusCode::CREATED);
                    prop_assert_eq!(
                        reply.body["description"].as_str(),
                        Some(description.as_str())
                    );
                } else {
                    prop_assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
                }
                Ok(())
            },
        );
    }

    #[test]
    fn arbitrary_task_ids_get_400_or_404() {
        check("[^/?#]{1,60}", |runtime, router, raw| {
            let uri = format!(
                "/tasks/{}",
                raw.bytes().map(|b| format!("%{b:02X}")).collect::<String>()
            );
            let reply = runtime.block_on(send(router, get(&uri)));
            prop_assert!(
                reply.status == StatusCode::BAD_REQUEST || reply.status == StatusCode::NOT_FOUND,
                "{} for {uri}",
                reply.status
            );
            Ok(())
        });
    }
}
