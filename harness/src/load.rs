//! Load during scenarios: the one code path is the `loadtests` crate's goose `submit` scenario.
//!
//! This module is the harness's only contact with it, so a change of that API touches one file.
//! Goose keeps process-wide state: run one load at a time per process.

pub use loadtests::{
    Delays, FollowUpKind, FollowUpRecord, FollowUps, LoadCounts, LoadProgress, LoadRecords,
    SubmitLoad, SubmitOutcome, SubmitRecord,
};

/// Offers `load` and returns every submit attempt (ok / fail / info), ordered by `op`, and the
/// cancels and reads that followed acknowledged submits.
pub async fn run_load(load: SubmitLoad) -> anyhow::Result<LoadRecords> {
    loadtests::run_load(load).await
}

/// Users the load needs to keep `rate_per_s` through a stall of `request_timeout`
/// (goose is a throttled closed model: a user waits for its answer).
pub fn users_for(rate_per_s: u32, request_timeout: std::time::Duration, at_least: usize) -> usize {
    let needed = (f64::from(rate_per_s) * request_timeout.as_secs_f64()).ceil() as usize;
    needed.max(at_least).clamp(1, 1_000)
}
