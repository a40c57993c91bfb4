//! The finisher: records outcomes in pipelined batches (ack, retry or dead-letter), retrying
//! while Redis is away so no result is dropped, and only then forgets the entries.
//!
//! One outcome that can never be recorded must not hold the others: when a batch fails, its
//! outcomes are tried one by one (when Redis answers at all), and later outcomes join the next
//! try. An outcome that keeps failing while Redis answers (a deterministic refusal, not an outage) is replaced by a short
//! `dead` outcome naming the error, and if even that cannot be recorded it is left pending in
//! Redis, to be executed again after its lease. A refusal that means its node or slot is away
//! (`CLUSTERDOWN`, `MOVED`, `TRYAGAIN`, `LOADING`, ...: [`QueueError::is_unavailable`]) is no
//! strike: a Redis Cluster shard failing over refuses while the other nodes answer.

use std::sync::Arc;
use std::time::Duration;

use taskq::queue::{ExecutionOutcome, Finish, FinishResult, QueueError};
use taskq::support::RedisConn;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Backoff, Runner, Shared, entry_key, lock, record_redis_error};

/// Failed tries of one outcome, while Redis answers, before it is replaced or given up.
const STRIKES: u32 = 3;

/// How an outcome not recorded yet has fared (kept beside the batch, which
/// [`taskq::queue::Queue::finish_many`] takes as it is).
#[derive(Clone, Copy, Default)]
struct Tries {
    /// Failed tries while Redis answered.
    strikes: u32,
    /// Whether the outcome is already the replacement of one that could not be recorded.
    replaced: bool,
}

impl Runner {
    pub(super) async fn finisher(
        self: Arc<Self>,
        mut finish_rx: mpsc::UnboundedReceiver<Finish>,
        shared: Arc<Shared>,
        give_up: CancellationToken,
    ) {
        const MAX_BATCH: usize = 512;
        let mut conn = self.conn.clone();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut batch: Vec<Finish> = Vec::with_capacity(MAX_BATCH);
        let mut tries: Vec<Tries> = Vec::with_capacity(MAX_BATCH);
        loop {
            if batch.is_empty() {
                let n = tokio::select! {
                    n = finish_rx.recv_many(&mut batch, MAX_BATCH) => n,
                    () = give_up.cancelled() => 0,
                };
                if n == 0 {
                    return;
                }
            } else {
                // Outcomes that failed wait for the next try; the outcomes that came meanwhile
                // join it, so they are never held behind them.
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = give_up.cancelled() => {
                        // Left pending in Redis: another worker executes these again.
                        tracing::warn!(n_outcomes = batch.len(), "shutting down with unrecorded outcomes");
                        return;
                    }
                }
                while batch.len() < MAX_BATCH
                    && let Ok(finish) = finish_rx.try_recv()
                {
                    batch.push(finish);
                }
            }
            tries.resize(batch.len(), Tries::default());
            // The executions' `task_executed` lines go out before their outcomes are recorded.
            taskq::log_buffer::flush();

            match self
                .queue
                .finish_many(&mut conn, &self.worker_id, &batch)
                .await
            {
                Ok(results) => {
                    backoff.reset();
                    self.forget(&shared, &batch, &results);
                    batch.clear();
                    tries.clear();
                }
                Err(err) => {
                    record_redis_error("finish", &err);
                    self.one_by_one(&mut conn, &shared, &mut batch, &mut tries)
                        .await;
                    if batch.is_empty() {
                        backoff.reset();
                    }
                }
            }
        }
    }

    /// Tries each outcome of a failed batch alone, if Redis answers at all (in an outage the batch
    /// waits whole: one call per outcome would each wait for the timeout); keeps those that fail,
    /// with a strike each (Redis answers, so the failure is the outcome's).
    async fn one_by_one(
        &self,
        conn: &mut RedisConn,
        shared: &Shared,
        batch: &mut Vec<Finish>,
        tries: &mut Vec<Tries>,
    ) {
        let answers = redis::cmd("PING")
            .query_async::<String>(&mut *conn)
            .await
            .is_ok();
        if !answers {
            return;
        }
        let mut failed: Vec<(Finish, Tries, QueueError)> = Vec::new();
        for (finish, tried) in batch.drain(..).zip(tries.drain(..)) {
            let one = std::slice::from_ref(&finish);
            match self.queue.finish_many(conn, &self.worker_id, one).await {
                Ok(results) => self.forget(shared, one, &results),
                Err(err) => failed.push((finish, tried, err)),
            }
        }
        for (mut finish, mut tried, err) in failed {
            // Refused for an outage of its own node or slot (a Redis Cluster shard without a
            // primary for a moment answers CLUSTERDOWN, MOVED or TRYAGAIN while the other nodes
            // answer PING): not the outcome's fault, so no strike; it waits like a whole batch
            // in an outage.
            if !err.is_unavailable() {
                tried.strikes += 1;
            }
            if tried.strikes < STRIKES {
                batch.push(finish);
                tries.push(tried);
                continue;
            }
            let task = &finish.task;
            metrics::counter!("agent_finish_failures_total").increment(1);
            if tried.replaced {
                // Not even a short failure can be recorded: leave the entry pending; once its
                // lease runs out it is taken over and executed again (at least once).
                tracing::error!(task_id = %task.delivery.task_id, attempt = task.attempt, error = %err,
                    "giving up recording an outcome; the task will run again after its lease");
                lock(&shared.in_flight).remove(&entry_key(&task.delivery));
                continue;
            }
            tracing::error!(task_id = %task.delivery.task_id, attempt = task.attempt, error = %err,
                "an outcome cannot be recorded; recording it as a failure");
            let error = format!(
                "the {} outcome could not be recorded: {err}",
                finish.outcome.kind().as_str()
            );
            finish.outcome = ExecutionOutcome::Dead { error }.bounded();
            batch.push(finish);
            tries.push(Tries {
                strikes: 0,
                replaced: true,
            });
        }
    }

    /// Forgets recorded outcomes' entries (no lease to renew any more).
    fn forget(&self, shared: &Shared, finishes: &[Finish], results: &[FinishResult]) {
        for (finish, result) in finishes.iter().zip(results) {
            if *result != FinishResult::Recorded {
                tracing::debug!(task_id = %finish.task.delivery.task_id, ?result, "outcome not recorded as owner");
            }
        }
        let mut in_flight = lock(&shared.in_flight);
        for finish in finishes {
            in_flight.remove(&entry_key(&finish.task.delivery));
        }
    }
}
