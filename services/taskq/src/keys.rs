//! Every Redis key and stream name used by Agent System.
//!
//! Nothing else in the workspace formats a key: a test or a harness run that needs isolation picks
//! its own prefix, and all keys move with it.

use sha2::{Digest, Sha256};

use crate::model::{Priority, Status, TaskId};

/// The consumer group every worker joins, on every priority stream.
pub const CONSUMER_GROUP: &str = "workers";

/// The `redis-server` settings the queue is tuned for, which every deployment of this project
/// passes (compose, Kubernetes, the image's default command, the harness, `cargo xtask run` and
/// the bench): `stream-node-max-entries 16` instead of Redis's 100.
///
/// A stream keeps its entries in nodes of up to this many, and finding one entry in a node (to
/// delete it, as every finish does, or to start reading after it) walks the node from its first
/// entry, the deleted ones included. With nodes of 100 a worker's `XDEL` cost about 30,000
/// instructions per task in Redis, an eighth of the whole drain; with nodes of 16, 8,800
/// (callgrind, docs/benchmarks.md). Enqueues cost the same; a queued entry takes about 80 bytes
/// instead of 54 (a task's record about 360).
pub const REDIS_TUNING_ARGS: [&str; 2] = ["--stream-node-max-entries", "16"];

/// The number of hash slots of a Redis Cluster: a key's slot is the CRC16 (XMODEM) of its hash
/// tag (the part between the first `{` and the next `}`) modulo this.
pub const CLUSTER_SLOTS: u16 = 16_384;

/// Most partitions a queue can be split into ([`Keys::for_partition`]).
pub const MAX_PARTITIONS: u16 = 256;

/// Which of a queue's partitions, out of how many. Every partition is a complete queue (its
/// streams, schedules, dead letters, worker registry, task hashes and idempotency keys); a
/// task lives in one, named by its id ([`TaskId::partition`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Partition {
    /// 0-based.
    pub index: u16,
    /// How many partitions the queue has (1 ..= [`MAX_PARTITIONS`]).
    pub count: u16,
}

impl Partition {
    /// The only partition of an unpartitioned queue.
    pub const SOLE: Self = Self { index: 0, count: 1 };
}

/// Key names under one prefix (default `agent`), for one partition of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    /// What every key starts with: the prefix, and for a hash-tagged partition `:{tag}`.
    base: String,
    partition: Partition,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new("agent")
    }
}

impl Keys {
    /// Keys of an unpartitioned queue under `prefix`; `agent:task:{id}`, `agent:stream:p1`, ...
    pub fn new(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        Self {
            base: prefix.clone(),
            prefix,
            partition: Partition::SOLE,
        }
    }

    /// Keys of one partition of a queue split into `partition.count`. With one partition these
    /// are [`Keys::new`]'s, unchanged; with more, every key of partition `i` carries the same
    /// hash tag after the prefix (`agent:{p1.7}:stream:p1`), so each partition lives in one
    /// Redis Cluster hash slot and its scripts touch that slot only. The tag is chosen so that
    /// partition `i` of `n` hashes into the `i`-th of `n` equal ranges of the slots: split
    /// evenly over a cluster whose primaries own equal slot ranges in order (what
    /// `redis-cli --cluster create` assigns), `n` partitions over `n` primaries put one on each.
    pub fn for_partition(prefix: impl Into<String>, partition: Partition) -> Self {
        if partition.count <= 1 {
            return Self::new(prefix);
        }
        Self::hash_tagged(prefix, partition)
    }

    /// [`Keys::for_partition`], hash-tagged even for a sole partition (on a Redis Cluster,
    /// where a script's keys must share a slot).
    pub fn hash_tagged(prefix: impl Into<String>, partition: Partition) -> Self {
        let prefix = prefix.into();
        Self {
            base: format!("{prefix}:{{{}}}", partition_tag(partition)),
            prefix,
            partition,
        }
    }

    /// The prefix all keys share.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Which partition these keys name.
    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// Hash holding one task record.
    pub fn task(&self, task_id: &TaskId) -> String {
        format!("{}{}", self.task_prefix(), task_id)
    }

    /// The part of [`Keys::task`] before the id; scripts append ids to it.
    pub fn task_prefix(&self) -> String {
        format!("{}:task:", self.base)
    }

    /// Stream of queued task ids for one priority level.
    pub fn stream(&self, priority: Priority) -> String {
        format!("{}:stream:p{}", self.base, priority.get())
    }

    /// All priority streams, most urgent (priority 1) first.
    pub fn streams(&self) -> Vec<String> {
        Priority::all().map(|p| self.stream(p)).collect()
    }

    /// String mapping one caller's `Idempotency-Key` to the task it created and the digest of
    /// the request that created it: `{prefix}:idempotency:{scope}:{key}`.
    pub fn idempotency(&self, scope: &IdempotencyScope, idempotency_key: &str) -> String {
        format!("{}:idempotency:{}:{}", self.base, scope.0, idempotency_key)
    }

    /// Where an `Idempotency-Key` was stored before keys were scoped to their caller
    /// (`{prefix}:idem:{key}`, the task id alone). Only read, and only for
    /// [`IdempotencyScope::open`], whose one caller wrote them: these records expire
    /// `IDEMPOTENCY_TTL` after the upgrade, and then this lookup can go.
    pub fn legacy_idempotency(&self, idempotency_key: &str) -> String {
        format!("{}:idem:{}", self.base, idempotency_key)
    }

    /// Sorted set of task ids waiting for a retry, scored by due time (ms since the epoch).
    pub fn retry_schedule(&self) -> String {
        format!("{}:retry", self.base)
    }

    /// Sorted set of scheduled task ids (`delay_ms`, `run_at`), scored by due time (ms since the
    /// epoch). Apart from the retry schedule, so a worker that predates scheduling never sees
    /// (and never drops) them.
    pub fn scheduled(&self) -> String {
        format!("{}:scheduled", self.base)
    }

    /// Hash of the retry clock: `skew` (ms added to Redis's `TIME` for the retry schedule, the sum
    /// of the backward jumps of Redis's clock) and `seen` (the latest retry-clock time a
    /// promotion saw, kept to within a second). See `scripts/promote.lua`.
    pub fn clock(&self) -> String {
        format!("{}:clock", self.base)
    }

    /// Stream of dead-lettered tasks (id and last error).
    pub fn dead_letter(&self) -> String {
        format!("{}:dead", self.base)
    }

    /// Stream indexing the finished tasks of one final status (`succeeded`, `cancelled`; dead
    /// ones are in [`Keys::dead_letter`]) for listing, newest last: field `t` holds the ids of
    /// one state change (a finish batch), comma-separated. Trimmed to the task retention.
    pub fn finished(&self, status: Status) -> String {
        format!("{}:finished:{}", self.base, status.as_str())
    }

    /// Hash of cumulative counts of finished tasks per final status (`succeeded`, `cancelled`),
    /// since the key was created: throughput is their rate of change.
    pub fn finished_counts(&self) -> String {
        format!("{}:finished:counts", self.base)
    }

    /// Set of the paused priority levels (`1`..`10`): their queued tasks are not started.
    pub fn paused(&self) -> String {
        format!("{}:paused", self.base)
    }

    /// Sorted set of worker ids scored by their last heartbeat (ms since the epoch).
    pub fn workers(&self) -> String {
        format!("{}:workers", self.base)
    }

    /// Hash of the orphan sweep's cursor per priority stream (field `1`..`10`: the entry id the
    /// next `XAUTOCLAIM` starts at), shared by every worker so the sweep covers each stream's
    /// whole pending list in turn.
    pub fn sweep_cursor(&self) -> String {
        format!("{}:sweep", self.base)
    }

    /// The backpressure check's count of waiting tasks (a string, expiring after
    /// [`crate::queue::WAITING_COUNT_TTL_MS`]): the sum of the streams' lengths when it was
    /// taken, plus every enqueue since, so `MAX_QUEUED` costs ten `XLEN`s only once per period.
    pub fn waiting_count(&self) -> String {
        format!("{}:waiting", self.base)
    }
}

/// The hash slot of a key in a Redis Cluster.
pub fn cluster_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % CLUSTER_SLOTS
}

/// The hash tag of a partition: `p{index}.{k}` for the first `k` whose slot falls in the
/// partition's share of the slots (found within a few thousand tries even for
/// [`MAX_PARTITIONS`]; the same on every process, so every service agrees on it).
fn partition_tag(partition: Partition) -> String {
    let count = u32::from(partition.count.clamp(1, MAX_PARTITIONS));
    let index = u32::from(partition.index) % count;
    let slots = u32::from(CLUSTER_SLOTS);
    let range = (index * slots / count)..((index + 1) * slots / count);
    (0u32..)
        .map(|k| format!("p{index}.{k}"))
        .find(|tag| range.contains(&u32::from(cluster_slot(&format!("{{{tag}}}")))))
        .expect("every range of 16 slots or more is hit")
}

/// Whose `Idempotency-Key`s: the same key sent by two callers names two tasks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyScope(String);

impl IdempotencyScope {
    /// The one caller of a system without authentication.
    pub fn open() -> Self {
        Self("open".to_owned())
    }

    /// The caller that presents this (validated) bearer token: `t-` and the first 16 hex digits
    /// of the token's SHA-256. Stable across restarts and replicas, and not the token, which
    /// must not reach Redis.
    pub fn for_token(token: &[u8]) -> Self {
        let digest = Sha256::digest(token);
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("t-{hex}"))
    }

    /// Whether this is [`IdempotencyScope::open`].
    pub fn is_open(&self) -> bool {
        self.0 == "open"
    }

    /// The scope as it appears in key names.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_ordered_most_urgent_first() {
        let keys = Keys::new("t");
        let streams = keys.streams();
        assert_eq!(streams.len(), 10);
        assert_eq!(streams[0], "t:stream:p1");
        assert_eq!(streams[9], "t:stream:p10");
    }

    #[test]
    fn every_key_carries_the_prefix() {
        let keys = Keys::new("run42");
        let id = TaskId::new();
        for key in [
            keys.task(&id),
            keys.idempotency(&IdempotencyScope::open(), "k"),
            keys.legacy_idempotency("k"),
            keys.retry_schedule(),
            keys.dead_letter(),
            keys.workers(),
            keys.sweep_cursor(),
            keys.waiting_count(),
            keys.scheduled(),
            keys.finished(Status::Succeeded),
            keys.paused(),
            keys.finished_counts(),
        ] {
            assert!(key.starts_with("run42:"), "{key} lacks the prefix");
        }
    }

    #[test]
    fn item_5_idempotency_keys_are_scoped_to_the_caller() {
        let keys = Keys::new("agent");
        let a = IdempotencyScope::for_token(b"tenant-a-0123456789abcdef");
        let b = IdempotencyScope::for_token(b"tenant-b-0123456789abcdef");

        assert_eq!(a, IdempotencyScope::for_token(b"tenant-a-0123456789abcdef"));
        assert_ne!(keys.idempotency(&a, "1"), keys.idempotency(&b, "1"));
        assert_ne!(
            keys.idempotency(&a, "1"),
            keys.idempotency(&IdempotencyScope::open(), "1")
        );
        assert!(!a.is_open() && IdempotencyScope::open().is_open());
        let key = keys.idempotency(&a, "1");
        assert!(
            key.starts_with("agent:idempotency:t-") && key.ends_with(":1") && key.len() == 38,
            "{key}"
        );
        assert!(
            !key.contains("tenant"),
            "the token must not reach Redis: {key}"
        );
        assert_ne!(
            keys.legacy_idempotency("open:1"),
            keys.idempotency(&IdempotencyScope::open(), "1")
        );
    }
}
