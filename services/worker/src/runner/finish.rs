//! The finisher: records outcomes in pipelined batches (ack, retry or dead-letter), retrying
//! while Redis is away so no result is dropped, and only then forgets the entries.

use std::sync::Arc;
use std::time::Duration;

use taskq::queue::{Finish, FinishResult};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Backoff, Runner, Shared, entry_key, lock, record_redis_error};

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
}
