//! One execution per claimed task: runs the handler, logs the `task_executed` line, counts it in
//! the metrics and passes the outcome on to the finisher.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use taskq::queue::{ClaimedTask, ExecutionOutcome, Finish};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::{Runner, RunnerSettings};
use crate::handler::{HandlerError, TaskInput};

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

impl Runner {
    pub(super) async fn execute(
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
