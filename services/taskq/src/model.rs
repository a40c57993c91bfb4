//! The task model: domain types parsed at the edge, the status machine and the task record.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Longest accepted description, in characters (Unicode scalar values).
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;

/// Longest accepted execution deadline (`timeout_ms`): one day.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// Longest accepted delay (`delay_ms`), and how far ahead `run_at` may be: 30 days.
pub const MAX_DELAY_MS: u64 = 2_592_000_000;

/// Why client input was rejected. The message is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The description is empty.
    #[error("description must not be empty")]
    EmptyDescription,
    /// The description holds only whitespace (`char::is_whitespace`).
    #[error("description must not be blank (whitespace only)")]
    BlankDescription,
    /// The description is longer than [`MAX_DESCRIPTION_CHARS`].
    #[error("description must be at most {MAX_DESCRIPTION_CHARS} characters, got {0}")]
    DescriptionTooLong(usize),
    /// The priority is outside 1..=10.
    #[error("priority must be an integer from 1 (most urgent) to 10, got {0}")]
    PriorityOutOfRange(i64),
    /// The task id is not a UUID.
    #[error("task id must be a UUID, got {0:?}")]
    InvalidTaskId(String),
    /// The execution deadline is outside 1..=[`MAX_TIMEOUT_MS`].
    #[error("timeout_ms must be an integer from 1 to {MAX_TIMEOUT_MS} (one day), got {0}")]
    TimeoutOutOfRange(i64),
    /// The delay is outside 0..=[`MAX_DELAY_MS`].
    #[error("delay_ms must be an integer from 0 to {MAX_DELAY_MS} (30 days), got {0}")]
    DelayOutOfRange(i64),
    /// `run_at` is no RFC 3339 time, or more than 30 days ahead.
    #[error("run_at must be an RFC 3339 time at most 30 days ahead, got {0:?}")]
    BadRunAt(String),
    /// Both `delay_ms` and `run_at`.
    #[error("give delay_ms or run_at, not both")]
    DelayAndRunAt,
}

/// A task identifier (a time-ordered UUIDv7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(Uuid);

impl TaskId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// A fresh, time-ordered id of a task in partition `index` of a partitioned queue: the
    /// index is written in the id's last two bytes (random in [`TaskId::new`]'s ids), so any
    /// service can route a request for the task to its partition without a lookup. The id stays
    /// a UUIDv7 with 58 random bits.
    pub fn new_in_partition(index: u16) -> Self {
        let mut bytes = *Uuid::now_v7().as_bytes();
        bytes[14..].copy_from_slice(&index.to_be_bytes());
        Self(Uuid::from_bytes(bytes))
    }

    /// The partition of a queue split into `count` that holds this task: the index written by
    /// [`TaskId::new_in_partition`] (0 for every id when `count` is 1).
    pub fn partition(&self, count: u16) -> u16 {
        let bytes = self.0.as_bytes();
        u16::from_be_bytes([bytes[14], bytes[15]]) % count.max(1)
    }

    /// Parses a client-supplied id.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| ValidationError::InvalidTaskId(truncate_for_message(raw)))
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = ValidationError;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw)
    }
}

fn truncate_for_message(raw: &str) -> String {
    raw.chars().take(64).collect()
}

/// Task priority: 1 is the most urgent, 10 the least; 5 when the client gives none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u8")]
pub struct Priority(u8);

impl Priority {
    /// The most urgent level.
    pub const HIGHEST: Priority = Priority(1);
    /// The least urgent level.
    pub const LOWEST: Priority = Priority(10);
    /// The level used when a client gives none.
    pub const DEFAULT: Priority = Priority(5);

    /// Parses a client-supplied priority.
    pub fn parse(raw: i64) -> Result<Self, ValidationError> {
        if (1..=10).contains(&raw) {
            // The range check above makes the cast lossless.
            Ok(Self(raw as u8))
        } else {
            Err(ValidationError::PriorityOutOfRange(raw))
        }
    }

    /// The level as a number, 1..=10.
    pub fn get(self) -> u8 {
        self.0
    }

    /// Every level, most urgent first.
    pub fn all() -> impl Iterator<Item = Priority> {
        (1..=10).map(Priority)
    }
}

impl Default for Priority {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<i64> for Priority {
    type Error = ValidationError;
    fn try_from(raw: i64) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<Priority> for u8 {
    fn from(p: Priority) -> u8 {
        p.0
    }
}

/// A task's execution deadline: 1 ms to one day ([`MAX_TIMEOUT_MS`]). An execution still running
/// at its deadline is stopped and counts as a transient failure (retried while attempts remain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskTimeout(u64);

impl TaskTimeout {
    /// Parses a client-supplied `timeout_ms`.
    pub fn from_millis(raw: i64) -> Result<Self, ValidationError> {
        match u64::try_from(raw) {
            Ok(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Ok(Self(ms)),
            _ => Err(ValidationError::TimeoutOutOfRange(raw)),
        }
    }

    /// The deadline in milliseconds.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// The deadline as a duration.
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

/// When a task should start: after a delay from its acceptance (Redis's clock), or at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// This many milliseconds after the task is accepted.
    Delay(u64),
    /// At this time (a time in the past: at once).
    At(OffsetDateTime),
}

impl Schedule {
    /// Parses a client's `delay_ms` and `run_at` (at most one of them); `now` bounds `run_at`.
    /// `None`: start at once. A delay of 0 is no schedule.
    pub fn parse(
        delay_ms: Option<i64>,
        run_at: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Option<Self>, ValidationError> {
        match (delay_ms, run_at) {
            (Some(_), Some(_)) => Err(ValidationError::DelayAndRunAt),
            (Some(raw), None) => match u64::try_from(raw) {
                Ok(0) => Ok(None),
                Ok(ms) if ms <= MAX_DELAY_MS => Ok(Some(Schedule::Delay(ms))),
                _ => Err(ValidationError::DelayOutOfRange(raw)),
            },
            (None, Some(raw)) => {
                let bad = || ValidationError::BadRunAt(truncate_for_message(raw));
                let at = OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| bad())?;
                let limit = now + time::Duration::milliseconds(MAX_DELAY_MS as i64);
                if at > limit {
                    return Err(bad());
                }
                Ok(Some(Schedule::At(at)))
            }
            (None, None) => Ok(None),
        }
    }
}

/// A task description: 1 to [`MAX_DESCRIPTION_CHARS`] characters, not all of them whitespace.
/// Kept as sent: whitespace around the text is not trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Description(String);

impl Description {
    /// Parses a client-supplied description.
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        let n_chars = raw.chars().count();
        if n_chars == 0 {
            Err(ValidationError::EmptyDescription)
        } else if n_chars > MAX_DESCRIPTION_CHARS {
            Err(ValidationError::DescriptionTooLong(n_chars))
        } else if raw.chars().all(char::is_whitespace) {
            Err(ValidationError::BlankDescription)
        } else {
            Ok(Self(raw))
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Description {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Where a task is in its life.
///
/// `queued → running → succeeded | retrying → running … | dead`, `scheduled → queued` when
/// due, and `queued | scheduled | retrying → cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for its time (`delay_ms`, `run_at`); then queued at its priority.
    Scheduled,
    /// Waiting in a priority stream.
    Queued,
    /// Claimed by a worker and executing.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Failed transiently; waiting for its retry to come due.
    Retrying,
    /// Failed permanently or ran out of attempts; in the dead-letter stream.
    Dead,
    /// Cancelled by a client while queued.
    Cancelled,
}

impl Status {
    /// The name stored in Redis and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Retrying => "retrying",
            Status::Dead => "dead",
            Status::Cancelled => "cancelled",
        }
    }

    /// True for states a task never leaves.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Dead | Status::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = DecodeError;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(match raw {
            "scheduled" => Status::Scheduled,
            "queued" => Status::Queued,
            "running" => Status::Running,
            "succeeded" => Status::Succeeded,
            "retrying" => Status::Retrying,
            "dead" => Status::Dead,
            "cancelled" => Status::Cancelled,
            other => {
                return Err(DecodeError::BadField {
                    field: "status",
                    value: other.to_owned(),
                });
            }
        })
    }
}

/// A task record as stored and as shown by `GET /tasks/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task id.
    pub id: TaskId,
    /// What to do.
    pub description: String,
    /// 1 (most urgent) to 10.
    pub priority: Priority,
    /// Where the task is in its life.
    pub status: Status,
    /// Executions started so far.
    pub attempts: u32,
    /// Executions allowed before the task is dead-lettered.
    pub max_attempts: u32,
    /// When the task was accepted.
    #[serde(with = "timestamp")]
    pub created_at: OffsetDateTime,
    /// When the latest execution started.
    #[serde(with = "timestamp::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When the task reached a final state.
    #[serde(with = "timestamp::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// The worker that ran the latest execution.
    pub worker: Option<String>,
    /// The handler's result, once succeeded.
    pub result: Option<serde_json::Value>,
    /// The latest error, if any execution failed.
    pub error: Option<String>,
    /// The execution deadline the client asked for, in milliseconds; `null` when the worker's
    /// `TASK_TIMEOUT` applies.
    pub timeout_ms: Option<u64>,
    /// When a scheduled task is (or was) due; `null` for a task queued at once.
    #[serde(default, with = "timestamp::option")]
    pub run_at: Option<OffsetDateTime>,
}

/// RFC 3339 timestamps in UTC with exactly three fractional digits
/// (`2026-11-27T16:32:17.990Z`), so they sort as text; any RFC 3339 form is read.
mod timestamp {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;

    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

    pub fn serialize<S: Serializer>(
        value: &OffsetDateTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let utc = value.to_offset(time::UtcOffset::UTC);
        let text = utc.format(FORMAT).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            value: &Option<OffsetDateTime>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => super::serialize(value, serializer),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<OffsetDateTime>, D::Error> {
            Option::<String>::deserialize(deserializer)?
                .map(|text| {
                    OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
                })
                .transpose()
        }
    }
}

/// The version of the stored record layout this code writes and reads.
///
/// Version policy (docs/protocol.md, "Record versions"): a field older readers can safely ignore
/// (such as `timeout_ms`) comes without a new version; a change older readers would misread gets
/// the next version and ships in two releases, the first reading it, the second writing it. A
/// worker that meets a newer version than it reads leaves the entry pending for one that knows
/// it (`claim.lua`); anything else unreadable is dead-lettered.
pub const RECORD_VERSION: &str = "1";

/// A stored task record could not be read: written by another version, or corrupted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A required field is missing.
    #[error("task record lacks field {0}")]
    MissingField(&'static str),
    /// A field holds a value this version cannot read.
    #[error("task record field {field} holds unreadable value {value:?}")]
    BadField {
        /// The field name.
        field: &'static str,
        /// The raw value (truncated).
        value: String,
    },
    /// The record was written with a layout this version does not know.
    #[error("task record has layout version {0}, this build reads version {RECORD_VERSION}")]
    UnknownVersion(String),
}

impl DecodeError {
    /// True for a record of a newer layout than this build reads: written during an upgrade by
    /// a newer release, readable by it (see [`RECORD_VERSION`]'s policy).
    pub fn is_newer_version(&self) -> bool {
        match self {
            DecodeError::UnknownVersion(version) => {
                let ours: u64 = RECORD_VERSION.parse().unwrap_or(0);
                version.parse::<u64>().is_ok_and(|theirs| theirs > ours)
            }
            _ => false,
        }
    }
}

impl TaskRecord {
    /// Reads a record from the fields of its Redis hash.
    pub fn from_fields(fields: &HashMap<String, String>) -> Result<Self, DecodeError> {
        if let Some(version) = fields.get("v")
            && version != RECORD_VERSION
        {
            return Err(DecodeError::UnknownVersion(truncate_for_message(version)));
        }
        let required = |name: &'static str| {
            fields
                .get(name)
                .map(String::as_str)
                .ok_or(DecodeError::MissingField(name))
        };
        let optional = |name: &'static str| {
            fields
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        let bad = |field: &'static str, value: &str| DecodeError::BadField {
            field,
            value: truncate_for_message(value),
        };
        let number = |name: &'static str| -> Result<u32, DecodeError> {
            let raw = required(name)?;
            raw.parse().map_err(|_| bad(name, raw))
        };
        let timestamp = |name: &'static str, raw: &str| -> Result<OffsetDateTime, DecodeError> {
            // Milliseconds since the epoch, up to the end of year 9999 (RFC 3339's range).
            let millis: i64 = raw.parse().map_err(|_| bad(name, raw))?;
            if !(0..=253_402_300_799_999).contains(&millis) {
                return Err(bad(name, raw));
            }
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
                .map_err(|_| bad(name, raw))
        };

        let raw_id = required("id")?;
        let id = TaskId::parse(raw_id).map_err(|_| bad("id", raw_id))?;
        let raw_priority = required("priority")?;
        let priority = raw_priority
            .parse::<i64>()
            .ok()
            .and_then(|p| Priority::parse(p).ok())
            .ok_or_else(|| bad("priority", raw_priority))?;
        let created_at = timestamp("created_at", required("created_at")?)?;
        let started_at = optional("started_at")
            .map(|raw| timestamp("started_at", raw))
            .transpose()?;
        let finished_at = optional("finished_at")
            .map(|raw| timestamp("finished_at", raw))
            .transpose()?;
        let run_at = optional("run_at")
            .map(|raw| timestamp("run_at", raw))
            .transpose()?;
        let result = optional("result")
            .map(|raw| serde_json::from_str(raw).map_err(|_| bad("result", raw)))
            .transpose()?;
        let timeout_ms = optional("timeout_ms")
            .map(|raw| {
                raw.parse::<i64>()
                    .ok()
                    .and_then(|ms| TaskTimeout::from_millis(ms).ok())
                    .map(TaskTimeout::as_millis)
                    .ok_or_else(|| bad("timeout_ms", raw))
            })
            .transpose()?;
        Ok(Self {
            id,
            description: required("description")?.to_owned(),
            priority,
            status: required("status")?.parse()?,
            attempts: number("attempts")?,
            max_attempts: number("max_attempts")?,
            created_at,
            started_at,
            finished_at,
            worker: optional("worker").map(str::to_owned),
            result,
            error: optional("error").map(str::to_owned),
            timeout_ms,
            run_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored_fields() -> HashMap<String, String> {
        [
            ("v", "1"),
            ("id", "0190c5d2-6a8e-7cc3-9a43-0d5f1e1e2a01"),
            ("description", "summarise the report"),
            ("priority", "3"),
            ("status", "succeeded"),
            ("attempts", "1"),
            ("max_attempts", "5"),
            ("created_at", "1700000000000"),
            ("started_at", "1700000000100"),
            ("finished_at", "1700000000250"),
            ("worker", "w-1"),
            ("result", r#"{"ok":true}"#),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn description_length_is_counted_in_characters() {
        assert!(Description::parse("é".repeat(MAX_DESCRIPTION_CHARS)).is_ok());
        assert_eq!(
            Description::parse("a".repeat(MAX_DESCRIPTION_CHARS + 1)),
            Err(ValidationError::DescriptionTooLong(
                MAX_DESCRIPTION_CHARS + 1
            ))
        );
        assert_eq!(
            Description::parse(String::new()),
            Err(ValidationError::EmptyDescription)
        );
    }

    #[test]
    fn item_13_a_blank_description_is_rejected() {
        for blank in [" ", "\t\n\r", "\u{a0}\u{2003}\u{3000}"] {
            assert_eq!(
                Description::parse(blank.to_owned()),
                Err(ValidationError::BlankDescription),
                "{blank:?}"
            );
        }
        assert_eq!(
            Description::parse(" x ".to_owned()).map(|d| d.as_str().to_owned()),
            Ok(" x ".to_owned()),
            "whitespace around text is kept"
        );
    }

    #[test]
    fn priority_accepts_one_to_ten_only() {
        assert!(Priority::parse(0).is_err());
        assert!(Priority::parse(11).is_err());
        assert!(Priority::parse(-3).is_err());
        assert_eq!(Priority::parse(1).map(Priority::get), Ok(1));
        assert_eq!(Priority::parse(10).map(Priority::get), Ok(10));
    }

    #[test]
    fn a_schedule_is_a_delay_or_a_time_not_both_and_at_most_30_days_ahead() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(Schedule::parse(None, None, now), Ok(None));
        assert_eq!(Schedule::parse(Some(0), None, now), Ok(None));
        assert_eq!(
            Schedule::parse(Some(1500), None, now),
            Ok(Some(Schedule::Delay(1500)))
        );
        for bad in [-1, 2_592_000_001] {
            assert_eq!(
                Schedule::parse(Some(bad), None, now),
                Err(ValidationError::DelayOutOfRange(bad))
            );
        }
        assert_eq!(
            Schedule::parse(Some(5), Some("2023-11-14T22:13:20Z"), now),
            Err(ValidationError::DelayAndRunAt)
        );
        assert_eq!(
            Schedule::parse(None, Some("2023-11-14T22:13:25+00:00"), now),
            Ok(Some(Schedule::At(now + time::Duration::seconds(5))))
        );
        for bad in ["tomorrow", "2023-11-14 22:13:25", "2024-01-01T00:00:00Z"] {
            assert!(
                matches!(
                    Schedule::parse(None, Some(bad), now),
                    Err(ValidationError::BadRunAt(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn item_9_a_timeout_is_one_millisecond_to_one_day() {
        for bad in [0, -1, 86_400_001, i64::MAX] {
            assert_eq!(
                TaskTimeout::from_millis(bad),
                Err(ValidationError::TimeoutOutOfRange(bad))
            );
        }
        assert_eq!(
            TaskTimeout::from_millis(1).map(TaskTimeout::as_millis),
            Ok(1)
        );
        assert_eq!(
            TaskTimeout::from_millis(86_400_000).map(TaskTimeout::as_millis),
            Ok(MAX_TIMEOUT_MS)
        );
        let mut fields = stored_fields();
        fields.insert("timeout_ms".into(), "2500".into());
        let record = TaskRecord::from_fields(&fields).expect("valid record");
        assert_eq!(record.timeout_ms, Some(2500));
        assert_eq!(
            TaskRecord::from_fields(&stored_fields()).map(|r| r.timeout_ms),
            Ok(None)
        );
    }

    #[test]
    fn a_stored_record_round_trips_to_json_with_rfc3339_timestamps() {
        let record = TaskRecord::from_fields(&stored_fields()).expect("valid record");
        assert_eq!(record.status, Status::Succeeded);
        let json = serde_json::to_value(&record).expect("serialisable");
        assert_eq!(json["created_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(json["finished_at"], "2023-11-14T22:13:20.250Z");
        let back: TaskRecord = serde_json::from_value(json.clone()).expect("deserialisable");
        assert_eq!(back, record);
        assert_eq!(json["result"]["ok"], true);
        assert_eq!(json["error"], serde_json::Value::Null);
    }

    #[test]
    fn a_record_from_an_unknown_version_is_an_error_not_a_panic() {
        let mut fields = stored_fields();
        fields.insert("v".into(), "2".into());
        assert_eq!(
            TaskRecord::from_fields(&fields),
            Err(DecodeError::UnknownVersion("2".into()))
        );
        assert!(DecodeError::UnknownVersion("2".into()).is_newer_version());
        assert!(!DecodeError::UnknownVersion("0".into()).is_newer_version());
        assert!(!DecodeError::UnknownVersion("x".into()).is_newer_version());
    }

    #[test]
    fn corrupted_fields_are_reported_by_name() {
        for (field, value) in [
            ("status", "exploded"),
            ("priority", "99"),
            ("attempts", "-1"),
            ("created_at", "yesterday"),
            ("created_at", "99999999999999999999999999999999"),
            ("finished_at", "-5"),
            ("result", "{not json"),
            ("timeout_ms", "0"),
            ("timeout_ms", "soon"),
            ("id", "nope"),
        ] {
            let mut fields = stored_fields();
            fields.insert(field.into(), value.into());
            let err = TaskRecord::from_fields(&fields).expect_err(field);
            assert!(err.to_string().contains(field), "{err} should name {field}");
        }
        let mut fields = stored_fields();
        fields.remove("description");
        assert_eq!(
            TaskRecord::from_fields(&fields),
            Err(DecodeError::MissingField("description"))
        );
    }
}
