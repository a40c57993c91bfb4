//! Task executions, read from the workers' `task_executed` log lines.
//!
//! Workers log one JSON line per execution (`LOG_FORMAT=json`), a [`taskq::event::TaskExecuted`]:
//! `{"timestamp":"…","level":"INFO","event":"task_executed","task_id":"…","attempt":1,
//! "worker_id":"…","outcome":"succeeded","duration_ms":12.0,…}`. The checker trusts these lines,
//! not Redis: they are what actually ran, and container logs (or the process runtime's log files)
//! survive a SIGKILL. Lines are read with [`taskq::event::TaskExecuted::logged_from_line`], the
//! worker's own schema.

use serde::Serialize;
use taskq::event::{Logged, TaskExecuted};

/// How one execution ended: the workers' outcome vocabulary (`succeeded`, `retrying`, `dead`).
pub use taskq::event::Outcome as ExecutionOutcome;

/// One execution of one task by one worker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Execution {
    /// The task's id.
    pub task_id: String,
    /// Attempt number.
    pub attempt: u32,
    /// The worker's id.
    pub worker_id: String,
    /// How it ended.
    pub outcome: ExecutionOutcome,
    /// When it was logged (its end), milliseconds since the Unix epoch.
    pub unix_ms: Option<u64>,
    /// How long the handler ran, milliseconds.
    pub duration_ms: f64,
    /// Which service's log it came from (`worker.2`).
    pub source: String,
}

/// Parses one log line; `None` for anything that is not a `task_executed` event.
pub fn parse_execution_line(line: &str, source: &str) -> Option<Execution> {
    let Logged { timestamp, event } = TaskExecuted::logged_from_line(line)?;
    Some(Execution {
        task_id: event.task_id,
        attempt: event.attempt,
        worker_id: event.worker_id,
        outcome: event.outcome,
        duration_ms: event.duration_ms,
        unix_ms: timestamp.and_then(|t| u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()),
        source: source.to_string(),
    })
}

/// Every execution in a log text.
pub fn parse_executions(text: &str, source: &str) -> Vec<Execution> {
    text.lines()
        .filter_map(|line| parse_execution_line(line, source))
        .collect()
}

/// RFC 3339 timestamp to milliseconds since the Unix epoch.
pub fn parse_timestamp_ms(raw: &str) -> Option<u64> {
    let parsed =
        time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flattened_json_line_is_an_execution() {
        let line = r#"{"timestamp":"2025-01-02T03:04:05.678901Z","level":"INFO","message":"task executed","event":"task_executed","task_id":"0193c1b2-aaaa","attempt":2,"worker_id":"w-1","outcome":"succeeded","duration_ms":12.0,"target":"worker::runner"}"#;
        let execution = parse_execution_line(line, "worker.1").expect("an execution");
        assert_eq!(execution.task_id, "0193c1b2-aaaa");
        assert_eq!(execution.attempt, 2);
        assert_eq!(execution.worker_id, "w-1");
        assert_eq!(execution.outcome, ExecutionOutcome::Succeeded);
        assert_eq!(execution.unix_ms, Some(1_735_787_045_678));
        assert_eq!(execution.source, "worker.1");
    }

    #[test]
    fn a_nested_fields_line_is_an_execution() {
        let line = r#"{"timestamp":"2025-01-02T03:04:05Z","level":"INFO","fields":{"message":"task executed","event":"task_executed","task_id":"t1","attempt":1,"worker_id":"w-1","outcome":"dead","duration_ms":3.5}}"#;
        let execution = parse_execution_line(line, "w").expect("an execution");
        assert_eq!(execution.outcome, ExecutionOutcome::Dead);
        assert!(execution.outcome.is_final());
        assert_eq!(execution.unix_ms, Some(1_735_787_045_000));
    }

    #[test]
    fn other_lines_are_ignored() {
        let text =
            "starting\n{\"event\":\"heartbeat\",\"task_id\":\"x\"}\nnot json task_executed\n";
        assert!(parse_executions(text, "w").is_empty());
    }

    #[test]
    fn the_timestamp_helper_agrees_with_the_parser() {
        assert_eq!(
            parse_timestamp_ms("2025-01-02T03:04:05.678901Z"),
            Some(1_735_787_045_678)
        );
    }
}
