//! What became of one submit attempt, in Jepsen's total-queue vocabulary.
//!
//! Every `POST /tasks` is `ok` (acknowledged with the task's id), `fail` (a definite error:
//! the task was not created) or `info` (the outcome is unknown: the task may or may not
//! exist). The harness's checker needs this split to tell lost tasks from tasks that were
//! never acknowledged; getting it wrong in the `fail` direction would hide lost tasks, so
//! anything not known to be definite is `info`.

use serde::{Deserialize, Serialize};

/// The outcome of one submit attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SubmitOutcome {
    /// Acknowledged: `201`/`200` with the task's `id` in the body.
    Ok {
        /// The id the orchestrator gave the task.
        task_id: String,
    },
    /// A definite error: a 4xx answer, or a 503 whose code says the queue was not touched
    /// (`store_unavailable`, `overloaded`, `queue_full`). The task does not exist.
    Fail {
        /// The HTTP status, when there was an answer.
        status: Option<u16>,
        /// Why, from the error body when it had one.
        message: String,
    },
    /// Unknown: transport error, timeout, a 503 `outcome_unknown` or `timeout` (the enqueue may
    /// have been applied), another 5xx, or a success answer without an id.
    Info {
        /// What happened.
        message: String,
    },
}

impl SubmitOutcome {
    /// The task id when the attempt was acknowledged.
    pub fn task_id(&self) -> Option<&str> {
        match self {
            SubmitOutcome::Ok { task_id } => Some(task_id),
            SubmitOutcome::Fail { .. } | SubmitOutcome::Info { .. } => None,
        }
    }
}

/// Everything known about one submit attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitRecord {
    /// The attempt's number within its run: unique, allocated in increasing order.
    pub op: u64,
    /// The `Idempotency-Key` header the attempt carried: `{run_id}-{op}`.
    pub idempotency_key: String,
    /// Wall-clock time the request was sent, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// From sending the request to having read the whole answer (or the error), in ms.
    pub latency_ms: f64,
    /// The priority the task was submitted with.
    pub priority: u8,
    /// Its `delay_ms`, when it was scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// What became of it.
    pub outcome: SubmitOutcome,
}

/// What the client saw of one `POST /tasks`, reduced to what classification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitAnswer {
    /// A complete HTTP answer.
    Response {
        /// The HTTP status code.
        status: u16,
        /// The whole body.
        body: Vec<u8>,
    },
    /// The status line arrived but reading the body failed (e.g. timed out).
    BodyError {
        /// The HTTP status code.
        status: u16,
        /// The transport error.
        message: String,
    },
    /// No answer: connection refused or reset, timeout, and the like.
    Transport {
        /// The transport error, with its causes.
        message: String,
    },
}

/// Classifies one attempt as ok, fail or info (see [`SubmitOutcome`] for the rules).
pub fn classify_submit(answer: &SubmitAnswer) -> SubmitOutcome {
    match answer {
        SubmitAnswer::Response { status, body } => match *status {
            200 | 201 => match task_id_in(body) {
                Some(task_id) => SubmitOutcome::Ok { task_id },
                None => SubmitOutcome::Info {
                    message: format!("{status} without a task id in the body"),
                },
            },
            503 if !matches!(
                error_code_in(body).as_deref(),
                Some("store_unavailable" | "overloaded" | "queue_full")
            ) =>
            {
                SubmitOutcome::Info {
                    message: format!(
                        "status 503: {}",
                        error_message_in(body).unwrap_or_else(|| "outcome unknown".into())
                    ),
                }
            }
            400..=499 | 503 => SubmitOutcome::Fail {
                status: Some(*status),
                message: error_message_in(body).unwrap_or_else(|| format!("status {status}")),
            },
            _ => SubmitOutcome::Info {
                message: match error_message_in(body) {
                    Some(message) => format!("status {status}: {message}"),
                    None => format!("status {status}"),
                },
            },
        },
        SubmitAnswer::BodyError { status, message } => match *status {
            // The status alone is definite for these; the body only carries the reason. A 503
            // without a readable code may be an enqueue whose outcome is unknown.
            400..=499 => SubmitOutcome::Fail {
                status: Some(*status),
                message: format!("status {status}, body unreadable: {message}"),
            },
            _ => SubmitOutcome::Info {
                message: format!("status {status}, body unreadable: {message}"),
            },
        },
        SubmitAnswer::Transport { message } => SubmitOutcome::Info {
            message: message.clone(),
        },
    }
}

/// The `error.code` of an error body.
fn error_code_in(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value["error"]["code"].as_str().map(str::to_owned)
}

/// The non-empty `id` of a task record, as a string or a number.
fn task_id_in(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    match value.get("id")? {
        serde_json::Value::String(id) if !id.is_empty() => Some(id.clone()),
        serde_json::Value::Number(id) => Some(id.to_string()),
        _ => None,
    }
}

/// `"code: message"` from the orchestrator's error body `{"error": {"code", "message"}}`.
fn error_message_in(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let code = error.get("code").and_then(serde_json::Value::as_str);
    let message = error.get("message").and_then(serde_json::Value::as_str);
    match (code, message) {
        (Some(code), Some(message)) => Some(format!("{code}: {message}")),
        (Some(text), None) | (None, Some(text)) => Some(text.to_string()),
        (None, None) => None,
    }
}

/// A transport error and its chain of causes, one line (`reqwest` hides the useful part,
/// e.g. "connection refused" or "operation timed out", in the causes).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> SubmitAnswer {
        SubmitAnswer::Response {
            status,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn created_with_an_id_is_ok() {
        let outcome = classify_submit(&response(201, r#"{"id":"t-1","status":"queued"}"#));
        assert_eq!(
            outcome,
            SubmitOutcome::Ok {
                task_id: "t-1".into()
            }
        );
    }

    #[test]
    fn idempotent_replay_with_200_is_ok() {
        let outcome = classify_submit(&response(200, r#"{"id":"t-1","status":"running"}"#));
        assert_eq!(outcome.task_id(), Some("t-1"));
    }

    #[test]
    fn created_without_an_id_is_info() {
        for body in ["", "not json", r#"{"status":"queued"}"#, r#"{"id":""}"#] {
            let outcome = classify_submit(&response(201, body));
            assert!(
                matches!(outcome, SubmitOutcome::Info { .. }),
                "201 with body {body:?} should be info, was {outcome:?}"
            );
        }
    }

    #[test]
    fn client_errors_are_definite_failures_with_the_error_code() {
        let body = r#"{"error":{"code":"validation","message":"priority must be 1-10"}}"#;
        let outcome = classify_submit(&response(422, body));
        assert_eq!(
            outcome,
            SubmitOutcome::Fail {
                status: Some(422),
                message: "validation: priority must be 1-10".into()
            }
        );
    }

    #[test]
    fn unavailable_is_a_definite_failure() {
        let body = r#"{"error":{"code":"store_unavailable","message":"down"}}"#;
        let outcome = classify_submit(&response(503, body));
        assert_eq!(
            outcome,
            SubmitOutcome::Fail {
                status: Some(503),
                message: "store_unavailable: down".into()
            }
        );
    }

    #[test]
    fn item_11_a_full_queue_is_a_definite_failure() {
        let body = r#"{"error":{"code":"queue_full","message":"full"}}"#;
        let outcome = classify_submit(&response(503, body));
        assert_eq!(
            outcome,
            SubmitOutcome::Fail {
                status: Some(503),
                message: "queue_full: full".into()
            }
        );
    }

    #[test]
    fn a_503_with_unknown_outcome_or_no_code_is_indeterminate() {
        for body in [
            r#"{"error":{"code":"outcome_unknown","message":"?"}}"#,
            r#"{"error":{"code":"timeout","message":"?"}}"#,
            "",
        ] {
            let outcome = classify_submit(&response(503, body));
            assert!(
                matches!(outcome, SubmitOutcome::Info { .. }),
                "{body}: {outcome:?}"
            );
        }
    }

    #[test]
    fn other_server_errors_are_indeterminate() {
        for status in [500, 502, 504] {
            let outcome = classify_submit(&response(status, r#"{"error":{"code":"internal"}}"#));
            assert!(
                matches!(outcome, SubmitOutcome::Info { .. }),
                "status {status} should be info, was {outcome:?}"
            );
        }
    }

    #[test]
    fn unexpected_success_or_redirect_statuses_are_indeterminate() {
        for status in [202, 204, 302] {
            let outcome = classify_submit(&response(status, r#"{"id":"t-1"}"#));
            assert!(
                matches!(outcome, SubmitOutcome::Info { .. }),
                "status {status} should be info, was {outcome:?}"
            );
        }
    }

    #[test]
    fn transport_errors_are_indeterminate() {
        let outcome = classify_submit(&SubmitAnswer::Transport {
            message: "operation timed out".into(),
        });
        assert_eq!(
            outcome,
            SubmitOutcome::Info {
                message: "operation timed out".into()
            }
        );
    }

    #[test]
    fn an_unreadable_body_keeps_a_definite_status_definite() {
        let failed = classify_submit(&SubmitAnswer::BodyError {
            status: 422,
            message: "reset".into(),
        });
        assert!(matches!(
            failed,
            SubmitOutcome::Fail {
                status: Some(422),
                ..
            }
        ));
        let unknown = classify_submit(&SubmitAnswer::BodyError {
            status: 201,
            message: "reset".into(),
        });
        assert!(matches!(unknown, SubmitOutcome::Info { .. }));
    }

    #[test]
    fn error_chain_names_every_distinct_cause() {
        let inner = std::io::Error::new(std::io::ErrorKind::TimedOut, "operation timed out");
        let outer = std::io::Error::other(Wrapper(inner));
        assert_eq!(error_chain(&outer), "request failed: operation timed out");
    }

    #[derive(Debug)]
    struct Wrapper(std::io::Error);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("request failed")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn records_round_trip_through_json() {
        let record = SubmitRecord {
            op: 3,
            idempotency_key: "run-3".into(),
            started_unix_ms: 1_700_000_000_000,
            latency_ms: 1.25,
            priority: 5,
            delay_ms: None,
            outcome: SubmitOutcome::Fail {
                status: Some(503),
                message: "unavailable".into(),
            },
        };
        let json = serde_json::to_string(&record).expect("a record serialises");
        let back: SubmitRecord = serde_json::from_str(&json).expect("and reads back");
        assert_eq!(back, record);
    }
}
