//! Every Redis key and stream name used by Agent System.
//!
//! Nothing else in the workspace formats a key: a test or a harness run that needs isolation picks
//! its own prefix, and all keys move with it.

use crate::model::{Priority, TaskId};

/// The consumer group every worker joins, on every priority stream.
pub const CONSUMER_GROUP: &str = "workers";

/// Key names under one prefix (default `agent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new("agent")
    }
}

impl Keys {
    /// Keys under `prefix`; `agent:task:{id}`, `agent:stream:p1`, ...
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix all keys share.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash holding one task record.
    pub fn task(&self, task_id: &TaskId) -> String {
        format!("{}{}", self.task_prefix(), task_id)
    }

    /// The part of [`Keys::task`] before the id; scripts append ids to it.
    pub fn task_prefix(&self) -> String {
        format!("{}:task:", self.prefix)
    }

    /// Stream of queued task ids for one priority level.
    pub fn stream(&self, priority: Priority) -> String {
        format!("{}:stream:p{}", self.prefix, priority.get())
    }

    /// All priority streams, most urgent (priority 1) first.
    pub fn streams(&self) -> Vec<String> {
        Priority::all().map(|p| self.stream(p)).collect()
    }

    /// String mapping an `Idempotency-Key` to the task it created.
    pub fn idempotency(&self, idempotency_key: &str) -> String {
        format!("{}:idem:{}", self.prefix, idempotency_key)
    }

    /// Sorted set of task ids waiting for a retry, scored by due time (ms since the epoch).
    pub fn retry_schedule(&self) -> String {
        format!("{}:retry", self.prefix)
    }

    /// Stream of dead-lettered tasks (id and last error).
    pub fn dead_letter(&self) -> String {
        format!("{}:dead", self.prefix)
    }

    /// Sorted set of worker ids scored by their last heartbeat (ms since the epoch).
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_ordered_most_urgent_first() {
        let keys = Keys::new("t");
        let streams = keys.streams();
        assert_eq!(streams.len(), 10);
        assert_eq!(streams[0], "t:stream:p1");
        assert_eq!(streams[9], "t:stream:p10");
    }

    #[test]
    fn every_key_carries_the_prefix() {
        let keys = Keys::new("run42");
        let id = TaskId::new();
        for key in [
            keys.task(&id),
            keys.idempotency("k"),
            keys.retry_schedule(),
            keys.dead_letter(),
            keys.workers(),
        ] {
            assert!(key.starts_with("run42:"), "{key} lacks the prefix");
        }
    }
}
