//! The fault-injection harness of Agent System: it starts the services, drives load against
//! `/tasks`, injects faults from scenario files, and checks that no acknowledged task was lost.
//!
//! # Layout
//!
//! - [`scenario`]: scenario files (`scenarios/*.toml`), parsed strictly, and the step [`scenario::Plan`].
//! - [`cluster`]: one API over two runtimes: [`cluster::docker`] (testcontainers, a fresh
//!   network per run) and [`cluster::process`] (local `redis-server` and the built binaries).
//! - [`load`]: the adapter over the `loadtests` crate's goose submit load.
//! - [`executions`]: `task_executed` lines from the workers' logs.
//! - [`history`]: the run as JSON Lines events (submits, executions, faults, exits, final
//!   states), written with `--history` and read back by `harness check`.
//! - [`checker`]: Jepsen total-queue analysis of a history (lost, stuck, wrong status,
//!   duplicated, unexpected, recovered, unplanned exits), latency, recovery time.
//! - [`judge`]: a history in, the report's counts and verdicts out (`harness run` and
//!   `harness check` alike).
//! - [`plot`]: the run's timelines as inline SVG in an HTML page beside the report.
//! - [`runner`]: runs one scenario end to end and produces a [`report::Report`].
//! - [`progress`]: the live line per running scenario on a terminal (indicatif), plain phase
//!   lines elsewhere, and the log writer that keeps the two apart.
//! - [`report`]: the JSON report (documented in `docs/scenarios.md`) and the human summary.
//! - [`cleanup`]: labels, leftover sweep and the Ctrl-C handler, so nothing outlives a run.
//! - `src/main.rs`: the `harness` command line (`run`, `list`, `up`, `sweep`).
//!
//! The container images come from `xtask::images` (`cargo xtask images`); the runner asks it
//! for fresh ones before a docker run.

pub mod checker;
pub mod cleanup;
pub mod cluster;
pub mod executions;
pub mod history;
pub mod judge;
pub mod load;
pub mod plot;
pub mod progress;
pub mod report;
pub mod runner;
pub mod scenario;

pub use report::Report;
pub use runner::{Prepare, RunOptions, run_scenario};
pub use scenario::Scenario;
