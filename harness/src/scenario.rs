//! Scenario files (`scenarios/*.toml`): strict parsing, validation and the step plan.
//!
//! A scenario is data: the cluster to start, the load to offer, the fault steps to inject at given
//! offsets, and what must hold afterwards. Parsing is strict: an unknown key, action or target, a
//! bad duration or an inconsistent step is an error that names the file, the line and the field
//! (`scenarios/x.toml:14: field `step[2].at`: ...`). The format is documented in
//! `docs/scenarios.md`.
//!
//! [`Scenario::plan`] turns the file into the concrete, time-scaled list of steps a run executes,
//! expanding the `[chaos]` section into seeded random faults.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Deserializer};
use toml::Spanned;

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
    /// `WORKER_WORK_MS`: simulated work per task.
    pub work: Duration,
}

/// Redis durability setting (`redis_persistence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Persistence {
    /// `appendonly yes`, `appendfsync always`: a 201 survives a crash of Redis.
    AofAlways,
    /// `appendonly yes`, `appendfsync everysec`.
    AofEverysec,
    /// No AOF and no snapshots: a restart loses everything.
    None,
}

impl Persistence {
    /// `redis-server` arguments implementing this setting.
    pub fn redis_args(self) -> Vec<String> {
        let args: &[&str] = match self {
            Persistence::AofAlways => &["--appendonly", "yes", "--appendfsync", "always"],
            Persistence::AofEverysec => &["--appendonly", "yes", "--appendfsync", "everysec"],
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
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
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
}

impl Action {
    /// Whether this step heals a fault; recovery time is measured after healing steps.
    pub fn is_healing(self) -> bool {
        matches!(
            self,
            Action::Start | Action::Restart | Action::Unpause | Action::Connect
        )
    }

    /// The step that undoes this fault, if one is needed.
    pub fn healing_action(self) -> Option<Action> {
        match self {
            Action::Kill | Action::Stop => Some(Action::Start),
            Action::Pause => Some(Action::Unpause),
            Action::Disconnect => Some(Action::Connect),
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
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Redis => f.write_str("redis"),
            Target::Orchestrator => f.write_str("orchestrator"),
            Target::AllWorkers => f.write_str("worker"),
            Target::Worker(n) => write!(f, "worker.{n}"),
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
            other => match other.strip_prefix("worker.").map(str::parse::<u32>) {
                Some(Ok(n)) if n >= 1 => Ok(Target::Worker(n)),
                _ => Err(format!(
                    "unknown target `{other}`, expected `redis`, `orchestrator`, `worker` or `worker.N` (N >= 1)"
                )),
            },
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

/// One `[[step]]` of a scenario file.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Offset from the start of the load.
    pub at: Duration,
    /// What to do.
    pub action: Action,
    /// To which service.
    pub target: Target,
    /// With `scale`: the wanted worker replicas.
    pub replicas: Option<u32>,
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
    /// Faults to draw from (`kill`, `stop`, `restart`, `pause`, `disconnect`).
    pub actions: Vec<Action>,
    /// Targets to draw from.
    pub targets: Vec<Target>,
    /// No fault is injected after this offset (default: the load duration), so the cluster heals
    /// before the load ends.
    pub until: Option<Duration>,
}

/// The `[expect]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectations {
    /// At most this many acknowledged tasks may never execute.
    pub lost: u64,
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
}

/// A scenario file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: cannot read scenario file: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid scenario.
    #[error("{path}:{line}: field `{field}`: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// 1-based line of the offending field.
        line: usize,
        /// Dotted path of the field, e.g. `step[2].at`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Raw (serde) shape of the file. Everything is `deny_unknown_fields`; spans locate errors found
// after deserialisation.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    cluster: RawCluster,
    load: RawLoad,
    #[serde(default)]
    step: Vec<Spanned<RawStep>>,
    chaos: Option<Spanned<RawChaos>>,
    #[serde(default)]
    expect: RawExpect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    #[serde(default = "default_workers")]
    workers: Spanned<u32>,
    #[serde(default = "default_persistence")]
    redis_persistence: Persistence,
    runtime: Option<RuntimeKind>,
    #[serde(default = "default_worker_concurrency")]
    worker_concurrency: Spanned<u32>,
    #[serde(default = "default_work", deserialize_with = "de_duration")]
    work: Duration,
}

impl Default for RawCluster {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            redis_persistence: default_persistence(),
            runtime: None,
            worker_concurrency: default_worker_concurrency(),
            work: default_work(),
        }
    }
}

fn default_workers() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}
fn default_persistence() -> Persistence {
    Persistence::AofAlways
}
fn default_worker_concurrency() -> Spanned<u32> {
    Spanned::new(0..0, 4)
}
fn default_work() -> Duration {
    Duration::from_millis(20)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    rate: Spanned<u32>,
    #[serde(deserialize_with = "de_spanned_duration")]
    duration: Spanned<Duration>,
    #[serde(default = "default_users")]
    users: usize,
    #[serde(default = "default_request_timeout", deserialize_with = "de_duration")]
    request_timeout: Duration,
}

fn default_users() -> usize {
    32
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(2)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(deserialize_with = "de_duration")]
    at: Duration,
    action: Action,
    target: Target,
    replicas: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChaos {
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default = "default_chaos_start", deserialize_with = "de_duration")]
    start: Duration,
    #[serde(deserialize_with = "de_duration")]
    interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    fault_duration: Duration,
    actions: Vec<Action>,
    targets: Vec<Target>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    until: Option<Duration>,
}

fn default_seed() -> u64 {
    1
}
fn default_chaos_start() -> Duration {
    Duration::from_secs(2)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    #[serde(default)]
    lost: u64,
    #[serde(default)]
    unexpected: u64,
    max_duplicated: Option<u64>,
    #[serde(default = "default_drain_within", deserialize_with = "de_duration")]
    drain_within: Duration,
    #[serde(default, deserialize_with = "de_opt_duration")]
    recovery_within: Option<Duration>,
    #[serde(default = "default_min_acknowledged")]
    min_acknowledged: u64,
    min_reclaimed: Option<u64>,
    min_carried_over: Option<u64>,
}

impl Default for RawExpect {
    fn default() -> Self {
        Self {
            lost: 0,
            unexpected: 0,
            max_duplicated: None,
            drain_within: default_drain_within(),
            recovery_within: None,
            min_acknowledged: default_min_acknowledged(),
            min_reclaimed: None,
            min_carried_over: None,
        }
    }
}

fn default_drain_within() -> Duration {
    Duration::from_secs(60)
}
fn default_min_acknowledged() -> u64 {
    1
}

/// Parses a human duration such as `5s`, `500ms`, `1m 30s`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err("empty duration, expected e.g. \"5s\" or \"500ms\"".to_string());
    }
    humantime::parse_duration(trimmed)
        .map_err(|e| format!("invalid duration \"{raw}\" ({e}), expected e.g. \"5s\" or \"500ms\""))
}

fn de_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let raw = String::deserialize(deserializer)?;
    parse_duration(&raw).map_err(serde::de::Error::custom)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    de_duration(deserializer).map(Some)
}

fn de_spanned_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Spanned<Duration>, D::Error> {
    let raw = Spanned::<String>::deserialize(deserializer)?;
    let span = raw.span();
    let value = parse_duration(raw.get_ref()).map_err(serde::de::Error::custom)?;
    Ok(Spanned::new(span, value))
}

// ---------------------------------------------------------------------------------------------

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ScenarioError> {
        let path = path.as_ref();
        let source = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&source, path)
    }

    /// Parses and validates scenario text; `path` is used in error messages.
    pub fn parse(source: &str, path: impl AsRef<Path>) -> Result<Self, ScenarioError> {
        let path = path.as_ref();
        let display = path.display().to_string();
        let raw: RawScenario = toml::from_str(source).map_err(|err| {
            let offset = err.span().map(|s| s.start).unwrap_or(0);
            let location = locate(source, offset);
            let message = err.message().trim().to_string();
            let field = field_from_message(&message)
                .map(|f| location.child(&f))
                .unwrap_or_else(|| location.field.clone());
            ScenarioError::Invalid {
                path: display.clone(),
                line: location.line,
                field,
                message,
            }
        })?;
        let invalid = |offset: usize, field: &str, message: String| {
            let location = locate(source, offset);
            ScenarioError::Invalid {
                path: display.clone(),
                line: location.line,
                field: field.to_string(),
                message,
            }
        };

        if raw.name.trim().is_empty() {
            return Err(invalid(0, "name", "must not be empty".into()));
        }
        let workers = *raw.cluster.workers.get_ref();
        if !(1..=MAX_WORKERS).contains(&workers) {
            return Err(invalid(
                raw.cluster.workers.span().start,
                "cluster.workers",
                format!("must be between 1 and {MAX_WORKERS}, got {workers}"),
            ));
        }
        let concurrency = *raw.cluster.worker_concurrency.get_ref();
        if concurrency == 0 {
            return Err(invalid(
                raw.cluster.worker_concurrency.span().start,
                "cluster.worker_concurrency",
                "must be at least 1".into(),
            ));
        }
        if *raw.load.rate.get_ref() == 0 {
            return Err(invalid(
                raw.load.rate.span().start,
                "load.rate",
                "must be at least 1 task per second".into(),
            ));
        }
        if raw.load.duration.get_ref().is_zero() {
            return Err(invalid(
                raw.load.duration.span().start,
                "load.duration",
                "must be longer than zero".into(),
            ));
        }

        let mut steps = Vec::with_capacity(raw.step.len());
        for (index, spanned) in raw.step.iter().enumerate() {
            let offset = spanned.span().start;
            let step = spanned.get_ref();
            let field = |name: &str| format!("step[{}].{name}", index + 1);
            match (step.action, step.replicas) {
                (Action::Scale, None) => {
                    return Err(invalid(
                        offset,
                        &field("replicas"),
                        "`scale` needs `replicas`".into(),
                    ));
                }
                (Action::Scale, Some(n)) if n > MAX_WORKERS => {
                    return Err(invalid(
                        offset,
                        &field("replicas"),
                        format!("must be at most {MAX_WORKERS}, got {n}"),
                    ));
                }
                (Action::Scale, Some(_)) if step.target != Target::AllWorkers => {
                    return Err(invalid(
                        offset,
                        &field("target"),
                        format!("`scale` applies to `worker`, not `{}`", step.target),
                    ));
                }
                (action, Some(_)) if action != Action::Scale => {
                    return Err(invalid(
                        offset,
                        &field("replicas"),
                        format!("only `scale` takes `replicas`, not `{action}`"),
                    ));
                }
                _ => {}
            }
            steps.push(Step {
                at: step.at,
                action: step.action,
                target: step.target,
                replicas: step.replicas,
            });
        }
        // Stable: steps at the same offset keep their file order.
        steps.sort_by_key(|s| s.at);

        let chaos = match raw.chaos {
            None => None,
            Some(spanned) => {
                let offset = spanned.span().start;
                let chaos = spanned.into_inner();
                if chaos.actions.is_empty() {
                    return Err(invalid(offset, "chaos.actions", "must not be empty".into()));
                }
                if let Some(bad) = chaos.actions.iter().find(|a| {
                    !matches!(
                        a,
                        Action::Kill
                            | Action::Stop
                            | Action::Restart
                            | Action::Pause
                            | Action::Disconnect
                    )
                }) {
                    return Err(invalid(
                        offset,
                        "chaos.actions",
                        format!(
                            "`{bad}` is not a fault; use kill, stop, restart, pause or disconnect"
                        ),
                    ));
                }
                if chaos.targets.is_empty() {
                    return Err(invalid(offset, "chaos.targets", "must not be empty".into()));
                }
                if chaos.interval.is_zero() && chaos.fault_duration.is_zero() {
                    return Err(invalid(
                        offset,
                        "chaos.interval",
                        "`interval` and `fault_duration` cannot both be zero".into(),
                    ));
                }
                Some(ChaosSettings {
                    seed: chaos.seed,
                    start: chaos.start,
                    interval: chaos.interval,
                    fault_duration: chaos.fault_duration,
                    actions: chaos.actions,
                    targets: chaos.targets,
                    until: chaos.until,
                })
            }
        };

        Ok(Scenario {
            name: raw.name,
            description: raw.description,
            path: path.to_path_buf(),
            cluster: ClusterSettings {
                workers,
                redis_persistence: raw.cluster.redis_persistence,
                runtime: raw.cluster.runtime,
                worker_concurrency: concurrency,
                work: raw.cluster.work,
            },
            load: LoadSettings {
                rate: *raw.load.rate.get_ref(),
                duration: *raw.load.duration.get_ref(),
                users: raw.load.users.max(1),
                request_timeout: raw.load.request_timeout,
            },
            steps,
            chaos,
            expect: Expectations {
                lost: raw.expect.lost,
                unexpected: raw.expect.unexpected,
                max_duplicated: raw.expect.max_duplicated,
                drain_within: raw.expect.drain_within,
                recovery_within: raw.expect.recovery_within,
                min_acknowledged: raw.expect.min_acknowledged,
                min_reclaimed: raw.expect.min_reclaimed,
                min_carried_over: raw.expect.min_carried_over,
            },
        })
    }

    /// Whether any step (or chaos fault) needs network partitions, which only Docker can do.
    pub fn needs_network_control(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.action, Action::Disconnect | Action::Connect))
            || self
                .chaos
                .as_ref()
                .is_some_and(|c| c.actions.contains(&Action::Disconnect))
    }

    /// The concrete steps of one run: file steps plus chaos faults, all offsets multiplied by
    /// `time_scale`, sorted by offset.
    pub fn plan(&self, seed_override: Option<u64>, time_scale: f64) -> Plan {
        let scale = |d: Duration| d.mul_f64(time_scale);
        let load_duration = scale(self.load.duration);
        let mut steps: Vec<PlannedStep> = self
            .steps
            .iter()
            .map(|s| PlannedStep {
                at: scale(s.at),
                action: s.action,
                target: s.target,
                replicas: s.replicas,
                origin: StepOrigin::File,
            })
            .collect();
        let mut seed = None;
        if let Some(chaos) = &self.chaos {
            let chaos_seed = seed_override.unwrap_or(chaos.seed);
            seed = Some(chaos_seed);
            steps.extend(chaos_steps(
                chaos,
                chaos_seed,
                self.cluster.workers,
                &scale,
                load_duration,
            ));
        }
        steps.sort_by_key(|s| s.at);
        Plan {
            steps,
            load_duration,
            seed,
            time_scale,
        }
    }
}

/// The steps one run executes.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Steps sorted by offset (already time-scaled).
    pub steps: Vec<PlannedStep>,
    /// How long the load runs (already time-scaled).
    pub load_duration: Duration,
    /// Seed used for chaos faults, if the scenario has any.
    pub seed: Option<u64>,
    /// Factor applied to every offset and to the load duration.
    pub time_scale: f64,
}

/// One step of a [`Plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    /// Offset from the start of the load.
    pub at: Duration,
    /// What to do.
    pub action: Action,
    /// To which service.
    pub target: Target,
    /// With `scale`: wanted replicas.
    pub replicas: Option<u32>,
    /// Written in the file or drawn by chaos.
    pub origin: StepOrigin,
}

/// Where a planned step came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOrigin {
    /// A `[[step]]` of the file.
    File,
    /// Drawn from the `[chaos]` generator.
    Chaos,
}

fn chaos_steps(
    chaos: &ChaosSettings,
    seed: u64,
    initial_workers: u32,
    scale: &dyn Fn(Duration) -> Duration,
    load_duration: Duration,
) -> Vec<PlannedStep> {
    let mut rng = SplitMix64(seed);
    let until = chaos.until.map(scale).unwrap_or(load_duration);
    let fault_duration = scale(chaos.fault_duration);
    let interval = scale(chaos.interval);
    let mut at = scale(chaos.start);
    let mut steps = Vec::new();
    // Faults are sequential: one is healed before the next is injected, so every fault's recovery
    // is measured on its own.
    while at < until {
        let action = chaos.actions[rng.below(chaos.actions.len() as u64) as usize];
        let target = match chaos.targets[rng.below(chaos.targets.len() as u64) as usize] {
            Target::AllWorkers => Target::Worker(1 + rng.below(u64::from(initial_workers)) as u32),
            other => other,
        };
        steps.push(PlannedStep {
            at,
            action,
            target,
            replicas: None,
            origin: StepOrigin::Chaos,
        });
        if let Some(heal) = action.healing_action() {
            at += fault_duration;
            steps.push(PlannedStep {
                at,
                action: heal,
                target,
                replicas: None,
                origin: StepOrigin::Chaos,
            });
        }
        // Jitter the pause between faults by ±50% so faults do not line up with load phases.
        let jitter = 0.5 + (rng.below(1001) as f64) / 1000.0;
        at += interval.mul_f64(jitter).max(Duration::from_millis(100));
    }
    steps
}

/// SplitMix64: a tiny generator whose sequence is fixed forever, so a seed in a report replays
/// the same faults with any version of the harness's dependencies.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant for picking faults.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// Error locations: line number and dotted field path of a byte offset.

struct Location {
    line: usize,
    table: String,
    field: String,
}

impl Location {
    fn child(&self, key: &str) -> String {
        if self.table.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.table)
        }
    }
}

fn locate(source: &str, offset: usize) -> Location {
    let offset = offset.min(source.len());
    let line_index = source[..offset].matches('\n').count();
    let mut table = String::new();
    let mut array_counts: std::collections::HashMap<String, usize> = Default::default();
    let mut key = None;
    for (index, line) in source.lines().enumerate().take(line_index + 1) {
        let trimmed = line.trim();
        if let Some(name) = trimmed
            .strip_prefix("[[")
            .and_then(|r| r.split("]]").next())
        {
            let name = name.trim().to_string();
            let count = array_counts.entry(name.clone()).or_insert(0);
            *count += 1;
            table = format!("{name}[{count}]");
        } else if let Some(name) = trimmed.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        } else if index == line_index
            && let Some((left, _)) = trimmed.split_once('=')
        {
            key = Some(left.trim().trim_matches('"').to_string());
        }
    }
    let mut location = Location {
        line: line_index + 1,
        table: table.clone(),
        field: table,
    };
    if let Some(key) = key {
        location.field = location.child(&key);
    }
    if location.field.is_empty() {
        location.field = "(top level)".to_string();
    }
    location
}

/// `missing field `rate`` and `unknown field `x`` name the field themselves.
fn field_from_message(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))?;
    rest.split('`').next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
[load]
rate = 10
duration = "10s"
"#;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(text, "scenarios/t.toml")
    }

    fn error_of(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(ScenarioError::Invalid {
                line,
                field,
                message,
                ..
            }) => (line, field, message),
            other => panic!("expected an invalid-scenario error, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_file_gets_documented_defaults() {
        let scenario = parse(MINIMAL).expect("minimal scenario parses");
        assert_eq!(scenario.cluster.workers, 2);
        assert_eq!(scenario.cluster.redis_persistence, Persistence::AofAlways);
        assert_eq!(scenario.expect.lost, 0);
        assert_eq!(scenario.expect.drain_within, Duration::from_secs(60));
        assert_eq!(scenario.load.duration, Duration::from_secs(10));
        assert!(scenario.steps.is_empty());
    }

    #[test]
    fn an_unknown_top_level_key_names_file_line_and_field() {
        let text = format!("{MINIMAL}\n[expect]\nlost = 0\nlosst = 1\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("scenarios/t.toml:9: field `expect.losst`"),
            "error was: {err}"
        );
        assert!(err.contains("unknown field"), "error was: {err}");
    }

    #[test]
    fn an_unknown_action_is_rejected_with_its_step() {
        let text =
            format!("{MINIMAL}\n[[step]]\nat = \"1s\"\naction = \"explode\"\ntarget = \"redis\"\n");
        let (line, field, message) = error_of(&text);
        assert_eq!(line, 9);
        assert_eq!(field, "step[1].action");
        assert!(message.contains("unknown variant `explode`"), "{message}");
    }

    #[test]
    fn an_unknown_target_is_rejected() {
        let text =
            format!("{MINIMAL}\n[[step]]\nat = \"1s\"\naction = \"kill\"\ntarget = \"worker.0\"\n");
        let (line, field, message) = error_of(&text);
        assert_eq!((line, field.as_str()), (10, "step[1].target"));
        assert!(message.contains("unknown target `worker.0`"), "{message}");
    }

    #[test]
    fn a_bad_duration_is_rejected_with_its_field() {
        let text = MINIMAL.replace("\"10s\"", "\"10 parsecs\"");
        let (line, field, message) = error_of(&text);
        assert_eq!((line, field.as_str()), (5, "load.duration"));
        assert!(message.contains("invalid duration"), "{message}");
    }

    #[test]
    fn scale_without_replicas_is_rejected() {
        let text =
            format!("{MINIMAL}\n[[step]]\nat = \"1s\"\naction = \"scale\"\ntarget = \"worker\"\n");
        let (line, field, _) = error_of(&text);
        assert_eq!((line, field.as_str()), (7, "step[1].replicas"));
    }

    #[test]
    fn replicas_on_another_action_is_rejected() {
        let text = format!(
            "{MINIMAL}\n[[step]]\nat = \"1s\"\naction = \"kill\"\ntarget = \"redis\"\nreplicas = 2\n"
        );
        let (_, field, message) = error_of(&text);
        assert_eq!(field, "step[1].replicas");
        assert!(message.contains("only `scale`"), "{message}");
    }

    #[test]
    fn a_missing_required_field_is_named() {
        let (_, field, message) = error_of("name = \"t\"\n[load]\nrate = 10\n");
        assert_eq!(field, "load.duration");
        assert!(message.contains("missing field"), "{message}");
    }

    #[test]
    fn steps_are_sorted_and_time_scaled() {
        let text = format!(
            "{MINIMAL}\n[[step]]\nat = \"8s\"\naction = \"start\"\ntarget = \"redis\"\n\
             [[step]]\nat = \"4s\"\naction = \"kill\"\ntarget = \"redis\"\n"
        );
        let plan = parse(&text).unwrap().plan(None, 0.5);
        let offsets: Vec<_> = plan.steps.iter().map(|s| (s.at, s.action)).collect();
        assert_eq!(
            offsets,
            vec![
                (Duration::from_secs(2), Action::Kill),
                (Duration::from_secs(4), Action::Start)
            ]
        );
        assert_eq!(plan.load_duration, Duration::from_secs(5));
    }

    #[test]
    fn chaos_is_deterministic_per_seed_and_heals_every_fault() {
        let text = format!(
            "{}\n[chaos]\nseed = 7\ninterval = \"2s\"\nfault_duration = \"1s\"\n\
             actions = [\"kill\", \"pause\", \"restart\"]\ntargets = [\"worker\", \"redis\"]\n",
            MINIMAL.replace("\"10s\"", "\"60s\"")
        );
        let scenario = parse(&text).unwrap();
        let first = scenario.plan(None, 1.0);
        assert_eq!(first, scenario.plan(None, 1.0), "same seed, same plan");
        assert_ne!(first.steps, scenario.plan(Some(8), 1.0).steps);
        assert_eq!(first.seed, Some(7));
        assert!(first.steps.len() >= 10, "a minute of chaos has many faults");
        let faults = first
            .steps
            .iter()
            .filter(|s| s.action.healing_action().is_some())
            .count();
        let heals = first
            .steps
            .iter()
            .filter(|s| matches!(s.action, Action::Start | Action::Unpause | Action::Connect))
            .count();
        assert_eq!(faults, heals, "every kill or pause is healed");
        assert!(first.steps.iter().all(|s| s.target != Target::AllWorkers));
    }

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("scenarios/ exists") {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let scenario = Scenario::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    Some(scenario.name.as_str()),
                    path.file_stem().and_then(|s| s.to_str()),
                    "a scenario's name matches its file name"
                );
                names.push(scenario.name);
            }
        }
        for required in [
            "worker-restart",
            "worker-kill-mid-task",
            "scale-workers",
            "kill-redis",
            "redis-pause",
            "orchestrator-restart",
            "worker-partition",
            "chaos-soak",
        ] {
            assert!(
                names.iter().any(|n| n == required),
                "scenarios/{required}.toml is shipped"
            );
        }
    }
}
