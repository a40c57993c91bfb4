//! A queue split into partitions (`QUEUE_PARTITIONS`), each a complete [`Queue`] under its own
//! hash tag ([`Keys::for_partition`]), so a partition lives in one Redis Cluster hash slot and
//! the partitions spread over the cluster's primaries.
//!
//! A new task goes to the partition of its `Idempotency-Key` (a hash of the caller's scope and
//! the key, so a replay finds the first request's record), or else to the next partition in
//! turn. Its id carries the partition ([`TaskId::new_in_partition`]), so reading, cancelling
//! or retrying it goes straight to that partition. Listings go through the partitions in turn
//! (a cursor names its partition), statistics add them up, and a pause applies to every
//! partition. Strict priority holds within a partition: a worker serves the partitions in turn,
//! so an urgent task of one partition may start after a less urgent one of another.
//!
//! With one partition (the default) this is exactly the unpartitioned queue: same keys, same
//! ids, same cursors.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::ConnectionLike;
use sha2::{Digest, Sha256};

use crate::keys::{IdempotencyScope, Keys, MAX_PARTITIONS, Partition};
use crate::model::{Priority, Status, TaskId};
use crate::queue::{
    DeadLetter, InvalidCursor, ListCursor, ListQuery, Queue, QueueConfig, QueueError, Stats,
    TaskPage,
};

/// Every partition of one queue. Cheap to clone.
#[derive(Clone)]
pub struct Partitions {
    queues: Arc<[Queue]>,
    /// The next partition a task without an `Idempotency-Key` goes to.
    next: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Partitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partitions")
            .field("count", &self.queues.len())
            .field("config", self.queues[0].config())
            .finish()
    }
}

impl Partitions {
    /// `count` partitions (clamped to 1 ..= [`MAX_PARTITIONS`]) of the queue `config` describes,
    /// under the prefix of `config.keys`.
    pub fn new(config: QueueConfig, count: u16) -> Self {
        Self::build(config, count, Keys::for_partition)
    }

    /// [`Partitions::new`] with hash-tagged keys even for a sole partition: the layout on a
    /// Redis Cluster.
    pub fn hash_tagged(config: QueueConfig, count: u16) -> Self {
        Self::build(config, count, Keys::hash_tagged)
    }

    fn build(config: QueueConfig, count: u16, keys: fn(String, Partition) -> Keys) -> Self {
        let count = count.clamp(1, MAX_PARTITIONS);
        let prefix = config.keys.prefix().to_owned();
        let queues = (0..count)
            .map(|index| {
                Queue::new(QueueConfig {
                    keys: keys(prefix.clone(), Partition { index, count }),
                    ..config.clone()
                })
            })
            .collect();
        Self {
            queues,
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Every partition with [`Queue::with_replica_acks`].
    pub fn with_replica_acks(self, count: u32, timeout: Duration) -> Self {
        Self {
            queues: self
                .queues
                .iter()
                .map(|queue| queue.clone().with_replica_acks(count, timeout))
                .collect(),
            next: self.next,
        }
    }

    /// How many partitions.
    pub fn count(&self) -> u16 {
        u16::try_from(self.queues.len()).unwrap_or(MAX_PARTITIONS)
    }

    /// Every partition, in index order.
    pub fn all(&self) -> &[Queue] {
        &self.queues
    }

    /// The partition holding `task_id`.
    pub fn of_task(&self, task_id: &TaskId) -> &Queue {
        &self.queues[usize::from(task_id.partition(self.count()))]
    }

    /// The partition a new task goes to: the one of its `Idempotency-Key` when it has one,
    /// otherwise the next in turn.
    pub fn for_new_task(&self, scope: &IdempotencyScope, idempotency_key: Option<&str>) -> &Queue {
        if self.queues.len() == 1 {
            return &self.queues[0];
        }
        let index = match idempotency_key {
            Some(key) => {
                let digest = Sha256::new()
                    .chain_update(scope.as_str())
                    .chain_update([0])
                    .chain_update(key)
                    .finalize();
                let mut head = [0u8; 8];
                head.copy_from_slice(&digest[..8]);
                usize::try_from(u64::from_be_bytes(head) % self.queues.len() as u64)
                    .unwrap_or_default()
            }
            None => self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len(),
        };
        &self.queues[index]
    }

    /// Parses a cursor of a `status` listing of these partitions.
    pub fn parse_cursor(&self, status: Status, raw: &str) -> Result<ListCursor, InvalidCursor> {
        let cursor = ListCursor::parse(status, raw)?;
        if cursor.partition() >= self.count() {
            return Err(InvalidCursor { status });
        }
        Ok(cursor)
    }

    /// One page of a listing: from the cursor's partition, and when that partition's listing
    /// is complete, a cursor to the start of the next one (a page never spans two partitions,
    /// so it may hold fewer than `limit` tasks and still have a next cursor).
    pub async fn list<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        query: &ListQuery,
    ) -> Result<TaskPage, QueueError> {
        let index = query.cursor.as_ref().map_or(0, ListCursor::partition);
        let queue = self
            .queues
            .get(usize::from(index))
            .ok_or_else(|| QueueError::Protocol(format!("no partition {index}")))?;
        let mut page = queue.list(conn, query).await?;
        if page.next_cursor.is_none() && index + 1 < self.count() {
            page.next_cursor = Some(ListCursor::start_of(index + 1));
        }
        Ok(page)
    }

    /// Statistics of the whole queue: counts added up over the partitions, the oldest age the
    /// largest, a level paused when it is paused in any partition, and the live workers those of
    /// the partition with the most (every worker serves every partition). One round trip per
    /// partition.
    pub async fn stats<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        dead_after: Duration,
    ) -> Result<Stats, QueueError> {
        let mut total: Option<Stats> = None;
        for queue in self.queues.iter() {
            let stats = queue.stats(conn, dead_after).await?;
            total = Some(match total {
                None => stats,
                Some(sum) => add_stats(sum, &stats),
            });
        }
        total.ok_or_else(|| QueueError::Protocol("no partition".to_owned()))
    }

    /// The newest `limit` dead letters over every partition, newest first.
    pub async fn dead_letters<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let mut all = Vec::new();
        for queue in self.queues.iter() {
            all.extend(queue.dead_letters(conn, limit).await?);
        }
        if self.queues.len() > 1 {
            all.sort_by_key(|letter| std::cmp::Reverse(letter.at_ms));
            all.truncate(limit);
        }
        Ok(all)
    }

    /// Pauses or resumes a priority level in every partition.
    pub async fn set_paused<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        priority: Priority,
        paused: bool,
    ) -> Result<(), QueueError> {
        for queue in self.queues.iter() {
            queue.set_paused(conn, priority, paused).await?;
        }
        Ok(())
    }
}

fn add_stats(mut sum: Stats, other: &Stats) -> Stats {
    for i in 0..10 {
        sum.queued[i] += other.queued[i];
        sum.in_flight[i] += other.in_flight[i];
        sum.oldest_queued_age_ms[i] =
            sum.oldest_queued_age_ms[i].max(other.oldest_queued_age_ms[i]);
        sum.paused[i] |= other.paused[i];
    }
    sum.retry_scheduled += other.retry_scheduled;
    sum.dead_lettered += other.dead_lettered;
    sum.live_workers = sum.live_workers.max(other.live_workers);
    sum.scheduled += other.scheduled;
    sum.succeeded_total += other.succeeded_total;
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::cluster_slot;

    fn partitions(count: u16) -> Partitions {
        Partitions::new(QueueConfig::default(), count)
    }

    #[test]
    fn one_partition_is_the_unpartitioned_queue() {
        let one = partitions(1);
        assert_eq!(one.count(), 1);
        assert_eq!(one.all()[0].keys(), &Keys::new("agent"));
        let id = TaskId::new();
        assert_eq!(id.partition(1), 0);
        assert!(std::ptr::eq(one.of_task(&id), &one.all()[0]));
    }

    #[test]
    fn every_key_of_a_partition_is_in_one_slot_and_partitions_spread_over_the_slots() {
        for count in [2u16, 3, 6, 64, MAX_PARTITIONS] {
            let all = partitions(count);
            for (index, queue) in all.all().iter().enumerate() {
                let keys = queue.keys();
                let id = TaskId::new_in_partition(index as u16);
                let mut names = keys.streams();
                names.extend([
                    keys.task(&id),
                    keys.idempotency(&IdempotencyScope::open(), "k"),
                    keys.legacy_idempotency("k"),
                    keys.retry_schedule(),
                    keys.scheduled(),
                    keys.clock(),
                    keys.dead_letter(),
                    keys.finished(Status::Succeeded),
                    keys.finished(Status::Cancelled),
                    keys.finished_counts(),
                    keys.paused(),
                    keys.workers(),
                    keys.sweep_cursor(),
                    keys.waiting_count(),
                ]);
                let slot = cluster_slot(&names[0]);
                for name in &names {
                    assert!(name.starts_with("agent:{"), "{name}");
                    assert_eq!(cluster_slot(name), slot, "{name} vs {}", names[0]);
                }
                // partition i of n hashes into the i-th of n equal slot ranges
                let per = 16_384 / u32::from(count);
                assert_eq!(
                    u32::from(slot) * u32::from(count) / 16_384,
                    index as u32,
                    "partition {index} of {count} in slot {slot} (ranges of {per})"
                );
            }
        }
    }

    #[test]
    fn a_task_id_routes_to_its_partition() {
        let all = partitions(5);
        for index in 0..5u16 {
            let id = TaskId::new_in_partition(index);
            assert_eq!(id.partition(5), index);
            assert_eq!(all.of_task(&id).keys().partition().index, index);
            // still a UUIDv7, parsed back the same
            assert_eq!(TaskId::parse(&id.to_string()).unwrap(), id);
        }
    }

    #[test]
    fn replays_land_on_the_same_partition_and_new_tasks_spread_evenly() {
        let all = partitions(4);
        let scope = IdempotencyScope::open();
        let mut seen = [0u32; 4];
        for n in 0..400 {
            let key = format!("key-{n}");
            let first = all.for_new_task(&scope, Some(&key)).keys().partition();
            let again = all.for_new_task(&scope, Some(&key)).keys().partition();
            assert_eq!(first, again);
            seen[usize::from(first.index)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "keys spread: {seen:?}");
        let spread: Vec<u16> = (0..8)
            .map(|_| all.for_new_task(&scope, None).keys().partition().index)
            .collect();
        assert_eq!(spread, [0, 1, 2, 3, 0, 1, 2, 3]);
    }

    #[test]
    fn a_cursor_names_a_partition_that_exists() {
        let all = partitions(3);
        assert!(all.parse_cursor(Status::Queued, "2~").is_ok());
        assert!(all.parse_cursor(Status::Queued, "2~3/1-0").is_ok());
        assert!(all.parse_cursor(Status::Queued, "3~").is_err());
        assert!(partitions(1).parse_cursor(Status::Queued, "1~").is_err());
    }
}
