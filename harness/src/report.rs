//! The run report: JSON for machines (fields as in docs/scenarios.md, "Reading a report") and
//! a summary for people.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::checker::Latency;
use crate::scenario::{Action, StepOrigin, Subject};

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
    /// Acknowledged, never executed, and no record left waiting or running.
    pub lost: u64,
    /// Acknowledged (or recovered) tasks still waiting or running after the drain.
    #[serde(default)]
    pub stuck: u64,
    /// Tasks whose final status their executions contradict.
    #[serde(default)]
    pub wrong_status: u64,
    /// Services that exited without a step causing it.
    #[serde(default)]
    pub unplanned_exits: u64,
    /// Executed, never attempted.
    pub unexpected: u64,
    /// Executed successfully more than once.
    pub duplicated: u64,
    /// Indeterminate, executed anyway.
    pub recovered: u64,
    /// Longest recovery after a healing step, in ms (`None`: no healing step, or one never
    /// recovered; see `steps`).
    pub recovery_ms: Option<u64>,
    /// Submit latency of acknowledged attempts.
    pub submit_latency_ms: Latency,
    /// From acknowledgement to first start, ms (acknowledged, unscheduled tasks).
    #[serde(default)]
    pub start_wait_ms: Latency,
    /// Acknowledged tasks whose record a Redis crash took (`lost`, or `missing` after an
    /// execution).
    #[serde(default)]
    pub forgotten: u64,
    /// Tasks taken over from a worker that no step faulted and that never exited.
    #[serde(default)]
    pub live_takeovers: u64,
    /// For those forgotten: how long before the crash they were acknowledged, ms.
    #[serde(default)]
    pub forgotten_ack_age_ms: Latency,
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
    /// Tasks taken over: executed again after an execution that died without logging (worker
    /// killed mid-task) or whose outcome never took effect (worker cut off or stalled).
    pub reclaimed: u64,
    /// Reads of an acknowledged task answered 404.
    #[serde(default)]
    pub unreadable: u64,
    /// Tasks started while a more urgent, earlier acknowledged task still waited.
    #[serde(default)]
    pub priority_inversions: u64,
    /// Cancels answered 200.
    #[serde(default)]
    pub cancelled: u64,
    /// Submits refused or left unanswered (`failed` + `indeterminate`).
    #[serde(default)]
    pub unavailable: u64,
    /// Distinct workers that executed at least one task.
    #[serde(default)]
    pub workers_executed: u64,
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
    /// Up to 20 task ids per anomaly (`lost`, `stuck`, `wrong_status`, `duplicated`,
    /// `unexpected`).
    #[serde(default)]
    pub sample_ids: std::collections::BTreeMap<String, Vec<String>>,
    /// Harness error that prevented a complete run (cluster did not start, ...).
    pub error: Option<String>,
    /// The run's history (written with `--history`, and beside `--report`).
    #[serde(skip)]
    pub history: Vec<crate::history::Event>,
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
    /// The service or link (`worker.2`, `orchestrator<->redis`, `worker.1->redis`, `links`).
    pub target: Subject,
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
        if let Some(seed) = self.seed {
            let _ = writeln!(
                out,
                "   chaos seed {seed} (the same seed replays the same faults: --seed {seed})"
            );
        }
        let _ = writeln!(
            out,
            "   submits: {} attempted, {} ok, {} fail, {} info",
            self.attempted, self.acknowledged, self.failed, self.indeterminate
        );
        let _ = writeln!(
            out,
            "   tasks: {} executed ({} executions) | lost {} | stuck {} | wrong status {} | unexpected {} | duplicated {} | recovered {} | reclaimed {} ({} from live workers) | unplanned exits {} | cancelled {} | unreadable {} | priority inversions {}",
            self.executed,
            self.executions,
            self.lost,
            self.stuck,
            self.wrong_status,
            self.unexpected,
            self.duplicated,
            self.recovered,
            self.reclaimed,
            self.live_takeovers,
            self.unplanned_exits,
            self.cancelled,
            self.unreadable,
            self.priority_inversions
        );
        let _ = writeln!(
            out,
            "   submit latency ms: p50 {} | p99 {} | max {} | throughput {:.1}/s",
            self.submit_latency_ms.p50,
            self.submit_latency_ms.p99,
            self.submit_latency_ms.max,
            self.throughput_per_s
        );
        let _ = writeln!(
            out,
            "   wait to first start ms: p50 {} | p99 {} | max {}",
            self.start_wait_ms.p50, self.start_wait_ms.p99, self.start_wait_ms.max,
        );
        if self.forgotten > 0 {
            let _ = writeln!(
                out,
                "   {} acknowledged task(s) forgotten by a Redis crash, acknowledged before it by \
                 ms: p50 {} | p99 {} | max {}",
                self.forgotten,
                self.forgotten_ack_age_ms.p50,
                self.forgotten_ack_age_ms.p99,
                self.forgotten_ack_age_ms.max,
            );
        }
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
        for (count, ids) in &self.sample_ids {
            let _ = writeln!(
                out,
                "   {count} ids (first {}): {}",
                ids.len(),
                ids.join(", ")
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
    use crate::scenario::{Link, Target};

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
            target: Subject::Service(target),
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
        let mut steps = steps;
        let link = |a, b, one_way| Subject::Link(Link { a, b, one_way });
        for (action, target) in [
            (
                Action::Partition,
                link(Target::Orchestrator, Target::Redis, false),
            ),
            (Action::Loss, link(Target::Worker(1), Target::Redis, true)),
            (Action::Heal, Subject::AllLinks),
            (Action::PowerLoss, Subject::Service(Target::Redis)),
        ] {
            let mut s = step(action, Target::Redis, StepOrigin::File);
            s.target = target;
            steps.push(s);
        }
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
                ("partition", "orchestrator<->redis", "file"),
                ("loss", "worker.1->redis", "file"),
                ("heal", "links", "file"),
                ("power-loss", "redis", "file"),
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

/// Where one scenario's files go: `--history` as given (or, with several scenarios, with the
/// scenario's name inserted), and beside `--report r.json` a history `r.history.jsonl` and the
/// pictures `r.html` (`r.NAME.history.jsonl`, `r.NAME.html` with several scenarios).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactPaths {
    /// JSON Lines history files to write.
    pub histories: Vec<std::path::PathBuf>,
    /// HTML page, when a report is written.
    pub html: Option<std::path::PathBuf>,
}

fn with_suffix(path: &std::path::Path, insert: Option<&str>, suffix: &str) -> std::path::PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match insert {
        Some(name) => format!("{stem}.{name}{suffix}"),
        None => format!("{stem}{suffix}"),
    };
    path.with_file_name(name)
}

/// The files for scenario `name` (one of `count` in the run).
pub fn artifact_paths(
    name: &str,
    count: usize,
    report: Option<&std::path::Path>,
    history: Option<&std::path::Path>,
) -> ArtifactPaths {
    let insert = (count > 1).then_some(name);
    let mut histories = Vec::new();
    if let Some(history) = history {
        let extension = history
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        histories.push(match insert {
            Some(_) => with_suffix(history, insert, &extension),
            None => history.to_path_buf(),
        });
    }
    if let Some(report) = report {
        histories.push(with_suffix(report, insert, ".history.jsonl"));
    }
    histories.dedup();
    ArtifactPaths {
        histories,
        html: report.map(|r| with_suffix(r, insert, ".html")),
    }
}

/// Writes a report's history and pictures where [`artifact_paths`] says.
pub fn write_artifacts(report: &Report, paths: &ArtifactPaths) -> anyhow::Result<()> {
    for path in &paths.histories {
        crate::history::write(path, &report.history)?;
    }
    if let Some(html) = &paths.html {
        let rows: Vec<(String, String)> = [
            ("passed", report.passed.to_string()),
            ("acknowledged", report.acknowledged.to_string()),
            ("lost", report.lost.to_string()),
            ("stuck", report.stuck.to_string()),
            ("wrong_status", report.wrong_status.to_string()),
            ("duplicated", report.duplicated.to_string()),
            ("unexpected", report.unexpected.to_string()),
            ("recovered", report.recovered.to_string()),
            ("unplanned_exits", report.unplanned_exits.to_string()),
            ("unreadable", report.unreadable.to_string()),
            (
                "priority_inversions",
                report.priority_inversions.to_string(),
            ),
            (
                "submit latency p50 / p99 / max ms",
                format!(
                    "{} / {} / {}",
                    report.submit_latency_ms.p50,
                    report.submit_latency_ms.p99,
                    report.submit_latency_ms.max
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(report.expectations.iter().map(|e| {
            (
                format!("expect {}", e.name),
                format!(
                    "{} {} (actual {})",
                    if e.passed { "pass" } else { "FAIL" },
                    e.expected,
                    e.actual
                ),
            )
        }))
        .collect();
        let page = crate::plot::render_html(&report.scenario, &rows, &report.history)?;
        std::fs::write(html, page)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", html.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod artifact_tests {
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn one_scenario_writes_beside_the_report_and_several_carry_their_names() {
        let one = artifact_paths("kill-redis", 1, Some(Path::new("out/r.json")), None);
        assert_eq!(one.histories, vec![PathBuf::from("out/r.history.jsonl")]);
        assert_eq!(one.html, Some(PathBuf::from("out/r.html")));
        let many = artifact_paths(
            "kill-redis",
            2,
            Some(Path::new("r.json")),
            Some(Path::new("h.jsonl")),
        );
        assert_eq!(
            many.histories,
            vec![
                PathBuf::from("h.kill-redis.jsonl"),
                PathBuf::from("r.kill-redis.history.jsonl")
            ]
        );
        assert_eq!(many.html, Some(PathBuf::from("r.kill-redis.html")));
    }
}
