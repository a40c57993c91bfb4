//! One execution per claimed task: runs the handler, logs the `task_executed` line, counts it in
//! the metrics and passes the outcome on to the finisher.
//!
//! The line is a [`TaskExecuted`] written by [`log_executed`], so it has exactly the fields the
//! harness and the benchmark read back with [`TaskExecuted::from_log_line`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use taskq::TaskTimeout;
use taskq::event::{Outcome, TaskExecuted};
use taskq::queue::{ClaimedTask, ExecutionOutcome, Finish};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

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

/// Turns a handler result into what the queue records, within what it can always record
/// ([`ExecutionOutcome::bounded`]: a result too big to store is a permanent failure).
pub fn classify(
    result: Result<serde_json::Value, HandlerError>,
    task: &ClaimedTask,
    settings: &RunnerSettings,
) -> ExecutionOutcome {
    classify_unbounded(result, task, settings).bounded()
}

fn classify_unbounded(
    result: Result<serde_json::Value, HandlerError>,
    task: &ClaimedTask,
    settings: &RunnerSettings,
) -> ExecutionOutcome {
    match result {
        Ok(value) => ExecutionOutcome::Succeeded(value),
        Err(HandlerError::Transient(error)) if task.attempt < task.max_attempts => {
            ExecutionOutcome::Retrying {
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

/// Logs the `task_executed` line of one execution: every field of `event`, nothing else.
pub fn log_executed(event: &TaskExecuted) {
    // Destructured, so a field added to the event cannot be left out of the line.
    let TaskExecuted {
        task_id,
        attempt,
        worker_id,
        outcome,
        duration_ms,
    } = event;
    // The target is the line's `target` since before runner.rs was split; RUST_LOG filters and
    // log readers may name it.
    tracing::info!(
        target: "worker::runner",
        event = TaskExecuted::EVENT,
        task_id = %task_id,
        attempt = *attempt,
        worker_id = %worker_id,
        outcome = outcome.as_str(),
        duration_ms = *duration_ms,
        "task executed"
    );
}

/// The counter an execution with this outcome increments.
fn outcome_counter(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "agent_tasks_succeeded_total",
        Outcome::Retrying => "agent_tasks_retried_total",
        Outcome::Dead => "agent_tasks_dead_total",
    }
}

impl Runner {
    pub(super) async fn execute(
        self: Arc<Self>,
        task: ClaimedTask,
        permit: OwnedSemaphorePermit,
        finish_tx: mpsc::UnboundedSender<Finish>,
        interrupt: CancellationToken,
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
        // The task's own deadline, or the worker's default.
        let deadline = task
            .timeout
            .map_or(self.settings.task_timeout, TaskTimeout::duration);
        let handled = tokio::time::timeout(
            deadline,
            AssertUnwindSafe(self.handler.handle(input)).catch_unwind(),
        );
        let outcome = tokio::select! {
            biased;
            () = interrupt.cancelled() => {
                tracing::warn!(
                    task_id = %task.delivery.task_id,
                    attempt = task.attempt,
                    "execution interrupted by the worker's shutdown; the task runs again"
                );
                ExecutionOutcome::Interrupted {
                    error: format!(
                        "interrupted: the worker shut down before the execution finished \
                         (SHUTDOWN_GRACE {})",
                        humantime::format_duration(self.settings.shutdown_grace)
                    ),
                }
            }
            handled = handled => {
                let result = match handled {
                    Ok(Ok(result)) => result,
                    Ok(Err(_panic)) => Err(HandlerError::Transient("handler panicked".into())),
                    Err(_elapsed) => Err(HandlerError::Transient(format!(
                        "execution timed out after {}",
                        humantime::format_duration(deadline)
                    ))),
                };
                classify(result, &task, &self.settings)
            }
        };
        let elapsed = started.elapsed();
        let kind = outcome.kind();
        log_executed(&TaskExecuted {
            task_id: task.delivery.task_id.clone(),
            attempt: task.attempt,
            worker_id: self.worker_id.to_string(),
            outcome: kind,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
        });
        metrics::gauge!("agent_worker_in_flight").decrement(1.0);
        metrics::histogram!("agent_task_duration_seconds", "outcome" => kind.as_str())
            .record(elapsed.as_secs_f64());
        metrics::counter!(outcome_counter(kind), "priority" => priority).increment(1);
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

    /// A `Write` into a shared buffer, for capturing what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `log_executed` writes through a JSON subscriber.
    fn emitted(event: &TaskExecuted, flatten: bool) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        // As taskq::support::init_tracing sets up the JSON format.
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(flatten)
            .with_current_span(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || log_executed(event));
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn sample(outcome: Outcome) -> TaskExecuted {
        TaskExecuted {
            task_id: "0193c1b2-7e4f-7d3a-9c2b-1a2b3c4d5e6f".into(),
            attempt: 3,
            worker_id: "worker-7f3a".into(),
            outcome,
            duration_ms: 20.123_456,
        }
    }

    #[test]
    fn the_emitted_line_reads_back_as_the_same_event() {
        for outcome in Outcome::ALL {
            let event = sample(outcome);
            let text = emitted(&event, true);
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 1, "{text}");
            let logged = TaskExecuted::logged_from_line(lines[0]).expect(lines[0]);
            assert_eq!(logged.event, event, "{text}");
            assert!(logged.timestamp.is_some(), "{text}");
            // The line's layout beyond the event: flattened, with the same message and target.
            let value: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
            assert_eq!(value["event"], TaskExecuted::EVENT, "{text}");
            assert_eq!(value["message"], TaskExecuted::MESSAGE, "{text}");
            assert_eq!(value["target"], "worker::runner", "{text}");
            assert_eq!(value["level"], "INFO", "{text}");
        }
    }

    #[test]
    fn the_nested_layout_reads_back_too() {
        let event = sample(Outcome::Retrying);
        let text = emitted(&event, false);
        assert_eq!(TaskExecuted::from_log_line(text.trim()), Some(event));
    }

    #[test]
    fn every_outcome_has_its_own_counter() {
        let counters: std::collections::HashSet<_> =
            Outcome::ALL.into_iter().map(outcome_counter).collect();
        assert_eq!(counters.len(), Outcome::ALL.len());
    }
}
