//! The monitoring files in `compose/monitoring/` and the Redis ACL user of the deployment, checked
//! against the real services.
//!
//! - The Grafana dashboard is importable JSON, and the alert rules are valid YAML covering backlog,
//!   workers, dead letters and Redis; `promtool check rules`, `promtool test rules` (the alert unit
//!   tests) and `promtool check config` pass when Debian's `prometheus` package is installed.
//! - The compose Prometheus scrapes the orchestrator and every worker replica by the names the
//!   compose files give them.
//! - Under load, with `redis-server` running the ACL file rendered from
//!   `compose/redis-users.acl.template` and the orchestrator and two workers (the release
//!   binaries, each its own process, as in the containers) connected as the user `agent`:
//!   every `agent_*` series the dashboard and the rules use is exported; every metric family the
//!   services export has a panel; Redis logs no ACL denial (so the user may run every command
//!   and key the services need, scripts included) and refuses what they do not need; no log
//!   line shows a password or token. With `prometheus` installed, a real Prometheus scrapes the
//!   services, evaluates the rules without error and answers every dashboard query with data.
//!
//! The load exercises the paths the metrics count: bearer auth and the submit rate limit (429),
//! idempotent replays, cancel, transient and permanent failures (retries, dead letters), a worker
//! SIGKILLed with tasks in flight (reclaim), a Redis SIGKILL and restart (503, Redis errors and
//! reconnects, NOSCRIPT reloads), and a graceful worker shutdown (deregistration).
//!
//! Needs `redis-server` (Debian `redis-server`) and builds the release binaries with cargo (as
//! `just images` does). No Docker.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::{Value, json};
use testkit::{
    Exit, Log, Persistence, Process, RedisConfig, RedisServer, Wait, free_port, wait_for,
};

const DASHBOARD: &str = "compose/monitoring/dashboards/agent-system.json";
const RULES: &str = "compose/monitoring/rules/agent-alerts.yml";
const RULE_TESTS: &str = "compose/monitoring/tests/agent-alerts.test.yml";
const PROMETHEUS_CONFIG: &str = "compose/monitoring/prometheus.yml";
const ACL_TEMPLATE: &str = "compose/redis-users.acl.template";

/// Alerts the deployment promises (docs/deploy.md).
const REQUIRED_ALERTS: [&str; 4] = [
    "AgentBacklogGrowing",
    "AgentNoLiveWorkers",
    "AgentDeadLetterGrowing",
    "AgentRedisDown",
];

// Bearer tokens of the orchestrator under test (at least 16 characters).
const BURST_TOKEN: &str = "burst-token-0123456789abcdef";
const LOAD_TOKEN: &str = "load-token-0123456789abcdef";
const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness/ has a parent")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = workspace_root().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not valid JSON: {e}"))
}

fn rules() -> serde_yaml::Value {
    serde_yaml::from_str(&read(RULES)).unwrap_or_else(|e| panic!("{RULES} is not YAML: {e}"))
}

/// Every rule of every group of the rules file.
fn rule_list(rules: &serde_yaml::Value) -> Vec<serde_yaml::Value> {
    rules["groups"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{RULES}: no `groups` list"))
        .iter()
        .flat_map(|group| {
            group["rules"]
                .as_sequence()
                .cloned()
                .unwrap_or_else(|| panic!("{RULES}: group {:?} has no rules", group["name"]))
        })
        .collect()
}

/// The PromQL of every panel target of the dashboard, by panel title.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, Vec<String>)> {
    dashboard["panels"]
        .as_array()
        .expect("dashboard panels")
        .iter()
        .filter(|panel| panel["type"] != "row")
        .map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            let exprs = panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("panel {title:?} has no targets"))
                .iter()
                .map(|target| {
                    target["expr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("panel {title:?}: a target has no expr"))
                        .to_owned()
                })
                .collect();
            (title, exprs)
        })
        .collect()
}

/// `agent_*` identifiers in a PromQL expression (recording rules are `agent:...`, not matched).
fn agent_metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while let Some(found) = expr[i..].find("agent_") {
        let start = i + found;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if start == 0 || !is_name(bytes[start - 1]) {
            names.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// Every `agent_*` name used by the dashboard (panel queries and template variables) and by the
/// rules, with where it is used.
fn used_metric_names() -> BTreeMap<String, Vec<String>> {
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let dashboard = dashboard();
    for (title, exprs) in dashboard_queries(&dashboard) {
        for expr in exprs {
            for name in agent_metric_names(&expr) {
                used.entry(name)
                    .or_default()
                    .push(format!("panel {title:?}"));
            }
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        let query = variable["definition"].as_str().unwrap_or_default();
        for name in agent_metric_names(query) {
            used.entry(name)
                .or_default()
                .push(format!("variable {}", variable["name"]));
        }
    }
    for rule in rule_list(&rules()) {
        let expr = rule["expr"].as_str().expect("every rule has an expr");
        let rule_name = rule["alert"].as_str().or(rule["record"].as_str());
        for name in agent_metric_names(expr) {
            used.entry(name)
                .or_default()
                .push(format!("rule {}", rule_name.unwrap_or("?")));
        }
    }
    used
}

fn promtool() -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/promtool");
    path.is_file().then_some(path)
}

fn run_promtool(args: &[&str], dir: &Path) {
    let promtool = promtool().expect("promtool");
    let output = Command::new(&promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running promtool");
    assert!(
        output.status.success(),
        "`promtool {}` failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_dashboard_is_importable_grafana_json_on_a_prometheus_datasource_variable() {
    let dashboard = dashboard();

    assert_eq!(dashboard["uid"], "agent-system");
    assert!(dashboard["title"].is_string(), "a dashboard needs a title");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 30),
        "schemaVersion: Grafana 8 or newer"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    assert!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "a `datasource` variable lets the importer pick its Prometheus"
    );
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(panel["id"].as_u64().expect("numeric panel id")),
            "panel id of {title:?} is not unique"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        assert!(
            matches!((x, w), (Some(x), Some(w)) if w > 0 && x + w <= 24),
            "panel {title:?} must fit the 24-column grid: {grid}"
        );
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "panel {title:?} must use the datasource variable"
            );
        }
    }
    assert!(
        dashboard_queries(&dashboard)
            .iter()
            .all(|(_, exprs)| !exprs.is_empty()),
        "every panel has a query"
    );
}

#[test]
fn the_alert_rules_cover_backlog_workers_dead_letters_and_redis_and_pass_promtool() {
    let rules = rules();
    let list = rule_list(&rules);

    let alerts: BTreeSet<&str> = list.iter().filter_map(|r| r["alert"].as_str()).collect();
    for required in REQUIRED_ALERTS {
        assert!(alerts.contains(required), "{RULES} has no alert {required}");
    }
    for rule in list.iter().filter(|r| r["alert"].is_string()) {
        let name = rule["alert"].as_str().unwrap_or_default();
        assert!(
            matches!(
                rule["labels"]["severity"].as_str(),
                Some("critical" | "warning")
            ),
            "{name}: severity must be critical or warning"
        );
        assert!(
            rule["annotations"]["summary"].is_string(),
            "{name}: an alert needs a summary"
        );
    }

    let Some(_) = promtool() else {
        eprintln!(
            "monitoring: promtool not installed (apt-get install --no-install-recommends prometheus); \
             skipping promtool check rules / test rules / check config"
        );
        return;
    };
    let monitoring = workspace_root().join("compose/monitoring");
    run_promtool(&["check", "rules", "rules/agent-alerts.yml"], &monitoring);
    run_promtool(
        &["test", "rules", "agent-alerts.test.yml"],
        &monitoring.join("tests"),
    );
    run_promtool(&["check", "config", "prometheus.yml"], &monitoring);
    assert!(workspace_root().join(RULE_TESTS).is_file());
}

#[test]
fn the_compose_prometheus_scrapes_the_orchestrator_and_every_worker_replica() {
    let config: serde_yaml::Value = serde_yaml::from_str(&read(PROMETHEUS_CONFIG)).expect("YAML");
    let compose = |service: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&read(&format!("compose/{service}.yml"))).expect("compose YAML")
    };
    let port_of = |service: &str, var: &str| -> String {
        compose(service)["services"][service]["environment"][var]
            .as_str()
            .and_then(|addr| addr.rsplit(':').next())
            .unwrap_or_else(|| panic!("compose/{service}.yml sets {var}"))
            .to_owned()
    };
    let jobs = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs");
    let job = |name: &str| {
        jobs.iter()
            .find(|j| j["job_name"] == name)
            .unwrap_or_else(|| panic!("{PROMETHEUS_CONFIG} has no job {name}"))
    };

    let orchestrator = compose("orchestrator");
    let container = orchestrator["services"]["orchestrator"]["container_name"]
        .as_str()
        .expect("orchestrator container_name");
    assert_eq!(
        job("orchestrator")["static_configs"][0]["targets"][0].as_str(),
        Some(format!("{container}:{}", port_of("orchestrator", "LISTEN_ADDR")).as_str())
    );
    let dns = &job("worker")["dns_sd_configs"][0];
    assert!(
        compose("worker")["services"]["worker"].is_mapping(),
        "the worker's compose service is named `worker`, the name Docker's DNS resolves to every replica"
    );
    assert_eq!(dns["names"][0].as_str(), Some("worker"));
    assert_eq!(dns["type"].as_str(), Some("A"));
    assert_eq!(
        dns["port"].as_u64().map(|p| p.to_string()),
        Some(port_of("worker", "METRICS_ADDR"))
    );
    assert_eq!(
        config["rule_files"][0].as_str(),
        Some("rules/*.yml"),
        "the rules directory is mounted next to the config"
    );
    let monitoring: serde_yaml::Value =
        serde_yaml::from_str(&read("compose/monitoring/compose.yml")).expect("compose YAML");
    let service = &monitoring["services"]["prometheus"];
    let volumes: Vec<&str> = service["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(serde_yaml::Value::as_str)
        .collect();
    assert!(volumes.contains(&"./prometheus.yml:/etc/prometheus/prometheus.yml:ro"));
    assert!(volumes.contains(&"./rules:/etc/prometheus/rules:ro"));
    assert_eq!(
        monitoring["networks"]["default"]["name"].as_str(),
        Some("agent-system-net")
    );
    let ports: Vec<&str> = service["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .filter_map(serde_yaml::Value::as_str)
        .collect();
    assert!(
        ports.iter().all(|p| p.starts_with("127.0.0.1:")),
        "Prometheus has no authentication: publish it on loopback only, got {ports:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The services under load
// ---------------------------------------------------------------------------------------------

/// The Redis secrets of the system under test in `<dir>/secrets`, written by the rendering
/// `just up` runs (`xtask::secrets`): random passwords, and the ACL file from [`ACL_TEMPLATE`].
fn render_secrets(dir: &Path) -> xtask::secrets::SecretsDir {
    let secrets = xtask::secrets::SecretsDir::new(dir.join("secrets"));
    xtask::secrets::render(
        &secrets,
        &workspace_root().join(ACL_TEMPLATE),
        &xtask::secrets::RedisTopology::Single,
        &mut Vec::new(),
    )
    .unwrap_or_else(|e| panic!("rendering the Redis secrets from {ACL_TEMPLATE}: {e:#}"));
    secrets
}

/// A child process, SIGKILLed on drop; its stdout and stderr go to `<dir>/<name>.log`.
fn spawn(name: &str, dir: &Path, command: &mut Command) -> Process {
    Process::spawn(name, command, Log::Append(dir.join(format!("{name}.log"))))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// SIGTERM, then waits up to `within` for a clean exit.
fn terminate(process: &mut Process, within: Duration) {
    let name = process.name().to_owned();
    match process.stop(within).expect("SIGTERM") {
        Exit::Exited(status) => assert!(
            status.success(),
            "{name} exited with {status} after SIGTERM"
        ),
        Exit::Killed => panic!("{name} did not exit within {within:?} of SIGTERM"),
        Exit::NotRunning => panic!("{name} was not running"),
    }
}

/// `cargo build --release -p orchestrator -p worker` (cargo skips fresh ones); the binaries' dir.
fn release_binaries() -> PathBuf {
    testkit::cargo_build_release(&workspace_root(), &["orchestrator", "worker"], true)
        .unwrap_or_else(|e| panic!("{e:#}"));
    harness::cluster::process::target_dir().join("release")
}

/// Prometheus text → series name → values (one per label set), and the families' types.
#[derive(Debug, Default)]
struct Scrape {
    series: BTreeMap<String, Vec<f64>>,
    families: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut scrape = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    scrape.families.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                let value = line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN);
                scrape
                    .series
                    .entry(line[..name_end].to_owned())
                    .or_default()
                    .push(value);
            }
        }
        scrape
    }

    fn total(&self, name: &str) -> f64 {
        self.series.get(name).map_or(0.0, |v| v.iter().sum())
    }

    fn merge(&mut self, other: Scrape) {
        for (name, values) in other.series {
            self.series.entry(name).or_default().extend(values);
        }
        self.families.extend(other.families);
    }
}

/// The system under test: redis-server with the rendered ACL file, the orchestrator, and the
/// workers `steady` (fast, half of the executions fail) and `doomed` (slow; SIGKILLed).
struct System {
    http: Client,
    admin_password: String,
    agent_password: String,
    redis_port: u16,
    redis: RedisServer,
    orchestrator: Process,
    api: String,
    steady: Process,
    steady_metrics: String,
    doomed: Process,
    doomed_metrics: String,
    /// Last, so the processes are killed (fields drop in order) before their directory goes.
    dir: tempfile::TempDir,
}

impl System {
    fn start() -> Self {
        let bin = release_binaries();
        let dir = tempfile::Builder::new()
            .prefix("agent-monitoring-test-")
            .tempdir()
            .expect("tempdir");
        // Random per run, so a leak in a log cannot match by chance.
        let secrets = render_secrets(dir.path());
        let admin_password = secrets
            .password(xtask::secrets::User::Admin)
            .expect("admin password");
        let agent_password = secrets
            .password(xtask::secrets::User::Agent)
            .expect("agent password");
        let acl = secrets.acl_file();
        // Waits until the admin (the ACL file's `default` user) gets a PONG.
        let redis = RedisConfig::new()
            .persistence(Persistence::AofEverysec)
            .arg("--aclfile")
            .arg(&acl)
            .password(&admin_password)
            .log(Log::Append(dir.path().join("redis.log")))
            .start_in(dir.path())
            .unwrap_or_else(|e| panic!("{e:#}"));
        let redis_port = redis.port();
        let redis_url = format!("redis://agent:{agent_password}@127.0.0.1:{redis_port}");

        let api_port = free_port();
        let orchestrator = spawn(
            "orchestrator",
            dir.path(),
            Command::new(bin.join("orchestrator"))
                .env_clear()
                .env("REDIS_URL", &redis_url)
                .env("LISTEN_ADDR", format!("127.0.0.1:{api_port}"))
                .env("LOG_FORMAT", "json")
                .env("RUST_LOG", "info")
                .env("REDIS_TIMEOUT", "500ms")
                .env("MAX_ATTEMPTS", "2")
                .env("WORKER_DEAD_AFTER", "1s")
                .env("AUTH_TOKENS", format!("{BURST_TOKEN},{LOAD_TOKEN}"))
                .env("METRICS_TOKEN", METRICS_TOKEN)
                .env("RATE_LIMIT_PER_S", "50")
                .env("RATE_LIMIT_BURST", "50"),
        );
        let worker = |name: &str, port: u16, extra: &[(&str, &str)]| {
            let mut command = Command::new(bin.join("worker"));
            command
                .env_clear()
                .env("REDIS_URL", &redis_url)
                .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
                .env("WORKER_ID", name)
                .env("LOG_FORMAT", "json")
                .env("RUST_LOG", "info")
                .env("WORKER_HEARTBEAT", "250ms")
                .env("WORKER_DEAD_AFTER", "1s")
                .env("REDIS_TIMEOUT", "500ms")
                .env("RETRY_BASE", "50ms")
                .env("RETRY_MAX", "200ms")
                .envs(extra.iter().copied());
            spawn(name, dir.path(), &mut command)
        };
        let (steady_port, doomed_port) = (free_port(), free_port());
        let steady = worker(
            "steady",
            steady_port,
            &[
                ("WORKER_CONCURRENCY", "8"),
                ("WORKER_WORK", "10ms"),
                ("WORKER_FAIL_RATE", "0.5"),
                ("WORKER_PERMANENT_FAIL_RATE", "0.05"),
            ],
        );
        let doomed = worker(
            "doomed",
            doomed_port,
            &[("WORKER_CONCURRENCY", "4"), ("WORKER_WORK", "5s")],
        );
        let system = System {
            dir,
            http: Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client"),
            admin_password,
            agent_password,
            redis_port,
            redis,
            orchestrator,
            api: format!("http://127.0.0.1:{api_port}"),
            steady,
            steady_metrics: format!("http://127.0.0.1:{steady_port}/metrics"),
            doomed,
            doomed_metrics: format!("http://127.0.0.1:{doomed_port}/metrics"),
        };
        wait_for(
            "the orchestrator ready and both workers live",
            Duration::from_secs(30),
            || (system.stats().ok()?["live_workers"] == 2).then_some(()),
        );
        system
    }

    fn post_task(&self, token: &str, priority: u8, idempotency_key: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/tasks", self.api))
            .bearer_auth(token)
            .json(&json!({"description": "monitoring test", "priority": priority}));
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().expect("POST /tasks answers");
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }

    fn stats(&self) -> reqwest::Result<Value> {
        self.http
            .get(format!("{}/stats", self.api))
            .bearer_auth(LOAD_TOKEN)
            .send()?
            .error_for_status()?
            .json()
    }

    fn scrape(&self, url: &str, token: Option<&str>) -> Scrape {
        let mut request = self.http.get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(response.status().as_u16(), 200, "GET {url}");
        Scrape::parse(&response.text().expect("metrics text"))
    }

    fn scrape_orchestrator(&self) -> Scrape {
        self.scrape(&format!("{}/metrics", self.api), Some(METRICS_TOKEN))
    }

    fn wait_drained(&self, within: Duration) -> Value {
        wait_for("the queue to drain", within, || {
            let stats = self.stats().ok()?;
            (stats["queued_total"] == 0 && stats["in_flight"] == 0 && stats["retry_scheduled"] == 0)
                .then_some(stats)
        })
    }

    /// Redis's ACL LOG as the admin: every command or key refused since Redis started.
    fn acl_denials(&self) -> Vec<redis::Value> {
        let mut admin = admin_connection(&self.admin_password, self.redis_port)
            .expect("admin connection to redis");
        redis::cmd("ACL")
            .arg("LOG")
            .query(&mut admin)
            .expect("ACL LOG")
    }

    fn logs(&self) -> Vec<(String, String)> {
        std::iter::once(("redis".to_owned(), self.redis.log_text()))
            .chain(
                [&self.orchestrator, &self.steady, &self.doomed]
                    .iter()
                    .map(|p| (p.name().to_owned(), p.log_text())),
            )
            .collect()
    }
}

fn admin_connection(password: &str, port: u16) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(format!("redis://:{password}@127.0.0.1:{port}"))?
        .get_connection_with_timeout(Duration::from_secs(1))
}

/// A tiny Prometheus (the host's Debian binary) scraping the services every second with the
/// repository's alert rules, or `None` when prometheus is not installed.
struct LocalPrometheus {
    _process: Process,
    url: String,
}

impl LocalPrometheus {
    fn start(system: &System) -> Option<Self> {
        let binary = Path::new("/usr/bin/prometheus");
        if !binary.is_file() {
            eprintln!(
                "monitoring: prometheus not installed; the dashboard queries are checked by metric \
                 name only (apt-get install --no-install-recommends prometheus for the full check)"
            );
            return None;
        }
        let dir = system.dir.path().join("prometheus");
        fs::create_dir_all(&dir).expect("prometheus dir");
        let host = |url: &str| {
            url.trim_start_matches("http://")
                .trim_end_matches("/metrics")
                .to_owned()
        };
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [workspace_root().join(RULES)],
            "scrape_configs": [
                {
                    "job_name": "orchestrator",
                    "authorization": {"type": "Bearer", "credentials": METRICS_TOKEN},
                    "static_configs": [{"targets": [host(&system.api)]}],
                },
                {
                    "job_name": "worker",
                    "static_configs": [{"targets": [host(&system.steady_metrics), host(&system.doomed_metrics)]}],
                },
            ],
        });
        // JSON is YAML.
        fs::write(dir.join("prometheus.yml"), config.to_string()).expect("prometheus config");
        let port = free_port();
        let process = spawn(
            "prometheus",
            system.dir.path(),
            Command::new(binary)
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}")),
        );
        let url = format!("http://127.0.0.1:{port}");
        wait_for("prometheus to be ready", Duration::from_secs(30), || {
            system
                .http
                .get(format!("{url}/-/ready"))
                .send()
                .ok()
                .filter(|r| r.status().is_success())
        });
        Some(LocalPrometheus {
            _process: process,
            url,
        })
    }

    /// The result vector of an instant query; panics on a query error.
    fn query(&self, http: &Client, expr: &str) -> Vec<Value> {
        let response: Value = http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("query {expr:?}: {e}"));
        assert_eq!(
            response["status"], "success",
            "Prometheus rejected the dashboard query {expr:?}: {response}"
        );
        response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// A dashboard query with Grafana's variables replaced for a plain Prometheus.
fn instantiate(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$priority", ".*")
        .replace("$worker", ".*")
}

#[test]
fn under_load_as_the_redis_acl_user_the_services_export_every_metric_the_dashboard_and_rules_use() {
    let mut system = System::start();
    let prometheus = LocalPrometheus::start(&system);

    submit_a_burst_past_the_rate_limit(&system);
    submit_steady_load_with_a_replay_a_read_and_a_cancel(&system);
    let doomed_metrics = kill_a_worker_with_tasks_in_flight(&mut system);
    let stats = system.wait_drained(Duration::from_secs(60));
    assert!(
        stats["dead_lettered"].as_u64().is_some_and(|n| n > 0),
        "with MAX_ATTEMPTS=2 and half of the executions failing, some tasks are dead-lettered: {stats}"
    );
    assert_no_acl_denials(&system, "under load");
    let unauthenticated = system
        .http
        .get(format!("{}/metrics", system.api))
        .send()
        .expect("GET /metrics answers");
    assert_eq!(
        unauthenticated.status().as_u16(),
        401,
        "METRICS_TOKEN protects /metrics"
    );
    kill_and_restart_redis(&mut system);

    let orchestrator = system.scrape_orchestrator();
    let mut workers = system.scrape(&system.steady_metrics, None);
    workers.merge(doomed_metrics);
    assert_dashboard_and_rules_match_the_exported_metrics(orchestrator, workers);
    if let Some(prometheus) = &prometheus {
        check_dashboard_against_prometheus(&system, prometheus);
    }

    // A graceful shutdown deregisters the worker (ZREM, XGROUP DELCONSUMER).
    terminate(&mut system.steady, Duration::from_secs(20));
    assert_no_acl_denials(
        &system,
        "after the Redis restart and a graceful worker shutdown",
    );
    assert_the_agent_user_gets_nothing_more(&system);
    assert_no_secret_in_any_log(&system);
}

/// Bearer auth and the per-client submit limit: 150 submits at once on one token.
fn submit_a_burst_past_the_rate_limit(system: &System) {
    let statuses: Vec<u16> = (0..150)
        .map(|i| system.post_task(BURST_TOKEN, (i % 10 + 1) as u8, None).0)
        .collect();
    assert!(
        statuses.contains(&201) && statuses.contains(&429),
        "a burst of 150 submits on one token must meet the limit (50/s, burst 50): {statuses:?}"
    );
    let (unauthorized, _) = system.post_task("wrong-token-0123456789abcdef", 5, None);
    assert_eq!(unauthorized, 401, "a wrong bearer token is refused");
}

/// Another token, under the limit: every priority, an idempotent replay, a read, a cancel.
fn submit_steady_load_with_a_replay_a_read_and_a_cancel(system: &System) {
    let mut ids = Vec::new();
    for i in 0..60u8 {
        let key = (i % 20 == 0).then(|| format!("monitoring-{i}"));
        let (status, body) = system.post_task(LOAD_TOKEN, i % 10 + 1, key.as_deref());
        assert_eq!(status, 201, "POST /tasks under the limit: {body}");
        ids.push(body["id"].as_str().expect("task id").to_owned());
        thread::sleep(Duration::from_millis(25));
    }
    let (replay, body) = system.post_task(LOAD_TOKEN, 1, Some("monitoring-0"));
    assert_eq!(replay, 200, "an Idempotency-Key replay: {body}");
    let (_, cancellable) = system.post_task(LOAD_TOKEN, 10, None);
    let cancel = system
        .http
        .delete(format!(
            "{}/tasks/{}",
            system.api,
            cancellable["id"].as_str().expect("id")
        ))
        .bearer_auth(LOAD_TOKEN)
        .send()
        .expect("DELETE answers");
    assert!(
        matches!(cancel.status().as_u16(), 200 | 409),
        "DELETE /tasks/{{id}}: {}",
        cancel.status()
    );
    let read = system
        .http
        .get(format!("{}/tasks/{}", system.api, ids[0]))
        .bearer_auth(LOAD_TOKEN)
        .send()
        .expect("GET answers");
    assert_eq!(read.status().as_u16(), 200);
    // Listing every status and pausing a level: their scripts' commands pass the ACL too.
    for status in [
        "queued",
        "scheduled",
        "running",
        "retrying",
        "dead",
        "succeeded",
        "cancelled",
    ] {
        let listed = system
            .http
            .get(format!("{}/tasks?status={status}&limit=5", system.api))
            .bearer_auth(LOAD_TOKEN)
            .send()
            .expect("GET /tasks answers");
        assert_eq!(listed.status().as_u16(), 200, "listing {status}");
    }
    for action in ["pause", "resume"] {
        let paused = system
            .http
            .post(format!("{}/priorities/10/{action}", system.api))
            .bearer_auth(LOAD_TOKEN)
            .send()
            .expect("POST /priorities answers");
        assert_eq!(paused.status().as_u16(), 200, "{action}");
    }
}

/// SIGKILLs the slow worker while it holds tasks and waits until the other one took them over.
/// Returns the dead worker's last scrape.
fn kill_a_worker_with_tasks_in_flight(system: &mut System) -> Scrape {
    let last_scrape = wait_for(
        "the slow worker to hold tasks",
        Duration::from_secs(20),
        || {
            let scrape = system.scrape(&system.doomed_metrics, None);
            if scrape.total("agent_worker_in_flight") > 0.0 {
                return Some(scrape);
            }
            // Idle: give it something to hold.
            system.post_task(LOAD_TOKEN, 1, None);
            None
        },
    );
    system.doomed.kill();
    wait_for(
        "the surviving worker to reclaim the dead worker's tasks",
        Duration::from_secs(20),
        || {
            let scrape = system.scrape(&system.steady_metrics, None);
            (scrape.total("agent_tasks_reclaimed_total") > 0.0).then_some(())
        },
    );
    last_scrape
}

/// Redis is SIGKILLed: the API answers 503 and workers count errors; it restarts on its AOF
/// with an empty script cache (NOSCRIPT, SCRIPT LOAD), and the system recovers.
fn kill_and_restart_redis(system: &mut System) {
    system.redis.kill();
    assert_eq!(
        system.scrape_orchestrator().total("agent_redis_up"),
        0.0,
        "agent_redis_up while Redis is down"
    );
    let (status, body) = system.post_task(LOAD_TOKEN, 3, None);
    assert_eq!(status, 503, "POST /tasks while Redis is down: {body}");
    wait_for(
        "the worker to notice the outage",
        Duration::from_secs(10),
        || {
            let scrape = system.scrape(&system.steady_metrics, None);
            (scrape.total("agent_redis_errors_total") > 0.0).then_some(())
        },
    );
    system.redis.start_again();
    let task_id = wait_for(
        "a submit after Redis restarted",
        Duration::from_secs(20),
        || {
            let (status, body) = system.post_task(LOAD_TOKEN, 2, None);
            (status == 201).then(|| body["id"].as_str().map(str::to_owned))?
        },
    );
    wait_for(
        "the task submitted after the restart to finish",
        Duration::from_secs(30),
        || {
            let record: Value = system
                .http
                .get(format!("{}/tasks/{task_id}", system.api))
                .bearer_auth(LOAD_TOKEN)
                .send()
                .ok()?
                .json()
                .ok()?;
            matches!(record["status"].as_str(), Some("succeeded" | "dead")).then_some(())
        },
    );
    system.wait_drained(Duration::from_secs(30));
}

/// Every series the dashboard and the rules use is exported, and every exported family is used.
fn assert_dashboard_and_rules_match_the_exported_metrics(orchestrator: Scrape, workers: Scrape) {
    let orchestrator_names: BTreeSet<String> = orchestrator.series.keys().cloned().collect();
    let worker_names: BTreeSet<String> = workers.series.keys().cloned().collect();
    let mut exported = Scrape::default();
    exported.merge(orchestrator);
    exported.merge(workers);

    let used = used_metric_names();
    let missing: Vec<String> = used
        .iter()
        .filter(|(name, _)| !exported.series.contains_key(*name))
        .map(|(name, users)| format!("{name} (used by {})", users.join(", ")))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard or the rules use series the services do not export:\n{}\n\
         orchestrator exports: {orchestrator_names:?}\nworkers export: {worker_names:?}",
        missing.join("\n")
    );
    let unused: Vec<&String> = exported
        .families
        .keys()
        .filter(|family| family.starts_with("agent_"))
        .filter(|family| {
            !["", "_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| used.contains_key(&format!("{family}{suffix}")))
        })
        .collect();
    assert!(
        unused.is_empty(),
        "metric families without a panel in {DASHBOARD} or a rule: {unused:?}"
    );
}

fn assert_no_acl_denials(system: &System, when: &str) {
    let denials = system.acl_denials();
    assert!(
        denials.is_empty(),
        "{when}, Redis refused commands or keys of the services (ACL LOG), so the user `agent` \
         in {ACL_TEMPLATE} lacks them: {denials:?}"
    );
}

/// The user `agent` is refused what the services do not need, and nobody gets in without a
/// password.
fn assert_the_agent_user_gets_nothing_more(system: &System) {
    let mut agent = redis::Client::open(format!(
        "redis://agent:{}@127.0.0.1:{}",
        system.agent_password, system.redis_port
    ))
    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
    .expect("the agent user connects");
    let command = |words: &[&str]| {
        let mut cmd = redis::cmd(words[0]);
        for word in &words[1..] {
            cmd.arg(*word);
        }
        cmd
    };
    for words in [
        &["FLUSHALL"][..],
        &["CONFIG", "GET", "dir"],
        &["KEYS", "*"],
        &["ACL", "LIST"],
        &["SET", "other:key", "1"],
        &[
            "EVAL",
            "return redis.call('GET', KEYS[1])",
            "1",
            "other:key",
        ],
    ] {
        let refusal = command(words)
            .query::<redis::Value>(&mut agent)
            .err()
            .and_then(|e| e.code().map(str::to_owned));
        assert_eq!(
            refusal.as_deref(),
            Some("NOPERM"),
            "the user agent must not run {words:?}"
        );
    }
    let no_password = redis::Client::open(format!("redis://127.0.0.1:{}", system.redis_port))
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    assert!(
        no_password.is_err(),
        "Redis must refuse a client without a password"
    );
}

fn assert_no_secret_in_any_log(system: &System) {
    for (name, log) in system.logs() {
        for (what, secret) in [
            ("the Redis admin password", system.admin_password.as_str()),
            ("the Redis agent password", system.agent_password.as_str()),
            ("a bearer token", LOAD_TOKEN),
            ("a bearer token", BURST_TOKEN),
            ("the metrics token", METRICS_TOKEN),
        ] {
            assert!(!log.contains(secret), "the {name} log shows {what}");
        }
    }
}

/// Every rule evaluates without error, and every dashboard panel gets data from Prometheus.
fn check_dashboard_against_prometheus(system: &System, prometheus: &LocalPrometheus) {
    let dashboard = dashboard();
    let panels = dashboard_queries(&dashboard);
    let empty_panels = || -> Vec<String> {
        panels
            .iter()
            .filter(|(_, exprs)| {
                exprs.iter().all(|expr| {
                    prometheus
                        .query(&system.http, &instantiate(expr))
                        .is_empty()
                })
            })
            .map(|(title, _)| title.clone())
            .collect()
    };
    Wait::new(
        "every dashboard panel to get data from Prometheus",
        Duration::from_secs(30),
    )
    .every(Duration::from_millis(500))
    .until(|| match empty_panels() {
        empty if empty.is_empty() => Ok(()),
        empty => Err(format!("panels without data: {empty:?}")),
    });
    let rules: Value = system
        .http
        .get(format!("{}/api/v1/rules", prometheus.url))
        .send()
        .and_then(|r| r.json())
        .expect("GET /api/v1/rules");
    let groups = rules["data"]["groups"].as_array().expect("rule groups");
    let evaluated: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(
        evaluated.len(),
        rule_list(&self::rules()).len(),
        "Prometheus loaded every rule of {RULES}"
    );
    let broken: Vec<String> = evaluated
        .iter()
        .filter(|r| r["health"] != "ok")
        .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
        .collect();
    assert!(broken.is_empty(), "rules failing to evaluate: {broken:?}");
}

#[test]
fn metric_names_are_found_in_promql_but_recording_rules_and_longer_words_are_not() {
    let names = agent_metric_names(
        "sum(rate(agent_tasks_started_total{p=\"1\"}[1m])) / agent:queue_depth:sum + my_agent_x",
    );
    assert_eq!(
        names,
        BTreeSet::from(["agent_tasks_started_total".to_owned()])
    );
}
