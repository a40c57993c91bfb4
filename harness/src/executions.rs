//! Task executions, read from the workers' `task_executed` log lines.
//!
//! Workers log one JSON line per execution (`LOG_FORMAT=json`):
//! `{"timestamp":"…","level":"INFO","event":"task_executed","task_id":"…","attempt":1,
//! "worker_id":"…","outcome":"succeeded","duration_ms":12,…}`. The checker trusts these lines,
//! not Redis: they are what actually ran, and container logs (or the process runtime's log files)
//! survive a SIGKILL. Both the flattened layout and tracing's nested `fields` object are read.

use serde::Serialize;
use serde_json::Value;

/// How one execution ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionOutcome {
    /// Finished successfully: final.
    Succeeded,
    /// Failed transiently; another attempt is scheduled.
    Retrying,
    /// Failed for the last time and dead-lettered: final.
    Dead,
    /// Anything else the worker reported.
    Other(String),
}

impl ExecutionOutcome {
    /// Whether the task is finished after this execution.
    pub fn is_final(&self) -> bool {
        matches!(self, ExecutionOutcome::Succeeded | ExecutionOutcome::Dead)
    }

    fn parse(raw: &str) -> Self {
        match raw {
            "succeeded" => ExecutionOutcome::Succeeded,
            "retrying" => ExecutionOutcome::Retrying,
            "dead" => ExecutionOutcome::Dead,
            other => ExecutionOutcome::Other(other.to_string()),
        }
    }
}

/// One execution of one task by one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Execution {
    /// The task's id.
    pub task_id: String,
    /// Attempt number, when logged.
    pub attempt: Option<u32>,
    /// The worker's id, when logged.
    pub worker_id: Option<String>,
    /// How it ended.
    pub outcome: ExecutionOutcome,
    /// When it was logged, milliseconds since the Unix epoch.
    pub unix_ms: Option<u64>,
    /// Which service's log it came from (`worker.2`).
    pub source: String,
}

/// Parses one log line; `None` for anything that is not a `task_executed` event.
pub fn parse_execution_line(line: &str, source: &str) -> Option<Execution> {
    let line = line.trim();
    // Cheap filter first: worker logs hold many other lines.
    if !line.contains("task_executed") {
        return None;
    }
    let start = line.find('{')?;
    let value: Value = serde_json::from_str(&line[start..]).ok()?;
    let field = |name: &str| -> Option<&Value> {
        value
            .get(name)
            .or_else(|| value.get("fields").and_then(|f| f.get(name)))
    };
    if field("event").and_then(Value::as_str) != Some("task_executed") {
        return None;
    }
    let task_id = field("task_id").and_then(Value::as_str)?.to_string();
    let attempt = field("attempt").and_then(|a| {
        a.as_u64()
            .or_else(|| a.as_str().and_then(|s| s.parse().ok()))
            .and_then(|a| u32::try_from(a).ok())
    });
    let worker_id = field("worker_id")
        .or_else(|| field("worker"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let outcome = ExecutionOutcome::parse(field("outcome").and_then(Value::as_str).unwrap_or(""));
    let unix_ms = field("timestamp")
        .and_then(Value::as_str)
        .and_then(parse_timestamp_ms);
    Some(Execution {
        task_id,
        attempt,
        worker_id,
        outcome,
        unix_ms,
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
        let line = r#"{"timestamp":"2025-01-02T03:04:05.678901Z","level":"INFO","message":"task executed","event":"task_executed","task_id":"0193c1b2-aaaa","attempt":2,"worker_id":"w-1","outcome":"succeeded","duration_ms":12,"target":"worker"}"#;
        let execution = parse_execution_line(line, "worker.1").expect("an execution");
        assert_eq!(execution.task_id, "0193c1b2-aaaa");
        assert_eq!(execution.attempt, Some(2));
        assert_eq!(execution.worker_id.as_deref(), Some("w-1"));
        assert_eq!(execution.outcome, ExecutionOutcome::Succeeded);
        assert_eq!(execution.unix_ms, Some(1_735_787_045_678));
        assert_eq!(execution.source, "worker.1");
    }

    #[test]
    fn a_nested_fields_line_is_an_execution() {
        let line = r#"{"timestamp":"2025-01-02T03:04:05Z","level":"INFO","fields":{"message":"task executed","event":"task_executed","task_id":"t1","attempt":1,"outcome":"dead"}}"#;
        let execution = parse_execution_line(line, "w").expect("an execution");
        assert_eq!(execution.outcome, ExecutionOutcome::Dead);
        assert!(execution.outcome.is_final());
    }

    #[test]
    fn other_lines_are_ignored() {
        let text =
            "starting\n{\"event\":\"heartbeat\",\"task_id\":\"x\"}\nnot json task_executed\n";
        assert!(parse_executions(text, "w").is_empty());
    }
}
