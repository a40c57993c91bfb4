//! The dashboard in a real browser: Debian's `chromium`, headless, driven over the DevTools
//! protocol, against the orchestrator (auth on) and a real `redis-server`. The page must show the
//! numbers `/stats` gives, and its retry button must queue a dead task again.
//!
//! Needs `chromium` (`CHROME` names another binary); without it the test fails, never skips.
//! With `AGENT_UPDATE_SCREENSHOT=1` it also writes `docs/dashboard.png`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::{Value, json};
use testkit::RedisServer;

const TOKEN: &str = "dashboard-test-token-0123456789";
const PREFIX: &str = "dashboard-test";

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "this test needs a Chromium browser at {} (apt-get install chromium, or set CHROME)",
        path.display()
    );
    path
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the orchestrator answers");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.expect("json")
    }
}

async fn serve(redis: &RedisServer) -> Api {
    let mut config = orchestrator::config::Config::for_tests(&redis.url(), PREFIX);
    config.auth_tokens = Some(TOKEN.into());
    let state = orchestrator::startup::AppState::new(&config).expect("config");
    let router = orchestrator::startup::app(state, &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Api {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
    }
}

/// A task that failed for good, the way a worker records it.
async fn dead_task(redis: &RedisServer, api: &Api) -> String {
    let created = api
        .call(
            reqwest::Method::POST,
            "/tasks",
            Some(json!({"description": "fails for good", "priority": 1})),
        )
        .await;
    let queue = taskq::queue::Queue::new(taskq::QueueConfig {
        keys: taskq::Keys::new(PREFIX),
        ..taskq::QueueConfig::default()
    });
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    queue.ensure_groups(&mut conn).await.expect("groups");
    let claimed = queue.claim(&mut conn, "w", 1, &[]).await.expect("claim");
    queue
        .finish_many(
            &mut conn,
            "w",
            &[taskq::queue::Finish {
                task: claimed[0].clone(),
                outcome: taskq::queue::ExecutionOutcome::Dead {
                    error: "permanent: the input file is corrupt".into(),
                },
            }],
        )
        .await
        .expect("finish");
    created["id"].as_str().expect("id").to_owned()
}

/// Evaluates `expression` in the page until it yields a value other than null, or panics (an
/// object comes back as null: return it as a JSON string).
fn wait_for_value(tab: &Tab, what: &str, expression: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let value = tab
            .evaluate(expression, false)
            .ok()
            .and_then(|r| r.value)
            .unwrap_or(Value::Null);
        if !value.is_null() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "waited 15 s for {what} ({expression})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_stats_says_and_its_retry_button_requeues_a_dead_task() {
    let chromium = chromium();
    let redis = RedisServer::start();
    let api = serve(&redis).await;
    let dead = dead_task(&redis, &api).await;
    for (description, priority) in [("a", 2), ("b", 2), ("c", 2), ("d", 7)] {
        api.call(
            reqwest::Method::POST,
            "/tasks",
            Some(json!({"description": description, "priority": priority})),
        )
        .await;
    }
    api.call(
        reqwest::Method::POST,
        "/tasks",
        Some(json!({"description": "later", "delay_ms": 600000})),
    )
    .await;
    api.call(reqwest::Method::POST, "/priorities/7/pause", None)
        .await;
    let stats = api.call(reqwest::Method::GET, "/stats", None).await;
    let url = format!("{}/ui", api.base);

    // The browser is blocking; it runs on its own thread, and is killed when dropped.
    let page = tokio::task::spawn_blocking(move || {
        let browser = Browser::new(LaunchOptions {
            path: Some(chromium),
            headless: true,
            sandbox: false,
            window_size: Some((1100, 1250)),
            idle_browser_timeout: Duration::from_secs(60),
            ..LaunchOptions::default()
        })
        .expect("chromium starts");
        let tab = browser.new_tab().expect("a tab");
        tab.navigate_to(&url).expect("navigates");
        tab.wait_until_navigated().expect("loads");
        // Auth is on: the page asks for the token.
        wait_for_value(
            &tab,
            "the token form",
            "getComputedStyle(document.getElementById('login')).display === 'block' || null",
        );
        tab.wait_for_element("#token")
            .expect("token field")
            .click()
            .expect("focus");
        tab.type_str(TOKEN).expect("types");
        tab.wait_for_element("#login-form button")
            .expect("button")
            .click()
            .expect("submits");
        let shown = wait_for_value(
            &tab,
            "the numbers",
            r#"(() => {
                const n = (id) => document.getElementById(id).textContent;
                if (n('queued_total') === '–') return null;
                const rows = [...document.querySelectorAll('#priorities tr')];
                return JSON.stringify({
                    queued_total: n('queued_total'), in_flight: n('in_flight'),
                    scheduled: n('scheduled'), dead_lettered: n('dead_lettered'),
                    live_workers: n('live_workers'), retry_scheduled: n('retry_scheduled'),
                    queued: rows.map((r) => r.querySelector('.queued').textContent),
                    states: rows.map((r) => r.children[5].textContent),
                    dead: [...document.querySelectorAll('#dead tr')].map((r) => r.dataset.task),
                    errors: document.getElementById('dead').textContent,
                });
            })()"#,
        );
        let shown: Value = serde_json::from_str(shown.as_str().expect("a string"))
            .expect("the page's numbers as JSON");
        let png = tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .expect("screenshot");
        (tab, browser, shown, png)
    })
    .await
    .expect("the browser thread");
    let (tab, browser, shown, png) = page;

    for key in [
        "queued_total",
        "in_flight",
        "scheduled",
        "dead_lettered",
        "live_workers",
        "retry_scheduled",
    ] {
        assert_eq!(shown[key], stats[key].to_string(), "{key}: {shown}");
    }
    for p in 1..=10 {
        assert_eq!(
            shown["queued"][p - 1],
            stats["queued"][p.to_string()].to_string(),
            "priority {p}: {shown}"
        );
        let expected = if p == 7 { "paused" } else { "running" };
        assert_eq!(shown["states"][p - 1], expected, "priority {p}");
    }
    assert_eq!(shown["dead"], json!([dead]), "{shown}");
    assert!(
        shown["errors"]
            .as_str()
            .is_some_and(|e| e.contains("the input file is corrupt")),
        "{shown}"
    );
    let shot = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("dashboard.png");
    std::fs::write(&shot, &png).expect("writing the screenshot");
    if std::env::var_os("AGENT_UPDATE_SCREENSHOT").is_some() {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard.png");
        std::fs::write(&docs, &png).expect("writing docs/dashboard.png");
    }

    // The retry button queues the dead task again.
    let selector = format!("button[data-retry='{dead}']");
    tokio::task::spawn_blocking(move || {
        tab.wait_for_element(&selector)
            .expect("the retry button")
            .click()
            .expect("clicks");
        wait_for_value(
            &tab,
            "the retry's answer in the page",
            "document.getElementById('lookup-result').textContent.startsWith('retried') || null",
        );
        drop(browser);
    })
    .await
    .expect("the browser thread");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let task = api
            .call(reqwest::Method::GET, &format!("/tasks/{dead}"), None)
            .await;
        if task["status"] == "queued" {
            assert_eq!(task["error"], "permanent: the input file is corrupt");
            break;
        }
        assert!(Instant::now() < deadline, "still {}", task["status"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
