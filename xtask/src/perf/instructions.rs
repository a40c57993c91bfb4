//! `cargo xtask redis-cost`: how many instructions Redis executes per drained no-op task, for the
//! workers and for the bench's bare batched consumer ([`super::bare_consumer`]), counted by
//! valgrind's callgrind. Rates on a shared 2-core machine move by a third between identical
//! runs; instruction counts repeat, so a change to the queue protocol can be judged by one
//! command (docs/benchmarks.md, "A third sitting").
//!
//! The tasks are enqueued once into a plain `redis-server` (`appendfsync everysec`, the bench's
//! flags), its AOF rewritten and the data directory copied once per consumer kind. Each copy is
//! loaded by a `redis-server` under `valgrind --tool=callgrind --instr-atstart=no`; counting is
//! switched on (`callgrind_control -i on`) when the consumers start and off once the queue is
//! empty, so loading, start-up and shutdown are not counted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use taskq::Priority;
use taskq::keys::CONSUMER_GROUP;
use testkit::process::Exit;
use testkit::{Log, Process, RedisConfig, try_free_port};

use crate::perf::phases::{Bins, PREFIX, bulk_enqueue, count_executions, queue, spawn};
use crate::perf::redis_server::{Fsync, RedisProcess};

/// Options of `cargo xtask redis-cost`.
#[derive(Debug, Clone, clap::Args)]
pub struct CostOptions {
    /// Tasks enqueued, then drained by each kind of consumer.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    pub tasks: u64,
    /// Consumer processes of each kind (workers, bare consumers).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub consumers: u16,
    /// Directory holding release builds of `worker` and `xtask` (for `bare-consume`).
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Scratch directory for Redis data, callgrind output and logs (emptied first).
    #[arg(long, default_value = "target/redis-cost")]
    pub work_dir: PathBuf,
}

/// Who drains the queue.
#[derive(Debug, Clone, Copy)]
enum Consumers {
    Bare,
    Workers,
}

impl Consumers {
    fn name(self) -> &'static str {
        match self {
            Consumers::Bare => "bare",
            Consumers::Workers => "workers",
        }
    }
}

/// What one kind of consumer cost Redis.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    /// Instructions Redis executed while the consumers drained the queue.
    pub instructions: u64,
    /// Tasks drained.
    pub tasks: u64,
}

impl Cost {
    /// Instructions per task.
    pub fn per_task(&self) -> f64 {
        self.instructions as f64 / self.tasks.max(1) as f64
    }
}

/// Longest wait for Redis under valgrind to load its data, and for a drain.
const SLOW: Duration = Duration::from_secs(30 * 60);

/// Runs both drains and prints the instructions per task.
pub async fn run(options: &CostOptions) -> anyhow::Result<()> {
    let bins = Bins::find(&options.bin_dir)?;
    let work = &options.work_dir;
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("emptying {}", work.display()))?;
    }
    std::fs::create_dir_all(work)?;
    let data = prepare(options.tasks, work).await?;
    let mut costs = Vec::new();
    for kind in [Consumers::Bare, Consumers::Workers] {
        let cost = drain(kind, &bins, &data, options, work).await?;
        println!(
            "{:>8}: {} instructions for {} tasks: {:.0} per task",
            kind.name(),
            cost.instructions,
            cost.tasks,
            cost.per_task()
        );
        costs.push(cost);
    }
    println!(
        "Redis instructions per drained no-op task ({} consumers each, appendfsync everysec): \
         bare consumer {:.0}, workers {:.0}; the bare consumer's cost is {:.1} % of the workers'",
        options.consumers,
        costs[0].per_task(),
        costs[1].per_task(),
        100.0 * costs[0].per_task() / costs[1].per_task()
    );
    Ok(())
}

/// Enqueues `tasks` into a fresh Redis, rewrites its AOF and stops it; returns its data
/// directory.
async fn prepare(tasks: u64, work: &Path) -> anyhow::Result<PathBuf> {
    let dir = work.join("prepare");
    std::fs::create_dir_all(&dir)?;
    let redis = RedisProcess::start(Fsync::Everysec, &dir).await?;
    let queue = queue(PREFIX);
    let mut conn = redis.connect().await?;
    queue.ensure_groups(&mut conn).await?;
    println!("enqueueing {tasks} tasks");
    let ids = bulk_enqueue(&queue, &conn, tasks).await?;
    anyhow::ensure!(
        ids.len() as u64 == tasks,
        "enqueued {} of {tasks}",
        ids.len()
    );
    redis.rewrite_aof(&mut conn).await?;
    // SHUTDOWN answers by closing the connection.
    let _ = redis::cmd("SHUTDOWN").query_async::<()>(&mut conn).await;
    drop(redis);
    Ok(dir.join(format!("redis-{}", Fsync::Everysec.as_str())))
}

/// One kind of consumer drains a copy of `data` while callgrind counts Redis's instructions.
async fn drain(
    kind: Consumers,
    bins: &Bins,
    data: &Path,
    options: &CostOptions,
    work: &Path,
) -> anyhow::Result<Cost> {
    let copy = work.join(format!("data-{}", kind.name()));
    let status = Command::new("cp")
        .arg("-a")
        .arg(data)
        .arg(&copy)
        .status()
        .context("running cp")?;
    anyhow::ensure!(status.success(), "copying {} failed", data.display());
    let port = try_free_port()?;
    let out = work.join(format!("{}.callgrind", kind.name()));
    // The server's own command line (testkit's, as every test and the bench run it), under
    // valgrind.
    let server = RedisConfig::new()
        .persistence(Fsync::Everysec.persistence())
        .extra_args(taskq::keys::REDIS_TUNING_ARGS)
        .command(port, &copy);
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg("--instr-atstart=no")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(server.get_program())
        .args(server.get_args());
    let mut redis = Process::spawn(
        "redis-callgrind",
        &mut command,
        Log::Create(work.join(format!("redis-{}.log", kind.name()))),
    )?;
    let url = format!("redis://127.0.0.1:{port}");
    println!(
        "{}: loading {} under callgrind",
        kind.name(),
        copy.display()
    );
    let mut conn = wait_loaded(&url, &mut redis).await?;
    let pid = redis.pid().context("redis under valgrind has no pid")?;
    callgrind_control("on", pid)?;
    let started = Instant::now();
    let tasks = match kind {
        Consumers::Bare => drain_bare(bins, &url, options.consumers, work).await?,
        Consumers::Workers => {
            drain_workers(
                bins,
                &url,
                &mut conn,
                options.consumers,
                work,
                options.tasks,
            )
            .await?
        }
    };
    callgrind_control("off", pid)?;
    println!(
        "{}: {tasks} tasks drained in {:.0} s (under callgrind)",
        kind.name(),
        started.elapsed().as_secs_f64()
    );
    let _ = redis::cmd("SHUTDOWN")
        .arg("NOSAVE")
        .query_async::<()>(&mut conn)
        .await;
    redis.reap_by(Instant::now() + Duration::from_secs(120))?;
    let instructions = read_instructions(&out)?;
    Ok(Cost {
        instructions,
        tasks,
    })
}

/// Connects once Redis answers `PING` (not `LOADING`).
async fn wait_loaded(url: &str, redis: &mut Process) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let deadline = Instant::now() + SLOW;
    loop {
        redis.ensure_running()?;
        // A claim of many tasks holds Redis under valgrind for seconds: no reply may time out.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(SLOW));
        if let Ok(mut conn) = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            && redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok()
        {
            return Ok(conn);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "Redis did not load within {SLOW:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn callgrind_control(switch: &str, pid: u32) -> anyhow::Result<()> {
    let output = Command::new("callgrind_control")
        .args(["-i", switch, &pid.to_string()])
        .output()
        .context("running callgrind_control (Debian: apt-get install -y valgrind)")?;
    anyhow::ensure!(
        output.status.success(),
        "callgrind_control -i {switch} {pid} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The bare consumers drain until a read finds nothing; returns the tasks they finished.
async fn drain_bare(bins: &Bins, url: &str, n: u16, work: &Path) -> anyhow::Result<u64> {
    let mut consumers = Vec::new();
    for i in 0..n {
        let name = format!("bare-{i}");
        consumers.push(spawn(
            "bare_consume",
            &bins.xtask,
            &["bare-consume", url, PREFIX, name.as_str()],
            &[],
            work.join(format!("{name}.log")),
        )?);
    }
    let mut finished = 0;
    for consumer in &mut consumers {
        let exit = consumer.reap_by(Instant::now() + SLOW)?;
        anyhow::ensure!(
            matches!(exit, Exit::Exited(status) if status.success()),
            "a bare consumer failed ({exit:?}): {}",
            consumer.log_text()
        );
        finished += consumer
            .log_text()
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(finished)
}

/// Workers with the defaults (no-op tasks) drain until every task's `task_executed` line is in
/// their logs and nothing is pending (every outcome recorded); polled with a plain `XPENDING`,
/// not a script, so the poll costs Redis little.
async fn drain_workers(
    bins: &Bins,
    url: &str,
    conn: &mut MultiplexedConnection,
    n: u16,
    work: &Path,
    tasks: u64,
) -> anyhow::Result<u64> {
    let mut workers = Vec::new();
    for i in 0..n {
        let name = format!("worker-{i}");
        let env = [
            ("REDIS_URL", url.to_owned()),
            ("KEY_PREFIX", PREFIX.to_owned()),
            ("WORKER_ID", name.clone()),
            ("WORKER_WORK", "0ms".to_owned()),
            ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            // Redis under valgrind is tens of times slower: no call may time out.
            ("REDIS_TIMEOUT", "120s".to_owned()),
        ];
        workers.push(spawn(
            &name,
            &bins.worker,
            &[],
            &env,
            work.join(format!("{name}.log")),
        )?);
    }
    let stream = queue(PREFIX).keys().stream(Priority::DEFAULT);
    let deadline = Instant::now() + SLOW;
    loop {
        for worker in &mut workers {
            worker.ensure_running()?;
        }
        // XPENDING's summary: the count, then the smallest and largest ids and the consumers.
        let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(CONSUMER_GROUP)
            .query_async(conn)
            .await?;
        let executed = executions(&workers);
        if executed >= tasks && pending.0 == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the workers did not drain within {SLOW:?}: {executed} of {tasks} executed, {} pending",
            pending.0
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for worker in &mut workers {
        let _ = worker.stop(Duration::from_secs(30));
    }
    let executed = executions(&workers);
    anyhow::ensure!(
        executed == tasks,
        "the workers logged {executed} executions of {tasks} tasks"
    );
    Ok(executed)
}

/// The `task_executed` lines in the workers' logs.
fn executions(workers: &[Process]) -> u64 {
    workers
        .iter()
        .filter_map(Process::log_path)
        .map(count_executions)
        .sum()
}

/// The instructions callgrind counted (`totals:` or `summary:` line of its output).
fn read_instructions(out: &Path) -> anyhow::Result<u64> {
    let text =
        std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
    parse_instructions(&text).with_context(|| format!("no instruction total in {}", out.display()))
}

fn parse_instructions(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_read_from_the_last_totals_or_summary_line() {
        let out =
            "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nfn=main\n3 10\nsummary: 12345\n";
        assert_eq!(parse_instructions(out), Some(12345));
        assert_eq!(parse_instructions("totals: 7 3\n"), Some(7));
        assert_eq!(parse_instructions("events: Ir\n"), None);
    }
}
