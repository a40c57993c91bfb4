//! The Redis protocol: every operation on the queue, each one atomic and one round trip.
//!
//! Tasks live in a hash per task; queued task ids live in one stream per priority level, read
//! through the consumer group [`CONSUMER_GROUP`]. A worker claims with [`Queue::claim`] (a Lua
//! script that reads the streams most urgent first and marks the tasks running), executes, then
//! records the outcome with [`Queue::finish_many`] (pipelined: ack, retry scheduling or
//! dead-lettering). Workers heartbeat into a sorted set; [`Queue::reclaim`] hands the pending
//! entries of workers whose heartbeat stopped to a live one. Delivery is at least once: an
//! execution may be repeated after a worker is presumed dead, never skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, Script, ServerErrorKind};
use time::OffsetDateTime;

use crate::event::Outcome;
use crate::keys::{CONSUMER_GROUP, IdempotencyScope, Keys};
use crate::model::{
    DecodeError, Description, Priority, RECORD_VERSION, Schedule, Status, TaskId, TaskRecord,
    TaskTimeout,
};

const PRELUDE: &str = include_str!("scripts/prelude.lua");

/// Most executions recorded by one call of the finish script. Bigger batches save per-call work
/// in Redis, but one call holds Redis for all of them (about 5 µs each), delaying other clients.
pub const FINISH_CHUNK: usize = 64;

/// Largest result (its JSON) a task may store. Redis refuses a single argument over
/// `proto-max-bulk-len` (512 MiB by default, as little as 1 MiB when configured) and an oversized
/// value can push it over `maxmemory`: an outcome that can never be recorded. Workers record a
/// bigger result as a failure instead ([`ExecutionOutcome::bounded`]).
pub const MAX_RESULT_BYTES: usize = 512 * 1024;

/// Longest error text an outcome records; longer ones are cut (at a character boundary).
pub const MAX_ERROR_BYTES: usize = 8 * 1024;

/// A queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis could not be reached or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// A stored task record is unreadable (another version wrote it, or it is corrupted).
    #[error("task {task_id}: {source}")]
    Corrupt {
        /// The task whose record is unreadable.
        task_id: String,
        /// What is wrong with it.
        source: DecodeError,
    },
    /// Redis answered with something the protocol does not expect.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// The enqueue was refused, and nothing written: its `Idempotency-Key` created a task for
    /// another request (another description or priority).
    #[error("idempotency key was used for task {task_id} with another request")]
    IdempotencyKeyReused {
        /// The task the key created.
        task_id: String,
    },
    /// The takeover was refused, and nothing taken: Redis's clock disagrees with the caller's
    /// expectation ([`crate::clock::ClockWatch`]), so it jumped and heartbeats cannot be judged
    /// until every live worker has beaten on the new clock.
    #[error("redis's clock is {by_ms} ms off what this worker expected: it jumped")]
    ClockJumped {
        /// How far Redis's time is from the expectation (negative: behind).
        by_ms: i64,
    },
    /// The write was applied on the primary, but fewer replicas than `REPLICA_ACKS` confirmed
    /// it in time (or the confirmation could not be read): a failover now could lose it. The
    /// outcome is unknown to the client, who retries (with the same `Idempotency-Key`).
    #[error("written, but {acked} of {wanted} replicas confirmed it in time")]
    NotReplicated {
        /// Replicas that confirmed (`WAIT`'s answer; 0 when it could not be read).
        acked: i64,
        /// `REPLICA_ACKS`.
        wanted: u32,
    },
    /// The enqueue was refused, and nothing written: [`QueueConfig::max_queued`] tasks wait
    /// already.
    #[error("the queue is full: {waiting} tasks wait, the limit is {limit}")]
    QueueFull {
        /// Entries in the priority streams (queued or running) when the enqueue was refused.
        waiting: u64,
        /// [`QueueConfig::max_queued`].
        limit: u64,
    },
}

/// Error codes with which Redis refuses a command for a reason that is not the caller's fault:
/// busy with a script, a read-only replica, an ACL that lacks a command or key, out of memory
/// (`maxmemory` with `noeviction`), unable to persist, loading its data, or a cluster in motion
/// (`MOVED`/`ASK` redirects, which a storm of turns into unavailability for a plain client).
const REFUSAL_CODES: [&str; 11] = [
    "BUSY",
    "READONLY",
    "NOPERM",
    "OOM",
    "MISCONF",
    "LOADING",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "MOVED",
    "ASK",
];

/// Whether one error reply is a refusal (see [`REFUSAL_CODES`]). Inside a script Redis words an
/// ACL refusal as `ERR` (7.0: "The user executing the script can't ...", 7.2: "ACL failure in
/// script: ..."); other refusals keep their code.
fn is_refusal_reply(reply: &redis::ServerError) -> bool {
    let code = reply.code();
    REFUSAL_CODES.contains(&code)
        || (code == "ERR"
            && reply.details().is_some_and(|detail| {
                detail.starts_with("The user executing the script can't")
                    || detail.starts_with("ACL failure in script")
            }))
}

impl QueueError {
    /// True when Redis is unreachable, too slow, or refuses to serve for now
    /// ([`QueueError::is_refusal`]), as opposed to a logic or data error.
    pub fn is_unavailable(&self) -> bool {
        match self {
            QueueError::Redis(err) => {
                err.is_io_error()
                    || err.is_timeout()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    // The cluster client's answer when it reaches none of the nodes it knows.
                    || err.kind() == redis::ErrorKind::ClusterConnectionNotFound
                    || self.is_refusal()
            }
            // Written by a newer release during an upgrade: another replica may read it, and
            // this one will once upgraded.
            QueueError::Corrupt { source, .. } => source.is_newer_version(),
            QueueError::NotReplicated { .. } => true,
            _ => false,
        }
    }

    /// True when Redis answered with a refusal that is not the caller's fault (`BUSY`,
    /// `READONLY`, `NOPERM`, `OOM`, `MISCONF`, `LOADING`, `TRYAGAIN`, `CLUSTERDOWN`,
    /// `MASTERDOWN`, `MOVED`, `ASK`). Unlike a timeout this is a definite answer: Redis refuses
    /// these before running a command, and inside a script at the script's first write
    /// (`READONLY`, `OOM`, `MISCONF`: once a script has written, Redis lets its later writes
    /// through), so a refused script that writes first changed nothing. An ACL refusal of a
    /// later command in a script is the exception, which is why the services' ACL must grant
    /// every command the scripts send. In a pipeline, the commands before the refused one may
    /// have been applied.
    pub fn is_refusal(&self) -> bool {
        match self {
            QueueError::Redis(err) => err
                .clone()
                .into_server_errors()
                .is_some_and(|replies| replies.iter().any(|(_, reply)| is_refusal_reply(reply))),
            _ => false,
        }
    }

    /// True when the consumer group is missing (Redis lost its data, or a fresh Redis).
    pub fn is_missing_group(&self) -> bool {
        matches!(self, QueueError::Redis(err) if err.code() == Some("NOGROUP")
            || err.to_string().contains("NOGROUP"))
    }
}

/// Settings that shape the protocol.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Key names.
    pub keys: Keys,
    /// How long finished task records are kept (0 keeps them forever).
    pub task_retention: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// Executions allowed per task before it is dead-lettered.
    pub max_attempts: u32,
    /// Most tasks waiting (queued, or running and not yet acknowledged) before an enqueue is
    /// refused with [`QueueError::QueueFull`]; 0 sets no limit.
    pub max_queued: u64,
    /// How long the backpressure check trusts its count of waiting tasks (default
    /// [`WAITING_COUNT_TTL_MS`]).
    pub waiting_count_ttl: Duration,
}

/// Default of [`QueueConfig::max_queued`].
pub const DEFAULT_MAX_QUEUED: u64 = 1_000_000;

/// How long the backpressure check trusts its count of waiting tasks ([`Keys::waiting_count`])
/// before it sums the streams' lengths again. Enqueues in between add to the count; tasks that
/// leave the streams meanwhile do not subtract, so a submit can be refused up to this long
/// early, never accepted past the limit by other submits.
pub const WAITING_COUNT_TTL_MS: u64 = 100;

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            keys: Keys::default(),
            task_retention: Duration::from_secs(24 * 3600),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            max_attempts: 5,
            max_queued: DEFAULT_MAX_QUEUED,
            waiting_count_ttl: Duration::from_millis(WAITING_COUNT_TTL_MS),
        }
    }
}

/// The digest of an enqueue request that an idempotency record binds its key to: SHA-256 of
/// the canonical request (layout version, priority, description; the default priority counts as
/// given), first 16 bytes in hex.
fn request_digest(task: &NewTask) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    // A request without a timeout or schedule digests as before they existed, so keys stored
    // then still match; with them, other headers (`v2`, `v3`), so no description can make two
    // forms collide.
    match (task.timeout, task.schedule) {
        (None, None) => hasher.update(format!("v1\n{}\n", task.priority.get())),
        (Some(timeout), None) => hasher.update(format!(
            "v2\n{}\n{}\n",
            task.priority.get(),
            timeout.as_millis()
        )),
        (timeout, Some(schedule)) => {
            let schedule = match schedule {
                Schedule::Delay(ms) => format!("delay {ms}"),
                Schedule::At(at) => format!("at {}", at.unix_timestamp_nanos() / 1_000_000),
            };
            hasher.update(format!(
                "v3\n{}\n{}\n{schedule}\n",
                task.priority.get(),
                timeout.map_or(0, TaskTimeout::as_millis)
            ));
        }
    }
    hasher.update(task.description.as_str());
    hasher.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The task id in a stored idempotency record: `{task id} {request digest}`, or the task id
/// alone in a record written before keys were bound to their request.
pub fn idempotency_record_task_id(record: &str) -> &str {
    record
        .split_once(' ')
        .map_or(record, |(task_id, _)| task_id)
}

/// What [`Queue::enqueue`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum EnqueueOutcome {
    /// A new task was queued.
    Created(TaskRecord),
    /// The idempotency key was seen before; this is the task it created.
    Replayed(TaskId),
}

/// What [`Queue::cancel`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// No such task (never existed, or expired).
    NotFound,
    /// The task is cancelled now (or already was).
    Cancelled,
    /// The task runs or has finished; it was left alone.
    NotCancellable(Status),
}

/// What [`Queue::retry`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    /// No such task (never existed, or expired).
    NotFound,
    /// The task is queued again.
    Queued,
    /// The task is neither dead nor cancelled; it was left alone.
    NotRetryable(Status),
}

/// What one claim did: [`Queue::claim_slots`].
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The tasks it started.
    pub started: Vec<ClaimedTask>,
    /// Delivered entries it did not start (no slot, or a paused level), still pending for the
    /// consumer, to hand in again.
    pub deferred: Vec<Delivery>,
    /// The paused priority levels, most urgent first.
    pub paused: Vec<Priority>,
}

/// A stream entry delivered to a consumer, not yet started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream's priority.
    pub priority: Priority,
    /// The stream entry id.
    pub entry_id: String,
    /// The task id the entry carries (raw: it may be corrupted).
    pub task_id: String,
}

/// What a client asks for when it submits a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// What to do.
    pub description: Description,
    /// How urgent.
    pub priority: Priority,
    /// The execution deadline; `None`: the worker's `TASK_TIMEOUT`.
    pub timeout: Option<TaskTimeout>,
    /// When to start; `None`: at once.
    pub schedule: Option<Schedule>,
}

impl NewTask {
    /// A task with no deadline of its own, queued at once.
    pub fn new(description: Description, priority: Priority) -> Self {
        Self {
            description,
            priority,
            timeout: None,
            schedule: None,
        }
    }
}

/// A task claimed by a worker and marked running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedTask {
    /// Where the task came from; needed to ack it.
    pub delivery: Delivery,
    /// The task's description.
    pub description: String,
    /// This execution's number, from 1.
    pub attempt: u32,
    /// Executions allowed.
    pub max_attempts: u32,
    /// The task's own execution deadline; `None`: the worker's default applies.
    pub timeout: Option<TaskTimeout>,
}

/// The outcome of one execution, as recorded by [`Queue::finish_many`].
#[derive(Debug, Clone, PartialEq)]
pub enum ExecutionOutcome {
    /// Done; the handler's result is stored.
    Succeeded(serde_json::Value),
    /// Failed transiently; run again after `delay`.
    Retrying {
        /// Why it failed.
        error: String,
        /// When to run it again.
        delay: Duration,
    },
    /// Failed for good; goes to the dead-letter stream.
    Dead {
        /// Why it failed.
        error: String,
    },
    /// Stopped unfinished because its worker shut down: not the task's failure. The task runs
    /// again at once and the attempt is given back. Logged and counted as `retrying`.
    Interrupted {
        /// What stopped it.
        error: String,
    },
}

impl ExecutionOutcome {
    /// This outcome within what the queue can always record: a result over
    /// [`MAX_RESULT_BYTES`] becomes a permanent failure saying so, an error text over
    /// [`MAX_ERROR_BYTES`] is cut.
    pub fn bounded(self) -> Self {
        fn cut(mut text: String) -> String {
            if text.len() > MAX_ERROR_BYTES {
                let mut end = MAX_ERROR_BYTES;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push_str(" [cut]");
            }
            text
        }
        match self {
            ExecutionOutcome::Succeeded(result) => {
                let size = result.to_string().len();
                if size > MAX_RESULT_BYTES {
                    ExecutionOutcome::Dead {
                        error: format!(
                            "the result of {size} bytes exceeds the limit of {MAX_RESULT_BYTES} bytes"
                        ),
                    }
                } else {
                    ExecutionOutcome::Succeeded(result)
                }
            }
            ExecutionOutcome::Retrying { error, delay } => ExecutionOutcome::Retrying {
                error: cut(error),
                delay,
            },
            ExecutionOutcome::Dead { error } => ExecutionOutcome::Dead { error: cut(error) },
            ExecutionOutcome::Interrupted { error } => {
                ExecutionOutcome::Interrupted { error: cut(error) }
            }
        }
    }

    /// Which outcome this is, without its payload.
    pub fn kind(&self) -> Outcome {
        match self {
            ExecutionOutcome::Succeeded(_) => Outcome::Succeeded,
            ExecutionOutcome::Retrying { .. } => Outcome::Retrying,
            ExecutionOutcome::Dead { .. } => Outcome::Dead,
            ExecutionOutcome::Interrupted { .. } => Outcome::Retrying,
        }
    }

    /// The word `finish.lua` receives: the [`Outcome`] word, or `interrupted`.
    fn finish_word(&self) -> &'static str {
        match self {
            ExecutionOutcome::Interrupted { .. } => "interrupted",
            other => other.kind().as_str(),
        }
    }
}

/// One execution's outcome, ready to be recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// The claimed task.
    pub task: ClaimedTask,
    /// What happened.
    pub outcome: ExecutionOutcome,
}

/// What recording an outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishResult {
    /// Recorded and acknowledged.
    Recorded,
    /// Another execution owns the task now (this one was presumed lost); only a success was kept.
    Stale,
    /// The task record no longer exists.
    Missing,
}

/// Queue statistics, as shown by `GET /stats`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Tasks waiting per priority level (index 0 is priority 1).
    pub queued: [u64; 10],
    /// Tasks delivered to a worker and not yet acknowledged, per priority level.
    pub in_flight: [u64; 10],
    /// Tasks waiting for a retry to come due.
    pub retry_scheduled: u64,
    /// Entries in the dead-letter stream.
    pub dead_lettered: u64,
    /// Workers whose heartbeat is fresh.
    pub live_workers: u64,
    /// Age in milliseconds of the oldest task not yet delivered to a worker, per priority level
    /// (0 when none waits): how far the consumers lag behind.
    pub oldest_queued_age_ms: [u64; 10],
    /// Tasks waiting for their time (`delay_ms`, `run_at`).
    pub scheduled: u64,
    /// Whether each priority level is paused ([`Queue::set_paused`]).
    pub paused: [bool; 10],
    /// Tasks that succeeded since the counts began (their rate is the throughput).
    pub succeeded_total: u64,
}

/// One entry of the dead-letter stream: a task that failed for good, newest first from
/// [`Queue::dead_letters`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The task.
    pub task_id: String,
    /// Its last error.
    pub error: String,
    /// When it was dead-lettered, ms since the Unix epoch (Redis clock; from the entry id).
    pub at_ms: u64,
}

struct Scripts {
    list: Script,
    enqueue: Script,
    claim: Script,
    finish: Script,
    retry: Script,
    promote: Script,
    cancel: Script,
    reclaim: Script,
    renew: Script,
    heartbeat: Script,
    stats: Script,
    own_pending: Script,
    deregister: Script,
}

impl Scripts {
    fn new() -> Self {
        let script = |body: &str| {
            Script::new(&format!(
                "local RECORD_VERSION = '{RECORD_VERSION}'\n{PRELUDE}\n{body}"
            ))
        };
        Self {
            list: script(include_str!("scripts/list.lua")),
            enqueue: script(include_str!("scripts/enqueue.lua")),
            claim: script(include_str!("scripts/claim.lua")),
            finish: script(include_str!("scripts/finish.lua")),
            retry: script(include_str!("scripts/retry.lua")),
            promote: script(include_str!("scripts/promote.lua")),
            cancel: script(include_str!("scripts/cancel.lua")),
            reclaim: script(include_str!("scripts/reclaim.lua")),
            renew: script(include_str!("scripts/renew.lua")),
            heartbeat: script(include_str!("scripts/heartbeat.lua")),
            stats: script(include_str!("scripts/stats.lua")),
            own_pending: script(include_str!("scripts/own_pending.lua")),
            deregister: script(include_str!("scripts/deregister.lua")),
        }
    }

    fn all(&self) -> [&Script; 13] {
        [
            &self.list,
            &self.enqueue,
            &self.claim,
            &self.finish,
            &self.retry,
            &self.promote,
            &self.cancel,
            &self.reclaim,
            &self.renew,
            &self.heartbeat,
            &self.stats,
            &self.own_pending,
            &self.deregister,
        ]
    }
}

/// The queue protocol under one key prefix. Cheap to clone; holds no connection, so callers choose
/// theirs (a multiplexed one for most calls, a dedicated one for blocking reads).
#[derive(Clone)]
pub struct Queue {
    config: Arc<QueueConfig>,
    /// Replicas the writes of the API wait for ([`Queue::with_replica_acks`]).
    replica_acks: Option<ReplicaAcks>,
    scripts: Arc<Scripts>,
    streams: Arc<Vec<String>>,
    /// This process's run id (one per [`Queue::new`]), recorded with every claim: a claim handed
    /// in again by the same run for the same entry is the same execution, not a new attempt.
    run: Arc<str>,
    /// Until when the backpressure count in Redis is known to be trusted, so an enqueue may leave
    /// the ten streams out of its call ([`CountFreshness`]).
    count: Arc<CountFreshness>,
}

/// What the last full enqueue call told about the backpressure count ([`Keys::waiting_count`]):
/// until when (ms after `epoch`) Redis trusts it. Within that time an enqueue hands the script
/// its record's keys only, not the ten streams it would need to count again (parsing them and
/// handing them to Lua cost Redis about 4 % of an enqueue); a short call that finds the count
/// expired after all writes nothing and is made again in full.
#[derive(Debug)]
struct CountFreshness {
    epoch: Instant,
    until_ms: AtomicU64,
}

impl CountFreshness {
    /// Kept this much short of what Redis answered: the answer took time to arrive.
    const MARGIN_MS: u64 = 10;

    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn fresh(&self) -> bool {
        self.now_ms() < self.until_ms.load(Ordering::Relaxed)
    }

    /// A full call answered that the count stays trusted `ms` longer.
    fn trusted_for(&self, ms: i64) {
        let ms = u64::try_from(ms).unwrap_or_default();
        let until = (self.now_ms() + ms).saturating_sub(Self::MARGIN_MS);
        self.until_ms.store(until, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("config", &self.config)
            .finish()
    }
}

mod listing;
pub use listing::{InvalidCursor, ListCursor, ListQuery, MAX_LIST_LIMIT, TaskPage};

fn seconds(duration: Duration) -> u64 {
    duration.as_secs()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How many replicas a write waits for, and how long (`WAIT count timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReplicaAcks {
    count: u32,
    timeout: Duration,
}

/// `{priority, entry id, task id}` rows of a script reply as deliveries.
fn deliveries_from_rows(rows: Vec<(i64, String, String)>) -> Result<Vec<Delivery>, QueueError> {
    rows.into_iter()
        .map(|(priority, entry_id, task_id)| {
            Ok(Delivery {
                priority: priority_from_index(priority)?,
                entry_id,
                task_id,
            })
        })
        .collect()
}

fn priority_from_index(raw: i64) -> Result<Priority, QueueError> {
    Priority::parse(raw).map_err(|_| QueueError::Protocol(format!("priority {raw}")))
}

impl Queue {
    /// A queue with these settings.
    pub fn new(config: QueueConfig) -> Self {
        let streams = config.keys.streams();
        Self {
            config: Arc::new(config),
            replica_acks: None,
            scripts: Arc::new(Scripts::new()),
            streams: Arc::new(streams),
            run: uuid::Uuid::new_v4().simple().to_string().into(),
            count: Arc::new(CountFreshness::new()),
        }
    }

    /// This queue with the writes the API answers (enqueue, cancel, retry, pause) waiting for
    /// `count` replicas to confirm them, `timeout` at most (`WAIT`, in the same round trip as
    /// the write, on the same node); fewer confirmations are [`QueueError::NotReplicated`].
    /// 0 does not wait. The workers' writes never wait: losing one in a failover runs a task
    /// again, it never loses one.
    pub fn with_replica_acks(mut self, count: u32, timeout: Duration) -> Self {
        self.replica_acks = (count > 0).then_some(ReplicaAcks { count, timeout });
        self
    }

    /// Runs one write (a script call or a command, alone in `pipe`) and, with replica acks,
    /// `WAIT` right behind it in the same round trip, so both reach the node of the write's
    /// slot. A refused write is returned as Redis's error (nothing applied); a `WAIT` that
    /// confirms too few replicas, or fails, is [`QueueError::NotReplicated`] (applied, not
    /// known to be replicated).
    async fn write<T: redis::FromRedisValue, C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        pipe: redis::Pipeline,
    ) -> Result<T, QueueError> {
        self.write_unless(conn, pipe, |_| false).await
    }

    /// [`Queue::write`], where a reply for which `wrote_nothing` holds is returned whatever the
    /// `WAIT` behind it answered: there was nothing to replicate.
    async fn write_unless<T: redis::FromRedisValue, C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        mut pipe: redis::Pipeline,
        wrote_nothing: impl Fn(&redis::Value) -> bool,
    ) -> Result<T, QueueError> {
        if let Some(acks) = self.replica_acks {
            pipe.cmd("WAIT").arg(acks.count).arg(millis(acks.timeout));
        }
        pipe.ignore_errors();
        let mut replies: Vec<redis::Value> = pipe.query_async(conn).await?;
        if matches!(replies.first(), Some(redis::Value::ServerError(err))
            if err.kind() == Some(ServerErrorKind::NoScript))
        {
            // Redis restarted, or a replica became primary, without the script cache: load
            // and try once more (the refused script changed nothing).
            self.load_scripts(conn).await?;
            replies = pipe.query_async(conn).await?;
        }
        let mut replies = replies.into_iter();
        let written = replies
            .next()
            .ok_or_else(|| QueueError::Protocol("no reply to a write".to_owned()))?
            .extract_error()?;
        if let Some(acks) = self.replica_acks.filter(|_| !wrote_nothing(&written)) {
            let acked = replies
                .next()
                .and_then(|reply| redis::from_redis_value::<i64>(reply).ok())
                .unwrap_or_default();
            if acked < i64::from(acks.count) {
                return Err(QueueError::NotReplicated {
                    acked,
                    wanted: acks.count,
                });
            }
        }
        redis::from_redis_value(written)
            .map_err(|err| QueueError::Protocol(format!("reply to a write: {err}")))
    }

    /// The settings.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.config.keys
    }

    /// Creates the consumer group on every priority stream (and the streams) if missing, and
    /// loads the scripts. Safe to call at any time, by any number of workers.
    pub async fn ensure_groups<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<(), QueueError> {
        for stream in self.streams.iter() {
            let created: Result<(), RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(CONSUMER_GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(conn)
                .await;
            match created {
                Ok(()) => {}
                Err(err) if err.code() == Some("BUSYGROUP") => {}
                Err(err) => return Err(err.into()),
            }
        }
        self.load_scripts(conn).await
    }

    /// Loads every script into Redis's script cache (needed before pipelined script calls).
    /// One `SCRIPT LOAD` at a time, not a pipeline: on a Redis Cluster each goes to every node
    /// (a pipeline without keys would go to one node only).
    pub async fn load_scripts<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<(), QueueError> {
        for script in self.scripts.all() {
            script.load_async(conn).await?;
        }
        Ok(())
    }

    /// [`Queue::enqueue_in_scope`] for the caller of a system without authentication
    /// ([`IdempotencyScope::open`]).
    pub async fn enqueue<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        description: &Description,
        priority: Priority,
        idempotency_key: Option<&str>,
    ) -> Result<EnqueueOutcome, QueueError> {
        let scope = IdempotencyScope::open();
        let task = NewTask::new(description.clone(), priority);
        self.enqueue_in_scope(conn, &task, &scope, idempotency_key)
            .await
    }

    /// Enqueues a task in one atomic round trip: task hash, stream entry and, with a key, the
    /// idempotency record. An `idempotency_key` is the caller's (`scope`) and bound to the
    /// request: seen before with the same description and priority, it returns the task it
    /// created instead; with another, nothing is written and the answer is
    /// [`QueueError::IdempotencyKeyReused`]. With [`QueueConfig::max_queued`] tasks waiting,
    /// nothing is written and the answer is [`QueueError::QueueFull`].
    pub async fn enqueue_in_scope<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        task: &NewTask,
        scope: &IdempotencyScope,
        idempotency_key: Option<&str>,
    ) -> Result<EnqueueOutcome, QueueError> {
        let NewTask {
            description,
            priority,
            timeout,
            schedule,
        } = task;
        let (priority, timeout, schedule) = (*priority, *timeout, *schedule);
        let keys = &self.config.keys;
        let task_id = match keys.partition() {
            partition if partition.count > 1 => TaskId::new_in_partition(partition.index),
            _ => TaskId::new(),
        };
        let digest = idempotency_key.map(|_| request_digest(task));
        let idempotency = idempotency_key.map(|key| {
            (
                keys.idempotency(scope, key),
                scope.is_open().then(|| keys.legacy_idempotency(key)),
            )
        });
        // With no limit the streams are never counted; with one, they are handed in only when
        // the count may have expired (see enqueue.lua).
        let mut short = self.config.max_queued == 0 || self.count.fresh();
        let (outcome, id, number, due) = loop {
            let mut invocation = self.scripts.enqueue.prepare_invoke();
            invocation
                .key(keys.task(&task_id))
                .key(keys.stream(priority));
            if !short {
                invocation.key(self.streams.as_slice());
            }
            invocation.key(keys.waiting_count()).key(keys.scheduled());
            if let Some((key, legacy)) = &idempotency {
                invocation.key(key);
                if let Some(legacy) = legacy {
                    invocation.key(legacy);
                }
            }
            invocation
                .arg(task_id.to_string())
                .arg(description.as_str())
                .arg(priority.get())
                .arg(self.config.max_attempts)
                .arg(seconds(self.config.idempotency_ttl).max(1))
                .arg(RECORD_VERSION)
                .arg(self.config.max_queued)
                .arg(digest.as_deref().unwrap_or_default())
                .arg(timeout.map(TaskTimeout::as_millis).unwrap_or_default())
                .arg(millis(self.config.waiting_count_ttl).max(1));
            match schedule {
                Some(Schedule::Delay(ms)) => invocation.arg("delay").arg(ms),
                Some(Schedule::At(at)) => invocation
                    .arg("at")
                    .arg((at.unix_timestamp_nanos() / 1_000_000).max(0) as i64),
                None => invocation.arg("now").arg(0),
            };
            invocation.arg(if short { "short" } else { "full" });
            // {outcome, id, number, due_ms, fresh_ms}: see enqueue.lua. due_ms is 0 for a task
            // queued at once.
            let mut pipe = redis::pipe();
            pipe.invoke_script(&invocation);
            // A short call answered 4 wrote nothing: its WAIT does not count.
            let (outcome, id, number, due, fresh): (i64, String, i64, i64, i64) = self
                .write_unless(conn, pipe, |reply| {
                    matches!(reply, redis::Value::Array(values)
                        if values.first() == Some(&redis::Value::Int(4)))
                })
                .await?;
            if outcome == 4 && short {
                // the count expired: nothing was written; again, with the streams
                short = false;
                continue;
            }
            if !short && self.config.max_queued > 0 {
                self.count.trusted_for(fresh);
            }
            break (outcome, id, number, due);
        };
        if outcome == 2 {
            return Err(QueueError::QueueFull {
                waiting: u64::try_from(number).unwrap_or_default(),
                limit: self.config.max_queued,
            });
        }
        if outcome == 3 {
            return Err(QueueError::IdempotencyKeyReused { task_id: id });
        }
        if outcome == 0 {
            let existing = TaskId::parse(&id).map_err(|_| QueueError::Corrupt {
                task_id: id.clone(),
                source: DecodeError::BadField {
                    field: "id",
                    value: id.chars().take(64).collect(),
                },
            })?;
            return Ok(EnqueueOutcome::Replayed(existing));
        }
        let millis = |ms: i64, what: &str| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .map_err(|_| QueueError::Protocol(format!("{what} {ms}")))
        };
        let created_at = millis(number, "created_at")?;
        let run_at = if due > 0 {
            Some(millis(due, "run_at")?)
        } else {
            None
        };
        Ok(EnqueueOutcome::Created(TaskRecord {
            id: task_id,
            description: description.as_str().to_owned(),
            priority,
            status: if run_at.is_some() {
                Status::Scheduled
            } else {
                Status::Queued
            },
            attempts: 0,
            max_attempts: self.config.max_attempts,
            created_at,
            started_at: None,
            finished_at: None,
            worker: None,
            result: None,
            error: None,
            timeout_ms: timeout.map(TaskTimeout::as_millis),
            run_at,
        }))
    }

    /// Reads a task record; `None` for an unknown or expired task.
    pub async fn get<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        task_id: &TaskId,
    ) -> Result<Option<TaskRecord>, QueueError> {
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.config.keys.task(task_id))
            .query_async(conn)
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        TaskRecord::from_fields(&fields)
            .map(Some)
            .map_err(|source| QueueError::Corrupt {
                task_id: task_id.to_string(),
                source,
            })
    }

    /// Cancels a task that is queued or waiting for a retry.
    pub async fn cancel<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        task_id: &TaskId,
    ) -> Result<CancelOutcome, QueueError> {
        let keys = &self.config.keys;
        let mut invocation = self.scripts.cancel.prepare_invoke();
        invocation
            .key(keys.task(task_id))
            .key(keys.retry_schedule())
            .key(self.streams.as_slice())
            .key(keys.scheduled())
            .key(keys.finished(Status::Cancelled))
            .key(keys.finished_counts())
            .arg(CONSUMER_GROUP)
            .arg(seconds(self.config.task_retention))
            .arg(task_id.to_string());
        let mut pipe = redis::pipe();
        pipe.invoke_script(&invocation);
        let status: Option<String> = self.write(conn, pipe).await?;
        Ok(match status.as_deref() {
            None => CancelOutcome::NotFound,
            Some("cancelled") => CancelOutcome::Cancelled,
            Some(other) => {
                let status = other.parse().map_err(|source| QueueError::Corrupt {
                    task_id: task_id.to_string(),
                    source,
                })?;
                CancelOutcome::NotCancellable(status)
            }
        })
    }

    /// Queues a `dead` or `cancelled` task again: a new attempt series (attempts back to 0) at
    /// its priority; the record keeps its last error, and no longer expires.
    pub async fn retry<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        task_id: &TaskId,
    ) -> Result<RetryOutcome, QueueError> {
        let mut invocation = self.scripts.retry.prepare_invoke();
        invocation
            .key(self.config.keys.task(task_id))
            .key(self.streams.as_slice())
            .arg(task_id.to_string());
        let mut pipe = redis::pipe();
        pipe.invoke_script(&invocation);
        let status: Option<String> = self.write(conn, pipe).await?;
        Ok(match status.as_deref() {
            None => RetryOutcome::NotFound,
            Some("requeued") => RetryOutcome::Queued,
            Some(other) => {
                let status = other.parse().map_err(|source| QueueError::Corrupt {
                    task_id: task_id.to_string(),
                    source,
                })?;
                RetryOutcome::NotRetryable(status)
            }
        })
    }

    /// Claims up to `count` fresh tasks, most urgent first, after starting the already delivered
    /// entries in `delivered`. Every returned task is marked running under `consumer`.
    ///
    /// Claiming again an entry this queue (this process) claimed already and that still runs
    /// under `consumer` returns it with the same attempt: the first reply was lost and the
    /// execution never started. Attempts count executions that started.
    pub async fn claim<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        count: usize,
        delivered: &[Delivery],
    ) -> Result<Vec<ClaimedTask>, QueueError> {
        let claim = self
            .invoke_claim(conn, consumer, count, delivered, "all")
            .await?;
        Ok(claim.started)
    }

    /// Starts up to `slots` tasks for `consumer`, strictly most urgent first across the entries
    /// already delivered to it (`delivered`: taken over, recovered) and fresh ones; at one
    /// priority, delivered entries go first. Returns the started tasks, and the delivered
    /// entries there was no slot for (still pending for `consumer`, to hand in again later).
    /// Same attempt rule as [`Queue::claim`].
    pub async fn claim_by_priority<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        slots: usize,
        delivered: &[Delivery],
    ) -> Result<(Vec<ClaimedTask>, Vec<Delivery>), QueueError> {
        let claim = self.claim_slots(conn, consumer, slots, delivered).await?;
        Ok((claim.started, claim.deferred))
    }

    /// [`Queue::claim_by_priority`], with the paused levels the claim saw: a worker leaves
    /// them out of its blocking read without asking again.
    pub async fn claim_slots<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        slots: usize,
        delivered: &[Delivery],
    ) -> Result<Claim, QueueError> {
        self.invoke_claim(conn, consumer, slots, delivered, "slots")
            .await
    }

    async fn invoke_claim<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        count: usize,
        delivered: &[Delivery],
        mode: &str,
    ) -> Result<Claim, QueueError> {
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(self.streams.as_slice())
            .key(self.config.keys.dead_letter())
            .key(self.config.keys.paused())
            .arg(CONSUMER_GROUP)
            .arg(consumer)
            .arg(self.config.keys.task_prefix())
            .arg(count)
            .arg(seconds(self.config.task_retention))
            .arg(&*self.run)
            .arg(mode);
        for delivery in delivered {
            invocation
                .arg(delivery.priority.get())
                .arg(&delivery.entry_id)
                .arg(&delivery.task_id);
        }
        type Left = Vec<(i64, String, String, String)>;
        type Deferred = Vec<(i64, String, String)>;
        // Started tasks come flat, seven values each (see claim.lua).
        let (flat, deferred, left, paused): (Vec<redis::Value>, Deferred, Left, Vec<i64>) =
            invocation.invoke_async(conn).await?;
        for (priority, entry_id, task_id, version) in left {
            tracing::warn!(
                task_id,
                priority,
                entry_id,
                version,
                reads = RECORD_VERSION,
                "task record of a newer layout version: left pending for a worker that reads it \
                 (upgrade the workers)"
            );
        }
        if flat.len() % 7 != 0 {
            return Err(redis::RedisError::from((
                ErrorKind::Parse,
                "claim reply",
                format!("{} values, not seven per task", flat.len()),
            ))
            .into());
        }
        // Seven values per started task, decoded in place (no row to collect).
        fn field<T: redis::FromRedisValue>(
            values: &mut impl Iterator<Item = redis::Value>,
        ) -> Result<T, QueueError> {
            let value = values.next().ok_or_else(|| {
                QueueError::Protocol("claim replied a started task cut short".to_owned())
            })?;
            Ok(redis::from_redis_value(value).map_err(RedisError::from)?)
        }
        let mut started = Vec::with_capacity(flat.len() / 7);
        let mut values = flat.into_iter().peekable();
        while values.peek().is_some() {
            let priority: i64 = field(&mut values)?;
            let entry_id: String = field(&mut values)?;
            let task_id: String = field(&mut values)?;
            let description: String = field(&mut values)?;
            let attempt: u32 = field(&mut values)?;
            let max_attempts: u32 = field(&mut values)?;
            let timeout_ms: i64 = field(&mut values)?;
            started.push(ClaimedTask {
                delivery: Delivery {
                    priority: priority_from_index(priority)?,
                    entry_id,
                    task_id,
                },
                description,
                attempt,
                max_attempts,
                // 0: none of its own (or unreadable: the worker's default applies)
                timeout: TaskTimeout::from_millis(timeout_ms).ok(),
            });
        }
        Ok(Claim {
            started,
            deferred: deliveries_from_rows(deferred)?,
            paused: paused
                .into_iter()
                .map(priority_from_index)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Waits up to `block` for new entries on any priority stream and takes up to `count` of them
    /// for `consumer`. Use a dedicated connection: the call holds it for the whole wait. The
    /// entries must then be started with [`Queue::claim`].
    pub async fn wait_for_entries<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.wait_for_entries_except(conn, consumer, count, block, &[])
            .await
    }

    /// [`Queue::wait_for_entries`] on every priority stream but those of `skipped` (the paused
    /// levels, [`Queue::paused`]); with every level skipped, returns none at once (the caller
    /// waits).
    pub async fn wait_for_entries_except<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        count: usize,
        block: Duration,
        skipped: &[Priority],
    ) -> Result<Vec<Delivery>, QueueError> {
        let streams: Vec<&String> = Priority::all()
            .zip(self.streams.iter())
            .filter(|(p, _)| !skipped.contains(p))
            .map(|(_, stream)| stream)
            .collect();
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(CONSUMER_GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count.max(1))
            .arg("BLOCK")
            .arg(millis(block).max(1))
            .arg("STREAMS")
            .arg(streams.as_slice());
        for _ in 0..streams.len() {
            cmd.arg(">");
        }
        type Reply = Option<Vec<(String, Vec<(String, HashMap<String, String>)>)>>;
        let reply: Reply = cmd.query_async(conn).await?;
        let mut deliveries = Vec::new();
        for (stream, entries) in reply.unwrap_or_default() {
            let index = self
                .streams
                .iter()
                .position(|s| *s == stream)
                .ok_or_else(|| {
                    QueueError::Protocol(format!("entry from unknown stream {stream}"))
                })?;
            let priority = priority_from_index(index as i64 + 1)?;
            for (entry_id, fields) in entries {
                deliveries.push(Delivery {
                    priority,
                    task_id: fields.get("t").cloned().unwrap_or_default(),
                    entry_id,
                });
            }
        }
        deliveries.sort_by_key(|d| d.priority);
        Ok(deliveries)
    }

    /// Records many outcomes in one round trip: up to [`FINISH_CHUNK`] executions per script
    /// call, the calls pipelined. Each execution's state change is atomic on its own.
    pub async fn finish_many<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        finishes: &[Finish],
    ) -> Result<Vec<FinishResult>, QueueError> {
        if finishes.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &self.config.keys;
        let (retry_schedule, dead_letter, clock, succeeded, counts) = (
            keys.retry_schedule(),
            keys.dead_letter(),
            keys.clock(),
            keys.finished(Status::Succeeded),
            keys.finished_counts(),
        );
        let task_prefix = keys.task_prefix();
        let mut pipe = redis::pipe();
        for chunk in finishes.chunks(FINISH_CHUNK) {
            let mut invocation = self.scripts.finish.prepare_invoke();
            invocation
                .key(&retry_schedule)
                .key(&dead_letter)
                .key(self.streams.as_slice())
                .key(&clock)
                .key(&succeeded)
                .key(&counts)
                .arg(CONSUMER_GROUP)
                .arg(consumer)
                .arg(&task_prefix)
                .arg(seconds(self.config.task_retention));
            for finish in chunk {
                let delivery = &finish.task.delivery;
                let (payload, delay) = match &finish.outcome {
                    ExecutionOutcome::Succeeded(result) => (result.to_string(), 0),
                    ExecutionOutcome::Retrying { error, delay } => (error.clone(), millis(*delay)),
                    ExecutionOutcome::Dead { error } | ExecutionOutcome::Interrupted { error } => {
                        (error.clone(), 0)
                    }
                };
                invocation
                    .arg(delivery.priority.get())
                    .arg(&delivery.entry_id)
                    .arg(&delivery.task_id)
                    .arg(finish.task.attempt)
                    .arg(finish.outcome.finish_word())
                    .arg(payload)
                    .arg(delay);
            }
            pipe.invoke_script(&invocation);
        }
        let replies: Vec<Vec<String>> = match pipe.query_async(conn).await {
            Ok(replies) => replies,
            Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // Redis restarted and forgot its script cache: load and try once more. Finishing
                // twice is harmless: the second call finds the entry acknowledged.
                self.load_scripts(conn).await?;
                pipe.query_async(conn).await?
            }
            Err(err) => return Err(err.into()),
        };
        let results: Vec<FinishResult> = replies
            .into_iter()
            .flatten()
            .map(|reply| match reply.as_str() {
                "ok" => Ok(FinishResult::Recorded),
                "stale" => Ok(FinishResult::Stale),
                "missing" => Ok(FinishResult::Missing),
                other => Err(QueueError::Protocol(format!("finish replied {other:?}"))),
            })
            .collect::<Result<_, _>>()?;
        if results.len() != finishes.len() {
            return Err(QueueError::Protocol(format!(
                "finish answered {} outcomes for {}",
                results.len(),
                finishes.len()
            )));
        }
        Ok(results)
    }

    /// Moves up to `limit` retries that came due back into their streams; returns how many.
    pub async fn promote_due_retries<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        limit: usize,
    ) -> Result<usize, QueueError> {
        Ok(self.promote_due(conn, limit).await?.0)
    }

    /// Moves up to `limit` retries and scheduled tasks that came due into their streams (a
    /// scheduled one becomes `queued`); returns how many, and how long until the next one is
    /// due (`None`: nothing waits).
    pub async fn promote_due<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        limit: usize,
    ) -> Result<(usize, Option<Duration>), QueueError> {
        let (n, next): (usize, i64) = self
            .scripts
            .promote
            .key(self.config.keys.retry_schedule())
            .key(self.streams.as_slice())
            .key(self.config.keys.scheduled())
            .key(self.config.keys.clock())
            .arg(self.config.keys.task_prefix())
            .arg(limit)
            .invoke_async(conn)
            .await?;
        let next = u64::try_from(next).ok().map(Duration::from_millis);
        Ok((n, next))
    }

    /// Takes over, for `consumer`, up to `limit` entries pending at workers whose heartbeat is
    /// older than `dead_after`, and entries idle longer than `lease` (orphans). Start them with
    /// [`Queue::claim`]. The orphan sweep resumes, per stream, where the previous call (by any
    /// worker) stopped, so every pending entry is examined within a few calls.
    pub async fn reclaim<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        dead_after: Duration,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.reclaim_checked(conn, consumer, dead_after, lease, limit, None)
            .await
    }

    /// [`Queue::reclaim`], refused with [`QueueError::ClockJumped`] (nothing taken) when Redis's
    /// time is further behind or ahead of the caller's expectation
    /// ([`crate::clock::ClockWatch::expectation`]) than it allows.
    pub async fn reclaim_checked<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        dead_after: Duration,
        lease: Duration,
        limit: usize,
        clock: Option<crate::clock::Expectation>,
    ) -> Result<Vec<Delivery>, QueueError> {
        let (expected, behind, ahead) = match clock {
            Some(e) => (
                e.expected_ms.to_string(),
                e.behind_ms.to_string(),
                e.ahead_ms.to_string(),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        let rows: Vec<(i64, String, String)> = self
            .scripts
            .reclaim
            .key(self.config.keys.workers())
            .key(self.streams.as_slice())
            .key(self.config.keys.sweep_cursor())
            .arg(CONSUMER_GROUP)
            .arg(consumer)
            .arg(millis(dead_after))
            .arg(millis(lease))
            .arg(limit)
            .arg(expected)
            .arg(behind)
            .arg(ahead)
            .invoke_async(conn)
            .await?;
        if let [(-1, marker, off)] = rows.as_slice()
            && marker == "clock"
        {
            return Err(QueueError::ClockJumped {
                by_ms: off.parse().unwrap_or_default(),
            });
        }
        deliveries_from_rows(rows)
    }

    /// Entries pending for `consumer` (up to `limit` per stream): after a lost reply, a worker
    /// finds here what Redis delivered to it that it never heard of.
    pub async fn own_pending<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        let rows: Vec<(i64, String, String)> = self
            .scripts
            .own_pending
            .key(self.streams.as_slice())
            .arg(CONSUMER_GROUP)
            .arg(consumer)
            .arg(limit)
            .invoke_async(conn)
            .await?;
        deliveries_from_rows(rows)
    }

    /// Resets the idle time of entries this consumer still executes, so they are not taken as
    /// orphans.
    pub async fn renew_leases<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        deliveries: &[Delivery],
    ) -> Result<(), QueueError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut invocation = self.scripts.renew.prepare_invoke();
        invocation
            .key(self.streams.as_slice())
            .arg(CONSUMER_GROUP)
            .arg(consumer);
        for delivery in deliveries {
            invocation
                .arg(delivery.priority.get())
                .arg(&delivery.entry_id);
        }
        invocation.invoke_async::<i64>(conn).await?;
        Ok(())
    }

    /// Records that `worker_id` is alive now.
    pub async fn heartbeat<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        worker_id: &str,
    ) -> Result<(), QueueError> {
        self.heartbeat_at(conn, worker_id).await.map(drop)
    }

    /// [`Queue::heartbeat`], returning the Redis time it recorded (ms since the Unix epoch), for
    /// [`crate::clock::ClockWatch::observe`].
    pub async fn heartbeat_at<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        worker_id: &str,
    ) -> Result<i64, QueueError> {
        Ok(self
            .scripts
            .heartbeat
            .key(self.config.keys.workers())
            .arg(worker_id)
            .arg("")
            .invoke_async::<i64>(conn)
            .await?)
    }

    /// Removes a worker that stopped. A worker with entries still pending is not removed (that
    /// would drop them) but marked dead, so a live worker takes them over at its next pass.
    /// Returns how many streams still held entries pending for it.
    pub async fn deregister<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        worker_id: &str,
    ) -> Result<usize, QueueError> {
        let left: usize = self
            .scripts
            .deregister
            .key(self.config.keys.workers())
            .key(self.streams.as_slice())
            .arg(CONSUMER_GROUP)
            .arg(worker_id)
            .invoke_async(conn)
            .await?;
        Ok(left)
    }

    /// The newest `limit` entries of the dead-letter stream, newest first (one `XREVRANGE`).
    pub async fn dead_letters<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(self.config.keys.dead_letter())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(conn)
            .await?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| {
                let field = |name: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                DeadLetter {
                    task_id: field("t"),
                    error: field("error"),
                    at_ms: id
                        .split('-')
                        .next()
                        .and_then(|ms| ms.parse().ok())
                        .unwrap_or_default(),
                }
            })
            .collect())
    }

    /// Queue statistics in one round trip; workers count as live when their heartbeat is newer
    /// than `dead_after`.
    pub async fn stats<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        dead_after: Duration,
    ) -> Result<Stats, QueueError> {
        let keys = &self.config.keys;
        let numbers: Vec<u64> = self
            .scripts
            .stats
            .key(self.streams.as_slice())
            .key(keys.retry_schedule())
            .key(keys.dead_letter())
            .key(keys.workers())
            .key(keys.scheduled())
            .key(keys.paused())
            .key(keys.finished_counts())
            .arg(CONSUMER_GROUP)
            .arg(millis(dead_after))
            .invoke_async(conn)
            .await?;
        if numbers.len() != 45 {
            return Err(QueueError::Protocol(format!(
                "stats returned {} numbers",
                numbers.len()
            )));
        }
        let mut queued = [0; 10];
        let mut in_flight = [0; 10];
        let mut oldest_queued_age_ms = [0; 10];
        queued.copy_from_slice(&numbers[0..10]);
        oldest_queued_age_ms.copy_from_slice(&numbers[23..33]);
        in_flight.copy_from_slice(&numbers[10..20]);
        Ok(Stats {
            queued,
            in_flight,
            retry_scheduled: numbers[20],
            dead_lettered: numbers[21],
            live_workers: numbers[22],
            oldest_queued_age_ms,
            scheduled: numbers[33],
            paused: std::array::from_fn(|i| numbers[34 + i] == 1),
            succeeded_total: numbers[44],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a client gets for this error reply line.
    fn server_error(line: &str) -> QueueError {
        let reply = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).expect("parses");
        QueueError::Redis(reply.extract_error().expect_err("an error reply"))
    }

    #[test]
    fn item_10_every_refusal_that_is_not_the_clients_fault_is_unavailable() {
        let script = "script: 0123abcd, on @user_script:1.";
        for line in [
            "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.".to_owned(),
            format!("READONLY You can't write against a read only replica. {script}"),
            "NOPERM this user has no permissions to run the 'evalsha' command".to_owned(),
            "NOPERM this user has no permissions to access one of the keys used as arguments".to_owned(),
            // Redis 7.0 and 7.2 word an ACL refusal inside a script as ERR.
            format!("ERR The user executing the script can't run this command or subcommand {script}"),
            format!("ERR The user executing the script can't access at least one of the keys mentioned in the command arguments {script}"),
            format!("ERR ACL failure in script: User agent has no permissions to run the 'xadd' command {script}"),
            format!("OOM command not allowed when used memory > 'maxmemory'. {script}"),
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.".to_owned(),
            "LOADING Redis is loading the dataset in memory".to_owned(),
            "TRYAGAIN Multiple keys request during rehashing of slot".to_owned(),
            "CLUSTERDOWN The cluster is down".to_owned(),
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.".to_owned(),
            "MOVED 3999 127.0.0.1:6381".to_owned(),
            "ASK 3999 127.0.0.1:6381".to_owned(),
        ] {
            assert!(server_error(&line).is_unavailable(), "{line}");
        }
        for line in [
            "ERR unknown command 'NOPE'",
            "ERR Error running script (call to f_0123): @user_script:1: user_script:1: attempt to compare nil with number",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "NOSCRIPT No matching script. Please use EVAL.",
            "CROSSSLOT Keys in request don't hash to the same slot",
            "NOGROUP No such key 'agent:stream:p1' or consumer group 'workers'",
        ] {
            assert!(!server_error(line).is_unavailable(), "{line}");
        }
    }

    #[test]
    fn a_cluster_that_no_node_of_answers_is_unavailable() {
        let err = QueueError::Redis(redis::RedisError::from((
            redis::ErrorKind::ClusterConnectionNotFound,
            "No connections found",
        )));
        assert!(err.is_unavailable(), "{err}");
    }

    #[test]
    fn item_5_idempotency_records_bind_the_key_to_the_request() {
        let task = |text: &str, priority, timeout: Option<u64>| NewTask {
            description: Description::parse(text.into()).expect("valid"),
            priority,
            timeout: timeout.map(|ms| TaskTimeout::from_millis(ms as i64).expect("valid")),
            schedule: None,
        };
        let digest = request_digest(&task("summarise", Priority::DEFAULT, None));

        assert_eq!(digest.len(), 32);
        assert_eq!(
            digest,
            request_digest(&task("summarise", Priority::DEFAULT, None))
        );
        for other in [
            task("summarise", Priority::HIGHEST, None),
            task("summarise!", Priority::DEFAULT, None),
            task("summarise", Priority::DEFAULT, Some(500)),
            // no description can make the timeout form collide with the plain one
            task("t500\nsummarise", Priority::DEFAULT, None),
        ] {
            assert_ne!(digest, request_digest(&other), "{other:?}");
        }
        assert_ne!(
            request_digest(&task("summarise", Priority::DEFAULT, Some(500))),
            request_digest(&task("500\nsummarise", Priority::DEFAULT, None))
        );
        // the schedule is part of the request too
        let scheduled = |schedule| NewTask {
            schedule: Some(schedule),
            ..task("summarise", Priority::DEFAULT, None)
        };
        let delayed = request_digest(&scheduled(Schedule::Delay(500)));
        assert_ne!(delayed, digest);
        assert_ne!(delayed, request_digest(&scheduled(Schedule::Delay(501))));
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid");
        assert_ne!(delayed, request_digest(&scheduled(Schedule::At(at))));
        let id = "0190c5d2-6a8e-7cc3-9a43-0d5f1e1e2a01";
        assert_eq!(idempotency_record_task_id(&format!("{id} {digest}")), id);
        assert_eq!(idempotency_record_task_id(id), id, "a record from before");
    }
}
