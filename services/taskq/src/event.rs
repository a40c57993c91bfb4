//! Structured log events with one schema shared by whoever writes them and whoever reads them.
//!
//! The worker logs one [`TaskExecuted`] line per execution. Other programs read those lines
//! back: the harness (which checks that no acknowledged task was lost) and the benchmark
//! (which times executions). They all use this type, so the line cannot drift from its readers.
//!
//! On the wire the event is one line of the services' JSON log (`LOG_FORMAT=json`, see
//! [`crate::support::init_tracing`]): the event's fields flattened at the top level next to
//! `timestamp`, `level`, `message` and `target`, with `"event":"task_executed"`:
//!
//! ```text
//! {"timestamp":"2025-01-02T03:04:05.678901Z","level":"INFO","event":"task_executed",
//!  "task_id":"…","attempt":1,"worker_id":"…","outcome":"succeeded","duration_ms":12.3,…}
//! ```
//!
//! [`Outcome`] is the one outcome vocabulary (`succeeded`, `retrying`, `dead`): in this line,
//! in the worker's metric labels and as the outcome word the finish script receives.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How one execution ended. Serialised in lower case: `succeeded`, `retrying`, `dead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Finished successfully: final.
    Succeeded,
    /// Failed transiently; another attempt is scheduled.
    Retrying,
    /// Failed for the last time and dead-lettered: final.
    Dead,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 3] = [Outcome::Succeeded, Outcome::Retrying, Outcome::Dead];

    /// The word used in logs, metric labels and the finish script.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Retrying => "retrying",
            Outcome::Dead => "dead",
        }
    }

    /// Whether the task is finished after this execution.
    pub fn is_final(self) -> bool {
        matches!(self, Outcome::Succeeded | Outcome::Dead)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One execution of one task by one worker: the worker's `task_executed` log line.
///
/// The fields are exactly the line's fields (besides `event` and what the log formatter adds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskExecuted {
    /// The task's id.
    pub task_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The executing worker's consumer name.
    pub worker_id: String,
    /// How the execution ended.
    pub outcome: Outcome,
    /// How long the handler ran, milliseconds. The line is written when the execution ends, so
    /// its timestamp minus this is when the execution started.
    pub duration_ms: f64,
}

/// An event read back from a log line, with the time the log formatter stamped on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged<E> {
    /// The line's `timestamp`; `None` when it is missing or not RFC 3339.
    pub timestamp: Option<OffsetDateTime>,
    /// The event.
    pub event: E,
}

impl TaskExecuted {
    /// The value of the line's `event` field.
    pub const EVENT: &'static str = "task_executed";
    /// The line's `message`.
    pub const MESSAGE: &'static str = "task executed";

    /// Reads one log line; `None` for anything that is not a `task_executed` event.
    pub fn from_log_line(line: &str) -> Option<Self> {
        Self::logged_from_line(line).map(|logged| logged.event)
    }

    /// Reads one log line with its timestamp; `None` for anything that is not a
    /// `task_executed` event.
    ///
    /// Accepts the JSON line of [`crate::support::init_tracing`] (fields at the top level) and
    /// tracing's default JSON layout (fields nested in a `fields` object). Anything before the
    /// first `{` is ignored (a log collector's prefix).
    pub fn logged_from_line(line: &str) -> Option<Logged<Self>> {
        let line = line.trim();
        let value: Value = serde_json::from_str(&line[line.find('{')?..]).ok()?;
        let fields = if value.get("event").is_some() {
            &value
        } else {
            value.get("fields")?
        };
        if fields.get("event").and_then(Value::as_str) != Some(Self::EVENT) {
            return None;
        }
        let event = Self::deserialize(fields).ok()?;
        let timestamp = value
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(|raw| OffsetDateTime::parse(raw, &Rfc3339).ok());
        Some(Logged { timestamp, event })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(outcome: Outcome) -> TaskExecuted {
        TaskExecuted {
            task_id: "0193c1b2-aaaa".into(),
            attempt: 2,
            worker_id: "w-1".into(),
            outcome,
            duration_ms: 12.5,
        }
    }

    #[test]
    fn a_flattened_line_is_read_with_its_timestamp() {
        let line = r#"{"timestamp":"2025-01-02T03:04:05.678901Z","level":"INFO","message":"task executed","event":"task_executed","task_id":"0193c1b2-aaaa","attempt":2,"worker_id":"w-1","outcome":"succeeded","duration_ms":12.5,"target":"worker::runner"}"#;
        let logged = TaskExecuted::logged_from_line(line).expect("an execution");
        assert_eq!(logged.event, event(Outcome::Succeeded));
        let timestamp = logged.timestamp.expect("a timestamp");
        assert_eq!(
            timestamp.unix_timestamp_nanos(),
            1_735_787_045_678_901_000,
            "{timestamp}"
        );
    }

    #[test]
    fn a_nested_fields_line_is_read() {
        let line = r#"{"timestamp":"2025-01-02T03:04:05Z","level":"INFO","fields":{"message":"task executed","event":"task_executed","task_id":"0193c1b2-aaaa","attempt":2,"worker_id":"w-1","outcome":"dead","duration_ms":12.5},"target":"worker::runner"}"#;
        assert_eq!(
            TaskExecuted::from_log_line(line),
            Some(event(Outcome::Dead))
        );
    }

    #[test]
    fn a_prefix_before_the_json_is_ignored() {
        let line = r#"worker-1  | {"event":"task_executed","task_id":"0193c1b2-aaaa","attempt":2,"worker_id":"w-1","outcome":"retrying","duration_ms":12.5}"#;
        let logged = TaskExecuted::logged_from_line(line).expect("an execution");
        assert_eq!(logged.event, event(Outcome::Retrying));
        assert_eq!(logged.timestamp, None);
    }

    #[test]
    fn other_lines_are_not_executions() {
        for line in [
            "",
            "starting",
            "not json task_executed",
            r#"{"event":"heartbeat","task_id":"x"}"#,
            r#"{"message":"task_executed","task_id":"x"}"#,
            // an outcome outside the vocabulary, a missing field
            r#"{"event":"task_executed","task_id":"t","attempt":1,"worker_id":"w","outcome":"retry","duration_ms":1}"#,
            r#"{"event":"task_executed","task_id":"t","attempt":1,"outcome":"dead","duration_ms":1}"#,
        ] {
            assert_eq!(TaskExecuted::from_log_line(line), None, "{line}");
        }
    }

    #[test]
    fn outcomes_serialise_to_their_words() {
        for outcome in Outcome::ALL {
            assert_eq!(
                serde_json::to_value(outcome).unwrap(),
                Value::from(outcome.as_str())
            );
            assert_eq!(outcome.to_string(), outcome.as_str());
        }
        assert!(Outcome::Succeeded.is_final() && Outcome::Dead.is_final());
        assert!(!Outcome::Retrying.is_final());
    }
}
