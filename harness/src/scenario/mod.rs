//! Scenario files (`scenarios/*.toml`): strict parsing, validation and the step plan.
//!
//! A scenario is data: the cluster to start, the load to offer, the fault steps to inject at given
//! offsets, and what must hold afterwards. Parsing is strict: an unknown key, action or target, a
//! bad duration or an inconsistent step is an error that names the file, the line and the field
//! (``scenarios/x.toml:14: field `step[2].at`: ...``). The format is documented in
//! `docs/scenarios.md`.
//!
//! [`Scenario::plan`] turns the file into the concrete, time-scaled list of steps a run executes,
//! expanding the `[chaos]` section into seeded random faults.
//!
//! This module holds the model; [`parse`] reads and validates files ([`Scenario::from_file`],
//! [`Scenario::parse`]) and locates their errors; [`plan`] builds the [`Plan`].

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer};

pub mod parse;
pub mod plan;

pub use parse::{ScenarioError, parse_duration};
pub use plan::{Plan, PlannedStep, ServiceTiming, StepOrigin};

impl Scenario {
    /// Whether Redis's data directory must sit on the fault filesystem (`power-loss`,
    /// `disk-full`).
    pub fn needs_fault_fs(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.action, Action::PowerLoss | Action::DiskFull))
    }

    /// Whether the services reach Redis through the harness's proxies (`delay`).
    pub fn needs_link_proxies(&self) -> bool {
        self.steps.iter().any(|s| s.action == Action::Delay)
    }

    /// Whether Redis must run with a shiftable wall clock (`clock-jump`).
    pub fn needs_clock_shift(&self) -> bool {
        self.steps.iter().any(|s| s.action == Action::ClockJump)
    }
}

/// Most worker replicas a scenario may ask for (the machine has two cores).
pub const MAX_WORKERS: u32 = 16;

/// A parsed, validated scenario file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// `name`: short identifier, shown in reports.
    pub name: String,
    /// `description`: one sentence on what the scenario proves.
    pub description: String,
    /// The file it was read from.
    pub path: PathBuf,
    /// `[cluster]`: what to start.
    pub cluster: ClusterSettings,
    /// `[load]`: the submit load offered during the run.
    pub load: LoadSettings,
    /// `[[step]]`: fault and healing steps, sorted by `at`.
    pub steps: Vec<Step>,
    /// `[chaos]`: optional seeded random faults.
    pub chaos: Option<ChaosSettings>,
    /// `[expect]`: what must hold for the scenario to pass.
    pub expect: Expectations,
}

/// The `[cluster]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// Initial worker replicas.
    pub workers: u32,
    /// How Redis persists its data.
    pub redis_persistence: Persistence,
    /// Runtime the scenario asks for; `None` lets the harness choose.
    pub runtime: Option<RuntimeKind>,
    /// `WORKER_CONCURRENCY` of each worker.
    pub worker_concurrency: u32,
    /// `WORKER_WORK`: simulated work per task.
    pub work: Duration,
    /// `WORKER_FAIL_RATE`: share of executions that fail transiently (retried with backoff).
    pub fail_rate: f64,
    /// `WORKER_PERMANENT_FAIL_RATE`: share of executions that fail for good (dead-lettered).
    pub permanent_fail_rate: f64,
    /// Redis topology: one server, or a Redis Cluster.
    pub redis: RedisTopology,
}

/// `redis_shards`, `redis_replicas`, `replica_acks`: one Redis server (the default), or a Redis
/// Cluster of `shards` primaries with `replicas` replicas each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RedisTopology {
    /// Primaries (hash-slot ranges); 1 with no replicas is a single Redis.
    pub shards: u32,
    /// Replicas per primary.
    pub replicas: u32,
    /// `REPLICA_ACKS` of the orchestrator: replicas that must confirm a write before the client
    /// is answered (0: asynchronous replication).
    pub replica_acks: u32,
}

/// Most primaries a scenario may ask for (every node is a container on two cores).
pub const MAX_SHARDS: u32 = 5;
/// Most replicas per primary.
pub const MAX_REPLICAS: u32 = 2;

impl RedisTopology {
    /// One Redis server.
    pub const SINGLE: Self = Self {
        shards: 1,
        replicas: 0,
        replica_acks: 0,
    };

    /// Whether this is a Redis Cluster (more than one primary, or replicas).
    pub fn is_cluster(&self) -> bool {
        self.shards > 1 || self.replicas > 0
    }
}

/// Redis durability setting (`redis_persistence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Persistence {
    /// `appendonly yes`, `appendfsync always`: a 201 survives a crash of Redis.
    AofAlways,
    /// `appendonly yes`, `appendfsync everysec`.
    AofEverysec,
    /// `appendonly yes`, `appendfsync no`: the AOF is written but never fsynced, so it survives
    /// a process crash (the page cache keeps it) but not a power loss.
    AofNo,
    /// No AOF and no snapshots: a restart loses everything.
    None,
}

impl Persistence {
    /// `redis-server` arguments implementing this setting.
    pub fn redis_args(self) -> Vec<String> {
        let args: &[&str] = match self {
            Persistence::AofAlways => &["--appendonly", "yes", "--appendfsync", "always"],
            Persistence::AofEverysec => &["--appendonly", "yes", "--appendfsync", "everysec"],
            Persistence::AofNo => &["--appendonly", "yes", "--appendfsync", "no"],
            Persistence::None => &["--appendonly", "no"],
        };
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        // Snapshots are off in every mode so the AOF alone decides what survives.
        args.extend(["--save".to_string(), String::new()]);
        args
    }
}

impl fmt::Display for Persistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Persistence::AofAlways => "aof-always",
            Persistence::AofEverysec => "aof-everysec",
            Persistence::AofNo => "aof-no",
            Persistence::None => "none",
        })
    }
}

/// Where the services run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Containers on a fresh Docker network; Redis through testcontainers.
    Docker,
    /// Local processes: `redis-server` and the built binaries.
    Process,
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Process => "process",
        })
    }
}

impl FromStr for RuntimeKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "docker" => Ok(RuntimeKind::Docker),
            "process" => Ok(RuntimeKind::Process),
            other => Err(format!(
                "unknown runtime `{other}`, expected `docker` or `process`"
            )),
        }
    }
}

/// The `[load]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSettings {
    /// Tasks offered per second (open model).
    pub rate: u32,
    /// How long the load runs.
    pub duration: Duration,
    /// Concurrent virtual users of the load generator.
    pub users: usize,
    /// A submit not answered within this is `info` (indeterminate).
    pub request_timeout: Duration,
    /// Share of acknowledged tasks the load cancels right after (`DELETE /tasks/{id}`).
    pub cancel_share: f64,
    /// Share of acknowledged tasks the load reads back right after (`GET /tasks/{id}`).
    pub read_share: f64,
    /// Share of submits that are scheduled (`delay_ms` up to `max_delay`).
    pub delay_share: f64,
    /// Longest `delay_ms` of a scheduled submit (not time-scaled).
    pub max_delay: Duration,
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// SIGKILL.
    Kill,
    /// SIGTERM, then SIGKILL after a grace period.
    Stop,
    /// Start a killed or stopped service and wait until it is ready.
    Start,
    /// Stop then start, waiting for readiness.
    Restart,
    /// Freeze (cgroup freezer in Docker, SIGSTOP for processes).
    Pause,
    /// Thaw a paused service.
    Unpause,
    /// Set the number of worker replicas (`replicas`).
    Scale,
    /// Cut the service off the cluster network (docker runtime).
    Disconnect,
    /// Reconnect a disconnected service.
    Connect,
    /// Drop every packet on a link (both ways, or one way with `from`/`to`).
    Partition,
    /// Drop a random share (`probability`) of the packets on a link.
    Loss,
    /// Add `latency` (± `jitter`) to a link between Redis and another service.
    Delay,
    /// End link faults (of one link, or all), or a `disk-full` (with `target`).
    Heal,
    /// SIGKILL Redis, drop every write it had not fsynced, start it again.
    PowerLoss,
    /// Redis's data directory refuses writes (ENOSPC) until `heal`.
    DiskFull,
    /// Redis's wall clock jumps by `offset` (forward, or backward with a leading `-`).
    ClockJump,
    /// A Redis Cluster shard's replica takes over from its primary at once
    /// (`CLUSTER FAILOVER TAKEOVER`: without the primary's agreement or the other primaries'
    /// votes, as an operator promotes a replica when the primary is gone).
    Failover,
}

impl Action {
    /// Whether this step heals a fault; recovery time is measured after healing steps.
    pub fn is_healing(self) -> bool {
        matches!(
            self,
            Action::Start | Action::Restart | Action::Unpause | Action::Connect | Action::Heal
        )
    }

    /// Whether recovery is measured after this step: healing steps, and `power-loss` (a crash
    /// and its restart in one step).
    pub fn is_recovery_point(self) -> bool {
        self.is_healing() || self == Action::PowerLoss
    }

    /// Whether this step acts on a link between two services (`between`, or `from` and `to`).
    pub fn on_link(self) -> bool {
        matches!(self, Action::Partition | Action::Loss | Action::Delay)
    }

    /// Whether this step injects a fault that a later step heals.
    pub fn is_fault(self) -> bool {
        self.healing_action().is_some()
    }

    /// The step that undoes this fault, if one is needed.
    pub fn healing_action(self) -> Option<Action> {
        match self {
            Action::Kill | Action::Stop => Some(Action::Start),
            Action::Pause => Some(Action::Unpause),
            Action::Disconnect => Some(Action::Connect),
            Action::Partition | Action::Loss | Action::Delay | Action::DiskFull => {
                Some(Action::Heal)
            }
            _ => None,
        }
    }

    /// Lower-case name as written in scenario files.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Stop => "stop",
            Action::Start => "start",
            Action::Restart => "restart",
            Action::Pause => "pause",
            Action::Unpause => "unpause",
            Action::Scale => "scale",
            Action::Disconnect => "disconnect",
            Action::Connect => "connect",
            Action::Partition => "partition",
            Action::Loss => "loss",
            Action::Delay => "delay",
            Action::Heal => "heal",
            Action::PowerLoss => "power-loss",
            Action::DiskFull => "disk-full",
            Action::ClockJump => "clock-jump",
            Action::Failover => "failover",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so width and alignment apply (the report summary's columns).
        f.pad(self.as_str())
    }
}

/// Which service a step acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The Redis server.
    Redis,
    /// The orchestrator.
    Orchestrator,
    /// `worker`: every current worker replica.
    AllWorkers,
    /// `worker.N`: the N-th worker replica, counted from 1.
    Worker(u32),
    /// `redis.S`: the current primary of Redis Cluster shard S, counted from 1.
    Primary(u32),
    /// `redis.S.replica`: the current replica of shard S (with several, the first running one).
    Replica(u32),
}

impl Target {
    /// Whether this is Redis: the single server, or a node of a Redis Cluster.
    pub fn is_redis(self) -> bool {
        matches!(
            self,
            Target::Redis | Target::Primary(_) | Target::Replica(_)
        )
    }

    /// The Redis Cluster shard this target names, if it names one.
    pub fn shard(self) -> Option<u32> {
        match self {
            Target::Primary(shard) | Target::Replica(shard) => Some(shard),
            _ => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so width and alignment apply (the report summary's columns).
        match self {
            Target::Redis => f.pad("redis"),
            Target::Orchestrator => f.pad("orchestrator"),
            Target::AllWorkers => f.pad("worker"),
            Target::Worker(n) => f.pad(&format!("worker.{n}")),
            Target::Primary(s) => f.pad(&format!("redis.{s}")),
            Target::Replica(s) => f.pad(&format!("redis.{s}.replica")),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "redis" => Ok(Target::Redis),
            "orchestrator" => Ok(Target::Orchestrator),
            "worker" => Ok(Target::AllWorkers),
            other => {
                let shard = |raw: &str| raw.parse::<u32>().ok().filter(|n| *n >= 1);
                let parsed = if let Some(n) = other.strip_prefix("worker.") {
                    shard(n).map(Target::Worker)
                } else if let Some(rest) = other.strip_prefix("redis.") {
                    match rest.strip_suffix(".replica") {
                        Some(s) => shard(s).map(Target::Replica),
                        None => shard(rest).map(Target::Primary),
                    }
                } else {
                    None
                };
                parsed.ok_or_else(|| {
                    format!(
                        "unknown target `{other}`, expected `redis`, `orchestrator`, `worker`, \
                         `worker.N`, `redis.S` or `redis.S.replica` (N, S >= 1)"
                    )
                })
            }
        }
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A link between two services: both ways (`between = [a, b]`) or one way (`from = a`, `to = b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Link {
    /// First service (`from` for a one-way link).
    pub a: Target,
    /// Second service (`to` for a one-way link).
    pub b: Target,
    /// Only packets from `a` to `b` are affected.
    pub one_way: bool,
}

impl Link {
    /// Whether `self` and `other` name the same link (a two-way pair in either order).
    pub fn same(&self, other: &Link) -> bool {
        self.one_way == other.one_way
            && ((self.a == other.a && self.b == other.b)
                || (!self.one_way && self.a == other.b && self.b == other.a))
    }

    /// Whether one end of the link is on `pred`'s side and the other on `other`'s.
    pub fn joins(&self, pred: fn(Target) -> bool, other: fn(Target) -> bool) -> bool {
        (pred(self.a) && other(self.b)) || (pred(self.b) && other(self.a))
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arrow = if self.one_way { "->" } else { "<->" };
        f.pad(&format!("{}{arrow}{}", self.a, self.b))
    }
}

/// What a step acts on: one service, one link, or (a `heal` without selector) every link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// One service, or every worker (`target`).
    Service(Target),
    /// A link between two services (`between`, or `from` and `to`).
    Link(Link),
    /// Every link fault (`heal` with no selector).
    AllLinks,
}

impl Subject {
    /// The service, for steps on one service.
    pub fn service(&self) -> Option<Target> {
        match self {
            Subject::Service(target) => Some(*target),
            _ => None,
        }
    }

    /// Whether a healing step on `self` ends a fault on `fault`: the same service or link, or
    /// any link for `heal` without selector.
    pub fn heals(&self, fault: &Subject) -> bool {
        match (self, fault) {
            (Subject::Service(a), Subject::Service(b)) => a == b,
            (Subject::Link(a), Subject::Link(b)) => a.same(b),
            (Subject::AllLinks, Subject::Link(_)) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Service(target) => target.fmt(f),
            Subject::Link(link) => link.fmt(f),
            Subject::AllLinks => f.pad("links"),
        }
    }
}

impl FromStr for Subject {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "links" {
            return Ok(Subject::AllLinks);
        }
        for (arrow, one_way) in [("<->", false), ("->", true)] {
            if let Some((a, b)) = s.split_once(arrow) {
                return Ok(Subject::Link(Link {
                    a: a.parse()?,
                    b: b.parse()?,
                    one_way,
                }));
            }
        }
        s.parse().map(Subject::Service)
    }
}

impl<'de> Deserialize<'de> for Subject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Subject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One `[[step]]` of a scenario file.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Offset from the start of the load.
    pub at: Duration,
    /// What to do.
    pub action: Action,
    /// On which service or link.
    pub subject: Subject,
    /// With `scale`: the wanted worker replicas.
    pub replicas: Option<u32>,
    /// With `loss`: the share of packets dropped.
    pub probability: Option<f64>,
    /// With `clock-jump`: how far the clock jumps.
    pub offset: Option<ClockOffset>,
    /// With `delay`: the latency added.
    pub delay: Option<LinkDelay>,
}

/// What a `delay` adds to a link: `latency`, give or take up to `jitter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkDelay {
    /// Added to every chunk of data.
    pub latency: Duration,
    /// Up to this much more or less, at random.
    pub jitter: Duration,
}

/// How far a `clock-jump` moves the clock: `"10s"` forward, `"-10s"` backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockOffset {
    /// The size of the jump.
    pub by: Duration,
    /// Forward (true) or backward.
    pub forward: bool,
}

impl FromStr for ClockOffset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        let (forward, rest) = match trimmed.strip_prefix('-') {
            Some(rest) => (false, rest),
            None => (true, trimmed.strip_prefix('+').unwrap_or(trimmed)),
        };
        let by = parse_duration(rest.trim())?;
        if by.is_zero() {
            return Err("a clock jump of zero changes nothing".into());
        }
        Ok(ClockOffset { by, forward })
    }
}

impl fmt::Display for ClockOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.forward { "+" } else { "-" };
        f.pad(&format!("{sign}{}", humantime::format_duration(self.by)))
    }
}

/// The `[chaos]` section: random faults drawn from a seeded generator.
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosSettings {
    /// Seed of the generator; `harness run --seed` overrides it.
    pub seed: u64,
    /// First fault after this offset.
    pub start: Duration,
    /// Quiet time between healing one fault and injecting the next.
    pub interval: Duration,
    /// How long a fault lasts before it is healed.
    pub fault_duration: Duration,
    /// Faults to draw from (`kill`, `stop`, `restart`, `pause`, `disconnect`, `partition`).
    pub actions: Vec<Action>,
    /// Targets to draw from.
    pub targets: Vec<Target>,
    /// No fault is injected after this offset (default: the load duration), so the cluster heals
    /// before the load ends.
    pub until: Option<Duration>,
    /// How many faults may hold at once, each on another service (default 1: sequential).
    pub max_concurrent: usize,
}

/// The `[expect]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectations {
    /// At most this many acknowledged tasks may never execute (and have no waiting record).
    pub lost: u64,
    /// At most this many acknowledged tasks may still wait or run after the drain.
    pub stuck: u64,
    /// At most this many tasks may end in a status their executions contradict.
    pub wrong_status: u64,
    /// At most this many services may exit without a step causing it.
    pub unplanned_exits: u64,
    /// At most this many executed tasks may never have been submitted.
    pub unexpected: u64,
    /// At most this many tasks may execute more than once; `None`: not checked.
    pub max_duplicated: Option<u64>,
    /// After the load stops, every acknowledged task reaches a final state within this.
    pub drain_within: Duration,
    /// After each healing step, a submit succeeds and a task executes within this.
    pub recovery_within: Option<Duration>,
    /// At least this many submits must be acknowledged (guards against a run that tested nothing).
    pub min_acknowledged: u64,
    /// At least this many tasks must have been reclaimed from a dead execution (proves a kill
    /// hit in-flight work); `None`: not checked.
    pub min_reclaimed: Option<u64>,
    /// At least this many tasks acknowledged before a fault must run only after it was healed
    /// (proves a backlog crossed the fault); `None`: not checked.
    pub min_carried_over: Option<u64>,
    /// At least this many submits must have been refused or left unanswered (`fail` or `info`):
    /// proves a fault on Redis or the orchestrator reached the clients; `None`: not checked.
    pub min_unavailable: Option<u64>,
    /// At least this many distinct workers must have executed a task (proves a scale-up or a
    /// restart brought new workers in); `None`: not checked.
    pub min_workers: Option<u64>,
    /// The 99th percentile of the wait from acknowledgement to first start must be at least
    /// this (proves a fault slowed the queue down without stopping it); `None`: not checked.
    pub min_start_wait_p99: Option<Duration>,
    /// At most this many tasks may be taken over from a worker that no step faulted and that
    /// never exited (a live worker judged dead); `None`: not checked.
    pub max_live_takeovers: Option<u64>,
    /// At most this many tasks may start while a more urgent one, acknowledged before they
    /// were submitted, still waited for its first start; `None`: not checked.
    pub max_priority_inversions: Option<u64>,
    /// At most this many reads of an acknowledged task may answer 404.
    pub unreadable: u64,
}

impl Scenario {
    /// Whether any step (or chaos fault) needs network control (disconnects, link faults), which
    /// only Docker can do.
    pub fn needs_network_control(&self) -> bool {
        self.steps.iter().any(|s| {
            matches!(s.action, Action::Disconnect | Action::Connect)
                || s.action.on_link()
                || matches!(s.subject, Subject::Link(_) | Subject::AllLinks)
        }) || self
            .chaos
            .as_ref()
            .is_some_and(|c| c.actions.contains(&Action::Disconnect))
    }
}
