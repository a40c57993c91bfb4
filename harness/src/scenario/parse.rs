//! Reading a scenario file: the raw (serde) shape of the TOML, validation into the model, and
//! error locations (file, line and dotted field path).

use std::{path::Path, time::Duration};

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::{
    Action, ChaosSettings, ClockOffset, ClusterSettings, Expectations, Link, LinkDelay,
    LoadSettings, MAX_REPLICAS, MAX_SHARDS, MAX_WORKERS, Persistence, RedisTopology, RuntimeKind,
    Scenario, Step, Subject, Target,
};

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
    #[serde(default = "no_share")]
    fail_rate: Spanned<f64>,
    #[serde(default = "no_share")]
    permanent_fail_rate: Spanned<f64>,
    #[serde(default = "one")]
    redis_shards: Spanned<u32>,
    #[serde(default = "zero")]
    redis_replicas: Spanned<u32>,
    #[serde(default = "zero")]
    replica_acks: Spanned<u32>,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}
fn zero() -> Spanned<u32> {
    Spanned::new(0..0, 0)
}

impl Default for RawCluster {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            redis_persistence: default_persistence(),
            runtime: None,
            worker_concurrency: default_worker_concurrency(),
            work: default_work(),
            fail_rate: no_share(),
            permanent_fail_rate: no_share(),
            redis_shards: one(),
            redis_replicas: zero(),
            replica_acks: zero(),
        }
    }
}

fn no_share() -> Spanned<f64> {
    Spanned::new(0..0, 0.0)
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
    #[serde(default = "no_share")]
    cancel_share: Spanned<f64>,
    #[serde(default = "no_share")]
    read_share: Spanned<f64>,
    #[serde(default = "no_share")]
    delay_share: Spanned<f64>,
    #[serde(
        default = "default_max_delay",
        deserialize_with = "de_spanned_duration"
    )]
    max_delay: Spanned<Duration>,
}

fn default_max_delay() -> Spanned<Duration> {
    Spanned::new(0..0, Duration::from_secs(2))
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
    target: Option<Target>,
    between: Option<[Target; 2]>,
    from: Option<Target>,
    to: Option<Target>,
    replicas: Option<u32>,
    probability: Option<f64>,
    offset: Option<String>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    latency: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    jitter: Option<Duration>,
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
    #[serde(default = "default_max_concurrent")]
    max_concurrent: usize,
}

fn default_max_concurrent() -> usize {
    1
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
    stuck: u64,
    #[serde(default)]
    wrong_status: u64,
    #[serde(default)]
    unplanned_exits: u64,
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
    min_unavailable: Option<u64>,
    min_workers: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    min_start_wait_p99: Option<Duration>,
    max_live_takeovers: Option<u64>,
    max_priority_inversions: Option<u64>,
    #[serde(default)]
    unreadable: u64,
}

impl Default for RawExpect {
    fn default() -> Self {
        Self {
            lost: 0,
            stuck: 0,
            wrong_status: 0,
            unplanned_exits: 0,
            unexpected: 0,
            max_duplicated: None,
            drain_within: default_drain_within(),
            recovery_within: None,
            min_acknowledged: default_min_acknowledged(),
            min_reclaimed: None,
            min_carried_over: None,
            min_unavailable: None,
            min_workers: None,
            min_start_wait_p99: None,
            max_live_takeovers: None,
            max_priority_inversions: None,
            unreadable: 0,
        }
    }
}

impl Default for Expectations {
    /// What a scenario without an `[expect]` section expects: no anomaly at all.
    fn default() -> Self {
        RawExpect::default().into()
    }
}

impl From<RawExpect> for Expectations {
    fn from(raw: RawExpect) -> Self {
        Expectations {
            lost: raw.lost,
            stuck: raw.stuck,
            wrong_status: raw.wrong_status,
            unplanned_exits: raw.unplanned_exits,
            unexpected: raw.unexpected,
            max_duplicated: raw.max_duplicated,
            drain_within: raw.drain_within,
            recovery_within: raw.recovery_within,
            min_acknowledged: raw.min_acknowledged,
            min_reclaimed: raw.min_reclaimed,
            min_carried_over: raw.min_carried_over,
            min_unavailable: raw.min_unavailable,
            min_workers: raw.min_workers,
            min_start_wait_p99: raw.min_start_wait_p99,
            max_live_takeovers: raw.max_live_takeovers,
            max_priority_inversions: raw.max_priority_inversions,
            unreadable: raw.unreadable,
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

        let mut shares = [0.0; 5];
        for (slot, (name, share)) in shares.iter_mut().zip([
            ("cluster.fail_rate", &raw.cluster.fail_rate),
            (
                "cluster.permanent_fail_rate",
                &raw.cluster.permanent_fail_rate,
            ),
            ("load.cancel_share", &raw.load.cancel_share),
            ("load.read_share", &raw.load.read_share),
            ("load.delay_share", &raw.load.delay_share),
        ]) {
            let value = *share.get_ref();
            if !(0.0..=1.0).contains(&value) {
                return Err(invalid(
                    share.span().start,
                    name,
                    format!("must be a share from 0.0 to 1.0, got {value}"),
                ));
            }
            *slot = value;
        }
        if shares[2] + shares[3] > 1.0 {
            return Err(invalid(
                raw.load.read_share.span().start,
                "load.read_share",
                format!(
                    "cancel_share + read_share must be at most 1.0, got {}",
                    shares[2] + shares[3]
                ),
            ));
        }
        let max_delay = *raw.load.max_delay.get_ref();
        if max_delay < Duration::from_millis(1) || max_delay > Duration::from_secs(30 * 86_400) {
            return Err(invalid(
                raw.load.max_delay.span().start,
                "load.max_delay",
                "must be from 1ms to 30 days".into(),
            ));
        }
        if shares[0] + shares[1] > 1.0 {
            return Err(invalid(
                raw.cluster.permanent_fail_rate.span().start,
                "cluster.permanent_fail_rate",
                format!(
                    "fail_rate + permanent_fail_rate must be at most 1.0, got {}",
                    shares[0] + shares[1]
                ),
            ));
        }

        let redis = redis_topology(&raw.cluster)
            .map_err(|(offset, name, message)| invalid(offset, name, message))?;

        let mut steps = Vec::with_capacity(raw.step.len());
        for (index, spanned) in raw.step.iter().enumerate() {
            let offset = spanned.span().start;
            let step = spanned.get_ref();
            let field = |name: &str| format!("step[{}].{name}", index + 1);
            let subject = step_subject(step)
                .and_then(|subject| fits_topology(step, subject, redis).map(|()| subject))
                .map_err(|(name, message)| invalid(offset, &field(name), message))?;
            match (step.action, step.probability) {
                (Action::Loss, None) => {
                    return Err(invalid(
                        offset,
                        &field("probability"),
                        "`loss` needs `probability`".into(),
                    ));
                }
                (Action::Loss, Some(p)) if !(p > 0.0 && p <= 1.0) => {
                    return Err(invalid(
                        offset,
                        &field("probability"),
                        format!("must be a share above 0.0 and at most 1.0, got {p}"),
                    ));
                }
                (action, Some(_)) if action != Action::Loss => {
                    return Err(invalid(
                        offset,
                        &field("probability"),
                        format!("only `loss` takes `probability`, not `{action}`"),
                    ));
                }
                _ => {}
            }
            let clock_offset = match (step.action, &step.offset) {
                (Action::ClockJump, None) => {
                    return Err(invalid(
                        offset,
                        &field("offset"),
                        "`clock-jump` needs `offset` (e.g. \"10s\", or \"-10s\" backward)".into(),
                    ));
                }
                (Action::ClockJump, Some(raw)) => Some(
                    raw.parse::<ClockOffset>()
                        .map_err(|e| invalid(offset, &field("offset"), e))?,
                ),
                (action, Some(_)) => {
                    return Err(invalid(
                        offset,
                        &field("offset"),
                        format!("only `clock-jump` takes `offset`, not `{action}`"),
                    ));
                }
                (_, None) => None,
            };
            let delay = match (step.action, step.latency, step.jitter) {
                (Action::Delay, None, _) => {
                    return Err(invalid(
                        offset,
                        &field("latency"),
                        "`delay` needs `latency` (e.g. \"300ms\")".into(),
                    ));
                }
                (Action::Delay, Some(latency), jitter) => {
                    let jitter = jitter.unwrap_or_default();
                    if latency.is_zero() || jitter > latency {
                        return Err(invalid(
                            offset,
                            &field("jitter"),
                            format!(
                                "`latency` must be above zero and `jitter` at most `latency`, got \
                                 {} and {}",
                                humantime::format_duration(latency),
                                humantime::format_duration(jitter)
                            ),
                        ));
                    }
                    if let Subject::Link(link) = subject
                        && (link.a == Target::Redis) == (link.b == Target::Redis)
                    {
                        return Err(invalid(
                            offset,
                            &field(if link.one_way { "from" } else { "between" }),
                            format!(
                                "`delay` acts on a service's connection to Redis: one end must be \
                                 `redis`, not `{link}`"
                            ),
                        ));
                    }
                    Some(LinkDelay { latency, jitter })
                }
                (action, Some(_), _) | (action, None, Some(_)) => {
                    return Err(invalid(
                        offset,
                        &field(if step.latency.is_some() {
                            "latency"
                        } else {
                            "jitter"
                        }),
                        format!("only `delay` takes `latency` and `jitter`, not `{action}`"),
                    ));
                }
                (_, None, None) => None,
            };
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
                (Action::Scale, Some(_)) if subject != Subject::Service(Target::AllWorkers) => {
                    return Err(invalid(
                        offset,
                        &field("target"),
                        format!("`scale` applies to `worker`, not `{subject}`"),
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
                subject,
                replicas: step.replicas,
                probability: step.probability,
                offset: clock_offset,
                delay,
            });
        }
        // Stable: steps at the same offset keep their file order.
        steps.sort_by_key(|s| s.at);

        let chaos = match raw.chaos {
            None => None,
            Some(spanned) => {
                let offset = spanned.span().start;
                let chaos = spanned.into_inner();
                if redis.is_cluster() {
                    return Err(invalid(
                        offset,
                        "chaos",
                        "`[chaos]` runs on a single Redis only; with `redis_shards` or \
                         `redis_replicas` write the faults as `[[step]]`s"
                            .into(),
                    ));
                }
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
                            | Action::Partition
                    )
                }) {
                    return Err(invalid(
                        offset,
                        "chaos.actions",
                        format!(
                            "`{bad}` is not a chaos fault; use kill, stop, restart, pause, \
                             disconnect or partition"
                        ),
                    ));
                }
                if chaos.max_concurrent == 0 {
                    return Err(invalid(
                        offset,
                        "chaos.max_concurrent",
                        "must be at least 1".into(),
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
                    max_concurrent: chaos.max_concurrent,
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
                fail_rate: shares[0],
                permanent_fail_rate: shares[1],
                redis,
            },
            load: LoadSettings {
                rate: *raw.load.rate.get_ref(),
                duration: *raw.load.duration.get_ref(),
                users: raw.load.users.max(1),
                request_timeout: raw.load.request_timeout,
                cancel_share: shares[2],
                read_share: shares[3],
                delay_share: shares[4],
                max_delay,
            },
            steps,
            chaos,
            expect: raw.expect.into(),
        })
    }
}

/// The `[cluster]` section's Redis topology; an error carries the offending field's offset, its
/// name and what is wrong.
fn redis_topology(raw: &RawCluster) -> Result<RedisTopology, (usize, &'static str, String)> {
    let shards = *raw.redis_shards.get_ref();
    let replicas = *raw.redis_replicas.get_ref();
    let acks = *raw.replica_acks.get_ref();
    if !(1..=MAX_SHARDS).contains(&shards) {
        return Err((
            raw.redis_shards.span().start,
            "cluster.redis_shards",
            format!("must be between 1 and {MAX_SHARDS}, got {shards}"),
        ));
    }
    if replicas > MAX_REPLICAS {
        return Err((
            raw.redis_replicas.span().start,
            "cluster.redis_replicas",
            format!("must be at most {MAX_REPLICAS} per primary, got {replicas}"),
        ));
    }
    if acks > replicas {
        return Err((
            raw.replica_acks.span().start,
            "cluster.replica_acks",
            format!(
                "cannot exceed redis_replicas ({replicas}): a write would never be confirmed, \
                 got {acks}"
            ),
        ));
    }
    let topology = RedisTopology {
        shards,
        replicas,
        replica_acks: acks,
    };
    if topology.is_cluster() && raw.runtime == Some(RuntimeKind::Process) {
        return Err((
            raw.redis_shards
                .span()
                .start
                .max(raw.redis_replicas.span().start),
            "cluster.runtime",
            "a Redis Cluster (`redis_shards` > 1 or `redis_replicas` > 0) runs in the docker \
             runtime only"
                .into(),
        ));
    }
    Ok(topology)
}

/// Checks a step's services against the Redis topology: `redis` names the single server,
/// `redis.S` and `redis.S.replica` a shard of a cluster that has it, and the faults that act on
/// Redis's disk, clock or proxied links need the single server.
fn fits_topology(
    step: &RawStep,
    subject: Subject,
    redis: RedisTopology,
) -> Result<(), (&'static str, String)> {
    let (field, targets) = match subject {
        Subject::Service(target) => ("target", vec![target]),
        Subject::Link(link) => (
            if step.between.is_some() {
                "between"
            } else {
                "from"
            },
            vec![link.a, link.b],
        ),
        Subject::AllLinks => ("target", Vec::new()),
    };
    if redis.is_cluster()
        && matches!(
            step.action,
            Action::PowerLoss | Action::DiskFull | Action::ClockJump | Action::Delay
        )
    {
        return Err((
            field,
            format!(
                "`{}` acts on a single Redis, not on a Redis Cluster",
                step.action
            ),
        ));
    }
    for target in targets {
        match target.shard() {
            None if target == Target::Redis && redis.is_cluster() => {
                return Err((
                    field,
                    format!(
                        "this scenario runs a Redis Cluster of {} shard(s): name a shard, \
                         `redis.S` (its primary) or `redis.S.replica`, not `redis`",
                        redis.shards
                    ),
                ));
            }
            None => {}
            Some(_) if !redis.is_cluster() => {
                return Err((
                    field,
                    format!(
                        "`{target}` names a shard of a Redis Cluster: set `[cluster] \
                         redis_shards` (or `redis_replicas`), or write `redis`"
                    ),
                ));
            }
            Some(shard) if shard > redis.shards => {
                return Err((
                    field,
                    format!("`{target}`: there are {} shard(s)", redis.shards),
                ));
            }
            Some(_) if matches!(target, Target::Replica(_)) && redis.replicas == 0 => {
                return Err((
                    field,
                    format!("`{target}`: the shards have no replicas (`redis_replicas` = 0)"),
                ));
            }
            Some(_) => {}
        }
    }
    match step.action {
        Action::Failover => match subject {
            Subject::Service(Target::Primary(_)) if redis.replicas > 0 => Ok(()),
            Subject::Service(Target::Primary(_)) => Err((
                "target",
                "`failover` promotes a replica: set `[cluster] redis_replicas`".into(),
            )),
            _ => Err((
                "target",
                format!("`failover` acts on a shard, `redis.S`, not `{subject}`"),
            )),
        },
        _ => Ok(()),
    }
}

/// What a step acts on, from its selector fields; an error names the field and what is wrong.
fn step_subject(step: &RawStep) -> Result<Subject, (&'static str, String)> {
    let action = step.action;
    let link = match (step.between, step.from, step.to) {
        (None, None, None) => None,
        (Some([a, b]), None, None) => Some(Link {
            a,
            b,
            one_way: false,
        }),
        (None, Some(a), Some(b)) => Some(Link {
            a,
            b,
            one_way: true,
        }),
        (Some(_), _, _) => {
            return Err((
                "between",
                "give `between` or `from` and `to`, not both".into(),
            ));
        }
        (None, Some(_), None) => return Err(("to", format!("`{action}` with `from` needs `to`"))),
        (None, None, Some(_)) => {
            return Err(("from", format!("`{action}` with `to` needs `from`")));
        }
    };
    if let Some(link) = link {
        let overlap = |x: Target, y: Target| {
            x == y
                || matches!((x, y), (Target::AllWorkers, Target::Worker(_)))
                || matches!((x, y), (Target::Worker(_), Target::AllWorkers))
        };
        if overlap(link.a, link.b) {
            let name = if link.one_way { "to" } else { "between" };
            return Err((
                name,
                format!("a link joins two different services, not `{link}`"),
            ));
        }
    }
    match (action, step.target, link) {
        (Action::Heal, None, None) => Ok(Subject::AllLinks),
        (Action::Heal, Some(Target::Redis), None) => Ok(Subject::Service(Target::Redis)),
        (Action::Heal, Some(target), None) => Err((
            "target",
            format!(
                "`heal` with `target` ends a `disk-full`, which only `redis` has, not `{target}`"
            ),
        )),
        (Action::Heal, Some(_), Some(_)) => Err((
            "target",
            "`heal` takes a link (`between`, or `from` and `to`) or a `target`, not both".into(),
        )),
        (Action::Heal, None, Some(link)) => Ok(Subject::Link(link)),
        (action, None, Some(link)) if action.on_link() => Ok(Subject::Link(link)),
        (action, Some(_), _) if action.on_link() => Err((
            "target",
            format!("`{action}` acts on a link: use `between = [a, b]`, or `from` and `to`"),
        )),
        (action, None, None) if action.on_link() => Err((
            "between",
            format!("`{action}` needs `between = [a, b]`, or `from` and `to`"),
        )),
        (action, _, Some(_)) => Err((
            if step.between.is_some() {
                "between"
            } else {
                "from"
            },
            format!("`{action}` acts on one service (`target`), not on a link"),
        )),
        (action, None, None) => Err(("target", format!("`{action}` needs `target`"))),
        (Action::PowerLoss | Action::DiskFull | Action::ClockJump, Some(target), None)
            if target != Target::Redis =>
        {
            Err((
                "target",
                format!(
                    "`{action}` applies to `redis` (the service with a data directory), not `{target}`"
                ),
            ))
        }
        (_, Some(target), None) => Ok(Subject::Service(target)),
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

    fn step_error(step: &str) -> (String, String) {
        let (_, field, message) = error_of(&format!("{MINIMAL}\n[[step]]\nat = \"1s\"\n{step}"));
        (field, message)
    }

    /// [`MINIMAL`] on a Redis Cluster of `cluster` (TOML lines of `[cluster]`), with `steps`.
    fn cluster_error(cluster: &str, steps: &str) -> (String, String) {
        let text = format!(
            "name = \"t\"\n[cluster]\n{cluster}\n[load]\nrate = 10\nduration = \"10s\"\n{steps}"
        );
        let (_, field, message) = error_of(&text);
        (field, message)
    }

    #[test]
    fn a_cluster_topology_parses_with_shard_targets_and_failover() {
        let text = "name = \"t\"\n[cluster]\nredis_shards = 3\nredis_replicas = 1\nreplica_acks = 1\n\
                    [load]\nrate = 10\nduration = \"10s\"\n\
                    [[step]]\nat = \"1s\"\naction = \"partition\"\nbetween = [\"redis.1.replica\", \"redis.1\"]\n\
                    [[step]]\nat = \"2s\"\naction = \"failover\"\ntarget = \"redis.1\"\n\
                    [[step]]\nat = \"3s\"\naction = \"kill\"\ntarget = \"redis.3\"\n";
        let scenario = parse(text).expect("a valid cluster scenario");
        assert_eq!(
            scenario.cluster.redis,
            RedisTopology {
                shards: 3,
                replicas: 1,
                replica_acks: 1
            }
        );
        assert!(scenario.cluster.redis.is_cluster());
        assert_eq!(
            scenario.steps[0].subject,
            Subject::Link(Link {
                a: Target::Replica(1),
                b: Target::Primary(1),
                one_way: false
            })
        );
        assert_eq!(
            scenario.steps[1].subject,
            Subject::Service(Target::Primary(1))
        );
        assert_eq!("redis.2.replica".parse(), Ok(Target::Replica(2)));
        assert_eq!(Target::Replica(2).to_string(), "redis.2.replica");
        assert!("redis.0".parse::<Target>().is_err());
        assert!(!parse(MINIMAL).expect("minimal").cluster.redis.is_cluster());
    }

    #[test]
    fn a_bad_cluster_topology_or_target_names_the_field_and_the_fix() {
        let kill = |target: &str| {
            format!("[[step]]\nat = \"1s\"\naction = \"kill\"\ntarget = \"{target}\"\n")
        };
        for (cluster, steps, field, fragment) in [
            ("redis_shards = 0", String::new(), "cluster.redis_shards", "between 1 and"),
            ("redis_replicas = 3", String::new(), "cluster.redis_replicas", "at most 2"),
            ("redis_shards = 2\nreplica_acks = 1", String::new(), "cluster.replica_acks", "cannot exceed redis_replicas (0)"),
            ("redis_shards = 2\nruntime = \"process\"", String::new(), "cluster.runtime", "docker runtime only"),
            ("redis_shards = 2", kill("redis"), "step[1].target", "name a shard"),
            ("workers = 2", kill("redis.1"), "step[1].target", "set `[cluster] redis_shards`"),
            ("redis_shards = 2", kill("redis.3"), "step[1].target", "there are 2 shard(s)"),
            ("redis_shards = 2", kill("redis.1.replica"), "step[1].target", "no replicas"),
            ("redis_shards = 2", "[[step]]\nat = \"1s\"\naction = \"failover\"\ntarget = \"redis.1\"\n".into(), "step[1].target", "set `[cluster] redis_replicas`"),
            ("redis_shards = 2\nredis_replicas = 1", "[[step]]\nat = \"1s\"\naction = \"failover\"\ntarget = \"redis.1.replica\"\n".into(), "step[1].target", "acts on a shard"),
            ("redis_shards = 2", "[[step]]\nat = \"1s\"\naction = \"clock-jump\"\ntarget = \"redis\"\noffset = \"5s\"\n".into(), "step[1].target", "not on a Redis Cluster"),
            ("redis_shards = 2", "[chaos]\ninterval = \"1s\"\nfault_duration = \"1s\"\nactions = [\"kill\"]\ntargets = [\"worker\"]\n".into(), "chaos", "single Redis only"),
        ] {
            let (got_field, message) = cluster_error(cluster, &steps);
            assert_eq!(got_field, field, "{cluster} / {steps}: {message}");
            assert!(message.contains(fragment), "{cluster} / {steps}: {message}");
        }
    }

    #[test]
    fn link_faults_parse_into_links() {
        let text = format!(
            "{MINIMAL}\n[[step]]\nat = \"1s\"\naction = \"partition\"\nbetween = [\"orchestrator\", \"redis\"]\n\
             [[step]]\nat = \"2s\"\naction = \"loss\"\nfrom = \"worker\"\nto = \"redis\"\nprobability = 0.3\n\
             [[step]]\nat = \"3s\"\naction = \"heal\"\nbetween = [\"redis\", \"orchestrator\"]\n\
             [[step]]\nat = \"4s\"\naction = \"heal\"\n\
             [[step]]\nat = \"5s\"\naction = \"disk-full\"\ntarget = \"redis\"\n\
             [[step]]\nat = \"6s\"\naction = \"heal\"\ntarget = \"redis\"\n\
             [[step]]\nat = \"7s\"\naction = \"power-loss\"\ntarget = \"redis\"\n"
        );
        let scenario = parse(&text).unwrap();
        let subjects: Vec<String> = scenario
            .steps
            .iter()
            .map(|s| format!("{} {}", s.action, s.subject))
            .collect();
        assert_eq!(
            subjects,
            [
                "partition orchestrator<->redis",
                "loss worker->redis",
                "heal redis<->orchestrator",
                "heal links",
                "disk-full redis",
                "heal redis",
                "power-loss redis",
            ]
        );
        assert_eq!(scenario.steps[1].probability, Some(0.3));
        // a two-way heal names the pair in either order
        assert!(scenario.steps[2].subject.heals(&scenario.steps[0].subject));
        assert!(scenario.steps[3].subject.heals(&scenario.steps[1].subject));
        assert!(!scenario.steps[3].subject.heals(&scenario.steps[4].subject));
        assert!(scenario.steps[5].subject.heals(&scenario.steps[4].subject));
        assert!(scenario.needs_network_control());
        assert!(scenario.needs_fault_fs());
    }

    #[test]
    fn bad_link_steps_name_the_field_and_the_fix() {
        for (step, field, needle) in [
            (
                "action = \"partition\"\ntarget = \"redis\"\n",
                "target",
                "acts on a link",
            ),
            ("action = \"partition\"\n", "between", "needs `between"),
            (
                "action = \"partition\"\nfrom = \"worker.1\"\n",
                "to",
                "with `from` needs `to`",
            ),
            (
                "action = \"partition\"\nbetween = [\"redis\", \"redis\"]\n",
                "between",
                "two different services",
            ),
            (
                "action = \"partition\"\nbetween = [\"worker\", \"worker.2\"]\n",
                "between",
                "two different services",
            ),
            (
                "action = \"partition\"\nbetween = [\"redis\", \"worker\"]\nfrom = \"redis\"\nto = \"worker\"\n",
                "between",
                "not both",
            ),
            (
                "action = \"loss\"\nbetween = [\"redis\", \"worker\"]\n",
                "probability",
                "needs `probability`",
            ),
            (
                "action = \"loss\"\nbetween = [\"redis\", \"worker\"]\nprobability = 1.5\n",
                "probability",
                "at most 1.0",
            ),
            (
                "action = \"partition\"\nbetween = [\"redis\", \"worker\"]\nprobability = 0.5\n",
                "probability",
                "only `loss`",
            ),
            (
                "action = \"kill\"\nbetween = [\"redis\", \"worker\"]\n",
                "between",
                "acts on one service",
            ),
            ("action = \"kill\"\n", "target", "needs `target`"),
            (
                "action = \"power-loss\"\ntarget = \"worker.1\"\n",
                "target",
                "applies to `redis`",
            ),
            (
                "action = \"heal\"\ntarget = \"orchestrator\"\n",
                "target",
                "only `redis` has",
            ),
            (
                "action = \"heal\"\ntarget = \"redis\"\nbetween = [\"redis\", \"worker\"]\n",
                "target",
                "not both",
            ),
        ] {
            let (got_field, message) = step_error(step);
            assert_eq!(got_field, format!("step[1].{field}"), "{step}: {message}");
            assert!(message.contains(needle), "{step}: {message}");
        }
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
