//! Smoke test of the container deployment, driven through the justfile as a user would:
//! `just up` → healthy, Redis refuses clients without a password and is published on loopback
//! only → a task is executed → `just scale 3` shares the work → `just monitoring-up`: Prometheus
//! scrapes the orchestrator and all three workers (DNS discovery) and evaluates the alert rules →
//! `just restart worker` leaves Redis and the orchestrator alone → `docker kill agent-redis` +
//! start loses no acknowledged task → `just redis-rotate-password`: the old password is refused,
//! tasks still run → no recipe output and no container log shows a password → `just down` and
//! `just clean` leave nothing behind.
//!
//! **Needs Docker** (an engine plus `docker-compose` v1.29 or `docker compose` v2), `just`, and
//! `redis-server` on the host (or root, so `just images` can apt-get it). Without a reachable
//! engine the test fails and says so; on a machine that cannot run Docker, opt out explicitly
//! with `AGENT_SKIP_DOCKER_TESTS=1`.
//!
//! The deployment uses fixed names (containers `agent-redis`, `agent-orchestrator`, volume
//! `agent-redis-data`, network `agent-system-net`, host ports 6380 and 8001), so the test
//! refuses to start while such a deployment exists rather than destroying its data, and a Drop
//! guard removes everything it created, also when a step fails. The Redis passwords in
//! `compose/secrets/` are used if present (and then kept), else created and removed at the end.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const SKIP_ENV: &str = "AGENT_SKIP_DOCKER_TESTS";
const API: &str = "http://localhost:8001";
const PROJECTS: [&str; 5] = [
    "agent-monitoring",
    "agent-worker",
    "agent-orchestrator",
    "agent-redis",
    "agent-redis-cluster",
];
const VOLUME: &str = "agent-redis-data";
const PROMETHEUS_VOLUME: &str = "agent-prometheus-data";
const NETWORK: &str = "agent-system-net";
const PROMETHEUS: &str = "http://127.0.0.1:9090";
const REDIS_HOST_PORT: u16 = 6380;

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

/// Runs a recipe; panics when it fails. Its whole output is kept, to be searched for passwords.
fn just(args: &[&str]) -> String {
    just_with(&[], args)
}

/// [`just`] with environment variables set.
fn just_with(env: &[(&str, &str)], args: &[&str]) -> String {
    let output = Command::new("just")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run just: {e}"));
    assert!(
        output.status.success(),
        "`just {}` failed ({}):\n{}",
        args.join(" "),
        output.status,
        text(&output)
    );
    text(&output)
}

fn secrets_dir() -> PathBuf {
    workspace_root().join("compose/secrets")
}

/// The current password of a Redis user of the deployment (`admin` or `agent`).
fn redis_password(user: &str) -> String {
    let path = secrets_dir().join(format!("redis-{user}-password"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// PING on the published Redis port, as `user` (or without credentials); Ok("PONG") or the error code.
fn redis_ping_from_host(credentials: Option<(&str, &str)>) -> Result<String, String> {
    let url = match credentials {
        Some((user, password)) => format!("redis://{user}:{password}@127.0.0.1:{REDIS_HOST_PORT}"),
        None => format!("redis://127.0.0.1:{REDIS_HOST_PORT}"),
    };
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .map_err(|e| e.code().unwrap_or("connection failed").to_owned())
}

/// Panics if `haystack` (recipe output, a log) shows any of the passwords.
fn assert_no_password(what: &str, haystack: &str, passwords: &[String]) {
    for password in passwords {
        assert!(
            !haystack.contains(password.as_str()),
            "{what} shows a Redis password"
        );
    }
}

/// Panics if a recipe's output or the log of any container of the deployment shows a password.
fn assert_no_password_anywhere(outputs: &[String], passwords: &[String]) {
    for output in outputs {
        assert_no_password("a recipe's output", output, passwords);
    }
    for project in PROJECTS {
        for container in project_containers(project) {
            let output = Command::new("docker")
                .args(["logs", &container])
                .output()
                .expect("docker logs");
            assert_no_password(
                &format!("the log of {project} container {container}"),
                &text(&output),
                passwords,
            );
        }
    }
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
fn wait_for<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Option<T>) -> T {
    testkit::Wait::new(what, timeout)
        .every(Duration::from_millis(200))
        .until(probe)
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

/// Removes every container, the volumes and the network of the compose deployment on drop, and
/// the generated Redis passwords when the test created them.
struct Deployment {
    remove_secrets: bool,
}

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
            .args(["volume", "rm", "-f", VOLUME, PROMETHEUS_VOLUME])
            .args(cluster_volumes())
            .output();
        let _ = Command::new("docker")
            .args(["network", "rm", NETWORK])
            .output();
        if self.remove_secrets {
            let _ = std::fs::remove_dir_all(secrets_dir());
        }
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

    /// POST /tasks with an Idempotency-Key made from the description: the id of the
    /// acknowledged task (201, or 200 for a replay), or the status of a 503 refusal (`None`
    /// when no answer came). Any other answer fails the test.
    fn try_submit(&self, description: &str) -> Result<String, Option<u16>> {
        let key = format!("smoke-{}", description.replace(' ', "-"));
        let response = self
            .client
            .post(format!("{API}/tasks"))
            .header("Idempotency-Key", &key)
            .json(&json!({"description": description, "priority": 5}))
            .send()
            .map_err(|_| None)?;
        let status = response.status().as_u16();
        let body: Value = response.json().map_err(|_| Some(status))?;
        match status {
            200 | 201 => Ok(body["id"].as_str().expect("task id").to_owned()),
            503 => Err(Some(503)),
            other => panic!("POST /tasks answered {other}: {body}"),
        }
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
        ids.extend(
            text(&output)
                .lines()
                .filter_map(taskq::event::TaskExecuted::from_log_line)
                .map(|event| event.task_id),
        );
    }
    ids
}

/// Fails unless Docker and just are usable; returns false when the user opted out.
fn preconditions_hold() -> bool {
    if let Err(err) = xtask::images::require_docker() {
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
    let volume = [VOLUME, PROMETHEUS_VOLUME]
        .map(str::to_owned)
        .into_iter()
        .chain(cluster_volumes())
        .any(|volume| {
            Command::new("docker")
                .args(["volume", "inspect", &volume])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let network = Command::new("docker")
        .args(["network", "inspect", NETWORK])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        existing.is_empty() && !volume && !network,
        "a compose deployment exists or is starting (containers {existing:?}, volume {VOLUME}, \
         {PROMETHEUS_VOLUME} or a Redis Cluster node's: {volume}, network {NETWORK}: {network}); \
         this test would destroy it. Run `just clean` first."
    );
    true
}

/// The volumes of the compose Redis Cluster's nodes.
fn cluster_volumes() -> Vec<String> {
    xtask::compose::cluster_nodes()
        .into_iter()
        .map(|node| format!("{node}-data"))
        .collect()
}

/// The deployments share fixed names (network, ports, containers): one test at a time.
static ONE_DEPLOYMENT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The deployment's names for this test: waits for the other test, checks the preconditions
/// (`None`: the user opted out of Docker tests), and returns the guard that removes everything
/// on drop.
/// The cleanup comes first in the pair: it runs on drop before the lock is released.
fn claim_deployment() -> Option<(Deployment, std::sync::MutexGuard<'static, ()>)> {
    let one = ONE_DEPLOYMENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !preconditions_hold() {
        return None;
    }
    let cleanup = Deployment {
        remove_secrets: !secrets_dir().exists(),
    };
    Some((cleanup, one))
}

#[test]
fn compose_deployment_survives_scale_restart_and_a_redis_kill() {
    let Some(_deployment) = claim_deployment() else {
        return;
    };
    let api = Api::new();
    let mut outputs = Vec::new();

    // just up: three services, healthy.
    let started = Instant::now();
    step(started, "just up");
    outputs.push(just(&["up"]));
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

    // Redis: a password for everyone, on the host's loopback only; the services' user is confined.
    step(started, "redis auth");
    let agent_password = redis_password("agent");
    let admin_password = redis_password("admin");
    assert_eq!(
        docker(&["port", "agent-redis", "6379/tcp"]).trim(),
        format!("127.0.0.1:{REDIS_HOST_PORT}"),
        "Redis is published on the loopback interface only"
    );
    assert_eq!(
        redis_ping_from_host(None),
        Err("NOAUTH".to_owned()),
        "Redis refuses a client without a password"
    );
    assert_eq!(
        redis_ping_from_host(Some(("agent", "wrong"))),
        Err("connection failed".to_owned()),
        "Redis refuses a wrong password"
    );
    assert_eq!(
        redis_ping_from_host(Some(("agent", &agent_password))),
        Ok("PONG".to_owned())
    );
    let flushall = redis::Client::open(format!(
        "redis://agent:{agent_password}@127.0.0.1:{REDIS_HOST_PORT}"
    ))
    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
    .and_then(|mut c| redis::cmd("FLUSHALL").query::<String>(&mut c));
    assert_eq!(
        flushall
            .err()
            .and_then(|e| e.code().map(str::to_owned))
            .as_deref(),
        Some("NOPERM"),
        "the services' user may not FLUSHALL"
    );
    assert_eq!(
        docker(&["exec", "agent-redis", "redis-cli", "-e", "ping"]).trim(),
        "PONG",
        "redis-cli in the container authenticates as the admin through REDISCLI_AUTH"
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
    outputs.push(just(&["scale", "3"]));
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

    // just monitoring-up: Prometheus finds the orchestrator and all three worker replicas.
    step(started, "just monitoring-up");
    outputs.push(just(&["monitoring-up"]));
    check_prometheus_scrapes_every_service(3);

    // just restart worker: Redis and the orchestrator keep their containers and start times.
    step(started, "just restart worker");
    let redis_before = identity("agent-redis");
    let orchestrator_before = identity("agent-orchestrator");
    let workers_before: Vec<_> = project_containers("agent-worker")
        .iter()
        .map(|id| identity(id))
        .collect();
    outputs.push(just(&["restart", "worker"]));
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

    // just redis-rotate-password: the services move to a new password, the old one is refused.
    step(started, "just redis-rotate-password");
    outputs.push(just(&["redis-rotate-password"]));
    let new_agent_password = redis_password("agent");
    assert_ne!(new_agent_password, agent_password, "the password changed");
    assert!(
        !secrets_dir().join("redis-agent-password.previous").exists(),
        "the rotation finished"
    );
    assert_eq!(
        redis_ping_from_host(Some(("agent", &agent_password))),
        Err("connection failed".to_owned()),
        "the old password is refused after the rotation"
    );
    assert_eq!(
        redis_ping_from_host(Some(("agent", &new_agent_password))),
        Ok("PONG".to_owned())
    );
    wait_healthy("agent-worker", 3);
    let after_rotation = api.submit("smoke: after the password rotation");
    api.wait_succeeded(&[after_rotation], Duration::from_secs(30));

    // No recipe printed a password, and no container logged one.
    step(started, "no password in outputs and logs");
    let passwords = [agent_password, new_agent_password, admin_password];
    assert_no_password_anywhere(&outputs, &passwords);

    // just down, then just clean: nothing left.
    step(started, "just down, just clean");
    just(&["down"]);
    // Monitoring has its own life cycle (`just monitoring-down`); `just clean` removes it.
    for project in PROJECTS.iter().filter(|p| **p != "agent-monitoring") {
        assert_eq!(
            project_containers(project),
            Vec::<String>::new(),
            "just down left containers of {project}"
        );
    }
    just(&["clean"]);
    assert_eq!(
        project_containers("agent-monitoring"),
        Vec::<String>::new(),
        "just clean left Prometheus"
    );
    for volume in [VOLUME, PROMETHEUS_VOLUME] {
        let volumes = docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("name=^{volume}$"),
        ]);
        assert_eq!(volumes.trim(), "", "just clean left the volume {volume}");
    }
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

/// Waits until Prometheus scrapes the orchestrator and `workers` worker replicas (found through
/// Docker's DNS), sees the live workers through the orchestrator's gauge, and evaluates every
/// alert rule without error.
fn check_prometheus_scrapes_every_service(workers: usize) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let get = |path: &str| -> Option<Value> {
        client
            .get(format!("{PROMETHEUS}{path}"))
            .send()
            .ok()?
            .json()
            .ok()
    };
    let started = Instant::now();
    // Scrapes and DNS refreshes run every 10 s.
    wait_for(
        &format!("Prometheus to scrape the orchestrator and {workers} workers"),
        Duration::from_secs(60),
        || {
            let targets = get("/api/v1/targets")?;
            let up = |job: &str| {
                targets["data"]["activeTargets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|t| t["labels"]["job"] == job && t["health"] == "up")
                    .count()
            };
            (up("orchestrator") == 1 && up("worker") == workers).then_some(())
        },
    );
    wait_for(
        &format!("agent_live_workers = {workers} in Prometheus"),
        Duration::from_secs(30),
        || {
            let answer = get("/api/v1/query?query=max(agent_live_workers)")?;
            let value = answer["data"]["result"][0]["value"][1].as_str()?.to_owned();
            (value == workers.to_string()).then_some(())
        },
    );
    let rules = wait_for(
        "the alert rules to be evaluated",
        Duration::from_secs(30),
        || {
            let rules = get("/api/v1/rules")?;
            let all: Vec<Value> = rules["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            (!all.is_empty() && all.iter().all(|r| r["health"] != "unknown")).then_some(all)
        },
    );
    eprintln!(
        "compose_smoke: Prometheus scraped every service and evaluated the rules after {:.1?}",
        started.elapsed()
    );
    let broken: Vec<String> = rules
        .iter()
        .filter(|r| r["health"] != "ok")
        .map(|r| format!("{}: {}", r["name"], r["lastError"]))
        .collect();
    assert!(
        broken.is_empty(),
        "alert rules failing in Prometheus: {broken:?}"
    );
    let alerts: BTreeSet<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(
        alerts.contains("AgentRedisDown") && alerts.contains("AgentNoLiveWorkers"),
        "Prometheus loaded the alert rules: {alerts:?}"
    );
}

/// `redis-cli ARGS` in a node of the compose Redis Cluster (as the admin, REDISCLI_AUTH).
fn node_cli(node: &str, args: &[&str]) -> String {
    let mut command = vec!["exec", node, "redis-cli"];
    command.extend(args);
    docker(&command)
}

/// `master` or `slave`: the node's replication role.
fn node_role(node: &str) -> String {
    node_cli(node, &["role"])
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn cluster_state(node: &str) -> String {
    node_cli(node, &["cluster", "info"])
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("cluster_state:")
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// `REDIS_SHARDS=3 just up`: a Redis Cluster of three primaries and three replicas serves the
/// API; tasks acknowledged before `docker kill` of a primary (queued on it, the workers stopped)
/// and after its replica took over (refused with 503 while the shard has no replica, then
/// acknowledged on retry) all succeed; the killed node rejoins as a replica through a plain
/// `just up`; `just redis-rotate-password` changes the password on
/// every node; `just down` and `just clean` leave nothing.
#[test]
fn redis_cluster_deployment_loses_no_task_when_a_primary_is_killed() {
    let Some(_deployment) = claim_deployment() else {
        return;
    };
    let api = Api::new();
    let mut outputs = Vec::new();
    let nodes = xtask::compose::cluster_nodes();

    let started = Instant::now();
    step(started, "REDIS_SHARDS=3 just up");
    outputs.push(just_with(&[("REDIS_SHARDS", "3")], &["up"]));
    for node in &nodes {
        assert_eq!(health(node), "healthy", "{node}");
        assert_eq!(cluster_state(node), "ok", "{node} sees the cluster ok");
    }
    assert!(
        docker(&["ps", "-aq", "--filter", "name=^agent-redis$"])
            .trim()
            .is_empty(),
        "no single Redis runs beside the cluster"
    );
    let services_env = std::fs::read_to_string(secrets_dir().join("services.env")).expect("env");
    assert!(
        services_env.contains("REDIS_CLUSTER_URLS=") && !services_env.contains("REDIS_URL="),
        "the services are pointed at the cluster"
    );
    assert!(services_env.contains("REPLICA_ACKS=1\n"));
    for shard in 1..=3 {
        assert_eq!(node_role(&format!("agent-redis-{shard}-1")), "master");
        assert_eq!(node_role(&format!("agent-redis-{shard}-2")), "slave");
    }
    let ps = just(&["ps"]);
    for node in &nodes {
        assert!(ps.contains(node.as_str()), "just ps shows {node}:\n{ps}");
    }

    step(started, "POST and GET on the cluster");
    let first: Vec<String> = (0..15)
        .map(|i| api.submit(&format!("cluster smoke: {i}")))
        .collect();
    api.wait_succeeded(&first, Duration::from_secs(60));

    step(started, "kill the primary of shard 1 with 30 tasks queued");
    let workers = project_containers("agent-worker");
    let mut stop = vec!["stop"];
    stop.extend(workers.iter().map(String::as_str));
    docker(&stop);
    let queued: Vec<String> = (0..30)
        .map(|i| api.submit(&format!("cluster smoke: queued across the kill {i}")))
        .collect();
    let keys: u64 = node_cli("agent-redis-1-1", &["dbsize"])
        .trim()
        .parse()
        .expect("DBSIZE");
    assert!(keys > 0, "the primary to be killed holds part of the queue");
    docker(&["kill", "agent-redis-1-1"]);
    let killed = Instant::now();
    wait_for(
        "agent-redis-1-2 to take over shard 1",
        Duration::from_secs(60),
        || (node_role("agent-redis-1-2") == "master").then_some(()),
    );
    step(
        started,
        &format!("replica promoted {:.1?} after the kill", killed.elapsed()),
    );
    // Shard 1 now has no replica to confirm a write (REPLICA_ACKS=1): the API refuses what
    // lands there (503, no acknowledgement) and takes the rest.
    let descriptions: Vec<String> = (0..10)
        .map(|i| format!("cluster smoke: after the failover {i}"))
        .collect();
    let answers: Vec<Result<String, Option<u16>>> =
        descriptions.iter().map(|d| api.try_submit(d)).collect();
    let refused = answers.iter().filter(|a| a.is_err()).count();
    step(
        started,
        &format!("{} of 10 acknowledged, {refused} refused", 10 - refused),
    );

    step(started, "the killed node rejoins as a replica: just up");
    docker(&["start", "agent-redis-1-1"]);
    outputs.push(just(&["up"]));
    assert_eq!(node_role("agent-redis-1-1"), "slave");
    assert_eq!(cluster_state("agent-redis-1-1"), "ok");
    // The refused ones again, with their Idempotency-Keys: the shard has a replica again.
    let mut acknowledged = queued;
    for (description, answer) in descriptions.iter().zip(answers) {
        let id = match answer {
            Ok(id) => id,
            Err(_) => wait_for(
                &format!("{description} to be acknowledged"),
                Duration::from_secs(60),
                || api.try_submit(description).ok(),
            ),
        };
        acknowledged.push(id);
    }
    let mut start = vec!["start"];
    start.extend(workers.iter().map(String::as_str));
    docker(&start);
    api.wait_succeeded(&acknowledged, Duration::from_secs(120));
    step(started, "all 40 acknowledged tasks succeeded");
    let after = api.submit("cluster smoke: after the rejoin");
    api.wait_succeeded(&[after], Duration::from_secs(30));

    step(started, "just redis-rotate-password on every node");
    let old_password = redis_password("agent");
    outputs.push(just(&["redis-rotate-password"]));
    let new_password = redis_password("agent");
    assert_ne!(new_password, old_password);
    // PING as the services' user inside each node: redis-cli's -e makes a refusal exit 1.
    let ping_as_agent = |node: &str, password: &str| {
        Command::new("docker")
            .args([
                "exec",
                node,
                "redis-cli",
                "--no-auth-warning",
                "--user",
                "agent",
            ])
            .args(["--pass", password, "-e", "ping"])
            .output()
            .is_ok_and(|o| o.status.success() && text(&o).contains("PONG"))
    };
    for node in &nodes {
        assert!(
            !ping_as_agent(node, &old_password),
            "{node} takes the old password"
        );
        assert!(
            ping_as_agent(node, &new_password),
            "{node} refuses the new password"
        );
    }
    let rotated = api.submit("cluster smoke: after the password rotation");
    api.wait_succeeded(&[rotated], Duration::from_secs(30));

    step(started, "no password in outputs and logs");
    let passwords = [old_password, new_password, redis_password("admin")];
    assert_no_password_anywhere(&outputs, &passwords);

    step(started, "just down, just clean");
    just(&["down"]);
    assert_eq!(
        project_containers("agent-redis-cluster"),
        Vec::<String>::new(),
        "just down left cluster nodes"
    );
    just(&["clean"]);
    for volume in cluster_volumes() {
        let left = docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("name=^{volume}$"),
        ]);
        assert_eq!(left.trim(), "", "just clean left the volume {volume}");
    }
    step(started, "done");
}
