//! The history of a run: every event the harness saw, one JSON object per line.
//!
//! `harness run --history out.jsonl` writes it (and by default beside every `--report`);
//! `harness check out.jsonl` judges it again offline with the same [`crate::checker`]. Times are
//! `t_ms`, milliseconds since the load's first request (negative during set-up).
//!
//! | `type` | fields |
//! |---|---|
//! | `submit` | `t_ms`, `end_ms`, `outcome` (`ok` / `fail` / `info`), `status`, `id`, `key`, `priority`, `delay_ms` (scheduled tasks only) |
//! | `cancel` | `t_ms`, `end_ms`, `id`, `outcome`, `status` |
//! | `read` | `t_ms`, `end_ms`, `id`, `outcome` (`ok`: 200, `fail`: 404, `info`: anything else), `status` |
//! | `execution` | `t_ms` (start), `id`, `attempt`, `worker`, `outcome` (`succeeded` / `retrying` / `dead`) |
//! | `fault` | `t_ms`, `action`, `target` (or `between`), `ok` |
//! | `exit` | `t_ms`, `service`, `code`, `planned` |
//! | `final` | `id`, `key`, `status` (a task status, or `missing`), `attempts` |
//!
//! Unknown event types and unknown fields are ignored when reading, so a newer harness's history
//! stays readable by an older checker.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use taskq::event::Outcome;

use crate::scenario::{Link, Subject};

/// How a client request ended, in Jepsen's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpOutcome {
    /// Acknowledged: the operation took effect.
    Ok,
    /// A definite failure: the operation did not take effect.
    Fail,
    /// Unknown: a timeout or a lost answer; it may or may not have taken effect.
    Info,
}

/// One `POST /tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submit {
    /// When the request was sent.
    pub t_ms: f64,
    /// When its answer arrived, or when the client gave up.
    pub end_ms: f64,
    /// How it ended.
    pub outcome: OpOutcome,
    /// The HTTP status, when an answer arrived.
    #[serde(default)]
    pub status: Option<u16>,
    /// The task id the answer carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The request's `Idempotency-Key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The priority asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// The `delay_ms` asked for: a scheduled task, not to start before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

/// One `DELETE /tasks/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancel {
    /// When the request was sent.
    pub t_ms: f64,
    /// When its answer arrived, or when the client gave up.
    pub end_ms: f64,
    /// The task asked to cancel.
    pub id: String,
    /// How it ended (`ok`: the task is cancelled).
    pub outcome: OpOutcome,
    /// The HTTP status, when an answer arrived.
    #[serde(default)]
    pub status: Option<u16>,
}

/// One `GET /tasks/{id}` of a task the load had just created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Read {
    /// When the request was sent.
    pub t_ms: f64,
    /// When its answer arrived, or when the client gave up.
    pub end_ms: f64,
    /// The task read.
    pub id: String,
    /// `ok`: the record (200); `fail`: no such task (404); `info`: anything else.
    pub outcome: OpOutcome,
    /// The HTTP status, when an answer arrived.
    #[serde(default)]
    pub status: Option<u16>,
}

/// One execution of a task, from the executing worker's `task_executed` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// When the execution started (its line's time minus its duration).
    pub t_ms: f64,
    /// The task.
    pub id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The worker's consumer name.
    pub worker: String,
    /// How it ended.
    pub outcome: Outcome,
    /// When it ended (its line's time), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<f64>,
    /// The service whose log it came from (`worker.2`), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// One fault step (or healing step) the harness applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// When the step ran.
    pub t_ms: f64,
    /// The step's action (`kill`, `start`, `partition`, ...).
    pub action: String,
    /// The step's target, for actions on one service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The two services of a link fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub between: Option<[String; 2]>,
    /// With `between`: only packets from the first service to the second are affected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_way: bool,
    /// Whether the step succeeded.
    pub ok: bool,
}

impl Fault {
    /// The event of a step on `subject`: `target` for a service, `between` (and `one_way`) for a
    /// link, neither for every link.
    pub fn new(t_ms: f64, action: &str, subject: &Subject, ok: bool) -> Self {
        let (target, between, one_way) = match subject {
            Subject::Service(target) => (Some(target.to_string()), None, false),
            Subject::Link(link) => (
                None,
                Some([link.a.to_string(), link.b.to_string()]),
                link.one_way,
            ),
            Subject::AllLinks => (None, None, false),
        };
        Self {
            t_ms,
            action: action.to_string(),
            target,
            between,
            one_way,
            ok,
        }
    }

    /// What the step acted on; an error names a service the harness does not know.
    pub fn subject(&self) -> Result<Subject, String> {
        match (&self.target, &self.between) {
            (Some(target), _) => target.parse().map(Subject::Service),
            (None, Some([a, b])) => Ok(Subject::Link(Link {
                a: a.parse()?,
                b: b.parse()?,
                one_way: self.one_way,
            })),
            (None, None) => Ok(Subject::AllLinks),
        }
    }
}

/// A service process or container that ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    /// When the harness saw it end.
    pub t_ms: f64,
    /// Which one, e.g. `redis`, `orchestrator`, `worker.2`.
    pub service: String,
    /// Exit status, or the signal number that ended it; `None` when unknown.
    #[serde(default)]
    pub code: Option<i64>,
    /// Whether a step of the scenario caused it.
    pub planned: bool,
}

/// A task's state when the run was over, or `missing` when no record exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinalStatus {
    /// Waiting in its priority stream.
    Queued,
    /// Waiting for its time.
    Scheduled,
    /// An execution holds it.
    Running,
    /// Waiting for a retry.
    Retrying,
    /// Finished successfully.
    Succeeded,
    /// Dead-lettered.
    Dead,
    /// Cancelled before it ran.
    Cancelled,
    /// No record exists (never created, or expired).
    Missing,
}

impl FinalStatus {
    /// Still waiting or running: not an end state.
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            FinalStatus::Queued
                | FinalStatus::Scheduled
                | FinalStatus::Running
                | FinalStatus::Retrying
        )
    }
}

/// What reconciliation found for one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Final {
    /// The task id (for a `missing` record looked up by key: the key's id, if any).
    pub id: String,
    /// The idempotency key it was looked up by, for `info` submits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Its status.
    pub status: FinalStatus,
    /// Executions started, as the record counts them.
    #[serde(default)]
    pub attempts: Option<u32>,
}

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// A `POST /tasks`.
    Submit(Submit),
    /// A `DELETE /tasks/{id}`.
    Cancel(Cancel),
    /// A `GET /tasks/{id}`.
    Read(Read),
    /// An execution.
    Execution(Execution),
    /// A fault step.
    Fault(Fault),
    /// A service ended.
    Exit(Exit),
    /// Reconciliation's finding for one task.
    Final(Final),
    /// A type this harness does not know (written by a newer one): ignored.
    #[serde(other)]
    Unknown,
}

/// The `fault` events of a history, in order.
pub fn faults(events: &[Event]) -> Vec<&Fault> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Fault(f) => Some(f),
            _ => None,
        })
        .collect()
}

/// A history line that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct HistoryError {
    /// The file.
    pub path: String,
    /// 1-based line number (0: the file itself).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Reads a history file; blank lines are skipped, unknown types kept as [`Event::Unknown`].
pub fn read(path: &Path) -> Result<Vec<Event>, HistoryError> {
    let error = |line: usize, message: String| HistoryError {
        path: path.display().to_string(),
        line,
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| error(0, e.to_string()))?;
    let mut events = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| error(index + 1, e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event =
            serde_json::from_str(&line).map_err(|e| error(index + 1, e.to_string()))?;
        events.push(event);
    }
    Ok(events)
}

/// Writes `events` as JSON Lines, ordered by time (`final` lines last, in the given order).
pub fn write(path: &Path, events: &[Event]) -> anyhow::Result<()> {
    let mut ordered: Vec<&Event> = events.iter().collect();
    ordered.sort_by(|a, b| sort_key(a).total_cmp(&sort_key(b)));
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for event in ordered {
        serde_json::to_writer(&mut out, event)?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

fn sort_key(event: &Event) -> f64 {
    match event {
        Event::Submit(e) => e.t_ms,
        Event::Cancel(e) => e.t_ms,
        Event::Read(e) => e.t_ms,
        Event::Execution(e) => e.t_ms,
        Event::Fault(e) => e.t_ms,
        Event::Exit(e) => e.t_ms,
        Event::Final(_) | Event::Unknown => f64::INFINITY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_reads_back_as_written() {
        let events = vec![
            Event::Submit(Submit {
                t_ms: 1.5,
                end_ms: 3.0,
                outcome: OpOutcome::Ok,
                status: Some(201),
                id: Some("t1".into()),
                key: Some("k1".into()),
                priority: Some(3),
                delay_ms: None,
            }),
            Event::Cancel(Cancel {
                t_ms: 4.0,
                end_ms: 5.0,
                id: "t1".into(),
                outcome: OpOutcome::Fail,
                status: Some(409),
            }),
            Event::Execution(Execution {
                t_ms: 6.0,
                id: "t1".into(),
                attempt: 1,
                worker: "w1".into(),
                outcome: Outcome::Succeeded,
                end_ms: Some(6.5),
                service: None,
            }),
            Event::Fault(Fault {
                t_ms: 7.0,
                action: "partition".into(),
                target: None,
                between: Some(["orchestrator".into(), "redis".into()]),
                one_way: false,
                ok: true,
            }),
            Event::Exit(Exit {
                t_ms: 8.0,
                service: "worker.2".into(),
                code: Some(137),
                planned: false,
            }),
            Event::Final(Final {
                id: "t1".into(),
                key: None,
                status: FinalStatus::Succeeded,
                attempts: Some(1),
            }),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.jsonl");
        write(&path, &events).expect("write");
        assert_eq!(read(&path).expect("read"), events);
    }

    #[test]
    fn unknown_types_and_fields_are_ignored_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.jsonl");
        std::fs::write(
            &path,
            "{\"type\":\"gossip\",\"t_ms\":1}\n\n{\"type\":\"exit\",\"t_ms\":2,\"service\":\"redis\",\"code\":9,\"planned\":true,\"new\":1}\nnot json\n",
        )
        .expect("write");
        let err = read(&path).expect_err("line 4 is not JSON");
        assert_eq!(err.line, 4, "{err}");
        std::fs::write(
            &path,
            "{\"type\":\"gossip\",\"t_ms\":1}\n{\"type\":\"exit\",\"t_ms\":2,\"service\":\"redis\",\"code\":9,\"planned\":true,\"new\":1}\n",
        )
        .expect("write");
        let events = read(&path).expect("read");
        assert_eq!(events[0], Event::Unknown);
        assert!(matches!(&events[1], Event::Exit(e) if e.planned && e.code == Some(9)));
    }
}
