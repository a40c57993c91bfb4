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
async fn item_13_a_blank_description_is_422() {
    let redis = RedisServer::start();
    let router = router_for(&redis.url());

    for blank in [" ", "   ", "\t\n", "\r\n \u{a0}\u{3000}\u{2028}"] {
        let reply = send(
            &router,
            post_json(json!({ "description": blank }).to_string()),
        )
        .await;
        assert_error(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
    assert_eq!(
        send(&router, get("/stats")).await.body["queued_total"],
        0,
        "a blank description enqueues nothing"
    );
    let padded = send(&router, post_json(r#"{"description":"  x  "}"#)).await;

    assert_eq!(padded.status, StatusCode::CREATED, "{:?}", padded.body);
    assert_eq!(
        padded.body["description"], "  x  ",
        "text with whitespace around it is kept as sent"
    );
}

#[tokio::test]
async fn item_9_a_task_carries_its_own_execution_deadline() {
    let redis = RedisServer::start();
    let router = router_for(&redis.url());

    for bad in [
        json!(0),
        json!(-5),
        json!(86_400_001),
        json!("10s"),
        json!(1.5),
        json!(null),
    ] {
        let reply = send(
            &router,
            post_json(json!({ "description": "d", "timeout_ms": bad }).to_string()),
        )
        .await;
        assert_error(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
    let created = send(
        &router,
        post_json(json!({ "description": "d", "timeout_ms": 86_400_000 }).to_string()),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["timeout_ms"], 86_400_000);
    let id = created.body["id"].as_str().expect("id");
    assert_eq!(
        send(&router, get(&format!("/tasks/{id}"))).await.body["timeout_ms"],
        86_400_000
    );
    let plain = send(&router, post_json(r#"{"description":"d"}"#)).await;
    assert_eq!(
        plain.body["timeout_ms"],
        Value::Null,
        "no deadline of its own: the worker's TASK_TIMEOUT"
    );
}

#[tokio::test]
async fn a_task_can_be_scheduled_by_delay_or_time_and_cancelled_while_it_waits() {
    let redis = RedisServer::start();
    let router = router_for(&redis.url());

    for bad in [
        json!({ "description": "d", "delay_ms": -1 }),
        json!({ "description": "d", "delay_ms": 2_592_000_001_i64 }),
        json!({ "description": "d", "delay_ms": null }),
        json!({ "description": "d", "run_at": "tomorrow" }),
        json!({ "description": "d", "run_at": "2999-01-01T00:00:00Z" }),
        json!({ "description": "d", "run_at": null }),
        json!({ "description": "d", "delay_ms": 5, "run_at": "2020-01-01T00:00:00Z" }),
    ] {
        let reply = send(&router, post_json(bad.to_string())).await;
        assert_error(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
    assert_eq!(
        send(&router, get("/stats")).await.body["queued_total"],
        0,
        "nothing refused was enqueued"
    );

    let delayed = send(
        &router,
        post_json(json!({ "description": "d", "delay_ms": 60_000 }).to_string()),
    )
    .await;
    assert_eq!(delayed.status, StatusCode::CREATED, "{:?}", delayed.body);
    assert_eq!(delayed.body["status"], "scheduled");
    let id = delayed.body["id"].as_str().expect("id").to_owned();
    let read = send(&router, get(&format!("/tasks/{id}"))).await;
    assert_eq!(read.body["status"], "scheduled");
    assert_eq!(read.body["run_at"], delayed.body["run_at"]);
    assert_eq!(
        send(&router, get("/stats")).await.body["queued_total"],
        0,
        "a scheduled task waits outside the streams"
    );
    let cancelled = send(&router, delete(&format!("/tasks/{id}"))).await;
    assert_eq!(cancelled.status, StatusCode::OK);
    assert_eq!(cancelled.body["status"], "cancelled");

    let past = send(
        &router,
        post_json(json!({ "description": "d", "run_at": "2020-01-01T00:00:00Z" }).to_string()),
    )
    .await;
    assert_eq!(past.status, StatusCode::CREATED);
    assert_eq!(past.body["status"], "queued", "a time in the past: at once");
}

/// The characters of a `[^...]` class made of `\uXXXX` escapes and `a-b` ranges.
fn negated_class_chars(pattern: &str) -> Vec<u32> {
    let inner = pattern
        .strip_prefix("[^")
        .and_then(|p| p.strip_suffix(']'))
        .unwrap_or_else(|| panic!("{pattern:?} is not a negated class"));
    let mut points = Vec::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let hex = |text: &str| {
            let digits = text.strip_prefix("\\u").expect("\\uXXXX escapes only");
            u32::from_str_radix(&digits[..4], 16).expect("four hex digits")
        };
        let start = hex(rest);
        rest = &rest[6..];
        let end = match rest.strip_prefix('-') {
            Some(range_end) => {
                rest = &range_end[6..];
                hex(range_end)
            }
            None => start,
        };
        points.extend(start..=end);
    }
    points
}

#[tokio::test]
async fn item_13_openapi_calls_blank_what_the_server_calls_blank() {
    let router = router_for(&format!("redis://127.0.0.1:{}", free_port()));
    let openapi = send(&router, get("/openapi.json")).await;
    let pattern =
        openapi.body["components"]["schemas"]["NewTask"]["properties"]["description"]["pattern"]
            .as_str()
            .expect("the description has a pattern");

    let whitespace: Vec<u32> = (0..=0x10FFFF)
        .filter_map(char::from_u32)
        .filter(|c| c.is_whitespace())
        .map(u32::from)
        .collect();
    assert_eq!(negated_class_chars(pattern), whitespace);
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
                let valid = !description.trim().is_empty()
                    && priority.is_none_or(|p| (1..=10).contains(&p));
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

mod redis_refusals {
    //! Item 10: every Redis refusal that is not the client's fault is a 503 `store_unavailable`
    //! with `Retry-After`, never a 500, and a refused enqueue leaves nothing behind. Each test
    //! puts a real redis-server into the refusing state.

    use super::*;

    pub(super) async fn admin(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
        redis::Client::open(redis.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection")
    }

    async fn run(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) {
        redis::cmd(args[0])
            .arg(&args[1..])
            .query_async::<redis::Value>(conn)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }

    /// Every key and the length of every priority stream: what an enqueue would change.
    pub(super) async fn contents(
        conn: &mut redis::aio::MultiplexedConnection,
    ) -> (Vec<String>, Vec<u64>) {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(conn)
            .await
            .expect("KEYS");
        // the backpressure check's count is a cache with a short life, not state
        let count = taskq::Keys::new("api-test").waiting_count();
        keys.retain(|key| *key != count);
        keys.sort();
        let mut lengths = Vec::new();
        for stream in taskq::Keys::new("api-test").streams() {
            let len: u64 = redis::cmd("XLEN")
                .arg(&stream)
                .query_async(conn)
                .await
                .expect("XLEN");
            lengths.push(len);
        }
        (keys, lengths)
    }

    pub(super) fn post_with_key(key: &str) -> Request<Body> {
        Request::post("/tasks")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Body::from(r#"{"description":"refused"}"#))
            .expect("request")
    }

    fn assert_refused(reply: &Reply, what: &str) {
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: {:?}",
            reply.body
        );
        assert_error(reply, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
        assert_eq!(reply.headers[header::RETRY_AFTER], "1", "{what}");
    }

    /// An existing task's URI, after a first request that also opens the router's connection.
    async fn existing_task(router: &Router) -> String {
        let created = send(router, post_json(r#"{"description":"before"}"#)).await;
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
        format!("/tasks/{}", created.body["id"].as_str().expect("id"))
    }

    /// Enqueues (with and without an idempotency key) are refused with 503 and change nothing;
    /// reads go on.
    async fn assert_enqueues_refused(
        router: &Router,
        conn: &mut redis::aio::MultiplexedConnection,
        uri: &str,
        what: &str,
    ) {
        let before = contents(conn).await;
        assert_refused(
            &send(router, post_json(r#"{"description":"x"}"#)).await,
            what,
        );
        assert_refused(&send(router, post_with_key("k-1")).await, what);
        assert_eq!(
            contents(conn).await,
            before,
            "{what}: a refused enqueue must leave no task hash, stream entry or key"
        );
        assert_eq!(
            send(router, get(uri)).await.status,
            StatusCode::OK,
            "{what}"
        );
    }

    /// A cancel is refused with 503 and changes nothing.
    async fn assert_cancel_refused(
        router: &Router,
        conn: &mut redis::aio::MultiplexedConnection,
        uri: &str,
        what: &str,
    ) {
        let before = contents(conn).await;
        assert_refused(&send(router, delete(uri)).await, what);
        assert_eq!(contents(conn).await, before, "{what}: a refused cancel");
        assert_eq!(send(router, get(uri)).await.body["status"], "queued");
    }

    #[tokio::test]
    async fn item_10_an_oom_refusal_is_a_503_and_writes_nothing() {
        let redis = RedisServer::start();
        let router = router_for(&redis.url());
        let uri = existing_task(&router).await;
        let mut conn = admin(&redis).await;

        run(
            &mut conn,
            &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
        )
        .await;
        run(&mut conn, &["CONFIG", "SET", "maxmemory", "1"]).await;
        assert_enqueues_refused(&router, &mut conn, &uri, "OOM").await;
        // A cancel frees memory: its first writes (XACK, XDEL) are ones Redis allows under OOM,
        // and once a script has written Redis lets it finish.
        let cancelled = send(&router, delete(&uri)).await;
        run(&mut conn, &["CONFIG", "SET", "maxmemory", "0"]).await;

        assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);

        let after = send(&router, post_with_key("k-1")).await;
        assert_eq!(after.status, StatusCode::CREATED, "{:?}", after.body);
    }

    #[tokio::test]
    async fn item_10_a_read_only_replica_is_a_503_and_writes_nothing() {
        let redis = RedisServer::start();
        let router = router_for(&redis.url());
        let uri = existing_task(&router).await;
        let mut conn = admin(&redis).await;

        run(
            &mut conn,
            &["CONFIG", "SET", "replica-serve-stale-data", "yes"],
        )
        .await;
        let no_master = free_port().to_string();
        run(&mut conn, &["REPLICAOF", "127.0.0.1", &no_master]).await;
        assert_enqueues_refused(&router, &mut conn, &uri, "READONLY").await;
        assert_cancel_refused(&router, &mut conn, &uri, "READONLY").await;
        run(&mut conn, &["REPLICAOF", "NO", "ONE"]).await;

        let after = send(&router, post_with_key("k-1")).await;
        assert_eq!(after.status, StatusCode::CREATED, "{:?}", after.body);
    }

    #[tokio::test]
    async fn item_10_an_acl_refusal_is_a_503_and_writes_nothing() {
        let redis = RedisServer::start();
        let owner = router_for(&redis.url());
        let uri = existing_task(&owner).await;
        let mut conn = admin(&redis).await;
        // One user may run the scripts but not the writes of the enqueue script (Redis refuses
        // its first write); the other may not run scripts at all (NOPERM). The first one's
        // cancel is not tried: cancel.lua's XDEL would pass and its HSET be refused, a partial
        // write that only a wrong ACL causes (the ACL template is checked to grant every command
        // the scripts send, harness/tests/k8s_manifests.rs).
        run(
            &mut conn,
            &[
                "ACL",
                "SETUSER",
                "nowrite",
                "on",
                ">pw-nowrite",
                "~*",
                "+@all",
                "-xadd",
                "-hset",
                "-set",
            ],
        )
        .await;
        run(
            &mut conn,
            &[
                "ACL",
                "SETUSER",
                "noscript",
                "on",
                ">pw-noscript",
                "~*",
                "+@all",
                "-evalsha",
                "-eval",
            ],
        )
        .await;

        for user in ["nowrite", "noscript"] {
            let url = format!("redis://{user}:pw-{user}@127.0.0.1:{}", redis.port());
            let router = router_for(&url);
            assert_eq!(
                send(&router, get(&uri)).await.status,
                StatusCode::OK,
                "{user} may read"
            );
            assert_enqueues_refused(&router, &mut conn, &uri, user).await;
            if user == "noscript" {
                assert_cancel_refused(&router, &mut conn, &uri, user).await;
            }
        }
    }

    #[tokio::test]
    async fn item_10_a_redis_busy_with_a_script_is_a_503() {
        let redis = RedisServer::start();
        let router = router_for(&redis.url());
        let uri = existing_task(&router).await;
        let client = redis::Client::open(redis.url()).expect("url");
        // Both connections are made before Redis is busy: a new connection's handshake would
        // be refused too.
        let mut busy = client.get_connection().expect("connection");
        let mut killer = client.get_connection().expect("connection");
        redis::cmd("CONFIG")
            .arg(&["SET", "busy-reply-threshold", "50"][..])
            .query::<()>(&mut killer)
            .expect("CONFIG SET");
        let looping = std::thread::spawn(move || {
            redis::cmd("EVAL")
                .arg(&["while true do end", "0"][..])
                .query::<redis::Value>(&mut busy)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;

        let create = send(&router, post_json(r#"{"description":"x"}"#)).await;
        let read = send(&router, get(&uri)).await;
        redis::cmd("SCRIPT")
            .arg("KILL")
            .query::<()>(&mut killer)
            .expect("SCRIPT KILL");
        let killed = looping.join().expect("thread");

        assert!(killed.is_err(), "the busy script was killed: {killed:?}");
        assert_refused(&create, "BUSY create");
        assert_refused(&read, "BUSY read");
        let after = send(&router, post_json(r#"{"description":"x"}"#)).await;
        assert_eq!(after.status, StatusCode::CREATED, "{:?}", after.body);
        assert_eq!(
            send(&router, get("/stats")).await.body["queued_total"],
            2,
            "only the tasks before and after were queued"
        );
    }
}

mod backpressure {
    //! Item 11: more than `MAX_QUEUED` waiting tasks is a 503 `queue_full` with `Retry-After`;
    //! the refused enqueue writes nothing.

    use super::redis_refusals::{admin, contents, post_with_key};
    use super::*;

    /// The router for these command-line flags (and the test defaults).
    fn router_from_args(redis_url: &str, args: &[&str]) -> Router {
        let base = Config::for_tests(redis_url, "api-test");
        let (mut config, _) =
            Config::try_load_from(std::iter::once("orchestrator").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        config.redis = base.redis;
        config.listen_addr = base.listen_addr;
        app(AppState::new(&config).expect("valid config"), &config)
    }

    #[tokio::test]
    async fn item_11_more_than_max_queued_waiting_tasks_is_503_queue_full() {
        let redis = RedisServer::start();
        let router = router_from_args(&redis.url(), &["--max-queued", "3"]);
        let mut conn = admin(&redis).await;
        let first = send(&router, post_with_key("k-1")).await;
        for priority in [1, 10] {
            let body = json!({ "description": "x", "priority": priority }).to_string();
            assert_eq!(
                send(&router, post_json(body)).await.status,
                StatusCode::CREATED
            );
        }
        let before = contents(&mut conn).await;

        let full = send(&router, post_json(r#"{"description":"one too many"}"#)).await;
        let replay = send(&router, post_with_key("k-1")).await;

        assert_eq!(first.status, StatusCode::CREATED);
        assert_error(&full, StatusCode::SERVICE_UNAVAILABLE, "queue_full");
        assert_eq!(full.headers[header::RETRY_AFTER], "1");
        assert_eq!(
            contents(&mut conn).await,
            before,
            "a refused enqueue writes nothing"
        );
        assert_eq!(
            (replay.status, &replay.body["id"]),
            (StatusCode::OK, &first.body["id"]),
            "a replay adds nothing, so a full queue still answers it"
        );
        let uri = format!("/tasks/{}", first.body["id"].as_str().expect("id"));
        assert_eq!(send(&router, delete(&uri)).await.status, StatusCode::OK);
        // The check counts the streams again once its count is older than its period; until
        // then it errs on the side of refusing.
        tokio::time::sleep(Duration::from_millis(
            taskq::queue::WAITING_COUNT_TTL_MS + 50,
        ))
        .await;
        assert_eq!(
            send(&router, post_json(r#"{"description":"room again"}"#))
                .await
                .status,
            StatusCode::CREATED,
            "a cancelled task leaves room"
        );
    }

    #[tokio::test]
    async fn item_11_max_queued_zero_sets_no_limit() {
        let redis = RedisServer::start();
        let router = router_from_args(&redis.url(), &["--max-queued", "0"]);
        for _ in 0..5 {
            assert_eq!(
                send(&router, post_json(r#"{"description":"x"}"#))
                    .await
                    .status,
                StatusCode::CREATED
            );
        }
    }
}

mod idempotency_scope {
    //! Item 5: an `Idempotency-Key` is scoped to the caller (its token when auth is on) and bound
    //! to the request body.

    use super::*;

    const TOKEN_A: &str = "tenant-a-0123456789abcdef";
    const TOKEN_B: &str = "tenant-b-0123456789abcdef";

    fn keyed(body: &str, key: &str, token: Option<&str>) -> Request<Body> {
        let mut request = Request::post("/tasks")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Body::from(body.to_owned()))
            .expect("request");
        if let Some(token) = token {
            request = with_token(request, token);
        }
        request
    }

    #[tokio::test]
    async fn item_5_two_callers_with_the_same_idempotency_key_get_their_own_tasks() {
        let redis = RedisServer::start();
        let router = router_with(&redis.url(), |c| {
            c.auth_tokens = Some(format!("{TOKEN_A},{TOKEN_B}").into())
        });
        let body = r#"{"description":"nightly report"}"#;

        let a = send(&router, keyed(body, "1", Some(TOKEN_A))).await;
        let b = send(&router, keyed(body, "1", Some(TOKEN_B))).await;
        let a_again = send(&router, keyed(body, "1", Some(TOKEN_A))).await;
        let b_again = send(&router, keyed(body, "1", Some(TOKEN_B))).await;

        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        assert_eq!(
            b.status,
            StatusCode::CREATED,
            "another caller's key must not replay the first caller's task: {:?}",
            b.body
        );
        assert_ne!(a.body["id"], b.body["id"]);
        assert_eq!(
            (a_again.status, &a_again.body["id"]),
            (StatusCode::OK, &a.body["id"])
        );
        assert_eq!(
            (b_again.status, &b_again.body["id"]),
            (StatusCode::OK, &b.body["id"])
        );
        let stats = send(&router, with_token(get("/stats"), TOKEN_A)).await;
        assert_eq!(stats.body["queued_total"], 2, "both tasks are queued");
    }

    #[tokio::test]
    async fn item_5_an_idempotency_key_reused_with_another_body_is_422() {
        let redis = RedisServer::start();
        let router = router_for(&redis.url());

        let first = send(&router, keyed(r#"{"description":"a"}"#, "k", None)).await;
        let other_text = send(&router, keyed(r#"{"description":"b"}"#, "k", None)).await;
        let other_priority = send(
            &router,
            keyed(r#"{"description":"a","priority":4}"#, "k", None),
        )
        .await;
        // The same task, spelled out: 5 is the default priority.
        let same = send(
            &router,
            keyed(r#"{"priority":5,"description":"a"}"#, "k", None),
        )
        .await;

        assert_eq!(first.status, StatusCode::CREATED);
        assert_error(
            &other_text,
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
        );
        assert_error(
            &other_priority,
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
        );
        assert_eq!(
            (same.status, &same.body["id"]),
            (StatusCode::OK, &first.body["id"])
        );
        assert_eq!(
            send(&router, get("/stats")).await.body["queued_total"],
            1,
            "a reused key queues nothing"
        );
    }

    #[tokio::test]
    async fn item_5_a_key_stored_before_keys_were_scoped_still_replays_without_auth() {
        let redis = RedisServer::start();
        let open = router_for(&redis.url());
        let authenticated = router_with(&redis.url(), |c| c.auth_tokens = Some(TOKEN_A.into()));
        let task = send(&open, post_json(r#"{"description":"from before"}"#)).await;
        let id = task.body["id"].as_str().expect("id");
        let keys = taskq::Keys::new("api-test");
        let mut conn = super::redis_refusals::admin(&redis).await;
        // What the enqueue script stored before this change: the task id alone, unscoped.
        for key in ["old-1", "old-2"] {
            redis::cmd("SET")
                .arg(keys.legacy_idempotency(key))
                .arg(id)
                .query_async::<()>(&mut conn)
                .await
                .expect("SET");
        }

        let replay = send(&open, keyed(r#"{"description":"any body"}"#, "old-1", None)).await;
        let other_caller = send(
            &authenticated,
            keyed(r#"{"description":"from before"}"#, "old-2", Some(TOKEN_A)),
        )
        .await;

        assert_eq!(
            (replay.status, replay.body["id"].as_str()),
            (StatusCode::OK, Some(id))
        );
        assert_eq!(
            other_caller.status,
            StatusCode::CREATED,
            "with auth on, an unscoped record may be another caller's: {:?}",
            other_caller.body
        );
    }
}

fn post(uri: &str) -> Request<Body> {
    Request::post(uri).body(Body::empty()).expect("request")
}

/// `POST /tasks/{id}/retry`: a dead task is queued again (200 + its record, error kept); a
/// task in another state is 409, an unknown one 404, a malformed id 400, all JSON errors.
#[tokio::test]
async fn a_dead_task_can_be_retried_and_nothing_else_can() {
    let redis = RedisServer::start();
    let router = router_for(&redis.url());
    let created = send(&router, post_json(r#"{"description":"fails for good"}"#)).await;
    let id = created.body["id"].as_str().expect("id").to_owned();
    let uri = format!("/tasks/{id}/retry");
    assert_error(
        &send(&router, post(&uri)).await,
        StatusCode::CONFLICT,
        "conflict",
    );

    // A worker runs it and it fails for good (the queue protocol, as a worker drives it).
    let queue = taskq::queue::Queue::new(taskq::QueueConfig {
        keys: taskq::Keys::new("api-test"),
        ..taskq::QueueConfig::default()
    });
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    queue.ensure_groups(&mut conn).await.expect("groups");
    let claimed = queue.claim(&mut conn, "w", 1, &[]).await.expect("claim");
    let dead = taskq::queue::Finish {
        task: claimed[0].clone(),
        outcome: taskq::queue::ExecutionOutcome::Dead {
            error: "permanent: bad input".into(),
        },
    };
    queue
        .finish_many(&mut conn, "w", &[dead])
        .await
        .expect("finish");
    assert_eq!(
        send(&router, get(&format!("/tasks/{id}"))).await.body["status"],
        "dead"
    );

    let retried = send(&router, post(&uri)).await;
    assert_eq!(retried.status, StatusCode::OK, "{:?}", retried.body);
    assert_eq!(retried.body["status"], "queued");
    assert_eq!(retried.body["attempts"], 0);
    assert_eq!(retried.body["error"], "permanent: bad input");
    let again = send(&router, post(&uri)).await;
    assert_error(&again, StatusCode::CONFLICT, "conflict");
    assert!(
        again.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("only dead or cancelled")),
        "{:?}",
        again.body
    );
    let stats = send(&router, get("/stats")).await;
    assert_eq!(stats.body["queued_total"], 1, "{:?}", stats.body);

    assert_error(
        &send(
            &router,
            post("/tasks/00000000-0000-4000-8000-000000000000/retry"),
        )
        .await,
        StatusCode::NOT_FOUND,
        "task_not_found",
    );
    let malformed = send(&router, post("/tasks/not-a-uuid/retry")).await;
    assert_eq!(
        malformed.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        malformed.body
    );
    assert!(malformed.body["error"]["code"].is_string());
    let wrong_method = send(&router, get(&uri)).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn tasks_are_listed_by_status_with_a_cursor_and_bad_queries_are_400() {
    let redis = RedisServer::start();
    let router = router_for(&redis.url());
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = format!(r#"{{"description":"task {i}","priority":3}}"#);
        let created = send(&router, post_json(body)).await;
        ids.push(created.body["id"].as_str().expect("id").to_owned());
    }
    let other = send(&router, post_json(r#"{"description":"p7","priority":7}"#)).await;
    let cancelled = other.body["id"].as_str().expect("id").to_owned();
    send(&router, delete(&format!("/tasks/{cancelled}"))).await;

    // Pages of two, oldest first, until next_cursor is null.
    let mut listed = Vec::new();
    let mut uri = "/tasks?status=queued&limit=2".to_owned();
    for _ in 0..10 {
        let page = send(&router, get(&uri)).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        let tasks = page.body["tasks"].as_array().expect("tasks");
        assert!(tasks.len() <= 2, "{:?}", page.body);
        for task in tasks {
            assert_eq!(task["status"], "queued");
            listed.push(task["id"].as_str().expect("id").to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(cursor) => {
                uri = format!("/tasks?status=queued&limit=2&cursor={}", encode(cursor));
            }
            None => {
                assert!(page.body["next_cursor"].is_null(), "{:?}", page.body);
                break;
            }
        }
    }
    assert_eq!(listed, ids);

    let page = send(&router, get("/tasks?status=queued&priority=7")).await;
    assert_eq!(page.body["tasks"], json!([]), "{:?}", page.body);
    let page = send(&router, get("/tasks?status=cancelled")).await;
    assert_eq!(
        page.body["tasks"][0]["id"],
        cancelled.as_str(),
        "{:?}",
        page.body
    );
    assert_eq!(page.body["tasks"].as_array().map(Vec::len), Some(1));

    for bad in [
        "/tasks",
        "/tasks?status=",
        "/tasks?status=done",
        "/tasks?status=queued&limit=0",
        "/tasks?status=queued&limit=1001",
        "/tasks?status=queued&limit=ten",
        "/tasks?status=queued&priority=11",
        "/tasks?status=queued&cursor=nope",
        "/tasks?status=dead&cursor=3%2F1-0",
        "/tasks?status=queued&status=dead",
        "/tasks?status=queued&colour=blue",
    ] {
        assert_error(
            &send(&router, get(bad)).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
}

#[tokio::test]
async fn a_priority_can_be_paused_and_resumed_and_stats_say_so() {
    let redis = RedisServer::start();
    let router = router_for(&redis.url());
    let paused = send(&router, post("/priorities/3/pause")).await;
    assert_eq!(paused.status, StatusCode::OK, "{:?}", paused.body);
    assert_eq!(paused.body, json!({"priority": 3, "paused": true}));
    // idempotent
    let again = send(&router, post("/priorities/3/pause")).await;
    assert_eq!(again.body, json!({"priority": 3, "paused": true}));
    send(&router, post("/priorities/9/pause")).await;
    // still accepting tasks
    let created = send(
        &router,
        post_json(r#"{"description":"waits","priority":3}"#),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let stats = send(&router, get("/stats")).await;
    assert_eq!(stats.body["paused"], json!([3, 9]), "{:?}", stats.body);
    assert_eq!(stats.body["queued"]["3"], 1);

    let resumed = send(&router, post("/priorities/3/resume")).await;
    assert_eq!(resumed.body, json!({"priority": 3, "paused": false}));
    let stats = send(&router, get("/stats")).await;
    assert_eq!(stats.body["paused"], json!([9]), "{:?}", stats.body);

    for bad in [
        "/priorities/0/pause",
        "/priorities/11/pause",
        "/priorities/x/resume",
    ] {
        assert_error(
            &send(&router, post(bad)).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    assert_error(
        &send(&router, post("/priorities/3/stop")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &send(&router, get("/priorities/3/pause")).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

/// Percent-encodes a cursor for a query string (cursors hold `/`).
fn encode(raw: &str) -> String {
    raw.replace('%', "%25")
        .replace('/', "%2F")
        .replace('+', "%2B")
}

#[tokio::test]
async fn the_dashboard_is_one_self_contained_page_that_holds_no_data() {
    let redis = RedisServer::start();
    let mut config = Config::for_tests(&redis.url(), "api-test");
    config.auth_tokens = Some("dashboard-token-0123456789".into());
    let state = AppState::new(&config).expect("state");
    let router = app(state, &config);

    let page = router
        .clone()
        .oneshot(Request::get("/ui").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{headers:?}"
    );
    assert!(
        headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("connect-src 'self'")
    );
    let html = String::from_utf8(
        page.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(html.contains("<title>Agent System</title>"));
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"),
        "the page fetches nothing from elsewhere"
    );
    assert!(html.contains("name=\"viewport\""), "readable on a phone");
    // with auth on, the page's data still needs the token
    let stats = router
        .clone()
        .oneshot(Request::get("/stats").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(stats.status(), StatusCode::UNAUTHORIZED);
    let wrong_method = router
        .oneshot(Request::post("/ui").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_partitioned_queue_serves_every_route_through_the_task_id() {
    let redis = RedisServer::start();
    let router = router_with(&redis.url(), |config| config.redis.queue_partitions = 3);
    let mut ids = Vec::new();
    for i in 0..6 {
        let created = send(&router, post_json(format!(r#"{{"description":"t{i}"}}"#))).await;
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
        ids.push(created.body["id"].as_str().expect("id").to_owned());
    }
    // spread over the three partitions, each found again by its id alone
    let partitions: std::collections::HashSet<u16> = ids
        .iter()
        .map(|id| taskq::TaskId::parse(id).expect("a task id").partition(3))
        .collect();
    assert_eq!(partitions.len(), 3, "{ids:?}");
    for id in &ids {
        let got = send(&router, get(&format!("/tasks/{id}"))).await;
        assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
        assert_eq!(got.body["id"], id.as_str());
    }

    // a replay finds the first task, whichever partition the key hashes to
    let keyed = || {
        let mut request = post_json(r#"{"description":"once"}"#);
        request
            .headers_mut()
            .insert("idempotency-key", "order-17".parse().expect("header"));
        request
    };
    let first = send(&router, keyed()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    for _ in 0..4 {
        let again = send(&router, keyed()).await;
        assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
        assert_eq!(again.body["id"], first.body["id"]);
    }

    // cancel and retry reach the task's partition
    let cancelled = send(&router, delete(&format!("/tasks/{}", ids[1]))).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    let retried = send(&router, post(&format!("/tasks/{}/retry", ids[1]))).await;
    assert_eq!(retried.status, StatusCode::OK, "{:?}", retried.body);

    let stats = send(&router, get("/stats")).await;
    assert_eq!(stats.body["queued_total"], 7, "{:?}", stats.body);

    // the listing walks every partition, each task once
    let mut listed = Vec::new();
    let mut uri = "/tasks?status=queued&limit=2".to_owned();
    for _ in 0..20 {
        let page = send(&router, get(&uri)).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        for task in page.body["tasks"].as_array().expect("tasks") {
            listed.push(task["id"].as_str().expect("id").to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/tasks?status=queued&limit=2&cursor={}", encode(cursor)),
            None => break,
        }
    }
    listed.sort();
    let mut expected = ids.clone();
    expected.push(first.body["id"].as_str().expect("id").to_owned());
    expected.sort();
    assert_eq!(listed, expected);
    // a cursor into a partition this queue does not have is the client's mistake
    assert_error(
        &send(&router, get("/tasks?status=queued&cursor=3~")).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    // a pause holds in every partition
    let paused = send(&router, post("/priorities/5/pause")).await;
    assert_eq!(paused.status, StatusCode::OK, "{:?}", paused.body);
    let stats = send(&router, get("/stats")).await;
    assert_eq!(stats.body["paused"], json!([5]), "{:?}", stats.body);
}

#[tokio::test]
async fn with_replica_acks_a_write_no_replica_confirms_is_503_outcome_unknown_never_201() {
    let redis = RedisServer::start();
    let router = router_with(&redis.url(), |config| {
        config.replica_acks = 1;
        config.redis.redis_timeout = Duration::from_millis(400);
    });

    // No replica: the primary has the task, no replica does; the client must not get a 201.
    let refused = send(&router, post_json(r#"{"description":"unconfirmed"}"#)).await;
    assert_error(&refused, StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown");

    // A replica that keeps up: every write is confirmed.
    let replica = testkit::RedisConfig::new()
        .extra_args(["--replicaof", "127.0.0.1", &redis.port().to_string()])
        .start()
        .expect("replica");
    let mut conn = redis::Client::open(replica.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("replica connection");
    testkit::assert_eventually_async("the replica to sync", Duration::from_secs(10), async || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .expect("INFO");
        info.contains("master_link_status:up")
    })
    .await;
    let created = send(&router, post_json(r#"{"description":"confirmed"}"#)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    let cancelled = send(&router, delete(&format!("/tasks/{id}"))).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    // the replica has the task
    let on_replica: String = redis::cmd("HGET")
        .arg(format!("api-test:task:{id}"))
        .arg("status")
        .query_async(&mut conn)
        .await
        .expect("HGET on the replica");
    assert_eq!(on_replica, "cancelled");
}

/// On a Redis Cluster the client sends a command again when its connection drops before the
/// reply: the first try may have been applied, so whatever the last try answers (here: the
/// node refuses connections, it was killed), the submit's outcome is unknown, never a definite
/// `store_unavailable`. Found by the cluster-stale-replica scenario, which saw a task refused
/// that way executed after the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_submit_cut_off_before_its_reply_is_outcome_unknown_never_unavailable() {
    let mut cluster = testkit::RedisCluster::start(2, 0);
    let urls = cluster.urls();
    let router = router_with(&cluster.primary(0).url(), |config| {
        config.redis.redis_cluster_urls = Some(urls.into());
        // REPLICA_ACKS=1 without a replica: an enqueue is applied, then its WAIT holds the
        // reply back (half of REDIS_TIMEOUT).
        config.replica_acks = 1;
        config.redis.redis_timeout = Duration::from_secs(4);
        // No limit: every enqueue is one script call that writes (with a limit, a call that
        // finds its count expired writes nothing and is made again, each with its WAIT).
        config.max_queued = 0;
    });
    let submit = |key: &str| {
        Request::post("/tasks")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Body::from(r#"{"description":"applied, reply lost"}"#))
            .expect("request")
    };
    // The first submit loads the scripts and queues a task; no replica confirms it.
    let first = send(&router, submit("first")).await;
    assert_error(&first, StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown");
    let mut nodes = Vec::new();
    for shard in 0..cluster.shards() {
        let mut conn = redis::Client::open(cluster.primary(shard).url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("a node");
        let size: u64 = redis::cmd("DBSIZE")
            .query_async(&mut conn)
            .await
            .expect("DBSIZE");
        nodes.push((size, shard, conn));
    }
    // The queue lives in one hash slot: that node's reply is the one to lose.
    let (_, shard, mut node) = nodes
        .into_iter()
        .find(|(size, _, _)| *size > 0)
        .expect("a node holds the queue");

    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:idempotency:open:first")
        .query_async(&mut node)
        .await
        .expect("KEYS");
    let record = keys
        .first()
        .expect("the first submit's idempotency record")
        .replace(":first", ":cut-off");

    let in_flight = tokio::spawn({
        let router = router.clone();
        async move { send(&router, submit("cut-off")).await }
    });
    // Its record exists once the enqueue is applied; the reply waits for the WAIT behind it.
    testkit::assert_eventually_async(
        "the enqueue to be applied",
        Duration::from_secs(1),
        async || {
            let exists: bool = redis::cmd("EXISTS")
                .arg(&record)
                .query_async(&mut node)
                .await
                .expect("EXISTS");
            exists
        },
    )
    .await;
    assert!(!in_flight.is_finished(), "answered before the kill");
    cluster.primary(shard).kill();
    let answer = in_flight.await.expect("the request task");
    assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown");

    // The node comes back with its AOF: both tasks were queued, as the answers allowed.
    cluster.primary(shard).start_again();
    let stats = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let reply = send(&router, get("/stats")).await;
            if reply.status == StatusCode::OK {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the cluster to answer again");
    assert_eq!(stats.body["queued_total"], 2, "{:?}", stats.body);
}
