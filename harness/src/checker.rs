//! The checker: Jepsen's total-queue analysis of one run's history.
//!
//! Inputs are every submit attempt (`ok` with the task id, `fail`, or `info` = outcome unknown),
//! the task ids that Redis's idempotency keys map the non-`ok` attempts to (read after the run),
//! and every execution from the workers' logs. Counts are per task:
//!
//! | count | meaning |
//! |---|---|
//! | `lost` | acknowledged (`ok`) but never executed |
//! | `unexpected` | executed but never attempted (no `ok` id, no idempotency key maps to it) |
//! | `duplicated` | executed to completion more than once, or the same attempt executed twice |
//! | `recovered` | `info` attempt whose task was executed anyway |
//! | `unfinished` | acknowledged or recovered, but no execution reached a final outcome |
//!
//! Planned retries (`outcome = "retrying"` followed by another attempt) are not duplicates.
//! `reclaimed` counts tasks executed at attempt n > 1 with no logged execution of attempt n - 1:
//! an earlier execution died without logging (its worker was killed mid-task) and the task was
//! handed to another worker. A scenario can require it to prove its fault really hit in-flight work.
//!
//! A `fail` attempt whose task executed anyway is reported as `failed_but_executed`: the
//! orchestrator claimed a definite failure that was not one.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::{
    executions::Execution,
    load::{SubmitOutcome, SubmitRecord},
};

/// How many ids of each anomaly a report lists.
pub const SAMPLE_IDS: usize = 20;

/// Everything the checker looks at.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every submit attempt.
    pub submits: Vec<SubmitRecord>,
    /// Idempotency key → task id, from Redis, for attempts that were not `ok`.
    pub resolved: HashMap<String, String>,
    /// Every execution logged by a worker.
    pub executions: Vec<Execution>,
}

/// Submit latency percentiles in milliseconds (over acknowledged submits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

/// Result of the total-queue analysis.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Analysis {
    /// Submit attempts.
    pub attempted: u64,
    /// `ok` attempts.
    pub acknowledged: u64,
    /// `fail` attempts.
    pub failed: u64,
    /// `info` attempts.
    pub indeterminate: u64,
    /// Distinct tasks executed at least once.
    pub executed: u64,
    /// Execution log lines.
    pub executions: u64,
    /// Acknowledged, never executed.
    pub lost: u64,
    /// Executed, never attempted.
    pub unexpected: u64,
    /// Executed more than once (not counting planned retries).
    pub duplicated: u64,
    /// `info`, executed anyway.
    pub recovered: u64,
    /// Acknowledged or recovered, no final execution.
    pub unfinished: u64,
    /// `fail`, executed anyway.
    pub failed_but_executed: u64,
    /// Executed again after an execution that died without logging (see the module docs).
    pub reclaimed: u64,
    /// Submit latency of acknowledged attempts.
    pub submit_latency_ms: Latency,
    /// Up to [`SAMPLE_IDS`] lost task ids.
    pub lost_ids: Vec<String>,
    /// Up to [`SAMPLE_IDS`] duplicated task ids.
    pub duplicated_ids: Vec<String>,
    /// Up to [`SAMPLE_IDS`] unexpected task ids.
    pub unexpected_ids: Vec<String>,
}

/// Runs the total-queue analysis.
pub fn analyze(history: &History) -> Analysis {
    let mut analysis = Analysis {
        attempted: history.submits.len() as u64,
        executions: history.executions.len() as u64,
        ..Analysis::default()
    };

    let mut per_task: HashMap<&str, Vec<&Execution>> = HashMap::new();
    for execution in &history.executions {
        per_task
            .entry(execution.task_id.as_str())
            .or_default()
            .push(execution);
    }
    let finished: HashSet<&str> = per_task
        .iter()
        .filter(|(_, runs)| runs.iter().any(|e| e.outcome.is_final()))
        .map(|(id, _)| *id)
        .collect();

    // Tasks the client may legitimately have created, and tasks that must finish.
    let mut attempted_ids: HashSet<&str> = HashSet::new();
    let mut must_finish: Vec<&str> = Vec::new();
    let mut lost_ids: Vec<&str> = Vec::new();
    let mut latencies: Vec<f64> = Vec::new();
    for submit in &history.submits {
        let resolved = history
            .resolved
            .get(&submit.idempotency_key)
            .map(String::as_str);
        if let Some(id) = resolved {
            attempted_ids.insert(id);
        }
        match &submit.outcome {
            SubmitOutcome::Ok { task_id } => {
                analysis.acknowledged += 1;
                latencies.push(submit.latency_ms);
                attempted_ids.insert(task_id);
                must_finish.push(task_id);
                if !per_task.contains_key(task_id.as_str()) {
                    analysis.lost += 1;
                    lost_ids.push(task_id);
                }
            }
            SubmitOutcome::Fail { .. } => {
                analysis.failed += 1;
                if resolved.is_some_and(|id| per_task.contains_key(id)) {
                    analysis.failed_but_executed += 1;
                }
            }
            SubmitOutcome::Info { .. } => {
                analysis.indeterminate += 1;
                if let Some(id) = resolved.filter(|id| per_task.contains_key(id)) {
                    analysis.recovered += 1;
                    must_finish.push(id);
                }
            }
        }
    }
    analysis.unfinished = must_finish
        .iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .filter(|id| !finished.contains(**id))
        .count() as u64;

    // Sorted for stable reports.
    let ordered: BTreeMap<&str, &Vec<&Execution>> =
        per_task.iter().map(|(id, runs)| (*id, runs)).collect();
    let mut duplicated_ids = Vec::new();
    let mut unexpected_ids = Vec::new();
    for (id, runs) in ordered {
        if !attempted_ids.contains(id) {
            unexpected_ids.push(id);
        }
        if is_duplicated(runs) {
            duplicated_ids.push(id);
        }
    }
    analysis.reclaimed = per_task.values().filter(|runs| was_reclaimed(runs)).count() as u64;
    analysis.executed = per_task.len() as u64;
    analysis.unexpected = unexpected_ids.len() as u64;
    analysis.duplicated = duplicated_ids.len() as u64;
    analysis.submit_latency_ms = latency(&mut latencies);
    let sample = |ids: Vec<&str>| -> Vec<String> {
        ids.into_iter()
            .take(SAMPLE_IDS)
            .map(str::to_string)
            .collect()
    };
    lost_ids.sort_unstable();
    analysis.lost_ids = sample(lost_ids);
    analysis.duplicated_ids = sample(duplicated_ids);
    analysis.unexpected_ids = sample(unexpected_ids);
    analysis
}

/// More than one final execution, or one attempt number executed twice.
fn is_duplicated(runs: &[&Execution]) -> bool {
    if runs.iter().filter(|e| e.outcome.is_final()).count() > 1 {
        return true;
    }
    let mut attempts = HashSet::new();
    runs.iter().any(|e| !attempts.insert(e.attempt))
}

/// Some attempt n > 1 ran although attempt n - 1 never logged an execution.
fn was_reclaimed(runs: &[&Execution]) -> bool {
    let logged: HashSet<u32> = runs.iter().map(|e| e.attempt).collect();
    logged.iter().any(|a| *a > 1 && !logged.contains(&(a - 1)))
}

/// Nearest-rank percentiles.
fn latency(values: &mut [f64]) -> Latency {
    if values.is_empty() {
        return Latency::default();
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| {
        let index = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
        round2(values[index])
    };
    Latency {
        p50: rank(0.50),
        p99: rank(0.99),
        max: round2(values[values.len() - 1]),
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Time from `healed_at_unix_ms` until the system works again: the later of the first
/// acknowledged submit completing after that instant and the first execution logged after it.
/// `None` when either never happened.
pub fn recovery_ms(
    healed_at_unix_ms: u64,
    submits: &[SubmitRecord],
    executions: &[Execution],
) -> Option<u64> {
    let first_ack = submits
        .iter()
        .filter(|s| matches!(s.outcome, SubmitOutcome::Ok { .. }))
        .map(|s| s.started_unix_ms + s.latency_ms.ceil() as u64)
        .filter(|done| *done >= healed_at_unix_ms)
        .min()?;
    let first_execution = executions
        .iter()
        .filter_map(|e| e.unix_ms)
        .filter(|t| *t >= healed_at_unix_ms)
        .min()?;
    Some(first_ack.max(first_execution) - healed_at_unix_ms)
}

/// Tasks acknowledged before `fault_unix_ms` whose first execution came after `healed_unix_ms`:
/// the queue carried them across the fault (after a Redis kill, only the AOF can do that).
pub fn carried_over(
    fault_unix_ms: u64,
    healed_unix_ms: u64,
    submits: &[SubmitRecord],
    executions: &[Execution],
) -> u64 {
    let mut first_run: HashMap<&str, u64> = HashMap::new();
    for execution in executions {
        if let Some(at) = execution.unix_ms {
            let entry = first_run.entry(execution.task_id.as_str()).or_insert(at);
            *entry = (*entry).min(at);
        }
    }
    submits
        .iter()
        .filter(|s| s.started_unix_ms + (s.latency_ms.ceil() as u64) < fault_unix_ms)
        .filter_map(|s| s.outcome.task_id())
        .filter(|id| first_run.get(id).is_some_and(|at| *at >= healed_unix_ms))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executions::ExecutionOutcome;

    fn submit(op: u64, outcome: SubmitOutcome) -> SubmitRecord {
        SubmitRecord {
            op,
            idempotency_key: format!("run-{op}"),
            started_unix_ms: 1_000 + op * 10,
            latency_ms: op as f64,
            priority: 5,
            outcome,
        }
    }

    fn ok(op: u64, id: &str) -> SubmitRecord {
        submit(
            op,
            SubmitOutcome::Ok {
                task_id: id.to_string(),
            },
        )
    }

    fn info(op: u64) -> SubmitRecord {
        submit(
            op,
            SubmitOutcome::Info {
                message: "timed out".into(),
            },
        )
    }

    fn fail(op: u64) -> SubmitRecord {
        submit(
            op,
            SubmitOutcome::Fail {
                status: Some(503),
                message: "redis unavailable".into(),
            },
        )
    }

    fn run(id: &str, attempt: u32, outcome: ExecutionOutcome, unix_ms: u64) -> Execution {
        Execution {
            task_id: id.to_string(),
            attempt,
            worker_id: "w".into(),
            outcome,
            unix_ms: Some(unix_ms),
            source: "worker.1".into(),
        }
    }

    use ExecutionOutcome::{Retrying, Succeeded};

    #[test]
    fn a_hand_made_history_gets_exactly_its_anomalies() {
        let history = History {
            submits: vec![
                ok(1, "fine"),
                ok(2, "lost"),
                ok(3, "twice"),
                ok(4, "retried"),
                ok(8, "reclaimed"),
                info(5),
                info(6),
                fail(7),
            ],
            // op 5's task was created and ran; op 6's never reached Redis; op 7 really failed.
            resolved: HashMap::from([("run-5".to_string(), "recovered".to_string())]),
            executions: vec![
                run("fine", 1, Succeeded, 2_000),
                run("twice", 1, Succeeded, 2_000),
                run("twice", 2, Succeeded, 2_100),
                run("retried", 1, Retrying, 2_000),
                run("retried", 2, Succeeded, 2_500),
                run("recovered", 1, Succeeded, 2_000),
                run("stranger", 1, Succeeded, 2_000),
                // Attempt 1 died with its worker (no line), attempt 2 ran elsewhere.
                run("reclaimed", 2, Succeeded, 2_600),
            ],
        };

        let analysis = analyze(&history);

        assert_eq!(analysis.attempted, 8);
        assert_eq!(analysis.acknowledged, 5);
        assert_eq!(analysis.failed, 1);
        assert_eq!(analysis.indeterminate, 2);
        assert_eq!(
            analysis.lost, 1,
            "only `lost` was acknowledged and never ran"
        );
        assert_eq!(analysis.lost_ids, vec!["lost"]);
        assert_eq!(analysis.duplicated, 1, "a planned retry is no duplicate");
        assert_eq!(analysis.duplicated_ids, vec!["twice"]);
        assert_eq!(analysis.unexpected, 1);
        assert_eq!(analysis.unexpected_ids, vec!["stranger"]);
        assert_eq!(analysis.recovered, 1);
        assert_eq!(analysis.executed, 6);
        assert_eq!(analysis.executions, 8);
        assert_eq!(analysis.reclaimed, 1, "only `reclaimed` skipped an attempt");
        assert_eq!(analysis.unfinished, 1, "the lost task never finished");
        assert_eq!(analysis.failed_but_executed, 0);
    }

    #[test]
    fn a_failed_attempt_that_ran_anyway_is_flagged_but_not_unexpected() {
        let history = History {
            submits: vec![fail(1)],
            resolved: HashMap::from([("run-1".to_string(), "t".to_string())]),
            executions: vec![run("t", 1, Succeeded, 5)],
        };
        let analysis = analyze(&history);
        assert_eq!(analysis.failed_but_executed, 1);
        assert_eq!(analysis.unexpected, 0);
    }

    #[test]
    fn the_same_attempt_executed_twice_is_a_duplicate() {
        let history = History {
            submits: vec![ok(1, "t")],
            resolved: HashMap::new(),
            executions: vec![run("t", 1, Retrying, 1), run("t", 1, Retrying, 2)],
        };
        assert_eq!(analyze(&history).duplicated, 1);
    }

    #[test]
    fn latency_percentiles_use_nearest_rank_over_acknowledged_submits() {
        let mut submits: Vec<_> = (1..=100).map(|op| ok(op, &format!("t{op}"))).collect();
        submits.push(info(1_000));
        let analysis = analyze(&History {
            submits,
            ..History::default()
        });
        assert_eq!(
            analysis.submit_latency_ms,
            Latency {
                p50: 50.0,
                p99: 99.0,
                max: 100.0
            }
        );
    }

    #[test]
    fn only_tasks_acknowledged_before_the_fault_and_run_after_the_heal_are_carried_over() {
        // ok(op) completes at 1000 + 11 * op: op 10 at 1110, op 20 at 1220, op 30 at 1330.
        let submits = vec![
            ok(10, "before-run-after"),
            ok(20, "before-run-during"),
            ok(30, "after"),
        ];
        let executions = vec![
            run("before-run-after", 1, Succeeded, 2_000),
            run("before-run-during", 1, Succeeded, 1_400),
            run("after", 1, Succeeded, 2_000),
        ];
        // Fault at 1300, healed at 1500.
        assert_eq!(carried_over(1_300, 1_500, &submits, &executions), 1);
    }

    #[test]
    fn recovery_waits_for_both_a_submit_and_an_execution() {
        // ok(op) completes at 1000 + 10*op + op.
        let submits = vec![ok(10, "a"), ok(20, "b")];
        let executions = vec![run("x", 1, Succeeded, 1_050), run("a", 1, Succeeded, 1_300)];
        // Healed at 1100: first ack completes at 1110 (op 10), first execution at 1300.
        assert_eq!(recovery_ms(1_100, &submits, &executions), Some(200));
        assert_eq!(recovery_ms(1_400, &submits, &executions), None);
    }
}
