//! Each fault injector, shown to take effect on a real cluster (NEEDS DOCKER; never skipped).
//!
//! Link faults are checked from inside the services' network namespaces: a TCP connection from
//! the orchestrator to Redis fails during a partition while one from a worker succeeds, and a
//! share of connection attempts fails under `loss`; after `heal` every attempt succeeds.

use std::{net::Ipv4Addr, time::Duration};

use harness::{
    cleanup::{self, LABEL_RUN},
    cluster::{Cluster, ClusterSpec, Service},
    scenario::{
        Action, ClockOffset, Link, LinkDelay, PlannedStep, RuntimeKind, StepOrigin, Subject, Target,
    },
};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

fn init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "harness=info,warn".into()),
        )
        .with_test_writer()
        .try_init();
    cleanup::install_interrupt_handler();
}

/// A docker cluster of `workers` workers, its spec adjusted by `adjust` (the fault switches);
/// and its run id.
async fn start(
    label: &str,
    workers: u32,
    adjust: impl FnOnce(&mut ClusterSpec),
) -> (Cluster, String) {
    harness::runner::prepare_runtime(RuntimeKind::Docker)
        .await
        .unwrap_or_else(|e| panic!("preparing the docker runtime failed: {e:#}"));
    let mut spec = ClusterSpec::new(label, workers);
    adjust(&mut spec);
    let run_id = spec.run_id.clone();
    let cluster = Cluster::start(RuntimeKind::Docker, spec)
        .await
        .unwrap_or_else(|e| panic!("the cluster {label} does not start: {e:#}"));
    (cluster, run_id)
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

fn step(action: Action, subject: Subject, probability: Option<f64>) -> PlannedStep {
    PlannedStep {
        at: Duration::ZERO,
        action,
        subject,
        replicas: None,
        probability,
        offset: None,
        delay: None,
        origin: StepOrigin::File,
    }
}

fn link(a: Target, b: Target) -> Subject {
    Subject::Link(Link {
        a,
        b,
        one_way: false,
    })
}

/// Whether a TCP connection from the namespace of `pid` to `ip:port` is established within
/// `within` (bash's /dev/tcp, run in the namespace with nsenter).
async fn connects(pid: u32, ip: Ipv4Addr, port: u16, within: Duration) -> bool {
    let status = tokio::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "timeout"])
        .arg(format!("{:.3}", within.as_secs_f64()))
        .args(["bash", "-c", &format!("exec 3<>/dev/tcp/{ip}/{port}")])
        .status()
        .await
        .expect("nsenter runs");
    status.success()
}

/// Of `attempts` connections from `pid` to `ip:port`, how many were established in time.
async fn successes(pid: u32, ip: Ipv4Addr, attempts: u32) -> u32 {
    let mut ok = 0;
    for _ in 0..attempts {
        if connects(pid, ip, 6379, Duration::from_millis(300)).await {
            ok += 1;
        }
    }
    ok
}

async fn submit(url: &str) -> Option<u16> {
    reqwest::Client::new()
        .post(format!("{url}/tasks"))
        .json(&serde_json::json!({"description": "link fault", "priority": 3}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_cuts_one_link_and_loss_drops_a_share_until_heal() {
    init();
    let _serial = SERIAL.lock().await;
    let (mut cluster, run_id) = start("link-faults", 1, |_| {}).await;
    let url = cluster.orchestrator_url();
    let (orchestrator, _) = cluster
        .network_namespace(Service::Orchestrator)
        .await
        .unwrap();
    let (worker, _) = cluster.network_namespace(Service::Worker(1)).await.unwrap();
    let (_, redis) = cluster.network_namespace(Service::Redis).await.unwrap();
    let within = Duration::from_millis(500);
    assert!(connects(orchestrator, redis, 6379, within).await);
    assert_eq!(submit(&url).await, Some(201));

    // Partition orchestrator <-> redis: the orchestrator cannot connect, the worker still can,
    // and a submit is refused (503) instead of hanging or being acknowledged.
    let message = cluster
        .apply(&step(
            Action::Partition,
            link(Target::Orchestrator, Target::Redis),
            None,
        ))
        .await
        .expect("partition");
    println!("{message}");
    assert!(!connects(orchestrator, redis, 6379, within).await);
    assert!(connects(worker, redis, 6379, within).await);
    assert_eq!(submit(&url).await, Some(503));
    let message = cluster
        .apply(&step(
            Action::Heal,
            link(Target::Redis, Target::Orchestrator),
            None,
        ))
        .await
        .expect("heal names the pair in either order");
    println!("{message}");
    assert!(connects(orchestrator, redis, 6379, within).await);
    testkit::Wait::new("a submit to succeed after heal", Duration::from_secs(15))
        .every(Duration::from_millis(200))
        .until_async(async || match submit(&url).await {
            Some(201) => Ok(()),
            other => Err(format!("{other:?}")),
        })
        .await;

    // 50% loss both ways: a connection needs its SYN and SYN-ACK through (about 1 in 4 within
    // 300 ms, before the first retransmission); after heal, all of them.
    let attempts = 40;
    cluster
        .apply(&step(
            Action::Loss,
            link(Target::AllWorkers, Target::Redis),
            Some(0.5),
        ))
        .await
        .expect("loss");
    let lossy = successes(worker, redis, attempts).await;
    let clean_peer = successes(orchestrator, redis, attempts).await;
    cluster
        .apply(&step(Action::Heal, Subject::AllLinks, None))
        .await
        .expect("heal all");
    let healed = successes(worker, redis, attempts).await;
    println!(
        "connections within 300 ms: {lossy}/{attempts} under 50% loss, {clean_peer}/{attempts} \
         on the orchestrator's clean link, {healed}/{attempts} after heal"
    );
    assert!(lossy <= attempts / 2, "{lossy}/{attempts} got through");
    assert_eq!(clean_peer, attempts);
    assert_eq!(healed, attempts);

    // Healing a link that has no fault is a failed step, not a silent no-op.
    let err = cluster
        .apply(&step(
            Action::Heal,
            link(Target::Orchestrator, Target::Redis),
            None,
        ))
        .await
        .expect_err("nothing to heal");
    assert!(err.to_string().contains("no link fault"), "{err:#}");

    cluster.shutdown().await.expect("shutdown");
    assert_nothing_left(&run_id).await;
}

async fn redis(cluster: &Cluster) -> redis::aio::MultiplexedConnection {
    redis::Client::open(cluster.redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis answers")
}

/// `power-loss` keeps what Redis fsynced and drops what it did not: a key written under
/// `appendfsync always` survives, one written after `CONFIG SET appendfsync no` does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_loss_drops_an_unsynced_write_and_keeps_a_synced_one() {
    init();
    let _serial = SERIAL.lock().await;
    let (mut cluster, run_id) = start("power-loss", 1, |spec| {
        spec.fault_disk = true;
    })
    .await;
    let mut conn = redis(&cluster).await;
    let _: () = redis::cmd("SET")
        .arg("faults:synced")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendfsync")
        .arg("no")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("faults:unsynced")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let message = cluster
        .apply(&step(
            Action::PowerLoss,
            Subject::Service(Target::Redis),
            None,
        ))
        .await
        .expect("power loss");
    println!("{message}");
    assert!(!message.contains(" 0 unsynced byte"), "{message}");
    let mut conn = redis(&cluster).await;
    let (synced, unsynced): (Option<String>, Option<String>) = redis::pipe()
        .get("faults:synced")
        .get("faults:unsynced")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(synced.as_deref(), Some("1"), "the fsynced write survives");
    assert_eq!(unsynced, None, "the write that was never fsynced is gone");
    drop(conn);
    cluster.shutdown().await.expect("shutdown");
    assert_nothing_left(&run_id).await;
}

/// `disk-full` makes Redis refuse writes, so the orchestrator answers 503 (never a 201 it could
/// not keep), and `heal` brings writes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_submits_until_heal() {
    init();
    let _serial = SERIAL.lock().await;
    let (mut cluster, run_id) = start("disk-full", 1, |spec| {
        spec.fault_disk = true;
        spec.persistence = harness::scenario::Persistence::AofEverysec;
    })
    .await;
    let url = cluster.orchestrator_url();
    assert_eq!(submit(&url).await, Some(201));
    cluster
        .apply(&step(
            Action::DiskFull,
            Subject::Service(Target::Redis),
            None,
        ))
        .await
        .expect("disk full");
    // The first write after the disk filled may still be answered (Redis learns of the failed
    // AOF write when it flushes); from then on writes are refused.
    let mut statuses = Vec::new();
    testkit::Wait::new("submits to be refused", Duration::from_secs(15))
        .every(Duration::from_millis(200))
        .until_async(async || {
            let status = submit(&url).await;
            statuses.push(status);
            match status {
                Some(503) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    println!("submits after disk-full: {statuses:?}");
    cluster
        .apply(&step(Action::Heal, Subject::Service(Target::Redis), None))
        .await
        .expect("heal");
    testkit::Wait::new("a submit to succeed after heal", Duration::from_secs(15))
        .every(Duration::from_millis(200))
        .until_async(async || match submit(&url).await {
            Some(201) => Ok(()),
            other => Err(format!("{other:?}")),
        })
        .await;
    cluster.shutdown().await.expect("shutdown");
    assert_nothing_left(&run_id).await;
}

/// Redis's `TIME` (ms) and the host's wall clock (ms) read right after.
async fn redis_time(conn: &mut redis::aio::MultiplexedConnection) -> (i64, i64) {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (secs * 1000 + micros / 1000, host)
}

/// `clock-jump` moves Redis's wall clock (what `TIME`, and so every queue timestamp, reads) by
/// its offset, forward and back, while the host's clock stays put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_jump_moves_redis_time_by_its_offset() {
    init();
    let _serial = SERIAL.lock().await;
    let (mut cluster, run_id) = start("clock-jump", 1, |spec| {
        spec.clock_shift = true;
    })
    .await;
    let mut conn = redis(&cluster).await;
    let skew = |(redis, host): (i64, i64)| redis - host;
    let before = skew(redis_time(&mut conn).await);
    assert!(before.abs() < 1_000, "no offset yet: {before} ms");
    let jump = |forward, secs| {
        step(Action::ClockJump, Subject::Service(Target::Redis), None).with_offset(ClockOffset {
            by: Duration::from_secs(secs),
            forward,
        })
    };
    let message = cluster.apply(&jump(true, 30)).await.expect("forward");
    println!("{message}");
    let forward = skew(redis_time(&mut conn).await);
    let message = cluster.apply(&jump(false, 50)).await.expect("backward");
    println!("{message}");
    let backward = skew(redis_time(&mut conn).await);
    println!("redis minus host: {before} ms, after +30s {forward} ms, after -50s {backward} ms");
    assert!((forward - before - 30_000).abs() < 1_000, "{forward}");
    assert!((backward - before + 20_000).abs() < 1_000, "{backward}");
    drop(conn);
    cluster.shutdown().await.expect("shutdown");
    assert_nothing_left(&run_id).await;
}

trait WithOffset {
    fn with_offset(self, offset: ClockOffset) -> Self;
}

impl WithOffset for PlannedStep {
    fn with_offset(mut self, offset: ClockOffset) -> Self {
        self.offset = Some(offset);
        self
    }
}

/// The median time of `n` PINGs over one connection, ms.
async fn ping_ms(conn: &mut redis::aio::MultiplexedConnection, n: usize) -> f64 {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = std::time::Instant::now();
        let _: String = redis::cmd("PING").query_async(conn).await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times[n / 2]
}

/// `delay` adds its latency to every round trip through a service's proxy to Redis (measured by
/// PINGs through worker.1's proxy), the orchestrator's submits slow down when its link is
/// delayed, and `heal` takes the latency away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_adds_its_latency_to_the_link_until_heal() {
    init();
    let _serial = SERIAL.lock().await;
    let (mut cluster, run_id) = start("delay", 1, |spec| {
        spec.link_proxies = true;
    })
    .await;
    let url = cluster.orchestrator_url();
    let (gateway, port) = cluster
        .proxy_address(Service::Worker(1))
        .expect("worker.1 has a proxy");
    let through_proxy = cluster.spec().redis_url_for(&gateway.to_string(), port);
    let mut conn = redis::Client::open(through_proxy)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("redis through worker.1's proxy");
    let before = ping_ms(&mut conn, 9).await;
    let delay = |a, b| {
        let mut s = step(Action::Delay, link(a, b), None);
        s.delay = Some(LinkDelay {
            latency: Duration::from_millis(300),
            jitter: Duration::from_millis(20),
        });
        s
    };
    let message = cluster
        .apply(&delay(Target::Worker(1), Target::Redis))
        .await
        .expect("delay");
    println!("{message}");
    let delayed = ping_ms(&mut conn, 5).await;
    let started = std::time::Instant::now();
    assert_eq!(submit(&url).await, Some(201));
    let fast_submit = started.elapsed();
    cluster
        .apply(&delay(Target::Orchestrator, Target::Redis))
        .await
        .expect("delay the orchestrator");
    let started = std::time::Instant::now();
    assert_eq!(submit(&url).await, Some(201));
    let slow_submit = started.elapsed();
    cluster
        .apply(&step(Action::Heal, Subject::AllLinks, None))
        .await
        .expect("heal");
    // Heal closed the connections the proxy carried: clients (this one, the services) reconnect
    // without the latency.
    drop(conn);
    let mut conn = redis::Client::open(cluster.spec().redis_url_for(&gateway.to_string(), port))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("a new connection through the proxy");
    let healed = ping_ms(&mut conn, 9).await;
    testkit::Wait::new("a fast submit after heal", Duration::from_secs(15))
        .every(Duration::from_millis(100))
        .until_async(async || {
            let started = std::time::Instant::now();
            match submit(&url).await {
                Some(201) if started.elapsed() < Duration::from_millis(250) => Ok(()),
                other => Err(format!("{other:?} in {:?}", started.elapsed())),
            }
        })
        .await;
    println!(
        "PING through worker.1's proxy: {before:.1} ms, {delayed:.1} ms with a 300 ms delay, \
         {healed:.1} ms after heal; a submit took {fast_submit:?}, {slow_submit:?} with the \
         orchestrator's link delayed"
    );
    assert!(
        (270.0..=400.0).contains(&(delayed - before)),
        "the delay adds about 300 ms: {before} -> {delayed}"
    );
    assert!(healed < before + 50.0, "heal removes it: {healed}");
    assert!(slow_submit >= Duration::from_millis(280), "{slow_submit:?}");
    assert!(fast_submit < Duration::from_millis(250), "{fast_submit:?}");
    drop(conn);
    cluster.shutdown().await.expect("shutdown");
    assert_nothing_left(&run_id).await;
}
