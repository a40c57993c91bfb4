//! End-to-end tests of the load generator against an in-test stub of the orchestrator API.
//!
//! The stub (axum on 127.0.0.1:0) answers `POST /tasks` with 201, or, when told to inject
//! faults, with a 503 every 10th request, a 500 on every 10th-plus-3rd and a too-slow 201 on
//! every 25th-plus-7th; it remembers what it answered to which idempotency key so the
//! records can be checked against the server's side of the story.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use goose::GooseAttack;
use goose::config::GooseConfiguration;
use loadtests::scenarios::register_scenarios;
use loadtests::submit::SubmitContext;
use loadtests::{
    FollowUpKind, FollowUpRecord, FollowUps, LoadCounts, LoadProgress, SubmitLoad, SubmitOutcome,
    SubmitRecord, run_load, run_submit_load,
};
use serde_json::{Value, json};

/// Goose keeps process-wide state (its killswitch), so the tests run one load at a time.
static ONE_LOAD_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the stub sleeps before answering a "slow" request.
const SLOW_ANSWER: Duration = Duration::from_millis(1_500);

/// What the stub answered to one idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Created(String),
    Unavailable,
    Internal,
    /// Created, but answered after the client's timeout.
    Slow(String),
    Invalid,
}

#[derive(Default)]
struct Stub {
    inject_faults: bool,
    n_posts: AtomicU64,
    answers: Mutex<HashMap<String, Vec<Answer>>>,
    created_at: Mutex<HashMap<String, Instant>>,
    n_cancels: AtomicU64,
    cancelled: Mutex<Vec<String>>,
}

impl Stub {
    fn answers(&self) -> HashMap<String, Vec<Answer>> {
        self.answers.lock().expect("stub lock").clone()
    }
}

async fn create_task(
    State(stub): State<Arc<Stub>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let n = stub.n_posts.fetch_add(1, Ordering::SeqCst) + 1;
    let key = headers
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<missing>")
        .to_string();
    let record = |answer: Answer| {
        stub.answers
            .lock()
            .expect("stub lock")
            .entry(key.clone())
            .or_default()
            .push(answer);
    };
    let n_chars = body["description"].as_str().map(|d| d.chars().count());
    let priority = body["priority"].as_u64();
    let valid = matches!(n_chars, Some(1..=10_000)) && matches!(priority, Some(1..=10));
    if !valid {
        record(Answer::Invalid);
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "invalid task",
        );
    }
    let task_id = format!("task-{n}");
    if stub.inject_faults {
        if n % 10 == 0 {
            record(Answer::Unavailable);
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "redis down",
            );
        }
        if n % 10 == 3 {
            record(Answer::Internal);
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "oops");
        }
        if n % 25 == 7 {
            record(Answer::Slow(task_id.clone()));
            tokio::time::sleep(SLOW_ANSWER).await;
            return created(&stub, task_id);
        }
    }
    record(Answer::Created(task_id.clone()));
    created(&stub, task_id)
}

fn created(stub: &Stub, task_id: String) -> Response {
    stub.created_at
        .lock()
        .expect("stub lock")
        .insert(task_id.clone(), Instant::now());
    let body = json!({"id": task_id, "status": "queued"});
    (StatusCode::CREATED, Json(body)).into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message}});
    (status, [("Retry-After", "1")], Json(body)).into_response()
}

/// A task "runs" for 5 ms after it was created, then it has succeeded.
async fn read_task(State(stub): State<Arc<Stub>>, Path(task_id): Path<String>) -> Response {
    let created_at = stub
        .created_at
        .lock()
        .expect("stub lock")
        .get(&task_id)
        .copied();
    match created_at {
        None => error(StatusCode::NOT_FOUND, "not_found", "no such task"),
        Some(at) => {
            let status = if at.elapsed() < Duration::from_millis(5) {
                "running"
            } else {
                "succeeded"
            };
            Json(json!({"id": task_id, "status": status})).into_response()
        }
    }
}

/// Every other cancel succeeds (200), the rest find the task running (409).
async fn cancel_task(State(stub): State<Arc<Stub>>, Path(task_id): Path<String>) -> Response {
    stub.cancelled
        .lock()
        .expect("stub lock")
        .push(task_id.clone());
    if stub.n_cancels.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
        Json(json!({"id": task_id, "status": "cancelled"})).into_response()
    } else {
        error(StatusCode::CONFLICT, "conflict", "task is running")
    }
}

async fn stats() -> Json<Value> {
    Json(json!({"queued": {"5": 0}, "in_flight": 0, "dead_lettered": 0, "live_workers": 1}))
}

/// Starts a stub on 127.0.0.1:0 and returns its base URL.
async fn spawn_stub(stub: Arc<Stub>) -> String {
    let app = Router::new()
        .route("/tasks", post(create_task))
        .route("/tasks/{id}", get(read_task).delete(cancel_task))
        .route("/stats", get(stats))
        .with_state(stub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the stub to a free loopback port");
    let address = listener.local_addr().expect("stub address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

fn load(host: &str, rate_per_s: u32, seconds: u64, run_id: &str) -> SubmitLoad {
    SubmitLoad {
        host: host.to_string(),
        rate_per_s,
        duration: Duration::from_secs(seconds),
        users: 10,
        request_timeout: Duration::from_millis(500),
        run_id: run_id.to_string(),
        follow_ups: Default::default(),
        delays: Default::default(),
        progress: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_submits_are_followed_by_cancels_and_reads_as_their_shares_say() {
    let _one_load = ONE_LOAD_AT_A_TIME.lock().await;
    let stub = Arc::new(Stub::default());
    let host = spawn_stub(Arc::clone(&stub)).await;
    let mut load = load(&host, 100, 2, "follow");
    load.follow_ups = FollowUps {
        cancel: 0.3,
        read: 0.3,
    };
    let records = run_load(load).await.expect("the load runs");

    let created: HashSet<&str> = records
        .submits
        .iter()
        .filter_map(|r| r.outcome.task_id())
        .collect();
    let cancels: Vec<&FollowUpRecord> = records
        .follow_ups
        .iter()
        .filter(|f| f.kind == FollowUpKind::Cancel)
        .collect();
    let reads = records.follow_ups.len() - cancels.len();
    // about 30 % each of the acknowledged submits (a binomial draw: wide bounds)
    for (what, n) in [("cancels", cancels.len()), ("reads", reads)] {
        assert!(
            n * 10 >= created.len() && n * 2 <= created.len(),
            "{n} {what} for {} acknowledged submits",
            created.len()
        );
    }
    for follow_up in &records.follow_ups {
        assert!(
            created.contains(follow_up.task_id.as_str()),
            "{follow_up:?}"
        );
        assert!(follow_up.started_unix_ms > 0 && follow_up.latency_ms >= 0.0);
    }
    let statuses: HashSet<Option<u16>> = cancels.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        HashSet::from([Some(200), Some(409)]),
        "{cancels:?}"
    );
    let mut sent: Vec<String> = cancels.iter().map(|c| c.task_id.clone()).collect();
    let mut seen = stub.cancelled.lock().expect("stub lock").clone();
    sent.sort();
    seen.sort();
    assert_eq!(sent, seen, "every cancel the server saw is recorded");
    assert!(
        records
            .follow_ups
            .iter()
            .filter(|f| f.kind == FollowUpKind::Read)
            .all(|r| r.status == Some(200)),
        "reads of tasks the stub created find them"
    );
}

fn keys(records: &[SubmitRecord]) -> Vec<&str> {
    records.iter().map(|r| r.idempotency_key.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_load_records_every_attempt_with_the_outcome_the_server_gave() {
    let _one_load = ONE_LOAD_AT_A_TIME.lock().await;
    let stub = Arc::new(Stub {
        inject_faults: true,
        ..Stub::default()
    });
    let host = spawn_stub(Arc::clone(&stub)).await;

    let progress = Arc::new(LoadProgress::new());
    let mut faults = load(&host, 50, 2, "faults");
    faults.progress = Some(Arc::clone(&progress));
    let records = run_submit_load(faults).await.expect("the load runs");

    // About 50/s for 2 s, give or take start-up and shutdown.
    assert!(
        (50..=150).contains(&records.len()),
        "expected about 100 attempts at 50/s for 2 s, got {}",
        records.len()
    );
    let unique: HashSet<&str> = keys(&records).into_iter().collect();
    assert_eq!(
        unique.len(),
        records.len(),
        "idempotency keys must be unique"
    );
    for (index, record) in records.iter().enumerate() {
        assert_eq!(
            record.idempotency_key,
            format!("faults-{}", record.op),
            "the key is run id and op"
        );
        if index > 0 {
            assert!(
                record.op > records[index - 1].op,
                "records are ordered by op"
            );
        }
        assert!(
            (1..=10).contains(&record.priority),
            "priority {}",
            record.priority
        );
        assert!(record.started_unix_ms > 0, "a start time is recorded");
    }

    // Every request the server saw is in the records, with the outcome it was given.
    let answers = stub.answers();
    assert_eq!(
        answers.len(),
        records.len(),
        "the server saw {} keys, the records hold {}",
        answers.len(),
        records.len()
    );
    let mut seen = HashMap::<&str, usize>::new();
    for record in &records {
        let answer = match answers.get(&record.idempotency_key).map(Vec::as_slice) {
            Some([answer]) => answer,
            other => panic!("{} reached the server as {other:?}", record.idempotency_key),
        };
        match (answer, &record.outcome) {
            (Answer::Created(id), SubmitOutcome::Ok { task_id }) => {
                assert_eq!(id, task_id);
                *seen.entry("ok").or_default() += 1;
            }
            (Answer::Unavailable, SubmitOutcome::Fail { status, message }) => {
                assert_eq!(*status, Some(503));
                assert!(message.contains("unavailable"), "message {message:?}");
                *seen.entry("fail").or_default() += 1;
            }
            (Answer::Internal, SubmitOutcome::Info { message }) => {
                assert!(message.contains("500"), "message {message:?}");
                *seen.entry("info 500").or_default() += 1;
            }
            (Answer::Slow(_), SubmitOutcome::Info { .. }) => {
                assert!(
                    record.latency_ms < SLOW_ANSWER.as_millis() as f64,
                    "a timed-out attempt ends at the client's timeout, took {} ms",
                    record.latency_ms
                );
                *seen.entry("info timeout").or_default() += 1;
            }
            (answer, outcome) => panic!(
                "{}: server answered {answer:?} but the record says {outcome:?}",
                record.idempotency_key
            ),
        }
    }
    for kind in ["ok", "fail", "info 500", "info timeout"] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) > 0,
            "expected at least one {kind} outcome, saw {seen:?}"
        );
    }

    // The live counts end where the records do: each attempt counted once, by its final outcome.
    let count = |kinds: &[&str]| -> u64 {
        kinds
            .iter()
            .map(|kind| seen.get(kind).copied().unwrap_or(0) as u64)
            .sum()
    };
    assert_eq!(
        progress.snapshot(),
        LoadCounts {
            attempted: records.len() as u64,
            acknowledged: count(&["ok"]),
            failed: count(&["fail"]),
            indeterminate: count(&["info 500", "info timeout"]),
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_runs_keep_their_records_apart() {
    let _one_load = ONE_LOAD_AT_A_TIME.lock().await;
    let stub = Arc::new(Stub::default());
    let host = spawn_stub(Arc::clone(&stub)).await;

    let first = run_submit_load(load(&host, 20, 1, "first"))
        .await
        .expect("the first load runs");
    let second = run_submit_load(load(&host, 20, 1, "second"))
        .await
        .expect("the second load runs");

    assert!(!first.is_empty() && !second.is_empty(), "both runs submit");
    assert!(
        keys(&first).iter().all(|k| k.starts_with("first-")),
        "the first run holds only its own records: {:?}",
        keys(&first)
    );
    assert!(
        keys(&second).iter().all(|k| k.starts_with("second-")),
        "the second run holds only its own records: {:?}",
        keys(&second)
    );
    assert_eq!(second[0].op, 0, "each run numbers its attempts from 0");
    assert_eq!(
        stub.answers().len(),
        first.len() + second.len(),
        "together the runs hold every request the server saw"
    );
    assert!(
        first
            .iter()
            .chain(&second)
            .all(|r| r.outcome.task_id().is_some()),
        "a healthy server acknowledges every attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_against_the_api_without_errors() {
    let _one_load = ONE_LOAD_AT_A_TIME.lock().await;
    let stub = Arc::new(Stub::default());
    let host = spawn_stub(Arc::clone(&stub)).await;
    let configuration = GooseConfiguration::parse_args_default(&[
        "--host",
        &host,
        "--users",
        "3",
        "--increase-rate",
        "100",
        "--run-time",
        "2s",
        "--throttle-requests",
        "300",
        "--no-telnet",
        "--quiet",
        "--no-print-metrics",
    ])
    .expect("valid goose options");
    let context = Arc::new(SubmitContext::not_recording("scenarios"));
    let attack = GooseAttack::initialize_with_config(configuration).expect("goose initialises");

    let metrics = register_scenarios(attack, &context)
        .expect("scenarios register")
        .execute()
        .await
        .expect("the load runs");

    let rows: Vec<&String> = metrics.requests.keys().collect();
    let failed: Vec<(&String, usize)> = metrics
        .requests
        .iter()
        .filter(|(_, aggregate)| aggregate.fail_count > 0)
        .map(|(name, aggregate)| (name, aggregate.fail_count))
        .collect();
    assert!(failed.is_empty(), "no request should fail: {failed:?}");
    for expected in [
        "POST /tasks",
        "GET /tasks/{id}",
        "GET /stats",
        "E2E submit_and_wait",
    ] {
        let row = metrics.requests.get(expected);
        assert!(
            row.is_some_and(|aggregate| aggregate.success_count > 0),
            "expected successful {expected} requests, rows are {rows:?}"
        );
    }
    assert!(
        rows.iter().all(|row| !row.contains("task-")),
        "task reads are grouped under one name, rows are {rows:?}"
    );
    let unique_keys = stub.answers().values().all(|answers| answers.len() == 1);
    assert!(unique_keys, "every POST carries its own idempotency key");
}
