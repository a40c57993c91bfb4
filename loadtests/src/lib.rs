//! goose load tests against the orchestrator's `/tasks` API, as a binary and a library.
//!
//! # Layout
//!
//! - [`scenarios`]: the goose scenarios `submit`, `submit_and_wait` and `read_mostly`.
//! - [`submit`]: the one code path that sends `POST /tasks` (idempotency key, classification,
//!   optional record of every attempt, optional live counts in a [`LoadProgress`]), shared by
//!   all scenarios and the harness.
//! - [`outcome`]: ok / fail / info classification of a submit attempt and its record.
//! - [`task_body`]: realistic, varied task descriptions and priorities.
//! - [`follow_up`]: cancels and reads sent right after an acknowledged submit.
//! - [`submit_load`]: [`run_submit_load`], which the harness calls in-process.
//! - `src/main.rs`: the `loadtest` binary, a thin `main` over [`scenarios`].
//!
//! # Running the binary
//!
//! Goose parses every flag (`--help` lists them all). Against the compose stack:
//!
//! ```text
//! cargo run -p loadtests --release -- --host http://127.0.0.1:8001 \
//!     --users 20 --run-time 30s --scenarios submit --report-file report.html
//! ```
//!
//! - `--scenarios submit,submit_and_wait,read_mostly` selects scenarios (all run by default;
//!   goose's own machine names `submitandwait` and `readmostly` work too).
//! - `--throttle-requests N` caps the total request rate; without it every user sends as fast
//!   as it is answered (a closed model: goose has no open model).
//! - `--report-file x.html`, `x.json` or `x.md` (repeatable) writes a report; `--test-plan
//!   "20,5s;20,30s;0,0s"` shapes the load; `--threshold 'error-rate<=0%'` or
//!   `--threshold 'p99<5ms for POST /tasks'` makes the exit code fail the run.
//!
//! Every `POST /tasks` carries `Idempotency-Key: {run_id}-{op}`, with a run id fresh per
//! process. A non-2xx answer, a transport error, or a `201` without an `id` is a failed
//! request in goose's metrics. `submit_and_wait` reports its end-to-end latency, from
//! sending the POST to seeing a final status, as the request `E2E submit_and_wait`; task
//! reads are grouped under `GET /tasks/{id}`.
//!
//! # In-process use
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use loadtests::{SubmitLoad, run_submit_load};
//!
//! let records = run_submit_load(SubmitLoad {
//!     host: "http://127.0.0.1:8001".into(),
//!     rate_per_s: 200,
//!     duration: Duration::from_secs(30),
//!     users: 50,
//!     request_timeout: Duration::from_secs(2),
//!     run_id: "kill-redis-1".into(),
//!     follow_ups: Default::default(),
//!     delays: Default::default(),
//!     progress: None, // or Some(Arc<LoadProgress>) to watch the counts while it runs
//! })
//! .await?;
//! let acknowledged = records.iter().filter(|r| r.outcome.task_id().is_some()).count();
//! # let _ = acknowledged;
//! # Ok(())
//! # }
//! ```

pub mod follow_up;
pub mod outcome;
pub mod scenarios;
pub mod submit;
pub mod submit_load;
pub mod task_body;

pub use follow_up::{Delays, FollowUpKind, FollowUpRecord, FollowUps};
pub use outcome::{SubmitOutcome, SubmitRecord};
pub use submit::{LoadCounts, LoadProgress};
pub use submit_load::{LoadRecords, SubmitLoad, run_load, run_submit_load};
