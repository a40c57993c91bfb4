//! `agentctl` against a real system: a `redis-server`, the orchestrator's router served on a
//! loopback port, and the `agentctl` binary run as a child process, as a user runs it.

use std::time::Duration;

use serde_json::Value;
use testkit::RedisServer;
use tokio::process::Command;

/// The orchestrator on a loopback port (with these bearer tokens, if any); its base URL.
async fn serve(redis: &RedisServer, tokens: Option<&str>) -> String {
    let mut config = orchestrator::config::Config::for_tests(&redis.url(), "agentctl-test");
    config.auth_tokens = tokens.map(Into::into);
    let state = orchestrator::startup::AppState::new(&config).expect("orchestrator config");
    let router = orchestrator::startup::app(state, &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

async fn agentctl(url: &str, token: Option<&str>, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentctl"));
    command
        .args(args)
        .env("AGENT_URL", url)
        .env_remove("AGENT_TOKEN");
    if let Some(token) = token {
        command.env("AGENT_TOKEN", token);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("agentctl finishes")
        .expect("agentctl runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_show_list_cancel_retry_pause_round_trip_with_trustworthy_exit_codes() {
    let redis = RedisServer::start();
    let url = serve(&redis, None).await;

    let submitted = agentctl(
        &url,
        None,
        &[
            "--json",
            "submit",
            "summarise the report",
            "--priority",
            "3",
        ],
    )
    .await;
    assert_eq!(submitted.code, 0, "{}", submitted.stderr);
    let task = submitted.json();
    let id = task["id"].as_str().expect("id").to_owned();
    assert_eq!(task["status"], "queued");
    assert_eq!(task["priority"], 3);

    let shown = agentctl(&url, None, &["show", &id]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(
        shown.stdout.contains("summarise the report"),
        "{}",
        shown.stdout
    );

    let listed = agentctl(&url, None, &["--json", "ls", "--status", "queued"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(listed.json()["tasks"][0]["id"], id.as_str());
    let table = agentctl(&url, None, &["ls", "--status", "queued", "--all"]).await;
    assert!(table.stdout.contains(&id), "{}", table.stdout);

    // 409: a queued task cannot be retried
    let refused = agentctl(&url, None, &["retry", &id]).await;
    assert_eq!(refused.code, 1, "{} {}", refused.stdout, refused.stderr);
    assert!(refused.stderr.contains("conflict"), "{}", refused.stderr);

    let cancelled = agentctl(&url, None, &["--json", "cancel", &id]).await;
    assert_eq!(cancelled.code, 0, "{}", cancelled.stderr);
    assert_eq!(cancelled.json()["status"], "cancelled");
    let retried = agentctl(&url, None, &["--json", "retry", &id]).await;
    assert_eq!(retried.code, 0, "{}", retried.stderr);
    assert_eq!(retried.json()["status"], "queued");

    let delayed = agentctl(&url, None, &["--json", "submit", "later", "--delay", "30s"]).await;
    assert_eq!(delayed.code, 0, "{}", delayed.stderr);
    assert_eq!(delayed.json()["status"], "scheduled");

    let paused = agentctl(&url, None, &["pause", "3"]).await;
    assert_eq!(paused.code, 0, "{}", paused.stderr);
    assert_eq!(paused.stdout.trim(), "priority 3: paused");
    let stats = agentctl(&url, None, &["--json", "stats"]).await;
    assert_eq!(stats.json()["paused"], serde_json::json!([3]));
    assert_eq!(stats.json()["scheduled"], 1);
    let human = agentctl(&url, None, &["stats"]).await;
    assert!(human.stdout.contains("queued 1"), "{}", human.stdout);
    let resumed = agentctl(&url, None, &["--json", "resume", "3"]).await;
    assert_eq!(resumed.json()["paused"], false);

    // 404 → 3; a bad priority (400) → 1; usage → 2; nothing listening → 4
    let unknown = agentctl(
        &url,
        None,
        &["show", "00000000-0000-4000-8000-000000000000"],
    )
    .await;
    assert_eq!(unknown.code, 3, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("task_not_found"),
        "{}",
        unknown.stderr
    );
    assert_eq!(agentctl(&url, None, &["pause", "11"]).await.code, 1);
    assert_eq!(agentctl(&url, None, &["ls"]).await.code, 2);
    assert_eq!(agentctl(&url, None, &["frobnicate"]).await.code, 2);
    let nobody = format!("http://127.0.0.1:{}", testkit::free_port());
    let unreachable = agentctl(&nobody, None, &["stats"]).await;
    assert_eq!(unreachable.code, 4, "{}", unreachable.stderr);
    assert!(
        unreachable.stderr.contains("unreachable"),
        "{}",
        unreachable.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_sent_and_its_absence_is_a_refusal() {
    let redis = RedisServer::start();
    let token = "agentctl-test-token-0123456789";
    let url = serve(&redis, Some(token)).await;

    let refused = agentctl(&url, None, &["stats"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("unauthorized"),
        "{}",
        refused.stderr
    );
    let allowed = agentctl(&url, Some(token), &["--json", "stats"]).await;
    assert_eq!(allowed.code, 0, "{}", allowed.stderr);
    assert!(allowed.json()["queued_total"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_watch_refreshes_and_completions_print_a_script() {
    let redis = RedisServer::start();
    let url = serve(&redis, None).await;
    let mut watch = Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(["--json", "stats", "--watch", "--interval", "100ms"])
        .env("AGENT_URL", &url)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("agentctl runs");
    tokio::time::sleep(Duration::from_millis(800)).await;
    watch.start_kill().expect("kill");
    let output = watch.wait_with_output().await.expect("output");
    let blocks = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .inspect(|l| {
            serde_json::from_str::<Value>(l).expect("each refresh is one JSON line");
        })
        .count();
    assert!(blocks >= 2, "{blocks} refreshes in 800 ms at 100 ms");

    let completions = agentctl(&url, None, &["completions", "bash"]).await;
    assert_eq!(completions.code, 0);
    assert!(
        completions.stdout.contains("_agentctl"),
        "{}",
        completions.stdout
    );
}
