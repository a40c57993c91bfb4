//! The judgement of a run: a [history](crate::history) in, the report's counts and verdicts
//! out. Pure, so `harness run` and `harness check` (which has only the saved history) judge
//! alike.

use crate::{
    checker::{self, Analysis},
    history::Event,
    report::{ExpectationReport, Report, StepReport, secs},
    scenario::{Action, Expectations, Subject, Target},
};

/// The Redis Cluster shard whose primary a step takes away (kill, stop, pause, disconnect, or
/// a failover to its replica): its recovery is the shard's own, measured on the tasks of its
/// partition.
fn shard_outage(step: &StepReport) -> Option<u32> {
    match step.target {
        Subject::Service(Target::Primary(shard))
            if matches!(
                step.action,
                Action::Kill | Action::Stop | Action::Pause | Action::Disconnect | Action::Failover
            ) =>
        {
            Some(shard)
        }
        _ => None,
    }
}

/// Whether the report measures recovery after this step: healing steps, `power-loss`, and
/// outages of a cluster shard's primary.
fn measures_recovery(step: &StepReport) -> bool {
    step.action.is_recovery_point() || shard_outage(step).is_some()
}

/// Fills `report` from a history (counts, latency, drain, recovery per healing step) and checks
/// the expectations: the one judgement for `harness run` and `harness check`. `report.steps[i]`
/// must be the i-th `fault` event of the history. `partitions` is the queue's partition count
/// (a Redis Cluster's shard count; 1 on a single Redis).
pub fn judge(report: &mut Report, expect: &Expectations, partitions: u16, events: Vec<Event>) {
    let analysis = checker::analyze(&events);
    let faults = crate::history::faults(&events);
    for index in 0..report.steps.len().min(faults.len()) {
        let step = &report.steps[index];
        // A power loss is a crash and its restart in one step: its own fault and its healing.
        let instant = step.action == Action::PowerLoss;
        if step.ok
            && let Some(shard) = shard_outage(step)
        {
            // From the end of the step: a kill takes effect once the node is gone.
            let from_ms = faults[index].t_ms + step.duration_ms as f64;
            let partition = u16::try_from(shard - 1).unwrap_or(u16::MAX);
            let recovery = checker::partition_recovery_ms(from_ms, partition, partitions, &events);
            report.steps[index].recovery_ms = recovery.map(|ms| ms.max(0.0).ceil() as u64);
            continue;
        }
        if !(step.ok && step.action.is_recovery_point()) {
            continue;
        }
        let healed_ms = faults[index].t_ms;
        let recovery = checker::recovery_ms(healed_ms, &events);
        // The fault this step heals: the latest earlier fault on the same target.
        let fault_ms = if instant {
            Some(healed_ms)
        } else {
            (0..index)
                .rev()
                .find(|i| {
                    step.target.heals(&report.steps[*i].target)
                        && report.steps[*i].action.is_fault()
                })
                .map(|i| faults[i].t_ms)
        };
        let carried = fault_ms.map(|f| checker::carried_over(f, healed_ms, &events));
        let step = &mut report.steps[index];
        step.recovery_ms = recovery.map(|ms| ms.max(0.0).ceil() as u64);
        step.carried_over = carried;
    }
    report.load_ms = checker::load_window(&events)
        .map(|(from, to)| (to - from).max(1.0) as u64)
        .unwrap_or(report.load_ms);
    report.drain_ms = checker::drain_ms(&events).map(|ms| ms.max(0.0).ceil() as u64);
    fill_counts(report, &analysis, report.load_ms);
    report.expectations = evaluate(expect, report);
    report.passed = report.error.is_none() && report.expectations.iter().all(|e| e.passed);
    report.history = events;
}

/// The steps a history's `fault` events record (for `harness check`, which has no run).
pub fn steps_from_history(events: &[Event]) -> Result<Vec<StepReport>, String> {
    crate::history::faults(events)
        .into_iter()
        .map(|fault| {
            let action: crate::scenario::Action =
                serde_json::from_value(serde_json::Value::String(fault.action.clone()))
                    .map_err(|_| format!("unknown action `{}` in a fault event", fault.action))?;
            let target = fault.subject()?;
            let at_ms = fault.t_ms.max(0.0) as u64;
            Ok(StepReport {
                at_ms,
                planned_at_ms: at_ms,
                action,
                target,
                ok: fault.ok,
                message: String::new(),
                duration_ms: 0,
                origin: crate::scenario::StepOrigin::File,
                recovery_ms: None,
                carried_over: None,
            })
        })
        .collect()
}

fn fill_counts(report: &mut Report, analysis: &Analysis, load_ms: u64) {
    report.attempted = analysis.attempted;
    report.acknowledged = analysis.acknowledged;
    report.failed = analysis.failed;
    report.indeterminate = analysis.indeterminate;
    report.executed = analysis.executed;
    report.executions = analysis.executions;
    report.lost = analysis.lost;
    report.unexpected = analysis.unexpected;
    report.duplicated = analysis.duplicated;
    report.recovered = analysis.recovered;
    report.stuck = analysis.stuck;
    report.wrong_status = analysis.wrong_status;
    report.unplanned_exits = analysis.unplanned_exits;
    report.reclaimed = analysis.reclaimed;
    report.unreadable = analysis.unreadable;
    report.priority_inversions = analysis.priority_inversions;
    report.cancelled = analysis.cancelled;
    report.unavailable = analysis.failed + analysis.indeterminate;
    report.workers_executed = analysis.workers;
    report.carried_over = report.steps.iter().filter_map(|s| s.carried_over).sum();
    report.submit_latency_ms = analysis.submit_latency_ms;
    report.start_wait_ms = analysis.start_wait_ms;
    report.forgotten = analysis.forgotten;
    report.live_takeovers = analysis.live_takeovers;
    report.forgotten_ack_age_ms = analysis.forgotten_ack_age_ms;
    report.throughput_per_s = if load_ms == 0 {
        0.0
    } else {
        ((analysis.acknowledged as f64 / (load_ms as f64 / 1000.0)) * 10.0).round() / 10.0
    };
    report.sample_ids = analysis.sample_ids.clone();
    let healing: Vec<Option<u64>> = report
        .steps
        .iter()
        .filter(|s| s.ok && (s.action.is_healing() || shard_outage(s).is_some()))
        .map(|s| s.recovery_ms)
        .collect();
    report.recovery_ms = if healing.is_empty() || healing.iter().any(Option::is_none) {
        None
    } else {
        healing.into_iter().flatten().max()
    };
}

/// Checks the `[expect]` section (plus: every step succeeded) against the counts.
pub fn evaluate(expect: &Expectations, report: &Report) -> Vec<ExpectationReport> {
    let at_most = |name: &str, limit: u64, actual: u64| ExpectationReport {
        name: name.to_string(),
        expected: format!("<= {limit}"),
        actual: actual.to_string(),
        passed: actual <= limit,
    };
    let mut out = vec![
        at_most("lost", expect.lost, report.lost),
        at_most("stuck", expect.stuck, report.stuck),
        at_most("wrong_status", expect.wrong_status, report.wrong_status),
        at_most("unexpected", expect.unexpected, report.unexpected),
        at_most(
            "unplanned_exits",
            expect.unplanned_exits,
            report.unplanned_exits,
        ),
        at_most("unreadable", expect.unreadable, report.unreadable),
    ];
    if let Some(limit) = expect.max_duplicated {
        out.push(at_most("max_duplicated", limit, report.duplicated));
    }
    if let Some(limit) = expect.max_priority_inversions {
        out.push(at_most(
            "max_priority_inversions",
            limit,
            report.priority_inversions,
        ));
    }
    let drain_limit = expect.drain_within.as_millis() as u64;
    out.push(ExpectationReport {
        name: "drain_within".into(),
        expected: format!("<= {}", secs(drain_limit)),
        actual: match report.drain_ms {
            Some(ms) => secs(ms),
            None => "not drained: a task that had to finish has no final execution".into(),
        },
        passed: report.drain_ms.is_some_and(|ms| ms <= drain_limit),
    });
    if let Some(limit) = expect.recovery_within {
        let limit = limit.as_millis() as u64;
        let healing: Vec<&StepReport> = report
            .steps
            .iter()
            .filter(|s| measures_recovery(s))
            .collect();
        let never = healing.iter().filter(|s| s.recovery_ms.is_none()).count();
        out.push(ExpectationReport {
            name: "recovery_within".into(),
            expected: format!(
                "<= {} after each of {} healing step(s)",
                secs(limit),
                healing.len()
            ),
            actual: if never > 0 {
                format!("{never} healing step(s) never recovered")
            } else {
                healing
                    .iter()
                    .filter_map(|s| s.recovery_ms)
                    .max()
                    .map(secs)
                    .unwrap_or_else(|| "no healing step".into())
            },
            passed: never == 0
                && healing
                    .iter()
                    .all(|s| s.recovery_ms.is_some_and(|r| r <= limit)),
        });
    }
    if let Some(minimum) = expect.min_carried_over {
        out.push(ExpectationReport {
            name: "min_carried_over".into(),
            expected: format!(">= {minimum}"),
            actual: report.carried_over.to_string(),
            passed: report.carried_over >= minimum,
        });
    }
    if let Some(minimum) = expect.min_unavailable {
        out.push(ExpectationReport {
            name: "min_unavailable".into(),
            expected: format!(">= {minimum} submits refused or unanswered"),
            actual: report.unavailable.to_string(),
            passed: report.unavailable >= minimum,
        });
    }
    if let Some(minimum) = expect.min_workers {
        out.push(ExpectationReport {
            name: "min_workers".into(),
            expected: format!(">= {minimum} distinct workers executed"),
            actual: report.workers_executed.to_string(),
            passed: report.workers_executed >= minimum,
        });
    }
    if let Some(maximum) = expect.max_live_takeovers {
        out.push(ExpectationReport {
            name: "max_live_takeovers".into(),
            expected: format!("<= {maximum} tasks taken over from a live worker"),
            actual: report.live_takeovers.to_string(),
            passed: report.live_takeovers <= maximum,
        });
    }
    if let Some(minimum) = expect.min_start_wait_p99 {
        let minimum_ms = minimum.as_secs_f64() * 1000.0;
        out.push(ExpectationReport {
            name: "min_start_wait_p99".into(),
            expected: format!(">= {minimum_ms} ms p99 from acknowledgement to first start"),
            actual: format!("{} ms", report.start_wait_ms.p99),
            passed: report.start_wait_ms.p99 >= minimum_ms,
        });
    }
    if let Some(minimum) = expect.min_reclaimed {
        out.push(ExpectationReport {
            name: "min_reclaimed".into(),
            expected: format!(">= {minimum}"),
            actual: report.reclaimed.to_string(),
            passed: report.reclaimed >= minimum,
        });
    }
    out.push(ExpectationReport {
        name: "min_acknowledged".into(),
        expected: format!(">= {}", expect.min_acknowledged),
        actual: report.acknowledged.to_string(),
        passed: report.acknowledged >= expect.min_acknowledged,
    });
    let failed_steps: Vec<String> = report
        .steps
        .iter()
        .filter(|s| !s.ok)
        .map(|s| format!("{} {}", s.action, s.target))
        .collect();
    out.push(ExpectationReport {
        name: "steps_ok".into(),
        expected: format!("all {} step(s) succeed", report.steps.len()),
        actual: if failed_steps.is_empty() {
            "all succeeded".into()
        } else {
            format!("failed: {}", failed_steps.join(", "))
        },
        passed: failed_steps.is_empty(),
    });
    out
}
