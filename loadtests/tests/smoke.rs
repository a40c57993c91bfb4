//! Smoke load: the goose `submit` scenario for 10 s against a real local system (redis-server,
//! the orchestrator and two workers in-process). Any failed or indeterminate request, or any
//! acknowledged task that does not complete, fails the test.

use std::time::Duration;

use loadtests::{SubmitLoad, SubmitOutcome, run_submit_load};
use testkit::{RedisServer, wait_for_async};
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "smoke";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_seconds_of_submit_load_get_no_request_error_and_every_task_completes() {
    let redis = RedisServer::start();
    let mut api_config = orchestrator::config::Config::for_tests(&redis.url(), PREFIX);
    api_config.max_body_bytes = 64 * 1024;
    let state = orchestrator::startup::AppState::new(&api_config).expect("orchestrator config");
    let router = orchestrator::startup::app(state, &api_config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let host = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut config = worker::config::Config::for_tests(&redis.url(), PREFIX);
        config.work = Duration::from_millis(1);
        config.concurrency = 32;
        let worker = worker::startup::Worker::build(&config)
            .await
            .expect("worker config");
        workers.push(tokio::spawn(worker.run(stop.clone())));
    }

    let records = run_submit_load(SubmitLoad {
        host: host.clone(),
        rate_per_s: 200,
        duration: Duration::from_secs(10),
        users: 20,
        request_timeout: Duration::from_secs(5),
        run_id: "smoke".into(),
        follow_ups: Default::default(),
        delays: Default::default(),
        progress: None,
    })
    .await
    .expect("load ran");

    assert!(
        records.len() > 1000,
        "expected about 2,000 attempts, got {}",
        records.len()
    );
    let errors: Vec<_> = records
        .iter()
        .filter(|r| !matches!(r.outcome, SubmitOutcome::Ok { .. }))
        .collect();
    assert!(
        errors.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        errors.len(),
        records.len(),
        errors.first()
    );
    let client = reqwest::Client::new();
    wait_for_async("the queue to drain", Duration::from_secs(30), async || {
        let stats: serde_json::Value = client
            .get(format!("{host}/stats"))
            .send()
            .await
            .expect("GET /stats")
            .json()
            .await
            .expect("json");
        let drained =
            stats["queued_total"] == 0 && stats["in_flight"] == 0 && stats["retry_scheduled"] == 0;
        if drained { Ok(()) } else { Err(stats) }
    })
    .await;
    stop.cancel();
    for worker in workers {
        worker.await.expect("worker task").expect("worker run");
    }
}
