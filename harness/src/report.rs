//! The run report: JSON for machines (fields as in docs/scenarios.md, "Reading a report") and
//! a summary for people.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::checker::Latency;
use crate::scenario::{Action, StepOrigin, Target};

/// Everything known about one scenario run, each field documented in docs/scenarios.md ("Reading
/// a report"). The fields up to `expectations` are the contract README.md names ("Fault
/// scenarios (the harness)"); the fields after it add detail.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// True when every expectation held and the run completed without a harness error.
    pub passed: bool,
    /// `docker` or `process` (empty when the run failed before choosing).
    pub runtime: String,
    /// Submit attempts.
    pub attempted: u64,
    /// Attempts acknowledged with 201 and an id (`ok`).
    pub acknowledged: u64,
    /// Attempts with a definite error (`fail`).
    pub failed: u64,
    /// Attempts with an unknown outcome (`info`).
    pub indeterminate: u64,
    /// Distinct tasks executed at least once.
    pub executed: u64,
    /// Acknowledged, never executed.
    pub lost: u64,
    /// Executed, never attempted.
    pub unexpected: u64,
    /// Executed more than once (planned retries excluded).
    pub duplicated: u64,
    /// Indeterminate, executed anyway.
    pub recovered: u64,
    /// Longest recovery after a healing step, in ms (`None`: no healing step, or one never
    /// recovered; see `steps`).
    pub recovery_ms: Option<u64>,
    /// Submit latency of acknowledged attempts.
    pub submit_latency_ms: Latency,
    /// Acknowledged submits per second of load.
    pub throughput_per_s: f64,
    /// Every step, in order, as executed.
    pub steps: Vec<StepReport>,
    /// Every expectation and whether it held.
    pub expectations: Vec<ExpectationReport>,

    /// Unique id of the run (container, network and volume names contain it).
    pub run_id: String,
    /// The scenario file.
    pub file: String,
    /// Chaos seed, if the scenario has chaos.
    pub seed: Option<u64>,
    /// Factor applied to step offsets and the load duration.
    pub time_scale: f64,
    /// Offered load, tasks per second.
    pub rate_per_s: u32,
    /// Execution log lines.
    pub executions: u64,
    /// Acknowledged or recovered tasks that never reached a final state.
    pub unfinished: u64,
    /// `fail` attempts whose task ran anyway.
    pub failed_but_executed: u64,
    /// Tasks executed again after an execution died without logging (worker killed mid-task).
    pub reclaimed: u64,
    /// Sum of the steps' `carried_over`.
    pub carried_over: u64,
    /// Time to start the cluster (Redis, orchestrator, workers, all ready), ms.
    pub cluster_start_ms: u64,
    /// Cluster start per phase, ms.
    pub cluster_startup_ms: StartupMs,
    /// From starting the load generator to its first request, ms (step offsets count from the
    /// former).
    pub load_start_delay_ms: Option<u64>,
    /// Time the load ran, ms.
    pub load_ms: u64,
    /// From the end of the load until every acknowledged task was final, ms (`None`: never).
    pub drain_ms: Option<u64>,
    /// Whole run including cluster start and teardown, ms.
    pub wall_ms: u64,
    /// Up to 20 lost task ids.
    pub lost_ids: Vec<String>,
    /// Up to 20 duplicated task ids.
    pub duplicated_ids: Vec<String>,
    /// Up to 20 unexpected task ids.
    pub unexpected_ids: Vec<String>,
    /// Harness error that prevented a complete run (cluster did not start, ...).
    pub error: Option<String>,
}

/// Cluster start per phase, ms (see `cluster::StartupTimes`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct StartupMs {
    /// Network, volume or run directory.
    pub prepare: u64,
    /// Redis until PING answers.
    pub redis: u64,
    /// Orchestrator until ready.
    pub orchestrator: u64,
    /// Initial workers until healthy.
    pub workers: u64,
}

/// One executed step. `action`, `target` and `origin` are written as in scenario files
/// (`kill`, `worker.2`, `chaos`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepReport {
    /// When the step started, ms after the load started.
    pub at_ms: u64,
    /// Planned offset, ms after the load started.
    pub planned_at_ms: u64,
    /// The action.
    pub action: Action,
    /// The target.
    pub target: Target,
    /// Whether the action (including its readiness wait) succeeded.
    pub ok: bool,
    /// What happened, or the error.
    pub message: String,
    /// How long the action took, ms.
    pub duration_ms: u64,
    /// `file` or `chaos`.
    pub origin: StepOrigin,
    /// For healing steps: time until a submit was acknowledged and a task executed, ms.
    pub recovery_ms: Option<u64>,
    /// For healing steps: tasks acknowledged before the fault they heal and executed only after
    /// this step, i.e. carried across the fault by the queue.
    pub carried_over: Option<u64>,
}

/// One expectation of the `[expect]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExpectationReport {
    /// Which expectation (`lost`, `drain_within`, ...).
    pub name: String,
    /// The condition, e.g. `<= 0`.
    pub expected: String,
    /// What was measured.
    pub actual: String,
    /// Whether it held.
    pub passed: bool,
}

impl Report {
    /// A human summary, several lines.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        let _ = writeln!(
            out,
            "== {} [{}] {verdict} in {} (run {})",
            self.scenario,
            if self.runtime.is_empty() {
                "-"
            } else {
                &self.runtime
            },
            secs(self.wall_ms),
            self.run_id
        );
        if let Some(error) = &self.error {
            let _ = writeln!(out, "   error: {error}");
        }
        let _ = writeln!(
            out,
            "   cluster start {} | load {} at {}/s (time scale {}) | drain {}",
            secs(self.cluster_start_ms),
            secs(self.load_ms),
            self.rate_per_s,
            self.time_scale,
            self.drain_ms.map(secs).unwrap_or_else(|| "never".into())
        );
        let _ = writeln!(
            out,
            "   submits: {} attempted, {} ok, {} fail, {} info",
            self.attempted, self.acknowledged, self.failed, self.indeterminate
        );
        let _ = writeln!(
            out,
            "   tasks: {} executed ({} executions) | lost {} | unexpected {} | duplicated {} | recovered {} | unfinished {} | reclaimed {}",
            self.executed,
            self.executions,
            self.lost,
            self.unexpected,
            self.duplicated,
            self.recovered,
            self.unfinished,
            self.reclaimed
        );
        let _ = writeln!(
            out,
            "   submit latency ms: p50 {} | p99 {} | max {} | throughput {:.1}/s",
            self.submit_latency_ms.p50,
            self.submit_latency_ms.p99,
            self.submit_latency_ms.max,
            self.throughput_per_s
        );
        if !self.steps.is_empty() {
            let _ = writeln!(out, "   steps:");
            for step in &self.steps {
                let mut recovery = step
                    .recovery_ms
                    .map(|r| format!(" | recovered in {}", secs(r)))
                    .unwrap_or_default();
                if let Some(carried) = step.carried_over {
                    recovery.push_str(&format!(", {carried} carried over"));
                }
                let _ = writeln!(
                    out,
                    "     {:>7} {:<10} {:<13} {} ({}){recovery}: {}",
                    secs(step.at_ms),
                    step.action,
                    step.target,
                    if step.ok { "ok  " } else { "FAIL" },
                    secs(step.duration_ms),
                    step.message
                );
            }
        }
        if !self.expectations.is_empty() {
            let _ = writeln!(out, "   expectations:");
            for e in &self.expectations {
                let _ = writeln!(
                    out,
                    "     [{}] {} {} (actual {})",
                    if e.passed { "pass" } else { "FAIL" },
                    e.name,
                    e.expected,
                    e.actual
                );
            }
        }
        if !self.lost_ids.is_empty() {
            let _ = writeln!(
                out,
                "   lost ids (first {}): {}",
                self.lost_ids.len(),
                self.lost_ids.join(", ")
            );
        }
        out
    }
}

/// `1234` → `1.23s`.
pub fn secs(ms: u64) -> String {
    format!("{:.2}s", ms as f64 / 1000.0)
}

/// Writes one report as an object, several as an array (docs/scenarios.md, "Reading a report").
pub fn to_json(reports: &[Report]) -> anyhow::Result<String> {
    Ok(match reports {
        [one] => serde_json::to_string_pretty(one)?,
        many => serde_json::to_string_pretty(many)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_has_every_documented_field() {
        let value = serde_json::to_value(Report::default()).unwrap();
        for field in [
            "scenario",
            "passed",
            "runtime",
            "attempted",
            "acknowledged",
            "failed",
            "indeterminate",
            "executed",
            "lost",
            "unexpected",
            "duplicated",
            "recovered",
            "recovery_ms",
            "submit_latency_ms",
            "throughput_per_s",
            "steps",
            "expectations",
        ] {
            assert!(value.get(field).is_some(), "report lacks `{field}`");
        }
        for field in ["p50", "p99", "max"] {
            assert!(value["submit_latency_ms"].get(field).is_some());
        }
    }

    fn step(action: Action, target: Target, origin: StepOrigin) -> StepReport {
        StepReport {
            at_ms: 1250,
            planned_at_ms: 1000,
            action,
            target,
            ok: true,
            message: "done".into(),
            duration_ms: 220,
            origin,
            recovery_ms: None,
            carried_over: None,
        }
    }

    #[test]
    fn steps_are_written_with_the_words_of_scenario_files() {
        let steps = vec![
            step(Action::Kill, Target::Worker(2), StepOrigin::Chaos),
            step(Action::Unpause, Target::Redis, StepOrigin::File),
            step(Action::Scale, Target::AllWorkers, StepOrigin::File),
            step(Action::Disconnect, Target::Orchestrator, StepOrigin::Chaos),
        ];
        let value = serde_json::to_value(&steps).unwrap();
        let words: Vec<(&str, &str, &str)> = value
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["action"].as_str().unwrap(),
                    s["target"].as_str().unwrap(),
                    s["origin"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            words,
            [
                ("kill", "worker.2", "chaos"),
                ("unpause", "redis", "file"),
                ("scale", "worker", "file"),
                ("disconnect", "orchestrator", "chaos"),
            ]
        );
        let back: Vec<StepReport> = serde_json::from_value(value).unwrap();
        assert_eq!(back, steps);
    }

    #[test]
    fn the_summary_lines_up_steps_in_columns() {
        let report = Report {
            steps: vec![step(Action::Kill, Target::Worker(2), StepOrigin::Chaos)],
            ..Report::default()
        };
        let summary = report.summary();
        assert!(
            summary.contains("\n       1.25s kill       worker.2      ok   (0.22s): done\n"),
            "{summary}"
        );
    }

    #[test]
    fn one_report_is_an_object_and_several_an_array() {
        let one = to_json(&[Report::default()]).unwrap();
        assert!(one.trim_start().starts_with('{'));
        let two = to_json(&[Report::default(), Report::default()]).unwrap();
        assert!(two.trim_start().starts_with('['));
    }
}
