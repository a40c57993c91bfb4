//! The scenario suite, end to end, against the real services.
//!
//! These tests NEED DOCKER (CI has it; a missing engine fails them loudly, they never skip):
//! every file in `scenarios/` runs in the docker runtime in short mode (`time_scale` 0.25, or
//! `HARNESS_TEST_TIME_SCALE`), kill-redis and worker-kill-mid-task also run in the process
//! runtime, and a scenario that really loses tasks must make `harness run` fail.
//!
//! Images and release binaries are built first when missing or stale, so a fresh clone needs no
//! manual step. Runs are serialised: goose keeps process-wide state, and two clusters at once
//! would fight over two cores.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use harness::{
    Prepare, Report, RunOptions, Scenario,
    cleanup::{self, LABEL_RUN},
    cluster::{Cluster, ClusterSpec, Service, ServiceState},
    scenario::{Persistence, RuntimeKind},
};
use tokio::sync::{Mutex, OnceCell};

static SERIAL: Mutex<()> = Mutex::const_new(());
static DOCKER_READY: OnceCell<()> = OnceCell::const_new();
static BINARIES_READY: OnceCell<()> = OnceCell::const_new();

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn time_scale() -> f64 {
    std::env::var("HARNESS_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.25)
}

fn init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "harness=info,goose=error,warn".into()),
        )
        .with_test_writer()
        .try_init();
    cleanup::install_interrupt_handler();
}

async fn prepare(runtime: RuntimeKind) {
    let cell = match runtime {
        RuntimeKind::Docker => &DOCKER_READY,
        RuntimeKind::Process => &BINARIES_READY,
    };
    cell.get_or_init(|| async {
        harness::runner::prepare_runtime(runtime)
            .await
            .unwrap_or_else(|e| panic!("preparing the {runtime} runtime failed: {e:#}"));
    })
    .await;
}

fn options(runtime: RuntimeKind) -> RunOptions {
    RunOptions {
        runtime: Some(runtime),
        seed: None,
        time_scale: time_scale(),
        prepare: Prepare::Skip,
        logs_dir: std::env::var_os("HARNESS_TEST_LOGS_DIR").map(PathBuf::from),
    }
}

async fn assert_nothing_left(run_id: &str) {
    let docker = cleanup::docker_client()
        .await
        .expect("this test needs a docker engine");
    let left = cleanup::list_labelled(&docker, &format!("{LABEL_RUN}={run_id}"))
        .await
        .expect("listing docker resources");
    assert!(left.is_empty(), "run {run_id} left {left:?}");
}

async fn run_file(path: &Path, runtime: RuntimeKind) -> Report {
    let scenario = Scenario::from_file(path).unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let report = harness::run_scenario(&scenario, &options(runtime)).await;
    println!(
        "{}   (test wall time {:.1}s)\n",
        report.summary(),
        started.elapsed().as_secs_f64()
    );
    if runtime == RuntimeKind::Docker && !report.run_id.is_empty() {
        assert_nothing_left(&report.run_id).await;
    }
    report
}

fn shipped_scenarios() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace().join("scenarios"))
        .expect("scenarios/ exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "expected the eight shipped scenarios, found {files:?}"
    );
    files
}

/// What a suite test found wrong, one line per scenario. The suites return it instead of
/// panicking: a returned error is printed last and without a backtrace, so the names of the
/// failed scenarios end the output, where a shortened log still shows them.
struct Failures {
    title: &'static str,
    lines: Vec<String>,
}

impl Failures {
    fn new(title: &'static str) -> Self {
        Self {
            title,
            lines: Vec::new(),
        }
    }

    fn push(&mut self, line: String) {
        self.lines.push(line);
    }

    fn into_result(self) -> Result<(), Self> {
        if self.lines.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Debug for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:", self.title)?;
        for line in &self.lines {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_scenario_passes_in_the_docker_runtime() -> Result<(), Failures> {
    init();
    let _serial = SERIAL.lock().await;
    prepare(RuntimeKind::Docker).await;
    let suite = Instant::now();
    let mut failures = Failures::new("scenarios failed");
    for path in shipped_scenarios() {
        let report = run_file(&path, RuntimeKind::Docker).await;
        if !report.passed {
            failures.push(format!(
                "{}: {}",
                report.scenario,
                report
                    .error
                    .clone()
                    .unwrap_or_else(|| failed_expectations(&report))
            ));
        }
    }
    println!(
        "docker suite wall time {:.1}s",
        suite.elapsed().as_secs_f64()
    );
    failures.into_result()
}

/// Expectations that prove a scenario's fault had an effect.
const FAULT_EFFECTS: [&str; 5] = [
    "min_unavailable",
    "min_workers",
    "min_reclaimed",
    "min_carried_over",
    "min_start_wait_p99",
];

/// Every shipped scenario carries an expectation that its fault had an effect: run with its
/// steps and chaos removed, the same scenario must fail, and fail on that expectation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_scenario_fails_with_its_faults_removed() -> Result<(), Failures> {
    init();
    let _serial = SERIAL.lock().await;
    prepare(RuntimeKind::Docker).await;
    let mut wrong = Failures::new("fault-effect expectations that do not discriminate");
    for path in shipped_scenarios() {
        let mut scenario = Scenario::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let effects: Vec<&str> = FAULT_EFFECTS
            .into_iter()
            .filter(|name| match *name {
                "min_unavailable" => scenario.expect.min_unavailable.is_some(),
                "min_workers" => scenario.expect.min_workers.is_some(),
                "min_reclaimed" => scenario.expect.min_reclaimed.is_some(),
                "min_start_wait_p99" => scenario.expect.min_start_wait_p99.is_some(),
                _ => scenario.expect.min_carried_over.is_some(),
            })
            .collect();
        if effects.is_empty() {
            wrong.push(format!("{}: no fault-effect expectation", scenario.name));
            continue;
        }
        scenario.steps.clear();
        scenario.chaos = None;
        let report = harness::run_scenario(&scenario, &options(RuntimeKind::Docker)).await;
        println!(
            "{} without its faults:\n{}",
            scenario.name,
            report.summary()
        );
        if !report.run_id.is_empty() {
            assert_nothing_left(&report.run_id).await;
        }
        let failed_effects: Vec<&str> = report
            .expectations
            .iter()
            .filter(|e| !e.passed && effects.contains(&e.name.as_str()))
            .map(|e| e.name.as_str())
            .collect();
        if report.passed || failed_effects.is_empty() {
            wrong.push(format!(
                "{}: passed without its faults (or failed for another reason: {})",
                scenario.name,
                report
                    .error
                    .clone()
                    .unwrap_or_else(|| failed_expectations(&report))
            ));
        }
    }
    wrong.into_result()
}

fn failed_expectations(report: &Report) -> String {
    report
        .expectations
        .iter()
        .filter(|e| !e.passed)
        .map(|e| format!("{} expected {} got {}", e.name, e.expected, e.actual))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn passes_in_the_process_runtime(name: &str) {
    init();
    let _serial = SERIAL.lock().await;
    prepare(RuntimeKind::Process).await;
    let report = run_file(
        &workspace().join(format!("scenarios/{name}.toml")),
        RuntimeKind::Process,
    )
    .await;
    assert_eq!(report.runtime, "process");
    assert!(
        report.passed,
        "{name} failed in the process runtime: {}",
        report
            .error
            .clone()
            .unwrap_or_else(|| failed_expectations(&report))
    );
    assert_eq!(report.lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_redis_passes_in_the_process_runtime() {
    passes_in_the_process_runtime("kill-redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_kill_mid_task_passes_in_the_process_runtime() {
    passes_in_the_process_runtime("worker-kill-mid-task").await;
}

/// The checker must be able to fail: Redis without persistence, killed with a backlog queued,
/// really loses acknowledged tasks, and `harness run` must say so in its exit status and report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_persistence_control_loses_tasks_and_its_twin_does_not() {
    control_loses_tasks_and_its_twin_does_not(
        "scenarios/controls/kill-redis-none.toml",
        Differs::Persistence(Persistence::None),
        "scenarios/kill-redis.toml",
    )
    .await;
}

/// A power loss drops what Redis did not fsync: with `appendfsync no` acknowledged tasks are
/// lost (a kill -9 would have kept them in the page cache), with `always` none are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_power_loss_control_loses_tasks_and_its_twin_does_not() {
    let report = control_loses_tasks_and_its_twin_does_not(
        "scenarios/controls/power-loss-none.toml",
        Differs::Persistence(Persistence::AofNo),
        "scenarios/power-loss-always.toml",
    )
    .await;
    assert!(
        report.forgotten >= report.lost,
        "every lost task is one the crash forgot: {} forgotten, {} lost",
        report.forgotten,
        report.lost
    );
}

/// Jepsen's 2013 Sentinel case on a Redis Cluster: a replica cut off from its primary is
/// promoted after the primary dies. With asynchronous replication the writes acknowledged during
/// the cut are lost; with `replica_acks = 1` they were never acknowledged (503), so none is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stale_replica_control_loses_tasks_and_its_twin_with_replica_acks_does_not() {
    let report = control_loses_tasks_and_its_twin_does_not(
        "scenarios/controls/cluster-stale-replica-async.toml",
        Differs::ReplicaAcks(0),
        "scenarios/cluster-stale-replica.toml",
    )
    .await;
    let failover = report
        .steps
        .iter()
        .find(|s| s.action == harness::scenario::Action::Failover)
        .expect("a failover step");
    assert!(
        failover.ok,
        "the stale replica was promoted: {}",
        failover.message
    );
}

/// The one setting a negative control changes from its twin.
enum Differs {
    /// `redis_persistence` (the twin's is `aof-always`).
    Persistence(Persistence),
    /// `replica_acks` (the twin's is 1).
    ReplicaAcks(u32),
}

/// Runs the negative control `control` (the twin of `twin` but for the setting `differs` names)
/// through the harness binary: it must exit 1 with `lost` > 0; the twin must pass. Returns the
/// control's report.
async fn control_loses_tasks_and_its_twin_does_not(
    control: &str,
    differs: Differs,
    twin: &str,
) -> Report {
    init();
    let _serial = SERIAL.lock().await;
    prepare(RuntimeKind::Docker).await;
    let report_path = std::env::temp_dir().join(format!(
        "harness-lossy-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    let fixture = workspace().join(control);
    let twin_path = workspace().join(twin);
    // The control and its twin differ in the one setting under test, nothing else.
    let control = Scenario::from_file(&fixture).unwrap_or_else(|e| panic!("{e}"));
    let twin = Scenario::from_file(&twin_path).unwrap_or_else(|e| panic!("{e}"));
    let mut normalised = control.clone();
    normalised.name = twin.name.clone();
    normalised.description = twin.description.clone();
    normalised.path = twin.path.clone();
    match differs {
        Differs::Persistence(persistence) => {
            assert_eq!(control.cluster.redis_persistence, persistence);
            assert_eq!(twin.cluster.redis_persistence, Persistence::AofAlways);
            normalised.cluster.redis_persistence = twin.cluster.redis_persistence;
        }
        Differs::ReplicaAcks(acks) => {
            assert_eq!(control.cluster.redis.replica_acks, acks);
            assert_eq!(twin.cluster.redis.replica_acks, 1);
            normalised.cluster.redis.replica_acks = twin.cluster.redis.replica_acks;
        }
    }
    assert_eq!(
        normalised, twin,
        "the control must be its twin but for the setting under test"
    );

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["run", "--runtime", "docker", "--no-build", "--time-scale"])
        .arg(time_scale().to_string())
        .arg("--report")
        .arg(&report_path)
        .arg(&fixture)
        .output()
        .await
        .expect("running the harness binary");

    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        output.status.code(),
        Some(1),
        "a run that loses tasks must exit with 1"
    );
    let report: Report = serde_json::from_str(
        &std::fs::read_to_string(&report_path).expect("the report was written"),
    )
    .expect("the report is a single JSON object");
    let _ = std::fs::remove_file(&report_path);
    assert!(!report.passed);
    assert!(
        report.error.is_none(),
        "the run itself worked: {:?}",
        report.error
    );
    assert!(
        report.lost > 0,
        "tasks were lost, the report says {}",
        report.lost
    );
    let lost = report
        .expectations
        .iter()
        .find(|e| e.name == "lost")
        .expect("a `lost` expectation");
    assert!(!lost.passed, "the `lost` expectation failed");
    assert!(stdout.contains("FAILED"), "the summary says FAILED");
    assert_nothing_left(&report.run_id).await;

    // Same load, timing and fault with the safe setting: nothing is lost.
    let twin_report = run_file(&twin_path, RuntimeKind::Docker).await;
    assert!(
        twin_report.passed && twin_report.lost == 0,
        "the twin must pass with nothing lost: {}",
        twin_report
            .error
            .clone()
            .unwrap_or_else(|| failed_expectations(&twin_report))
    );
    report
}

/// Liveness: a service that dies on its own (here: SIGKILLed behind the harness's back) is
/// reported once as an unplanned exit; one a step stops is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_dies_on_its_own_is_an_unplanned_exit_and_a_stepped_one_is_not() {
    init();
    let _serial = SERIAL.lock().await;
    prepare(RuntimeKind::Docker).await;
    let spec = ClusterSpec::new("liveness", 2);
    let run_id = spec.run_id.clone();
    let mut cluster = Cluster::start(RuntimeKind::Docker, spec)
        .await
        .expect("the cluster starts");
    assert!(
        cluster.unplanned_exits().await.is_empty(),
        "nothing exited yet"
    );

    cluster
        .kill(Service::Worker(2))
        .await
        .expect("a step kills worker.2");
    let container = format!("agent-harness-{run_id}-worker-1");
    let killed = std::process::Command::new("docker")
        .args(["kill", "--signal", "SIGKILL", &container])
        .output()
        .expect("running docker kill");
    assert!(
        killed.status.success(),
        "docker kill {container}: {killed:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while seen.is_empty() && Instant::now() < deadline {
        seen = cluster.unplanned_exits().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen,
        vec![(Service::Worker(1), Some(137))],
        "worker.1 died on its own (137 = killed by SIGKILL); worker.2 was stopped by a step"
    );
    assert!(
        cluster.unplanned_exits().await.is_empty(),
        "an exit is reported once"
    );
    cluster.shutdown().await.expect("teardown");
    assert_nothing_left(&run_id).await;
}

/// Cluster control without a scenario: start times, re-addressing after a Redis restart,
/// pause, partition, scale, and complete removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_cluster_obeys_every_action_and_leaves_nothing() {
    init();
    let _serial = SERIAL.lock().await;
    prepare(RuntimeKind::Docker).await;
    let mut spec = ClusterSpec::new("cluster-control", 2);
    spec.persistence = Persistence::AofAlways;
    let run_id = spec.run_id.clone();

    let mut cluster = Cluster::start(RuntimeKind::Docker, spec)
        .await
        .expect("the cluster starts");
    let startup = cluster.startup_times();
    println!(
        "cluster start: prepare {:?}, redis {:?}, orchestrator {:?}, 2 workers {:?}, total {:?}",
        startup.prepare,
        startup.redis,
        startup.orchestrator,
        startup.workers,
        startup.total()
    );
    let http = reqwest::Client::new();
    let submit = |http: reqwest::Client, url: String| async move {
        http.post(format!("{url}/tasks"))
            .json(&serde_json::json!({"description": "cluster control", "priority": 3}))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    let url = cluster.orchestrator_url();
    assert_eq!(submit(http.clone(), url.clone()).await.ok(), Some(201));

    // Redis: kill + start comes back (AOF on the volume) and is re-addressed.
    cluster.kill(Service::Redis).await.expect("kill redis");
    let before = cluster.redis_url();
    cluster
        .start_service(Service::Redis)
        .await
        .expect("start redis");
    harness::cluster::ping_redis(&cluster.redis_url())
        .await
        .expect("redis answers at its new address");
    println!(
        "redis moved from {} to {}",
        taskq::support::redact_url(&before),
        taskq::support::redact_url(&cluster.redis_url())
    );
    // The run's Redis requires its password; the services got it through REDIS_URL.
    let anonymous = cluster
        .redis_url()
        .replace(&format!(":{}@", cluster.spec().redis_password), "");
    let refused = harness::cluster::ping_redis(&anonymous)
        .await
        .expect_err("no password, no PING");
    assert!(format!("{refused:#}").contains("NOAUTH"), "{refused:#}");

    // Pause / unpause, disconnect / connect, restart of the orchestrator.
    cluster.pause(Service::Redis).await.expect("pause");
    assert_eq!(cluster.state(Service::Redis), Some(ServiceState::Paused));
    cluster.unpause(Service::Redis).await.expect("unpause");
    cluster
        .disconnect(Service::Worker(1))
        .await
        .expect("disconnect");
    cluster.connect(Service::Worker(1)).await.expect("connect");
    cluster
        .restart(Service::Orchestrator)
        .await
        .expect("restart");
    assert_eq!(
        cluster.orchestrator_url(),
        url,
        "the orchestrator keeps its URL"
    );

    // Scale up and down.
    cluster.scale(3).await.expect("scale to 3");
    assert_eq!(cluster.endpoints().workers.len(), 3);
    cluster.scale(1).await.expect("scale to 1");
    assert_eq!(
        cluster.state(Service::Worker(3)),
        Some(ServiceState::Stopped)
    );

    // The queue still works end to end after all that.
    assert_eq!(submit(http.clone(), url.clone()).await.ok(), Some(201));
    testkit::Wait::new("both tasks to execute", Duration::from_secs(20))
        .every(Duration::from_millis(200))
        .until_async(async || {
            let executions = cluster.executions().await.expect("reading executions");
            if executions.len() >= 2 {
                Ok(())
            } else {
                Err(format!("{executions:?}"))
            }
        })
        .await;

    cluster
        .shutdown()
        .await
        .expect("shutdown removes everything");
    assert_nothing_left(&run_id).await;
}

/// A run whose harness died (owner process gone) is swept by the next run; a live one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_dead_harness_are_swept_and_live_runs_are_not() {
    init();
    // Every cluster start sweeps too: keep them from racing this test for the dead run.
    let _serial = SERIAL.lock().await;
    let docker = cleanup::docker_client()
        .await
        .expect("this test needs a docker engine");
    let dead_run = harness::cluster::new_run_id("dead-owner");
    let live_run = harness::cluster::new_run_id("live-owner");
    let mut dead_labels = cleanup::run_labels(&dead_run);
    dead_labels.insert(cleanup::LABEL_OWNER.into(), "999999999-1".into());
    for (run, labels) in [
        (&dead_run, dead_labels),
        (&live_run, cleanup::run_labels(&live_run)),
    ] {
        docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: format!("agent-harness-{run}"),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .expect("creating a network");
        docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(format!("agent-harness-{run}-data")),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .expect("creating a volume");
    }

    let swept = cleanup::sweep_leftovers(Some(&docker)).await;
    let live_left = cleanup::list_labelled(&docker, &format!("{LABEL_RUN}={live_run}")).await;
    let removed_live = cleanup::sweep_run(&docker, &live_run).await;

    let swept = swept.expect("sweeping");
    assert!(
        swept
            .networks
            .contains(&format!("agent-harness-{dead_run}"))
    );
    assert!(
        swept
            .volumes
            .contains(&format!("agent-harness-{dead_run}-data"))
    );
    let live_left = live_left.expect("listing");
    assert_eq!((live_left.networks.len(), live_left.volumes.len()), (1, 1));
    removed_live.expect("removing the live run's resources");
    assert_nothing_left(&dead_run).await;
    assert_nothing_left(&live_run).await;
}
