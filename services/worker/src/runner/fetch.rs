//! The fetch loop: claims tasks (most urgent first) while execution slots are free, otherwise
//! blocks on the priority streams over a dedicated connection, and starts one execution per
//! claimed task. It is the only place that starts tasks; entries taken over from dead workers
//! or recovered after a lost reply wait in [`Shared`]'s queue until it starts them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use taskq::Priority;
use taskq::queue::{Claim, ClaimedTask, Delivery, Finish, QueueError};
use taskq::support::RedisConn;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Backoff, Runner, Shared, entry_key, lock, record_redis_error};

impl Runner {
    pub(super) async fn handle_loop_error(
        &self,
        operation: &'static str,
        err: QueueError,
        backoff: &mut Backoff,
    ) {
        record_redis_error(operation, &err);
        if err.is_missing_group() {
            // Redis restarted without its data: recreate the groups and carry on.
            let mut conn = self.conn.clone();
            match self.queue.ensure_groups(&mut conn).await {
                Ok(()) => {
                    tracing::warn!("consumer group was missing and has been recreated");
                    return;
                }
                Err(err) => record_redis_error("ensure_groups", &err),
            }
        }
        metrics::counter!("agent_redis_reconnects_total").increment(1);
        tokio::time::sleep(backoff.next_delay()).await;
    }

    pub(super) async fn fetch_loop(
        self: Arc<Self>,
        shared: Arc<Shared>,
        slots: Arc<Semaphore>,
        finish_tx: mpsc::UnboundedSender<Finish>,
        shutdown: &CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut conn = self.conn.clone();
        let mut blocking_conn = self.blocking_conn.clone();
        // At start (a restarted worker keeps its WORKER_ID) and after any failed call, Redis may
        // have delivered entries whose reply never arrived; look for them before claiming more.
        shared.flag_own_pending();
        while !shutdown.is_cancelled() {
            if shared.take_own_pending_flag()
                && let Err(err) = self.recover_own_pending(&mut conn, &shared).await
            {
                shared.flag_own_pending();
                self.handle_loop_error("own_pending", err, &mut backoff)
                    .await;
                continue;
            }
            // One partition claims at a time (see `Runner::claim_turn`), from counting the free
            // slots until its tasks hold theirs; the partitions take turns, first come first
            // served. Only the turn's holder waits for a slot: a permit taken and given back at
            // once then stays free for it (with several waiters it would pass from one to the
            // next, never seen free).
            let turn = tokio::select! {
                turn = self.claim_turn.lock() => turn,
                () = shutdown.cancelled() => break,
            };
            if slots.available_permits() == 0 {
                tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => drop(permit),
                    () = shutdown.cancelled() => break,
                }
            }
            let free = slots.available_permits();
            let free = coalesce_free_slots(&slots, self.settings.concurrency, free).await;
            // Every entry waiting here competes with fresh ones for the free slots, strictly
            // most urgent first: a taken-over urgent task starts before less urgent new work, and
            // a taken-over less urgent one waits behind more urgent new work.
            let delivered: Vec<Delivery> = lock(&shared.reclaimed).drain(..).collect();
            let (claimed, held, paused) = match self
                .queue
                .claim_slots(&mut conn, &self.worker_id, free, &delivered)
                .await
            {
                Ok(Claim {
                    started,
                    deferred,
                    paused,
                }) => {
                    backoff.reset();
                    let held = deferred.len();
                    let mut reclaimed = lock(&shared.reclaimed);
                    for delivery in deferred.into_iter().rev() {
                        reclaimed.push_front(delivery);
                    }
                    (started, held, paused)
                }
                Err(err) => {
                    drop(turn);
                    {
                        let mut reclaimed = lock(&shared.reclaimed);
                        for delivery in delivered.into_iter().rev() {
                            reclaimed.push_front(delivery);
                        }
                    }
                    shared.flag_own_pending();
                    self.handle_loop_error("claim", err, &mut backoff).await;
                    continue;
                }
            };
            // Claim again at once after starting something, or when a delivered entry was
            // started or dropped; not when every delivered entry was held back (a paused level):
            // that would loop without waiting.
            if !claimed.is_empty() || held < delivered.len() {
                self.spawn_executions(claimed, &shared, &slots, &finish_tx)
                    .await;
                continue;
            }
            drop(turn);
            // Nothing to start: no fresh entry, and the delivered ones (if any) belong to paused
            // levels (held in `reclaimed` until resumed). Block on the streams
            // of the levels not paused, so a paused level's entries neither wake this loop nor
            // get delivered; a resume takes effect within one `block`. Never cancel this wait
            // midway, or entries Redis already delivered to this consumer would be dropped.
            // (The paused levels are those the claim just saw: no extra round trip.)
            if paused.len() == Priority::all().count() {
                tokio::select! {
                    () = tokio::time::sleep(self.settings.block) => {}
                    () = shutdown.cancelled() => break,
                }
                continue;
            }
            let waited = self
                .queue
                .wait_for_entries_except(
                    &mut blocking_conn,
                    &self.worker_id,
                    free,
                    self.settings.block,
                    &paused,
                )
                .await;
            match waited {
                // COUNT applies per stream: keep what does not fit for later, most urgent first.
                Ok(deliveries) => {
                    shared.queue_for_start(deliveries);
                }
                Err(err) => {
                    shared.flag_own_pending();
                    self.handle_loop_error("wait", err, &mut backoff).await;
                }
            }
        }
    }

    /// Queues for starting every entry pending for this worker that it neither executes nor has
    /// queued already.
    pub(super) async fn recover_own_pending(
        &self,
        conn: &mut RedisConn,
        shared: &Shared,
    ) -> Result<(), QueueError> {
        let pending = self.queue.own_pending(conn, &self.worker_id, 1000).await?;
        let n_recovered = shared.queue_for_start(pending);
        if n_recovered > 0 {
            tracing::info!(
                n_entries = n_recovered,
                "recovered entries delivered to this worker by a lost reply"
            );
        }
        Ok(())
    }

    pub(super) async fn spawn_executions(
        self: &Arc<Self>,
        claimed: Vec<ClaimedTask>,
        shared: &Arc<Shared>,
        slots: &Arc<Semaphore>,
        finish_tx: &mpsc::UnboundedSender<Finish>,
    ) {
        for task in claimed {
            let Ok(permit) = Arc::clone(slots).acquire_owned().await else {
                return; // the semaphore is never closed
            };
            lock(&shared.in_flight).insert(
                entry_key(&task.delivery),
                (task.delivery.clone(), Instant::now()),
            );
            tokio::spawn(Arc::clone(self).execute(
                task,
                permit,
                finish_tx.clone(),
                shared.interrupt.clone(),
            ));
        }
    }
}

/// Longest a claim waits for more slots to free up ([`coalesce_free_slots`]).
pub(super) const CLAIM_LINGER: Duration = Duration::from_millis(1);

/// Free slots worth a claim without waiting for more: past this, a bigger batch saves little
/// (the fixed cost of a claim is shared by this many tasks already).
pub(super) const CLAIM_BATCH: usize = 64;

/// Lets executions that are finishing right now release their slots before a claim, so one claim
/// starts many tasks instead of one per freed slot: with fewer than `concurrency` (at most
/// [`CLAIM_BATCH`]) slots free, waits until that many are, or [`CLAIM_LINGER`] at most. Short
/// tasks are then claimed in batches, each claim's round trip and fixed cost (about 40 µs of
/// Redis time: the script call, its clock and pause reads, one read per priority level up to the
/// first with entries) shared by the batch; long ones keep a freed slot idle for the linger at
/// most (1 ms, or up to the timer's next tick), and an idle worker (every slot free) never waits.
pub(super) async fn coalesce_free_slots(
    slots: &Semaphore,
    concurrency: usize,
    free: usize,
) -> usize {
    let batch = concurrency.min(CLAIM_BATCH);
    if free >= batch {
        return free;
    }
    let batch = u32::try_from(batch).unwrap_or(u32::MAX);
    // The permits are given back at once: the claim takes what is free when it runs.
    let _ = tokio::time::timeout(CLAIM_LINGER, slots.acquire_many(batch)).await;
    slots.available_permits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_claim_waits_for_slots_that_free_up_at_once() {
        let slots = Arc::new(Semaphore::new(16));
        let held = Arc::clone(&slots).acquire_many_owned(10).await.unwrap();
        // The executions holding these end right away (as no-op tasks do).
        tokio::spawn(async move { drop(held) });
        assert_eq!(coalesce_free_slots(&slots, 16, 6).await, 16);
    }

    #[tokio::test]
    async fn a_claim_waits_at_most_the_linger_for_slots_held_longer() {
        let slots = Arc::new(Semaphore::new(16));
        let _held = Arc::clone(&slots).acquire_many_owned(10).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(coalesce_free_slots(&slots, 16, 6).await, 6);
        // bounded by the linger (plus the timer's tick), not by the held slots
        assert!(started.elapsed() < Duration::from_secs(1));
        // and the permits it waited for are all given back
        assert_eq!(slots.available_permits(), 6);
    }

    #[tokio::test]
    async fn an_idle_worker_or_a_full_batch_claims_at_once() {
        let slots = Semaphore::new(1000);
        assert_eq!(coalesce_free_slots(&slots, 1000, 1000).await, 1000);
        assert_eq!(
            coalesce_free_slots(&slots, 1000, CLAIM_BATCH).await,
            CLAIM_BATCH
        );
    }
}
