//! The one code path that submits a task, shared by every scenario and by the harness.
//!
//! [`submit_task`] sends `POST /tasks` through goose (so goose's throttle, metrics and
//! reports see it), with an `Idempotency-Key` of `{run_id}-{op}`, classifies the answer with
//! [`classify_submit`] and, when its [`SubmitContext`] records, keeps a [`SubmitRecord`].
//! A context may also carry a [`LoadProgress`]: live counts of the outcomes so far, lock-free,
//! for a progress display while the load runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use goose::prelude::*;

use crate::follow_up::{Delays, FollowUpRecord, FollowUps};
use crate::outcome::{SubmitAnswer, SubmitOutcome, SubmitRecord, classify_submit, error_chain};
use crate::task_body::random_task;

/// The header that makes a retried submit return the same task.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// What the outcome of an attempt is while its request is in flight; it stays so only if
/// the request never finished (the run was torn down under it).
const NO_ANSWER_YET: &str = "no answer recorded: the load stopped before the request finished";

/// Live counts of a load's submits, updated as attempts end and readable at any time without a
/// lock (a progress display polls [`Self::snapshot`] while goose runs).
///
/// An attempt counts once, with its final outcome: the provisional `info` journaled before the
/// request is sent is not counted, and an attempt the throttle never let out is taken back.
#[derive(Debug, Default)]
pub struct LoadProgress {
    attempted: AtomicU64,
    acknowledged: AtomicU64,
    failed: AtomicU64,
    indeterminate: AtomicU64,
}

/// The counts of a [`LoadProgress`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadCounts {
    /// Submits sent so far, answered or still in flight.
    pub attempted: u64,
    /// Answered with a task id (`ok`).
    pub acknowledged: u64,
    /// Refused (`fail`: an answer that says no task was created).
    pub failed: u64,
    /// Without a clear answer (`info`: timeout, transport error, unreadable body).
    pub indeterminate: u64,
}

impl LoadCounts {
    /// Attempts that ended without an acknowledgement: `fail` and `info`.
    pub fn errors(&self) -> u64 {
        self.failed + self.indeterminate
    }

    /// Attempts sent whose outcome is not known yet.
    pub fn in_flight(&self) -> u64 {
        self.attempted
            .saturating_sub(self.acknowledged + self.failed + self.indeterminate)
    }
}

impl LoadProgress {
    /// Counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counts now. Each counter is read on its own (relaxed), so a snapshot taken while
    /// attempts end may be off by the attempts ending meanwhile.
    pub fn snapshot(&self) -> LoadCounts {
        LoadCounts {
            attempted: self.attempted.load(Ordering::Relaxed),
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            indeterminate: self.indeterminate.load(Ordering::Relaxed),
        }
    }

    fn sent(&self) {
        self.attempted.fetch_add(1, Ordering::Relaxed);
    }

    fn never_sent(&self) {
        // Only after `sent`: the counter cannot underflow.
        self.attempted.fetch_sub(1, Ordering::Relaxed);
    }

    fn ended(&self, outcome: &SubmitOutcome) {
        let counter = match outcome {
            SubmitOutcome::Ok { .. } => &self.acknowledged,
            SubmitOutcome::Fail { .. } => &self.failed,
            SubmitOutcome::Info { .. } => &self.indeterminate,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Two progress counters are equal when their counts are (so that a
/// [`SubmitLoad`](crate::SubmitLoad) holding one can still be compared).
impl PartialEq for LoadProgress {
    fn eq(&self, other: &Self) -> bool {
        self.snapshot() == other.snapshot()
    }
}

/// State shared by all goose users of one run: the run id, the attempt counter and,
/// optionally, the journal of attempts.
///
/// Goose transactions are closures run by many users at once, so everything here is
/// behind atomics or a mutex; the mutex is never held across an `.await`.
#[derive(Debug)]
pub struct SubmitContext {
    run_id: String,
    next_op: AtomicU64,
    /// One entry per attempt, keyed by `op`. `None` when the run does not record, as the
    /// `loadtest` binary, where a long run at full speed would hold millions of records.
    journal: Option<Mutex<BTreeMap<u64, SubmitRecord>>>,
    /// What follows an acknowledged submit in the `submit` scenario (nothing by default).
    follow_ups: FollowUps,
    /// Which submits are scheduled (none by default).
    delays: Delays,
    /// The follow-ups sent, when the run records.
    follow_up_journal: Option<Mutex<Vec<FollowUpRecord>>>,
    /// Live counts of the submits' outcomes, when someone watches.
    progress: Option<Arc<LoadProgress>>,
}

impl SubmitContext {
    /// A context that keeps a [`SubmitRecord`] of every attempt, for [`Self::take_records`].
    pub fn recording(run_id: impl Into<String>) -> Self {
        Self {
            run_id: run_id.into(),
            next_op: AtomicU64::new(0),
            journal: Some(Mutex::new(BTreeMap::new())),
            follow_ups: FollowUps::default(),
            delays: Delays::default(),
            follow_up_journal: Some(Mutex::new(Vec::new())),
            progress: None,
        }
    }

    /// The same context, scheduling a share of its submits as `delays` says.
    pub fn with_delays(mut self, delays: Delays) -> Self {
        self.delays = delays;
        self
    }

    /// The same context, following acknowledged submits with cancels and reads as `follow_ups`
    /// says.
    pub fn with_follow_ups(mut self, follow_ups: FollowUps) -> Self {
        self.follow_ups = follow_ups;
        self
    }

    /// The same context, counting every submit's final outcome in `progress` as it ends.
    pub fn with_progress(mut self, progress: Arc<LoadProgress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The follow-up shares.
    pub fn follow_ups(&self) -> FollowUps {
        self.follow_ups
    }

    /// Takes the follow-ups recorded so far, in the order they ended.
    pub fn take_follow_ups(&self) -> Vec<FollowUpRecord> {
        match &self.follow_up_journal {
            Some(journal) => {
                std::mem::take(&mut *journal.lock().unwrap_or_else(PoisonError::into_inner))
            }
            None => Vec::new(),
        }
    }

    /// Journals one follow-up (when the run records).
    pub fn record_follow_up(&self, record: FollowUpRecord) {
        if let Some(journal) = &self.follow_up_journal {
            journal
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(record);
        }
    }

    /// A context that only numbers attempts (for their idempotency keys) and keeps nothing.
    pub fn not_recording(run_id: impl Into<String>) -> Self {
        Self {
            run_id: run_id.into(),
            next_op: AtomicU64::new(0),
            journal: None,
            follow_ups: FollowUps::default(),
            delays: Delays::default(),
            follow_up_journal: None,
            progress: None,
        }
    }

    /// The run id every idempotency key starts with.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Takes the records kept so far, ordered by `op`, leaving the journal empty.
    pub fn take_records(&self) -> Vec<SubmitRecord> {
        match &self.journal {
            Some(journal) => {
                let mut journal = journal.lock().unwrap_or_else(PoisonError::into_inner);
                std::mem::take(&mut *journal).into_values().collect()
            }
            None => Vec::new(),
        }
    }

    /// Calls `f` on the progress counters, if any.
    fn count(&self, f: impl FnOnce(&LoadProgress)) {
        if let Some(progress) = &self.progress {
            f(progress);
        }
    }

    /// Allocates the next attempt number.
    fn allocate_op(&self) -> u64 {
        self.next_op.fetch_add(1, Ordering::Relaxed)
    }

    fn record(&self, record: SubmitRecord) {
        if let Some(journal) = &self.journal {
            let mut journal = journal.lock().unwrap_or_else(PoisonError::into_inner);
            journal.insert(record.op, record);
        }
    }

    fn forget(&self, op: u64) {
        if let Some(journal) = &self.journal {
            let mut journal = journal.lock().unwrap_or_else(PoisonError::into_inner);
            journal.remove(&op);
        }
    }
}

/// A task the orchestrator acknowledged.
#[derive(Debug, Clone)]
pub struct Acknowledged {
    /// Its id.
    pub task_id: String,
    /// When the request was sent (after goose's throttle let it go).
    pub sent_at: Instant,
}

/// Submits one random task; `Ok` only when it was acknowledged with an id.
///
/// Every other outcome is a failed request in goose's metrics and a
/// [`TransactionError::RequestFailed`], so the calling transaction counts as failed.
pub async fn submit_task(
    user: &mut GooseUser,
    context: &SubmitContext,
) -> Result<Acknowledged, Box<TransactionError>> {
    // ThreadRng is not Send: draw everything before the first await.
    let mut task = random_task(&mut rand::rng());
    task.delay_ms = context
        .delays
        .pick(rand::random::<f64>(), rand::random::<f64>());
    let op = context.allocate_op();
    let idempotency_key = format!("{}-{op}", context.run_id);

    let request_builder = user
        .get_request_builder(&GooseMethod::Post, "/tasks")?
        .header(IDEMPOTENCY_KEY_HEADER, idempotency_key.as_str())
        .json(&task);
    let request = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path("/tasks")
        .set_request_builder(request_builder)
        .build();

    // Journal the attempt before sending it, so an attempt is never missing from the
    // records even if the request outlives the run.
    context.record(SubmitRecord {
        op,
        idempotency_key: idempotency_key.clone(),
        started_unix_ms: unix_ms(SystemTime::now()),
        latency_ms: 0.0,
        priority: task.priority,
        delay_ms: task.delay_ms,
        outcome: SubmitOutcome::Info {
            message: NO_ANSWER_YET.to_string(),
        },
    });
    context.count(LoadProgress::sent);

    let mut goose = match user.request(request).await {
        Ok(goose) => goose,
        Err(error) => {
            if matches!(*error, TransactionError::RequestCanceled { .. }) {
                // The throttle closed as the run ended: the request was never sent.
                context.forget(op);
                context.count(LoadProgress::never_sent);
            } else {
                let outcome = SubmitOutcome::Info {
                    message: format!("goose could not send the request: {error}"),
                };
                context.count(|progress| progress.ended(&outcome));
                context.record(SubmitRecord {
                    op,
                    idempotency_key,
                    started_unix_ms: unix_ms(SystemTime::now()),
                    latency_ms: 0.0,
                    priority: task.priority,
                    delay_ms: task.delay_ms,
                    outcome,
                });
            }
            return Err(error);
        }
    };

    // Goose measured the time to the status line; add the time to read the body.
    let to_headers = Duration::from_micros(goose.request.response_time_micros());
    let reading_body = Instant::now();
    let answer = match goose.response {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.bytes().await {
                Ok(body) => SubmitAnswer::Response {
                    status,
                    body: body.to_vec(),
                },
                Err(error) => SubmitAnswer::BodyError {
                    status,
                    message: error_chain(&error),
                },
            }
        }
        Err(ref error) => SubmitAnswer::Transport {
            message: error_chain(error),
        },
    };
    let latency = to_headers + reading_body.elapsed();
    let sent_at = Instant::now()
        .checked_sub(latency)
        .unwrap_or_else(Instant::now);
    let outcome = classify_submit(&answer);
    // Counted here, with the final outcome, not in `record`, which also sees the provisional one.
    context.count(|progress| progress.ended(&outcome));

    context.record(SubmitRecord {
        op,
        idempotency_key,
        started_unix_ms: unix_ms(SystemTime::now().checked_sub(latency).unwrap_or(UNIX_EPOCH)),
        latency_ms: latency.as_secs_f64() * 1_000.0,
        priority: task.priority,
        delay_ms: task.delay_ms,
        outcome: outcome.clone(),
    });

    match outcome {
        SubmitOutcome::Ok { task_id } => Ok(Acknowledged { task_id, sent_at }),
        SubmitOutcome::Fail { .. } | SubmitOutcome::Info { .. } => {
            if goose.request.success {
                // A 2xx that is still no acknowledgement (no id): make goose count it as a
                // failed request. `set_failure` returns `Err` on every path.
                user.set_failure(
                    "submit answered without a task id",
                    &mut goose.request,
                    None,
                    None,
                )?;
            }
            // Goose counted the non-2xx or transport error as a failed request already.
            Err(Box::new(TransactionError::RequestFailed {
                raw_request: Box::new(goose.request),
            }))
        }
    }
}

/// Milliseconds since the Unix epoch (0 for a clock before 1970).
fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(op: u64) -> SubmitRecord {
        SubmitRecord {
            op,
            idempotency_key: format!("run-{op}"),
            started_unix_ms: 0,
            latency_ms: 0.0,
            priority: 5,
            delay_ms: None,
            outcome: SubmitOutcome::Info {
                message: NO_ANSWER_YET.into(),
            },
        }
    }

    #[test]
    fn ops_are_unique_and_increasing() {
        let context = SubmitContext::recording("run");
        let ops: Vec<u64> = (0..5).map(|_| context.allocate_op()).collect();
        assert_eq!(ops, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn taking_records_orders_them_by_op_and_empties_the_journal() {
        let context = SubmitContext::recording("run");
        context.record(record(2));
        context.record(record(0));
        context.record(record(1));
        context.forget(1);
        let ops: Vec<u64> = context.take_records().iter().map(|r| r.op).collect();
        assert_eq!(ops, vec![0, 2]);
        assert!(
            context.take_records().is_empty(),
            "a second take should find nothing"
        );
    }

    #[test]
    fn a_later_record_of_the_same_op_replaces_the_first() {
        let context = SubmitContext::recording("run");
        context.record(record(0));
        let mut answered = record(0);
        answered.outcome = SubmitOutcome::Ok {
            task_id: "t".into(),
        };
        context.record(answered.clone());
        assert_eq!(context.take_records(), vec![answered]);
    }

    #[test]
    fn progress_counts_each_attempt_once_with_its_final_outcome() {
        let progress = Arc::new(LoadProgress::new());
        let context = SubmitContext::recording("run").with_progress(Arc::clone(&progress));
        for _ in 0..4 {
            context.count(LoadProgress::sent);
        }
        assert_eq!(progress.snapshot().in_flight(), 4);
        context.count(|p| {
            p.ended(&SubmitOutcome::Ok {
                task_id: "t".into(),
            })
        });
        context.count(|p| {
            p.ended(&SubmitOutcome::Fail {
                status: Some(503),
                message: "busy".into(),
            })
        });
        context.count(|p| {
            p.ended(&SubmitOutcome::Info {
                message: "timeout".into(),
            })
        });
        context.count(LoadProgress::never_sent);
        let counts = progress.snapshot();
        assert_eq!(
            counts,
            LoadCounts {
                attempted: 3,
                acknowledged: 1,
                failed: 1,
                indeterminate: 1,
            }
        );
        assert_eq!(counts.errors(), 2);
        assert_eq!(counts.in_flight(), 0);
    }

    #[test]
    fn a_context_that_does_not_record_keeps_nothing() {
        let context = SubmitContext::not_recording("run");
        context.record(record(0));
        assert!(context.take_records().is_empty());
    }
}
