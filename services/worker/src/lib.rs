//! The worker: a consumer-group member that claims tasks from Redis and executes them.
//!
//! - [`config`]: flags with environment fallbacks.
//! - [`handler`]: the [`handler::TaskHandler`] trait and the built-in `simulate` and `http`
//!   handlers.
//! - [`runner`]: the claim → execute → finish loop, heartbeats, reclaiming the entries of dead
//!   workers, retry promotion and graceful shutdown.
//! - [`startup`]: wires the runner to Redis, serves `/healthz` and `/metrics`, handles signals.
//!
//! The binary's `healthcheck` subcommand is the `healthcheck` crate, shared with the
//! orchestrator.

pub mod config;
pub mod handler;
pub mod runner;
pub mod startup;
