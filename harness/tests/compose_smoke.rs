//! Smoke test of the container deployment, driven through the justfile as a user would:
//! `just up` → healthy → a task is executed → `just scale 3` shares the work → `just restart
//! worker` leaves Redis and the orchestrator alone → `docker kill agent-redis` + start loses no
//! acknowledged task → `just down` and `just clean` leave nothing behind.
//!
//! **Needs Docker** (an engine plus `docker-compose` v1.29 or `docker compose` v2), `just`, and
//! `redis-server` on the host (or root, so `just images` can apt-get it). Without a reachable
//! engine the test fails and says so; on a machine that cannot run Docker, opt out explicitly
//! with `AGENT_SKIP_DOCKER_TESTS=1`.
//!
//! The deployment uses fixed names (containers `agent-redis`, `agent-orchestrator`, volume
//! `agent-redis-data`, network `agent-system-net`, host ports 6380 and 8001), so the test
//! refuses to start while such a deployment exists rather than destroying its data, and a Drop
//! guard removes everything it created, also when a step fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const SKIP_ENV: &str = "AGENT_SKIP_DOCKER_TESTS";
const API: &str = "http://localhost:8001";
const PROJECTS: [&str; 3] = ["agent-worker", "agent-orchestrator", "agent-redis"];
const VOLUME: &str = "agent-redis-data";
const NETWORK: &str = "agent-system-net";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness/ has a parent")
        .to_path_buf()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a command in the workspace root; panics with its output when it fails.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}):\n{}",
        args.join(" "),
        output.status,
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn just(args: &[&str]) -> String {
    run("just", args)
}

fn docker(args: &[&str]) -> String {
    run("docker", args)
}

/// Ids of every container (running or not) of a compose project.
fn project_containers(project: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
    ])
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

fn inspect(container: &str, format: &str) -> String {
    docker(&["inspect", "--format", format, container])
        .trim()
        .to_owned()
}

fn health(container: &str) -> String {
    inspect(
        container,
        "{{if .State.Health}}{{.State.Health.Status}}{{else}}no healthcheck{{end}}",
    )
}

/// (container id, start time): equal before and after means the container was not touched.
fn identity(container: &str) -> (String, String) {
    (
        inspect(container, "{{.Id}}"),
        inspect(container, "{{.State.StartedAt}}"),
    )
}

/// Polls `probe` every 200 ms until it yields a value; panics after `timeout` naming `what`.
fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn wait_healthy(project: &str, expected: usize) -> Vec<String> {
    wait_for(
        &format!("{expected} healthy containers in {project}"),
        Duration::from_secs(120),
        || {
            let ids = project_containers(project);
            (ids.len() == expected && ids.iter().all(|id| health(id) == "healthy")).then_some(ids)
        },
    )
}

/// Prints a step with the time since the test started, so a CI log shows where time went.
fn step(started: Instant, what: &str) {
    eprintln!("compose_smoke [{:>6.1?}] {what}", started.elapsed());
}

/// Removes every container, the volume and the network of the compose deployment on drop.
struct Deployment;

impl Drop for Deployment {
    fn drop(&mut self) {
        // `just clean` first; then by label, in case the justfile itself is what broke.
        let _ = Command::new("just")
            .arg("clean")
            .current_dir(workspace_root())
            .output();
        for project in PROJECTS {
            let ids = Command::new("docker")
                .args(["ps", "-aq", "--filter"])
                .arg(format!("label=com.docker.compose.project={project}"))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for id in ids.split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
            }
        }
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", VOLUME])
            .output();
        let _ = Command::new("docker")
            .args(["network", "rm", NETWORK])
            .output();
    }
}

struct Api {
    client: reqwest::blocking::Client,
}

impl Api {
    fn new() -> Self {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        Api { client }
    }

    /// POST /tasks; returns the id of the acknowledged (201) task.
    fn submit(&self, description: &str) -> String {
        let response = self
            .client
            .post(format!("{API}/tasks"))
            .json(&json!({"description": description, "priority": 5}))
            .send()
            .expect("POST /tasks answers");
        let status = response.status();
        let body: Value = response.json().expect("POST /tasks returns JSON");
        assert_eq!(status.as_u16(), 201, "POST /tasks: {body}");
        assert_eq!(body["status"], "queued", "a new task is queued: {body}");
        body["id"].as_str().expect("task id").to_owned()
    }

    /// GET /tasks/{id}, or None while the orchestrator cannot answer (e.g. Redis restarting).
    fn task(&self, id: &str) -> Option<Value> {
        let response = self.client.get(format!("{API}/tasks/{id}")).send().ok()?;
        if response.status().as_u16() == 503 {
            return None;
        }
        assert_eq!(response.status().as_u16(), 200, "GET /tasks/{id}");
        response.json().ok()
    }

    /// Waits until every task succeeded; returns their records. A task that ends dead or
    /// cancelled fails at once; a timeout reports every status last seen.
    fn wait_succeeded(&self, ids: &[String], timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let records: Vec<Option<Value>> = ids.iter().map(|id| self.task(id)).collect();
            for record in records.iter().flatten() {
                let status = record["status"].as_str().unwrap_or_default();
                assert!(
                    !matches!(status, "dead" | "cancelled"),
                    "an acknowledged task ended {status}: {record}"
                );
            }
            if records
                .iter()
                .all(|r| r.as_ref().is_some_and(|r| r["status"] == "succeeded"))
            {
                return records.into_iter().flatten().collect();
            }
            if Instant::now() >= deadline {
                let statuses: Vec<String> = ids
                    .iter()
                    .zip(&records)
                    .map(|(id, r)| match r {
                        Some(r) => format!("{id}: {}", r["status"]),
                        None => format!("{id}: unavailable"),
                    })
                    .collect();
                panic!(
                    "{} acknowledged tasks did not all succeed within {timeout:?}:\n{}",
                    ids.len(),
                    statuses.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

/// `task_id`s of the worker's `task_executed` log lines, over every worker container.
fn executed_task_ids() -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for container in project_containers("agent-worker") {
        let output = Command::new("docker")
            .args(["logs", &container])
            .output()
            .expect("docker logs");
        for line in text(&output).lines() {
            if let Ok(event) = serde_json::from_str::<Value>(line)
                && event["event"] == "task_executed"
                && let Some(task_id) = event["task_id"].as_str()
            {
                ids.insert(task_id.to_owned());
            }
        }
    }
    ids
}

/// Fails unless Docker and just are usable; returns false when the user opted out.
fn preconditions_hold() -> bool {
    if let Err(err) = harness::images::require_docker() {
        if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
            eprintln!("compose_smoke skipped ({SKIP_ENV}=1): {err:#}");
            return false;
        }
        panic!(
            "compose_smoke needs Docker: {err:#}\n\
             On a machine that cannot run Docker, opt out with {SKIP_ENV}=1."
        );
    }
    assert!(
        Command::new("just").arg("--version").output().is_ok(),
        "compose_smoke needs `just` on PATH (pip install rust-just, or cargo install just)"
    );
    let existing: Vec<String> = PROJECTS
        .iter()
        .flat_map(|p| project_containers(p))
        .collect();
    let volume = Command::new("docker")
        .args(["volume", "inspect", VOLUME])
        .output()
        .is_ok_and(|o| o.status.success());
    let network = Command::new("docker")
        .args(["network", "inspect", NETWORK])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        existing.is_empty() && !volume && !network,
        "a compose deployment exists or is starting (containers {existing:?}, volume {VOLUME}: \
         {volume}, network {NETWORK}: {network}); this test would destroy it. \
         Run `just clean` first."
    );
    true
}

#[test]
fn compose_deployment_survives_scale_restart_and_a_redis_kill() {
    if !preconditions_hold() {
        return;
    }
    let _cleanup = Deployment;
    let api = Api::new();

    // just up: three services, healthy.
    let started = Instant::now();
    step(started, "just up");
    just(&["up"]);
    step(started, "up; checking health");
    assert_eq!(health("agent-redis"), "healthy");
    assert_eq!(health("agent-orchestrator"), "healthy");
    wait_healthy("agent-worker", 1);
    let ps = docker(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with("agent-redis ") && l.contains("(healthy)")),
        "docker ps shows agent-redis (healthy):\n{ps}"
    );

    // A task is executed: visible through the API and in the worker's log.
    step(started, "one task");
    let first = api.submit("smoke: first task");
    api.wait_succeeded(std::slice::from_ref(&first), Duration::from_secs(30));
    wait_for(
        "the worker's task_executed log line for the first task",
        Duration::from_secs(10),
        || executed_task_ids().contains(&first).then_some(()),
    );

    // just scale 3: three workers share the work.
    step(started, "just scale 3");
    just(&["scale", "3"]);
    wait_healthy("agent-worker", 3);
    let batch: Vec<String> = (0..60)
        .map(|i| api.submit(&format!("smoke: shared {i}")))
        .collect();
    let records = api.wait_succeeded(&batch, Duration::from_secs(60));
    let workers: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r["worker"].as_str())
        .collect();
    step(
        started,
        &format!("60 tasks executed by {} workers", workers.len()),
    );
    assert!(
        workers.len() >= 2,
        "60 tasks on 3 workers were all executed by {workers:?}"
    );

    // just restart worker: Redis and the orchestrator keep their containers and start times.
    step(started, "just restart worker");
    let redis_before = identity("agent-redis");
    let orchestrator_before = identity("agent-orchestrator");
    let workers_before: Vec<_> = project_containers("agent-worker")
        .iter()
        .map(|id| identity(id))
        .collect();
    just(&["restart", "worker"]);
    wait_healthy("agent-worker", 3);
    assert_eq!(
        identity("agent-redis"),
        redis_before,
        "restarting workers touched Redis"
    );
    assert_eq!(
        identity("agent-orchestrator"),
        orchestrator_before,
        "restarting workers touched the orchestrator"
    );
    for before in &workers_before {
        assert_ne!(
            &identity(&before.0),
            before,
            "worker {} restarted",
            before.0
        );
    }
    let after_restart = api.submit("smoke: after worker restart");
    api.wait_succeeded(&[after_restart], Duration::from_secs(30));

    // docker kill agent-redis + start: acknowledged tasks survive.
    step(
        started,
        "kill Redis with 20 tasks queued and no worker running",
    );
    // (a) acknowledged while no worker runs, so they are certainly still queued at the kill;
    let worker_ids = project_containers("agent-worker");
    let mut stop = vec!["stop"];
    stop.extend(worker_ids.iter().map(String::as_str));
    docker(&stop);
    let queued: Vec<String> = (0..20)
        .map(|i| api.submit(&format!("smoke: queued across kill {i}")))
        .collect();
    let redis_start_before_kill = identity("agent-redis").1;
    docker(&["kill", "agent-redis"]);
    docker(&["start", "agent-redis"]);
    wait_for("agent-redis healthy again", Duration::from_secs(60), || {
        (health("agent-redis") == "healthy").then_some(())
    });
    assert_ne!(
        identity("agent-redis").1,
        redis_start_before_kill,
        "agent-redis was killed and started again"
    );
    let mut start = vec!["start"];
    start.extend(worker_ids.iter().map(String::as_str));
    docker(&start);
    wait_healthy("agent-worker", 3);
    api.wait_succeeded(&queued, Duration::from_secs(90));
    // (b) acknowledged while workers run, so some are in flight at the kill.
    step(started, "kill Redis with 30 tasks in flight");
    let in_flight: Vec<String> = (0..30)
        .map(|i| api.submit(&format!("smoke: in flight across kill {i}")))
        .collect();
    docker(&["kill", "agent-redis"]);
    docker(&["start", "agent-redis"]);
    api.wait_succeeded(&in_flight, Duration::from_secs(120));

    // just down, then just clean: nothing left.
    step(started, "just down, just clean");
    just(&["down"]);
    for project in PROJECTS {
        assert_eq!(
            project_containers(project),
            Vec::<String>::new(),
            "just down left containers of {project}"
        );
    }
    just(&["clean"]);
    let volumes = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("name=^{VOLUME}$"),
    ]);
    assert_eq!(volumes.trim(), "", "just clean left the volume {VOLUME}");
    let networks = docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("name=^{NETWORK}$"),
    ]);
    assert_eq!(networks.trim(), "", "just clean left the network {NETWORK}");
    step(started, "done");
}
