//! The heartbeat loop; the scheduler loop, which moves retries and scheduled tasks into their
//! streams as they come due; and the maintenance loop: renews the lease of long tasks and takes
//! over the entries of workers whose heartbeat stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use taskq::queue::Delivery;
use taskq::support::RedisConn;
use tokio_util::sync::CancellationToken;

use super::{Runner, Shared, entry_key, lock, record_redis_error};

/// The longest sleep of the scheduler loop: a due task starts at most about this late (plus its
/// claim) when no other due time was known.
pub const SCHEDULER_TICK: Duration = Duration::from_millis(50);

impl Runner {
    /// Records that this worker is alive, every heartbeat period, on a connection no other call
    /// uses and each call bounded by [`super::heartbeat_timeout`]: slow maintenance calls, claims or finishes can
    /// never delay a heartbeat past `WORKER_DEAD_AFTER` (peers would take over live work).
    pub(super) async fn heartbeat_loop(
        self: Arc<Self>,
        shared: Arc<Shared>,
        stop: CancellationToken,
    ) {
        let mut conn = self.heartbeat_conn.clone();
        let period = self.settings.heartbeat;
        let timeout = super::heartbeat_timeout(period, self.settings.dead_after);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            let sent = Instant::now();
            let beat =
                tokio::time::timeout(timeout, self.queue.heartbeat_at(&mut conn, &self.worker_id));
            let failed = match beat.await {
                Ok(Ok(redis_ms)) => {
                    let jump = lock(&shared.clock)
                        .get_or_insert_with(|| taskq::clock::ClockWatch::new(period))
                        .observe(sent, sent.elapsed(), redis_ms);
                    if let Some(by_ms) = jump {
                        shared.clock_jumped(by_ms);
                    }
                    false
                }
                Ok(Err(err)) => {
                    record_redis_error("heartbeat", &err);
                    true
                }
                Err(_) => {
                    metrics::counter!("agent_redis_errors_total", "operation" => "heartbeat")
                        .increment(1);
                    tracing::warn!(
                        operation = "heartbeat",
                        "redis did not answer the heartbeat in time"
                    );
                    true
                }
            };
            let mut healthy_since = lock(&shared.healthy_since);
            if failed {
                *healthy_since = None;
            } else {
                healthy_since.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Moves retries and scheduled tasks into their streams as they come due: sleeps until the
    /// next one is due, and never longer than [`SCHEDULER_TICK`], so a task scheduled meanwhile
    /// (or by another worker) starts at most that late. Every worker runs one; the promotion is
    /// atomic, so they never promote a task twice.
    pub(super) async fn scheduler_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut conn = self.conn.clone();
        loop {
            let wait = match self.queue.promote_due(&mut conn, 1000).await {
                // more came due than one call moves: go on at once
                Ok((1000.., _)) => Duration::ZERO,
                Ok((_, next)) => next.map_or(SCHEDULER_TICK, |next| next.min(SCHEDULER_TICK)),
                Err(err) => {
                    record_redis_error("promote", &err);
                    self.settings.heartbeat
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    pub(super) async fn maintenance(
        self: Arc<Self>,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
        stop: CancellationToken,
    ) {
        let mut conn = self.conn.clone();
        let mut ticker = tokio::time::interval(self.settings.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reclaim_rtt = Duration::ZERO;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            // Since when this worker's heartbeats have succeeded without a gap. After an outage
            // every worker looks dead to every other; only one that has been seen alive for
            // `dead_after` itself may judge others dead, or the first worker back would take over
            // everyone's tasks.
            let Some(alive_for) = lock(&shared.healthy_since).map(|since| since.elapsed()) else {
                continue;
            };
            self.renew_leases(&mut conn, &shared).await;
            if shutdown.is_cancelled() {
                continue; // keep heartbeating while draining, but take on nothing new
            }
            // Take over whatever the free slots are, busy or not: a dead worker's entries must
            // change hands within a heartbeat whatever the load, and then compete for this
            // worker's slots by priority. At most one worker's worth waits here at a time; the
            // rest is left to peers (and to the next pass).
            let waiting = lock(&shared.reclaimed).len();
            let budget = self.settings.concurrency.saturating_sub(waiting);
            if budget == 0 || alive_for < self.settings.dead_after {
                continue;
            }
            let sent = Instant::now();
            let clock = lock(&shared.clock)
                .as_ref()
                .and_then(|watch| watch.expectation(sent, reclaim_rtt));
            let reclaimed = self
                .queue
                .reclaim_checked(
                    &mut conn,
                    &self.worker_id,
                    self.settings.dead_after,
                    self.settings.lease,
                    budget,
                    clock,
                )
                .await;
            // how late the next check's call may run on this (shared) connection
            reclaim_rtt = sent.elapsed();
            match reclaimed {
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
                Err(taskq::queue::QueueError::ClockJumped { by_ms }) => {
                    shared.clock_jumped(by_ms);
                }
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
    pub(super) async fn renew_leases(&self, conn: &mut RedisConn, shared: &Shared) {
        let renew_after = if shared
            .renew_all
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            Duration::ZERO
        } else {
            self.settings.lease / 3
        };
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
