//! The claim → execute → finish loop.
//!
//! Four kinds of task cooperate:
//! - the **fetch loop** claims tasks (most urgent first) while execution slots are free, and
//!   otherwise blocks on the priority streams over a dedicated connection;
//! - one **execution** per claimed task runs the handler, logs the `task_executed` line and passes
//!   the outcome on;
//! - the **finisher** records outcomes in pipelined batches (ack, retry or dead-letter), retrying
//!   while Redis is away so no result is dropped;
//! - the **heartbeat** loop records that this worker is alive, on a connection of its own and
//!   each call bounded by one heartbeat period, so no other Redis call can delay it;
//! - the **scheduler** loop moves retries and scheduled tasks into their streams as they come
//!   due (within 50 ms);
//! - the **maintenance** loop renews the lease of long tasks and takes over the entries of
//!   workers whose heartbeat stopped.
//!
//! Shutdown: stop claiming, let executions finish within the grace period, flush the finisher,
//! then deregister (or mark this worker dead at once if something was left, so another worker
//! picks it up immediately).
//!
//! One module per kind of task: `fetch` (the fetch loop), `execute` (one execution), `finish`
//! (the finisher) and `maintain` (the heartbeat and maintenance loops). This module wires them together and
//! holds the state they share.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use taskq::Priority;
use taskq::queue::{Delivery, Finish, Queue, QueueError};
use taskq::support::RedisConn;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::handler::TaskHandler;

mod execute;
mod fetch;
mod finish;
mod maintain;

pub use execute::{classify, log_executed, retry_delay};

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
    /// How long in-flight work may finish after shutdown begins; executions still running then
    /// are interrupted.
    pub shutdown_grace: Duration,
    /// Execution deadline of a task with none of its own.
    pub task_timeout: Duration,
    /// Longest single wait on the streams when nothing is queued.
    pub block: Duration,
}

/// After the shutdown grace, how long interrupted executions get to stop and their outcomes to
/// be recorded before the worker deregisters (and leaves whatever is left to a takeover).
pub const INTERRUPTED_FLUSH: Duration = Duration::from_secs(3);

/// The longest wait for one heartbeat: a heartbeat answered later than `dead_after − heartbeat`
/// comes too late to keep this worker alive in its peers' eyes (and never less than one period).
pub fn heartbeat_timeout(heartbeat: Duration, dead_after: Duration) -> Duration {
    dead_after.saturating_sub(heartbeat).max(heartbeat)
}

/// Everything the runner needs.
pub struct Runner {
    /// The queue protocol.
    pub queue: Queue,
    /// Multiplexed connection for claims, finishes and maintenance.
    pub conn: RedisConn,
    /// Dedicated connection for blocking reads (a blocked command holds its connection).
    pub blocking_conn: RedisConn,
    /// Dedicated connection for heartbeats, so a heartbeat never queues behind another call.
    pub heartbeat_conn: RedisConn,
    /// Executes tasks.
    pub handler: Arc<dyn TaskHandler>,
    /// This worker's consumer name.
    pub worker_id: Arc<str>,
    /// Timing and sizing.
    pub settings: RunnerSettings,
    /// The execution slots (`settings.concurrency` of them), shared by the runners of every
    /// partition this worker serves.
    pub slots: Arc<Semaphore>,
    /// Held by one partition's fetch loop from counting the free slots until the claimed tasks
    /// hold theirs: the partitions take turns (first come, first served), and never claim the
    /// same free slots twice.
    pub claim_turn: Arc<tokio::sync::Mutex<()>>,
}

impl Runner {
    /// The execution slots and claim turn for the runners of one worker: `concurrency` slots.
    pub fn shared_slots(concurrency: usize) -> (Arc<Semaphore>, Arc<tokio::sync::Mutex<()>>) {
        (
            Arc::new(Semaphore::new(concurrency)),
            Arc::new(tokio::sync::Mutex::new(())),
        )
    }
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
    /// Since when this worker's heartbeats have succeeded without a gap (`None` after a failed
    /// one); written by the heartbeat loop, read by the maintenance loop.
    healthy_since: Mutex<Option<Instant>>,
    /// This worker's view of Redis's clock, from its heartbeats (created by the heartbeat loop).
    clock: Mutex<Option<taskq::clock::ClockWatch>>,
    /// Set when Redis's clock jumped: the next maintenance pass renews every lease, whatever its
    /// age (a forward jump makes every entry look idle for the jump's length).
    renew_all: std::sync::atomic::AtomicBool,
    /// Cancelled when the shutdown grace runs out: every execution still running stops and is
    /// recorded as interrupted.
    interrupt: CancellationToken,
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

    /// Redis's clock jumped by `by_ms`: judge no peer dead for `WORKER_DEAD_AFTER` (live peers
    /// heartbeat on the new clock meanwhile), and renew every lease at the next pass.
    fn clock_jumped(&self, by_ms: i64) {
        metrics::counter!("agent_clock_jumps_total").increment(1);
        tracing::warn!(
            by_ms,
            "redis's clock jumped: no worker is judged dead for WORKER_DEAD_AFTER, every lease \
             is renewed"
        );
        *lock(&self.healthy_since) = Some(Instant::now());
        self.renew_all
            .store(true, std::sync::atomic::Ordering::Relaxed);
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
        let slots = Arc::clone(&this.slots);
        let (finish_tx, finish_rx) = mpsc::unbounded_channel::<Finish>();
        let give_up = CancellationToken::new();
        let stop_maintenance = CancellationToken::new();

        this.wait_for_groups(&shutdown).await;
        let partition = this.queue.keys().partition();
        tracing::info!(
            worker_id = %this.worker_id,
            concurrency = this.settings.concurrency,
            partition = partition.index,
            partitions = partition.count,
            "worker started"
        );

        let finisher = tokio::spawn(Arc::clone(&this).finisher(
            finish_rx,
            Arc::clone(&shared),
            give_up.clone(),
        ));
        let heartbeat = tokio::spawn(
            Arc::clone(&this).heartbeat_loop(Arc::clone(&shared), stop_maintenance.clone()),
        );
        let scheduler = tokio::spawn(Arc::clone(&this).scheduler_loop(stop_maintenance.clone()));
        let maintenance = tokio::spawn(Arc::clone(&this).maintenance(
            Arc::clone(&shared),
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
        let mut deadline = tokio::time::Instant::now() + this.settings.shutdown_grace;
        let all_slots = u32::try_from(this.settings.concurrency).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout_at(deadline, slots.acquire_many(all_slots))
            .await
            .is_ok();
        if !drained {
            // Stop what still runs and record it as interrupted (its task runs again at once),
            // rather than leave it to be found by a takeover that counts the attempt.
            let running = this.settings.concurrency - slots.available_permits();
            tracing::warn!(
                running,
                grace = %humantime::format_duration(this.settings.shutdown_grace),
                "executions still running at the end of the shutdown grace period: interrupted"
            );
            shared.interrupt.cancel();
            deadline = tokio::time::Instant::now() + INTERRUPTED_FLUSH;
            let _ = tokio::time::timeout_at(deadline, slots.acquire_many(all_slots)).await;
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
        let _ = scheduler.await;
        let _ = heartbeat.await;

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
}
