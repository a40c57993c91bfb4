//! The task model and the Redis protocol of Agent System.
//!
//! This crate is shared by the orchestrator (which enqueues, reads and cancels tasks) and the
//! worker (which claims, executes and finishes them). It knows nothing of HTTP or of the harness.
//!
//! Layout:
//! - [`model`]: domain types parsed at the edge ([`model::Description`], [`model::Priority`],
//!   [`model::TaskId`]), the task record and its [`model::Status`] machine.
//! - [`keys`]: every Redis key and stream name, in one place.
//! - [`queue`]: the protocol itself: enqueue, claim, finish (ack, retry, dead-letter), cancel,
//!   retry promotion, reclaim from dead workers, heartbeats and stats. Every state change is one
//!   Lua script, so it is atomic and costs one round trip.
//! - [`partitions`]: the queue split into `QUEUE_PARTITIONS` partitions, each a complete queue
//!   under its own hash tag, and the routing of a task to its partition.
//! - [`event`]: the structured log events other programs read back, such as the worker's
//!   [`event::TaskExecuted`] line, and the execution [`event::Outcome`] vocabulary.

pub mod clock;
pub mod event;
pub mod keys;
pub mod log_buffer;
pub mod model;
pub mod partitions;
pub mod queue;
pub mod support;

pub use event::{Outcome, TaskExecuted};
pub use keys::{IdempotencyScope, Keys, Partition};
pub use model::{
    Description, Priority, Schedule, Status, TaskId, TaskRecord, TaskTimeout, ValidationError,
};
pub use partitions::Partitions;
pub use queue::{
    ClaimedTask, EnqueueOutcome, ExecutionOutcome, Finish, FinishResult, MAX_ERROR_BYTES,
    MAX_RESULT_BYTES, NewTask, QueueConfig, QueueError, Stats,
};
