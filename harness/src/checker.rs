//! The checker: Jepsen's total-queue analysis of one run's [history](crate::history).
//!
//! A pure function of the history: [`analyze`] reads the submits (ok / fail / info), the
//! executions the workers logged and the `final` state reconciliation read after the drain, and
//! counts per task:
//!
//! | count | meaning |
//! |---|---|
//! | `lost` | an `ok` submit, no execution, and a final state that is not waiting, running or cancelled (`missing` included) |
//! | `stuck` | an `ok` (or recovered) task whose final state is still `queued`, `scheduled`, `retrying` or `running` |
//! | `wrong_status` | final `succeeded` without a succeeded execution; `dead` although one succeeded; `cancelled` or `missing` with an execution |
//! | `duplicated` | two or more succeeded executions of one task |
//! | `unexpected` | an executed task that no `ok` submit returned and no `info` submit's key maps to |
//! | `recovered` | an `info` submit whose key maps to an executed task |
//! | `unplanned_exits` | services that ended without a step causing it |
//!
//! `reclaimed` counts tasks executed at attempt n > 1 with no logged execution of attempt n − 1:
//! an earlier execution died without logging (its worker was killed mid-task) and the task was
//! taken over. A scenario can require it to prove its fault hit in-flight work.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;
use taskq::event::Outcome;

use crate::history::{Event, Execution, FinalStatus, OpOutcome};

/// How many ids of each anomaly a report lists.
pub const SAMPLE_IDS: usize = 20;

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
    /// Executions logged.
    pub executions: u64,
    /// See the module docs.
    pub lost: u64,
    /// See the module docs.
    pub stuck: u64,
    /// See the module docs.
    pub wrong_status: u64,
    /// See the module docs.
    pub duplicated: u64,
    /// See the module docs.
    pub unexpected: u64,
    /// See the module docs.
    pub recovered: u64,
    /// See the module docs.
    pub unplanned_exits: u64,
    /// Executed again after an execution that died without logging (see the module docs).
    pub reclaimed: u64,
    /// Distinct workers that executed at least one task.
    pub workers: u64,
    /// Submit latency of acknowledged attempts.
    pub submit_latency_ms: Latency,
    /// Up to [`SAMPLE_IDS`] ids per anomaly, by count name.
    pub sample_ids: BTreeMap<String, Vec<String>>,
}

/// Runs the total-queue analysis over a history.
pub fn analyze(events: &[Event]) -> Analysis {
    let mut analysis = Analysis::default();

    let mut runs: BTreeMap<&str, Vec<&Execution>> = BTreeMap::new();
    let mut finals: HashMap<&str, FinalStatus> = HashMap::new();
    let mut key_to_id: HashMap<&str, &str> = HashMap::new();
    for event in events {
        match event {
            Event::Execution(e) => runs.entry(e.id.as_str()).or_default().push(e),
            Event::Final(f) => {
                // A lookup by key that found nothing names no task.
                if f.status != FinalStatus::Missing || f.key.is_none() {
                    finals.insert(f.id.as_str(), f.status);
                }
                if let Some(key) = &f.key
                    && f.status != FinalStatus::Missing
                {
                    key_to_id.insert(key.as_str(), f.id.as_str());
                }
            }
            Event::Exit(e) if !e.planned => analysis.unplanned_exits += 1,
            _ => {}
        }
    }
    analysis.executions = runs.values().map(Vec::len).sum::<usize>() as u64;
    analysis.workers = runs
        .values()
        .flatten()
        .map(|e| e.worker.as_str())
        .collect::<HashSet<_>>()
        .len() as u64;
    analysis.executed = runs.len() as u64;

    let mut acknowledged: BTreeSet<&str> = BTreeSet::new();
    let mut recovered: BTreeSet<&str> = BTreeSet::new();
    let mut latencies = Vec::new();
    for event in events {
        let Event::Submit(submit) = event else {
            continue;
        };
        analysis.attempted += 1;
        match submit.outcome {
            OpOutcome::Ok => {
                analysis.acknowledged += 1;
                latencies.push(submit.end_ms - submit.t_ms);
                if let Some(id) = &submit.id {
                    acknowledged.insert(id.as_str());
                }
            }
            OpOutcome::Fail => analysis.failed += 1,
            OpOutcome::Info => {
                analysis.indeterminate += 1;
                let id = submit
                    .id
                    .as_deref()
                    .or_else(|| key_to_id.get(submit.key.as_deref()?).copied());
                if let Some(id) = id.filter(|id| runs.contains_key(id)) {
                    recovered.insert(id);
                }
            }
        }
    }
    recovered.retain(|id| !acknowledged.contains(id));
    analysis.recovered = recovered.len() as u64;

    let mut samples: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut note = |count: &'static str, id: &str| {
        let ids = samples.entry(count).or_default();
        if ids.len() < SAMPLE_IDS {
            ids.push(id.to_owned());
        }
    };
    let succeeded = |id: &str| {
        runs.get(id)
            .is_some_and(|r| r.iter().any(|e| e.outcome == Outcome::Succeeded))
    };

    for id in &acknowledged {
        let status = finals.get(id).copied();
        if !runs.contains_key(id)
            && !status.is_some_and(|s| s.is_pending() || s == FinalStatus::Cancelled)
        {
            analysis.lost += 1;
            note("lost", id);
        }
    }
    for id in acknowledged.iter().chain(recovered.iter()) {
        if finals.get(id).is_some_and(|s| s.is_pending()) {
            analysis.stuck += 1;
            note("stuck", id);
        }
    }
    let mut judged: Vec<(&str, FinalStatus)> = finals.iter().map(|(id, s)| (*id, *s)).collect();
    judged.sort_unstable();
    for (id, status) in judged {
        let executed = runs.contains_key(id);
        let wrong = match status {
            FinalStatus::Succeeded => !succeeded(id),
            FinalStatus::Dead => succeeded(id),
            FinalStatus::Cancelled | FinalStatus::Missing => executed,
            _ => false,
        };
        if wrong {
            analysis.wrong_status += 1;
            note("wrong_status", id);
        }
    }

    let submitted: HashSet<&str> = acknowledged
        .iter()
        .chain(recovered.iter())
        .copied()
        .collect();
    for (id, executions) in &runs {
        let successes = executions
            .iter()
            .filter(|e| e.outcome == Outcome::Succeeded)
            .count();
        if successes >= 2 {
            analysis.duplicated += 1;
            note("duplicated", id);
        }
        if !submitted.contains(id) {
            analysis.unexpected += 1;
            note("unexpected", id);
        }
        if was_reclaimed(executions) {
            analysis.reclaimed += 1;
        }
    }
    analysis.submit_latency_ms = latency(&mut latencies);
    analysis.sample_ids = samples
        .into_iter()
        .map(|(count, ids)| (count.to_owned(), ids))
        .collect();
    analysis
}

/// Some attempt n > 1 ran although attempt n − 1 never logged an execution.
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

/// Time from `healed_ms` until the system works again: the later of the first acknowledged
/// submit answered after that instant and the first execution started after it. `None` when
/// either never happened.
pub fn recovery_ms(healed_ms: f64, events: &[Event]) -> Option<f64> {
    let first_ack = events
        .iter()
        .filter_map(|e| match e {
            Event::Submit(s) if s.outcome == OpOutcome::Ok && s.end_ms >= healed_ms => {
                Some(s.end_ms)
            }
            _ => None,
        })
        .min_by(f64::total_cmp)?;
    let first_execution = events
        .iter()
        .filter_map(|e| match e {
            Event::Execution(x) if x.t_ms >= healed_ms => Some(x.t_ms),
            _ => None,
        })
        .min_by(f64::total_cmp)?;
    Some(first_ack.max(first_execution) - healed_ms)
}

/// Tasks acknowledged before `fault_ms` whose first execution started after `healed_ms`: the
/// queue carried them across the fault (after a Redis kill, only its persistence can).
pub fn carried_over(fault_ms: f64, healed_ms: f64, events: &[Event]) -> u64 {
    let mut first_run: HashMap<&str, f64> = HashMap::new();
    for event in events {
        if let Event::Execution(e) = event {
            let entry = first_run.entry(e.id.as_str()).or_insert(e.t_ms);
            *entry = entry.min(e.t_ms);
        }
    }
    events
        .iter()
        .filter_map(|e| match e {
            Event::Submit(s) if s.outcome == OpOutcome::Ok && s.end_ms < fault_ms => {
                s.id.as_deref()
            }
            _ => None,
        })
        .filter(|id| first_run.get(id).is_some_and(|at| *at >= healed_ms))
        .count() as u64
}

/// From the first submit sent to the last one answered, milliseconds: the load as the server saw
/// it. `None` without submits.
pub fn load_window(events: &[Event]) -> Option<(f64, f64)> {
    let submits = events.iter().filter_map(|e| match e {
        Event::Submit(s) => Some(s),
        _ => None,
    });
    submits.fold(None, |window, s| match window {
        None => Some((s.t_ms, s.end_ms)),
        Some((from, to)) => Some((f64::min(from, s.t_ms), f64::max(to, s.end_ms))),
    })
}

/// From the end of the load until every task that had to finish (acknowledged and not
/// cancelled, or recovered) had a final execution, milliseconds (0 when all finished during
/// the load). `None` when one never did.
pub fn drain_ms(events: &[Event]) -> Option<f64> {
    let (_, load_end) = load_window(events)?;
    let mut finished_at: HashMap<&str, f64> = HashMap::new();
    let mut cancelled: HashSet<&str> = HashSet::new();
    let mut key_to_id: HashMap<&str, &str> = HashMap::new();
    for event in events {
        match event {
            Event::Execution(e) if e.outcome.is_final() => {
                let end = e.end_ms.unwrap_or(e.t_ms);
                let at = finished_at.entry(e.id.as_str()).or_insert(end);
                *at = at.min(end);
            }
            Event::Final(f) if f.status == FinalStatus::Cancelled => {
                cancelled.insert(f.id.as_str());
            }
            Event::Final(f) if f.status != FinalStatus::Missing => {
                if let Some(key) = &f.key {
                    key_to_id.insert(key.as_str(), f.id.as_str());
                }
            }
            _ => {}
        }
    }
    let executed: HashSet<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Execution(x) => Some(x.id.as_str()),
            _ => None,
        })
        .collect();
    let mut latest = load_end;
    for event in events {
        let Event::Submit(s) = event else { continue };
        let id = match s.outcome {
            OpOutcome::Ok => s.id.as_deref(),
            OpOutcome::Info => s
                .key
                .as_deref()
                .and_then(|k| key_to_id.get(k).copied())
                .filter(|id| executed.contains(id)),
            OpOutcome::Fail => None,
        };
        let Some(id) = id.filter(|id| !cancelled.contains(id)) else {
            continue;
        };
        latest = latest.max(*finished_at.get(id)?);
    }
    Some(latest - load_end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Exit, Final, Submit};

    fn submit(outcome: OpOutcome, id: Option<&str>, key: &str) -> Event {
        Event::Submit(Submit {
            t_ms: 0.0,
            end_ms: 2.0,
            outcome,
            status: match outcome {
                OpOutcome::Ok => Some(201),
                OpOutcome::Fail => Some(422),
                OpOutcome::Info => None,
            },
            id: id.map(str::to_owned),
            key: Some(key.to_owned()),
            priority: Some(5),
        })
    }

    fn ok(id: &str) -> Event {
        submit(OpOutcome::Ok, Some(id), &format!("k-{id}"))
    }

    fn info(key: &str) -> Event {
        submit(OpOutcome::Info, None, key)
    }

    fn run(id: &str, attempt: u32, outcome: Outcome) -> Event {
        Event::Execution(Execution {
            t_ms: 10.0 * f64::from(attempt),
            id: id.to_owned(),
            attempt,
            worker: "w1".into(),
            outcome,
            end_ms: Some(10.0 * f64::from(attempt) + 1.0),
        })
    }

    fn fin(id: &str, status: FinalStatus) -> Event {
        Event::Final(Final {
            id: id.to_owned(),
            key: None,
            status,
            attempts: Some(1),
        })
    }

    fn fin_by_key(id: &str, key: &str, status: FinalStatus) -> Event {
        Event::Final(Final {
            id: id.to_owned(),
            key: Some(key.to_owned()),
            status,
            attempts: Some(1),
        })
    }

    #[test]
    fn a_clean_history_has_no_anomaly() {
        let a = analyze(&[
            ok("a"),
            run("a", 1, Outcome::Retrying),
            run("a", 2, Outcome::Succeeded),
            fin("a", FinalStatus::Succeeded),
        ]);
        assert_eq!((a.acknowledged, a.executed, a.executions), (1, 1, 2));
        assert_eq!(a.workers, 1);
        assert_eq!(
            (a.lost, a.stuck, a.wrong_status, a.duplicated, a.unexpected),
            (0, 0, 0, 0, 0),
            "{a:?}"
        );
    }

    #[test]
    fn an_acknowledged_task_with_no_execution_and_no_record_is_lost() {
        let a = analyze(&[ok("a"), fin("a", FinalStatus::Missing)]);
        assert_eq!(a.lost, 1, "{a:?}");
        assert_eq!(a.sample_ids["lost"], vec!["a".to_owned()]);
    }

    #[test]
    fn an_acknowledged_task_never_reconciled_and_never_run_is_lost() {
        assert_eq!(analyze(&[ok("a")]).lost, 1);
    }

    #[test]
    fn a_task_still_queued_after_the_drain_is_stuck_not_lost() {
        let a = analyze(&[ok("a"), fin("a", FinalStatus::Queued)]);
        assert_eq!((a.lost, a.stuck), (0, 1), "{a:?}");
    }

    #[test]
    fn a_task_running_after_an_execution_is_stuck() {
        let a = analyze(&[
            ok("a"),
            run("a", 1, Outcome::Retrying),
            fin("a", FinalStatus::Running),
        ]);
        assert_eq!((a.lost, a.stuck), (0, 1), "{a:?}");
    }

    #[test]
    fn a_cancelled_task_that_never_ran_is_neither_lost_nor_wrong() {
        let a = analyze(&[ok("a"), fin("a", FinalStatus::Cancelled)]);
        assert_eq!((a.lost, a.stuck, a.wrong_status), (0, 0, 0), "{a:?}");
    }

    #[test]
    fn a_cancelled_task_that_ran_has_the_wrong_status() {
        let a = analyze(&[
            ok("a"),
            run("a", 1, Outcome::Succeeded),
            fin("a", FinalStatus::Cancelled),
        ]);
        assert_eq!(a.wrong_status, 1, "{a:?}");
    }

    #[test]
    fn dead_after_a_success_has_the_wrong_status() {
        let a = analyze(&[
            ok("a"),
            run("a", 1, Outcome::Succeeded),
            fin("a", FinalStatus::Dead),
        ]);
        assert_eq!(a.wrong_status, 1, "{a:?}");
    }

    #[test]
    fn succeeded_without_a_successful_execution_has_the_wrong_status() {
        let a = analyze(&[
            ok("a"),
            run("a", 1, Outcome::Retrying),
            fin("a", FinalStatus::Succeeded),
        ]);
        assert_eq!(a.wrong_status, 1, "{a:?}");
    }

    #[test]
    fn a_missing_record_after_an_execution_has_the_wrong_status_and_is_not_lost() {
        let a = analyze(&[
            ok("a"),
            run("a", 1, Outcome::Succeeded),
            fin("a", FinalStatus::Missing),
        ]);
        assert_eq!((a.wrong_status, a.lost), (1, 0), "{a:?}");
    }

    #[test]
    fn two_successes_are_a_duplicate_but_a_retry_is_not() {
        let a = analyze(&[
            ok("a"),
            run("a", 1, Outcome::Succeeded),
            run("a", 2, Outcome::Succeeded),
            ok("b"),
            run("b", 1, Outcome::Retrying),
            run("b", 2, Outcome::Succeeded),
        ]);
        assert_eq!(a.duplicated, 1, "{a:?}");
        assert_eq!(a.sample_ids["duplicated"], vec!["a".to_owned()]);
    }

    #[test]
    fn an_info_submit_that_executed_is_recovered_not_unexpected() {
        let a = analyze(&[
            info("k9"),
            run("x", 1, Outcome::Succeeded),
            fin_by_key("x", "k9", FinalStatus::Succeeded),
        ]);
        assert_eq!(
            (a.recovered, a.unexpected, a.indeterminate),
            (1, 0, 1),
            "{a:?}"
        );
    }

    #[test]
    fn a_recovered_task_left_waiting_is_stuck() {
        let a = analyze(&[
            info("k9"),
            run("x", 1, Outcome::Retrying),
            fin_by_key("x", "k9", FinalStatus::Retrying),
        ]);
        assert_eq!((a.recovered, a.stuck), (1, 1), "{a:?}");
    }

    #[test]
    fn an_execution_no_submit_explains_is_unexpected() {
        let a = analyze(&[
            ok("a"),
            run("a", 1, Outcome::Succeeded),
            run("zzz", 1, Outcome::Succeeded),
        ]);
        assert_eq!(a.unexpected, 1, "{a:?}");
        assert_eq!(a.sample_ids["unexpected"], vec!["zzz".to_owned()]);
    }

    #[test]
    fn a_failed_submit_whose_key_maps_to_an_executed_task_is_unexpected() {
        let a = analyze(&[
            submit(OpOutcome::Fail, None, "k1"),
            run("x", 1, Outcome::Succeeded),
            fin_by_key("x", "k1", FinalStatus::Succeeded),
        ]);
        assert_eq!((a.unexpected, a.recovered), (1, 0), "{a:?}");
    }

    #[test]
    fn only_unplanned_exits_count() {
        let exit = |planned| {
            Event::Exit(Exit {
                t_ms: 1.0,
                service: "worker.1".into(),
                code: Some(9),
                planned,
            })
        };
        assert_eq!(analyze(&[exit(true), exit(false)]).unplanned_exits, 1);
    }

    #[test]
    fn an_attempt_after_one_that_never_logged_was_reclaimed() {
        let a = analyze(&[ok("a"), run("a", 2, Outcome::Succeeded)]);
        assert_eq!(a.reclaimed, 1, "{a:?}");
    }

    #[test]
    fn carried_over_counts_tasks_acknowledged_before_and_run_after_the_fault() {
        let events = [
            ok("a"),
            run("a", 1, Outcome::Succeeded),
            ok("b"),
            Event::Execution(Execution {
                t_ms: 500.0,
                id: "b".into(),
                attempt: 1,
                worker: "w".into(),
                outcome: Outcome::Succeeded,
                end_ms: None,
            }),
        ];
        assert_eq!(carried_over(100.0, 200.0, &events), 1);
        assert_eq!(
            recovery_ms(200.0, &events),
            None,
            "no submit after the heal"
        );
    }

    #[test]
    fn the_drain_ends_with_the_last_final_execution_of_a_task_that_had_to_finish() {
        let events = [
            ok("a"),
            run("a", 1, Outcome::Retrying),
            run("a", 2, Outcome::Succeeded),
            ok("c"),
            fin("c", FinalStatus::Cancelled),
        ];
        // The load ends at 2 ms; a's final execution ends at 21 ms; c was cancelled.
        assert_eq!(drain_ms(&events), Some(19.0));
        assert_eq!(drain_ms(&[ok("a"), run("a", 1, Outcome::Retrying)]), None);
    }
}
