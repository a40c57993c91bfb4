//! Cluster control: one API over two runtimes.
//!
//! A [`Cluster`] is Redis, one orchestrator and N worker replicas, started either as containers
//! on a fresh Docker network ([`docker`], Redis through testcontainers) or as local processes
//! ([`process`]: a local `redis-server` and the built binaries). Both offer the same actions
//! ([`Cluster::apply`]): kill (SIGKILL), stop (SIGTERM + grace), start, restart, pause, unpause,
//! scale workers, and — docker only — disconnect / connect a service from the network.
//!
//! Every action that brings a service back waits until it is ready: Redis answers `PING`, the
//! orchestrator answers `/readyz` (or `/healthz` while Redis is down), a worker answers
//! `/healthz` on its metrics port. Addresses are re-read after every start, so a container that
//! came back on another host port is still reached; the orchestrator keeps a fixed host port so
//! the load generator's URL stays valid across its restarts.
//!
//! Everything a cluster creates is removed by [`Cluster::shutdown`], or by `Drop` when a run
//! fails or panics, or by the interrupt handler in [`crate::cleanup`].

pub mod clock;
pub mod disk;
pub mod docker;
pub mod links;
pub mod process;
pub mod proxy;
pub mod redis_cluster;

use std::{collections::BTreeMap, fmt, time::Duration};

use anyhow::{Context, bail};

use crate::{
    executions::Execution,
    scenario::{
        Action, Link, Persistence, PlannedStep, RedisTopology, RuntimeKind, ServiceTiming, Subject,
        Target,
    },
};

/// Env var forcing the runtime (`docker` or `process`).
pub const RUNTIME_ENV: &str = "HARNESS_RUNTIME";

/// How long a service may take to become ready after a start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// SIGTERM grace before SIGKILL on `stop`, `restart` and scale-down.
pub const STOP_GRACE: Duration = Duration::from_secs(8);

/// Redis's memory cap in both backends: past it Redis refuses writes (the API answers 503) instead
/// of growing until it is killed; `noeviction`, since evicting would drop tasks.
pub const REDIS_MEMORY_ARGS: [&str; 4] =
    ["--maxmemory", "256mb", "--maxmemory-policy", "noeviction"];

/// What to start.
#[derive(Clone)]
pub struct ClusterSpec {
    /// Unique id of this run: names, labels and key prefix derive from it.
    pub run_id: String,
    /// Initial worker replicas.
    pub workers: u32,
    /// Redis durability.
    pub persistence: Persistence,
    /// `WORKER_CONCURRENCY`.
    pub worker_concurrency: u32,
    /// `WORKER_WORK`.
    pub work: Duration,
    /// `KEY_PREFIX` of orchestrator and workers.
    pub key_prefix: String,
    /// `RUST_LOG` of the services.
    pub rust_log: String,
    /// Heartbeats, liveness, leases, Redis timeouts and retry backoff of the services.
    pub timing: ServiceTiming,
    /// `WORKER_FAIL_RATE`: share of executions failing transiently.
    pub fail_rate: f64,
    /// `WORKER_PERMANENT_FAIL_RATE`: share of executions failing for good.
    pub permanent_fail_rate: f64,
    /// Redis `requirepass`: every run's Redis requires a password, fresh per run, so the
    /// services are always exercised with credentials in `REDIS_URL`. Never printed.
    pub redis_password: String,
    /// Redis's data directory on the fault filesystem ([`disk`]), so `power-loss` and
    /// `disk-full` can act on it.
    pub fault_disk: bool,
    /// Redis with a shiftable wall clock ([`clock`]), so `clock-jump` can act on it.
    pub clock_shift: bool,
    /// The services reach Redis through the harness's proxies ([`proxy`]), so `delay` can act
    /// on their links (docker runtime).
    pub link_proxies: bool,
    /// One Redis, or a Redis Cluster (docker runtime) whose nodes are [`Service::RedisNode`]s.
    pub redis: RedisTopology,
}

impl std::fmt::Debug for ClusterSpec {
    // By hand, so the Redis password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSpec")
            .field("run_id", &self.run_id)
            .field("workers", &self.workers)
            .field("persistence", &self.persistence)
            .field("worker_concurrency", &self.worker_concurrency)
            .field("work", &self.work)
            .field("key_prefix", &self.key_prefix)
            .field("rust_log", &self.rust_log)
            .field("timing", &self.timing)
            .field("fail_rate", &self.fail_rate)
            .field("permanent_fail_rate", &self.permanent_fail_rate)
            .field("redis_password", &"***")
            .field("fault_disk", &self.fault_disk)
            .field("clock_shift", &self.clock_shift)
            .field("link_proxies", &self.link_proxies)
            .field("redis", &self.redis)
            .finish()
    }
}

impl ClusterSpec {
    /// A spec with the documented defaults and a fresh run id derived from `label`.
    pub fn new(label: &str, workers: u32) -> Self {
        let run_id = new_run_id(label);
        Self {
            key_prefix: "agent".to_string(),
            run_id,
            workers,
            persistence: Persistence::AofAlways,
            worker_concurrency: 4,
            work: Duration::from_millis(20),
            rust_log: "info".to_string(),
            timing: ServiceTiming::default(),
            fail_rate: 0.0,
            permanent_fail_rate: 0.0,
            redis_password: format!("{:032x}", rand::random::<u128>()),
            fault_disk: false,
            clock_shift: false,
            link_proxies: false,
            redis: RedisTopology::SINGLE,
        }
    }

    /// The Redis services: the single server, or every node of the cluster (shard by shard,
    /// the node started as primary first).
    pub fn redis_services(&self) -> Vec<Service> {
        if !self.redis.is_cluster() {
            return vec![Service::Redis];
        }
        (1..=self.redis.shards)
            .flat_map(|shard| {
                (0..=self.redis.replicas).map(move |member| Service::RedisNode(shard, member))
            })
            .collect()
    }

    /// `redis://:{password}@{host}:{port}`.
    pub fn redis_url_for(&self, host: &str, port: u16) -> String {
        format!("redis://:{}@{host}:{port}", self.redis_password)
    }

    /// Environment of the orchestrator, and the part of a worker's it shares (Redis address
    /// excluded).
    fn common_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("KEY_PREFIX".into(), self.key_prefix.clone()),
            ("LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), self.rust_log.clone()),
            ("WORKER_DEAD_AFTER".into(), duration(self.timing.dead_after)),
            (
                "REDIS_TIMEOUT".into(),
                duration(self.timing.orchestrator_redis_timeout),
            ),
        ];
        if self.redis.is_cluster() {
            // One partition per shard: partition i hashes into the i-th of equal slot ranges,
            // which is the slots shard i + 1 owns.
            env.push(("QUEUE_PARTITIONS".into(), self.redis.shards.to_string()));
        }
        env
    }

    /// Environment of the orchestrator (Redis address excluded).
    fn orchestrator_env(&self) -> Vec<(String, String)> {
        let mut env = self.common_env();
        if self.redis.replica_acks > 0 {
            env.push(("REPLICA_ACKS".into(), self.redis.replica_acks.to_string()));
        }
        env
    }

    /// The queue's partitions as the services lay them out, for reading it from the harness.
    pub fn partitions(&self) -> taskq::Partitions {
        let config = taskq::queue::QueueConfig {
            keys: taskq::Keys::new(self.key_prefix.clone()),
            ..taskq::queue::QueueConfig::default()
        };
        if self.redis.is_cluster() {
            taskq::Partitions::hash_tagged(config, self.redis.shards as u16)
        } else {
            taskq::Partitions::new(config, 1)
        }
    }

    /// Environment of a worker (Redis address and metrics address excluded).
    fn worker_env(&self) -> Vec<(String, String)> {
        let mut env = self.common_env();
        // the worker's own Redis timeout replaces the orchestrator's
        env.retain(|(name, _)| name != "REDIS_TIMEOUT");
        let timing = &self.timing;
        env.extend([
            (
                "REDIS_TIMEOUT".into(),
                duration(timing.worker_redis_timeout),
            ),
            ("WORKER_HEARTBEAT".into(), duration(timing.heartbeat)),
            ("WORKER_LEASE".into(), duration(timing.lease)),
            ("RETRY_BASE".into(), duration(timing.retry_base)),
            ("RETRY_MAX".into(), duration(timing.retry_max)),
            ("WORKER_FAIL_RATE".into(), self.fail_rate.to_string()),
            (
                "WORKER_PERMANENT_FAIL_RATE".into(),
                self.permanent_fail_rate.to_string(),
            ),
        ]);
        env.extend([
            (
                "WORKER_CONCURRENCY".into(),
                self.worker_concurrency.to_string(),
            ),
            (
                "WORKER_WORK".into(),
                humantime::format_duration(self.work).to_string(),
            ),
            (
                "SHUTDOWN_GRACE".into(),
                humantime::format_duration(STOP_GRACE * 3 / 4).to_string(),
            ),
        ]);
        env
    }
}

/// A duration as the services parse it (humantime).
fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A run id: `{label}-{8 hex digits}`, safe in container, network and volume names.
pub fn new_run_id(label: &str) -> String {
    let clean: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{clean}-{suffix}")
}

/// One service of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// Redis.
    Redis,
    /// The orchestrator.
    Orchestrator,
    /// Worker replica N (from 1).
    Worker(u32),
    /// Node M (from 0) of Redis Cluster shard S (from 1): `RedisNode(S, 0)` starts as the
    /// shard's primary, the others as its replicas; a failover changes who is which.
    RedisNode(u32, u32),
}

impl Service {
    /// Whether this is Redis: the single server or a cluster node.
    pub fn is_redis(self) -> bool {
        matches!(self, Service::Redis | Service::RedisNode(..))
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Redis => f.write_str("redis"),
            Service::Orchestrator => f.write_str("orchestrator"),
            Service::Worker(n) => write!(f, "worker.{n}"),
            Service::RedisNode(shard, member) => write!(f, "redis-{shard}-{member}"),
        }
    }
}

/// Lifecycle state of a service as the harness left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// Started and not paused.
    Running,
    /// Frozen.
    Paused,
    /// Killed, stopped, or scaled away.
    Stopped,
}

#[derive(Debug, Clone, Copy)]
struct Status {
    state: ServiceState,
    connected: bool,
}

/// Addresses of a running cluster, reachable from the harness's host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Endpoints {
    /// `docker` or `process`.
    pub runtime: RuntimeKind,
    /// Orchestrator base URL (stable across restarts).
    pub orchestrator: String,
    /// Redis URL from the host (may change after a Redis restart in docker).
    pub redis: String,
    /// Metrics URL of each worker replica.
    pub workers: BTreeMap<String, String>,
    /// Docker network (docker runtime).
    pub network: Option<String>,
    /// Key prefix of the services.
    pub key_prefix: String,
}

enum Backend {
    Docker(Box<docker::DockerCluster>),
    Process(Box<process::ProcessCluster>),
}

/// Dispatches a call to the runtime in use.
macro_rules! backend {
    ($self:expr, $b:ident => $call:expr) => {
        match &$self.backend {
            Backend::Docker($b) => $call,
            Backend::Process($b) => $call,
        }
    };
    (mut $self:expr, $b:ident => $call:expr) => {
        match &mut $self.backend {
            Backend::Docker($b) => $call,
            Backend::Process($b) => $call,
        }
    };
}

/// A running cluster; see the module docs.
pub struct Cluster {
    backend: Backend,
    status: BTreeMap<Service, Status>,
    replicas: u32,
    http: reqwest::Client,
    spec: ClusterSpec,
    startup: StartupTimes,
    /// Link faults in force, with the filter rules that make them.
    link_faults: Vec<LinkFault>,
}

/// A `partition`, `loss` or `delay` in force.
struct LinkFault {
    link: Link,
    rules: Vec<links::Rule>,
    /// With `delay`: the services whose proxies carry it.
    delayed: Vec<Service>,
}

/// How long each phase of [`Cluster::start`] took.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StartupTimes {
    /// Network / volume / run directory preparation (includes the leftover sweep).
    pub prepare: Duration,
    /// Redis started and answering PING.
    pub redis: Duration,
    /// Orchestrator started and ready.
    pub orchestrator: Duration,
    /// All initial workers started (concurrently) and healthy.
    pub workers: Duration,
}

impl StartupTimes {
    /// Sum of all phases.
    pub fn total(&self) -> Duration {
        self.prepare + self.redis + self.orchestrator + self.workers
    }
}

impl Cluster {
    /// Starts Redis, the orchestrator and `spec.workers` workers, each ready, in `runtime`.
    pub async fn start(runtime: RuntimeKind, spec: ClusterSpec) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .context("building the HTTP client")?;
        let mut startup = StartupTimes::default();
        let phase = std::time::Instant::now();
        let backend = match runtime {
            RuntimeKind::Docker => Backend::Docker(Box::new(
                docker::DockerCluster::create(&spec)
                    .await
                    .context("creating the docker cluster")?,
            )),
            RuntimeKind::Process => Backend::Process(Box::new(
                process::ProcessCluster::create(&spec)
                    .await
                    .context("creating the process cluster")?,
            )),
        };
        let mut cluster = Cluster {
            backend,
            status: BTreeMap::new(),
            replicas: 0,
            http,
            spec: spec.clone(),
            startup,
            link_faults: Vec::new(),
        };
        startup.prepare = phase.elapsed();
        // From here on a failure drops `cluster`, which removes what was created.
        let phase = std::time::Instant::now();
        if spec.redis.is_cluster() {
            cluster.start_redis_cluster().await?;
        } else {
            cluster.start_service(Service::Redis).await?;
        }
        startup.redis = phase.elapsed();
        let phase = std::time::Instant::now();
        cluster.start_service(Service::Orchestrator).await?;
        startup.orchestrator = phase.elapsed();
        let phase = std::time::Instant::now();
        cluster.scale(spec.workers).await?;
        startup.workers = phase.elapsed();
        cluster.startup = startup;
        Ok(cluster)
    }

    /// Starts every node of the Redis Cluster and forms it (docker runtime).
    async fn start_redis_cluster(&mut self) -> anyhow::Result<()> {
        let nodes = self.spec.redis_services();
        for node in &nodes {
            self.start_service(*node).await?;
        }
        let Backend::Docker(docker) = &self.backend else {
            bail!("a Redis Cluster runs in the docker runtime only");
        };
        let mut shards = Vec::new();
        for shard in 1..=self.spec.redis.shards {
            let mut members = Vec::new();
            for node in nodes
                .iter()
                .filter(|n| matches!(n, Service::RedisNode(s, _) if *s == shard))
            {
                members.push(redis_cluster::Node {
                    url: docker.node_url(*node),
                    ip: docker.address(*node).await?,
                });
            }
            shards.push(members);
        }
        redis_cluster::form(&shards)
            .await
            .context("forming the Redis Cluster")
    }

    /// How long the start took, per phase.
    pub fn startup_times(&self) -> StartupTimes {
        self.startup
    }

    /// The runtime in use.
    pub fn runtime(&self) -> RuntimeKind {
        match self.backend {
            Backend::Docker(_) => RuntimeKind::Docker,
            Backend::Process(_) => RuntimeKind::Process,
        }
    }

    /// The spec the cluster was started with.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// Orchestrator base URL, stable for the cluster's lifetime.
    pub fn orchestrator_url(&self) -> String {
        backend!(self, b => b.orchestrator_url())
    }

    /// Redis URL reachable from the host, as of the last (re)start of Redis.
    pub fn redis_url(&self) -> String {
        backend!(self, b => b.redis_url())
    }

    /// URL of a Redis server or cluster node from the host.
    pub fn node_url(&self, service: Service) -> String {
        backend!(self, b => b.node_url(service))
    }

    /// A connection to the queue's Redis from the host: the single server, or the cluster
    /// (every node a seed; the client follows failovers).
    pub fn queue_connection(&self) -> anyhow::Result<taskq::support::RedisConn> {
        let timeout = Duration::from_secs(2);
        let cluster_urls = self.spec.redis.is_cluster().then(|| {
            let urls: Vec<String> = self
                .spec
                .redis_services()
                .into_iter()
                .map(|node| self.node_url(node))
                .collect();
            urls.join(",").into()
        });
        let settings = taskq::support::RedisSettings {
            url: self.redis_url().into(),
            cluster_urls,
            connect_timeout: timeout,
            response_timeout: timeout,
        };
        settings.connection().map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Current worker replicas.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// Services that ended although no action of the harness stopped them (a panic, an exit,
    /// an OOM kill), each reported once with its exit status or signal number when known; they
    /// count as stopped from then on.
    pub async fn unplanned_exits(&mut self) -> Vec<(Service, Option<i64>)> {
        let running: Vec<Service> = self
            .status
            .iter()
            .filter(|(_, s)| s.state != ServiceState::Stopped)
            .map(|(service, _)| *service)
            .collect();
        let exited = match &mut self.backend {
            Backend::Docker(b) => b.exited(&running).await,
            Backend::Process(b) => b.exited().await,
        };
        let exited: Vec<(Service, Option<i64>)> = exited
            .into_iter()
            .filter(|(service, _)| running.contains(service))
            .collect();
        for (service, _) in &exited {
            self.status_mut(*service).state = ServiceState::Stopped;
        }
        exited
    }

    /// State of a service.
    pub fn state(&self, service: Service) -> Option<ServiceState> {
        self.status.get(&service).map(|s| s.state)
    }

    /// All addresses, for `harness up` and reports.
    pub fn endpoints(&self) -> Endpoints {
        let workers = (1..=self.replicas)
            .filter_map(|n| {
                backend!(self, b => b.worker_health_url(n))
                    .map(|url| (Service::Worker(n).to_string(), url))
            })
            .collect();
        Endpoints {
            runtime: self.runtime(),
            orchestrator: self.orchestrator_url(),
            redis: if self.spec.redis.is_cluster() {
                self.spec
                    .redis_services()
                    .into_iter()
                    .map(|node| taskq::support::redact_url(&self.node_url(node)))
                    .collect::<Vec<_>>()
                    .join(",")
            } else {
                taskq::support::redact_url(&self.redis_url())
            },
            workers,
            network: match &self.backend {
                Backend::Docker(d) => Some(d.network().to_string()),
                Backend::Process(_) => None,
            },
            key_prefix: self.spec.key_prefix.clone(),
        }
    }

    /// Applies one scenario step and returns what was done.
    pub async fn apply(&mut self, step: &PlannedStep) -> anyhow::Result<String> {
        let action = step.action;
        let target = match step.subject {
            Subject::Link(link) if action.on_link() => {
                return self
                    .break_link(action, link, step.probability, step.delay)
                    .await;
            }
            Subject::Link(_) | Subject::AllLinks if action == Action::Heal => {
                return self.heal_links(&step.subject).await;
            }
            Subject::Service(Target::Redis) if action == Action::PowerLoss => {
                return self.power_loss().await;
            }
            Subject::Service(Target::Redis) if action == Action::ClockJump => {
                let offset = step.offset.context("`clock-jump` needs `offset`")?;
                let total = backend!(mut self, b => b.clock_jump(offset.by, offset.forward))?;
                return Ok(format!(
                    "redis's clock jumped {offset} (now {:+.3}s off)",
                    total as f64 / 1e9
                ));
            }
            Subject::Service(Target::Redis)
                if matches!(action, Action::DiskFull | Action::Heal) =>
            {
                let disk = self.fault_disk()?;
                let full = action == Action::DiskFull;
                if disk.is_disk_full() == full {
                    bail!(
                        "redis's disk is {} full",
                        if full { "already" } else { "not" }
                    );
                }
                disk.set_disk_full(full);
                return Ok(if full {
                    "redis's data directory refuses writes (ENOSPC)".into()
                } else {
                    "redis's data directory accepts writes again".into()
                });
            }
            Subject::Service(target) => target,
            subject => bail!("`{action}` cannot act on `{subject}`"),
        };
        if action == Action::Scale {
            let n = step.replicas.context("`scale` needs `replicas`")?;
            if target != Target::AllWorkers {
                bail!("`scale` applies to `worker`, not `{target}`");
            }
            let before = self.replicas;
            self.scale(n).await?;
            return Ok(format!("workers scaled {before} -> {n}"));
        }
        if action == Action::Failover {
            return self.failover(target).await;
        }
        let services = match target.shard() {
            Some(shard) if matches!(action, Action::Start | Action::Unpause | Action::Connect) => {
                self.shard_nodes_to_heal(shard, action)?
            }
            _ => self.services_for(target).await?,
        };
        let mut done = Vec::new();
        for service in services {
            match action {
                Action::Kill => self.kill(service).await?,
                Action::Stop => self.stop(service).await?,
                Action::Start => self.start_service(service).await?,
                Action::Restart => self.restart(service).await?,
                Action::Pause => self.pause(service).await?,
                Action::Unpause => self.unpause(service).await?,
                Action::Disconnect => self.disconnect(service).await?,
                Action::Connect => self.connect(service).await?,
                Action::PowerLoss | Action::DiskFull | Action::Heal | Action::ClockJump => {
                    bail!("`{action}` applies to redis, not {service}")
                }
                Action::Scale
                | Action::Partition
                | Action::Loss
                | Action::Delay
                | Action::Failover => {
                    unreachable!("handled above")
                }
            }
            done.push(match target.shard() {
                Some(shard) => format!("{service} (shard {shard})"),
                None => service.to_string(),
            });
        }
        Ok(format!("{action} {}", done.join(", ")))
    }

    /// The process id holding a service's network namespace and its address on the run's
    /// network (docker runtime), e.g. to check a link fault from inside.
    pub async fn network_namespace(
        &self,
        service: Service,
    ) -> anyhow::Result<(u32, std::net::Ipv4Addr)> {
        match &self.backend {
            Backend::Docker(docker) => docker.netns(service).await,
            Backend::Process(_) => bail!("the process runtime's services share the host's network"),
        }
    }

    /// The switches of Redis's fault filesystem; an error when the run did not mount one.
    fn fault_disk(&self) -> anyhow::Result<faultfs::Control> {
        backend!(self, b => b.fault_disk()).context(
            "redis's data directory is not on the fault filesystem (the cluster was started \
             without `fault_disk`)",
        )
    }

    /// SIGKILL Redis, drop every write it had not fsynced, start it on what was synced.
    async fn power_loss(&mut self) -> anyhow::Result<String> {
        let disk = self.fault_disk()?;
        self.kill(Service::Redis).await?;
        let lost = disk.power_loss();
        self.start_service(Service::Redis).await?;
        Ok(format!(
            "redis killed, {} unsynced byte(s) in {} file(s) dropped, started again",
            lost.bytes, lost.files
        ))
    }

    /// Where a service's proxy to Redis listens (gateway address and port), when the run has
    /// proxies ([`ClusterSpec::link_proxies`], docker runtime).
    pub fn proxy_address(&self, service: Service) -> Option<(std::net::Ipv4Addr, u16)> {
        match &self.backend {
            Backend::Docker(docker) => docker
                .proxy(service)
                .map(|(proxy, gateway)| (gateway, proxy.port())),
            Backend::Process(_) => None,
        }
    }

    /// Drops the packets (all, or a share for `loss`) on a link, docker runtime only; see
    /// [`links`].
    async fn break_link(
        &mut self,
        action: Action,
        link: Link,
        probability: Option<f64>,
        delay: Option<crate::scenario::LinkDelay>,
    ) -> anyhow::Result<String> {
        let Backend::Docker(docker) = &self.backend else {
            bail!(
                "the process runtime cannot {action} a link: its services share the host's \
                 loopback; use --runtime docker"
            );
        };
        if action == Action::Delay {
            return self.delay_link(link, delay).await;
        }
        let drop = match action {
            Action::Loss => links::Drop::Random(probability.context("`loss` needs `probability`")?),
            _ => links::Drop::All,
        };
        let mut rules = Vec::new();
        for a in self.services_for(link.a).await? {
            for b in self.services_for(link.b).await? {
                // A service that reaches Redis through a proxy talks to the proxy, not to
                // Redis's address: the rules go in its namespace and match the proxy.
                let proxied = [(a, b), (b, a)].into_iter().find_map(|(client, server)| {
                    (server == Service::Redis)
                        .then(|| docker.proxy(client))
                        .flatten()
                        .map(|(proxy, gateway)| (client, gateway, proxy.port()))
                });
                match proxied {
                    Some((client, gateway, port)) => {
                        let (pid, _) = docker.netns(client).await?;
                        // one way towards Redis, or back from it
                        let towards_redis = client == a;
                        rules.extend(links::rules_to_port(
                            pid,
                            gateway,
                            port,
                            link.one_way,
                            towards_redis,
                            drop,
                        ));
                    }
                    None => {
                        let (pid, _) = docker.netns(a).await?;
                        let ip = docker.address(b).await?;
                        rules.extend(links::rules(pid, ip, link.one_way, drop));
                    }
                }
            }
        }
        links::insert(&rules).await?;
        let message = format!("{action} {link}: {} filter rule(s)", rules.len());
        self.link_faults.push(LinkFault {
            link,
            rules,
            delayed: Vec::new(),
        });
        Ok(message)
    }

    /// Adds latency to the proxies of a link's client side; see [`proxy`].
    async fn delay_link(
        &mut self,
        link: Link,
        delay: Option<crate::scenario::LinkDelay>,
    ) -> anyhow::Result<String> {
        let delay = delay.context("`delay` needs `latency`")?;
        let Backend::Docker(docker) = &self.backend else {
            bail!("the process runtime cannot delay a link; use --runtime docker");
        };
        let (client, upstream) = match (link.a, link.b) {
            (Target::Redis, client) => (client, false),
            (client, _) => (client, link.one_way),
        };
        let mut delayed = Vec::new();
        for service in self.services_for(client).await? {
            let (proxy, _) = docker.proxy(service).with_context(|| {
                format!("{service} reaches Redis without a proxy (the cluster was started without `link_proxies`)")
            })?;
            proxy.delay(delay.latency, delay.jitter, upstream).await?;
            delayed.push(service);
        }
        let message = format!(
            "delay {link}: +{} ± {} on {} proxy(ies)",
            humantime::format_duration(delay.latency),
            humantime::format_duration(delay.jitter),
            delayed.len()
        );
        self.link_faults.push(LinkFault {
            link,
            rules: Vec::new(),
            delayed,
        });
        Ok(message)
    }

    /// Ends the link faults `subject` selects (one link, or all).
    async fn heal_links(&mut self, subject: &Subject) -> anyhow::Result<String> {
        let (healed, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.link_faults)
            .into_iter()
            .partition(|fault| subject.heals(&Subject::Link(fault.link)));
        self.link_faults = kept;
        if healed.is_empty() && *subject != Subject::AllLinks {
            bail!("no link fault on {subject} to heal");
        }
        let mut removed = 0;
        for fault in &healed {
            removed += links::remove(&fault.rules).await;
            if let Backend::Docker(docker) = &mut self.backend {
                for service in &fault.delayed {
                    docker.heal_proxy(*service).await?;
                }
            }
        }
        let names: Vec<String> = healed.iter().map(|f| f.link.to_string()).collect();
        Ok(format!(
            "healed {} link fault(s) ({removed} filter rule(s) removed){}",
            healed.len(),
            if names.is_empty() {
                String::new()
            } else {
                format!(": {}", names.join(", "))
            }
        ))
    }

    async fn services_for(&self, target: Target) -> anyhow::Result<Vec<Service>> {
        Ok(match target {
            Target::Redis => vec![Service::Redis],
            Target::Primary(shard) => vec![self.shard_primary(shard).await?],
            Target::Replica(shard) => vec![self.shard_replica(shard).await?],
            Target::Orchestrator => vec![Service::Orchestrator],
            Target::AllWorkers => (1..=self.replicas).map(Service::Worker).collect(),
            Target::Worker(n) if n <= self.replicas => vec![Service::Worker(n)],
            Target::Worker(n) => {
                bail!("there is no worker.{n}: {} replica(s) run", self.replicas)
            }
        })
    }

    /// The nodes of shard `shard` (from 1): the one started as primary first.
    fn shard_nodes(&self, shard: u32) -> Vec<Service> {
        (0..=self.spec.redis.replicas)
            .map(|member| Service::RedisNode(shard, member))
            .collect()
    }

    /// What each running, connected node of `shard` says it is.
    async fn shard_roles(&self, shard: u32) -> Vec<(Service, redis_cluster::Role)> {
        let mut roles = Vec::new();
        for node in self.shard_nodes(shard) {
            let reachable = self
                .status
                .get(&node)
                .is_some_and(|s| s.state == ServiceState::Running && s.connected);
            if !reachable {
                continue;
            }
            if let Ok(role) = redis_cluster::role(&self.node_url(node)).await {
                roles.push((node, role));
            }
        }
        roles
    }

    /// The node that is shard `shard`'s primary now (of two that claim it, the one with the
    /// newer configuration epoch: the other has not heard yet that it was replaced).
    async fn shard_primary(&self, shard: u32) -> anyhow::Result<Service> {
        self.shard_roles(shard)
            .await
            .into_iter()
            .filter(|(_, role)| role.primary)
            .max_by_key(|(_, role)| role.epoch)
            .map(|(node, _)| node)
            .with_context(|| {
                format!(
                    "shard {shard} has no primary now ({})",
                    self.shard_states(shard)
                )
            })
    }

    /// A running replica of shard `shard` (the first).
    async fn shard_replica(&self, shard: u32) -> anyhow::Result<Service> {
        self.shard_roles(shard)
            .await
            .into_iter()
            .find(|(_, role)| !role.primary)
            .map(|(node, _)| node)
            .with_context(|| {
                format!(
                    "shard {shard} has no running replica ({})",
                    self.shard_states(shard)
                )
            })
    }

    /// `redis-1-0 stopped, redis-1-1 running`, for errors.
    fn shard_states(&self, shard: u32) -> String {
        self.shard_nodes(shard)
            .into_iter()
            .map(|node| {
                let state = match self.status.get(&node) {
                    Some(s) if !s.connected => "disconnected",
                    Some(s) if s.state == ServiceState::Running => "running",
                    Some(s) if s.state == ServiceState::Paused => "paused",
                    _ => "stopped",
                };
                format!("{node} {state}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The nodes of `shard` a `start`, `unpause` or `connect` brings back: those stopped,
    /// paused or disconnected (`redis.S` names a role, and the node that had it may be gone).
    fn shard_nodes_to_heal(&self, shard: u32, action: Action) -> anyhow::Result<Vec<Service>> {
        let nodes: Vec<Service> = self
            .shard_nodes(shard)
            .into_iter()
            .filter(|node| {
                let status = self.status.get(node);
                match action {
                    Action::Start => status.is_none_or(|s| s.state == ServiceState::Stopped),
                    Action::Unpause => status.is_some_and(|s| s.state == ServiceState::Paused),
                    _ => status.is_some_and(|s| !s.connected),
                }
            })
            .collect();
        if nodes.is_empty() {
            bail!(
                "no node of shard {shard} to {action} ({})",
                self.shard_states(shard)
            );
        }
        Ok(nodes)
    }

    /// `failover redis.S`: the shard's replica takes over at once.
    async fn failover(&mut self, target: Target) -> anyhow::Result<String> {
        let shard = target
            .shard()
            .with_context(|| format!("`failover` acts on a shard, `redis.S`, not `{target}`"))?;
        let replica = self.shard_replica(shard).await?;
        let took = redis_cluster::take_over(&self.node_url(replica)).await?;
        Ok(format!(
            "{replica} took over shard {shard} in {:.2}s (CLUSTER FAILOVER TAKEOVER)",
            took.as_secs_f64()
        ))
    }

    fn status_mut(&mut self, service: Service) -> &mut Status {
        self.status.entry(service).or_insert(Status {
            state: ServiceState::Stopped,
            connected: true,
        })
    }

    /// The single Redis, or every cluster node, running and connected.
    fn redis_healthy(&self) -> bool {
        self.spec.redis_services().iter().all(|node| {
            self.status
                .get(node)
                .is_some_and(|s| s.state == ServiceState::Running && s.connected)
        })
    }

    /// SIGKILL; returns once the service is gone.
    pub async fn kill(&mut self, service: Service) -> anyhow::Result<()> {
        backend!(mut self, b => b.kill(service).await)?;
        self.status_mut(service).state = ServiceState::Stopped;
        Ok(())
    }

    /// SIGTERM, SIGKILL after [`STOP_GRACE`]; returns once the service is gone.
    pub async fn stop(&mut self, service: Service) -> anyhow::Result<()> {
        if self.state(service) == Some(ServiceState::Paused) {
            // A frozen process cannot handle SIGTERM.
            backend!(mut self, b => b.unpause(service).await)?;
        }
        backend!(mut self, b => b.stop(service, STOP_GRACE).await)?;
        self.status_mut(service).state = ServiceState::Stopped;
        Ok(())
    }

    /// Starts a stopped (or never started) service and waits until it is ready. Starting a
    /// running service only waits for readiness.
    pub async fn start_service(&mut self, service: Service) -> anyhow::Result<()> {
        match self.state(service) {
            Some(ServiceState::Running) => {}
            Some(ServiceState::Paused) => return self.unpause(service).await,
            Some(ServiceState::Stopped) | None => {
                backend!(mut self, b => b.start(service).await)
                    .with_context(|| format!("starting {service}"))?;
                self.status_mut(service).state = ServiceState::Running;
            }
        }
        self.wait_ready(service).await
    }

    /// Stop, then start; waits until ready.
    pub async fn restart(&mut self, service: Service) -> anyhow::Result<()> {
        self.stop(service).await?;
        self.start_service(service).await
    }

    /// Freezes a service.
    pub async fn pause(&mut self, service: Service) -> anyhow::Result<()> {
        if self.state(service) != Some(ServiceState::Running) {
            bail!("{service} is not running, so it cannot be paused");
        }
        backend!(mut self, b => b.pause(service).await)?;
        self.status_mut(service).state = ServiceState::Paused;
        Ok(())
    }

    /// Thaws a service and waits until it is ready.
    pub async fn unpause(&mut self, service: Service) -> anyhow::Result<()> {
        if self.state(service) != Some(ServiceState::Paused) {
            bail!("{service} is not paused");
        }
        backend!(mut self, b => b.unpause(service).await)?;
        self.status_mut(service).state = ServiceState::Running;
        self.wait_ready(service).await
    }

    /// Cuts a service off the cluster network (docker runtime only).
    pub async fn disconnect(&mut self, service: Service) -> anyhow::Result<()> {
        if !self.status_mut(service).connected {
            bail!("{service} is already disconnected");
        }
        backend!(mut self, b => b.disconnect(service).await)?;
        self.status_mut(service).connected = false;
        Ok(())
    }

    /// Reconnects a service (docker runtime only) and waits until it is ready.
    pub async fn connect(&mut self, service: Service) -> anyhow::Result<()> {
        if self.status_mut(service).connected {
            bail!("{service} is not disconnected");
        }
        backend!(mut self, b => b.connect(service).await)?;
        self.status_mut(service).connected = true;
        if self.state(service) == Some(ServiceState::Running) {
            self.wait_ready(service).await?;
        }
        Ok(())
    }

    /// Sets the number of worker replicas. New replicas start and become ready; replicas beyond
    /// `n` stop gracefully (their logs stay available to the checker).
    pub async fn scale(&mut self, n: u32) -> anyhow::Result<()> {
        if n > crate::scenario::MAX_WORKERS {
            bail!("at most {} workers, not {n}", crate::scenario::MAX_WORKERS);
        }
        let mut retiring = Vec::new();
        for slot in (n + 1)..=self.replicas {
            let service = Service::Worker(slot);
            match self.state(service) {
                Some(ServiceState::Stopped) | None => {}
                Some(ServiceState::Paused) => {
                    // A frozen process cannot handle SIGTERM.
                    self.unpause(service).await?;
                    retiring.push(service);
                }
                Some(ServiceState::Running) => retiring.push(service),
            }
        }
        // Concurrently: scale-down costs one grace period, not one per replica.
        backend!(mut self, b => b.stop_many(&retiring, STOP_GRACE).await)?;
        for service in retiring {
            self.status_mut(service).state = ServiceState::Stopped;
        }
        for slot in 1..=n.min(self.replicas) {
            if self.state(Service::Worker(slot)) == Some(ServiceState::Paused) {
                self.unpause(Service::Worker(slot)).await?;
            }
        }
        let to_start: Vec<u32> = (1..=n)
            .filter(|slot| self.state(Service::Worker(*slot)) != Some(ServiceState::Running))
            .collect();
        backend!(mut self, b => b.start_workers(&to_start).await)
            .with_context(|| format!("starting workers {to_start:?}"))?;
        for slot in &to_start {
            self.status_mut(Service::Worker(*slot)).state = ServiceState::Running;
        }
        self.replicas = n;
        let waits = to_start
            .iter()
            .map(|slot| self.wait_ready(Service::Worker(*slot)));
        futures::future::try_join_all(waits).await?;
        Ok(())
    }

    /// Waits until `service` answers its readiness check, up to [`READY_TIMEOUT`].
    pub async fn wait_ready(&self, service: Service) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let redis_healthy = self.redis_healthy();
        loop {
            let result = match service {
                Service::Redis | Service::RedisNode(..) => {
                    ping_redis(&self.node_url(service)).await
                }
                Service::Orchestrator => {
                    // While Redis is down the orchestrator can only be alive, not ready.
                    let path = if redis_healthy { "/readyz" } else { "/healthz" };
                    self.http_ok(&format!("{}{path}", self.orchestrator_url()), true)
                        .await
                }
                Service::Worker(n) => match backend!(self, b => b.worker_health_url(n)) {
                    Some(url) => self.http_ok(&format!("{url}/healthz"), redis_healthy).await,
                    None => Err(anyhow::anyhow!("worker.{n} has no metrics address")),
                },
            };
            if let Err(e) = result {
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "{service} was not ready within {}s: {e:#}",
                        READY_TIMEOUT.as_secs()
                    );
                }
            } else {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Docker may have given a restarted container a new host port.
            if let Backend::Docker(d) = &self.backend {
                let _ = d.refresh_address(service).await;
            }
        }
    }

    async fn http_ok(&self, url: &str, require_success: bool) -> anyhow::Result<()> {
        let response = self.http.get(url).send().await?;
        if require_success && !response.status().is_success() {
            bail!("{url} answered {}", response.status());
        }
        Ok(())
    }

    /// Every `task_executed` line logged so far by any worker replica, including stopped ones.
    pub async fn executions(&self) -> anyhow::Result<Vec<Execution>> {
        backend!(self, b => b.executions().await)
    }

    /// Raw logs of one service (for debugging failed runs).
    pub async fn logs(&self, service: Service) -> anyhow::Result<String> {
        backend!(self, b => b.logs(service).await)
    }

    /// Removes everything the cluster created and checks that nothing is left.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        match self.backend {
            Backend::Docker(d) => d.shutdown().await,
            Backend::Process(p) => p.shutdown().await,
        }
    }
}

/// `PING` → `PONG` within a second (fails while Redis loads its AOF).
pub async fn ping_redis(url: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url).context("parsing the redis url")?;
    let attempt = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        let pong: String = redis::cmd("PING").query_async(&mut connection).await?;
        anyhow::ensure!(pong == "PONG", "PING answered {pong}");
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .context("PING timed out")?
}

/// Picks the runtime: `explicit` (a CLI flag) wins, then `HARNESS_RUNTIME`, then the scenario's
/// own setting, then Docker when an engine answers, else processes. Returns the choice and why.
pub async fn choose_runtime(
    explicit: Option<RuntimeKind>,
    scenario: Option<RuntimeKind>,
) -> anyhow::Result<(RuntimeKind, String)> {
    let env = std::env::var(RUNTIME_ENV).ok();
    if let Some(choice) = decided_runtime(explicit, env.as_deref(), scenario) {
        return choice;
    }
    let engine = crate::cleanup::docker_client().await;
    Ok(match engine {
        Ok(docker) if docker.ping().await.is_ok() => {
            (RuntimeKind::Docker, "a docker engine answered".into())
        }
        Ok(_) | Err(_) => (
            RuntimeKind::Process,
            "no docker engine answered, so local processes".into(),
        ),
    })
}

/// The runtime fixed by a flag, the env var's value or the scenario; `None` leaves the choice to
/// auto-detection. A malformed env value is an error, never silently ignored.
pub fn decided_runtime(
    explicit: Option<RuntimeKind>,
    env: Option<&str>,
    scenario: Option<RuntimeKind>,
) -> Option<anyhow::Result<(RuntimeKind, String)>> {
    if let Some(runtime) = explicit {
        return Some(Ok((runtime, "chosen with --runtime".into())));
    }
    if let Some(raw) = env.map(str::trim).filter(|raw| !raw.is_empty()) {
        return Some(
            raw.parse::<RuntimeKind>()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{RUNTIME_ENV}={raw}"))
                .map(|runtime| (runtime, format!("forced by {RUNTIME_ENV}"))),
        );
    }
    scenario.map(|runtime| Ok((runtime, "asked for by the scenario".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decided(
        explicit: Option<RuntimeKind>,
        env: Option<&str>,
        scenario: Option<RuntimeKind>,
    ) -> Option<RuntimeKind> {
        decided_runtime(explicit, env, scenario).map(|r| r.expect("a valid choice").0)
    }

    #[test]
    fn the_flag_beats_the_env_var_which_beats_the_scenario() {
        use RuntimeKind::{Docker, Process};
        assert_eq!(
            decided(Some(Process), Some("docker"), Some(Docker)),
            Some(Process)
        );
        assert_eq!(decided(None, Some("process"), Some(Docker)), Some(Process));
        assert_eq!(decided(None, Some(" "), Some(Docker)), Some(Docker));
        assert_eq!(decided(None, None, None), None, "auto-detection decides");
    }

    #[test]
    fn a_misspelt_env_var_is_an_error() {
        let err = decided_runtime(None, Some("dokcer"), None)
            .expect("the env var decides")
            .expect_err("dokcer is not a runtime");
        assert!(
            format!("{err:#}").contains("HARNESS_RUNTIME=dokcer"),
            "{err:#}"
        );
    }

    #[test]
    fn workers_get_humantime_durations_under_the_current_names() {
        let env: std::collections::BTreeMap<String, String> =
            ClusterSpec::new("t", 1).worker_env().into_iter().collect();
        assert_eq!(env["WORKER_WORK"], "20ms");
        assert_eq!(env["SHUTDOWN_GRACE"], "6s", "three quarters of STOP_GRACE");
        assert_eq!(env["WORKER_DEAD_AFTER"], "3s");
        assert_eq!(
            env["REDIS_TIMEOUT"], "2s",
            "the worker's own, not the orchestrator's"
        );
        assert!(
            env.keys().all(|name| !name.ends_with("_MS")),
            "deprecated names: {env:?}"
        );
    }

    #[test]
    fn run_ids_are_unique_and_safe_names() {
        let a = new_run_id("Kill Redis/1");
        let b = new_run_id("Kill Redis/1");
        assert_ne!(a, b);
        assert!(a.starts_with("kill-redis-1-"), "{a}");
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
