//! The claim → execute → finish loop.
//!
//! Three kinds of task cooperate:
//! - the **fetch loop** claims tasks (most urgent first) while execution slots are free, and
//!   otherwise blocks on the priority streams over a dedicated connection;
//! - one **execution** per claimed task runs the handler, logs the `task_executed` line and passes
//!   the outcome on;
//! - the **finisher** records outcomes in pipelined batches (ack, retry or dead-letter), retrying
//!   while Redis is away so no result is dropped;
//! - the **maintenance** loop heartbeats, renews the lease of long tasks, promotes due retries and
//!   takes over the entries of workers whose heartbeat stopped.
//!
//! Shutdown: stop claiming, let executions finish within the grace period, flush the finisher,
//! then deregister (or mark this worker dead at once if something was left, so another worker
//! picks it up immediately).

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::FutureExt;
use redis::aio::ConnectionManager;
use taskq::Priority;
use taskq::queue::{
    ClaimedTask, Delivery, ExecutionOutcome, Finish, FinishResult, Queue, QueueError,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::handler::{HandlerError, TaskHandler, TaskInput};

/// Timing and sizing of the loop.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Tasks executed at once.
    pub concurrency: usize,
    /// First retry delay; doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Heartbeat and maintenance period.
    pub heartbeat: Duration,
    /// Heartbeat age after which a worker is dead.
    pub dead_after: Duration,
    /// Idle time after which an entry with no live owner is reclaimed.
    pub lease: Duration,
    /// How long in-flight work may finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// Longest single wait on the streams when nothing is queued.
    pub block: Duration,
}

/// Everything the runner needs.
pub struct Runner {
    /// The queue protocol.
    pub queue: Queue,
    /// Multiplexed connection for claims, finishes and maintenance.
    pub conn: ConnectionManager,
    /// Dedicated connection for blocking reads (a blocked command holds its connection).
    pub blocking_conn: ConnectionManager,
    /// Executes tasks.
    pub handler: Arc<dyn TaskHandler>,
    /// This worker's consumer name.
    pub worker_id: Arc<str>,
    /// Timing and sizing.
    pub settings: RunnerSettings,
}

/// State shared by the loop's tasks. Plain mutexes: held for a map operation, never across an
/// await.
#[derive(Default)]
struct Shared {
    /// Entries this worker executes or has not yet recorded, by [`entry_key`], with their start
    /// time; the maintenance loop renews their lease.
    in_flight: Mutex<HashMap<(Priority, String), (Delivery, Instant)>>,
    /// Entries pending for this worker but not started yet (taken over from dead workers,
    /// recovered after a lost reply, or delivered beyond the free slots), waiting for a slot.
    /// Only the fetch loop starts tasks.
    reclaimed: Mutex<VecDeque<Delivery>>,
    /// Set when a call that may have delivered entries failed: the fetch loop then looks for
    /// entries pending for this worker that it never heard of.
    check_own_pending: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Queues deliveries for starting, skipping those already executing or queued.
    fn queue_for_start(&self, deliveries: impl IntoIterator<Item = Delivery>) -> usize {
        let in_flight = lock(&self.in_flight);
        let mut reclaimed = lock(&self.reclaimed);
        let mut added = 0;
        for delivery in deliveries {
            let known =
                in_flight.contains_key(&entry_key(&delivery)) || reclaimed.contains(&delivery);
            if !known {
                reclaimed.push_back(delivery);
                added += 1;
            }
        }
        added
    }

    fn flag_own_pending(&self) {
        self.check_own_pending
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn take_own_pending_flag(&self) -> bool {
        self.check_own_pending
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Identifies a stream entry: entry ids are unique per stream only, and the ten streams often
/// hand out the same id in the same millisecond.
fn entry_key(delivery: &Delivery) -> (Priority, String) {
    (delivery.priority, delivery.entry_id.clone())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the maps inconsistent (single operations).
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Exponential backoff with a cap, for reconnecting.
struct Backoff {
    current: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            current: min,
            min,
            max,
        }
    }
    fn reset(&mut self) {
        self.current = self.min;
    }
    fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay
    }
}

/// The delay before retry number `attempt` (1-based): `base · 2^(attempt−1)`, capped, ±20 %
/// jitter so retries of a failed batch spread out.
pub fn retry_delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let delay = base.saturating_mul(1 << exponent).min(max);
    let jitter = 0.8 + 0.4 * rand::random::<f64>();
    delay.mul_f64(jitter).min(max)
}

/// Turns a handler result into what the queue records.
pub fn classify(
    result: Result<serde_json::Value, HandlerError>,
    task: &ClaimedTask,
    settings: &RunnerSettings,
) -> ExecutionOutcome {
    match result {
        Ok(value) => ExecutionOutcome::Succeeded(value),
        Err(HandlerError::Transient(error)) if task.attempt < task.max_attempts => {
            ExecutionOutcome::Retry {
                error,
                delay: retry_delay(task.attempt, settings.retry_base, settings.retry_max),
            }
        }
        Err(HandlerError::Transient(error)) => ExecutionOutcome::Dead {
            error: format!("gave up after {} attempts: {error}", task.attempt),
        },
        Err(HandlerError::Permanent(error)) => ExecutionOutcome::Dead { error },
    }
}

fn outcome_label(outcome: &ExecutionOutcome) -> &'static str {
    match outcome {
        ExecutionOutcome::Succeeded(_) => "succeeded",
        ExecutionOutcome::Retry { .. } => "retrying",
        ExecutionOutcome::Dead { .. } => "dead",
    }
}

fn record_redis_error(operation: &'static str, err: &QueueError) {
    metrics::counter!("agent_redis_errors_total", "operation" => operation).increment(1);
    if err.is_unavailable() {
        tracing::warn!(operation, error = %err, "redis unavailable");
    } else {
        tracing::error!(operation, error = %err, "redis operation failed");
    }
}

impl Runner {
    /// Runs until `shutdown` is cancelled, then drains within the grace period.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let this = Arc::new(self);
        let shared = Arc::new(Shared::default());
        let slots = Arc::new(Semaphore::new(this.settings.concurrency));
        let (finish_tx, finish_rx) = mpsc::unbounded_channel::<Finish>();
        let give_up = CancellationToken::new();
        let stop_maintenance = CancellationToken::new();

        this.wait_for_groups(&shutdown).await;
        tracing::info!(worker_id = %this.worker_id, concurrency = this.settings.concurrency, "worker started");

        let finisher = tokio::spawn(Arc::clone(&this).finisher(
            finish_rx,
            Arc::clone(&shared),
            give_up.clone(),
        ));
        let maintenance = tokio::spawn(Arc::clone(&this).maintenance(
            Arc::clone(&shared),
            Arc::clone(&slots),
            shutdown.clone(),
            stop_maintenance.clone(),
        ));

        Arc::clone(&this)
            .fetch_loop(
                Arc::clone(&shared),
                Arc::clone(&slots),
                finish_tx,
                &shutdown,
            )
            .await;

        // Drain: executions hold a slot each; wait until every slot is back.
        let deadline = tokio::time::Instant::now() + this.settings.shutdown_grace;
        let all_slots = u32::try_from(this.settings.concurrency).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout_at(deadline, slots.acquire_many(all_slots))
            .await
            .is_ok();
        if !drained {
            tracing::warn!("in-flight tasks did not finish within the shutdown grace period");
        }
        // The finisher ends once every execution dropped its sender; give up at the deadline.
        let mut finisher = finisher;
        if tokio::time::timeout_at(deadline, &mut finisher)
            .await
            .is_err()
        {
            give_up.cancel();
            let _ = finisher.await;
        }
        stop_maintenance.cancel();
        let _ = maintenance.await;

        // Whatever is still pending for this worker (unfinished, unrecorded or never started) is
        // handed over: the consumer is only removed when nothing is pending.
        let mut conn = this.conn.clone();
        match this.queue.deregister(&mut conn, &this.worker_id).await {
            Ok(0) => tracing::info!(worker_id = %this.worker_id, "worker stopped"),
            Ok(n_streams) => tracing::warn!(
                worker_id = %this.worker_id,
                n_streams,
                "worker stopped with entries pending; marked dead so another worker takes them over"
            ),
            Err(err) => record_redis_error("deregister", &err),
        }
        Ok(())
    }

    async fn wait_for_groups(&self, shutdown: &CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut conn = self.conn.clone();
        while !shutdown.is_cancelled() {
            // Heartbeat before the first claim, so a worker killed early is known and reclaimed.
            let ready = match self.queue.ensure_groups(&mut conn).await {
                Ok(()) => self.queue.heartbeat(&mut conn, &self.worker_id).await,
                Err(err) => Err(err),
            };
            match ready {
                Ok(()) => return,
                Err(err) => {
                    record_redis_error("ensure_groups", &err);
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
        }
    }

    async fn handle_loop_error(
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

    async fn fetch_loop(
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
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => drop(permit),
                    () = shutdown.cancelled() => break,
                }
                continue;
            }
            let delivered: Vec<Delivery> = {
                let mut reclaimed = lock(&shared.reclaimed);
                let n = reclaimed.len().min(free);
                reclaimed.drain(..n).collect()
            };
            let fresh = free - delivered.len();
            let claimed = match self
                .queue
                .claim(&mut conn, &self.worker_id, fresh, &delivered)
                .await
            {
                Ok(claimed) => {
                    backoff.reset();
                    claimed
                }
                Err(err) => {
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
            if !claimed.is_empty() || !delivered.is_empty() {
                self.spawn_executions(claimed, &shared, &slots, &finish_tx)
                    .await;
                continue;
            }
            // Nothing queued. Block on the streams; never cancel this wait midway, or entries
            // Redis already delivered to this consumer would be dropped on the floor.
            let waited = self
                .queue
                .wait_for_entries(
                    &mut blocking_conn,
                    &self.worker_id,
                    free,
                    self.settings.block,
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
    async fn recover_own_pending(
        &self,
        conn: &mut ConnectionManager,
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

    async fn spawn_executions(
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
            tokio::spawn(Arc::clone(self).execute(task, permit, finish_tx.clone()));
        }
    }

    async fn execute(
        self: Arc<Self>,
        task: ClaimedTask,
        permit: OwnedSemaphorePermit,
        finish_tx: mpsc::UnboundedSender<Finish>,
    ) {
        let priority = task.delivery.priority.get().to_string();
        metrics::counter!("agent_tasks_started_total", "priority" => priority.clone()).increment(1);
        metrics::gauge!("agent_worker_in_flight").increment(1.0);
        let started = Instant::now();
        let input = TaskInput {
            task_id: &task.delivery.task_id,
            description: &task.description,
            attempt: task.attempt,
        };
        let result = AssertUnwindSafe(self.handler.handle(input))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(HandlerError::Transient("handler panicked".into())));
        let outcome = classify(result, &task, &self.settings);
        let elapsed = started.elapsed();
        let label = outcome_label(&outcome);
        tracing::info!(
            event = "task_executed",
            task_id = %task.delivery.task_id,
            attempt = task.attempt,
            worker_id = %self.worker_id,
            outcome = label,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "task executed"
        );
        metrics::gauge!("agent_worker_in_flight").decrement(1.0);
        metrics::histogram!("agent_task_duration_seconds", "outcome" => label)
            .record(elapsed.as_secs_f64());
        let counter = match label {
            "succeeded" => "agent_tasks_succeeded_total",
            "retrying" => "agent_tasks_retried_total",
            _ => "agent_tasks_dead_total",
        };
        metrics::counter!(counter, "priority" => priority).increment(1);
        drop(permit);
        // The finisher outlives every execution (it ends when the last sender is dropped).
        let _ = finish_tx.send(Finish { task, outcome });
    }

    async fn finisher(
        self: Arc<Self>,
        mut finish_rx: mpsc::UnboundedReceiver<Finish>,
        shared: Arc<Shared>,
        give_up: CancellationToken,
    ) {
        const MAX_BATCH: usize = 512;
        let mut conn = self.conn.clone();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let received = tokio::select! {
                n = finish_rx.recv_many(&mut batch, MAX_BATCH) => n,
                () = give_up.cancelled() => 0,
            };
            if received == 0 {
                return;
            }
            loop {
                match self
                    .queue
                    .finish_many(&mut conn, &self.worker_id, &batch)
                    .await
                {
                    Ok(results) => {
                        backoff.reset();
                        for (finish, result) in batch.iter().zip(results) {
                            if result != FinishResult::Recorded {
                                tracing::debug!(task_id = %finish.task.delivery.task_id, ?result, "outcome not recorded as owner");
                            }
                        }
                        let mut in_flight = lock(&shared.in_flight);
                        for finish in &batch {
                            in_flight.remove(&entry_key(&finish.task.delivery));
                        }
                        break;
                    }
                    Err(err) => {
                        record_redis_error("finish", &err);
                        tokio::select! {
                            () = tokio::time::sleep(backoff.next_delay()) => {}
                            () = give_up.cancelled() => {
                                // Left pending in Redis: another worker executes these again.
                                tracing::warn!(n_outcomes = batch.len(), "shutting down with unrecorded outcomes");
                                return;
                            }
                        }
                    }
                }
            }
            batch.clear();
        }
    }

    async fn maintenance(
        self: Arc<Self>,
        shared: Arc<Shared>,
        slots: Arc<Semaphore>,
        shutdown: CancellationToken,
        stop: CancellationToken,
    ) {
        let mut conn = self.conn.clone();
        let mut ticker = tokio::time::interval(self.settings.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Since when this worker's heartbeats have succeeded without a gap. After an outage every
        // worker looks dead to every other; only one that has been seen alive for `dead_after`
        // itself may judge others dead, or the first worker back would take over everyone's tasks.
        let mut healthy_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            if let Err(err) = self.queue.heartbeat(&mut conn, &self.worker_id).await {
                record_redis_error("heartbeat", &err);
                healthy_since = None;
                continue;
            }
            let alive_for = healthy_since.get_or_insert_with(Instant::now).elapsed();
            self.renew_leases(&mut conn, &shared).await;
            if shutdown.is_cancelled() {
                continue; // keep heartbeating while draining, but take on nothing new
            }
            if let Err(err) = self.queue.promote_due_retries(&mut conn, 1000).await {
                record_redis_error("promote", &err);
            }
            // Take over only what this worker can start soon; a busier worker leaves the rest to
            // its peers.
            let waiting = lock(&shared.reclaimed).len();
            let budget = slots.available_permits().saturating_sub(waiting);
            if budget == 0 || alive_for < self.settings.dead_after {
                continue;
            }
            match self
                .queue
                .reclaim(
                    &mut conn,
                    &self.worker_id,
                    self.settings.dead_after,
                    self.settings.lease,
                    budget,
                )
                .await
            {
                Ok(reclaimed) if !reclaimed.is_empty() => {
                    metrics::counter!("agent_tasks_reclaimed_total")
                        .increment(reclaimed.len() as u64);
                    tracing::info!(
                        n_entries = reclaimed.len(),
                        "took over tasks of a dead worker"
                    );
                    shared.queue_for_start(reclaimed);
                }
                Ok(_) => {}
                Err(err) => {
                    // The reply may be lost after Redis moved entries to this worker.
                    shared.flag_own_pending();
                    record_redis_error("reclaim", &err);
                }
            }
        }
    }

    /// Renews the lease of entries held longer than a third of it: executing, waiting to be
    /// recorded, or waiting for a slot.
    async fn renew_leases(&self, conn: &mut ConnectionManager, shared: &Shared) {
        let renew_after = self.settings.lease / 3;
        let mut stale: Vec<Delivery> = lock(&shared.in_flight)
            .values()
            .filter(|(_, since)| since.elapsed() >= renew_after)
            .map(|(delivery, _)| delivery.clone())
            .collect();
        stale.extend(lock(&shared.reclaimed).iter().cloned());
        if stale.is_empty() {
            return;
        }
        match self.queue.renew_leases(conn, &self.worker_id, &stale).await {
            Ok(()) => {
                let now = Instant::now();
                let mut in_flight = lock(&shared.in_flight);
                for delivery in &stale {
                    if let Some(entry) = in_flight.get_mut(&entry_key(delivery)) {
                        entry.1 = now;
                    }
                }
            }
            Err(err) => record_redis_error("renew", &err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_exponentially_and_stay_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let first = retry_delay(1, base, max);
        assert!(
            first >= Duration::from_millis(80) && first <= Duration::from_millis(120),
            "{first:?}"
        );
        let third = retry_delay(3, base, max);
        assert!(
            third >= Duration::from_millis(320) && third <= Duration::from_millis(480),
            "{third:?}"
        );
        assert!(retry_delay(30, base, max) <= max);
    }
}
