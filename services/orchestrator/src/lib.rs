//! The orchestrator: Agent System's HTTP API.
//!
//! - [`config`]: flags with environment fallbacks.
//! - [`startup`]: builds the router ([`startup::app`]) and serves it with graceful shutdown.
//! - [`routes`]: one handler per action (`create_task`, `get_task`, `cancel_task`, ...).
//! - [`error`]: [`error::AppError`], the one error type every handler returns; it renders the
//!   JSON error body and never leaks internals.
//! - [`guard`]: bearer-token authentication and per-client rate limiting.
//! - [`telemetry`]: HTTP metrics.
//!
//! The binary's `healthcheck` subcommand is the `healthcheck` crate, shared with the worker.

pub mod config;
pub mod error;
pub mod guard;
pub mod routes;
pub mod startup;
pub mod telemetry;
