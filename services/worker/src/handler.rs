//! Task handlers: what executing a task means.

use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};

/// What a handler gets to execute.
#[derive(Debug, Clone, Copy)]
pub struct TaskInput<'a> {
    /// The task id.
    pub task_id: &'a str,
    /// The task's description.
    pub description: &'a str,
    /// This execution's number, from 1.
    pub attempt: u32,
}

/// Why an execution failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (timeouts, 5xx, overload).
    #[error("transient failure: {0}")]
    Transient(String),
    /// Retrying cannot help (invalid task, 4xx).
    #[error("permanent failure: {0}")]
    Permanent(String),
}

/// Executes tasks. Implementations must be cancel-safe only in the sense that a dropped future
/// leaves nothing half-written: the task will be executed again.
pub trait TaskHandler: Send + Sync + 'static {
    /// Executes one task and returns its result record.
    fn handle<'a>(&'a self, input: TaskInput<'a>) -> BoxFuture<'a, Result<Value, HandlerError>>;
}

/// Failure knobs of [`Simulate`], for tests and fault drills.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FailureKnobs {
    /// Share of executions that fail transiently.
    pub transient_rate: f64,
    /// Share of executions that fail permanently.
    pub permanent_rate: f64,
    /// Attempts 1..=N of every task fail transiently.
    pub fail_first_attempts: u32,
}

/// Holds each task for a fixed time and returns a small result record.
#[derive(Debug, Clone)]
pub struct Simulate {
    /// Time each execution takes.
    pub work: Duration,
    /// Injected failures.
    pub knobs: FailureKnobs,
}

impl TaskHandler for Simulate {
    fn handle<'a>(&'a self, input: TaskInput<'a>) -> BoxFuture<'a, Result<Value, HandlerError>> {
        Box::pin(async move {
            if !self.work.is_zero() {
                tokio::time::sleep(self.work).await;
            }
            if input.attempt <= self.knobs.fail_first_attempts {
                return Err(HandlerError::Transient(format!(
                    "simulated failure of attempt {}",
                    input.attempt
                )));
            }
            let roll: f64 = rand::random();
            if roll < self.knobs.permanent_rate {
                return Err(HandlerError::Permanent(
                    "simulated permanent failure".into(),
                ));
            }
            if roll < self.knobs.permanent_rate + self.knobs.transient_rate {
                return Err(HandlerError::Transient(
                    "simulated transient failure".into(),
                ));
            }
            Ok(json!({
                "handler": "simulate",
                "work_ms": self.work.as_millis() as u64,
                "description_chars": input.description.chars().count(),
            }))
        })
    }
}

/// POSTs `{"task_id", "description", "attempt"}` to an agent endpoint and stores its JSON
/// answer (or its text as a string). 5xx, 429, timeouts and connection errors are transient; other
/// 4xx are permanent.
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    url: String,
}

impl Http {
    /// A handler calling `url`, each call bounded by `timeout`.
    pub fn new(url: String, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        Ok(Self { client, url })
    }
}

impl TaskHandler for Http {
    fn handle<'a>(&'a self, input: TaskInput<'a>) -> BoxFuture<'a, Result<Value, HandlerError>> {
        Box::pin(async move {
            let body = json!({
                "task_id": input.task_id,
                "description": input.description,
                "attempt": input.attempt,
            });
            let response = self
                .client
                .post(&self.url)
                .json(&body)
                .send()
                .await
                .map_err(|err| HandlerError::Transient(format!("calling agent: {err}")))?;
            let status = response.status();
            let text = response
                .text()
                .await
                .map_err(|err| HandlerError::Transient(format!("reading agent answer: {err}")))?;
            let snippet: String = text.chars().take(500).collect();
            if status.is_server_error() || status.as_u16() == 429 {
                return Err(HandlerError::Transient(format!(
                    "agent answered {status}: {snippet}"
                )));
            }
            if !status.is_success() {
                return Err(HandlerError::Permanent(format!(
                    "agent answered {status}: {snippet}"
                )));
            }
            Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(attempt: u32) -> TaskInput<'static> {
        TaskInput {
            task_id: "t",
            description: "d",
            attempt,
        }
    }

    #[tokio::test]
    async fn simulate_fails_the_first_attempts_then_succeeds() {
        let handler = Simulate {
            work: Duration::ZERO,
            knobs: FailureKnobs {
                fail_first_attempts: 2,
                ..FailureKnobs::default()
            },
        };
        assert!(matches!(
            handler.handle(input(1)).await,
            Err(HandlerError::Transient(_))
        ));
        assert!(matches!(
            handler.handle(input(2)).await,
            Err(HandlerError::Transient(_))
        ));
        assert!(handler.handle(input(3)).await.is_ok());
    }

    #[tokio::test]
    async fn simulate_with_a_permanent_rate_of_one_always_fails_permanently() {
        let handler = Simulate {
            work: Duration::ZERO,
            knobs: FailureKnobs {
                permanent_rate: 1.0,
                ..FailureKnobs::default()
            },
        };
        for attempt in 1..5 {
            assert!(matches!(
                handler.handle(input(attempt)).await,
                Err(HandlerError::Permanent(_))
            ));
        }
    }
}
