//! The scenario runner: cluster up, load and steps concurrently, drain, check, tear down.
//!
//! ```text
//! prepare images / binaries ─ start cluster ─┬─ load (goose) ─────────────┐
//!                                            └─ steps at their offsets ───┴─ resolve info ─ drain ─ check ─ shutdown
//! ```
//!
//! Offsets count from the load's first request (seen as its idempotency key appearing in Redis),
//! not from launching goose, which takes seconds to start its users. After the load the runner
//! waits up to `drain_within` until every acknowledged task has a final execution, then until
//! the queue is quiet, and reconciles: it reads the final state of every task any submit may
//! have created (by id, and by idempotency key for the others). Submits, steps, executions and
//! final states make the [history](crate::history) that [`crate::judge`] hands to the
//! [`crate::checker`]; `harness check` judges a saved history the same way.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;

use crate::{
    checker,
    cluster::{self, Cluster, ClusterSpec, Service},
    executions::Execution,
    history::{
        Cancel, Event, Execution as HistoryExecution, Exit, Fault, Final, FinalStatus, OpOutcome,
        Read, Submit,
    },
    load::{
        self, Delays, FollowUpKind, FollowUpRecord, FollowUps, LoadRecords, SubmitLoad,
        SubmitOutcome, SubmitRecord,
    },
    progress::{Phase, ScenarioProgress},
    report::{Report, StepReport, secs},
    scenario::{Plan, RuntimeKind, Scenario},
};

/// How a run is done.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Force a runtime (else `HARNESS_RUNTIME`, the scenario's, or auto-detection).
    pub runtime: Option<RuntimeKind>,
    /// Override the chaos seed.
    pub seed: Option<u64>,
    /// Multiply step offsets and the load duration (e.g. 0.25 for a short CI run).
    pub time_scale: f64,
    /// Build what the runtime needs first: images (docker) or release binaries (process).
    pub prepare: Prepare,
    /// Write every service's logs under `<dir>/<run id>/` before teardown.
    pub logs_dir: Option<PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            runtime: None,
            seed: None,
            time_scale: 1.0,
            prepare: Prepare::Build,
            logs_dir: None,
        }
    }
}

/// Whether the runner builds images or binaries before starting a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepare {
    /// Build what is missing or stale (cargo and the image digests decide).
    Build,
    /// Use what exists.
    Skip,
}

/// Builds what `runtime` needs when missing or stale.
pub async fn prepare_runtime(runtime: RuntimeKind) -> anyhow::Result<()> {
    match runtime {
        RuntimeKind::Docker => {
            let set = tokio::task::spawn_blocking(|| {
                xtask::images::ensure_images(&xtask::images::ImageOptions::default())
            })
            .await
            .context("the image build panicked")?
            .context("building the images")?;
            tracing::info!("images ready:\n{set}");
        }
        RuntimeKind::Process => cluster::process::build_release_binaries().await?,
    }
    Ok(())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs one scenario; never fails: a harness error becomes a failed report with `error` set.
pub async fn run_scenario(scenario: &Scenario, options: &RunOptions) -> Report {
    let started = Instant::now();
    let progress = ScenarioProgress::start(&scenario.name);
    let plan = scenario.plan(options.seed, options.time_scale);
    let mut report = Report {
        scenario: scenario.name.clone(),
        file: scenario.path.display().to_string(),
        seed: plan.seed,
        time_scale: options.time_scale,
        rate_per_s: scenario.load.rate,
        ..Report::default()
    };
    if let Err(error) = run_into(scenario, &plan, options, &mut report, &progress).await {
        report.error = Some(format!("{error:#}"));
        report.passed = false;
    }
    report.wall_ms = started.elapsed().as_millis() as u64;
    progress.finish(&report);
    report
}

async fn run_into(
    scenario: &Scenario,
    plan: &Plan,
    options: &RunOptions,
    report: &mut Report,
    progress: &ScenarioProgress,
) -> anyhow::Result<()> {
    let (runtime, why) = cluster::choose_runtime(options.runtime, scenario.cluster.runtime).await?;
    report.runtime = runtime.to_string();
    tracing::info!(scenario = %scenario.name, %runtime, "runtime: {why}");
    if runtime == RuntimeKind::Process && scenario.needs_network_control() {
        anyhow::bail!(
            "{} cuts or degrades network links (disconnect, partition, loss, delay), which only the \
             docker runtime can do: the process runtime's services share the host's loopback",
            scenario.name
        );
    }
    use crate::scenario::Action;
    let filters = |a: &Action| matches!(a, Action::Partition | Action::Loss);
    if scenario.steps.iter().any(|s| filters(&s.action))
        || scenario
            .chaos
            .as_ref()
            .is_some_and(|c| c.actions.iter().any(filters))
    {
        cluster::links::check_privileges()?;
    }
    plan.refuse_ineffective_faults(&scenario.expect)
        .map_err(|why| anyhow::anyhow!("{}: {why}", scenario.name))?;
    if options.prepare == Prepare::Build {
        // The build's cargo writes to stderr itself: keep the progress bar out of its way.
        progress.hidden(prepare_runtime(runtime)).await?;
    }

    let mut spec = ClusterSpec::new(&scenario.name, scenario.cluster.workers);
    spec.persistence = scenario.cluster.redis_persistence;
    spec.worker_concurrency = scenario.cluster.worker_concurrency;
    spec.work = scenario.cluster.work;
    spec.timing = plan.timing;
    spec.fail_rate = scenario.cluster.fail_rate;
    spec.permanent_fail_rate = scenario.cluster.permanent_fail_rate;
    spec.fault_disk = scenario.needs_fault_fs();
    spec.clock_shift = scenario.needs_clock_shift();
    spec.link_proxies = scenario.needs_link_proxies();
    spec.redis = scenario.cluster.redis;
    report.run_id = spec.run_id.clone();

    let cluster_started = Instant::now();
    let mut cluster = Cluster::start(runtime, spec.clone()).await?;
    report.cluster_start_ms = cluster_started.elapsed().as_millis() as u64;
    let startup = cluster.startup_times();
    report.cluster_startup_ms = crate::report::StartupMs {
        prepare: startup.prepare.as_millis() as u64,
        redis: startup.redis.as_millis() as u64,
        orchestrator: startup.orchestrator.as_millis() as u64,
        workers: startup.workers.as_millis() as u64,
    };
    tracing::info!(
        run_id = %spec.run_id,
        "cluster ready in {}: {}",
        secs(report.cluster_start_ms),
        cluster.orchestrator_url()
    );

    // The cluster is dropped (and removed) on every early return below; the normal path shuts
    // it down explicitly to report cleanup errors.
    let outcome = drive(scenario, plan, &mut cluster, report, progress).await;
    if let Some(dir) = &options.logs_dir
        && let Err(e) = save_logs(&cluster, &dir.join(&spec.run_id)).await
    {
        tracing::warn!("saving service logs: {e:#}");
    }
    let shutdown = cluster.shutdown().await;
    outcome?;
    shutdown.context("tearing the cluster down")?;
    Ok(())
}

async fn drive(
    scenario: &Scenario,
    plan: &Plan,
    cluster: &mut Cluster,
    report: &mut Report,
    progress: &ScenarioProgress,
) -> anyhow::Result<()> {
    let request_timeout = scenario.load.request_timeout;
    let load = SubmitLoad {
        host: cluster.orchestrator_url(),
        rate_per_s: scenario.load.rate,
        duration: plan.load_duration,
        users: load::users_for(scenario.load.rate, request_timeout, scenario.load.users),
        request_timeout,
        run_id: cluster.spec().run_id.clone(),
        follow_ups: FollowUps {
            cancel: scenario.load.cancel_share,
            read: scenario.load.read_share,
        },
        delays: Delays {
            share: scenario.load.delay_share,
            max_ms: scenario.load.max_delay.as_millis() as u64,
        },
        progress: Some(progress.start_load()),
    };
    let run_id = load.run_id.clone();
    let spawned = Instant::now();
    let spawned_unix = unix_ms();
    // The task notes when the load really ended: steps may still be running then.
    let load_task = tokio::spawn(async move {
        let result = load::run_load(load).await;
        (result, Instant::now())
    });
    // Goose needs a while (seconds, in a debug build) before its first request; offsets count
    // from the first request the orchestrator stored, so a fault never lands before the load.
    let load_started = match wait_for_traffic(cluster, &run_id, TRAFFIC_TIMEOUT).await {
        Some(at) => at,
        None => {
            tracing::warn!(
                "no request reached the orchestrator within {}s; step offsets count from the load's launch",
                TRAFFIC_TIMEOUT.as_secs()
            );
            spawned
        }
    };
    tracing::info!(
        "load traffic began {} after the load generator started",
        secs(load_started.saturating_duration_since(spawned).as_millis() as u64)
    );

    let mut steps: Vec<(StepReport, u64)> = Vec::new();
    // Services that exit while no step stops them (unix ms, service, code): their peers would
    // cover for them, so the harness watches.
    let mut exits: Vec<(u64, Service, Option<i64>)> = Vec::new();
    for step in &plan.steps {
        watch_until(cluster, load_started + step.at, &mut exits).await;
        let at = load_started.elapsed();
        let started_unix = unix_ms();
        let result = cluster.apply(step).await;
        let duration = load_started.elapsed() - at;
        let (ok, message) = match result {
            Ok(message) => (true, message),
            Err(e) => (false, format!("{e:#}")),
        };
        tracing::info!(
            "[{:>7}] {} {}: {} ({})",
            secs(at.as_millis() as u64),
            step.action,
            step.subject,
            if ok { "ok" } else { "FAILED" },
            message
        );
        steps.push((
            StepReport {
                at_ms: at.as_millis() as u64,
                planned_at_ms: step.at.as_millis() as u64,
                action: step.action,
                target: step.subject,
                ok,
                message,
                duration_ms: duration.as_millis() as u64,
                origin: step.origin,
                recovery_ms: None,
                carried_over: None,
            },
            started_unix,
        ));
    }

    while !load_task.is_finished() {
        watch_until(cluster, Instant::now() + WATCH_PERIOD, &mut exits).await;
    }
    progress.phase(Phase::Drain);
    let (records, load_ended) = load_task.await.context("the load task panicked")?;
    let LoadRecords {
        submits,
        follow_ups,
    } = records.context("running the load")?;
    report.load_start_delay_ms = submits
        .iter()
        .map(|s| s.started_unix_ms)
        .min()
        .map(|first| first.saturating_sub(spawned_unix));

    let resolved = resolve_idempotency_keys(cluster, &submits).await;
    let drain_deadline = load_ended + scenario.expect.drain_within;
    // A task the load cancelled (answered 200) never runs: nothing to wait for.
    let cancelled: HashSet<&str> = follow_ups
        .iter()
        .filter(|f| f.kind == FollowUpKind::Cancel && f.status == Some(200))
        .map(|f| f.task_id.as_str())
        .collect();
    let (_, executions) = wait_for_drain(
        cluster,
        &submits,
        &resolved,
        &cancelled,
        drain_deadline,
        progress,
    )
    .await?;
    // Reconciliation: once the queue is quiet, the state of every task any submit may have
    // created is read back, so a task stuck in `running` or marked `dead` after a success shows.
    progress.phase(Phase::Reconcile);
    wait_quiet(cluster, drain_deadline).await;
    let mut executions = cluster.executions().await.unwrap_or(executions);
    let mut finals = reconcile(cluster, &submits, &executions).await?;
    // A `task_executed` line goes out before its outcome is recorded, so before the final state
    // read above shows it; but docker delivers log lines asynchronously, and a task that ended
    // while the queue turned quiet may have its line in flight. Read the logs once more (and the
    // states again, for tasks the new lines name).
    tokio::time::sleep(LOG_SETTLE).await;
    if let Ok(later) = cluster.executions().await
        && later.len() > executions.len()
    {
        executions = later;
        finals = reconcile(cluster, &submits, &executions).await?;
    }
    progress.executions(&executions);
    let origin_unix = submits
        .iter()
        .map(|s| s.started_unix_ms)
        .min()
        .unwrap_or(spawned_unix);
    let mut events = submit_events(&submits, origin_unix);
    events.extend(follow_up_events(&follow_ups, origin_unix));
    events.extend(steps.iter().map(|(step, at_unix)| {
        Event::Fault(Fault::new(
            *at_unix as f64 - origin_unix as f64,
            step.action.as_str(),
            &step.target,
            step.ok,
        ))
    }));
    events.extend(execution_events(&executions, origin_unix));
    events.extend(exits.iter().map(|(at_unix, service, code)| {
        Event::Exit(Exit {
            t_ms: *at_unix as f64 - origin_unix as f64,
            service: service.to_string(),
            code: *code,
            planned: false,
        })
    }));
    events.extend(finals);

    let load_ms = checker::load_window(&events)
        .map(|(from, to)| (to - from).max(1.0) as u64)
        .unwrap_or_else(|| (load_ended - load_started).as_millis() as u64);
    report.steps = steps
        .into_iter()
        .map(|(mut step, _)| {
            if step.at_ms >= load_ms {
                step.message
                    .push_str(" [started after the load ended: recovery cannot be measured]");
            }
            step
        })
        .collect();
    let partitions = scenario.cluster.redis.shards as u16;
    crate::judge::judge(report, &scenario.expect, partitions, events);
    Ok(())
}

/// The submits as history events, times relative to `origin_unix`.
fn submit_events(submits: &[SubmitRecord], origin_unix: u64) -> Vec<Event> {
    submits
        .iter()
        .map(|s| {
            let t_ms = s.started_unix_ms as f64 - origin_unix as f64;
            let (outcome, status, id) = match &s.outcome {
                SubmitOutcome::Ok { task_id } => (OpOutcome::Ok, None, Some(task_id.clone())),
                SubmitOutcome::Fail { status, .. } => (OpOutcome::Fail, *status, None),
                SubmitOutcome::Info { .. } => (OpOutcome::Info, None, None),
            };
            Event::Submit(Submit {
                t_ms,
                end_ms: t_ms + s.latency_ms,
                outcome,
                status,
                id,
                key: Some(s.idempotency_key.clone()),
                priority: Some(s.priority),
                delay_ms: s.delay_ms,
            })
        })
        .collect()
}

/// Cancels and reads as history events. A cancel is `ok` when answered 200 (cancelled), `fail`
/// when refused (409: already running or finished; 404), else `info`; a read is `ok` on 200,
/// `fail` on 404, else `info`.
fn follow_up_events(follow_ups: &[FollowUpRecord], origin_unix: u64) -> Vec<Event> {
    follow_ups
        .iter()
        .map(|f| {
            let t_ms = f.started_unix_ms as f64 - origin_unix as f64;
            let end_ms = t_ms + f.latency_ms;
            let outcome = match f.status {
                Some(200) => OpOutcome::Ok,
                Some(404) => OpOutcome::Fail,
                Some(409) if f.kind == FollowUpKind::Cancel => OpOutcome::Fail,
                _ => OpOutcome::Info,
            };
            let id = f.task_id.clone();
            match f.kind {
                FollowUpKind::Cancel => Event::Cancel(Cancel {
                    t_ms,
                    end_ms,
                    id,
                    outcome,
                    status: f.status,
                }),
                FollowUpKind::Read => Event::Read(Read {
                    t_ms,
                    end_ms,
                    id,
                    outcome,
                    status: f.status,
                }),
            }
        })
        .collect()
}

/// The executions as history events: each starts at its line's time minus its duration.
fn execution_events(executions: &[Execution], origin_unix: u64) -> Vec<Event> {
    executions
        .iter()
        .map(|e| {
            let end_ms = e
                .unix_ms
                .map(|at| at as f64 - origin_unix as f64)
                .unwrap_or(f64::NAN);
            Event::Execution(HistoryExecution {
                t_ms: end_ms - e.duration_ms,
                id: e.task_id.clone(),
                attempt: e.attempt,
                worker: e.worker_id.clone(),
                outcome: e.outcome,
                end_ms: Some(end_ms),
                service: Some(e.source.clone()),
            })
        })
        .collect()
}

/// How long the reconciliation waits for log lines still on their way from the workers.
const LOG_SETTLE: Duration = Duration::from_millis(500);

/// Longest wait for the queue to become quiet after the drain.
const QUIET_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until nothing is waiting, running or scheduled for a retry (every priority stream and
/// the retry schedule empty), or until `deadline` (at least [`QUIET_TIMEOUT`] from now).
async fn wait_quiet(cluster: &Cluster, deadline: Instant) {
    let partitions = cluster.spec().partitions();
    let deadline = deadline.max(Instant::now() + QUIET_TIMEOUT);
    let Ok(mut conn) = cluster.queue_connection() else {
        return;
    };
    while Instant::now() < deadline {
        let mut quiet = true;
        // One pipeline per partition: its keys share a slot, so a cluster runs it on one node.
        for queue in partitions.all() {
            let keys = &queue.config().keys;
            let mut pipe = redis::pipe();
            for stream in keys.streams() {
                pipe.cmd("XLEN").arg(stream);
            }
            pipe.cmd("ZCARD").arg(keys.retry_schedule());
            let counts: Result<Vec<u64>, _> = pipe.query_async(&mut conn).await;
            if !counts.is_ok_and(|counts| counts.iter().all(|n| *n == 0)) {
                quiet = false;
                break;
            }
        }
        if quiet {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::warn!("the queue was not quiet by the deadline; reconciling anyway");
}

/// Reads the final state of every task a submit may have created: by id for acknowledged
/// submits and executed tasks, by idempotency key for the others. Reads Redis directly (the
/// orchestrator may be the service a scenario left down).
async fn reconcile(
    cluster: &Cluster,
    submits: &[SubmitRecord],
    executions: &[Execution],
) -> anyhow::Result<Vec<Event>> {
    let resolved = resolve_idempotency_keys(cluster, submits).await;
    let partitions = cluster.spec().partitions();
    let mut lookups: Vec<(String, Option<String>)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for submit in submits {
        let (id, key) = match &submit.outcome {
            SubmitOutcome::Ok { task_id } => (Some(task_id.clone()), None),
            _ => (
                resolved.get(&submit.idempotency_key).cloned(),
                Some(submit.idempotency_key.clone()),
            ),
        };
        if let Some(id) = id
            && (key.is_some() || seen.insert(id.clone()))
        {
            lookups.push((id, key));
        }
    }
    for execution in executions {
        if seen.insert(execution.task_id.clone()) {
            lookups.push((execution.task_id.clone(), None));
        }
    }
    // Grouped by partition, so each pipeline reads one slot (one node of a cluster).
    let mut by_partition: BTreeMap<u16, Vec<(String, Option<String>)>> = BTreeMap::new();
    for (id, key) in lookups {
        let partition = taskq::TaskId::parse(&id)
            .map(|task_id| task_id.partition(partitions.count()))
            .unwrap_or(0);
        by_partition.entry(partition).or_default().push((id, key));
    }
    let mut conn = cluster.queue_connection()?;
    let read = async {
        let mut finals = Vec::new();
        for (partition, lookups) in &by_partition {
            let keys = &partitions.all()[usize::from(*partition)].config().keys;
            for chunk in lookups.chunks(500) {
                let mut pipe = redis::pipe();
                for (id, _) in chunk {
                    match taskq::TaskId::parse(id) {
                        Ok(task_id) => pipe.cmd("HMGET").arg(keys.task(&task_id)),
                        // Not an id this system makes: no record can exist under it.
                        Err(_) => pipe.cmd("HMGET").arg(keys.task_prefix()),
                    };
                    pipe.arg("status").arg("attempts");
                }
                let rows: Vec<(Option<String>, Option<u32>)> = pipe.query_async(&mut conn).await?;
                for ((id, key), (status, attempts)) in chunk.iter().zip(rows) {
                    let status = match status.as_deref() {
                        None => FinalStatus::Missing,
                        Some(raw) => serde_json::from_value(serde_json::Value::String(raw.into()))
                            .with_context(|| format!("task {id} has an unknown status {raw:?}"))?,
                    };
                    finals.push(Event::Final(Final {
                        id: id.clone(),
                        key: key.clone(),
                        status,
                        attempts,
                    }));
                }
            }
        }
        anyhow::Ok(finals)
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .context("reading the final task states timed out")?
        .context("reading the final task states from Redis")
}

/// How often the harness looks for services that exited on their own.
const WATCH_PERIOD: Duration = Duration::from_millis(500);

/// Sleeps until `deadline`, looking every [`WATCH_PERIOD`] for services that exited although no
/// step stopped them, and records them.
async fn watch_until(
    cluster: &mut Cluster,
    deadline: Instant,
    exits: &mut Vec<(u64, Service, Option<i64>)>,
) {
    loop {
        for (service, code) in cluster.unplanned_exits().await {
            tracing::warn!(%service, ?code, "a service exited although no step stopped it");
            exits.push((unix_ms(), service, code));
        }
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        tokio::time::sleep((deadline - now).min(WATCH_PERIOD)).await;
    }
}

/// How long to wait for the load's first request to reach Redis.
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until one of the load's first requests has been stored (its idempotency key exists in
/// Redis; read-only) and returns when that was seen.
async fn wait_for_traffic(cluster: &Cluster, run_id: &str, timeout: Duration) -> Option<Instant> {
    let partitions = cluster.spec().partitions();
    let keys: Vec<String> = (0..16)
        .map(|op| idempotency_redis_key(&partitions, &format!("{run_id}-{op}")))
        .collect();
    let deadline = Instant::now() + timeout;
    let mut conn = cluster.queue_connection().ok()?;
    while Instant::now() < deadline {
        // One key per command: on a cluster they live in different slots.
        for key in &keys {
            let found: Result<u64, _> = redis::cmd("EXISTS").arg(key).query_async(&mut conn).await;
            if found.is_ok_and(|n| n > 0) {
                return Some(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Maps the idempotency keys of non-`ok` attempts to task ids, read-only from Redis. A Redis
/// that is unreachable leaves them unresolved (they then count as neither recovered nor
/// attempted).
async fn resolve_idempotency_keys(
    cluster: &Cluster,
    submits: &[SubmitRecord],
) -> HashMap<String, String> {
    let keys: Vec<&str> = submits
        .iter()
        .filter(|s| !matches!(s.outcome, SubmitOutcome::Ok { .. }))
        .map(|s| s.idempotency_key.as_str())
        .collect();
    if keys.is_empty() {
        return HashMap::new();
    }
    let partitions = cluster.spec().partitions();
    // Grouped by partition: one MGET may not span slots on a cluster.
    let mut by_partition: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
    let scope = taskq::IdempotencyScope::open();
    for key in keys {
        let partition = partitions
            .for_new_task(&scope, Some(key))
            .config()
            .keys
            .partition();
        by_partition.entry(partition.index).or_default().push(key);
    }
    let attempt = async {
        let mut connection = cluster.queue_connection()?;
        let mut resolved = HashMap::new();
        for keys in by_partition.values() {
            for chunk in keys.chunks(500) {
                let redis_keys: Vec<String> = chunk
                    .iter()
                    .map(|key| idempotency_redis_key(&partitions, key))
                    .collect();
                let ids: Vec<Option<String>> = redis::cmd("MGET")
                    .arg(&redis_keys)
                    .query_async(&mut connection)
                    .await?;
                for (key, record) in chunk.iter().zip(ids) {
                    if let Some(record) = record {
                        let id = taskq::queue::idempotency_record_task_id(&record);
                        resolved.insert(key.to_string(), id.to_owned());
                    }
                }
            }
        }
        anyhow::Ok(resolved)
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(resolved)) => resolved,
        Ok(Err(e)) => {
            tracing::warn!("could not resolve idempotency keys: {e:#}");
            HashMap::new()
        }
        Err(_) => {
            tracing::warn!("resolving idempotency keys timed out");
            HashMap::new()
        }
    }
}

/// The Redis key under which the orchestrator stores an idempotency key's task id, in the
/// partition the key sends its task to (the harness runs without API tokens: the open scope).
pub fn idempotency_redis_key(partitions: &taskq::Partitions, idempotency_key: &str) -> String {
    let scope = taskq::IdempotencyScope::open();
    partitions
        .for_new_task(&scope, Some(idempotency_key))
        .config()
        .keys
        .idempotency(&scope, idempotency_key)
}

/// Polls the workers' logs until every acknowledged (or recovered) task has a final execution,
/// or `deadline` passes. Returns when it drained (if it did) and the last executions read.
async fn wait_for_drain(
    cluster: &Cluster,
    submits: &[SubmitRecord],
    resolved: &HashMap<String, String>,
    cancelled: &HashSet<&str>,
    deadline: Instant,
    progress: &ScenarioProgress,
) -> anyhow::Result<(Option<Instant>, Vec<Execution>)> {
    let mut must_finish: HashSet<&str> = submits
        .iter()
        .filter_map(|s| s.outcome.task_id())
        .filter(|id| !cancelled.contains(id))
        .collect();
    // Tasks created by indeterminate attempts must finish too.
    must_finish.extend(
        submits
            .iter()
            .filter(|s| matches!(s.outcome, SubmitOutcome::Info { .. }))
            .filter_map(|s| resolved.get(&s.idempotency_key).map(String::as_str)),
    );
    loop {
        let executions = cluster.executions().await?;
        progress.executions(&executions);
        let finished: HashSet<&str> = executions
            .iter()
            .filter(|e| e.outcome.is_final())
            .map(|e| e.task_id.as_str())
            .collect();
        let unfinished = must_finish
            .iter()
            .filter(|id| !finished.contains(**id))
            .count();
        if unfinished == 0 {
            return Ok((Some(Instant::now()), executions));
        }
        if Instant::now() >= deadline {
            tracing::warn!(unfinished, "not drained by the deadline");
            return Ok((None, executions));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn save_logs(cluster: &Cluster, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut services = cluster.spec().redis_services();
    services.push(Service::Orchestrator);
    services.extend((1..=crate::scenario::MAX_WORKERS).map(Service::Worker));
    for service in services {
        if cluster.state(service).is_none() {
            continue;
        }
        let text = cluster.logs(service).await?;
        std::fs::write(dir.join(format!("{service}.log")), text)?;
    }
    Ok(())
}
