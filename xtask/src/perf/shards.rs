//! Scale-out by shard count (`cargo xtask bench --phases shards --shards 1,2,3`): for each count
//! S, a Redis Cluster of S primaries (local `redis-server`s, no replicas, the mode's
//! `appendfsync`) with `QUEUE_PARTITIONS=S`, the orchestrator and two workers on
//! `REDIS_CLUSTER_URLS`, and:
//!
//! - **POST**: the orchestrator under wrk (the largest `--wrk-connections`), the tasks it
//!   accepted left queued;
//! - **drain**: two workers (default settings, no-op tasks) started on that backlog, timed until
//!   the queue is empty.
//!
//! Each records the Redis CPU per task summed over the primaries and each primary's share of
//! it: on this 2-core machine throughput cannot grow with shards (every process shares the two
//! cores); the per-task cost and its spread over the primaries are what the figures show.

use std::time::{Duration, Instant};

use anyhow::Context;
use taskq::Partitions;
use testkit::{Process, RedisCluster};

use super::phases::{Ctx, log_phase, spawn, wait_http};
use super::redis_server::Fsync;
use super::report::ShardResult;
use super::wrk::{self, WrkLoad};

/// Redis CPU seconds (user + system, main process) of every node, and the script calls
/// (`EVALSHA`) all nodes served.
async fn nodes_cpu(cluster: &RedisCluster) -> anyhow::Result<(Vec<f64>, u64)> {
    let mut seconds = Vec::new();
    let mut scripts = 0;
    for node in cluster.nodes() {
        let mut conn = redis::Client::open(node.url())?
            .get_multiplexed_async_connection()
            .await?;
        let info: String = redis::cmd("INFO").arg("all").query_async(&mut conn).await?;
        let field = |name: &str| xtask::tools::info_field(&info, name);
        let number = |name: &str| {
            field(name)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        seconds.push(number("used_cpu_user") + number("used_cpu_sys"));
        // cmdstat_evalsha:calls=N,usec=...
        scripts += field("cmdstat_evalsha")
            .and_then(|v| {
                v.strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
    }
    Ok((seconds, scripts))
}

fn cluster_env(cluster: &RedisCluster, shards: usize) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_CLUSTER_URLS", cluster.urls()),
        ("QUEUE_PARTITIONS", shards.to_string()),
        ("KEY_PREFIX", super::phases::PREFIX.to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]
}

/// Tasks queued or running, over every partition.
async fn waiting(
    partitions: &Partitions,
    conn: &mut taskq::support::RedisConn,
) -> anyhow::Result<u64> {
    let stats = partitions.stats(conn, Duration::from_secs(3)).await?;
    Ok(stats.queued.iter().sum::<u64>() + stats.in_flight.iter().sum::<u64>())
}

/// One shard count, measured.
pub(super) async fn measure(
    ctx: &Ctx<'_>,
    fsync: Fsync,
    shards: usize,
) -> anyhow::Result<ShardResult> {
    let cluster = tokio::task::spawn_blocking(move || {
        RedisCluster::try_start(
            shards,
            0,
            fsync.persistence(),
            &taskq::keys::REDIS_TUNING_ARGS,
        )
    })
    .await??;
    let env = cluster_env(&cluster, shards);
    let settings = taskq::support::RedisSettings {
        url: "redis://unused".to_owned().into(),
        cluster_urls: Some(cluster.urls().into()),
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(5),
    };
    let mut conn = settings.connection()?;
    let partitions = Partitions::hash_tagged(
        taskq::QueueConfig {
            keys: taskq::Keys::new(super::phases::PREFIX),
            ..taskq::QueueConfig::default()
        },
        u16::try_from(shards).context("shard count")?,
    );

    // POST
    let port = testkit::try_free_port()?;
    let mut orchestrator_env = env.clone();
    orchestrator_env.push(("LISTEN_ADDR", format!("127.0.0.1:{port}")));
    let mut orchestrator = spawn(
        "orchestrator",
        &ctx.bins.orchestrator,
        &[],
        &orchestrator_env,
        ctx.dir.join(format!("orchestrator-shards-{shards}.log")),
    )?;
    let base = format!("http://127.0.0.1:{port}");
    wait_http(
        &format!("{base}/healthz"),
        &mut orchestrator,
        Duration::from_secs(10),
    )
    .await?;
    let connections = ctx
        .options
        .wrk_connections
        .iter()
        .copied()
        .max()
        .unwrap_or(64);
    log_phase(&format!(
        "{shards} shard(s): orchestrator under wrk, {connections} connections"
    ));
    let script = ctx.dir.join("post.lua");
    wrk::write_post_script(&script, &super::script::post_body())?;
    let warmup = WrkLoad {
        threads: ctx.options.wrk_threads,
        connections,
        duration: super::phases::WARMUP,
    };
    let load = WrkLoad {
        duration: ctx.options.duration,
        ..warmup.clone()
    };
    let url = format!("{base}/tasks");
    let (u, s) = (url.clone(), script.clone());
    ctx.wait_quiet();
    tokio::task::spawn_blocking(move || wrk::run(&u, &s, &warmup)).await??;
    let (before, _) = nodes_cpu(&cluster).await?;
    let server_before = orchestrator.cpu_seconds().unwrap_or(0.0);
    let (u, s) = (url.clone(), script.clone());
    let post = tokio::task::spawn_blocking(move || wrk::run(&u, &s, &load)).await??;
    let (after, _) = nodes_cpu(&cluster).await?;
    let server_s = orchestrator.cpu_seconds().unwrap_or(0.0) - server_before;
    let post_redis: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let _ = orchestrator.stop(Duration::from_secs(10));

    // Drain the backlog the POST runs left.
    let backlog = waiting(&partitions, &mut conn).await?;
    log_phase(&format!(
        "{shards} shard(s): two workers drain {backlog} tasks"
    ));
    ctx.wait_quiet();
    let (before, scripts_before) = nodes_cpu(&cluster).await?;
    let started = Instant::now();
    let mut workers: Vec<Process> = Vec::new();
    for n in 1..=2 {
        let mut worker_env = env.clone();
        worker_env.extend([
            ("WORKER_ID", format!("shards-{shards}-worker-{n}")),
            ("WORKER_WORK", "0ms".to_owned()),
            ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ]);
        workers.push(spawn(
            &format!("worker-{n}"),
            &ctx.bins.worker,
            &[],
            &worker_env,
            ctx.dir.join(format!("worker-shards-{shards}-{n}.log")),
        )?);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while waiting(&partitions, &mut conn).await? > 0 {
        for worker in &mut workers {
            worker.ensure_running()?;
        }
        anyhow::ensure!(Instant::now() < deadline, "the drain took over 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_s = started.elapsed().as_secs_f64();
    let (after, scripts_after) = nodes_cpu(&cluster).await?;
    let workers_s: f64 = workers.iter().map(|w| w.cpu_seconds().unwrap_or(0.0)).sum();
    for worker in &mut workers {
        let _ = worker.stop(Duration::from_secs(10));
    }
    let drain_redis: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    drop(cluster);

    let accepted = post.requests;
    Ok(ShardResult {
        shards,
        post,
        post_orchestrator_us_per_task: server_s * 1e6 / accepted.max(1) as f64,
        post_redis_us_per_task: post_redis.iter().sum::<f64>() * 1e6 / accepted.max(1) as f64,
        post_redis_share: shares(&post_redis),
        drained: backlog,
        drain_rate_per_s: backlog as f64 / drain_s.max(1e-9),
        drain_workers_us_per_task: workers_s * 1e6 / backlog.max(1) as f64,
        drain_redis_us_per_task: drain_redis.iter().sum::<f64>() * 1e6 / backlog.max(1) as f64,
        drain_redis_share: shares(&drain_redis),
        drain_scripts_per_task: scripts_after.saturating_sub(scripts_before) as f64
            / backlog.max(1) as f64,
    })
}

/// Each node's share of the total, percent.
fn shares(seconds: &[f64]) -> Vec<f64> {
    let total: f64 = seconds.iter().sum();
    seconds
        .iter()
        .map(|s| if total > 0.0 { s * 100.0 / total } else { 0.0 })
        .collect()
}
