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
//! | `wrong_status` | final `succeeded` without a succeeded execution; `dead` although one succeeded; `cancelled` with a succeeded execution, or with one that started after a cancel was answered 200 (a failed attempt before the cancel is history: a task waiting for its retry may be cancelled); `missing` with an execution; anything but `cancelled` (or `missing`) after a cancel answered 200 |
//! | `duplicated` | two or more succeeded executions of one task |
//! | `unexpected` | an executed task that no `ok` submit returned and no `info` submit's key maps to |
//! | `recovered` | an `info` submit whose key maps to an executed task |
//! | `unplanned_exits` | services that ended without a step causing it |
//! | `unreadable` | reads of an acknowledged task answered 404 |
//! | `priority_inversions` | tasks whose first execution started while a more urgent task, acknowledged before they were submitted, had not started yet (by more than [`INVERSION_TOLERANCE_MS`]) |
//!
//! `reclaimed` counts tasks executed at attempt n > 1 whose attempt n − 1 did not end in
//! `retrying`: it died without logging (its worker was killed mid-task), or its outcome never
//! took effect (its worker was cut off or stalled), and the task was taken over. A scenario can
//! require it to prove its fault hit in-flight work.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;
use taskq::event::Outcome;

use crate::history::{Event, Execution, FinalStatus, OpOutcome, Submit};

/// How many ids of each anomaly a report lists.
pub const SAMPLE_IDS: usize = 20;

/// How much later than a less urgent task a more urgent one may start without an inversion
/// being counted: starts come from worker log lines (line time minus duration), and tasks one
/// claim starts together begin within a few milliseconds of each other.
pub const INVERSION_TOLERANCE_MS: f64 = 100.0;

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
    /// See the module docs.
    pub unreadable: u64,
    /// See the module docs.
    pub priority_inversions: u64,
    /// Cancels answered 200 (the task was cancelled).
    pub cancelled: u64,
    /// Executed again after an execution that died without logging (see the module docs).
    pub reclaimed: u64,
    /// Distinct workers that executed at least one task.
    pub workers: u64,
    /// Submit latency of acknowledged attempts.
    pub submit_latency_ms: Latency,
    /// From acknowledgement to the first attempt's start, ms (acknowledged, unscheduled tasks
    /// whose first attempt logged).
    pub start_wait_ms: Latency,
    /// Acknowledged tasks whose record is gone after a Redis crash (`lost`, or `missing` after
    /// an execution): how long before the crash (`kill`, `power-loss`, `stop` or `restart` of
    /// Redis) that followed their acknowledgement they were acknowledged, ms. The measured
    /// window of writes a persistence setting gives up.
    pub forgotten_ack_age_ms: Latency,
    /// How many acknowledged tasks `forgotten_ack_age_ms` covers.
    pub forgotten: u64,
    /// Tasks taken over from a live worker: an attempt logged by a worker no step faulted and
    /// that never exited, which did not end in `retrying`, and was followed by another attempt.
    pub live_takeovers: u64,
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

    for event in events {
        match event {
            Event::Read(read)
                if read.status == Some(404) && acknowledged.contains(read.id.as_str()) =>
            {
                analysis.unreadable += 1;
                note("unreadable", &read.id);
            }
            Event::Cancel(cancel) if cancel.outcome == OpOutcome::Ok => {
                analysis.cancelled += 1;
                let after = finals.get(cancel.id.as_str()).copied();
                if after.is_some_and(|s| s != FinalStatus::Cancelled && s != FinalStatus::Missing) {
                    analysis.wrong_status += 1;
                    note("wrong_status", &cancel.id);
                }
            }
            _ => {}
        }
    }
    let inverted = priority_inversions(events, &runs);
    analysis.priority_inversions = inverted.len() as u64;
    for id in inverted {
        note("priority_inversions", id);
    }

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
    // When each task's first cancel answered 200 ended: no execution may start after it.
    let mut cancelled_at: HashMap<&str, f64> = HashMap::new();
    for event in events {
        if let Event::Cancel(c) = event
            && c.outcome == OpOutcome::Ok
        {
            let at = cancelled_at.entry(c.id.as_str()).or_insert(c.end_ms);
            *at = at.min(c.end_ms);
        }
    }
    let mut judged: Vec<(&str, FinalStatus)> = finals.iter().map(|(id, s)| (*id, *s)).collect();
    judged.sort_unstable();
    for (id, status) in judged {
        let executed = runs.contains_key(id);
        let wrong = match status {
            FinalStatus::Succeeded => !succeeded(id),
            FinalStatus::Dead => succeeded(id),
            // A task waiting for its retry may be cancelled: failed executions before the cancel
            // are its history. A success, or an execution after the cancel, is not.
            FinalStatus::Cancelled => {
                succeeded(id)
                    || cancelled_at.get(id).is_some_and(|at| {
                        runs.get(id).is_some_and(|r| r.iter().any(|e| e.t_ms > *at))
                    })
            }
            FinalStatus::Missing => executed,
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
    analysis.start_wait_ms = latency(&mut start_waits(events, &runs));
    let live = live_takeovers(events, &runs);
    analysis.live_takeovers = live.len() as u64;
    for id in live {
        note("live_takeovers", id);
    }
    let mut ages = forgotten_ack_ages(events, &finals);
    analysis.forgotten = ages.len() as u64;
    analysis.forgotten_ack_age_ms = latency(&mut ages);
    analysis.sample_ids = samples
        .into_iter()
        .map(|(count, ids)| (count.to_owned(), ids))
        .collect();
    analysis
}

/// The tasks taken over from a live worker (see [`Analysis::live_takeovers`]). A step on
/// `worker`, or a link fault on it, counts for every replica.
fn live_takeovers<'a>(events: &[Event], runs: &BTreeMap<&'a str, Vec<&Execution>>) -> Vec<&'a str> {
    let mut touched: HashSet<&str> = HashSet::new();
    for event in events {
        match event {
            Event::Fault(f) => {
                touched.extend(f.target.as_deref());
                touched.extend(f.between.iter().flatten().map(String::as_str));
            }
            Event::Exit(e) => {
                touched.insert(e.service.as_str());
            }
            _ => {}
        }
    }
    let live = |service: &str| {
        let every_worker = service.starts_with("worker.") && touched.contains("worker");
        !(touched.contains(service) || every_worker)
    };
    runs.iter()
        .filter(|(_, runs)| {
            runs.iter().any(|e| {
                e.outcome != Outcome::Retrying
                    && e.service.as_deref().is_some_and(live)
                    && runs.iter().any(|later| later.attempt == e.attempt + 1)
            })
        })
        .map(|(id, _)| *id)
        .collect()
}

/// For each acknowledged task whose final state is `missing`, the time from its acknowledgement
/// to the next Redis crash, ms (tasks acknowledged after the last crash are left out).
fn forgotten_ack_ages(events: &[Event], finals: &HashMap<&str, FinalStatus>) -> Vec<f64> {
    let mut crashes: Vec<f64> = crate::history::faults(events)
        .into_iter()
        .filter(|f| {
            f.ok && f.target.as_deref() == Some("redis")
                && matches!(
                    f.action.as_str(),
                    "kill" | "power-loss" | "stop" | "restart"
                )
        })
        .map(|f| f.t_ms)
        .collect();
    crashes.sort_by(f64::total_cmp);
    events
        .iter()
        .filter_map(|e| match e {
            Event::Submit(s) if s.outcome == OpOutcome::Ok => {
                let id = s.id.as_deref()?;
                if finals.get(id) != Some(&FinalStatus::Missing) {
                    return None;
                }
                let crash = crashes.iter().find(|c| **c >= s.end_ms)?;
                Some(crash - s.end_ms)
            }
            _ => None,
        })
        .collect()
}

/// Every acknowledged, unscheduled submit (a scheduled task waits for its time, not in the
/// queue) with the start of its task's first attempt, ms; tasks whose first attempt never logged
/// (its worker died) are left out.
fn first_starts<'a>(
    events: &'a [Event],
    runs: &BTreeMap<&str, Vec<&Execution>>,
) -> Vec<(&'a Submit, f64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Submit(s) if s.outcome == OpOutcome::Ok && s.delay_ms.is_none() => {
                let started_ms = runs
                    .get(s.id.as_deref()?)?
                    .iter()
                    .filter(|e| e.attempt == 1 && e.t_ms.is_finite())
                    .map(|e| e.t_ms)
                    .min_by(f64::total_cmp)?;
                Some((s, started_ms))
            }
            _ => None,
        })
        .collect()
}

/// How long each acknowledged, unscheduled task waited from its acknowledgement to the start of
/// its first attempt, ms (tasks whose first attempt never logged are left out).
fn start_waits(events: &[Event], runs: &BTreeMap<&str, Vec<&Execution>>) -> Vec<f64> {
    first_starts(events, runs)
        .into_iter()
        .map(|(s, started_ms)| (started_ms - s.end_ms).max(0.0))
        .collect()
}

/// The acknowledged tasks whose first execution started while a more urgent task, acknowledged
/// before they were submitted, had not started yet (by more than [`INVERSION_TOLERANCE_MS`]).
/// Only first attempts count (a retry waits in the retry schedule, not in the queue), a task
/// whose first attempt never logged (its worker died) is left out, and so is a more urgent task
/// whose wait overlapped a fault ([`fault_windows`]): it may have been delivered to the worker
/// the fault took away, and waited for the takeover.
fn priority_inversions<'a>(
    events: &'a [Event],
    runs: &BTreeMap<&str, Vec<&Execution>>,
) -> Vec<&'a str> {
    struct Task<'a> {
        id: &'a str,
        priority: u8,
        sent_ms: f64,
        acked_ms: f64,
        started_ms: f64,
    }
    let mut tasks: Vec<Task> = first_starts(events, runs)
        .into_iter()
        .filter_map(|(s, started_ms)| {
            Some(Task {
                id: s.id.as_deref()?,
                priority: s.priority?,
                sent_ms: s.t_ms,
                acked_ms: s.end_ms,
                started_ms,
            })
        })
        .collect();
    // Sweep the tasks by submit time, adding every task acknowledged before it to the latest
    // first start seen per priority.
    tasks.sort_by(|a, b| a.sent_ms.total_cmp(&b.sent_ms));
    let windows = fault_windows(events);
    let mut acked: Vec<(f64, u8, f64)> = tasks
        .iter()
        .filter(|t| {
            !windows
                .iter()
                .any(|(from, to)| *from <= t.started_ms && *to >= t.acked_ms)
        })
        .map(|t| (t.acked_ms, t.priority, t.started_ms))
        .collect();
    acked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut latest_start = [f64::NEG_INFINITY; 11];
    let mut next = 0;
    let mut inverted = Vec::new();
    for task in &tasks {
        while next < acked.len() && acked[next].0 < task.sent_ms {
            let (_, priority, started) = acked[next];
            let slot = &mut latest_start[usize::from(priority.min(10))];
            *slot = slot.max(started);
            next += 1;
        }
        let more_urgent = &latest_start[..usize::from(task.priority.min(10))];
        if more_urgent
            .iter()
            .any(|started| *started > task.started_ms + INVERSION_TOLERANCE_MS)
        {
            inverted.push(task.id);
        }
    }
    inverted
}

/// When faults were in force: from a `kill`, `stop`, `pause`, `disconnect`, `partition`, `loss`
/// or `disk-full` to the next step that heals the same service or link (or for ever), and the
/// instant of a `restart`, `scale` or `power-loss`.
fn fault_windows(events: &[Event]) -> Vec<(f64, f64)> {
    let faults = crate::history::faults(events);
    faults
        .iter()
        .enumerate()
        .filter_map(|(i, fault)| {
            let heals: &[&str] = match fault.action.as_str() {
                "kill" | "stop" => &["start", "restart"],
                "pause" => &["unpause", "restart"],
                "disconnect" => &["connect", "restart"],
                "partition" | "loss" | "disk-full" => &["heal"],
                "restart" | "scale" | "power-loss" => return Some((fault.t_ms, fault.t_ms)),
                _ => return None,
            };
            let subject = fault.subject().ok()?;
            let healed = faults[i + 1..]
                .iter()
                .find(|later| {
                    heals.contains(&later.action.as_str())
                        && later.subject().is_ok_and(|s| s.heals(&subject))
                })
                .map_or(f64::INFINITY, |later| later.t_ms);
            Some((fault.t_ms, healed))
        })
        .collect()
}

/// Some attempt n > 1 ran although attempt n − 1 did not end in `retrying`: it never logged an
/// execution (its worker died mid-task), or it logged one whose outcome never took effect (its
/// worker was cut off from Redis, or stalled, and the task was taken over).
fn was_reclaimed(runs: &[&Execution]) -> bool {
    let retried: HashSet<u32> = runs
        .iter()
        .filter(|e| e.outcome == Outcome::Retrying)
        .map(|e| e.attempt)
        .collect();
    runs.iter()
        .any(|e| e.attempt > 1 && !retried.contains(&(e.attempt - 1)))
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

/// The recovery of one partition of a queue split into `count` (a Redis Cluster shard's), after
/// a fault on the shard's primary at `from_ms`: until the first task submitted after the fault
/// into `partition` was acknowledged and started, i.e. until the shard served clients again,
/// whatever the other shards did meanwhile (a submit sent before the fault may be answered after
/// it, from a write the primary made before it died).
pub fn partition_recovery_ms(
    from_ms: f64,
    partition: u16,
    count: u16,
    events: &[Event],
) -> Option<f64> {
    let in_partition = |id: &str| {
        taskq::TaskId::parse(id).is_ok_and(|task_id| task_id.partition(count) == partition)
    };
    let mut first_start: HashMap<&str, f64> = HashMap::new();
    for event in events {
        if let Event::Execution(x) = event {
            let at = first_start.entry(x.id.as_str()).or_insert(x.t_ms);
            *at = at.min(x.t_ms);
        }
    }
    events
        .iter()
        .filter_map(|e| match e {
            Event::Submit(s) if s.outcome == OpOutcome::Ok && s.t_ms >= from_ms => {
                let id = s.id.as_deref().filter(|id| in_partition(id))?;
                Some(s.end_ms.max(*first_start.get(id)?))
            }
            _ => None,
        })
        .min_by(f64::total_cmp)
        .map(|served| served - from_ms)
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
    use crate::history::{Cancel, Exit, Fault, Final, Read, Submit};

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
            delay_ms: None,
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
            service: None,
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

    /// An acknowledged submit of `id` at `priority`, sent at `sent` and answered 2 ms later.
    fn ok_at(id: &str, priority: u8, sent: f64) -> Event {
        Event::Submit(Submit {
            t_ms: sent,
            end_ms: sent + 2.0,
            outcome: OpOutcome::Ok,
            status: Some(201),
            id: Some(id.to_owned()),
            key: Some(format!("k-{id}")),
            priority: Some(priority),
            delay_ms: None,
        })
    }

    /// The first execution of `id`, started at `at`.
    fn started(id: &str, at: f64) -> Event {
        Event::Execution(Execution {
            t_ms: at,
            id: id.to_owned(),
            attempt: 1,
            worker: "w1".into(),
            outcome: Outcome::Succeeded,
            end_ms: Some(at + 1.0),
            service: None,
        })
    }

    #[test]
    fn a_task_run_again_after_a_live_worker_ran_it_is_a_live_takeover() {
        let by = |id: &str, attempt: u32, service: &str| {
            Event::Execution(Execution {
                t_ms: 10.0 * f64::from(attempt),
                id: id.to_owned(),
                attempt,
                worker: service.into(),
                outcome: Outcome::Succeeded,
                end_ms: None,
                service: Some(service.into()),
            })
        };
        let kill = Event::Fault(Fault::new(
            5.0,
            "kill",
            &crate::scenario::Subject::Service(crate::scenario::Target::Worker(2)),
            true,
        ));
        let analysis = analyze(&[
            ok("live"),
            by("live", 1, "worker.1"),
            by("live", 2, "worker.3"),
            ok("killed"),
            by("killed", 1, "worker.2"),
            by("killed", 2, "worker.3"),
            ok("once"),
            by("once", 1, "worker.1"),
            kill,
        ]);
        assert_eq!(analysis.live_takeovers, 1, "{analysis:?}");
        assert_eq!(analysis.sample_ids["live_takeovers"], ["live"]);
    }

    #[test]
    fn forgotten_tasks_are_aged_to_the_crash_that_took_them_and_waits_to_their_first_start() {
        let crash = |t_ms, action: &str, target: &str| {
            Event::Fault(Fault {
                t_ms,
                action: action.into(),
                target: Some(target.into()),
                between: None,
                one_way: false,
                ok: true,
            })
        };
        let analysis = analyze(&[
            ok_at("kept", 1, 0.0),
            started("kept", 50.0),
            ok_at("early", 1, 98.0),
            started("early", 120.0),
            ok_at("late", 1, 698.0),
            // a worker kill is no Redis crash: "late" is aged to the power loss
            crash(800.0, "kill", "worker.1"),
            crash(1000.0, "power-loss", "redis"),
            ok_at("after", 1, 2000.0),
            fin("kept", FinalStatus::Succeeded),
            fin("early", FinalStatus::Missing),
            fin("late", FinalStatus::Missing),
            fin("after", FinalStatus::Missing),
        ]);
        // "after" was forgotten by no crash that followed it
        assert_eq!(analysis.forgotten, 2, "{analysis:?}");
        assert_eq!(analysis.forgotten_ack_age_ms.p50, 300.0);
        assert_eq!(analysis.forgotten_ack_age_ms.max, 900.0);
        assert_eq!(analysis.lost, 2, "late and after never ran");
        // acknowledged at 2 and 100, started at 50 and 120
        assert_eq!(analysis.start_wait_ms.p50, 20.0);
        assert_eq!(analysis.start_wait_ms.max, 48.0);
    }

    #[test]
    fn a_task_started_before_an_older_more_urgent_one_is_an_inversion() {
        // b (priority 1) was acknowledged before a (priority 5) was sent, yet a started first
        let inverted = analyze(&[
            ok_at("b", 1, 0.0),
            ok_at("a", 5, 10.0),
            started("a", 20.0),
            started("b", 500.0),
        ]);
        assert_eq!(inverted.priority_inversions, 1, "{inverted:?}");
        assert_eq!(inverted.sample_ids["priority_inversions"], ["a"]);
        // in order, or within the tolerance, or b submitted only after a: none
        for events in [
            vec![
                ok_at("b", 1, 0.0),
                ok_at("a", 5, 10.0),
                started("b", 20.0),
                started("a", 21.0),
            ],
            vec![
                ok_at("b", 1, 0.0),
                ok_at("a", 5, 10.0),
                started("a", 20.0),
                started("b", 60.0),
            ],
            vec![
                ok_at("a", 5, 0.0),
                ok_at("b", 1, 10.0),
                started("a", 20.0),
                started("b", 500.0),
            ],
            // the less urgent one waited first: no inversion the other way round
            vec![
                ok_at("a", 5, 0.0),
                ok_at("b", 1, 10.0),
                started("b", 20.0),
                started("a", 500.0),
            ],
        ] {
            assert_eq!(analyze(&events).priority_inversions, 0, "{events:?}");
        }
        // b waited across a worker kill: it may have been held by the killed worker
        let fault = |t_ms, action: &str| {
            Event::Fault(Fault {
                t_ms,
                action: action.into(),
                target: Some("worker.1".into()),
                between: None,
                one_way: false,
                ok: true,
            })
        };
        let excused = analyze(&[
            ok_at("b", 1, 0.0),
            ok_at("a", 5, 10.0),
            fault(15.0, "kill"),
            started("a", 20.0),
            fault(300.0, "start"),
            started("b", 500.0),
        ]);
        assert_eq!(excused.priority_inversions, 0, "{excused:?}");
        let after_healing = analyze(&[
            fault(-50.0, "kill"),
            fault(-10.0, "start"),
            ok_at("b", 1, 0.0),
            ok_at("a", 5, 10.0),
            started("a", 20.0),
            started("b", 500.0),
        ]);
        assert_eq!(after_healing.priority_inversions, 1, "{after_healing:?}");
        // b was scheduled: it waited for its time, not in the queue
        let mut scheduled = ok_at("b", 1, 0.0);
        if let Event::Submit(s) = &mut scheduled {
            s.delay_ms = Some(400);
        }
        let delayed = analyze(&[
            scheduled,
            ok_at("a", 5, 10.0),
            started("a", 20.0),
            started("b", 500.0),
        ]);
        assert_eq!(delayed.priority_inversions, 0, "{delayed:?}");
        // b's first attempt never logged (its worker died): its start is unknown, not late
        let unknown = analyze(&[
            ok_at("b", 1, 0.0),
            ok_at("a", 5, 10.0),
            started("a", 20.0),
            run("b", 2, Outcome::Succeeded),
        ]);
        assert_eq!(unknown.priority_inversions, 0, "{unknown:?}");
    }

    #[test]
    fn a_404_read_of_an_acknowledged_task_is_unreadable() {
        let read = |id: &str, status| {
            Event::Read(Read {
                t_ms: 3.0,
                end_ms: 4.0,
                id: id.into(),
                outcome: if status == 404 {
                    OpOutcome::Fail
                } else {
                    OpOutcome::Ok
                },
                status: Some(status),
            })
        };
        let a = analyze(&[ok("a"), read("a", 404), read("a", 200), read("zz", 404)]);
        assert_eq!(a.unreadable, 1, "{a:?}");
    }

    #[test]
    fn a_cancelled_task_must_end_cancelled_and_never_run() {
        let cancel = |outcome, status| {
            Event::Cancel(Cancel {
                t_ms: 3.0,
                end_ms: 4.0,
                id: "a".into(),
                outcome,
                status: Some(status),
            })
        };
        let clean = analyze(&[
            ok("a"),
            cancel(OpOutcome::Ok, 200),
            fin("a", FinalStatus::Cancelled),
        ]);
        assert_eq!((clean.cancelled, clean.wrong_status, clean.lost), (1, 0, 0));
        let ran_anyway = analyze(&[
            ok("a"),
            cancel(OpOutcome::Ok, 200),
            run("a", 1, Outcome::Succeeded),
            fin("a", FinalStatus::Succeeded),
        ]);
        assert_eq!(ran_anyway.wrong_status, 1, "{ran_anyway:?}");
        let refused = analyze(&[
            ok("a"),
            cancel(OpOutcome::Fail, 409),
            run("a", 1, Outcome::Succeeded),
            fin("a", FinalStatus::Succeeded),
        ]);
        assert_eq!((refused.cancelled, refused.wrong_status), (0, 0));
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
    fn a_shard_recovers_when_a_task_submitted_to_it_after_the_fault_is_acknowledged_and_started() {
        let id = |partition: u16| taskq::TaskId::new_in_partition(partition).to_string();
        let (in_flight, other, first, later) = (id(0), id(1), id(0), id(0));
        let submit = |id: &str, t_ms: f64, end_ms: f64| {
            let mut e = ok(id);
            if let Event::Submit(s) = &mut e {
                (s.t_ms, s.end_ms) = (t_ms, end_ms);
            }
            e
        };
        let run = |id: &str, t_ms: f64| {
            let mut e = run(id, 1, Outcome::Succeeded);
            if let Event::Execution(x) = &mut e {
                x.t_ms = t_ms;
            }
            e
        };
        let events = vec![
            // sent before the fault, answered after it: says nothing about the shard
            submit(&in_flight, 90.0, 120.0),
            run(&in_flight, 125.0),
            // another shard serves all along
            submit(&other, 110.0, 111.0),
            run(&other, 112.0),
            submit(&first, 2_000.0, 2_100.0),
            run(&first, 2_300.0),
            submit(&later, 2_050.0, 2_400.0),
            run(&later, 2_200.0),
        ];
        assert_eq!(partition_recovery_ms(100.0, 0, 2, &events), Some(2_200.0));
        assert_eq!(partition_recovery_ms(100.0, 1, 2, &events), Some(12.0));
        assert_eq!(partition_recovery_ms(3_000.0, 0, 2, &events), None);
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
    fn a_task_cancelled_while_it_waited_for_a_retry_has_the_right_status() {
        let cancel_at = |t_ms| {
            Event::Cancel(Cancel {
                t_ms,
                end_ms: t_ms + 1.0,
                id: "a".into(),
                outcome: OpOutcome::Ok,
                status: Some(200),
            })
        };
        // attempt 1 (t 10) failed, the cancel came while the retry waited
        let waited = analyze(&[
            ok("a"),
            run("a", 1, Outcome::Retrying),
            cancel_at(15.0),
            fin("a", FinalStatus::Cancelled),
        ]);
        assert_eq!(waited.wrong_status, 0, "{waited:?}");
        // an execution that started after the cancel was answered is wrong
        let ran_after = analyze(&[
            ok("a"),
            cancel_at(5.0),
            run("a", 1, Outcome::Retrying),
            fin("a", FinalStatus::Cancelled),
        ]);
        assert_eq!(ran_after.wrong_status, 1, "{ran_after:?}");
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
    fn an_attempt_after_one_whose_outcome_never_took_effect_was_reclaimed() {
        // worker cut off from Redis: its success was logged but never recorded
        let cut_off = analyze(&[
            ok("a"),
            run("a", 1, Outcome::Succeeded),
            run("a", 2, Outcome::Succeeded),
        ]);
        assert_eq!(cut_off.reclaimed, 1, "{cut_off:?}");
        // a plain retry is no takeover
        let retried = analyze(&[
            ok("a"),
            run("a", 1, Outcome::Retrying),
            run("a", 2, Outcome::Succeeded),
        ]);
        assert_eq!(retried.reclaimed, 0, "{retried:?}");
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
                service: None,
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
