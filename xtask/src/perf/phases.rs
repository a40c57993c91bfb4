//! The run itself: starts the systems, measures each phase, assembles the [`Report`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use taskq::event::{Logged, TaskExecuted};
use taskq::queue::Queue;
use taskq::{Description, EnqueueOutcome, Keys, Priority, QueueConfig, TaskId};
use testkit::{Log, Process, try_free_port};

use crate::perf::bare::BARE_PREFIX;
use crate::perf::open_loop::{self, FixedRate, quantile};
use crate::perf::process::{MachineCpu, background_busy_percent, version_of};
use crate::perf::redis_server::{CommandStat, Fsync, RedisProcess};
use crate::perf::report::{
    BareDrainResult, CpuUse, DrainResult, FixedRateMeasurement, LatencySummary, Machine,
    ModeReport, RecoveryResult, Report, Versions, WrkMeasurement, targets,
};
use crate::perf::script::{DESCRIPTION, enqueue_script_source, post_body};
use crate::perf::wrk::{self, WrkLoad};
use crate::perf::{Options, Phase, redis_benchmark};

/// Key prefix of the orchestrator and workers under test.
pub(super) const PREFIX: &str = "bench";
/// Key prefix of the recovery runs.
const RECOVERY_PREFIX: &str = "recovery";
/// Warm-up before every measured HTTP run.
pub(super) const WARMUP: Duration = Duration::from_secs(2);
/// Longest wait for a drain or for the queue to empty after fixed-rate load.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// The service binaries.
pub(super) struct Bins {
    pub(super) orchestrator: PathBuf,
    pub(super) worker: PathBuf,
    /// This tool, for its `bare-enqueue` and `bare-consume` commands.
    pub(super) xtask: PathBuf,
}

impl Bins {
    pub(super) fn find(dir: &Path) -> anyhow::Result<Self> {
        let bins = Self {
            orchestrator: dir.join("orchestrator"),
            worker: dir.join("worker"),
            xtask: dir.join("xtask"),
        };
        for bin in [&bins.orchestrator, &bins.worker, &bins.xtask] {
            anyhow::ensure!(
                bin.is_file(),
                "{} is missing: build with `cargo build --release -p orchestrator -p worker -p xtask`",
                bin.display()
            );
        }
        Ok(bins)
    }
}

fn env_pairs(list: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    list.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("expected KEY=VALUE, got {kv:?}"))
        })
        .collect()
}

/// Everything a phase needs.
pub(super) struct Ctx<'a> {
    pub(super) options: &'a Options,
    /// What is left of `--quiet-budget`.
    quiet_budget: std::cell::Cell<Duration>,
    pub(super) bins: Bins,
    pub(super) dir: PathBuf,
    worker_env: Vec<(String, String)>,
    orchestrator_env: Vec<(String, String)>,
}

impl Ctx<'_> {
    /// Waits (up to `--quiet-wait`, within what is left of `--quiet-budget`) until other
    /// processes leave the machine mostly idle, so one measurement is not someone's build.
    pub(super) fn wait_quiet(&self) {
        // Write back what earlier phases left dirty (the AOF), or the kernel does it during
        // the next measurement.
        let _ = std::process::Command::new("sync").status();
        let started = Instant::now();
        let limit = self.options.quiet_wait.min(self.quiet_budget.get());
        loop {
            let busy = background_busy_percent(Duration::from_secs(1));
            if busy < self.options.quiet_percent {
                break;
            }
            if started.elapsed() >= limit {
                log_phase(&format!(
                    "the machine is still {busy:.0} % busy with other work; measuring anyway"
                ));
                break;
            }
        }
        let waited = started.elapsed().saturating_sub(Duration::from_secs(1));
        self.quiet_budget
            .set(self.quiet_budget.get().saturating_sub(waited));
    }

    fn start_orchestrator(&self, redis: &RedisProcess) -> anyhow::Result<(Process, String)> {
        let port = try_free_port()?;
        let mut env = vec![
            ("REDIS_URL", redis.url()),
            ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("KEY_PREFIX", PREFIX.to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        env.extend(
            self.orchestrator_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone())),
        );
        let service = spawn(
            "orchestrator",
            &self.bins.orchestrator,
            &[],
            &env,
            self.dir
                .join(format!("orchestrator-{}.log", redis.fsync.as_str())),
        )?;
        Ok((service, format!("http://127.0.0.1:{port}")))
    }

    fn start_worker(
        &self,
        redis: &RedisProcess,
        prefix: &str,
        worker_id: &str,
        work_ms: u64,
        concurrency: Option<u32>,
    ) -> anyhow::Result<Process> {
        let mut env = vec![
            ("REDIS_URL", redis.url()),
            ("KEY_PREFIX", prefix.to_owned()),
            ("WORKER_ID", worker_id.to_owned()),
            ("WORKER_WORK", format!("{work_ms}ms")),
            ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        env.extend(self.worker_env.iter().map(|(k, v)| (k.as_str(), v.clone())));
        if let Some(concurrency) = concurrency {
            env.push(("WORKER_CONCURRENCY", concurrency.to_string()));
        }
        spawn(
            worker_id,
            &self.bins.worker,
            &[],
            &env,
            self.dir.join(format!("{worker_id}.log")),
        )
    }
}

/// Starts `program` with `args` and extra environment `env`, stdout and stderr to `log`.
pub(super) fn spawn(
    name: &str,
    program: &Path,
    args: &[&str],
    env: &[(&str, String)],
    log: PathBuf,
) -> anyhow::Result<Process> {
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    Process::spawn(name, &mut command, Log::Create(log))
}

/// Waits until `url` answers 2xx (any path; a 404/405 also proves the server is up).
pub(super) async fn wait_http(
    url: &str,
    service: &mut Process,
    within: Duration,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let deadline = Instant::now() + within;
    loop {
        service.ensure_running()?;
        if client.get(url).send().await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{url} did not answer within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU counters at one instant.
struct CpuSnapshot {
    at: Instant,
    machine: MachineCpu,
    server: f64,
    redis: f64,
    redis_children: f64,
    generator: f64,
}

async fn snapshot(redis: &RedisProcess, servers: &[&Process], generator: f64) -> CpuSnapshot {
    let redis_cpu = redis.cpu_seconds().await.unwrap_or((0.0, 0.0));
    CpuSnapshot {
        at: Instant::now(),
        machine: MachineCpu::now(),
        server: servers.iter().map(|s| s.cpu_seconds().unwrap_or(0.0)).sum(),
        redis: redis_cpu.0,
        redis_children: redis_cpu.1,
        generator,
    }
}

fn cpu_use(before: &CpuSnapshot, after: &CpuSnapshot) -> CpuUse {
    let server_s = after.server - before.server;
    let redis_s = after.redis - before.redis;
    let redis_rewrite_s = after.redis_children - before.redis_children;
    let generator_s = after.generator - before.generator;
    let busy = after.machine.busy_since(&before.machine);
    CpuUse {
        wall_s: after.at.duration_since(before.at).as_secs_f64(),
        server_s,
        redis_s,
        redis_rewrite_s,
        generator_s,
        other_s: (busy - server_s - redis_s - redis_rewrite_s - generator_s).max(0.0),
    }
}

fn self_cpu() -> f64 {
    testkit::process::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

pub(super) fn queue(prefix: &str) -> Queue {
    Queue::new(QueueConfig {
        keys: Keys::new(prefix),
        ..QueueConfig::default()
    })
}

/// Waits until nothing is queued, in flight or scheduled for retry.
async fn wait_drained(
    queue: &Queue,
    conn: &mut MultiplexedConnection,
    poll: Duration,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let stats = queue.stats(conn, Duration::from_secs(3)).await?;
        let queued: u64 = stats.queued.iter().sum();
        let in_flight: u64 = stats.in_flight.iter().sum();
        if queued == 0 && in_flight == 0 && stats.retry_scheduled == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the queue did not drain within {within:?}: {queued} queued, {in_flight} in flight"
        );
        tokio::time::sleep(poll).await;
    }
}

/// Reads `fields` (millisecond timestamps) of every task; missing values are `None`.
async fn task_times(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    ids: &[TaskId],
    fields: &[&str],
) -> anyhow::Result<Vec<Vec<Option<i64>>>> {
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(2000) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("HMGET").arg(keys.task(id)).arg(fields);
        }
        let replies: Vec<Vec<Option<String>>> = pipe.query_async(conn).await?;
        rows.extend(replies.into_iter().map(|row| {
            row.into_iter()
                .map(|v| v.and_then(|v| v.parse().ok()))
                .collect()
        }));
    }
    Ok(rows)
}

pub(super) async fn bulk_enqueue(
    queue: &Queue,
    conn: &MultiplexedConnection,
    n: u64,
) -> anyhow::Result<Vec<TaskId>> {
    let description = Description::parse(DESCRIPTION.to_owned())?;
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|_| {
            let mut conn = conn.clone();
            let description = &description;
            async move {
                queue
                    .enqueue(&mut conn, description, Priority::DEFAULT, None)
                    .await
            }
        })
        .buffer_unordered(1024)
        .collect()
        .await;
    results
        .into_iter()
        .map(|r| match r? {
            EnqueueOutcome::Created(record) => Ok(record.id),
            EnqueueOutcome::Replayed(id) => Ok(id),
        })
        .collect()
}

/// The `task_executed` lines in a worker's log.
pub(super) fn count_executions(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| TaskExecuted::from_log_line(l).is_some())
        .count() as u64
}

/// When each task's first execution started, from the workers' `task_executed` lines: the
/// line's timestamp (written as the execution ends) minus its `duration_ms`.
fn execution_starts<'a>(logs: impl Iterator<Item = &'a Path>) -> HashMap<String, SystemTime> {
    let mut starts = HashMap::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let Some(Logged {
                timestamp: Some(ended),
                event,
            }) = TaskExecuted::logged_from_line(line)
            else {
                continue;
            };
            let ended = SystemTime::from(ended);
            let started = ended - Duration::from_secs_f64(event.duration_ms.max(0.0) / 1000.0);
            starts.entry(event.task_id).or_insert(started);
        }
    }
    starts
}

fn summary(mut values: Vec<f64>, resolution_ms: f64) -> LatencySummary {
    values.sort_by(f64::total_cmp);
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    LatencySummary {
        samples: values.len() as u64,
        p50_ms: quantile(&values, 0.5),
        p99_ms: quantile(&values, 0.99),
        max_ms: values.last().copied().unwrap_or(0.0),
        mean_ms: mean,
        resolution_ms,
    }
}

fn top_commands(stats: &BTreeMap<String, CommandStat>) -> Vec<(String, u64, u64)> {
    let mut rows: Vec<(String, u64, u64)> = stats
        .iter()
        .map(|(name, s)| (name.clone(), s.calls, s.usec))
        .collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.2));
    rows.truncate(12);
    rows
}

/// The progress line on a terminal (`None` when stderr is not one: plain lines then).
pub(crate) fn progress() -> Option<&'static indicatif::ProgressBar> {
    static PROGRESS: std::sync::OnceLock<Option<indicatif::ProgressBar>> =
        std::sync::OnceLock::new();
    PROGRESS
        .get_or_init(|| {
            use std::io::IsTerminal;
            std::io::stderr().is_terminal().then(|| {
                let bar = indicatif::ProgressBar::new_spinner();
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{spinner} bench [{elapsed_precise}] step {pos}: {msg}",
                ) {
                    bar.set_style(style);
                }
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            })
        })
        .as_ref()
}

/// A new step of the run: a line in the log, and the progress line's message on a terminal.
pub(super) fn log_phase(message: &str) {
    match progress() {
        Some(bar) => {
            bar.println(format!("bench: {message}"));
            bar.inc(1);
            bar.set_message(message.to_owned());
        }
        None => eprintln!("bench: {message}"),
    }
}

async fn ceilings(
    ctx: &Ctx<'_>,
    redis: &RedisProcess,
    mode: &mut ModeReport,
) -> anyhow::Result<()> {
    redis.reset().await?;
    let sha = redis.load_script(&enqueue_script_source()).await?;
    let keys = Keys::new("rb");
    let task_key = format!("{}__rand_int__", keys.task_prefix());
    let stream = keys.stream(Priority::DEFAULT);
    let evalsha: Vec<&str> = vec![
        "EVALSHA",
        sha.as_str(),
        "2",
        task_key.as_str(),
        stream.as_str(),
        "__rand_int__",
        DESCRIPTION,
        "5",
        "5",
        "86400",
        taskq::model::RECORD_VERSION,
    ];
    let xadd = ["XADD", stream.as_str(), "*", "t", "__rand_int__"];
    let runs: [(&str, u32, u64, &[&str]); 4] = [
        ("EVALSHA enqueue script", 1, 150_000, &evalsha),
        ("EVALSHA enqueue script", 16, 400_000, &evalsha),
        ("XADD", 1, 150_000, &xadd),
        ("XADD", 16, 1_000_000, &xadd),
    ];
    for (name, pipeline, requests, command) in runs {
        log_phase(&format!("redis-benchmark {name} -P {pipeline}"));
        ctx.wait_quiet();
        let port = redis.port();
        let name = name.to_owned();
        let command: Vec<String> = command.iter().map(|s| (*s).to_owned()).collect();
        let result = tokio::task::spawn_blocking(move || {
            let command: Vec<&str> = command.iter().map(String::as_str).collect();
            redis_benchmark::run(port, &name, 50, pipeline, requests, &command)
        })
        .await??;
        mode.redis_benchmark.push(result);
        redis.reset().await?;
    }

    log_phase("bare enqueue server under wrk");
    let (mut bare, url) =
        start_bare_server(ctx, redis, &format!("bare-{}.log", redis.fsync.as_str())).await?;
    for &connections in &ctx.options.wrk_connections {
        let measurement = wrk_measurement(
            ctx,
            redis,
            &bare,
            &url,
            "bare axum enqueue server",
            connections,
        )
        .await?;
        mode.bare.push(measurement);
        redis.reset().await?;
    }
    let _ = bare.stop(Duration::from_secs(5));
    redis.reset().await?;
    Ok(())
}

async fn wrk_measurement(
    ctx: &Ctx<'_>,
    redis: &RedisProcess,
    server: &Process,
    url: &str,
    name: &str,
    connections: u32,
) -> anyhow::Result<WrkMeasurement> {
    let script = ctx.dir.join("post.lua");
    wrk::write_post_script(&script, &post_body())?;
    let warmup = WrkLoad {
        threads: ctx.options.wrk_threads,
        connections,
        duration: WARMUP,
    };
    let load = WrkLoad {
        duration: ctx.options.duration,
        ..warmup.clone()
    };
    let (u, s) = (url.to_owned(), script.clone());
    ctx.wait_quiet();
    tokio::task::spawn_blocking(move || wrk::run(&u, &s, &warmup)).await??;
    let before = snapshot(redis, &[server], 0.0).await;
    let (u, s) = (url.to_owned(), script.clone());
    let result = tokio::task::spawn_blocking(move || wrk::run(&u, &s, &load)).await??;
    let after = snapshot(redis, &[server], result.wrk_cpu_s).await;
    Ok(WrkMeasurement {
        server: name.to_owned(),
        connections,
        cpu: cpu_use(&before, &after),
        server_peak_rss_kib: server.peak_rss_kib().unwrap_or(0),
        wrk: result,
    })
}

/// Starts the bare enqueue server (`xtask bare-enqueue`) on `redis`, its output to `log`;
/// returns it once it answers, with its `/tasks` URL.
async fn start_bare_server(
    ctx: &Ctx<'_>,
    redis: &RedisProcess,
    log: &str,
) -> anyhow::Result<(Process, String)> {
    let port = try_free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let redis_url = redis.url();
    let mut args = vec!["bare-enqueue", redis_url.as_str(), listen.as_str()];
    // The orchestrator's runtime threads, when the run sets them, so the two are measured alike.
    if let Some((_, threads)) = ctx
        .orchestrator_env
        .iter()
        .find(|(k, _)| k == "ORCHESTRATOR_THREADS")
    {
        args.extend(["--threads", threads.as_str()]);
    }
    let mut bare = spawn(
        "bare_enqueue",
        &ctx.bins.xtask,
        &args,
        &[],
        ctx.dir.join(log),
    )?;
    let url = format!("http://{listen}/tasks");
    wait_http(&url, &mut bare, Duration::from_secs(10)).await?;
    // A reference that fails its requests would make every ratio against it meaningless.
    let answer = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .post(&url)
        .header("content-type", "application/json")
        .body(post_body())
        .send()
        .await?;
    anyhow::ensure!(
        answer.status() == reqwest::StatusCode::CREATED,
        "the bare enqueue server answered {} to a valid POST (see {})",
        answer.status(),
        ctx.dir.join(log).display()
    );
    Ok((bare, url))
}

/// One open-model run at `rate` against `url` (served by `server`) while two fresh workers
/// consume the tasks under `prefix`, until they are drained; the workers are returned still
/// running (their logs hold the executions).
struct OpenLoopRun {
    http: crate::perf::open_loop::FixedRateResult,
    cpu: CpuUse,
    redis_stalls: Vec<crate::perf::redis_server::LatencyEvent>,
    workers: Vec<Process>,
}

async fn open_loop_with_workers(
    ctx: &Ctx<'_>,
    redis: &RedisProcess,
    server: &Process,
    url: String,
    rate: u32,
    prefix: &str,
    label: &str,
) -> anyhow::Result<(OpenLoopRun, MultiplexedConnection)> {
    let queue = queue(prefix);
    let mut conn = redis.connect().await?;
    queue.ensure_groups(&mut conn).await?;
    let mut workers = Vec::new();
    for i in 0..2 {
        workers.push(ctx.start_worker(redis, prefix, &format!("{label}-{i}"), 0, None)?);
    }
    wait_live_workers(&queue, &mut conn, 2).await?;
    let load = FixedRate {
        url,
        body: post_body(),
        rate_per_s: rate,
        warmup: WARMUP,
        duration: ctx.options.duration,
    };
    let servers: Vec<&Process> = std::iter::once(server).chain(workers.iter()).collect();
    ctx.wait_quiet();
    redis.reset_latency().await?;
    let before = snapshot(redis, &servers, self_cpu()).await;
    let http = tokio::task::spawn_blocking(move || open_loop::run(&load)).await??;
    let after = snapshot(redis, &servers, self_cpu()).await;
    let redis_stalls = redis.latency_events().await?;
    wait_drained(&queue, &mut conn, Duration::from_millis(50), DRAIN_TIMEOUT).await?;
    Ok((
        OpenLoopRun {
            http,
            cpu: cpu_use(&before, &after),
            redis_stalls,
            workers,
        },
        conn,
    ))
}

async fn fixed_rates(
    ctx: &Ctx<'_>,
    redis: &RedisProcess,
    orchestrator: &Process,
    base: &str,
    mode: &mut ModeReport,
) -> anyhow::Result<()> {
    let fsync = redis.fsync.as_str();
    let queue = queue(PREFIX);
    for &rate in &ctx.options.fixed_rates {
        log_phase(&format!("orchestrator at a fixed {rate}/s ({fsync})"));
        // Every rate starts from the same state: no keys, a freshly rewritten AOF, new workers.
        redis.reset().await?;
        let (run, mut conn) = open_loop_with_workers(
            ctx,
            redis,
            orchestrator,
            format!("{base}/tasks"),
            rate,
            PREFIX,
            &format!("bench-{fsync}-fixed{rate}"),
        )
        .await?;
        let OpenLoopRun {
            http,
            cpu,
            redis_stalls,
            mut workers,
        } = run;
        let ids: Vec<TaskId> = http
            .tasks
            .iter()
            .filter_map(|(id, _, _)| TaskId::parse(id).ok())
            .collect();
        let times =
            task_times(&mut conn, queue.keys(), &ids, &["created_at", "started_at"]).await?;
        let waits: Vec<f64> = times
            .iter()
            .filter_map(|row| Some((row.get(1).copied()?? - row.first().copied()??) as f64))
            .collect();
        // The same wait to the microsecond, bracketed: the task was created after its POST was
        // sent and before the answer arrived; it started when the worker's `task_executed` line
        // says (its timestamp minus the execution's duration). Same machine, same clock.
        let starts = execution_starts(workers.iter().filter_map(Process::log_path));
        let millis_between = |from: SystemTime, to: SystemTime| match to.duration_since(from) {
            Ok(d) => d.as_secs_f64() * 1000.0,
            Err(e) => -e.duration().as_secs_f64() * 1000.0,
        };
        let (upper, lower): (Vec<f64>, Vec<f64>) = http
            .tasks
            .iter()
            .filter_map(|(id, sent_at, answered_at)| {
                let start = *starts.get(id)?;
                Some((
                    millis_between(*sent_at, start),
                    millis_between(*answered_at, start),
                ))
            })
            .unzip();
        mode.fixed_rate.push(FixedRateMeasurement {
            workers: workers.len(),
            enqueue_to_start: (!waits.is_empty()).then(|| summary(waits, 1.0)),
            send_to_start: (!upper.is_empty()).then(|| summary(upper, 0.001)),
            answer_to_start: (!lower.is_empty()).then(|| summary(lower, 0.001)),
            cpu,
            redis_stalls,
            http,
        });
        for worker in &mut workers {
            let _ = worker.stop(Duration::from_secs(10));
        }
    }
    redis.reset().await?;
    Ok(())
}

/// The bare enqueue server at the highest fixed rate, with two workers consuming its tasks (its
/// own key prefix): the same load on Redis from the workers, only the HTTP server differs. What
/// the bare server shows at that rate is Redis's (and the machine's), not the orchestrator's.
async fn bare_fixed_rate(
    ctx: &Ctx<'_>,
    redis: &RedisProcess,
    mode: &mut ModeReport,
) -> anyhow::Result<()> {
    let Some(&rate) = ctx.options.fixed_rates.iter().max() else {
        return Ok(());
    };
    let fsync = redis.fsync.as_str();
    log_phase(&format!(
        "bare enqueue server at a fixed {rate}/s ({fsync})"
    ));
    redis.reset().await?;
    let (mut bare, url) = start_bare_server(ctx, redis, &format!("bare-fixed-{fsync}.log")).await?;
    let (mut run, _conn) = open_loop_with_workers(
        ctx,
        redis,
        &bare,
        url,
        rate,
        BARE_PREFIX,
        &format!("bench-{fsync}-bare-fixed{rate}"),
    )
    .await?;
    mode.bare_fixed_rate.push(FixedRateMeasurement {
        workers: run.workers.len(),
        enqueue_to_start: None,
        send_to_start: None,
        answer_to_start: None,
        cpu: run.cpu,
        redis_stalls: run.redis_stalls,
        http: run.http,
    });
    for worker in &mut run.workers {
        let _ = worker.stop(Duration::from_secs(10));
    }
    let _ = bare.stop(Duration::from_secs(5));
    redis.reset().await?;
    Ok(())
}

async fn wait_live_workers(
    queue: &Queue,
    conn: &mut MultiplexedConnection,
    n: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // A stats call also proves the groups exist (XINFO answers for each stream).
        let groups_ok = queue.ensure_groups(conn).await.is_ok();
        let stats = queue.stats(conn, Duration::from_secs(3)).await?;
        if groups_ok && stats.live_workers >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{n} workers did not report live within 15 s ({} live)",
            stats.live_workers
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bare batched consumer ([`super::bare_consumer`]) drains the same tasks as the workers,
/// from the same Redis: the ceiling each worker drain is read against, measured in the same run.
async fn bare_drains(
    ctx: &Ctx<'_>,
    redis: &RedisProcess,
    mode: &mut ModeReport,
) -> anyhow::Result<()> {
    let fsync = redis.fsync.as_str();
    let queue = queue(PREFIX);
    for &n in &ctx.options.drain_workers {
        log_phase(&format!(
            "drain of {} no-op tasks with {n} bare consumers ({fsync})",
            ctx.options.drain_tasks
        ));
        redis.reset().await?;
        let mut conn = redis.connect().await?;
        queue.ensure_groups(&mut conn).await?;
        let ids = bulk_enqueue(&queue, &conn, ctx.options.drain_tasks).await?;
        ctx.wait_quiet();
        redis.reset_stats().await?;
        let before = snapshot(redis, &[], 0.0).await;
        let url = redis.url();
        let mut consumers = Vec::new();
        for i in 0..n {
            let name = format!("bare-{i}");
            consumers.push(spawn(
                "bare_consume",
                &ctx.bins.xtask,
                &["bare-consume", url.as_str(), PREFIX, name.as_str()],
                &[],
                ctx.dir.join(format!("bare-consume-{fsync}-{n}-{i}.log")),
            )?);
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut finished = 0u64;
        let mut consumer_cpu_s = 0.0;
        for consumer in &mut consumers {
            let code = loop {
                if let Some(code) = consumer.exited() {
                    break code;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the bare consumers did not drain within {DRAIN_TIMEOUT:?}"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            anyhow::ensure!(
                code == 0,
                "a bare consumer failed (exit {code}): {}",
                consumer.log_text()
            );
            let text = consumer.log_text();
            let mut fields = text.split_whitespace();
            finished += fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            consumer_cpu_s += fields
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
        let mut after = snapshot(redis, &[], 0.0).await;
        let drain_s = after.at.duration_since(before.at).as_secs_f64();
        after.server = consumer_cpu_s;
        anyhow::ensure!(
            finished == ids.len() as u64,
            "the bare consumers finished {finished} of {} tasks",
            ids.len()
        );
        mode.bare_drain.push(BareDrainResult {
            consumers: n,
            tasks: finished,
            drain_s,
            rate_per_s: finished as f64 / drain_s,
            cpu: cpu_use(&before, &after),
        });
    }
    Ok(())
}

async fn drains(ctx: &Ctx<'_>, redis: &RedisProcess, mode: &mut ModeReport) -> anyhow::Result<()> {
    let fsync = redis.fsync.as_str();
    let queue = queue(PREFIX);
    bare_drains(ctx, redis, mode).await?;
    for &concurrency in &ctx.options.drain_concurrency {
        for &n_workers in &ctx.options.drain_workers {
            log_phase(&format!(
                "drain of {} no-op tasks with {n_workers} workers, WORKER_CONCURRENCY={concurrency} ({fsync})",
                ctx.options.drain_tasks
            ));
            redis.reset().await?;
            let mut conn = redis.connect().await?;
            queue.ensure_groups(&mut conn).await?;
            let enqueue_started = Instant::now();
            let ids = bulk_enqueue(&queue, &conn, ctx.options.drain_tasks).await?;
            let bulk_enqueue_per_s = ids.len() as f64 / enqueue_started.elapsed().as_secs_f64();
            ctx.wait_quiet();
            redis.reset_stats().await?;
            let before = snapshot(redis, &[], 0.0).await;
            let mut workers = Vec::new();
            for i in 0..n_workers {
                workers.push(ctx.start_worker(
                    redis,
                    PREFIX,
                    &format!("bench-{fsync}-c{concurrency}-drain{n_workers}-{i}"),
                    0,
                    Some(concurrency),
                )?);
            }
            wait_drained(&queue, &mut conn, Duration::from_millis(20), DRAIN_TIMEOUT).await?;
            let drain_s = before.at.elapsed().as_secs_f64();
            let refs: Vec<&Process> = workers.iter().collect();
            let mut after = snapshot(redis, &refs, 0.0).await;
            after.at = before.at + Duration::from_secs_f64(drain_s);
            let commands = redis.command_stats().await?;
            let worker_peak_rss_kib = workers
                .iter()
                .filter_map(Process::peak_rss_kib)
                .max()
                .unwrap_or(0);
            for worker in &mut workers {
                let _ = worker.stop(Duration::from_secs(10));
            }
            let executions_logged = workers
                .iter()
                .filter_map(Process::log_path)
                .map(count_executions)
                .sum();
            let times = task_times(
                &mut conn,
                queue.keys(),
                &ids,
                &["started_at", "finished_at"],
            )
            .await?;
            let first = times
                .iter()
                .filter_map(|r| r.first().copied().flatten())
                .min();
            let last = times
                .iter()
                .filter_map(|r| r.get(1).copied().flatten())
                .max();
            let redis_clock_s = match (first, last) {
                (Some(a), Some(b)) => (b - a) as f64 / 1000.0,
                _ => 0.0,
            };
            mode.drain.push(DrainResult {
                workers: n_workers,
                concurrency,
                tasks: ids.len() as u64,
                bulk_enqueue_per_s,
                drain_s,
                rate_per_s: ids.len() as f64 / drain_s,
                redis_clock_s,
                executions_logged,
                worker_peak_rss_kib,
                cpu: cpu_use(&before, &after),
                redis_commands: top_commands(&commands),
            });
        }
    }
    redis.reset().await?;
    Ok(())
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn recovery(ctx: &Ctx<'_>, report: &mut Report) -> anyhow::Result<()> {
    const HELD: usize = 8;
    const WORK_MS: u64 = 2000;
    let redis = RedisProcess::start(Fsync::Always, &ctx.dir).await?;
    let queue = queue(RECOVERY_PREFIX);
    let keys = queue.keys().clone();
    for run in 0..ctx.options.recovery_runs {
        log_phase(&format!("worker-kill recovery, run {}", run + 1));
        redis.reset().await?;
        let mut conn = redis.connect().await?;
        queue.ensure_groups(&mut conn).await?;
        let victim_id = format!("bench-victim-{run}");
        let rescuer_id = format!("bench-rescuer-{run}");
        let mut victim = ctx.start_worker(&redis, RECOVERY_PREFIX, &victim_id, WORK_MS, None)?;
        wait_live_workers(&queue, &mut conn, 1).await?;
        let description = Description::parse(DESCRIPTION.to_owned())?;
        let mut ids = Vec::new();
        for _ in 0..HELD {
            match queue
                .enqueue(&mut conn, &description, Priority::DEFAULT, None)
                .await?
            {
                EnqueueOutcome::Created(record) => ids.push(record.id),
                EnqueueOutcome::Replayed(id) => ids.push(id),
            }
        }
        wait_for_tasks(&mut conn, &keys, &ids, |status, worker| {
            status == "running" && worker == victim_id
        })
        .await
        .context("the victim worker did not start its tasks")?;
        let mut rescuer = ctx.start_worker(&redis, RECOVERY_PREFIX, &rescuer_id, WORK_MS, None)?;
        wait_live_workers(&queue, &mut conn, 2).await?;
        // Spread the kill over the heartbeat period across runs: the recovery time depends on
        // how old the victim's last heartbeat is and on where the rescuer's next pass falls.
        let offset = run as u64 * 1000 / ctx.options.recovery_runs.max(1) as u64;
        tokio::time::sleep(Duration::from_millis(
            offset + rand::random_range(0..100u64),
        ))
        .await;
        let last_heartbeat: Option<f64> = redis::cmd("ZSCORE")
            .arg(keys.workers())
            .arg(&victim_id)
            .query_async(&mut conn)
            .await?;
        let killed_at = unix_ms();
        victim.kill();
        wait_for_tasks(&mut conn, &keys, &ids, |status, worker| {
            worker == rescuer_id && (status == "running" || status == "succeeded")
        })
        .await
        .context("the live worker did not take over")?;
        let restarted = task_times(&mut conn, &keys, &ids, &["started_at"]).await?;
        let restarted_at = restarted.iter().filter_map(|r| r[0]).max().unwrap_or(0);
        wait_for_tasks(&mut conn, &keys, &ids, |status, _| status == "succeeded").await?;
        let finished = task_times(&mut conn, &keys, &ids, &["finished_at"]).await?;
        let finished_at = finished.iter().filter_map(|r| r[0]).max().unwrap_or(0);
        let _ = rescuer.stop(Duration::from_secs(10));
        report.recovery.push(RecoveryResult {
            tasks_held: ids.len(),
            heartbeat_age_at_kill_ms: last_heartbeat.map_or(-1, |hb| killed_at - hb as i64),
            restarted_ms: restarted_at - killed_at,
            completed_ms: finished_at - killed_at,
            work_ms: WORK_MS,
        });
    }
    Ok(())
}

async fn wait_for_tasks(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    ids: &[TaskId],
    done: impl Fn(&str, &str) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(keys.task(id))
                .arg(&["status", "worker"]);
        }
        let rows: Vec<(Option<String>, Option<String>)> = pipe.query_async(conn).await?;
        if rows.iter().all(|(status, worker)| {
            done(
                status.as_deref().unwrap_or_default(),
                worker.as_deref().unwrap_or_default(),
            )
        }) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "tasks not there within 30 s: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn machine(background_busy_percent: f64) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        memory_gib: mem_kib / 1024.0 / 1024.0,
        kernel: version_of("uname", &["-sr"]),
        os,
        background_busy_percent,
    }
}

fn versions() -> Versions {
    Versions {
        rustc: version_of("rustc", &["--version"]),
        redis_server: version_of("redis-server", &["--version"]),
        wrk: version_of("wrk", &["-v"]),
        git: version_of("git", &["describe", "--always", "--dirty"]),
    }
}

/// Runs every phase `options` asks for and returns the report (targets filled in).
pub async fn run(options: &Options, command: String) -> anyhow::Result<Report> {
    let started = Instant::now();
    let generated_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let bins = Bins::find(&options.bin_dir)?;
    let dir = options.work_dir.clone();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let ctx = Ctx {
        options,
        quiet_budget: std::cell::Cell::new(options.quiet_budget),
        bins,
        dir,
        worker_env: env_pairs(&options.worker_env)?,
        orchestrator_env: env_pairs(&options.orchestrator_env)?,
    };
    let background = background_busy_percent(Duration::from_secs(2));
    let mut settings = vec![
        "orchestrator and workers: release builds, defaults unless listed, `LOG_FORMAT=json` and `RUST_LOG=info` with stdout to a file".to_owned(),
        "workers: `WORKER_WORK=0ms` (no-op), so each execution costs its claim, its `task_executed` line and its finish; drains also set `WORKER_CONCURRENCY` as shown; recovery runs use `WORKER_WORK=2s`".to_owned(),
        format!(
            "wrk: {} thread(s), {} connections, {} s measured after a {} s warm-up; fixed rates: {} s measured after {} s",
            options.wrk_threads,
            options
                .wrk_connections
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" and "),
            options.duration.as_secs(),
            WARMUP.as_secs(),
            options.duration.as_secs(),
            WARMUP.as_secs()
        ),
    ];
    for (k, v) in &ctx.worker_env {
        settings.push(format!("workers: `{k}={v}`"));
    }
    for (k, v) in &ctx.orchestrator_env {
        settings.push(format!("orchestrator: `{k}={v}`"));
    }
    let mut report = Report {
        generated_at,
        run_seconds: 0.0,
        command,
        machine: machine(background),
        versions: versions(),
        settings,
        modes: Vec::new(),
        recovery: Vec::new(),
        targets: Vec::new(),
    };
    let wants = |phase: Phase| options.phases.contains(&phase);
    for &fsync in &options.fsync {
        let mut redis = RedisProcess::start(fsync, &ctx.dir).await?;
        let mut mode = ModeReport {
            fsync,
            redis_command: redis.command.clone(),
            redis_benchmark: Vec::new(),
            bare: Vec::new(),
            post: Vec::new(),
            fixed_rate: Vec::new(),
            drain: Vec::new(),
            bare_drain: Vec::new(),
            bare_fixed_rate: Vec::new(),
            orchestrator_peak_rss_kib: 0,
            shards: Vec::new(),
        };
        if wants(Phase::Ceilings) {
            ceilings(&ctx, &redis, &mut mode).await?;
        }
        if wants(Phase::Post) || wants(Phase::Fixed) {
            let (mut orchestrator, base) = ctx.start_orchestrator(&redis)?;
            wait_http(
                &format!("{base}/healthz"),
                &mut orchestrator,
                Duration::from_secs(10),
            )
            .await?;
            if wants(Phase::Post) {
                for &connections in &options.wrk_connections {
                    log_phase(&format!(
                        "orchestrator under wrk, {connections} connections ({})",
                        fsync.as_str()
                    ));
                    redis.reset().await?;
                    let measurement = wrk_measurement(
                        &ctx,
                        &redis,
                        &orchestrator,
                        &format!("{base}/tasks"),
                        "orchestrator",
                        connections,
                    )
                    .await?;
                    mode.post.push(measurement);
                }
                redis.reset().await?;
            }
            if wants(Phase::Fixed) {
                fixed_rates(&ctx, &redis, &orchestrator, &base, &mut mode).await?;
                bare_fixed_rate(&ctx, &redis, &mut mode).await?;
            }
            mode.orchestrator_peak_rss_kib = orchestrator.peak_rss_kib().unwrap_or(0);
            let _ = orchestrator.stop(Duration::from_secs(10));
        }
        if wants(Phase::Drain) {
            drains(&ctx, &redis, &mut mode).await?;
        }
        redis.stop();
        if wants(Phase::Shards) {
            for &shards in &options.shards {
                mode.shards
                    .push(crate::perf::shards::measure(&ctx, fsync, shards).await?);
            }
        }
        report.modes.push(mode);
    }
    if wants(Phase::Recovery) && options.recovery_runs > 0 {
        recovery(&ctx, &mut report).await?;
    }
    report.run_seconds = started.elapsed().as_secs_f64();
    report.targets = targets(&report);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_are_counted_and_timed_from_task_executed_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("worker.log");
        let lines = [
            r#"{"timestamp":"2025-01-02T03:04:05.500000Z","level":"INFO","fields":{"message":"worker started"},"target":"worker::runner"}"#,
            r#"{"timestamp":"2025-01-02T03:04:05.678901Z","level":"INFO","event":"task_executed","task_id":"t1","attempt":1,"worker_id":"w","outcome":"retrying","duration_ms":100.0,"message":"task executed","target":"worker::runner"}"#,
            r#"{"timestamp":"2025-01-02T03:04:06.000000Z","level":"INFO","event":"task_executed","task_id":"t1","attempt":2,"worker_id":"w","outcome":"succeeded","duration_ms":1.0,"message":"task executed","target":"worker::runner"}"#,
            r#"{"timestamp":"2025-01-02T03:04:06.100000Z","level":"WARN","message":"no task_executed here","target":"worker::runner"}"#,
        ];
        std::fs::write(&log, lines.join("\n")).unwrap();

        assert_eq!(count_executions(&log), 2);
        let starts = execution_starts(std::iter::once(log.as_path()));
        assert_eq!(starts.len(), 1);
        let first_start = UNIX_EPOCH + Duration::from_nanos(1_735_787_045_578_901_000);
        assert_eq!(starts["t1"], first_start, "the first execution's start");
    }
}
